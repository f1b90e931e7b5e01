//! Every check of protocol §2.3, through the real binary: a command that
//! fails one gets exactly one record, letter and text byte for byte as
//! qmail-rspawn's, for its own delnum, and occupies no slot; a command
//! failing several gets the first one's text; the stream stays in step.
//!
//! Two checks have no test because nothing can make them happen for
//! real, and faking them would prove nothing about the binary:
//!
//! - (8) "cannot reset the slot's output buffer": qmail's allocation of
//!   the slot's buffer can fail; in Rust an allocation failure aborts
//!   the process instead of returning an error, so there is no code path
//!   that could answer it (inputs are bounded instead, see check 1).
//! - (11) "fstat fails": fstat on a descriptor that open(2) just
//!   returned cannot fail on Linux short of a kernel bug (EBADF, EFAULT
//!   and EOVERFLOW are impossible for a fresh fd, a valid buffer and a
//!   64-bit stat), so there is no practical trigger.

mod qmail_start;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::geteuid;
use shardspawn_common::command::DelnumWidth;
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::recorder::Recording;
use shardspawn_workshop::remote::{
    ENV_GATE, ENV_RECORD, Gate, default_result,
};
use shardspawn_workshop::util::nobody;
use shardspawn_workshop::util::{children, wait_for};

use qmail_start::{
    WIDTHS, cmd, expect, finish, next, rcpt, send, show, soon, spawner, start,
};

const OUT_OF_MEMORY: &[u8] = b"Zqmail-spawn out of memory. (#4.3.0)\n";
const NEGATIVE: &[u8] = b"ZInternal error: delnum negative. (#4.3.5)\n";
const TOO_BIG: &[u8] = b"ZInternal error: delnum too big. (#4.3.5)\n";
const IN_USE: &[u8] = b"ZInternal error: delnum in use. (#4.3.5)\n";
const NONNUMERIC: &[u8] =
    b"DInternal error: messid has nonnumerics. (#5.3.5)\n";
const TOO_LONG: &[u8] = b"DInternal error: messid too long. (#5.3.5)\n";
const TOO_SHORT: &[u8] = b"DInternal error: messid too short. (#5.3.5)\n";
const NO_HOST: &[u8] = b"DSorry, address must include host name. (#5.1.3)\n";
const UNABLE_TO_OPEN: &[u8] =
    b"Zqmail-spawn unable to open message. (#4.3.0)\n";
const WRONG_TYPE: &[u8] = b"ZSorry, message has wrong type. (#4.3.5)\n";
const WRONG_OWNER: &[u8] = b"ZSorry, message has wrong owner. (#4.3.5)\n";
const NO_PIPE: &[u8] = b"Zqmail-spawn unable to create pipe. (#4.3.0)\n";
const NO_FORK: &[u8] = b"Zqmail-spawn unable to fork. (#4.3.0)\n";

/// The field limit: longer fields are answered "out of memory".
const FIELD_LIMIT: usize = 16 * 1024;

/// The success record the stand-in's default output gives for `host`.
fn ok(host: &str) -> Vec<u8> {
    default_result(host.as_bytes())
}

