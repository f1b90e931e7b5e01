//! Everything before the announcement: settings, qmail-rspawn's startup
//! duties, limits, and how many slots this machine can really serve.
//! Any failure here exits without announcing, which qmail-send logs as
//! "hath the daemon spawn no fire?".

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{FileType, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Uid, User};

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::control::{self, ControlError};
use shardspawn_common::limits::Limits;
use shardspawn_common::lookup::ResolverConfig;
use shardspawn_common::response::Responses;
use shardspawn_common::routes::Routes;
use shardspawn_common::settings::{self, QueueOwner, Settings, SettingsError};
use shardspawn_common::shard_config::{FleetSettings, ShardConfig};
use shardspawn_os::log::Log;
use shardspawn_os::sys;

/// Most bytes of a command field we keep; a longer field is answered
/// with qmail's out-of-memory deferral. Addresses are far shorter.
pub const FIELD_LIMIT: usize = 16 * 1024;

/// Descriptors a shard keeps for itself (stdio, epoll, signalfd, the
/// transient message file and pipe ends of a start in progress).
const FD_RESERVE: u64 = 32;

/// Processes kept back from the process limit (shards, supervisor,
/// whatever else the qmailr user runs).
const PROC_RESERVE: u64 = 16;

/// A control file (the limits, the response rules) that cannot be used,
/// which file, and why; the variant chooses the exit code.
#[derive(Debug)]
pub enum ControlFileError {
    /// It could not be read (but is not absent): the machine said no,
    /// so 111; it may read next time.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// It was named (on a command line) and is not there: 111, as a
    /// file that may yet appear.
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// It is not a regular file (nor a link to one): a FIFO would hang
    /// its reader and a device never ends, so it is not read at all.
    /// The admin's to fix, so 100.
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead, as a noun: "a FIFO".
        what: &'static str,
    },
    /// It holds more than [`control::MAX_FILE`] bytes, the most a shard
    /// takes in one frame: 100.
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line does not parse: the admin's to fix, so 100.
    Parse {
        /// The file.
        path: PathBuf,
        /// The line and why.
        error: ControlError,
    },
}

impl ControlFileError {
    /// The exit code: 111 to try again, 100 for a bad file.
    pub fn code(&self) -> i32 {
        match self {
            ControlFileError::Read { .. }
            | ControlFileError::Missing { .. } => 111,
            ControlFileError::NotRegular { .. }
            | ControlFileError::TooLarge { .. }
            | ControlFileError::Parse { .. } => 100,
        }
    }
}

impl fmt::Display for ControlFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlFileError::Read { path, error } => {
                write!(f, "unable to read {}: {error}", path.display())
            }
            ControlFileError::Missing { path } => {
                write!(f, "{}: no such file", path.display())
            }
            ControlFileError::NotRegular { path, what } => {
                write!(f, "{}: is {what}, not a regular file", path.display())
            }
            ControlFileError::TooLarge { path } => write!(
                f,
                "{}: over {} bytes ({} MiB), the most a control file may \
                 hold",
                path.display(),
                control::MAX_FILE,
                control::MAX_FILE >> 20
            ),
            ControlFileError::Parse { path, error } => {
                write!(f, "{}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ControlFileError {}

/// Reads a control file: its bytes, or `None` when it is absent. The one
/// way every control file is read (at startup, on reload, and by the
/// `limits` commands), so that what `limits check` passes the
/// supervisor takes, and what the supervisor takes every shard takes.
///
/// Only a regular file is read (through a symlink, as qmail admins
/// like), and at most [`control::MAX_FILE`] bytes of it: the supervisor
/// reads it inside its event loop, where a FIFO with no writer would
/// stop every delivery and `/dev/zero` would take all memory.
pub fn read_control(path: &Path) -> Result<Option<Vec<u8>>, ControlFileError> {
    let failed =
        |error| ControlFileError::Read { path: path.to_path_buf(), error };
    // O_NONBLOCK, so that opening a FIFO does not wait for a writer (it
    // changes nothing for a regular file); O_NOCTTY, so that a terminal
    // named by mistake is not made ours.
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed(error)),
    };
    let meta = file.metadata().map_err(failed)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        // As reading one always said: EISDIR, 111, as a directory in
        // the file's place may be a file again next time.
        let error =
            io::Error::from_raw_os_error(nix::errno::Errno::EISDIR as i32);
        return Err(failed(error));
    }
    if !kind.is_file() {
        let what = not_regular(kind);
        return Err(ControlFileError::NotRegular {
            path: path.to_path_buf(),
            what,
        });
    }
    let too_large = || ControlFileError::TooLarge { path: path.to_path_buf() };
    let cap = control::MAX_FILE as u64;
    if meta.len() > cap {
        return Err(too_large());
    }
    // A file that grows while it is read is held to the cap as well.
    let mut text = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut text).map_err(failed)?;
    if text.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(Some(text))
}

