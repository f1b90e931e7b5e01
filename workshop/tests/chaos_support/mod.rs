//! What the chaos scenarios (chaos.rs) share: shardspawn run as
//! qmail-start runs it, under a seeded PRNG; a tally that prints the one
//! count line of a scenario; the shard processes found through /proc;
//! and the invariants checked after every scenario (each delnum answered
//! once with a well-formed record, no zombie, no leaked descriptor,
//! bounded memory, exit 0 after EOF once idle).
// Each scenario uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::domain;
use shardspawn_common::limits::Limits;
use shardspawn_common::report::BODY_MAX;
use shardspawn_workshop::emulator::{Delivery, RunReport};
use shardspawn_workshop::home::LIMITS;
use shardspawn_workshop::spawner::{self, Spawner};
use shardspawn_workshop::util::{children, deadline_in, zombie_children};
use shardspawn_workshop::workload::SplitMix64;
use shardspawn_workshop::{Emulator, QmailHome, Recording, wait_for};

/// Slots every scenario announces (2-byte framing).
pub const SLOTS: u16 = 1000;

/// How long a scenario's load may take, from the start of its rig: every
/// run and every wait for it ends by then, so a stuck scenario fails
/// instead of hanging (the checks after the load have short deadlines
/// of their own).
pub const SCENARIO_WITHIN: Duration = Duration::from_secs(60);

/// Set to a number to replay a scenario with that seed.
pub const ENV_SEED: &str = "SHARDSPAWN_CHAOS_SEED";

/// The most resident memory a supervisor or shard may use after a
/// scenario. Generous: a debug shard idles at a few MiB; what this
/// catches is output or results kept without bound.
pub const RSS_MAX_KIB: u64 = 64 * 1024;

pub const CRASHED: &[u8] = b"Zqmail-remote crashed.\n";
pub const NO_OUTPUT: &[u8] = b"Zqmail-remote produced no output.\n";
pub const CANNOT_RUN_Z: &[u8] = b"ZUnable to run qmail-remote.\n";
pub const CANNOT_RUN_D: &[u8] = b"DUnable to run qmail-remote.\n";
pub const NO_PIPE: &[u8] = b"Zqmail-spawn unable to create pipe. (#4.3.0)\n";
pub const NO_OPEN: &[u8] = b"Zqmail-spawn unable to open message. (#4.3.0)\n";
pub const NO_FORK: &[u8] = b"Zqmail-spawn unable to fork. (#4.3.0)\n";

/// The deferral of every delivery a dead shard held.
pub fn lost(shard: u16) -> Vec<u8> {
    format!(
        "Zshardspawn: spawner shard {shard} died; will try again. (#4.3.0)\n"
    )
    .into_bytes()
}

/// Bytes with NUL and newlines visible, cut at 200 bytes.
pub fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(200)];
    let mut s = String::from_utf8_lossy(cut)
        .replace('\0', "\u{2400}")
        .replace('\n', "\\n");
    if cut.len() < bytes.len() {
        let _ = write!(s, "... ({} bytes)", bytes.len());
    }
    s
}

/// The seed of a scenario: [`ENV_SEED`] if set, else the clock. Printed,
/// so a failure can be replayed.
pub fn seed(scenario: &str) -> u64 {
    let seed = match std::env::var(ENV_SEED) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ENV_SEED}={s:?} is not a number")),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32
        }
    };
    println!("chaos: {scenario}: seed={seed} (replay with {ENV_SEED}={seed})");
    seed
}

/// The scenario's PRNG.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.0.next_u64() as u8).collect()
    }
}

/// The counts of a scenario and the invariant breaches found. Printed as
/// one line by [`Tally::report`], which then fails the test on any
/// breach; printed (marked) also if the scenario panics first.
pub struct Tally {
    pub scenario: &'static str,
    pub deliveries: usize,
    pub faults: usize,
    pub results: usize,
    pub violations: Vec<String>,
    began: Instant,
    reported: bool,
}

impl Tally {
    pub fn new(scenario: &'static str) -> Tally {
        Tally {
            scenario,
            deliveries: 0,
            faults: 0,
            results: 0,
            violations: Vec::new(),
            began: Instant::now(),
            reported: false,
        }
    }

    /// Notes a breach (the scenario goes on, to report them all).
    pub fn breach(&mut self, what: String) {
        self.violations.push(what);
    }

    /// The count line, exactly `chaos: NAME: deliveries=N faults=N
    /// results=N violations=N`.
    fn line(&self) -> String {
        format!(
            "chaos: {}: deliveries={} faults={} results={} violations={}",
            self.scenario,
            self.deliveries,
            self.faults,
            self.results,
            self.violations.len(),
        )
    }

