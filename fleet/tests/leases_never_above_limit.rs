//! Two holders sharing a key of limit 10 are never granted more than 10
//! in sum, and a holder at the limit is cut toward its fair share when
//! another waits.

mod util;

use shardspawn_fleet::testing::RedisServer;
use util::{Shard, holders, leases};

/// Each holder runs no more than its last `allowed` and claims with
/// counts that move at random (a fixed xorshift, so a failure repeats).
#[test]
fn two_holders_never_above_the_limit() {
    let server = RedisServer::start();
    let mut shards = [Shard::new(&server, "a"), Shard::new(&server, "b")];
    let mut running = [0u32; 2];
    let mut allowed = [0u32; 2];
    let mut contended = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % u64::from(n)) as u32
    };
    for _ in 0..400 {
        let i = next(2) as usize;
        // Deliveries end, others start within what was allowed.
        running[i] -= next(running[i] + 1);
        running[i] += next(allowed[i].saturating_sub(running[i]) + 1);
        let want = (running[i] + next(8)).min(10);
        let g = shards[i].claim(leases("k", 10, running[i], want));
        allowed[i] = g.allowed;
        contended += u32::from(g.waiting > 0 && g.allowed < want);
        assert!(g.allowed <= want, "{g:?}");
        assert!(g.fleet <= 10, "{g:?}");
        assert!(allowed[0] + allowed[1] <= 10, "{allowed:?} {g:?}");
        let sum: u32 = holders(&server, "k").values().map(|c| c.0).sum();
        assert!(sum <= 10, "{:?}", holders(&server, "k"));
    }
    // The walk did make them compete.
    assert!(contended > 20, "{contended}");
}

#[test]
fn a_holder_at_the_limit_is_cut_toward_its_fair_share() {
    let server = RedisServer::start();
    let (mut a, mut b) = (Shard::new(&server, "a"), Shard::new(&server, "b"));
    let g = a.claim(leases("k", 10, 0, 10));
    assert_eq!((g.allowed, g.fleet, g.waiting), (10, 10, 0));
    // b waits: nothing is free.
    let g = b.claim(leases("k", 10, 0, 10));
    assert_eq!((g.allowed, g.fleet), (0, 10));
    // a, all 10 running, hears that one waits and is allowed half; its
    // running deliveries keep their leases.
    let g = a.claim(leases("k", 10, 10, 10));
    assert_eq!((g.allowed, g.fleet, g.waiting), (5, 10, 1));
    // Five of a's end: it holds five, and b gets the other five.
    let g = a.claim(leases("k", 10, 5, 10));
    assert_eq!((g.allowed, g.fleet, g.waiting), (5, 5, 1));
    let g = b.claim(leases("k", 10, 0, 10));
    assert_eq!((g.allowed, g.fleet, g.waiting), (5, 10, 1));
    assert_eq!(
        holders(&server, "k"),
        [("a".into(), (5, 10)), ("b".into(), (5, 10))].into()
    );
}
