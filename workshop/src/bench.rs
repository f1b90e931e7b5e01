//! `shardspawn-bench`: how fast shardspawn starts and reaps qmail-remote,
//! against what one process and the whole machine can do with no
//! protocol at all.
//!
//! In one run, on the same stand-in qmail-remote
//! (`shardspawn-fake-remote`, zero latency, answering with its pid):
//!
//! - **baselines**, per number in flight: one minimal loop that starts the
//!   stand-in the way a shard does ([`spawn::Spawner`]: clone, shared
//!   descriptor table unshared down to fds 0-4 by the child) and reaps it
//!   with `waitpid`, keeping that many in flight (what one process can
//!   do); and one such loop per core, in parallel, sharing the same number
//!   in flight (what the machine can do). Each loop is a process of its
//!   own (this binary, re-run with [`LOOP_FLAG`]), so its `waitpid(-1)`
//!   reaps only its own children. The same loop, holding 0, 1,000 and
//!   10,000 descriptors open, compares that start with glibc's
//!   `posix_spawn` ([`spawn::spawn`]), which copies the whole table.
//! - **shardspawn** through the emulated qmail-send, per number in flight,
//!   framing and shard count: deliveries per second, the ratio to both
//!   baselines, the CPU time of the supervisor and the shards per delivery
//!   (utime + stime from /proc/PID/stat, read after the run while they
//!   still live, minus a reading before it; children excluded), their
//!   summed peak memory (VmHWM) per delivery in flight, and the time from
//!   a child's exit to the arrival of its result at the emulator
//!   (p50/p99), matched through the pid the stand-in puts in its result
//!   (the `pid` directive). The exit is the kernel's report of it
//!   ([`crate::exits`]), when the child can first be reaped; the time
//!   from the stand-in's own last record (`E`, just before it calls
//!   `exit`) is shown beside it, and is what counts without root.
//!
//! It writes a block of tables into `BENCHMARKS.md` (between markers, so
//! the hand-written analysis around it stays) and a plot,
//! `benchmarks.svg`, drawn with `plotters`' SVG backend: its text is
//! set by whatever shows the file, so drawing it needs no font files on
//! the machine that runs the bench.
//!
//! Targets are reported, never asserted: this machine is shared and noisy.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::wait::{WaitStatus, waitpid};
use plotters::prelude::*;

use shardspawn_common::command::DelnumWidth;
use shardspawn_os::spawn;

use crate::emulator::{Emulator, Options, Progress, Stderr};
use crate::home::QmailHome;
use crate::recorder::{Recording, monotonic_ns};
use crate::remote;
use crate::workload;

/// The first argument that makes this binary a baseline loop.
pub const LOOP_FLAG: &str = "--baseline-loop";

/// The stand-in's directives: answer at once, with its pid.
const LOCAL_PART: &str = "pid";

/// Where the generated block of `BENCHMARKS.md` begins and ends.
const BEGIN: &str =
    "<!-- shardspawn-bench: begin (generated; run the bench to refresh) -->";
const END: &str = "<!-- shardspawn-bench: end -->";

const USAGE: &str = "\
usage: shardspawn-bench [--deliveries N] [--rounds N] [--in-flight N,...]
                        [--shards N,N,...] [--framing N] [--domains N]
                        [--seed N] [--out DIR] [--quick] [--no-baselines]
                        [--live N] [--no-live] [--remote PATH]
                        [--shardspawn PATH]

Measures shardspawn (supervisor and shards, driven by an emulated
qmail-send) and two baselines with no protocol (one spawn/waitpid loop
that starts the stand-in as a shard does; one such loop per core) on the
same stand-in qmail-remote, and writes DIR/BENCHMARKS.md (the block
between its markers) and DIR/benchmarks.svg.

  --deliveries N   deliveries per measurement point      (default 20000)
  --rounds N       split each point into up to N rounds, all points
                   once per round, and take the median rate (a
                   round keeps at least 2 x in flight)   (default 3)
  --in-flight L    deliveries in flight                  (default
                   100,1000,10000; up to 255 runs in both framings)
  --shards L       shard counts                          (default 1,2,4)
  --framing N      only N-byte delnums, 1 or 2           (default: both
                   where the in flight fits 1 byte, else 2)
  --domains N      destination domains, uniform          (default 1000)
  --seed N         workload seed                         (default 1)
  --out DIR        where to write                        (default .)
  --quick          2000 deliveries, 1 round, in flight 100,1000, shards 1,2,
                   out target/bench-quick (flags after it still count)
  --no-baselines   skip the baselines (ratios are then blank)
  --live N         also hold N stand-ins alive at once, each living
                   10 to 20 s as a qmail-remote waits on the network, with
                   each shard count, 2 x N deliveries (default 10000)
  --no-live        skip that
  --remote PATH    stand-in qmail-remote  (default: beside this program)
  --shardspawn PATH  shardspawn           (default: beside this program)
";

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    deliveries: usize,
    rounds: usize,
    /// Only this framing (1 or 2 bytes), if set.
    framing: Option<usize>,
    in_flight: Vec<usize>,
    shards: Vec<u16>,
    domains: usize,
    seed: u64,
    out: PathBuf,
    quick: bool,
    baselines: bool,
    /// Stand-ins alive at once in the live points, if any.
    live: Option<usize>,
    remote: Option<PathBuf>,
    shardspawn: Option<PathBuf>,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            deliveries: 20_000,
            rounds: 3,
            framing: None,
            in_flight: vec![100, 1000, 10_000],
            shards: vec![1, 2, 4],
            domains: 1000,
            seed: 1,
            out: PathBuf::from("."),
            quick: false,
            baselines: true,
            live: Some(10_000),
            remote: None,
            shardspawn: None,
        }
    }
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        match flag {
            "--quick" => {
                plan.quick = true;
                plan.deliveries = 2000;
                plan.rounds = 1;
                plan.in_flight = vec![100, 1000];
                plan.shards = vec![1, 2];
                plan.live = None;
                plan.out = PathBuf::from("target/bench-quick");
                continue;
            }
            "--no-baselines" => {
                plan.baselines = false;
                continue;
            }
            "--no-live" => {
                plan.live = None;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or(format!("{flag}: missing value"))?.clone(),
        };
        let bad = |why: &str| format!("{flag}={value}: {why}");
        let num = |s: &str| -> Result<u64, String> {
            match s.trim().replace('_', "").parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad("not a number above 0")),
            }
        };
        let list = || -> Result<Vec<u64>, String> {
            value.split(',').map(num).collect()
        };
        match flag {
            "--deliveries" => plan.deliveries = num(&value)? as usize,
            "--live" => {
                let n = num(&value)?;
                if n > 32_767 {
                    return Err(bad("at most 32767"));
                }
                plan.live = Some(n as usize);
            }
            "--rounds" => plan.rounds = num(&value)? as usize,
            "--framing" => match num(&value)? {
                n @ (1 | 2) => plan.framing = Some(n as usize),
                _ => return Err(bad("1 or 2")),
            },
            "--in-flight" => {
                plan.in_flight =
                    list()?.into_iter().map(|n| n as usize).collect();
                if plan.in_flight.iter().any(|&n| n > 65_535) {
                    return Err(bad("at most 65535"));
                }
            }
            "--shards" => {
                plan.shards = list()?
                    .into_iter()
                    .map(|n| u16::try_from(n).map_err(|_| bad("too many")))
                    .collect::<Result<_, _>>()?;
            }
            "--domains" => plan.domains = num(&value)? as usize,
            "--seed" => plan.seed = num(&value)?,
            "--out" => plan.out = PathBuf::from(&value),
            "--remote" => plan.remote = Some(PathBuf::from(&value)),
            "--shardspawn" => plan.shardspawn = Some(PathBuf::from(&value)),
            _ => return Err(format!("{flag}: unknown flag")),
        }
    }
    Ok(plan)
}

/// The bench's whole life: `fn main() { std::process::exit(
/// shardspawn_workshop::bench::main()) }`. Exit 0 when every delivery got
/// its result (whatever the targets say), 1 when one did not, 100 for a
/// usage error, 111 when the bench itself could not run.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(LOOP_FLAG) {
        return loop_main(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    let plan = match parse(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("shardspawn-bench: {e}\n\n{USAGE}");
            return 100;
        }
    };
    match run(&plan, &args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("shardspawn-bench: fatal: {e}");
            111
        }
    }
}

// ---------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------

/// Everything the measurements share.
struct Ctx {
    me: PathBuf,
    remote: PathBuf,
    shardspawn: PathBuf,
    home: QmailHome,
    deliveries: Vec<crate::emulator::Delivery>,
    /// The same messages and recipients, each stand-in told to live 5 to
    /// 15 s, for the live points.
    live: Vec<crate::emulator::Delivery>,
    plan: Plan,
    clk_tck: u64,
}

/// One baseline measurement.
#[derive(Clone, Debug, PartialEq)]
struct Baseline {
    loops: usize,
    in_flight: usize,
    /// Descriptors each loop held open besides its own few.
    extra_fds: usize,
    /// How it started the stand-in.
    method: Method,
    deliveries: usize,
    elapsed: Duration,
    max_in_flight: usize,
    /// Deliveries per second of each round.
    rates: Vec<f64>,
    /// CPU of the loop processes themselves, µs per delivery.
    loop_cpu_us: f64,
    /// CPU of the stand-ins, µs per delivery.
    standin_cpu_us: f64,
    failures: usize,
}

impl Baseline {
    /// The median of the rounds' rates.
    fn rate(&self) -> f64 {
        median(&self.rates).unwrap_or_else(|| {
            self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
        })
    }

