//! `shardspawn status`: the `qmail-qstat` of shardspawn. It reads only
//! what the supervisor and shards publish in the state directory, never
//! touches their pipes, and says plainly which of these it is: nothing
//! is running (no state directory, or no status in it), the status is
//! not this user's to read, a process is down (and since when), or what
//! it reads is stale.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lexopt::Arg::{Long, Short};
use lexopt::Parser;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::Serialize;

use shardspawn_common::settings::Settings;
use shardspawn_common::status::{
    FleetMode, KeyStatus, ShardStatus, SupervisorStatus, utc,
};

use crate::cmdline::{self, Out, Usage, flag_value};

const USAGE: &str = "\
usage: shardspawn status [--json] [--keys N] [--state-dir DIR]

Shows the running spawner, each shard, and the busiest limit keys, from
the status files in the state directory (SHARDSPAWN_STATE_DIR under
SHARDSPAWN_HOME, default /run/shardspawn). Exit 0: running; 1: not
running, down, or its status is stale; 111: the status could not be read
(no permission: run it as root or in the group of the state directory).

Per key: the configured limit, the effective one in force (eff: lowered
by adaptation or a response rule), the rate in force, how many seconds
a suspension still lasts, site-level failures in a row, and how long
ago the last of these changed, and why.

With a fleet (SHARDSPAWN_REDIS), each shard says whether it shares its
limits through Redis or runs alone (since when, and why), and how many
Redis commands it sent; the keys it shares show, in a `shared` column,
its leases and the whole fleet's (`4/9`; `4/-` while Redis is away).
";

/// Status files older than this are stale: every process rewrites its
/// file each second.
const STALE_AFTER: u64 = 5;

/// What a process's status file says about it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Alive and its file is fresh.
    Up,
    /// Alive, but its file has not been rewritten lately.
    Stale,
    /// It stopped (its last write says when), or its pid is gone.
    Down,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Stale => "stale",
            State::Down => "down",
        }
    }
}

/// The state of a process from its file: `stopped` (non-zero once it
/// wrote its last file as it exited) is believed before the pid, which
/// another process may have taken since.
fn state_of(pid: u32, updated: u64, stopped: u64, now: u64) -> State {
    let alive = stopped == 0
        && i32::try_from(pid).is_ok_and(|p| {
            p > 0
                && matches!(
                    kill(Pid::from_raw(p), None),
                    Ok(()) | Err(Errno::EPERM)
                )
        });
    if !alive {
        State::Down
    } else if now.saturating_sub(updated) > STALE_AFTER {
        State::Stale
    } else {
        State::Up
    }
}

/// What `status` is asked to show.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    json: bool,
    /// How many of the busiest keys.
    top: usize,
    /// The state directory, if not the settings'.
    dir: Option<PathBuf>,
}

/// Splits `status ...`; `None` for `--help`.
fn parse(mut p: Parser) -> Result<Option<Ask>, Usage> {
    let mut ask = Ask { json: false, top: 10, dir: None };
    while let Some(arg) = p.next()? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("json") => ask.json = true,
            Long("keys") => {
                let value = flag_value(&mut p, "--keys")?;
                ask.top = value
                    .to_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        Usage::new(format!(
                            "--keys={}: not a number",
                            value.display()
                        ))
                    })?;
            }
            Long("state-dir") => {
                ask.dir = Some(flag_value(&mut p, "--state-dir")?.into());
            }
            arg => return Err(arg.unexpected().into()),
        }
    }
    Ok(Some(ask))
}

/// How long a process has been in `state`: up (or stale) since it
/// started; down since it stopped, or, if it died without saying so,
/// since its last update.
fn seconds_in(
    state: State,
    started: u64,
    updated: u64,
    stopped: u64,
    now: u64,
) -> u64 {
    let since = match state {
        State::Up | State::Stale => started,
        State::Down if stopped != 0 => stopped,
        State::Down => updated,
    };
    now.saturating_sub(since)
}

