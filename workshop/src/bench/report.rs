//! The report: the markdown tables of the generated block of
//! `BENCHMARKS.md`, the targets, and the splice that puts the block in
//! place of the last one.

use std::fmt::Write as _;

use super::measures::{Baseline, Latency, Point, Results, spread};

/// Where the generated block of `BENCHMARKS.md` begins and ends.
pub(super) const BEGIN: &str =
    "<!-- shardspawn-bench: begin (generated; run the bench to refresh) -->";
pub(super) const END: &str = "<!-- shardspawn-bench: end -->";

/// Column alignment in a markdown table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Align {
    Left,
    Right,
}

/// A markdown table with padded columns.
#[derive(Clone, Debug, Default)]
pub(super) struct Table {
    pub(super) head: Vec<(String, Align)>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(head: &[(&str, Align)]) -> Table {
        Table {
            head: head.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(super) fn render(&self) -> String {
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
pub(super) fn thousands(x: f64) -> String {
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
pub(super) fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    }
}

/// Microseconds as µs or ms.
pub(super) fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

pub(super) fn pass(ok: bool) -> String {
    if ok { "**pass**".into() } else { "**FAIL**".into() }
}

impl Results {
    pub(super) fn baseline(
        &self,
        in_flight: usize,
    ) -> (Option<&Baseline>, Option<&Baseline>) {
        self.baselines
            .iter()
            .find(|b| b.0 == in_flight)
            .map_or((None, None), |b| (b.1.as_ref(), b.2.as_ref()))
    }

    /// Ratios of a point's rate to the one-loop and per-core baselines.
    pub(super) fn ratios(&self, p: &Point) -> (Option<f64>, Option<f64>) {
        let (one, core) = self.baseline(p.in_flight);
        (one.map(|b| p.rate() / b.rate()), core.map(|b| p.rate() / b.rate()))
    }
}

/// One row of the targets table: what, measured, pass/fail (None: not
/// measured in this run).
type Target = (String, String, Option<bool>);

/// The rows of the targets table, in order.
pub(super) fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    target_throughput(r, &mut out);
    let mut shard_counts: Vec<u16> =
        r.points.iter().map(|p| p.shards).collect();
    shard_counts.sort_unstable();
    shard_counts.dedup();
    target_flat_cpu(r, &shard_counts, &mut out);
    let top = r.points.iter().map(|p| p.in_flight).max().unwrap_or(0);
    let low = r.points.iter().map(|p| p.in_flight).min().unwrap_or(0);
    let at_top: Vec<&Point> =
        r.points.iter().filter(|p| p.in_flight == top).collect();
    target_memory(r, &shard_counts, (low, top), &at_top, &mut out);
    target_latency(top, &at_top, &mut out);
    target_alive_at_once(r, &mut out);
    out
}

/// Throughput against the baselines.
fn target_throughput(r: &Results, out: &mut Vec<Target>) {
    let label = |p: &Point| {
        format!("{} in flight {}-byte", thousands(p.in_flight as f64), p.width)
    };
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
}

/// CPU per delivery flat within 25%, per shard count.
fn target_flat_cpu(r: &Results, shard_counts: &[u16], out: &mut Vec<Target>) {
    let mut measured = Vec::new();
    let mut ok = true;
    let mut any = false;
    for s in shard_counts {
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
}

/// Memory per delivery in flight at the highest in flight, and per
/// extra delivery in flight from the lowest to the highest.
fn target_memory(
    r: &Results,
    shard_counts: &[u16],
    (low, top): (usize, usize),
    at_top: &[&Point],
    out: &mut Vec<Target>,
) {
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
    for s in shard_counts {
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
}

/// Exit to result at the highest in flight.
fn target_latency(top: usize, at_top: &[&Point], out: &mut Vec<Target>) {
    let mut measured = Vec::new();
    let mut ok = true;
    let mut any = false;
    for p in at_top {
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
}

/// Exit to result and memory with that many truly alive at once.
fn target_alive_at_once(r: &Results, out: &mut Vec<Target>) {
    let Some(first) = r.live.first() else { return };
    let who = |p: &Point, x: String| format!("{} shard(s): {x}", p.shards);
    let all = |f: &dyn Fn(&Point) -> Option<(bool, String)>| {
        let got: Vec<(bool, String)> = r.live.iter().filter_map(f).collect();
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

/// The generated block of BENCHMARKS.md (also printed).
pub(super) fn render(r: &Results) -> String {
    let mut s = String::new();
    let w = &mut s;
    render_setup(w, r);
    render_baselines(w, r);
    render_fd_sweep(w, r);
    render_points(w, r);
    render_live(w, r);
    render_targets(w, r);
    s
}

/// When, where and how the run was made: the commit, the command, the
/// workload and the machine.
fn render_setup(w: &mut String, r: &Results) {
    let m = &r.machine;
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
}

/// The baselines table: one loop and one loop per core.
fn render_baselines(w: &mut String, r: &Results) {
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
}

/// The table of starts with descriptors open, when measured.
fn render_fd_sweep(w: &mut String, r: &Results) {
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
}

/// shardspawn's table, the problems seen, and what its columns mean.
fn render_points(w: &mut String, r: &Results) {
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
}

/// The table of many stand-ins alive at once, when measured.
fn render_live(w: &mut String, r: &Results) {
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
}

/// The targets table and the plot's link.
fn render_targets(w: &mut String, r: &Results) {
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
}

/// Puts `block` (which starts with BEGIN and ends with END) into the
/// text of BENCHMARKS.md in place of the last generated block, or after
/// a new title when there is none.
pub(super) fn splice(existing: Option<&str>, block: &str) -> String {
    splice_between(existing, block, BEGIN, END)
}

/// Writes `block`, between `begin` and `end`, into `out/BENCHMARKS.md`
/// (made if need be) in place of the block there, says so on stderr and
/// prints the block: how every mode with markers of its own ends.
pub(super) fn write_block(
    out: &std::path::Path,
    block: &str,
    begin: &str,
    end: &str,
) -> Result<(), String> {
    let md = out.join("BENCHMARKS.md");
    std::fs::create_dir_all(out)
        .map_err(|e| format!("unable to create {}: {e}", out.display()))?;
    let existing = std::fs::read_to_string(&md).ok();
    std::fs::write(
        &md,
        splice_between(existing.as_deref(), block, begin, end),
    )
    .map_err(|e| format!("unable to write {}: {e}", md.display()))?;
    eprintln!("shardspawn-bench: wrote {}", md.display());
    print!("{block}");
    Ok(())
}

/// [`splice`] for a block with markers of its own (`--sites`).
pub(super) fn splice_between(
    existing: Option<&str>,
    block: &str,
    begin: &str,
    end: &str,
) -> String {
    let Some(text) = existing else {
        return format!("# Benchmarks\n\n{block}");
    };
    match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &text[..b])
        }
        _ => {
            let sep = if text.ends_with('\n') { "\n" } else { "\n\n" };
            format!("{text}{sep}{block}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plot::{nice_axis, tick_label};
    use super::*;
    use crate::bench::measures::sample;

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
}
