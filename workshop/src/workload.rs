//! Synthetic traffic: many messages to many domains, a few domains much
//! more popular than the rest, the same every time for the same seed.
//!
//! Domain `d{r}.test` has rank r (1 is the most popular) and weight
//! ∝ 1/r^skew: skew 0 is uniform, skew 1 is Zipf's law, larger skews put
//! more of the traffic on the first few domains. The random numbers come
//! from a SplitMix64 written here, so a seed means the same workload on
//! every machine and release.

use crate::emulator::Delivery;
use crate::home::QmailHome;

/// The envelope sender of every generated delivery.
pub const SENDER: &[u8] = b"sender@origin.test";

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough to
/// pick domains. Not for anything secret.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The probability of each domain rank, rank 1 first: weight of rank r
/// ∝ 1/r^skew, normalised to sum to 1. Panics if `domains` is 0 or
/// `skew` is negative or not finite.
pub fn zipf_domains(domains: usize, skew: f64) -> Vec<f64> {
    assert!(domains > 0, "a workload needs at least one domain");
    assert!(skew.is_finite() && skew >= 0.0, "skew must be >= 0: {skew}");
    let raw: Vec<f64> =
        (1..=domains).map(|r| (r as f64).powf(-skew)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

/// The name of the domain of rank `rank` (1-based): `d{rank}.test`.
pub fn domain_name(rank: usize) -> String {
    format!("d{rank}.test")
}

/// The recipients of a workload, without writing anything: recipient i
/// is `user{i}+{local_part}@d{r}.test` (or `user{i}@d{r}.test` when
/// `local_part` is empty), r drawn by [`zipf_domains`] weights from
/// `seed`. `local_part` holds stand-in directives joined by '+', e.g.
/// `sleep20` or `sleep5+exit111` (see [`crate::remote`]).
pub fn recipients(
    messages: usize,
    domains: usize,
    skew: f64,
    seed: u64,
    local_part: &str,
) -> Vec<Vec<u8>> {
    let mut cumulative = zipf_domains(domains, skew);
    let mut sum = 0.0;
    for w in &mut cumulative {
        sum += *w;
        *w = sum;
    }
    let mut rng = SplitMix64::new(seed);
    (0..messages)
        .map(|i| {
            let u = rng.next_f64() * sum;
            let rank =
                cumulative.partition_point(|&c| c <= u).min(domains - 1) + 1;
            let domain = domain_name(rank);
            let r = if local_part.is_empty() {
                format!("user{i}@{domain}")
            } else {
                format!("user{i}+{local_part}@{domain}")
            };
            r.into_bytes()
        })
        .collect()
}

/// Writes one small message per delivery into `home` and returns the
/// deliveries (see [`recipients`]). The sender is [`SENDER`].
pub fn generate(
    home: &QmailHome,
    messages: usize,
    domains: usize,
    skew: f64,
    seed: u64,
    local_part: &str,
) -> Vec<Delivery> {
    recipients(messages, domains, skew, seed, local_part)
        .into_iter()
        .enumerate()
        .map(|(i, recipient)| {
            let to = String::from_utf8_lossy(&recipient).into_owned();
            let body = format!(
                "From: <sender@origin.test>\nTo: <{to}>\n\
                 Subject: shardspawn workload message {i}\n\
                 Message-ID: <{seed}.{i}@origin.test>\n\n\
                 Message {i} of {messages}, seed {seed}.\n"
            );
            Delivery {
                messid: home.add_message(body.as_bytes()),
                sender: SENDER.to_vec(),
                recipient,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn per_domain(rcpts: &[Vec<u8>]) -> BTreeMap<usize, usize> {
        let mut counts = BTreeMap::new();
        for r in rcpts {
            let r = String::from_utf8_lossy(r);
            let rank = r
                .rsplit_once("@d")
                .and_then(|(_, d)| d.strip_suffix(".test"))
                .and_then(|d| d.parse().ok())
                .unwrap();
            *counts.entry(rank).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn splitmix_known_values() {
        // The published first outputs for seed 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }

    #[test]
    fn weights() {
        assert_eq!(zipf_domains(4, 0.0), vec![0.25; 4]);
        let w = zipf_domains(3, 1.0);
        let total = 1.0 + 0.5 + 1.0 / 3.0;
        for (got, want) in w.iter().zip([1.0, 0.5, 1.0 / 3.0]) {
            assert!((got - want / total).abs() < 1e-12);
        }
        assert!(
            (zipf_domains(1000, 1.3).iter().sum::<f64>() - 1.0).abs() < 1e-9
        );
    }

    #[test]
    fn deterministic_from_the_seed() {
        let a = recipients(500, 50, 1.0, 42, "sleep5");
        assert_eq!(a, recipients(500, 50, 1.0, 42, "sleep5"));
        assert_ne!(a, recipients(500, 50, 1.0, 43, "sleep5"));
        assert_eq!(a.len(), 500);
    }

    #[test]
    fn recipient_shape() {
        let r = recipients(3, 1, 0.0, 1, "");
        assert_eq!(r[0], b"user0@d1.test");
        assert_eq!(r[2], b"user2@d1.test");
        let r = recipients(1, 1, 0.0, 1, "sleep5+exit111");
        assert_eq!(r[0], b"user0+sleep5+exit111@d1.test");
        assert!(crate::remote::parse_script(&r[0]).is_ok());
    }

    #[test]
    fn uniform_covers_every_domain_evenly() {
        let counts = per_domain(&recipients(20_000, 10, 0.0, 9, ""));
        assert_eq!(counts.len(), 10);
        for (&rank, &n) in &counts {
            assert!((1..=10).contains(&rank));
            // 2000 expected; 5 sigma is about 210.
            assert!((1700..=2300).contains(&n), "d{rank}: {n}");
        }
    }

    #[test]
    fn skew_concentrates_on_the_first_ranks() {
        let counts = per_domain(&recipients(20_000, 100, 1.2, 5, ""));
        let first = counts[&1];
        let weights = zipf_domains(100, 1.2);
        let expected = weights[0] * 20_000.0;
        assert!(
            (first as f64 - expected).abs() < expected * 0.1,
            "d1: {first}, expected about {expected}"
        );
        assert!(counts[&1] > counts[&2] && counts[&2] > counts[&10]);
        assert!(counts.keys().all(|r| (1..=100).contains(r)));
    }

    #[test]
    fn generate_writes_one_message_each() {
        let home = QmailHome::new().unwrap();
        let d = generate(&home, 5, 3, 1.0, 11, "");
        assert_eq!(d.len(), 5);
        let rcpts = recipients(5, 3, 1.0, 11, "");
        for (delivery, rcpt) in d.iter().zip(&rcpts) {
            assert_eq!(&delivery.recipient, rcpt);
            assert_eq!(delivery.sender, SENDER);
            let body =
                std::fs::read(home.message_path(&delivery.messid)).unwrap();
            assert!(body.starts_with(b"From: "));
        }
        let mut ids: Vec<&str> = d.iter().map(|d| d.messid.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 5);
    }
}