    /// The rounds of one baseline as one: rates kept, costs weighted
    /// by deliveries.
    fn merge(rounds: Vec<Baseline>) -> Option<Baseline> {
        let mut it = rounds.into_iter();
        let mut m = it.next()?;
        let w = |b: &Baseline, x: f64| x * b.deliveries as f64;
        let (mut loop_cpu, mut standin) =
            (w(&m, m.loop_cpu_us), w(&m, m.standin_cpu_us));
        for b in it {
            loop_cpu += w(&b, b.loop_cpu_us);
            standin += w(&b, b.standin_cpu_us);
            m.deliveries += b.deliveries;
            m.elapsed += b.elapsed;
            m.max_in_flight = m.max_in_flight.max(b.max_in_flight);
            m.failures += b.failures;
            m.rates.extend(b.rates);
        }
        let n = m.deliveries.max(1) as f64;
        m.loop_cpu_us = loop_cpu / n;
        m.standin_cpu_us = standin / n;
        Some(m)
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> =
        xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// A point's latencies for the progress lines.
fn describe(l: &Latency) -> String {
    format!(
        ", exit→result p50 {} p99 {} max {}{} (from the exit record: p99 \
         {}), command→start p50 {}",
        micros(l.p50_us),
        micros(l.p99_us),
        micros(l.max_us),
        if l.kernel { "" } else { " (records: no kernel reports)" },
        micros(l.record_p99_us),
        micros(l.to_start_p50_us)
    )
}

/// "1,200–1,350" for the rates of several rounds, "" for one.
fn spread(rates: &[f64]) -> String {
    if rates.len() < 2 {
        return "–".into();
    }
    let lo = rates.iter().copied().fold(f64::MAX, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    format!("{}–{}", thousands(lo), thousands(hi))
}

/// Exit to result, in µs; and, to see where a delivery in flight
/// waits, the medians of command → stand-in start and start → exit.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Latency {
    /// Results matched with the exit they count from, and not.
    matched: usize,
    unmatched: usize,
    /// From the child's exit as the kernel reported it ([`crate::exits`])
    /// where the bench could watch exits, else from the stand-in's exit
    /// record; `kernel` says which.
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    kernel: bool,
    /// From the stand-in's exit record, its last act before `exit`.
    record_p99_us: f64,
    to_start_p50_us: f64,
    running_p50_us: f64,
}

/// A result as the emulator saw it: the pid in its body, when its
/// command was sent and when it arrived, in monotonic ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Arrival {
    pid: Option<u32>,
    sent: u64,
    answered: u64,
}

/// One shardspawn measurement.
#[derive(Clone, Debug, PartialEq)]
struct Point {
    in_flight: usize,
    width: usize,
    shards: u16,
    slots: usize,
    deliveries: usize,
    elapsed: Duration,
    /// Deliveries per second of each round.
    rates: Vec<f64>,
    max_in_flight: usize,
    mean_in_flight: f64,
    peak_running: usize,
    /// Supervisor + shards, µs of CPU per delivery.
    cpu_us: f64,
    /// Summed VmHWM of the supervisor and shards, KiB.
    hwm_kib: u64,
    standin_cpu_us: f64,
    emulator_cpu_us: f64,
    latency: Option<Latency>,
    problems: Vec<String>,
}

impl Point {
    /// The median of the rounds' rates.
    fn rate(&self) -> f64 {
        median(&self.rates).unwrap_or_else(|| {
            self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
        })
    }

    /// The rounds of one point as one: rates kept, CPU weighted by
    /// deliveries, peaks the highest, latencies pooled.
    fn merge(rounds: Vec<(Point, LatRaw)>) -> Option<Point> {
        let mut it = rounds.into_iter();
        let (mut m, mut lat) = it.next()?;
        let w = |p: &Point, x: f64| x * p.deliveries as f64;
        let (mut cpu, mut standin, mut emu) = (
            w(&m, m.cpu_us),
            w(&m, m.standin_cpu_us),
            w(&m, m.emulator_cpu_us),
        );
        let mut busy = m.mean_in_flight * m.elapsed.as_secs_f64();
        for (p, l) in it {
            cpu += w(&p, p.cpu_us);
            standin += w(&p, p.standin_cpu_us);
            emu += w(&p, p.emulator_cpu_us);
            busy += p.mean_in_flight * p.elapsed.as_secs_f64();
            m.slots = m.slots.min(p.slots);
            m.deliveries += p.deliveries;
            m.elapsed += p.elapsed;
            m.rates.extend(p.rates);
            m.max_in_flight = m.max_in_flight.max(p.max_in_flight);
            m.peak_running = m.peak_running.max(p.peak_running);
            m.hwm_kib = m.hwm_kib.max(p.hwm_kib);
            m.problems.extend(p.problems);
            lat.exit.extend(l.exit);
            lat.kernel.extend(l.kernel);
            lat.kernel_unmatched += l.kernel_unmatched;
            lat.to_start.extend(l.to_start);
            lat.running.extend(l.running);
            lat.unmatched += l.unmatched;
        }
        let n = m.deliveries.max(1) as f64;
        m.cpu_us = cpu / n;
        m.standin_cpu_us = standin / n;
        m.emulator_cpu_us = emu / n;
        m.mean_in_flight = busy / m.elapsed.as_secs_f64().max(1e-9);
        m.latency = summarize(lat);
        Some(m)
    }

    /// Peak memory per delivery in flight, bytes (divided by the most in
    /// flight actually reached).
    fn mem_per_in_flight(&self) -> f64 {
        self.hwm_kib as f64 * 1024.0 / self.max_in_flight.max(1) as f64
    }
}

/// Facts about the machine, for the report.
#[derive(Clone, Debug, Default, PartialEq)]
struct Machine {
    nproc: usize,
    memory: String,
    kernel: String,
    rustc: String,
    nofile: String,
    pid_max: String,
    load_before: String,
    load_after: String,
    when: String,
    /// `git describe --always --dirty` where the bench ran.
    commit: String,
    /// Where the bench's home was made.
    home: String,
}

/// The baselines at one in flight: (in flight, one loop, one loop per
/// core).
type BaselineRow = (usize, Option<Baseline>, Option<Baseline>);

/// Everything measured in one run.
#[derive(Clone, Debug, Default, PartialEq)]
struct Results {
    command: String,
    deliveries: usize,
    domains: usize,
    machine: Machine,
    /// Per in flight: (one loop, one loop per core).
    baselines: Vec<BaselineRow>,
    points: Vec<Point>,
    /// One loop at 100 in flight with [`FD_SWEEP`] descriptors open,
    /// with `posix_spawn` and with the shard's clone.
    fd_sweep: Vec<Baseline>,
    /// Many stand-ins alive at once, one point per shard count.
    live: Vec<Point>,
    /// Rounds asked for.
    rounds: usize,
    duration: Duration,
}

/// Descriptors held open in the descriptor-table experiment.
const FD_SWEEP: [usize; 3] = [0, 1000, 10_000];

fn run(plan: &Plan, args: &[String]) -> Result<bool, String> {
    let began = Instant::now();
    let me = std::env::current_exe()
        .map_err(|e| format!("unable to find this program: {e}"))?;
    let remote = plan
        .remote
        .clone()
        .unwrap_or_else(|| me.with_file_name("shardspawn-fake-remote"));
    let shardspawn = plan
        .shardspawn
        .clone()
        .unwrap_or_else(|| me.with_file_name("shardspawn"));
    for (what, path) in [("stand-in", &remote), ("shardspawn", &shardspawn)] {
        if !path.is_file() {
            return Err(format!(
                "no {what} at {}: build with `cargo build --release`",
                path.display()
            ));
        }
    }
    let remote = std::path::absolute(&remote).map_err(|e| e.to_string())?;
    let home = QmailHome::new_in(&home_base())
        .map_err(|e| format!("unable to make a home: {e}"))?;
    let home_dir = home
        .path()
        .parent()
        .map_or_else(|| "?".into(), |p| p.display().to_string());
    eprintln!(
        "shardspawn-bench: writing {} messages to {} domains",
        plan.deliveries, plan.domains
    );
    let deliveries = workload::generate(
        &home,
        plan.deliveries.max(1),
        plan.domains,
        0.0,
        plan.seed,
        LOCAL_PART,
    );
    let clk_tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    let live = plan.live.map_or_else(Vec::new, |n| {
        live_deliveries(&deliveries, 2 * n, plan.seed)
    });
    let ctx = Ctx {
        me,
        remote,
        shardspawn,
        home,
        deliveries,
        live,
        plan: plan.clone(),
        clk_tck,
    };
    let mut results = Results {
        command: command_line(args),
        deliveries: plan.deliveries,
        domains: plan.domains,
        machine: Machine { home: home_dir, ..machine() },
        ..Results::default()
    };
    let cores = results.machine.nproc.max(1);
    let mut in_flight = plan.in_flight.clone();
    in_flight.sort_unstable();
    in_flight.dedup();
    type Key = (usize, usize, u16);
    let mut points: Vec<(Key, Vec<(Point, LatRaw)>)> = Vec::new();
    let mut baselines: Vec<(usize, Vec<Baseline>, Vec<Baseline>)> =
        in_flight.iter().map(|&c| (c, Vec::new(), Vec::new())).collect();
    let sweep_points: Vec<(Method, usize)> =
        [Method::PosixSpawn, Method::Clone, Method::Overlap]
            .into_iter()
            .flat_map(|m| FD_SWEEP.map(|fds| (m, fds)))
            .collect();
    let mut sweep: Vec<Vec<Baseline>> = vec![Vec::new(); sweep_points.len()];
    let rounds = plan.rounds.max(1);
    for round in 0..rounds {
        for (ci, &c) in in_flight.iter().enumerate() {
            let r = rounds_for(plan.deliveries, c, rounds);
            if round >= r {
                continue;
            }
            let n = plan.deliveries.div_ceil(r);
            eprintln!(
                "round {}/{rounds}, {c} in flight, {n} deliveries each:",
                round + 1
            );
            // The baselines just before the points they are compared
            // with, in every round.
            if plan.baselines {
                let one = run_loops(&ctx, 1, c, n, 0, Method::Clone)?;
                eprintln!("  baseline, one loop: {:.0}/s", one.rate());
                let per_core = run_loops(&ctx, cores, c, n, 0, Method::Clone)?;
                eprintln!(
                    "  baseline, {cores} loops: {:.0}/s",
                    per_core.rate()
                );
                baselines[ci].1.push(one);
                baselines[ci].2.push(per_core);
            }
            let widths = framings(c)
                .into_iter()
                .filter(|w| plan.framing.is_none_or(|f| f == w.bytes()));
            for width in widths {
                for &shards in &plan.shards {
                    let (p, raw) = run_point(
                        &ctx,
                        &ctx.deliveries,
                        "",
                        c,
                        width,
                        shards,
                        n,
                    )?;
                    let l = summarize(raw.clone())
                        .map_or(String::new(), |l| describe(&l));
                    eprintln!(
                        "  shardspawn, {}-byte, {shards} shard(s): {:.0}/s, \
                         {} CPU/delivery{l}{}",
                        p.width,
                        p.rate(),
                        micros(p.cpu_us),
                        if p.problems.is_empty() { "" } else { ", PROBLEMS" }
                    );
                    let key = (c, p.width, shards);
                    match points.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push((p, raw)),
                        None => points.push((key, vec![(p, raw)])),
                    }
                }
            }
        }
        if plan.baselines {
            // What a spawn costs when the spawner holds many
            // descriptors: clone copies the descriptor table, the child
            // closes it.
            let n = (plan.deliveries / 4 / rounds).max(500);
            for (i, &(method, fds)) in sweep_points.iter().enumerate() {
                let b = run_loops(&ctx, 1, 100, n, fds, method)?;
                eprintln!(
                    "  one loop, {}, 100 in flight, {fds} fds open: {:.0}/s, \
                     {} CPU/delivery",
                    method.name(),
                    b.rate(),
                    micros(b.loop_cpu_us)
                );
                sweep[i].push(b);
            }
        }
    }
    if let Some(live) = plan.live {
        for &shards in &plan.shards {
            eprintln!("{live} alive at once, {shards} shard(s):");
            let (mut p, raw) = run_point(
                &ctx,
                &ctx.live,
                "live-",
                live,
                DelnumWidth::Two,
                shards,
                ctx.live.len(),
            )?;
            p.latency = summarize(raw);
            eprintln!(
                "  {:.0}/s, peak running {}, {} CPU/delivery{}",
                p.rate(),
                p.peak_running,
                micros(p.cpu_us),
                p.latency.as_ref().map_or(String::new(), describe)
            );
            results.live.push(p);
        }
    }
    results.rounds = rounds;
    results.baselines = baselines
        .into_iter()
        .map(|(c, one, core)| (c, Baseline::merge(one), Baseline::merge(core)))
        .collect();
    results.points =
        points.into_iter().filter_map(|(_, v)| Point::merge(v)).collect();
    results.fd_sweep = sweep.into_iter().filter_map(Baseline::merge).collect();
    results.machine.load_after = loadavg();
    results.duration = began.elapsed();
    let clean = results
        .points
        .iter()
        .chain(&results.live)
        .all(|p| p.problems.is_empty())
        && results
            .baselines
            .iter()
            .flat_map(|(_, a, b)| [a, b])
            .flatten()
            .all(|b| b.failures == 0);
    write_outputs(&plan.out, &results)?;
    print!("{}", render(&results));
    Ok(clean)
}

