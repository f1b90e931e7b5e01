//! Issue 15, finding 6: a storm of SIGHUPs with a large limits file
//! keeps the supervisor's memory bounded, and a delivery after it is
//! answered promptly. Each SIGHUP rereads the file and sends it to every
//! shard; a text not yet written to a shard is replaced by the newer
//! one, not queued behind it (once, the whole text was queued per
//! signal per shard: 3 MB -> 408 MB, and 40 s for the next result).
//!
//! The shards are stopped (SIGSTOP) for the storm, as shards too busy
//! to read their job pipes would be: whatever the supervisor sends
//! them waits in its memory. Each SIGHUP is sent once the one before
//! has been taken (the kernel keeps one pending SIGHUP, so a faster
//! storm would be fewer reloads, not more).

mod limits_common;

use std::fs;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardspawn_workshop::remote::default_result;
use shardspawn_workshop::util::{children, wait_for};

use limits_common::{Rig, finish, next, rcpt, show, soon};

/// SIGHUPs in the storm, each a reload: without coalescing the
/// supervisor passed the bound within 20 of them.
const STORM: usize = 500;

/// The most the supervisor may hold at any time (VmHWM, its peak
/// resident set), with a 1.5 MB limits file and two shards: the texts
/// in force and in flight (at most three versions, shared by the
/// shards) and their parse: some 14 MB measured. Queued per signal per
/// shard, 500 signals would be 1.5 GB.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// A valid limits file of about 1.5 MB: two rules and comments. The
/// comments keep each reload cheap for the supervisor, so that the
/// storm is hundreds of reloads in seconds, each sending every shard
/// 1.5 MB.
fn large_limits() -> String {
    let mut text = String::from(":65535\nd1.test:3\n");
    for i in 0..27_000 {
        text.push_str(&format!(
            "# {i:05}: a comment as long as an admin's note on a rule\n"
        ));
    }
    assert!(text.len() > 1_400_000, "{}", text.len());
    text
}

/// A field of /proc/PID/status, as its first word; `None` if the
/// process is gone.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    Some(line[name.len()..].split_whitespace().next()?.to_owned())
}

/// kB of a size field of /proc/PID/status (VmRSS, VmHWM).
fn kib(pid: u32, name: &str) -> u64 {
    let v = status_field(pid, name)
        .unwrap_or_else(|| panic!("supervisor {pid} is gone"));
    v.parse().unwrap()
}

/// Whether a SIGHUP sent to `pid` has not been taken yet.
fn hup_pending(pid: u32) -> bool {
    let mask = status_field(pid, "ShdPnd:")
        .unwrap_or_else(|| panic!("supervisor {pid} is gone"));
    u64::from_str_radix(&mask, 16).unwrap() & 1 != 0
}

#[test]
fn a_sighup_storm_keeps_the_supervisor_bounded_and_mail_flowing() {
    let rig = Rig::new(&large_limits(), 2);
    let mut emu = rig.start(&[]);
    let pid = emu.pid();
    let supervisor = Pid::from_raw(i32::try_from(pid).unwrap());
    rig.send(&mut emu, 0, &rcpt(&[], "d1.test"));
    let ok = default_result(b"d1.test");
    assert_eq!(show(&next(&mut emu).body), show(&ok));

    let shards: Vec<Pid> = children(pid)
        .into_iter()
        .map(|(p, _)| Pid::from_raw(i32::try_from(p).unwrap()))
        .collect();
    assert_eq!(shards.len(), 2, "shards of {pid}: {shards:?}");
    for &shard in &shards {
        kill(shard, Signal::SIGSTOP).unwrap();
    }
    for n in 0..STORM {
        kill(supervisor, Signal::SIGHUP).unwrap();
        assert!(
            wait_for(|| !hup_pending(pid), soon()),
            "SIGHUP {n} not taken"
        );
        if n % 10 == 0 {
            let rss = kib(pid, "VmRSS:");
            assert!(
                rss <= RSS_BOUND_KIB,
                "supervisor at {rss} kB after {n} SIGHUPs"
            );
        }
    }
    for &shard in &shards {
        kill(shard, Signal::SIGCONT).unwrap();
    }

    // Answered before the generous deadline of `next`: the shards read
    // at most one queued text of each file, not a text per signal.
    rig.send(&mut emu, 1, &rcpt(&[], "d1.test"));
    assert_eq!(show(&next(&mut emu).body), show(&ok));
    let peak = kib(pid, "VmHWM:");
    assert!(peak <= RSS_BOUND_KIB, "supervisor peaked at {peak} kB");
    let log = rig.log_text();
    assert!(!log.contains("died"), "{log}");
    finish(&mut emu);
}
