//! What the end-to-end tests of a fleet (issue 18) share: a real
//! `redis-server` on loopback started by the test, and two (or more)
//! relays, each a whole `shardspawn` with its own home, state directory,
//! log and emulated qmail-send, pointed at that Redis with the same key
//! prefix, whose stand-ins append to ONE recording, so that the peak of a
//! shared key is measured across the fleet.
//!
//! A stand-in's start line names its parent, the shard that started it;
//! each relay's shard pids are read from /proc once it has announced, so
//! every interval can be put down to its relay ([`Fleet::relay_of`]).
//!
//! A test drives the relays together with [`run_together`]: one thread
//! per relay runs its emulated qmail-send's workload, while the test's
//! own thread does what the test is about (kills Redis, starts it again,
//! reads the status files).
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardspawn_common::status::{KeyStatus, ShardStatus};
use shardspawn_workshop::emulator::{Delivery, Emulator, RunReport};
use shardspawn_workshop::recorder::{Interval, Recording, monotonic_ns};
use shardspawn_workshop::redis::RedisServer;
use shardspawn_workshop::util::{children, deadline_in, wait_for};
use shardspawn_workshop::workload;

use crate::limits_common::{Rig, STATE_DIR, rcpt, show};

/// A relay's lease time in these tests, seconds: short, so that expiry
/// and the change-over after an outage fit in a test; renewed every
/// third of it.
pub const LEASE_SECONDS: u64 = 3;

/// How long a test waits for what a relay should do "at once" (a status
/// file shows a change within a second or two). Long, as the machine is
/// shared; a passing test never waits it out.
pub fn soon() -> Instant {
    deadline_in(Duration::from_secs(20))
}

/// One relay of the fleet: a rig (home, gate, log) whose recording is the
/// fleet's.
pub struct Relay {
    /// Its fleet name (`SHARDSPAWN_FLEET_NAME`).
    pub name: String,
    /// Its home, gate and log; its `record` is the fleet's recording.
    pub rig: Rig,
    /// Its shards' pids, once it has started.
    pub shard_pids: Vec<u32>,
}

/// A Redis and the relays that share it.
pub struct Fleet {
    /// The server; a test may kill it and start it again.
    pub redis: RedisServer,
    /// The relays, in the order they were made.
    pub relays: Vec<Relay>,
    /// `SHARDSPAWN_REDIS_PREFIX`, unique to the test.
    pub prefix: String,
    /// Every relay's stand-ins record here.
    pub record: PathBuf,
    /// Shards per relay.
    pub shards: u16,
}

impl Fleet {
    /// A Redis and `relays` relays whose limits file says `limits`, with
    /// `shards` shards each; nothing started but Redis. Panics (saying
    /// to install it) when there is no `redis-server`.
    pub fn new(test: &str, limits: &str, relays: usize, shards: u16) -> Fleet {
        let mut made: Vec<Relay> = (0..relays)
            .map(|i| Relay {
                name: format!("relay{i}"),
                rig: Rig::new(limits, shards),
                shard_pids: Vec::new(),
            })
            .collect();
        let record = made[0].rig.record.clone();
        for relay in &mut made[1..] {
            relay.rig.record = record.clone();
        }
        let redis =
            RedisServer::start_in(&made[0].rig.home.path().join("redis"))
                .unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("t{}:{test}:", std::process::id());
        Fleet { redis, relays: made, prefix, record, shards }
    }

