//! The supervisor's loop: qmail-send's commands in, routed to shards;
//! shard results out, as whole records, on fd 1.
//!
//! One thread, one epoll. Tokens pack (kind, shard generation, shard
//! index), so an event from a shard that has since been replaced is
//! recognised and dropped.

use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use shardspawn_common::command::{CommandDecoder, Decoded};
use shardspawn_common::domain;
use shardspawn_common::frame::{DONE, Job, LIMITS, RESPONSES, encode_text};
use shardspawn_common::limits::Limits;
use shardspawn_common::record;
use shardspawn_common::refusal::Refusal;
use shardspawn_common::report::ChildEnd;
use shardspawn_common::response::Responses;
use shardspawn_common::status::SupervisorStatus;
use shardspawn_common::validate;
use shardspawn_os::log::Log;
use shardspawn_os::sys::{self, Interest, Poller};

use crate::shards::Shard;
use shardspawn_os::sys::write_atomically;

use crate::startup::{self, FIELD_LIMIT, Runtime, Source};

/// How often the limits file is looked at (qmail-start's children never
/// get qmail-send's HUP, so a change must be noticed by itself).
const LIMITS_EVERY: Duration = Duration::from_secs(2);

/// How often the supervisor publishes its status.
const STATUS_EVERY: Duration = Duration::from_secs(1);

const QMAIL: u64 = 0;
const SIGNALS: u64 = 1;
const RESULTS: u64 = 2;
const JOBS: u64 = 3;

/// `owner` entry of a delnum with nothing in flight.
const FREE: u16 = u16::MAX;

fn token(kind: u64, generation: u32, index: u16) -> u64 {
    kind << 62 | (u64::from(generation) & 0x3fff_ffff) << 32 | u64::from(index)
}

fn untoken(t: u64) -> (u64, u32, u16) {
    (t >> 62, ((t >> 32) & 0x3fff_ffff) as u32, t as u16)
}

/// Starts the shards, announces, and serves until qmail-send closes the
/// command pipe and every delivery has its result. Returns the exit code.
pub fn run(rt: Runtime, log: Log) -> i32 {
    let mut mux = match Mux::new(rt, log.clone()) {
        Ok(mux) => mux,
        Err(e) => {
            log.fatal(format_args!("unable to set up the event loop: {e}"));
            return 111;
        }
    };
    for i in 0..mux.shards.len() {
        if let Err(e) = mux.start_shard(i) {
            log.fatal(format_args!("unable to start shard {i}: {e}"));
            return 111;
        }
    }
    mux.announce();
    match mux.serve() {
        Ok(()) => 0,
        Err(e) => {
            // Only epoll itself failing gets here.
            log.fatal(format_args!("unable to wait for events: {e}"));
            111
        }
    }
}

struct Mux {
    rt: Runtime,
    log: Log,
    poller: Poller,
    signals: SignalFd,
    stdin: io::Stdin,
    stdout: io::Stdout,
    decoder: CommandDecoder,
    reading: bool,
    writing: bool,
    out: Vec<u8>,
    /// Per delnum: the shard holding it, or FREE.
    owner: Vec<u16>,
    shards: Vec<Shard>,
    /// Shard processes that are gone from `shards` but not yet reaped.
    dying: Vec<Pid>,
    /// When to look at the limits file again, and to publish status.
    next_limits_check: Instant,
    next_status: Instant,
    started: SystemTime,
    results: u64,
    restarts: u64,
    status_failed: bool,
    buf: Vec<u8>,
}

impl Mux {
    fn new(rt: Runtime, log: Log) -> io::Result<Mux> {
        let signals = sys::signal_fd(&[Signal::SIGCHLD, Signal::SIGHUP])?;
        let poller = Poller::new(256)?;
        let stdin = io::stdin();
        sys::set_nonblocking(stdin.as_fd(), true)?;
        poller.add(stdin.as_fd(), Interest::Read, token(QMAIL, 0, 0))?;
        poller.add(signals.as_fd(), Interest::Read, token(SIGNALS, 0, 0))?;
        let shards = (0..rt.shards).map(Shard::new).collect();
        Ok(Mux {
            decoder: CommandDecoder::new(rt.width, FIELD_LIMIT),
            owner: vec![FREE; rt.slots as usize],
            rt,
            log,
            poller,
            signals,
            stdin,
            stdout: io::stdout(),
            reading: true,
            writing: true,
            out: Vec::new(),
            shards,
            dying: Vec::new(),
            next_limits_check: Instant::now() + LIMITS_EVERY,
            next_status: Instant::now(),
            started: SystemTime::now(),
            results: 0,
            restarts: 0,
            status_failed: false,
            buf: vec![0; 64 * 1024],
        })
    }

