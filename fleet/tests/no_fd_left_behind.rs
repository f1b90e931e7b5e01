//! A fleet client started and shut down leaves no fd behind (its
//! eventfd, its connection). Alone in its binary: other tests' fds
//! would blur the count.

mod util;

use std::time::Duration;

use shardspawn_fleet::testing::RedisServer;
use util::{Shard, leases};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn shutdown_closes_every_fd() {
    let server = RedisServer::start();
    let before = fds();
    let mut a = Shard::new(&server, "a");
    assert_eq!(a.claim(leases("k", 10, 0, 2)).allowed, 2);
    assert!(fds() >= before + 2, "an eventfd and a socket");
    a.fleet.shutdown(Duration::from_secs(1));
    assert_eq!(fds(), before);
}
