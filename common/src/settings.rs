//! The settings table of the design: environment variables (qmail-start
//! passes no arguments; an envdir sets them) and flags of the same
//! meaning. Flags beat environment, environment beats defaults.
//!
//! This module only parses and checks syntax; it reads no environment
//! itself (the caller passes a lookup function) and makes no syscalls.
//! Defaults that need the machine (CPU count, uid lookups) are left as
//! `None` for the supervisor to resolve.
//!
//! | variable | flag |
//! | --- | --- |
//! | `SHARDSPAWN_HOME` | `--home` |
//! | `SHARDSPAWN_SHARDS` | `--shards` |
//! | `SHARDSPAWN_DELNUM_BYTES` | `--delnum-bytes` |
//! | `SHARDSPAWN_SLOTS` | `--slots` |
//! | `QMAILREMOTE` | `--remote` |
//! | `SHARDSPAWN_QUEUE_OWNER` | `--queue-owner` |
//! | `SHARDSPAWN_LIMITS` | `--limits` |
//! | `SHARDSPAWN_STATE_DIR` | `--state-dir` |
//! | `SHARDSPAWN_HOLD_SECONDS` | `--hold-seconds` |
//! | `SHARDSPAWN_HOLD_MAX` | `--hold-max` |
//! | `SHARDSPAWN_MAX_RUNNING` | `--max-running` |
//! | `SHARDSPAWN_LOG_DIR` | `--log-dir` |
//! | `SHARDSPAWN_LOGGER` | `--logger` |
//! | `SHARDSPAWN_INITIAL_LIMIT` | `--initial-limit` |
//! | `SHARDSPAWN_SUSPEND_AFTER` | `--suspend-after` |
//! | `SHARDSPAWN_SUSPEND_SECONDS` | `--suspend-seconds` |
//! | `SHARDSPAWN_RESPONSES` | `--responses` |
//! | `SHARDSPAWN_SITES` | `--sites` |
//! | `SHARDSPAWN_DNS` | `--dns` |
//! | `SHARDSPAWN_DNS_SECONDS` | `--dns-seconds` |
//! | `SHARDSPAWN_METRICS_KEYS` | `--metrics-keys` |
//! | `SHARDSPAWN_REDIS` | `--redis` |
//! | `SHARDSPAWN_REDIS_PREFIX` | `--redis-prefix` |
//! | `SHARDSPAWN_FLEET_RELAYS` | `--fleet-relays` |
//! | `SHARDSPAWN_FLEET_BATCH` | `--fleet-batch` |
//! | `SHARDSPAWN_LEASE_SECONDS` | `--lease-seconds` |
//! | `SHARDSPAWN_FLEET_NAME` | `--fleet-name` |
//! | `SHARDSPAWN_REDIS_CA` | `--redis-ca` |
//!
//! The last seven make this relay one of a fleet that keeps its `shared`
//! keys' limits and rates in Redis (issue 18; [`Fleet`]). They mean
//! nothing unless `SHARDSPAWN_REDIS` is set, and then
//! `SHARDSPAWN_FLEET_RELAYS` must be set too; `SHARDSPAWN_REDIS_CA`
//! (the CA to trust instead of the Mozilla roots) is an error unless
//! the address is `rediss://`. The Redis address may hold
//! a password: it is never shown with it ([`RedisUrl`]), and is better
//! given in the environment than as `--redis`, as anyone may read a
//! command line.
//!
//! Values from the environment lose any trailing newlines (a file in an
//! envdir usually ends in one). Numbers, the queue owner, the Redis
//! address and the fleet's prefix and name also lose surrounding spaces
//! and tabs, from either source. A value that is empty after that is an
//! error, not "unset": an envdir file left empty by mistake should not
//! silently mean the default.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::command::DelnumWidth;

/// Who must own message files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOwner {
    /// A user name, looked up at startup.
    Name(String),
    /// A numeric uid.
    Uid(u32),
}

/// The parsed settings. `None` means "the default that needs the machine
/// or other settings to be known", resolved by the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// qmail home. Default [`DEFAULT_HOME`].
    pub home: PathBuf,
    /// Shard processes; `None`: number of CPUs. At least 1, at most
    /// [`SHARDS_MAX`].
    pub shards: Option<u16>,
    /// 1 or 2 delnum bytes. Default [`DEFAULT_DELNUM_WIDTH`].
    pub delnum_width: DelnumWidth,
    /// Slots to announce; `None`: [`default_slots`], 255 with 1 byte,
    /// 32767 with 2. At least 1; at most 255 with 1 byte and 65535 with 2.
    pub slots: Option<u32>,
    /// Program to run per delivery; `None`: [`DEFAULT_REMOTE`] via PATH.
    pub remote: Option<OsString>,
    /// Owner of message files. Default [`DEFAULT_QUEUE_OWNER`].
    pub queue_owner: QueueOwner,
    /// Limits file; `None`: [`DEFAULT_LIMITS`] under the home.
    pub limits: Option<PathBuf>,
    /// Live status directory. Default [`DEFAULT_STATE_DIR`].
    pub state_dir: PathBuf,
    /// Longest a delivery waits for its key. Default [`DEFAULT_HOLD`];
    /// at least 1 s.
    pub hold: Duration,
    /// Most deliveries waiting per key; `None`: 4 × the key's limit.
    pub hold_max: Option<u32>,
    /// Most qmail-remote processes at once; `None`: the announced slots.
    pub max_running: Option<u32>,
    /// Where logs go; `None`: fd 2 (standard error).
    pub log_dir: Option<PathBuf>,
    /// The logger program and its arguments (split on blanks), run for
    /// each log directory with the directory appended; `None`: `multilog
    /// t` or `svlogd -tt`, whichever is found.
    pub logger: Option<Vec<OsString>>,
    /// The effective limit a key starts at (never above its configured
    /// one); 0 turns adaptation off. Default [`DEFAULT_INITIAL_LIMIT`].
    pub initial_limit: u32,
    /// Site-level failures in a row that suspend a key; 0: never.
    /// Default [`DEFAULT_SUSPEND_AFTER`].
    pub suspend_after: u32,
    /// How long such a suspension lasts. Default [`DEFAULT_SUSPEND`]; at
    /// least 1 s.
    pub suspend: Duration,
    /// Response rules file; `None`: [`DEFAULT_RESPONSES`] under the home.
    pub responses: Option<PathBuf>,
    /// Count domains that share their MX hosts (a site) or a provider
    /// rule under one key; `false`: every domain its own key (as before
    /// issue 16). Default `true`.
    pub sites: bool,
    /// Name servers for MX lookups; empty: those of `/etc/resolv.conf`.
    pub dns: Vec<SocketAddr>,
    /// Longest a delivery waits for its domain's MX lookup before it
    /// goes under its domain key. Default [`DEFAULT_DNS_WAIT`]; at least
    /// 1 s.
    pub dns_wait: Duration,
    /// How many of each shard's busiest keys get series of their own in
    /// its Prometheus file; 0: none. Default [`DEFAULT_METRICS_KEYS`], at
    /// most [`METRICS_KEYS_MAX`].
    pub metrics_keys: u32,
    /// The fleet this relay shares its `shared` keys with; `None` (no
    /// `SHARDSPAWN_REDIS`): each relay keeps them alone.
    pub fleet: Option<Fleet>,
}

/// How this relay takes part in a fleet that keeps its `shared` keys in
/// Redis (issue 18): there only when `SHARDSPAWN_REDIS` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// `SHARDSPAWN_REDIS`: the server.
    pub redis: RedisUrl,
    /// Put before every Redis key: one fleet per prefix. Default
    /// [`DEFAULT_REDIS_PREFIX`].
    pub prefix: String,
    /// Relays in the fleet, [`FLEET_RELAYS_MAX`] at most; no default:
    /// while Redis is away each relay takes 1/relays of every shared
    /// limit and rate, which only the admin knows.
    pub relays: u32,
    /// Leases and rate tokens a shard takes ahead of need per key.
    /// Default [`DEFAULT_FLEET_BATCH`], at most [`FLEET_BATCH_MAX`].
    pub batch: u32,
    /// A lease's life unless renewed. Default [`DEFAULT_LEASE`], 2 s to
    /// [`LEASE_SECONDS_MAX`].
    pub lease: Duration,
    /// This relay's name in the fleet; `None`: the host name, which the
    /// supervisor looks up (see [`fleet_name`]).
    pub name: Option<String>,
    /// `SHARDSPAWN_REDIS_CA`: a PEM file of the CA certificates a
    /// `rediss://` server's certificate must chain to, instead of the
    /// Mozilla roots; only with `rediss://`. As given: the supervisor
    /// reads and checks it (this module reads no file).
    pub ca: Option<PathBuf>,
}

