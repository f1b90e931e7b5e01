//! With the `tls` feature, `rediss://` speaks TLS and verifies the
//! server: against the CA given (`Config::ca`, a fleet's private CA),
//! else against the Mozilla roots. A server it cannot verify, or a plain
//! Redis on the other end, is an outage, told in one line without the
//! password. The servers here are real: `redis-server` over TLS with a
//! CA and certificate made by `openssl` for the test.
#![cfg(feature = "tls")]

mod util;

use std::time::Duration;

use shardspawn_fleet::testing::RedisServer;
use shardspawn_fleet::{Config, Report};
use util::{PREFIX, Shard, holders, leases};

const PASSWORD: &str = "s3cret-pw";

/// A shard's config for `server`, with its password, trusting `ca`.
fn config(server: &RedisServer, ca: Option<Vec<u8>>) -> Config {
    Config {
        url: server.url().replacen("://", &format!("://:{PASSWORD}@"), 1),
        ca,
        prefix: PREFIX.into(),
        holder: "a".into(),
        lease: Duration::from_secs(30),
        batch: 2,
    }
}

fn ca_of(server: &RedisServer) -> Vec<u8> {
    std::fs::read(server.ca().expect("a TLS server")).unwrap()
}

/// The next report is `Down`, in one line, naming the URL without its
/// password; its reason.
fn down(shard: &mut Shard) -> String {
    let Report::Down(why) = shard.next() else { panic!("Down expected") };
    assert!(why.starts_with("rediss://:***@127.0.0.1:"), "{why}");
    assert!(!why.contains(PASSWORD), "{why}");
    assert!(!why.contains('\n'), "{why}");
    why
}

#[test]
fn rediss_with_the_fleets_ca_is_granted_leases() {
    let server = RedisServer::start_tls_with(&["--requirepass", PASSWORD]);
    assert!(server.url().starts_with("rediss://"));
    let mut a = Shard::start(config(&server, Some(ca_of(&server))));
    let grant = a.claim(leases("k", 10, 0, 2));
    assert_eq!((grant.allowed, grant.fleet), (2, 2));
    // Redis has them, under this holder: seen over TLS too.
    assert_eq!(holders(&server, "k").get("a"), Some(&(2, 2)));
    // A second claim is answered too.
    let grant = a.claim(leases("k", 10, 2, 3));
    assert_eq!(grant.allowed, 3);
}

#[test]
fn rediss_without_the_ca_is_down() {
    // The server's CA is no Mozilla root: not verified, not trusted.
    let server = RedisServer::start_tls_with(&["--requirepass", PASSWORD]);
    let mut a = Shard::start(config(&server, None));
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    let why = down(&mut a);
    assert!(why.contains("certificate"), "{why}");
    // Nothing reached Redis.
    assert!(holders(&server, "k").is_empty());
}

#[test]
fn rediss_with_another_ca_is_down() {
    let server = RedisServer::start_tls_with(&["--requirepass", PASSWORD]);
    let other = RedisServer::start_tls();
    let mut a = Shard::start(config(&server, Some(ca_of(&other))));
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    let why = down(&mut a);
    assert!(why.contains("certificate"), "{why}");
}

#[test]
fn rediss_to_a_plain_server_is_down() {
    let server = RedisServer::start();
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}/0", server.port());
    let mut a = Shard::with(url, "a", Duration::from_secs(30), 2);
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    down(&mut a);
}