#[test]
fn a_field_over_16_kib_is_out_of_memory_and_the_stream_stays_in_step() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"Subject: x\n\nbody\n");
        let mut emu = start(spawner(&home, width), width);
        let long = vec![b'1'; FIELD_LIMIT + 1];
        let mut long_rcpt = vec![b'a'; FIELD_LIMIT];
        long_rcpt.extend_from_slice(b"@d.test");
        // Each field in turn, each followed by a command that must work:
        // the oversize one was read to its last NUL.
        let cases: [(&[u8], &[u8], &[u8]); 3] = [
            (&long, b"s@o.test", b"u@d.test"),
            (m.as_bytes(), &long, b"u@d.test"),
            (m.as_bytes(), b"s@o.test", &long_rcpt),
        ];
        for (i, (messid, sender, recipient)) in cases.into_iter().enumerate() {
            let mut oversize = cmd(1, "", sender, recipient);
            oversize.messid = messid.to_vec();
            send(&mut emu, &oversize);
            expect(&mut emu, 1, OUT_OF_MEMORY);
            let host = format!("next{i}.test");
            send(&mut emu, &cmd(2, &m, b"s@o.test", &rcpt(&[], &host)));
            expect(&mut emu, 2, &ok(&host));
        }
        // Exactly at the limit is kept: a sender of 16 KiB delivers.
        let sender = vec![b's'; FIELD_LIMIT];
        send(&mut emu, &cmd(3, &m, &sender, &rcpt(&[], "edge.test")));
        expect(&mut emu, 3, &ok("edge.test"));
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_two_byte_delnum_from_32768_is_negative() {
    let width = DelnumWidth::Two;
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut emu = start(spawner(&home, width), width);
    assert_eq!(emu.slots(), 32767);
    for delnum in [0x8000, 0xbeef, 0xffff] {
        send(&mut emu, &cmd(delnum, &m, b"", b"u@d.test"));
        expect(&mut emu, delnum, NEGATIVE);
    }
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn a_delnum_at_or_over_the_slots_is_too_big() {
    // (framing, SHARDSPAWN_SLOTS, first delnum too big)
    let table = [
        (DelnumWidth::One, None, 255),
        (DelnumWidth::One, Some(10), 10),
        (DelnumWidth::Two, None, 32767),
        (DelnumWidth::Two, Some(300), 300),
    ];
    for (width, slots, too_big) in table {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut spawner = spawner(&home, width);
        if let Some(slots) = slots {
            spawner.env("SHARDSPAWN_SLOTS", format!("{slots}"));
        }
        let mut emu = start(spawner, width);
        assert_eq!(emu.slots(), too_big);
        send(&mut emu, &cmd(too_big, &m, b"", b"u@d.test"));
        expect(&mut emu, too_big, TOO_BIG);
        if width == DelnumWidth::One && too_big < 255 {
            send(&mut emu, &cmd(255, &m, b"", b"u@d.test"));
            expect(&mut emu, 255, TOO_BIG);
        }
        // The last slot is fine.
        send(&mut emu, &cmd(too_big - 1, &m, b"", &rcpt(&[], "d.test")));
        expect(&mut emu, too_big - 1, &ok("d.test"));
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_delnum_reused_while_its_delivery_runs_is_in_use() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut gate = Gate::closed(home.path().join("gate")).unwrap();
        let record = home.path().join("record");
        let mut spawner = spawner(&home, width);
        spawner.env(ENV_GATE, gate.path()).env(ENV_RECORD, &record);
        let mut emu = start(spawner, width);

        send(&mut emu, &cmd(7, &m, b"", &rcpt(&["gate"], "held.test")));
        assert!(
            wait_for(|| started(&record) == 1, soon()),
            "the held delivery never started"
        );
        // Same delnum while it runs, with any other command.
        send(&mut emu, &cmd(7, &m, b"", &rcpt(&[], "other.test")));
        expect(&mut emu, 7, IN_USE);
        gate.open();
        expect(&mut emu, 7, &ok("held.test"));
        // Exactly one result for it, and the refused command ran nothing.
        assert!(finish(&mut emu).is_empty());
        assert_eq!(started(&record), 1);
    }
}

/// How many stand-ins have started, per the recording.
fn started(record: &Path) -> usize {
    Recording::read(record).map_or(0, |r| r.started())
}

#[test]
fn a_messid_with_a_nonnumeric_or_a_leading_slash_is_refused() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        home.add_message(b"x\n"); // 11/1000
        let mut emu = start(spawner(&home, width), width);
        let bad =
            ["11/10a0", "/11/1000", "/", "11/1000 ", "-1", "1.5", "11\\1000"];
        for (delnum, messid) in (0..).zip(bad) {
            send(&mut emu, &cmd(delnum, messid, b"", b"u@d.test"));
            expect(&mut emu, delnum, NONNUMERIC);
        }
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn an_inner_slash_in_the_messid_is_accepted() {
    let home = QmailHome::new().unwrap();
    home.write_file("queue/mess/1/2/3000", b"x\n").unwrap();
    let width = DelnumWidth::One;
    let mut emu = start(spawner(&home, width), width);
    send(&mut emu, &cmd(0, "1/2/3000", b"", &rcpt(&[], "d.test")));
    expect(&mut emu, 0, &ok("d.test"));
    // Doubled slashes are digits-and-slashes too; the path still works.
    send(&mut emu, &cmd(1, "1//2//3000", b"", &rcpt(&[], "e.test")));
    expect(&mut emu, 1, &ok("e.test"));
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn a_messid_of_100_chars_is_too_long_and_99_is_accepted() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let ninety_nine = format!("1/{}", "7".repeat(97));
        home.write_file(format!("queue/mess/{ninety_nine}"), b"x\n").unwrap();
        let hundred = format!("1/{}", "7".repeat(98));
        home.write_file(format!("queue/mess/{hundred}"), b"x\n").unwrap();
        let mut emu = start(spawner(&home, width), width);
        send(&mut emu, &cmd(0, &hundred, b"", &rcpt(&[], "d.test")));
        expect(&mut emu, 0, TOO_LONG);
        let long = "9".repeat(1000);
        send(&mut emu, &cmd(1, &long, b"", &rcpt(&[], "d.test")));
        expect(&mut emu, 1, TOO_LONG);
        send(&mut emu, &cmd(2, &ninety_nine, b"", &rcpt(&[], "d.test")));
        expect(&mut emu, 2, &ok("d.test"));
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn an_empty_messid_is_too_short() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let mut emu = start(spawner(&home, width), width);
        send(&mut emu, &cmd(0, "", b"s@o.test", b"u@d.test"));
        expect(&mut emu, 0, TOO_SHORT);
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_recipient_without_an_at_sign_has_no_host() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut emu = start(spawner(&home, width), width);
        for (delnum, recipient) in
            [(0, &b"user"[..]), (1, b""), (2, b"u+exit3.d.test")]
        {
            send(&mut emu, &cmd(delnum, &m, b"s@o.test", recipient));
            expect(&mut emu, delnum, NO_HOST);
        }
        // An '@' anywhere is enough, even last (the host is then empty).
        send(&mut emu, &cmd(3, &m, b"", b"u@"));
        expect(&mut emu, 3, &ok(""));
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_missing_message_is_unable_to_open() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let mut emu = start(spawner(&home, width), width);
        send(&mut emu, &cmd(0, "3/123456", b"", b"u@d.test"));
        expect(&mut emu, 0, UNABLE_TO_OPEN);
        // A split directory that does not exist at all.
        send(&mut emu, &cmd(1, "99/123456", b"", b"u@d.test"));
        expect(&mut emu, 1, UNABLE_TO_OPEN);
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_directory_as_the_message_has_wrong_type() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let mut emu = start(spawner(&home, width), width);
        // queue/mess/5 is a split directory.
        send(&mut emu, &cmd(0, "5", b"", b"u@d.test"));
        expect(&mut emu, 0, WRONG_TYPE);
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_message_not_owned_by_the_queue_owner_has_wrong_owner() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let other = home.owner_uid().wrapping_add(1);
        let mut spawner = spawner(&home, width);
        spawner.env("SHARDSPAWN_QUEUE_OWNER", other.to_string());
        let mut emu = start(spawner, width);
        send(&mut emu, &cmd(0, &m, b"", b"u@d.test"));
        expect(&mut emu, 0, WRONG_OWNER);
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_failed_pipe_is_unable_to_create_pipe_and_the_shard_lives_on() {
    let width = DelnumWidth::One;
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut emu = start(spawner(&home, width), width);
    let shards = shards_ready(emu.pid(), 2);
    // Room for exactly one more descriptor in each shard: the message
    // opens on the lowest free fd, and the pipe after it fails with
    // EMFILE. (Only the soft limit moves, so it can be put back.)
    let saved: Vec<(u32, String)> = shards
        .iter()
        .map(|&pid| {
            let fds: Vec<i32> =
                fds_of(pid).into_iter().map(|(fd, _)| fd).collect();
            let lowest_free = (0..).find(|fd| !fds.contains(fd)).unwrap();
            let was = soft_limit(pid, "Max open files");
            prlimit(pid, &format!("--nofile={}:", lowest_free + 1), None);
            (pid, was)
        })
        .collect();
    for (delnum, host) in [(0, "a.test"), (1, "b.test"), (2, "c.test")] {
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], host)));
        expect(&mut emu, delnum, NO_PIPE);
    }
    for (pid, was) in &saved {
        prlimit(*pid, &format!("--nofile={was}:"), None);
    }
    // The same shards, still there, deliver again.
    for (delnum, host) in [(0, "a.test"), (1, "b.test"), (2, "c.test")] {
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], host)));
        expect(&mut emu, delnum, &ok(host));
    }
    assert_eq!(live_children(emu.pid()), shards, "a shard was replaced");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn a_failed_fork_is_unable_to_fork_and_the_shard_lives_on() {
    // RLIMIT_NPROC binds only a process without CAP_SYS_RESOURCE and
    // CAP_SYS_ADMIN, so the spawner runs as an unprivileged user, as
    // qmail-rspawn runs as qmailr (switching to it takes root). That
    // user's own prlimit then lowers, and later restores, the soft
    // limit of each shard: the count of its processes (supervisor and
    // shards) is already at or over 1, so the next fork fails with
    // EAGAIN, a real fork failure.
    if !geteuid().is_root() {
        eprintln!("skipped: switching to an unprivileged user takes root");
        return;
    }
    let (uid, gid) = nobody();
    let width = DelnumWidth::One;
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, width);
    spawner.uid(uid).gid(gid);
    let mut emu = start(spawner, width);
    let shards = shards_ready(emu.pid(), 2);
    let saved: Vec<(u32, String)> = shards
        .iter()
        .map(|&pid| {
            let was = soft_limit(pid, "Max processes");
            prlimit(pid, "--nproc=1:", Some((uid, gid)));
            (pid, was)
        })
        .collect();
    for (delnum, host) in [(0, "a.test"), (1, "b.test"), (2, "c.test")] {
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], host)));
        expect(&mut emu, delnum, NO_FORK);
    }
    for (pid, was) in &saved {
        prlimit(*pid, &format!("--nproc={was}:"), Some((uid, gid)));
    }
    for (delnum, host) in [(0, "a.test"), (1, "b.test"), (2, "c.test")] {
        send(&mut emu, &cmd(delnum, &m, b"", &rcpt(&[], host)));
        expect(&mut emu, delnum, &ok(host));
    }
    assert_eq!(live_children(emu.pid()), shards, "a shard was replaced");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn the_sender_is_never_validated() {
    for width in WIDTHS {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut emu = start(spawner(&home, width), width);
        let senders: [&[u8]; 5] =
            [b"", b"#@[]", b"no at sign", b"\xff\x80 8-bit", b"/../../etc"];
        for (delnum, sender) in (0..).zip(senders) {
            let host = format!("d{delnum}.test");
            send(&mut emu, &cmd(delnum, &m, sender, &rcpt(&[], &host)));
            expect(&mut emu, delnum, &ok(&host));
        }
        assert!(finish(&mut emu).is_empty());
    }
}

