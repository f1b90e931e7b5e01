//! Issue 18: unshared keys stay local and cost nothing new. A relay with
//! Redis configured delivers 60 messages to `local.test:5`, a key
//! without `shared`, and to domains under the default `:100`: Redis
//! runs none of our scripts, holds no key of ours, and the shards'
//! status files count no command sent to it (a connection's own
//! handshake aside: at most 2 a shard). Then, as the control that shows
//! those counts can move, 10 deliveries of `shared.test:5,shared` go
//! through Redis, and both counts rise.

mod fleet_common;
mod limits_common;

use fleet_common::{Fleet, assert_all_k, run_together, soon};
use limits_common::finish;
use shardspawn_workshop::util::wait_for;

const LIMITS: &str = "local.test:5\nshared.test:5,shared\n:100\n";
const SHARDS: u16 = 2;

#[test]
fn a_relay_with_redis_sends_nothing_to_it_for_unshared_keys() {
    let mut fleet = Fleet::new("local", LIMITS, 1, SHARDS);
    let mut emus = fleet.start_all(&[]);
    let mut work = fleet.deliveries(0, 40, &["sleep10"], "local.test");
    work.extend(fleet.deliveries(0, 20, &[], "other.test"));
    let reports =
        run_together(&mut emus, std::slice::from_ref(&work), 20, || {});
    assert_all_k(&fleet, "relay0", &work, &reports[0]);
    let peaks = fleet
        .recording()
        .peak_by(|h| h.to_string())
        .get("local.test")
        .copied();
    assert_eq!(peaks, Some(5), "local.test kept its limit of 5 locally");

    // Every shard has published since the last delivery ended.
    let after = |since: u64| {
        let s = fleet.all_status(0);
        s.len() == usize::from(SHARDS) && s.iter().all(|s| s.updated > since)
    };
    let done = unix_now();
    assert!(wait_for(|| after(done), soon()), "status files not refreshed");
    let scripts = |fleet: &Fleet| {
        fleet.redis.calls("evalsha").unwrap()
            + fleet.redis.calls("eval").unwrap()
    };
    assert_eq!(scripts(&fleet), 0, "Redis ran a script for unshared keys");
    let ours = format!("{}*", fleet.prefix);
    assert_eq!(fleet.redis.keys(&ours).unwrap(), Vec::<String>::new());
    for s in fleet.all_status(0) {
        assert!(
            s.redis_commands <= 2,
            "shard {} sent {} commands to Redis",
            s.shard,
            s.redis_commands
        );
        assert!(s.keys.iter().all(|k| !k.shared), "{:?}", s.keys);
    }
    let before = fleet.redis_commands(0);

    // The control: a shared key goes through Redis, and it shows.
    let shared = fleet.deliveries(0, 10, &[], "shared.test");
    let reports =
        run_together(&mut emus, std::slice::from_ref(&shared), 10, || {});
    assert_all_k(&fleet, "relay0", &shared, &reports[0]);
    assert!(scripts(&fleet) > 0, "the shared key never reached Redis");
    let ok = wait_for(|| fleet.redis_commands(0) > before, soon());
    assert!(ok, "redis_commands stayed at {before}");
    eprintln!(
        "unshared: {before} commands; shared: {} commands, {} scripts run",
        fleet.redis_commands(0),
        scripts(&fleet)
    );
    for emu in &mut emus {
        finish(emu);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
