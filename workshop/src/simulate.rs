//! `shardspawn simulate` (the `shardspawn-simulate` binary, which
//! `shardspawn simulate` runs): the real supervisor and shards, driven by
//! an emulated qmail-send, running a stand-in qmail-remote, on a
//! synthetic workload. Nothing of qmail needs to be installed.
//!
//! It makes a scratch qmail home with one message per delivery, starts
//! the `shardspawn` binary beside it as qmail-start would start qmail-rspawn (no
//! arguments, settings in the environment, fd 2 to a log file), feeds it
//! the deliveries as qmail-send would (lowest free delnum first, a new
//! command as soon as a slot frees), shows progress, and ends with
//! throughput, results by letter, and the peak concurrency each
//! destination saw, as recorded by the stand-ins themselves.
//!
//! With `--strict M` every destination plays a strict receiver (the
//! stand-in's `SHARDSPAWN_FAKE_STRICT`): a 421 at the greeting whenever M
//! of our deliveries to it already run. Every domain is strict, not only
//! the busiest, because that is what a real fleet of receivers looks
//! like; only the busy ones ever reach M. While the run lasts, the
//! shards' status files are sampled once a second, and the effective
//! limit of the busiest keys is shown over time, so adaptation (or
//! `--initial-limit 0`, the static limit) can be watched finding M.
//!
//! With `--mx-sets N` the domains share N MX sets, served by a DNS
//! server on loopback that simulate starts itself ([`crate::dns`]) and
//! names to shardspawn (`SHARDSPAWN_DNS`), sites on: half of the sets
//! are hosted at one provider (MX hosts under `bigmail.test`), the rest
//! are sites of their own. Without `--limits` a file with a provider
//! limit and a site limit is used, and printed. The end table then
//! lists the keys as shardspawn counts them (the provider, each site),
//! each domain mapped to its key by this program from the MX hosts it
//! put in the zone (`Limits::site`), not by shardspawn; a `check` line
//! per key says whether the recorded peak stayed within its limit.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use crate::dns::{DnsServer, Zone};
use crate::emulator::{Emulator, Options, Progress, Stderr};
use crate::home::QmailHome;
use crate::recorder::Recording;
use crate::remote;
use crate::workload;
use shardspawn_common::command::DelnumWidth;
use shardspawn_common::domain::{self, printable};
use shardspawn_common::limits::Limits;
use shardspawn_common::lookup::Exchange;
use shardspawn_common::status::{KeyStatus, ShardStatus};

const USAGE: &str = "\
usage: shardspawn simulate [--messages N] [--domains N] [--skew F]
                           [--shards N] [--slots N] [--latency-ms N]
                           [--seed N] [--limits FILE] [--hold-seconds N]
                           [--strict M] [--initial-limit N]
                           [--mx-sets N] [--keep]

Runs the real supervisor and shards against an emulated qmail-send and a
stand-in qmail-remote (shardspawn-fake-remote, built beside this binary).

  --messages N    deliveries, one message each          (default 5000)
  --domains N     destination domains d1.test ...       (default 50)
  --skew F        Zipf skew of domain popularity; 0 is
                  uniform, 1 gives d1.test the most     (default 1.0)
  --shards N      spawner shards                        (default: CPUs)
  --slots N       slots announced and used; over 255
                  selects the 2-byte framing            (default 1000)
  --latency-ms N  how long each stand-in delivery takes (default 50)
  --seed N        workload seed                         (default 1)
  --limits FILE   per-destination limits file, in the syntax of
                  control/concurrencydomains          (default: none)
  --hold-seconds N  longest a delivery waits for its key (default 120)
  --strict M      every domain is a strict receiver: a 421 at the
                  greeting when M deliveries to it already run; shows
                  the effective limit of the busiest keys over time
  --initial-limit N  SHARDSPAWN_INITIAL_LIMIT; 0 turns adaptation off
  --mx-sets N     the domains share N MX sets, in turn (d1.test has set
                  1, d2.test set 2, ...), served by a DNS server on
                  loopback that simulate starts; sites on. Half the
                  sets are at a provider (MX hosts under bigmail.test),
                  the rest sites of their own.
                  Without --limits the limits are:
                  :65535 @:10 @.bigmail.test:=bigmail =bigmail:20
                  Every delivery may wait for its key (SHARDSPAWN_HOLD_MAX
                  is the message count). The table lists the keys
                  shardspawn counts (provider, site), and a `check` line
                  each: the recorded peak within its limit or not
  --keep          keep the scratch qmail home and its logs