/// What a file that is not a regular file (nor a directory) is.
fn not_regular(kind: FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

/// Why startup failed, one variant per step; the variant chooses the
/// exit code (STYLE habit 5): 100 when a setting or file is wrong and
/// retrying will not help, 111 when the machine said no.
#[derive(Debug)]
pub enum Fatal {
    /// A setting did not parse: 100.
    Setting(SettingsError),
    /// The log directory could not be made absolute: 111.
    LogDir {
        /// As set.
        dir: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A log directory is set but no logger can be found: 100.
    NoLogger,
    /// The logger did not start: 111.
    Logger {
        /// Its program.
        program: OsString,
        /// The directory it was to log into.
        dir: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The home could not be made absolute: 111.
    Home {
        /// As set.
        home: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// No `HOME/queue/mess` to work in: 111.
    Queue {
        /// The home, absolute.
        home: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The queue owner is no user (yet): 111, as qmail-rspawn.
    NoQueueOwner(String),
    /// The queue owner could not be looked up: 111.
    QueueOwnerLookup {
        /// The user name.
        name: String,
        /// Why.
        error: nix::errno::Errno,
    },
    /// The limits file: as its error says.
    Limits(ControlFileError),
    /// The response rules file: as its error says.
    Responses(ControlFileError),
    /// The state directory is not ours alone: 100, as it stays so until
    /// an admin changes it, and status written there could be replaced
    /// or read by whoever else may write it.
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: UnsafeDir,
    },
}

/// Why a state directory that exists is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsafeDir {
    /// It is not a directory.
    NotADirectory,
    /// Another user owns it: uid.
    Owner(u32),
    /// Its group or everyone may write in it: its mode.
    Writable(u32),
}

impl UnsafeDir {
    /// What is wrong with a state directory of owner `uid` and `mode`
    /// for a process of user `euid`, if anything.
    pub fn judge(
        is_dir: bool,
        uid: u32,
        mode: u32,
        euid: u32,
    ) -> Option<Self> {
        if !is_dir {
            Some(UnsafeDir::NotADirectory)
        } else if uid != euid {
            Some(UnsafeDir::Owner(uid))
        } else if mode & 0o022 != 0 {
            Some(UnsafeDir::Writable(mode & 0o7777))
        } else {
            None
        }
    }
}

impl Fatal {
    /// The exit code.
    pub fn code(&self) -> i32 {
        match self {
            Fatal::Setting(_) | Fatal::NoLogger => 100,
            Fatal::LogDir { .. }
            | Fatal::Logger { .. }
            | Fatal::Home { .. }
            | Fatal::Queue { .. }
            | Fatal::NoQueueOwner(_)
            | Fatal::QueueOwnerLookup { .. } => 111,
            Fatal::Limits(e) | Fatal::Responses(e) => e.code(),
            Fatal::StateDir { .. } => 100,
        }
    }
}

/// The text for the log, after `fatal: `.
impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Setting(e) => write!(f, "bad setting: {e}"),
            Fatal::LogDir { dir, error }
            | Fatal::Home { home: dir, error } => {
                write!(f, "unable to find {}: {error}", dir.display())
            }
            Fatal::NoLogger => f.write_str(
                "SHARDSPAWN_LOG_DIR is set, but neither multilog nor svlogd \
                 is in PATH: name a logger with SHARDSPAWN_LOGGER",
            ),
            Fatal::Logger { program, dir, error } => write!(
                f,
                "unable to start the logger {} in {}: {error}",
                program.display(),
                dir.display()
            ),
            Fatal::Queue { home, error } => write!(
                f,
                "unable to chdir to {}/queue/mess: {error}",
                home.display()
            ),
            Fatal::NoQueueOwner(name) => {
                write!(f, "unable to find user {name}")
            }
            Fatal::QueueOwnerLookup { name, error } => {
                write!(f, "unable to look up user {name}: {error}")
            }
            Fatal::Limits(e) | Fatal::Responses(e) => e.fmt(f),
            Fatal::StateDir { dir, why } => {
                let dir = dir.display();
                match why {
                    UnsafeDir::NotADirectory => write!(
                        f,
                        "unsafe state directory {dir}: not a directory"
                    ),
                    UnsafeDir::Owner(uid) => write!(
                        f,
                        "unsafe state directory {dir}: owned by uid {uid}, \
                         not by uid {} that runs shardspawn",
                        Uid::effective()
                    ),
                    UnsafeDir::Writable(mode) => write!(
                        f,
                        "unsafe state directory {dir}: mode {mode:04o} lets \
                         others write in it; make it 0750"
                    ),
                }
            }
        }
    }
}