/// A Redis server's address, as the `redis` crate reads one:
/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (or `valkey://`), or
/// `redis+unix:///PATH[?pass=PASSWORD]` (or `valkey+unix://`, `unix://`).
/// `rediss://` (or `valkeys://`), the same over TLS, only in a build
/// with the `tls` feature (the product's default): the server is always
/// verified, against the Mozilla roots or `SHARDSPAWN_REDIS_CA`'s, so a
/// `#insecure` fragment is refused. A build without it refuses
/// `rediss://`, as a relay that could never connect would run alone for
/// good.
///
/// Only the scheme, the host or path, and the port and database numbers
/// are checked here; the client reads the rest. `Display` and `Debug`
/// show the password as `***`; only [`RedisUrl::as_str`] gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks `text` (already trimmed). The error says why, and never
    /// quotes the text.
    pub fn parse(text: &[u8]) -> Result<RedisUrl, String> {
        let form = "not redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or \
                    redis+unix:///PATH";
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII with no blanks \
                        (percent-encode other bytes of a password)"
                .to_owned());
        }
        // Printable ASCII, so UTF-8.
        let text = String::from_utf8_lossy(text).into_owned();
        let (scheme, rest) = text.split_once("://").ok_or(form)?;
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "redis" | "valkey" => check_tcp(rest)?,
            "redis+unix" | "valkey+unix" | "unix" => check_unix(rest)?,
            "rediss" | "valkeys" if cfg!(feature = "tls") => {
                check_tcp(rest)?;
                if rest.split_once('#').is_some_and(|(_, f)| f == "insecure") {
                    return Err("#insecure: the server is always verified \
                                (a private CA: SHARDSPAWN_REDIS_CA)"
                        .to_owned());
                }
            }
            "rediss" | "valkeys" => {
                return Err(format!(
                    "{scheme}:// (TLS) is not built in: use redis:// \
                     over a TLS tunnel"
                ));
            }
            _ => return Err(form.to_owned()),
        }
        Ok(RedisUrl(text))
    }

    /// The address with its password: for the shards' environment only,
    /// never for a log.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is `rediss://` or `valkeys://`: Redis over TLS.
    pub fn is_tls(&self) -> bool {
        let scheme = self.0.split_once("://").map_or("", |(s, _)| s);
        scheme.eq_ignore_ascii_case("rediss")
            || scheme.eq_ignore_ascii_case("valkeys")
    }
}

/// The address with any password as `***`.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// As `Display`: `{:?}` of the settings must not print a password
/// either.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", redact(&self.0))
    }
}

/// The part of a URL before its path, query or fragment.
fn authority(rest: &str) -> (&str, &str) {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.split_at(end)
}

/// `[[USER]:PASSWORD@]HOST[:PORT][/DB]...`: a host, a port that is a
/// port, a database that is a number.
fn check_tcp(rest: &str) -> Result<(), String> {
    let (auth, tail) = authority(rest);
    let host_port = auth.rsplit_once('@').map_or(auth, |(_, hp)| hp);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) =
                v6.split_once(']').ok_or("no ']' after '['")?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or("no ':'")?)),
            }
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if let Some(port) = port.filter(|p| !p.is_empty())
        && port.parse::<u16>().is_err()
    {
        return Err(format!("port {port} is not a number 0 to 65535"));
    }
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    let db = path.trim_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!("database /{db} is not a number"));
    }
    Ok(())
}

/// `[localhost]/PATH[?...]`: a socket's path.
fn check_unix(rest: &str) -> Result<(), String> {
    let (auth, tail) = authority(rest);
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    if !(auth.is_empty() || auth.eq_ignore_ascii_case("localhost"))
        || path.trim_matches('/').is_empty()
    {
        return Err("no socket path: redis+unix:///PATH".to_owned());
    }
    Ok(())
}

/// `text` with what may be a password as `***`: everything between the
/// first ':' of the user information and its '@' (all of it if it has
/// no ':', as that is more likely a password than a user without one),
/// and the value of a `pass` or `password` query. Works on any text, a
/// URL or not, so that an error can quote what was given: the user
/// information ends at the *last* '@', wherever it is, so a password
/// with a '/' or a '?' in it is hidden too (and so may be more).
pub fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (&text[..scheme.len() + 3], rest),
        None => ("", text),
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => match user.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), rest),
            None => ("***@".to_owned(), rest),
        },
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let hidden: Vec<String> = query
                .split('&')
                .map(|item| match item.split_once('=') {
                    Some((k, _)) if k == "pass" || k == "password" => {
                        format!("{k}=***")
                    }
                    _ => item.to_owned(),
                })
                .collect();
            format!("{path}?{}", hidden.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}{user}{rest}")
}

/// A fleet's prefix or relay name: 1 to [`FLEET_TEXT_MAX`] printable
/// ASCII bytes, no blanks. The supervisor holds the host name it takes
/// for a relay's name to this too.
pub fn fleet_name(text: &[u8]) -> Result<String, String> {
    if text.is_empty()
        || text.len() > FLEET_TEXT_MAX
        || !text.iter().all(u8::is_ascii_graphic)
    {
        return Err(format!(
            "must be 1 to {FLEET_TEXT_MAX} printable ASCII bytes, no blanks"
        ));
    }
    // Printable ASCII, so UTF-8.
    Ok(String::from_utf8_lossy(text).into_owned())
}

// Each default is named once, here: the settings, the arguments a shard
// is started with (`shard_config.rs`) and the supervisor use these.

/// `SHARDSPAWN_HOME`: qmail's home.
pub const DEFAULT_HOME: &str = "/var/qmail";

/// `SHARDSPAWN_DELNUM_BYTES`: stock qmail-send's framing.
pub const DEFAULT_DELNUM_WIDTH: DelnumWidth = DelnumWidth::One;

/// `QMAILREMOTE`: the program run per delivery, found through PATH.
pub const DEFAULT_REMOTE: &str = "qmail-remote";

/// `SHARDSPAWN_QUEUE_OWNER`: qmail's queue user.
pub const DEFAULT_QUEUE_OWNER: &str = "qmailq";

/// `SHARDSPAWN_LIMITS`, under the home.
pub const DEFAULT_LIMITS: &str = "control/concurrencydomains";

/// `SHARDSPAWN_STATE_DIR`.
pub const DEFAULT_STATE_DIR: &str = "/run/shardspawn";

/// `SHARDSPAWN_HOLD_SECONDS`: longest a delivery waits for its key.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(120);

/// `SHARDSPAWN_INITIAL_LIMIT`: the effective limit a key starts at, as
/// Postfix's `initial_destination_concurrency`.
pub const DEFAULT_INITIAL_LIMIT: u32 = 5;

/// `SHARDSPAWN_SUSPEND_AFTER`: site-level failures in a row that
/// suspend a key.
pub const DEFAULT_SUSPEND_AFTER: u32 = 10;

/// `SHARDSPAWN_SUSPEND_SECONDS`: how long a suspension lasts.
pub const DEFAULT_SUSPEND: Duration = Duration::from_secs(300);

/// `SHARDSPAWN_RESPONSES`, under the home.
pub const DEFAULT_RESPONSES: &str = "control/responserules";

/// `SHARDSPAWN_DNS_SECONDS`: longest a delivery waits for DNS. A
/// resolver tries a silent server about twice in this time.
pub const DEFAULT_DNS_WAIT: Duration = Duration::from_secs(5);