/// A shard's fleet as a line of the page: `fleet: shared (1234 Redis
/// commands)`, `fleet: ALONE since 2026-12-02 23:50:01 UTC: WHY`;
/// `None` with no Redis configured.
pub fn fleet_line(s: &ShardStatus) -> Option<String> {
    let n = s.redis_commands;
    match s.fleet_mode() {
        FleetMode::None => None,
        FleetMode::Shared => {
            Some(format!("fleet: shared ({n} Redis commands)"))
        }
        FleetMode::Alone { since, why } => {
            Some(format!("fleet: ALONE since {}: {why}", utc(since)))
        }
        FleetMode::Other(words) => {
            Some(format!("fleet: {words} ({n} Redis commands)"))
        }
    }
}

/// What the fleet gives a key of a shard in `mode`: `None` unless the
/// fleet shares it; else this shard's leases and, while Redis answers,
/// the whole fleet's (away, Redis' count is not known).
pub fn fleet_share(
    k: &KeyStatus,
    mode: FleetMode,
) -> Option<(u32, Option<u32>)> {
    match mode {
        _ if !k.shared => None,
        FleetMode::None => None,
        FleetMode::Shared => Some((k.leases, Some(k.fleet))),
        FleetMode::Alone { .. } | FleetMode::Other(_) => {
            Some((k.leases, None))
        }
    }
}

/// Runs `status ...`; returns the exit code.
pub fn main(p: Parser) -> i32 {
    let ask = match parse(p) {
        Ok(Some(ask)) => ask,
        Ok(None) => return cmdline::help(USAGE),
        Err(e) => return e.report("status"),
    };
    let dir = match ask.dir {
        Some(d) => d,
        None => match Settings::from_env(&|k| std::env::var_os(k)) {
            Ok(s) => s.home.join(&s.state_dir),
            Err(e) => {
                eprintln!("shardspawn status: bad setting: {e}");
                return 100;
            }
        },
    };
    match gather(&dir) {
        Ok(view) => {
            let up =
                view.supervisor.as_ref().is_some_and(|(_, s)| *s == State::Up);
            let page =
                if ask.json { view.json(ask.top) } else { view.text(ask.top) };
            let mut out = Out::new();
            let r = out.write_all(page.as_bytes());
            out.finish(r.map(|()| if up { 0 } else { 1 }))
        }
        Err(Unreadable { path, error })
            if error.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!(
                "shardspawn status: no permission to read {}: run it as \
                 root or as a member of {}",
                path.display(),
                group_of(&path)
            );
            111
        }
        Err(Unreadable { path, error }) => {
            eprintln!(
                "shardspawn status: unable to read {}: {error}",
                path.display()
            );
            111
        }
    }
}

/// Who may read `path` besides root: its group, by name if it has one.
pub fn group_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return "its group".to_string();
    };
    let gid = nix::unistd::Gid::from_raw(meta.gid());
    match nix::unistd::Group::from_gid(gid) {
        Ok(Some(group)) => format!("group {}", group.name),
        _ => format!("group {gid}"),
    }
}

/// A status file or the state directory that could not be read.
#[derive(Debug)]
pub struct Unreadable {
    /// Which.
    pub path: PathBuf,
    /// Why.
    pub error: std::io::Error,
}

/// Everything the state directory says.
pub struct View {
    /// The directory read.
    pub dir: PathBuf,
    /// It is there: no state directory says "not running" too, as
    /// before the first start (or after a reboot emptied /run).
    pub exists: bool,
    /// When it was read (Unix seconds).
    pub now: u64,
    /// The supervisor's status, if it has written one.
    pub supervisor: Option<(SupervisorStatus, State)>,
    /// Each shard's, by index.
    pub shards: Vec<(ShardStatus, State)>,
}

