//! Issue #16, item 5: against strict receivers, a key finds the
//! receiver's number at its first refusal instead of walking down to it
//! one refusal at a time, and then leaves it alone.
//!
//! Eight domains, each its own strict receiver (`strict5`: a 421 "too
//! many concurrent connections" at the greeting whenever 5 of our
//! deliveries to it already run), all sent at once with far more in
//! flight than any receiver takes. Every `Z` is a receiver's refusal
//! (the hold bounds are generous, suspension is off), which the test
//! checks, so the refusals per domain measure how often adaptation ran
//! into a receiver over its ceiling.
//!
//! - No limit configured (the default 20) and the default initial limit
//!   (5), 100 deliveries a domain: the issue's own case. Slow start
//!   used to climb past the ceiling (to 10 when a round of good
//!   deliveries ends at once) and have those over it refused together,
//!   then probe above it every `limit × 2^p` good deliveries: 4.75 to
//!   8.75 refusals per domain on average. Now it runs at most one above
//!   what the receiver was seen to take, so the one delivery at 6 is
//!   refused, and the receiver's quiet time (10 minutes) outlasts the
//!   run: 1 per domain when the machine is not loaded. A stand-in
//!   counted as running before it has connected (a start queued in the
//!   shard, a child not yet at its exec on a loaded machine) can make a
//!   delivery look as if it ran beside more than the receiver had, and
//!   let the climb pass 6: the bound leaves room for that, and the
//!   stand-ins take 200 ms so that it is rare.
//! - Each domain configured at 50, the default initial limit: the walk
//!   of issue 7 went down one step per round, each round refused again:
//!   up to 15 refusals for a domain in 40 deliveries (means 4 to 7.5);
//!   going straight to what the receiver had left the overshoot and the
//!   probes (means 2.9 to 5.8, a domain at up to 8). Now, with stand-ins
//!   of 200 ms as above, 1 a domain. At most 1.5 on average, 3 a domain.
//!   (With stand-ins of 60 ms on a loaded machine, means 1.75 to 2.0,
//!   and a key could end at 7, set by a refusal that came with 7 of ours
//!   counted running, some of them not yet at the receiver.)
//! - A key that starts at its configured 50: a whole burst is refused
//!   at once and comes back in any order, and then the walk refused
//!   again every round: 29 to 50 refusals a domain in 80 deliveries.
//!   Going straight to the number left the first burst (10 of the 15 in
//!   flight) and the probes: 13.1 to 14.25 (13.4 with stand-ins of
//!   200 ms). Now the burst alone: 10.1 to 10.75 with stand-ins of
//!   200 ms (9.5 to 11.75 with 60 ms on a loaded machine). At most 12.5
//!   on average.

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
/// The configured limit of every domain in the example, well
/// above it.
const CONFIGURED: u32 = 50;
const DOMAINS: usize = 8;
/// Deliveries qmail-send keeps in flight: 15 a domain, three times what
/// a receiver takes.
const IN_FLIGHT: usize = 120;

fn domain(d: usize) -> String {
    format!("strict{d}.test")
}

/// Runs the workload under the limits file `limits`, with the key's
/// first effective limit `initial`, each stand-in taking `ms`; the
/// refusals of each domain, and each domain's effective limit at the
/// end.
fn refusals(
    limits: &str,
    initial: u32,
    per_domain: usize,
    ms: u32,
) -> (Vec<usize>, Vec<Option<u32>>) {
    let rig = Rig::new(limits, 2);
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
                "u{i}+sleep{ms}+strict{M}@{}",
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

/// The case: no limit configured, the default start. One
/// refusal a key, the delivery one above the receiver's 5, and then
/// none for the receiver's quiet time.
#[test]
fn with_no_limit_configured_a_strict_receiver_costs_a_key_one_refusal() {
    let (refused, effective) = refusals("", 5, 100, 200);
    eprintln!(
        "no limit configured, initial 5: refusals per domain {refused:?} \
         (mean {:.2}); effective at the end {effective:?}",
        mean(&refused)
    );
    assert!(mean(&refused) <= 1.5, "refusals per domain {refused:?}");
    assert!(
        refused.iter().all(|&n| n <= 3),
        "refusals per domain {refused:?}"
    );
    for e in effective {
        let e = e.expect("no status sample of a key");
        assert!((M - 1..=M + 1).contains(&e), "settled at {e}, ceiling {M}");
    }
}

/// Slow start from the default 5 runs one above what the receiver was
/// seen to take: the one refused puts the key back at 5, and nothing
/// probes above it for the rest of the run.
#[test]
fn from_the_default_start_no_key_walks_down_round_after_round() {
    let (refused, effective) =
        refusals(&format!(":{CONFIGURED}\n"), 5, 40, 200);
    eprintln!(
        "initial 5: refusals per domain {refused:?} (mean {:.2}); \
         effective at the end {effective:?}",
        mean(&refused)
    );
    assert!(mean(&refused) <= 1.5, "refusals per domain {refused:?}");
    assert!(
        refused.iter().all(|&n| n <= 3),
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
    let (refused, effective) =
        refusals(&format!(":{CONFIGURED}\n"), CONFIGURED, 80, 200);
    eprintln!(
        "initial {CONFIGURED}: refusals per domain {refused:?} (mean \
         {:.2}); effective at the end {effective:?}",
        mean(&refused)
    );
    // The first burst: up to 15 in flight per domain, 5 taken; then no
    // probe for the receiver's quiet time.
    assert!(mean(&refused) <= 12.5, "refusals per domain {refused:?}");
    // Never left above the ceiling (a number taken while some of ours
    // had just ended may be below it; probes climb back).
    for e in effective {
        let e = e.expect("no status sample of a key");
        assert!((1..=M + 1).contains(&e), "settled at {e}, ceiling {M}");
    }
}
