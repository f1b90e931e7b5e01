//! What a shard is told at start: the supervisor resolves the settings
//! once and passes each shard its part as arguments, so a shard never
//! re-reads the environment (which it passes to qmail-remote untouched).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use crate::settings;

/// A shard's resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Which shard this is (0-based), for logs and status.
    pub index: u16,
    /// The program run per delivery; also its argv\[0\] (notqmail's
    /// `QMAILREMOTE` rule). `qmail-remote` is found through PATH.
    pub remote: OsString,
    /// The uid that must own message files.
    pub owner_uid: u32,
    /// Most qmail-remote processes this shard runs at once.
    pub max_running: u32,
    /// Longest a delivery waits for its key before a `Z`.
    pub hold: Duration,
    /// Most deliveries waiting per key; `None`: 4 × the key's limit.
    pub hold_max: Option<u32>,
    /// Where to publish live status (`shardN`, `shardN.prom`); `None`:
    /// nowhere.
    pub state_dir: Option<PathBuf>,
    /// The log directory; the shard logs into `shardN` under it, through
    /// `logger`. `None`: fd 2 as inherited.
    pub log_dir: Option<PathBuf>,
    /// The logger program and its arguments (the directory is appended).
    pub logger: Vec<OsString>,
    /// The effective limit a key starts at; 0: no adaptation.
    pub initial_limit: u32,
    /// Site-level failures in a row that suspend a key; 0: never.
    pub suspend_after: u32,
    /// How long such a suspension lasts.
    pub suspend: Duration,
    /// The busiest keys given series of their own in `shardN.prom`; 0:
    /// none.
    pub metrics_keys: u32,
    /// The fleet this relay shares its `shared` keys with (issue 18);
    /// `None`: no Redis, shared keys are kept here alone. The Redis
    /// address is not here: it may hold a password, and a command line
    /// is anyone's to read, so a shard takes it from its environment
    /// ([`REDIS_ENV`]), which the supervisor sets.
    pub fleet: Option<FleetSettings>,
}

/// The variable a shard reads its Redis address from.
pub const REDIS_ENV: &str = "SHARDSPAWN_REDIS";

/// How a shard takes part in its fleet (issue 18).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    /// Put before every Redis key: one fleet's keys apart from
    /// another's on one server.
    pub prefix: String,
    /// Relays in the fleet: while Redis is away, each takes 1/relays of
    /// a shared limit and rate.
    pub relays: u32,
    /// Leases and rate tokens taken ahead of need, at most, per key.
    pub batch: u32,
    /// How long a lease lasts unless renewed: a relay that dies gives
    /// its leases back within it.
    pub lease: Duration,
    /// This relay's name in the fleet (the holder of its leases, with
    /// the supervisor's pid and the shard's index).
    pub name: String,
    /// A PEM file of the CAs a `rediss://` server must chain to, instead
    /// of the Mozilla roots (`SHARDSPAWN_REDIS_CA`, absolute, checked by
    /// the supervisor). A path is no secret: it goes on the command line.
    pub ca: Option<PathBuf>,
}