    /// Prints how long the scenario took and its count line; panics with
    /// the breaches if any.
    pub fn report(mut self) {
        self.reported = true;
        println!(
            "chaos: {}: took {:.1} s",
            self.scenario,
            self.began.elapsed().as_secs_f64()
        );
        println!("{}", self.line());
        if !self.violations.is_empty() {
            let shown: Vec<&String> =
                self.violations.iter().take(30).collect();
            panic!(
                "{}: {} violations, first ones:\n{shown:#?}",
                self.scenario,
                self.violations.len()
            );
        }
    }
}

impl Drop for Tally {
    /// A scenario that panicked before its report still prints its
    /// counts so far, and says so.
    fn drop(&mut self) {
        if !self.reported {
            println!("{}", self.line());
            println!("chaos: {}: panicked before its report", self.scenario);
        }
    }
}

/// What is wrong with a record body as qmail-send would take it, if
/// anything: it must start with `K`, `Z` or `D`, hold no NUL, and fit
/// in qmail-send's 10,000 bytes.
pub fn malformed(body: &[u8]) -> Option<String> {
    if !matches!(body.first(), Some(b'K' | b'Z' | b'D')) {
        return Some(format!("body without a K/Z/D letter: {}", show(body)));
    }
    if body.contains(&0) {
        return Some(format!("NUL inside a body: {}", show(body)));
    }
    if body.len() > BODY_MAX {
        return Some(format!("body of {} bytes", body.len()));
    }
    None
}

/// Checks a run: every delivery has exactly one well-formed outcome and
/// the emulator saw no breach; each outcome must also satisfy `expect`
/// (given the delivery's index), which returns what is wrong. Counts the
/// results into the tally.
pub fn check_run(
    tally: &mut Tally,
    report: &RunReport,
    work: &[Delivery],
    mut expect: impl FnMut(usize, &[u8]) -> Option<String>,
) {
    tally.deliveries += work.len();
    for v in &report.violations {
        tally.breach(format!("emulator: {v}"));
    }
    for (i, (d, o)) in work.iter().zip(&report.outcomes).enumerate() {
        let Some(o) = o else {
            tally.breach(format!("no result for {}", show(&d.recipient)));
            continue;
        };
        tally.results += 1;
        if let Some(why) = malformed(&o.body) {
            tally.breach(format!("{}: {why}", show(&d.recipient)));
        } else if let Some(why) = expect(i, &o.body) {
            tally.breach(format!("{}: {why}", show(&d.recipient)));
        }
    }
}

/// `want` or a description of the difference.
pub fn exactly(want: &[u8], got: &[u8]) -> Option<String> {
    (want != got).then(|| format!("got {}, want {}", show(got), show(want)))
}

/// The recipient of `d` with `directives` for the stand-in added to its
/// local part: `user7@d1.test` becomes `user7+sleep5+crash@d1.test`.
pub fn with_directives(d: &Delivery, directives: &[String]) -> Delivery {
    let at = d.recipient.iter().rposition(|&b| b == b'@').unwrap();
    let mut r = d.recipient[..at].to_vec();
    for word in directives {
        r.push(b'+');
        r.extend_from_slice(word.as_bytes());
    }
    r.extend_from_slice(&d.recipient[at..]);
    Delivery { recipient: r, ..d.clone() }
}

/// The host of a recipient.
pub fn host(recipient: &[u8]) -> &[u8] {
    domain::host(recipient).unwrap_or_default()
}

/// One shardspawn under test and everything around it.
pub struct Rig {
    pub home: QmailHome,
    /// The stand-ins' recording.
    pub record: PathBuf,
    /// The spawner's fd 2 (supervisor and shards).
    pub log: PathBuf,
    pub shards: u16,
    /// The limits file the spawner reads, parsed.
    pub limits: Limits,
    /// Run shardspawn (and so its shards) as this uid and gid.
    pub user: Option<(u32, u32)>,
    /// When the scenario's load must be done ([`SCENARIO_WITHIN`]).
    pub deadline: Instant,
}

impl Rig {
    /// A fresh home with the harness's no-limits file.
    pub fn new(shards: u16) -> Rig {
        let home = QmailHome::new().unwrap();
        let limits = Limits::parse(&home.read_file(LIMITS).unwrap()).unwrap();
        let record = home.path().join("recording");
        let log = home.path().join("log");
        Rig {
            home,
            record,
            log,
            shards,
            limits,
            user: None,
            deadline: deadline_in(SCENARIO_WITHIN),
        }
    }