/// Reads the state directory. Not there: nothing runs. Not readable
/// (the directory or a file in it): an error naming which, as a user
/// the status is not readable for must not be told "not running".
pub fn gather(dir: &Path) -> Result<View, Unreadable> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut shards = Vec::new();
    let mut supervisor = None;
    let unreadable =
        |path: &Path, error| Unreadable { path: path.to_path_buf(), error };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = dir.to_path_buf();
            return Ok(View { dir, exists: false, now, supervisor, shards });
        }
        Err(e) => return Err(unreadable(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_shard = name.strip_prefix("shard").is_some_and(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        });
        if name != "supervisor" && !is_shard {
            continue;
        }
        // A file replaced or removed between listing and reading is
        // simply skipped: the next run sees the new one. One this user
        // may not read is said, not skipped.
        let text = match std::fs::read_to_string(entry.path()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(unreadable(&entry.path(), e));
            }
            Err(_) => continue,
        };
        if is_shard {
            if let Ok(s) = ShardStatus::parse(&text) {
                let state = state_of(s.pid, s.updated, s.stopped, now);
                shards.push((s, state));
            }
        } else if let Ok(s) = SupervisorStatus::parse(&text) {
            let state = state_of(s.pid, s.updated, s.stopped, now);
            supervisor = Some((s, state));
        }
    }
    shards.sort_by_key(|(s, _)| s.shard);
    let dir = dir.to_path_buf();
    Ok(View { dir, exists: true, now, supervisor, shards })
}

impl View {
    /// The busiest keys over all live shards: (shard, key).
    fn keys(&self, top: usize) -> Vec<(&ShardStatus, &KeyStatus)> {
        let mut keys: Vec<(&ShardStatus, &KeyStatus)> = self
            .shards
            .iter()
            .filter(|(_, state)| *state != State::Down)
            .flat_map(|(s, _)| s.keys.iter().map(move |k| (s, k)))
            .collect();
        keys.sort_by(|(_, a), (_, b)| {
            (b.running + b.held)
                .cmp(&(a.running + a.held))
                .then(b.deferred.cmp(&a.deferred))
                .then(b.started.cmp(&a.started))
        });
        keys.truncate(top);
        keys
    }

    /// The human-readable page.
    pub fn text(&self, top: usize) -> String {
        let mut out = String::new();
        match &self.supervisor {
            None if !self.exists => {
                let _ = writeln!(
                    out,
                    "shardspawn: not running (no state directory {})",
                    self.dir.display()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "shardspawn: not running (no status in {})",
                    self.dir.display()
                );
            }
            Some((s, state)) => {
                let _ = writeln!(
                    out,
                    "shardspawn: {} (pid {}) {} seconds, {} shards, {} slots \
                     ({}-byte delnums), {} in flight, {} results, {} shard \
                     restarts{}",
                    state.word(),
                    s.pid,
                    seconds_in(
                        *state, s.started, s.updated, s.stopped, self.now
                    ),
                    s.shards,
                    s.slots,
                    s.delnum_bytes,
                    s.in_flight,
                    s.results,
                    s.restarts,
                    match state {
                        State::Up => String::new(),
                        _ => format!(
                            "; last update {} seconds ago",
                            self.now.saturating_sub(s.updated)
                        ),
                    }
                );
            }
        }
        if !self.shards.is_empty() {
            let _ = writeln!(
                out,
                "{:<6} {:<6} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>9}",
                "shard",
                "state",
                "pid",
                "secs",
                "running",
                "held",
                "received",
                "reported",
                "deferred"
            );
            for (s, state) in &self.shards {
                let _ = writeln!(
                    out,
                    "{:<6} {:<6} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>9}",
                    s.shard,
                    state.word(),
                    s.pid,
                    seconds_in(
                        *state, s.started, s.updated, s.stopped, self.now
                    ),
                    s.running,
                    s.held,
                    s.received,
                    s.reported,
                    s.deferred_by_limit
                );
                if let Some(line) = fleet_line(s) {
                    let _ = writeln!(out, "       {line}");
                }
            }
        }
        let keys = self.keys(top);
        if !keys.is_empty() {
            let _ = writeln!(out, "busiest keys:");
            out.push_str(&key_table(&keys, self.now));
        }
        if let Some((s, _)) = &self.supervisor
            && s.sites == 1
        {
            out.push_str(&self.site_table(s, top));
        }
        out
    }

