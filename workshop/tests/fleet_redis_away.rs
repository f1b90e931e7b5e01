//! Issue 18: Redis away is not an outage. Two relays share
//! `shared.test:10,shared` (leases of 3 s); Redis is SIGKILLed while
//! both are busy with the key, and started again, empty, on the same
//! port a little over a lease time later.
//!
//! Proved, from the status files, the logs and the one recording both
//! relays' stand-ins write:
//!
//! - each relay falls back: its status says `alone` and its log has one
//!   line saying Redis is unreachable; and it keeps delivering while
//!   alone;
//! - each returns: its status says `shared` again, and the new server
//!   runs our script;
//! - no delivery is lost: every one answered once, with a K, on each
//!   side, and every stand-in that started ended;
//! - the peak of the key across the fleet is at most 10 before the
//!   outage, at most 10 + 2 relays × batch 2 = 14 in all (the README's
//!   bound: in a change-over no relay runs more than the leases it
//!   held plus one batch), at most 5 per relay and 10 for the fleet once
//!   a lease time has passed since both were seen alone (each alone at
//!   limit/2), and at most 10 again from a lease time after both were
//!   seen shared again.
//!
//! A second test starts a relay whose Redis is not there at all: it
//! announces as always, says `alone`, and runs the key at limit/relays.

mod fleet_common;
mod limits_common;

use std::time::Duration;

use fleet_common::{
    Fleet, LEASE_SECONDS, assert_all_k, run_together, secs, soon,
};
use limits_common::finish;
use shardspawn_workshop::recorder::monotonic_ns;
use shardspawn_workshop::util::{deadline_in, wait_for};

const LIMITS: &str = "shared.test:10,shared\n:100\n";
const KEY: &str = "shared.test";
const LIMIT: usize = 10;
const BATCH: usize = 2;
/// Deliveries per relay, each stand-in living 200 ms: at 10 at once
/// fleet-wide, about 14 s of work, enough to span the outage.
const PER_RELAY: usize = 350;
const LEASE_NS: u64 = LEASE_SECONDS * 1_000_000_000;