/// How many rounds a point at `in_flight` gets out of `deliveries`: up
/// to `rounds`, each with at least twice `in_flight` deliveries (fewer
/// would never hold the cap for long), and at least one.
fn rounds_for(deliveries: usize, in_flight: usize, rounds: usize) -> usize {
    (deliveries / (2 * in_flight).max(1)).clamp(1, rounds.max(1))
}

/// 1-byte framing holds at most 255 slots: both framings up to there.
fn framings(in_flight: usize) -> Vec<DelnumWidth> {
    if in_flight <= 255 {
        vec![DelnumWidth::One, DelnumWidth::Two]
    } else {
        vec![DelnumWidth::Two]
    }
}

fn command_line(args: &[String]) -> String {
    let mut cmd = "cargo build --release && ./target/release/shardspawn-bench"
        .to_string();
    for a in args {
        cmd.push(' ');
        cmd.push_str(a);
    }
    cmd
}

fn write_outputs(out: &Path, results: &Results) -> Result<(), String> {
    std::fs::create_dir_all(out)
        .map_err(|e| format!("unable to create {}: {e}", out.display()))?;
    let md = out.join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&md).ok();
    let text = splice(existing.as_deref(), &render(results));
    std::fs::write(&md, text)
        .map_err(|e| format!("unable to write {}: {e}", md.display()))?;
    let svg = out.join(PLOT_FILE);
    std::fs::write(&svg, plot(results)?)
        .map_err(|e| format!("unable to write {}: {e}", svg.display()))?;
    eprintln!(
        "shardspawn-bench: wrote {} and {}",
        md.display(),
        svg.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------

fn machine() -> Machine {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or("?".into(), |s| s.trim().to_string())
    };
    let run = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let nofile = nix::sys::resource::getrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
    )
    .map_or("?".into(), |(soft, hard)| format!("soft {soft}, hard {hard}"));
    let memory = run("free", &["-h"]).unwrap_or_else(|| {
        read("/proc/meminfo").lines().next().unwrap_or("?").to_string()
    });
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory,
        kernel: run("uname", &["-srm"])
            .unwrap_or_else(|| read("/proc/sys/kernel/osrelease")),
        rustc: run("rustc", &["--version"]).unwrap_or_else(|| "?".into()),
        nofile,
        pid_max: read("/proc/sys/kernel/pid_max"),
        load_before: loadavg(),
        load_after: String::new(),
        when: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .unwrap_or_else(|| "?".into()),
        commit: run("git", &["describe", "--always", "--dirty"])
            .unwrap_or_else(|| "?".into()),
        home: String::new(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

// ---------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------

/// Share `i` of `total` split `k` ways, the remainder to the first.
fn share(total: usize, k: usize, i: usize) -> usize {
    total / k + usize::from(i < total % k)
}

/// Runs `k` baseline loops in parallel, `in_flight` in flight between
/// them, the plan's deliveries between them; each is started, says
/// `ready`, and all are let go at once.
fn run_loops(
    ctx: &Ctx,
    k: usize,
    in_flight: usize,
    n: usize,
    extra_fds: usize,
    method: Method,
) -> Result<Baseline, String> {
    let record = ctx.home.path().join(format!(
        "baseline-{k}x-{in_flight}-{extra_fds}-{}.record",
        method.name()
    ));
    let mut loops = Vec::new();
    let mut first = 0;
    for i in 0..k {
        let count = share(n, k, i);
        let conc = share(in_flight, k, i).max(1);
        let mut cmd = Command::new(&ctx.me);
        cmd.arg(LOOP_FLAG)
            .arg(&ctx.remote)
            .arg(method.name())
            .args(
                [conc, count, first, n, ctx.plan.domains]
                    .iter()
                    .map(usize::to_string),
            )
            .arg(ctx.plan.seed.to_string())
            .arg(extra_fds.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(remote::ENV_RECORD, &record)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        first += count;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("unable to start a baseline loop: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        loops.push((child, stdin, stdout));
    }
    let line = |r: &mut BufReader<std::process::ChildStdout>| {
        let mut l = String::new();
        r.read_line(&mut l).map(|_| l.trim().to_string())
    };
    for (_, _, out) in &mut loops {
        let l = line(out).map_err(|e| e.to_string())?;
        if l != "ready" {
            return Err(format!("a baseline loop said {l:?}, not ready"));
        }
    }
    // The exit watch shardspawn's points run beside, here too, so that
    // its reading costs the baselines what it costs shardspawn.
    let watch = crate::exits::ExitWatch::start().ok();
    for (_, stdin, _) in &mut loops {
        writeln!(stdin, "go").map_err(|e| e.to_string())?;
    }
    let mut b = Baseline {
        loops: k,
        in_flight,
        extra_fds,
        method,
        deliveries: 0,
        elapsed: Duration::ZERO,
        max_in_flight: 0,
        rates: Vec::new(),
        loop_cpu_us: 0.0,
        standin_cpu_us: 0.0,
        failures: 0,
    };
    let (mut start, mut end) = (u64::MAX, 0);
    let (mut own_ns, mut child_ns) = (0u64, 0u64);
    for (mut child, _, mut out) in loops {
        let l = line(&mut out).map_err(|e| e.to_string())?;
        let _ = child.wait();
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        if !l.starts_with("done ") || f.len() != 7 {
            return Err(format!("a baseline loop said {l:?}"));
        }
        b.deliveries += f[0] as usize;
        start = start.min(f[1]);
        end = end.max(f[2]);
        b.max_in_flight += f[3] as usize;
        own_ns += f[4];
        child_ns += f[5];
        b.failures += f[6] as usize;
    }
    if let Some(w) = watch {
        let _ = w.finish();
    }
    let _ = std::fs::remove_file(&record);
    b.elapsed = Duration::from_nanos(end.saturating_sub(start));
    b.rates = vec![b.deliveries as f64 / b.elapsed.as_secs_f64().max(1e-9)];
    let per = |ns: u64| ns as f64 / 1000.0 / b.deliveries.max(1) as f64;
    b.loop_cpu_us = per(own_ns);
    b.standin_cpu_us = per(child_ns);
    Ok(b)
}

/// How a baseline loop starts the stand-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// [`spawn::Spawner`]: clone with a shared descriptor table that
    /// the child unshares down to fds 0-4, as a shard starts
    /// qmail-remote.
    Clone,
    /// The shard's own start: [`spawn::Spawner`] as with `Clone`, but
    /// not waiting for the child's exec ([`spawn::Mode::Overlap`]).
    Overlap,
    /// glibc's `posix_spawn` ([`spawn::spawn`]), which copies the whole
    /// descriptor table.
    PosixSpawn,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Clone => "clone",
            Method::Overlap => "overlap",
            Method::PosixSpawn => "posix_spawn",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "clone" => Ok(Method::Clone),
            "overlap" => Ok(Method::Overlap),
            "posix_spawn" => Ok(Method::PosixSpawn),
            _ => Err(format!("unknown start method {s:?}")),
        }
    }
}

/// The baseline loop process: `LOOP_FLAG REMOTE METHOD CONCURRENCY
/// COUNT FIRST TOTAL DOMAINS SEED EXTRA_FDS`, holding EXTRA_FDS descriptors open
/// (pipes) while it runs. Prints `ready`, waits for `go` on stdin, runs
/// deliveries FIRST.. FIRST+COUNT of the workload, and prints `done
/// COUNT START_NS END_NS MAX_IN_FLIGHT OWN_CPU_NS CHILD_CPU_NS
/// FAILURES`.
fn loop_main(args: &[String]) -> i32 {
    match baseline_loop(args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("shardspawn-bench: baseline loop: {e}");
            111
        }
    }
}

