//! Everything before the announcement: settings, qmail-rspawn's startup
//! duties, limits, and how many slots this machine can really serve.
//! Any failure here exits without announcing, which qmail-send logs as
//! "hath the daemon spawn no fire?".

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Uid, User};

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::limits::{Limits, LimitsError};
use shardspawn_common::response::Responses;
use shardspawn_common::settings::{QueueOwner, Settings};
use shardspawn_common::shard_config::ShardConfig;
use shardspawn_os::log::Log;

/// Most bytes of a command field we keep; a longer field is answered
/// with qmail's out-of-memory deferral. Addresses are far shorter.
pub const FIELD_LIMIT: usize = 16 * 1024;

/// Descriptors a shard keeps for itself (stdio, epoll, signalfd, the
/// transient message file and pipe ends of a start in progress).
const FD_RESERVE: u64 = 32;

/// Processes kept back from the process limit (shards, supervisor,
/// whatever else the qmailr user runs).
const PROC_RESERVE: u64 = 16;

/// Why startup failed; chooses the exit code.
#[derive(Debug)]
pub enum Fatal {
    /// A setting is wrong: exit 100, retrying will not help.
    Config(String),
    /// The machine said no (chdir, lookup): exit 111.
    Temporary(String),
}

impl Fatal {
    /// The exit code.
    pub fn code(&self) -> i32 {
        match self {
            Fatal::Config(_) => 100,
            Fatal::Temporary(_) => 111,
        }
    }
    /// The text for the log.
    pub fn text(&self) -> &str {
        match self {
            Fatal::Config(s) | Fatal::Temporary(s) => s,
        }
    }
}

/// What identifies one version of the limits file, to notice a change:
/// inode, size and modification time, or `None` while it is absent.
pub type Stamp = Option<(u64, u64, i64, i64)>;

/// The stamp of the file at `path` now.
pub fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A control file in force (the limits or the response rules), and
/// where it came from.
#[derive(Clone, Debug)]
pub struct Source<T> {
    /// The file.
    pub path: PathBuf,
    /// Its stamp when read.
    pub stamp: Stamp,
    /// What it said (empty when absent): sent to every shard.
    pub text: Vec<u8>,
    /// Parsed.
    pub parsed: T,
}

/// The limits in force.
pub type LimitsSource = Source<Limits>;

/// The response rules in force.
pub type ResponsesSource = Source<Responses>;

impl<T> Source<T> {
    /// Reads the file; absent is the same as empty.
    pub fn read(
        path: &Path,
        parse: fn(&[u8]) -> Result<T, LimitsError>,
    ) -> Result<Source<T>, String> {
        let stamp = stamp(path);
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(format!("unable to read {}: {e}", path.display()));
            }
        };
        let parsed =
            parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Source { path: path.to_path_buf(), stamp, text, parsed })
    }
}

/// The resolved run-time configuration.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// How qmail-send frames delnums.
    pub width: DelnumWidth,
    /// Slots announced (and the delnum bound).
    pub slots: u32,
    /// Shard processes.
    pub shards: u16,
    /// What each shard is told, but its index.
    pub shard: ShardConfig,
    /// The per-destination limits.
    pub limits: LimitsSource,
    /// The response rules.
    pub responses: ResponsesSource,
    /// Where the supervisor publishes its status, if it can.
    pub state_dir: Option<PathBuf>,
}

/// Where the logs go: the log directory (absolute) and the logger.
#[derive(Clone, Debug, Default)]
pub struct LogSetup {
    /// `SHARDSPAWN_LOG_DIR`, made absolute; `None`: fd 2.
    pub dir: Option<PathBuf>,
    /// The logger's argv (the role's directory is appended).
    pub logger: Vec<OsString>,
}

