//! The limits file changes while the spawner runs (qmail-start's children
//! never see qmail-send's HUP, so the supervisor looks at the file every
//! 2 s by itself, and reloads at once on its own SIGHUP): a raised limit
//! lets held deliveries start, a lowered one lets fewer start and stops
//! none, a broken file changes nothing but the log. At startup a broken
//! file is fatal: no announcement, exit 100.
//!
//! Deliveries that must stay running wait at the stand-in's gate. The
//! tests wait on events: records, the recording, the log, and the
//! shards' status files (published once a second), which show that a
//! shard has taken the new limit before a test relies on it.

mod limits_common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardspawn_workshop::Emulator;
use shardspawn_workshop::home::LIMITS;
use shardspawn_workshop::recorder::Interval;
use shardspawn_workshop::remote::default_result;

use limits_common::{Rig, assert_no_record_yet, finish, next_n, rcpt, show};

const RELOADED: &str = "limits reloaded from";
const NOT_RELOADED: &str = "limits not reloaded, keeping the ones in force: ";

/// Opens the gate and takes `n` records, each a `K` from d1.test.
fn open_and_take_ks(rig: &mut Rig, emu: &mut Emulator, n: usize) {
    rig.gate.open();
    let ok = default_result(b"d1.test");
    for r in next_n(emu, n) {
        assert_eq!(show(&r.body), show(&ok), "delnum {}", r.delnum);
    }
}

#[test]
fn a_raised_limit_lets_held_deliveries_start() {
    let mut rig = Rig::new("d1.test:1\n", 2);
    let mut emu = rig.start(&[]);
    for delnum in 0..4 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(1);
    rig.wait_key("d1.test", |k| k.running == 1 && k.held == 3);

    rig.replace_limits("d1.test:3\n");
    // Without opening the gate: two more start, the fourth still waits.
    rig.wait_started(3);
    rig.wait_key("d1.test", |k| (k.running, k.held, k.limit) == (3, 1, 3));
    assert_eq!(rig.log_lines(&[RELOADED, "1 rules"]).len(), 1);
    assert_eq!(rig.recording().ended(), 0);
    assert_no_record_yet(&mut emu);

    open_and_take_ks(&mut rig, &mut emu, 4);
    finish(&mut emu);
    let recording = rig.recording();
    assert_eq!(recording.started(), 4);
    assert_eq!(recording.peak(), 3);
}

#[test]
fn a_lowered_limit_stops_nothing_and_lets_fewer_start() {
    let mut rig = Rig::new("d1.test:3\n", 2);
    let mut emu = rig.start(&[]);
    // Past the gate they end one by one, so that a held delivery
    // started too early would overlap the ones still running.
    for (delnum, after) in [(0, "sleep1"), (1, "sleep150"), (2, "sleep300")] {
        rig.send(&mut emu, delnum, &rcpt(&["gate", after], "d1.test"));
    }
    // Short but real deliveries: had they run side by side, the
    // recording would show it.
    for delnum in 3..7 {
        rig.send(&mut emu, delnum, &rcpt(&["sleep30"], "d1.test"));
    }
    rig.wait_started(3);
    rig.wait_key("d1.test", |k| k.running == 3 && k.held == 4);

    rig.replace_limits("d1.test:1\n");
    // The shard has the new limit, and the three over it run on.
    rig.wait_key("d1.test", |k| (k.running, k.held, k.limit) == (3, 4, 1));
    let recording = rig.recording();
    assert_eq!((recording.started(), recording.ended()), (3, 0));
    assert_no_record_yet(&mut emu);

    open_and_take_ks(&mut rig, &mut emu, 7);
    finish(&mut emu);

    // From the lowering on, at most one at a time: no held delivery
    // started until all three that were running had ended (running < 1
    // means all of them), and then one after another. A recorded
    // interval lies strictly inside the spawner's spawn..reap interval,
    // so "ended before the next started" in the recording is a fact
    // about the spawner, not a lucky reading.
    let recording = rig.recording();
    let mut intervals: Vec<Interval> = recording.intervals().to_vec();
    intervals.sort_by_key(|i| i.start);
    assert_eq!(intervals.len(), 7);
    let end = |i: &Interval| i.end.expect("every stand-in exited");
    let (over, held) = intervals.split_at(3);
    let last_over = over.iter().map(end).max().unwrap();
    assert!(
        held[0].start > last_over,
        "a held delivery started while one of the three still ran: \
         {intervals:?}"
    );
    for pair in held.windows(2) {
        assert!(
            pair[1].start > end(&pair[0]),
            "two held deliveries ran at once: {pair:?}"
        );
    }
}

