//! The live status files in the state directory, and their format.
//!
//! Each shard writes `shardN` and the supervisor writes `supervisor`,
//! each to a fresh temporary name first and then renamed, so a reader
//! never sees half a file. Each writes its file once more as it exits,
//! with its last counts and the time it stopped. The format is plain
//! text, one `name value` pair a line, the first line naming the format
//! and its version, so `cat` is a status tool too:
//!
//! ```text
//! shardspawn-status 1 shard
//! shard 3
//! pid 4242
//! started 1764336000
//! updated 1764336012
//! stopped 0
//! running 12
//! held 3
//! received 1234
//! reported 1219
//! deferred_by_limit 4
//! fleet shared
//! redis_commands 1234
//! key gmail.com running 10 held 3 limit 20 effective 10 rate 600/m suspended_until 0 failures 0 peak 10 started 400 held_total 37 deferred 4 refusals 2 changed 1764336007 why 20 good deliveries at the limit
//! key orange.fr running 2 held 0 limit 2 effective 2 rate - suspended_until 0 failures 0 peak 2 started 9 held_total 0 deferred 0 refusals 0 changed 0 shared 1 leases 2 fleet 2
//! ```
//!
//! Times are Unix seconds; `stopped` is 0 while the process runs (a
//! reader that finds it 0 and the pid gone knows the process died
//! without its last write). `key` lines list the busiest keys (running
//! plus held), a key written with every byte outside `0x21..=0x7e` as
//! `\DDD` (see [`printable`]), so it is one word and no two keys read
//! the same. In a key line, `limit` is the configured limit, `effective` the
//! one in force (adaptation and response rules lower it), `rate` the
//! rate in force (`-`: none), `suspended_until` 0 unless the key is
//! suspended, `failures` its site-level failures in a row, and `changed`
//! and `why` the last change of any of these (`why` runs to the end of
//! the line, so it is last). Unknown lines are ignored by readers, so fields can be added
//! without a new version; a changed meaning needs one.
//!
//! The fleet (issue 18) is written only where there is one, so a relay
//! without Redis writes what it wrote before: the `fleet` and
//! `redis_commands` lines only with Redis configured (`fleet` is
//! `shared`, or `alone since UNIX: WHY` to the end of the line; see
//! [`FleetMode`]), and `shared 1 leases N fleet N` only in the line of
//! a shared key. A reader that finds none of them reads "no fleet" and
//! "not shared", which is what an older file meant.

use std::fmt::Write as _;

pub use crate::domain::printable;

/// The first word of every status file.
pub const MAGIC: &str = "shardspawn-status";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// What one key looks like in a shard right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// The limit key, printable.
    pub key: String,
    /// qmail-remote processes running for it.
    pub running: u32,
    /// Deliveries waiting for it.
    pub held: u32,
    /// Its configured limit.
    pub limit: u32,
    /// The limit in force: at most the configured one, lowered by
    /// adaptation or a response rule.
    pub effective: u32,
    /// The rate in force (`30/m`), or empty for none.
    pub rate: String,
    /// Unix seconds until which it is suspended; 0 if it is not.
    pub suspended_until: u64,
    /// Site-level failures in a row.
    pub failures: u32,
    /// The most that ran at once since the shard started.
    pub peak: u32,
    /// Deliveries started for it since the shard started.
    pub started: u64,
    /// Deliveries that had to wait for it, in all.
    pub held_total: u64,
    /// Deliveries answered with a `Z` because of its limit.
    pub deferred: u64,
    /// Results that were site-level pushback (a receiver's refusal, a
    /// matched adapt rule, a failed connect) since the key was first
    /// seen: a counter, for refusals per minute.
    pub refusals: u64,
    /// A key the fleet shares (issue 18): its limit and rate are kept
    /// in Redis for every relay that reads the same rules.
    pub shared: bool,
    /// Of a shared key: how many deliveries the fleet lets this shard
    /// run at once now (its leases); while Redis is away, its local
    /// share.
    pub leases: u32,
    /// Of a shared key: leases the whole fleet held at the last answer
    /// from Redis, this shard's included; 0 while Redis is away.
    pub fleet: u32,
    /// Unix seconds of the last change of limit, rate or suspension; 0
    /// if none.
    pub changed: u64,
    /// Why it changed last, printable, no newline.
    pub why: String,
}