";

#[derive(Debug)]
struct Plan {
    messages: usize,
    domains: usize,
    skew: f64,
    shards: Option<u16>,
    slots: u32,
    latency_ms: u64,
    seed: u64,
    limits: Option<PathBuf>,
    hold_seconds: Option<u64>,
    strict: Option<u32>,
    initial_limit: Option<u32>,
    mx_sets: Option<usize>,
    keep: bool,
}

/// Reads the command line; `None` for `--help`. The error names the
/// flag or argument, on one line.
fn parse(args: &[OsString]) -> Result<Option<Plan>, String> {
    use lexopt::Arg::{Long, Short};
    let mut o = Plan {
        messages: 5000,
        domains: 50,
        skew: 1.0,
        shards: None,
        slots: 1000,
        latency_ms: 50,
        seed: 1,
        limits: None,
        hold_seconds: None,
        strict: None,
        initial_limit: None,
        mx_sets: None,
        keep: false,
    };
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(usage)? {
        let flag = match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("keep") => {
                o.keep = true;
                continue;
            }
            Long(
                name @ ("messages" | "domains" | "skew" | "shards" | "slots"
                | "latency-ms" | "seed" | "limits" | "hold-seconds"
                | "strict" | "initial-limit" | "mx-sets"),
            ) => format!("--{name}"),
            arg => return Err(usage(arg.unexpected())),
        };
        let value = p.value().map_err(usage)?;
        let value = value
            .into_string()
            .map_err(|v| format!("{flag}={}: not UTF-8", v.display()))?;
        let bad = |why: &str| format!("{flag}={value}: {why}");
        let num = |min: u64| -> Result<u64, String> {
            let n: u64 = value.parse().map_err(|_| bad("not a number"))?;
            if n < min {
                return Err(bad(&format!("must be at least {min}")));
            }
            Ok(n)
        };
        match flag.as_str() {
            "--messages" => o.messages = num(1)? as usize,
            "--domains" => o.domains = num(1)? as usize,
            "--skew" => {
                o.skew = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| bad("not a number >= 0"))?
            }
            "--shards" => {
                o.shards =
                    Some(u16::try_from(num(1)?).map_err(|_| bad("too many"))?)
            }
            "--slots" => {
                let n = num(1)?;
                if n > 65535 {
                    return Err(bad("must be at most 65535"));
                }
                o.slots = n as u32;
            }
            "--latency-ms" => o.latency_ms = num(0)?,
            "--seed" => o.seed = num(0)?,
            "--limits" => o.limits = Some(PathBuf::from(&value)),
            "--hold-seconds" => o.hold_seconds = Some(num(1)?),
            "--strict" => {
                o.strict =
                    Some(u32::try_from(num(1)?).map_err(|_| bad("too big"))?)
            }
            "--mx-sets" => o.mx_sets = Some(num(1)? as usize),
            _ => {
                o.initial_limit =
                    Some(u32::try_from(num(0)?).map_err(|_| bad("too big"))?)
            }
        }
    }
    Ok(Some(o))
}

