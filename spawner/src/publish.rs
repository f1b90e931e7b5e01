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

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shardspawn_common::status::{ShardStatus, printable};
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
}

/// Unix seconds of `t`.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the core shows now, as the status file says it; `stopped` when
/// the shard is exiting.
pub fn snapshot(
    core: &Core,
    shard: u16,
    started: u64,
    stopped: Option<SystemTime>,
) -> ShardStatus {
    let counters = core.counters();
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
        keys: core.key_status(STATUS_KEYS),
    }
}

/// The files a snapshot is published as: names in the state directory
/// and their text.
pub fn files(status: &ShardStatus) -> [(String, String); 2] {
    let name = format!("shard{}", status.shard);
    let prom = format!("{name}.prom");
    [(name, status.render()), (prom, status.prometheus())]
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
        }
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
        let status = snapshot(core, self.shard, self.started, stopped);
        let files = files(&status);
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
        };
        let [(name, text), (prom_name, prom)] = files(&status);
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
        ];
        assert_eq!(prom.lines().collect::<Vec<_>>(), want);
        // Every line ends in a newline, the last too, as the textfile
        // collector wants.
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
