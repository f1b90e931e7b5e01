//! qmail-remote runs as qmail-rspawn runs it (protocol §3): argv
//! `[prog, host, sender, recipient]`, the message on fd 0 at offset 0,
//! one pipe on fds 1 and 2 and no other descriptor, cwd `queue/mess`,
//! the environment untouched, and an exec failure answered as stock's
//! child exit would be. Also the startup duty of §1.1: `queue/lock/tcpto`
//! is zeroed, never created.
//!
//! The stand-in's `inspect` directive reports these facts from inside
//! the child; each test reads them back with `parse_inspect`.

mod qmail_start;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;

use shardspawn_common::command::DelnumWidth;
use shardspawn_workshop::emulator::{Emulator, Options, Stderr};
use shardspawn_workshop::home::{QmailHome, TCPTO_LEN};
use shardspawn_workshop::recorder::Recording;
use shardspawn_workshop::remote::{
    ENV_GATE, ENV_PROBE, ENV_RECORD, Gate, parse_inspect,
};
use shardspawn_workshop::util::wait_for;

use qmail_start::{
    cmd, expect, fake_remote, finish, next, rcpt, result_of, send, show, soon,
    spawner, start, start_with,
};

const ONE: DelnumWidth = DelnumWidth::One;

/// Runs one `inspect` delivery and returns the child's facts.
fn inspect(
    emu: &mut Emulator,
    delnum: u16,
    messid: &str,
    sender: &[u8],
    recipient: &[u8],
) -> BTreeMap<String, String> {
    let body = result_of(emu, &cmd(delnum, messid, sender, recipient));
    assert_eq!(body.first(), Some(&b'K'), "{}", show(&body));
    parse_inspect(&body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[test]
fn argv_is_the_remote_the_host_after_the_last_at_sender_and_recipient() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut emu = start(spawner(&home, ONE), ONE);
    let remote = fake_remote();
    let remote = remote.to_str().unwrap();
    // (sender, recipient, host)
    let cases: [(&[u8], &[u8], &str); 4] = [
        (b"s@o.test", b"u+inspect@d1.test", "d1.test"),
        // The host is after the LAST '@', taken as it is.
        (b"", b"u@x+inspect@Mixed.Case.TEST", "Mixed.Case.TEST"),
        (b"#@[]", b"a@b@c+inspect@[10.0.0.1]", "[10.0.0.1]"),
        // Empty host, spaces kept.
        (b"s p@o.test", b"u +inspect@", ""),
    ];
    for (delnum, (sender, recipient, host)) in (0..).zip(cases) {
        let facts = inspect(&mut emu, delnum, &m, sender, recipient);
        let want = [
            ("argc", "4".to_string()),
            ("argv0", remote.to_string()),
            ("argv1", host.to_string()),
            ("argv2", String::from_utf8_lossy(sender).into_owned()),
            ("argv3", String::from_utf8_lossy(recipient).into_owned()),
        ];
        for (key, value) in want {
            assert_eq!(facts[key], value, "{key}: {facts:?}");
        }
    }
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn without_qmailremote_qmail_remote_is_found_through_path() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(fake_remote(), bin.join("qmail-remote"))
        .unwrap();
    let mut spawner = spawner(&home, ONE);
    spawner.env_remove("QMAILREMOTE").env("PATH", &bin);
    let mut emu = start(spawner, ONE);
    let facts = inspect(&mut emu, 0, &m, b"s@o.test", b"u+inspect@d.test");
    assert_eq!(facts["argv0"], "qmail-remote", "{facts:?}");
    assert_eq!(facts["argv1"], "d.test");
    assert_eq!(facts["argc"], "4");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn fd_0_is_the_message_at_offset_0_for_every_delivery() {
    let home = QmailHome::new().unwrap();
    let message: Vec<u8> = (0..200u8).collect();
    let m = home.add_message(&message);
    let mut gate = Gate::closed(home.path().join("gate")).unwrap();
    let record = home.path().join("record");
    let mut spawner = spawner(&home, ONE);
    spawner
        .env("SHARDSPAWN_SHARDS", "1")
        .env(ENV_GATE, gate.path())
        .env(ENV_RECORD, &record);
    let mut emu = start(spawner, ONE);
    // The same message to two children at once, each reading only after
    // both have started: a shared open file would show one an offset.
    for delnum in [0, 1] {
        let c = cmd(delnum, &m, b"", &rcpt(&["gate", "inspect"], "d.test"));
        qmail_start::send(&mut emu, &c);
    }
    let both_started =
        || Recording::read(&record).is_ok_and(|r| r.started() == 2);
    assert!(wait_for(both_started, soon()), "not both children started");
    gate.open();
    let mut facts: Vec<_> = (0..2)
        .map(|_| parse_inspect(&qmail_start::next(&mut emu).body))
        .collect();
    // And once more after both have read it.
    facts.push(inspect(&mut emu, 0, &m, b"", b"u+inspect@d.test"));
    for facts in facts {
        assert_eq!(facts["fd0_offset"], "0", "{facts:?}");
        assert_eq!(facts["fd0_head"], hex(&message[..64]), "{facts:?}");
    }
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn the_child_has_exactly_fds_0_1_2_and_1_and_2_are_one_pipe() {
    // A descriptor the spawner inherits without close-on-exec (as from a
    // careless run script) must not reach qmail-remote either.
    let (_stray_read, _stray_write) = nix::unistd::pipe().unwrap();
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut gate = Gate::closed(home.path().join("gate")).unwrap();
    let record = home.path().join("record");
    let mut spawner = spawner(&home, ONE);
    spawner
        .env("SHARDSPAWN_SHARDS", "1")
        .env(ENV_GATE, gate.path())
        .env(ENV_RECORD, &record);
    let mut emu = start(spawner, ONE);
    // Several at once in one shard, so that other slots' pipes (and the
    // message files) are open while each child starts, and could leak.
    let n = 4;
    for delnum in 0..n {
        let host = format!("d{delnum}.test");
        let c = cmd(delnum, &m, b"", &rcpt(&["gate", "inspect"], &host));
        qmail_start::send(&mut emu, &c);
    }
    let all_started = || {
        Recording::read(&record).is_ok_and(|r| r.started() == usize::from(n))
    };
    assert!(wait_for(all_started, soon()), "not all children started");
    gate.open();
    for _ in 0..n {
        let r = qmail_start::next(&mut emu);
        let facts = parse_inspect(&r.body);
        assert_eq!(facts["fds"], "0,1,2", "delnum {}: {facts:?}", r.delnum);
        assert_eq!(facts["fd1_is_fd2"], "true", "{facts:?}");
        // Children start clean: the shard blocks SIGCHLD for its
        // signalfd, the child must not inherit that.
        assert_eq!(facts["sigmask_empty"], "true", "{facts:?}");
    }
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn the_child_runs_in_queue_mess() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut emu = start(spawner(&home, ONE), ONE);
    let facts = inspect(&mut emu, 0, &m, b"", b"u+inspect@d.test");
    let want = home.mess_dir().canonicalize().unwrap();
    assert_eq!(facts["cwd"], want.to_str().unwrap(), "{facts:?}");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn the_environment_is_passed_unchanged() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, ONE);
    let probe = "  a value = with=equals, spaces\tand a tab  ";
    spawner.env(ENV_PROBE, probe);
    let mut emu = start(spawner, ONE);
    let facts = inspect(&mut emu, 0, &m, b"", b"u+inspect@d.test");
    assert_eq!(facts["env_PROBE"], probe, "{facts:?}");
    assert!(finish(&mut emu).is_empty());
}

/// The one exception to "unchanged": the fleet's Redis address, which
/// may hold a password, is the shard's and never a qmail-remote's,
/// whether it came in the variable or by `--redis`. (No Redis listens
/// at the address: the relay runs alone, and delivers.)
#[test]
fn the_redis_address_never_reaches_qmail_remote() {
    let url = "redis://:s3cret@127.0.0.1:1/0";
    for by_flag in [false, true] {
        let home = QmailHome::new().unwrap();
        let m = home.add_message(b"x\n");
        let mut spawner = spawner(&home, ONE);
        spawner
            .env("SHARDSPAWN_FLEET_RELAYS", "2")
            .env(ENV_PROBE, "passed on");
        if by_flag {
            spawner.arg("--redis").arg(url);
        } else {
            spawner.env("SHARDSPAWN_REDIS", url);
        }
        let mut emu = start(spawner, ONE);
        let facts = inspect(&mut emu, 0, &m, b"", b"u+inspect@d.test");
        assert_eq!(facts["env_PROBE"], "passed on", "{facts:?}");
        let names = &facts["env_names"];
        assert!(names.contains("SHARDSPAWN_FLEET_RELAYS"), "{names}");
        assert!(!names.contains("SHARDSPAWN_REDIS"), "{names}");
        assert!(finish(&mut emu).is_empty());
    }
}

/// A program that runs, at `rel` in `home`, for a test to take away
/// once shardspawn has started: startup refuses a QMAILREMOTE that
/// cannot run (issue 15), so a program that goes away later is how a
/// failed exec is reached now.
fn vanishing_remote(home: &QmailHome, rel: &str) -> std::path::PathBuf {
    let remote = home.write_file(rel, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&remote, PermissionsExt::from_mode(0o755))
        .unwrap();
    remote
}

#[test]
fn a_missing_remote_program_fails_permanently() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, ONE);
    let remote = vanishing_remote(&home, "bin/no-such-remote");
    spawner.env("QMAILREMOTE", &remote);
    let mut emu = start(spawner, ONE);
    std::fs::remove_file(&remote).unwrap();
    let body = result_of(&mut emu, &cmd(0, &m, b"", b"u@d.test"));
    assert_eq!(show(&body), show(b"DUnable to run qmail-remote.\n"));
    assert!(finish(&mut emu).is_empty());
}

