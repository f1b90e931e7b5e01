//! A shard that dies costs each of its deliveries one `Z`, never a lost
//! or a second result: qmail-send never times a delivery out, so a lost
//! result pins its slot for ever, and a second one is "delivery report
//! out of range" or, worse, taken as the answer of the delnum's next
//! delivery.
//!
//! Under load, one shard is SIGKILLed (once; twice in a row; and while
//! its deliveries wait at the gate). Every delnum is answered exactly
//! once: the dead shard's with exactly `Zshardspawn: spawner shard N
//! died; will try again. (#4.3.0)\n`, every other with the stand-in's
//! `K`. Its domains are then served by a replacement (a new pid), the
//! supervisor stays up, and nothing more arrives: the dead shard's
//! stand-ins died with it (issue 15), so none finishes behind its `Z`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::domain;
use shardspawn_common::limits::Limits;
use shardspawn_workshop::emulator::{Delivery, RunReport};
use shardspawn_workshop::home::NO_LIMITS;
use shardspawn_workshop::remote;
use shardspawn_workshop::spawner::Stage;
use shardspawn_workshop::util::{
    children, deadline_in, fork_lock, zombie_children,
};
use shardspawn_workshop::{Emulator, wait_for, workload};

const SHARDS: u16 = 4;
const SLOTS: usize = 1000;

/// shardspawn as qmail-start runs it on `s`.
fn start(s: &Stage) -> Emulator {
    let emu =
        s.spawner(DelnumWidth::Two, SHARDS).slots(SLOTS).start().unwrap();
    assert_eq!(usize::from(emu.slots()), SLOTS);
    emu
}

fn wait_started(s: &Stage, n: usize) {
    s.wait_started(n, deadline_in(Duration::from_secs(30)));
}

/// The index a shard process was started with (`shard --index N ...`).
fn shard_index(pid: u32) -> Option<u16> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    args.find(|&a| a == b"--index")?;
    std::str::from_utf8(args.next()?).ok()?.parse().ok()
}

/// The live shard process with `index`, if there is one now.
fn shard_pid(supervisor: u32, index: u16) -> Option<u32> {
    children(supervisor)
        .into_iter()
        .find(|&(pid, state)| state != 'Z' && shard_index(pid) == Some(index))
        .map(|(pid, _)| pid)
}

/// SIGKILLs shard `index` and waits for its replacement; returns the
/// replacement's pid and when it was first seen.
fn kill_and_wait_for_replacement(sup: u32, index: u16) -> (u32, Instant) {
    let old = shard_pid(sup, index).expect("the shard runs");
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let mut new = None;
    let replaced = wait_for(
        || {
            new = shard_pid(sup, index).filter(|&p| p != old);
            new.is_some()
        },
        deadline_in(Duration::from_secs(20)),
    );
    assert!(replaced, "shard {index} (pid {old}) was not replaced");
    (new.unwrap(), Instant::now())
}

/// The shard a delivery goes to, found as the supervisor finds it: the
/// limit key of its domain under the home's limits file, hashed.
fn shard_of(recipient: &[u8]) -> u16 {
    static LIMITS: LazyLock<Limits> =
        LazyLock::new(|| Limits::parse(NO_LIMITS).unwrap());
    let host = domain::normalise(domain::host(recipient).unwrap());
    domain::shard_for(&LIMITS.lookup(&host).key, SHARDS)
}

fn lost(index: u16) -> Vec<u8> {
    format!(
        "Zshardspawn: spawner shard {index} died; will try again. (#4.3.0)\n"
    )
    .into_bytes()
}

