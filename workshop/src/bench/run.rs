//! The run: every measurement of a [`Plan`] in turn, then
//! `BENCHMARKS.md` and the plot written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shardspawn_common::command::DelnumWidth;

use super::LOCAL_PART;
use super::baselines::{Method, run_loops};
use super::latency::{LatRaw, summarize};
use super::machine::{loadavg, machine};
use super::measures::{
    Baseline, Ctx, FD_SWEEP, Machine, Point, Results, describe,
};
use super::plan::{Plan, framings};
use super::plot::{PLOT_FILE, plot};
use super::points::{Setup, live_deliveries, run_point};
use super::report::{micros, render, splice};
use crate::home::QmailHome;
use crate::workload;

/// Every measurement of `plan` in turn, then the files; true when every
/// delivery got its result.
pub(super) fn run(plan: &Plan, args: &[String]) -> Result<bool, String> {
    let began = Instant::now();
    let ctx = context(plan)?;
    let home_dir = ctx
        .home
        .path()
        .parent()
        .map_or_else(|| "?".into(), |p| p.display().to_string());
    let mut results = Results {
        command: command_line(args),
        deliveries: plan.deliveries,
        domains: plan.domains,
        machine: Machine { home: home_dir, ..machine() },
        ..Results::default()
    };
    let cores = results.machine.nproc.max(1);
    let rounds = run_rounds(&ctx, cores)?;
    results.live = run_live(&ctx)?;
    results.rounds = plan.rounds.max(1);
    results.baselines = rounds
        .baselines
        .into_iter()
        .map(|(c, one, core)| (c, Baseline::merge(one), Baseline::merge(core)))
        .collect();
    results.points = rounds
        .points
        .into_iter()
        .filter_map(|(_, v)| Point::merge(v))
        .collect();
    results.fd_sweep =
        rounds.sweep.into_iter().filter_map(Baseline::merge).collect();
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

/// What the measurements share: the programs, checked, a home with the
/// workload's messages, and the live points' deliveries.
pub(super) fn context(plan: &Plan) -> Result<Ctx, String> {
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
    Ok(Ctx {
        me,
        remote,
        shardspawn,
        home,
        deliveries,
        live,
        plan: plan.clone(),
        clk_tck,
    })
}

/// A shardspawn point: in flight, framing, shards.
type Key = (usize, usize, u16);

/// What the rounds measured, each measurement once per round it ran in.
struct Rounds {
    /// Per in flight: one loop's, and one loop per core's.
    baselines: Vec<(usize, Vec<Baseline>, Vec<Baseline>)>,
    points: Vec<(Key, Vec<(Point, LatRaw)>)>,
    /// Per (method, descriptors open) of [`sweep_points`].
    sweep: Vec<Vec<Baseline>>,
}

/// The descriptor-table experiment's loops: each start method with each
/// of [`FD_SWEEP`] descriptors open.
fn sweep_points() -> Vec<(Method, usize)> {
    [Method::PosixSpawn, Method::Clone, Method::Overlap]
        .into_iter()
        .flat_map(|m| FD_SWEEP.map(|fds| (m, fds)))
        .collect()
}

/// Every point once per round (fewer for the high in-flight ones, see
/// [`rounds_for`]), the baselines just before the points they are
/// compared with, and the descriptor-table loops at the end of a round.
fn run_rounds(ctx: &Ctx, cores: usize) -> Result<Rounds, String> {
    let plan = &ctx.plan;
    let mut in_flight = plan.in_flight.clone();
    in_flight.sort_unstable();
    in_flight.dedup();
    let mut got = Rounds {
        baselines: in_flight
            .iter()
            .map(|&c| (c, Vec::new(), Vec::new()))
            .collect(),
        points: Vec::new(),
        sweep: vec![Vec::new(); sweep_points().len()],
    };
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
                let one = run_loops(ctx, 1, c, n, 0, Method::Clone)?;
                eprintln!("  baseline, one loop: {:.0}/s", one.rate());
                let per_core = run_loops(ctx, cores, c, n, 0, Method::Clone)?;
                eprintln!(
                    "  baseline, {cores} loops: {:.0}/s",
                    per_core.rate()
                );
                got.baselines[ci].1.push(one);
                got.baselines[ci].2.push(per_core);
            }
            run_points(ctx, c, n, &mut got.points)?;
        }
        if plan.baselines {
            run_sweep(ctx, rounds, &mut got.sweep)?;
        }
    }
    Ok(got)
}

