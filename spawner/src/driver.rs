//! The only code in a shard that waits. It turns what the kernel reports
//! into [`Event`]s for the [`Core`] and carries out its [`Effect`]s
//! through [`sys`].
//!
//! Descriptors: fd 0 job frames (read, non-blocking), fd 1 done frames
//! (written, non-blocking, buffered), a signalfd for SIGCHLD, one pipe
//! per running delivery, and with a fleet (issue 18) the eventfd its
//! Redis thread writes when reports wait. All watched level-triggered
//! in one epoll; each token packs (kind, slot generation, slot index),
//! so an event for a slot that has since been reused is recognised and
//! ignored.
//!
//! What the shard publishes once a second (status files, log summary)
//! is [`crate::publish`]'s; a frame the shard cannot take comes back to
//! [`run`] as a `Breach`, the one place the shard exits 101.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rustc_hash::FxHashMap;

use shardspawn_common::fleet::{Claim, Report};
use shardspawn_common::frame::{
    Done, FrameDecoder, JOB, Job, LIMITS, MAX_TEXT, RESPONSES,
};
use shardspawn_common::limits::{Limits, LimitsError};
use shardspawn_common::report::ChildEnd;
use shardspawn_common::response::Responses;

use shardspawn_common::shard_config::{REDIS_ENV, ShardConfig};
use shardspawn_os::log::Log;
use shardspawn_os::spawn;
use shardspawn_os::sys::{self, Interest, Poller, Token};

use crate::core::{
    Core, Effect, Event, FleetNote, GENERATION_BITS, LimitFn, Policy, SlotId,
};
use crate::publish::Publisher;
use crate::start;

const JOBS: u8 = 0;
const RESULTS: u8 = 1;
const SIGNALS: u8 = 2;
const OUTPUT: u8 = 3;
/// The fleet's wake fd: a token kind is two bits and all four are
/// taken, so it is the signals kind with this index (the signalfd has
/// index 0).
const FLEET_INDEX: u32 = 1;

/// How long a shard that ends waits for its fleet thread to give its
/// leases back before it exits anyway (they expire within the lease
/// time).
const FLEET_SHUTDOWN: Duration = Duration::from_secs(1);

/// Most bytes of one job frame (messid, sender, recipient, key): the
/// supervisor never sends more than its field limit allows. A control
/// text (limits, response rules) may be longer, up to [`MAX_TEXT`], the
/// cap the supervisor reads its files with: any file it accepted, every
/// shard takes.
pub const MAX_JOB: u32 = 1 << 20;

fn token(kind: u8, id: SlotId) -> u64 {
    Token { kind, generation: id.generation, index: id.index }.pack()
}

fn untoken(data: u64) -> (u8, SlotId) {
    let t = Token::unpack(data);
    (t.kind, SlotId { index: t.index, generation: t.generation })
}

// The core's generations must come back from epoll as they went in.
const _: () = assert!(GENERATION_BITS <= sys::TOKEN_GENERATION_BITS);

struct Child {
    generation: u32,
    /// `None` once reaped.
    pid: Option<Pid>,
    /// `None` once at EOF.
    output: Option<OwnedFd>,
}

/// A frame from the supervisor that this shard cannot take. The
/// supervisor checked everything it sends, so any of these means the two
/// disagree on the framing: an internal-invariant breach, exit 101, and
/// the supervisor answers every delnum the shard held.
#[derive(Debug)]
enum Breach {
    /// A frame longer than [`MAX_JOB`] (a text: [`MAX_TEXT`]), of this
    /// many bytes.
    OversizeFrame(u32),
    /// A job frame whose payload is not a job, for this delnum.
    BadJob(u16),
    /// A limits frame that does not parse.
    BadLimits(LimitsError),
    /// A response-rules frame that does not parse.
    BadResponses(LimitsError),
    /// A frame of a kind this shard does not know.
    UnknownKind(u8),
}

/// The log line's text, after `fatal: `.
impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::OversizeFrame(len) => {
                write!(f, "job frame of {len} bytes")
            }
            Breach::BadJob(delnum) => {
                write!(f, "malformed job frame for delnum {delnum}")
            }
            Breach::BadLimits(e) => write!(f, "limits frame: {e}"),
            Breach::BadResponses(e) => write!(f, "responses frame: {e}"),
            Breach::UnknownKind(kind) => {
                write!(f, "frame of unknown kind {kind}")
            }
        }
    }
}

