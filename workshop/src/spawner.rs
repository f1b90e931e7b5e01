//! The spawner under test, set up the one way every end-to-end test
//! sets it up: [`Spawner`] builds the `shardspawn` command as
//! qmail-start runs it for one [`QmailHome`] and starts it under the
//! [`Emulator`].
//!
//! What every test sets, it sets: a cleared environment, the home, the
//! queue owner (the owner of the home's files), QMAILREMOTE (the
//! stand-in), the shard count, the framing, configured limits from the
//! first delivery (`SHARDSPAWN_INITIAL_LIMIT=0`: adaptation, issue 7,
//! would start each key at 5, and only the tests about it want that),
//! and always a state directory inside the home ([`STATE_DIR`]). What
//! only some tests want (slots, the stand-in's recording and gate, a
//! log file, any other setting) is one builder call each.
//!
//! [`Stage`] is the other half most tests repeat: a fresh home with
//! the stand-in's gate (closed) and recording in it, so that a test can
//! hold deliveries at the gate and count them from the recording.
//!
//! The state directory is not optional: without it the binary writes
//! its status files into the host's `/run/shardspawn`, shared by every
//! test and every engineer on the machine, and leaves them there.
//! [`Spawner::status_file`] names where the supervisor's status must
//! appear instead, and `tests/state_stays_in_the_home.rs` checks that
//! it does.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use shardspawn_common::command::DelnumWidth;

use crate::emulator::{Emulator, Options, Stderr};
use crate::home::QmailHome;
use crate::recorder::Recording;
use crate::remote::{ENV_GATE, ENV_RECORD, Gate};
use crate::util::{bin_path, wait_for};

/// The state directory, relative to the home.
pub const STATE_DIR: &str = "state";

/// Where the binary puts its status files when told nothing: the host's,
/// which no test may write to.
pub const HOST_STATE_DIR: &str = "/run/shardspawn";

/// How to run one `shardspawn` for a test (see the module doc).
#[derive(Clone, Debug)]
pub struct Spawner<'h> {
    home: &'h QmailHome,
    width: DelnumWidth,
    env: Vec<(OsString, OsString)>,
    opts: Options,
}

impl<'h> Spawner<'h> {
    /// `shardspawn` for `home` in framing `width` with `shards` shards,
    /// fd 2 closed, and nothing else set but what every test sets (sites
    /// off: keys are domains unless a test sets `SHARDSPAWN_SITES=1` and
    /// its own `SHARDSPAWN_DNS`).
    pub fn new(
        home: &'h QmailHome,
        width: DelnumWidth,
        shards: u16,
    ) -> Spawner<'h> {
        let s =
            Spawner { home, width, env: Vec::new(), opts: Options::default() };
        s.env("SHARDSPAWN_HOME", home.path())
            .env("SHARDSPAWN_INITIAL_LIMIT", "0")
            .env("SHARDSPAWN_QUEUE_OWNER", home.owner_uid().to_string())
            .env("QMAILREMOTE", bin_path("shardspawn-fake-remote"))
            .env("SHARDSPAWN_SHARDS", shards.to_string())
            .env("SHARDSPAWN_DELNUM_BYTES", width.bytes().to_string())
            .env("SHARDSPAWN_STATE_DIR", state_dir(home))
            // No DNS here: a test of sites names its own server.
            .env("SHARDSPAWN_SITES", "0")
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn env(
        mut self,
        key: impl AsRef<OsStr>,
        value: impl AsRef<OsStr>,
    ) -> Spawner<'h> {
        let key = key.as_ref().to_os_string();
        let value = value.as_ref().to_os_string();
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => self.env.push((key, value)),
        }
        self
    }

    /// `SHARDSPAWN_SLOTS`.
    pub fn slots(self, slots: impl ToString) -> Spawner<'h> {
        self.env("SHARDSPAWN_SLOTS", slots.to_string())
    }

    /// The stand-in appends its start and end to `record`.
    pub fn record(self, record: &Path) -> Spawner<'h> {
        self.env(ENV_RECORD, record)
    }

    /// The stand-in waits at `gate` before it answers.
    pub fn gate(self, gate: &Gate) -> Spawner<'h> {
        self.env(ENV_GATE, gate.path())
    }

    /// The spawner's fd 2 is appended to `log`.
    pub fn log(mut self, log: &Path) -> Spawner<'h> {
        self.opts.stderr = Stderr::File(log.to_path_buf());
        self
    }

    /// The emulator's options (these replace an earlier [`Spawner::log`]).
    pub fn options(mut self, opts: Options) -> Spawner<'h> {
        self.opts = opts;
        self
    }

    /// The framing.
    pub fn width(&self) -> DelnumWidth {
        self.width
    }

    /// The state directory the spawner is told to use.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(self.home)
    }

    /// Where the supervisor's status file must appear.
    pub fn status_file(&self) -> PathBuf {
        self.state_dir().join("supervisor")
    }

    /// The command, for a test that adds to it or runs it itself: no
    /// arguments, and only the settings above in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path("shardspawn"));
        cmd.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts [`Spawner::command`] under the emulator, which reads the
    /// announcement.
    pub fn start(&self) -> io::Result<Emulator> {
        self.start_command(self.command())
    }

    /// Starts `cmd` (made by [`Spawner::command`], then changed) under
    /// the emulator with this spawner's framing and options.
    pub fn start_command(&self, cmd: Command) -> io::Result<Emulator> {
        Emulator::start(cmd, self.width, self.opts.clone())
    }
}