/// shardspawn at `c` in flight, `n` deliveries, in each framing and
/// shard count of the plan; each added to its point's rounds.
fn run_points(
    ctx: &Ctx,
    c: usize,
    n: usize,
    points: &mut Vec<(Key, Vec<(Point, LatRaw)>)>,
) -> Result<(), String> {
    let plan = &ctx.plan;
    let widths = framings(c)
        .into_iter()
        .filter(|w| plan.framing.is_none_or(|f| f == w.bytes()));
    for width in widths {
        for &shards in &plan.shards {
            let (p, raw) = run_point(
                ctx,
                &ctx.deliveries,
                "",
                c,
                width,
                shards,
                n,
                &mut Setup::default(),
            )?;
            let l =
                summarize(raw.clone()).map_or(String::new(), |l| describe(&l));
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
    Ok(())
}

/// What a spawn costs when the spawner holds many descriptors: clone
/// copies the descriptor table, the child closes it. One round's worth.
fn run_sweep(
    ctx: &Ctx,
    rounds: usize,
    sweep: &mut [Vec<Baseline>],
) -> Result<(), String> {
    let n = (ctx.plan.deliveries / 4 / rounds).max(500);
    for (i, &(method, fds)) in sweep_points().iter().enumerate() {
        let b = run_loops(ctx, 1, 100, n, fds, method)?;
        eprintln!(
            "  one loop, {}, 100 in flight, {fds} fds open: {:.0}/s, \
             {} CPU/delivery",
            method.name(),
            b.rate(),
            micros(b.loop_cpu_us)
        );
        sweep[i].push(b);
    }
    Ok(())
}

/// The live points: that many stand-ins alive at once, per shard count.
fn run_live(ctx: &Ctx) -> Result<Vec<Point>, String> {
    let Some(live) = ctx.plan.live else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for &shards in &ctx.plan.shards {
        eprintln!("{live} alive at once, {shards} shard(s):");
        let (mut p, raw) = run_point(
            ctx,
            &ctx.live,
            "live-",
            live,
            DelnumWidth::Two,
            shards,
            ctx.live.len(),
            &mut Setup::default(),
        )?;
        p.latency = summarize(raw);
        eprintln!(
            "  {:.0}/s, peak running {}, {} CPU/delivery{}",
            p.rate(),
            p.peak_running,
            micros(p.cpu_us),
            p.latency.as_ref().map_or(String::new(), describe)
        );
        out.push(p);
    }
    Ok(out)
}

/// How many rounds a point at `in_flight` gets out of `deliveries`: up
/// to `rounds`, each with at least twice `in_flight` deliveries (fewer
/// would never hold the cap for long), and at least one.
pub(super) fn rounds_for(
    deliveries: usize,
    in_flight: usize,
    rounds: usize,
) -> usize {
    (deliveries / (2 * in_flight).max(1)).clamp(1, rounds.max(1))
}

pub(super) fn command_line(args: &[String]) -> String {
    let mut cmd = "cargo build --release && ./target/release/shardspawn-bench"
        .to_string();
    for a in args {
        cmd.push(' ');
        cmd.push_str(a);
    }
    cmd
}

pub(super) fn write_outputs(
    out: &Path,
    results: &Results,
) -> Result<(), String> {
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

/// Where the bench's home goes: /dev/shm (tmpfs) where there is one, as
/// shardspawn's status directory is under /run on a mail host. On a disk
/// the journal's commits stall the stand-ins' record writes and the
/// shards' status files now and then, and that showed up as tens of
/// milliseconds of exit→result; the queue's messages are read from the
/// page cache either way.
pub(super) fn home_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let writable = std::fs::metadata(&shm).is_ok_and(|m| m.is_dir())
        && tempfile_probe(&shm);
    if writable { shm } else { std::env::temp_dir() }
}

/// Whether a file can be made (and removed) in `dir`.
pub(super) fn tempfile_probe(dir: &Path) -> bool {
    let probe =
        dir.join(format!("shardspawn-bench-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::super::plot::PLOT_FILE;
    use super::super::report::{BEGIN, END};
    use super::*;
    use crate::bench::measures::sample;

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