/// What a frame from the supervisor carries.
enum Frame {
    Job(Job),
    /// Boxed: a parsed file is far bigger than a job.
    Limits(Box<Limits>),
    Responses(Responses),
}

impl Frame {
    /// Checks a frame. Anything malformed means the supervisor and this
    /// shard disagree on the framing: the supervisor checked every text
    /// before sending it.
    fn parse(kind: u8, delnum: u16, payload: &[u8]) -> Result<Frame, Breach> {
        match kind {
            JOB => Job::from_payload(delnum, payload)
                .map(Frame::Job)
                .ok_or(Breach::BadJob(delnum)),
            LIMITS => Limits::parse(payload)
                .map(|l| Frame::Limits(Box::new(l)))
                .map_err(Breach::BadLimits),
            RESPONSES => Responses::parse(payload)
                .map(Frame::Responses)
                .map_err(Breach::BadResponses),
            _ => Err(Breach::UnknownKind(kind)),
        }
    }
}

/// Why the loop stopped before its job pipe's EOF.
enum Stop {
    /// Waiting for or watching descriptors failed: exit 111.
    Wait(io::Error),
    /// The supervisor sent what it never sends: exit 101.
    Breach(Breach),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Wait(e)
    }
}

impl From<Breach> for Stop {
    fn from(b: Breach) -> Stop {
        Stop::Breach(b)
    }
}

/// Runs a shard until its job pipe reaches EOF and nothing is running or
/// held. Returns the process exit code: 0; 111 if setup or the loop's
/// waiting failed; 101 if the supervisor sent a frame it never sends
/// ([`Breach`]). This is the one place a fatal error leaves the shard.
pub fn run(cfg: ShardConfig, limit_of: LimitFn) -> i32 {
    let log = Log::new(format!("shard {}", cfg.index));
    match Shard::new(cfg, limit_of, log.clone()) {
        Ok(mut shard) => match shard.run() {
            Ok(()) => 0,
            Err(Stop::Wait(e)) => {
                log.fatal(format_args!("unable to wait for events: {e}"));
                111
            }
            Err(Stop::Breach(breach)) => {
                log.fatal(format_args!("{breach}"));
                101
            }
        },
        Err(e) => {
            log.fatal(format_args!("unable to set up: {e}"));
            111
        }
    }
}

struct Shard {
    cfg: ShardConfig,
    log: Log,
    core: Core,
    poller: Poller,
    signals: nix::sys::signalfd::SignalFd,
    jobs: Jobs,
    results: Results,
    children: Children,
    launch: Launch,
    publisher: Publisher,
    /// One read's worth of a pipe, reused for every read.
    buf: Vec<u8>,
    /// What the core asked for in this pass, reused.
    effects: Vec<Effect>,
    /// The core's claims of shared keys in this pass, for the fleet's
    /// client.
    claims: Vec<Claim>,
    /// The tokens of the last wait (kept to reuse its allocation).
    tokens: Vec<u64>,
    /// The run-time controls file, looked at four times a second.
    controls: Controls,
    /// The thread that keeps the shared keys in Redis (issue 18), if
    /// the shard has a fleet and a Redis address.
    fleet: Option<shardspawn_fleet::Fleet>,
}

/// How the shard notices `shardspawn control` (issue 17): the file
/// `controls` in the state directory, whose stamp it looks at every
/// [`CONTROLS_EVERY`] (four times a second) and reads again when the
/// stamp changes. A stat costs a microsecond; no stamp change, no read.
/// The first look is in the first loop pass, before any job is read, so
/// a restarted shard has the controls in force before its first job.
struct Controls {
    /// `None`: no state directory, no controls.
    path: Option<std::path::PathBuf>,
    /// (dev, inode, size, mtime ns) of what was read last; `None` for
    /// no file.
    stamp: Option<(u64, u64, u64, i128)>,
    /// When to look next.
    next: Instant,
    /// A warning about the file was given for this stamp already.
    warned: bool,
}

/// How often a shard looks at the controls file: a control takes
/// effect within this (plus a loop pass).
const CONTROLS_EVERY: Duration = Duration::from_millis(250);

