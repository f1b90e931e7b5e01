//! `--sites`: MX grouping (issue 16) against none, same binary, same
//! workload, in one sitting.
//!
//! - **Cached**: the workload's deliveries with `SHARDSPAWN_SITES=1`
//!   against `SHARDSPAWN_SITES=0`. Each shardspawn first gets one
//!   delivery per domain (a warm-up outside every measure), so with sites
//!   on every domain's MX answer is cached (TTL 3600 s) before the timed
//!   run; the DNS server's query count before and after the timed run
//!   shows none was asked during it. Both modes: no limit (`:65535`) and
//!   no adaptation (`SHARDSPAWN_INITIAL_LIMIT=0`), so that what differs
//!   is finding the key, not a limit holding deliveries back. Rounds
//!   alternate the order (off, on; on, off; ...); the rate is the median
//!   of the rounds, CPU per delivery as in the main bench (supervisor,
//!   shards and, sites on, the resolver process).
//! - **Cold**: one delivery to each of N fresh domains, each a lookup the
//!   supervisor has not cached, sites on and off, a fresh shardspawn per
//!   run (after one warm-up delivery to another domain, so the resolver
//!   process and its socket are up). Measured: from just before the
//!   emulated qmail-send writes the command to the stand-in's start
//!   record (its first act after exec), both on CLOCK_MONOTONIC, matched
//!   by the domain, which only that delivery has. Sites on, that wait
//!   holds the lookup: the supervisor's LOOKUP frame, the resolver
//!   process's query over UDP to the server on loopback (a thread of
//!   this process) and the answer back; off it does not, and the rest
//!   (reading the command, the shard, the spawn, the exec) is the same.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::status::SupervisorStatus;

use super::LOCAL_PART;
use super::latency::percentile;
use super::machine::{loadavg, machine};
use super::measures::{Machine, Point, median, spread};
use super::plan::Plan;
use super::points::{Setup, run_point};
use super::report::{Align, Table, micros, pass, thousands, write_block};
use super::run::{command_line, context};
use crate::dns::{DnsServer, Zone};
use crate::emulator::Delivery;

/// Where the block of `BENCHMARKS.md` this mode writes begins and ends.
pub(super) const BEGIN: &str = "<!-- shardspawn-bench --sites: begin \
                                (generated; run the bench to refresh) -->";
pub(super) const END: &str = "<!-- shardspawn-bench --sites: end -->";

/// The TTL of every record: longer than any run.
const TTL: u32 = 3600;

/// The in flight of the cold runs: one lookup at a time, and a burst.
const COLD_IN_FLIGHT: [usize; 2] = [1, 100];

/// The domains' MX sets: domain rank `r` (1-based) has set `(r - 1) %
/// sets + 1`, one host `mx.siteK.test`.
fn site_of(rank: usize, sets: usize) -> usize {
    (rank - 1) % sets.max(1) + 1
}

/// The zone: the workload's domains `dR.test`, the cold ones
/// `coldI.test`, and `warm.test`, each with its set's MX; every MX
/// host's address.
fn zone(plan: &Plan) -> Result<Zone, String> {
    let sets = plan.mx_sets.max(1);
    let mut text = String::new();
    let mut mx = |name: &str, rank: usize| {
        let set = site_of(rank, sets);
        let _ = writeln!(text, "{name} {TTL} MX 10 mx.site{set}.test");
    };
    for r in 1..=plan.domains {
        mx(&crate::workload::domain_name(r), r);
    }
    for i in 1..=plan.cold {
        mx(&cold_domain(i), i);
    }
    mx("warm.test", 1);
    for set in 1..=sets {
        let _ = writeln!(text, "mx.site{set}.test {TTL} A 127.0.0.1");
    }
    Zone::parse(&text).map_err(|e| format!("the bench's zone: {e}"))
}

fn cold_domain(i: usize) -> String {
    format!("cold{i}.test")
}