fn baseline_loop(args: &[String]) -> Result<String, String> {
    let [remote, method, rest @ ..] = args else {
        return Err("no arguments".into());
    };
    let program =
        CString::new(PathBuf::from(remote).into_os_string().into_vec())
            .map_err(|e| e.to_string())?;
    // First, as in a shard: the spawner takes its staging descriptors.
    let mut spawner = match method.parse::<Method>()? {
        Method::Clone => Some(
            spawn::Spawner::new(program.clone(), spawn::Mode::WaitForExec)
                .map_err(|e| e.to_string())?,
        ),
        Method::Overlap => Some(
            spawn::Spawner::new(program.clone(), spawn::Mode::Overlap)
                .map_err(|e| e.to_string())?,
        ),
        Method::PosixSpawn => None,
    };
    let nums: Vec<usize> = rest
        .iter()
        .map(|a| a.parse().map_err(|_| a.clone()))
        .collect::<Result<_, _>>()?;
    let [conc, count, first, total, domains, seed, extra_fds] = nums[..]
    else {
        return Err(format!("want 9 arguments, got {}", args.len()));
    };
    if extra_fds > 0 {
        // As the supervisor does for its shards: the soft limit up to
        // the hard one.
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    // Held open (close-on-exec, as a shard's pipes are) for the whole
    // run: what a shard with that many deliveries running holds.
    let held: Vec<_> = (0..extra_fds / 2)
        .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unable to open {extra_fds} fds: {e}"))?;
    let attr = spawn::Attr::new().map_err(|e| e.to_string())?;
    let null_in = File::open("/dev/null").map_err(|e| e.to_string())?;
    let null_out = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.to_string())?;
    let rcpts =
        workload::recipients(total, domains, 0.0, seed as u64, LOCAL_PART);
    let c = |b: &[u8]| CString::new(b).map_err(|e| e.to_string());
    let argvs: Vec<[CString; 3]> = rcpts
        .get(first..first + count)
        .ok_or("deliveries out of range")?
        .iter()
        .map(|r| {
            let host = shardspawn_common::domain::host(r).unwrap_or_default();
            Ok([c(host)?, c(workload::SENDER)?, c(r)?])
        })
        .collect::<Result<_, String>>()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).map_err(|e| e.to_string())?;
    if go.trim() != "go" {
        return Err(format!("told {go:?}, not go"));
    }
    let own_before = rusage_ns(UsageWho::RUSAGE_SELF);
    let start = monotonic_ns();
    let (mut started, mut done, mut running, mut max, mut failures) =
        (0, 0, 0, 0, 0);
    while done < count {
        while running < conc && started < count {
            let [host, sender, rcpt] = &argvs[started];
            let argv = [program.as_c_str(), host, sender, rcpt];
            let (stdin, out) = (null_in.as_fd(), null_out.as_fd());
            let spawned = match spawner.as_mut() {
                Some(s) => s.spawn(&argv, stdin, out),
                None => spawn::spawn(&attr, &argv, stdin, out),
            };
            match spawned {
                Ok(_) => running += 1,
                Err(_) => {
                    failures += 1;
                    done += 1;
                }
            }
            started += 1;
        }
        max = max.max(running);
        if running == 0 {
            continue;
        }
        let reaped = waitpid(None, None);
        if let (Some(s), Ok(status)) = (spawner.as_mut(), &reaped)
            && let Some(pid) = status.pid()
        {
            // Frees its pad (and says whether its exec failed: it then
            // exited 127, counted below).
            let _ = s.exec_failure(pid);
        }
        match reaped {
            Ok(WaitStatus::Exited(_, 0)) => {}
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                failures += 1
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        }
        running -= 1;
        done += 1;
    }
    let end = monotonic_ns();
    let own = rusage_ns(UsageWho::RUSAGE_SELF) - own_before;
    drop(held);
    let children = rusage_ns(UsageWho::RUSAGE_CHILDREN);
    Ok(format!("done {count} {start} {end} {max} {own} {children} {failures}"))
}

fn rusage_ns(who: UsageWho) -> u64 {
    getrusage(who).map_or(0, |u| {
        let ns = |t: nix::sys::time::TimeVal| {
            (t.tv_sec() as u64) * 1_000_000_000 + (t.tv_usec() as u64) * 1000
        };
        ns(u.user_time()) + ns(u.system_time())
    })
}

// ---------------------------------------------------------------------
// shardspawn
// ---------------------------------------------------------------------

/// utime + stime and cutime + cstime of `pid`, in clock ticks.
fn proc_cpu(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// Fields 14-17 of a /proc/PID/stat line (after the command name in
/// parentheses, which may hold anything): (utime + stime, cutime +
/// cstime).
fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((n(11)? + n(12)?, n(13)? + n(14)?))
}

/// VmHWM of `pid`, KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_hwm(&status)
}

fn parse_hwm(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Where the bench's home goes: /dev/shm (tmpfs) where there is one, as
/// shardspawn's status directory is under /run on a mail host. On a disk
/// the journal's commits stall the stand-ins' record writes and the
/// shards' status files now and then, and that showed up as tens of
/// milliseconds of exit→result; the queue's messages are read from the
/// page cache either way.
fn home_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let writable = std::fs::metadata(&shm).is_ok_and(|m| m.is_dir())
        && tempfile_probe(&shm);
    if writable { shm } else { std::env::temp_dir() }
}