/// `SHARDSPAWN_METRICS_KEYS`: the busiest keys of each shard with
/// series of their own, as many as its status file lists.
pub const DEFAULT_METRICS_KEYS: u32 = 20;

/// Most `SHARDSPAWN_METRICS_KEYS`: each key is a handful of series per
/// shard, and a Prometheus server pays for every one it keeps.
pub const METRICS_KEYS_MAX: u32 = 1000;

/// `SHARDSPAWN_REDIS_PREFIX`: before every Redis key of the fleet.
pub const DEFAULT_REDIS_PREFIX: &str = "shardspawn:";

/// `SHARDSPAWN_FLEET_BATCH`: leases and tokens taken ahead of need per
/// key; 2 lets a key start its next delivery while a claim is out.
pub const DEFAULT_FLEET_BATCH: u32 = 2;

/// Most `SHARDSPAWN_FLEET_BATCH`: the fleet may go over a shared limit
/// by a batch per relay while Redis comes and goes.
pub const FLEET_BATCH_MAX: u32 = 100;

/// Most `SHARDSPAWN_FLEET_RELAYS`.
pub const FLEET_RELAYS_MAX: u32 = 1000;

/// `SHARDSPAWN_LEASE_SECONDS`: a dead relay's leases are free again
/// within this.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Least `SHARDSPAWN_LEASE_SECONDS`: leases are renewed every third of
/// it, and a renewal must have time to come back.
pub const LEASE_SECONDS_MIN: u64 = 2;

/// Most `SHARDSPAWN_LEASE_SECONDS`: an hour of a dead relay's leases.
pub const LEASE_SECONDS_MAX: u64 = 3600;

/// Longest fleet prefix or relay name, in bytes.
pub const FLEET_TEXT_MAX: usize = 64;

/// Longest `SHARDSPAWN_DNS_SECONDS`: a delivery waiting longer for DNS
/// than qmail-remote would itself is worse than its domain key.
const DNS_SECONDS_MAX: u64 = 300;

/// Most shard processes (the default, the number of CPUs, is capped at
/// this too).
pub const SHARDS_MAX: u16 = 1024;

/// A setting that did not parse. Displays as `SOURCE=VALUE: why`, e.g.
/// `SHARDSPAWN_SLOTS=0: must be at least 1` or `--shards=x: not a
/// number`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    /// The variable or flag name.
    pub source: String,
    /// The value as given (lossy UTF-8).
    pub value: String,
    /// What is wrong.
    pub why: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: {}", self.source, self.value, self.why)
    }
}

impl std::error::Error for SettingsError {}

/// The settings, one row of the table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Home,
    Shards,
    DelnumBytes,
    Slots,
    Remote,
    QueueOwner,
    Limits,
    StateDir,
    HoldSeconds,
    HoldMax,
    MaxRunning,
    LogDir,
    Logger,
    InitialLimit,
    SuspendAfter,
    SuspendSeconds,
    Responses,
    Sites,
    Dns,
    DnsSeconds,
    MetricsKeys,
    Redis,
    RedisPrefix,
    FleetRelays,
    FleetBatch,
    LeaseSeconds,
    Relay,
    RedisCa,
}

/// The table of the module docs: setting, variable, flag.
const TABLE: [(Name, &str, &str); 28] = [
    (Name::Home, "SHARDSPAWN_HOME", "--home"),
    (Name::Shards, "SHARDSPAWN_SHARDS", "--shards"),
    (Name::DelnumBytes, "SHARDSPAWN_DELNUM_BYTES", "--delnum-bytes"),
    (Name::Slots, "SHARDSPAWN_SLOTS", "--slots"),
    (Name::Remote, "QMAILREMOTE", "--remote"),
    (Name::QueueOwner, "SHARDSPAWN_QUEUE_OWNER", "--queue-owner"),
    (Name::Limits, "SHARDSPAWN_LIMITS", "--limits"),
    (Name::StateDir, "SHARDSPAWN_STATE_DIR", "--state-dir"),
    (Name::HoldSeconds, "SHARDSPAWN_HOLD_SECONDS", "--hold-seconds"),
    (Name::HoldMax, "SHARDSPAWN_HOLD_MAX", "--hold-max"),
    (Name::MaxRunning, "SHARDSPAWN_MAX_RUNNING", "--max-running"),
    (Name::LogDir, "SHARDSPAWN_LOG_DIR", "--log-dir"),
    (Name::Logger, "SHARDSPAWN_LOGGER", "--logger"),
    (Name::InitialLimit, "SHARDSPAWN_INITIAL_LIMIT", "--initial-limit"),
    (Name::SuspendAfter, "SHARDSPAWN_SUSPEND_AFTER", "--suspend-after"),
    (Name::SuspendSeconds, "SHARDSPAWN_SUSPEND_SECONDS", "--suspend-seconds"),
    (Name::Responses, "SHARDSPAWN_RESPONSES", "--responses"),
    (Name::Sites, "SHARDSPAWN_SITES", "--sites"),
    (Name::Dns, "SHARDSPAWN_DNS", "--dns"),
    (Name::DnsSeconds, "SHARDSPAWN_DNS_SECONDS", "--dns-seconds"),
    (Name::MetricsKeys, "SHARDSPAWN_METRICS_KEYS", "--metrics-keys"),
    (Name::Redis, "SHARDSPAWN_REDIS", "--redis"),
    (Name::RedisPrefix, "SHARDSPAWN_REDIS_PREFIX", "--redis-prefix"),
    (Name::FleetRelays, "SHARDSPAWN_FLEET_RELAYS", "--fleet-relays"),
    (Name::FleetBatch, "SHARDSPAWN_FLEET_BATCH", "--fleet-batch"),
    (Name::LeaseSeconds, "SHARDSPAWN_LEASE_SECONDS", "--lease-seconds"),
    (Name::Relay, "SHARDSPAWN_FLEET_NAME", "--fleet-name"),
    (Name::RedisCa, "SHARDSPAWN_REDIS_CA", "--redis-ca"),
];

/// Longest hold we accept, in seconds. Far beyond any sane setting, and
/// small enough that `Instant + hold` can never overflow (which panics).
const HOLD_SECONDS_MAX: u64 = u32::MAX as u64;

/// `SHARDSPAWN_SLOTS`: the slots announced when none are set, the most
/// each framing can address (32767 in two bytes, as big-concurrency
/// qmail-send reads a delnum's high byte as signed).
pub fn default_slots(width: DelnumWidth) -> u32 {
    match width {
        DelnumWidth::One => 255,
        DelnumWidth::Two => 32767,
    }
}

/// Each setting's raw value: the environment's (a trailing newline of
/// an envdir file dropped), then the flags' over it.
fn gather(
    env: &dyn Fn(&str) -> Option<OsString>,
    flags: &[(String, OsString)],
) -> Result<[Option<Raw>; TABLE.len()], SettingsError> {
    let mut raw: [Option<Raw>; TABLE.len()] = Default::default();
    for (slot, (_, var, _)) in raw.iter_mut().zip(TABLE) {
        *slot = env(var).map(|value| Raw {
            source: var.to_owned(),
            value: strip_newlines(value),
        });
    }
    for (flag, value) in flags {
        let Some(row) = TABLE.iter().position(|&(_, _, f)| f == flag) else {
            return Err(SettingsError {
                source: flag.clone(),
                value: value.to_string_lossy().into_owned(),
                why: "unknown flag".to_owned(),
            });
        };
        raw[row] = Some(Raw { source: flag.clone(), value: value.clone() });
    }
    Ok(raw)
}

