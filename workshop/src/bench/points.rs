//! shardspawn's points: one run of the real binary under the emulated
//! qmail-send at one number in flight, framing and shard count, and the
//! live points with many stand-ins alive at once.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use shardspawn_common::command::DelnumWidth;

use super::LOCAL_PART;
use super::latency::{LatRaw, match_exits, match_runs};
use super::machine::{proc_cpu, vm_hwm_kib};
use super::measures::{Arrival, Ctx, Point};
use crate::emulator::{Emulator, Options, Progress, Stderr};
use crate::recorder::{Recording, monotonic_ns};
use crate::{remote, workload};

/// `n` deliveries for the live points: the workload's messages in turn,
/// each to a recipient whose stand-in sleeps 10 to 20 s (uniform, from
/// `seed`), as a qmail-remote waits on DNS and SMTP, at one of `n / 4`
/// domains, so that no domain's limit (nor the adaptive start at 5)
/// holds any back. The spread keeps the exits apart: the first of them
/// comes after every first start.
pub(super) fn live_deliveries(
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

/// What a point may add to the plain one: settings, a warm-up run
/// before the measured one, and a look at the state after it.
#[derive(Default)]
pub(super) struct Setup<'a> {
    /// Settings besides the bench's (they replace its own of the name).
    pub(super) env: Vec<(&'static str, String)>,
    /// Run through the same shardspawn before the measured deliveries,
    /// outside every measure (time, CPU, latency).
    pub(super) warm: &'a [crate::emulator::Delivery],
    /// Processes shardspawn runs besides the shards (the resolver).
    pub(super) helpers: usize,
    /// Called after the warm-up, just before the measured run, with
    /// the state directory.
    pub(super) warmed: Option<&'a mut dyn FnMut(&std::path::Path)>,
    /// Called just after the measured run, before shardspawn exits.
    pub(super) measured: Option<&'a mut dyn FnMut(&std::path::Path)>,
    /// Where each measured delivery's stand-in started, by its host, and
    /// when its command was sent, both monotonic ns, in delivery order:
    /// filled when set.
    pub(super) starts: Option<&'a mut Vec<(u64, Option<u64>)>>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_point(
    ctx: &Ctx,
    deliveries: &[crate::emulator::Delivery],
    prefix: &str,
    in_flight: usize,
    width: DelnumWidth,
    shards: u16,
    n: usize,
    setup: &mut Setup,
) -> Result<(Point, LatRaw), String> {
    let bytes = width.bytes();
    let label = format!("{prefix}{in_flight}-{bytes}b-{shards}s");
    let home = ctx.home.path();
    let record = home.join(format!("{label}.record"));
    let state = home.join(format!("state-{label}"));
    let mut cmd = Command::new(&ctx.shardspawn);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SHARDSPAWN_HOME", home)
        .env("SHARDSPAWN_SITES", "0")
        .env("SHARDSPAWN_QUEUE_OWNER", ctx.home.owner_uid().to_string())
        .env("SHARDSPAWN_SHARDS", shards.to_string())
        .env("SHARDSPAWN_SLOTS", in_flight.to_string())
        .env("SHARDSPAWN_DELNUM_BYTES", bytes.to_string())
        .env("SHARDSPAWN_STATE_DIR", &state)
        .env("QMAILREMOTE", &ctx.remote)
        .env(remote::ENV_RECORD, &record);
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
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
    if !setup.warm.is_empty() {
        let warm = emu.run(
            setup.warm,
            in_flight,
            Instant::now() + Duration::from_secs(600),
        );
        if !warm.is_clean() || warm.letters.k != setup.warm.len() {
            problems.push(format!(
                "warm-up: {} of {} results were K",
                warm.letters.k,
                setup.warm.len()
            ));
        }
    }
    if let Some(f) = setup.warmed.as_mut() {
        f(&state);
    }
    let sup = emu.pid();
    // Its children now are the shards and its helpers (no logger is
    // configured): the stand-ins of a warm-up have all been reaped.
    let mut pids = vec![sup];
    pids.extend(crate::util::children(sup).iter().map(|c| c.0));
    if pids.len() != usize::from(shards) + 1 + setup.helpers {
        problems.push(format!(
            "found {} shards and helpers, not {}",
            pids.len() - 1,
            usize::from(shards) + setup.helpers
        ));
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
    if let Some(f) = setup.measured.as_mut() {
        f(&state);
    }
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
    if let Some(starts) = setup.starts.as_mut() {
        // The first start of each host: each measured delivery has a
        // host of its own where this is asked for.
        let mut by_host: HashMap<&[u8], u64> = HashMap::new();
        for i in recording.intervals() {
            let t = by_host.entry(i.host.as_bytes()).or_insert(i.start);
            *t = (*t).min(i.start);
        }
        starts.clear();
        for (d, o) in deliveries[..n].iter().zip(&report.outcomes) {
            let host = shardspawn_common::domain::host(&d.recipient)
                .unwrap_or_default();
            if let Some(o) = o {
                starts.push((ns(o.sent), by_host.get(host).copied()));
            }
        }
    }
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
