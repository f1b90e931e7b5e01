//! Issue 15: a shardspawn set for one framing under a qmail-send of the
//! other read every command wrong, and nothing said so: qmail-send
//! logged "report mangled", delivered nothing and would not stop. Now
//! the supervisor logs one line naming `SHARDSPAWN_DELNUM_BYTES`, once,
//! and answers as before; with the framings matched it says nothing.
//!
//! qmail-send is played raw here (the emulator reads only its own
//! framing): the announcement is read in shardspawn's framing, 40
//! commands are written in the other, and the results are read to the
//! end of the stream without being decoded.

use std::io::{Read, Write};
use std::process::Stdio;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::spawner::Spawner;

const ONE: DelnumWidth = DelnumWidth::One;
const TWO: DelnumWidth = DelnumWidth::Two;

/// Runs shardspawn set for `set` under a qmail-send writing `sent` (40
/// deliveries, delnums 0..40, messids as qmail names them) until it
/// exits at EOF; returns the lines of its log that name the setting.
fn lines_naming_the_setting(
    set: DelnumWidth,
    sent: DelnumWidth,
) -> Vec<String> {
    let home = QmailHome::new().unwrap();
    let log = home.path().join("log");
    let mut cmd = Spawner::new(&home, set, 2).command();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut announcement = vec![0; set.bytes()];
    stdout.read_exact(&mut announcement).unwrap();
    let mut wire = Vec::new();
    for delnum in 0..40u16 {
        Command {
            delnum,
            messid: home.add_message(b"x\n").into_bytes(),
            sender: b"s@b.test".to_vec(),
            recipient: format!("u@d{delnum}.test").into_bytes(),
        }
        .encode(sent, &mut wire);
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&wire).unwrap();
    drop(stdin);
    // Whatever it answers, to the end: it exits once every command it
    // read is answered.
    let mut results = Vec::new();
    stdout.read_to_end(&mut results).unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}; log: {text}");
    assert!(!results.is_empty(), "no answers; log: {text}");
    text.lines()
        .filter(|l| l.contains("SHARDSPAWN_DELNUM_BYTES"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_byte_commands_to_a_one_byte_shardspawn_are_named_once() {
    let lines = lines_naming_the_setting(ONE, TWO);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("warning:"), "{}", lines[0]);
    assert!(
        lines[0].contains("set SHARDSPAWN_DELNUM_BYTES=2"),
        "{}",
        lines[0]
    );
}

#[test]
fn one_byte_commands_to_a_two_byte_shardspawn_are_named_once() {
    let lines = lines_naming_the_setting(TWO, ONE);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("set SHARDSPAWN_DELNUM_BYTES=1"),
        "{}",
        lines[0]
    );
}

#[test]
fn matched_framings_say_nothing() {
    for width in [ONE, TWO] {
        let lines = lines_naming_the_setting(width, width);
        assert!(lines.is_empty(), "{lines:#?}");
    }
}