#[test]
fn a_command_failing_several_checks_gets_the_first_ones_text() {
    // Two-byte framing and 300 slots, so "negative" and "too big" are
    // both reachable; the queue owner is the home's owner.
    let width = DelnumWidth::Two;
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let other = home.owner_uid().wrapping_add(1);
    // A split directory owned by someone else: wrong type and wrong
    // owner at once.
    std::os::unix::fs::chown(home.message_path("6"), Some(other), None)
        .expect("chown a directory to another uid (tests run as root)");
    let mut gate = Gate::closed(home.path().join("gate")).unwrap();
    let record = home.path().join("record");
    let mut spawner = spawner(&home, width);
    spawner
        .env("SHARDSPAWN_SLOTS", "300")
        .env(ENV_GATE, gate.path())
        .env(ENV_RECORD, &record);
    let mut emu = start(spawner, width);
    send(&mut emu, &cmd(7, &m, b"", &rcpt(&["gate"], "held.test")));
    assert!(wait_for(|| started(&record) == 1, soon()));

    let huge = vec![b'x'; FIELD_LIMIT + 1];
    let long = "1".repeat(100);
    let nonnumeric_long = format!("x{}", "1".repeat(120));
    // (delnum, messid, recipient, the record)
    let table: Vec<(u16, &str, &[u8], &[u8])> = vec![
        // 1 before 2, 3 and every later one.
        (0x8000, "x", &huge, OUT_OF_MEMORY),
        // 2 before 3 (0x8001 is also >= 300) and 5, 9.
        (0x8001, "x", b"nohost", NEGATIVE),
        // 3 before 5, 7, 9.
        (300, "", b"nohost", TOO_BIG),
        // 4 before 5, 9.
        (7, "x", b"nohost", IN_USE),
        // 5 before 6, 9.
        (1, &nonnumeric_long, b"nohost", NONNUMERIC),
        // 6 before 9.
        (2, &long, b"nohost", TOO_LONG),
        // 7 before 9.
        (3, "", b"nohost", TOO_SHORT),
        // 9 before 10.
        (4, "3/999999", b"nohost", NO_HOST),
        // 12 before 13.
        (5, "6", b"u@d.test", WRONG_TYPE),
    ];
    for (delnum, messid, recipient, want) in table {
        let mut c = cmd(delnum, messid, b"", b"");
        c.recipient = recipient.to_vec();
        send(&mut emu, &c);
        let r = next(&mut emu);
        assert_eq!(
            (r.delnum, show(&r.body)),
            (delnum, show(want)),
            "messid {messid:?}, recipient {:?}",
            show(&recipient[..recipient.len().min(40)])
        );
    }
    gate.open();
    expect(&mut emu, 7, &ok("held.test"));
    assert!(finish(&mut emu).is_empty());
}

