//! `shardspawn top`: the live view. It reads the same status files as
//! `shardspawn status` ([`status_cmd::gather`]), once a second, and
//! shows the totals and the busiest keys; between two reads it turns
//! the counters into rates (results per second from the supervisor's
//! `results`, limit deferrals per second from the shards'
//! `deferred_by_limit`, refusals per minute from each key's `refusals`),
//! timed by the `updated` stamp of the file each came from, so a file
//! read twice before its writer rewrote it counts no time twice.
//! Refusals per minute are over the last minute; for a shard younger
//! than that, over its life (its counters were 0 when it started).
//!
//! With a terminal on stdout it is full screen (ratatui over
//! crossterm): keys pick the sort column, the arrows pick a key whose
//! whole `why` (the rule that fired) is shown under the table, and `q`,
//! Esc or Ctrl-C end it. No mouse; it fits 80x24; the terminal is given
//! back on every way out (quit, SIGTERM, SIGHUP, SIGINT, or a panic).
//! Without a terminal, or with `--once`, it prints the same as plain
//! lines: once, or a block every second.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lexopt::Arg::{Long, Short};
use lexopt::Parser;
use ratatui::Frame;
use ratatui::crossterm::event::{
    self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};
use shardspawn_common::settings::Settings;
use shardspawn_common::status::{FleetMode, utc};

use crate::cmdline::{self, Out, Usage, flag_value};
use crate::status_cmd::{
    State, Unreadable, View, fleet_share, gather, group_of,
};

const USAGE: &str = "\
usage: shardspawn top [--state-dir DIR] [--sort COLUMN] [--once] [--keys N]

A live view of the running spawner, refreshed each second, from the
status files in the state directory (as `shardspawn status` reads
them): deliveries in flight, running and held, results and limit
deferrals per second, shard restarts, DNS, and the busiest keys with
their limits, rate, suspension, refusals per minute, and the last
change and why (the rule that fired).

With a terminal, full screen; these keys sort by a column (again:
reverse it):
  b busiest (running + held, the default)   r running   h held
  l limit   e effective limit   f refusals per minute
  s suspended (longest first)   c last change (newest first)
  k key     n shard
  Up/Down/PgUp/PgDn pick a key (its whole reason shows below the table)
  q, Esc or Ctrl-C quit
Without a terminal on stdout, or with --once, plain lines: a block every
second, or one with --once.

With a fleet (SHARDSPAWN_REDIS), a fourth line says whether the shards
share their limits through Redis or run alone (how long, how many, why)
and Redis commands per second; a key the fleet shares has its limit
marked `10*` and the leases the whole fleet holds in a `fleet` column
(`-` while Redis is away).

  --sort COLUMN  busy, running, held, limit, effective, refusals,
                 suspended, changed, key or shard
  --keys N       at most N keys (default: as many as fit; 10 as lines)
  --state-dir DIR  default: SHARDSPAWN_STATE_DIR under SHARDSPAWN_HOME

Exit 0: running when it ended; 1: not running, down or stale; 111: the
status could not be read.
";

/// A column to sort the keys by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Busy,
    Running,
    Held,
    Limit,
    Effective,
    Refusals,
    Suspended,
    Changed,
    Key,
    Shard,
}

impl Sort {
    const ALL: [(Sort, &'static str, char); 10] = [
        (Sort::Busy, "busy", 'b'),
        (Sort::Running, "running", 'r'),
        (Sort::Held, "held", 'h'),
        (Sort::Limit, "limit", 'l'),
        (Sort::Effective, "effective", 'e'),
        (Sort::Refusals, "refusals", 'f'),
        (Sort::Suspended, "suspended", 's'),
        (Sort::Changed, "changed", 'c'),
        (Sort::Key, "key", 'k'),
        (Sort::Shard, "shard", 'n'),
    ];

    fn named(name: &str) -> Option<Sort> {
        Self::ALL.iter().find(|(_, n, _)| *n == name).map(|(s, _, _)| *s)
    }

    fn by_key(c: char) -> Option<Sort> {
        Self::ALL.iter().find(|(_, _, k)| *k == c).map(|(s, _, _)| *s)
    }

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(s, _, _)| *s == self).map_or("", |e| e.1)
    }
}

/// What `top` is asked to do.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    dir: Option<PathBuf>,
    sort: Sort,
    once: bool,
    keys: Option<usize>,
}

/// Splits `top ...`; `None` for `--help`.
fn parse(mut p: Parser) -> Result<Option<Ask>, Usage> {
    let mut ask = Ask { dir: None, sort: Sort::Busy, once: false, keys: None };
    while let Some(arg) = p.next()? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("once") => ask.once = true,
            Long("state-dir") => {
                ask.dir = Some(flag_value(&mut p, "--state-dir")?.into());
            }
            Long("sort") => {
                let value = flag_value(&mut p, "--sort")?;
                ask.sort =
                    value.to_str().and_then(Sort::named).ok_or_else(|| {
                        Usage::new(format!(
                            "--sort={}: not a column (busy, running, held, \
                             limit, effective, refusals, suspended, changed, \
                             key, shard)",
                            value.display()
                        ))
                    })?;
            }
            Long("keys") => {
                let value = flag_value(&mut p, "--keys")?;
                let n = value.to_str().and_then(|v| v.parse().ok());
                ask.keys = Some(n.ok_or_else(|| {
                    Usage::new(format!(
                        "--keys={}: not a number",
                        value.display()
                    ))
                })?);
            }
            arg => return Err(arg.unexpected().into()),
        }
    }
    Ok(Some(ask))
}

