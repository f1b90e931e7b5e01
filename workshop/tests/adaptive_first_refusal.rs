//! Issue #16, item 5: against strict receivers, a key finds the
//! receiver's number at its first refusal instead of walking down to it
//! one refusal at a time.
//!
//! Eight domains, each its own strict receiver (`strict5`: a 421 "too
//! many concurrent connections" at the greeting whenever 5 of our
//! deliveries to it already run), each configured at 50, all sent at
//! once with far more in flight than any receiver takes. Every `Z` is a
//! receiver's refusal (the hold bounds are generous, suspension is off),
//! which the test checks, so the refusals per domain measure how often
//! adaptation ran into a receiver over its ceiling.
//!
//! Two starts, each configured at 50 as in the issue:
//!
//! - The default initial limit (5), the case: slow start climbs
//!   past the ceiling (to 10 when a round of good deliveries ends at
//!   once), and the deliveries it started over it are refused together.
//!   The walk of issue 7 then went down one step per round, each round
//!   refused again: up to 15 refusals for a domain in 40 deliveries
//!   (most runs had a domain at 12 to 15; means 4 to 7.5). Going
//!   straight to what the receiver had leaves the overshoot and the
//!   probes above the ceiling: at most 8 a domain seen (means 2.9 to
//!   5.8). Every domain at most 10.
//! - A key that starts at its configured 50: a whole burst is refused
//!   at once and comes back in any order, and then the walk refused
//!   again every round: 29 to 50 refusals a domain in 80 deliveries.
//!   Now the first burst (10 of the 15 in flight) and the probes: about
//!   13. At most 20 on average.

mod limits_common;

use std::time::Duration;

use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::remote::{
    ENV_STRICT_DIR, default_result, result_of, strict_refusal,
};
use shardspawn_workshop::util::deadline_in;

use limits_common::{Rig, finish, show};

/// The receivers' ceiling.
const M: u32 = 5;
/// The configured limit of every domain, well above it.
const CONFIGURED: u32 = 50;
const DOMAINS: usize = 8;
/// Deliveries qmail-send keeps in flight: 15 a domain, three times what
/// a receiver takes.
const IN_FLIGHT: usize = 120;

fn domain(d: usize) -> String {
    format!("strict{d}.test")
}

/// Runs the workload with the key's first effective limit `initial`;
/// the refusals of each domain, and each domain's effective limit at
/// the end.
fn refusals(
    initial: u32,
    per_domain: usize,
) -> (Vec<usize>, Vec<Option<u32>>) {
    let rig = Rig::new(&format!(":{CONFIGURED}\n"), 2);
    let slots = rig.home.path().join("strict-slots");
    std::fs::create_dir(&slots).unwrap();
    let slots = slots.to_str().unwrap().to_string();
    let initial = initial.to_string();
    let mut emu = rig.start(&[
        ("SHARDSPAWN_INITIAL_LIMIT", initial.as_str()),
        // Only the receivers' 421s may defer: nothing is held past a
        // bound, and no key is suspended by them.
        ("SHARDSPAWN_HOLD_MAX", "1000"),
        ("SHARDSPAWN_HOLD_SECONDS", "600"),
        ("SHARDSPAWN_SUSPEND_AFTER", "0"),
        (ENV_STRICT_DIR, slots.as_str()),
    ]);
    // Interleaved, so every domain has its share in flight from the
    // start.
    let deliveries: Vec<Delivery> = (0..DOMAINS * per_domain)
        .map(|i| Delivery {
            messid: rig.messid.clone(),
            sender: b"s@origin.test".to_vec(),
            recipient: format!(
                "u{i}+sleep60+strict{M}@{}",
                domain(i % DOMAINS)
            )
            .into_bytes(),
        })
        .collect();
    let report =
        emu.run(&deliveries, IN_FLIGHT, deadline_in(Duration::from_secs(120)));
    assert!(report.is_clean(), "{:?}\n{}", report.violations, rig.log_text());
    assert!(
        report.max_in_flight >= 4 * M as usize,
        "too few in flight to press the receivers: {}",
        report.max_in_flight
    );
    let refusal = result_of(&strict_refusal());
    let mut refused = vec![0; DOMAINS];
    for (i, o) in report.outcomes.iter().enumerate() {
        let o = o.as_ref().expect("every delivery answered");
        let d = i % DOMAINS;
        if o.body == refusal {
            refused[d] += 1;
        } else {
            assert_eq!(
                o.body,
                default_result(domain(d).as_bytes()),
                "neither a K nor the receiver's 421: {}",
                show(&o.body)
            );
        }
    }
    let effective = (0..DOMAINS)
        .map(|d| {
            rig.wait_key(&domain(d), |k| k.started == per_domain as u64);
            rig.key_status(&domain(d)).map(|k| k.effective)
        })
        .collect();
    finish(&mut emu);
    (refused, effective)
}

fn mean(refused: &[usize]) -> f64 {
    refused.iter().sum::<usize>() as f64 / refused.len() as f64
}

/// Slow start from the default 5 climbs past the ceiling of 5; the
/// refusals of that overshoot put the key back at 5 at once, and only
/// the probes above it are refused later.
#[test]
fn from_the_default_start_no_key_walks_down_round_after_round() {
    let (refused, effective) = refusals(5, 40);
    eprintln!(
        "initial 5: refusals per domain {refused:?} (mean {:.2}); \
         effective at the end {effective:?}",
        mean(&refused)
    );
    assert!(
        refused.iter().all(|&n| n <= 10),
        "refusals per domain {refused:?}"
    );
    for e in effective {
        let e = e.expect("no status sample of a key");
        assert!((M - 1..=M + 1).contains(&e), "settled at {e}, ceiling {M}");
    }
}

/// A key that starts at 50 has a whole burst refused at once: the
/// smallest number running at that burst's refusals is the limit, and
/// the rest of the burst, coming back in any order, does not walk it
/// further down.
#[test]
fn from_a_high_start_one_burst_of_refusals_finds_the_ceiling() {
    let (refused, effective) = refusals(CONFIGURED, 80);
    eprintln!(
        "initial {CONFIGURED}: refusals per domain {refused:?} (mean \
         {:.2}); effective at the end {effective:?}",
        mean(&refused)
    );
    // The first burst: up to 15 in flight per domain, 5 taken; then
    // the probes.
    assert!(mean(&refused) <= 20.0, "refusals per domain {refused:?}");
    // Never left above the ceiling (a number taken while some of ours
    // had just ended may be below it; probes climb back).
    for e in effective {
        let e = e.expect("no status sample of a key");
        assert!((1..=M + 1).contains(&e), "settled at {e}, ceiling {M}");
    }
}