    /// As [`Rig::new`], with this limits file.
    pub fn with_limits(shards: u16, text: &str) -> Rig {
        let mut rig = Rig::new(shards);
        rig.home.write_file(LIMITS, text.as_bytes()).unwrap();
        rig.limits = Limits::parse(text.as_bytes()).unwrap();
        rig
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        spawner::state_dir(&self.home)
    }

    /// The fixture for this rig: shardspawn as qmail-start runs it (no
    /// arguments, a clean environment with its settings: 2-byte framing,
    /// [`SLOTS`] slots, the stand-in as qmail-remote, its recording, a
    /// state directory in the home), its log in [`Rig::log`].
    pub fn spawner(&self) -> Spawner<'_> {
        Spawner::new(&self.home, DelnumWidth::Two, self.shards)
            .slots(SLOTS)
            .record(&self.record)
            .log(&self.log)
    }

    /// The fixture's command plus `extra`, run as [`Rig::user`].
    pub fn command(&self, extra: &[(&str, &str)]) -> Command {
        let mut cmd = self.spawner().command();
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Starts shardspawn with `extra` settings, its log in [`Rig::log`].
    pub fn start(&self, extra: &[(&str, &str)]) -> Emulator {
        let emu = self
            .spawner()
            .start_command(self.command(extra))
            .unwrap_or_else(|e| {
                panic!(
                    "shardspawn did not start: {e}\nlog:\n{}",
                    self.log_tail()
                )
            });
        assert_eq!(emu.slots(), SLOTS, "log:\n{}", self.log_tail());
        emu
    }

    /// The last lines of the log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The recording so far.
    pub fn recording(&self) -> Recording {
        Recording::read(&self.record).unwrap()
    }

    /// Stand-ins started so far: the recording's start lines, counted
    /// without parsing it all.
    pub fn started(&self) -> usize {
        let bytes = std::fs::read(&self.record).unwrap_or_default();
        let starts = bytes.windows(2).filter(|w| w == b"\nS").count();
        starts + usize::from(bytes.first() == Some(&b'S'))
    }

    /// The shard index a delivery to `recipient` goes to: the limit key
    /// of its domain, hashed, as the supervisor routes it.
    pub fn shard_of(&self, recipient: &[u8]) -> u16 {
        let host = domain::normalise(host(recipient));
        domain::shard_for(&self.limits.lookup(&host).key, self.shards)
    }

    /// The limit key of a host, printable, and its limit.
    pub fn key_of(&self, host: &str) -> (String, u32) {
        let m = self.limits.lookup(&domain::normalise(host.as_bytes()));
        let limit = self.limits.limit_of_key(&m.key);
        (domain::printable(&m.key), limit)
    }
}

/// The index a shard process was started with (`shard --index N`).
pub fn shard_index(pid: u32) -> Option<u16> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    args.find(|&a| a == b"--index")?;
    std::str::from_utf8(args.next()?).ok()?.parse().ok()
}

/// The children of `pid` with their state letter, as
/// [`children`] finds them, but read from the kernel's list of each
/// thread's children (`/proc/PID/task/TID/children`) instead of a walk
/// of every process on the machine: the shard killer and the hang
/// killer look many times a second, and a busy machine may run
/// thousands of processes. Falls back to the walk where that list is
/// not compiled in.
pub fn kids(pid: u32) -> Vec<(u32, char)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(list) => pids.extend(
                list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return children(pid);
            }
            // Gone while we looked.
            Err(_) => {}
        }
    }
    let mut out: Vec<(u32, char)> = pids
        .into_iter()
        .filter_map(|child| {
            let stat =
                std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            Some((child, rest.split_whitespace().next()?.chars().next()?))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The live (not zombie) shard processes of `sup`, by index.
pub fn shard_pids(sup: u32) -> BTreeMap<u16, u32> {
    kids(sup)
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .filter_map(|(pid, _)| Some((shard_index(pid)?, pid)))
        .collect()
}

/// The live shard process with `index`, if there is one now.
pub fn shard_pid(sup: u32, index: u16) -> Option<u32> {
    shard_pids(sup).get(&index).copied()
}

/// Whether `pid` has its event loop set up (an epoll and a signalfd).
pub fn set_up(pid: u32) -> bool {
    let links: Vec<String> = fds_of(pid)
        .into_iter()
        .map(|(_, l)| l.to_string_lossy().into_owned())
        .collect();
    ["anon_inode:[eventpoll]", "anon_inode:[signalfd]"]
        .iter()
        .all(|want| links.iter().any(|l| l == want))
}

/// Waits until all `count` shards of `sup` run with their loop set up;
/// returns their pids by index.
pub fn shards_ready(
    sup: u32,
    count: u16,
    within: Duration,
) -> BTreeMap<u16, u32> {
    let mut shards = BTreeMap::new();
    let ready = wait_for(
        || {
            shards = shard_pids(sup);
            shards.len() == usize::from(count)
                && shards.values().all(|&p| set_up(p))
        },
        deadline_in(within),
    );
    assert!(ready, "shards of {sup} not all up: {shards:?}");
    shards
}

/// The open fds of `pid` and their targets; empty if it is gone.
pub fn fds_of(pid: u32) -> Vec<(i32, PathBuf)> {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut fds: Vec<(i32, PathBuf)> = entries
        .filter_map(|e| {
            let fd: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(format!("{dir}/{fd}")).ok()?))
        })
        .collect();
    fds.sort();
    fds
}

