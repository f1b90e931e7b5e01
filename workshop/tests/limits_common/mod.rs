//! What the end-to-end tests of per-destination limits share
//! (limit_never_exceeded.rs, hold_then_defer.rs, limits_reload.rs): the
//! spawner as qmail-start runs it with a stand-in that records and can
//! be gated, the limits file written the way an admin should (a new file
//! renamed over the old one), the log, the recording and the shards'
//! status files.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use shardspawn_common::command::{Command as Cmd, DelnumWidth};
use shardspawn_common::record::Record;
use shardspawn_common::status::{KeyStatus, ShardStatus};
use shardspawn_workshop::emulator::Emulator;
use shardspawn_workshop::home::{LIMITS, QmailHome};
use shardspawn_workshop::recorder::Recording;
use shardspawn_workshop::remote::Gate;
use shardspawn_workshop::spawner::Spawner;
use shardspawn_workshop::util::{deadline_in, wait_for};

/// The state directory, relative to the home.
pub use shardspawn_workshop::spawner::STATE_DIR;

/// How long a test waits for anything that should come at once. Long,
/// as the machine may be busy with other tests; a passing test never
/// waits it out.
pub fn soon() -> Instant {
    deadline_in(Duration::from_secs(20))
}

/// One spawner under test, with everything around it.
pub struct Rig {
    /// The qmail home (limits file in `control/concurrencydomains`).
    pub home: QmailHome,
    /// The stand-in's gate, closed at first.
    pub gate: Gate,
    /// The stand-in's recording.
    pub record: PathBuf,
    /// The spawner's fd 2.
    pub log: PathBuf,
    /// The shard count.
    pub shards: u16,
    /// One message file every delivery uses.
    pub messid: String,
}

impl Rig {
    /// A fresh home whose limits file says `limits`, a closed gate, and
    /// no spawner yet.
    pub fn new(limits: &str, shards: u16) -> Rig {
        let home = QmailHome::new().unwrap();
        home.write_file(LIMITS, limits.as_bytes()).unwrap();
        let gate = Gate::closed(home.path().join("gate")).unwrap();
        let record = home.path().join("recording");
        let log = home.path().join("log");
        let messid = home.add_message(b"Subject: limits\n\nbody\n");
        Rig { home, gate, record, log, shards, messid }
    }