impl std::error::Error for Fatal {}

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

/// qmail-remote's `control/smtproutes` as read to find sites.
pub type RoutesSource = Source<Routes>;

/// Where smtproutes is, under the home, as qmail-remote reads it.
pub const ROUTES: &str = "control/smtproutes";

impl<T> Source<T> {
    /// Reads the file; absent is the same as empty.
    pub fn read(
        path: &Path,
        parse: fn(&[u8]) -> Result<T, ControlError>,
    ) -> Result<Source<T>, ControlFileError> {
        let stamp = stamp(path);
        let text = read_control(path)?.unwrap_or_default();
        let parsed = parse(&text).map_err(|error| {
            ControlFileError::Parse { path: path.to_path_buf(), error }
        })?;
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
    /// The fleet's Redis, put in each shard's environment (never on its
    /// command line, which anyone may read) and no other child's.
    pub redis: Option<settings::RedisUrl>,
    /// The per-destination limits.
    pub limits: LimitsSource,
    /// The response rules.
    pub responses: ResponsesSource,
    /// Where the supervisor publishes its status, if it can.
    pub state_dir: Option<PathBuf>,
    /// Domains are grouped by site (issue 16).
    pub sites: bool,
    /// The longest a delivery waits for DNS.
    pub dns_wait: Duration,
    /// What the resolver process is told.
    pub resolver: ResolverConfig,
    /// qmail-remote's routes, which come before MX.
    pub routes: RoutesSource,
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
    let dir = std::path::absolute(dir)
        .map_err(|error| Fatal::LogDir { dir: dir.clone(), error })?;
    let logger = shardspawn_os::log::choose_logger(settings.logger.as_deref())
        .ok_or(Fatal::NoLogger)?;
    shardspawn_os::log::start_logger(&dir.join("supervisor"), &logger)
        .map_err(|error| Fatal::Logger {
            program: logger[0].clone(),
            dir: dir.join("supervisor"),
            error,
        })?;
    Ok(LogSetup { dir: Some(dir), logger })
}

/// `SHARDSPAWN_SHARDS` when unset: the number of CPUs this process may
/// run on, at most [`settings::SHARDS_MAX`]; the one default that needs
/// the machine, so it is resolved here rather than in `settings`.
pub fn default_shards() -> u16 {
    std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX))
        .unwrap_or(1)
        .min(settings::SHARDS_MAX)
}

/// Does qmail-rspawn's startup duties and resolves the settings. On
/// success the working directory is `HOME/queue/mess`.
pub fn prepare(
    settings: &Settings,
    logs: &LogSetup,
    log: &Log,
) -> Result<Runtime, Fatal> {
    // Before the queue: a relative CA path is the caller's, not
    // queue/mess's.
    let ca = redis_ca(settings)?;
    let home = enter_queue(&settings.home)?;
    let owner_uid = queue_owner_uid(&settings.queue_owner)?;
    clean_tcpto(Path::new("../lock/tcpto"));
    let (limits, responses) = read_controls(settings, &home, log)?;
    let fleet = join_fleet(settings, ca, &limits.parsed, log)?;
    let routes = read_routes(&home, log);
    // Checked here, in queue/mess, where the shards will run it.
    remote_runs(settings)?;
    let state_dir = state_dir(&home.join(&settings.state_dir), log)?;
    let shards = settings.shards.unwrap_or_else(default_shards);
    if let Some(dir) = &state_dir {
        remove_earlier_status(dir, shards, log);
    }
    let (slots, max_running) = capacity(settings, shards, log);
    let remote = settings
        .remote
        .clone()
        .unwrap_or_else(|| OsString::from(settings::DEFAULT_REMOTE));
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
            metrics_keys: settings.metrics_keys,
            fleet,
        },
        redis: settings.fleet.as_ref().map(|f| f.redis.clone()),
        limits,
        responses,
        state_dir,
        sites: settings.sites,
        dns_wait: settings.dns_wait,
        resolver: ResolverConfig {
            servers: settings.dns.clone(),
            timeout: settings.dns_wait,
        },
        routes,
    })
}

