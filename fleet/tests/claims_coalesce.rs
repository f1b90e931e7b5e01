//! Claims that wait are sent together: one script call per 256 keys,
//! the latest claim of a key winning, the tokens it gives back adding
//! up; the commands counter counts every call.

mod util;

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use shardspawn_common::limits::{Per, Rate};
use shardspawn_fleet::Report;
use shardspawn_fleet::testing::RedisServer;
use util::{Shard, leases, tokens};

#[test]
fn three_hundred_claims_take_two_calls_and_one_report() {
    let server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    let claims: Vec<_> =
        (0..300).map(|i| leases(&format!("k{i}"), 10, 0, 2)).collect();
    a.fleet.send(claims);
    let Report::Granted(grants) = a.next() else { panic!("a grant") };
    assert_eq!(grants.len(), 300);
    assert!(grants.iter().all(|g| g.allowed == 2));
    // The first call found no script: EVALSHA, SCRIPT LOAD, EVALSHA;
    // then one EVALSHA for the other 44 keys.
    assert_eq!(a.fleet.commands(), 4);
    // Redis forgot the script (SCRIPT FLUSH): loaded again.
    let mut con = server.connection();
    shardspawn_fleet::testing::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .exec(&mut con)
        .unwrap();
    a.claim(leases("k0", 10, 0, 0));
    assert_eq!(a.fleet.commands(), 7);
}

#[test]
fn a_hundred_claims_of_one_key_are_one_call() {
    let server = RedisServer::start();
    let mut a = Shard::new(&server, "a");
    a.claim(leases("warm", 10, 0, 0)); // the script is loaded
    let before = a.fleet.commands();
    let claims: Vec<_> = (1..=100).map(|i| leases("k", 100, 0, i)).collect();
    a.fleet.send(claims);
    let Report::Granted(grants) = a.next() else { panic!("a grant") };
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0].allowed, grants[0].fleet), (100, 100));
    assert_eq!(a.fleet.commands() - before, 1);
}

/// Unused tokens of superseded claims are given back too.
#[test]
fn unused_tokens_of_superseded_claims_add_up() {
    let server = RedisServer::start();
    let rate = Rate { count: 1, per: Per::Minute };
    let mut a = Shard::with(server.url(), "a", Duration::from_secs(30), 3);
    assert_eq!(a.claim(tokens("k", rate, 3, 0)).tokens, 3);
    // Two tokens given back in two claims, superseded by a third that
    // asks for three: it gets the two.
    a.fleet.send(vec![
        tokens("k", rate, 0, 1),
        tokens("k", rate, 0, 1),
        tokens("k", rate, 3, 0),
    ]);
    assert_eq!(a.grant_of(b"k").tokens, 2);
}

#[test]
fn the_wake_fd_is_nonblocking_and_closed_on_exec() {
    let server = RedisServer::start();
    let a = Shard::new(&server, "a");
    let fd = a.fleet.wake_fd().as_raw_fd();
    let fd_flags = FdFlag::from_bits_retain(
        fcntl(a.fleet.wake_fd(), FcntlArg::F_GETFD).unwrap(),
    );
    let fl = OFlag::from_bits_retain(
        fcntl(a.fleet.wake_fd(), FcntlArg::F_GETFL).unwrap(),
    );
    assert!(fd_flags.contains(FdFlag::FD_CLOEXEC), "fd {fd}");
    assert!(fl.contains(OFlag::O_NONBLOCK), "fd {fd}");
}
