//! qmail-send going away, either way round (protocol §6.1, §5.4):
//!
//! - EOF on the command pipe with deliveries in flight: each still gets
//!   its result, then shardspawn exits 0;
//! - EOF inside a command: the partial command is discarded (no record),
//!   the whole ones are answered, exit 0;
//! - the result pipe closed under it (EPIPE on fd 1): shardspawn does not
//!   die, keeps running deliveries, and exits 0 once the commands end and
//!   nothing is in flight;
//! - and, while all is well, the descriptors of the supervisor and of
//!   every shard do not grow over 2,000 deliveries.

use std::path::Path;
use std::time::Duration;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::remote;
use shardspawn_workshop::spawner::Stage;
use shardspawn_workshop::util::{
    children, deadline_in, fd_count, fork_lock, open_fds, zombie_children,
};
use shardspawn_workshop::{Emulator, Options, Stderr, wait_for, workload};

const SHARDS: u16 = 4;

/// shardspawn as qmail-start runs it on `s`, 1000 slots, with `opts`.
fn start(s: &Stage, opts: Options) -> Emulator {
    let emu = s
        .spawner(DelnumWidth::Two, SHARDS)
        .slots(1000)
        .options(opts)
        .start()
        .unwrap();
    assert_eq!(emu.slots(), 1000);
    emu
}

/// Waits until `n` stand-ins have started.
fn wait_started(s: &Stage, n: usize) {
    s.wait_started(n, deadline_in(Duration::from_secs(30)));
}

fn command(delnum: usize, d: &Delivery) -> Command {
    Command {
        delnum: u16::try_from(delnum).unwrap(),
        messid: d.messid.clone().into_bytes(),
        sender: d.sender.clone(),
        recipient: d.recipient.clone(),
    }
}

fn host(recipient: &[u8]) -> &[u8] {
    recipient.rsplit(|&b| b == b'@').next().unwrap()
}

/// Sends `work` on delnums `first..`.
fn send_all(emu: &mut Emulator, first: usize, work: &[Delivery]) {
    for (i, d) in work.iter().enumerate() {
        emu.send(&command(first + i, d)).unwrap();
    }
}

/// Takes one record per delivery of `work` (sent on `first..`); each
/// must be the stand-in's success for its host, and come once.
fn expect_each_k(emu: &mut Emulator, first: usize, work: &[Delivery]) {
    let mut seen = vec![false; work.len()];
    let deadline = deadline_in(Duration::from_secs(30));
    for _ in 0..work.len() {
        let r = emu.recv(deadline).expect("a record for each delivery");
        let i = usize::from(r.delnum)
            .checked_sub(first)
            .filter(|&i| i < work.len())
            .unwrap_or_else(|| panic!("record for delnum {}", r.delnum));
        assert!(!seen[i], "second record for delnum {}", r.delnum);
        seen[i] = true;
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            String::from_utf8_lossy(&remote::default_result(host(
                &work[i].recipient
            ))),
        );
    }
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

