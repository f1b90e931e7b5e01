//! A holder's leases live one lease time unless renewed: the thread
//! renews them (every third of it) while the shard runs, and a relay
//! that dies gives them back within the lease time.

mod util;

use std::time::{Duration, Instant};

use shardspawn_fleet::testing::RedisServer;
use util::{Shard, holders, leases};

const LEASE: Duration = Duration::from_secs(2);

#[test]
fn renewal_keeps_leases_and_death_gives_them_back() {
    let server = RedisServer::start();
    let mut a = Shard::with(server.url(), "a", LEASE, 2);
    let mut b = Shard::with(server.url(), "b", LEASE, 2);
    let g = a.claim(leases("k", 10, 10, 10));
    assert_eq!(g.allowed, 10);
    // For two and a half lease times a renews, so b gets nothing; b's
    // own renewals (it wants 10) answer it meanwhile.
    let g = b.claim(leases("k", 10, 0, 10));
    assert_eq!(g.allowed, 0);
    let until = Instant::now() + LEASE * 5 / 2;
    let mut renewals = 0;
    while Instant::now() < until {
        let g = b.grant_of(b"k");
        assert_eq!((g.allowed, g.fleet), (0, 10), "{g:?}");
        renewals += 1;
    }
    assert!(renewals >= 5, "b renewed {renewals} times");
    assert_eq!(holders(&server, "k")["a"], (10, 10));
    // a dies without giving back (its handle dropped, no shutdown): b
    // gets everything within a lease time of a's last renewal.
    drop(a);
    let died = Instant::now();
    loop {
        let g = b.grant_of(b"k");
        if g.allowed == 10 {
            break;
        }
        assert!(died.elapsed() < LEASE * 2, "{g:?}");
    }
    // No sooner than the lease time after a's last renewal (at most a
    // third of it before a died), and a's field is gone.
    assert!(died.elapsed() >= LEASE * 2 / 3 - Duration::from_millis(50));
    assert_eq!(holders(&server, "k").get("a"), None);
}

/// The hash itself expires with its last holder.
#[test]
fn the_lease_hash_expires() {
    let server = RedisServer::start();
    let mut a = Shard::with(server.url(), "a", LEASE, 2);
    a.claim(leases("k", 10, 1, 3));
    let mut con = server.connection();
    let ttl: i64 = shardspawn_fleet::testing::redis::cmd("PTTL")
        .arg("t:lease:k")
        .query(&mut con)
        .unwrap();
    assert!(ttl > 0 && ttl <= 2000, "{ttl}");
}

/// A relay with a shorter lease setting does not cut the hash (and
/// with it the others' leases) short.
#[test]
fn the_hash_outlives_its_last_holder_only() {
    let server = RedisServer::start();
    let mut a = Shard::with(server.url(), "a", LEASE * 15, 2);
    let mut b = Shard::with(server.url(), "b", LEASE, 2);
    a.claim(leases("k", 10, 1, 3));
    b.claim(leases("k", 10, 1, 3));
    let mut con = server.connection();
    let ttl: i64 = shardspawn_fleet::testing::redis::cmd("PTTL")
        .arg("t:lease:k")
        .query(&mut con)
        .unwrap();
    assert!(ttl > 25_000, "{ttl}");
}