/// Where Linux keeps the host name, a relay's name in its fleet unless
/// `SHARDSPAWN_FLEET_NAME` says otherwise. Read here rather than asked
/// of uname(2), which nix gives only with a feature we do not build.
const HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// What the shards are told of the fleet (issue 18), `None` without
/// Redis (the address goes to them apart: [`Runtime::redis`]). Logs one
/// line either way, if there is something to say.
fn join_fleet(
    settings: &Settings,
    ca: Option<PathBuf>,
    limits: &Limits,
    log: &Log,
) -> Result<Option<FleetSettings>, Fatal> {
    let shared = limits.shared_rules();
    let Some(fleet) = &settings.fleet else {
        if shared > 0 {
            log.warn(format_args!(
                "limits file names shared keys but SHARDSPAWN_REDIS is \
                 unset: they are kept by this relay alone"
            ));
        }
        return Ok(None);
    };
    let told = fleet_settings(fleet, ca, || std::fs::read(HOSTNAME))?;
    log.info(format_args!("{}", fleet_line(fleet, &told, shared)));
    Ok(Some(told))
}

/// `SHARDSPAWN_REDIS_CA`, if set: made absolute (the shards run
/// elsewhere) and checked as the shards' TLS client will read it, so
/// that a CA it would refuse stops the relay now (a bad setting, 100)
/// rather than leave every shard alone in its fleet for good.
fn redis_ca(settings: &Settings) -> Result<Option<PathBuf>, Fatal> {
    let Some(ca) = settings.fleet.as_ref().and_then(|f| f.ca.as_ref()) else {
        return Ok(None);
    };
    let bad = |why: String| {
        Fatal::Setting(SettingsError {
            source: "SHARDSPAWN_REDIS_CA".to_owned(),
            value: ca.display().to_string(),
            why,
        })
    };
    let path = std::path::absolute(ca)
        .map_err(|e| bad(format!("unable to make it absolute: {e}")))?;
    let pem = std::fs::read(&path)
        .map_err(|e| bad(format!("unable to read it: {e}")))?;
    check_ca(&pem).map_err(|why| bad(format!("not a CA file: {why}")))?;
    Ok(Some(path))
}

/// At least one CA certificate, in PEM, that the TLS client takes.
#[cfg(feature = "tls")]
fn check_ca(pem: &[u8]) -> Result<(), String> {
    shardspawn_fleet::ca_certificates(pem).map(drop)
}

/// Without TLS the settings refuse `rediss://`, and so any CA.
#[cfg(not(feature = "tls"))]
fn check_ca(_: &[u8]) -> Result<(), String> {
    Err("rediss:// (TLS) is not built in".to_owned())
}

/// The fleet's settings for the shards, with the checked CA path `ca`;
/// the relay's name, when not set, is the host name `host` reads (a
/// trailing newline dropped), which must pass as a name would.
fn fleet_settings(
    fleet: &settings::Fleet,
    ca: Option<PathBuf>,
    host: impl FnOnce() -> io::Result<Vec<u8>>,
) -> Result<FleetSettings, Fatal> {
    let name = match &fleet.name {
        Some(name) => name.clone(),
        None => {
            let unnamed = |why: String| {
                Fatal::Setting(SettingsError {
                    source: "SHARDSPAWN_FLEET_NAME".to_owned(),
                    value: String::new(),
                    why: format!("unset, and {why}: set it"),
                })
            };
            let host = host().map_err(|e| {
                unnamed(format!("unable to read the host name: {e}"))
            })?;
            let host = host.strip_suffix(b"\n").unwrap_or(&host);
            settings::fleet_name(host).map_err(|why| {
                let host = String::from_utf8_lossy(host);
                unnamed(format!("the host name {host:?} {why}"))
            })?
        }
    };
    Ok(FleetSettings {
        prefix: fleet.prefix.clone(),
        relays: fleet.relays,
        batch: fleet.batch,
        lease: fleet.lease,
        name,
        ca,
    })
}

/// The one line that says how this relay is in its fleet: the address
/// with its password as `***`.
fn fleet_line(
    fleet: &settings::Fleet,
    told: &FleetSettings,
    shared: usize,
) -> String {
    let ca = match &told.ca {
        Some(path) => format!(", CA {}", path.display()),
        None if fleet.redis.is_tls() => ", Mozilla's CAs".to_owned(),
        None => String::new(),
    };
    format!(
        "fleet: Redis {}{ca}, prefix {}, {} relays, batch {}, lease {}s, \
         relay {}; {shared} shared rules",
        fleet.redis,
        told.prefix,
        told.relays,
        told.batch,
        told.lease.as_secs(),
        told.name
    )
}

