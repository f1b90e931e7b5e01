//! qmail-send as a runit service, with shardspawn as its qmail-rspawn:
//! `runsvdir` on a scratch directory holding the `init/runit/qmail-send`
//! service (its run script, log/run and an env dir read by `chpst -e`).
//! Here the env dir names the stand-in qmail-start in QMAIL_START, and
//! its PATH leads qmail-start to a directory where qmail-rspawn is a
//! symlink to the built shardspawn; shardspawn logs with svlogd.
//!
//! It proves, under the real runsvdir, runsv, chpst and svlogd: the run
//! script raises the limits and passes the env dir through qmail-start
//! to shardspawn (`shardspawn status` shows its 3 shards and 300 slots
//! in two-byte framing, and the busiest keys while mail flows); each
//! shardspawn process logs into its own svlogd directory; qmail-send's
//! own lines reach the service's log; and `sv restart` restarts the
//! service cleanly: the old qmail-send got a result for every command it
//! sent, exactly once, and saw its qmail-rspawn exit 0 before a new one
//! began.

mod supervision;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use shardspawn_harness::util::{bin_path, wait_for};
use supervision::{Scene, Suite, alive, ok, pid_in, run, soon};

/// `sv status DIR`'s pid if it says the service runs (the first
/// `run:`, before the log's).
fn up_pid(service: &Path) -> Option<u32> {
    let (_, text) = run(Command::new("sv").arg("status").arg(service));
    if text.starts_with("run: ") { pid_in(&text) } else { None }
}

/// Whether runsv is running on `dir` (`sv status` fails without it).
fn supervised(dir: &Path) -> bool {
    let (code, text) = run(Command::new("sv").arg("status").arg(dir));
    code == Some(0) && !text.starts_with("fail:")
}

/// An svlogd `-tt` line: `YYYY-MM-DD_HH:MM:SS.xxxxx ` first.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 27
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'_'
        && b[19] == b'.'
        && b[25] == b' '
}

#[test]
fn qmail_send_service_under_runsvdir() {
    let began = Instant::now();
    let scene = Scene::new(Suite::Runit, &[]);
    let bin = scene.home.path().join("rspawn-bin");
    scene.link_bins(&bin);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = bin_path("shardspawn-fake-qmail-start");
    for (name, value) in [
        ("PATH", path),
        ("QMAIL_START", start.display().to_string()),
        ("SHARDSPAWN_LOGGER", "svlogd -tt".to_string()),
    ] {
        std::fs::write(scene.env_file(name), format!("{value}\n"))
            .expect("env file");
    }
    let scanner = scene.start_scanner();
    let service = scene.service.clone();
    let log = service.join("log");

    // Running, and the pid runsv watches is the stand-in qmail-start
    // (run, chpst and qmail-start each exec the next).
    let mut first = None;
    assert!(
        wait_for(
            || {
                first = up_pid(&service);
                first.is_some()
            },
            soon()
        ),
        "sv status never said run; {}",
        scene.post_mortem()
    );
    let first = first.expect("run");
    assert_eq!(scene.wait_for_run(&[], 200), first, "the stand-in's pid");
    let rspawn = scene.ledger().run(first).and_then(|r| r.rspawn);
    let rspawn = rspawn.expect("the start line names qmail-rspawn");
    scene.assert_limits_raised(first);

    // The env dir reached shardspawn; mail is flowing through 3 shards.
    let page = scene.wait_for_status(rspawn);
    eprintln!("{page}");

    // shardspawn's logs, one svlogd directory per process.
    scene.assert_shardspawn_logs(stamped);
    // qmail-send's log, through the service's log/run.
    let main = log.join("main");
    scene.wait_for_log(&main, "status: local 0/0 remote");
    let text = scene.wait_for_log(&main, "qmail-send/run: limits: open files");
    assert!(text.lines().all(stamped), "{text}");
    assert!(text.contains(&format!("pid {first}: qmail-rspawn pid {rspawn}")));

    // sv restart: qmail-send finishes what is in flight, then a new one.
    ok("sv", &[Path::new("restart"), &service]);
    let second = scene.wait_for_run(&[first], 100);
    let old = scene.assert_clean(first);
    assert!(old.term_busy.is_some(), "no SIGTERM reached {first}");
    assert!(!alive(rspawn), "the old shardspawn {rspawn} is still there");
    assert!(
        wait_for(|| up_pid(&service) == Some(second), soon()),
        "sv status does not show {second} running"
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

    // Down for good: with a down file a rescan starts nothing again;
    // `sv exit` stops the service, then its log, then runsv.
    std::fs::write(service.join("down"), "").expect("down file");
    ok("sv", &[Path::new("down"), &service]);
    scene.assert_clean(second);
    ok("sv", &[Path::new("exit"), &service]);
    assert!(wait_for(|| !supervised(&service), soon()), "runsv stays");
    drop(scanner);
    eprintln!("took {:?}", began.elapsed());
}