    /// Sites and providers, as the supervisor's MX answers make them:
    /// how many domains each holds now, and what its shard runs for it.
    fn site_table(&self, s: &SupervisorStatus, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sites: {} domains' MX answers kept, {} deliveries waiting for DNS",
            s.dns_cached, s.dns_waiting
        );
        if s.sites_list.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "{:<40} {:<8} {:>7} {:>7} {:>6} {:>5}",
            "site or provider", "kind", "domains", "running", "held", "limit"
        );
        for site in s.sites_list.iter().take(top) {
            let counted = self
                .shards
                .iter()
                .flat_map(|(sh, _)| sh.keys.iter())
                .find(|k| k.key == site.key);
            let cell = |f: fn(&KeyStatus) -> u32| {
                counted.map_or_else(|| "-".to_string(), |k| f(k).to_string())
            };
            let _ = writeln!(
                out,
                "{:<40} {:<8} {:>7} {:>7} {:>6} {:>5}",
                site.key,
                site.kind,
                site.domains,
                cell(|k| k.running),
                cell(|k| k.held),
                cell(|k| k.limit),
            );
        }
        out
    }

    /// The same as one JSON object, for scripts: one line.
    pub fn json(&self, top: usize) -> String {
        let page = JsonPage {
            state_dir: self.dir.to_string_lossy(),
            now: self.now,
            supervisor: self.supervisor.as_ref().map(|(s, state)| {
                JsonSupervisor {
                    state: *state,
                    pid: s.pid,
                    started: s.started,
                    updated: s.updated,
                    stopped: s.stopped,
                    slots: s.slots,
                    delnum_bytes: s.delnum_bytes,
                    shards: s.shards,
                    in_flight: s.in_flight,
                    results: s.results,
                    restarts: s.restarts,
                    sites: s.sites == 1,
                    dns_waiting: s.dns_waiting,
                    dns_cached: s.dns_cached,
                }
            }),
            shards: self
                .shards
                .iter()
                .map(|(s, state)| JsonShard {
                    shard: s.shard,
                    state: *state,
                    pid: s.pid,
                    started: s.started,
                    updated: s.updated,
                    stopped: s.stopped,
                    running: s.running,
                    held: s.held,
                    received: s.received,
                    reported: s.reported,
                    deferred_by_limit: s.deferred_by_limit,
                    fleet: JsonFleet::of(s.fleet_mode()),
                    redis_commands: s.redis_commands,
                })
                .collect(),
            keys: self
                .keys(top)
                .into_iter()
                .map(|(s, k)| {
                    let share = fleet_share(k, s.fleet_mode());
                    JsonKey {
                        key: &k.key,
                        shard: s.shard,
                        running: k.running,
                        held: k.held,
                        limit: k.limit,
                        effective: k.effective,
                        rate: Some(k.rate.as_str()).filter(|r| !r.is_empty()),
                        suspended_until: k.suspended_until,
                        failures: k.failures,
                        peak: k.peak,
                        started: k.started,
                        held_total: k.held_total,
                        deferred: k.deferred,
                        changed: k.changed,
                        why: &k.why,
                        refusals: k.refusals,
                        shared: share.is_some(),
                        leases: share.map(|(ours, _)| ours),
                        fleet: share.and_then(|(_, fleet)| fleet),
                    }
                })
                .collect(),
            sites: self
                .supervisor
                .iter()
                .flat_map(|(s, _)| s.sites_list.iter().take(top))
                .map(|s| JsonSite {
                    key: &s.key,
                    kind: &s.kind,
                    domains: s.domains,
                })
                .collect(),
        };
        // Strings and numbers only, no maps: it cannot fail.
        let mut out = serde_json::to_string(&page)
            .expect("a status page always serialises");
        out.push('\n');
        out
    }
}

/// `status --json`: the state directory read, when, the supervisor
/// (`null` when it has written no status), each shard, and the busiest
/// keys. The field names are an interface: scripts read them.
#[derive(Serialize)]
struct JsonPage<'a> {
    state_dir: Cow<'a, str>,
    now: u64,
    supervisor: Option<JsonSupervisor>,
    shards: Vec<JsonShard<'a>>,
    keys: Vec<JsonKey<'a>>,
    /// Sites and providers with the domains each holds (empty when
    /// sites are off).
    sites: Vec<JsonSite<'a>>,
}