    fn announce(&mut self) {
        let slots = u16::try_from(self.rt.slots).unwrap_or(u16::MAX);
        self.log.info(format_args!(
            "started: pid {}, {} shards, {} slots announced in {}-byte framing, at most {} running per shard",
            std::process::id(),
            self.rt.shards,
            slots,
            self.rt.width.bytes(),
            self.rt.shard.max_running,
        ));
        self.out.extend(record::announcement(self.rt.width, slots));
        self.flush_out();
    }

    fn start_shard(&mut self, i: usize) -> io::Result<()> {
        let shard = &mut self.shards[i];
        shard.start(&self.rt.shard)?;
        // A new shard learns the limits and the response rules before any
        // job: the outbox holds only whole frames while a shard is down.
        let mut first = Vec::new();
        encode_text(LIMITS, &self.rt.limits.text, &mut first);
        encode_text(RESPONSES, &self.rt.responses.text, &mut first);
        shard.outbox.splice(0..0, first);
        let live = shard.live.as_ref().expect("just started");
        self.poller.add(
            live.results.as_fd(),
            Interest::Read,
            token(RESULTS, shard.generation, shard.index),
        )?;
        if shard.restarts > 0 {
            self.log
                .info(format_args!("shard {i} restarted as pid {}", live.pid));
        }
        Ok(())
    }

    fn serve(&mut self) -> io::Result<()> {
        loop {
            if self.finished() {
                self.flush_out();
                // Every shard has closed its result pipe and is exiting;
                // reap them so none outlives us as a zombie.
                for pid in self.dying.drain(..) {
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                return Ok(());
            }
            let deadline = self
                .shards
                .iter()
                .filter_map(|s| s.restart_at)
                .chain([self.next_limits_check, self.next_status])
                .min();
            self.poller.wait(deadline)?;
            let now = Instant::now();
            let tokens: Vec<u64> = self.poller.tokens().collect();
            for t in tokens {
                let (kind, generation, index) = untoken(t);
                match kind {
                    QMAIL => self.read_commands(),
                    SIGNALS => self.signals(),
                    RESULTS | JOBS => {
                        let i = usize::from(index);
                        let current = self.shards.get(i).is_some_and(|s| {
                            s.generation == generation && s.live.is_some()
                        });
                        if current && kind == RESULTS {
                            self.read_results(i, now);
                        }
                        // JOBS: room in a job pipe; written below.
                    }
                    _ => unreachable!("two-bit kind"),
                }
            }
            self.restart_due(now);
            if now >= self.next_limits_check {
                self.next_limits_check = now + LIMITS_EVERY;
                self.reload_limits(false);
                self.reload_responses(false);
            }
            for i in 0..self.shards.len() {
                self.flush_jobs(i);
            }
            self.flush_out();
            if now >= self.next_status {
                self.next_status = now + STATUS_EVERY;
                self.publish();
            }
        }
    }

    /// EOF from qmail-send, every delnum answered, every shard gone.
    fn finished(&self) -> bool {
        !self.reading
            && self.shards.iter().all(|s| s.in_flight == 0 && s.live.is_none())
    }

    fn read_commands(&mut self) {
        if !self.reading {
            return;
        }
        let n = match sys::read(self.stdin.as_fd(), &mut self.buf) {
            Ok(None) => return self.end_of_commands(),
            Ok(Some(n)) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                self.log.warn(format_args!("unable to read commands: {e}"));
                return self.end_of_commands();
            }
        };
        let mut at = 0;
        while at < n {
            let (used, decoded) = self.decoder.decode(&self.buf[at..n]);
            at += used;
            match decoded {
                None => {}
                Some(Decoded::Oversize { delnum }) => {
                    self.log.warn(format_args!(
                        "command for delnum {delnum} has a field over {FIELD_LIMIT} bytes"
                    ));
                    self.record(delnum, &Refusal::OutOfMemory.body());
                }
                Some(Decoded::Command(cmd)) => {
                    let owner = &self.owner;
                    let checked = validate::check(&cmd, self.rt.slots, |d| {
                        owner[usize::from(d)] != FREE
                    });
                    if let Err(refusal) = checked {
                        self.record(cmd.delnum, &refusal.body());
                        continue;
                    }
                    let host =
                        domain::host(&cmd.recipient).unwrap_or_default();
                    // Routed, and counted by its shard, on the limit key
                    // (`=NAME` for a group's members), not the domain:
                    // a group's domains must meet on one shard, in one
                    // count.
                    let key = self
                        .rt
                        .limits
                        .parsed
                        .lookup(&domain::normalise(host))
                        .key;
                    let s = domain::shard_for(&key, self.rt.shards);
                    self.owner[usize::from(cmd.delnum)] = s;
                    let shard = &mut self.shards[usize::from(s)];
                    shard.in_flight += 1;
                    Job {
                        delnum: cmd.delnum,
                        messid: cmd.messid,
                        sender: cmd.sender,
                        recipient: cmd.recipient,
                        key,
                    }
                    .encode(&mut shard.outbox);
                }
            }
        }
    }