/// Runs `top ...`; returns the exit code.
pub fn main(p: Parser) -> i32 {
    let ask = match parse(p) {
        Ok(Some(ask)) => ask,
        Ok(None) => return cmdline::help(USAGE),
        Err(e) => return e.report("top"),
    };
    let dir = match &ask.dir {
        Some(d) => d.clone(),
        None => match Settings::from_env(&|k| std::env::var_os(k)) {
            Ok(s) => s.home.join(&s.state_dir),
            Err(e) => {
                eprintln!("shardspawn top: bad setting: {e}");
                return 100;
            }
        },
    };
    catch_signals();
    if ask.once || !std::io::stdout().is_terminal() {
        lines(&ask, &dir)
    } else {
        full_screen(&ask, &dir)
    }
}

/// Set by SIGTERM, SIGHUP or SIGINT: end, giving the terminal back.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

/// When the loop last went round, in milliseconds from its start.
static BEAT: AtomicU64 = AtomicU64::new(0);

/// Ends the full-screen view when its loop cannot: crossterm reads a
/// terminal that hung up (an ssh connection dropped, a tmux server
/// killed) over and over without returning, so neither SIGHUP nor the
/// loop's own checks would end it. A stop asked for and not done
/// within a second, or a loop stuck for five, gives the terminal back
/// (if it is still there) and exits 1.
fn watchdog(born: Instant) {
    std::thread::spawn(move || {
        let mut stopping: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now =
                u64::try_from(born.elapsed().as_millis()).unwrap_or(u64::MAX);
            let stuck =
                now.saturating_sub(BEAT.load(Ordering::Relaxed)) > 5_000;
            if STOP.load(Ordering::Relaxed) {
                stopping.get_or_insert_with(Instant::now);
            }
            if stuck
                || stopping
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(1))
            {
                ratatui::restore();
                std::process::exit(1);
            }
        }
    });
}

fn catch_signals() {
    use nix::sys::signal::{
        SaFlags, SigAction, SigHandler, SigSet, sigaction,
    };
    let act = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGINT,
    ] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// The exit code for what was last read: as `status` has it.
fn code_of(view: &View) -> i32 {
    let up = view.supervisor.as_ref().is_some_and(|(_, s)| *s == State::Up);
    if up { 0 } else { 1 }
}

/// The line that says why the status could not be read.
fn unreadable_line(u: &Unreadable) -> String {
    if u.error.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "no permission to read {}: run it as root or as a member of {}",
            u.path.display(),
            group_of(&u.path)
        )
    } else {
        format!("unable to read {}: {}", u.path.display(), u.error)
    }
}