fn success(d: &Delivery) -> Vec<u8> {
    remote::default_result(domain::host(&d.recipient).unwrap())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks a run in which shard `victim` was killed: every delivery has
/// exactly one result; the `Z`s are the lost-shard text and belong to
/// the victim's domains; the rest are `K`; and the victim's deliveries
/// sent after `replaced` (its last replacement was running) are `K`.
/// Returns (lost, served after the replacement).
fn check_run(
    report: &RunReport,
    work: &[Delivery],
    victim: u16,
    replaced: Instant,
) -> (usize, usize) {
    assert!(report.is_clean(), "{:?}", report.violations);
    let (mut lost_n, mut after) = (0, 0);
    for (d, o) in work.iter().zip(&report.outcomes) {
        let o = o.as_ref().unwrap();
        if o.body == lost(victim) {
            assert_eq!(shard_of(&d.recipient), victim, "{}", text(&o.body));
            assert!(
                o.sent < replaced,
                "sent after the replacement ran, yet lost: {}",
                text(&d.recipient)
            );
            lost_n += 1;
        } else {
            assert_eq!(text(&o.body), text(&success(d)));
            if shard_of(&d.recipient) == victim && o.sent > replaced {
                after += 1;
            }
        }
    }
    (lost_n, after)
}

/// Sends, after the run, a batch of deliveries to the domains of shard
/// `victim` (how many of the run's came after the replacement depends on
/// the machine's speed; these do not) and checks its replacement serves
/// every one. Returns how many.
fn served_by_replacement(s: &Stage, emu: &mut Emulator, victim: u16) -> usize {
    let batch: Vec<Delivery> =
        workload::generate(&s.home, 400, 100, 0.0, 11, "")
            .into_iter()
            .filter(|d| shard_of(&d.recipient) == victim)
            .collect();
    assert!(
        !batch.is_empty(),
        "no domain of the workload is on shard {victim}"
    );
    let report = emu.run(&batch, 100, deadline_in(Duration::from_secs(30)));
    assert!(report.is_clean(), "{:?}", report.violations);
    for (d, o) in batch.iter().zip(&report.outcomes) {
        let o = o.as_ref().unwrap();
        assert_eq!(text(&o.body), text(&success(d)));
    }
    batch.len()
}

/// After close_commands: every record up to EOF is taken (so a late
/// surplus one would show as a violation), then exit 0.
fn expect_clean_exit(emu: &mut Emulator) {
    emu.close_commands();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(30)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(emu.recv(deadline_in(Duration::from_secs(5))).is_none());
    assert!(emu.results_closed());
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
}

/// Runs `work` through `emu` in a thread and, once a third of it has
/// started, SIGKILLs shard `victim` `kills` times in a row, each time as
/// soon as its replacement runs. Returns the report, and the pid of the
/// last replacement and when it was first seen.
fn run_with_kills(
    s: &Stage,
    emu: &mut Emulator,
    work: &[Delivery],
    victim: u16,
    kills: usize,
) -> (RunReport, u32, Instant) {
    let sup = emu.pid();
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            emu.run(work, 400, deadline_in(Duration::from_secs(50)))
        });
        wait_started(s, work.len() / 3);
        let mut last = (0, Instant::now());
        for _ in 0..kills {
            last = kill_and_wait_for_replacement(sup, victim);
        }
        let report = run.join().unwrap();
        (report, last.0, last.1)
    })
}

#[test]
fn a_shard_killed_under_load_costs_one_z_per_delivery_it_held() {
    let _lock = fork_lock();
    let s = Stage::new();
    let mut emu = start(&s);
    let sup = emu.pid();
    let work = workload::generate(&s.home, 3000, 100, 1.0, 7, "sleep100");
    // The shard of the busiest domain always has deliveries in flight.
    // Each takes 100 ms, so work is left for the replacement, which a
    // shard that died young gets only after a pause.
    let victim = shard_of(b"someone@d1.test");
    let (report, new, replaced) =
        run_with_kills(&s, &mut emu, &work, victim, 1);
    let (lost_n, after) = check_run(&report, &work, victim, replaced);
    assert!(lost_n > 0, "the shard held nothing when it died");
    let extra = served_by_replacement(&s, &mut emu, victim);
    eprintln!(
        "shard {victim}: {lost_n} lost, {after} served after its \
         replacement during the run, {extra} more after it; {:?}",
        report.letters
    );
    assert_eq!(shard_pid(sup, victim), Some(new));
    assert_eq!(children(sup).len(), usize::from(SHARDS));
    // A shard, first or restarted, goes by the program's name where ps
    // -e, top and pgrep look, not by "exe".
    for (pid, _) in children(sup) {
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm"));
        assert!(
            wait_for(
                || comm().is_ok_and(|c| c == "shardspawn\n"),
                deadline_in(Duration::from_secs(10))
            ),
            "shard {pid} is called {:?}",
            comm()
        );
    }
    assert!(wait_for(
        || zombie_children(sup) == 0,
        deadline_in(Duration::from_secs(10))
    ));
    expect_clean_exit(&mut emu);
}

#[test]
fn a_shard_killed_twice_in_a_row_still_answers_each_delnum_once() {
    let _lock = fork_lock();
    let s = Stage::new();
    let mut emu = start(&s);
    let sup = emu.pid();
    let work = workload::generate(&s.home, 3000, 100, 1.0, 8, "sleep100");
    let victim = shard_of(b"someone@d1.test");
    let (report, new, replaced) =
        run_with_kills(&s, &mut emu, &work, victim, 2);
    let (lost_n, after) = check_run(&report, &work, victim, replaced);
    assert!(lost_n > 0, "the shard held nothing when it died");
    let extra = served_by_replacement(&s, &mut emu, victim);
    eprintln!(
        "shard {victim}: {lost_n} lost, {after} served after its second \
         replacement during the run, {extra} more after it; {:?}",
        report.letters
    );
    assert_eq!(shard_pid(sup, victim), Some(new));
    assert!(wait_for(
        || zombie_children(sup) == 0,
        deadline_in(Duration::from_secs(10))
    ));
    expect_clean_exit(&mut emu);
}