/// Frames from the supervisor on fd 0.
struct Jobs {
    stdin: io::Stdin,
    decoder: FrameDecoder,
    /// Not yet at EOF (or a read error, taken as one).
    open: bool,
}

/// Done frames on their way to the supervisor on fd 1.
struct Results {
    stdout: io::Stdout,
    /// Encoded, not yet written.
    out: Vec<u8>,
    /// Writing has not failed: once it has, results are dropped.
    open: bool,
    /// fd 1 is in the epoll, for room to write.
    watched: bool,
}

/// The children running, by slot and by pid.
struct Children {
    /// Per slot index: the child running there, if started.
    slots: Vec<Option<Child>>,
    /// Pids are the kernel's, not a stranger's: FxHash, which is some
    /// three times cheaper than SipHash for an insert and a remove per
    /// delivery, cannot be flooded here. (The core's map of keys, which
    /// senders choose, stays keyed SipHash.)
    pids: FxHashMap<Pid, SlotId>,
    /// Children whose pipe is at EOF but who had not ended when it was
    /// seen (a child closes its pipe in its exit a moment before it can
    /// be reaped): each SIGCHLD tries these by pid.
    eof_pending: Vec<Pid>,
    /// When to look at every child for an end not found by pid.
    next_scan: Instant,
}

/// How children are started, and the starts waiting for it.
struct Launch {
    /// How every child is spawned, and the program (argv\[0\]).
    spawner: spawn::Spawner,
    program: CString,
    /// Starts the core decided on, not yet carried out.
    queue: VecDeque<(SlotId, Job)>,
}

/// Most children started per loop pass, so that ends keep being noticed
/// and reported while a burst of jobs is started (a start costs the
/// shard some 40 µs, and never waits for the child's exec).
const START_BATCH: usize = 4;

/// How often at most a shard looks at every child for an end that no
/// EOF named (a child of qmail-remote holding its pipe, the logger).
/// The kernel's cost is O(children), and exits and clones wait for it:
/// with 10,000 running, once a second was most of the p99 of a result.
const SCAN_EVERY: Duration = Duration::from_secs(60);

/// How soon to look again for a free pad while starts wait for one.
const PAD_POLL: Duration = Duration::from_millis(1);

/// Most reads of one child's pipe per pass (64 KiB each).
const READS_PER_PASS: usize = 4;

impl Shard {
    fn new(
        cfg: ShardConfig,
        limit_of: LimitFn,
        log: Log,
    ) -> io::Result<Shard> {
        // First: the spawner takes its staging descriptors (from fd 3).
        let launch = Launch::new(&cfg)?;
        let signals = sys::signal_fd(&[Signal::SIGCHLD])?;
        let poller = Poller::new(1024)?;
        let stdin = io::stdin();
        let stdout = io::stdout();
        sys::set_nonblocking(stdin.as_fd(), true)?;
        sys::set_nonblocking(stdout.as_fd(), true)?;
        let none = SlotId { index: 0, generation: 0 };
        poller.add(stdin.as_fd(), Interest::Read, token(JOBS, none))?;
        poller.add(signals.as_fd(), Interest::Read, token(SIGNALS, none))?;
        let policy = Policy {
            initial: cfg.initial_limit,
            suspend_after: cfg.suspend_after,
            suspend_for: cfg.suspend,
        };
        let mut core = Core::new(
            cfg.max_running,
            cfg.hold,
            cfg.hold_max,
            limit_of,
            policy,
            Instant::now(),
        );
        let fleet = join_fleet(&cfg, &mut core, &log);
        if let Some(fleet) = &fleet {
            let none = SlotId { index: FLEET_INDEX, generation: 0 };
            poller.add(
                fleet.wake_fd(),
                Interest::Read,
                token(SIGNALS, none),
            )?;
        }
        let publisher =
            Publisher::new(log.clone(), cfg.index, cfg.state_dir.clone())
                .metrics_keys(cfg.metrics_keys);
        let cfg_state_dir = cfg.state_dir.clone();
        Ok(Shard {
            cfg,
            log,
            core,
            poller,
            signals,
            jobs: Jobs {
                stdin,
                decoder: FrameDecoder::new(MAX_JOB).texts_up_to(MAX_TEXT),
                open: true,
            },
            results: Results {
                stdout,
                out: Vec::new(),
                open: true,
                watched: false,
            },
            children: Children::new(),
            launch,
            publisher,
            buf: vec![0; 64 * 1024],
            effects: Vec::new(),
            claims: Vec::new(),
            tokens: Vec::new(),
            controls: Controls {
                path: cfg_state_dir
                    .map(|d| d.join(shardspawn_common::controls::FILE)),
                stamp: None,
                next: Instant::now(),
                warned: false,
            },
            fleet,
        })
    }

