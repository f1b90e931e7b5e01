//! A fresh qmail home per test: the directories and files the spawner
//! touches, under a unique temporary directory that goes away with the
//! test.
//!
//! Layout: `queue/mess/0` .. `queue/mess/22` (conf-split 23),
//! `queue/lock/tcpto` (1024 bytes of 0xFF, so a test can see the spawner
//! zero it), and an empty `control/`. Message files are written by the
//! test process, so their owner is [`QmailHome::owner_uid`], the uid a
//! test passes as the queue owner.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// qmail's conf-split: the number of `queue/mess` subdirectories.
pub const SPLIT: u64 = 23;

/// Bytes in `queue/lock/tcpto`: 64 records of 16 bytes.
pub const TCPTO_LEN: usize = 1024;

/// Set (to anything) to keep the temporary homes for a post-mortem.
pub const ENV_KEEP_TMP: &str = "SHARDSPAWN_KEEP_TMP";

/// Homes made by this process so far: part of each unique name.
static MADE: AtomicUsize = AtomicUsize::new(0);

/// The limits file, relative to the home.
pub const LIMITS: &str = "control/concurrencydomains";

/// What [`QmailHome::new`] writes there: a default limit so high that
/// nothing is limited.
pub const NO_LIMITS: &[u8] = b"# written by the test harness\n:65535\n";

/// A temporary qmail home, removed on drop unless [`ENV_KEEP_TMP`] is set.
#[derive(Debug)]
pub struct QmailHome {
    path: PathBuf,
    next_message: AtomicU64,
}

impl QmailHome {
    /// Makes a new home under `std::env::temp_dir()`.
    pub fn new() -> io::Result<QmailHome> {
        QmailHome::new_in(&std::env::temp_dir())
    }

    /// Makes a new home under `base`.
    pub fn new_in(base: &Path) -> io::Result<QmailHome> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = loop {
            let n = MADE.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "shardspawn-{}-{n}-{nanos:09}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        };
        // From here on, Drop cleans up whatever the rest leaves.
        let home = QmailHome { path, next_message: AtomicU64::new(1000) };
        for split in 0..SPLIT {
            fs::create_dir_all(home.mess_dir().join(split.to_string()))?;
        }
        fs::create_dir_all(home.path.join("queue/lock"))?;
        fs::write(home.tcpto_path(), [0xFF; TCPTO_LEN])?;
        fs::create_dir_all(home.path.join("control"))?;
        // Without a limits file every domain would be held to the
        // default of 20 at once; tests that are not about limits want
        // none, and tests that are write their own (or remove this).
        fs::write(home.path.join(LIMITS), NO_LIMITS)?;
        Ok(home)
    }

    /// The home directory (what `SHARDSPAWN_HOME` should name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `queue/mess`, the spawner's working directory.
    pub fn mess_dir(&self) -> PathBuf {
        self.path.join("queue/mess")
    }

    /// `queue/lock/tcpto`.
    pub fn tcpto_path(&self) -> PathBuf {
        self.path.join("queue/lock/tcpto")
    }

    /// The file of message `messid` (`split/number`).
    pub fn message_path(&self, messid: &str) -> PathBuf {
        self.mess_dir().join(messid)
    }

    /// Writes a message file and returns its message id, `split/number`:
    /// numbers count up from 1000, split is number mod 23, as qmail
    /// derives it from the inode number.
    ///
    /// Panics if the file cannot be written: the test cannot go on.
    pub fn add_message(&self, body: &[u8]) -> String {
        let number = self.next_message.fetch_add(1, Ordering::Relaxed);
        let messid = format!("{}/{number}", number % SPLIT);
        let path = self.message_path(&messid);
        if let Err(e) = fs::write(&path, body) {
            panic!("unable to write message {}: {e}", path.display());
        }
        messid
    }

    /// Writes `bytes` to `rel` (relative to the home), creating parent
    /// directories. Returns the full path.
    pub fn write_file(
        &self,
        rel: impl AsRef<Path>,
        bytes: &[u8],
    ) -> io::Result<PathBuf> {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes)?;
        Ok(path)
    }

    /// Reads `rel` (relative to the home).
    pub fn read_file(&self, rel: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        fs::read(self.path.join(rel))
    }

    /// The uid that owns the files here: the test process's, which made
    /// them. Tests pass it as the spawner's queue owner.
    pub fn owner_uid(&self) -> u32 {
        fs::metadata(&self.path)
            .map_or_else(|_| nix::unistd::geteuid().as_raw(), |m| m.uid())
    }
}

impl Drop for QmailHome {
    fn drop(&mut self) {
        if std::env::var_os(ENV_KEEP_TMP).is_some() {
            eprintln!("shardspawn-harness: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let home = QmailHome::new().unwrap();
        for split in 0..SPLIT {
            assert!(home.mess_dir().join(split.to_string()).is_dir());
        }
        assert!(!home.mess_dir().join("23").exists());
        assert_eq!(fs::read(home.tcpto_path()).unwrap(), [0xFF; TCPTO_LEN]);
        assert!(home.path().join("control").is_dir());
        assert_eq!(home.owner_uid(), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn messages_are_numbered_and_split() {
        let home = QmailHome::new().unwrap();
        assert_eq!(home.add_message(b"one"), "11/1000");
        assert_eq!(home.add_message(b"two"), "12/1001");
        assert_eq!(fs::read(home.mess_dir().join("11/1000")).unwrap(), b"one");
        assert_eq!(
            fs::metadata(home.message_path("12/1001")).unwrap().uid(),
            home.owner_uid()
        );
    }

    #[test]
    fn homes_are_unique_and_removed() {
        let a = QmailHome::new().unwrap();
        let b = QmailHome::new().unwrap();
        assert_ne!(a.path(), b.path());
        let path = a.path().to_path_buf();
        if std::env::var_os(ENV_KEEP_TMP).is_none() {
            drop(a);
            assert!(!path.exists());
        }
    }

    #[test]
    fn files_under_the_home() {
        let home = QmailHome::new().unwrap();
        let p = home.write_file("control/me", b"me.test\n").unwrap();
        assert_eq!(p, home.path().join("control/me"));
        home.write_file("a/b/c", b"x").unwrap();
        assert_eq!(home.read_file("a/b/c").unwrap(), b"x");
    }
}