#[test]
fn both_relays_fall_back_when_redis_dies_and_return_when_it_is_back() {
    let mut fleet = Fleet::new("away", LIMITS, 2, 2);
    let mut emus = fleet.start_all(&[]);
    let work: Vec<_> = (0..2)
        .map(|i| fleet.deliveries(i, PER_RELAY, &["sleep200"], KEY))
        .collect();
    // When (monotonic ns): Redis killed; each relay seen alone; Redis
    // up again; each seen shared again.
    let (mut killed, mut alone, mut up, mut back) = (0, [0; 2], 0, [0; 2]);
    let mut started_at_up = 0;
    let fleet_ref = &mut fleet;
    let reports = run_together(&mut emus, &work, 40, || {
        let fleet = fleet_ref;
        // Shared for a while first: both relays have started some.
        let ok = wait_for(
            || {
                let r = fleet.recording();
                (0..2).all(|n| {
                    r.intervals()
                        .iter()
                        .filter(|i| fleet.relay_of(i) == Some(n))
                        .count()
                        >= 20
                })
            },
            soon(),
        );
        assert!(ok, "the relays never got going\n{}", fleet.logs());
        for i in 0..2 {
            fleet.wait_status(i, KEY, "shared", |s, _| s.fleet == "shared");
        }
        fleet.redis.kill();
        killed = monotonic_ns();
        for (i, at) in alone.iter_mut().enumerate() {
            *at = fleet.wait_status(i, KEY, "alone", |s, k| {
                s.fleet.starts_with("alone")
                    && k.is_some_and(|k| k.shared && k.fleet == 0)
            });
        }
        // Alone past the change-over: a lease time and a second after
        // both were seen alone (the change came at or before that),
        // each relay at its own share, still delivering.
        let settled = alone[0].max(alone[1]) + LEASE_NS + 1_000_000_000;
        let ok = wait_for(
            || {
                let r = fleet.recording();
                monotonic_ns() >= settled
                    && (0..2).all(|n| {
                        r.starts(|i| {
                            fleet.relay_of(i) == Some(n) && i.start > settled
                        })
                        .len()
                            >= 5
                    })
            },
            deadline_in(Duration::from_secs(30)),
        );
        assert!(ok, "the relays stopped delivering alone\n{}", fleet.logs());
        fleet.redis.start_again().unwrap_or_else(|e| panic!("{e}"));
        up = monotonic_ns();
        started_at_up = fleet.recording().started();
        for (i, at) in back.iter_mut().enumerate() {
            *at = fleet.wait_status(i, KEY, "shared again", |s, _| {
                s.fleet == "shared"
            });
        }
    });
    for (i, report) in reports.iter().enumerate() {
        assert_all_k(&fleet, &fleet.relays[i].name, &work[i], report);
    }
    assert!(
        started_at_up < 2 * PER_RELAY - 2 * LIMIT,
        "the work was done before Redis came back: nothing left to prove"
    );
    for i in 0..2 {
        let down = fleet.key_log(i, KEY, "unreachable");
        assert_eq!(down.len(), 1, "lines saying so:\n{}", fleet.logs());
        let said = fleet.key_log(i, KEY, "Redis");
        assert!(said.len() >= 2, "fall and return: {said:?}");
    }
    let evalsha = fleet.redis.calls("evalsha").unwrap()
        + fleet.redis.calls("eval").unwrap();
    assert!(evalsha > 0, "the new Redis never heard from the relays");
    for emu in &mut emus {
        finish(emu);
    }

    let recording = fleet.recording();
    assert_eq!(recording.started(), 2 * PER_RELAY);
    assert_eq!(recording.ended(), 2 * PER_RELAY);
    let all = |_: &_| true;
    let end = u64::MAX;
    let settled = alone[0].max(alone[1]) + LEASE_NS;
    let returned = back[0].max(back[1]) + LEASE_NS;
    let phases = [
        ("before the fall", recording.peak_within(all, 0, killed)),
        ("the fall", recording.peak_within(all, killed, settled)),
        ("alone, settled", recording.peak_within(all, settled, up)),
        ("the return", recording.peak_within(all, up, returned)),
        ("back, settled", recording.peak_within(all, returned, end)),
        ("in all", recording.peak_within(all, 0, end)),
    ];
    let alone_own: Vec<usize> = (0..2)
        .map(|r| {
            recording.peak_within(
                |i| fleet.relay_of(i) == Some(r),
                settled,
                up,
            )
        })
        .collect();
    let return_own: Vec<usize> = (0..2)
        .map(|r| {
            recording.peak_within(
                |i| fleet.relay_of(i) == Some(r),
                up,
                returned,
            )
        })
        .collect();
    eprintln!(
        "fell: seen alone {:.2} s and {:.2} s after the kill; Redis down \
         {:.2} s; back: seen shared {:.2} s and {:.2} s after the restart; \
         peaks {phases:?}, per relay alone {alone_own:?}, per relay in \
         the return {return_own:?}",
        secs(killed, alone[0]),
        secs(killed, alone[1]),
        secs(killed, up),
        secs(up, back[0]),
        secs(up, back[1]),
    );
    let over = LIMIT + 2 * BATCH;
    let bounds = [LIMIT, over, LIMIT, over, LIMIT, over];
    for ((phase, peak), bound) in phases.iter().zip(bounds) {
        assert!(
            *peak <= bound,
            "{phase}: the fleet ran {peak} at once, bound {bound}"
        );
    }
    for (r, &p) in alone_own.iter().enumerate() {
        assert!(p <= LIMIT / 2, "relay {r} alone ran {p}, its share is 5");
    }
    // Each status change was seen within a few seconds (status files are
    // written about once a second; Redis is asked at least every
    // lease/3, and reconnected to every second).
    for t in alone.iter().chain(&back) {
        let since = if back.contains(t) { up } else { killed };
        assert!(
            secs(since, *t) < 10.0,
            "a change took {:.2} s",
            secs(since, *t)
        );
    }
}

#[test]
fn a_relay_whose_redis_is_not_there_starts_alone_at_its_share() {
    let mut fleet = Fleet::new("absent", LIMITS, 2, 2);
    let url = fleet.redis.url();
    fleet.redis.kill();
    // Only relay 0 runs; the fleet is still two relays, so its share is
    // 10 / 2 = 5.
    let mut emu = fleet.start(0, &[("SHARDSPAWN_REDIS", &url)]);
    let rig = &fleet.relays[0].rig;
    for delnum in 0..12 {
        rig.send(&mut emu, delnum, &limits_common::rcpt(&["gate"], KEY));
    }
    fleet.wait_status(0, KEY, "alone with 5 running and 7 held", |s, k| {
        s.fleet.starts_with("alone")
            && k.is_some_and(|k| k.running == 5 && k.held == 7)
    });
    rig.wait_started(5);
    let down = fleet.key_log(0, KEY, "unreachable");
    assert_eq!(down.len(), 1, "{}", fleet.logs());
    fleet.relays[0].rig.gate.open();
    let rig = &fleet.relays[0].rig;
    let records = limits_common::next_n(&mut emu, 12);
    assert!(records.iter().all(|r| r.body.first() == Some(&b'K')));
    finish(&mut emu);
    assert!(rig.recording().peak() <= 5);
}