/// A fresh home with the stand-in's gate, closed, at `gate` and its
/// recording at `recording` in it.
#[derive(Debug)]
pub struct Stage {
    /// The qmail home.
    pub home: QmailHome,
    /// The stand-in's gate, closed at first.
    pub gate: Gate,
    /// The stand-ins' recording.
    pub record: PathBuf,
}

impl Stage {
    /// Makes the home and closes the gate; panics if it cannot, as the
    /// test cannot go on.
    pub fn new() -> Stage {
        let home = QmailHome::new()
            .unwrap_or_else(|e| panic!("unable to make a home: {e}"));
        let gate = Gate::closed(home.path().join("gate"))
            .unwrap_or_else(|e| panic!("unable to close the gate: {e}"));
        let record = home.path().join("recording");
        Stage { home, gate, record }
    }

    /// The fixture for this home in framing `width` with `shards`
    /// shards, the stand-in told of the gate and the recording.
    pub fn spawner(&self, width: DelnumWidth, shards: u16) -> Spawner<'_> {
        Spawner::new(&self.home, width, shards)
            .gate(&self.gate)
            .record(&self.record)
    }

    /// The recording so far; panics if it cannot be read.
    pub fn recording(&self) -> Recording {
        Recording::read(&self.record).unwrap_or_else(|e| {
            panic!("unable to read {}: {e}", self.record.display())
        })
    }

    /// Waits until at least `n` stand-ins have started; panics, saying
    /// how many did, if they have not by `deadline`.
    pub fn wait_started(&self, n: usize, deadline: Instant) {
        let mut seen = 0;
        let ok = wait_for(
            || {
                seen = self.recording().started();
                seen >= n
            },
            deadline,
        );
        assert!(ok, "{seen} of {n} stand-ins started");
    }
}

impl Default for Stage {
    fn default() -> Stage {
        Stage::new()
    }
}

/// The state directory of `home`.
pub fn state_dir(home: &QmailHome) -> PathBuf {
    home.path().join(STATE_DIR)
}

/// Whether a supervisor status file's text names process `pid`.
pub fn status_names_pid(text: &str, pid: u32) -> bool {
    text.lines().any(|l| l.strip_prefix("pid ") == Some(&pid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_text_names_its_pid() {
        let text = "shardspawn-status 1 supervisor\npid 13090\nstarted 1\n";
        assert!(status_names_pid(text, 13090));
        assert!(!status_names_pid(text, 1309));
        assert!(!status_names_pid(text, 130900));
    }
}
