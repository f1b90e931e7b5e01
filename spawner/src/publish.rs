//! What a shard tells the admin once a second: its status files in the
//! state directory (`shardN` and `shardN.prom`, each written to a fresh
//! temporary name and renamed) and the summary lines of its log (keys that began
//! holding, changes of limits, deferrals).
//!
//! It owns the moment of the next publication and what it already said,
//! so a failing status write and a busy second each cost one line. It
//! never decides anything and never touches a delivery: it reads the
//! [`Core`] through a plain [`ShardStatus`] snapshot and the core's
//! notes.
//!
//! The Prometheus text is written here too, for the supervisor's
//! `supervisor.prom` as well ([`supervisor_prometheus`]): one writer, so
//! that every file follows the same conventions (`shardspawn_` names,
//! `_total` counters, `_seconds` times, a `HELP` and a `TYPE` line per
//! family, label values escaped).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shardspawn_common::settings::DEFAULT_METRICS_KEYS;
use shardspawn_common::status::{
    FleetMode, KeyStatus, ShardStatus, SupervisorStatus, printable,
};
use shardspawn_os::log::{Log, StatusWriter};

use crate::core::Core;

/// How often a shard publishes its status.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How many keys the status page lists.
const STATUS_KEYS: usize = 20;

/// A shard's once-a-second publication.
pub struct Publisher {
    log: Log,
    shard: u16,
    /// Where the status files go; `None`: nowhere.
    dir: Option<PathBuf>,
    /// When the shard started, Unix seconds.
    started: u64,
    /// When to publish next.
    next: Instant,
    /// Writes the files, and says once when that fails.
    writer: StatusWriter,
    /// Deferrals by limit already reported in the log.
    deferred_logged: u64,
    /// The busiest keys given series of their own in `shardN.prom`.
    metrics_keys: usize,
}

/// Unix seconds of `t`.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the core shows now, as the status file says it, with its `keys`
/// busiest keys; `stopped` when the shard is exiting.
pub fn snapshot(
    core: &Core,
    shard: u16,
    started: u64,
    stopped: Option<SystemTime>,
    keys: usize,
) -> ShardStatus {
    let counters = core.counters();
    let (fleet, redis_commands) = core.fleet_status();
    ShardStatus {
        shard,
        pid: std::process::id(),
        started,
        updated: unix(SystemTime::now()),
        stopped: stopped.map_or(0, unix),
        running: core.running(),
        held: core.held(),
        received: counters.received,
        reported: counters.reported,
        deferred_by_limit: counters.deferred_by_limit,
        keys: core.key_status(keys),
        fleet,
        redis_commands,
    }
}

/// What the Prometheus file says beside the status file's numbers.
#[derive(Clone, Copy, Debug)]
pub struct Metrics<'a> {
    /// The keys with series of their own, busiest first.
    pub keys: &'a [KeyStatus],
    /// The receiver's refusals by the rule that judged them.
    pub refusals: &'a BTreeMap<String, u64>,
}

/// The files a snapshot is published as: names in the state directory
/// and their text. The status file lists the snapshot's first
/// [`STATUS_KEYS`] keys.
pub fn files(status: &ShardStatus, metrics: Metrics) -> [(String, String); 2] {
    let name = format!("shard{}", status.shard);
    let prom = format!("{name}.prom");
    let text = if status.keys.len() > STATUS_KEYS {
        let keys = status.keys[..STATUS_KEYS].to_vec();
        ShardStatus { keys, ..status.clone() }.render()
    } else {
        status.render()
    };
    [(name, text), (prom, prometheus(status, metrics))]
}