/// Starts the supervisor's own logger in `DIR/supervisor`, if a log
/// directory is set; done first, so every later line reaches it.
pub fn start_logging(settings: &Settings) -> Result<LogSetup, Fatal> {
    let Some(dir) = &settings.log_dir else { return Ok(LogSetup::default()) };
    let dir = std::path::absolute(dir).map_err(|e| {
        Fatal::Temporary(format!("unable to find {}: {e}", dir.display()))
    })?;
    let logger = shardspawn_os::log::choose_logger(settings.logger.as_deref())
        .ok_or_else(|| {
            Fatal::Config(
                "SHARDSPAWN_LOG_DIR is set, but neither multilog nor svlogd \
                 is in PATH: name a logger with SHARDSPAWN_LOGGER"
                    .to_string(),
            )
        })?;
    shardspawn_os::log::start_logger(&dir.join("supervisor"), &logger)
        .map_err(|e| {
            Fatal::Temporary(format!(
                "unable to start the logger {} in {}: {e}",
                logger[0].display(),
                dir.join("supervisor").display()
            ))
        })?;
    Ok(LogSetup { dir: Some(dir), logger })
}

/// Does qmail-rspawn's startup duties and resolves the settings. On
/// success the working directory is `HOME/queue/mess`.
pub fn prepare(
    settings: &Settings,
    logs: &LogSetup,
    log: &Log,
) -> Result<Runtime, Fatal> {
    let home = std::path::absolute(&settings.home).map_err(|e| {
        Fatal::Temporary(format!(
            "unable to find {}: {e}",
            settings.home.display()
        ))
    })?;
    let home = &home;
    std::env::set_current_dir(home)
        .and_then(|()| std::env::set_current_dir("queue/mess"))
        .map_err(|e| {
            Fatal::Temporary(format!(
                "unable to chdir to {}/queue/mess: {e}",
                home.display()
            ))
        })?;
    let owner_uid = match &settings.queue_owner {
        QueueOwner::Uid(uid) => *uid,
        QueueOwner::Name(name) => match User::from_name(name) {
            Ok(Some(user)) => user.uid.as_raw(),
            Ok(None) => {
                return Err(Fatal::Temporary(format!(
                    "unable to find user {name}"
                )));
            }
            Err(e) => {
                return Err(Fatal::Temporary(format!(
                    "unable to look up user {name}: {e}"
                )));
            }
        },
    };
    clean_tcpto(Path::new("../lock/tcpto"));

    // Relative to the home, like every qmail control file; the home is
    // made absolute first, as the working directory is queue/mess now.
    let limits_path =
        Settings { home: home.clone(), ..settings.clone() }.limits_path();
    let fatal = |e: String| {
        if e.starts_with("unable to read") {
            Fatal::Temporary(e)
        } else {
            Fatal::Config(e)
        }
    };
    let limits =
        LimitsSource::read(&limits_path, Limits::parse).map_err(fatal)?;
    log.info(format_args!(
        "limits from {}{}: default {}, {} rules",
        limits_path.display(),
        if limits.stamp.is_none() { " (absent)" } else { "" },
        limits.parsed.default_limit(),
        limits.parsed.rules().count()
    ));
    let responses_path =
        Settings { home: home.clone(), ..settings.clone() }.responses_path();
    let responses = ResponsesSource::read(&responses_path, Responses::parse)
        .map_err(fatal)?;
    log.info(format_args!(
        "response rules from {}{}: {} of the file, {} built in; {}",
        responses_path.display(),
        if responses.stamp.is_none() { " (absent)" } else { "" },
        responses.parsed.from_file(),
        responses.parsed.rules().len() - responses.parsed.from_file(),
        if settings.initial_limit == 0 {
            "no adaptation".to_owned()
        } else {
            format!("keys start at {}", settings.initial_limit)
        }
    ));
    let state_dir = home.join(&settings.state_dir);
    let state_dir = match std::fs::create_dir_all(&state_dir) {
        Ok(()) => Some(state_dir),
        Err(e) => {
            log.warn(format_args!(
                "unable to create the state directory {}: {e}; no status \
                 will be published",
                state_dir.display()
            ));
            None
        }
    };

    let nofile = raise(Resource::RLIMIT_NOFILE, "open files", log);
    let nproc = raise(Resource::RLIMIT_NPROC, "processes", log);

    let shards = settings.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX).min(1024))
            .unwrap_or(1)
    });
    let requested = settings.requested_slots();

    // Each running delivery holds one descriptor in its shard (the read
    // end of its output pipe); a shard never runs more than its
    // descriptors allow, and deliveries past that wait in the shard.
    let per_shard_fds = nofile.saturating_sub(FD_RESERVE).max(1);
    // Every running delivery is one process of this user.
    let procs = if Uid::current().is_root() || nproc == u64::MAX {
        u64::MAX
    } else {
        let used = processes_of(Uid::current().as_raw());
        nproc.saturating_sub(used + u64::from(shards) + PROC_RESERVE).max(1)
    };
    let by_fds = per_shard_fds.saturating_mul(u64::from(shards));
    let mut slots = u64::from(requested);
    for (bound, why) in [
        (by_fds, "the open-files limit of the shards"),
        (procs, "the process limit of this user"),
    ] {
        if bound < slots {
            log.warn(format_args!(
                "announcing {bound} slots, not {slots}: {why} allows no more"
            ));
            slots = bound;
        }
    }
    let slots = u32::try_from(slots).unwrap_or(u32::MAX).max(1);
    // A cap that was set is kept as an equal share per shard: the sum
    // never exceeds it, and no shard has to ask another for room. With
    // none, the slots are the cap: qmail-send never has more in flight,
    // so any shard may run them all. (A share of the slots would hold
    // the shard of a big domain to 1/N of them, and defer the rest.)
    let max_running = match settings.max_running {
        Some(cap) => cap.div_ceil(u32::from(shards)),
        None => slots,
    }
    .max(1)
    .min(u32::try_from(per_shard_fds).unwrap_or(u32::MAX))
    .min(u32::try_from(procs).unwrap_or(u32::MAX));

    let remote = settings
        .remote
        .clone()
        .unwrap_or_else(|| OsString::from("qmail-remote"));
    Ok(Runtime {
        width: settings.delnum_width,
        slots,
        shards,
        shard: ShardConfig {
            index: 0,
            remote,
            owner_uid,
            max_running,
            hold: settings.hold,
            hold_max: settings.hold_max,
            state_dir: state_dir.clone(),
            log_dir: logs.dir.clone(),
            logger: logs.logger.clone(),
            initial_limit: settings.initial_limit,
            suspend_after: settings.suspend_after,
            suspend: settings.suspend,
        },
        limits,
        responses,
        state_dir,
    })
}

/// Forgets every remembered TCP timeout, as qmail-rspawn does at start:
/// 1024 zero bytes at offset 0 of an existing `queue/lock/tcpto`, no
/// create, no truncate, no lock, every error ignored.
fn clean_tcpto(path: &Path) {
    let Ok(mut file) = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    else {
        return;
    };
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.write_all(&[0u8; 1024]);
}

/// Raises a soft limit to its hard limit; returns the soft limit now in
/// force (`u64::MAX` for unlimited).
fn raise(resource: Resource, what: &str, log: &Log) -> u64 {
    match getrlimit(resource) {
        Ok((soft, hard)) => {
            if soft < hard
                && let Err(e) = setrlimit(resource, hard, hard)
            {
                log.warn(format_args!(
                    "unable to raise the {what} limit from {soft} to {hard}: {e}"
                ));
                return soft;
            }
            hard
        }
        Err(e) => {
            log.warn(format_args!("unable to read the {what} limit: {e}"));
            1024
        }
    }
}

/// How many processes `uid` runs now (what RLIMIT_NPROC counts).
fn processes_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}