/// The framing and the slots. They may come from different sources
/// (one a variable, one a flag), so the slots are bounded only once the
/// width is known.
fn width_and_slots(
    width: Option<&Raw>,
    slots: Option<&Raw>,
) -> Result<(DelnumWidth, Option<u32>), SettingsError> {
    let width = match width {
        None => DEFAULT_DELNUM_WIDTH,
        Some(r) => match r.number(0, u64::MAX)? {
            1 => DelnumWidth::One,
            2 => DelnumWidth::Two,
            _ => return Err(r.error("must be 1 or 2")),
        },
    };
    let Some(r) = slots else { return Ok((width, None)) };
    let n = r.count()?;
    let max = match width {
        DelnumWidth::One => 255,
        DelnumWidth::Two => 65535,
    };
    if n > max {
        let bytes = width.bytes();
        return Err(r.error(format!(
            "must be at most {max} with {bytes} delnum byte(s)"
        )));
    }
    Ok((width, Some(n)))
}

/// A value as given, and where it came from.
#[derive(Debug)]
struct Raw {
    /// The variable or flag name.
    source: String,
    value: OsString,
}

impl Raw {
    fn error(&self, why: impl Into<String>) -> SettingsError {
        SettingsError {
            source: self.source.clone(),
            value: self.value.to_string_lossy().into_owned(),
            why: why.into(),
        }
    }

    /// The value with surrounding spaces and tabs removed; an error if
    /// nothing is left.
    fn trimmed(&self) -> Result<&[u8], SettingsError> {
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let bytes = self.value.as_bytes();
        let start = bytes.iter().position(|b| !blank(b)).unwrap_or(0);
        let end = bytes.iter().rposition(|b| !blank(b)).map_or(0, |i| i + 1);
        match bytes.get(start..end) {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(self.error("must not be empty")),
        }
    }

    /// A decimal number within `min..=max`.
    fn number(&self, min: u64, max: u64) -> Result<u64, SettingsError> {
        let text = self.trimmed()?;
        if !text.iter().all(u8::is_ascii_digit) {
            return Err(self.error("not a number"));
        }
        // All digits, so only overflow fails, and that is over `max`.
        let n = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if n < min {
            return Err(self.error(format!("must be at least {min}")));
        }
        if n > max {
            return Err(self.error(format!("must be at most {max}")));
        }
        Ok(n)
    }

    /// A number that must fit a `u32`, at least 1.
    fn count(&self) -> Result<u32, SettingsError> {
        let n = self.number(1, u64::from(u32::MAX))?;
        Ok(u32::try_from(n).expect("bounded above"))
    }

    /// A path or program, exactly as given; only emptiness is checked.
    fn os_string(&self) -> Result<OsString, SettingsError> {
        if self.value.is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(self.value.clone())
    }

    /// A command line: words split on blanks, at least one.
    fn words(&self) -> Result<Vec<OsString>, SettingsError> {
        let text = self.trimmed()?;
        let words: Vec<OsString> = text
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty())
            .map(|w| OsString::from_vec(w.to_vec()))
            .collect();
        if words.is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(words)
    }

    fn path(&self) -> Result<PathBuf, SettingsError> {
        self.os_string().map(PathBuf::from)
    }

    fn queue_owner(&self) -> Result<QueueOwner, SettingsError> {
        let text = self.trimmed()?;
        if text.iter().all(u8::is_ascii_digit) {
            return self.uid().map(QueueOwner::Uid);
        }
        match std::str::from_utf8(text) {
            Ok(name) => Ok(QueueOwner::Name(name.to_owned())),
            Err(_) => Err(self.error("not a user name or uid")),
        }
    }

    /// `0` or `1`.
    fn switch(&self) -> Result<bool, SettingsError> {
        match self.trimmed()? {
            b"0" => Ok(false),
            b"1" => Ok(true),
            _ => Err(self.error("must be 0 or 1")),
        }
    }

    /// Name servers: `IP` or `IP:PORT` (`[IPv6]:PORT`), split on commas
    /// or blanks; port 53 when not given.
    fn servers(&self) -> Result<Vec<SocketAddr>, SettingsError> {
        let text = self.trimmed()?;
        let text = std::str::from_utf8(text)
            .map_err(|_| self.error("not a list of name servers"))?;
        let words = text.split([',', ' ', '\t']).filter(|w| !w.is_empty());
        let mut servers = Vec::new();
        for word in words {
            let server = match word.parse::<SocketAddr>() {
                Ok(server) => server,
                Err(_) => match word.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, 53),
                    Err(_) => {
                        return Err(
                            self.error(format!("{word} is not IP or IP:PORT"))
                        );
                    }
                },
            };
            servers.push(server);
        }
        if servers.is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(servers)
    }

    /// A Redis address; an error shows it with its password as `***`.
    fn redis(&self) -> Result<RedisUrl, SettingsError> {
        let hidden = |why| SettingsError {
            source: self.source.clone(),
            value: redact(&self.value.to_string_lossy()),
            why,
        };
        // "must not be empty" quotes nothing.
        RedisUrl::parse(self.trimmed()?).map_err(hidden)
    }

    /// A fleet's prefix or relay name ([`fleet_name`]).
    fn fleet_name(&self) -> Result<String, SettingsError> {
        fleet_name(self.trimmed()?).map_err(|why| self.error(why))
    }

    /// A uid: any `u32`, 0 included.
    fn uid(&self) -> Result<u32, SettingsError> {
        let n = self.number(0, u64::from(u32::MAX))?;
        Ok(u32::try_from(n).expect("bounded above"))
    }
}

/// The fleet's settings, `None` without `SHARDSPAWN_REDIS`. Each is
/// checked even then, so that a bad one is found before the day Redis
/// is set.
fn fleet<'a>(
    get: &dyn Fn(Name) -> Option<&'a Raw>,
) -> Result<Option<Fleet>, SettingsError> {
    let number = |name, min, max, default| match get(name) {
        None => Ok(default),
        Some(r) => r.number(min, max),
    };
    let redis = get(Name::Redis).map(|r| r.redis().map(|u| (r, u)));
    let redis = redis.transpose()?;
    let prefix = get(Name::RedisPrefix).map(Raw::fleet_name).transpose()?;
    let relays = get(Name::FleetRelays)
        .map(|r| r.number(1, FLEET_RELAYS_MAX.into()))
        .transpose()?;
    let batch = number(
        Name::FleetBatch,
        1,
        FLEET_BATCH_MAX.into(),
        DEFAULT_FLEET_BATCH.into(),
    )?;
    let lease = number(
        Name::LeaseSeconds,
        LEASE_SECONDS_MIN,
        LEASE_SECONDS_MAX,
        DEFAULT_LEASE.as_secs(),
    )?;
    let name = get(Name::Relay).map(Raw::fleet_name).transpose()?;
    let ca = get(Name::RedisCa).map(|r| r.path().map(|p| (r, p)));
    let ca = ca.transpose()?;
    if let Some((r, _)) = ca {
        let why = match &redis {
            None => "only applies to rediss://, and SHARDSPAWN_REDIS is unset",
            Some((_, url)) if !url.is_tls() => {
                "only applies to rediss://: SHARDSPAWN_REDIS is not rediss://"
            }
            Some(_) => "",
        };
        if !why.is_empty() {
            return Err(r.error(why));
        }
    }
    let Some((raw, redis)) = redis else { return Ok(None) };
    let Some(relays) = relays else {
        return Err(SettingsError {
            source: raw.source.clone(),
            value: redis.to_string(),
            why: "SHARDSPAWN_FLEET_RELAYS (--fleet-relays) must be set \
                  too: the relays in the fleet, as each keeps 1/N of every \
                  shared limit while Redis is away"
                .to_owned(),
        });
    };
    let small = |n: u64| u32::try_from(n).expect("bounded above");
    Ok(Some(Fleet {
        redis,
        prefix: prefix.unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned()),
        relays: small(relays),
        batch: small(batch),
        lease: Duration::from_secs(lease),
        name,
        ca: ca.map(|(_, path)| path),
    }))
}

/// Drops trailing newlines, as an envdir file usually has one.
fn strip_newlines(value: OsString) -> OsString {
    let mut bytes = value.into_vec();
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    OsString::from_vec(bytes)
}