/// A delivery of the workload's message to `domain`.
fn to(template: &Delivery, i: usize, domain: &str) -> Delivery {
    Delivery {
        recipient: format!("w{i}+{LOCAL_PART}@{domain}").into_bytes(),
        ..template.clone()
    }
}

/// What one mode of the cached comparison measured.
struct Cached {
    rounds: Vec<Point>,
    /// DNS queries during the timed runs and the warm-ups, and domains
    /// the supervisor said it had cached after each timed run.
    queries: u64,
    warm_queries: u64,
    cached: Vec<u32>,
}

/// Command → start of the cold runs, per (in flight, sites on).
type ColdRaw = HashMap<(usize, bool), Vec<u64>>;

/// The whole `--sites` run; true when every delivery got its result.
pub(super) fn run(plan: &Plan, args: &[String]) -> Result<bool, String> {
    let began = Instant::now();
    let ctx = context(plan)?;
    let machine_before = machine();
    let dns = DnsServer::start(zone(plan)?)
        .map_err(|e| format!("unable to start the DNS server: {e}"))?;
    let template = ctx.deliveries.first().ok_or("no deliveries")?.clone();
    let warm: Vec<Delivery> = (1..=plan.domains)
        .map(|r| to(&template, r, &crate::workload::domain_name(r)))
        .collect();
    // The cold runs use the last shard count.
    let shards = plan.shards.last().copied().unwrap_or(2);
    let in_flight = plan.in_flight.first().copied().unwrap_or(1000);
    let rounds = plan.rounds.max(1);
    let n = plan.deliveries.div_ceil(rounds);
    let mut problems = Vec::new();

    let env = |on: bool| -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SHARDSPAWN_SITES", if on { "1" } else { "0" }.to_string()),
            ("SHARDSPAWN_INITIAL_LIMIT", "0".to_string()),
        ];
        if on {
            env.push(("SHARDSPAWN_DNS", dns.addr().to_string()));
            env.push(("SHARDSPAWN_DNS_SECONDS", "5".to_string()));
        }
        env
    };
    let mut cached: Vec<(u16, [Cached; 2])> = plan
        .shards
        .iter()
        .map(|&s| {
            let empty = || Cached {
                rounds: Vec::new(),
                queries: 0,
                warm_queries: 0,
                cached: Vec::new(),
            };
            (s, [empty(), empty()])
        })
        .collect();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for (shards, modes) in cached.iter_mut() {
            let shards = *shards;
            for on in order {
                let name = if on { "on" } else { "off" };
                eprintln!(
                    "round {}/{rounds}: sites {name}, {} warm-up then {n} \
                 deliveries, {in_flight} in flight, {shards} shard(s)",
                    round + 1,
                    warm.len()
                );
                let start = dns.queries();
                let (mut before, mut after, mut in_cache) = (0, 0, None);
                let mut warmed = |_: &Path| before = dns.queries();
                // The supervisor writes its status once a second: read after
                // the timed run (which takes longer), while it still runs.
                let mut measured = |state: &Path| {
                    after = dns.queries();
                    in_cache =
                        std::fs::read_to_string(state.join("supervisor"))
                            .ok()
                            .and_then(|t| SupervisorStatus::parse(&t).ok())
                            .map(|s| s.dns_cached);
                };
                let mut setup = Setup {
                    env: env(on),
                    warm: &warm,
                    helpers: usize::from(on),
                    warmed: Some(&mut warmed),
                    measured: Some(&mut measured),
                    starts: None,
                };
                let (p, _) = run_point(
                    &ctx,
                    &ctx.deliveries,
                    &format!("sites-{name}-"),
                    in_flight,
                    DelnumWidth::Two,
                    shards,
                    n,
                    &mut setup,
                )?;
                eprintln!(
                    "  {:.0}/s, {} CPU/delivery, DNS queries {} in the warm-up \
                 and {} in the timed run{}{}",
                    p.rate(),
                    micros(p.cpu_us),
                    before.saturating_sub(start),
                    after.saturating_sub(before),
                    in_cache.map_or(String::new(), |c| format!(
                        ", {c} domains cached"
                    )),
                    if p.problems.is_empty() {
                        String::new()
                    } else {
                        format!(", PROBLEMS: {:?}", p.problems)
                    }
                );
                let c = &mut modes[usize::from(on)];
                c.queries += after.saturating_sub(before);
                c.warm_queries += before.saturating_sub(start);
                c.cached.extend(in_cache);
                problems.extend(p.problems.iter().cloned());
                c.rounds.push(p);
            }
        }
    }

    let mut cold: ColdRaw = HashMap::new();
    let cold_deliveries: Vec<Delivery> =
        (1..=plan.cold).map(|i| to(&template, i, &cold_domain(i))).collect();
    let cold_warm = [to(&template, 0, "warm.test")];
    for &c in &COLD_IN_FLIGHT {
        for round in 0..rounds {
            let order =
                if round % 2 == 0 { [false, true] } else { [true, false] };
            for on in order {
                let name = if on { "on" } else { "off" };
                let mut starts = Vec::new();
                let mut setup = Setup {
                    env: env(on),
                    warm: &cold_warm,
                    helpers: usize::from(on),
                    warmed: None,
                    measured: None,
                    starts: Some(&mut starts),
                };
                let m = plan.cold;
                let (p, _) = run_point(
                    &ctx,
                    &cold_deliveries,
                    &format!("cold-{name}-"),
                    c,
                    DelnumWidth::Two,
                    shards,
                    m,
                    &mut setup,
                )?;
                problems.extend(p.problems.iter().cloned());
                let waits = cold.entry((c, on)).or_default();
                let mut missing = 0;
                for (sent, start) in starts {
                    match start {
                        Some(s) => waits.push(s.saturating_sub(sent)),
                        None => missing += 1,
                    }
                }
                if missing > 0 {
                    problems.push(format!(
                        "cold, {c} in flight, sites {name}: {missing} \
                         results with no start recorded"
                    ));
                }
                let mut sorted = waits.clone();
                sorted.sort_unstable();
                eprintln!(
                    "cold, {c} in flight, sites {name}, round {}: \
                     command→start p50 {} p99 {} so far",
                    round + 1,
                    micros(
                        percentile(&sorted, 50.0).unwrap_or(0) as f64 / 1e3
                    ),
                    micros(
                        percentile(&sorted, 99.0).unwrap_or(0) as f64 / 1e3
                    )
                );
            }
        }
    }

    let mut machine = machine_before;
    machine.load_after = loadavg();
    let block = render(&Report {
        command: command_line(args),
        plan,
        shards,
        in_flight,
        cached,
        cold,
        machine,
        seconds: began.elapsed().as_secs(),
        problems: &problems,
    });
    write_block(&plan.out, &block, BEGIN, END)?;
    Ok(problems.is_empty())
}