/// A site or provider key and how many domains it holds now.
#[derive(Serialize)]
struct JsonSite<'a> {
    key: &'a str,
    kind: &'a str,
    domains: u32,
}

/// The supervisor's status file, and its state as read now.
#[derive(Serialize)]
struct JsonSupervisor {
    state: State,
    pid: u32,
    started: u64,
    updated: u64,
    stopped: u64,
    slots: u32,
    delnum_bytes: u8,
    shards: u16,
    in_flight: u32,
    results: u64,
    restarts: u64,
    sites: bool,
    dns_waiting: u32,
    dns_cached: u32,
}

/// A shard's status file, and its state as read now.
#[derive(Serialize)]
struct JsonShard<'a> {
    shard: u16,
    state: State,
    pid: u32,
    started: u64,
    updated: u64,
    stopped: u64,
    running: u32,
    held: u32,
    received: u64,
    reported: u64,
    deferred_by_limit: u64,
    /// Its fleet: `null` with no Redis configured.
    fleet: Option<JsonFleet<'a>>,
    /// Commands sent to Redis since it started (0 with no Redis).
    redis_commands: u64,
}

/// A shard's fleet: `{"mode":"shared"}`, `{"mode":"alone","since":
/// UNIX,"why":"..."}`, or what a newer shard wrote, as `mode`.
#[derive(Serialize)]
struct JsonFleet<'a> {
    mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
}

impl<'a> JsonFleet<'a> {
    fn of(mode: FleetMode<'a>) -> Option<JsonFleet<'a>> {
        let (mode, since, why) = match mode {
            FleetMode::None => return None,
            FleetMode::Shared => ("shared", None, None),
            FleetMode::Alone { since, why } => {
                ("alone", Some(since), Some(why))
            }
            FleetMode::Other(words) => (words, None, None),
        };
        Some(JsonFleet { mode, since, why })
    }
}

/// One of the busiest keys, and the shard that owns it; `rate` is
/// `null` when the key has none.
#[derive(Serialize)]
struct JsonKey<'a> {
    key: &'a str,
    shard: u16,
    running: u32,
    held: u32,
    limit: u32,
    effective: u32,
    rate: Option<&'a str>,
    suspended_until: u64,
    failures: u32,
    peak: u32,
    started: u64,
    held_total: u64,
    deferred: u64,
    /// Site-level pushback results since the shard first saw it.
    refusals: u64,
    /// The fleet shares it (Redis configured, the rule says `shared`).
    shared: bool,
    /// Of a shared key: the deliveries the fleet lets this shard run
    /// at once (its local share while Redis is away); else `null`.
    leases: Option<u32>,
    /// Of a shared key: the leases the whole fleet held at Redis' last
    /// answer; `null` while Redis is away, and for other keys.
    fleet: Option<u32>,
    // `why` last, as in the status file (it runs long).
    changed: u64,
    why: &'a str,
}

