//! A shard's fleet client: the thread that keeps the shard's shared keys
//! in Redis (issue 18), so that a fleet of relays shares one limit and
//! one rate per key.
//!
//! The shard's core says what it needs of a key ([`Claim`], absolute
//! counts); the shard's loop hands claims to [`Fleet::send`], which
//! never blocks. The thread coalesces what waits (the latest claim per
//! key wins; tokens given back add up), asks Redis with one script call
//! for up to [`CHUNK`] keys, and answers with [`Report::Granted`]. It
//! writes to an eventfd after each batch of reports; the shard's epoll
//! watches [`Fleet::wake_fd`] and collects them with [`Fleet::reports`].
//!
//! Every third of the lease time the thread claims again, with the last
//! claim, every key that runs or wants something, so its leases do not
//! expire. When Redis cannot be reached, or answers with an error, the
//! shard hears [`Report::Down`] once per outage; the thread tries again
//! every second, says [`Report::Up`] with Redis's first good answer,
//! and claims again every key it knows (absolute counts make that safe,
//! even after Redis lost everything). Claims sent while Redis is away
//! get no grant, but the latest of each key is what the return claims.
//!
//! The Redis side (one Lua script, `claim.lua`): per key, a hash of
//! holder → `"COUNT WANT EXPIRY_MS"` (the leases; expired holders are
//! dropped; when others wait, a holder is cut toward a fair share), a
//! GCRA's theoretical arrival time (the rate), and the holders that wait
//! for a token, served the longest-waiting first (the rate's turns).
//!
//! What the thread never does: fork, read or change the environment (the
//! shard clones its children with raw syscalls beside it), block the
//! shard, or show the URL's password ([`redact`]). XXX: a host *name* in
//! the URL is resolved by libc's getaddrinfo, which may getenv() its
//! resolver variables: a read, harmless while nobody writes the
//! environment (the shard does not after its start); an IP address in
//! the URL avoids even that.
//!
//! [`testing`], for tests only, starts a throw-away `redis-server` (it
//! forks and reads `TMPDIR`; the thread never uses it).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod client;
pub mod testing;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};

pub use shardspawn_common::fleet::{Claim, Grant, Report};

/// Keys per script call: a batch larger than this is sent in several
/// calls, so that one call never holds Redis for long.
pub const CHUNK: usize = 256;

/// What the fleet client needs to know. Its `Debug` hides the URL's
/// password.
#[derive(Clone)]
pub struct Config {
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` with
    /// the `tls` feature.
    pub url: String,
    /// For `rediss://` only: the CA certificates (PEM, one or more) the
    /// server's certificate must chain to, instead of the Mozilla roots
    /// compiled in. The caller reads the file: the thread opens none.
    pub ca: Option<Vec<u8>>,
    /// Put before every Redis key: one fleet per prefix.
    pub prefix: String,
    /// This shard's name in the lease hashes:
    /// `NAME:SUPERVISOR_PID:SHARD_INDEX`.
    pub holder: String,
    /// A lease's life unless renewed (renewed every third of it).
    pub lease: Duration,
    /// Leases and tokens taken ahead of need per key: the rate's burst.
    pub batch: u32,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact(&self.url))
            .field("ca", &self.ca.as_ref().map(|pem| CaBytes(pem.len())))
            .field("prefix", &self.prefix)
            .field("holder", &self.holder)
            .field("lease", &self.lease)
            .field("batch", &self.batch)
            .finish()
    }
}

/// The handle a shard keeps on its fleet thread.
pub struct Fleet {
    orders: Sender<Order>,
    reports: Receiver<Report>,
    wake: Arc<EventFd>,
    commands: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What the shard tells its thread.
enum Order {
    Claims(Vec<Claim>),
    /// Give every lease back, trying until the deadline, then end.
    Shutdown(Instant),
}

/// A CA's length, as `Config`'s `Debug` shows it (not its text).
struct CaBytes(usize);

impl fmt::Debug for CaBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes of PEM", self.0)
    }
}