    fn run(&mut self) -> Result<(), Stop> {
        self.log.info(format_args!(
            "started: pid {}, remote {}, at most {} running",
            std::process::id(),
            self.cfg.remote.display(),
            self.cfg.max_running
        ));
        loop {
            if !self.jobs.open
                && self.core.is_idle()
                && (self.results.out.is_empty() || !self.results.open)
            {
                // The last counts, and when it stopped.
                self.count_redis_commands();
                self.publisher.publish(&self.core, Some(SystemTime::now()));
                self.publisher.log_notes(&mut self.core);
                if let Some(fleet) = self.fleet.take() {
                    // Its leases back to the fleet now, not at expiry.
                    fleet.shutdown(FLEET_SHUTDOWN);
                }
                return Ok(());
            }
            let deadline = self.deadline();
            self.poller.wait(deadline)?;
            // Children that exec'd since: their staged descriptors go, so
            // their pipes can reach EOF.
            self.launch.spawner.collect();
            let now = Instant::now();
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.core.set_clock(now, unix);
            if now >= self.controls.next {
                self.look_at_controls(now, unix);
            }
            self.read_ready(now)?;
            self.core.handle(Event::Tick(now), &mut self.effects);
            // Results first: a child that ended must not wait for a
            // batch of spawns (each costs a clone and an exec) to be
            // reported. Then a bounded batch of starts, and back to the
            // kernel for more ends.
            self.apply();
            self.results.flush(&self.poller, &self.log)?;
            self.start_some();
            self.apply();
            self.results.flush(&self.poller, &self.log)?;
            self.send_claims();
            if self.publisher.due(now) {
                self.reap_all(now);
                self.count_redis_commands();
                self.publisher.publish(&self.core, None);
                self.publisher.log_notes(&mut self.core);
            }
            if cfg!(debug_assertions) {
                self.core.check_invariants();
            }
        }
    }

    /// Reads what the last wait found ready: jobs, children's output,
    /// then (after the pipes, so that an EOF seen in this pass names its
    /// child) the ends SIGCHLD announced.
    fn read_ready(&mut self, now: Instant) -> Result<(), Breach> {
        self.tokens.clear();
        self.tokens.extend(self.poller.tokens());
        let mut sigchld = false;
        for i in 0..self.tokens.len() {
            let t = self.tokens[i];
            let (kind, id) = untoken(t);
            match kind {
                JOBS => self.read_jobs(now)?,
                RESULTS => {}
                SIGNALS if id.index == FLEET_INDEX => self.read_fleet(),
                SIGNALS => sigchld = true,
                _ => self.read_output(id),
            }
        }
        if sigchld {
            self.reap(now);
        }
        Ok(())
    }

    /// Hands the core what the fleet's thread reported, and logs the
    /// fleet's changes of mode at once (Redis gone, Redis back).
    fn read_fleet(&mut self) {
        let Some(fleet) = &mut self.fleet else { return };
        for report in fleet.reports() {
            self.core.handle(Event::Fleet(report), &mut self.effects);
        }
        for note in self.core.take_fleet_notes() {
            match note {
                FleetNote::Down { .. } => {
                    self.log.warn(format_args!("{note}"))
                }
                FleetNote::Up => self.log.info(format_args!("{note}")),
            }
        }
    }

    /// Sends the claims of this pass to the fleet's thread (which never
    /// blocks the loop).
    fn send_claims(&mut self) {
        if self.claims.is_empty() {
            return;
        }
        let claims = std::mem::take(&mut self.claims);
        if let Some(fleet) = &self.fleet {
            fleet.send(claims);
        }
    }

