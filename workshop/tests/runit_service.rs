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

use shardspawn_workshop::util::{bin_path, wait_for};
use supervision::{Scene, Suite, ok, pid_in, run, soon};

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

    // Running (the pid runsv watches is the stand-in qmail-start: run,
    // chpst and qmail-start each exec the next), serving, logging in
    // svlogd's format, then `sv restart` and a clean second run.
    let (_, second) = scene.serve_then_restart(
        up_pid,
        ("sv", "restart"),
        stamped,
        "sv status never said run",
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
