//! How a finished qmail-remote becomes one result (protocol §4.2),
//! through the real binary: each row of the worked-outcomes table, with
//! the stand-in printing exactly the row's bytes (`outHEX`), and the
//! verdicts that the exit status alone decides.

mod qmail_start;

use std::path::Path;
use std::time::{Duration, Instant};

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::record::Record;
use shardspawn_workshop::emulator::Emulator;
use shardspawn_workshop::home::QmailHome;
use shardspawn_workshop::recorder::Recording;
use shardspawn_workshop::remote::{ENV_RECORD, default_result, out_directive};
use shardspawn_workshop::util::wait_for;

use qmail_start::{cmd, finish, rcpt, result_of, send, show, spawner, start};

const ONE: DelnumWidth = DelnumWidth::One;

/// A spawner in a fresh home, and a message to deliver.
fn setup() -> (QmailHome, Emulator, String) {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"Subject: t\n\nbody\n");
    let emu = start(spawner(&home, ONE), ONE);
    (home, emu, m)
}

/// The result when the stand-in follows `directives`.
fn outcome(directives: &[&str]) -> Vec<u8> {
    let (_home, mut emu, m) = setup();
    let recipient = rcpt(directives, "d.test");
    let body = result_of(&mut emu, &cmd(0, &m, b"", &recipient));
    assert!(finish(&mut emu).is_empty());
    body
}

/// Checks that qmail-remote output `output` gives result body `want`.
fn row(output: &[u8], want: &[u8]) {
    let got = outcome(&[&out_directive(output)]);
    assert_eq!(show(&got), show(want), "for output {}", show(output));
}

#[test]
fn accepted_recipient_and_message_is_success() {
    row(
        b"r\0K1.2.3.4 accepted message.\nRemote host said: 250 ok\n\0",
        b"K1.2.3.4 accepted message.\nRemote host said: 250 ok\n",
    );
}

#[test]
fn recipient_5xx_then_giving_up_is_failure_with_both_texts() {
    row(
        b"h1.2.3.4 does not like recipient.\nRemote host said: 550 no\n\0\
          DGiving up on 1.2.3.4.\n\0",
        b"D1.2.3.4 does not like recipient.\nRemote host said: 550 no\n\
          Giving up on 1.2.3.4.\n",
    );
}

#[test]
fn recipient_4xx_wins_over_a_message_failure() {
    row(
        b"s1.2.3.4 does not like recipient.\n\
          Remote host said: 450 later\n\0DGiving up on 1.2.3.4.\n\0",
        b"Z1.2.3.4 does not like recipient.\nRemote host said: 450 later\n\
          Giving up on 1.2.3.4.\n",
    );
}

#[test]
fn accepted_recipient_then_message_deferral_is_deferral() {
    row(
        b"r\0Z1.2.3.4 failed after I sent the message.\n\
          Remote host said: 451 try later\n\0",
        b"Z1.2.3.4 failed after I sent the message.\n\
          Remote host said: 451 try later\n",
    );
}

#[test]
fn message_report_alone_is_its_own_text() {
    row(
        b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0",
        b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n",
    );
}

#[test]
fn no_message_report_is_permanent_failure_with_empty_text() {
    row(b"r\0", b"D");
}

#[test]
fn a_report_missing_its_nul_is_permanent_failure_with_empty_text() {
    row(b"Zno terminator\n", b"D");
}

#[test]
fn garbage_is_failure_and_its_first_byte_is_taken_as_a_letter() {
    row(b"garbage\0more\0", b"Darbage");
}

#[test]
fn segments_after_the_second_are_ignored() {
    row(b"r\0Kok\0trailing\0", b"Kok");
}

#[test]
fn output_starting_with_nul_prints_the_second_segment_whole() {
    // §4.2's degenerate case: the end of the first segment is searched
    // from byte 1, so the "first text" is the K segment with its letter.
    row(b"\0Kok\0", b"KKok");
}

#[test]
fn a_crash_is_a_deferral() {
    assert_eq!(show(&outcome(&["crash"])), show(b"Zqmail-remote crashed.\n"));
}

#[test]
fn exit_111_is_a_deferral() {
    // The output is not looked at: the exit code decides.
    assert_eq!(
        show(&outcome(&["exit111"])),
        show(b"ZUnable to run qmail-remote.\n")
    );
}

