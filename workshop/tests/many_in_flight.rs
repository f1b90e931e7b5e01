//! Ten thousand deliveries in flight at once over four shards, in the
//! big-concurrency framing: every stand-in qmail-remote is started and
//! held at the gate, so all 10,000 run at the same instant; then the gate
//! opens and each delnum is answered exactly once with a `K`.
//!
//! This is what shardspawn is for: stock qmail-rspawn stops at 255 (one
//! delnum byte) or 509 (select's FD_SETSIZE). If the machine cannot reach
//! 10,000 at once, the test fails and says which limit it met; it never
//! lowers the number.
//!
//! The same body with 20,000 (issue 5) takes about a minute of a 2-core
//! machine and 20,000 processes, too much for every `cargo test`, so it
//! is ignored there; run it with
//!
//!     cargo test --release -p shardspawn-harness --test many_in_flight \
//!         -- --ignored
//!
//! and `SHARDSPAWN_TEST_IN_FLIGHT=N` for another number (up to 32,767,
//! the most slots the 2-byte framing announces), to see which limit
//! comes next. As root it raises RLIMIT_NOFILE and RLIMIT_NPROC where the
//! number needs it; kernel-wide limits (pid_max, threads-max) it only
//! reports.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::status::ShardStatus;
use shardspawn_workshop::remote;
use shardspawn_workshop::spawner::{Spawner, Stage};
use shardspawn_workshop::util::{
    children, deadline_in, fork_lock, zombie_children,
};
use shardspawn_workshop::{QmailHome, Recording, wait_for, workload};

const SHARDS: u16 = 4;

/// What stands between us and `want` running at once, to name in a
/// failure: where the deliveries are (each shard's own status file says
/// how many it runs, holds and has received; a hold means a running cap
/// was met) and the limits of the kernel and of this process.
fn limits_report(home: &QmailHome, supervisor: u32, want: usize) -> String {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_or_else(|e| e.to_string(), |s| s.trim().to_string())
    };
    let mut out = format!("wanted {want} at once;");
    for (pid, _) in children(supervisor) {
        let _ =
            write!(out, " shard pid {pid}: {} children", children(pid).len());
    }
    for i in 0..SHARDS {
        let text = read(&home.path().join(format!("state/shard{i}")));
        match ShardStatus::parse(&text) {
            Ok(s) => {
                let _ = write!(
                    out,
                    "; shard {i} running {} held {} received {}",
                    s.running, s.held, s.received
                );
            }
            Err(e) => {
                let _ = write!(out, "; shard {i} status: {e}");
            }
        }
    }
    let limit = |r| nix::sys::resource::getrlimit(r);
    let _ = write!(
        out,
        "; pid_max {}, threads-max {}, file-nr {}, nofile {:?}, nproc {:?}",
        read(Path::new("/proc/sys/kernel/pid_max")),
        read(Path::new("/proc/sys/kernel/threads-max")),
        read(Path::new("/proc/sys/fs/file-nr")),
        limit(nix::sys::resource::Resource::RLIMIT_NOFILE),
        limit(nix::sys::resource::Resource::RLIMIT_NPROC),
    );
    out
}

#[test]
fn ten_thousand_deliveries_run_at_once_and_each_gets_one_k() {
    deliveries_run_at_once_and_each_gets_one_k(10_000);
}

