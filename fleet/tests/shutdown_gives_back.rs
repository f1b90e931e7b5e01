//! A shard that ends gives back every lease it holds (and its unused
//! tokens), so the fleet need not wait for them to expire.

mod util;

use std::time::{Duration, Instant};

use shardspawn_common::limits::{Per, Rate};
use shardspawn_fleet::testing::RedisServer;
use shardspawn_fleet::{Claim, Report};
use util::{Shard, holders, leases, tokens};

#[test]
fn shutdown_gives_leases_back() {
    let server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    let mut b = Shard::new(&server, "b");
    assert_eq!(a.claim(leases("k", 10, 10, 10)).allowed, 10);
    assert_eq!(a.claim(leases("j", 4, 2, 4)).allowed, 4);
    let rate = Rate { count: 1, per: Per::Minute };
    assert_eq!(a.claim(tokens("r", rate, 1, 0)).tokens, 1);
    // Sent and not yet answered: given back too.
    a.fleet.send(vec![Claim { unused: 1, ..tokens("r", rate, 0, 0) }]);
    let started = Instant::now();
    a.fleet.shutdown(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(holders(&server, "k").is_empty());
    assert!(holders(&server, "j").is_empty());
    assert_eq!(b.claim(leases("k", 10, 0, 10)).allowed, 10);
    assert_eq!(b.claim(tokens("r", rate, 1, 0)).tokens, 1);
}

#[test]
fn shutdown_with_redis_away_ends_within_its_wait() {
    let mut server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    assert_eq!(a.claim(leases("k", 10, 1, 2)).allowed, 2);
    server.kill();
    a.fleet.send(vec![leases("k", 10, 1, 2)]);
    assert!(matches!(a.next(), Report::Down(_)));
    let started = Instant::now();
    a.fleet.shutdown(Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_millis(1500));
}