#[test]
fn a_shard_killed_at_the_gate_answers_z_and_its_orphans_add_nothing() {
    let _lock = fork_lock();
    let mut s = Stage::new();
    let mut emu = start(&s);
    let sup = emu.pid();
    let work = workload::generate(&s.home, 200, 40, 0.0, 9, "gate");
    for (delnum, d) in work.iter().enumerate() {
        emu.send(&Command {
            delnum: u16::try_from(delnum).unwrap(),
            messid: d.messid.clone().into_bytes(),
            sender: d.sender.clone(),
            recipient: d.recipient.clone(),
        })
        .unwrap();
    }
    wait_started(&s, work.len());
    let victim = shard_of(&work[0].recipient);
    let held: Vec<usize> = (0..work.len())
        .filter(|&i| shard_of(&work[i].recipient) == victim)
        .collect();
    assert!(!held.is_empty());

    let (new, _) = kill_and_wait_for_replacement(sup, victim);
    // Nothing else can end while the gate is closed: the next records
    // are the victim's, each a Z.
    let mut answered = vec![false; work.len()];
    let deadline = deadline_in(Duration::from_secs(20));
    for _ in 0..held.len() {
        let r = emu.recv(deadline).expect("a Z for each held delivery");
        let i = usize::from(r.delnum);
        assert!(held.contains(&i), "record for delnum {i}");
        assert!(!answered[i], "second record for delnum {i}");
        answered[i] = true;
        assert_eq!(text(&r.body), text(&lost(victim)));
    }
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());

    // The others pass the gate and succeed. The victim's stand-ins died
    // with it (issue 15): none passes the gate to deliver behind its Z.
    s.gate.open();
    for _ in held.len()..work.len() {
        let r = emu.recv(deadline).expect("a K for each other delivery");
        let i = usize::from(r.delnum);
        assert!(!answered[i], "second record for delnum {i}");
        answered[i] = true;
        assert_eq!(text(&r.body), text(&success(&work[i])));
    }
    assert!(wait_for(
        || s.recording().ended() == work.len() - held.len(),
        deadline_in(Duration::from_secs(20))
    ));
    let victims = s
        .recording()
        .intervals()
        .iter()
        .filter(|i| shard_of(format!("x@{}", i.host).as_bytes()) == victim)
        .map(|i| i.end)
        .collect::<Vec<_>>();
    assert_eq!(victims.len(), held.len());
    assert!(victims.iter().all(Option::is_none), "{victims:?}");

    // The replacement serves the victim's domains.
    let d = &work[held[0]];
    let sentinel = Command {
        delnum: 0,
        messid: d.messid.clone().into_bytes(),
        sender: d.sender.clone(),
        recipient: format!(
            "late@{}",
            text(domain::host(&d.recipient).unwrap())
        )
        .into_bytes(),
    };
    emu.send(&sentinel).unwrap();
    let r = emu.recv(deadline_in(Duration::from_secs(20))).unwrap();
    assert_eq!(r.delnum, 0);
    assert_eq!(text(&r.body), text(&success(d)));
    assert_eq!(shard_pid(sup, victim), Some(new));
    assert!(wait_for(
        || zombie_children(sup) == 0,
        deadline_in(Duration::from_secs(10))
    ));
    expect_clean_exit(&mut emu);
}

#[test]
fn a_shard_killed_after_eof_costs_its_zs_and_shardspawn_still_exits_0() {
    let _lock = fork_lock();
    let mut s = Stage::new();
    let mut emu = start(&s);
    let sup = emu.pid();
    let work = workload::generate(&s.home, 200, 40, 0.0, 10, "gate");
    for (delnum, d) in work.iter().enumerate() {
        emu.send(&Command {
            delnum: u16::try_from(delnum).unwrap(),
            messid: d.messid.clone().into_bytes(),
            sender: d.sender.clone(),
            recipient: d.recipient.clone(),
        })
        .unwrap();
    }
    wait_started(&s, work.len());
    // qmail-send is exiting: no more commands, results still read.
    emu.close_commands();
    let victim = shard_of(&work[0].recipient);
    let held: Vec<usize> = (0..work.len())
        .filter(|&i| shard_of(&work[i].recipient) == victim)
        .collect();
    let old = shard_pid(sup, victim).expect("the shard runs");
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();

    let mut answered = vec![false; work.len()];
    let deadline = deadline_in(Duration::from_secs(20));
    for _ in 0..held.len() {
        let r = emu.recv(deadline).expect("a Z for each held delivery");
        let i = usize::from(r.delnum);
        assert!(held.contains(&i), "record for delnum {i}");
        assert!(!answered[i], "second record for delnum {i}");
        answered[i] = true;
        assert_eq!(text(&r.body), text(&lost(victim)));
    }
    s.gate.open();
    for _ in held.len()..work.len() {
        let r = emu.recv(deadline).expect("a K for each other delivery");
        let i = usize::from(r.delnum);
        assert!(!answered[i], "second record for delnum {i}");
        answered[i] = true;
        assert_eq!(text(&r.body), text(&success(&work[i])));
    }
    // With qmail-send gone no job can come for it: no replacement.
    assert_eq!(shard_pid(sup, victim), None);
    expect_clean_exit(&mut emu);
}