/// A command-line error as `shardspawn` words it (`unknown flag
/// --nope`), so both halves of `shardspawn simulate` speak alike.
fn usage(e: lexopt::Error) -> String {
    use lexopt::Error as E;
    match e {
        E::UnexpectedOption(flag) => format!("unknown flag {flag}"),
        E::UnexpectedArgument(arg) => {
            format!("unexpected argument {}", arg.display())
        }
        E::MissingValue { option: Some(flag) } => {
            format!("{flag}: missing value")
        }
        E::UnexpectedValue { option, value } => {
            format!("{option}={}: takes no value", value.display())
        }
        e => e.to_string(),
    }
}

/// Runs the demo; returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let o = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            // A reader that went away (`| head`) is no error of ours.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(USAGE.as_bytes()).and_then(|()| out.flush());
            return 0;
        }
        Err(e) => {
            eprintln!("shardspawn: simulate: {e}");
            return 100;
        }
    };
    match simulate(&o) {
        Ok(clean) => {
            if clean {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("shardspawn simulate: fatal: {e}");
            111
        }
    }
}

fn simulate(o: &Plan) -> Result<bool, String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("unable to find this program: {e}"))?;
    let remote_bin = me.with_file_name("shardspawn-fake-remote");
    let spawner_bin = me.with_file_name("shardspawn");
    for bin in [&remote_bin, &spawner_bin] {
        if !bin.exists() {
            return Err(format!(
                "unable to find {}; build it with `cargo build --release`",
                bin.display()
            ));
        }
    }
    let home =
        QmailHome::new().map_err(|e| format!("unable to make a home: {e}"))?;
    let record = home.path().join("deliveries.record");
    let log = home.path().join("shardspawn.log");
    let shards = o.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().min(1024) as u16)
            .unwrap_or(1)
    });
    let width =
        if o.slots > 255 { DelnumWidth::Two } else { DelnumWidth::One };

    eprintln!(
        "shardspawn simulate: writing {} messages to {} domains (skew {:.2})",
        o.messages, o.domains, o.skew
    );
    let deliveries =
        workload::generate(&home, o.messages, o.domains, o.skew, o.seed, "");
    // No --limits: nothing is limited (not the product's default of 20
    // per domain), so that runs with and without limits compare; with
    // --mx-sets, a provider limit and a site limit to watch.
    let limits_text = match (&o.limits, o.mx_sets) {
        (Some(path), _) => std::fs::read(path)
            .map_err(|e| format!("unable to read {}: {e}", path.display()))?,
        (None, Some(_)) => MX_LIMITS.as_bytes().to_vec(),
        (None, None) => b":65535\n".to_vec(),
    };
    let limits = Limits::parse(&limits_text).map_err(|e| {
        format!(
            "{}: {e}",
            o.limits
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    })?;
    home.write_file("control/concurrencydomains", &limits_text)
        .map_err(|e| format!("unable to write the limits file: {e}"))?;
    // With --mx-sets: the domains' MX hosts, and the server that gives
    // them out (it lives until the run's end).
    let sets = o.mx_sets.map(|n| MxSets::new(n, o.domains));
    let dns = match &sets {
        Some(sets) => Some(
            DnsServer::start(sets.zone()?)
                .map_err(|e| format!("unable to start the DNS server: {e}"))?,
        ),
        None => None,
    };
    if let (Some(sets), Some(dns)) = (&sets, &dns) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "shardspawn simulate: {} domains share {} MX sets ({} at the \
             provider {PROVIDER}), served by a DNS server at {}; limits \
             (control/concurrencydomains):",
            o.domains,
            sets.sets,
            sets.at_provider(),
            dns.addr()
        );
        for line in String::from_utf8_lossy(&limits_text).lines() {
            let _ = writeln!(out, "    {line}");
        }
        let _ = out.flush();
    }

    let mut cmd = Command::new(&spawner_bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SHARDSPAWN_HOME", home.path())
        .env("SHARDSPAWN_SITES", if dns.is_some() { "1" } else { "0" })
        .env("SHARDSPAWN_QUEUE_OWNER", home.owner_uid().to_string())
        .env("SHARDSPAWN_SHARDS", shards.to_string())
        .env("SHARDSPAWN_SLOTS", o.slots.to_string())
        .env("SHARDSPAWN_DELNUM_BYTES", width_bytes(width))
        .env("SHARDSPAWN_STATE_DIR", "state")
        .env("QMAILREMOTE", &remote_bin)
        .env(remote::ENV_RECORD, &record)
        .env(remote::ENV_LATENCY_MS, o.latency_ms.to_string());
    if let Some(dns) = &dns {
        // Every delivery may wait for its key rather than be deferred
        // (the default holds 4 x the limit): the limits are watched
        // over the whole run, every delivery a K.
        cmd.env("SHARDSPAWN_DNS", dns.addr().to_string())
            .env("SHARDSPAWN_DNS_SECONDS", "5")
            .env("SHARDSPAWN_HOLD_MAX", o.messages.to_string());
    }
    if let Some(h) = o.hold_seconds {
        cmd.env("SHARDSPAWN_HOLD_SECONDS", h.to_string());
    }
    if let Some(n) = o.initial_limit {
        cmd.env("SHARDSPAWN_INITIAL_LIMIT", n.to_string());
    }
    if let Some(m) = o.strict {
        let slots = home.path().join("strict-slots");
        std::fs::create_dir(&slots)
            .map_err(|e| format!("unable to make {}: {e}", slots.display()))?;
        cmd.env(remote::ENV_STRICT, m.to_string())
            .env(remote::ENV_STRICT_DIR, &slots);
    }
    let opts =
        Options { stderr: Stderr::File(log.clone()), ..Options::default() };
    let mut emu = Emulator::start(cmd, width, opts)
        .map_err(|e| format!("unable to start shardspawn: {e}"))?;
    let slots = usize::from(emu.slots());
    eprintln!(
        "shardspawn simulate: shardspawn announced {slots} slots; {shards} \
         shards; stand-in latency {} ms",
        o.latency_ms
    );

    // Generous: every delivery one after another, plus a minute.
    let patience = Duration::from_secs(60)
        + Duration::from_millis(o.latency_ms * o.messages as u64 / 10);
    let mut last = Instant::now();
    let state = home.path().join("state");
    let mut timeline = Timeline::default();
    let report = emu.run_with_progress(
        &deliveries,
        slots,
        Instant::now() + patience,
        |p: &Progress| {
            if last.elapsed() >= Duration::from_millis(500)
                || p.done == p.total
            {
                last = Instant::now();
                progress(p);
            }
            if o.strict.is_some() {
                timeline.sample(p.elapsed, &state, shards);
            }
        },
    );
    eprintln!();
    emu.close_commands();
    let exit = emu.wait_exit(Instant::now() + Duration::from_secs(30));

    let recording = Recording::read(&record)
        .map_err(|e| format!("unable to read {}: {e}", record.display()))?;
    // What each domain counts under: its domain rule, else (with
    // --mx-sets) its provider or site from the MX hosts put in the zone,
    // as shardspawn is to find them through DNS.
    let matched = |host: &[u8]| {
        let name = domain::normalise(host);
        let m = limits.lookup(&name);
        match sets.as_ref().and_then(|s| s.exchanges_of(&name)) {
            Some(x) if !m.is_domain_rule() => limits.site(&x),
            _ => m,
        }
    };
    let peaks =
        recording.peak_by(|host| printable(&matched(host.as_bytes()).key));
    // Per key: deliveries, the limit, and the domains it holds.
    let mut volume = BTreeMap::<String, (usize, u32)>::new();
    let mut domains = BTreeMap::<String, BTreeSet<Vec<u8>>>::new();
    for d in &deliveries {
        let host = domain::host(&d.recipient).unwrap_or_default();
        let m = matched(host);
        let key = printable(&m.key);
        domains.entry(key.clone()).or_default().insert(host.to_vec());
        volume.entry(key).or_insert((0, m.limit)).0 += 1;
    }
    // A key whose recorded peak passed its limit: a limit not held.
    let over: Vec<&String> = volume
        .iter()
        .filter(|(k, (_, limit))| {
            peaks.get(*k).is_some_and(|&p| p > *limit as usize)
        })
        .map(|(k, _)| k)
        .collect();
    // What the shards counted: held and deferred per key, from their
    // last status files.
    let mut counted = BTreeMap::<String, KeyStatus>::new();
    for i in 0..shards {
        let path = home.path().join(format!("state/shard{i}"));
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if let Ok(status) = ShardStatus::parse(&text) {
            for k in status.keys {
                counted.insert(k.key.clone(), k);
            }
        }
    }

    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "shardspawn simulate: {} deliveries, {} domains (skew {:.2}), {} \
         shards, {} slots, stand-in latency {} ms, limits {}",
        o.messages,
        o.domains,
        o.skew,
        shards,
        slots,
        o.latency_ms,
        match (&o.limits, &sets) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(_)) => "as printed above".to_string(),
            (None, None) => "none".to_string(),
        }
    );
    if let (Some(sets), Some(dns)) = (&sets, &dns) {
        let _ = writeln!(
            out,
            "  DNS              {} MX sets, {} at the provider; {} queries \
             to the server",
            sets.sets,
            sets.at_provider(),
            dns.queries()
        );
    }
    let _ = writeln!(out, "  elapsed          {:.2} s", secs);
    let _ = writeln!(
        out,
        "  throughput       {:.0} deliveries/s",
        report.letters.total() as f64 / secs
    );
    let l = report.letters;
    let _ = writeln!(
        out,
        "  results          K {}  Z {}  D {}  other {}",
        l.k, l.z, l.d, l.other
    );
    let _ = writeln!(out, "  max in flight    {}", report.max_in_flight);
    let _ = writeln!(
        out,
        "  peak running     {} qmail-remote processes at once",
        recording.peak()
    );
    let _ = writeln!(out, "  violations       {}", report.violations.len());
    for v in report.violations.iter().take(5) {
        let _ = writeln!(out, "    {v}");
    }
    let _ = writeln!(
        out,
        "  shardspawn exit  {}",
        exit.map_or("did not exit".to_string(), |s| s.to_string())
    );
    let _ = writeln!(out);
    let mut by_volume: Vec<(&String, &(usize, u32))> = volume.iter().collect();
    by_volume.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    // Sites are named by their hosts: as wide as the longest shown.
    let w = by_volume
        .iter()
        .take(12)
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = write!(out, "  {:<w$} ", "key");
    if sets.is_some() {
        let _ = write!(out, "{:>7} ", "domains");
    }
    let _ = writeln!(
        out,
        "{:>10} {:>6} {:>6} {:>6} {:>8} {:>9}",
        "deliveries", "limit", "eff", "peak", "held", "deferred"
    );
    for (key, (n, limit)) in by_volume.iter().take(12) {
        let peak = peaks.get(*key).copied().unwrap_or(0);
        let limit =
            if *limit >= 65535 { "-".to_string() } else { limit.to_string() };
        let (eff, held, deferred) = counted.get(*key).map_or(
            ("?".to_string(), "?".to_string(), "?".to_string()),
            |k| {
                let eff = if k.effective >= 65535 {
                    "-".to_string()
                } else {
                    k.effective.to_string()
                };
                (eff, k.held_total.to_string(), k.deferred.to_string())
            },
        );
        let _ = write!(out, "  {key:<w$} ");
        if sets.is_some() {
            let held_domains = domains.get(*key).map_or(0, BTreeSet::len);
            let _ = write!(out, "{held_domains:>7} ");
        }
        let _ = writeln!(
            out,
            "{n:>10} {limit:>6} {eff:>6} {peak:>6} {held:>8} {deferred:>9}"
        );
    }
    if by_volume.len() > 12 {
        let _ = writeln!(out, "  ({} more keys)", by_volume.len() - 12);
    }
    if sets.is_some() {
        // One line per key for a program to read: the key, its limit,
        // the recorded peak, whether the shards' status files list the
        // key (shardspawn counted under it too), and whether the limit
        // held.
        let _ = writeln!(out);
        for (key, (n, limit)) in &by_volume {
            let peak = peaks.get(*key).copied().unwrap_or(0);
            let held = if peak <= *limit as usize { "held" } else { "OVER" };
            let listed = if counted.contains_key(*key) { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "  check {key} limit {limit} peak {peak} deliveries {n} \
                 domains {} status {listed} {held}",
                domains.get(*key).map_or(0, BTreeSet::len)
            );
        }
    }
    let _ = writeln!(
        out,
        "  limits held      {}",
        if over.is_empty() {
            format!(
                "yes: no key's recorded peak above its limit ({} keys)",
                volume.len()
            )
        } else {
            format!("NO: {} keys above their limits", over.len())
        }
    );
    if let Some(m) = o.strict {
        let busiest: Vec<&str> =
            by_volume.iter().take(4).map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(
            out,
            "\n  effective limit over time (running in parentheses), every \
             receiver strict at {m}:"
        );
        let _ = write!(out, "{}", timeline.table(&busiest, 30));
    }
    let warnings = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings: Vec<&str> = warnings
        .lines()
        .filter(|l| l.contains(": warning: ") || l.contains(": fatal: "))
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(
            out,
            "\n  shardspawn logged {} warnings:",
            warnings.len()
        );
        for w in warnings.iter().take(10) {
            let _ = writeln!(out, "    {w}");
        }
    }
    let clean = report.is_clean()
        && exit.is_some_and(|s| s.success())
        && over.is_empty();
    if o.keep {
        let kept: PathBuf = home.path().to_path_buf();
        std::mem::forget(home);
        let _ = writeln!(out, "\n  kept {}", kept.display());
    }
    Ok(clean)
}

