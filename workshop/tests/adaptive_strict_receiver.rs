//! Issue #7: against a receiver stricter than its configured limit, the
//! adaptive limit finds the receiver's own ceiling and stops provoking
//! its refusals.
//!
//! The stand-in plays a strict receiver (`strict3`: a 421 at the
//! greeting whenever 3 of our deliveries to it already run, counted with
//! slot files across processes) and the limits file allows 20 at once.
//! The same workload runs twice through the real spawner: once with
//! adaptation off (`SHARDSPAWN_INITIAL_LIMIT=0`: 20 at once, so most
//! starts find the receiver full) and once with the default. The hold
//! bounds are so generous that every `Z` is the receiver's 421, which
//! the test checks, so the share of deferred deliveries measures only
//! how often we hit the receiver over its ceiling. Adaptation must cut
//! it to at most a third, and the key's effective limit, read from the
//! shard's status file once the run is over, must end within one of the
//! receiver's 3.
//!
//! Adaptation starts at 5, over the receiver's 3: the first round has
//! two refused, and the receiver's refusal sets the limit to what it
//! had. Probing above it, every `limit × 2^p` good deliveries, cost 7 of
//! 150 in all; now nothing probes it for the receiver's quiet time (10
//! minutes): 2. At most 4.

mod adaptive_common;
mod limits_common;

use std::time::Duration;

use shardspawn_workshop::emulator::{Delivery, RunReport};
use shardspawn_workshop::remote::{
    ENV_STRICT_DIR, default_result, result_of, strict_refusal,
};
use shardspawn_workshop::util::deadline_in;

use limits_common::{Rig, finish, show};

/// The receiver's ceiling.
const M: u32 = 3;
/// The configured limit, well above it.
const CONFIGURED: u32 = 20;
const HOST: &str = "strict.test";
const DELIVERIES: usize = 150;
/// Deliveries qmail-send keeps in flight: more than the configured
/// limit, so the static run fills it.
const IN_FLIGHT: usize = 30;

/// What one run saw.
struct Run {
    report: RunReport,
    deferred: usize,
    /// The key's effective limit once the run was over.
    effective: Option<u32>,
    log: String,
}

fn run(extra: &[(&str, &str)]) -> Run {
    let rig = Rig::new(&format!("{HOST}:{CONFIGURED}\n"), 2);
    let slots = rig.home.path().join("strict-slots");
    std::fs::create_dir(&slots).unwrap();
    let slots = slots.to_str().unwrap().to_string();
    let mut settings = vec![
        // Only the receiver's 421s may defer: nothing is held past a
        // bound.
        ("SHARDSPAWN_HOLD_MAX", "1000"),
        ("SHARDSPAWN_HOLD_SECONDS", "600"),
        // Nor is the key suspended by them.
        ("SHARDSPAWN_SUSPEND_AFTER", "0"),
        (ENV_STRICT_DIR, slots.as_str()),
    ];
    settings.extend_from_slice(extra);
    let mut emu = rig.start(&settings);
    let recipient = |i: usize| -> Vec<u8> {
        format!("u{i}+sleep40+strict{M}@{HOST}").into_bytes()
    };
    let deliveries: Vec<Delivery> = (0..DELIVERIES)
        .map(|i| Delivery {
            messid: rig.messid.clone(),
            sender: b"s@origin.test".to_vec(),
            recipient: recipient(i),
        })
        .collect();
    let report =
        emu.run(&deliveries, IN_FLIGHT, deadline_in(Duration::from_secs(120)));
    assert!(report.is_clean(), "{:?}\n{}", report.violations, rig.log_text());
    let ok = default_result(HOST.as_bytes());
    let refusal = result_of(&strict_refusal());
    for o in report.outcomes.iter().flatten() {
        assert!(
            o.body == ok || o.body == refusal,
            "neither a K nor the receiver's 421: {}",
            show(&o.body)
        );
    }
    let deferred = report.letters.z;
    // Once the shard has published every start, the key's line says
    // where its effective limit ended: nothing raises it once the run is
    // no longer saturated, and nothing lowers it without a 421.
    rig.wait_key(HOST, |k| k.started == DELIVERIES as u64);
    let effective = rig.key_status(HOST).map(|k| k.effective);
    finish(&mut emu);
    Run { report, deferred, effective, log: rig.log_text() }
}

#[test]
fn adaptation_defers_a_third_as_much_and_settles_at_the_receivers_ceiling() {
    let fixed = run(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);
    // The spec's default, said outright: the rig turns adaptation off
    // for the tests that are not about it.
    let adaptive = run(&[("SHARDSPAWN_INITIAL_LIMIT", "5")]);
    let share = |r: &Run| r.deferred as f64 / r.report.letters.total() as f64;
    eprintln!(
        "deferred: static {}/{} ({:.3}), adaptive {}/{} ({:.3}); \
         effective: static {:?}, adaptive {:?}",
        fixed.deferred,
        fixed.report.letters.total(),
        share(&fixed),
        adaptive.deferred,
        adaptive.report.letters.total(),
        share(&adaptive),
        fixed.effective,
        adaptive.effective,
    );
    // The static run hit the receiver over its ceiling: otherwise the
    // comparison proves nothing.
    assert!(share(&fixed) > 0.3, "static run too gentle: {}", share(&fixed));
    assert_eq!(fixed.effective, Some(CONFIGURED), "adaptation was off");
    assert!(
        share(&adaptive) * 3.0 <= share(&fixed),
        "adaptive deferred {:.3}, static {:.3}",
        share(&adaptive),
        share(&fixed)
    );
    assert!(
        adaptive.deferred <= 4,
        "adaptive deferred {} of {DELIVERIES}",
        adaptive.deferred
    );
    let settled = adaptive.effective.expect("no status sample of the key");
    assert!(
        (M - 1..=M + 1).contains(&settled),
        "effective limit {settled}, receiver's ceiling {M}"
    );
    // Each lowering is logged, naming the key and the pushback.
    assert!(
        adaptive
            .log
            .lines()
            .any(|l| l.contains(&format!("{HOST}: effective limit "))
                && l.contains("site-level failure")),
        "no lowering logged:\n{}",
        adaptive.log
    );
    assert!(
        !fixed.log.contains(&format!("{HOST}: effective limit ")),
        "the static run changed its limit:\n{}",
        fixed.log
    );
}
