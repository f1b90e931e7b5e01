//! `--fleet`: one key shared on Redis (issue 18) against the same key
//! kept locally, same binary, same workload, in one sitting.
//!
//! Every delivery goes to one domain, `fleet.test`, whose rule carries
//! `shared`. *Local* runs without `SHARDSPAWN_REDIS`, so the key is a
//! plain local key with its whole limit (what a shared key is when no
//! Redis is configured); *shared* runs with a
//! `redis-server` on loopback that the bench starts (no persistence), a
//! fleet of one relay (`SHARDSPAWN_FLEET_RELAYS=1`, so its share is the
//! whole limit too), a fresh key prefix per run, batch 2 and the default
//! lease. So what differs is only the key's leases and tokens being
//! taken from Redis, ahead of need, by the shard's Redis thread.
//!
//! Three rules: a limit that never binds (the leases are taken as the
//! work arrives), a limit that binds (half the deliveries wait for a
//! lease at any time), and a limit with a rate above what the machine
//! can start (every start needs a token from the server's GCRA). Each
//! shardspawn first gets a warm-up (the script loaded, the first leases
//! held) outside every measure. Rounds alternate the order (local,
//! shared; shared, local; ...); a ratio is taken per round, back to
//! back, and the median of those is what the target judges.
//!
//! Redis commands per delivery: the `redis_commands` of every shard's
//! status file, summed, after the timed run less before it (each read
//! once every shard has published since), over the deliveries; beside
//! it, the scripts the server itself says it ran (`INFO commandstats`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::status::ShardStatus;

use super::LOCAL_PART;
use super::machine::{loadavg, machine};
use super::measures::{Machine, Point, median, spread};
use super::plan::Plan;
use super::points::{Setup, run_point};
use super::report::{Align, Table, micros, pass, thousands, write_block};
use super::run::{command_line, context};
use crate::emulator::Delivery;
use crate::redis::RedisServer;
use crate::util::wait_for;

/// Where the block of `BENCHMARKS.md` this mode writes begins and ends.
pub(super) const BEGIN: &str = "<!-- shardspawn-bench --fleet: begin \
                                (generated; run the bench to refresh) -->";
pub(super) const END: &str = "<!-- shardspawn-bench --fleet: end -->";

/// The one domain every delivery goes to.
const DOMAIN: &str = "fleet.test";

/// The rules compared: a name, the rule's text after the domain, and
/// the batch (`SHARDSPAWN_FLEET_BATCH`) of the shared runs. A shared
/// rate hands out at most a batch of tokens per claim, and a key has
/// one claim out at a time, so its starts are bounded by a batch per
/// round trip to Redis: the rate is measured with the default batch and
/// with a larger one.
const RULES: [(&str, &str, u32); 4] = [
    ("limit never reached", "1000,shared", 2),
    ("limit reached", "50,shared", 2),
    ("limit and rate", "1000,10000/s,shared", 2),
    ("limit and rate, batch 10", "1000,10000/s,shared", 10),
];

/// What one mode of one rule measured, per round.
#[derive(Default)]
struct Mode {
    rounds: Vec<Point>,
    /// Commands the shards counted in each timed run, by their status.
    commands: Vec<u64>,
    /// Scripts the server ran in each timed run, by `INFO commandstats`.
    scripts: Vec<u64>,
}