    /// The fixture for this rig in framing `width`: `shardspawn` as
    /// qmail-start runs it (no arguments, a clean environment with its
    /// settings, a state directory in the home), the stand-in as
    /// qmail-remote with gate and recording, its log in [`Rig::log`].
    pub fn spawner(&self, width: DelnumWidth) -> Spawner<'_> {
        Spawner::new(&self.home, width, self.shards)
            .gate(&self.gate)
            .record(&self.record)
            .log(&self.log)
    }

    /// `shardspawn` in 1-byte framing with `extra` settings.
    pub fn command(&self, extra: &[(&str, &str)]) -> Command {
        let mut cmd = self.spawner(DelnumWidth::One).command();
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the spawner with `extra` settings, its log in
    /// [`Rig::log`], and reads its announcement.
    pub fn start(&self, extra: &[(&str, &str)]) -> Emulator {
        self.start_width(DelnumWidth::One, extra)
    }

    /// As [`Rig::start`], in framing `width`.
    pub fn start_width(
        &self,
        width: DelnumWidth,
        extra: &[(&str, &str)],
    ) -> Emulator {
        let mut spawner = self.spawner(width);
        for (k, v) in extra {
            spawner = spawner.env(k, v);
        }
        spawner.start().unwrap_or_else(|e| {
            panic!("shardspawn did not start: {e}\nlog:\n{}", self.log_text())
        })
    }

    /// The command for one delivery of the rig's message to `recipient`.
    pub fn cmd(&self, delnum: u16, recipient: &[u8]) -> Cmd {
        Cmd {
            delnum,
            messid: self.messid.as_bytes().to_vec(),
            sender: b"s@origin.test".to_vec(),
            recipient: recipient.to_vec(),
        }
    }

    /// Sends a delivery to `recipient` on `delnum`.
    pub fn send(&self, emu: &mut Emulator, delnum: u16, recipient: &[u8]) {
        let c = self.cmd(delnum, recipient);
        emu.send(&c).unwrap_or_else(|e| {
            panic!("unable to send the command for delnum {delnum}: {e}")
        });
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Log lines containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the log has at least `n` lines with all of
    /// `needles`; panics with the log if not.
    pub fn wait_log(&self, needles: &[&str], n: usize) {
        if !wait_for(|| self.log_lines(needles).len() >= n, soon()) {
            panic!(
                "the log never got {n} lines with {needles:?}:\n{}",
                self.log_text()
            );
        }
    }

    /// The recording so far.
    pub fn recording(&self) -> Recording {
        Recording::read(&self.record).unwrap()
    }

    /// Waits until exactly `n` stand-ins have started; panics if the
    /// count does not reach `n` or goes past it.
    pub fn wait_started(&self, n: usize) {
        let mut seen = 0;
        wait_for(
            || {
                seen = self.recording().started();
                seen >= n
            },
            soon(),
        );
        assert_eq!(seen, n, "stand-ins started; log:\n{}", self.log_text());
    }

    /// Replaces the limits file as an admin should: a new file renamed
    /// over the old one. Its inode is new, and its size and modification
    /// time are made to differ from the old one's too, so whichever part
    /// of the stamp the spawner looks at, it sees a change.
    pub fn replace_limits(&self, text: &str) {
        let path = self.home.path().join(LIMITS);
        let old = fs::metadata(&path).ok();
        let mut text = text.to_string();
        if old.as_ref().is_some_and(|m| m.len() == text.len() as u64) {
            text.push_str("# resized\n");
        }
        let tmp = self.home.path().join("control/concurrencydomains.tmp");
        fs::write(&tmp, &text).unwrap();
        if let Some(old) = old.and_then(|m| m.modified().ok()) {
            let later = old + Duration::from_millis(10);
            let mtime = SystemTime::now().max(later);
            let file = fs::File::options().write(true).open(&tmp).unwrap();
            file.set_modified(mtime).unwrap();
        }
        fs::rename(&tmp, &path).unwrap();
    }

    /// The state of `key` in the status file of the shard that owns it,
    /// if that shard has published it.
    pub fn key_status(&self, key: &str) -> Option<KeyStatus> {
        let shard =
            shardspawn_common::domain::shard_for(key.as_bytes(), self.shards);
        let path =
            self.home.path().join(STATE_DIR).join(format!("shard{shard}"));
        let text = fs::read_to_string(path).ok()?;
        let status = ShardStatus::parse(&text).ok()?;
        status.keys.into_iter().find(|k| k.key == key)
    }

    /// Waits until the status of `key` satisfies `pred` (shards publish
    /// once a second); panics with the last status seen if it does not.
    pub fn wait_key(&self, key: &str, pred: impl Fn(&KeyStatus) -> bool) {
        let mut last = None;
        let ok = wait_for(
            || {
                last = self.key_status(key);
                last.as_ref().is_some_and(&pred)
            },
            soon(),
        );
        assert!(ok, "status of {key} never as expected: {last:?}");
    }
}

/// Takes the next record; panics if none comes soon.
pub fn next(emu: &mut Emulator) -> Record {
    match emu.recv(soon()) {
        Some(r) => r,
        None => panic!(
            "no record came (stream closed: {}; violations {:?})",
            emu.results_closed(),
            emu.violations()
        ),
    }
}

/// Takes the next `n` records.
pub fn next_n(emu: &mut Emulator, n: usize) -> Vec<Record> {
    (0..n).map(|_| next(emu)).collect()
}

/// Nothing has been answered yet: no record is waiting to be taken.
/// (Looks without waiting; it proves nothing about the future.)
pub fn assert_no_record_yet(emu: &mut Emulator) {
    if let Some(r) = emu.recv(Instant::now()) {
        panic!("unexpected record for delnum {}: {}", r.delnum, show(&r.body));
    }
}

/// qmail-send goes away ([`Emulator::finish`]), and every delnum is
/// answered exactly once. Returns the records taken.
pub fn finish(emu: &mut Emulator) -> Vec<Record> {
    let rest = emu.finish(Duration::from_secs(20));
    assert_eq!(emu.in_flight(), 0, "unanswered: {:?}", emu.busy_delnums());
    rest
}

/// Bytes with NUL and newlines visible, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\0', "\u{2400}")
        .replace('\n', "\\n")
}

/// A recipient for the stand-in: `u+DIRECTIVES@host`.
pub fn rcpt(directives: &[&str], host: &str) -> Vec<u8> {
    shardspawn_workshop::remote::recipient("u", directives, host)
}

/// Runs `deliveries` (at most `in_flight` at once, for up to two
/// minutes) and checks that each got exactly one result, a K; the
/// report, for what else a test wants of it.
pub fn run_all_k(
    rig: &Rig,
    emu: &mut Emulator,
    deliveries: &[shardspawn_workshop::emulator::Delivery],
    in_flight: usize,
) -> shardspawn_workshop::emulator::RunReport {
    let report =
        emu.run(deliveries, in_flight, deadline_in(Duration::from_secs(120)));
    assert!(report.is_clean(), "{:?}\n{}", report.violations, rig.log_text());
    for (d, o) in deliveries.iter().zip(&report.outcomes) {
        let Some(o) = o else {
            panic!(
                "{} has no result; log:\n{}",
                show(&d.recipient),
                rig.log_text()
            )
        };
        assert_eq!(
            o.body.first(),
            Some(&b'K'),
            "{}: {}",
            show(&d.recipient),
            show(&o.body)
        );
    }
    report
}