    /// The fleet's settings for relay `i`, lease [`LEASE_SECONDS`], as
    /// every test gives them; nothing is ever deferred for waiting
    /// (holds long and deep), so every delivery ends in a K.
    pub fn settings(&self, i: usize) -> Vec<(String, String)> {
        [
            ("SHARDSPAWN_REDIS", self.redis.url()),
            ("SHARDSPAWN_REDIS_PREFIX", self.prefix.clone()),
            ("SHARDSPAWN_FLEET_RELAYS", self.relays.len().to_string()),
            ("SHARDSPAWN_FLEET_NAME", self.relays[i].name.clone()),
            ("SHARDSPAWN_LEASE_SECONDS", LEASE_SECONDS.to_string()),
            ("SHARDSPAWN_HOLD_SECONDS", "600".into()),
            ("SHARDSPAWN_HOLD_MAX", "100000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts relay `i` with the fleet's settings and `extra` (which win)
    /// and learns its shards' pids.
    pub fn start(&mut self, i: usize, extra: &[(&str, &str)]) -> Emulator {
        let mut env = self.settings(i);
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let relay = &mut self.relays[i];
        let emu = relay.rig.start(&env);
        let shards = usize::from(self.shards);
        let mut pids = Vec::new();
        let ok = wait_for(
            || {
                pids = children(emu.pid()).into_iter().map(|c| c.0).collect();
                pids.len() == shards
            },
            soon(),
        );
        assert!(ok, "{}: shards {pids:?}", relay.name);
        relay.shard_pids = pids;
        emu
    }

    /// Starts every relay.
    pub fn start_all(&mut self, extra: &[(&str, &str)]) -> Vec<Emulator> {
        (0..self.relays.len()).map(|i| self.start(i, extra)).collect()
    }

    /// The fleet's recording so far.
    pub fn recording(&self) -> Recording {
        Recording::read(&self.record).unwrap()
    }

    /// Which relay's shard started the stand-in of `interval`.
    pub fn relay_of(&self, interval: &Interval) -> Option<usize> {
        let parent = interval.parent?;
        self.relays.iter().position(|r| r.shard_pids.contains(&parent))
    }

    /// `n` deliveries of relay `i`'s message to `host`, each stand-in
    /// told `directives`.
    pub fn deliveries(
        &self,
        i: usize,
        n: usize,
        directives: &[&str],
        host: &str,
    ) -> Vec<Delivery> {
        (0..n)
            .map(|_| Delivery {
                messid: self.relays[i].rig.messid.clone(),
                sender: workload::SENDER.to_vec(),
                recipient: rcpt(directives, host),
            })
            .collect()
    }

    /// The status file of the shard of relay `i` that owns `key`.
    pub fn shard_status(&self, i: usize, key: &str) -> Option<ShardStatus> {
        let shard =
            shardspawn_common::domain::shard_for(key.as_bytes(), self.shards);
        let path = self.relays[i]
            .rig
            .home
            .path()
            .join(STATE_DIR)
            .join(format!("shard{shard}"));
        ShardStatus::parse(&fs::read_to_string(path).ok()?).ok()
    }

    /// Every shard status file of relay `i` that can be read now.
    pub fn all_status(&self, i: usize) -> Vec<ShardStatus> {
        (0..self.shards)
            .filter_map(|s| {
                let path = self.relays[i]
                    .rig
                    .home
                    .path()
                    .join(STATE_DIR)
                    .join(format!("shard{s}"));
                ShardStatus::parse(&fs::read_to_string(path).ok()?).ok()
            })
            .collect()
    }

    /// Commands relay `i`'s shards have sent to Redis, by their status
    /// files (each published about once a second).
    pub fn redis_commands(&self, i: usize) -> u64 {
        self.all_status(i).iter().map(|s| s.redis_commands).sum()
    }

    /// Waits until the status of the shard of relay `i` owning `key`
    /// satisfies `pred`; returns when it was first seen so, on
    /// `CLOCK_MONOTONIC`; panics with the last status seen if it never
    /// is.
    pub fn wait_status(
        &self,
        i: usize,
        key: &str,
        what: &str,
        pred: impl Fn(&ShardStatus, Option<&KeyStatus>) -> bool,
    ) -> u64 {
        let mut last = None;
        let ok = wait_for(
            || {
                last = self.shard_status(i, key);
                last.as_ref().is_some_and(|s| {
                    pred(s, s.keys.iter().find(|k| k.key == key))
                })
            },
            soon(),
        );
        assert!(
            ok,
            "{}: never {what}; last status {last:#?}\nlog:\n{}",
            self.relays[i].name,
            self.relays[i].rig.log_text()
        );
        monotonic_ns()
    }

    /// Lines of relay `i`'s log from the shard that owns `key` (`...:
    /// shard N: ...`) that contain `needle`: each shard has its own
    /// Redis connection, and says what happens to it in its own lines.
    pub fn key_log(&self, i: usize, key: &str, needle: &str) -> Vec<String> {
        let shard =
            shardspawn_common::domain::shard_for(key.as_bytes(), self.shards);
        let tag = format!(" shard {shard}: ");
        self.relays[i]
            .rig
            .log_text()
            .lines()
            .filter(|l| l.contains(&tag) && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Every relay's log, for a failing assertion.
    pub fn logs(&self) -> String {
        self.relays
            .iter()
            .map(|r| format!("--- {}:\n{}", r.name, r.rig.log_text()))
            .collect()
    }
}

/// Runs `work[i]` through `emus[i]`, every relay at once (at most
/// `in_flight` each), while `during` runs on the calling thread; returns
/// each relay's report once all have finished (two minutes at most).
pub fn run_together(
    emus: &mut [Emulator],
    work: &[Vec<Delivery>],
    in_flight: usize,
    during: impl FnOnce(),
) -> Vec<RunReport> {
    let deadline = deadline_in(Duration::from_secs(120));
    std::thread::scope(|s| {
        let runs: Vec<_> = emus
            .iter_mut()
            .zip(work)
            .map(|(emu, w)| s.spawn(move || emu.run(w, in_flight, deadline)))
            .collect();
        during();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// Each delivery got exactly one result, a K, on relay `name`.
pub fn assert_all_k(
    fleet: &Fleet,
    name: &str,
    work: &[Delivery],
    report: &RunReport,
) {
    assert!(
        report.is_clean(),
        "{name}: {:?}\n{}",
        report.violations,
        fleet.logs()
    );
    for (d, o) in work.iter().zip(&report.outcomes) {
        let o = o.as_ref().expect("is_clean: every delivery answered");
        assert_eq!(
            o.body.first(),
            Some(&b'K'),
            "{name}: {}: {}",
            show(&d.recipient),
            show(&o.body)
        );
    }
    assert_eq!(report.letters.k, work.len(), "{name}");
}

/// Seconds between two `CLOCK_MONOTONIC` readings, for messages.
pub fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}