/// The per-key table: configured and effective limit, rate, how long a
/// suspension still lasts, site-level failures in a row, and the last
/// change with how long ago it was. `why` is last, as it runs long.
/// When a key shown is one the fleet shares, a `shared` column after
/// the limit: this shard's leases and the whole fleet's (`4/9`, `4/-`
/// while Redis is away, `-` for a key not shared); without one, the
/// table is as before issue 18.
fn key_table(keys: &[(&ShardStatus, &KeyStatus)], now: u64) -> String {
    let mut out = String::new();
    let shares: Vec<Option<(u32, Option<u32>)>> =
        keys.iter().map(|(s, k)| fleet_share(k, s.fleet_mode())).collect();
    let fleet = shares.iter().any(Option::is_some);
    let row = |out: &mut String, cells: [&str; 12], why: &str| {
        let [
            key,
            shard,
            running,
            held,
            limit,
            shared,
            eff,
            rate,
            susp,
            fail,
            peak,
            def,
        ] = cells;
        let _ = write!(
            out,
            "{key:<24} {shard:>5} {running:>7} {held:>6} {limit:>5}"
        );
        if fleet {
            let _ = write!(out, " {shared:>7}");
        }
        let _ = writeln!(
            out,
            " {eff:>5} {rate:>8} {susp:>9} {fail:>4} {peak:>6} {def:>8}  {why}"
        );
    };
    row(
        &mut out,
        [
            "key",
            "shard",
            "running",
            "held",
            "limit",
            "shared",
            "eff",
            "rate",
            "suspended",
            "fail",
            "peak",
            "deferred",
        ],
        "last change",
    );
    for ((s, k), share) in keys.iter().zip(shares) {
        let rate = if k.rate.is_empty() { "-" } else { k.rate.as_str() };
        let why = match (k.changed, k.why.is_empty()) {
            (0, true) => "-".to_string(),
            (0, false) => k.why.clone(),
            (t, true) => format!("{}s ago", now.saturating_sub(t)),
            (t, false) => {
                format!("{}s ago: {}", now.saturating_sub(t), k.why)
            }
        };
        let shared = match share {
            None => "-".to_string(),
            Some((ours, Some(fleet))) => format!("{ours}/{fleet}"),
            Some((ours, None)) => format!("{ours}/-"),
        };
        row(
            &mut out,
            [
                &k.key,
                &s.shard.to_string(),
                &k.running.to_string(),
                &k.held.to_string(),
                &k.limit.to_string(),
                &shared,
                &k.effective.to_string(),
                rate,
                &suspension(k.suspended_until, now),
                &k.failures.to_string(),
                &k.peak.to_string(),
                &k.deferred.to_string(),
            ],
            &why,
        );
    }
    out
}