/// qmail-rspawn's first duty: work in `HOME/queue/mess`, where a
/// messid opens as the message. Returns the home made absolute, as the
/// working directory no longer says where it is.
fn enter_queue(home: &Path) -> Result<PathBuf, Fatal> {
    let home = std::path::absolute(home)
        .map_err(|error| Fatal::Home { home: home.to_path_buf(), error })?;
    std::env::set_current_dir(&home)
        .and_then(|()| std::env::set_current_dir("queue/mess"))
        .map_err(|error| Fatal::Queue { home: home.clone(), error })?;
    Ok(home)
}

/// The uid every message file must have.
fn queue_owner_uid(owner: &QueueOwner) -> Result<u32, Fatal> {
    match owner {
        QueueOwner::Uid(uid) => Ok(*uid),
        QueueOwner::Name(name) => match User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(Fatal::NoQueueOwner(name.clone())),
            Err(error) => {
                let name = name.clone();
                Err(Fatal::QueueOwnerLookup { name, error })
            }
        },
    }
}

/// Reads the limits and the response rules, and logs what is in force.
/// Reads `control/smtproutes`. Unlike the limits, a file we cannot read
/// or parse is not fatal: qmail-remote routes by it whatever we make of
/// it, and only the keys of routed domains depend on our reading (they
/// fall back to MX), so the trouble is logged and mail goes on.
fn read_routes(home: &Path, log: &Log) -> RoutesSource {
    let path = home.join(ROUTES);
    match RoutesSource::read(&path, Routes::parse) {
        Ok(routes) => {
            if routes.stamp.is_some() {
                log.info(format_args!("routes from {}", path.display()));
            }
            routes
        }
        Err(e) => {
            log.warn(format_args!("{e}; routing by MX only"));
            Source {
                stamp: stamp(&path),
                path,
                text: Vec::new(),
                parsed: Routes::default(),
            }
        }
    }
}

fn read_controls(
    settings: &Settings,
    home: &Path,
    log: &Log,
) -> Result<(LimitsSource, ResponsesSource), Fatal> {
    // Relative to the home, like every qmail control file; the home is
    // made absolute first, as the working directory is queue/mess now.
    let at_home = Settings { home: home.to_path_buf(), ..settings.clone() };
    let limits_path = at_home.limits_path();
    let responses_path = at_home.responses_path();
    // A file the admin named is one they meant: running on the built-in
    // defaults instead would be silent (issue 15). Only the defaults may
    // be absent.
    for (named, path, setting) in [
        (&settings.limits, &limits_path, ("SHARDSPAWN_LIMITS", "--limits")),
        (
            &settings.responses,
            &responses_path,
            ("SHARDSPAWN_RESPONSES", "--responses"),
        ),
    ] {
        if let Some(named) = named {
            named_file_exists(setting, named, path)?;
        }
    }
    let limits = LimitsSource::read(&limits_path, Limits::parse)
        .map_err(Fatal::Limits)?;
    log.info(format_args!(
        "limits from {}{}: default {}, {} rules",
        limits_path.display(),
        if limits.stamp.is_none() { " (absent)" } else { "" },
        limits.parsed.default_limit(),
        limits.parsed.rules().count()
    ));
    let responses = ResponsesSource::read(&responses_path, Responses::parse)
        .map_err(Fatal::Responses)?;
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
    Ok((limits, responses))
}

/// Raises the descriptor and process limits, and returns the slots to
/// announce (the request, lowered to what those limits allow, and
/// logged when lowered) and the most deliveries one shard may run.
fn capacity(settings: &Settings, shards: u16, log: &Log) -> (u32, u32) {
    let nofile = raise(Resource::RLIMIT_NOFILE, "open files", log);
    let nproc = raise(Resource::RLIMIT_NPROC, "processes", log);
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
    let mut slots = u64::from(settings.requested_slots());
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
    (slots, max_running)
}

/// Makes the state directory if it is missing, and checks that it is
/// ours alone: status files are rewritten there every second, and a
/// user who could write in it could swap them (or what they are renamed
/// over). `None` when it cannot be made or looked at: the warning says
/// so, and no status is published, as before.
fn state_dir(dir: &Path, log: &Log) -> Result<Option<PathBuf>, Fatal> {
    let meta = sys::make_dir(dir, sys::STATE_DIR_MODE)
        .and_then(|()| std::fs::metadata(dir));
    let meta = match meta {
        Ok(meta) => meta,
        Err(e) => {
            log.warn(format_args!(
                "unable to create the state directory {}: {e}; no status \
                 will be published",
                dir.display()
            ));
            return Ok(None);
        }
    };
    let euid = Uid::effective().as_raw();
    match UnsafeDir::judge(meta.is_dir(), meta.uid(), meta.mode(), euid) {
        Some(why) => Err(Fatal::StateDir { dir: dir.to_path_buf(), why }),
        None => Ok(Some(dir.to_path_buf())),
    }
}

