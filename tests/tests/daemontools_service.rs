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

use shardspawn_harness::util::wait_for;
use supervision::{Scene, Suite, alive, ok, pid_in, run, soon};

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

    // Up, and the pid supervise watches is the stand-in qmail-start
    // (run, envdir and qmail-start each exec the next).
    let mut first = None;
    assert!(
        wait_for(
            || {
                first = up_pid(&service);
                first.is_some()
            },
            soon()
        ),
        "svstat never said up; {}",
        scene.post_mortem()
    );
    let first = first.expect("up");
    assert_eq!(scene.wait_for_run(&[], 200), first, "the stand-in's pid");
    let rspawn = scene.ledger().run(first).and_then(|r| r.rspawn);
    let rspawn = rspawn.expect("the start line names qmail-rspawn");
    scene.assert_limits_raised(first);

    // The env dir reached shardspawn; mail is flowing through 3 shards.
    let page = scene.wait_for_status(rspawn);
    eprintln!("{page}");

    // shardspawn's logs, one multilog directory per process.
    scene.assert_shardspawn_logs(tai64n);
    // qmail-send's log, through the service's log/run.
    let main = log.join("main");
    scene.wait_for_log(&main, "status: local 0/0 remote");
    let text = scene.wait_for_log(&main, "qmail-send/run: limits: open files");
    assert!(text.lines().all(tai64n), "{text}");
    assert!(text.contains(&format!("pid {first}: qmail-rspawn pid {rspawn}")));

    // svc -t: qmail-send finishes what is in flight, then a new one.
    ok("svc", &[Path::new("-t"), &service]);
    let second = scene.wait_for_run(&[first], 100);
    let old = scene.assert_clean(first);
    assert!(old.term_busy.is_some(), "no SIGTERM reached {first}");
    assert!(!alive(rspawn), "the old shardspawn {rspawn} is still there");
    assert!(
        wait_for(|| up_pid(&service) == Some(second), soon()),
        "svstat does not show {second} up"
    );
    let rspawn2 = scene.ledger().run(second).and_then(|r| r.rspawn);
    let rspawn2 = rspawn2.expect("the start line names qmail-rspawn");
    scene.wait_for_status(rspawn2);
    // The old shardspawn ended cleanly, and the new one logs into the
    // same directory (its logger took over the old one's lock).
    let supervisor = scene.logs.join("supervisor");
    scene.wait_for_log(
        &supervisor,
        "end of commands; finishing 0 deliveries in flight",
    );
    scene.wait_for_log(&supervisor, &format!("started: pid {rspawn2},"));
    eprintln!(
        "first run: {} commands, {} in flight at SIGTERM; second: {second}",
        old.sent(),
        old.term_busy.unwrap_or(0)
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