/// Whether a file can be made (and removed) in `dir`.
fn tempfile_probe(dir: &Path) -> bool {
    let probe =
        dir.join(format!("shardspawn-bench-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// `n` deliveries for the live points: the workload's messages in turn,
/// each to a recipient whose stand-in sleeps 10 to 20 s (uniform, from
/// `seed`), as a qmail-remote waits on DNS and SMTP, at one of `n / 4`
/// domains, so that no domain's limit (nor the adaptive start at 5)
/// holds any back. The spread keeps the exits apart: the first of them
/// comes after every first start.
fn live_deliveries(
    workload: &[crate::emulator::Delivery],
    n: usize,
    seed: u64,
) -> Vec<crate::emulator::Delivery> {
    let mut rng = workload::SplitMix64::new(seed ^ 0x5eed_11fe);
    let domains = (n / 4).max(1);
    workload
        .iter()
        .cycle()
        .take(if workload.is_empty() { 0 } else { n })
        .enumerate()
        .map(|(i, d)| {
            let ms = 10_000 + (rng.next_f64() * 10_000.0) as u64;
            let recipient = format!(
                "user{i}+{LOCAL_PART}+sleep{ms}@live{}.test",
                i % domains
            );
            crate::emulator::Delivery {
                recipient: recipient.into_bytes(),
                ..d.clone()
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_point(
    ctx: &Ctx,
    deliveries: &[crate::emulator::Delivery],
    prefix: &str,
    in_flight: usize,
    width: DelnumWidth,
    shards: u16,
    n: usize,
) -> Result<(Point, LatRaw), String> {
    let bytes = width.bytes();
    let label = format!("{prefix}{in_flight}-{bytes}b-{shards}s");
    let home = ctx.home.path();
    let record = home.join(format!("{label}.record"));
    let mut cmd = Command::new(&ctx.shardspawn);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SHARDSPAWN_HOME", home)
        .env("SHARDSPAWN_QUEUE_OWNER", ctx.home.owner_uid().to_string())
        .env("SHARDSPAWN_SHARDS", shards.to_string())
        .env("SHARDSPAWN_SLOTS", in_flight.to_string())
        .env("SHARDSPAWN_DELNUM_BYTES", bytes.to_string())
        .env("SHARDSPAWN_STATE_DIR", home.join(format!("state-{label}")))
        .env("QMAILREMOTE", &ctx.remote)
        .env(remote::ENV_RECORD, &record);
    let opts = Options {
        stderr: Stderr::File(home.join(format!("{label}.log"))),
        ..Options::default()
    };
    let mut emu = Emulator::start(cmd, width, opts)
        .map_err(|e| format!("unable to start shardspawn: {e}"))?;
    let mut problems = Vec::new();
    let slots = usize::from(emu.slots());
    if slots < in_flight {
        problems.push(format!("announced {slots} slots, not {in_flight}"));
    }
    let sup = emu.pid();
    // Its children now are the shards (no logger is configured).
    let mut pids = vec![sup];
    pids.extend(crate::util::children(sup).iter().map(|c| c.0));
    if pids.len() != usize::from(shards) + 1 {
        problems.push(format!("found {} shards", pids.len() - 1));
    }
    let cpu = |pids: &[u32]| -> Option<(u64, u64)> {
        pids.iter().try_fold((0, 0), |(a, b), &p| {
            let (own, children) = proc_cpu(p)?;
            Some((a + own, b + children))
        })
    };
    let me = std::process::id();
    let before = cpu(&pids).ok_or("a shardspawn process vanished")?;
    let emu_before = proc_cpu(me).map_or(0, |c| c.0);
    let watch = crate::exits::ExitWatch::start().ok();
    let reference = (Instant::now(), monotonic_ns());
    let n = n.min(deliveries.len());
    let mut last = Instant::now();
    let report = emu.run_with_progress(
        &deliveries[..n],
        in_flight,
        Instant::now() + Duration::from_secs(600),
        |p: &Progress| {
            if last.elapsed() >= Duration::from_millis(500) {
                last = Instant::now();
                eprint!(
                    "\r  {label}: {}/{} done, {} in flight   ",
                    p.done, p.total, p.in_flight
                );
            }
        },
    );
    eprint!("\r{:60}\r", "");
    // Read while they live: the command pipe is still open.
    let after = cpu(&pids);
    let hwm: Option<u64> = pids.iter().map(|&p| vm_hwm_kib(p)).sum();
    let emu_after = proc_cpu(me).map_or(0, |c| c.0);
    emu.close_commands();
    let exit = emu.wait_exit(Instant::now() + Duration::from_secs(60));
    if !exit.is_some_and(|s| s.success()) {
        problems.push(format!("shardspawn exit: {exit:?}"));
    }
    problems.extend(report.violations.iter().take(5).cloned());
    if !report.is_clean() && report.violations.is_empty() {
        problems.push("results missing".into());
    }
    if report.letters.k != n {
        problems.push(format!("{} of {n} results were K", report.letters.k));
    }
    let Some(after) = after else {
        return Err(format!("{label}: a shardspawn process died in the run"));
    };
    let tick_us = 1e6 / ctx.clk_tck as f64;
    let per = |ticks: u64| ticks as f64 * tick_us / n.max(1) as f64;

    let recording = Recording::read(&record)
        .map_err(|e| format!("unable to read {}: {e}", record.display()))?;
    let _ = std::fs::remove_file(&record);
    let mut runs: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for i in recording.intervals() {
        if let Some(end) = i.end {
            runs.entry(i.pid).or_default().push((end, i.start));
        }
    }
    let (t0, ns0) = reference;
    let ns = |at: Instant| {
        let since = at.saturating_duration_since(t0);
        ns0 + u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    };
    let arrivals: Vec<Arrival> = report
        .outcomes
        .iter()
        .flatten()
        .map(|o| Arrival {
            pid: remote::pid_of_result(&o.body),
            sent: ns(o.sent),
            answered: ns(o.answered),
        })
        .collect();
    let mut raw = match_runs(&mut runs, &arrivals);
    if let Some(w) = watch {
        match w.finish() {
            Ok(exits) => {
                if exits.dropped {
                    problems.push("the kernel dropped exit reports".into());
                }
                (raw.kernel, raw.kernel_unmatched) =
                    match_exits(&exits, &arrivals);
            }
            Err(e) => problems.push(format!("exit watch: {e}")),
        }
    }
    let busy: f64 = report
        .outcomes
        .iter()
        .flatten()
        .map(|o| o.latency().as_secs_f64())
        .sum();
    let rate =
        report.letters.total() as f64 / report.elapsed.as_secs_f64().max(1e-9);
    let point = Point {
        in_flight,
        width: bytes,
        shards,
        slots,
        deliveries: report.letters.total(),
        elapsed: report.elapsed,
        rates: vec![rate],
        max_in_flight: report.max_in_flight,
        mean_in_flight: busy / report.elapsed.as_secs_f64().max(1e-9),
        peak_running: recording.peak(),
        cpu_us: per(after.0.saturating_sub(before.0)),
        hwm_kib: hwm.unwrap_or(0),
        standin_cpu_us: per(after.1.saturating_sub(before.1)),
        emulator_cpu_us: per(emu_after.saturating_sub(emu_before)),
        latency: None,
        problems,
    };
    Ok((point, raw))
}

/// Raw times of one or more rounds, ns: exit → result, command →
/// start, start → exit; and how many results found no run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LatRaw {
    exit: Vec<u64>,
    /// From the kernel's exit report (see [`crate::exits`]) to the
    /// result; empty where the bench could not watch exits.
    kernel: Vec<u64>,
    kernel_unmatched: usize,
    to_start: Vec<u64>,
    running: Vec<u64>,
    unmatched: usize,
}

/// Matches each result with the run of the stand-in that served it:
/// the latest (exit, start) of its pid whose exit is not after the
/// result's arrival. A pid is reused only after its process is reaped,
/// and the kernel hands pids out in a cycle, so the last exit before the
/// result is the one that made it.
fn match_runs(
    runs: &mut HashMap<u32, Vec<(u64, u64)>>,
    arrivals: &[Arrival],
) -> LatRaw {
    for v in runs.values_mut() {
        v.sort_unstable();
    }
    let mut raw = LatRaw::default();
    for a in arrivals {
        let run = a.pid.and_then(|p| {
            let v = runs.get(&p)?;
            let i = v.partition_point(|&(end, _)| end <= a.answered);
            i.checked_sub(1).map(|i| v[i])
        });
        match run {
            Some((end, start)) => {
                raw.exit.push(a.answered - end);
                raw.to_start.push(start.saturating_sub(a.sent));
                raw.running.push(end.saturating_sub(start));
            }
            None => raw.unmatched += 1,
        }
    }
    raw
}

/// From each result back to its child's exit as the kernel reported
/// it: the latest exit of its pid not after the result's arrival (as in
/// [`match_runs`]); and how many results found none.
fn match_exits(
    exits: &crate::exits::Exits,
    arrivals: &[Arrival],
) -> (Vec<u64>, usize) {
    let found: Vec<u64> = arrivals
        .iter()
        .filter_map(|a| {
            let times = exits.by_pid.get(&a.pid?)?;
            let end = times.iter().filter(|&&t| t <= a.answered).max()?;
            Some(a.answered - end)
        })
        .collect();
    let unmatched = arrivals.len() - found.len();
    (found, unmatched)
}

/// The percentiles of raw times, in µs; `None` with no matched result.
fn summarize(mut raw: LatRaw) -> Option<Latency> {
    for v in
        [&mut raw.exit, &mut raw.kernel, &mut raw.to_start, &mut raw.running]
    {
        v.sort_unstable();
    }
    let us = |v: &[u64], p: f64| percentile(v, p).map(|ns| ns as f64 / 1000.0);
    let kernel = !raw.kernel.is_empty();
    let (exit, unmatched) = if kernel {
        (&raw.kernel, raw.kernel_unmatched)
    } else {
        (&raw.exit, raw.unmatched)
    };
    Some(Latency {
        matched: exit.len(),
        unmatched,
        p50_us: us(exit, 50.0)?,
        p99_us: us(exit, 99.0)?,
        max_us: us(exit, 100.0)?,
        kernel,
        record_p99_us: us(&raw.exit, 99.0)?,
        to_start_p50_us: us(&raw.to_start, 50.0)?,
        running_p50_us: us(&raw.running, 50.0)?,
    })
}

/// The nearest-rank percentile `p` (0 to 100) of ascending `sorted`.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// ---------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------

/// Column alignment in a markdown table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A markdown table with padded columns.
#[derive(Clone, Debug, Default)]
struct Table {
    head: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[(&str, Align)]) -> Table {
        Table {
            head: head.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let cols = self.head.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain([&self.head[i].0])
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: Vec<&str>| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).copied().unwrap_or("");
                let pad = w - c.chars().count();
                match self.head[i].1 {
                    Align::Left => write!(s, " {c}{} |", " ".repeat(pad)),
                    Align::Right => write!(s, " {}{c} |", " ".repeat(pad)),
                }
                .expect("writing to a String");
            }
            s.push('\n');
            s
        };
        let mut out = line(self.head.iter().map(|h| h.0.as_str()).collect());
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            match self.head[i].1 {
                Align::Left => write!(out, " {} |", "-".repeat(*w)),
                Align::Right => write!(out, " {}: |", "-".repeat(w - 1)),
            }
            .expect("writing to a String");
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// 12345.6 → "12,346".
fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let head = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..head].to_string();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Bytes as B or KiB.
fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    }
}

/// Microseconds as µs or ms.
fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn pass(ok: bool) -> String {
    if ok { "**pass**".into() } else { "**FAIL**".into() }
}

impl Results {
    fn baseline(
        &self,
        in_flight: usize,
    ) -> (Option<&Baseline>, Option<&Baseline>) {
        self.baselines
            .iter()
            .find(|b| b.0 == in_flight)
            .map_or((None, None), |b| (b.1.as_ref(), b.2.as_ref()))
    }

    /// Ratios of a point's rate to the one-loop and per-core baselines.
    fn ratios(&self, p: &Point) -> (Option<f64>, Option<f64>) {
        let (one, core) = self.baseline(p.in_flight);
        (one.map(|b| p.rate() / b.rate()), core.map(|b| p.rate() / b.rate()))
    }
}

/// One row of the targets table: what, measured, pass/fail (None: not
/// measured in this run).
fn targets(r: &Results) -> Vec<(String, String, Option<bool>)> {
    let mut out = Vec::new();
    let label = |p: &Point| {
        format!("{} in flight {}-byte", thousands(p.in_flight as f64), p.width)
    };
    // Throughput against the baselines.
    for (what, min, pick) in [
        (
            "deliveries/s with 1 shard ≥ 95% of one loop, at every in flight",
            0.95,
            0,
        ),
        ("deliveries/s with 2+ shards ≥ 90% of one loop per core", 0.90, 1),
    ] {
        let mut measured = Vec::new();
        let mut ok = true;
        let mut any = false;
        for p in &r.points {
            if (pick == 0) != (p.shards == 1) {
                continue;
            }
            let (one, core) = r.ratios(p);
            let Some(ratio) = (if pick == 0 { one } else { core }) else {
                continue;
            };
            any = true;
            ok &= ratio >= min;
            let who = if pick == 0 {
                label(p)
            } else {
                format!("{}, {} shards", label(p), p.shards)
            };
            measured.push(format!("{who}: {:.1}%", ratio * 100.0));
        }
        out.push((what.to_string(), measured.join("; "), any.then_some(ok)));
    }
    // CPU per delivery flat within 25%, per shard count.
    let mut shard_counts: Vec<u16> =
        r.points.iter().map(|p| p.shards).collect();
    shard_counts.sort_unstable();
    shard_counts.dedup();
    let mut measured = Vec::new();
    let mut ok = true;
    let mut any = false;
    for s in &shard_counts {
        let cpus: Vec<f64> = r
            .points
            .iter()
            .filter(|p| p.shards == *s)
            .map(|p| p.cpu_us)
            .collect();
        let (lo, hi) = cpus
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &c| (lo.min(c), hi.max(c)));
        if cpus.len() < 2 || lo <= 0.0 {
            continue;
        }
        any = true;
        let spread = hi / lo - 1.0;
        ok &= spread <= 0.25;
        measured.push(format!(
            "{s} shard(s): {lo:.1} to {hi:.1} µs, +{:.1}%",
            spread * 100.0
        ));
    }
    out.push((
        "CPU per delivery in shardspawn's processes flat within 25% from the \
         lowest to the highest in flight"
            .into(),
        measured.join("; "),
        any.then_some(ok),
    ));
    // Memory per delivery in flight, at the highest in flight.
    let top = r.points.iter().map(|p| p.in_flight).max().unwrap_or(0);
    let low = r.points.iter().map(|p| p.in_flight).min().unwrap_or(0);
    let at_top: Vec<&Point> =
        r.points.iter().filter(|p| p.in_flight == top).collect();
    let ok = at_top.iter().all(|p| p.mem_per_in_flight() <= 4096.0);
    out.push((
        format!(
            "≤ 4 KiB of shardspawn memory (VmHWM) per delivery in flight, at \
             {} in flight",
            thousands(top as f64)
        ),
        at_top
            .iter()
            .map(|p| {
                format!(
                    "{} shard(s): {}",
                    p.shards,
                    bytes(p.mem_per_in_flight())
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        (!at_top.is_empty()).then_some(ok),
    ));
    // The marginal cost: slope from the lowest to the highest in flight.
    let mut measured = Vec::new();
    let mut ok = true;
    let mut any = false;
    for s in &shard_counts {
        let find = |c: usize| {
            r.points
                .iter()
                .filter(|p| p.shards == *s && p.in_flight == c)
                .max_by_key(|p| p.width)
        };
        let (Some(a), Some(b)) = (find(low), find(top)) else { continue };
        if b.max_in_flight <= a.max_in_flight {
            continue;
        }
        any = true;
        let slope = (b.hwm_kib as f64 - a.hwm_kib as f64) * 1024.0
            / (b.max_in_flight - a.max_in_flight) as f64;
        ok &= slope <= 4096.0;
        measured.push(format!("{s} shard(s): {}", bytes(slope.max(0.0))));
    }
    out.push((
        format!(
            "… and per extra delivery in flight (VmHWM slope from {} to {})",
            thousands(low as f64),
            thousands(top as f64)
        ),
        measured.join("; "),
        any.then_some(ok),
    ));
    // Exit to result at the highest in flight.
    let mut measured = Vec::new();
    let mut ok = true;
    let mut any = false;
    for p in &at_top {
        if let Some(l) = p.latency {
            any = true;
            ok &= l.p99_us < 5000.0;
            measured.push(format!(
                "{} shard(s): {}",
                p.shards,
                micros(l.p99_us)
            ));
        }
    }
    out.push((
        format!(
            "p99 exit→result < 5 ms at {} in flight, the machine saturated \
             by stand-ins that live for nothing",
            thousands(top as f64)
        ),
        measured.join("; "),
        any.then_some(ok),
    ));
    // The same with that many truly alive at once.
    if let Some(first) = r.live.first() {
        let who = |p: &Point, x: String| format!("{} shard(s): {x}", p.shards);
        let all = |f: &dyn Fn(&Point) -> Option<(bool, String)>| {
            let got: Vec<(bool, String)> =
                r.live.iter().filter_map(f).collect();
            let ok = got.iter().all(|(ok, _)| *ok);
            let text: Vec<String> = got.into_iter().map(|(_, t)| t).collect();
            (text.join("; "), (!text.is_empty()).then_some(ok))
        };
        let (text, ok) = all(&|p| {
            let l = p.latency?;
            Some((l.p99_us < 5000.0, who(p, micros(l.p99_us))))
        });
        out.push((
            format!(
                "… and with {} alive at once (stand-ins living 10–20 s)",
                thousands(first.in_flight as f64)
            ),
            text,
            ok,
        ));
        let (text, ok) = all(&|p| {
            let m = p.mem_per_in_flight();
            Some((m <= 4096.0, who(p, bytes(m))))
        });
        out.push((
            format!(
                "≤ 4 KiB of shardspawn memory per delivery in flight, {} alive \
                 at once",
                thousands(first.in_flight as f64)
            ),
            text,
            ok,
        ));
    }
    out
}

/// The generated block of BENCHMARKS.md (also printed).
fn render(r: &Results) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "{BEGIN}\n");
    let _ = writeln!(
        w,
        "Measured {} at commit `{}`, in {:.0} s, by\n",
        m.when,
        m.commit,
        r.duration.as_secs_f64()
    );
    let _ = writeln!(w, "    {}\n", r.command);
    let _ = writeln!(
        w,
        "{} deliveries per point, to {} domains (uniform), in up to {} \
         round(s): every point is measured once per round (a round keeps at \
         least twice the deliveries in flight, so 10,000 in flight gets \
         one), baselines just before the points they are compared with; \
         a rate is the median of the rounds, *rounds /s* their range. The \
         stand-in qmail-remote (`shardspawn-fake-remote`, directive `pid`) \
         sleeps for nothing, records its start and exit, and answers \
         `K`.\n",
        thousands(r.deliveries as f64),
        thousands(r.domains as f64),
        r.rounds.max(1)
    );
    let _ = writeln!(
        w,
        "Machine: {} CPUs (`nproc`); kernel {}; {}; \
         RLIMIT_NOFILE {}; pid_max {}; load average {} before, {} after; \
         the bench's home (queue, records, status files) under {}.\n",
        m.nproc,
        m.kernel,
        m.rustc,
        m.nofile,
        m.pid_max,
        m.load_before,
        m.load_after,
        m.home
    );
    let _ = writeln!(w, "```\n$ free -h\n{}\n```\n", m.memory);

    let _ = writeln!(
        w,
        "### Baselines: no protocol, no shards\n\n\
         One loop that starts the stand-in with the shard's clone but \
         waits for each child's exec, as vfork and `posix_spawn` do \
         (`clone`, the spawner's `Spawner` in `WaitForExec` mode), with \
         fds 0-2 on /dev/null, and reaps it with `waitpid`, keeping that \
         many in flight; and one such loop per core, in parallel, sharing \
         the same number in flight. A shard does not wait for the exec \
         (`overlap` below).\n"
    );
    let mut t = Table::new(&[
        ("in flight", Align::Right),
        ("one loop /s", Align::Right),
        ("rounds /s", Align::Right),
        ("loop CPU/delivery", Align::Right),
        ("loop per core /s", Align::Right),
        ("rounds /s", Align::Right),
        ("loops", Align::Right),
        ("stand-in CPU/delivery", Align::Right),
    ]);
    for (c, one, core) in &r.baselines {
        let rate = |b: &Option<Baseline>| {
            b.as_ref().map_or("–".into(), |b| thousands(b.rate()))
        };
        let range = |b: &Option<Baseline>| {
            b.as_ref().map_or("–".into(), |b| spread(&b.rates))
        };
        t.row(vec![
            thousands(*c as f64),
            rate(one),
            range(one),
            one.as_ref().map_or("–".into(), |b| micros(b.loop_cpu_us)),
            rate(core),
            range(core),
            core.as_ref().map_or("–".into(), |b| b.loops.to_string()),
            one.as_ref().map_or("–".into(), |b| micros(b.standin_cpu_us)),
        ]);
    }
    let _ = writeln!(w, "{}", t.render());

    if !r.fd_sweep.is_empty() {
        let _ = writeln!(
            w,
            "### A spawn with descriptors open\n\n\
             One loop, 100 in flight, {} deliveries in all, holding pipes \
             open (close-on-exec) as a shard holds one per running \
             delivery. `posix_spawn` copies the whole descriptor table \
             into the child, which closes it again; `clone` shares the \
             table, which the child unshares down to the few staged \
             descriptors, and waits for the exec (the baselines above); \
             `overlap` is the shard's own start, the same clone without \
             waiting for the exec.\n",
            thousands(r.fd_sweep[0].deliveries as f64)
        );
        let mut t = Table::new(&[
            ("start", Align::Left),
            ("fds open", Align::Right),
            ("deliveries/s", Align::Right),
            ("rounds /s", Align::Right),
            ("loop CPU/delivery", Align::Right),
            ("stand-in CPU/delivery", Align::Right),
        ]);
        for b in &r.fd_sweep {
            t.row(vec![
                format!("`{}`", b.method.name()),
                thousands(b.extra_fds as f64),
                thousands(b.rate()),
                spread(&b.rates),
                micros(b.loop_cpu_us),
                micros(b.standin_cpu_us),
            ]);
        }
        let _ = writeln!(w, "{}", t.render());
    }
    let _ = writeln!(w, "### shardspawn through the emulated qmail-send\n");
    let mut t = Table::new(&[
        ("in flight", Align::Right),
        ("framing", Align::Left),
        ("shards", Align::Right),
        ("deliveries/s", Align::Right),
        ("rounds /s", Align::Right),
        ("÷ one loop", Align::Right),
        ("÷ per core", Align::Right),
        ("max in flight", Align::Right),
        ("mean in flight", Align::Right),
        ("peak running", Align::Right),
        ("CPU/delivery", Align::Right),
        ("memory/in flight", Align::Right),
        ("exit→result p50", Align::Right),
        ("p99", Align::Right),
        ("record→result p99", Align::Right),
        ("command→start p50", Align::Right),
        ("start→exit p50", Align::Right),
        ("stand-in CPU", Align::Right),
        ("emulator CPU", Align::Right),
    ]);
    for p in &r.points {
        let (one, core) = r.ratios(p);
        let pct = |x: Option<f64>| {
            x.map_or("–".into(), |x| format!("{:.0}%", x * 100.0))
        };
        let lat = |f: fn(&Latency) -> f64| {
            p.latency.as_ref().map_or("–".into(), |l| micros(f(l)))
        };
        t.row(vec![
            thousands(p.in_flight as f64),
            format!("{}-byte", p.width),
            p.shards.to_string(),
            thousands(p.rate()),
            spread(&p.rates),
            pct(one),
            pct(core),
            thousands(p.max_in_flight as f64),
            thousands(p.mean_in_flight),
            thousands(p.peak_running as f64),
            micros(p.cpu_us),
            bytes(p.mem_per_in_flight()),
            lat(|l| l.p50_us),
            lat(|l| l.p99_us),
            lat(|l| l.record_p99_us),
            lat(|l| l.to_start_p50_us),
            lat(|l| l.running_p50_us),
            micros(p.standin_cpu_us),
            micros(p.emulator_cpu_us),
        ]);
    }
    let _ = writeln!(w, "{}", t.render());
    let problems: Vec<String> = r
        .points
        .iter()
        .chain(&r.live)
        .flat_map(|p| {
            p.problems.iter().map(move |x| {
                format!(
                    "{} in flight, {}-byte, {} shard(s): {x}",
                    p.in_flight, p.width, p.shards
                )
            })
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(w, "Problems:\n");
        for x in problems {
            let _ = writeln!(w, "- {x}");
        }
        let _ = writeln!(w);
    }
    let lats = || r.points.iter().chain(&r.live).filter_map(|p| p.latency);
    let unmatched: usize = lats().map(|l| l.unmatched).sum();
    let exit = if lats().all(|l| l.kernel) {
        "from a child's exit as the kernel reports it (the proc \
         connector's exit event, sent as the child becomes a zombie its \
         parent can reap: the first moment a spawner can know how it \
         ended)"
    } else {
        "from a stand-in's exit record (the kernel's exit reports could \
         not be watched here: the bench needs CAP_NET_ADMIN for them)"
    };
    let _ = writeln!(
        w,
        "Columns: *CPU/delivery* is utime+stime of the supervisor and the \
         shards (their children excluded), read from /proc/PID/stat just \
         before the command pipe closes, minus a reading taken before the \
         run, per delivery; *memory/in flight* is their summed VmHWM \
         divided by *max in flight*, the most deliveries qmail-send had \
         outstanding; *mean in flight* is the time-average (Little's law: \
         total command→result time ÷ elapsed); *peak running* is the most \
         stand-ins alive at once by their own start/exit records; \
         *exit→result* is {exit} to its result reaching the emulator, on \
         CLOCK_MONOTONIC ({unmatched} results unmatched); \
         *record→result* from the stand-in's exit record, written just \
         before it calls exit, so it adds the child's own way out (the \
         kernel freeing its memory and closing its files) to the \
         spawner's part; *command→start* from qmail-send's command to the \
         stand-in's start record, *start→exit* the stand-in's own life; \
         *stand-in CPU* is the children's CPU (cutime+cstime of the \
         shards, or of the loop), *emulator CPU* the bench process's: \
         the emulated qmail-send, which shares the machine with \
         shardspawn but not with the baselines, and the thread watching \
         exits, which runs beside the baselines too.\n"
    );

    if !r.live.is_empty() {
        let _ = writeln!(
            w,
            "### {} alive at once\n\n\
             The same messages, but each stand-in sleeps 10 to 20 s \
             (uniform) before it answers, as a qmail-remote waits on DNS \
             and SMTP, and the recipients are spread over a quarter as many \
             domains as in flight, so that no limit holds one back: {} \
             deliveries, {} in flight, that many children and their pipes \
             alive at once, and the machine not saturated. Columns as \
             above.\n",
            thousands(r.live[0].in_flight as f64),
            thousands(r.live[0].deliveries as f64),
            thousands(r.live[0].in_flight as f64),
        );
        let mut t = Table::new(&[
            ("shards", Align::Right),
            ("deliveries/s", Align::Right),
            ("peak running", Align::Right),
            ("CPU/delivery", Align::Right),
            ("memory/in flight", Align::Right),
            ("exit→result p50", Align::Right),
            ("p99", Align::Right),
            ("max", Align::Right),
            ("record→result p99", Align::Right),
            ("stand-in CPU", Align::Right),
        ]);
        for p in &r.live {
            let lat = |f: fn(&Latency) -> f64| {
                p.latency.as_ref().map_or("–".into(), |l| micros(f(l)))
            };
            t.row(vec![
                p.shards.to_string(),
                thousands(p.rate()),
                thousands(p.peak_running as f64),
                micros(p.cpu_us),
                bytes(p.mem_per_in_flight()),
                lat(|l| l.p50_us),
                lat(|l| l.p99_us),
                lat(|l| l.max_us),
                lat(|l| l.record_p99_us),
                micros(p.standin_cpu_us),
            ]);
        }
        let _ = writeln!(w, "{}", t.render());
    }
    let _ = writeln!(w, "### Targets\n");
    let mut t = Table::new(&[
        ("target", Align::Left),
        ("measured", Align::Left),
        ("result", Align::Left),
    ]);
    for (what, measured, ok) in targets(r) {
        t.row(vec![what, measured, ok.map_or("not measured".into(), pass)]);
    }
    let _ = writeln!(w, "{}", t.render());
    let _ = writeln!(
        w,
        "![deliveries/s and CPU per delivery against deliveries in \
         flight](benchmarks.svg)\n"
    );
    let _ = writeln!(w, "{END}");
    s
}

/// Puts `block` (which starts with BEGIN and ends with END) into the
/// text of BENCHMARKS.md in place of the last generated block, or after
/// a new title when there is none.
fn splice(existing: Option<&str>, block: &str) -> String {
    let Some(text) = existing else {
        return format!("# Benchmarks\n\n{block}");
    };
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &text[..b])
        }
        _ => {
            let sep = if text.ends_with('\n') { "\n" } else { "\n\n" };
            format!("{text}{sep}{block}")
        }
    }
}