    /// qmail-send is going away: finish what is in flight, then exit.
    fn end_of_commands(&mut self) {
        self.reading = false;
        let _ = self.poller.delete(self.stdin.as_fd());
        if !self.decoder.is_idle() {
            self.log.warn(format_args!(
                "qmail-send closed its pipe inside a command; that command is discarded"
            ));
        }
        let in_flight: u32 = self.shards.iter().map(|s| s.in_flight).sum();
        self.log.info(format_args!(
            "end of commands; finishing {in_flight} deliveries in flight"
        ));
    }

    fn signals(&mut self) {
        for signo in sys::drain_signals(&self.signals) {
            if signo == Signal::SIGHUP as i32 {
                self.reload_limits(true);
                self.reload_responses(true);
            }
        }
        while let Some((pid, end)) = sys::reap() {
            self.dying.retain(|&p| p != pid);
            // Reaped before its pipe said EOF: the pid is free for reuse,
            // so it must not be killed or waited for later.
            for shard in &mut self.shards {
                if let Some(live) = shard.live.as_mut()
                    && live.pid == pid
                {
                    live.reaped = true;
                }
            }
            if end != ChildEnd::Exited(0) {
                self.log
                    .warn(format_args!("child process {pid} ended: {end:?}"));
            }
        }
    }

    /// Reads the limits file again if it changed (or if `force`, on
    /// SIGHUP). A good file goes to every shard, in order with the jobs,
    /// and applies to the next spawns; a broken one is logged and the
    /// limits in force stay.
    fn reload_limits(&mut self, force: bool) {
        let Some(new) = reload(
            &mut self.rt.limits,
            force,
            &self.log,
            "limits",
            Limits::parse,
        ) else {
            return;
        };
        self.log.info(format_args!(
            "limits reloaded from {}: default {}, {} rules",
            new.path.display(),
            new.parsed.default_limit(),
            new.parsed.rules().count()
        ));
        self.rt.limits = new;
        self.send_all(LIMITS);
    }

    /// The same for the response rules file.
    fn reload_responses(&mut self, force: bool) {
        let Some(new) = reload(
            &mut self.rt.responses,
            force,
            &self.log,
            "response rules",
            Responses::parse,
        ) else {
            return;
        };
        self.log.info(format_args!(
            "response rules reloaded from {}: {} of the file",
            new.path.display(),
            new.parsed.from_file(),
        ));
        self.rt.responses = new;
        self.send_all(RESPONSES);
    }

    /// Sends the control file of `kind` to every live shard.
    fn send_all(&mut self, kind: u8) {
        let text = if kind == LIMITS {
            &self.rt.limits.text
        } else {
            &self.rt.responses.text
        };
        for shard in &mut self.shards {
            if shard.live.is_some() {
                encode_text(kind, text, &mut shard.outbox);
            }
        }
    }