/// The limits `--mx-sets` uses without `--limits`: no domain limited
/// as such, each site 10 at once, and every site at the provider (MX
/// hosts under [`PROVIDER`]) sharing one limit of 20.
pub const MX_LIMITS: &str = "\
# shardspawn simulate --mx-sets: nothing limited per domain; a site 10;
# every site whose MX hosts are at the provider, 20 in all.
:65535
@:10
@.bigmail.test:=bigmail
=bigmail:20
";

/// The provider's MX host suffix.
pub const PROVIDER: &str = "bigmail.test";

/// The TTL of the zone's records: long, so that one lookup a domain
/// serves the whole run.
const MX_TTL: u32 = 3600;

/// `--mx-sets N`: which MX set each domain has, and its hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MxSets {
    sets: usize,
    domains: usize,
}

impl MxSets {
    fn new(sets: usize, domains: usize) -> MxSets {
        MxSets { sets: sets.max(1), domains }
    }

    /// Sets 1 to this are at the provider; the rest are sites of their
    /// own. Half, rounded up: one set is the provider's.
    fn at_provider(&self) -> usize {
        self.sets.div_ceil(2)
    }

    /// The set (1-based) of the domain of rank `rank` (1-based): in
    /// turn, so that the busiest domains spread over every set.
    fn set_of(&self, rank: usize) -> usize {
        (rank - 1) % self.sets + 1
    }