/// Plain lines: a block once (`--once`) or every second until stdout
/// goes away or a signal ends it.
fn lines(ask: &Ask, dir: &Path) -> i32 {
    let mut rates = Rates::default();
    let mut out = Out::new();
    let mut code;
    loop {
        let view = match gather(dir) {
            Ok(view) => view,
            Err(u) => {
                eprintln!("shardspawn top: {}", unreadable_line(&u));
                return 111;
            }
        };
        code = code_of(&view);
        let snap = rates.take(&view);
        let mut page = snap.text(ask.sort, false, ask.keys.unwrap_or(10));
        if !ask.once {
            page.push('\n');
        }
        let r = out.write_all(page.as_bytes()).and_then(|()| out.flush());
        if r.is_err() || ask.once {
            return out.finish(r.map(|()| code));
        }
        let next = Instant::now() + Duration::from_secs(1);
        while Instant::now() < next {
            if STOP.load(Ordering::Relaxed) {
                return out.finish(Ok(code));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Counters turned into rates: each a window of (file's `updated`,
/// value) pairs.
#[derive(Default)]
struct Counter {
    samples: VecDeque<(u64, u64)>,
}

impl Counter {
    /// Adds what a file stamped `at` says; keeps `window` seconds. A
    /// counter that went down started again (its process restarted).
    fn push(&mut self, at: u64, value: u64, window: u64) {
        if let Some(&(t, v)) = self.samples.back() {
            if at <= t {
                return;
            }
            if value < v {
                self.samples.clear();
            }
        }
        self.samples.push_back((at, value));
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|&(t, _)| at - t > window)
        {
            self.samples.pop_front();
        }
    }

    /// Per second over the window; `None` until two files were read.
    fn per_second(&self) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) =
            (self.samples.front()?, self.samples.back()?);
        (t1 > t0).then(|| (v1 - v0) as f64 / (t1 - t0) as f64)
    }

    fn last_seen(&self) -> u64 {
        self.samples.back().map_or(0, |&(t, _)| t)
    }
}

/// Results per second: over the last few files, so one late rewrite
/// does not halve it.
const RESULTS_WINDOW: u64 = 5;
/// Refusals per minute: over the last minute.
const REFUSALS_WINDOW: u64 = 60;

/// What `top` remembers between reads.
#[derive(Default)]
struct Rates {
    results: Counter,
    /// The supervisor's results by letter: `K`, `Z`, `D`.
    letters: [Counter; 3],
    /// Each shard's `deferred_by_limit`, by (shard, pid): a restarted
    /// shard counts from 0 again.
    deferred: HashMap<(u16, u32), Counter>,
    /// Each key's `refusals`, by (shard, pid, key).
    refusals: HashMap<(u16, u32, String), Counter>,
    /// Each shard's `redis_commands`, by (shard, pid).
    redis: HashMap<(u16, u32), Counter>,
}

/// A new counter of a shard's. The shard's counters were all 0 when it
/// started, so a shard younger than the refusals window gives its rate
/// from the first read (over its life so far): the refusals of a
/// shard's first seconds, before anything read its file, are not lost.
fn young(started: u64, updated: u64) -> Counter {
    let mut c = Counter::default();
    if started != 0
        && started < updated
        && updated - started <= REFUSALS_WINDOW
    {
        c.push(started, 0, REFUSALS_WINDOW);
    }
    c
}

/// One key, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    pub key: String,
    pub shard: u16,
    pub running: u32,
    pub held: u32,
    pub limit: u32,
    pub effective: u32,
    pub rate: String,
    pub suspended_until: u64,
    /// Refusals per minute; `None` before two reads of its shard.
    pub refusals_per_min: Option<f64>,
    pub changed: u64,
    pub why: String,
    /// Of a key the fleet shares: this shard's leases, and the whole
    /// fleet's while Redis answers.
    pub share: Option<(u32, Option<u32>)>,
}

/// The shards' fleet, for the fourth totals line: how many run with
/// one, how many of those alone, since when and why (the one alone
/// longest), and Redis commands per second.
#[derive(Clone, Debug, Default, PartialEq)]
struct FleetTotals {
    shards: usize,
    alone: usize,
    /// The earliest `since` of the shards alone, and its why.
    alone_since: Option<(u64, String)>,
    /// Words of a newer shard's this reader does not know.
    other: Option<String>,
    redis_per_s: Option<f64>,
}

/// One read, with its rates: what a screen or a block of lines shows.
pub struct Snapshot {
    dir: PathBuf,
    now: u64,
    /// The first line: the supervisor's state, or why there is none.
    state: String,
    up: bool,
    shards_up: usize,
    shards: usize,
    in_flight: u32,
    running: u32,
    held: u32,
    results_per_s: Option<f64>,
    /// Of those, `K`, `Z` and `D` per second.
    letters_per_s: [Option<f64>; 3],
    deferred_per_s: Option<f64>,
    restarts: u64,
    dns_waiting: u32,
    dns_cached: u32,
    sites: Option<bool>,
    /// `None`: no shard has Redis configured.
    fleet: Option<FleetTotals>,
    keys: Vec<KeyRow>,
}

impl Rates {
    /// Reads the counters of `view` into the windows; the snapshot
    /// to show.
    fn take(&mut self, view: &View) -> Snapshot {
        let mut snap = Snapshot {
            dir: view.dir.clone(),
            now: view.now,
            state: String::new(),
            up: false,
            shards_up: 0,
            shards: view.shards.len(),
            in_flight: 0,
            running: 0,
            held: 0,
            results_per_s: None,
            letters_per_s: [None; 3],
            deferred_per_s: None,
            restarts: 0,
            dns_waiting: 0,
            dns_cached: 0,
            sites: None,
            fleet: None,
            keys: Vec::new(),
        };
        match &view.supervisor {
            None if !view.exists => {
                snap.state = format!(
                    "not running (no state directory {})",
                    view.dir.display()
                );
            }
            None => {
                snap.state = format!(
                    "not running (no status in {})",
                    view.dir.display()
                );
            }
            Some((s, state)) => {
                self.results.push(s.updated, s.results, RESULTS_WINDOW);
                for (c, n) in self.letters.iter_mut().zip(s.letters) {
                    c.push(s.updated, n, RESULTS_WINDOW);
                }
                snap.up = *state == State::Up;
                snap.state = match state {
                    State::Up => format!(
                        "up {} (pid {})",
                        age(view.now.saturating_sub(s.started)),
                        s.pid
                    ),
                    State::Stale => format!(
                        "stale (pid {}): last update {} ago",
                        s.pid,
                        age(view.now.saturating_sub(s.updated))
                    ),
                    State::Down => {
                        let since =
                            if s.stopped != 0 { s.stopped } else { s.updated };
                        format!(
                            "down {} (pid {})",
                            age(view.now.saturating_sub(since)),
                            s.pid
                        )
                    }
                };
                snap.in_flight = s.in_flight;
                snap.restarts = s.restarts;
                snap.dns_waiting = s.dns_waiting;
                snap.dns_cached = s.dns_cached;
                snap.sites = Some(s.sites == 1);
                snap.results_per_s = self.results.per_second();
                snap.letters_per_s =
                    self.letters.each_ref().map(Counter::per_second);
            }
        }
        let mut deferred = None;
        for (s, state) in &view.shards {
            if *state == State::Down {
                continue;
            }
            let mode = s.fleet_mode();
            if mode != FleetMode::None {
                let f = snap.fleet.get_or_insert_with(FleetTotals::default);
                f.shards += 1;
                match mode {
                    FleetMode::None | FleetMode::Shared => {}
                    FleetMode::Alone { since, why } => {
                        f.alone += 1;
                        if f.alone_since.as_ref().is_none_or(|a| since < a.0) {
                            f.alone_since = Some((since, why.to_string()));
                        }
                    }
                    FleetMode::Other(words) => {
                        f.other = Some(words.to_string());
                    }
                }
                let c = self
                    .redis
                    .entry((s.shard, s.pid))
                    .or_insert_with(|| young(s.started, s.updated));
                c.push(s.updated, s.redis_commands, RESULTS_WINDOW);
                if let Some(r) = c.per_second() {
                    *f.redis_per_s.get_or_insert(0.0) += r;
                }
            }
            snap.shards_up += usize::from(*state == State::Up);
            snap.running += s.running;
            snap.held += s.held;
            let c = self
                .deferred
                .entry((s.shard, s.pid))
                .or_insert_with(|| young(s.started, s.updated));
            c.push(s.updated, s.deferred_by_limit, RESULTS_WINDOW);
            if let Some(r) = c.per_second() {
                *deferred.get_or_insert(0.0) += r;
            }
            for k in &s.keys {
                let c = self
                    .refusals
                    .entry((s.shard, s.pid, k.key.clone()))
                    .or_insert_with(|| young(s.started, s.updated));
                c.push(s.updated, k.refusals, REFUSALS_WINDOW);
                snap.keys.push(KeyRow {
                    key: k.key.clone(),
                    shard: s.shard,
                    running: k.running,
                    held: k.held,
                    limit: k.limit,
                    effective: k.effective,
                    rate: k.rate.clone(),
                    suspended_until: k.suspended_until,
                    refusals_per_min: c.per_second().map(|r| r * 60.0),
                    changed: k.changed,
                    why: k.why.clone(),
                    share: fleet_share(k, mode),
                });
            }
        }
        snap.deferred_per_s = deferred;
        // Keys gone from the files for a minute are forgotten.
        let now = view.now;
        self.refusals.retain(|_, c| {
            now.saturating_sub(c.last_seen()) <= REFUSALS_WINDOW
        });
        self.deferred.retain(|_, c| {
            now.saturating_sub(c.last_seen()) <= REFUSALS_WINDOW
        });
        self.redis.retain(|_, c| {
            now.saturating_sub(c.last_seen()) <= REFUSALS_WINDOW
        });
        snap
    }
}

/// Sorts rows: numbers largest first, names in order; ties busiest
/// first, then by key.
pub fn sort_rows(rows: &mut [KeyRow], sort: Sort, reverse: bool, now: u64) {
    use std::cmp::Ordering as O;
    let busy = |r: &KeyRow| r.running + r.held;
    let left = |r: &KeyRow| r.suspended_until.saturating_sub(now);
    let refusals = |r: &KeyRow| r.refusals_per_min.unwrap_or(-1.0);
    rows.sort_by(|a, b| {
        let primary = match sort {
            Sort::Busy => busy(b).cmp(&busy(a)),
            Sort::Running => b.running.cmp(&a.running),
            Sort::Held => b.held.cmp(&a.held),
            Sort::Limit => b.limit.cmp(&a.limit),
            Sort::Effective => b.effective.cmp(&a.effective),
            Sort::Refusals => {
                refusals(b).partial_cmp(&refusals(a)).unwrap_or(O::Equal)
            }
            Sort::Suspended => left(b).cmp(&left(a)),
            Sort::Changed => b.changed.cmp(&a.changed),
            Sort::Key => a.key.cmp(&b.key),
            Sort::Shard => a.shard.cmp(&b.shard),
        };
        let primary = if reverse { primary.reverse() } else { primary };
        primary.then(busy(b).cmp(&busy(a))).then(a.key.cmp(&b.key))
    });
}

/// Seconds as the largest unit that fits: `42s`, `12m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 100 => format!("{s}s"),
        s if s < 100 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A rate for a person: one decimal below 10, whole above.
fn per(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_string(),
        Some(r) if r < 9.95 => format!("{r:.1}"),
        Some(r) => format!("{r:.0}"),
    }
}