/// The process is there and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Exit 0, then EOF on fd 1 with nothing after the last record.
fn expect_clean_exit(emu: &mut Emulator) {
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(emu.recv(deadline_in(Duration::from_secs(5))).is_none());
    assert!(emu.results_closed());
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

#[test]
fn eof_with_deliveries_in_flight_still_answers_each() {
    let _lock = fork_lock();
    let mut s = Stage::new();
    let mut emu = start(&s, Options::default());
    let work = workload::generate(&s.home, 300, 60, 0.0, 1, "gate");
    send_all(&mut emu, 0, &work);
    // qmail-send exits right after its last command.
    emu.close_commands();
    // Commands already written are still run after the EOF ...
    wait_started(&s, work.len());
    assert!(alive(emu.pid()), "shardspawn exited with 300 in flight");
    assert_eq!(s.recording().ended(), 0);
    // ... and answered once they end.
    s.gate.open();
    expect_each_k(&mut emu, 0, &work);
    expect_clean_exit(&mut emu);
}

#[test]
fn eof_inside_a_command_discards_it_and_answers_the_rest() {
    let _lock = fork_lock();
    let probe = command(
        0,
        &Delivery {
            messid: "1/1000".into(),
            sender: b"sender@origin.test".to_vec(),
            recipient: b"user+gate@d1.test".to_vec(),
        },
    );
    let mut whole = Vec::new();
    probe.encode(DelnumWidth::Two, &mut whole);
    // Cut in the delnum, after it, in the messid, in the recipient, and
    // just before the last NUL.
    for cut in [1, 2, 4, whole.len() - 5, whole.len() - 1] {
        let mut s = Stage::new();
        let mut emu = start(&s, Options::default());
        let work = workload::generate(&s.home, 40, 20, 0.0, 2, "gate");
        send_all(&mut emu, 0, &work);
        wait_started(&s, work.len());
        // The partial command is for a delnum that is not busy: any
        // record for it would be a violation.
        let mut partial = Vec::new();
        command(work.len(), &work[0]).encode(DelnumWidth::Two, &mut partial);
        partial.truncate(cut);
        emu.send_raw(&partial).unwrap();
        emu.close_commands();
        s.gate.open();
        expect_each_k(&mut emu, 0, &work);
        expect_clean_exit(&mut emu);
        assert_eq!(
            s.recording().started(),
            work.len(),
            "cut at {cut}: the partial command ran"
        );
    }
}

#[test]
fn epipe_on_results_does_not_kill_shardspawn() {
    let _lock = fork_lock();
    let mut s = Stage::new();
    let log = s.home.path().join("log");
    let mut emu = start(
        &s,
        Options { stderr: Stderr::File(log.clone()), ..Options::default() },
    );
    let sup = emu.pid();
    let shards: Vec<u32> = children(sup).iter().map(|c| c.0).collect();
    let log_has = |what: &str| {
        std::fs::read_to_string(&log).unwrap_or_default().matches(what).count()
    };

    let first = workload::generate(&s.home, 50, 20, 0.0, 3, "gate");
    send_all(&mut emu, 0, &first);
    wait_started(&s, first.len());
    // qmail-send closes its end of the result pipe; the results of the
    // first batch then meet EPIPE.
    emu.close_results();
    s.gate.open();
    const EPIPE: &str = "unable to write results to qmail-send";
    assert!(
        wait_for(|| log_has(EPIPE) > 0, deadline_in(Duration::from_secs(30))),
        "no write failure logged:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(alive(sup), "shardspawn died of EPIPE");
    assert!(shards.iter().all(|&p| alive(p)), "a shard died of EPIPE");

    // It still takes commands and runs deliveries ...
    let ended = || s.recording().ended();
    assert!(wait_for(
        || ended() == first.len(),
        deadline_in(Duration::from_secs(30))
    ));
    s.gate.close().unwrap();
    let second = workload::generate(&s.home, 50, 20, 0.0, 4, "gate");
    send_all(&mut emu, first.len(), &second);
    wait_started(&s, first.len() + second.len());
    // ... and after EOF it waits for them, without exiting early.
    emu.close_commands();
    // (The count it logs may include results of the first batch that
    // are on their way from a shard.)
    let eof = "end of commands; finishing ";
    assert!(
        wait_for(|| log_has(eof) == 1, deadline_in(Duration::from_secs(10))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(alive(sup), "shardspawn exited with deliveries in flight");
    s.gate.open();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    let recording = s.recording();
    assert_eq!(recording.ended(), first.len() + second.len());
    // EPIPE turns writing off for good: one warning, not one per record.
    assert_eq!(log_has(EPIPE), 1);
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

#[test]
fn fd_counts_stay_flat_over_two_thousand_deliveries() {
    let _lock = fork_lock();
    let s = Stage::new();
    let mut emu = start(&s, Options::default());
    let sup = emu.pid();
    let shards: Vec<u32> = children(sup).iter().map(|c| c.0).collect();
    assert_eq!(shards.len(), usize::from(SHARDS));
    // A first run brings every shard into its loop (so its epoll and
    // signalfd exist) before counting.
    let warm = workload::generate(&s.home, 200, 50, 0.0, 5, "");
    let report = emu.run(&warm, 100, deadline_in(Duration::from_secs(30)));
    assert!(report.is_clean(), "{:?}", report.violations);
    let pids: Vec<u32> = std::iter::once(sup).chain(shards.clone()).collect();
    // A status file is open for a moment once a second: not a leak.
    let state = s.home.path().join("state");
    let fds = |pid| {
        let mut fds = open_fds(pid);
        fds.retain(|(_, target)| !target.starts_with(&state));
        fds
    };
    let before: Vec<_> = pids.iter().map(|&p| fds(p)).collect();
    assert!(before.iter().zip(&pids).all(|(f, &p)| f.len() <= fd_count(p)));

    let work = workload::generate(&s.home, 2000, 200, 1.0, 6, "sleep1");
    let report = emu.run(&work, 200, deadline_in(Duration::from_secs(45)));
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(report.letters.k, 2000);

    // Every result is in, so every delivery's descriptors are closed.
    let mut after = Vec::new();
    let flat = wait_for(
        || {
            after = pids.iter().map(|&p| fds(p)).collect();
            after == before
        },
        deadline_in(Duration::from_secs(10)),
    );
    assert!(
        flat,
        "fds of the supervisor and shards {pids:?}\nbefore {before:?}\n\
         after {after:?}"
    );
    for &pid in &pids {
        assert_eq!(zombie_children(pid), 0);
    }
    assert_eq!(
        children(sup).iter().map(|c| c.0).collect::<Vec<_>>(),
        shards,
        "a shard was replaced"
    );
    emu.close_commands();
    expect_clean_exit(&mut emu);
    assert!(
        shards.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()),
        "a shard outlived its supervisor"
    );
}