/// The whole `--fleet` run; true when every delivery got its result.
pub(super) fn run(plan: &Plan, args: &[String]) -> Result<bool, String> {
    let began = Instant::now();
    let ctx = context(plan)?;
    let machine_before = machine();
    let redis = RedisServer::start_in(&ctx.home.path().join("redis"))
        .map_err(|e| e.to_string())?;
    let template = ctx.deliveries.first().ok_or("no deliveries")?.clone();
    let to_key = |i: usize| Delivery {
        recipient: format!("w{i}+{LOCAL_PART}@{DOMAIN}").into_bytes(),
        ..template.clone()
    };
    let shards = plan.shards.first().copied().unwrap_or(1);
    let in_flight = plan.in_flight.first().copied().unwrap_or(100);
    let rounds = plan.rounds.max(1);
    let n = plan.deliveries.div_ceil(rounds);
    let deliveries: Vec<Delivery> = (0..n).map(to_key).collect();
    let warm: Vec<Delivery> =
        (0..in_flight.max(100)).map(|i| to_key(n + i)).collect();
    let mut problems = Vec::new();
    let mut results: Vec<[Mode; 2]> =
        RULES.iter().map(|_| Default::default()).collect();

    for (r, (name, rule, batch)) in RULES.iter().enumerate() {
        let limits = ctx.home.path().join(format!("fleet-limits-{r}"));
        std::fs::write(&limits, format!("{DOMAIN}:{rule}\n:65535\n"))
            .map_err(|e| {
                format!("unable to write {}: {e}", limits.display())
            })?;
        for round in 0..rounds {
            let order =
                if round % 2 == 0 { [false, true] } else { [true, false] };
            for shared in order {
                let mode = if shared { "shared" } else { "local" };
                eprintln!(
                    "round {}/{rounds}: {name} ({DOMAIN}:{rule}), {mode}, \
                     {n} deliveries, {in_flight} in flight, {shards} \
                     shard(s)",
                    round + 1
                );
                let mut env = vec![
                    ("SHARDSPAWN_LIMITS", limits.display().to_string()),
                    ("SHARDSPAWN_INITIAL_LIMIT", "0".into()),
                    ("SHARDSPAWN_HOLD_SECONDS", "600".into()),
                    ("SHARDSPAWN_HOLD_MAX", "1000000".into()),
                ];
                if shared {
                    env.extend([
                        ("SHARDSPAWN_REDIS", redis.url()),
                        (
                            "SHARDSPAWN_REDIS_PREFIX",
                            format!("bench:{r}:{round}:"),
                        ),
                        ("SHARDSPAWN_FLEET_RELAYS", "1".into()),
                        ("SHARDSPAWN_FLEET_NAME", "bench".into()),
                        ("SHARDSPAWN_FLEET_BATCH", batch.to_string()),
                    ]);
                }
                let scripts = || {
                    redis.calls("evalsha").unwrap_or(0)
                        + redis.calls("eval").unwrap_or(0)
                };
                let (mut before, mut after) = ((0, 0), (0, 0));
                let mut warmed = |state: &Path| {
                    before = (commands(state, shards), scripts())
                };
                let mut measured = |state: &Path| {
                    after = (commands(state, shards), scripts())
                };
                let mut setup = Setup {
                    env,
                    warm: &warm,
                    helpers: 0,
                    warmed: Some(&mut warmed),
                    measured: Some(&mut measured),
                    starts: None,
                };
                let (p, _) = run_point(
                    &ctx,
                    &deliveries,
                    &format!("fleet-{r}-{mode}-"),
                    in_flight,
                    DelnumWidth::Two,
                    shards,
                    n,
                    &mut setup,
                )?;
                let m = &mut results[r][usize::from(shared)];
                m.commands.push(after.0.saturating_sub(before.0));
                m.scripts.push(after.1.saturating_sub(before.1));
                eprintln!(
                    "  {:.0}/s, {} CPU/delivery, Redis commands {} (the \
                     server ran {} scripts){}",
                    p.rate(),
                    micros(p.cpu_us),
                    m.commands.last().unwrap_or(&0),
                    m.scripts.last().unwrap_or(&0),
                    if p.problems.is_empty() {
                        String::new()
                    } else {
                        format!(", PROBLEMS: {:?}", p.problems)
                    }
                );
                problems.extend(p.problems.iter().cloned());
                m.rounds.push(p);
            }
        }
    }

    let mut machine = machine_before;
    machine.load_after = loadavg();
    let block = render(&Report {
        command: command_line(args),
        redis: redis_version(),
        n,
        shards,
        in_flight,
        results,
        machine,
        seconds: began.elapsed().as_secs(),
        problems: &problems,
    });
    write_block(&plan.out, &block, BEGIN, END)?;
    Ok(problems.is_empty())
}