/// A label value as the text format wants it: backslash, double quote
/// and newline escaped. (Keys are already printable, `\DDD` for bytes
/// outside `0x21..=0x7e`, but may hold `\\` and `"`.)
pub fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family of the text format: its `HELP` and `TYPE` lines and
/// its samples, each `(labels, value)`; nothing if it has no sample.
fn family<V: Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, V)>,
) {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        out.push_str(name);
        for (i, (label, v)) in labels.iter().enumerate() {
            let sep = if i == 0 { '{' } else { ',' };
            let _ = write!(out, "{sep}{label}=\"{}\"", label_value(v));
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// A key's series: name, type, help, and its value if it has one.
type KeySeries =
    (&'static str, &'static str, &'static str, fn(&KeyStatus) -> Option<u64>);

/// The series of each key [`Metrics::keys`] lists, labelled `key` (as the
/// status file writes it) and `shard`. Counters count since the shard
/// first saw the key.
const KEY_SERIES: [KeySeries; 10] = [
    (
        "shardspawn_key_running",
        "gauge",
        "qmail-remote processes running for the key",
        |k| Some(k.running.into()),
    ),
    ("shardspawn_key_held", "gauge", "deliveries waiting for the key", |k| {
        Some(k.held.into())
    }),
    ("shardspawn_key_limit", "gauge", "the key's configured limit", |k| {
        Some(k.limit.into())
    }),
    (
        "shardspawn_key_effective_limit",
        "gauge",
        "the key's limit in force, lowered by adaptation or a response rule",
        |k| Some(k.effective.into()),
    ),
    (
        "shardspawn_key_suspended",
        "gauge",
        "1 if the key is suspended, else 0",
        |k| Some(u64::from(k.suspended_until > 0)),
    ),
    (
        "shardspawn_key_suspension_end_time_seconds",
        "gauge",
        "when the key's suspension ends, Unix seconds (suspended keys only)",
        |k| (k.suspended_until > 0).then_some(k.suspended_until),
    ),
    (
        "shardspawn_key_failures",
        "gauge",
        "the key's site-level failures in a row",
        |k| Some(k.failures.into()),
    ),
    (
        "shardspawn_key_started_total",
        "counter",
        "deliveries started for the key",
        |k| Some(k.started),
    ),
    (
        "shardspawn_key_deferred_total",
        "counter",
        "deliveries answered Z because of the key's limit or suspension",
        |k| Some(k.deferred),
    ),
    (
        "shardspawn_key_refusals_total",
        "counter",
        "results from the key's receiver that were site-level pushback",
        |k| Some(k.refusals),
    ),
];

/// A key's fleet series: name, help, and its value if it has one, from
/// the key, whether the shard has a fleet, and whether Redis answers.
type FleetKeySeries =
    (&'static str, &'static str, fn(&KeyStatus, bool, bool) -> Option<u64>);

/// The fleet's series of each key [`Metrics::keys`] lists (issue 18),
/// labelled as [`KEY_SERIES`]; gauges all.
const FLEET_KEY_SERIES: [FleetKeySeries; 3] = [
    (
        "shardspawn_key_shared",
        "1 if the fleet shares the key's limit in Redis, else 0",
        |k, fleet, _| Some(u64::from(k.shared && fleet)),
    ),
    (
        "shardspawn_key_leases",
        "deliveries of a shared key the fleet lets this shard run at once \
         (its local share while Redis is away)",
        |k, fleet, _| (k.shared && fleet).then_some(k.leases.into()),
    ),
    (
        "shardspawn_key_fleet_leases",
        "leases of a shared key the whole fleet held at Redis' last answer, \
         this shard's included (while Redis answers)",
        |k, _, answers| (k.shared && answers).then_some(k.fleet.into()),
    ),
];

/// The shard's Prometheus text: the status file's counters, when it
/// started, its fleet, the series of the busiest keys and of those
/// the fleet shares, and the refusals by rule.
///
/// The fleet's shard series are written with no Redis configured too,
/// as 0 (no command sent, not alone), so a dashboard or an alert over a
/// mixed set of relays finds every series it asks for. A key's
/// `shardspawn_key_shared` is written for every key listed (0 with no
/// Redis configured, when a key marked `shared` is a plain local key);
/// its leases only for a shared key of a fleet, and the fleet-wide
/// count only while Redis answers (while Redis is away the fleet's
/// count is not known, and a 0 would read as an empty fleet).
pub fn prometheus(status: &ShardStatus, metrics: Metrics) -> String {
    let mut out = status.prometheus();
    let shard = status.shard.to_string();
    let by_shard = || vec![("shard", shard.clone())];
    family(
        &mut out,
        "shardspawn_start_time_seconds",
        "gauge",
        "when the shard started, Unix seconds",
        [(by_shard(), status.started)],
    );
    let mode = status.fleet_mode();
    family(
        &mut out,
        "shardspawn_redis_commands_total",
        "counter",
        "commands sent to Redis (one script call counts one)",
        [(by_shard(), status.redis_commands)],
    );
    family(
        &mut out,
        "shardspawn_fleet_alone",
        "gauge",
        "1 while Redis is configured and away (shared keys on their local \
         share), else 0",
        [(by_shard(), u64::from(matches!(mode, FleetMode::Alone { .. })))],
    );
    for (name, kind, help, value) in KEY_SERIES {
        let samples = metrics.keys.iter().filter_map(|k| {
            let labels =
                vec![("key", k.key.clone()), ("shard", shard.clone())];
            value(k).map(|v| (labels, v))
        });
        family(&mut out, name, kind, help, samples);
    }
    let fleet = !matches!(mode, FleetMode::None);
    let answers = matches!(mode, FleetMode::Shared);
    for (name, help, value) in FLEET_KEY_SERIES {
        let samples = metrics.keys.iter().filter_map(|k| {
            let labels =
                vec![("key", k.key.clone()), ("shard", shard.clone())];
            value(k, fleet, answers).map(|v| (labels, v))
        });
        family(&mut out, name, "gauge", help, samples);
    }
    family(
        &mut out,
        "shardspawn_refusals_total",
        "counter",
        "results the receiver refused, by the response rule that judged \
         them (or the pushback's words when no rule did)",
        metrics.refusals.iter().map(|(rule, n)| {
            (vec![("rule", rule.clone()), ("shard", shard.clone())], *n)
        }),
    );
    out
}

/// The supervisor's Prometheus text, `supervisor.prom`: its start,
/// deliveries in flight, results, shard restarts, slots and shards, the
/// MX lookups waiting and kept, and the domains of its busiest sites
/// (labelled `key`, as the shards label a site's series, and `kind`).
pub fn supervisor_prometheus(s: &SupervisorStatus) -> String {
    let mut out = String::new();
    let plain = |v: u64| [(Vec::new(), v)];
    for (name, kind, help, value) in [
        (
            "shardspawn_supervisor_start_time_seconds",
            "gauge",
            "when the supervisor started, Unix seconds",
            s.started,
        ),
        (
            "shardspawn_slots",
            "gauge",
            "slots announced to qmail-send",
            s.slots.into(),
        ),
        ("shardspawn_shards", "gauge", "shard processes", s.shards.into()),
        (
            "shardspawn_in_flight",
            "gauge",
            "deliveries sent to a shard and not yet answered",
            s.in_flight.into(),
        ),
        (
            "shardspawn_results_total",
            "counter",
            "results written to qmail-send",
            s.results,
        ),
        (
            "shardspawn_shard_restarts_total",
            "counter",
            "shard processes started again after one died",
            s.restarts,
        ),
        (
            "shardspawn_dns_waiting",
            "gauge",
            "deliveries waiting for their domain's MX lookup",
            s.dns_waiting.into(),
        ),
        (
            "shardspawn_dns_cached_domains",
            "gauge",
            "domains whose MX answers are kept",
            s.dns_cached.into(),
        ),
    ] {
        family(&mut out, name, kind, help, plain(value));
    }
    family(
        &mut out,
        "shardspawn_results_by_letter_total",
        "counter",
        "results written to qmail-send, by letter: K delivered, Z deferred, D bounced",
        ["K", "Z", "D"]
            .iter()
            .zip(s.letters)
            .map(|(l, n)| (vec![("letter", l.to_string())], n)),
    );
    family(
        &mut out,
        "shardspawn_site_domains",
        "gauge",
        "domains whose kept MX answers put them under the site or provider",
        s.sites_list.iter().map(|site| {
            let labels =
                vec![("key", site.key.clone()), ("kind", site.kind.clone())];
            (labels, site.domains)
        }),
    );
    out
}

impl Publisher {
    /// The publication of shard `shard`, into `dir` if any; the first is
    /// due at once.
    pub fn new(log: Log, shard: u16, dir: Option<PathBuf>) -> Publisher {
        Publisher {
            log,
            shard,
            dir,
            started: unix(SystemTime::now()),
            next: Instant::now(),
            writer: StatusWriter::default(),
            deferred_logged: 0,
            metrics_keys: DEFAULT_METRICS_KEYS as usize,
        }
    }

    /// Gives the `n` busiest keys series of their own in `shardN.prom`
    /// (`SHARDSPAWN_METRICS_KEYS`; 0: none).
    pub fn metrics_keys(mut self, n: u32) -> Publisher {
        self.metrics_keys = n as usize;
        self
    }

    /// When the loop must wake up to publish: only with a state
    /// directory (the log summary alone can wait for the next event).
    pub fn deadline(&self) -> Option<Instant> {
        self.dir.as_ref().map(|_| self.next)
    }

    /// Whether a publication is due at `now`; if so, the next is a
    /// second later.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + STATUS_EVERY;
        true
    }

    /// Writes `shardN` and `shardN.prom` in the state directory, each to
    /// a temporary name first and renamed, so a reader never sees half a
    /// file; `stopped` for the last time, as the shard exits.
    pub fn publish(&mut self, core: &Core, stopped: Option<SystemTime>) {
        let Some(dir) = &self.dir else { return };
        let keys = STATUS_KEYS.max(self.metrics_keys);
        let status = snapshot(core, self.shard, self.started, stopped, keys);
        let metrics = Metrics {
            keys: &status.keys[..self.metrics_keys.min(status.keys.len())],
            refusals: core.refusals_by_rule(),
        };
        let files = files(&status, metrics);
        let files =
            files.iter().map(|(name, text)| (&name[..], text.as_bytes()));
        self.writer.write(&self.log, dir, files);
    }

    /// Once a second at most: which keys began holding, and how many
    /// deliveries were deferred by a limit. One line each, however busy.
    pub fn log_notes(&mut self, core: &mut Core) {
        let mut notes = core.take_notes();
        // A key can saturate, drain and saturate again within a second.
        // (Keys come from senders: this set keeps std's keyed hasher.)
        let mut seen = std::collections::HashSet::new();
        notes.saturated.retain(|(key, _)| seen.insert(key.clone()));
        if !notes.saturated.is_empty() {
            let shown: Vec<String> = notes
                .saturated
                .iter()
                .take(5)
                .map(|(key, limit)| format!("{} ({limit})", printable(key)))
                .collect();
            let more = notes.saturated.len().saturating_sub(shown.len());
            self.log.info(format_args!(
                "holding deliveries for keys at their limit: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        // Each change of a key's limit, rate or suspension is a line of
        // its own: they are what an admin looks for when a domain slows
        // down. At most core::CHANGES_NOTED a second, the rest counted.
        for (key, what) in &notes.changes {
            self.log.info(format_args!("{}: {what}", printable(key)));
        }
        if notes.more_changes > 0 {
            self.log.info(format_args!(
                "and {} more changes of limits this second",
                notes.more_changes
            ));
        }
        let deferred = core.counters().deferred_by_limit;
        if deferred > self.deferred_logged {
            self.log.warn(format_args!(
                "deferred {} deliveries that waited too long or found too \
                 many waiting ({} since start)",
                deferred - self.deferred_logged,
                deferred
            ));
            self.deferred_logged = deferred;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardspawn_common::status::KeyStatus;

    #[test]
    fn a_snapshot_is_published_as_these_files() {
        let status = ShardStatus {
            shard: 2,
            pid: 4242,
            started: 1_764_336_000,
            updated: 1_764_336_012,
            stopped: 0,
            running: 7,
            held: 1,
            received: 30,
            reported: 22,
            deferred_by_limit: 3,
            keys: vec![KeyStatus {
                key: "a.test".into(),
                running: 7,
                held: 1,
                limit: 20,
                effective: 7,
                ..KeyStatus::default()
            }],
            ..ShardStatus::default()
        };
        let refusals = BTreeMap::new();
        let metrics = Metrics { keys: &[], refusals: &refusals };
        let [(name, text), (prom_name, prom)] = files(&status, metrics);
        assert_eq!(name, "shard2");
        assert_eq!(text, status.render());
        assert_eq!(ShardStatus::parse(&text), Ok(status));
        assert_eq!(prom_name, "shard2.prom");
        let want = [
            "# HELP shardspawn_running qmail-remote processes running",
            "# TYPE shardspawn_running gauge",
            "shardspawn_running{shard=\"2\"} 7",
            "# HELP shardspawn_held deliveries waiting for their key",
            "# TYPE shardspawn_held gauge",
            "shardspawn_held{shard=\"2\"} 1",
            "# HELP shardspawn_received_total deliveries received",
            "# TYPE shardspawn_received_total counter",
            "shardspawn_received_total{shard=\"2\"} 30",
            "# HELP shardspawn_reported_total results sent",
            "# TYPE shardspawn_reported_total counter",
            "shardspawn_reported_total{shard=\"2\"} 22",
            "# HELP shardspawn_deferred_by_limit_total deliveries deferred \
             by a limit",
            "# TYPE shardspawn_deferred_by_limit_total counter",
            "shardspawn_deferred_by_limit_total{shard=\"2\"} 3",
            "# HELP shardspawn_start_time_seconds when the shard started, \
             Unix seconds",
            "# TYPE shardspawn_start_time_seconds gauge",
            "shardspawn_start_time_seconds{shard=\"2\"} 1764336000",
            // No Redis configured: no command, not alone.
            "# HELP shardspawn_redis_commands_total commands sent to Redis \
             (one script call counts one)",
            "# TYPE shardspawn_redis_commands_total counter",
            "shardspawn_redis_commands_total{shard=\"2\"} 0",
            "# HELP shardspawn_fleet_alone 1 while Redis is configured and \
             away (shared keys on their local share), else 0",
            "# TYPE shardspawn_fleet_alone gauge",
            "shardspawn_fleet_alone{shard=\"2\"} 0",
        ];
        assert_eq!(prom.lines().collect::<Vec<_>>(), want);
        // Every line ends in a newline, the last too, as the textfile
        // collector wants.
        assert!(prom.ends_with('\n') && !prom.contains("\n\n"));
    }

    #[test]
    fn the_busiest_keys_and_refusals_by_rule_have_series_of_their_own() {
        let key = |key: &str, running, suspended_until| KeyStatus {
            key: key.into(),
            running,
            held: 2,
            limit: 20,
            effective: 7,
            suspended_until,
            started: 40,
            deferred: 3,
            refusals: 5,
            ..KeyStatus::default()
        };
        let keys =
            [key("=google", 7, 0), key("a\"b\\001.test", 1, 1_764_336_300)];
        let status = ShardStatus {
            shard: 1,
            keys: (0..30).map(|i| key(&format!("k{i}.test"), 0, 0)).collect(),
            ..ShardStatus::default()
        };
        let refusals = BTreeMap::from([
            ("built-in rule 3".to_string(), 4),
            ("no SMTP connection".to_string(), 1),
        ]);
        let metrics = Metrics { keys: &keys, refusals: &refusals };
        let [(_, text), (_, prom)] = files(&status, metrics);
        // The status file keeps to its 20 keys.
        assert_eq!(ShardStatus::parse(&text).unwrap().keys.len(), STATUS_KEYS);
        let lines: Vec<&str> = prom.lines().collect();
        for want in [
            "# TYPE shardspawn_key_running gauge",
            "shardspawn_key_running{key=\"=google\",shard=\"1\"} 7",
            // Quote and backslash escaped, as the format wants.
            "shardspawn_key_running{key=\"a\\\"b\\\\001.test\",shard=\"1\"} 1",
            "shardspawn_key_effective_limit{key=\"=google\",shard=\"1\"} 7",
            "shardspawn_key_suspended{key=\"=google\",shard=\"1\"} 0",
            "# TYPE shardspawn_key_started_total counter",
            "shardspawn_key_refusals_total{key=\"=google\",shard=\"1\"} 5",
            "shardspawn_refusals_total{rule=\"built-in rule 3\",shard=\"1\"} 4",
            "shardspawn_refusals_total{rule=\"no SMTP connection\",shard=\"1\"} 1",
        ] {
            assert!(lines.contains(&want), "{want} not in\n{prom}");
        }
        // A suspension's end only for the key that has one.
        let ends: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("shardspawn_key_suspension_end"))
            .collect();
        assert_eq!(ends.len(), 1, "{prom}");
        assert!(ends[0].ends_with("} 1764336300"));
        // Each family once, its samples together.
        let mut seen = Vec::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&name), "{name} twice");
                seen.push(name);
            } else if !l.starts_with('#') {
                assert!(l.starts_with(seen.last().unwrap()), "{l}");
            }
        }
    }

    /// Issue 18: the fleet's series, for each of its modes: Redis
    /// answers, Redis away, no Redis configured.
    #[test]
    fn the_fleet_and_its_shared_keys_have_series() {
        let keys = [
            KeyStatus {
                key: "orange.fr".into(),
                running: 2,
                limit: 2,
                shared: true,
                leases: 2,
                fleet: 9,
                ..KeyStatus::default()
            },
            KeyStatus {
                key: "a.test".into(),
                limit: 20,
                ..KeyStatus::default()
            },
        ];
        let refusals = BTreeMap::new();
        let prom = |fleet: &str| -> Vec<String> {
            let status = ShardStatus {
                shard: 1,
                fleet: fleet.into(),
                redis_commands: 1234,
                ..ShardStatus::default()
            };
            let metrics = Metrics { keys: &keys, refusals: &refusals };
            prometheus(&status, metrics).lines().map(String::from).collect()
        };
        let has = |lines: &[String], want: &str| {
            assert!(
                lines.iter().any(|l| l == want),
                "{want} not in {lines:#?}"
            );
        };
        let lacks = |lines: &[String], name: &str| {
            assert!(!lines.iter().any(|l| l.contains(name)), "{name}");
        };
        let o = "{key=\"orange.fr\",shard=\"1\"}";
        let a = "{key=\"a.test\",shard=\"1\"}";

        let shared = prom("shared");
        for want in [
            "# TYPE shardspawn_redis_commands_total counter".to_string(),
            "shardspawn_redis_commands_total{shard=\"1\"} 1234".to_string(),
            "# TYPE shardspawn_fleet_alone gauge".to_string(),
            "shardspawn_fleet_alone{shard=\"1\"} 0".to_string(),
            "# TYPE shardspawn_key_shared gauge".to_string(),
            format!("shardspawn_key_shared{o} 1"),
            format!("shardspawn_key_shared{a} 0"),
            format!("shardspawn_key_leases{o} 2"),
            format!("shardspawn_key_fleet_leases{o} 9"),
        ] {
            has(&shared, &want);
        }
        // An unshared key has no leases.
        lacks(&shared, &format!("leases{a}"));

        let alone = prom("alone since 1764719401: Connection refused");
        has(&alone, "shardspawn_fleet_alone{shard=\"1\"} 1");
        has(&alone, &format!("shardspawn_key_leases{o} 2"));
        // Away, Redis' count is not known: none rather than a 0.
        lacks(&alone, "shardspawn_key_fleet_leases");

        // No Redis: a key marked shared is local; 0 commands, not alone.
        let none = prom("");
        has(&none, "shardspawn_fleet_alone{shard=\"1\"} 0");
        has(&none, &format!("shardspawn_key_shared{o} 0"));
        lacks(&none, "shardspawn_key_leases");
        lacks(&none, "shardspawn_key_fleet_leases");
    }

    #[test]
    fn the_supervisor_has_its_own_series() {
        let s = SupervisorStatus {
            started: 1_764_336_000,
            slots: 255,
            shards: 2,
            in_flight: 9,
            results: 120,
            letters: [100, 15, 5],
            restarts: 1,
            dns_waiting: 3,
            dns_cached: 40,
            sites_list: vec![shardspawn_common::status::SiteStatus {
                key: "@mx1.test,mx2.test".into(),
                kind: "site".into(),
                domains: 12,
            }],
            ..SupervisorStatus::default()
        };
        let prom = supervisor_prometheus(&s);
        for want in [
            "# TYPE shardspawn_in_flight gauge",
            "shardspawn_in_flight 9",
            "# TYPE shardspawn_results_total counter",
            "shardspawn_results_total 120",
            "# TYPE shardspawn_results_by_letter_total counter",
            "shardspawn_results_by_letter_total{letter=\"K\"} 100",
            "shardspawn_results_by_letter_total{letter=\"Z\"} 15",
            "shardspawn_results_by_letter_total{letter=\"D\"} 5",
            "shardspawn_shard_restarts_total 1",
            "shardspawn_slots 255",
            "shardspawn_shards 2",
            "shardspawn_dns_waiting 3",
            "shardspawn_dns_cached_domains 40",
            "shardspawn_supervisor_start_time_seconds 1764336000",
            "shardspawn_site_domains{key=\"@mx1.test,mx2.test\",kind=\"site\"} 12",
        ] {
            assert!(prom.lines().any(|l| l == want), "{want} not in\n{prom}");
        }
        assert!(prom.ends_with('\n') && !prom.contains("\n\n"));
    }

    #[test]
    fn a_publication_is_due_once_a_second_and_wakes_only_with_a_dir() {
        let log = Log::new("shard 0");
        let mut p = Publisher::new(log.clone(), 0, None);
        assert_eq!(p.deadline(), None);
        let now = Instant::now();
        assert!(p.due(now));
        assert!(!p.due(now + Duration::from_millis(999)));
        assert!(p.due(now + STATUS_EVERY));
        let p = Publisher::new(log, 0, Some(PathBuf::from("/nonexistent")));
        assert!(p.deadline().is_some());
    }
}