    /// The MX records of set `set`: at the provider `mx1.siteK.` and
    /// `mx2.siteK.bigmail.test`, else `mx1.siteK.test` and
    /// `mx2.siteK.test`; the first preferred.
    fn exchanges(&self, set: usize) -> Vec<Exchange> {
        let suffix = if set <= self.at_provider() {
            format!("site{set}.{PROVIDER}")
        } else {
            format!("site{set}.test")
        };
        [(10, "mx1"), (20, "mx2")]
            .into_iter()
            .map(|(preference, host)| Exchange {
                preference,
                host: format!("{host}.{suffix}").into_bytes(),
            })
            .collect()
    }

    /// The MX records of a normalised domain, if it is one of the
    /// workload's (`dR.test`, R from 1 to the domain count).
    fn exchanges_of(&self, domain: &[u8]) -> Option<Vec<Exchange>> {
        let rank: usize = std::str::from_utf8(domain)
            .ok()?
            .strip_prefix('d')?
            .strip_suffix(".test")?
            .parse()
            .ok()?;
        (1..=self.domains)
            .contains(&rank)
            .then(|| self.exchanges(self.set_of(rank)))
    }

    /// Every domain's MX records and every host's address.
    fn zone(&self) -> Result<Zone, String> {
        let mut text = String::new();
        for rank in 1..=self.domains {
            let name = workload::domain_name(rank);
            for x in self.exchanges(self.set_of(rank)) {
                let host = String::from_utf8_lossy(&x.host);
                let _ = writeln!(
                    text,
                    "{name} {MX_TTL} MX {} {host}",
                    x.preference
                );
            }
        }
        for set in 1..=self.sets {
            for x in self.exchanges(set) {
                let host = String::from_utf8_lossy(&x.host);
                let _ = writeln!(text, "{host} {MX_TTL} A 127.0.0.1");
            }
        }
        Zone::parse(&text).map_err(|e| format!("the MX sets' zone: {e}"))
    }
}