/// A suspension as the seconds it still lasts (`293s`), `-` when the
/// key is not suspended or its suspension is over by the reader's clock
/// (the shard lifts it at its next wake-up).
fn suspension(until: u64, now: u64) -> String {
    if until > now { format!("{}s", until - now) } else { "-".to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_read_back_as_written() {
        let odd = "a\"b\\c\n\u{1}é";
        let k = KeyStatus { why: odd.to_string(), ..key(odd) };
        let json = view(vec![k], 100).json(10);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["keys"][0]["key"], odd);
        assert_eq!(v["keys"][0]["why"], odd);
        assert_eq!(v["shards"][0]["state"], "up");
        assert_eq!(v["state_dir"], "/nonexistent");
    }

    #[test]
    fn a_dead_pid_is_down_and_an_old_update_is_stale() {
        let me = std::process::id();
        assert_eq!(state_of(me, 100, 0, 100), State::Up);
        assert_eq!(state_of(me, 100, 0, 100 + STALE_AFTER + 1), State::Stale);
        assert_eq!(state_of(0, 100, 0, 100), State::Down);
        assert_eq!(state_of(u32::MAX, 100, 0, 100), State::Down);
    }

    fn key(name: &str) -> KeyStatus {
        KeyStatus {
            key: name.to_string(),
            limit: 20,
            effective: 20,
            ..KeyStatus::default()
        }
    }

    fn view(keys: Vec<KeyStatus>, now: u64) -> View {
        let shard = ShardStatus {
            shard: 1,
            pid: std::process::id(),
            updated: now,
            keys,
            ..ShardStatus::default()
        };
        View {
            dir: PathBuf::from("/nonexistent"),
            exists: true,
            now,
            supervisor: None,
            shards: vec![(shard, State::Up)],
        }
    }

    #[test]
    fn the_key_table_shows_limits_rate_suspension_and_why() {
        let now = 1_764_336_100;
        let busy = KeyStatus {
            running: 4,
            held: 2,
            effective: 4,
            rate: "600/m".to_string(),
            failures: 1,
            peak: 5,
            deferred: 3,
            changed: now - 12,
            why: "site-level failure: ZConnected to 192.0.2.1".to_string(),
            ..key("gmail.com")
        };
        let suspended = KeyStatus {
            held: 1,
            effective: 1,
            suspended_until: now + 293,
            failures: 10,
            changed: now - 7,
            why: "suspended until 2025-11-28 13:06:33 UTC: 10 site-level \
                  failures in a row"
                .to_string(),
            ..key("=google")
        };
        let quiet = KeyStatus { running: 1, ..key("d1.test") };
        let text = view(vec![busy, suspended, quiet], now).text(10);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| *l == "busiest keys:").unwrap();
        let header: Vec<&str> = lines[at + 1].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "key",
                "shard",
                "running",
                "held",
                "limit",
                "eff",
                "rate",
                "suspended",
                "fail",
                "peak",
                "deferred",
                "last",
                "change"
            ]
        );
        let row = |i: usize| -> Vec<&str> {
            lines[at + 2 + i].split_whitespace().collect()
        };
        assert_eq!(
            row(0),
            [
                "gmail.com",
                "1",
                "4",
                "2",
                "20",
                "4",
                "600/m",
                "-",
                "1",
                "5",
                "3",
                "12s",
                "ago:",
                "site-level",
                "failure:",
                "ZConnected",
                "to",
                "192.0.2.1"
            ]
        );
        assert_eq!(
            row(1)[..11],
            ["=google", "1", "0", "1", "20", "1", "-", "293s", "10", "0", "0"]
        );
        assert!(
            lines[at + 2 + 1].ends_with(
                "  7s ago: suspended until 2025-11-28 13:06:33 UTC: 10 \
                 site-level failures in a row"
            ),
            "{text}"
        );
        // Never changed: nothing to say.
        assert_eq!(
            row(2),
            [
                "d1.test", "1", "1", "0", "20", "20", "-", "-", "0", "0", "0",
                "-"
            ]
        );
    }

    /// Issue 18: a shard with a fleet says so, and its shared keys show
    /// its leases and the fleet's; a shard without one says nothing.
    #[test]
    fn the_fleet_shows_per_shard_and_per_shared_key() {
        let now = 1_796_255_500;
        let orange = KeyStatus {
            running: 2,
            limit: 10,
            shared: true,
            leases: 4,
            fleet: 9,
            ..key("orange.fr")
        };
        let mut v = view(vec![orange.clone(), key("a.test")], now);
        v.shards[0].0.fleet = "shared".into();
        v.shards[0].0.redis_commands = 1234;
        let mut alone = v.shards[0].0.clone();
        alone.shard = 2;
        alone.fleet = "alone since 1796255401: Connection refused".into();
        alone.keys = vec![KeyStatus { leases: 3, ..orange }];
        v.shards.push((alone, State::Up));
        let text = v.text(10);
        let lines: Vec<&str> = text.lines().collect();
        let fleet: Vec<&str> = lines
            .iter()
            .map(|l| l.trim_start())
            .filter(|l| l.starts_with("fleet: "))
            .collect();
        assert_eq!(
            fleet,
            [
                "fleet: shared (1234 Redis commands)",
                "fleet: ALONE since 2026-12-02 23:50:01 UTC: Connection \
                 refused",
            ],
            "{text}"
        );
        let at = lines.iter().position(|l| *l == "busiest keys:").unwrap();
        let words = |i: usize| -> Vec<&str> {
            lines[at + 1 + i].split_whitespace().collect()
        };
        assert_eq!(
            words(0)[..7],
            ["key", "shard", "running", "held", "limit", "shared", "eff"]
        );
        assert_eq!(
            words(1)[..7],
            ["orange.fr", "1", "2", "0", "10", "4/9", "20"]
        );
        assert_eq!(
            words(2)[..7],
            ["orange.fr", "2", "2", "0", "10", "3/-", "20"]
        );
        assert_eq!(words(3)[..7], ["a.test", "1", "0", "0", "20", "-", "20"]);

        let json: serde_json::Value =
            serde_json::from_str(&v.json(10)).unwrap();
        let (s0, s2) = (&json["shards"][0], &json["shards"][1]);
        assert_eq!(s0["fleet"], serde_json::json!({"mode": "shared"}));
        assert_eq!(s0["redis_commands"], 1234);
        assert_eq!(
            s2["fleet"],
            serde_json::json!({
                "mode": "alone",
                "since": 1_796_255_401,
                "why": "Connection refused"
            })
        );
        let keys = &json["keys"];
        assert_eq!(keys[0]["shared"], true);
        assert_eq!(
            (&keys[0]["leases"], &keys[0]["fleet"]),
            (&4.into(), &9.into())
        );
        assert_eq!(keys[1]["leases"], 3);
        assert!(keys[1]["fleet"].is_null());
        assert_eq!(keys[2]["shared"], false);
        assert!(keys[2]["leases"].is_null() && keys[2]["fleet"].is_null());

        // No Redis configured: no fleet line, no column, `null`, even
        // for a key the rules mark shared (it is a local key then).
        let v = view(vec![orange_local(), key("a.test")], now);
        let text = v.text(10);
        assert!(!text.contains("fleet") && !text.contains("shared"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&v.json(10)).unwrap();
        assert!(json["shards"][0]["fleet"].is_null());
        assert_eq!(json["shards"][0]["redis_commands"], 0);
        assert_eq!(json["keys"][0]["shared"], false);
    }

    fn orange_local() -> KeyStatus {
        KeyStatus { running: 2, shared: true, leases: 4, ..key("orange.fr") }
    }

    #[test]
    fn a_suspension_that_is_over_shows_as_none() {
        assert_eq!(suspension(0, 100), "-");
        assert_eq!(suspension(100, 100), "-");
        assert_eq!(suspension(99, 100), "-");
        assert_eq!(suspension(101, 100), "1s");
    }

    #[test]
    fn the_json_keys_carry_the_new_fields() {
        let k = KeyStatus {
            effective: 3,
            rate: "30/m".to_string(),
            suspended_until: 200,
            failures: 2,
            changed: 90,
            why: "response rule 1 matched \"rate limit\"".to_string(),
            ..key("d1.test")
        };
        let json = view(vec![k, key("d2.test")], 100).json(10);
        for want in [
            "\"key\":\"d1.test\",\"shard\":1,\"running\":0,\"held\":0,\
             \"limit\":20,\"effective\":3,\"rate\":\"30/m\",\
             \"suspended_until\":200,\"failures\":2,",
            "\"changed\":90,\"why\":\"response rule 1 matched \\\"rate \
             limit\\\"\"}",
            "\"key\":\"d2.test\",\"shard\":1,\"running\":0,\"held\":0,\
             \"limit\":20,\"effective\":20,\"rate\":null,",
        ] {
            assert!(json.contains(want), "{want}\nin\n{json}");
        }
    }

    #[test]
    fn an_empty_directory_reads_as_not_running() {
        let dir = std::env::temp_dir()
            .join(format!("shardspawn-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let view = gather(&dir).unwrap();
        assert!(view.supervisor.is_none());
        assert!(view.text(10).contains("not running"));
        assert!(view.json(10).contains("\"supervisor\":null"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 15, finding 11: a process that wrote its last file as it
    /// exited is down, since then, even if its pid lives (taken by
    /// another process); one that died without it, since its last
    /// update, not since it started.
    #[test]
    fn down_counts_from_the_stop_or_else_the_last_update() {
        let me = std::process::id();
        assert_eq!(state_of(me, 100, 99, 100), State::Down);
        let now = 1_000_000;
        let started = now - 86_400;
        assert_eq!(seconds_in(State::Down, started, now - 5, now - 3, now), 3);
        assert_eq!(seconds_in(State::Down, started, now - 5, 0, now), 5);
        assert_eq!(seconds_in(State::Up, started, now, 0, now), 86_400);
        assert_eq!(seconds_in(State::Stale, started, now - 9, 0, now), 86_400);
    }

    /// Issue 15, finding 11: no state directory is "not running", not a
    /// failure to read it.
    #[test]
    fn no_state_directory_reads_as_not_running() {
        let dir = std::env::temp_dir()
            .join(format!("shardspawn-status-none-{}", std::process::id()))
            .join("state");
        let view = gather(&dir).unwrap();
        assert!(view.supervisor.is_none() && view.shards.is_empty());
        assert!(
            view.text(10).starts_with("shardspawn: not running (no state"),
            "{}",
            view.text(10)
        );
        assert!(view.json(10).contains("\"supervisor\":null"));
    }
}