#[test]
fn any_other_nonzero_exit_is_a_permanent_failure() {
    let (_home, mut emu, m) = setup();
    for (delnum, code) in [(0, "exit100"), (1, "exit3"), (2, "exit1")] {
        let recipient = rcpt(&[code], "d.test");
        let body = result_of(&mut emu, &cmd(delnum, &m, b"", &recipient));
        assert_eq!(show(&body), show(b"DUnable to run qmail-remote.\n"));
    }
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn no_output_is_a_deferral() {
    assert_eq!(
        show(&outcome(&["none"])),
        show(b"Zqmail-remote produced no output.\n")
    );
}

#[test]
fn output_on_stderr_is_part_of_the_report() {
    assert_eq!(show(&outcome(&["stderr"])), show(&default_result(b"d.test")));
    // And it is parsed as a report like any other: an 's' first turns
    // the letter into Z.
    let out = out_directive(b"s4xx on stderr\n\0DGiving up.\n\0");
    assert_eq!(
        show(&outcome(&["stderr", &out])),
        show(b"Z4xx on stderr\nGiving up.\n")
    );
}

#[test]
fn a_megabyte_of_output_gives_a_body_of_at_most_10000_bytes() {
    // A million 'x' then the usual success: the first segment is the
    // x's, skipped as a report; the K segment is the result.
    let body = outcome(&["big1000000"]);
    assert!(body.len() <= 10_000, "body of {} bytes", body.len());
    assert_eq!(body.first(), Some(&b'K'), "{}", show(&body[..40]));
    assert!(body[1..].iter().all(|&b| b == b'x'), "text is not the x's");
}

#[test]
fn a_pipe_held_past_the_exit_gives_the_result_at_its_eof() {
    // `linger`: the stand-in answers and exits at once, but a child of
    // its own holds the pipe for 300 ms more. Its SIGCHLD names no child
    // the shard knows ended; the EOF does, and the shard reaps it by pid
    // then (if no scan of every child did before) and reports the
    // stand-in's answer, once.
    let Recorded { mut emu, r, waited, pid, ended, .. } = recorded("linger");
    assert_eq!(r.delnum, 0);
    assert_eq!(show(&r.body[..1]), "K", "{}", show(&r.body));
    assert!(ended, "result came before the child's last act");
    assert!(waited.as_millis() >= 300, "result after {waited:?}");
    // Reaped, not left a zombie (the result needs the exit, so it is
    // reaped by then; a moment for /proc to say so).
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    };
    let gone = wait_for(|| !zombie(), Instant::now() + Duration::from_secs(3));
    assert!(gone, "the stand-in {pid} was never reaped");
    assert!(finish(&mut emu).is_empty());
}

#[test]
fn closed_output_gives_its_result_only_after_the_child_exits() {
    // `closeout`: fds 1 and 2 closed at once, exit 200 ms later. EOF on
    // the pipe comes first; the result must wait for the exit.
    let Recorded { mut emu, r, waited, pid, ended, .. } = recorded("closeout");
    // Look at once, while a child that had not exited would still be
    // inside its 200 ms.
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    assert_eq!(
        show(&r.body),
        show(b"Zqmail-remote produced no output.\n"),
        "{r:?}"
    );
    assert!(ended, "result came before the child's last act");
    assert!(!alive, "result came while the child {pid} still existed");
    assert!(waited.as_millis() >= 200, "result after {waited:?}");
    assert!(finish(&mut emu).is_empty());
}

/// One delivery to a stand-in told `directive`, recorded: its result,
/// how long it took, and the stand-in's pid and whether it ended by
/// the time the result came.
struct Recorded {
    _home: QmailHome,
    emu: Emulator,
    r: Record,
    waited: Duration,
    pid: u32,
    ended: bool,
}

fn recorded(directive: &str) -> Recorded {
    let home = QmailHome::new().unwrap();
    let m = home.add_message(b"x\n");
    let record = home.path().join("record");
    let mut spawner = spawner(&home, ONE);
    spawner.env(ENV_RECORD, &record);
    let mut emu = start(spawner, ONE);
    let sent = Instant::now();
    send(&mut emu, &cmd(0, &m, b"", &rcpt(&[directive], "d.test")));
    let r = qmail_start::next(&mut emu);
    let waited = sent.elapsed();
    let (pid, ended) = only_child(&record);
    Recorded { _home: home, emu, r, waited, pid, ended }
}

/// The one stand-in of a recording: its pid and whether it ended.
fn only_child(record: &Path) -> (u32, bool) {
    let recording = Recording::read(record).unwrap();
    match recording.intervals() {
        [one] => (one.pid, one.end.is_some()),
        all => panic!("expected one stand-in, got {all:?}"),
    }
}
