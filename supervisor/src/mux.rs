//! The supervisor's driver: the only code in it that waits. It turns
//! what the kernel reports (qmail-send's commands, shard results, EOFs,
//! reaped children, the clock) into [`Event`]s for the [`Core`] and
//! carries out its [`Effect`]s: records to fd 1, frames to job pipes,
//! shard starts, kills. It decides nothing about routing, owners or
//! restarts; it owns the descriptors, the buffers, the control files'
//! stamps and the status file.
//!
//! One thread, one epoll. Tokens pack (kind, shard generation, shard
//! index), so an event from a shard that has since been replaced is
//! recognised and dropped before anything is read.

use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use shardspawn_common::command::{CommandDecoder, Decoded};
use shardspawn_common::limits::Limits;
use shardspawn_common::lookup::{ANSWER, Answer};
use shardspawn_common::record;
use shardspawn_common::report::ChildEnd;
use shardspawn_common::response::Responses;
use shardspawn_common::routes::Routes;
use shardspawn_common::status::SupervisorStatus;
use shardspawn_os::log::{Log, StatusWriter};
use shardspawn_os::sys::{self, Interest, Poller, Token};

use crate::core::{
    Core, Effect, Event, GENERATION_BITS, Level, Loss, ShardId,
};
use crate::resolver::{self, ResolverProc};
use crate::shards::{self, Process};
use crate::sites::Sites;
use crate::startup::{self, FIELD_LIMIT, Runtime, Source};

/// How often the limits file is looked at (qmail-start's children never
/// get qmail-send's HUP, so a change must be noticed by itself).
const LIMITS_EVERY: Duration = Duration::from_secs(2);

/// Sites and providers listed in the supervisor's status file.
const STATUS_SITES: usize = 20;

/// How often the supervisor publishes its status.
const STATUS_EVERY: Duration = Duration::from_secs(1);

const QMAIL: u8 = 0;
const SIGNALS: u8 = 1;
const RESULTS: u8 = 2;
const JOBS: u8 = 3;

/// The token index of the resolver's pipes (kinds `RESULTS` and `JOBS`):
/// never a shard's, which are below `SHARDS_MAX`.
const RESOLVER: u32 = u32::MAX;

fn resolver_token(kind: u8, generation: u32) -> u64 {
    Token { kind, generation, index: RESOLVER }.pack()
}

fn token(kind: u8, id: ShardId) -> u64 {
    let index = u32::from(id.index);
    Token { kind, generation: id.generation, index }.pack()
}

fn untoken(data: u64) -> (u8, ShardId) {
    let t = Token::unpack(data);
    (t.kind, ShardId { index: t.index as u16, generation: t.generation })
}

// The core's generations must come back from epoll as they went in.
const _: () = assert!(GENERATION_BITS <= sys::TOKEN_GENERATION_BITS);