/// Issue 5: 20,000 at once (see the top of this file for how to run it).
#[test]
#[ignore = "20,000 processes for a minute: run by hand, see the file's top"]
fn twenty_thousand_deliveries_run_at_once_and_each_gets_one_k() {
    let n = std::env::var("SHARDSPAWN_TEST_IN_FLIGHT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    deliveries_run_at_once_and_each_gets_one_k(n);
}

/// As root, raises this process's descriptor and process limits (which
/// shardspawn inherits and raises its soft limits to) so that `want`
/// deliveries fit: one pipe each in a shard, one process each.
fn raise_limits(want: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let need = want as u64 + 4096;
    for r in [Resource::RLIMIT_NOFILE, Resource::RLIMIT_NPROC] {
        if let Ok((soft, hard)) = getrlimit(r)
            && hard < need
        {
            let _ = setrlimit(r, soft.max(need), need);
        }
    }
}

fn deliveries_run_at_once_and_each_gets_one_k(deliveries: usize) {
    let _lock = fork_lock();
    let began = Instant::now();
    raise_limits(deliveries);
    let slots = u16::try_from(deliveries).unwrap();
    let Stage { home, mut gate, record } = Stage::new();
    // shardspawn as qmail-start runs it, plus what the stand-in needs.
    let mut emu = Spawner::new(&home, DelnumWidth::Two, SHARDS)
        .slots(slots)
        .gate(&gate)
        .record(&record)
        .start()
        .unwrap();
    assert_eq!(emu.slots(), slots, "shardspawn lowered the slots");
    let sup = emu.pid();
    let shards: Vec<u32> = children(sup).iter().map(|c| c.0).collect();
    assert_eq!(shards.len(), usize::from(SHARDS));

    // 500 domains, uniform: about 2,500 deliveries per shard, but not
    // exactly (2,334 to 2,796 with this seed), so no shard may be held
    // to a quarter of the slots.
    let work = workload::generate(&home, deliveries, 500, 0.0, 10_000, "gate");
    // A bound, not a measure: a passing run never waits it out. 10,000
    // execs on two shared cores once took more than 50 s (9,413 of them
    // had started, every shard's children all there).
    let limit_s = (deliveries / 100).max(50) as u64;
    for (delnum, d) in work.iter().enumerate() {
        let cmd = Command {
            delnum: u16::try_from(delnum).unwrap(),
            messid: d.messid.clone().into_bytes(),
            sender: d.sender.clone(),
            recipient: d.recipient.clone(),
        };
        emu.send(&cmd).unwrap();
    }
    assert_eq!(emu.in_flight(), deliveries);

    // The gate is closed, so no stand-in can end: once all have
    // started, all run at the same time. While waiting, only lines are
    // counted (every line is a start now); parsing 10,000 of them at
    // each look would take a core from the spawns.
    let mut started = 0;
    let all_started = wait_for(
        || {
            started = std::fs::read(&record)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
            started == deliveries
        },
        deadline_in(Duration::from_secs(limit_s)),
    );
    assert!(
        all_started,
        "only {started} stand-ins started: {}",
        limits_report(&home, sup, deliveries)
    );
    let recording = Recording::read(&record).unwrap();
    assert_eq!(recording.ended(), 0, "a stand-in passed a closed gate");
    assert_eq!(recording.peak(), deliveries);
    let running: usize = shards.iter().map(|&pid| children(pid).len()).sum();
    assert_eq!(running, deliveries, "stand-ins alive as shard children");
    eprintln!("{deliveries} in flight at once after {:?}", began.elapsed());

    gate.open();
    let mut answers: HashMap<u16, usize> = HashMap::new();
    let deadline = deadline_in(Duration::from_secs(limit_s));
    while answers.len() < deliveries {
        let Some(r) = emu.recv(deadline) else { break };
        let d = &work[usize::from(r.delnum)];
        let host = d.recipient.rsplit(|&b| b == b'@').next().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            String::from_utf8_lossy(&remote::default_result(host)),
            "delnum {}",
            r.delnum
        );
        *answers.entry(r.delnum).or_default() += 1;
    }
    assert_eq!(answers.len(), deliveries, "delnums answered");
    assert!(answers.values().all(|&n| n == 1));
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    assert_eq!(emu.in_flight(), 0);

    // Every stand-in is reaped by its shard; every shard still runs.
    assert_eq!(zombie_children(sup), 0);
    for &shard in &shards {
        assert_eq!(zombie_children(shard), 0, "shard {shard}");
    }
    assert_eq!(
        children(sup).iter().map(|c| c.0).collect::<Vec<_>>(),
        shards,
        "no shard was lost or replaced"
    );

    emu.close_commands();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(emu.recv(deadline_in(Duration::from_secs(5))).is_none());
    assert!(emu.results_closed());
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    for &shard in &shards {
        assert!(
            !Path::new(&format!("/proc/{shard}")).exists(),
            "shard {shard} outlived its supervisor"
        );
    }
    eprintln!("done after {:?}", began.elapsed());
}