    /// The commands the fleet's thread sent to Redis, for the status.
    fn count_redis_commands(&mut self) {
        if let Some(fleet) = &self.fleet {
            self.core.set_redis_commands(fleet.commands());
        }
    }

    /// The earliest of: the core's next deadline, the next status
    /// publication, and (while starts wait) now or a moment from now.
    fn deadline(&mut self) -> Option<Instant> {
        let mut deadline = self.core.next_deadline();
        if let Some(at) = self.publisher.deadline() {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        if self.controls.path.is_some() {
            let at = self.controls.next;
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        if !self.launch.queue.is_empty() {
            // Starts are waiting: only look, do not sleep; or, while
            // every pad's child is before its exec, look again soon (a
            // pad coming free is no event).
            let now = Instant::now();
            let at = if self.launch.spawner.can_start() {
                now
            } else {
                now + PAD_POLL
            };
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        deadline
    }

    /// Reads what fd 0 has and hands each whole frame on; a frame the
    /// shard cannot take stops the loop.
    fn read_jobs(&mut self, now: Instant) -> Result<(), Breach> {
        if !self.jobs.open {
            return Ok(());
        }
        match sys::read(self.jobs.stdin.as_fd(), &mut self.buf) {
            Ok(Some(n)) => {
                let mut rest = 0;
                while rest < n {
                    let (used, frame) =
                        self.jobs.decoder.decode(&self.buf[rest..n]);
                    rest += used;
                    match frame {
                        None => {}
                        Some(Ok((kind, delnum, payload))) => {
                            self.frame(kind, delnum, &payload, now)?
                        }
                        Some(Err(e)) => {
                            return Err(Breach::OversizeFrame(e.len));
                        }
                    }
                }
            }
            Ok(None) => self.close_jobs(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                self.log.warn(format_args!("unable to read jobs: {e}"));
                self.close_jobs();
            }
        }
        Ok(())
    }

    /// One frame from the supervisor, carried out; a frame the shard
    /// cannot take is a [`Breach`].
    fn frame(
        &mut self,
        kind: u8,
        delnum: u16,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), Breach> {
        match Frame::parse(kind, delnum, payload)? {
            Frame::Job(job) => {
                self.core.handle(Event::Job { job, now }, &mut self.effects)
            }
            Frame::Limits(limits) => {
                self.log.info(format_args!(
                    "limits in force: default {}, {} rules",
                    limits.default_limit(),
                    limits.rules().count()
                ));
                let limit_of: LimitFn =
                    Box::new(move |key| limits.allowance_of_key(key));
                self.core.set_limits(limit_of, &mut self.effects);
            }
            Frame::Responses(responses) => {
                self.log.info(format_args!(
                    "response rules in force: {} of the file, {} built in",
                    responses.from_file(),
                    responses.rules().len() - responses.from_file()
                ));
                self.core.set_responses(responses);
            }
        }
        Ok(())
    }

    /// Looks at the controls file's stamp; if it changed, reads it and
    /// gives the core its lines (no file: none). A file that cannot be
    /// read is said once, and what was in force stays.
    fn look_at_controls(&mut self, now: Instant, unix: u64) {
        use std::os::unix::fs::MetadataExt;
        self.controls.next = now + CONTROLS_EVERY;
        let Some(path) = &self.controls.path else { return };
        let stamp = match std::fs::metadata(path) {
            Ok(m) => Some((
                m.dev(),
                m.ino(),
                m.size(),
                i128::from(m.mtime()) * 1_000_000_000
                    + i128::from(m.mtime_nsec()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                if !self.controls.warned {
                    self.log.warn(format_args!(
                        "unable to look at {}: {e}",
                        path.display()
                    ));
                    self.controls.warned = true;
                }
                return;
            }
        };
        if stamp == self.controls.stamp {
            return;
        }
        let text = match stamp {
            None => String::new(),
            Some(_) => match std::fs::read(path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    if !self.controls.warned {
                        self.log.warn(format_args!(
                            "unable to read {}: {e}",
                            path.display()
                        ));
                        self.controls.warned = true;
                    }
                    return;
                }
            },
        };
        self.controls.stamp = stamp;
        self.controls.warned = false;
        let (lines, bad) = shardspawn_common::controls::parse(&text);
        for (n, e) in &bad {
            self.log.warn(format_args!(
                "{} line {n} skipped: {e}",
                path.display()
            ));
        }
        let in_force = lines.iter().filter(|c| c.in_force(unix)).count();
        self.log
            .info(format_args!("controls by hand: {in_force} lines in force"));
        self.core.set_controls(&lines, &mut self.effects);
    }

    fn close_jobs(&mut self) {
        self.jobs.open = false;
        let _ = self.poller.delete(self.jobs.stdin.as_fd());
    }

    /// On SIGCHLD. A child's pipe reaches EOF as it exits (or before),
    /// so the ends come by pid: the children whose EOF was seen before
    /// they could be reaped. A child whose pipe is still held open (by a
    /// child of its own) is reaped by pid at that EOF: its delivery waits
    /// for it anyway. [`Shard::reap_all`] is for what no EOF names.
    fn reap(&mut self, now: Instant) {
        sys::drain_signals(&self.signals);
        let mut found = false;
        for pid in std::mem::take(&mut self.children.eof_pending) {
            found |= self.reap_by_pid(pid);
        }
        if !found {
            self.reap_all(now);
        }
    }

    /// Reaps `pid` if it ended; if it runs yet, the next SIGCHLD tries
    /// again. Whether it ended.
    fn reap_by_pid(&mut self, pid: Pid) -> bool {
        match sys::reap_pid(pid) {
            sys::Reaped::Ended(end) => {
                self.reaped(pid, end);
                true
            }
            sys::Reaped::Running => {
                self.children.eof_pending.push(pid);
                false
            }
            sys::Reaped::Gone => false,
        }
    }

    /// Looks at every child for one that ended, at most once per
    /// [`SCAN_EVERY`].
    fn reap_all(&mut self, now: Instant) {
        if now < self.children.next_scan {
            return;
        }
        self.children.next_scan = now + SCAN_EVERY;
        while let Some((pid, end)) = sys::reap() {
            self.reaped(pid, end);
        }
    }

    /// A child ended: pass it on, unless it never ran qmail-remote.
    fn reaped(&mut self, pid: Pid, end: ChildEnd) {
        self.children.eof_pending.retain(|&p| p != pid);
        let failed = self.launch.spawner.exec_failure(pid);
        let Some(id) = self.children.pids.remove(&pid) else { return };
        if let Some(child) = self.children.get_mut(id) {
            child.pid = None;
            if failed.is_some() {
                // Its pipe says nothing more: it never ran.
                child.output = None;
            }
        }
        match failed {
            // It exited 127 without running qmail-remote: the start
            // failed, as if clone had said so.
            Some(e) => self.start_failed(id, start::spawn_failure(e)),
            None => {
                self.core.handle(Event::Exited(id, end), &mut self.effects)
            }
        }
        self.children.forget(id);
    }

    /// Reads a ready pipe until it is drained or at EOF (a child's
    /// report is small, and seeing its EOF in this pass rather than the
    /// next saves a whole pass of starts before its result goes out), but
    /// at most [`READS_PER_PASS`] reads, so a child writing megabytes
    /// cannot starve the others.
    fn read_output(&mut self, id: SlotId) {
        for _ in 0..READS_PER_PASS {
            let Some(child) = self.children.get_mut(id) else { return };
            let Some(fd) = child.output.as_ref() else { return };
            match sys::read(fd.as_fd(), &mut self.buf) {
                Ok(Some(n)) => {
                    self.core.handle(
                        Event::Output(id, &self.buf[..n]),
                        &mut self.effects,
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                end => {
                    if let Err(e) = end {
                        self.log.warn(format_args!(
                            "unable to read output of a child: {e}"
                        ));
                    }
                    // Dropping the read end also removes it from the epoll.
                    child.output = None;
                    let pid = child.pid;
                    self.core.handle(Event::Eof(id), &mut self.effects);
                    // Its end, if it has come, by pid.
                    if let Some(pid) = pid {
                        self.reap_by_pid(pid);
                    }
                    self.children.forget(id);
                    return;
                }
            }
        }
    }

    /// Carries out the core's effects: reports are encoded for fd 1 at
    /// once, starts are queued for [`Shard::start_some`].
    fn apply(&mut self) {
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Report { delnum, body } => {
                    if self.results.open {
                        Done { delnum, body }.encode(&mut self.results.out);
                    }
                }
                Effect::Start { id, job } => {
                    self.launch.queue.push_back((id, job))
                }
                Effect::Claim(claim) => self.claims.push(claim),
            }
        }
    }

    /// Starts at most [`START_BATCH`] queued deliveries. The core counted
    /// them as running when it decided, so holding them here a moment
    /// changes no limit.
    fn start_some(&mut self) {
        for _ in 0..START_BATCH {
            // Never wait for a child's exec: results come first.
            if self.launch.queue.is_empty() || !self.launch.spawner.can_start()
            {
                break;
            }
            let Some((id, job)) = self.launch.queue.pop_front() else {
                break;
            };
            self.start(id, job);
        }
    }

    fn start(&mut self, id: SlotId, job: Job) {
        let poller = &self.poller;
        let started = start::start(
            &mut self.launch.spawner,
            &self.launch.program,
            self.cfg.owner_uid,
            (&job.messid, &job.sender, &job.recipient),
            |output| poller.add(output, Interest::Read, token(OUTPUT, id)),
        );
        match started {
            Ok(started) => {
                self.children.insert(id, started.pid, started.output)
            }
            Err(failure) => self.start_failed(id, failure),
        }
    }

    fn start_failed(&mut self, id: SlotId, failure: start::StartError) {
        if let Some(e) = &failure.error {
            // No delnum in the line: a run of the same failure is then
            // one line and a count.
            self.log.warn(format_args!(
                "unable to {}: {e}; {}",
                failure.what,
                failure.outcome()
            ));
        }
        self.core
            .handle(Event::StartFailed(id, failure.body), &mut self.effects);
    }
}

/// Starts the fleet's thread if the shard has a fleet and a Redis
/// address in its environment ([`REDIS_ENV`]; never on the command
/// line, which anyone may read), and has the core share its shared keys
/// through it. With a fleet but no address, no thread: shared keys are
/// this shard's alone, with their whole limit, and a line says so. A
/// thread that cannot start (an address that does not parse, a CA file
/// that cannot be read) leaves the core in its fleet, alone from the
/// start: each key takes 1/relays of its limit, which never puts the
/// fleet over it.
fn join_fleet(
    cfg: &ShardConfig,
    core: &mut Core,
    log: &Log,
) -> Option<shardspawn_fleet::Fleet> {
    let settings = cfg.fleet.as_ref()?;
    let url = std::env::var(REDIS_ENV).unwrap_or_default();
    if url.is_empty() {
        log.warn(format_args!(
            "no {REDIS_ENV} in the environment: shared keys are kept \
             here alone, with their whole limits"
        ));
        return None;
    }
    let holder =
        format!("{}:{}:{}", settings.name, nix::unistd::getppid(), cfg.index);
    core.join_fleet(settings);
    // The CA is read here, once: the thread opens no file. Checked by
    // the supervisor already; a file gone since is a failed start.
    let ca = settings.ca.as_ref().map(|path| {
        std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("unable to read the CA {}: {e}", path.display()),
            )
        })
    });
    let started = ca.transpose().and_then(|ca| {
        shardspawn_fleet::Fleet::start(shardspawn_fleet::Config {
            url: url.clone(),
            ca,
            prefix: settings.prefix.clone(),
            holder: holder.clone(),
            lease: settings.lease,
            batch: settings.batch,
        })
    });
    match started {
        Ok(fleet) => {
            log.info(format_args!(
                "sharing shared keys through {} as {holder}",
                shardspawn_fleet::redact(&url)
            ));
            Some(fleet)
        }
        Err(e) => {
            let why = format!("unable to start the fleet client: {e}");
            // The status says since when.
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            core.set_clock(Instant::now(), unix);
            let mut effects = Vec::new();
            core.handle(Event::Fleet(Report::Down(why)), &mut effects);
            for note in core.take_fleet_notes() {
                log.warn(format_args!("{note}"));
            }
            None
        }
    }
}

impl Launch {
    /// The spawner of `cfg.remote`, with no start waiting.
    fn new(cfg: &ShardConfig) -> io::Result<Launch> {
        let program =
            CString::new(cfg.remote.clone().into_vec()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NUL in the remote",
                )
            })?;
        let mut spawner =
            spawn::Spawner::new(program.clone(), spawn::Mode::Overlap)?;
        // The shard's Redis address may hold a password: it is for the
        // fleet's thread alone, never for a qmail-remote (stock passes
        // its environment on, and so do we, all but this).
        spawner.hide_env(REDIS_ENV);
        Ok(Launch { spawner, program, queue: VecDeque::new() })
    }
}