impl Settings {
    /// Parses the environment `env` over the defaults: what qmail-start
    /// gives, with no flags.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Settings, SettingsError> {
        Settings::from_env_and_flags(env, &[])
    }

    /// Whether `flag` (spelled `--name`) is the flag of a setting.
    pub fn is_flag(flag: &str) -> bool {
        TABLE.iter().any(|&(_, _, f)| f == flag)
    }

    /// Parses `flags` (each a flag of the table, spelled `--name`, and
    /// its value, as the command line gave them; the last of a repeated
    /// flag wins) over the environment `env` over the defaults. Splitting
    /// the command line is the caller's job; a flag not in the table is
    /// an error whose `source` is the flag. Empty values are errors.
    pub fn from_env_and_flags(
        env: &dyn Fn(&str) -> Option<OsString>,
        flags: &[(String, OsString)],
    ) -> Result<Settings, SettingsError> {
        let raw = gather(env, flags)?;
        let get = |name: Name| {
            let row = TABLE.iter().position(|&(n, _, _)| n == name);
            raw[row.expect("every name has a row")].as_ref()
        };
        let (delnum_width, slots) =
            width_and_slots(get(Name::DelnumBytes), get(Name::Slots))?;
        let shards = match get(Name::Shards) {
            None => None,
            Some(r) => Some(
                u16::try_from(r.number(1, SHARDS_MAX.into())?)
                    .expect("bounded above"),
            ),
        };
        let hold = match get(Name::HoldSeconds) {
            None => DEFAULT_HOLD,
            Some(r) => Duration::from_secs(r.number(1, HOLD_SECONDS_MAX)?),
        };
        let zero_or_count = |name| -> Result<Option<u32>, SettingsError> {
            match get(name) {
                None => Ok(None),
                Some(r) => Ok(Some(
                    u32::try_from(r.number(0, u64::from(u32::MAX))?)
                        .expect("bounded above"),
                )),
            }
        };
        let initial_limit = zero_or_count(Name::InitialLimit)?
            .unwrap_or(DEFAULT_INITIAL_LIMIT);
        let suspend_after = zero_or_count(Name::SuspendAfter)?
            .unwrap_or(DEFAULT_SUSPEND_AFTER);
        let suspend = match get(Name::SuspendSeconds) {
            None => DEFAULT_SUSPEND,
            Some(r) => Duration::from_secs(r.number(1, HOLD_SECONDS_MAX)?),
        };
        Ok(Settings {
            home: get(Name::Home)
                .map(Raw::path)
                .transpose()?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HOME)),
            shards,
            delnum_width,
            slots,
            remote: get(Name::Remote).map(Raw::os_string).transpose()?,
            queue_owner: get(Name::QueueOwner)
                .map(Raw::queue_owner)
                .transpose()?
                .unwrap_or_else(|| {
                    QueueOwner::Name(DEFAULT_QUEUE_OWNER.to_owned())
                }),
            limits: get(Name::Limits).map(Raw::path).transpose()?,
            state_dir: get(Name::StateDir)
                .map(Raw::path)
                .transpose()?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            hold,
            hold_max: get(Name::HoldMax).map(Raw::count).transpose()?,
            max_running: get(Name::MaxRunning).map(Raw::count).transpose()?,
            log_dir: get(Name::LogDir).map(Raw::path).transpose()?,
            logger: get(Name::Logger).map(Raw::words).transpose()?,
            initial_limit,
            suspend_after,
            suspend,
            responses: get(Name::Responses).map(Raw::path).transpose()?,
            sites: get(Name::Sites)
                .map(Raw::switch)
                .transpose()?
                .unwrap_or(true),
            dns: get(Name::Dns)
                .map(Raw::servers)
                .transpose()?
                .unwrap_or_default(),
            dns_wait: match get(Name::DnsSeconds) {
                None => DEFAULT_DNS_WAIT,
                Some(r) => Duration::from_secs(r.number(1, DNS_SECONDS_MAX)?),
            },
            metrics_keys: match get(Name::MetricsKeys) {
                None => DEFAULT_METRICS_KEYS,
                Some(r) => {
                    u32::try_from(r.number(0, u64::from(METRICS_KEYS_MAX))?)
                        .expect("bounded above")
                }
            },
            fleet: fleet(&get)?,
        })
    }

    /// The slots to announce, before the supervisor lowers them to what
    /// the machine allows: the setting, or 255 / 32767 by framing.
    pub fn requested_slots(&self) -> u32 {
        self.slots.unwrap_or_else(|| default_slots(self.delnum_width))
    }

    /// The limits file path, resolved against the home.
    pub fn limits_path(&self) -> PathBuf {
        // `join` keeps an absolute setting as it is.
        match &self.limits {
            Some(path) => self.home.join(path),
            None => self.home.join(DEFAULT_LIMITS),
        }
    }

    /// The response rules file path, resolved against the home.
    pub fn responses_path(&self) -> PathBuf {
        match &self.responses {
            Some(path) => self.home.join(path),
            None => self.home.join(DEFAULT_RESPONSES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment `env`, then the flags `flags` as the command
    /// line gave them (`--name`, value).
    fn parse(
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Settings, SettingsError> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        };
        let flags: Vec<(String, OsString)> = flags
            .iter()
            .map(|(f, v)| (f.to_string(), OsString::from(v)))
            .collect();
        Settings::from_env_and_flags(&lookup, &flags)
    }

    fn error(source: &str, value: &str, why: &str) -> SettingsError {
        SettingsError {
            source: source.to_owned(),
            value: value.to_owned(),
            why: why.to_owned(),
        }
    }

    #[test]
    fn defaults() {
        let s = parse(&[], &[]).unwrap();
        let want = Settings {
            home: PathBuf::from("/var/qmail"),
            shards: None,
            delnum_width: DelnumWidth::One,
            slots: None,
            remote: None,
            queue_owner: QueueOwner::Name("qmailq".to_owned()),
            limits: None,
            state_dir: PathBuf::from("/run/shardspawn"),
            hold: Duration::from_secs(120),
            hold_max: None,
            max_running: None,
            log_dir: None,
            logger: None,
            initial_limit: 5,
            suspend_after: 10,
            suspend: Duration::from_secs(300),
            responses: None,
            sites: true,
            dns: Vec::new(),
            dns_wait: Duration::from_secs(5),
            metrics_keys: 20,
            fleet: None,
        };
        assert_eq!(s, want);
        assert_eq!(
            s.responses_path(),
            PathBuf::from("/var/qmail/control/responserules")
        );
        assert_eq!(s.requested_slots(), 255);
        assert_eq!(
            s.limits_path(),
            PathBuf::from("/var/qmail/control/concurrencydomains")
        );
    }

    #[test]
    fn every_variable_and_every_flag() {
        // The CA needs rediss://, which needs `tls`; without it the last
        // row is left out.
        let tls = cfg!(feature = "tls");
        let redis = match tls {
            true => "rediss://:pw@10.0.0.5:6380/2",
            false => "redis://:pw@10.0.0.5:6380/2",
        };
        let mut env = vec![
            ("SHARDSPAWN_HOME", "/q"),
            ("SHARDSPAWN_SHARDS", "3"),
            ("SHARDSPAWN_DELNUM_BYTES", "2"),
            ("SHARDSPAWN_SLOTS", "1000"),
            ("QMAILREMOTE", "/q/bin/qmail-remote"),
            ("SHARDSPAWN_QUEUE_OWNER", "502"),
            ("SHARDSPAWN_LIMITS", "/etc/limits"),
            ("SHARDSPAWN_STATE_DIR", "/run/s"),
            ("SHARDSPAWN_HOLD_SECONDS", "30"),
            ("SHARDSPAWN_HOLD_MAX", "9"),
            ("SHARDSPAWN_MAX_RUNNING", "800"),
            ("SHARDSPAWN_LOG_DIR", "/var/log/s"),
            ("SHARDSPAWN_LOGGER", "multilog t s999999"),
            ("SHARDSPAWN_INITIAL_LIMIT", "0"),
            ("SHARDSPAWN_SUSPEND_AFTER", "0"),
            ("SHARDSPAWN_SUSPEND_SECONDS", "60"),
            ("SHARDSPAWN_RESPONSES", "rules"),
            ("SHARDSPAWN_SITES", "0"),
            ("SHARDSPAWN_DNS", "127.0.0.1:5353, ::1"),
            ("SHARDSPAWN_DNS_SECONDS", "2"),
            ("SHARDSPAWN_METRICS_KEYS", "0"),
            ("SHARDSPAWN_REDIS", redis),
            ("SHARDSPAWN_REDIS_PREFIX", "fleet1:"),
            ("SHARDSPAWN_FLEET_RELAYS", "3"),
            ("SHARDSPAWN_FLEET_BATCH", "5"),
            ("SHARDSPAWN_LEASE_SECONDS", "12"),
            ("SHARDSPAWN_FLEET_NAME", "relay-a"),
        ];
        if tls {
            env.push(("SHARDSPAWN_REDIS_CA", "/etc/redis-ca.pem"));
        }
        let want = Settings {
            home: PathBuf::from("/q"),
            shards: Some(3),
            delnum_width: DelnumWidth::Two,
            slots: Some(1000),
            remote: Some(OsString::from("/q/bin/qmail-remote")),
            queue_owner: QueueOwner::Uid(502),
            limits: Some(PathBuf::from("/etc/limits")),
            state_dir: PathBuf::from("/run/s"),
            hold: Duration::from_secs(30),
            hold_max: Some(9),
            max_running: Some(800),
            log_dir: Some(PathBuf::from("/var/log/s")),
            logger: Some(
                ["multilog", "t", "s999999"].map(OsString::from).to_vec(),
            ),
            initial_limit: 0,
            suspend_after: 0,
            suspend: Duration::from_secs(60),
            responses: Some(PathBuf::from("rules")),
            sites: false,
            dns: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ],
            dns_wait: Duration::from_secs(2),
            metrics_keys: 0,
            fleet: Some(Fleet {
                redis: RedisUrl::parse(redis.as_bytes()).unwrap(),
                prefix: "fleet1:".to_owned(),
                relays: 3,
                batch: 5,
                lease: Duration::from_secs(12),
                name: Some("relay-a".to_owned()),
                ca: tls.then(|| PathBuf::from("/etc/redis-ca.pem")),
            }),
        };
        assert_eq!(parse(&env, &[]).unwrap(), want);
        let mut flags = Vec::new();
        for ((_, var, flag), (name, value)) in TABLE.iter().zip(env) {
            assert_eq!(*var, name, "env table out of order");
            assert!(Settings::is_flag(flag));
            flags.push((*flag, value));
        }
        assert_eq!(parse(&[], &flags).unwrap(), want);
        assert_eq!(want.requested_slots(), 1000);
        assert_eq!(want.limits_path(), PathBuf::from("/etc/limits"));
        assert_eq!(want.responses_path(), PathBuf::from("/q/rules"));
    }

    #[test]
    fn flag_beats_environment_beats_default() {
        let env = [("SHARDSPAWN_SHARDS", "3"), ("SHARDSPAWN_HOME", "/e")];
        let s = parse(&env, &[]).unwrap();
        assert_eq!((s.shards, s.home), (Some(3), PathBuf::from("/e")));
        let s = parse(&env, &[("--shards", "5")]).unwrap();
        assert_eq!((s.shards, s.home), (Some(5), PathBuf::from("/e")));
        let s = parse(&env, &[("--home", "/f"), ("--shards", "6")]).unwrap();
        assert_eq!((s.shards, s.home), (Some(6), PathBuf::from("/f")));
        // The last of a repeated flag wins.
        let s = parse(&env, &[("--shards", "6"), ("--shards", "7")]).unwrap();
        assert_eq!(s.shards, Some(7));
        // A flag replaces a bad environment value before it is parsed.
        let env = [("SHARDSPAWN_SHARDS", "many")];
        assert_eq!(parse(&env, &[("--shards", "2")]).unwrap().shards, Some(2));
    }

    #[test]
    fn envdir_newlines_and_blanks_are_trimmed() {
        let env = [
            ("SHARDSPAWN_SHARDS", " 4\t\n"),
            ("SHARDSPAWN_SLOTS", "200\n\n"),
            ("SHARDSPAWN_HOME", "/q\n"),
            ("SHARDSPAWN_QUEUE_OWNER", "qmailq\n"),
        ];
        let s = parse(&env, &[]).unwrap();
        assert_eq!(s.shards, Some(4));
        assert_eq!(s.slots, Some(200));
        assert_eq!(s.home, PathBuf::from("/q"));
        assert_eq!(s.queue_owner, QueueOwner::Name("qmailq".to_owned()));
        // Flags: blanks around numbers too; paths are kept exactly.
        let s = parse(&[], &[("--hold-seconds", " 7 "), ("--home", " /a b ")])
            .unwrap();
        assert_eq!(s.hold, Duration::from_secs(7));
        assert_eq!(s.home, PathBuf::from(" /a b "));
    }

    #[test]
    fn sites_and_name_servers_are_checked() {
        let sites = |v: &str| parse(&[("SHARDSPAWN_SITES", v)], &[]);
        assert!(sites("1\n").unwrap().sites);
        assert_eq!(sites("yes").unwrap_err().why, "must be 0 or 1");
        let dns = |v: &str| parse(&[("SHARDSPAWN_DNS", v)], &[]);
        assert_eq!(
            dns("10.0.0.1,[::1]:5300").unwrap().dns,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:5300".parse().unwrap()
            ]
        );
        assert_eq!(
            dns("ns1.example.com").unwrap_err().why,
            "ns1.example.com is not IP or IP:PORT"
        );
        assert_eq!(dns(" , ").unwrap_err().why, "must not be empty");
        let wait = |v: &str| parse(&[("SHARDSPAWN_DNS_SECONDS", v)], &[]);
        assert_eq!(wait("0").unwrap_err().why, "must be at least 1");
        assert_eq!(wait("301").unwrap_err().why, "must be at most 300");
    }

    #[test]
    fn metrics_keys_are_bounded_and_zero_turns_them_off() {
        let keys = |v: &str| parse(&[], &[("--metrics-keys", v)]);
        assert_eq!(keys("0").unwrap().metrics_keys, 0);
        assert_eq!(keys("1000").unwrap().metrics_keys, METRICS_KEYS_MAX);
        assert_eq!(keys("1001").unwrap_err().why, "must be at most 1000");
        assert_eq!(keys("x").unwrap_err().why, "not a number");
    }

    /// Issue 18: no fleet without Redis; with it, the relays must be
    /// said, and the rest have defaults.
    #[test]
    fn a_fleet_needs_redis_and_the_number_of_relays() {
        let url = "redis://10.0.0.5";
        let s = parse(&[("SHARDSPAWN_FLEET_RELAYS", "3")], &[]).unwrap();
        assert_eq!(s.fleet, None);
        let s =
            parse(&[("SHARDSPAWN_REDIS", url)], &[("--fleet-relays", "4")])
                .unwrap();
        assert_eq!(
            s.fleet,
            Some(Fleet {
                redis: RedisUrl::parse(url.as_bytes()).unwrap(),
                prefix: "shardspawn:".to_owned(),
                relays: 4,
                batch: 2,
                lease: Duration::from_secs(30),
                name: None,
                ca: None,
            })
        );
        // The flag beats the variable; blanks and the newline go.
        let s = parse(
            &[("SHARDSPAWN_REDIS", url), ("SHARDSPAWN_FLEET_RELAYS", "2")],
            &[("--redis", " redis+unix:///run/redis.sock ")],
        )
        .unwrap();
        let fleet = s.fleet.unwrap();
        assert_eq!(fleet.redis.as_str(), "redis+unix:///run/redis.sock");
        assert_eq!(fleet.relays, 2);
        let e = parse(&[("SHARDSPAWN_REDIS", "redis://:pw@r1\n")], &[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "SHARDSPAWN_REDIS=redis://:***@r1: SHARDSPAWN_FLEET_RELAYS \
             (--fleet-relays) must be set too: the relays in the fleet, as \
             each keeps 1/N of every shared limit while Redis is away"
        );
        let e = parse(&[], &[("--redis", url)]).unwrap_err();
        assert_eq!((e.source.as_str(), e.value.as_str()), ("--redis", url));
        // Each is checked even without Redis.
        let table: &[(&str, &str, &str)] = &[
            ("SHARDSPAWN_FLEET_RELAYS", "0", "must be at least 1"),
            ("SHARDSPAWN_FLEET_RELAYS", "1001", "must be at most 1000"),
            ("SHARDSPAWN_FLEET_BATCH", "0", "must be at least 1"),
            ("SHARDSPAWN_FLEET_BATCH", "101", "must be at most 100"),
            ("SHARDSPAWN_LEASE_SECONDS", "1", "must be at least 2"),
            ("SHARDSPAWN_LEASE_SECONDS", "3601", "must be at most 3600"),
            (
                "SHARDSPAWN_REDIS_PREFIX",
                "a b",
                "must be 1 to 64 printable ASCII bytes, no blanks",
            ),
            (
                "SHARDSPAWN_FLEET_NAME",
                "r\u{e9}lais",
                "must be 1 to 64 printable ASCII bytes, no blanks",
            ),
        ];
        for (var, value, why) in table {
            assert_eq!(
                parse(&[(var, value)], &[]),
                Err(error(var, value, why)),
                "{var}={value}"
            );
        }
        let long = "x".repeat(65);
        let e = parse(&[], &[("--redis-prefix", &long)]).unwrap_err();
        assert_eq!(e.why, "must be 1 to 64 printable ASCII bytes, no blanks");
        let bounds = parse(
            &[
                ("SHARDSPAWN_REDIS", url),
                ("SHARDSPAWN_FLEET_RELAYS", "1000"),
                ("SHARDSPAWN_FLEET_BATCH", "100"),
                ("SHARDSPAWN_LEASE_SECONDS", "2"),
                ("SHARDSPAWN_REDIS_PREFIX", &long[..64]),
            ],
            &[],
        )
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(
            (bounds.relays, bounds.batch, bounds.lease, bounds.prefix.len()),
            (1000, 100, Duration::from_secs(2), 64)
        );
    }

    #[test]
    fn a_redis_address_is_checked_and_never_shown_with_its_password() {
        for good in [
            "redis://127.0.0.1",
            "redis://127.0.0.1:6379/0",
            "REDIS://r.example.net/15",
            "redis://[::1]:6380",
            "redis://[::1]",
            "redis://:p%40ss@r.example.net",
            "redis://fleet:secret@r.example.net:6379/1?protocol=resp3",
            "valkey://v.example.net",
            "redis+unix:///run/redis.sock",
            "redis+unix:///run/redis.sock?pass=secret&db=2",
            "unix:///run/redis.sock",
            "valkey+unix://localhost/run/valkey.sock",
        ] {
            assert!(RedisUrl::parse(good.as_bytes()).is_ok(), "{good}");
        }
        let form = "not redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or \
                    redis+unix:///PATH";
        let table: &[(&str, &str)] = &[
            ("127.0.0.1:6379", form),
            ("http://r.example.net", form),
            ("redis:/r.example.net", form),
            ("redis://", "no host"),
            ("redis://:secret@", "no host"),
            ("redis://:secret@:6379", "no host"),
            ("redis://[::1", "no ']' after '['"),
            ("redis://r:http", "port http is not a number 0 to 65535"),
            ("redis://r:70000", "port 70000 is not a number 0 to 65535"),
            ("redis://r/zero", "database /zero is not a number"),
            ("redis+unix://", "no socket path: redis+unix:///PATH"),
            ("redis+unix://host/x.sock", "no socket path: redis+unix:///PATH"),
            (
                "redis://:s\u{e9}cret@r",
                "must be printable ASCII with no blanks (percent-encode \
                 other bytes of a password)",
            ),
            (
                "redis://:se cret@r",
                "must be printable ASCII with no blanks (percent-encode \
                 other bytes of a password)",
            ),
        ];
        for (text, why) in table {
            let got = RedisUrl::parse(text.as_bytes());
            assert_eq!(got.as_ref().map_err(String::as_str), Err(*why));
            let e = parse(&[], &[("--redis", text)]).unwrap_err();
            assert_eq!(e.why, *why);
            assert!(!e.to_string().contains("secret"), "{e}");
            assert!(!e.to_string().contains("cret"), "{e}");
        }
        // What is shown: the password as `***`, all else as given.
        let table: &[(&str, &str)] = &[
            ("redis://r:6379/0", "redis://r:6379/0"),
            ("redis://:secret@r:6379/0", "redis://:***@r:6379/0"),
            ("redis://fleet:secret@r", "redis://fleet:***@r"),
            ("redis://secret@r", "redis://***@r"),
            ("redis://:a:b@c@r", "redis://:***@r"),
            ("redis://:pa/ss@r/0", "redis://:***@r/0"),
            (
                "redis+unix:///s.sock?db=1&pass=secret",
                "redis+unix:///s.sock?db=1&pass=***",
            ),
            ("secret@r:6379", "***@r:6379"),
        ];
        for (text, shown) in table {
            assert_eq!(redact(text), *shown, "{text}");
        }
        let url = RedisUrl::parse(b"redis://u:secret@r/1").unwrap();
        assert_eq!(url.as_str(), "redis://u:secret@r/1");
        assert_eq!(url.to_string(), "redis://u:***@r/1");
        assert_eq!(format!("{url:?}"), r#"RedisUrl("redis://u:***@r/1")"#);
    }

    /// `SHARDSPAWN_REDIS_CA` means something only with `rediss://`: set
    /// with no Redis or with `redis://` it is an error naming it, not a
    /// CA silently unused. (That it reads as a PEM certificate is the
    /// supervisor's check: this module reads no file.)
    #[test]
    fn a_redis_ca_needs_rediss() {
        let ca = "/etc/redis-ca.pem";
        let e = parse(&[("SHARDSPAWN_REDIS_CA", ca)], &[]).unwrap_err();
        assert_eq!(
            e,
            error(
                "SHARDSPAWN_REDIS_CA",
                ca,
                "only applies to rediss://, and SHARDSPAWN_REDIS is unset"
            )
        );
        let e = parse(
            &[
                ("SHARDSPAWN_REDIS", "redis://:secret@10.0.0.5"),
                ("SHARDSPAWN_FLEET_RELAYS", "2"),
            ],
            &[("--redis-ca", ca)],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--redis-ca=/etc/redis-ca.pem: only applies to rediss://: \
             SHARDSPAWN_REDIS is not rediss://"
        );
        let e = parse(&[("SHARDSPAWN_REDIS_CA", "")], &[]).unwrap_err();
        assert_eq!(e.why, "must not be empty");
        if cfg!(feature = "tls") {
            let s = parse(
                &[
                    ("SHARDSPAWN_REDIS", "rediss://:secret@10.0.0.5"),
                    ("SHARDSPAWN_FLEET_RELAYS", "2"),
                    ("SHARDSPAWN_REDIS_CA", ca),
                ],
                &[],
            )
            .unwrap();
            assert_eq!(s.fleet.unwrap().ca, Some(PathBuf::from(ca)));
        }
    }

    /// A build without `tls` refuses `rediss://` as a setting, saying
    /// what to do instead, and without the password.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_is_refused_without_tls() {
        for (text, scheme) in [
            ("rediss://:secret@r.example.net", "rediss"),
            ("VALKEYS://:secret@v.example.net", "valkeys"),
        ] {
            let why = format!(
                "{scheme}:// (TLS) is not built in: use redis:// over a TLS \
                 tunnel"
            );
            assert_eq!(RedisUrl::parse(text.as_bytes()), Err(why.clone()));
            let e = parse(&[], &[("--redis", text)]).unwrap_err();
            assert_eq!(e.why, why);
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    /// With `tls`, `rediss://` is checked as `redis://` is, and never
    /// unverified.
    #[cfg(feature = "tls")]
    #[test]
    fn rediss_is_taken_with_tls() {
        for good in [
            "rediss://r.example.net",
            "rediss://:secret@10.0.0.5:6380/2",
            "REDISS://[::1]:6380",
            "valkeys://fleet:secret@v.example.net",
        ] {
            let url = RedisUrl::parse(good.as_bytes()).unwrap();
            assert!(url.is_tls(), "{good}");
        }
        assert!(!RedisUrl::parse(b"redis://r").unwrap().is_tls());
        for (text, why) in [
            ("rediss://:secret@", "no host"),
            ("rediss://r:x", "port x is not a number 0 to 65535"),
            (
                "rediss://:secret@r/#insecure",
                "#insecure: the server is always verified (a private CA: \
                 SHARDSPAWN_REDIS_CA)",
            ),
        ] {
            let e = parse(&[], &[("--redis", text)]).unwrap_err();
            assert_eq!(e.why, why, "{text}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn queue_owner_is_a_uid_or_a_name() {
        let owner = |v: &str| parse(&[("SHARDSPAWN_QUEUE_OWNER", v)], &[]);
        assert_eq!(owner("0").unwrap().queue_owner, QueueOwner::Uid(0));
        assert_eq!(owner("502").unwrap().queue_owner, QueueOwner::Uid(502));
        assert_eq!(
            owner("qmail2").unwrap().queue_owner,
            QueueOwner::Name("qmail2".to_owned())
        );
        assert_eq!(
            owner("4294967296").unwrap_err().why,
            "must be at most 4294967295"
        );
    }

    #[test]
    fn slots_are_bounded_by_the_width_from_any_source() {
        let s =
            parse(&[("SHARDSPAWN_SLOTS", "300")], &[("--delnum-bytes", "2")]);
        assert_eq!(s.unwrap().slots, Some(300));
        let s = parse(
            &[("SHARDSPAWN_DELNUM_BYTES", "2")],
            &[("--slots", "65535")],
        );
        assert_eq!(s.unwrap().requested_slots(), 65535);
        let s = parse(&[("SHARDSPAWN_DELNUM_BYTES", "2")], &[]).unwrap();
        assert_eq!(s.requested_slots(), 32767);
        assert_eq!(
            parse(
                &[("SHARDSPAWN_DELNUM_BYTES", "1\n")],
                &[("--slots", "300")]
            ),
            Err(error(
                "--slots",
                "300",
                "must be at most 255 with 1 delnum byte(s)"
            ))
        );
        assert_eq!(
            parse(
                &[("SHARDSPAWN_SLOTS", "65536")],
                &[("--delnum-bytes", "2")]
            ),
            Err(error(
                "SHARDSPAWN_SLOTS",
                "65536",
                "must be at most 65535 with 2 delnum byte(s)"
            ))
        );
    }

    #[test]
    fn bad_values() {
        let table: &[(&str, &str, &str)] = &[
            ("SHARDSPAWN_SHARDS", "0", "must be at least 1"),
            ("SHARDSPAWN_SHARDS", "1025", "must be at most 1024"),
            ("SHARDSPAWN_SHARDS", "x", "not a number"),
            ("SHARDSPAWN_SHARDS", "-1", "not a number"),
            ("SHARDSPAWN_SHARDS", "+1", "not a number"),
            ("SHARDSPAWN_SHARDS", "1 2", "not a number"),
            (
                "SHARDSPAWN_SHARDS",
                "99999999999999999999999",
                "must be at most 1024",
            ),
            ("SHARDSPAWN_DELNUM_BYTES", "0", "must be 1 or 2"),
            ("SHARDSPAWN_DELNUM_BYTES", "3", "must be 1 or 2"),
            ("SHARDSPAWN_DELNUM_BYTES", "two", "not a number"),
            ("SHARDSPAWN_SLOTS", "0", "must be at least 1"),
            (
                "SHARDSPAWN_SLOTS",
                "256",
                "must be at most 255 with 1 delnum byte(s)",
            ),
            ("SHARDSPAWN_HOLD_SECONDS", "0", "must be at least 1"),
            (
                "SHARDSPAWN_HOLD_SECONDS",
                "4294967296",
                "must be at most 4294967295",
            ),
            ("SHARDSPAWN_HOLD_SECONDS", "2m", "not a number"),
            ("SHARDSPAWN_HOLD_MAX", "0", "must be at least 1"),
            ("SHARDSPAWN_MAX_RUNNING", "0", "must be at least 1"),
        ];
        for (var, value, why) in table {
            assert_eq!(
                parse(&[(var, value)], &[]),
                Err(error(var, value, why)),
                "{var}={value}"
            );
        }
    }

    #[test]
    fn empty_values_are_errors_for_every_setting() {
        for (_, var, flag) in TABLE {
            for value in ["", "\n"] {
                let want = error(var, "", "must not be empty");
                assert_eq!(parse(&[(var, value)], &[]), Err(want), "{var}");
            }
            let want = error(flag, "", "must not be empty");
            assert_eq!(parse(&[], &[(flag, "")]), Err(want), "{flag}");
        }
        // Blanks only: empty for a number.
        assert_eq!(
            parse(&[("SHARDSPAWN_SLOTS", " \t\n")], &[]),
            Err(error("SHARDSPAWN_SLOTS", " \t", "must not be empty"))
        );
    }

    /// The command line's own errors (a missing value, a word that is
    /// no flag) are the supervisor's (`cli.rs`), which splits it.
    #[test]
    fn bad_flags() {
        let table: &[(&[(&str, &str)], SettingsError)] = &[
            (
                &[("--frobnicate", "")],
                error("--frobnicate", "", "unknown flag"),
            ),
            (&[("--slot", "5")], error("--slot", "5", "unknown flag")),
            (&[("--", "")], error("--", "", "unknown flag")),
            (
                &[("--shards", "0")],
                error("--shards", "0", "must be at least 1"),
            ),
        ];
        for (flags, want) in table {
            assert_eq!(parse(&[], flags).as_ref(), Err(want), "{flags:?}");
        }
        // Any value is the flag's, even one starting with "--".
        let s = parse(&[], &[("--remote", "--odd")]).unwrap();
        assert_eq!(s.remote, Some(OsString::from("--odd")));
    }

    #[test]
    fn non_utf8_values_survive() {
        let flags =
            [("--remote".to_owned(), OsString::from_vec(b"/x\xff".to_vec()))];
        let s = Settings::from_env_and_flags(&|_| None, &flags).unwrap();
        assert_eq!(s.remote, Some(OsString::from_vec(b"/x\xff".to_vec())));
        let flags =
            [("--log-dir".to_owned(), OsString::from_vec(b"/l\xfe".to_vec()))];
        let s = Settings::from_env_and_flags(&|_| None, &flags).unwrap();
        assert_eq!(
            s.log_dir,
            Some(PathBuf::from(OsString::from_vec(b"/l\xfe".to_vec())))
        );
    }

    #[test]
    fn display_is_source_equals_value_colon_why() {
        let e = parse(&[("SHARDSPAWN_SLOTS", "0\n")], &[]).unwrap_err();
        assert_eq!(e.to_string(), "SHARDSPAWN_SLOTS=0: must be at least 1");
        let e = parse(&[], &[("--shards", "x")]).unwrap_err();
        assert_eq!(e.to_string(), "--shards=x: not a number");
        let e = parse(&[], &[("--nope", "")]).unwrap_err();
        assert_eq!(e.to_string(), "--nope=: unknown flag");
    }

    #[test]
    fn limits_path_resolves_against_home() {
        let s = parse(&[("SHARDSPAWN_HOME", "/q")], &[]).unwrap();
        assert_eq!(
            s.limits_path(),
            PathBuf::from("/q/control/concurrencydomains")
        );
        let s = parse(&[], &[("--home", "/q"), ("--limits", "etc/limits")])
            .unwrap();
        assert_eq!(s.limits_path(), PathBuf::from("/q/etc/limits"));
        let s = parse(&[], &[("--home", "/q"), ("--limits", "/etc/limits")])
            .unwrap();
        assert_eq!(s.limits_path(), PathBuf::from("/etc/limits"));
    }
}