/// Removes what an earlier run left in the state directory that this
/// one will not rewrite: the files of shards past `shards` (an earlier
/// run had more), `.prom` included, so that neither `status` nor
/// node_exporter reads them as live; and the temporary files of a
/// process that died while writing one. Nothing of this run exists yet:
/// its shards start later.
fn remove_earlier_status(dir: &Path, shards: u16, log: &Log) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = name.strip_suffix(".prom").unwrap_or(name);
        let gone_shard = index.strip_prefix("shard").is_some_and(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u64>().map_or(true, |n| n >= u64::from(shards))
        });
        let leftover = sys::is_temporary(name, "shard")
            || sys::is_temporary(name, "supervisor");
        if !gone_shard && !leftover {
            continue;
        }
        if let Err(e) = std::fs::remove_file(entry.path()) {
            log.warn(format_args!(
                "unable to remove {}: {e}",
                entry.path().display()
            ));
        }
    }
}

/// Which of a setting's two spellings (variable, flag) gave `value`: the
/// flag beats the variable, so the variable only if it says the same.
fn spelling(setting: (&str, &str), value: &OsStr) -> String {
    let (var, flag) = setting;
    let from_env = std::env::var_os(var).is_some_and(|v| {
        v.as_bytes().strip_suffix(b"\n").unwrap_or(v.as_bytes())
            == value.as_bytes()
    });
    if from_env { var } else { flag }.to_owned()
}

/// A named control file must be there: `Fatal::Setting` (100) naming
/// the setting if it is not. Any other failure to look at it is left to
/// the read that follows, which tells a refusal from a machine's no.
fn named_file_exists(
    setting: (&str, &str),
    named: &Path,
    path: &Path,
) -> Result<(), Fatal> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let why = if named == path {
                "no such file".to_owned()
            } else {
                format!("no such file: {}", path.display())
            };
            Err(Fatal::Setting(SettingsError {
                source: spelling(setting, named.as_os_str()),
                value: named.to_string_lossy().into_owned(),
                why,
            }))
        }
        _ => Ok(()),
    }
}

/// `QMAILREMOTE` (or its default, `qmail-remote` through PATH) must be a
/// program this user can run: a path with a '/' as access(X_OK) says, a
/// bare name as the shards' spawner looks it up (the first executable
/// file of that name in PATH; `shardspawn_os::spawn`). A program that
/// cannot run makes every delivery `DUnable to run qmail-remote.`: every
/// remote recipient bounces. Not starting keeps the mail queued and says
/// why; qmail-send logs "hath the daemon spawn no fire?".
///
/// The default is held to it too: under qmail-start it is found only
/// through the PATH the run script gives, and if it is not there the
/// bounces are the same.
fn remote_runs(settings: &Settings) -> Result<(), Fatal> {
    let (program, value) = match &settings.remote {
        Some(remote) => (remote.clone(), remote.clone()),
        None => (OsString::from(settings::DEFAULT_REMOTE), OsString::new()),
    };
    let why = if program.as_bytes().contains(&b'/') {
        match runnable(Path::new(&program)) {
            Ok(()) => return Ok(()),
            Err(e) => format!("unable to run it: {e}"),
        }
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path)
            .any(|dir| runnable(&dir.join(&program)).is_ok())
        {
            return Ok(());
        }
        format!(
            "no executable {} in PATH={}",
            program.to_string_lossy(),
            path.to_string_lossy()
        )
    };
    let source = match &settings.remote {
        Some(remote) => spelling(("QMAILREMOTE", "--remote"), remote),
        None => "QMAILREMOTE".to_owned(),
    };
    let why = match &settings.remote {
        Some(_) => why,
        None => format!("unset, and {why}"),
    };
    Err(Fatal::Setting(SettingsError {
        source,
        value: value.to_string_lossy().into_owned(),
        why,
    }))
}