#[test]
fn a_broken_file_keeps_the_limits_in_force_and_names_its_line() {
    let mut rig = Rig::new("d1.test:1\n", 2);
    let mut emu = rig.start(&[]);
    rig.replace_limits("d1.test:0\n");
    rig.wait_log(&[NOT_RELOADED], 1);
    let warning = &rig.log_lines(&[NOT_RELOADED])[0];
    assert!(
        warning.contains(
            "concurrencydomains: line 1: d1.test:0: a limit must be at \
             least 1"
        ),
        "{warning}"
    );
    assert!(rig.log_lines(&[RELOADED]).is_empty());

    // The old limit, 1, still holds.
    for delnum in 0..2 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(1);
    rig.wait_key("d1.test", |k| (k.running, k.held, k.limit) == (1, 1, 1));

    // Fixed: the next look takes it, and the held one starts.
    rig.replace_limits("d1.test:2\n");
    rig.wait_started(2);
    rig.wait_log(&[RELOADED], 1);
    // One warning for the broken version, however often it was looked at.
    assert_eq!(rig.log_lines(&[NOT_RELOADED]).len(), 1);

    open_and_take_ks(&mut rig, &mut emu, 2);
    finish(&mut emu);
}

#[test]
fn sighup_reloads_at_once_even_when_the_file_looks_unchanged() {
    const FIRST: &str = "d1.test:1\n# the first version of this file\n";
    let mut rig = Rig::new(FIRST, 2);
    let mut emu = rig.start(&[]);
    let supervisor = Pid::from_raw(i32::try_from(emu.pid()).unwrap());
    let path = rig.home.path().join(LIMITS);

    // Same file, same stamp: the 2-second look never reloads it; a HUP
    // does, and says so.
    assert!(rig.log_lines(&[RELOADED]).is_empty());
    kill(supervisor, Signal::SIGHUP).unwrap();
    rig.wait_log(&[RELOADED, "default 20, 1 rules"], 1);

    // New contents behind the same stamp (inode, size, modification
    // time): only a HUP can notice. (Should the 2-second look fall in
    // the microseconds between the write and the restored time, it
    // would reload by itself and this would pass without the HUP; it
    // cannot make it fail.)
    for delnum in 0..3 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(1);
    rig.wait_key("d1.test", |k| k.running == 1 && k.held == 2);
    let before = fs::metadata(&path).unwrap();
    // A second rule, so the log line differs from the first reload's
    // (the log writes a line repeated at once as a count), padded to
    // the old size.
    let mut second = "d1.test:3\n:20\n#".to_string();
    second.push_str(&"x".repeat(FIRST.len() - second.len() - 1));
    second.push('\n');
    fs::write(&path, &second).unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = fs::metadata(&path).unwrap();
    let stamp =
        |m: &fs::Metadata| (m.ino(), m.size(), m.mtime(), m.mtime_nsec());
    assert_eq!(stamp(&after), stamp(&before), "the stamp changed");
    kill(supervisor, Signal::SIGHUP).unwrap();
    rig.wait_started(3);
    rig.wait_key("d1.test", |k| (k.running, k.limit) == (3, 3));
    rig.wait_log(&[RELOADED, "default 20, 2 rules"], 1);

    open_and_take_ks(&mut rig, &mut emu, 3);
    finish(&mut emu);
}

#[test]
fn a_broken_file_at_startup_is_fatal_before_the_announcement() {
    let rig = Rig::new("# fine so far\nd1.test:1\n=g:0\n", 2);
    let mut child = rig
        .command(&[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let status = child.wait().unwrap();
    assert!(out.is_empty(), "announced: {}", show(&out));
    assert_eq!(status.code(), Some(100), "{log}");
    assert!(
        log.contains(
            "concurrencydomains: line 3: =g:0: a limit must be at least 1"
        ),
        "{log}"
    );
    // It never got as far as starting a shard.
    assert!(!log.contains("shard 0:"), "{log}");
    assert!(!rig.record.exists());
}
