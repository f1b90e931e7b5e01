//! What the tests of `shardspawn control` (issue 17) share: running the
//! command against a rig's state directory, and the shard that owns a
//! key. The spawner, its log, recording and status come from
//! `limits_common`'s [`Rig`].
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::process::{Command, Output};

use shardspawn_common::status::ShardStatus;
use shardspawn_workshop::util::bin_path;

use crate::limits_common::{Rig, STATE_DIR};

/// `shardspawn control ARGS --state-dir DIR` for `rig`, not yet run.
pub fn control_command(rig: &Rig, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path("shardspawn"));
    cmd.arg("control")
        .args(args)
        .arg("--state-dir")
        .arg(rig.home.path().join(STATE_DIR))
        .env_clear();
    cmd
}

/// Runs it; panics unless it exits 0. Its stdout.
pub fn control(rig: &Rig, args: &[&str]) -> String {
    let out = run(control_command(rig, args));
    assert!(
        out.status.success(),
        "control {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to its end.
pub fn run(mut cmd: Command) -> Output {
    cmd.output().expect("shardspawn control runs")
}

/// The status of shard `n` of `rig`, if published.
pub fn shard_status(rig: &Rig, n: u16) -> Option<ShardStatus> {
    let path = rig.home.path().join(STATE_DIR).join(format!("shard{n}"));
    ShardStatus::parse(&std::fs::read_to_string(path).ok()?).ok()
}

/// The shard that owns `key`.
pub fn shard_of(rig: &Rig, key: &str) -> u16 {
    shardspawn_common::domain::shard_for(key.as_bytes(), rig.shards)
}

/// Waits until every shard has read the controls file with `n` lines
/// in force (each says so in the log as it reads it), `times` reads in
/// all over the shards.
pub fn wait_read(rig: &Rig, n: usize, times: usize) {
    let line = format!("controls by hand: {n} lines in force");
    rig.wait_log(&[&line], times);
}