impl Fleet {
    /// Starts the thread; never blocks on Redis (the connection is made
    /// by the thread). Fails on a URL that does not parse (the message
    /// shows it without its password), on a CA with no certificate or
    /// given without `rediss://`, or when the eventfd or the thread
    /// cannot be made.
    pub fn start(cfg: Config) -> io::Result<Fleet> {
        let redis = redis_client(&cfg).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {why}", redact(&cfg.url)),
            )
        })?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let commands = Arc::new(AtomicU64::new(0));
        let (orders, orders_rx) = crossbeam_channel::unbounded();
        let (reports_tx, reports) = crossbeam_channel::unbounded();
        let thread = client::Client::new(
            cfg,
            redis,
            reports_tx,
            Arc::clone(&wake),
            Arc::clone(&commands),
        );
        let thread = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || thread.run(orders_rx))?;
        Ok(Fleet { orders, reports, wake, commands, thread: Some(thread) })
    }

    /// Readable when reports wait: the shard puts it in its epoll
    /// (level-triggered: it stays readable until [`Fleet::reports`]).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Hands claims to the thread; never blocks.
    pub fn send(&self, claims: Vec<Claim>) {
        if !claims.is_empty() {
            // A send fails only when the thread is gone: `shutdown`
            // (which takes `self`) or a panic, which leaves the shard
            // without grants (its keys stay held), not stuck.
            let _ = self.orders.send(Order::Claims(claims));
        }
    }

    /// Every report waiting (drains the wake fd).
    pub fn reports(&mut self) -> Vec<Report> {
        // The fd first, the channel second: a report sent between the
        // two is taken now and leaves the fd readable, which costs one
        // empty wake-up and loses nothing. EAGAIN: nothing written.
        let _ = self.wake.read();
        self.reports.try_iter().collect()
    }

    /// Commands sent to Redis since start: each script call, and each
    /// `SCRIPT LOAD` after Redis forgot the script (not a connection's
    /// handshake: `AUTH`, `SELECT`, `CLIENT SETINFO`).
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Gives back every lease this shard holds (best effort, at most
    /// `wait`), ends the thread. A command under way when this is
    /// called may first take its own timeout (1 s).
    pub fn shutdown(mut self, wait: Duration) {
        let _ = self.orders.send(Order::Shutdown(Instant::now() + wait));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The client of `cfg`'s URL, trusting its CA if it has one; the error
/// in one line, without the URL.
fn redis_client(cfg: &Config) -> Result<redis::Client, String> {
    let text = |e: redis::RedisError| one_line(&e.to_string());
    let Some(pem) = &cfg.ca else {
        return redis::Client::open(cfg.url.as_str()).map_err(text);
    };
    let scheme = cfg.url.split_once("://").map_or("", |(s, _)| s);
    if !["rediss", "valkeys"].iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err("a CA applies to rediss:// only".to_owned());
    }
    #[cfg(feature = "tls")]
    {
        ca_certificates(pem)?;
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        };
        redis::Client::build_with_tls(cfg.url.as_str(), certs).map_err(text)
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = pem;
        Err("rediss:// (TLS) is not built in (the fleet's tls feature)"
            .to_owned())
    }
}

/// How many CA certificates `pem` (a CA file's text) gives a `rediss://`
/// client to trust, parsed as the client will; an error, in one line, if
/// none, or if one does not parse or is no CA the client can take.
#[cfg(feature = "tls")]
pub fn ca_certificates(pem: &[u8]) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "certificate {} is not PEM: {}",
                n + 1,
                one_line(&e.to_string())
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "certificate {} is no CA: {}",
                n + 1,
                one_line(&e.to_string())
            )
        })?;
    }
    match roots.len() {
        0 => Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            .to_owned()),
        n => Ok(n),
    }
}

/// `url` with its password, if any, replaced by `***`: what a log line
/// or a report may show.
pub fn redact(url: &str) -> String {
    let Some(scheme) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    // The user info ends at the last '@' before the path.
    let end = url[scheme..].find('/').map_or(url.len(), |i| scheme + i);
    let Some(at) = url[scheme..end].rfind('@').map(|i| scheme + i) else {
        return url.to_owned();
    };
    match url[scheme..at].find(':') {
        Some(colon) => {
            format!("{}***{}", &url[..scheme + colon + 1], &url[at..])
        }
        None => url.to_owned(),
    }
}

/// `text` on one line, for a [`Report::Down`].
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config for `url` and `ca`, the rest as any test wants it.
    fn config(url: impl Into<String>, ca: Option<Vec<u8>>) -> Config {
        Config {
            url: url.into(),
            ca,
            prefix: "t:".into(),
            holder: "h".into(),
            lease: Duration::from_secs(2),
            batch: 2,
        }
    }

    #[test]
    fn config_debug_hides_the_password() {
        let cfg = config(
            "redis://:secret@h",
            Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
        );
        let shown = format!("{cfg:?}");
        assert!(shown.contains("redis://:***@h"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("ca: Some(27 bytes of PEM)"), "{shown}");
    }

    #[test]
    fn redact_hides_passwords_only() {
        for (url, shown) in [
            ("redis://:secret@h:6379/2", "redis://:***@h:6379/2"),
            ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("rediss://u:s3@h:1", "rediss://u:***@h:1"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    /// Without the `tls` feature, `rediss://` is a configuration error
    /// at start, not an outage later.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_needs_the_tls_feature() {
        let cfg = config("rediss://:secret@h", None);
        let e = Fleet::start(cfg).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().starts_with("rediss://:***@h: "), "{e}");
    }

    /// A CA is for `rediss://`: given with `redis://` it is a
    /// configuration error, not a CA silently unused.
    #[test]
    fn a_ca_needs_rediss() {
        let cfg = config("redis://:secret@h", Some(Vec::new()));
        let e = Fleet::start(cfg).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "redis://:***@h: a CA applies to rediss:// only"
        );
    }

    /// A CA file must give the client at least one CA, each parsed as
    /// the client will.
    #[cfg(feature = "tls")]
    #[test]
    fn a_ca_file_must_hold_certificates() {
        for (pem, why) in [
            (&b""[..], "no PEM certificate (-----BEGIN CERTIFICATE-----) in it"),
            (
                b"just some text\n",
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate 1 is no CA: ",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                "certificate 1 is not PEM: ",
            ),
        ] {
            let e = ca_certificates(pem).unwrap_err();
            assert!(e.starts_with(why), "{e}");
            assert!(!e.contains('\n'), "{e}");
            let cfg = config("rediss://:secret@h", Some(pem.to_vec()));
            let e = Fleet::start(cfg).err().expect("refused");
            assert!(e.to_string().starts_with("rediss://:***@h: "), "{e}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        for url in [
            "http://:secret@h",
            "redis://:secret@h:port",
            "redis://:secret@h/db",
            "redis://:secret@/0",
            "redis://u:secret@h:6379/0?protocol=x",
        ] {
            let cfg = config(url, None);
            let e = Fleet::start(cfg).err().expect(url);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
