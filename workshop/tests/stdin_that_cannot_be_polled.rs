//! Issue 15, finding 9: fd 0 that epoll cannot watch (`</dev/null`, a
//! regular file) is read as a plain file to its end. The by-hand check
//! `init/README.md` documents (`qmail-rspawn </dev/null >/dev/null`)
//! once failed with "unable to set up the event loop: Operation not
//! permitted"; now it announces, reads EOF and exits 0, and a file of
//! commands is answered command by command, as from qmail-send.

use std::fs::File;
use std::process::{Command, ExitStatus, Stdio};

use shardspawn_common::command::{Command as Cmd, DelnumWidth};
use shardspawn_common::record::{Record, RecordDecoder, announcement};
use shardspawn_common::refusal::Refusal;
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::remote::{default_result, recipient};
use shardspawn_workshop::spawner::Spawner;
use shardspawn_workshop::util::{deadline_in, wait_for};

/// Runs `cmd` (stdin already set) with stdout and stderr to files in
/// `home`; returns how it exited, what it wrote on fd 1, and its log.
/// Kills it and panics if it has not exited within a generous while.
fn run(home: &QmailHome, mut cmd: Command) -> (ExitStatus, Vec<u8>, String) {
    let out = home.path().join("stdout");
    let log = home.path().join("stderr");
    let mut child = cmd
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = wait_for(
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
        deadline_in(std::time::Duration::from_secs(30)),
    );
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into();
    assert!(exited, "shardspawn did not exit; log:\n{log}");
    (status.unwrap(), std::fs::read(&out).unwrap(), log)
}

/// The records after the announcement, sorted by delnum.
fn records(width: DelnumWidth, bytes: &[u8]) -> Vec<Record> {
    let mut decoder = RecordDecoder::new(width);
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let (used, record) = decoder.decode(&bytes[at..]);
        at += used;
        out.extend(record);
    }
    out.sort_by_key(|r| r.delnum);
    out
}

#[test]
fn dev_null_on_stdin_announces_reads_eof_and_exits_0() {
    let home = QmailHome::new().unwrap();
    let mut cmd = Spawner::new(&home, DelnumWidth::One, 2).command();
    cmd.stdin(Stdio::null());
    let (status, out, log) = run(&home, cmd);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(out, announcement(DelnumWidth::One, 255), "{log}");
    assert!(log.contains("end of commands"), "{log}");
}

#[test]
fn a_file_of_commands_on_stdin_is_answered_then_exits_0() {
    let home = QmailHome::new().unwrap();
    let messid = home.add_message(b"Subject: by hand\n\nbody\n");
    let width = DelnumWidth::Two;
    let cmd = |delnum: u16, rcpt: Vec<u8>| Cmd {
        delnum,
        messid: messid.as_bytes().to_vec(),
        sender: b"s@origin.test".to_vec(),
        recipient: rcpt,
    };
    let hosts = ["d1.test", "d2.test", "d3.test"];
    let mut commands = Vec::new();
    for (delnum, host) in (0u16..).zip(hosts) {
        cmd(delnum, recipient("u", &[], host)).encode(width, &mut commands);
    }
    // Checked and answered as from qmail-send: no '@'.
    cmd(300, b"nobody".to_vec()).encode(width, &mut commands);
    let file = home.path().join("commands");
    std::fs::write(&file, &commands).unwrap();

    let mut cmd = Spawner::new(&home, width, 2).slots(400).command();
    cmd.stdin(File::open(&file).unwrap());
    let (status, out, log) = run(&home, cmd);
    assert_eq!(status.code(), Some(0), "{log}");
    let announced = announcement(width, 400);
    assert!(out.starts_with(&announced), "{out:?}\n{log}");
    let got: Vec<(u16, Vec<u8>)> = records(width, &out[announced.len()..])
        .into_iter()
        .map(|r| (r.delnum, r.body))
        .collect();
    let mut want: Vec<(u16, Vec<u8>)> = (0u16..)
        .zip(hosts)
        .map(|(d, host)| (d, default_result(host.as_bytes())))
        .collect();
    want.push((300, Refusal::NoHost.body()));
    assert_eq!(got, want, "{log}");
}
