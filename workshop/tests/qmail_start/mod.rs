//! Plays qmail-start for the end-to-end tests of validation_checks.rs,
//! report_outcomes.rs, remote_environment.rs and framings.rs: runs the
//! real `shardspawn` with no arguments, a cleared environment holding
//! only its settings (the fixture's, `shardspawn_workshop::spawner`),
//! fd 0/1 pipes and fd 2 closed (the emulator's default), and gives small helpers to send a command and to take its
//! record.
//!
//! qmail-start hands qmail-rspawn fds 0 and 1 and nothing else. A test
//! process may have inherited more without close-on-exec from whatever
//! ran it (a shell, a CI runner, a tool's job pipe) and passes them on:
//! the spawner must keep them from qmail-remote, and the tests check it.
//!
//! Set `SHARDSPAWN_TEST_LOG=FILE` to append the spawner's log lines to
//! FILE instead of leaving fd 2 closed, when a test needs a post-mortem.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shardspawn_common::command::{Command as Cmd, DelnumWidth};
use shardspawn_common::record::Record;
use shardspawn_workshop::emulator::{Emulator, Options, Stderr};
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::spawner::Spawner;
use shardspawn_workshop::util::{bin_path, deadline_in};

/// Both framings, for tests that must hold in each.
pub const WIDTHS: [DelnumWidth; 2] = [DelnumWidth::One, DelnumWidth::Two];

/// How long a test waits for anything that should come at once.
pub fn soon() -> Instant {
    deadline_in(Duration::from_secs(10))
}

/// The stand-in qmail-remote.
pub fn fake_remote() -> PathBuf {
    bin_path("shardspawn-fake-remote")
}

/// `shardspawn` as qmail-start runs it, for `home` and `width`: no
/// arguments, only the fixture's variables (the home, the queue owner,
/// QMAILREMOTE the stand-in, the framing, a state directory in the
/// home) with 2 shards. Tests add or remove settings on the result.
pub fn spawner(home: &QmailHome, width: DelnumWidth) -> Command {
    Spawner::new(home, width, 2).command()
}

/// Starts `cmd` and reads its announcement; panics if there is none.
pub fn start(cmd: Command, width: DelnumWidth) -> Emulator {
    start_with(cmd, width, Options::default())
}

/// As [`start`], with emulator options.
pub fn start_with(
    cmd: Command,
    width: DelnumWidth,
    mut opts: Options,
) -> Emulator {
    if let Some(log) = std::env::var_os("SHARDSPAWN_TEST_LOG") {
        opts.stderr = Stderr::File(log.into());
    }
    Emulator::start(cmd, width, opts)
        .unwrap_or_else(|e| panic!("shardspawn did not start: {e}"))
}

/// One command.
pub fn cmd(delnum: u16, messid: &str, sender: &[u8], recipient: &[u8]) -> Cmd {
    Cmd {
        delnum,
        messid: messid.as_bytes().to_vec(),
        sender: sender.to_vec(),
        recipient: recipient.to_vec(),
    }
}

/// Sends `c`; panics if the pipe refuses it.
pub fn send(emu: &mut Emulator, c: &Cmd) {
    emu.send(c).unwrap_or_else(|e| {
        panic!("unable to send the command for delnum {}: {e}", c.delnum)
    });
}

/// Bytes shown with NUL and newlines visible, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\0', "\u{2400}")
        .replace('\n', "\\n")
}

/// Takes the next record; panics if none comes soon.
pub fn next(emu: &mut Emulator) -> Record {
    match emu.recv(soon()) {
        Some(r) => r,
        None => panic!(
            "no record came (stream closed: {}; violations {:?})",
            emu.results_closed(),
            emu.violations()
        ),
    }
}

/// Takes the next record and checks it is `body` for `delnum`.
pub fn expect(emu: &mut Emulator, delnum: u16, body: &[u8]) {
    let r = next(emu);
    assert_eq!(
        (r.delnum, show(&r.body)),
        (delnum, show(body)),
        "unexpected record"
    );
}

/// Sends one command and returns its result body.
pub fn result_of(emu: &mut Emulator, c: &Cmd) -> Vec<u8> {
    send(emu, c);
    let r = next(emu);
    assert_eq!(r.delnum, c.delnum, "record for another delnum");
    r.body
}

/// qmail-send goes away ([`Emulator::finish`]). Returns the records
/// taken.
pub fn finish(emu: &mut Emulator) -> Vec<Record> {
    emu.finish(Duration::from_secs(10))
}

/// A recipient for the stand-in: `u+DIRECTIVES@host`.
pub fn rcpt(directives: &[&str], host: &str) -> Vec<u8> {
    shardspawn_workshop::remote::recipient("u", directives, host)
}