/// The last clause of a `why`, for the table's narrow column: the
/// rule that fired and what it matched (`effective limit 5 -> 4:
/// site-level failure: built-in rule 3 matched "..."` is `built-in rule
/// 3 matched "..."`); the columns before it say the rest, and the line
/// under the table has it whole. A `: ` inside the receiver's quoted
/// text does not split it.
fn gist(why: &str) -> &str {
    let unquoted = why.find('"').map_or(why, |q| &why[..q]);
    unquoted.rfind(": ").map_or(why, |at| &why[at + 2..])
}

/// `s` in at most `width` characters, its middle elided with `~` (a
/// key's start and end say the most: `mx.` ... `.example.com`).
fn elide(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width < 3 {
        return s.chars().take(width).collect();
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut out: String = s.chars().take(head).collect();
    out.push('~');
    out.extend(s.chars().skip(n - tail));
    out
}

impl KeyRow {
    /// The `fleet` cell: the leases the whole fleet holds of a shared
    /// key; `-` while Redis is away, and for a key not shared.
    fn fleet_cell(&self) -> String {
        match self.share {
            Some((_, Some(fleet))) => fleet.to_string(),
            _ => "-".to_string(),
        }
    }

    /// The cells after key and shard, as text.
    fn cells(&self, now: u64) -> [String; 8] {
        [
            self.running.to_string(),
            self.held.to_string(),
            // The limit of a shared key is the whole fleet's.
            if self.share.is_some() {
                format!("{}*", self.limit)
            } else {
                self.limit.to_string()
            },
            self.effective.to_string(),
            if self.rate.is_empty() {
                "-".to_string()
            } else {
                self.rate.clone()
            },
            if self.suspended_until > now {
                age(self.suspended_until - now)
            } else {
                "-".to_string()
            },
            per(self.refusals_per_min),
            if self.changed == 0 {
                "-".to_string()
            } else {
                age(now.saturating_sub(self.changed))
            },
        ]
    }
}

impl FleetTotals {
    /// `fleet shared  Redis 35/s`, or `fleet ALONE 12s (1 of 2 shards)
    /// Redis 0.0/s  Connection refused`.
    fn line(&self, now: u64) -> String {
        let redis = per(self.redis_per_s);
        let Some((since, why)) = &self.alone_since else {
            let mode = self.other.as_deref().unwrap_or("shared");
            return format!("fleet {mode}  Redis {redis}/s");
        };
        let some = if self.alone < self.shards {
            format!(" ({} of {} shards)", self.alone, self.shards)
        } else {
            String::new()
        };
        format!(
            "fleet ALONE {}{some}  Redis {redis}/s  {why}",
            age(now.saturating_sub(*since))
        )
    }
}

impl Snapshot {
    /// The totals, as lines that fit 80 columns (the fleet's `why`
    /// excepted, last on its line: the screen clips it).
    fn totals(&self, sort: Sort, reverse: bool) -> Vec<String> {
        // Not running: that alone, as the directory can be long.
        let first = if self.sites.is_none() {
            format!("shardspawn {}", self.state)
        } else {
            format!(
                "shardspawn {}  shards {}/{} up  restarts {}",
                self.state, self.shards_up, self.shards, self.restarts
            )
        };
        let [k, z, d] = self.letters_per_s.map(per);
        let second = format!(
            "in flight {}  running {}  held {}  results {}/s: K {k} Z {z} D {d}",
            self.in_flight,
            self.running,
            self.held,
            per(self.results_per_s),
        );
        let sites = match self.sites {
            None => "-",
            Some(true) => "on",
            Some(false) => "off",
        };
        let third = format!(
            "Z by limit {}/s  DNS waiting {}  cached {}  sites {}  sort {}{}  {}",
            per(self.deferred_per_s),
            self.dns_waiting,
            self.dns_cached,
            sites,
            sort.name(),
            if reverse { " (reversed)" } else { "" },
            utc(self.now).get(11..).unwrap_or_default(),
        );
        let mut lines = vec![first, second, third];
        lines.extend(self.fleet.as_ref().map(|f| f.line(self.now)));
        lines
    }

    /// The rows, sorted, at most `top`.
    fn sorted(&self, sort: Sort, reverse: bool, top: usize) -> Vec<KeyRow> {
        let mut rows = self.keys.clone();
        sort_rows(&mut rows, sort, reverse, self.now);
        rows.truncate(top);
        rows
    }

    /// The plain-lines block: the totals, then one line a key, its
    /// `why` in full at the end.
    pub fn text(&self, sort: Sort, reverse: bool, top: usize) -> String {
        let mut out = String::new();
        for line in self.totals(sort, reverse) {
            let _ = writeln!(out, "{line}");
        }
        let rows = self.sorted(sort, reverse, top);
        if rows.is_empty() {
            return out;
        }
        let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0).max(3);
        // A `fleet` column after the limit when a key shown is shared.
        let shared = rows.iter().any(|r| r.share.is_some());
        let limit = |limit: &str, fleet: &str| {
            if shared {
                format!("{limit:>5} {fleet:>5}")
            } else {
                format!("{limit:>5}")
            }
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>5} {:>7} {:>5} {} {:>5} {:>7} {:>9} {:>7} {:>7}  why",
            "key",
            "shard",
            "running",
            "held",
            limit("limit", "fleet"),
            "eff",
            "rate",
            "suspended",
            "ref/min",
            "changed",
        );
        for r in &rows {
            let [run, held, lim, eff, rate, susp, refm, chg] =
                r.cells(self.now);
            let lim = limit(&lim, &r.fleet_cell());
            let why = if r.why.is_empty() { "-" } else { r.why.as_str() };
            let _ = writeln!(
                out,
                "{:<width$} {:>5} {run:>7} {held:>5} {lim} {eff:>5} \
                 {rate:>7} {susp:>9} {refm:>7} {chg:>7}  {why}",
                r.key, r.shard,
            );
        }
        out
    }
}