/// What a shard publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Its index.
    pub shard: u16,
    /// Its pid.
    pub pid: u32,
    /// When it started.
    pub started: u64,
    /// When this was written.
    pub updated: u64,
    /// When it stopped, after its last result; 0 while it runs.
    pub stopped: u64,
    /// qmail-remote processes running.
    pub running: u32,
    /// Deliveries waiting.
    pub held: u32,
    /// Jobs received since start.
    pub received: u64,
    /// Results sent since start.
    pub reported: u64,
    /// Results that were deferrals because of a limit.
    pub deferred_by_limit: u64,
    /// The busiest keys, busiest first.
    pub keys: Vec<KeyStatus>,
    /// Its fleet (issue 18): empty with no Redis configured; `shared`
    /// while Redis answers; `alone since UNIX: WHY` while it does not.
    pub fleet: String,
    /// Commands sent to Redis since start (one script call counts one,
    /// whatever number of keys it carries).
    pub redis_commands: u64,
}

/// A shard's fleet, as its [`ShardStatus::fleet`] says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetMode<'a> {
    /// No Redis configured: shared keys are plain local keys.
    None,
    /// Redis answers: shared keys run on the leases it gives.
    Shared,
    /// Redis is away: shared keys run on their local share.
    Alone {
        /// Since when, Unix seconds.
        since: u64,
        /// Why, as the Redis client said it.
        why: &'a str,
    },
    /// Words this reader does not know (a newer writer's): shown as
    /// they are, read as not shared.
    Other(&'a str),
}

/// What the supervisor publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// Its pid.
    pub pid: u32,
    /// When it started.
    pub started: u64,
    /// When this was written.
    pub updated: u64,
    /// When it stopped, after its last result; 0 while it runs.
    pub stopped: u64,
    /// Slots announced.
    pub slots: u32,
    /// Delnum bytes (1 or 2).
    pub delnum_bytes: u8,
    /// Shard processes.
    pub shards: u16,
    /// Deliveries in flight (sent to a shard, not answered).
    pub in_flight: u32,
    /// Result records written since start.
    pub results: u64,
    /// Of those, by letter: `K`, `Z`, `D`.
    pub letters: [u64; 3],
    /// Shard restarts since start.
    pub restarts: u64,
    /// Domains are keyed by site (1) or by domain (0).
    pub sites: u8,
    /// Deliveries waiting for an MX lookup now.
    pub dns_waiting: u32,
    /// Domains whose MX answers are kept.
    pub dns_cached: u32,
    /// The sites and providers holding the most of those domains.
    pub sites_list: Vec<SiteStatus>,
}

/// A site or provider key, as the supervisor's MX answers make it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteStatus {
    /// The key, printable (`\DDD` outside `0x21..=0x7e`).
    pub key: String,
    /// `site`, `provider`, `group` or `domain`.
    pub kind: String,
    /// Domains whose kept answers put them under it now.
    pub domains: u32,
}

/// Unix seconds as `2026-11-28 16:05:12 UTC`, for texts an admin reads
/// (a suspension's end in a `Z`, the status page).
pub fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's
    // algorithm, for the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn header(out: &mut String, kind: &str) {
    let _ = writeln!(out, "{MAGIC} {VERSION} {kind}");
}