    /// Writes the `supervisor` status file.
    fn publish(&mut self) {
        let Some(dir) = &self.rt.state_dir else { return };
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        };
        let status = SupervisorStatus {
            pid: std::process::id(),
            started: unix(self.started),
            updated: unix(SystemTime::now()),
            slots: self.rt.slots,
            delnum_bytes: self.rt.width.bytes() as u8,
            shards: self.rt.shards,
            in_flight: self.shards.iter().map(|s| s.in_flight).sum(),
            results: self.results,
            restarts: self.restarts,
        };
        match write_atomically(dir, "supervisor", status.render().as_bytes()) {
            Ok(()) => self.status_failed = false,
            Err(e) if !self.status_failed => {
                self.status_failed = true;
                self.log.warn(format_args!(
                    "unable to write status in {}: {e}",
                    dir.display()
                ));
            }
            Err(_) => {}
        }
    }

    fn read_results(&mut self, i: usize, now: Instant) {
        let live = self.shards[i].live.as_mut().expect("checked live");
        let n = match sys::read(live.results.as_fd(), &mut self.buf) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return self.shard_down(i, now, "closed its result pipe");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                self.log.warn(format_args!(
                    "unable to read results of shard {i}: {e}"
                ));
                return self.shard_down(i, now, "result pipe failed");
            }
        };
        let mut at = 0;
        while at < n {
            let live = self.shards[i].live.as_mut().expect("checked live");
            let (used, frame) = live.decoder.decode(&self.buf[at..n]);
            at += used;
            match frame {
                None => {}
                Some(Ok((kind, _, _))) if kind != DONE => {
                    self.log.warn(format_args!(
                        "shard {i} sent a frame of kind {kind}; killing it"
                    ));
                    return self.shard_down(i, now, "sent garbage");
                }
                Some(Ok((_, delnum, mut body))) => {
                    if self.owner.get(usize::from(delnum)) != Some(&(i as u16))
                    {
                        self.log.warn(format_args!(
                            "shard {i} answered delnum {delnum}, which it does not hold; dropped"
                        ));
                        continue;
                    }
                    self.owner[usize::from(delnum)] = FREE;
                    self.shards[i].in_flight -= 1;
                    // A NUL would end the record early and shift every
                    // later one; a body never has one, but make sure.
                    body.iter_mut()
                        .filter(|b| **b == 0)
                        .for_each(|b| *b = b'?');
                    self.record(delnum, &body);
                }
                Some(Err(e)) => {
                    self.log.warn(format_args!(
                        "shard {i} sent a frame of {} bytes; killing it",
                        e.len
                    ));
                    return self.shard_down(i, now, "sent garbage");
                }
            }
        }
    }

    /// A shard is gone (or broken): answer each delnum it held once with
    /// a `Z`, and schedule its replacement.
    fn shard_down(&mut self, i: usize, now: Instant, why: &str) {
        let shard = &mut self.shards[i];
        if let Some(live) = &shard.live {
            let _ = self.poller.delete(live.results.as_fd());
            if let Some(jobs) = &live.jobs
                && live.jobs_watched
            {
                let _ = self.poller.delete(jobs.as_fd());
            }
            if !live.reaped {
                self.dying.push(live.pid);
            }
        }
        let held = shard.in_flight;
        if held > 0 || self.reading {
            // It may still be alive with its pipe closed; make sure, so
            // no qmail-remote result can arrive from it any more.
            if let Some(live) = &shard.live
                && !live.reaped
            {
                let _ = nix::sys::signal::kill(live.pid, Signal::SIGKILL);
            }
        }
        shard.outbox.clear();
        shard.in_flight = 0;
        shard.went_down(now);
        if held == 0 && !self.reading {
            shard.restart_at = None;
            self.log.info(format_args!("shard {i} finished"));
            return;
        }
        self.answer_lost(i);
        if !self.reading {
            self.shards[i].restart_at = None;
        }
        let shard = &self.shards[i];
        self.log.warn(format_args!(
            "shard {i} died ({why}); answered {held} deliveries with a deferral; {}",
            match shard.restart_at {
                Some(at) => format!("restarting in {} ms", at.saturating_duration_since(now).as_millis()),
                None => "not restarting: qmail-send is gone".to_string(),
            }
        ));
    }

    /// Answers every delnum shard `i` holds with the shard-lost `Z`.
    fn answer_lost(&mut self, i: usize) {
        let lost = Refusal::ShardLost { shard: i as u16 }.body();
        for delnum in 0..self.owner.len() {
            if self.owner[delnum] == i as u16 {
                self.owner[delnum] = FREE;
                self.record(delnum as u16, &lost);
            }
        }
        self.shards[i].outbox.clear();
        self.shards[i].in_flight = 0;
    }

    fn restart_due(&mut self, now: Instant) {
        for i in 0..self.shards.len() {
            let due = self.shards[i].restart_at.is_some_and(|at| at <= now);
            if !due {
                continue;
            }
            self.shards[i].restarts += 1;
            self.restarts += 1;
            if let Err(e) = self.start_shard(i) {
                let held = self.shards[i].in_flight;
                // What waited for it cannot wait for ever.
                self.answer_lost(i);
                let shard = &mut self.shards[i];
                shard.live = None;
                shard.went_down(now);
                if !self.reading {
                    shard.restart_at = None;
                }
                self.log.warn(format_args!(
                    "unable to restart shard {i}: {e}; answered {held} \
                     deliveries with a deferral; trying again in {} ms",
                    self.shards[i].backoff.as_millis()
                ));
            }
        }
    }

    /// Writes what the shard's job pipe takes; after EOF from qmail-send,
    /// closes it once empty, which is how a shard learns to finish.
    fn flush_jobs(&mut self, i: usize) {
        let shard = &mut self.shards[i];
        let Some(live) = shard.live.as_mut() else { return };
        let Some(jobs) = live.jobs.as_ref() else { return };
        let mut written = 0;
        while written < shard.outbox.len() {
            match sys::write(jobs.as_fd(), &shard.outbox[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                // EPIPE: it is dying; its result pipe will say so.
                Err(_) => break,
            }
        }
        shard.outbox.drain(..written);
        let want = !shard.outbox.is_empty();
        let t = token(JOBS, shard.generation, shard.index);
        if want && !live.jobs_watched {
            live.jobs_watched =
                self.poller.add(jobs.as_fd(), Interest::Write, t).is_ok();
        } else if !want && live.jobs_watched {
            let _ = self.poller.delete(jobs.as_fd());
            live.jobs_watched = false;
        }
        if !want && !self.reading {
            live.jobs = None;
        }
    }

    fn record(&mut self, delnum: u16, body: &[u8]) {
        self.results += 1;
        if self.writing {
            record::encode(self.rt.width, delnum, body, &mut self.out);
        }
    }

    /// Writes the pending records; fd 1 stays blocking, as stock's. If
    /// qmail-send is gone, stop writing for good and keep going.
    fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if self.writing
            && let Err(e) = write_all(self.stdout.as_fd(), &self.out)
        {
            self.writing = false;
            self.log.warn(format_args!(
                    "unable to write results to qmail-send: {e}; discarding results from now on"
                ));
        }
        self.out.clear();
    }
}

/// A blocking write of all of `buf`, retrying on EINTR; the descriptor
/// is blocking, so a short write just means "go on".
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(sys::io_err(e)),
        }
    }
    Ok(())
}

/// Reads a control file again if its stamp changed (or if `force`):
/// the new version if it differs (or `force`) and parses; `None` if
/// nothing changed, or if it is broken, which is logged once per
/// version while the one in force stays.
fn reload<T>(
    current: &mut Source<T>,
    force: bool,
    log: &Log,
    what: &str,
    parse: fn(&[u8]) -> Result<T, shardspawn_common::limits::LimitsError>,
) -> Option<Source<T>> {
    let path = current.path.clone();
    if !force && startup::stamp(&path) == current.stamp {
        return None;
    }
    match Source::read(&path, parse) {
        Ok(new) => {
            if new.text == current.text && !force {
                current.stamp = new.stamp;
                return None;
            }
            Some(new)
        }
        Err(e) => {
            // Remember the stamp: one warning per broken version.
            current.stamp = startup::stamp(&path);
            log.warn(format_args!(
                "{what} not reloaded, keeping the ones in force: {e}"
            ));
            None
        }
    }
}