// ---------------------------------------------------------------------
// The plot
// ---------------------------------------------------------------------

/// The plot's file, at the top of the output directory.
pub const PLOT_FILE: &str = "benchmarks.svg";

const GREY: RGBColor = RGBColor(130, 130, 130);
const GRID: RGBColor = RGBColor(225, 225, 225);
/// The shard counts' colours, in turn (matplotlib's first four).
const SHARD_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// The deliveries-in-flight axis, log scale: the bench's points run
/// from 100 to 10,000.
const X_RANGE: std::ops::Range<f64> = 70.0..14_000.0;

/// A line of the plot.
struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
    /// Drawn as hollow markers, not joined (1-byte framing).
    hollow: Vec<(f64, f64)>,
}

/// The two panels' series: deliveries/s, then CPU per delivery; one
/// line per shard count, and the baseline loops dashed.
fn plot_series(r: &Results) -> (Vec<Series>, Vec<Series>) {
    let mut shard_counts: Vec<u16> =
        r.points.iter().map(|p| p.shards).collect();
    shard_counts.sort_unstable();
    shard_counts.dedup();
    let mut rate = Vec::new();
    let mut cpu = Vec::new();
    let x = |c: usize| c as f64;
    for (i, s) in shard_counts.iter().enumerate() {
        let color = SHARD_COLORS[i % SHARD_COLORS.len()];
        let label = format!("{s} shard{}", if *s == 1 { "" } else { "s" });
        let pick = |f: &dyn Fn(&Point) -> f64| {
            let mut line = Vec::new();
            let mut hollow = Vec::new();
            for p in r.points.iter().filter(|p| p.shards == *s) {
                if p.width == 2 {
                    line.push((x(p.in_flight), f(p)));
                } else {
                    hollow.push((x(p.in_flight), f(p)));
                }
            }
            (line, hollow)
        };
        let (points, hollow) = pick(&|p: &Point| p.rate());
        rate.push(Series {
            label: label.clone(),
            color,
            dashed: false,
            points,
            hollow,
        });
        let (points, hollow) = pick(&|p: &Point| p.cpu_us);
        cpu.push(Series { label, color, dashed: false, points, hollow });
    }
    let base = |f: &dyn Fn(&BaselineRow) -> Option<f64>| {
        r.baselines
            .iter()
            .filter_map(|b| Some((x(b.0), f(b)?)))
            .collect::<Vec<_>>()
    };
    let one = base(&|b| b.1.as_ref().map(Baseline::rate));
    let core = base(&|b| b.2.as_ref().map(Baseline::rate));
    let one_cpu = base(&|b| b.1.as_ref().map(|b| b.loop_cpu_us));
    let cores =
        r.baselines.iter().find_map(|b| b.2.as_ref()).map_or(0, |b| b.loops);
    if !one.is_empty() {
        let dashed = |label: String, color, points| Series {
            label,
            color,
            dashed: true,
            points,
            hollow: vec![],
        };
        rate.push(dashed("one loop".into(), BLACK, one));
        let label = format!("{cores} loops (one per core)");
        rate.push(dashed(label, GREY, core));
        cpu.push(dashed("one loop".into(), BLACK, one_cpu));
    }
    (rate, cpu)
}