/// Checks the first line; returns the other lines.
fn body<'a>(
    text: &'a str,
    kind: &str,
) -> Result<impl Iterator<Item = (&'a str, &'a str)>, String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let mut words = first.split(' ');
    if words.next() != Some(MAGIC) {
        return Err("not a shardspawn status file".to_string());
    }
    match words.next().and_then(|v| v.parse::<u32>().ok()) {
        Some(VERSION) => {}
        Some(v) => return Err(format!("status format {v}, not {VERSION}")),
        None => return Err("no format version".to_string()),
    }
    if words.next() != Some(kind) {
        return Err(format!("not a {kind} status file"));
    }
    Ok(lines.filter_map(|l| l.split_once(' ')))
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("{name}: not a number: {v}"))
}

impl KeyStatus {
    fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "key {} running {} held {} limit {} effective {} rate {} \
             suspended_until {} failures {} peak {} started {} \
             held_total {} deferred {} refusals {} changed {}",
            self.key,
            self.running,
            self.held,
            self.limit,
            self.effective,
            if self.rate.is_empty() { "-" } else { &self.rate },
            self.suspended_until,
            self.failures,
            self.peak,
            self.started,
            self.held_total,
            self.deferred,
            self.refusals,
            self.changed,
        );
        if self.shared {
            // Only a shared key's line says so: an unshared key's line
            // reads as it did before issue 18. Before `why`, which runs
            // to the end of the line.
            let _ = write!(
                out,
                " shared 1 leases {} fleet {}",
                self.leases, self.fleet
            );
        }
        if !self.why.is_empty() {
            let why: String = self
                .why
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let _ = write!(out, " why {why}");
        }
        out.push('\n');
    }

    fn parse(v: &str) -> Result<KeyStatus, String> {
        let (v, why) = v.split_once(" why ").unwrap_or((v, ""));
        let mut words = v.split(' ');
        let mut k = KeyStatus {
            key: words.next().unwrap_or("").to_string(),
            why: why.to_string(),
            ..KeyStatus::default()
        };
        while let (Some(name), Some(value)) = (words.next(), words.next()) {
            match name {
                "running" => k.running = num(name, value)?,
                "held" => k.held = num(name, value)?,
                "limit" => k.limit = num(name, value)?,
                "effective" => k.effective = num(name, value)?,
                "rate" if value != "-" => k.rate = value.to_string(),
                "suspended_until" => k.suspended_until = num(name, value)?,
                "failures" => k.failures = num(name, value)?,
                "changed" => k.changed = num(name, value)?,
                "peak" => k.peak = num(name, value)?,
                "started" => k.started = num(name, value)?,
                "held_total" => k.held_total = num(name, value)?,
                "deferred" => k.deferred = num(name, value)?,
                "refusals" => k.refusals = num(name, value)?,
                "shared" => k.shared = num::<u8>(name, value)? != 0,
                "leases" => k.leases = num(name, value)?,
                "fleet" => k.fleet = num(name, value)?,
                _ => {}
            }
        }
        Ok(k)
    }
}

