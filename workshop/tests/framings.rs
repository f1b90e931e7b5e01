//! Both of qmail-send's framings end to end (protocol §1.2, §2.1, §5.1):
//! the announcement, delnums by position (0x00 is a delnum, not a
//! terminator; two bytes low first), commands cut at every byte, a long
//! run answered exactly once per command, and a clean exit at EOF.
//!
//! The emulator reads the announcement as exactly one byte, or two bytes
//! low first, and decodes everything after it as records; a value it
//! decodes right and a result stream that ends cleanly with no record
//! (`finish`) prove the announcement's bytes and that nothing else was
//! written.

mod qmail_start;

use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit};
use shardspawn_common::command::DelnumWidth;
use shardspawn_common::record::Record;
use shardspawn_workshop::emulator::{Delivery, Options};
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::remote::{default_result, out_directive};
use shardspawn_workshop::util::{children, deadline_in, fd_count, wait_for};

use qmail_start::{
    WIDTHS, cmd, expect, finish, rcpt, send, show, soon, spawner, start,
    start_with,
};

const ONE: DelnumWidth = DelnumWidth::One;
const TWO: DelnumWidth = DelnumWidth::Two;

/// The slots `shardspawn` announces for `width` and SHARDSPAWN_SLOTS
/// `slots`, after which it must have written nothing more.
fn announced(width: DelnumWidth, slots: Option<&str>) -> u16 {
    let home = QmailHome::new().unwrap();
    let mut spawner = spawner(&home, width);
    if let Some(slots) = slots {
        spawner.env("SHARDSPAWN_SLOTS", slots);
    }
    let mut emu = start(spawner, width);
    assert!(finish(&mut emu).is_empty(), "records after the announcement");
    emu.slots()
}

#[test]
fn one_byte_framing_announces_the_slots_in_one_byte() {
    assert_eq!(announced(ONE, Some("17")), 17);
    assert_eq!(announced(ONE, Some("1")), 1);
}

#[test]
fn one_byte_framing_announces_255_by_default() {
    assert_eq!(announced(ONE, None), 255);
}

#[test]
fn two_byte_framing_announces_low_byte_first() {
    // FD 01: read high byte first it would be 64769.
    assert_eq!(announced(TWO, Some("509")), 509);
    assert_eq!(announced(TWO, Some("256")), 256);
}

#[test]
fn two_byte_framing_announces_32767_by_default() {
    assert_eq!(announced(TWO, None), 32767);
}

#[test]
fn two_byte_framing_honours_40000_slots() {
    // shardspawn announces no more slots than its shards have
    // descriptors for (the hard open-files limit each, less a reserve),
    // so give it shards enough for 40000 under this machine's limit.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let per_shard = hard.saturating_sub(64).max(1);
    let shards = 40_000u64.div_ceil(per_shard).clamp(2, 64);
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, TWO);
    spawner
        .env("SHARDSPAWN_SLOTS", "40000")
        .env("SHARDSPAWN_SHARDS", shards.to_string());
    let mut emu = start(spawner, TWO);
    assert_eq!(emu.slots(), 40000);
    // With more than 32768 slots qmail-send must read the high byte
    // unsigned, so 0x8000 and up are plain delnums.
    for delnum in [0x8000, 39999] {
        let host = format!("d{delnum}.test");
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], &host)));
        expect(&mut emu, delnum, &default_result(host.as_bytes()));
    }
    send(&mut emu, &cmd(40000, &m, b"", &rcpt(&[], "d.test")));
    expect(&mut emu, 40000, b"ZInternal error: delnum too big. (#4.3.5)\n");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn one_byte_framing_refuses_300_slots_and_writes_nothing() {
    let home = QmailHome::new().unwrap();
    let mut spawner = spawner(&home, ONE);
    // fd 2 is a pipe here, not closed, to read why it refused.
    let out = spawner
        .env("SHARDSPAWN_SLOTS", "300")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100), "{out:?}");
    assert!(out.stdout.is_empty(), "wrote {:?}", out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("SHARDSPAWN_SLOTS=300"), "log: {log}");
}

#[test]
fn delnum_0_works_in_both_framings() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut emu = start(spawner(&home, width), width);
        // Twice: the second also proves slot 0 was freed.
        for host in ["a.test", "b.test"] {
            send(&mut emu, &cmd(0, &m, b"", &rcpt(&[], host)));
            expect(&mut emu, 0, &default_result(host.as_bytes()));
        }
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn delnums_above_255_work_in_two_byte_framing() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut emu = start(spawner(&home, TWO), TWO);
    // 256 is 00 01: a NUL low byte; 0x1200 and 0x0100 share a low byte
    // with 0; 32766 is the last slot.
    let delnums = [256u16, 300, 0x1200, 0x7f00, 32766, 255];
    for &delnum in &delnums {
        let host = format!("d{delnum}.test");
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], &host)));
    }
    let mut got = take(&mut emu, delnums.len());
    got.sort_by_key(|r| r.delnum);
    let mut want: Vec<(u16, String)> = delnums
        .iter()
        .map(|&d| (d, show(&default_result(format!("d{d}.test").as_bytes()))))
        .collect();
    want.sort();
    assert_eq!(bodies(&got), want);
    assert!(finish(&mut emu).is_empty());
}

/// Takes `n` records.
fn take(emu: &mut shardspawn_workshop::Emulator, n: usize) -> Vec<Record> {
    (0..n).map(|_| qmail_start::next(emu)).collect()
}

fn bodies(records: &[Record]) -> Vec<(u16, String)> {
    records.iter().map(|r| (r.delnum, show(&r.body))).collect()
}

