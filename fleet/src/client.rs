//! The fleet thread: its connection to Redis, the claims it knows, and
//! its one loop (wait for claims or the next renewal, send what waits in
//! as few script calls as it can, report, wake the shard).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::eventfd::EventFd;
use redis::{Connection, ErrorKind, RedisError, ServerErrorKind};

use crate::{CHUNK, Claim, Config, Grant, Order, Report, one_line, redact};

/// The script every claim runs (see its header for its arguments).
const SCRIPT: &str = include_str!("claim.lua");

/// Connect, read and write timeouts; also the time between two
/// attempts to reach Redis.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The thread's state.
pub(crate) struct Client {
    cfg: Config,
    redis: redis::Client,
    /// The script's SHA-1, for EVALSHA.
    sha: String,
    con: Option<Connection>,
    /// A `Down` went out and no `Up` since.
    down: bool,
    /// The last claim of every key this shard may hold leases of, with
    /// tokens and unused at 0: what a renewal or a re-claim sends.
    known: HashMap<Vec<u8>, Claim>,
    /// Claims to send at the next flush (only while connected).
    pending: HashMap<Vec<u8>, Claim>,
    renew_at: Instant,
    reports: Sender<Report>,
    wake: Arc<EventFd>,
    commands: Arc<AtomicU64>,
}

impl Client {
    pub(crate) fn new(
        cfg: Config,
        redis: redis::Client,
        reports: Sender<Report>,
        wake: Arc<EventFd>,
        commands: Arc<AtomicU64>,
    ) -> Client {
        let sha = redis::Script::new(SCRIPT).get_hash().to_owned();
        let renew_at = Instant::now() + renewal(&cfg);
        Client {
            cfg,
            redis,
            sha,
            con: None,
            down: false,
            known: HashMap::new(),
            pending: HashMap::new(),
            renew_at,
            reports,
            wake,
            commands,
        }
    }