impl ShardStatus {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(&mut out, "shard");
        let _ = writeln!(out, "shard {}", self.shard);
        let _ = writeln!(out, "pid {}", self.pid);
        let _ = writeln!(out, "started {}", self.started);
        let _ = writeln!(out, "updated {}", self.updated);
        let _ = writeln!(out, "stopped {}", self.stopped);
        let _ = writeln!(out, "running {}", self.running);
        let _ = writeln!(out, "held {}", self.held);
        let _ = writeln!(out, "received {}", self.received);
        let _ = writeln!(out, "reported {}", self.reported);
        let _ = writeln!(out, "deferred_by_limit {}", self.deferred_by_limit);
        if !self.fleet.is_empty() {
            let fleet: String = self
                .fleet
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let _ = writeln!(out, "fleet {fleet}");
            let _ = writeln!(out, "redis_commands {}", self.redis_commands);
        }
        for k in &self.keys {
            k.render(&mut out);
        }
        out
    }

    /// Reads what [`ShardStatus::render`] wrote.
    pub fn parse(text: &str) -> Result<ShardStatus, String> {
        let mut s = ShardStatus::default();
        for (name, v) in body(text, "shard")? {
            match name {
                "shard" => s.shard = num(name, v)?,
                "pid" => s.pid = num(name, v)?,
                "started" => s.started = num(name, v)?,
                "updated" => s.updated = num(name, v)?,
                "stopped" => s.stopped = num(name, v)?,
                "running" => s.running = num(name, v)?,
                "held" => s.held = num(name, v)?,
                "received" => s.received = num(name, v)?,
                "reported" => s.reported = num(name, v)?,
                "deferred_by_limit" => s.deferred_by_limit = num(name, v)?,
                "key" => s.keys.push(KeyStatus::parse(v)?),
                "fleet" => s.fleet = v.to_string(),
                "redis_commands" => s.redis_commands = num(name, v)?,
                _ => {}
            }
        }
        Ok(s)
    }

    /// Its fleet, read from [`ShardStatus::fleet`].
    pub fn fleet_mode(&self) -> FleetMode<'_> {
        let alone = self
            .fleet
            .strip_prefix("alone since ")
            .and_then(|rest| rest.split_once(": "))
            .and_then(|(t, why)| Some((t.parse().ok()?, why)));
        match (self.fleet.as_str(), alone) {
            ("", _) => FleetMode::None,
            ("shared", _) => FleetMode::Shared,
            (_, Some((since, why))) => FleetMode::Alone { since, why },
            (other, None) => FleetMode::Other(other),
        }
    }

    /// The same counters in Prometheus' text format, for
    /// node_exporter's textfile collector.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let shard = self.shard;
        for (name, help, value) in [
            (
                "running",
                "qmail-remote processes running",
                u64::from(self.running),
            ),
            ("held", "deliveries waiting for their key", u64::from(self.held)),
            ("received_total", "deliveries received", self.received),
            ("reported_total", "results sent", self.reported),
            (
                "deferred_by_limit_total",
                "deliveries deferred by a limit",
                self.deferred_by_limit,
            ),
        ] {
            let _ = writeln!(out, "# HELP shardspawn_{name} {help}");
            let kind =
                if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE shardspawn_{name} {kind}");
            let _ = writeln!(
                out,
                "shardspawn_{name}{{shard=\"{shard}\"}} {value}"
            );
        }
        out
    }
}