/// Issue 15: the shard logged a failed exec as "deferred", while
/// qmail-send got a `D` and bounced the mail. The line now says what the
/// letter is.
#[test]
fn the_shard_logs_a_failed_exec_as_the_bounce_it_is() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let log = home.path().join("log");
    let mut spawner = spawner(&home, ONE);
    let remote = vanishing_remote(&home, "bin/no-such-remote");
    spawner.env("QMAILREMOTE", &remote);
    let opts =
        Options { stderr: Stderr::File(log.clone()), ..Options::default() };
    let mut emu = start_with(spawner, ONE, opts);
    std::fs::remove_file(&remote).unwrap();
    let body = result_of(&mut emu, &cmd(0, &m, b"", b"u@d.test"));
    assert_eq!(show(&body), show(b"DUnable to run qmail-remote.\n"));
    assert!(finish(&mut emu).is_empty());
    // The shard wrote its line before it exited, and it before the
    // supervisor: the file is complete.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("unable to run qmail-remote"))
        .collect();
    assert_eq!(lines.len(), 1, "log: {text}");
    assert!(lines[0].contains("; D: failed (bounced)"), "log: {text}");
    assert!(!lines[0].contains("deferred"), "log: {text}");
}

/// A shard does not wait for each child's exec, so a failed exec is
/// learnt when the child is reaped: with 200 at once, each is answered
/// once, as stock answers it, and nothing else is.
#[test]
fn many_failed_execs_at_once_are_each_answered_once() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, DelnumWidth::Two);
    let remote = vanishing_remote(&home, "bin/no-such-remote");
    spawner.env("QMAILREMOTE", &remote).env("SHARDSPAWN_SLOTS", "200");
    let mut emu = start(spawner, DelnumWidth::Two);
    std::fs::remove_file(&remote).unwrap();
    for d in 0..200 {
        send(&mut emu, &cmd(d, &m, b"", format!("u@d{d}.test").as_bytes()));
    }
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let r = next(&mut emu);
        assert_eq!(show(&r.body), show(b"DUnable to run qmail-remote.\n"));
        *seen.entry(r.delnum).or_insert(0) += 1;
    }
    assert!(seen.len() == 200 && seen.values().all(|&n| n == 1), "{seen:?}");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn a_missing_qmail_remote_in_path_fails_permanently() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let mut spawner = spawner(&home, ONE);
    let remote = vanishing_remote(&home, "bin/qmail-remote");
    spawner.env_remove("QMAILREMOTE").env("PATH", home.path().join("bin"));
    let mut emu = start(spawner, ONE);
    std::fs::remove_file(&remote).unwrap();
    let body = result_of(&mut emu, &cmd(0, &m, b"", b"u@d.test"));
    assert_eq!(show(&body), show(b"DUnable to run qmail-remote.\n"));
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn a_remote_that_is_not_executable_fails_permanently() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let remote = vanishing_remote(&home, "bin/qmail-remote");
    let mut spawner = spawner(&home, ONE);
    spawner.env("QMAILREMOTE", &remote);
    let mut emu = start(spawner, ONE);
    std::fs::set_permissions(&remote, PermissionsExt::from_mode(0o644))
        .unwrap();
    // EACCES is not a temporary errno: exit 100 for stock, so D.
    let body = result_of(&mut emu, &cmd(0, &m, b"", b"u@d.test"));
    assert_eq!(show(&body), show(b"DUnable to run qmail-remote.\n"));
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn startup_zeroes_the_first_1024_bytes_of_tcpto_and_truncates_nothing() {
    let home = QmailHome::new().unwrap();
    // Longer than qmail's 1024 bytes, to see that the rest is kept.
    std::fs::write(home.tcpto_path(), [0xFF; TCPTO_LEN + 16]).unwrap();
    let emu = start(spawner(&home, ONE), ONE);
    // Startup duties come before the announcement, which start() read.
    let tcpto = std::fs::read(home.tcpto_path()).unwrap();
    assert_eq!(tcpto.len(), TCPTO_LEN + 16);
    assert!(tcpto[..TCPTO_LEN].iter().all(|&b| b == 0), "not zeroed");
    assert!(tcpto[TCPTO_LEN..].iter().all(|&b| b == 0xFF), "overwritten");
    drop(emu);
}

#[test]
fn a_missing_tcpto_is_fine_and_not_created() {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    std::fs::remove_file(home.tcpto_path()).unwrap();
    let mut emu = start(spawner(&home, ONE), ONE);
    qmail_start::send(&mut emu, &cmd(0, &m, b"", &rcpt(&[], "d.test")));
    expect(
        &mut emu,
        0,
        &shardspawn_workshop::remote::default_result(b"d.test"),
    );
    assert!(finish(&mut emu).is_empty());
    assert!(!home.tcpto_path().exists(), "tcpto was created");
}