    /// The loop, until `Shutdown` or the shard's handle is gone.
    pub(crate) fn run(mut self, orders: Receiver<Order>) {
        let mut retry_at = Instant::now();
        loop {
            if self.con.is_none() && Instant::now() >= retry_at {
                self.connect();
                retry_at = Instant::now() + TIMEOUT;
            }
            let deadline = match self.con {
                None => retry_at,
                Some(_) if !self.pending.is_empty() => Instant::now(),
                Some(_) => self.renew_at,
            };
            // Block for the first order or the deadline; then take
            // every order that waits, so one flush carries them all.
            let first = match orders.recv_deadline(deadline) {
                Ok(order) => Some(order),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            for order in first.into_iter().chain(orders.try_iter()) {
                match order {
                    Order::Claims(claims) => {
                        claims.into_iter().for_each(|claim| self.take(claim))
                    }
                    Order::Shutdown(by) => return self.give_back(by),
                }
            }
            if self.con.is_some() {
                if Instant::now() >= self.renew_at {
                    self.renew();
                }
                self.flush();
            }
        }
    }

    /// Connects; on success claims again every key it knows.
    fn connect(&mut self) {
        let con =
            self.redis.get_connection_with_timeout(TIMEOUT).and_then(|con| {
                con.set_read_timeout(Some(TIMEOUT))?;
                con.set_write_timeout(Some(TIMEOUT))?;
                Ok(con)
            });
        match con {
            Ok(con) => {
                self.con = Some(con);
                for (key, claim) in &self.known {
                    self.pending
                        .entry(key.clone())
                        .or_insert_with(|| claim.clone());
                }
                self.renew_at = Instant::now() + renewal(&self.cfg);
                // Back: said now if nothing is to be sent, else with
                // the first answer (a script that keeps failing, say on
                // a key of the wrong type, is one outage, not a flap).
                if self.down && self.pending.is_empty() {
                    self.down = false;
                    self.report(vec![Report::Up]);
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Takes one claim from the shard: it supersedes the key's waiting
    /// claim, whose unused tokens it adds. While Redis is away, only
    /// `known` changes (the shard was told its claims are dropped; the
    /// re-claim on return sends the latest).
    fn take(&mut self, mut claim: Claim) {
        let resting = Claim { tokens: 0, unused: 0, ..claim.clone() };
        self.known.insert(claim.key.clone(), resting);
        if self.con.is_some() {
            if let Some(old) = self.pending.get(&claim.key) {
                claim.unused = claim.unused.saturating_add(old.unused);
            }
            self.pending.insert(claim.key.clone(), claim);
        }
    }

    /// Queues a renewal of every key that runs or wants something.
    fn renew(&mut self) {
        for (key, claim) in &self.known {
            if claim.running > 0 || claim.want > 0 {
                self.pending
                    .entry(key.clone())
                    .or_insert_with(|| claim.clone());
            }
        }
        self.renew_at = Instant::now() + renewal(&self.cfg);
    }

    /// Sends every pending claim, [`CHUNK`] keys a call; reports the
    /// grants and wakes the shard.
    fn flush(&mut self) {
        let claims: Vec<Claim> =
            self.pending.drain().map(|(_, c)| c).collect();
        let mut grants = Vec::with_capacity(claims.len());
        let mut failed = None;
        for chunk in claims.chunks(CHUNK) {
            match self.eval(chunk) {
                Ok(answer) => grants.extend(answer),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // A key given back entirely is forgotten once Redis has it
        // (unless the shard claimed it again meanwhile: it has not, as
        // this thread took no order since the drain).
        for grant in &grants {
            if self
                .known
                .get(&grant.key)
                .is_some_and(|c| c.running == 0 && c.want == 0)
            {
                self.known.remove(&grant.key);
            }
        }
        let mut reports = Vec::with_capacity(2);
        if self.down && !grants.is_empty() {
            self.down = false;
            reports.push(Report::Up);
        }
        if !grants.is_empty() {
            reports.push(Report::Granted(grants));
        }
        if !reports.is_empty() {
            self.report(reports);
        }
        if let Some(e) = failed {
            self.fail(&e);
        }
    }

    /// One script call for `chunk`; on NOSCRIPT, loads the script and
    /// calls again.
    fn eval(&mut self, chunk: &[Claim]) -> Result<Vec<Grant>, RedisError> {
        let Some(con) = self.con.as_mut() else {
            return Err(RedisError::from((ErrorKind::Io, "not connected")));
        };
        let call = evalsha(&self.sha, &self.cfg, chunk);
        self.commands.fetch_add(1, Ordering::Relaxed);
        let answer: Vec<i64> = match call.query(con) {
            Err(e)
                if e.kind()
                    == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                self.commands.fetch_add(2, Ordering::Relaxed);
                redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).exec(con)?;
                call.query(con)?
            }
            other => other?,
        };
        if answer.len() != 4 * chunk.len() {
            return Err(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "the claim script answered with the wrong count",
            )));
        }
        let n = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Ok(chunk
            .iter()
            .zip(answer.chunks(4))
            .map(|(claim, a)| Grant {
                key: claim.key.clone(),
                allowed: n(a[0]),
                fleet: n(a[1]),
                waiting: n(a[2]),
                tokens: n(a[3]),
            })
            .collect())
    }

    /// Redis is away or said no: drop the connection and what was to
    /// be sent (`known` keeps it), tell the shard once per outage.
    fn fail(&mut self, e: &RedisError) {
        self.con = None;
        self.pending.clear();
        if !self.down {
            self.down = true;
            // A read timeout is EAGAIN to the OS: say what it means.
            let what = match e.is_timeout() {
                true => format!("no answer in {} s", TIMEOUT.as_secs()),
                false => one_line(&e.to_string()),
            };
            let why = format!("{}: {what}", redact(&self.cfg.url));
            self.report(vec![Report::Down(why)]);
        }
    }

    /// Claims 0/0 for every key held, trying until `by`.
    fn give_back(mut self, by: Instant) {
        // Every key it may hold leases of, the waiting claim last (its
        // unused tokens go back too).
        let mut by_key: HashMap<&[u8], Claim> = HashMap::new();
        for c in self.known.values().chain(self.pending.values()) {
            let back = Claim { running: 0, want: 0, tokens: 0, ..c.clone() };
            by_key.insert(&c.key, back);
        }
        let claims: Vec<Claim> = by_key.into_values().collect();
        if claims.is_empty() {
            return;
        }
        let left = |by: Instant| by.saturating_duration_since(Instant::now());
        if self.con.is_none() && !left(by).is_zero() {
            match self.redis.get_connection_with_timeout(left(by).min(TIMEOUT))
            {
                Ok(con) => self.con = Some(con),
                Err(_) => return,
            }
        }
        for chunk in claims.chunks(CHUNK) {
            let left = left(by).min(TIMEOUT);
            let Some(con) = self.con.as_ref() else { return };
            if left.is_zero()
                || con.set_read_timeout(Some(left)).is_err()
                || con.set_write_timeout(Some(left)).is_err()
                || self.eval(chunk).is_err()
            {
                return;
            }
        }
    }

    /// Hands reports to the shard and wakes it.
    fn report(&self, reports: Vec<Report>) {
        for report in reports {
            // The shard's handle gone: nobody to tell.
            let _ = self.reports.send(report);
        }
        // Fails only if the counter would overflow.
        let _ = self.wake.write(1);
    }
}

/// The EVALSHA of `chunk`.
fn evalsha(sha: &str, cfg: &Config, chunk: &[Claim]) -> redis::Cmd {
    let mut call = redis::cmd("EVALSHA");
    call.arg(sha).arg(3 * chunk.len());
    for claim in chunk {
        for kind in [&b"lease:"[..], b"rate:", b"turn:"] {
            let mut key = Vec::with_capacity(
                cfg.prefix.len() + kind.len() + claim.key.len(),
            );
            key.extend_from_slice(cfg.prefix.as_bytes());
            key.extend_from_slice(kind);
            key.extend_from_slice(&claim.key);
            call.arg(key);
        }
    }
    let lease_ms = u64::try_from(cfg.lease.as_millis()).unwrap_or(u64::MAX);
    call.arg(&cfg.holder).arg(lease_ms).arg(cfg.batch.max(1));
    for claim in chunk {
        let interval = claim.rate.map_or(0, |rate| {
            u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX)
        });
        call.arg(claim.limit)
            .arg(claim.running)
            .arg(claim.want)
            .arg(interval)
            .arg(claim.tokens)
            .arg(claim.unused);
    }
    call
}

/// The time between two renewals: a third of the lease.
fn renewal(cfg: &Config) -> Duration {
    cfg.lease / 3
}
