//! qmail-send as a daemontools service, with shardspawn as its
//! qmail-rspawn: `svscan` on a scratch directory holding the
//! `init/daemontools/qmail-send` service (its run script, log/run and an
//! env dir), the stand-in qmail-start found, like qmail-start, in
//! QMAILHOME/bin, and qmail-rspawn there a symlink to the built
//! shardspawn.
//!
//! It proves, under the real svscan, supervise and multilog: the run
//! script raises the limits and passes the env dir through qmail-start
//! to shardspawn (`shardspawn status` shows its 3 shards and 300 slots
//! in two-byte framing, and the busiest keys while mail flows); each
//! shardspawn process logs into its own multilog directory; qmail-send's
//! own lines reach the service's log; and `svc -t` restarts the service
//! cleanly: the old qmail-send got a result for every command it sent,
//! exactly once, and saw its qmail-rspawn exit 0 before a new one began.

mod supervision;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use shardspawn_workshop::util::wait_for;
use supervision::{Scene, Suite, ok, pid_in, run, soon};

/// `svstat DIR`'s pid if it says the service is up.
fn up_pid(service: &Path) -> Option<u32> {
    let (_, text) = run(Command::new("svstat").arg(service));
    if text.contains(": up (pid ") { pid_in(&text) } else { None }
}

/// Whether supervise is running on `dir` (`svok`).
fn supervised(dir: &Path) -> bool {
    run(Command::new("svok").arg(dir)).0 == Some(0)
}

/// A multilog `t` line: `@` and 24 hex digits of TAI64N first.
fn tai64n(line: &str) -> bool {
    line.len() > 26
        && line.starts_with('@')
        && line[1..25].bytes().all(|b| b.is_ascii_hexdigit())
        && line.as_bytes()[25] == b' '
}

#[test]
fn qmail_send_service_under_svscan() {
    let began = Instant::now();
    let scene = Scene::new(Suite::Daemontools, &[]);
    scene.link_bins(&scene.home.path().join("bin"));
    let scanner = scene.start_scanner();
    let service = scene.service.clone();
    let log = service.join("log");

    // Up (the pid supervise watches is the stand-in qmail-start: run,
    // envdir and qmail-start each exec the next), serving, logging in
    // multilog's format, then `svc -t` and a clean second run.
    let (_, second) = scene.serve_then_restart(
        up_pid,
        ("svc", "-t"),
        tai64n,
        "svstat never said up",
    );

    // Down for good: with down files a rescan starts nothing again.
    for dir in [&service, &log] {
        std::fs::write(dir.join("down"), "").expect("down file");
    }
    ok("svc", &[Path::new("-dx"), &service]);
    scene.assert_clean(second);
    assert!(wait_for(|| !supervised(&service), soon()), "supervise stays");
    ok("svc", &[Path::new("-dx"), &log]);
    assert!(wait_for(|| !supervised(&log), soon()), "log supervise stays");
    drop(scanner);
    eprintln!("took {:?}", began.elapsed());
}