/// The children of `supervisor` that have not exited, by pid.
fn live_children(supervisor: u32) -> Vec<u32> {
    children(supervisor)
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// The `count` shards of `supervisor`, once each has its event loop set
/// up (an epoll and a signalfd open), so that a limit set now binds the
/// deliveries and not the shard's own setup.
fn shards_ready(supervisor: u32, count: usize) -> Vec<u32> {
    let set_up = |pid: u32| {
        let links: Vec<String> = fds_of(pid)
            .into_iter()
            .map(|(_, l)| l.to_string_lossy().into_owned())
            .collect();
        ["anon_inode:[eventpoll]", "anon_inode:[signalfd]"]
            .iter()
            .all(|want| links.iter().any(|l| l == want))
    };
    let mut shards = Vec::new();
    let ready = wait_for(
        || {
            shards = live_children(supervisor);
            shards.len() == count && shards.iter().all(|&p| set_up(p))
        },
        soon(),
    );
    assert!(ready, "shards of {supervisor} not set up: {shards:?}");
    shards
}

/// The open fds of `pid` and their targets; empty if it is gone.
fn fds_of(pid: u32) -> Vec<(i32, std::path::PathBuf)> {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut fds: Vec<(i32, std::path::PathBuf)> = entries
        .filter_map(|e| {
            let fd: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(format!("{dir}/{fd}")).ok()?))
        })
        .collect();
    fds.sort();
    fds
}

/// The soft limit on line `name` of /proc/PID/limits, as written there
/// (a number or "unlimited", both of which prlimit takes back).
fn soft_limit(pid: u32, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("unable to read limits of {pid}: {e}"));
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in limits of {pid}"));
    line.split_whitespace().next().unwrap_or("unlimited").to_string()
}

/// Runs util-linux `prlimit --pid PID ARG`, as user `as_user` (uid,
/// gid) if given: a process may change the soft limits of another of its
/// own user's up to the hard limit without any capability, where root
/// without CAP_SYS_RESOURCE may not touch another user's.
fn prlimit(pid: u32, arg: &str, as_user: Option<(u32, u32)>) {
    let mut prlimit = Command::new("prlimit");
    prlimit.arg("--pid").arg(pid.to_string()).arg(arg);
    if let Some((uid, gid)) = as_user {
        prlimit.uid(uid).gid(gid);
    }
    let status = prlimit
        .status()
        .unwrap_or_else(|e| panic!("unable to run prlimit (util-linux): {e}"));
    assert!(status.success(), "prlimit --pid {pid} {arg}: {status}");
}