/// Starts the shards, announces, and serves until qmail-send closes the
/// command pipe and every delivery has its result. Returns the exit code.
pub fn run(rt: Runtime, log: Log) -> i32 {
    let (mut mux, starts) = match Mux::new(rt, log.clone()) {
        Ok(mux) => mux,
        Err(e) => {
            log.fatal(format_args!("unable to set up the event loop: {e}"));
            return 111;
        }
    };
    // Before the announcement a shard that cannot start is fatal: exit
    // 111 without announcing, and qmail-start's supervisor tries again.
    for effect in starts {
        let Effect::Start(id) = effect else {
            // The resolver: not fatal if it cannot start (DNS never
            // stops mail); the core starts it again later.
            mux.carry_out(effect);
            continue;
        };
        let now = Instant::now();
        match mux.start(id) {
            Ok(pid) => mux.feed(Event::Started { shard: id, pid, now }),
            Err(e) => {
                log.fatal(format_args!(
                    "unable to start shard {}: {e}",
                    id.index
                ));
                return 111;
            }
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
    core: Core,
    poller: Poller,
    signals: SignalFd,
    stdin: io::Stdin,
    stdout: io::Stdout,
    decoder: CommandDecoder,
    reading: bool,
    /// fd 0 is in the epoll. Not when it is a regular file or /dev/null
    /// (run by hand, `</dev/null` or `<commands`): epoll refuses those
    /// (EPERM), and they are always ready, so each pass reads them, to
    /// their end.
    stdin_polled: bool,
    writing: bool,
    out: Vec<u8>,
    /// Per shard index: the running incarnation's process and pipes.
    procs: Vec<Option<Process>>,
    /// Shard processes given up but not yet reaped.
    dying: Vec<Pid>,
    /// The resolver process, while it runs.
    resolver: Option<ResolverProc>,
    /// The core said every delnum is answered and every shard gone.
    exit: bool,
    /// When to look at the limits file again, and to publish status.
    next_limits_check: Instant,
    next_status: Instant,
    started: SystemTime,
    status: StatusWriter,
    buf: Vec<u8>,
    /// Kept between events to reuse its allocation.
    effects: Vec<Effect>,
}

impl Mux {
    /// The driver and the core's first effects (a start of each shard).
    fn new(rt: Runtime, log: Log) -> io::Result<(Mux, Vec<Effect>)> {
        let signals = sys::signal_fd(&[Signal::SIGCHLD, Signal::SIGHUP])?;
        let poller = Poller::new(256)?;
        let stdin = io::stdin();
        sys::set_nonblocking(stdin.as_fd(), true)?;
        let none = ShardId { index: 0, generation: 0 };
        let stdin_polled = match poller.add(
            stdin.as_fd(),
            Interest::Read,
            token(QMAIL, none),
        ) {
            Ok(()) => true,
            Err(e)
                if e.raw_os_error()
                    == Some(nix::errno::Errno::EPERM as i32) =>
            {
                log.info(format_args!(
                    "fd 0 is a file, not a pipe: reading its commands to \
                     its end"
                ));
                false
            }
            Err(e) => return Err(e),
        };
        poller.add(signals.as_fd(), Interest::Read, token(SIGNALS, none))?;
        let mut starts = Vec::new();
        let mut core = Core::new(
            rt.slots,
            rt.shards,
            (Rc::from(&rt.limits.text[..]), rt.limits.parsed.clone()),
            Rc::from(&rt.responses.text[..]),
            &mut starts,
        );
        core.watch_framing(rt.width);
        let sites =
            Sites::new(rt.sites, rt.dns_wait, rt.routes.parsed.clone());
        core.use_sites(sites, &mut starts);
        let mux = Mux {
            decoder: CommandDecoder::new(rt.width, FIELD_LIMIT),
            procs: (0..rt.shards).map(|_| None).collect(),
            core,
            rt,
            log,
            poller,
            signals,
            stdin,
            stdout: io::stdout(),
            reading: true,
            stdin_polled,
            writing: true,
            out: Vec::new(),
            dying: Vec::new(),
            resolver: None,
            exit: false,
            next_limits_check: Instant::now() + LIMITS_EVERY,
            next_status: Instant::now(),
            started: SystemTime::now(),
            status: StatusWriter::default(),
            buf: vec![0; 64 * 1024],
            effects: Vec::new(),
        };
        Ok((mux, starts))
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

    /// Gives the core one event and carries out what it decides.
    fn feed(&mut self, event: Event) {
        let mut effects = std::mem::take(&mut self.effects);
        self.core.handle(event, &mut effects);
        for effect in effects.drain(..) {
            self.carry_out(effect);
        }
        self.effects = effects;
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Record { delnum, body } => {
                if self.writing {
                    record::encode(
                        self.rt.width,
                        delnum,
                        &body,
                        &mut self.out,
                    );
                }
            }
            Effect::Job { shard, job } => {
                if let Some(p) = self.process(shard) {
                    p.outbox.push_job(&job);
                }
            }
            Effect::Text { shard, control, text } => {
                // A job pipe already closed takes nothing more.
                if let Some(p) = self.process(shard)
                    && p.jobs.is_some()
                {
                    p.outbox.push_text(control, text);
                }
            }
            Effect::Replace { shard, control, text } => {
                if let Some(p) = self.process(shard)
                    && p.jobs.is_some()
                    && !p.outbox.replace_text(control, text.clone())
                {
                    // The core thought one was waiting: the newest text
                    // must reach the shard all the same.
                    self.log.warn(format_args!(
                        "no {control:?} text was waiting for shard {}; \
                         queueing the new one",
                        shard.index
                    ));
                    if let Some(p) = self.process(shard) {
                        p.outbox.push_text(control, text);
                    }
                }
            }
            Effect::Start(id) => {
                let now = Instant::now();
                let event = match self.start(id) {
                    Ok(pid) => Event::Started { shard: id, pid, now },
                    Err(error) => Event::StartFailed { shard: id, error, now },
                };
                self.feed(event);
            }
            Effect::CloseJobs(shard) => {
                if let Some(p) = self.process(shard) {
                    p.closing = true;
                }
            }
            Effect::Kill(pid) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            Effect::Forget { shard, unreaped } => {
                self.forget(shard);
                self.dying.extend(unreaped);
            }
            Effect::Lookup(domain) => {
                if let Some(r) = &mut self.resolver {
                    r.push(&domain);
                }
            }
            Effect::StartResolver(generation) => {
                let now = Instant::now();
                let event = match self.start_resolver(generation) {
                    Ok(pid) => Event::ResolverStarted { generation, pid, now },
                    Err(error) => {
                        Event::ResolverStartFailed { generation, error, now }
                    }
                };
                self.feed(event);
            }
            Effect::ForgetResolver { unreaped } => {
                if let Some(r) = self.resolver.take() {
                    let _ = self.poller.delete(r.answers.as_fd());
                    if r.watched {
                        let _ = self.poller.delete(r.lookups.as_fd());
                    }
                }
                if let Some(pid) = unreaped {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    self.dying.push(pid);
                }
            }
            Effect::Log(Level::Info, line) => {
                self.log.info(format_args!("{line}"))
            }
            Effect::Log(Level::Warn, line) => {
                self.log.warn(format_args!("{line}"))
            }
            Effect::Exit => self.exit = true,
        }
    }

    /// Stops watching incarnation `id`'s pipes and closes them.
    fn forget(&mut self, id: ShardId) {
        let slot = &mut self.procs[usize::from(id.index)];
        let Some(p) = slot.take_if(|p| p.id == id) else { return };
        let _ = self.poller.delete(p.results.as_fd());
        if let Some(jobs) = &p.jobs
            && p.jobs_watched
        {
            let _ = self.poller.delete(jobs.as_fd());
        }
    }

    /// The process of incarnation `id`, if it is the one running.
    fn process(&mut self, id: ShardId) -> Option<&mut Process> {
        self.procs
            .get_mut(usize::from(id.index))?
            .as_mut()
            .filter(|p| p.id == id)
    }

    /// Starts the resolver and watches its answer pipe.
    fn start_resolver(&mut self, generation: u32) -> io::Result<Pid> {
        let r = resolver::start(generation, &self.rt.resolver)?;
        let t = resolver_token(RESULTS, generation);
        self.poller.add(r.answers.as_fd(), Interest::Read, t)?;
        let pid = r.pid;
        self.resolver = Some(r);
        Ok(pid)
    }

    /// Reads the resolver's answers (`generation`'s, if it still runs).
    fn read_answers(&mut self, generation: u32, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut lost = None;
        match &self.resolver {
            Some(r) if r.generation == generation => {
                match sys::read(r.answers.as_fd(), &mut buf) {
                    Ok(Some(n)) => lost = self.answers(&buf[..n], now),
                    Ok(None) => lost = Some("closed its answer pipe".into()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => lost = Some(format!("unable to read it: {e}")),
                }
            }
            _ => {}
        }
        self.buf = buf;
        if let Some(why) = lost {
            self.feed(Event::ResolverLost { generation, why, now });
        }
    }

    /// Feeds each whole answer in `bytes`; a reason if the stream is
    /// broken.
    fn answers(&mut self, mut bytes: &[u8], now: Instant) -> Option<String> {
        while !bytes.is_empty() {
            let r = self.resolver.as_mut()?;
            let (used, frame) = r.decoder.decode(bytes);
            bytes = &bytes[used..];
            match frame {
                None => {}
                Some(Ok((ANSWER, _, payload))) => {
                    match Answer::from_payload(&payload) {
                        Some(answer) => self.feed(Event::Answer(answer, now)),
                        None => return Some("sent a broken answer".into()),
                    }
                }
                Some(Ok((kind, _, _))) => {
                    return Some(format!("sent a frame of kind {kind}"));
                }
                Some(Err(e)) => {
                    return Some(format!("sent a frame of {} bytes", e.len));
                }
            }
        }
        None
    }

    /// Writes the lookups the resolver's pipe takes, and watches it for
    /// room while some are left.
    fn flush_lookups(&mut self) {
        let Some(r) = &mut self.resolver else { return };
        let want = !r.flush();
        let t = resolver_token(JOBS, r.generation);
        if want && !r.watched {
            r.watched =
                self.poller.add(r.lookups.as_fd(), Interest::Write, t).is_ok();
        } else if !want && r.watched {
            let _ = self.poller.delete(r.lookups.as_fd());
            r.watched = false;
        }
    }

    /// Starts incarnation `id` and watches its result pipe.
    fn start(&mut self, id: ShardId) -> io::Result<Pid> {
        let p = shards::start(id, &self.rt.shard, self.rt.redis.as_ref())?;
        // Not watched, it is dropped here: its job pipe closes, and it
        // exits on its own.
        self.poller.add(
            p.results.as_fd(),
            Interest::Read,
            token(RESULTS, id),
        )?;
        let pid = p.pid;
        self.procs[usize::from(id.index)] = Some(p);
        Ok(pid)
    }

    fn serve(&mut self) -> io::Result<()> {
        loop {
            if self.exit {
                self.flush_out();
                // Every shard has closed its result pipe and is exiting;
                // reap them so none outlives us as a zombie.
                // The resolver holds nothing worth waiting for.
                if let Some(r) = self.resolver.take() {
                    let _ = nix::sys::signal::kill(r.pid, Signal::SIGKILL);
                    self.dying.push(r.pid);
                }
                for pid in self.dying.drain(..) {
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
                // The last counts, which the last second's file lacks:
                // every result is written now, as the shards' own last
                // files (written as they exited) say.
                self.publish(Some(SystemTime::now()));
                return Ok(());
            }
            // A file on fd 0 always has more to read (or its EOF): look,
            // but do not wait.
            let file_on_stdin = self.reading && !self.stdin_polled;
            let deadline = [self.next_limits_check, self.next_status]
                .into_iter()
                .chain(self.core.next_deadline())
                .chain(file_on_stdin.then(Instant::now))
                .min();
            self.poller.wait(deadline)?;
            if file_on_stdin {
                self.read_commands();
            }
            let now = Instant::now();
            let tokens: Vec<u64> = self.poller.tokens().collect();
            for t in tokens {
                let raw = Token::unpack(t);
                if raw.index == RESOLVER {
                    // Room in its pipe is used below.
                    if raw.kind == RESULTS {
                        self.read_answers(raw.generation, now);
                    }
                    continue;
                }
                let (kind, id) = untoken(t);
                match kind {
                    QMAIL => self.read_commands(),
                    SIGNALS => self.signals(),
                    RESULTS => {
                        if self.process(id).is_some() {
                            self.read_results(id, now);
                        }
                    }
                    // Room in a job pipe; written below.
                    JOBS => {}
                    _ => unreachable!("two-bit kind"),
                }
            }
            self.feed(Event::Tick(now));
            if now >= self.next_limits_check {
                self.next_limits_check = now + LIMITS_EVERY;
                self.reload_limits(false);
                self.reload_responses(false);
                self.reload_routes(false);
            }
            for i in 0..self.procs.len() {
                self.flush_jobs(i);
            }
            self.flush_lookups();
            self.flush_out();
            if now >= self.next_status {
                self.next_status = now + STATUS_EVERY;
                self.publish(None);
            }
            if cfg!(debug_assertions) {
                self.core.check_invariants();
            }
        }
    }

    fn read_commands(&mut self) {
        if !self.reading {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let n = match sys::read(self.stdin.as_fd(), &mut buf) {
            Ok(None) => 0,
            Ok(Some(n)) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.buf = buf;
                return;
            }
            Err(e) => {
                self.log.warn(format_args!("unable to read commands: {e}"));
                0
            }
        };
        let mut at = 0;
        while at < n {
            let (used, decoded) = self.decoder.decode(&buf[at..n]);
            at += used;
            match decoded {
                None => {}
                Some(Decoded::Oversize { delnum }) => {
                    self.log.warn(format_args!(
                        "command for delnum {delnum} has a field over {FIELD_LIMIT} bytes"
                    ));
                    self.feed(Event::Oversize { delnum });
                }
                Some(Decoded::Command(cmd)) => {
                    self.feed(Event::Command(cmd, Instant::now()))
                }
            }
        }
        self.buf = buf;
        if n == 0 {
            self.end_of_commands();
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
        self.feed(Event::CommandsEnd);
    }

    fn signals(&mut self) {
        for signo in sys::drain_signals(&self.signals) {
            if signo == Signal::SIGHUP as i32 {
                self.reload_limits(true);
                self.reload_responses(true);
                self.reload_routes(true);
            }
        }
        while let Some((pid, end)) = sys::reap() {
            self.dying.retain(|&p| p != pid);
            // Reaped before its pipe said EOF: the pid is free for reuse,
            // so it must not be killed or waited for later.
            self.feed(Event::Reaped(pid));
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
        let event = Event::Limits {
            text: Rc::from(&new.text[..]),
            parsed: new.parsed.clone(),
        };
        self.rt.limits = new;
        self.feed(event);
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
        let event = Event::Responses(Rc::from(&new.text[..]));
        self.rt.responses = new;
        self.feed(event);
    }

    /// The same for smtproutes, which only the core reads.
    fn reload_routes(&mut self, force: bool) {
        if !self.rt.sites {
            return;
        }
        let Some(new) = reload(
            &mut self.rt.routes,
            force,
            &self.log,
            "routes",
            Routes::parse,
        ) else {
            return;
        };
        self.log
            .info(format_args!("routes reloaded from {}", new.path.display()));
        let event = Event::Routes(new.parsed.clone());
        self.rt.routes = new;
        self.feed(event);
    }

    /// Writes the `supervisor` status file and `supervisor.prom` (see
    /// [`shardspawn_spawner::publish::supervisor_prometheus`]), each
    /// renamed into place; `stopped` as it exits.
    fn publish(&mut self, stopped: Option<SystemTime>) {
        let Some(dir) = &self.rt.state_dir else { return };
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        };
        let status = SupervisorStatus {
            pid: std::process::id(),
            started: unix(self.started),
            updated: unix(SystemTime::now()),
            stopped: stopped.map_or(0, unix),
            slots: self.rt.slots,
            delnum_bytes: self.rt.width.bytes() as u8,
            shards: self.rt.shards,
            in_flight: self.core.in_flight(),
            results: self.core.results(),
            letters: self.core.letters(),
            restarts: self.core.restarts(),
            sites: u8::from(self.core.sites().on()),
            dns_waiting: self.core.sites().waiting() as u32,
            dns_cached: self.core.sites().cached() as u32,
            sites_list: self.core.site_status(STATUS_SITES),
        };
        let text = status.render();
        let prom = shardspawn_spawner::publish::supervisor_prometheus(&status);
        let files = [
            ("supervisor", text.as_bytes()),
            ("supervisor.prom", prom.as_bytes()),
        ];
        self.status.write(&self.log, dir, files);
    }

    /// Reads what shard `id`'s result pipe holds and gives the core each
    /// whole frame, until the pipe is empty or the core gives the shard
    /// up.
    fn read_results(&mut self, id: ShardId, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        let read = match self.process(id) {
            Some(p) => sys::read(p.results.as_fd(), &mut buf),
            None => Ok(Some(0)),
        };
        let loss = match read {
            Ok(Some(n)) => {
                self.frames(id, &buf[..n], now);
                None
            }
            Ok(None) => Some(Loss::Eof),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Loss::ReadFailed(e)),
        };
        self.buf = buf;
        if let Some(loss) = loss {
            self.feed(Event::Lost { shard: id, loss, now });
        }
    }

    fn frames(&mut self, id: ShardId, mut bytes: &[u8], now: Instant) {
        while !bytes.is_empty() {
            // Gone since the last frame: what follows is not read.
            let Some(p) = self.process(id) else { return };
            let (used, frame) = p.decoder.decode(bytes);
            bytes = &bytes[used..];
            match frame {
                None => {}
                Some(Ok((kind, delnum, body))) => {
                    let shard = id;
                    self.feed(Event::Frame { shard, kind, delnum, body, now });
                }
                Some(Err(e)) => {
                    let loss = Loss::TooLong(e.len);
                    return self.feed(Event::Lost { shard: id, loss, now });
                }
            }
        }
    }

    /// Writes what the shard's job pipe takes; once the core has closed
    /// it, closes it when empty, which is how a shard learns to finish.
    fn flush_jobs(&mut self, i: usize) {
        let Some(p) = self.procs[i].as_mut() else { return };
        let Some(jobs) = p.jobs.as_ref() else { return };
        let mut begun = Vec::new();
        p.outbox.write(jobs.as_fd(), &mut begun);
        let shard = p.id;
        for control in begun {
            self.feed(Event::TextBegun { shard, control });
        }
        let Some(p) = self.procs[i].as_mut() else { return };
        let Some(jobs) = p.jobs.as_ref() else { return };
        let want = !p.outbox.is_empty();
        let t = token(JOBS, p.id);
        if want && !p.jobs_watched {
            p.jobs_watched =
                self.poller.add(jobs.as_fd(), Interest::Write, t).is_ok();
        } else if !want && p.jobs_watched {
            let _ = self.poller.delete(jobs.as_fd());
            p.jobs_watched = false;
        }
        if !want && p.closing {
            p.jobs = None;
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