/// Everything the block shows.
struct Report<'a> {
    command: String,
    plan: &'a Plan,
    /// Of the cold runs.
    shards: u16,
    in_flight: usize,
    /// Per shard count: off, on.
    cached: Vec<(u16, [Cached; 2])>,
    cold: ColdRaw,
    machine: Machine,
    seconds: u64,
    problems: &'a [String],
}

/// The block of `BENCHMARKS.md`, markers included.
fn render(r: &Report) -> String {
    let mut w = String::new();
    let m = &r.machine;
    let plan = r.plan;
    let _ = writeln!(w, "{BEGIN}\n");
    let _ = writeln!(
        w,
        "Measured {} at commit `{}`, in {} s, by\n\n    {}\n",
        m.when, m.commit, r.seconds, r.command
    );
    let _ = writeln!(
        w,
        "Machine: {} CPUs (`nproc`), shared; kernel {}; {}; load average \
         {} before, {} after. Ratios compare runs made minutes apart in \
         this one sitting; absolute rates move with the load.\n",
        m.nproc, m.kernel, m.rustc, m.load_before, m.load_after
    );
    let merged = |c: &Cached| {
        Point::merge(
            c.rounds
                .iter()
                .map(|p| (p.clone(), super::latency::LatRaw::default()))
                .collect(),
        )
    };
    let counts: Vec<String> =
        r.cached.iter().map(|(s, _)| s.to_string()).collect();
    let _ = writeln!(
        w,
        "**Every lookup cached.** {} deliveries to {} domains (uniform) \
         over {} MX sets, {} in flight, 2-byte framing, with {} shard(s), \
         in {} round(s) alternating the order; each shardspawn first gets \
         one delivery per domain, outside the measure. No limit \
         (`:65535`), no adaptation (`SHARDSPAWN_INITIAL_LIMIT=0`). Sites \
         on: `SHARDSPAWN_SITES=1`, keys are the {} sites; off: the {} \
         domains.\n",
        thousands(plan.deliveries as f64),
        thousands(plan.domains as f64),
        plan.mx_sets,
        thousands(r.in_flight as f64),
        counts.join(" and "),
        plan.rounds.max(1),
        plan.mx_sets.min(plan.domains),
        thousands(plan.domains as f64),
    );
    let mut t = Table::new(&[
        ("shards", Align::Right),
        ("MX grouping", Align::Left),
        ("deliveries/s", Align::Right),
        ("rounds /s", Align::Right),
        ("CPU/delivery", Align::Right),
        ("stand-in CPU", Align::Right),
        ("DNS queries: warm-ups", Align::Right),
        ("timed runs", Align::Right),
        ("domains cached, per run", Align::Right),
    ]);
    let mut targets = Table::new(&[
        ("target", Align::Left),
        ("shards", Align::Right),
        ("on ÷ off, median of rounds", Align::Right),
        ("rounds", Align::Right),
        ("of the medians", Align::Right),
        ("result", Align::Left),
    ]);
    for (shards, [off_c, on_c]) in &r.cached {
        let (Some(off), Some(on)) = (merged(off_c), merged(on_c)) else {
            continue;
        };
        for (name, p, c) in [("off", &off, off_c), ("on", &on, on_c)] {
            let lo = c.cached.iter().min();
            let hi = c.cached.iter().max();
            t.row(vec![
                shards.to_string(),
                name.into(),
                thousands(p.rate()),
                spread(&p.rates),
                micros(p.cpu_us),
                micros(p.standin_cpu_us),
                c.warm_queries.to_string(),
                c.queries.to_string(),
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
                    (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
                    _ => "–".into(),
                },
            ]);
        }
        // The machine is shared and its load drifts within minutes: each
        // round's on and off ran back to back, so their ratio is taken
        // per round and the median of those is what the targets judge.
        let paired = |f: &dyn Fn(&Point) -> f64| -> Vec<f64> {
            on_c.rounds
                .iter()
                .zip(&off_c.rounds)
                .map(|(a, b)| f(a) / f(b).max(1e-9))
                .collect()
        };
        let rates = paired(&|p: &Point| p.rate());
        let cpus = paired(&|p: &Point| p.cpu_us);
        let rate = median(&rates).unwrap_or(0.0);
        let cpu = median(&cpus).unwrap_or(f64::MAX);
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::MAX, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{}–{}", pct(lo), pct(hi))
        };
        targets.row(vec![
            "deliveries/s with MX grouping on ≥ 95% of off".into(),
            shards.to_string(),
            pct(rate),
            range(&rates),
            pct(on.rate() / off.rate().max(1e-9)),
            pass(rate >= 0.95),
        ]);
        targets.row(vec![
            "CPU per delivery with MX grouping on ≤ 110% of off".into(),
            shards.to_string(),
            pct(cpu),
            range(&cpus),
            pct(on.cpu_us / off.cpu_us.max(1e-9)),
            pass(cpu <= 1.10),
        ]);
    }
    let _ = writeln!(w, "{}", t.render());
    let _ = writeln!(w, "{}", targets.render());

    let _ = writeln!(
        w,
        "**A cold lookup.** One delivery to each of {} fresh domains per \
         run (each a lookup not cached), a fresh shardspawn per run after \
         one warm-up delivery to another domain, {} shard(s), {} round(s); \
         the name server is a thread of the bench on 127.0.0.1 (UDP). \
         Measured per delivery: from just before the emulated qmail-send \
         writes the command to the stand-in's start record, its first act \
         after exec (CLOCK_MONOTONIC both), matched by the domain. Sites \
         on, this holds the lookup (supervisor → resolver process → DNS \
         server → back); off, everything else. The difference is what the \
         lookup costs a delivery.\n",
        thousands(plan.cold as f64),
        r.shards,
        plan.rounds.max(1),
    );
    let mut t = Table::new(&[
        ("in flight", Align::Right),
        ("sites", Align::Left),
        ("deliveries", Align::Right),
        ("command→start p50", Align::Right),
        ("p99", Align::Right),
        ("max", Align::Right),
    ]);
    let mut diffs = Vec::new();
    for &c in &COLD_IN_FLIGHT {
        let mut p = [None, None];
        for on in [false, true] {
            let Some(v) = r.cold.get(&(c, on)) else { continue };
            let mut v = v.clone();
            v.sort_unstable();
            let q = |x| percentile(&v, x).map(|ns| ns as f64 / 1000.0);
            let (Some(p50), Some(p99), Some(max)) =
                (q(50.0), q(99.0), q(100.0))
            else {
                continue;
            };
            p[usize::from(on)] = Some((p50, p99));
            t.row(vec![
                thousands(c as f64),
                if on { "on" } else { "off" }.into(),
                thousands(v.len() as f64),
                micros(p50),
                micros(p99),
                micros(max),
            ]);
        }
        if let [Some(off), Some(on)] = p {
            diffs.push(format!(
                "{c} in flight: p50 {}, p99 {}",
                signed(on.0 - off.0),
                signed(on.1 - off.1)
            ));
        }
    }
    let _ = writeln!(w, "{}", t.render());
    if !diffs.is_empty() {
        let _ = writeln!(
            w,
            "The lookup's cost (on − off, percentile by percentile, not the \
             percentile of a difference): {}.\n",
            diffs.join("; ")
        );
    }
    if !r.problems.is_empty() {
        let _ = writeln!(w, "Problems:\n");
        for p in r.problems.iter().take(10) {
            let _ = writeln!(w, "- {p}");
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "{END}");
    w
}