/// Whether exec would run `path`: executable for this user, and not a
/// directory (which access(X_OK) passes when it may be searched).
fn runnable(path: &Path) -> Result<(), nix::errno::Errno> {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(nix::errno::Errno::EISDIR),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> io::Error {
        io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32)
    }

    fn control(code: i32) -> Vec<ControlFileError> {
        let path = PathBuf::from("/q/control/f");
        let all = vec![
            ControlFileError::Read { path: path.clone(), error: io_error() },
            ControlFileError::Missing { path: path.clone() },
            ControlFileError::Parse {
                path,
                error: ControlError::new(
                    3,
                    b":0",
                    "a limit must be at least 1",
                ),
            },
        ];
        all.into_iter().filter(|e| e.code() == code).collect()
    }

    #[test]
    fn a_control_file_that_cannot_be_read_is_temporary_a_bad_one_not() {
        let texts = |code| -> Vec<String> {
            control(code).iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            texts(111),
            [
                "unable to read /q/control/f: Permission denied (os error 13)",
                "/q/control/f: no such file",
            ]
        );
        assert_eq!(
            texts(100),
            ["/q/control/f: line 3: :0: a limit must be at least 1"]
        );
    }

    #[test]
    fn a_control_file_that_is_no_regular_file_or_too_large_is_bad() {
        let path = PathBuf::from("/q/control/f");
        let fifo = ControlFileError::NotRegular {
            path: path.clone(),
            what: "a FIFO",
        };
        let large = ControlFileError::TooLarge { path };
        assert_eq!(
            (fifo.code(), fifo.to_string()),
            (100, "/q/control/f: is a FIFO, not a regular file".to_owned())
        );
        assert_eq!(
            (large.code(), large.to_string()),
            (
                100,
                "/q/control/f: over 8388608 bytes (8 MiB), the most a \
                 control file may hold"
                    .to_owned()
            )
        );
    }

    #[test]
    fn only_a_regular_file_within_the_cap_is_read() {
        let dir = std::env::temp_dir()
            .join(format!("shardspawn-read-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("limits");
        std::fs::write(&file, b":5\n").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let exact = dir.join("exact");
        std::fs::write(&exact, vec![b'#'; control::MAX_FILE]).unwrap();
        let over = dir.join("over");
        std::fs::write(&over, vec![b'#'; control::MAX_FILE + 1]).unwrap();

        let read = |p: &Path| read_control(p).map_err(|e| e.to_string());
        assert_eq!(read(&file), Ok(Some(b":5\n".to_vec())));
        assert_eq!(read(&link), Ok(Some(b":5\n".to_vec())));
        assert_eq!(read(&dir.join("absent")), Ok(None));
        assert_eq!(
            read(&exact).map(|t| t.map(|t| t.len())),
            Ok(Some(control::MAX_FILE))
        );
        let refused = |p: &Path| {
            let e = read_control(p).unwrap_err();
            (e.code(), e.to_string().replace(&*p.to_string_lossy(), "F"))
        };
        // No writer: a blocking open would never return.
        assert_eq!(
            refused(&fifo),
            (100, "F: is a FIFO, not a regular file".to_owned())
        );
        assert_eq!(
            refused(Path::new("/dev/zero")),
            (100, "F: is a character device, not a regular file".to_owned())
        );
        assert_eq!(refused(&over).0, 100);
        assert_eq!(
            refused(&dir),
            (111, "unable to read F: Is a directory (os error 21)".to_owned())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_startup_failure_chooses_its_exit_code() {
        let setting = SettingsError {
            source: "SHARDSPAWN_SLOTS".to_owned(),
            value: "0".to_owned(),
            why: "must be at least 1".to_owned(),
        };
        let dir = PathBuf::from("/l");
        let table: Vec<(Fatal, i32, &str)> = vec![
            (
                Fatal::Setting(setting),
                100,
                "bad setting: SHARDSPAWN_SLOTS=0: must be at least 1",
            ),
            (Fatal::NoLogger, 100, "SHARDSPAWN_LOG_DIR is set, but"),
            (
                Fatal::LogDir { dir: dir.clone(), error: io_error() },
                111,
                "unable to find /l: ",
            ),
            (
                Fatal::Logger {
                    program: "multilog".into(),
                    dir: dir.clone(),
                    error: io_error(),
                },
                111,
                "unable to start the logger multilog in /l: ",
            ),
            (
                Fatal::Home { home: dir.clone(), error: io_error() },
                111,
                "unable to find /l: ",
            ),
            (
                Fatal::Queue { home: dir, error: io_error() },
                111,
                "unable to chdir to /l/queue/mess: ",
            ),
            (
                Fatal::NoQueueOwner("qmailq".to_owned()),
                111,
                "unable to find user qmailq",
            ),
            (
                Fatal::QueueOwnerLookup {
                    name: "qmailq".to_owned(),
                    error: nix::errno::Errno::EIO,
                },
                111,
                "unable to look up user qmailq: EIO",
            ),
        ];
        for (fatal, code, text) in table {
            assert_eq!(fatal.code(), code, "{fatal:?}");
            assert!(fatal.to_string().starts_with(text), "{fatal}");
        }
        for code in [100, 111] {
            for e in control(code) {
                assert_eq!(Fatal::Limits(e).code(), code);
            }
            for e in control(code) {
                let text = e.to_string();
                let fatal = Fatal::Responses(e);
                assert_eq!((fatal.code(), fatal.to_string()), (code, text));
            }
        }
    }

    /// Issue 18: the shards are told the fleet's settings, the relay
    /// named after the host unless named; the line logged shows no
    /// password.
    #[test]
    fn a_fleet_is_told_to_the_shards_without_its_password() {
        let env = [
            ("SHARDSPAWN_REDIS", "redis://:secret@10.0.0.5:6379/0"),
            ("SHARDSPAWN_FLEET_RELAYS", "3"),
        ];
        let lookup =
            |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into());
        let settings = Settings::from_env(&lookup).unwrap();
        let fleet = settings.fleet.unwrap();
        let told =
            fleet_settings(&fleet, None, || Ok(b"mx1.example.net\n".to_vec()))
                .unwrap();
        assert_eq!(
            told,
            FleetSettings {
                prefix: "shardspawn:".to_owned(),
                relays: 3,
                batch: 2,
                lease: Duration::from_secs(30),
                name: "mx1.example.net".to_owned(),
                ca: None,
            }
        );
        assert_eq!(
            fleet_line(&fleet, &told, 2),
            "fleet: Redis redis://:***@10.0.0.5:6379/0, prefix shardspawn:, \
             3 relays, batch 2, lease 30s, relay mx1.example.net; 2 shared \
             rules"
        );
        // A CA is told to the shards (a path, no secret) and logged.
        let with_ca =
            fleet_settings(&fleet, Some("/etc/ca.pem".into()), || {
                Ok(b"mx1".to_vec())
            })
            .unwrap();
        assert_eq!(with_ca.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(
            fleet_line(&fleet, &with_ca, 0)
                .contains(":6379/0, CA /etc/ca.pem, "),
            "{}",
            fleet_line(&fleet, &with_ca, 0)
        );
        // A name set is kept; a host name that is no name is refused.
        let named = settings::Fleet {
            name: Some("relay-a".to_owned()),
            ..fleet.clone()
        };
        let told = fleet_settings(&named, None, || unreachable!()).unwrap();
        assert_eq!(told.name, "relay-a");
        let e =
            fleet_settings(&fleet, None, || Ok(b"a b".to_vec())).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (
                100,
                "bad setting: SHARDSPAWN_FLEET_NAME=: unset, and the host \
                 name \"a b\" must be 1 to 64 printable ASCII bytes, no \
                 blanks: set it"
                    .to_owned()
            )
        );
        let e = fleet_settings(&fleet, None, || Err(io_error())).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "unable to read the host name: Permission denied (os error \
                 13): set it"
            ),
            "{e}"
        );
    }

    /// Issue 15, finding 7: status files are rewritten in the state
    /// directory every second, so it must be this user's alone.
    #[test]
    fn a_state_dir_of_another_user_or_writable_by_others_is_refused() {
        let judge = UnsafeDir::judge;
        assert_eq!(judge(true, 7, 0o40750, 7), None);
        assert_eq!(judge(true, 7, 0o40700, 7), None);
        assert_eq!(judge(true, 7, 0o41755, 7), None);
        assert_eq!(judge(true, 8, 0o40750, 7), Some(UnsafeDir::Owner(8)));
        for mode in [0o1777, 0o777, 0o770, 0o702] {
            let want = Some(UnsafeDir::Writable(mode));
            assert_eq!(judge(true, 7, 0o40000 | mode, 7), want, "{mode:o}");
        }
        assert_eq!(
            judge(false, 7, 0o100640, 7),
            Some(UnsafeDir::NotADirectory)
        );
        let dir = PathBuf::from("/run/shardspawn");
        let fatal = Fatal::StateDir { dir, why: UnsafeDir::Writable(0o1777) };
        assert_eq!(fatal.code(), 100);
        assert_eq!(
            fatal.to_string(),
            "unsafe state directory /run/shardspawn: mode 1777 lets others \
             write in it; make it 0750"
        );
    }
}
