//! What the fleet tests share: a shard's side of a [`Fleet`], waiting
//! on its wake fd as the shard's epoll would, and a look into Redis.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use shardspawn_common::limits::Rate;
use shardspawn_fleet::testing::{RedisServer, redis};
use shardspawn_fleet::{Claim, Config, Fleet, Grant, Report};

pub const PREFIX: &str = "t:";

/// How long a test waits for what must come.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One shard: its fleet client, and reports not looked at yet.
pub struct Shard {
    pub fleet: Fleet,
    backlog: VecDeque<Report>,
}

impl Shard {
    pub fn new(server: &RedisServer, holder: &str) -> Shard {
        Shard::with(server.url(), holder, Duration::from_secs(30), 2)
    }

    pub fn with(
        url: String,
        holder: &str,
        lease: Duration,
        batch: u32,
    ) -> Shard {
        let cfg = Config {
            url,
            ca: None,
            prefix: PREFIX.into(),
            holder: holder.into(),
            lease,
            batch,
        };
        Shard::start(cfg)
    }

    /// A shard whose fleet client has `cfg`.
    pub fn start(cfg: Config) -> Shard {
        Shard { fleet: Fleet::start(cfg).unwrap(), backlog: VecDeque::new() }
    }

    /// The next report, waiting on the wake fd until `deadline`.
    pub fn next_by(&mut self, deadline: Instant) -> Option<Report> {
        loop {
            if let Some(report) = self.backlog.pop_front() {
                return Some(report);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            let mut fds =
                [PollFd::new(self.fleet.wake_fd(), PollFlags::POLLIN)];
            poll(&mut fds, ms).unwrap();
            self.backlog.extend(self.fleet.reports());
        }
    }

    /// The next report; panics after [`PATIENCE`].
    pub fn next(&mut self) -> Report {
        self.next_by(Instant::now() + PATIENCE).expect("a report in time")
    }

    /// The next grant of `key` (other grants are dropped; `Down` or `Up`
    /// is a failure).
    pub fn grant_of(&mut self, key: &[u8]) -> Grant {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next_by(deadline) {
                Some(Report::Granted(grants)) => {
                    if let Some(g) = grants.into_iter().find(|g| g.key == key)
                    {
                        return g;
                    }
                }
                Some(other) => panic!("a grant expected, not {other:?}"),
                None => panic!("no grant of {key:?} in {PATIENCE:?}"),
            }
        }
    }

    /// Sends one claim and returns its grant.
    pub fn claim(&mut self, claim: Claim) -> Grant {
        let key = claim.key.clone();
        self.fleet.send(vec![claim]);
        self.grant_of(&key)
    }
}

/// A claim of leases only.
pub fn leases(key: &str, limit: u32, running: u32, want: u32) -> Claim {
    Claim {
        key: key.as_bytes().to_vec(),
        limit,
        running,
        want,
        rate: None,
        tokens: 0,
        unused: 0,
    }
}

/// A claim of rate tokens only (no leases wanted beyond the limit's
/// formality).
pub fn tokens(key: &str, rate: Rate, tokens: u32, unused: u32) -> Claim {
    Claim { rate: Some(rate), tokens, unused, ..leases(key, 1000, 0, 0) }
}

/// The lease hash of `key`: holder -> (count, want).
pub fn holders(
    server: &RedisServer,
    key: &str,
) -> HashMap<String, (u32, u32)> {
    let mut con = server.connection();
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{PREFIX}lease:{key}"))
        .query(&mut con)
        .unwrap();
    hash.into_iter()
        .map(|(holder, value)| {
            let mut n = value.split(' ').map(|v| v.parse::<u64>().unwrap());
            let (count, want) = (n.next().unwrap(), n.next().unwrap());
            (holder, (count as u32, want as u32))
        })
        .collect()
}

/// Polls `pred` until it holds or `PATIENCE` passes.
pub fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not in {PATIENCE:?}");
        std::thread::yield_now();
    }
}