/// The fds of `pid` that are not status files being written in `state`
/// (a shard or the supervisor opens one for a moment once a second).
pub fn lasting_fds(pid: u32, state: &Path) -> Vec<(i32, PathBuf)> {
    let mut fds = fds_of(pid);
    fds.retain(|(_, target)| !target.starts_with(state));
    fds
}

/// The kind of each fd (`pipe`, `anon_inode:[eventpoll]`, a path), so
/// the fds of a shard and of its replacement compare.
pub fn fd_kinds(pid: u32, state: &Path) -> Vec<(i32, String)> {
    lasting_fds(pid, state)
        .into_iter()
        .map(|(fd, target)| {
            let t = target.to_string_lossy().into_owned();
            let kind = match t.split_once(":[") {
                Some((kind, _)) if kind == "pipe" || kind == "socket" => {
                    kind.to_string()
                }
                _ => t,
            };
            (fd, kind)
        })
        .collect()
}

/// The descriptors of the supervisor and of one shard when idle.
#[derive(Debug)]
pub struct Baseline {
    pub supervisor: Vec<(i32, String)>,
    pub shard: Vec<(i32, String)>,
}

impl Baseline {
    /// Takes it now; every shard must look like the first.
    pub fn take(rig: &Rig, sup: u32) -> Baseline {
        let state = rig.state_dir();
        let shards = shards_ready(sup, rig.shards, Duration::from_secs(20));
        let kinds: Vec<_> =
            shards.values().map(|&p| fd_kinds(p, &state)).collect();
        // They ran the same warm-up: a difference is a descriptor one
        // of them kept (a leak) or lost.
        assert!(
            kinds.windows(2).all(|w| w[0] == w[1]),
            "the idle shards' descriptors differ: {kinds:?}"
        );
        Baseline {
            supervisor: fd_kinds(sup, &state),
            shard: kinds.into_iter().next().unwrap(),
        }
    }
}

/// Resident memory of `pid` in KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    shardspawn_workshop::util::memory_kib(pid, "VmRSS").unwrap_or(0)
}

/// The process is there and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// SIGKILLs `pid`; false if it was already gone.
pub fn sigkill(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
}

/// The invariants of an idle shardspawn, before EOF: every shard runs
/// (replaced if it was killed), no zombie under the supervisor or a
/// shard, the descriptors of the supervisor and of every shard are back
/// to `base`, and their memory is under [`RSS_MAX_KIB`].
pub fn check_idle(tally: &mut Tally, rig: &Rig, sup: u32, base: &Baseline) {
    let state = rig.state_dir();
    let mut shards = BTreeMap::new();
    let mut last = String::new();
    let settled = wait_for(
        || {
            shards = shard_pids(sup);
            last.clear();
            if shards.len() != usize::from(rig.shards) {
                let _ = write!(last, "shards {shards:?}");
                return false;
            }
            let mut pids = vec![sup];
            pids.extend(shards.values());
            for &pid in &pids {
                let z = zombie_children(pid);
                if z > 0 {
                    let _ = write!(last, "{z} zombies under {pid}; ");
                }
            }
            let fds = fd_kinds(sup, &state);
            if fds != base.supervisor {
                let _ = write!(
                    last,
                    "supervisor fds {fds:?}, idle {:?}; ",
                    base.supervisor
                );
            }
            for &pid in shards.values() {
                let fds = fd_kinds(pid, &state);
                if fds != base.shard {
                    let _ = write!(
                        last,
                        "shard {pid} fds {fds:?}, idle {:?}; ",
                        base.shard
                    );
                }
            }
            last.is_empty()
        },
        deadline_in(Duration::from_secs(15)),
    );
    if !settled {
        tally.breach(format!("not back to idle: {last}"));
    }
    let mut pids = vec![sup];
    pids.extend(shards.values());
    let rss: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
    for (pid, &kib) in pids.iter().zip(&rss) {
        if kib > RSS_MAX_KIB {
            tally.breach(format!("pid {pid} resident {kib} KiB"));
        }
    }
    println!(
        "chaos: {}: idle: {} fds in the supervisor, {} in each shard; \
         resident KiB {rss:?} (supervisor first)",
        tally.scenario,
        base.supervisor.len(),
        base.shard.len()
    );
}