/// Runs a fixed stream of commands in `width`, written whole or one byte
/// per write, and returns the records sorted by delnum.
fn stream_results(width: DelnumWidth, byte_per_write: bool) -> Vec<Record> {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"Subject: s\n\nbody\n");
    let opts = Options { byte_per_write, ..Options::default() };
    let mut emu = start_with(spawner(&home, width), width, opts);
    let high = match width {
        DelnumWidth::One => 255, // the last slot of 255 is 254
        DelnumWidth::Two => 256, // 00 01
    };
    let custom = out_directive(b"h550 no\n\0DGiving up.\n\0");
    let stream = [
        cmd(0, &m, b"", &rcpt(&[], "a.test")),
        cmd(1, "1/x", b"s@o.test", b"u@d.test"),
        cmd(2, &m, b"s@o.test", b"nohost"),
        cmd(3, &m, b"#@[]", &rcpt(&[&custom], "c.test")),
        cmd(4, "3/999999", b"", b"u@d.test"),
        cmd(high - 1, &m, b"\xff8bit", &rcpt(&["exit111"], "e.test")),
        cmd(high, &m, b"", &rcpt(&[], "f.test")),
        cmd(5, "", b"", b""),
    ];
    for c in &stream {
        send(&mut emu, c);
    }
    let mut got = take(&mut emu, stream.len());
    got.sort_by_key(|r| r.delnum);
    assert!(finish(&mut emu).is_empty());
    got
}

#[test]
fn one_byte_per_write_gives_the_same_results() {
    for width in WIDTHS {
        let whole = stream_results(width, false);
        let bytewise = stream_results(width, true);
        assert_eq!(bodies(&bytewise), bodies(&whole), "{width:?}");
        // And they are the right ones.
        let last = match width {
            DelnumWidth::One => {
                b"ZInternal error: delnum too big. (#4.3.5)\n".to_vec()
            }
            DelnumWidth::Two => default_result(b"f.test"),
        };
        let high = whole.last().unwrap().delnum;
        let want: Vec<(u16, Vec<u8>)> = vec![
            (0, default_result(b"a.test")),
            (1, b"DInternal error: messid has nonnumerics. (#5.3.5)\n".into()),
            (2, b"DSorry, address must include host name. (#5.1.3)\n".into()),
            (3, b"D550 no\nGiving up.\n".into()),
            (4, b"Zqmail-spawn unable to open message. (#4.3.0)\n".into()),
            (5, b"DInternal error: messid too short. (#5.3.5)\n".into()),
            (high - 1, b"ZUnable to run qmail-remote.\n".into()),
            (high, last),
        ];
        let want: Vec<(u16, String)> =
            want.iter().map(|(d, b)| (*d, show(b))).collect();
        assert_eq!(bodies(&whole), want, "{width:?}");
    }
}

#[test]
fn a_few_hundred_deliveries_over_three_shards_are_answered_once_each() {
    let home = QmailHome::new().unwrap();
    let messages: Vec<String> = (0..5)
        .map(|i| home.add_message(format!("m{i}\n").as_bytes()))
        .collect();
    let mut spawner = spawner(&home, ONE);
    spawner.env("SHARDSPAWN_SHARDS", "3");
    let mut emu = start(spawner, ONE);
    let work: Vec<Delivery> = (0..300)
        .map(|i| {
            let latency = format!("sleep{}", i % 7);
            Delivery {
                messid: messages[i % messages.len()].clone(),
                sender: b"s@o.test".to_vec(),
                recipient: rcpt(&[&latency], &format!("d{}.test", i % 11)),
            }
        })
        .collect();
    let supervisor = emu.pid();
    // A first batch to every domain, so that every shard has finished
    // starting (its spawner, signalfd and epoll are open) before its
    // descriptors are counted.
    let (warm, work) = work.split_at(33);
    let report = emu.run(warm, 40, deadline_in(Duration::from_secs(20)));
    assert!(report.is_clean(), "{:?}", report.violations);
    let before = fd_counts(supervisor);
    let report = emu.run(work, 40, deadline_in(Duration::from_secs(20)));
    assert!(report.is_clean(), "{:?}", report.violations);
    // Every child reaped and every pipe closed once all is answered.
    let settled = || {
        fd_counts(supervisor) == before
            && children(supervisor)
                .iter()
                .all(|&(shard, _)| children(shard).is_empty())
    };
    assert!(
        wait_for(settled, soon()),
        "fds {before:?} before, {:?} after; children left: {:?}",
        fd_counts(supervisor),
        children(supervisor)
            .iter()
            .map(|&(shard, _)| (shard, children(shard)))
            .collect::<Vec<_>>()
    );
    assert!(report.max_in_flight <= 40);
    for (i, outcome) in report.outcomes.iter().enumerate() {
        let body = &outcome.as_ref().unwrap().body;
        // The warm-up took the first 33 (a multiple of 11).
        let host = format!("d{}.test", (i + 33) % 11);
        assert_eq!(show(body), show(&default_result(host.as_bytes())));
    }
    assert_eq!(report.letters.k, 300 - 33);
    assert!(finish(&mut emu).is_empty(), "records after the run");
}

/// The fd counts of the supervisor `pid` and of each of its shards.
fn fd_counts(pid: u32) -> Vec<(u32, usize)> {
    let mut counts = vec![(pid, fd_count(pid))];
    counts.extend(children(pid).iter().map(|&(s, _)| (s, fd_count(s))));
    counts
}

#[test]
fn eof_with_nothing_in_flight_exits_0_promptly() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let mut emu = start(spawner(&home, width), width);
        emu.close_commands();
        let status = emu.wait_exit(deadline_in(Duration::from_secs(5)));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(emu.recv(soon()).is_none());
        assert!(emu.results_closed());
        assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    }
}