impl Children {
    fn new() -> Children {
        Children {
            slots: Vec::new(),
            pids: FxHashMap::default(),
            eof_pending: Vec::new(),
            next_scan: Instant::now(),
        }
    }

    fn get_mut(&mut self, id: SlotId) -> Option<&mut Child> {
        match self.slots.get_mut(id.index as usize) {
            Some(Some(child)) if child.generation == id.generation => {
                Some(child)
            }
            _ => None,
        }
    }

    /// A child started in slot `id`.
    fn insert(&mut self, id: SlotId, pid: Pid, output: OwnedFd) {
        let index = id.index as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.pids.insert(pid, id);
        self.slots[index] = Some(Child {
            generation: id.generation,
            pid: Some(pid),
            output: Some(output),
        });
    }

    /// Frees the child record once both its pid and its pipe are gone.
    fn forget(&mut self, id: SlotId) {
        if let Some(child) = self.get_mut(id)
            && child.output.is_none()
            && child.pid.is_none()
        {
            self.slots[id.index as usize] = None;
        }
    }
}

impl Results {
    /// Writes what fd 1 takes now; watches it for room while anything
    /// is left. A failed write drops this and every later result, and
    /// is logged once.
    fn flush(&mut self, poller: &Poller, log: &Log) -> io::Result<()> {
        if !self.open {
            self.out.clear();
        }
        let mut written = 0;
        while written < self.out.len() {
            match sys::write(self.stdout.as_fd(), &self.out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) => {
                    log.warn(format_args!(
                        "unable to write results, dropping them: {e}"
                    ));
                    self.open = false;
                    written = self.out.len();
                }
            }
        }
        self.out.drain(..written);
        let want = !self.out.is_empty();
        if want != self.watched {
            let none = SlotId { index: 0, generation: 0 };
            if want {
                poller.add(
                    self.stdout.as_fd(),
                    Interest::Write,
                    token(RESULTS, none),
                )?;
            } else {
                poller.delete(self.stdout.as_fd())?;
            }
            self.watched = want;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breach(kind: u8, payload: &[u8]) -> String {
        match Frame::parse(kind, 7, payload) {
            Ok(_) => panic!("frame of kind {kind} taken"),
            Err(breach) => breach.to_string(),
        }
    }

    /// Each breach's log line, as the shard wrote it before the breach
    /// was a value: `shardspawn: shard N: fatal: ` and this.
    #[test]
    fn each_breach_says_what_the_shard_could_not_take() {
        assert_eq!(breach(JOB, b""), "malformed job frame for delnum 7");
        assert_eq!(breach(9, b""), "frame of unknown kind 9");
        assert_eq!(
            breach(LIMITS, b"x.test:nope\n"),
            format!(
                "limits frame: {}",
                Limits::parse(b"x.test:nope\n").err().unwrap()
            )
        );
        assert!(
            breach(RESPONSES, b"frob:1m:x\n").starts_with("responses frame: ")
        );
        assert_eq!(
            Breach::OversizeFrame(MAX_JOB + 1).to_string(),
            "job frame of 1048577 bytes"
        );
    }

    #[test]
    fn good_frames_are_taken() {
        let job = Job {
            delnum: 7,
            messid: b"1/1".to_vec(),
            sender: b"a@b".to_vec(),
            recipient: b"u@x.test".to_vec(),
            key: b"x.test".to_vec(),
        };
        let payload = b"1/1\0a@b\0u@x.test\0x.test\0";
        assert!(
            matches!(Frame::parse(JOB, 7, payload), Ok(Frame::Job(j)) if j == job)
        );
        assert!(matches!(
            Frame::parse(LIMITS, 0, b"x.test:3\n"),
            Ok(Frame::Limits(_))
        ));
        assert!(matches!(
            Frame::parse(RESPONSES, 0, b""),
            Ok(Frame::Responses(_))
        ));
    }
}