impl ShardConfig {
    /// The arguments that [`ShardConfig::from_args`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--index".into(),
            self.index.to_string().into(),
            "--remote".into(),
            self.remote.clone(),
            "--owner-uid".into(),
            self.owner_uid.to_string().into(),
            "--max-running".into(),
            self.max_running.to_string().into(),
            "--hold-ms".into(),
            self.hold.as_millis().to_string().into(),
            "--initial-limit".into(),
            self.initial_limit.to_string().into(),
            "--suspend-after".into(),
            self.suspend_after.to_string().into(),
            "--suspend-ms".into(),
            self.suspend.as_millis().to_string().into(),
            "--metrics-keys".into(),
            self.metrics_keys.to_string().into(),
        ];
        if let Some(n) = self.hold_max {
            args.extend(["--hold-max".into(), n.to_string().into()]);
        }
        if let Some(path) = &self.state_dir {
            args.extend(["--state-dir".into(), path.clone().into_os_string()]);
        }
        if let Some(path) = &self.log_dir {
            args.extend(["--log-dir".into(), path.clone().into_os_string()]);
        }
        for word in &self.logger {
            args.extend(["--logger-arg".into(), word.clone()]);
        }
        if let Some(f) = &self.fleet {
            args.extend([
                "--fleet-prefix".into(),
                f.prefix.clone().into(),
                "--fleet-relays".into(),
                f.relays.to_string().into(),
                "--fleet-batch".into(),
                f.batch.to_string().into(),
                "--fleet-lease-ms".into(),
                f.lease.as_millis().to_string().into(),
                "--fleet-name".into(),
                f.name.clone().into(),
            ]);
            if let Some(ca) = &f.ca {
                args.extend([
                    "--fleet-redis-ca".into(),
                    ca.clone().into_os_string(),
                ]);
            }
        }
        args
    }

    /// Parses what [`ShardConfig::to_args`] wrote. Only the supervisor
    /// writes these, so an error names the argument and nothing more.
    pub fn from_args(args: &[OsString]) -> Result<ShardConfig, String> {
        // The supervisor writes every setting; one left out is the
        // settings' default.
        let mut cfg = ShardConfig {
            index: 0,
            remote: OsString::from(settings::DEFAULT_REMOTE),
            owner_uid: 0,
            max_running: 1,
            hold: settings::DEFAULT_HOLD,
            hold_max: None,
            state_dir: None,
            log_dir: None,
            logger: Vec::new(),
            initial_limit: settings::DEFAULT_INITIAL_LIMIT,
            suspend_after: settings::DEFAULT_SUSPEND_AFTER,
            suspend: settings::DEFAULT_SUSPEND,
            metrics_keys: settings::DEFAULT_METRICS_KEYS,
            fleet: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{}: missing value", flag.display()))?;
            match flag.to_str() {
                Some("--index") => cfg.index = number(flag, value)?,
                Some("--remote") => cfg.remote = value.clone(),
                Some("--owner-uid") => cfg.owner_uid = number(flag, value)?,
                Some("--max-running") => {
                    cfg.max_running = number(flag, value)?
                }
                Some("--hold-ms") => {
                    cfg.hold = Duration::from_millis(number(flag, value)?)
                }
                Some("--hold-max") => {
                    cfg.hold_max = Some(number(flag, value)?)
                }
                Some("--state-dir") => cfg.state_dir = Some(value.into()),
                Some("--log-dir") => cfg.log_dir = Some(value.into()),
                Some("--logger-arg") => cfg.logger.push(value.clone()),
                Some("--initial-limit") => {
                    cfg.initial_limit = number(flag, value)?
                }
                Some("--suspend-after") => {
                    cfg.suspend_after = number(flag, value)?
                }
                Some("--suspend-ms") => {
                    cfg.suspend = Duration::from_millis(number(flag, value)?)
                }
                Some("--metrics-keys") => {
                    cfg.metrics_keys = number(flag, value)?
                }
                Some(f) if f.starts_with("--fleet-") => {
                    let fleet =
                        cfg.fleet.get_or_insert_with(|| FleetSettings {
                            prefix: String::new(),
                            relays: 1,
                            batch: 1,
                            lease: Duration::from_secs(30),
                            name: String::new(),
                            ca: None,
                        });
                    let text = || {
                        value
                            .to_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("{f}: not UTF-8"))
                    };
                    match f {
                        "--fleet-prefix" => fleet.prefix = text()?,
                        "--fleet-relays" => {
                            fleet.relays = number(flag, value)?
                        }
                        "--fleet-batch" => fleet.batch = number(flag, value)?,
                        "--fleet-lease-ms" => {
                            fleet.lease =
                                Duration::from_millis(number(flag, value)?)
                        }
                        "--fleet-name" => fleet.name = text()?,
                        "--fleet-redis-ca" => fleet.ca = Some(value.into()),
                        _ => return Err(format!("{f}: unknown flag")),
                    }
                }
                _ => return Err(format!("{}: unknown flag", flag.display())),
            }
        }
        Ok(cfg)
    }
}

fn number<T: std::str::FromStr>(flag: &OsStr, v: &OsStr) -> Result<T, String> {
    v.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        format!("{}={}: not a number", flag.display(), v.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let cfg = ShardConfig {
            index: 3,
            remote: "/usr/local/bin/qmail-remote x".into(),
            owner_uid: 64011,
            max_running: 4000,
            hold: Duration::from_millis(1500),
            hold_max: Some(9),
            state_dir: Some("/run/shardspawn".into()),
            log_dir: Some("/var/log/shardspawn".into()),
            logger: vec!["multilog".into(), "t".into(), "s99999".into()],
            initial_limit: 5,
            suspend_after: 10,
            suspend: Duration::from_millis(2500),
            metrics_keys: 7,
            fleet: Some(FleetSettings {
                prefix: "fleet1:".into(),
                relays: 3,
                batch: 2,
                lease: Duration::from_millis(7500),
                name: "relay-a".into(),
                ca: Some("/etc/shardspawn/redis-ca.pem".into()),
            }),
        };
        assert_eq!(ShardConfig::from_args(&cfg.to_args()), Ok(cfg));
    }

    #[test]
    fn a_setting_left_out_is_the_settings_default() {
        let cfg = ShardConfig::from_args(&[]).unwrap();
        assert_eq!(cfg.remote, settings::DEFAULT_REMOTE);
        assert_eq!(cfg.hold, settings::DEFAULT_HOLD);
        assert_eq!(cfg.initial_limit, settings::DEFAULT_INITIAL_LIMIT);
        assert_eq!(cfg.suspend_after, settings::DEFAULT_SUSPEND_AFTER);
        assert_eq!(cfg.suspend, settings::DEFAULT_SUSPEND);
        assert_eq!(cfg.metrics_keys, settings::DEFAULT_METRICS_KEYS);
    }

    #[test]
    fn bad_arguments_are_named() {
        let args: Vec<OsString> = vec!["--index".into(), "x".into()];
        assert_eq!(
            ShardConfig::from_args(&args),
            Err("--index=x: not a number".to_string())
        );
        let args: Vec<OsString> = vec!["--bogus".into(), "1".into()];
        assert!(
            ShardConfig::from_args(&args).unwrap_err().contains("--bogus")
        );
    }
}