impl SupervisorStatus {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(&mut out, "supervisor");
        let _ = writeln!(out, "pid {}", self.pid);
        let _ = writeln!(out, "started {}", self.started);
        let _ = writeln!(out, "updated {}", self.updated);
        let _ = writeln!(out, "stopped {}", self.stopped);
        let _ = writeln!(out, "slots {}", self.slots);
        let _ = writeln!(out, "delnum_bytes {}", self.delnum_bytes);
        let _ = writeln!(out, "shards {}", self.shards);
        let _ = writeln!(out, "in_flight {}", self.in_flight);
        let _ = writeln!(out, "results {}", self.results);
        for (letter, n) in ["k", "z", "d"].iter().zip(self.letters) {
            let _ = writeln!(out, "results_{letter} {n}");
        }
        let _ = writeln!(out, "restarts {}", self.restarts);
        let _ = writeln!(out, "sites {}", self.sites);
        let _ = writeln!(out, "dns_waiting {}", self.dns_waiting);
        let _ = writeln!(out, "dns_cached {}", self.dns_cached);
        for s in &self.sites_list {
            let _ = writeln!(
                out,
                "site {} kind {} domains {}",
                s.key, s.kind, s.domains
            );
        }
        out
    }

    /// Reads what [`SupervisorStatus::render`] wrote.
    pub fn parse(text: &str) -> Result<SupervisorStatus, String> {
        let mut s = SupervisorStatus::default();
        for (name, v) in body(text, "supervisor")? {
            match name {
                "pid" => s.pid = num(name, v)?,
                "started" => s.started = num(name, v)?,
                "updated" => s.updated = num(name, v)?,
                "stopped" => s.stopped = num(name, v)?,
                "slots" => s.slots = num(name, v)?,
                "delnum_bytes" => s.delnum_bytes = num(name, v)?,
                "shards" => s.shards = num(name, v)?,
                "in_flight" => s.in_flight = num(name, v)?,
                "results" => s.results = num(name, v)?,
                "results_k" => s.letters[0] = num(name, v)?,
                "results_z" => s.letters[1] = num(name, v)?,
                "results_d" => s.letters[2] = num(name, v)?,
                "restarts" => s.restarts = num(name, v)?,
                "sites" => s.sites = num(name, v)?,
                "dns_waiting" => s.dns_waiting = num(name, v)?,
                "dns_cached" => s.dns_cached = num(name, v)?,
                "site" => {
                    let mut words = v.split(' ');
                    let mut site = SiteStatus {
                        key: words.next().unwrap_or("").to_string(),
                        ..SiteStatus::default()
                    };
                    while let (Some(n), Some(value)) =
                        (words.next(), words.next())
                    {
                        match n {
                            "kind" => site.kind = value.to_string(),
                            "domains" => site.domains = num(n, value)?,
                            _ => {}
                        }
                    }
                    s.sites_list.push(site);
                }
                _ => {}
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardStatus {
        ShardStatus {
            shard: 3,
            pid: 4242,
            started: 1_764_336_000,
            updated: 1_764_336_012,
            stopped: 0,
            running: 12,
            held: 3,
            received: 1234,
            reported: 1219,
            deferred_by_limit: 4,
            keys: vec![
                KeyStatus {
                    key: "=google".into(),
                    running: 10,
                    held: 3,
                    limit: 20,
                    effective: 10,
                    rate: "600/m".into(),
                    suspended_until: 0,
                    failures: 0,
                    peak: 10,
                    started: 400,
                    held_total: 37,
                    deferred: 4,
                    refusals: 2,
                    changed: 1_764_336_007,
                    why: "20 good deliveries at the limit".into(),
                    ..KeyStatus::default()
                },
                KeyStatus {
                    key: "a.test".into(),
                    running: 2,
                    limit: 20,
                    ..KeyStatus::default()
                },
            ],
            ..ShardStatus::default()
        }
    }

    #[test]
    fn shard_status_round_trips() {
        let s = shard();
        assert_eq!(ShardStatus::parse(&s.render()), Ok(s));
    }

    #[test]
    fn supervisor_status_round_trips() {
        let s = SupervisorStatus {
            pid: 1,
            started: 2,
            updated: 3,
            stopped: 4,
            slots: 32767,
            delnum_bytes: 2,
            shards: 4,
            in_flight: 5,
            results: 6,
            letters: [3, 2, 1],
            restarts: 7,
            sites: 1,
            dns_waiting: 8,
            dns_cached: 9,
            sites_list: vec![
                SiteStatus {
                    key: "=google".into(),
                    kind: "group".into(),
                    domains: 40,
                },
                SiteStatus {
                    key: "@mx1.example.net,mx2.example.net".into(),
                    kind: "site".into(),
                    domains: 3,
                },
            ],
        };
        assert_eq!(SupervisorStatus::parse(&s.render()), Ok(s));
    }

    #[test]
    fn the_format_is_what_the_docs_show() {
        let text = shard().render();
        assert!(
            text.starts_with("shardspawn-status 1 shard\nshard 3\npid 4242\n")
        );
        assert!(text.contains(
            "\nkey =google running 10 held 3 limit 20 effective 10 rate 600/m \
             suspended_until 0 failures 0 peak 10 started 400 held_total 37 \
             deferred 4 refusals 2 changed 1764336007 why 20 good deliveries at the \
             limit\n"
        ));
    }

    #[test]
    fn readers_refuse_other_files_and_versions_and_skip_unknown_lines() {
        assert!(ShardStatus::parse("hello\n").is_err());
        assert!(ShardStatus::parse("shardspawn-status 2 shard\n").is_err());
        assert!(
            ShardStatus::parse("shardspawn-status 1 supervisor\n").is_err()
        );
        let s = ShardStatus::parse(
            "shardspawn-status 1 shard\nshard 2\nnew_field 9\n",
        )
        .unwrap();
        assert_eq!(s.shard, 2);
        assert!(
            ShardStatus::parse("shardspawn-status 1 shard\npid x\n").is_err()
        );
    }

    /// Issue 18: a fleet's shard and its shared keys, written and read
    /// back; no fleet, nothing written (a file as before the issue).
    #[test]
    fn the_fleet_round_trips_and_is_absent_without_one() {
        let orange = KeyStatus {
            key: "orange.fr".into(),
            running: 2,
            limit: 2,
            effective: 2,
            shared: true,
            leases: 2,
            fleet: 9,
            why: "Redis is away".into(),
            ..KeyStatus::default()
        };
        for fleet in ["shared", "alone since 1764336000: Connection refused"] {
            let mut s = shard();
            s.fleet = fleet.into();
            s.redis_commands = 1234;
            s.keys.push(orange.clone());
            let text = s.render();
            assert!(text.contains(&format!("\nfleet {fleet}\n")), "{text}");
            assert!(text.contains("\nredis_commands 1234\n"), "{text}");
            assert!(
                text.contains(
                    " refusals 0 changed 0 shared 1 leases 2 fleet 9 why \
                     Redis is away\n"
                ),
                "{text}"
            );
            assert_eq!(ShardStatus::parse(&text), Ok(s));
        }
        let text = shard().render();
        for absent in ["fleet", "redis_commands", "shared", "leases"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // A control character cannot split the line.
        let s = ShardStatus { fleet: "alone since 1: a\nb".into(), ..shard() };
        let back = ShardStatus::parse(&s.render()).unwrap();
        assert_eq!(back.fleet, "alone since 1: a b");
    }

    /// A file written before issue 18 reads as no fleet, keys unshared.
    #[test]
    fn an_older_file_reads_as_no_fleet() {
        let s = ShardStatus::parse(
            "shardspawn-status 1 shard\nshard 1\nkey a.test running 1 \
             limit 20 refusals 3 changed 0\n",
        )
        .unwrap();
        assert_eq!((s.fleet.as_str(), s.redis_commands), ("", 0));
        assert_eq!(s.fleet_mode(), FleetMode::None);
        let k = &s.keys[0];
        assert_eq!(
            (k.shared, k.leases, k.fleet, k.refusals),
            (false, 0, 0, 3)
        );
    }

    #[test]
    fn the_fleet_mode_reads_the_three_words() {
        let mode = |fleet: &str| {
            let s = ShardStatus { fleet: fleet.into(), ..shard() };
            format!("{:?}", s.fleet_mode())
        };
        assert_eq!(mode(""), "None");
        assert_eq!(mode("shared"), "Shared");
        assert_eq!(
            mode("alone since 1764719401: Connection refused (os error 111)"),
            "Alone { since: 1764719401, why: \"Connection refused (os error \
             111)\" }"
        );
        assert_eq!(mode("alone since: x"), "Other(\"alone since: x\")");
        assert_eq!(mode("sharded"), "Other(\"sharded\")");
    }

    #[test]
    fn utc_times_read_as_a_calendar_does() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_764_336_000), "2025-11-28 13:20:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
        assert_eq!(utc(4_107_542_400), "2100-03-01 00:00:00 UTC");
    }

    #[test]
    fn keys_are_printable() {
        assert_eq!(
            printable(b"a b\n\0\xff.test"),
            "a\\032b\\010\\000\\255.test"
        );
    }

    #[test]
    fn prometheus_lines_carry_the_shard_label() {
        let p = shard().prometheus();
        assert!(p.contains("shardspawn_running{shard=\"3\"} 12\n"));
        assert!(p.contains("# TYPE shardspawn_received_total counter\n"));
    }
}
