//! With the `tls` feature, `rediss://` speaks TLS and verifies the
//! server: a plain Redis on the other end is an outage, told in one
//! line without the password.
#![cfg(feature = "tls")]

mod util;

use std::time::Duration;

use shardspawn_fleet::Report;
use shardspawn_fleet::testing::RedisServer;
use util::{Shard, leases};

#[test]
fn rediss_to_a_plain_server_is_down() {
    let server = RedisServer::start();
    let url = format!("rediss://:pw@127.0.0.1:{}/0", server.port());
    let mut a = Shard::with(url, "a", Duration::from_secs(30), 2);
    a.fleet.send(vec![leases("k", 10, 0, 2)]);
    let Report::Down(why) = a.next() else { panic!("Down expected") };
    assert!(why.starts_with("rediss://:***@127.0.0.1:"), "{why}");
    assert!(!why.contains('\n'), "{why}");
}