/// Two panels, deliveries/s and CPU per delivery, against deliveries in
/// flight on a log scale; an SVG, whose text the viewer sets, so that
/// drawing it needs no font files.
fn plot(r: &Results) -> Result<String, String> {
    let (rate, cpu) = plot_series(r);
    let mut svg = String::new();
    draw(&mut svg, &rate, &cpu).map_err(|e| format!("plot: {e}"))?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(svg: &mut String, rate: &[Series], cpu: &[Series]) -> DrawResult {
    let root = SVGBackend::with_string(svg, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = "shardspawn-bench: shardspawn vs. a bare spawn/waitpid loop";
    let root = root.titled(title, ("sans-serif", 24))?;
    let (panels, foot) = root.split_vertically(530);
    let halves = panels.split_evenly((1, 2));
    panel(&halves[0], "deliveries per second", rate)?;
    panel(&halves[1], "CPU µs/delivery (supervisor+shards)", cpu)?;
    foot.draw(&Circle::new((40, 20), 5, BLACK.stroke_width(2)))?;
    foot.draw(&Text::new(
        "hollow: 1-byte framing; filled: 2-byte",
        (55, 12),
        ("sans-serif", 16),
    ))?;
    root.present()?;
    Ok(())
}

/// Draws one panel, its legend in the upper left.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.hollow))
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let (step, top) = nice_axis(ymax);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(X_RANGE.log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .y_labels((top / step).round() as usize + 1)
        .x_label_formatter(&|x| thousands(*x))
        .y_label_formatter(&|y| tick_label(*y, step))
        .x_desc("deliveries in flight")
        .label_style(("sans-serif", 15))
        .draw()?;
    for s in series {
        let line = s.color.stroke_width(3);
        let points = s.points.iter().copied();
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 10, 6, line))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], line)
                });
        } else {
            chart
                .draw_series(LineSeries::new(points, line))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], line)
                });
        }
        let filled = s.color.filled();
        let hollow = s.color.stroke_width(2);
        chart.draw_series(
            s.points.iter().map(|&p| Circle::new(p, 5, filled)),
        )?;
        chart.draw_series(
            s.hollow.iter().map(|&p| Circle::new(p, 5, hollow)),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks up to
/// `max`, and the axis top (a multiple of the step, above `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 5.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let top = ((max / step).floor() + 1.0) * step;
    (step, top)
}