/// qmail-send exits: EOF on the commands; every record still to come is
/// taken (a surplus one shows as a breach), then shardspawn must exit 0
/// with every delnum answered.
pub fn check_exit(tally: &mut Tally, rig: &Rig, emu: &mut Emulator) {
    emu.close_commands();
    let deadline = deadline_in(Duration::from_secs(20));
    while let Some(r) = emu.recv(deadline) {
        tally.breach(format!(
            "record after the run for delnum {}: {}",
            r.delnum,
            show(&r.body)
        ));
    }
    if !emu.results_closed() {
        tally.breach("fd 1 still open 20 s after EOF on fd 0".into());
    }
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    if status.and_then(|s| s.code()) != Some(0) {
        tally.breach(format!(
            "exit after EOF: {status:?}; log:\n{}",
            rig.log_tail()
        ));
    }
    for v in emu.violations() {
        tally.breach(format!("emulator: {v}"));
    }
    if emu.in_flight() != 0 {
        tally.breach(format!("unanswered: {:?}", emu.busy_delnums()));
    }
}

/// SIGKILLs shards of a supervisor, and keeps the pid of every shard
/// process it saw: a stand-in's parent is one of them, or whoever
/// adopted it once its shard was gone.
pub struct ShardKiller {
    pub sup: u32,
    /// Every shard pid seen: the ones killed and the ones still running.
    pub seen: Vec<u32>,
    pub kills: usize,
    pub chained: usize,
    /// Kills so far per shard index.
    per_index: BTreeMap<u16, usize>,
}

/// The most kills of one shard index in a scenario. A shard that dies
/// young is restarted after a pause that doubles (100 ms, 200 ms, ...,
/// up to 5 s), which is right for a crash loop but would make a long
/// run of kills of one index a test of patience: with four, its last
/// pause is 800 ms.
pub const KILLS_PER_INDEX: usize = 4;

impl ShardKiller {
    pub fn new(sup: u32) -> ShardKiller {
        let seen = shard_pids(sup).into_values().collect();
        ShardKiller {
            sup,
            seen,
            kills: 0,
            chained: 0,
            per_index: BTreeMap::new(),
        }
    }

    /// Kills of shard `index` still allowed.
    pub fn budget(&self, index: u16) -> usize {
        KILLS_PER_INDEX - self.per_index.get(&index).copied().unwrap_or(0)
    }

    /// Waits for shard `index` to run (it may be waiting out a restart
    /// pause), then SIGKILLs it; returns its pid.
    pub fn kill(&mut self, index: u16) -> u32 {
        let mut pid = None;
        let up = wait_for(
            || {
                pid = shard_pid(self.sup, index);
                pid.is_some()
            },
            deadline_in(Duration::from_secs(20)),
        );
        assert!(up, "shard {index} was not restarted");
        let pid = pid.unwrap();
        if !self.seen.contains(&pid) {
            self.seen.push(pid);
        }
        if sigkill(pid) {
            self.kills += 1;
            *self.per_index.entry(index).or_default() += 1;
        }
        pid
    }

    /// Kills shard `index`, and then its replacement as soon as it runs,
    /// `chain` more times (as far as its budget allows).
    pub fn kill_chain(&mut self, index: u16, chain: usize) {
        let chain = chain.min(self.budget(index).saturating_sub(1));
        let mut old = self.kill(index);
        for _ in 0..chain {
            let mut new = None;
            let replaced = wait_for(
                || {
                    new = shard_pid(self.sup, index).filter(|&p| p != old);
                    new.is_some()
                },
                deadline_in(Duration::from_secs(20)),
            );
            assert!(replaced, "shard {index} (pid {old}) was not replaced");
            old = new.unwrap();
            self.seen.push(old);
            if sigkill(old) {
                self.kills += 1;
                self.chained += 1;
                *self.per_index.entry(index).or_default() += 1;
            }
        }
    }

    /// Notes the shards running now (replacements never killed).
    pub fn note_live(&mut self) {
        for pid in shard_pids(self.sup).into_values() {
            if !self.seen.contains(&pid) {
                self.seen.push(pid);
            }
        }
    }
}