/// The full-screen view's own state.
struct Screen {
    sort: Sort,
    reverse: bool,
    /// The picked key: (shard, key), kept across reads.
    picked: Option<(u16, String)>,
    /// The picked row, by index, when the key is not (yet) known.
    index: usize,
}

fn full_screen(ask: &Ask, dir: &Path) -> i32 {
    let mut rates = Rates::default();
    // Unreadable before the screen is taken: say so as `status` does.
    let first = match gather(dir) {
        Ok(view) => view,
        Err(u) => {
            eprintln!("shardspawn top: {}", unreadable_line(&u));
            return 111;
        }
    };
    let mut code = code_of(&first);
    let mut snap = rates.take(&first);
    let mut error: Option<String> = None;
    let mut screen =
        Screen { sort: ask.sort, reverse: false, picked: None, index: 0 };
    // Raw mode, the alternate screen, and a panic hook that undoes both.
    let mut term = match ratatui::try_init() {
        Ok(term) => term,
        Err(e) => {
            ratatui::restore();
            eprintln!("shardspawn top: unable to use the terminal: {e}");
            return 111;
        }
    };
    let mut next = Instant::now() + Duration::from_secs(1);
    let born = Instant::now();
    let beat = || {
        let ms = u64::try_from(born.elapsed().as_millis()).unwrap_or(u64::MAX);
        BEAT.store(ms, Ordering::Relaxed);
    };
    beat();
    watchdog(born);
    let r = loop {
        beat();
        if let Err(e) = term
            .draw(|f| draw(f, &snap, &mut screen, error.as_deref(), ask.keys))
        {
            break Err(e);
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    if !screen.key(k, &snap) {
                        break Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        if STOP.load(Ordering::Relaxed) {
            break Ok(());
        }
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            if next < Instant::now() {
                next = Instant::now() + Duration::from_secs(1);
            }
            match gather(dir) {
                Ok(view) => {
                    code = code_of(&view);
                    snap = rates.take(&view);
                    error = None;
                }
                Err(u) => {
                    code = 111;
                    error = Some(unreadable_line(&u));
                }
            }
        }
    };
    ratatui::restore();
    match r {
        Ok(()) => code,
        Err(e) => {
            eprintln!("shardspawn top: terminal: {e}");
            111
        }
    }
}

impl Screen {
    /// Acts on a key; false to quit.
    fn key(&mut self, k: KeyEvent, snap: &Snapshot) -> bool {
        let rows = snap.sorted(self.sort, self.reverse, usize::MAX);
        let at = self.position(&rows);
        let mut go = |i: usize| {
            if let Some(r) = rows.get(i.min(rows.len().saturating_sub(1))) {
                self.picked = Some((r.shard, r.key.clone()));
                self.index = i.min(rows.len() - 1);
            }
        };
        match k.code {
            KeyCode::Char('c')
                if k.modifiers.contains(KeyModifiers::CONTROL) =>
            {
                return false;
            }
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Down => go(at.map_or(0, |i| i + 1)),
            KeyCode::Up => go(at.map_or(0, |i| i.saturating_sub(1))),
            KeyCode::PageDown => go(at.map_or(0, |i| i + 10)),
            KeyCode::PageUp => go(at.map_or(0, |i| i.saturating_sub(10))),
            KeyCode::Home => go(0),
            KeyCode::End => go(usize::MAX),
            KeyCode::Char(c) => {
                if let Some(sort) = Sort::by_key(c) {
                    if sort == self.sort {
                        self.reverse = !self.reverse;
                    } else {
                        self.sort = sort;
                        self.reverse = false;
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// The picked key's row now, if any is picked.
    fn position(&self, rows: &[KeyRow]) -> Option<usize> {
        let (shard, key) = self.picked.as_ref()?;
        rows.iter()
            .position(|r| r.shard == *shard && r.key == *key)
            .or(Some(self.index.min(rows.len().saturating_sub(1))))
    }
}

/// The key column: what the numbers leave (20 at 80 columns), at least
/// this and at most 28, and no wider than the longest key shown; `why`
/// gets the rest.
const KEY_MIN: u16 = 16;

fn draw(
    f: &mut Frame,
    snap: &Snapshot,
    screen: &mut Screen,
    error: Option<&str>,
    keys: Option<usize>,
) {
    let mut totals: Vec<Line> = snap
        .totals(screen.sort, screen.reverse)
        .into_iter()
        .map(Line::from)
        .collect();
    // Three lines, four with a fleet.
    let [head, table_area, detail, foot] = Layout::vertical([
        Constraint::Length(u16::try_from(totals.len()).unwrap_or(3)),
        Constraint::Min(2),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let width = f.area().width;
    if let Some(e) = error {
        totals[0] = Line::styled(
            format!("shardspawn top: {e}"),
            Style::new().add_modifier(Modifier::REVERSED),
        );
    } else if !snap.up {
        totals[0] = Line::styled(
            totals[0].to_string(),
            Style::new().add_modifier(Modifier::BOLD),
        );
    }
    f.render_widget(Paragraph::new(totals), head);

    let fit = usize::from(table_area.height.saturating_sub(1));
    let all =
        snap.sorted(screen.sort, screen.reverse, keys.unwrap_or(usize::MAX));
    // A `fleet` column after `lim` when a key shown is shared (it
    // takes its room from the key column, down to KEY_MIN, then from
    // `why`).
    let shared = all.iter().any(|r| r.share.is_some());
    let mut cols: Vec<(&str, Sort, u16)> = vec![
        ("sh", Sort::Shard, 2),
        ("run", Sort::Running, 4),
        ("held", Sort::Held, 5),
        ("lim", Sort::Limit, 5),
        ("eff", Sort::Effective, 4),
        ("rate", Sort::Busy, 6),
        ("susp", Sort::Suspended, 5),
        ("ref/m", Sort::Refusals, 5),
        ("chg", Sort::Changed, 4),
    ];
    if shared {
        cols.insert(FLEET_AT, ("fleet", Sort::Busy, 5));
    }
    // Numbers, a space before each, and one before `why`.
    let numbers: u16 = cols.iter().map(|c| c.2 + 1).sum::<u16>() + 1;
    // The key column is as wide as the longest key shown needs, so
    // short domain names leave `why` more room.
    let longest = all.iter().map(|r| r.key.chars().count()).max();
    let longest = u16::try_from(longest.unwrap_or(0)).unwrap_or(u16::MAX);
    let key_w = width
        .saturating_sub(numbers + 10)
        .clamp(KEY_MIN, 28)
        .min(longest.max(3));
    let head_cells = std::iter::once(("key", Sort::Key, 0))
        .chain(cols.iter().copied())
        .chain([("why", Sort::Busy, 0)]);
    let header = Row::new(head_cells.map(|(name, s, w)| {
        let text = format!("{name:>w$}", w = usize::from(w));
        let mut style = Style::new().add_modifier(Modifier::BOLD);
        if s == screen.sort && s != Sort::Busy {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Cell::from(text).style(style)
    }));
    let at = screen.position(&all);
    // Scroll so the picked row shows.
    let skip = match at {
        Some(i) if i >= fit => i + 1 - fit,
        _ => 0,
    };
    let rows = all.iter().skip(skip).take(fit).map(|r| {
        let mut cells = vec![r.shard.to_string()];
        cells.extend(r.cells(snap.now));
        if shared {
            cells.insert(FLEET_AT, r.fleet_cell());
        }
        let mut v = vec![Cell::from(elide(&r.key, usize::from(key_w)))];
        for (c, (_, _, w)) in cells.iter().zip(&cols) {
            v.push(Cell::from(format!("{c:>w$}", w = usize::from(*w))));
        }
        v.push(Cell::from(if r.why.is_empty() { "-" } else { gist(&r.why) }));
        Row::new(v)
    });
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(key_w))
        .chain(cols.iter().map(|c| Constraint::Length(c.2)))
        .chain([Constraint::Fill(1)])
        .collect();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(at.map(|i| i - skip));
    f.render_stateful_widget(table, table_area, &mut state);

    let picked = at.and_then(|i| all.get(i));
    let text = match picked {
        Some(r) if !r.why.is_empty() => format!(
            "{} (shard {}), {} ago: {}",
            r.key,
            r.shard,
            age(snap.now.saturating_sub(r.changed)),
            r.why
        ),
        Some(r) => format!("{} (shard {}): no change yet", r.key, r.shard),
        None if all.is_empty() => format!("no keys in {}", snap.dir.display()),
        // Nothing picked: the latest change of any key shown, so the
        // rule that fired last is on the screen.
        None => match all
            .iter()
            .filter(|r| r.changed != 0)
            .max_by_key(|r| r.changed)
        {
            Some(r) => format!(
                "last change: {} {} ago: {}",
                r.key,
                age(snap.now.saturating_sub(r.changed)),
                if r.why.is_empty() { "-" } else { &r.why }
            ),
            None => {
                "no key has changed its limit, rate or suspension".to_string()
            }
        },
    };
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), detail);
    f.render_widget(
        Paragraph::new(
            "b busy r run h held l lim e eff f ref/m s susp c chg k key n sh  q quit",
        )
        .style(Style::new().add_modifier(Modifier::REVERSED)),
        foot,
    );
}

/// Where the `fleet` column goes among the columns after the key:
/// after `lim`, whose `10*` it explains.
const FLEET_AT: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, running: u32, held: u32) -> KeyRow {
        KeyRow {
            key: key.to_string(),
            shard: 0,
            running,
            held,
            limit: 20,
            effective: 20,
            rate: String::new(),
            suspended_until: 0,
            refusals_per_min: None,
            changed: 0,
            why: String::new(),
            share: None,
        }
    }

    #[test]
    fn a_counter_rates_by_the_files_stamps_and_survives_a_restart() {
        let mut c = Counter::default();
        c.push(100, 10, 60);
        assert_eq!(c.per_second(), None);
        // Read again before the writer rewrote it: no time passed.
        c.push(100, 10, 60);
        assert_eq!(c.per_second(), None);
        c.push(102, 16, 60);
        assert_eq!(c.per_second(), Some(3.0));
        // The window keeps a minute.
        c.push(200, 16, 60);
        assert_eq!(c.per_second(), Some(0.0));
        // Went down: the shard started again.
        c.push(201, 2, 60);
        assert_eq!(c.per_second(), None);
        c.push(202, 4, 60);
        assert_eq!(c.per_second(), Some(2.0));
    }

    #[test]
    fn a_young_shard_rates_from_its_start() {
        let mut c = young(100, 110);
        c.push(110, 2, REFUSALS_WINDOW);
        assert_eq!(c.per_second(), Some(0.2));
        // Older than the window: from the next read on, as any other.
        let mut c = young(100, 100 + REFUSALS_WINDOW + 1);
        c.push(100 + REFUSALS_WINDOW + 1, 2, REFUSALS_WINDOW);
        assert_eq!(c.per_second(), None);
    }

    #[test]
    fn rows_sort_by_the_picked_column() {
        let mut rows = vec![
            row("b.test", 1, 5),
            row("a.test", 3, 0),
            row("c.test", 2, 2),
        ];
        let keys = |rows: &[KeyRow]| -> Vec<String> {
            rows.iter().map(|r| r.key.clone()).collect()
        };
        sort_rows(&mut rows, Sort::Busy, false, 0);
        assert_eq!(keys(&rows), ["b.test", "c.test", "a.test"]);
        sort_rows(&mut rows, Sort::Running, false, 0);
        assert_eq!(keys(&rows), ["a.test", "c.test", "b.test"]);
        sort_rows(&mut rows, Sort::Key, false, 0);
        assert_eq!(keys(&rows), ["a.test", "b.test", "c.test"]);
        sort_rows(&mut rows, Sort::Key, true, 0);
        assert_eq!(keys(&rows), ["c.test", "b.test", "a.test"]);
        rows[0].refusals_per_min = Some(3.0);
        rows[2].refusals_per_min = Some(12.0);
        sort_rows(&mut rows, Sort::Refusals, false, 0);
        assert_eq!(keys(&rows), ["a.test", "c.test", "b.test"]);
    }

    #[test]
    fn long_keys_keep_their_ends() {
        assert_eq!(elide("d1.test", 16), "d1.test");
        assert_eq!(
            elide("mx1.mail.very-long-provider.example", 16),
            "mx1.mail~example"
        );
        assert_eq!(elide("abcdefghij", 5), "ab~ij");
        assert_eq!(age(42), "42s");
        assert_eq!(
            gist(
                "effective limit 5 -> 4: site-level failure: built-in rule \
                 3 matched \"too many: concurrent\""
            ),
            "built-in rule 3 matched \"too many: concurrent\""
        );
        assert_eq!(
            gist("suspended until 2026-12-02 21:40:00 UTC: 10 failures"),
            "10 failures"
        );
        assert_eq!(
            gist("response rule 1 matched \"a: b\""),
            "response rule 1 matched \"a: b\""
        );
        assert_eq!(age(600), "10m");
        assert_eq!(age(7200), "2h");
        assert_eq!(per(Some(0.25)), "0.2");
        assert_eq!(per(Some(180.0)), "180");
    }

    /// A view of two shards with a fleet: shard 0 shares, shard 1 is
    /// alone since `now - 12`; orange.fr is shared by both, a.test not.
    fn fleet_view(now: u64) -> View {
        use shardspawn_common::status::{KeyStatus, ShardStatus};
        let orange = KeyStatus {
            key: "orange.fr".into(),
            running: 4,
            limit: 10,
            effective: 10,
            shared: true,
            leases: 4,
            fleet: 9,
            ..KeyStatus::default()
        };
        let a = KeyStatus {
            key: "a.test".into(),
            running: 1,
            limit: 20,
            effective: 20,
            ..KeyStatus::default()
        };
        let shard = |shard, fleet: String, keys| ShardStatus {
            shard,
            pid: std::process::id(),
            // Older than a minute: no rate from one read.
            started: now - 600,
            updated: now,
            fleet,
            redis_commands: 100,
            keys,
            ..ShardStatus::default()
        };
        View {
            dir: PathBuf::from("/nonexistent"),
            exists: true,
            now,
            supervisor: None,
            shards: vec![
                (
                    shard(0, "shared".into(), vec![orange.clone(), a]),
                    State::Up,
                ),
                (
                    shard(
                        1,
                        format!(
                            "alone since {}: Connection refused",
                            now - 12
                        ),
                        vec![KeyStatus { leases: 2, ..orange }],
                    ),
                    State::Up,
                ),
            ],
        }
    }

    /// Issue 18: a fourth totals line with a fleet; a shared key's
    /// limit is starred and the fleet's count in its own column.
    #[test]
    fn the_fleet_has_a_totals_line_and_shared_keys_a_column() {
        let now = 1_796_255_500;
        let mut rates = Rates::default();
        let snap = rates.take(&fleet_view(now));
        let text = snap.text(Sort::Busy, false, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            "fleet ALONE 12s (1 of 2 shards)  Redis -/s  Connection refused"
        );
        let words =
            |i: usize| -> Vec<&str> { lines[i].split_whitespace().collect() };
        assert_eq!(
            words(4)[..7],
            ["key", "shard", "running", "held", "limit", "fleet", "eff"]
        );
        assert_eq!(
            words(5)[..7],
            ["orange.fr", "0", "4", "0", "10*", "9", "10"]
        );
        assert_eq!(
            words(6)[..7],
            ["orange.fr", "1", "4", "0", "10*", "-", "10"]
        );
        assert_eq!(words(7)[..7], ["a.test", "0", "1", "0", "20", "-", "20"]);

        // A second read, two seconds on, all shared: commands a second.
        let mut view = fleet_view(now + 2);
        for (s, _) in &mut view.shards {
            s.fleet = "shared".into();
            s.redis_commands = 130;
        }
        let snap = rates.take(&view);
        assert_eq!(
            snap.totals(Sort::Busy, false)[3],
            "fleet shared  Redis 30/s"
        );

        // No fleet: three lines, the table as before.
        for (s, _) in &mut view.shards {
            s.fleet.clear();
        }
        let text = Rates::default().take(&view).text(Sort::Busy, false, 10);
        assert!(!text.contains("fleet") && !text.contains('*'), "{text}");
    }

    /// The full screen with a fleet still fits 80x24, its fourth line
    /// and the fleet column on it.
    #[test]
    fn the_fleet_fits_the_screen() {
        use ratatui::Terminal;
        use ratatui::backend::TestBackend;
        let now = 1_796_255_500;
        let snap = Rates::default().take(&fleet_view(now));
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut screen = Screen {
            sort: Sort::Busy,
            reverse: false,
            picked: None,
            index: 0,
        };
        term.draw(|f| draw(f, &snap, &mut screen, None, None)).unwrap();
        let buf = term.backend().buffer();
        let lines: Vec<String> = (0..24)
            .map(|y| (0..80).map(|x| buf[(x, y)].symbol()).collect())
            .collect();
        let screen = lines.join("\n");
        assert!(
            lines[3].starts_with("fleet ALONE 12s (1 of 2 shards)"),
            "{screen}"
        );
        let header: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            header[..7],
            ["key", "sh", "run", "held", "lim", "fleet", "eff"],
            "{screen}"
        );
        let row: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            row[..6],
            ["orange.fr", "0", "4", "0", "10*", "9"],
            "{screen}"
        );
        assert!(lines[23].contains("q quit"), "{screen}");
    }

    #[test]
    fn sort_names_and_keys_are_one_list() {
        for (sort, name, key) in Sort::ALL {
            assert_eq!(Sort::named(name), Some(sort));
            assert_eq!(Sort::by_key(key), Some(sort));
            assert_eq!(sort.name(), name);
        }
    }
}
