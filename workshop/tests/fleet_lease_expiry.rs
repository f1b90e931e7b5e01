//! Issue 18: a relay that dies gives its leases back within a bound.
//! Two relays share `shared.test:10,shared` with leases of 3 s (renewed
//! every second). Relay 0 runs 10 deliveries of the key that wait at its
//! gate, so it holds all 10 leases; relay 1 is sent 10 more, and its
//! status shows them held, the fleet at 10, none started. Then relay 0
//! is SIGKILLed, its whole process group (supervisor, shards, stand-ins)
//! at once: nothing gives its leases back but their expiry.
//!
//! Proved from the one recording: before the kill the fleet never ran
//! more than 10; relay 1 started none of its deliveries before a lease
//! life (less the renewal period, as the last renewal may have come just
//! before the kill, and 0.5 s for the clocks) had passed since the kill,
//! so the leases outlived their holder as they should; and relay 1 ran
//! all 10 at once within the lease time plus a renewal period of the
//! kill (plus 2 s for a busy machine). Meanwhile it did not spin on
//! Redis: at most 100 scripts a second while it waited.

mod fleet_common;
mod limits_common;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use fleet_common::{Fleet, LEASE_SECONDS, secs, soon};
use limits_common::{finish, next_n, rcpt};
use shardspawn_workshop::recorder::monotonic_ns;
use shardspawn_workshop::util::wait_for;

const LIMITS: &str = "shared.test:10,shared\n:100\n";
const KEY: &str = "shared.test";
const LIMIT: usize = 10;

#[test]
fn a_killed_relays_leases_expire_and_the_other_takes_the_whole_limit() {
    let mut fleet = Fleet::new("expiry", LIMITS, 2, 2);
    let mut first = fleet.start(0, &[]);
    let mut second = fleet.start(1, &[]);
    let gated = rcpt(&["gate"], KEY);
    for delnum in 0..LIMIT as u16 {
        fleet.relays[0].rig.send(&mut first, delnum, &gated);
    }
    let running = |fleet: &Fleet, relay: usize| {
        fleet
            .recording()
            .intervals()
            .iter()
            .filter(|i| fleet.relay_of(i) == Some(relay) && i.end.is_none())
            .count()
    };
    let ok = wait_for(|| running(&fleet, 0) == LIMIT, soon());
    assert!(ok, "relay 0 never ran 10\n{}", fleet.logs());
    for delnum in 0..LIMIT as u16 {
        fleet.relays[1].rig.send(&mut second, delnum, &gated);
    }
    fleet.wait_status(1, KEY, "waiting, the fleet full", |_, k| {
        k.is_some_and(|k| k.held == 10 && k.running == 0 && k.fleet == 10)
    });
    assert_eq!(running(&fleet, 1), 0);

    let scripts = |fleet: &Fleet| {
        fleet.redis.calls("evalsha").unwrap()
            + fleet.redis.calls("eval").unwrap()
    };
    let scripts_at_kill = scripts(&fleet);
    let pgid = i32::try_from(first.pid()).unwrap();
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).unwrap();
    let killed = monotonic_ns();
    drop(first);

    let ok = wait_for(|| running(&fleet, 1) == LIMIT, soon());
    let full = monotonic_ns();
    assert!(ok, "relay 1 never ran 10\n{}", fleet.logs());
    // Relay 0 is gone: every script the server ran since came from
    // relay 1, waiting for leases.
    let waiting_scripts = scripts(&fleet) - scripts_at_kill;
    let recording = fleet.recording();
    let mine = |i: &_| fleet.relay_of(i) == Some(1);
    let first_start = recording.starts(mine)[0];
    let took = secs(killed, full);
    let waited = secs(killed, first_start);
    let lease = LEASE_SECONDS as f64;
    eprintln!(
        "relay 1: first start {waited:.2} s after the kill, all 10 running \
         {took:.2} s after it (lease {lease} s, renewed every {:.1} s); \
         {waiting_scripts} scripts run for it meanwhile",
        lease / 3.0
    );
    assert!(
        waited >= lease * 2.0 / 3.0 - 0.5,
        "relay 1 started {waited:.2} s after the kill: before the leases \
         could have expired"
    );
    assert!(
        took <= lease + lease / 3.0 + 2.0,
        "relay 1 took {took:.2} s to run the whole limit\n{}",
        fleet.logs()
    );
    // Relay 0's stand-ins never ended (killed): until the kill the fleet
    // ran 10, relay 0's; after it, relay 1's 10.
    let zero = |i: &_| fleet.relay_of(i) == Some(0);
    assert_eq!(recording.peak_within(zero, 0, killed), LIMIT);
    assert_eq!(recording.peak_within(|_| true, 0, killed), LIMIT);
    assert_eq!(recording.peak_within(mine, 0, u64::MAX), LIMIT);

    // A key that waits for the fleet asks again when a renewal or a
    // release gives it reason to, not in a loop at Redis's round trip:
    // 100 a second is already far more than a lease time's worth of
    // renewals and releases here.
    let per_second = waiting_scripts as f64 / took.max(0.001);
    assert!(
        per_second <= 100.0,
        "relay 1 ran {waiting_scripts} scripts in {took:.2} s while it \
         waited for leases: a starved key spins on Redis"
    );

    fleet.relays[1].rig.gate.open();
    let records = next_n(&mut second, LIMIT);
    assert!(records.iter().all(|r| r.body.first() == Some(&b'K')));
    finish(&mut second);
}
