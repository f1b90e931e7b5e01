//! Issue 15, finding 3: when a shard dies, the supervisor answers each
//! of its deliveries `Z ... will try again`, so qmail-send will run each
//! one again. A qmail-remote of that shard that went on and finished its
//! delivery after the `Z` would deliver the message twice.
//!
//! Ten times, a shard is SIGKILLed while 100 stand-ins of its run (each
//! sleeps three seconds, so none is near its end), and each of its
//! deliveries is answered with the lost-shard `Z`. Then, per kill, the
//! stand-ins that recorded their end after the kill are counted: each is
//! a delivery done behind its `Z`. The count must be 0 every time.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::domain;
use shardspawn_common::limits::Limits;
use shardspawn_workshop::home::NO_LIMITS;
use shardspawn_workshop::recorder::monotonic_ns;
use shardspawn_workshop::spawner::Stage;
use shardspawn_workshop::util::{deadline_in, fork_lock};
use shardspawn_workshop::{Emulator, Recording, wait_for, workload};

const SHARDS: u16 = 2;
const RUNNING: usize = 100;
const KILLS: usize = 10;

/// The shard a host's deliveries go to, found as the supervisor finds
/// it.
fn shard_of(host: &str) -> u16 {
    static LIMITS: LazyLock<Limits> =
        LazyLock::new(|| Limits::parse(NO_LIMITS).unwrap());
    let host = domain::normalise(host.as_bytes());
    domain::shard_for(&LIMITS.lookup(&host).key, SHARDS)
}

fn lost(index: u16) -> Vec<u8> {
    format!(
        "Zshardspawn: spawner shard {index} died; will try again. (#4.3.0)\n"
    )
    .into_bytes()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// `RUNNING` hosts of kill `k`, each its own domain, all on shard
/// `victim`: a host names its delivery in the recording.
fn hosts(k: usize, victim: u16) -> Vec<String> {
    (0..)
        .map(|i| format!("d{i}.k{k}.test"))
        .filter(|h| shard_of(h) == victim)
        .take(RUNNING)
        .collect()
}

/// Runs `RUNNING` deliveries on shard `victim`, SIGKILLs it once every
/// one has started, takes their records (each must be the lost-shard
/// `Z`), waits until each of its stand-ins is gone, and returns how many
/// of them finished after the kill.
fn kill_round(s: &Stage, emu: &mut Emulator, k: usize, victim: u16) -> usize {
    let hosts = hosts(k, victim);
    let before = s.recording().started();
    for (delnum, host) in hosts.iter().enumerate() {
        let messid = s.home.add_message(b"Subject: x\n\nx\n");
        emu.send(&Command {
            delnum: u16::try_from(delnum).unwrap(),
            messid: messid.into_bytes(),
            sender: workload::SENDER.to_vec(),
            recipient: format!("u+sleep3000@{host}").into_bytes(),
        })
        .unwrap();
    }
    s.wait_started(before + RUNNING, deadline_in(Duration::from_secs(30)));
    let mine = |r: &Recording| r.intervals()[before..].to_vec();
    let ran = mine(&s.recording());
    // Every one of them is a child of the same shard process.
    let shard = ran[0].parent.expect("a start names its parent");
    assert!(ran.iter().all(|i| i.parent == Some(shard)), "{ran:?}");
    assert!(ran.iter().all(|i| i.end.is_none()), "one ended before the kill");

    let killed_at = monotonic_ns();
    kill(Pid::from_raw(shard as i32), Signal::SIGKILL).unwrap();
    let deadline = deadline_in(Duration::from_secs(30));
    let mut answered: HashMap<u16, Vec<u8>> = HashMap::new();
    while answered.len() < RUNNING {
        let r = emu.recv(deadline).expect("a record for each delivery");
        assert!(answered.insert(r.delnum, r.body).is_none(), "twice");
    }
    for body in answered.values() {
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&lost(victim))
        );
    }
    // Each stand-in is gone, by its own end or killed; then the
    // recording holds every end there will be.
    let gone = wait_for(
        || ran.iter().all(|i| !alive(i.pid)),
        deadline_in(Duration::from_secs(30)),
    );
    assert!(gone, "stand-ins of the dead shard still run");
    let finished = mine(&s.recording())
        .iter()
        .filter(|i| i.end.is_some_and(|end| end > killed_at))
        .count();
    eprintln!(
        "kill {}: shard {victim} (pid {shard}) with {RUNNING} running: \
         {finished} finished after the kill behind their Z",
        k + 1
    );
    finished
}

#[test]
fn a_killed_shards_qmail_remotes_never_finish_behind_its_z() {
    let _lock = fork_lock();
    let s = Stage::new();
    let mut emu =
        s.spawner(DelnumWidth::Two, SHARDS).slots(1000).start().unwrap();
    // Two shards killed in turn: a shard killed young is restarted after
    // a pause that doubles, five kills each keep it short.
    let counts: Vec<usize> = (0..KILLS)
        .map(|k| kill_round(&s, &mut emu, k, (k % 2) as u16))
        .collect();
    eprintln!("finished behind a Z, per kill: {counts:?}");
    assert!(counts.iter().all(|&n| n == 0), "{counts:?}");
    emu.close_commands();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(30)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}
