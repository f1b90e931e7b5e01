//! Redis killed is one `Down` for the whole outage; started again on
//! the same port (empty), it is one `Up` and every key claimed again.
//! A password is used and never shown.

mod util;

use std::time::{Duration, Instant};

use shardspawn_fleet::Report;
use shardspawn_fleet::testing::RedisServer;
use util::{Shard, holders, leases, wait_for};

#[test]
fn down_once_then_up_and_keys_claimed_again() {
    let mut server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    assert_eq!(a.claim(leases("k", 10, 3, 5)).allowed, 5);
    assert_eq!(a.claim(leases("idle", 10, 0, 0)).allowed, 0);
    server.kill();
    // The next claim meets the outage; claims while down are dropped
    // (no grant) but remembered for the return.
    a.fleet.send(vec![leases("k", 10, 4, 6)]);
    let Report::Down(why) = a.next() else { panic!("Down expected") };
    assert!(why.contains(&server.url()), "{why}");
    assert!(!why.contains('\n'), "{why}");
    a.fleet.send(vec![leases("j", 10, 1, 1)]);
    // Three reconnection attempts later: still just the one Down.
    let quiet = Instant::now() + Duration::from_millis(3200);
    assert_eq!(a.next_by(quiet), None);
    server.restart();
    assert_eq!(a.next(), Report::Up);
    let Report::Granted(mut grants) = a.next() else { panic!("grants") };
    grants.sort_by(|x, y| x.key.cmp(&y.key));
    let got: Vec<_> = grants.iter().map(|g| (&g.key[..], g.allowed)).collect();
    assert_eq!(got, [(&b"j"[..], 1), (b"k", 6)]);
    assert_eq!(holders(&server, "k")["a"], (6, 6));
    assert_eq!(holders(&server, "j")["a"], (1, 1));
}

#[test]
fn redis_away_at_start_is_down_then_up() {
    let mut server = RedisServer::start();
    server.kill();
    let mut a = Shard::new(&server, "a");
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    assert!(matches!(a.next(), Report::Down(_)));
    server.restart();
    assert_eq!(a.next(), Report::Up);
    assert_eq!(a.grant_of(b"k").allowed, 2);
}

#[test]
fn a_password_is_used_and_never_shown() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();
    let url = format!("redis://:s3cret@127.0.0.1:{port}/0");
    let mut a = Shard::with(url, "a", Duration::from_secs(30), 2);
    assert_eq!(a.claim(leases("k", 10, 0, 2)).allowed, 2);
    let url = format!("redis://:wrong@127.0.0.1:{port}/0");
    let mut b = Shard::with(url, "b", Duration::from_secs(30), 2);
    b.fleet.send(vec![leases("k", 10, 0, 2)]);
    let Report::Down(why) = b.next() else { panic!("Down expected") };
    assert!(!why.contains("wrong"), "{why}");
    assert!(why.contains(":***@"), "{why}");
    wait_for("a's leases", || holders(&server, "k")["a"] == (2, 2));
}

/// Redis that answers with an error (here a foreign value where the
/// lease hash should be) is one outage until it answers well, not a
/// `Down`/`Up` every second.
#[test]
fn an_error_answer_is_one_outage_not_a_flap() {
    use shardspawn_fleet::testing::redis;
    let server = RedisServer::start();
    let mut con = server.connection();
    redis::cmd("SET").arg("t:lease:k").arg("x").exec(&mut con).unwrap();
    let mut a = Shard::new(&server, "a");
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    let Report::Down(why) = a.next() else { panic!("Down expected") };
    assert!(why.contains("WRONGTYPE"), "{why}");
    let quiet = Instant::now() + Duration::from_millis(2200);
    assert_eq!(a.next_by(quiet), None);
    redis::cmd("DEL").arg("t:lease:k").exec(&mut con).unwrap();
    assert_eq!(a.next(), Report::Up);
    assert_eq!(a.grant_of(b"k").allowed, 2);
}

/// A server that hangs (SIGSTOP) is an outage after the 1 s read
/// timeout; the shard's loop never waits for it.
#[test]
fn a_hung_server_is_down_after_the_timeout() {
    let server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    assert_eq!(a.claim(leases("k", 10, 0, 2)).allowed, 2);
    server.freeze(true);
    let sent = Instant::now();
    a.fleet.send(vec![leases("k", 10, 1, 2)]);
    assert!(sent.elapsed() < Duration::from_millis(50), "send blocked");
    let Report::Down(why) = a.next() else { panic!("Down expected") };
    assert!(why.ends_with("no answer in 1 s"), "{why}");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    server.freeze(false);
    assert_eq!(a.next(), Report::Up);
    assert_eq!(a.grant_of(b"k").allowed, 2);
}