/// Each key's effective limit and running count at one instant.
type Sample = BTreeMap<String, (u32, u32)>;

/// The effective limit and running count of each key, sampled from the
/// shards' status files about once a second.
#[derive(Default)]
struct Timeline {
    /// Seconds into the run, and what each key's line said then.
    samples: Vec<(u64, Sample)>,
}

impl Timeline {
    /// Takes a sample if a second has passed since the last one. A
    /// shard's file that is missing or being replaced is skipped: the
    /// next sample has it.
    fn sample(&mut self, elapsed: Duration, state: &Path, shards: u16) {
        let second = elapsed.as_secs();
        if self.samples.last().is_some_and(|(s, _)| *s >= second) {
            return;
        }
        let mut keys = BTreeMap::new();
        for i in 0..shards {
            let path = state.join(format!("shard{i}"));
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            if let Ok(status) = ShardStatus::parse(&text) {
                for k in status.keys {
                    keys.insert(k.key, (k.effective, k.running));
                }
            }
        }
        self.samples.push((second, keys));
    }

    /// A table of `keys` over time, at most `rows` rows (samples are
    /// skipped evenly when there are more; the last is always shown). A
    /// key a shard did not list then shows as `.`.
    fn table(&self, keys: &[&str], rows: usize) -> String {
        let mut out = String::new();
        let _ = write!(out, "  {:>6}", "t(s)");
        for k in keys {
            let _ = write!(out, " {:>16}", truncate(k, 16));
        }
        out.push('\n');
        let step = self.samples.len().div_ceil(rows.max(1)).max(1);
        let last = self.samples.len().saturating_sub(1);
        for (i, (second, sample)) in self.samples.iter().enumerate() {
            if i % step != 0 && i != last {
                continue;
            }
            let _ = write!(out, "  {second:>6}");
            for k in keys {
                let cell = sample
                    .get(*k)
                    .map_or(".".to_string(), |(e, r)| format!("{e} ({r})"));
                let _ = write!(out, " {cell:>16}");
            }
            out.push('\n');
        }
        if self.samples.is_empty() {
            out.push_str("  (no samples: the run ended within a second)\n");
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn width_bytes(width: DelnumWidth) -> &'static str {
    match width {
        DelnumWidth::One => "1",
        DelnumWidth::Two => "2",
    }
}

fn progress(p: &Progress) {
    let rate = p.done as f64 / p.elapsed.as_secs_f64().max(1e-9);
    eprint!(
        "\r  {:>7}/{} done  {:>6} in flight  {:>7.0}/s  K {} Z {} D {}   ",
        p.done,
        p.total,
        p.in_flight,
        rate,
        p.letters.k,
        p.letters.z,
        p.letters.d
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn strict_and_initial_limit_flags() {
        let o = parse(&args(&["--strict", "3", "--initial-limit=0"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.strict, Some(3));
        assert_eq!(o.initial_limit, Some(0));
        let o = parse(&args(&[])).unwrap().unwrap();
        assert_eq!((o.strict, o.initial_limit), (None, None));
        assert!(parse(&args(&["--strict", "0"])).is_err());
        assert!(parse(&args(&["--strict", "x"])).is_err());
        assert!(parse(&args(&["--keep", "--help"])).unwrap().is_none());
        assert_eq!(
            parse(&args(&["--keep=1"])).unwrap_err(),
            "--keep=1: takes no value"
        );
        assert_eq!(parse(&args(&["x"])).unwrap_err(), "unexpected argument x");
    }

    #[test]
    fn mx_sets_put_half_at_the_provider_and_the_rest_on_their_own() {
        let o = parse(&args(&["--mx-sets", "4"])).unwrap().unwrap();
        assert_eq!(o.mx_sets, Some(4));
        assert!(parse(&args(&["--mx-sets", "0"])).is_err());
        let sets = MxSets::new(4, 10);
        let limits = Limits::parse(MX_LIMITS.as_bytes()).unwrap();
        let key = |domain: &str| {
            let m = limits.lookup(domain.as_bytes());
            assert!(!m.is_domain_rule(), "{domain}");
            let x = sets.exchanges_of(domain.as_bytes()).unwrap();
            let m = limits.site(&x);
            (printable(&m.key), m.limit)
        };
        // d1 and d5 have set 1, d2 set 2: both at the provider, one key.
        for d in ["d1.test", "d5.test", "d2.test", "d10.test"] {
            assert_eq!(key(d), ("=bigmail".to_string(), 20), "{d}");
        }
        // d3 set 3 and d4 set 4: sites of their own, named by their hosts.
        assert_eq!(
            key("d3.test"),
            ("@mx1.site3.test,mx2.site3.test".to_string(), 10)
        );
        assert_eq!(
            key("d8.test"),
            ("@mx1.site4.test,mx2.site4.test".to_string(), 10)
        );
        // Not one of the workload's domains: no MX set.
        for d in ["d0.test", "d11.test", "x.test", "d1.example"] {
            assert_eq!(sets.exchanges_of(d.as_bytes()), None, "{d}");
        }
        // One set is the provider's; an odd count puts the extra there.
        assert_eq!(MxSets::new(1, 5).at_provider(), 1);
        assert_eq!(MxSets::new(5, 5).at_provider(), 3);
        // The zone holds every domain's MX and every host's address.
        let zone = sets.zone().unwrap();
        assert_eq!(zone.len(), 10 + 4 * 2);
    }

    #[test]
    fn the_timeline_shows_each_key_per_sample() {
        let sample = |pairs: &[(&str, u32, u32)]| -> Sample {
            pairs.iter().map(|(k, e, r)| (k.to_string(), (*e, *r))).collect()
        };
        let t = Timeline {
            samples: vec![
                (0, sample(&[("d1.test", 5, 5)])),
                (1, sample(&[("d1.test", 3, 3), ("d2.test", 5, 1)])),
                (2, sample(&[("d1.test", 4, 4)])),
            ],
        };
        let text = t.table(&["d1.test", "d2.test"], 30);
        let rows: Vec<Vec<&str>> =
            text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["t(s)", "d1.test", "d2.test"]);
        assert_eq!(rows[1], ["0", "5", "(5)", "."]);
        assert_eq!(rows[2], ["1", "3", "(3)", "5", "(1)"]);
        assert_eq!(rows[3], ["2", "4", "(4)", "."]);
        // At most 2 rows: every other sample, and the last.
        let text = t.table(&["d1.test"], 2);
        let firsts: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(firsts, ["0", "2"]);
        assert!(Timeline::default().table(&["a"], 5).contains("no samples"));
    }
}