fn tick_label(y: f64, step: f64) -> String {
    if step >= 1.0 {
        thousands(y)
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{y:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn exits_match_the_latest_end_before_the_result() {
        // Pid 10 ran twice (started at 800 and 4,000); each result takes
        // the run whose exit is just before it.
        let mut runs = HashMap::from([
            (10, vec![(5_000, 4_000), (1_000, 800)]),
            (11, vec![(2_000, 1_900)]),
        ]);
        let a = |pid, sent, answered| Arrival { pid, sent, answered };
        let arrivals = [
            a(Some(10), 500, 1_500),
            a(Some(10), 3_000, 9_000),
            a(Some(11), 1_000, 2_100),
            a(Some(12), 0, 3_000), // no such pid
            a(None, 0, 3_000),     // no pid in the body
            a(Some(11), 0, 1_000), // before any exit of 11
        ];
        let mut raw = match_runs(&mut runs, &arrivals);
        assert_eq!(raw.exit, [500, 4_000, 100]);
        let l = summarize(raw.clone()).unwrap();
        assert_eq!((l.matched, l.unmatched, l.kernel), (3, 3, false));
        // Exit to result 500, 4,000, 100 ns; sent to start 300, 1,000,
        // 900; start to exit 200, 1,000, 100.
        assert_eq!((l.p50_us, l.max_us, l.record_p99_us), (0.5, 4.0, 4.0));
        assert_eq!((l.to_start_p50_us, l.running_p50_us), (0.9, 0.2));
        // The kernel saw each exit a little later than the record, and
        // the second run of 10 not at all: that result matches its first
        // exit, as a pid's earlier run would.
        let exits = crate::exits::Exits {
            by_pid: HashMap::from([(10, vec![1_200]), (11, vec![2_050])]),
            dropped: false,
        };
        (raw.kernel, raw.kernel_unmatched) = match_exits(&exits, &arrivals);
        assert_eq!(
            (&raw.kernel[..], raw.kernel_unmatched),
            (&[300, 7_800, 50][..], 3)
        );
        let l = summarize(raw).unwrap();
        assert_eq!((l.matched, l.unmatched, l.kernel), (3, 3, true));
        assert_eq!((l.p50_us, l.max_us, l.record_p99_us), (0.3, 7.8, 4.0));
        let none = [a(Some(1), 0, 5)];
        assert!(summarize(match_runs(&mut HashMap::new(), &none)).is_none());
    }

    #[test]
    fn rounds_merge_into_a_median_and_weighted_costs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[1200.0, 1000.0, 1500.0]), "1,000–1,500");
        assert_eq!(spread(&[1200.0]), "–");
        // 20,000 deliveries: three rounds at 100 and 1,000 in flight,
        // one at 10,000.
        assert_eq!(rounds_for(20_000, 100, 3), 3);
        assert_eq!(rounds_for(20_000, 1000, 3), 3);
        assert_eq!(rounds_for(20_000, 10_000, 3), 1);
        assert_eq!(rounds_for(2000, 1000, 1), 1);
        assert_eq!(rounds_for(100, 10_000, 3), 1);

        let r = sample();
        let mut a = r.points[0].clone();
        let mut b = a.clone();
        (a.deliveries, a.cpu_us, a.rates, a.hwm_kib) =
            (1000, 40.0, vec![900.0], 10);
        (b.deliveries, b.cpu_us, b.rates, b.hwm_kib) =
            (3000, 80.0, vec![1100.0], 30);
        let raw = |exit: Vec<u64>| LatRaw {
            to_start: exit.clone(),
            running: exit.clone(),
            kernel: exit.iter().map(|t| t / 2).collect(),
            kernel_unmatched: 0,
            exit,
            unmatched: 1,
        };
        let m = Point::merge(vec![
            (a, raw(vec![1000, 2000])),
            (b, raw(vec![3000])),
        ])
        .unwrap();
        assert_eq!(m.deliveries, 4000);
        assert_eq!(m.cpu_us, 70.0);
        assert_eq!(m.rate(), 1000.0);
        assert_eq!(m.hwm_kib, 30);
        let l = m.latency.unwrap();
        assert_eq!((l.matched, l.unmatched, l.max_us), (3, 0, 1.5));
        assert_eq!(l.record_p99_us, 3.0);
        assert!(Point::merge(vec![]).is_none());

        let one = r.baselines[0].1.clone().unwrap();
        let mut two = one.clone();
        two.rates = vec![3000.0];
        two.loop_cpu_us = 150.0;
        let m = Baseline::merge(vec![one.clone(), two, one]).unwrap();
        assert_eq!(m.rate(), 1000.0);
        assert_eq!(m.deliveries, 3000);
        assert!((m.loop_cpu_us - 250.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn proc_fields() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some((300, 10)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(parse_hwm(status), Some(2048));
        assert_eq!(parse_hwm("Name: x\n"), None);
        let (own, _) = proc_cpu(std::process::id()).unwrap();
        assert!(own < u64::MAX);
        assert!(vm_hwm_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn shares_add_up() {
        for (total, k) in [(20_000, 2), (100, 3), (7, 4), (1, 2)] {
            let parts: Vec<usize> =
                (0..k).map(|i| share(total, k, i)).collect();
            assert_eq!(parts.iter().sum::<usize>(), total);
            assert!(
                parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1
            );
        }
    }

    #[test]
    fn flags() {
        let p = |a: &[&str]| {
            parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(p(&[]).unwrap(), Plan::default());
        let q = p(&["--quick", "--out", "x"]).unwrap();
        assert_eq!((q.deliveries, q.out.clone()), (2000, PathBuf::from("x")));
        assert_eq!((q.in_flight.clone(), q.rounds), (vec![100, 1000], 1));
        assert_eq!(p(&["--rounds", "5"]).unwrap().rounds, 5);
        assert_eq!(p(&["--framing", "2"]).unwrap().framing, Some(2));
        assert!(p(&["--framing", "3"]).is_err());
        let q = p(&["--in-flight=10,20", "--shards", "3", "--no-baselines"])
            .unwrap();
        assert_eq!(
            (q.in_flight, q.shards, q.baselines),
            (vec![10, 20], vec![3], false)
        );
        assert_eq!(p(&["--deliveries", "20_000"]).unwrap().deliveries, 20_000);
        assert_eq!(Plan::default().live, Some(10_000));
        assert_eq!(p(&["--live", "500"]).unwrap().live, Some(500));
        assert_eq!(p(&["--no-live"]).unwrap().live, None);
        assert_eq!(p(&["--quick"]).unwrap().live, None);
        for bad in [
            &["--deliveries"][..],
            &["--deliveries", "0"],
            &["--x", "1"],
            &["--in-flight", "70000"],
            &["--live", "40000"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert_eq!(framings(255).len(), 2);
        for m in [Method::Clone, Method::Overlap, Method::PosixSpawn] {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
        }
        assert!("fork".parse::<Method>().is_err());
        assert_eq!(framings(256), [DelnumWidth::Two]);
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(4096.0), "4.0 KiB");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
        assert_eq!(micros(12.3), "12 µs");
        assert_eq!(micros(4500.0), "4.5 ms");
        assert_eq!(nice_axis(4321.0), (1000.0, 5000.0));
        assert_eq!(nice_axis(95.0), (20.0, 100.0));
        assert_eq!(nice_axis(0.0), (1.0, 5.0));
        assert_eq!(tick_label(2500.0, 500.0), "2,500");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
    }

    #[test]
    fn tables_are_padded_markdown() {
        let mut t = Table::new(&[("name", Align::Left), ("n", Align::Right)]);
        t.row(vec!["a".into(), "1,000".into()]);
        t.row(vec!["µs-long".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "| name    |     n |\n\
             | ------- | ----: |\n\
             | a       | 1,000 |\n\
             | µs-long |     2 |\n"
        );
    }

    fn sample() -> Results {
        let base = |loops, rate: f64| Baseline {
            loops,
            in_flight: 100,
            extra_fds: 0,
            method: Method::Clone,
            deliveries: 1000,
            elapsed: Duration::from_secs_f64(1000.0 / rate),
            rates: vec![rate],
            max_in_flight: 100,
            loop_cpu_us: 50.0,
            standin_cpu_us: 300.0,
            failures: 0,
        };
        let point = |in_flight, width, shards, rate: f64, cpu, hwm| Point {
            in_flight,
            width,
            shards,
            slots: in_flight,
            deliveries: 1000,
            elapsed: Duration::from_secs_f64(1000.0 / rate),
            rates: vec![rate],
            max_in_flight: in_flight,
            mean_in_flight: in_flight as f64 * 0.9,
            peak_running: 5,
            cpu_us: cpu,
            hwm_kib: hwm,
            standin_cpu_us: 300.0,
            emulator_cpu_us: 10.0,
            latency: Some(Latency {
                matched: 1000,
                unmatched: 0,
                p50_us: 100.0,
                p99_us: 900.0,
                max_us: 2000.0,
                kernel: true,
                record_p99_us: 1500.0,
                to_start_p50_us: 50.0,
                running_p50_us: 500.0,
            }),
            problems: vec![],
        };
        Results {
            command: "bench".into(),
            deliveries: 1000,
            domains: 10,
            machine: Machine { nproc: 2, ..Machine::default() },
            baselines: vec![
                (100, Some(base(1, 1000.0)), Some(base(2, 2000.0))),
                (10_000, Some(base(1, 1000.0)), Some(base(2, 2000.0))),
            ],
            points: vec![
                point(100, 1, 1, 960.0, 40.0, 6000),
                point(100, 2, 1, 950.0, 41.0, 6000),
                point(100, 2, 2, 1900.0, 45.0, 9000),
                point(10_000, 2, 1, 900.0, 60.0, 30_000),
                point(10_000, 2, 2, 1850.0, 50.0, 40_000),
            ],
            fd_sweep: vec![base(1, 1000.0)],
            live: vec![
                {
                    let mut p = point(10_000, 2, 1, 700.0, 55.0, 30_000);
                    if let Some(l) = &mut p.latency {
                        l.p99_us = 6000.0;
                    }
                    p
                },
                point(10_000, 2, 2, 700.0, 50.0, 40_000),
            ],
            rounds: 1,
            duration: Duration::from_secs(60),
        }
    }

    #[test]
    fn targets_pass_and_fail() {
        let t = targets(&sample());
        let result = |i: usize| t[i].2;
        // 1 shard: 96%, 95%, 90% → fails at 10,000.
        assert_eq!(result(0), Some(false));
        assert!(
            t[0].1.contains("10,000 in flight 2-byte: 90.0%"),
            "{}",
            t[0].1
        );
        // 2 shards: 95%, 92.5% of 2000.
        assert_eq!(result(1), Some(true));
        // CPU: 1 shard 40 → 60 is +50%.
        assert_eq!(result(2), Some(false));
        assert!(t[2].1.contains("+50.0%"), "{}", t[2].1);
        // 30,000 KiB / 10,000 = 3 KiB; 40,000 KiB / 10,000 = 4 KiB.
        assert_eq!(result(3), Some(true));
        // Slope: (30000 - 6000) KiB / 9900 ≈ 2.4 KiB.
        assert_eq!(result(4), Some(true));
        assert_eq!(result(5), Some(true));
        // Alive at once: 1 shard's p99 of 6 ms fails; memory 3 and 4 KiB.
        assert_eq!(result(6), Some(false));
        assert!(t[6].1.contains("1 shard(s): 6.0 ms"), "{}", t[6].1);
        assert_eq!(result(7), Some(true));
        let mut r = sample();
        r.baselines.clear();
        assert_eq!(targets(&r)[0].2, None);
        r.live.clear();
        assert_eq!(targets(&r).len(), 6);
    }

    #[test]
    fn report_and_splice() {
        let block = render(&sample());
        assert!(block.starts_with(BEGIN) && block.trim_end().ends_with(END));
        assert!(block.contains("|    10,000 | 2-byte  |      2 |"), "{block}");
        assert!(block.contains("### 10,000 alive at once"), "{block}");
        assert!(block.contains("**FAIL**") && block.contains("**pass**"));
        let fresh = splice(None, &block);
        assert!(fresh.starts_with("# Benchmarks\n\n"));
        let by_hand =
            format!("# B\n\nintro\n\n{block}\n## Where the time goes\n");
        let again = splice(Some(&by_hand), "NEW\n");
        assert_eq!(again, "# B\n\nintro\n\nNEW\n\n## Where the time goes\n");
        assert_eq!(splice(Some("# B\n"), "NEW\n"), "# B\n\nNEW\n");
    }

    #[test]
    fn plot_is_an_svg_with_every_series() {
        let svg = plot(&sample()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        for name in [
            "1 shard",
            "2 shards",
            "one loop",
            "2 loops (one per core)",
            "deliveries per second",
            "CPU µs/delivery",
            "deliveries in flight",
            "hollow: 1-byte framing",
        ] {
            assert!(svg.contains(name), "no {name:?} in the plot");
        }
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
        let empty = plot(&Results::default()).unwrap();
        assert!(empty.starts_with("<svg") && !empty.contains("one loop"));
    }

    #[test]
    fn the_plot_is_written_beside_benchmarks_md() {
        let home = QmailHome::new().unwrap();
        let out = home.path().join("out");
        write_outputs(&out, &sample()).unwrap();
        let svg = std::fs::read_to_string(out.join(PLOT_FILE)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("2 shards"));
        assert!(!out.join("benchmarks.png").exists());
        let md = std::fs::read_to_string(out.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains(BEGIN) && md.contains(END));
    }
}
