//! Issue 18: two relays share one key's limit through Redis. Each is a
//! whole shardspawn with its own emulated qmail-send, home and state;
//! both read `shared.test:10,shared` and talk to one `redis-server` on
//! loopback. Each is sent far more deliveries of the key than the limit
//! at once, so that each alone would run 10 and the two together 20.
//!
//! Proved from the one recording both relays' stand-ins write: the peak
//! of the key across the fleet is never above 10 and reaches at least 9
//! (the recorded intervals lie inside the spawner's own, so the
//! recording can only see fewer at once than were running); each relay
//! ran a part of it (its own peak at least 3: the fleet shared, no relay
//! starved); every delivery was answered once, with a K, on each side.
//! And it went through Redis: the shards' status says `shared`, counts
//! commands, and the server ran our script.

mod fleet_common;
mod limits_common;

use std::time::Instant;

use fleet_common::{Fleet, assert_all_k, run_together, soon};
use limits_common::finish;
use shardspawn_workshop::util::wait_for;

const LIMITS: &str = "shared.test:10,shared\n:100\n";
const KEY: &str = "shared.test";
const LIMIT: usize = 10;
/// Deliveries per relay, each stand-in living 60 ms: at 10 at once
/// fleet-wide, about 2.4 s of work.
const PER_RELAY: usize = 200;

#[test]
fn two_relays_together_never_run_more_than_the_shared_limit() {
    let began = Instant::now();
    let mut fleet = Fleet::new("limit", LIMITS, 2, 2);
    let mut emus = fleet.start_all(&[]);
    let work: Vec<_> = (0..2)
        .map(|i| fleet.deliveries(i, PER_RELAY, &["sleep60"], KEY))
        .collect();
    let reports = run_together(&mut emus, &work, 40, || {});
    for (i, report) in reports.iter().enumerate() {
        assert_all_k(&fleet, &fleet.relays[i].name, &work[i], report);
    }
    let run_took = reports.iter().map(|r| r.elapsed).max().unwrap();

    // Through Redis: each relay's shard of the key says so.
    for i in 0..2 {
        fleet.wait_status(i, KEY, "shared, with commands counted", |s, k| {
            s.fleet == "shared"
                && s.redis_commands > 0
                && k.is_some_and(|k| k.shared && k.limit == 10)
        });
    }
    let evalsha = fleet.redis.calls("evalsha").unwrap();
    assert!(evalsha > 0, "Redis ran no script");
    let commands = [fleet.redis_commands(0), fleet.redis_commands(1)];

    // Idle, each relay gives its leases back (at most once a second):
    // no holder is left in Redis for the key.
    let pattern = format!("{}*", fleet.prefix);
    let mut left = Vec::new();
    let given_back = wait_for(
        || {
            left = fleet.redis.keys(&pattern).unwrap();
            !left.iter().any(|k| k.contains("lease") && k.contains(KEY))
        },
        soon(),
    );
    assert!(given_back, "leases still held when idle: {left:?}");
    for emu in &mut emus {
        finish(emu);
    }

    let recording = fleet.recording();
    assert_eq!(recording.started(), 2 * PER_RELAY);
    assert_eq!(recording.ended(), 2 * PER_RELAY);
    let whose: Vec<Option<usize>> =
        recording.intervals().iter().map(|i| fleet.relay_of(i)).collect();
    assert!(
        whose.iter().all(Option::is_some),
        "a stand-in of no relay's shard"
    );
    let peak = recording.peak();
    let own: Vec<usize> = (0..2)
        .map(|r| {
            recording.peak_within(
                |i| fleet.relay_of(i) == Some(r),
                0,
                u64::MAX,
            )
        })
        .collect();
    eprintln!(
        "fleet peak {peak} (limit {LIMIT}), relay peaks {own:?}, {} \
         deliveries in {run_took:?} ({:?} in all), Redis commands by the \
         relays {commands:?}, EVALSHA run {evalsha}",
        2 * PER_RELAY,
        began.elapsed()
    );
    assert!(peak <= LIMIT, "the fleet ran {peak} at once, limit {LIMIT}");
    assert!(peak >= LIMIT - 1, "the fleet never came near its limit: {peak}");
    for (r, &p) in own.iter().enumerate() {
        assert!(p >= 3, "relay {r} ran at most {p} at once: {own:?}");
    }
}