/// A difference of µs, signed: "+1.2 ms", "−300 µs".
fn signed(us: f64) -> String {
    let sign = if us < 0.0 { "−" } else { "+" };
    format!("{sign}{}", micros(us.abs()))
}

#[cfg(test)]
mod tests {
    use super::super::report::splice_between;
    use super::*;

    #[test]
    fn the_zone_gives_every_domain_its_set() {
        let plan =
            Plan { domains: 10, mx_sets: 4, cold: 3, ..Plan::default() };
        assert_eq!(site_of(1, 4), 1);
        assert_eq!(site_of(4, 4), 4);
        assert_eq!(site_of(5, 4), 1);
        // 10 workload domains, 3 cold, warm.test, 4 hosts.
        assert_eq!(zone(&plan).unwrap().len(), 10 + 3 + 1 + 4);
        let block = splice_between(
            Some("a\n"),
            &format!("{BEGIN}\nx\n{END}\n"),
            BEGIN,
            END,
        );
        let again = splice_between(
            Some(&block),
            &format!("{BEGIN}\ny\n{END}\n"),
            BEGIN,
            END,
        );
        assert_eq!(again, format!("a\n\n{BEGIN}\ny\n{END}\n"));
        assert_eq!(signed(-977.0), "−977 µs");
        assert_eq!(signed(48_171.0), "+48.2 ms");
    }
}
