//! Issue 15, finding 2: once the supervisor is gone, no result can reach
//! qmail-send, which runs again every delivery it heard nothing of. A
//! shard that went on starting its held deliveries (60 of 200 did)
//! would deliver each of them twice.
//!
//! One key limited to 1 with 200 deliveries for it, each a stand-in
//! that sleeps 50 ms, so all but one are held. The supervisor is killed
//! just after a start, a whole delivery before the next one would be
//! due. Then no stand-in starts after the kill, the one running does
//! not finish (its result could not reach qmail-send either), and every
//! shard is gone. By SIGKILL, and by SIGTERM, which the supervisor does
//! not catch: the same death.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_workshop::home::LIMITS;
use shardspawn_workshop::recorder::monotonic_ns;
use shardspawn_workshop::spawner::Stage;
use shardspawn_workshop::util::{children, deadline_in, fork_lock};
use shardspawn_workshop::{wait_for, workload};

const HELD: usize = 200;

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Holds `HELD` deliveries behind a limit of 1, kills the supervisor
/// with `signal` just after the fifth has started, and checks that
/// nothing started or finished after it and that the shards are gone.
fn supervisor_dies_by(signal: Signal) {
    let _lock = fork_lock();
    let s = Stage::new();
    s.home.write_file(LIMITS, b":65535\nd1.test:1\n").unwrap();
    let mut emu = s
        .spawner(DelnumWidth::Two, 2)
        .slots(1000)
        .env("SHARDSPAWN_HOLD_MAX", "1000")
        .env("SHARDSPAWN_HOLD_SECONDS", "600")
        .start()
        .unwrap();
    let sup = emu.pid();
    let shards: Vec<u32> = children(sup).iter().map(|c| c.0).collect();
    assert_eq!(shards.len(), 2);
    let messid = s.home.add_message(b"Subject: x\n\nx\n");
    for delnum in 0..HELD {
        emu.send(&Command {
            delnum: u16::try_from(delnum).unwrap(),
            messid: messid.clone().into_bytes(),
            sender: workload::SENDER.to_vec(),
            recipient: b"u+sleep50@d1.test".to_vec(),
        })
        .unwrap();
    }
    // Just after a start (seen within 20 ms of it): the next is a whole
    // 50 ms delivery away, so none is between clone and its first line.
    s.wait_started(5, deadline_in(Duration::from_secs(30)));
    let killed_at = monotonic_ns();
    kill(Pid::from_raw(sup as i32), signal).unwrap();

    let gone = wait_for(
        || shards.iter().all(|&p| !alive(p)),
        deadline_in(Duration::from_secs(10)),
    );
    let recording = s.recording();
    let late: Vec<_> =
        recording.intervals().iter().filter(|i| i.start > killed_at).collect();
    let finished: Vec<_> = recording
        .intervals()
        .iter()
        .filter(|i| i.end.is_some_and(|end| end > killed_at))
        .collect();
    eprintln!(
        "{signal}: {} of {HELD} started before the kill, {} after; {} \
         finished after it; shards gone: {gone}",
        recording.started() - late.len(),
        late.len(),
        finished.len()
    );
    assert!(late.is_empty(), "started after the supervisor died: {late:?}");
    assert!(finished.is_empty(), "finished after it: {finished:?}");
    assert!(gone, "shards outlived the supervisor");
    let status = emu.wait_exit(deadline_in(Duration::from_secs(10)));
    assert!(status.is_some_and(|s| s.code().is_none()), "{status:?}");
}

#[test]
fn no_delivery_starts_after_the_supervisor_is_sigkilled() {
    supervisor_dies_by(Signal::SIGKILL);
}

#[test]
fn no_delivery_starts_after_the_supervisor_is_sigtermed() {
    supervisor_dies_by(Signal::SIGTERM);
}