/// The shards' `redis_commands`, summed, once every shard has published
/// after now (they publish about once a second; 5 s at most).
fn commands(state: &Path, shards: u16) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let read = || -> Vec<ShardStatus> {
        (0..shards)
            .filter_map(|s| {
                let text =
                    std::fs::read_to_string(state.join(format!("shard{s}")))
                        .ok()?;
                ShardStatus::parse(&text).ok()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    wait_for(
        || {
            let all = read();
            all.len() == usize::from(shards)
                && all.iter().all(|s| s.updated > now)
        },
        deadline,
    );
    read().iter().map(|s| s.redis_commands).sum()
}

/// `redis-server --version`'s first words, for the report.
fn redis_version() -> String {
    std::process::Command::new(crate::redis::PROGRAM)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .and_then(|v| v.split(" sha=").next().map(str::to_string))
        .unwrap_or_else(|| "redis-server".into())
}

/// Everything the block shows.
struct Report<'a> {
    command: String,
    redis: String,
    /// Deliveries per timed run.
    n: usize,
    shards: u16,
    in_flight: usize,
    /// Per rule: local, shared.
    results: Vec<[Mode; 2]>,
    machine: Machine,
    seconds: u64,
    problems: &'a [String],
}

/// The block of `BENCHMARKS.md`, markers included.
fn render(r: &Report) -> String {
    let mut w = String::new();
    let m = &r.machine;
    let _ = writeln!(w, "{BEGIN}\n");
    let _ = writeln!(
        w,
        "Measured {} at commit `{}`, in {} s, by\n\n    {}\n",
        m.when, m.commit, r.seconds, r.command
    );
    let _ = writeln!(
        w,
        "Machine: {} CPUs (`nproc`), shared; kernel {}; {}; {} on \
         127.0.0.1, no persistence; load average {} before, {} after. \
         Ratios compare runs made back to back in this one sitting; \
         absolute rates move with the load.\n",
        m.nproc, m.kernel, m.rustc, r.redis, m.load_before, m.load_after
    );
    let rounds = r.results.first().map_or(0, |[l, _]| l.rounds.len());
    let _ = writeln!(
        w,
        "{} deliveries per run, every one to `{DOMAIN}`, {} in flight, \
         2-byte framing, {} shard(s), {rounds} round(s) alternating the \
         order, after a warm-up outside the measure. *Local*: no \
         `SHARDSPAWN_REDIS`, the rule's `shared` ignored; *shared*: a \
         fleet of one relay on that Redis, the batch shown, lease 30 s. \
         *Redis \
         commands* are the shards' own count (status files), *scripts* \
         the server's (`INFO commandstats`), both per delivery.\n",
        thousands(r.n as f64),
        thousands(r.in_flight as f64),
        r.shards,
    );
    let mut t = Table::new(&[
        ("rule", Align::Left),
        ("key", Align::Left),
        ("deliveries/s", Align::Right),
        ("rounds /s", Align::Right),
        ("CPU/delivery", Align::Right),
        ("Redis commands/delivery", Align::Right),
        ("scripts/delivery", Align::Right),
    ]);
    let mut targets = Table::new(&[
        ("target", Align::Left),
        ("rule", Align::Left),
        ("shared ÷ local, median of rounds", Align::Right),
        ("rounds", Align::Right),
        ("result", Align::Left),
    ]);
    let per = |xs: &[u64], p: &[Point]| -> String {
        let d: usize = p.iter().map(|p| p.deliveries).sum();
        format!("{:.3}", xs.iter().sum::<u64>() as f64 / d.max(1) as f64)
    };
    for ((_, rule, batch), [local, shared]) in RULES.iter().zip(&r.results) {
        for (name, mode) in [("local", local), ("shared", shared)] {
            let Some(p) = Point::merge(
                mode.rounds
                    .iter()
                    .map(|p| (p.clone(), super::latency::LatRaw::default()))
                    .collect(),
            ) else {
                continue;
            };
            t.row(vec![
                format!("`{DOMAIN}:{rule}`, batch {batch}"),
                name.into(),
                thousands(p.rate()),
                spread(&p.rates),
                micros(p.cpu_us),
                per(&mode.commands, &mode.rounds),
                per(&mode.scripts, &mode.rounds),
            ]);
        }
        let ratios: Vec<f64> = shared
            .rounds
            .iter()
            .zip(&local.rounds)
            .map(|(s, l)| s.rate() / l.rate().max(1e-9))
            .collect();
        let ratio = median(&ratios).unwrap_or(0.0);
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        targets.row(vec![
            "deliveries/s shared ≥ 90% of local".into(),
            format!("`{rule}`, batch {batch}"),
            pct(ratio),
            if ratios.is_empty() {
                "–".into()
            } else {
                format!("{}–{}", pct(lo), pct(hi))
            },
            pass(ratio >= 0.9),
        ]);
    }
    let _ = writeln!(w, "{}", t.render());
    let _ = writeln!(w, "{}", targets.render());
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
