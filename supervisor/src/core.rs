//! What the supervisor decides. No fds, no processes, no clock reads:
//! time comes in with the [`Event`]s, work goes out as [`Effect`]s, in
//! the order it must be done. The twin of the shard's core
//! (`shardspawn_spawner::core`); `mux.rs` is its driver.
//!
//! It owns four things:
//!
//! - **The owner table**: for every delnum, who must answer it (nobody,
//!   or shard i). It is the only record of what is in flight; every
//!   count of deliveries in flight, in all or per shard, is read from it,
//!   so no counter can drift from it.
//! - **Each shard's state**, one `State` per shard carrying exactly the
//!   data valid in it, and an action decided for every (state, event)
//!   pair: `Starting` (asked the driver to start it), `Up` (taking
//!   jobs), `Draining` (job pipe closed after qmail-send's EOF, results
//!   still coming), `Down` (lost; started again at a moment) and `Gone`
//!   (lost or finished after EOF; never started again).
//! - **Commands that cannot go yet**: a routed command whose shard is not
//!   up waits in `pending` with the reason it waits (a `Wait`),
//!   owned by its shard, and goes to the shard right after its control
//!   texts when it starts. A shard lost before it starts answers them
//!   with the lost-shard `Z`, as it answers what it had been sent.
//! - **Which control texts wait to be written**: per running shard and
//!   control file, whether a text handed to the driver has not begun to
//!   be written yet. A newer text takes its place rather than queueing
//!   behind it, so reloads, however many, leave at most one text of each
//!   file waiting per shard (besides the one being written): a SIGHUP
//!   storm once queued the whole limits text per signal per shard.
//!
//! Each shard start has a generation; every event from a shard names the
//! incarnation it came from, so a late event from a dead one is ignored
//! and cannot touch its replacement's deliveries.
//!
//! It never counts domains: the limits are only read to find the key a
//! command is routed on, and their text is passed on to the shards.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::domain;
use shardspawn_common::frame::{DONE, Job, LIMITS, RESPONSES};
use shardspawn_common::limits::{KeyKind, Limits};
use shardspawn_common::lookup::Answer;
use shardspawn_common::refusal::Refusal;
use shardspawn_common::routes::Routes;
use shardspawn_common::status::SiteStatus;
use shardspawn_common::validate;

use crate::framing::FramingWatch;
use crate::sites::{Found, Settled, Sites};

/// How many bits of a [`ShardId::generation`] are used: the driver packs
/// one into an epoll token beside the kind and the index, so the core
/// wraps its generations where the token does.
pub const GENERATION_BITS: u32 = 30;

/// A shard that died this soon after its start is restarted after a
/// growing pause.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One incarnation of a shard: its index, and which of its starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardId {
    /// Index, `0..shards`.
    pub index: u16,
    /// Bumped at every start (wrapping at [`GENERATION_BITS`]).
    pub generation: u32,
}

/// A control file whose text every shard is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// The per-destination limits.
    Limits,
    /// The response rules.
    Responses,
}

impl Control {
    /// Its place in a per-control array.
    fn index(self) -> usize {
        match self {
            Control::Limits => 0,
            Control::Responses => 1,
        }
    }

    /// Its frame kind.
    pub fn kind(self) -> u8 {
        match self {
            Control::Limits => LIMITS,
            Control::Responses => RESPONSES,
        }
    }
}

/// How the driver found a shard's result pipe broken.
#[derive(Debug)]
pub enum Loss {
    /// The pipe is at EOF: the shard exited, or closed it.
    Eof,
    /// Reading it failed.
    ReadFailed(io::Error),
    /// A frame longer than any result: nothing after it can be trusted.
    TooLong(u32),
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// qmail-send sent a whole command, read at that moment.
    Command(Command, Instant),
    /// qmail-send sent a command with a field longer than we store.
    Oversize {
        /// The delnum it carried.
        delnum: u16,
    },
    /// A whole frame from a shard's result pipe.
    Frame {
        /// The incarnation whose pipe it came from.
        shard: ShardId,
        /// Its kind ([`DONE`] is the only one a shard may send).
        kind: u8,
        /// The delnum it answers.
        delnum: u16,
        /// The result body.
        body: Vec<u8>,
        /// When the loop woke up.
        now: Instant,
    },
    /// A shard's result pipe is at EOF or broken.
    Lost {
        /// The incarnation.
        shard: ShardId,
        /// How.
        loss: Loss,
        /// When the loop woke up.
        now: Instant,
    },
    /// A child was reaped; if it is a shard's, its pid may be reused from
    /// now on, so it must never be killed or waited for.
    Reaped(Pid),
    /// The driver started the shard [`Effect::Start`] asked for.
    Started {
        /// The incarnation it was asked to start.
        shard: ShardId,
        /// The process.
        pid: Pid,
        /// When.
        now: Instant,
    },
    /// The driver could not start it.
    StartFailed {
        /// The incarnation it was asked to start.
        shard: ShardId,
        /// Why.
        error: io::Error,
        /// When.
        now: Instant,
    },
    /// The loop woke up at this moment: restarts due by then are due.
    Tick(Instant),
    /// qmail-send's command pipe is at EOF (or broken).
    CommandsEnd,
    /// A changed limits file: its text for the shards, and parsed, to
    /// route on.
    Limits {
        /// As read.
        text: Rc<[u8]>,
        /// Parsed.
        parsed: Limits,
    },
    /// A changed response rules file (the shards parse it).
    Responses(Rc<[u8]>),
    /// A changed smtproutes file, parsed.
    Routes(Routes),
    /// The driver started the resolver [`Effect::StartResolver`] asked
    /// for.
    ResolverStarted {
        /// The start it was asked for.
        generation: u32,
        /// The process.
        pid: Pid,
        /// When.
        now: Instant,
    },
    /// The driver could not start it.
    ResolverStartFailed {
        /// The start it was asked for.
        generation: u32,
        /// Why.
        error: io::Error,
        /// When.
        now: Instant,
    },
    /// The resolver answered a lookup, at that moment.
    Answer(Answer, Instant),
    /// The running resolver's answer pipe is at EOF or broken, or it
    /// sent garbage: nothing it was asked will be answered.
    ResolverLost {
        /// Which start of it.
        generation: u32,
        /// How, for the log.
        why: String,
        /// When.
        now: Instant,
    },
    /// The driver wrote the first byte of the text of `control` queued
    /// for `shard`: from now on it cannot be replaced.
    TextBegun {
        /// The incarnation whose job pipe it went to.
        shard: ShardId,
        /// Which file's text.
        control: Control,
    },
}

/// How much a log line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Worth knowing.
    Info,
    /// Something went wrong, and was dealt with.
    Warn,
}

/// What the driver must do, in this order.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write this result record to qmail-send.
    Record {
        /// The delnum it answers.
        delnum: u16,
        /// Letter and text.
        body: Vec<u8>,
    },
    /// Send this job frame to the shard.
    Job {
        /// To which incarnation.
        shard: ShardId,
        /// The job.
        job: Job,
    },
    /// Queue a control file's text for the shard, after everything
    /// queued for it so far; say [`Event::TextBegun`] when its first byte
    /// is written.
    Text {
        /// To which incarnation.
        shard: ShardId,
        /// Which file.
        control: Control,
        /// Its text.
        text: Rc<[u8]>,
    },
    /// Put this text in the place of the text of the same file queued
    /// for the shard and not yet begun (so it reaches the shard no later
    /// than that one would have), and say [`Event::TextBegun`] when its
    /// first byte is written.
    Replace {
        /// To which incarnation.
        shard: ShardId,
        /// Which file.
        control: Control,
        /// The newer text.
        text: Rc<[u8]>,
    },
    /// Start this incarnation of a shard; answer with
    /// [`Event::Started`] or [`Event::StartFailed`].
    Start(ShardId),
    /// Close the shard's job pipe once what was sent is written: this is
    /// how a shard learns to finish.
    CloseJobs(ShardId),
    /// SIGKILL this shard process: it is given up, so no result may
    /// come from it any more.
    Kill(Pid),
    /// Forget the incarnation's pipes; `unreaped` is its pid if it has
    /// not been reaped yet, to be waited for before exiting.
    Forget {
        /// The incarnation.
        shard: ShardId,
        /// Its pid, unless already reaped.
        unreaped: Option<Pid>,
    },
    /// Ask the resolver where this (normalised) domain's mail goes;
    /// answer with [`Event::Answer`].
    Lookup(Vec<u8>),
    /// Start the resolver process (this start of it); answer with
    /// [`Event::ResolverStarted`] or [`Event::ResolverStartFailed`].
    StartResolver(u32),
    /// Close the running resolver's pipes; kill it first if `unreaped`
    /// is its pid (it may be alive with a broken pipe), and wait for it.
    ForgetResolver {
        /// Its pid, unless already reaped.
        unreaped: Option<Pid>,
    },
    /// Log this line.
    Log(Level, String),
    /// Every delnum is answered and every shard gone: exit 0.
    Exit,
}

/// A running shard process, as the core knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    generation: u32,
    pid: Pid,
    started: Instant,
    /// Reaped before its pipe said EOF: its pid may be another process's.
    reaped: bool,
    /// The pause before the start that made it.
    backoff: Duration,
    /// Per [`Control::index`]: a text of that file is queued for it and
    /// has not begun to be written.
    queued: [bool; 2],
}

/// A shard's state; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting { generation: u32, backoff: Duration, restart: bool },
    Up(Run),
    Draining(Run),
    Down { generation: u32, restart_at: Instant, backoff: Duration },
    Gone,
}

/// The resolver process's state: like a shard's, without draining (it
/// is closed at exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolver {
    /// Sites are off: no resolver.
    Off,
    Starting {
        generation: u32,
        backoff: Duration,
    },
    Up {
        generation: u32,
        pid: Pid,
        started: Instant,
        backoff: Duration,
        reaped: bool,
    },
    Down {
        generation: u32,
        restart_at: Instant,
        backoff: Duration,
    },
}

/// Who must answer a delnum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Nothing in flight.
    Free,
    /// Routed to this shard: sent to it, or waiting for it.
    Shard(u16),
    /// Waiting for DNS before it can be routed (in [`Sites`]).
    Resolving,
}

/// Why a routed command has not gone to its shard yet. (A command
/// waiting for a DNS answer before it can be routed at all is not routed:
/// its owner is [`Owner::Resolving`], and it waits in [`Sites`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Its shard is starting, or down until its restart.
    ShardDown(u16),
}

#[derive(Debug)]
struct Pending {
    job: Job,
    wait: Wait,
}

/// The supervisor's whole decision state.
#[derive(Debug)]
pub struct Core {
    /// Slots announced: the delnum bound.
    slots: u32,
    /// Per shard index.
    shards: Vec<State>,
    /// Per delnum.
    owner: Vec<Owner>,
    /// Routed commands not yet sent, in arrival order.
    pending: VecDeque<Pending>,
    limits: Limits,
    limits_text: Rc<[u8]>,
    responses_text: Rc<[u8]>,
    /// qmail-send's commands still come.
    reading: bool,
    /// [`Effect::Exit`] was emitted.
    exited: bool,
    results: u64,
    /// Of `results`, by letter: `K`, `Z`, `D`.
    letters: [u64; 3],
    restarts: u64,
    /// Set by [`Core::watch_framing`].
    framing: Option<FramingWatch>,
    /// Where domains' mail goes, and what waits for DNS; off unless
    /// [`Core::use_sites`].
    sites: Sites,
    resolver: Resolver,
}

impl Core {
    /// A core for `shards` shards (at least 1) and `slots` delnums,
    /// routing on `limits`; every shard starts now: the driver carries
    /// out the [`Effect::Start`]s appended to `effects`.
    pub fn new(
        slots: u32,
        shards: u16,
        limits: (Rc<[u8]>, Limits),
        responses: Rc<[u8]>,
        effects: &mut Vec<Effect>,
    ) -> Core {
        debug_assert!(shards >= 1, "no shards");
        let shards = (0..shards)
            .map(|index| {
                effects.push(Effect::Start(ShardId { index, generation: 1 }));
                State::Starting {
                    generation: 1,
                    backoff: Duration::ZERO,
                    restart: false,
                }
            })
            .collect();
        Core {
            slots,
            shards,
            owner: vec![Owner::Free; slots as usize],
            pending: VecDeque::new(),
            limits: limits.1,
            limits_text: limits.0,
            responses_text: responses,
            reading: true,
            exited: false,
            results: 0,
            letters: [0; 3],
            restarts: 0,
            framing: None,
            sites: Sites::off(),
            resolver: Resolver::Off,
        }
    }

    /// Keys domains by their sites as `sites` finds them (issue 16),
    /// starting the resolver process if they are on: the driver carries
    /// out the [`Effect::StartResolver`] appended to `effects`.
    pub fn use_sites(&mut self, sites: Sites, effects: &mut Vec<Effect>) {
        if sites.on() {
            let backoff = Duration::ZERO;
            self.resolver = Resolver::Starting { generation: 1, backoff };
            effects.push(Effect::StartResolver(1));
        }
        self.sites = sites;
    }

    /// The site state, for status.
    pub fn sites(&self) -> &Sites {
        &self.sites
    }

    /// The limits routed on.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The `top` sites and providers holding the most domains now.
    pub fn site_status(&self, top: usize) -> Vec<SiteStatus> {
        self.sites
            .busiest_sites(top)
            .into_iter()
            .map(|(key, domains)| SiteStatus {
                key: domain::printable(key),
                kind: match self.limits.key_kind(key) {
                    KeyKind::Domain => "domain",
                    KeyKind::Group => "group",
                    KeyKind::Provider => "provider",
                    KeyKind::Site => "site",
                }
                .to_string(),
                domains,
            })
            .collect()
    }

    /// Logs once if the commands cannot be qmail-send's in `width`
    /// ([`FramingWatch`]); answers stay as they are.
    pub fn watch_framing(&mut self, width: DelnumWidth) {
        self.framing = Some(FramingWatch::new(width));
    }

    /// Handles one event, appending what must be done to `effects`.
    pub fn handle(&mut self, event: Event, effects: &mut Vec<Effect>) {
        match event {
            Event::Command(cmd, now) => self.command(cmd, now, effects),
            Event::Oversize { delnum } => {
                self.record(delnum, Refusal::OutOfMemory.body(), effects);
            }
            Event::Frame { shard, kind, delnum, body, now } => {
                self.frame(shard, kind, delnum, body, now, effects);
            }
            Event::Lost { shard, loss, now } => {
                self.lost(shard, loss, now, effects);
            }
            Event::Reaped(pid) => {
                if let Resolver::Up { pid: p, reaped, .. } = &mut self.resolver
                    && *p == pid
                {
                    *reaped = true;
                }
                self.reaped(pid)
            }
            Event::Started { shard, pid, now } => {
                self.started(shard, pid, now, effects);
            }
            Event::StartFailed { shard, error, now } => {
                self.start_failed(shard, error, now, effects);
            }
            Event::Tick(now) => {
                self.restart_due(now, effects);
                self.resolver_due(now, effects);
                for settled in self.sites.expired(&self.limits, now) {
                    self.settle(settled, now, effects);
                }
            }
            Event::Routes(routes) => self.sites.set_routes(routes),
            Event::ResolverStarted { generation, pid, now } => {
                self.resolver_started(generation, pid, now)
            }
            Event::ResolverStartFailed { generation, error, now } => {
                if let Resolver::Starting { generation: g, .. } = self.resolver
                    && g == generation
                {
                    let why = format!("unable to start it: {error}");
                    self.resolver_down(generation, now, true, &why, effects);
                }
            }
            Event::Answer(answer, now) => {
                if let Some(settled) =
                    self.sites.answered(&self.limits, answer, now)
                {
                    self.settle(settled, now, effects);
                }
            }
            Event::ResolverLost { generation, why, now } => {
                if let Resolver::Up {
                    generation: g, started, pid, reaped, ..
                } = self.resolver
                    && g == generation
                {
                    let unreaped = (!reaped).then_some(pid);
                    effects.push(Effect::ForgetResolver { unreaped });
                    let young =
                        now.saturating_duration_since(started) < STABLE_AFTER;
                    self.resolver_down(generation, now, young, &why, effects);
                }
            }
            Event::CommandsEnd => self.commands_end(effects),
            Event::Limits { text, parsed } => {
                self.sites.rekey(&parsed);
                self.limits = parsed;
                self.limits_text = text;
                self.push_text(Control::Limits, effects);
            }
            Event::Responses(text) => {
                self.responses_text = text;
                self.push_text(Control::Responses, effects);
            }
            Event::TextBegun { shard, control } => {
                self.text_begun(shard, control)
            }
        }
        if !self.reading
            && !self.exited
            && self.shards.iter().all(|s| *s == State::Gone)
        {
            debug_assert_eq!(self.in_flight(), 0, "gone with delnums held");
            self.exited = true;
            effects.push(Effect::Exit);
        }
    }

    /// The next restart due, or DNS wait over; the driver never sleeps
    /// past it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter_map(|s| match *s {
                State::Down { restart_at, .. } => Some(restart_at),
                State::Starting { .. }
                | State::Up(_)
                | State::Draining(_)
                | State::Gone => None,
            })
            .chain(self.sites.next_deadline())
            .chain(match self.resolver {
                Resolver::Down { restart_at, .. } if self.reading => {
                    Some(restart_at)
                }
                Resolver::Off
                | Resolver::Starting { .. }
                | Resolver::Up { .. }
                | Resolver::Down { .. } => None,
            })
            .min()
    }

    /// Delnums in flight, sent or waiting.
    pub fn in_flight(&self) -> u32 {
        self.owner.iter().filter(|o| **o != Owner::Free).count() as u32
    }

    /// Delnums shard `index` must answer.
    pub fn held_by(&self, index: u16) -> u32 {
        self.owner.iter().filter(|o| **o == Owner::Shard(index)).count() as u32
    }

    /// Results written (or due to be written) so far.
    pub fn results(&self) -> u64 {
        self.results
    }

    /// Results so far by letter: `K`, `Z`, `D`.
    pub fn letters(&self) -> [u64; 3] {
        self.letters
    }

    /// Shard restarts so far (failed ones too).
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The checks of qmail's order, then routing by the limit key.
    fn command(
        &mut self,
        cmd: Command,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let owner = &self.owner;
        let checked = validate::check(&cmd, self.slots, |d| {
            owner[usize::from(d)] != Owner::Free
        });
        let below = cmd.delnum.checked_sub(1).map(usize::from);
        let below_busy = below
            .and_then(|d| self.owner.get(d))
            .is_some_and(|o| *o != Owner::Free);
        if let Some(watch) = &mut self.framing
            && let Some(line) =
                watch.observe(&cmd, checked.as_ref().map(|_| ()), below_busy)
        {
            effects.push(Effect::Log(Level::Warn, line));
        }
        if let Err(refusal) = checked {
            self.record(cmd.delnum, refusal.body(), effects);
            return;
        }
        let host = domain::host(&cmd.recipient).unwrap_or_default();
        let domain = domain::normalise(host);
        let job = Job {
            delnum: cmd.delnum,
            messid: cmd.messid,
            sender: cmd.sender,
            recipient: cmd.recipient,
            key: Vec::new(),
        };
        // Routed, and counted by its shard, on the limit key (`=NAME` for
        // a group's members, `@...` for a provider or site), not the
        // domain: the domains of one key must meet on one shard, in one
        // count. Finding a site may take a lookup first.
        match self.sites.find(&self.limits, &domain, now) {
            Found::Key(key) => self.route(Job { key, ..job }, effects),
            Found::Ask(domain) => {
                effects.push(Effect::Lookup(domain.clone()));
                self.owner[usize::from(job.delnum)] = Owner::Resolving;
                self.sites.hold(domain, job, true, now);
            }
            Found::Wait(domain) => {
                self.owner[usize::from(job.delnum)] = Owner::Resolving;
                self.sites.hold(domain, job, false, now);
            }
        }
    }

    /// The deliveries that waited for a lookup, now over: each is routed
    /// under the key what is known now gives (the answer is kept, a
    /// failure too), and a failure is logged once.
    fn settle(
        &mut self,
        settled: Settled,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(line) = settled.failed {
            effects.push(Effect::Log(Level::Warn, line));
        }
        for job in settled.jobs {
            let key = match self.sites.find(&self.limits, &settled.domain, now)
            {
                Found::Key(key) => key,
                // Not kept (the cache is full of newer answers): its
                // domain, rather than a second wait.
                Found::Ask(_) | Found::Wait(_) => {
                    self.limits.lookup(&settled.domain).key
                }
            };
            self.route(Job { key, ..job }, effects);
        }
    }

    /// The same, under the domain key whatever is known: no answer is
    /// coming.
    fn settle_by_domain(
        &mut self,
        settled: Settled,
        effects: &mut Vec<Effect>,
    ) {
        let key = self.limits.lookup(&settled.domain).key;
        for job in settled.jobs {
            self.route(Job { key: key.clone(), ..job }, effects);
        }
    }

    /// Sends a keyed job to the shard that owns its key, or queues it
    /// for that shard.
    fn route(&mut self, job: Job, effects: &mut Vec<Effect>) {
        let index = domain::shard_for(&job.key, self.shards.len() as u16);
        let delnum = job.delnum;
        match self.shards[usize::from(index)] {
            State::Up(run) => {
                self.owner[usize::from(delnum)] = Owner::Shard(index);
                let shard = ShardId { index, generation: run.generation };
                effects.push(Effect::Job { shard, job });
            }
            State::Starting { .. } | State::Down { .. } => {
                self.owner[usize::from(delnum)] = Owner::Shard(index);
                let wait = Wait::ShardDown(index);
                self.pending.push_back(Pending { job, wait });
            }
            // Only after qmail-send's EOF, when no command comes: a
            // driver that reads on must still get one answer per delnum.
            State::Draining(_) | State::Gone => {
                effects.push(Effect::Log(
                    Level::Warn,
                    format!(
                        "a command for delnum {delnum} came after the end \
                         of commands; shard {index} takes no more"
                    ),
                ));
                let lost = Refusal::ShardLost { shard: index }.body();
                self.record(delnum, lost, effects);
            }
        }
    }

    /// Whether `id` is the incarnation of its shard that runs now (up or
    /// draining); an event from any other is stale.
    fn is_current(&self, id: ShardId) -> bool {
        match self.shards.get(usize::from(id.index)) {
            Some(State::Up(run) | State::Draining(run)) => {
                run.generation == id.generation
            }
            Some(
                State::Starting { .. } | State::Down { .. } | State::Gone,
            )
            | None => false,
        }
    }

    fn frame(
        &mut self,
        id: ShardId,
        kind: u8,
        delnum: u16,
        mut body: Vec<u8>,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if !self.is_current(id) {
            return;
        }
        let i = id.index;
        if kind != DONE {
            effects.push(Effect::Log(
                Level::Warn,
                format!("shard {i} sent a frame of kind {kind}; killing it"),
            ));
            return self.lose(i, now, "sent garbage", effects);
        }
        if self.owner.get(usize::from(delnum)) != Some(&Owner::Shard(i)) {
            return not_held(i, delnum, effects);
        }
        self.owner[usize::from(delnum)] = Owner::Free;
        // A NUL would end the record early and shift every later one; a
        // body never has one, but make sure.
        body.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b'?');
        self.record(delnum, body, effects);
    }

    fn lost(
        &mut self,
        id: ShardId,
        loss: Loss,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if !self.is_current(id) {
            return;
        }
        let i = id.index;
        let why = match loss {
            Loss::Eof => "closed its result pipe",
            Loss::ReadFailed(e) => {
                effects.push(Effect::Log(
                    Level::Warn,
                    format!("unable to read results of shard {i}: {e}"),
                ));
                "result pipe failed"
            }
            Loss::TooLong(len) => {
                effects.push(Effect::Log(
                    Level::Warn,
                    format!(
                        "shard {i} sent a frame of {len} bytes; killing it"
                    ),
                ));
                "sent garbage"
            }
        };
        self.lose(i, now, why, effects);
    }

    /// Shard `i`'s running incarnation is gone or broken: answer each
    /// delnum it held once with a `Z`, and restart it, unless qmail-send
    /// is gone too.
    fn lose(
        &mut self,
        i: u16,
        now: Instant,
        why: &str,
        effects: &mut Vec<Effect>,
    ) {
        let held = self.held_by(i);
        let (run, next, then) = match self.shards[usize::from(i)] {
            State::Up(run) => {
                let young =
                    now.saturating_duration_since(run.started) < STABLE_AFTER;
                let backoff = next_backoff(run.backoff, young);
                let restart_at = now + backoff;
                let generation = run.generation;
                let then = format!("restarting in {} ms", backoff.as_millis());
                (run, State::Down { generation, restart_at, backoff }, then)
            }
            State::Draining(run) if held == 0 => {
                // It did what a shard does at the end: finish and exit.
                let shard = ShardId { index: i, generation: run.generation };
                let unreaped = (!run.reaped).then_some(run.pid);
                effects.push(Effect::Forget { shard, unreaped });
                let line = format!("shard {i} finished");
                effects.push(Effect::Log(Level::Info, line));
                self.shards[usize::from(i)] = State::Gone;
                return;
            }
            State::Draining(run) => {
                let then = "not restarting: qmail-send is gone".to_string();
                (run, State::Gone, then)
            }
            // Callers found it running.
            State::Starting { .. } | State::Down { .. } | State::Gone => {
                return;
            }
        };
        let shard = ShardId { index: i, generation: run.generation };
        let unreaped = (!run.reaped).then_some(run.pid);
        // It may still be alive with its pipe closed; make sure, so no
        // qmail-remote result can arrive from it any more.
        if let Some(pid) = unreaped {
            effects.push(Effect::Kill(pid));
        }
        effects.push(Effect::Forget { shard, unreaped });
        self.answer_lost(i, effects);
        self.shards[usize::from(i)] = next;
        effects.push(Effect::Log(
            Level::Warn,
            format!(
                "shard {i} died ({why}); answered {held} deliveries with a \
                 deferral; {then}"
            ),
        ));
    }

    /// Answers every delnum shard `i` holds, sent or waiting, with the
    /// shard-lost `Z`, in delnum order.
    fn answer_lost(&mut self, i: u16, effects: &mut Vec<Effect>) {
        let lost = Refusal::ShardLost { shard: i }.body();
        for delnum in 0..self.owner.len() {
            if self.owner[delnum] == Owner::Shard(i) {
                self.owner[delnum] = Owner::Free;
                self.record(delnum as u16, lost.clone(), effects);
            }
        }
        self.pending.retain(|p| p.wait != Wait::ShardDown(i));
    }

    fn reaped(&mut self, pid: Pid) {
        for state in &mut self.shards {
            match state {
                State::Up(run) | State::Draining(run) if run.pid == pid => {
                    run.reaped = true;
                }
                State::Up(_)
                | State::Draining(_)
                | State::Starting { .. }
                | State::Down { .. }
                | State::Gone => {}
            }
        }
    }

    fn started(
        &mut self,
        id: ShardId,
        pid: Pid,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let i = id.index;
        let Some(state) = self.shards.get_mut(usize::from(i)) else { return };
        let (backoff, restart) = match *state {
            State::Starting { generation, backoff, restart }
                if generation == id.generation =>
            {
                (backoff, restart)
            }
            // Not asked for: a driver bug, and nothing to start.
            State::Starting { .. }
            | State::Up(_)
            | State::Draining(_)
            | State::Down { .. }
            | State::Gone => return,
        };
        let run = Run {
            generation: id.generation,
            pid,
            started: now,
            reaped: false,
            backoff,
            // Both texts, just below.
            queued: [true; 2],
        };
        // A new shard learns the limits and the response rules before
        // any job.
        for control in [Control::Limits, Control::Responses] {
            let text = self.text(control);
            effects.push(Effect::Text { shard: id, control, text });
        }
        self.send_waiting(id, effects);
        if restart {
            effects.push(Effect::Log(
                Level::Info,
                format!("shard {i} restarted as pid {pid}"),
            ));
        }
        self.shards[usize::from(i)] = if self.reading {
            State::Up(run)
        } else {
            effects.push(Effect::CloseJobs(id));
            State::Draining(run)
        };
    }

    /// Sends the running incarnation `id` the commands that waited for
    /// its shard, in the order they came.
    fn send_waiting(&mut self, id: ShardId, effects: &mut Vec<Effect>) {
        let mut waiting = VecDeque::new();
        for p in std::mem::take(&mut self.pending) {
            match p.wait {
                Wait::ShardDown(s) if s == id.index => {
                    effects.push(Effect::Job { shard: id, job: p.job });
                }
                Wait::ShardDown(_) => waiting.push_back(p),
            }
        }
        self.pending = waiting;
    }

    fn start_failed(
        &mut self,
        id: ShardId,
        error: io::Error,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let i = id.index;
        let Some(state) = self.shards.get(usize::from(i)) else { return };
        let backoff = match *state {
            State::Starting { generation, backoff, .. }
                if generation == id.generation =>
            {
                backoff
            }
            State::Starting { .. }
            | State::Up(_)
            | State::Draining(_)
            | State::Down { .. }
            | State::Gone => return,
        };
        let held = self.held_by(i);
        // What waited for it cannot wait for ever.
        self.answer_lost(i, effects);
        // A start that failed counts as young: never retry in a tight
        // loop.
        let backoff = next_backoff(backoff, true);
        self.shards[usize::from(i)] = if self.reading {
            State::Down {
                generation: id.generation,
                restart_at: now + backoff,
                backoff,
            }
        } else {
            State::Gone
        };
        effects.push(Effect::Log(
            Level::Warn,
            format!(
                "unable to restart shard {i}: {error}; answered {held} \
                 deliveries with a deferral; trying again in {} ms",
                backoff.as_millis()
            ),
        ));
    }

    fn restart_due(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        for (i, state) in self.shards.iter_mut().enumerate() {
            match *state {
                State::Down { generation, restart_at, backoff }
                    if restart_at <= now =>
                {
                    let generation = next_generation(generation);
                    self.restarts += 1;
                    *state =
                        State::Starting { generation, backoff, restart: true };
                    let index = i as u16;
                    effects.push(Effect::Start(ShardId { index, generation }));
                }
                State::Down { .. }
                | State::Starting { .. }
                | State::Up(_)
                | State::Draining(_)
                | State::Gone => {}
            }
        }
    }

    fn resolver_backoff(&self) -> Duration {
        match self.resolver {
            Resolver::Starting { backoff, .. }
            | Resolver::Up { backoff, .. }
            | Resolver::Down { backoff, .. } => backoff,
            Resolver::Off => Duration::ZERO,
        }
    }

    fn resolver_started(&mut self, generation: u32, pid: Pid, now: Instant) {
        if let Resolver::Starting { generation: g, backoff } = self.resolver
            && g == generation
        {
            self.resolver = Resolver::Up {
                generation,
                pid,
                started: now,
                backoff,
                reaped: false,
            };
            self.sites.resolver_up();
        }
    }

    /// The resolver is gone (or never came up): what waited for it goes
    /// under its domain, and it starts again after a pause.
    fn resolver_down(
        &mut self,
        generation: u32,
        now: Instant,
        young: bool,
        why: &str,
        effects: &mut Vec<Effect>,
    ) {
        let backoff = next_backoff(self.resolver_backoff(), young);
        let restart_at = now + backoff;
        self.resolver = Resolver::Down { generation, restart_at, backoff };
        let waiting = self.sites.resolver_down();
        let count: usize = waiting.iter().map(|s| s.jobs.len()).sum();
        effects.push(Effect::Log(
            Level::Warn,
            format!(
                "the resolver is gone ({why}); {count} deliveries waiting \
                 for DNS go under their domains; restarting in {} ms",
                backoff.as_millis()
            ),
        ));
        for settled in waiting {
            self.settle_by_domain(settled, effects);
        }
    }

    fn resolver_due(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if let Resolver::Down { generation, restart_at, backoff } =
            self.resolver
            && restart_at <= now
            && self.reading
        {
            let generation = next_generation(generation);
            self.resolver = Resolver::Starting { generation, backoff };
            effects.push(Effect::StartResolver(generation));
        }
    }

    /// qmail-send is going away: finish what is in flight, then exit.
    fn commands_end(&mut self, effects: &mut Vec<Effect>) {
        if !self.reading {
            return;
        }
        self.reading = false;
        effects.push(Effect::Log(
            Level::Info,
            format!(
                "end of commands; finishing {} deliveries in flight",
                self.in_flight()
            ),
        ));
        // Nothing more comes, so no shard should be told to finish while
        // a delivery still waits for DNS: they go under their domains.
        for settled in self.sites.take_all() {
            self.settle_by_domain(settled, effects);
        }
        // One walk of the owner table, not one per shard.
        let mut held = vec![0u32; self.shards.len()];
        for owner in &self.owner {
            match *owner {
                Owner::Shard(i) => held[usize::from(i)] += 1,
                Owner::Free | Owner::Resolving => {}
            }
        }
        for (i, held) in held.into_iter().enumerate() {
            let index = i as u16;
            let state = &mut self.shards[i];
            match *state {
                State::Up(run) => {
                    let generation = run.generation;
                    effects.push(Effect::CloseJobs(ShardId {
                        index,
                        generation,
                    }));
                    *state = State::Draining(run);
                }
                // Nothing waits for it, and nothing will: no restart.
                State::Down { .. } if held == 0 => *state = State::Gone,
                // Started (and then closed) when due, for what waits.
                State::Down { .. } | State::Starting { .. } => {}
                State::Draining(_) | State::Gone => {}
            }
        }
    }

    /// Sends a new control text to every running shard; one not running
    /// gets it when it starts. A shard with an older text of the file
    /// still waiting to be written gets the new one in its place: it
    /// would only read the older one to replace it at once, and a storm
    /// of reloads must not queue a text per reload.
    fn push_text(&mut self, control: Control, effects: &mut Vec<Effect>) {
        let text = self.text(control);
        for (i, state) in self.shards.iter_mut().enumerate() {
            let run = match state {
                State::Up(run) | State::Draining(run) => run,
                State::Starting { .. } | State::Down { .. } | State::Gone => {
                    continue;
                }
            };
            let shard =
                ShardId { index: i as u16, generation: run.generation };
            let text = text.clone();
            let queued = &mut run.queued[control.index()];
            effects.push(if *queued {
                Effect::Replace { shard, control, text }
            } else {
                Effect::Text { shard, control, text }
            });
            *queued = true;
        }
    }

    /// The queued text of `control` for `id` is being written: a newer
    /// one must queue behind it.
    fn text_begun(&mut self, id: ShardId, control: Control) {
        match self.shards.get_mut(usize::from(id.index)) {
            Some(State::Up(run) | State::Draining(run))
                if run.generation == id.generation =>
            {
                run.queued[control.index()] = false;
            }
            // From an incarnation given up since: nothing of it is kept.
            Some(
                State::Up(_)
                | State::Draining(_)
                | State::Starting { .. }
                | State::Down { .. }
                | State::Gone,
            )
            | None => {}
        }
    }

    fn text(&self, control: Control) -> Rc<[u8]> {
        match control {
            Control::Limits => self.limits_text.clone(),
            Control::Responses => self.responses_text.clone(),
        }
    }

    fn record(
        &mut self,
        delnum: u16,
        body: Vec<u8>,
        effects: &mut Vec<Effect>,
    ) {
        self.results += 1;
        match body.first() {
            Some(b'K') => self.letters[0] += 1,
            Some(b'Z') => self.letters[1] += 1,
            Some(b'D') => self.letters[2] += 1,
            _ => {}
        }
        effects.push(Effect::Record { delnum, body });
    }

    /// Panics if the owner table, the pending queue and the shards'
    /// states disagree. The driver calls it after each loop pass in debug
    /// builds; it costs a walk of the table, so it is skipped above 4096
    /// slots (as the shard's is).
    pub fn check_invariants(&self) {
        if self.owner.len() > 4096 {
            return;
        }
        let resolving =
            self.owner.iter().filter(|o| **o == Owner::Resolving).count();
        assert_eq!(resolving, self.sites.waiting(), "DNS waits disagree");
        for (delnum, owner) in self.owner.iter().enumerate() {
            if let Owner::Shard(i) = *owner {
                assert_ne!(
                    self.shards[usize::from(i)],
                    State::Gone,
                    "delnum {delnum} held by gone shard {i}"
                );
            }
        }
        for p in &self.pending {
            let Wait::ShardDown(i) = p.wait;
            assert_eq!(
                self.owner[usize::from(p.job.delnum)],
                Owner::Shard(i),
                "pending delnum {} not owned by its shard",
                p.job.delnum
            );
            assert!(
                matches!(
                    self.shards[usize::from(i)],
                    State::Starting { .. } | State::Down { .. }
                ),
                "delnum {} waits for shard {i}, which is {:?}",
                p.job.delnum,
                self.shards[usize::from(i)]
            );
        }
    }
}

fn not_held(i: u16, delnum: u16, effects: &mut Vec<Effect>) {
    effects.push(Effect::Log(
        Level::Warn,
        format!(
            "shard {i} answered delnum {delnum}, which it does not hold; \
             dropped"
        ),
    ));
}

/// The pause before restarting a shard that died: none if it had run a
/// while, else one that doubles, from 100 ms up to five seconds.
fn next_backoff(last: Duration, young: bool) -> Duration {
    if young {
        (last * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX)
    } else {
        Duration::ZERO
    }
}

fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & ((1 << GENERATION_BITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARDS: u16 = 4;
    const SLOTS: u32 = 100;
    const LIMITS_FILE: &[u8] =
        b":20\ngmail.com:=google\ngooglemail.com:=google\n=google:10\n";

    fn limits(text: &[u8]) -> (Rc<[u8]>, Limits) {
        (Rc::from(text), Limits::parse(text).unwrap())
    }

    /// The shard-lost text as qmail-send must receive it.
    fn lost(i: u16) -> Vec<u8> {
        format!(
            "Zshardspawn: spawner shard {i} died; will try again. (#4.3.0)\n"
        )
        .into_bytes()
    }

    /// The shard a recipient goes to, found as the checks of the end to
    /// end tests find it.
    fn shard_of(limits: &Limits, recipient: &[u8]) -> u16 {
        let host = domain::normalise(domain::host(recipient).unwrap());
        domain::shard_for(&limits.lookup(&host).key, SHARDS)
    }

    /// The `n`th recipient (of `u@dK.test`) that lands on shard `s`.
    fn rcpt_on(s: u16, n: usize) -> Vec<u8> {
        let (_, parsed) = limits(LIMITS_FILE);
        (0..)
            .map(|k| format!("u@d{k}.test").into_bytes())
            .filter(|r| shard_of(&parsed, r) == s)
            .nth(n)
            .unwrap()
    }

    fn cmd(delnum: u16, messid: &[u8], recipient: &[u8]) -> Command {
        Command {
            delnum,
            messid: messid.to_vec(),
            sender: b"a@b.test".to_vec(),
            recipient: recipient.to_vec(),
        }
    }

    fn pid(index: u16, generation: u32) -> Pid {
        Pid::from_raw(1000 * generation as i32 + i32::from(index))
    }

    fn records(fx: &[Effect]) -> Vec<(u16, Vec<u8>)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Record { delnum, body } => {
                    Some((*delnum, body.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn jobs(fx: &[Effect]) -> Vec<(ShardId, u16)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Job { shard, job } => Some((*shard, job.delnum)),
                _ => None,
            })
            .collect()
    }

    fn logs(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Log(_, line) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    /// A core and a clock the test moves; the core never reads one.
    struct Rig {
        core: Core,
        now: Instant,
    }

    impl Rig {
        /// Every shard started (generation 1) and up.
        fn new() -> Rig {
            let mut fx = Vec::new();
            let core = Core::new(
                SLOTS,
                SHARDS,
                limits(LIMITS_FILE),
                Rc::from(&b"R1"[..]),
                &mut fx,
            );
            let mut rig = Rig { core, now: Instant::now() };
            assert_eq!(
                fx,
                (0..SHARDS)
                    .map(|index| Effect::Start(ShardId {
                        index,
                        generation: 1
                    }))
                    .collect::<Vec<_>>()
            );
            for e in fx {
                let Effect::Start(id) = e else { unreachable!() };
                rig.started(id);
            }
            rig
        }

        fn on(&mut self, event: Event) -> Vec<Effect> {
            let mut fx = Vec::new();
            self.core.handle(event, &mut fx);
            self.core.check_invariants();
            fx
        }

        fn state(&self, i: u16) -> State {
            self.core.shards[usize::from(i)]
        }

        /// The incarnation the core knows for shard `i`.
        fn id(&self, i: u16) -> ShardId {
            let generation = match self.state(i) {
                State::Starting { generation, .. }
                | State::Down { generation, .. } => generation,
                State::Up(run) | State::Draining(run) => run.generation,
                State::Gone => 0,
            };
            ShardId { index: i, generation }
        }

        /// Starts `id`, whose driver writes the texts it is sent at
        /// once (as it does when the job pipe has room).
        fn started(&mut self, id: ShardId) -> Vec<Effect> {
            let pid = pid(id.index, id.generation);
            let fx = self.on(Event::Started { shard: id, pid, now: self.now });
            self.begun(id);
            fx
        }

        /// The driver began writing both texts queued for `id`.
        fn begun(&mut self, id: ShardId) {
            for control in [Control::Limits, Control::Responses] {
                let fx = self.on(Event::TextBegun { shard: id, control });
                assert_eq!(fx, []);
            }
        }

        fn send(&mut self, delnum: u16, recipient: &[u8]) -> Vec<Effect> {
            self.on(Event::Command(
                cmd(delnum, b"7/1234", recipient),
                self.now,
            ))
        }

        fn done(&mut self, shard: ShardId, delnum: u16) -> Vec<Effect> {
            let body = b"Kok\n".to_vec();
            let now = self.now;
            self.on(Event::Frame { shard, kind: DONE, delnum, body, now })
        }

        fn lose(&mut self, shard: ShardId) -> Vec<Effect> {
            let now = self.now;
            self.on(Event::Lost { shard, loss: Loss::Eof, now })
        }

        fn tick(&mut self, after: Duration) -> Vec<Effect> {
            self.now += after;
            self.on(Event::Tick(self.now))
        }
    }

    #[test]
    fn a_started_shard_learns_the_texts_first_and_goes_up() {
        let mut fx = Vec::new();
        let mut core =
            Core::new(SLOTS, 2, limits(b":5\n"), Rc::from(&b"R"[..]), &mut fx);
        let id = ShardId { index: 1, generation: 1 };
        assert_eq!(fx[1], Effect::Start(id));
        let state = core.shards[1];
        assert!(matches!(state, State::Starting { restart: false, .. }));
        let now = Instant::now();
        let mut fx = Vec::new();
        core.handle(
            Event::Started { shard: id, pid: pid(1, 1), now },
            &mut fx,
        );
        assert_eq!(
            fx,
            [
                Effect::Text {
                    shard: id,
                    control: Control::Limits,
                    text: Rc::from(&b":5\n"[..])
                },
                Effect::Text {
                    shard: id,
                    control: Control::Responses,
                    text: Rc::from(&b"R"[..])
                },
            ]
        );
        assert!(
            matches!(core.shards[1], State::Up(run) if run.pid == pid(1, 1))
        );
    }

    #[test]
    fn commands_go_to_the_shard_of_their_limit_key() {
        let mut rig = Rig::new();
        let (_, parsed) = limits(LIMITS_FILE);
        let mut seen = [false; SHARDS as usize];
        for d in 0..40u16 {
            let r = format!("u@d{}.test", d % 20).into_bytes();
            let fx = rig.send(d, &r);
            let s = shard_of(&parsed, &r);
            assert_eq!(jobs(&fx), [(rig.id(s), d)], "{}", d);
            seen[usize::from(s)] = true;
        }
        assert!(seen.iter().all(|&s| s), "20 domains all on some shards");
        // A group's domains meet on one shard, under the group's key,
        // whatever their spelling.
        let mut keys = Vec::new();
        for (d, r) in
            [&b"x@gmail.com"[..], b"y@GoogleMail.COM."].iter().enumerate()
        {
            let fx = rig.send(50 + d as u16, r);
            let [Effect::Job { shard, job }] = &fx[..] else {
                panic!("{fx:?}")
            };
            keys.push((shard.index, job.key.clone()));
        }
        assert_eq!(keys[0], keys[1]);
        assert_eq!(keys[0].1, b"=google");
        assert_eq!(rig.core.in_flight(), 42);
    }

    #[test]
    fn failed_checks_are_answered_at_once_in_qmails_order() {
        let mut rig = Rig::new();
        let r = rcpt_on(0, 0);
        assert_eq!(jobs(&rig.send(3, &r)).len(), 1);
        let cases: [(Command, Refusal); 8] = [
            // Too big comes before everything that follows it.
            (cmd(100, b"x", b"nohost"), Refusal::DelnumTooBig),
            (cmd(0x8000, b"1", &r), Refusal::DelnumNegative),
            // In use, though the command is bad in every other way too.
            (cmd(3, b"", b"nohost"), Refusal::DelnumInUse),
            (cmd(4, b"1x", b"nohost"), Refusal::MessidNonNumeric),
            (cmd(4, b"/1", &r), Refusal::MessidNonNumeric),
            (cmd(4, &[b'1'; 100], b"nohost"), Refusal::MessidTooLong),
            (cmd(4, b"", b"nohost"), Refusal::MessidTooShort),
            (cmd(4, b"1", b"nohost"), Refusal::NoHost),
        ];
        for (c, refusal) in cases {
            let delnum = c.delnum;
            let fx = rig.on(Event::Command(c, rig.now));
            assert_eq!(fx, [Effect::Record { delnum, body: refusal.body() }]);
        }
        assert_eq!(rig.core.in_flight(), 1, "a refused delnum is not held");
        assert_eq!(jobs(&rig.send(4, &r)).len(), 1, "4 is free to use");
    }

    #[test]
    fn results_are_counted_by_letter() {
        let mut rig = Rig::new();
        let r = rcpt_on(0, 0);
        let _ = rig.send(1, &r);
        let id = rig.id(0);
        let _ = rig.done(id, 1);
        let _ = rig.on(Event::Oversize { delnum: 2 });
        let _ = rig.on(Event::Command(cmd(3, b"1", b"nohost"), rig.now));
        let _ = rig.send(4, &r);
        let body = b"Dno such user\n".to_vec();
        let now = rig.now;
        let _ = rig.on(Event::Frame {
            shard: id,
            kind: DONE,
            delnum: 4,
            body,
            now,
        });
        assert_eq!(rig.core.results(), 4);
        assert_eq!(rig.core.letters(), [1, 1, 2]);
    }

    #[test]
    fn an_oversize_command_is_answered_out_of_memory() {
        let mut rig = Rig::new();
        let fx = rig.on(Event::Oversize { delnum: 7 });
        let body = b"Zqmail-spawn out of memory. (#4.3.0)\n".to_vec();
        assert_eq!(fx, [Effect::Record { delnum: 7, body }]);
        assert_eq!(rig.core.in_flight(), 0);
    }

    #[test]
    fn a_result_frees_its_delnum_and_is_written_once() {
        let mut rig = Rig::new();
        let r = rcpt_on(2, 0);
        let _ = rig.send(9, &r);
        assert_eq!((rig.core.in_flight(), rig.core.held_by(2)), (1, 1));
        let fx = rig.done(rig.id(2), 9);
        assert_eq!(records(&fx), [(9, b"Kok\n".to_vec())]);
        assert_eq!((rig.core.in_flight(), rig.core.held_by(2)), (0, 0));
        // A second answer for it is the shard's mistake: dropped.
        let fx = rig.done(rig.id(2), 9);
        assert_eq!(records(&fx), []);
        assert_eq!(
            logs(&fx),
            ["shard 2 answered delnum 9, which it does not hold; dropped"]
        );
    }

    #[test]
    fn a_result_for_a_delnum_another_shard_holds_is_dropped() {
        let mut rig = Rig::new();
        let _ = rig.send(5, &rcpt_on(1, 0));
        let fx = rig.done(rig.id(3), 5);
        assert_eq!(records(&fx), []);
        assert_eq!(
            logs(&fx),
            ["shard 3 answered delnum 5, which it does not hold; dropped"]
        );
        let fx = rig.done(rig.id(3), 99);
        assert_eq!(records(&fx), [], "a free delnum");
        let fx = rig.done(rig.id(3), 60000);
        assert_eq!(records(&fx), [], "beyond the slots");
        // Its real owner still answers it, once.
        assert_eq!(records(&rig.done(rig.id(1), 5)).len(), 1);
    }

    #[test]
    fn a_nul_in_a_result_cannot_cut_the_record() {
        let mut rig = Rig::new();
        let _ = rig.send(1, &rcpt_on(0, 0));
        let (shard, now) = (rig.id(0), rig.now);
        let body = b"Kok\0then\n".to_vec();
        let fx =
            rig.on(Event::Frame { shard, kind: DONE, delnum: 1, body, now });
        assert_eq!(records(&fx), [(1, b"Kok?then\n".to_vec())]);
    }

    #[test]
    fn a_lost_shard_answers_each_delivery_once_with_the_lost_text() {
        let mut rig = Rig::new();
        for (d, n) in [(7, 0), (2, 1), (40, 2)] {
            let _ = rig.send(d, &rcpt_on(1, n));
        }
        let _ = rig.send(3, &rcpt_on(0, 0));
        let old = rig.id(1);
        let fx = rig.lose(old);
        assert_eq!(
            fx[..2],
            [
                Effect::Kill(pid(1, 1)),
                Effect::Forget { shard: old, unreaped: Some(pid(1, 1)) }
            ]
        );
        assert_eq!(records(&fx), [(2, lost(1)), (7, lost(1)), (40, lost(1))]);
        assert_eq!(
            logs(&fx),
            ["shard 1 died (closed its result pipe); answered 3 \
                 deliveries with a deferral; restarting in 100 ms"]
        );
        assert_eq!((rig.core.held_by(1), rig.core.in_flight()), (0, 1));
        // Nothing more about them from the dead one: its results, and
        // its pipe's end, a second time.
        assert_eq!(rig.done(old, 7), []);
        assert_eq!(rig.lose(old), []);
        assert_eq!(records(&rig.done(rig.id(0), 3)), [(3, b"Kok\n".to_vec())]);
    }

    #[test]
    fn a_broken_result_pipe_is_a_lost_shard_and_says_how() {
        let mut rig = Rig::new();
        let _ = rig.send(1, &rcpt_on(3, 0));
        let (shard, now) = (rig.id(3), rig.now);
        let fx = rig.on(Event::Frame {
            shard,
            kind: b'J',
            delnum: 0,
            body: Vec::new(),
            now,
        });
        assert_eq!(records(&fx), [(1, lost(3))]);
        assert_eq!(
            logs(&fx)[0],
            "shard 3 sent a frame of kind 74; killing it"
        );
        assert!(logs(&fx)[1].contains("(sent garbage)"));
        assert!(matches!(rig.state(3), State::Down { .. }));

        let mut rig = Rig::new();
        let (shard, now) = (rig.id(2), rig.now);
        let loss = Loss::TooLong(1 << 20);
        let fx = rig.on(Event::Lost { shard, loss, now });
        assert_eq!(
            logs(&fx)[0],
            "shard 2 sent a frame of 1048576 bytes; killing it"
        );
        let (shard, now) = (rig.id(1), rig.now);
        let loss = Loss::ReadFailed(io::Error::from_raw_os_error(5));
        let fx = rig.on(Event::Lost { shard, loss, now });
        assert!(logs(&fx)[0].starts_with("unable to read results of shard 1"));
        assert!(logs(&fx)[1].contains("(result pipe failed)"));
    }

    #[test]
    fn a_shard_reaped_before_its_eof_is_neither_killed_nor_waited_for() {
        let mut rig = Rig::new();
        let _ = rig.send(1, &rcpt_on(0, 0));
        assert_eq!(rig.on(Event::Reaped(pid(0, 1))), []);
        assert_eq!(rig.on(Event::Reaped(Pid::from_raw(77))), [], "not ours");
        let shard = rig.id(0);
        let fx = rig.lose(shard);
        assert_eq!(fx[0], Effect::Forget { shard, unreaped: None });
        assert!(!fx.iter().any(|e| matches!(e, Effect::Kill(_))));
        assert_eq!(records(&fx), [(1, lost(0))]);
    }

    #[test]
    fn commands_for_a_down_shard_wait_and_go_after_the_texts_at_restart() {
        let mut rig = Rig::new();
        let _ = rig.lose(rig.id(2));
        assert!(matches!(rig.state(2), State::Down { .. }));
        assert_eq!(rig.send(10, &rcpt_on(2, 0)), []);
        assert_eq!(rig.send(4, &rcpt_on(2, 1)), []);
        assert_eq!(rig.core.held_by(2), 2, "waiting, and held");
        let fx = rig.send(4, &rcpt_on(2, 1));
        assert_eq!(records(&fx), [(4, Refusal::DelnumInUse.body())]);
        // Other shards go on meanwhile.
        assert_eq!(jobs(&rig.send(5, &rcpt_on(0, 0))).len(), 1);

        assert_eq!(rig.tick(Duration::from_millis(99)), []);
        let fx = rig.tick(Duration::from_millis(1));
        let id = ShardId { index: 2, generation: 2 };
        assert_eq!(fx, [Effect::Start(id)]);
        assert!(matches!(rig.state(2), State::Starting { restart: true, .. }));
        // Still starting: a command for it waits too.
        assert_eq!(rig.send(11, &rcpt_on(2, 2)), []);
        let fx = rig.started(id);
        let kinds: Vec<_> = fx
            .iter()
            .map(|e| match e {
                Effect::Text { control, .. } => format!("{control:?}"),
                Effect::Job { shard, job } => {
                    assert_eq!(*shard, id);
                    format!("job {}", job.delnum)
                }
                Effect::Log(_, line) => line.clone(),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Limits",
                "Responses",
                "job 10",
                "job 4",
                "job 11",
                "shard 2 restarted as pid 2002"
            ]
        );
        assert!(matches!(rig.state(2), State::Up(_)));
        assert_eq!(rig.core.held_by(2), 3);
        assert_eq!(records(&rig.done(id, 4)), [(4, b"Kok\n".to_vec())]);
    }

    #[test]
    fn restart_backoff_doubles_while_young_and_resets_once_stable() {
        let mut rig = Rig::new();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let _ = rig.lose(rig.id(0));
            let State::Down { restart_at, .. } = rig.state(0) else {
                panic!("{:?}", rig.state(0))
            };
            let pause = restart_at - rig.now;
            pauses.push(pause.as_millis());
            assert_eq!(rig.core.next_deadline(), Some(restart_at));
            let fx = rig.tick(pause);
            let [Effect::Start(id)] = fx[..] else { panic!("{fx:?}") };
            let _ = rig.started(id);
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // It ran ten seconds: the next loss restarts it at once, and the
        // next one after that starts the doubling again.
        rig.now += STABLE_AFTER;
        let fx = rig.lose(rig.id(0));
        assert!(logs(&fx)[0].ends_with("restarting in 0 ms"), "{fx:?}");
        let [Effect::Start(id)] = rig.tick(Duration::ZERO)[..] else {
            panic!()
        };
        let _ = rig.started(id);
        let fx = rig.lose(rig.id(0));
        assert!(logs(&fx)[0].ends_with("restarting in 100 ms"), "{fx:?}");
        assert_eq!(rig.core.restarts(), 9);
    }

    #[test]
    fn a_failed_restart_answers_what_waited_and_backs_off() {
        let mut rig = Rig::new();
        let _ = rig.lose(rig.id(1));
        let _ = rig.send(8, &rcpt_on(1, 0));
        let _ = rig.send(6, &rcpt_on(1, 1));
        let [Effect::Start(id)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        let error = io::Error::from_raw_os_error(11);
        let now = rig.now;
        let fx = rig.on(Event::StartFailed { shard: id, error, now });
        assert_eq!(records(&fx), [(6, lost(1)), (8, lost(1))]);
        let line = &logs(&fx)[0];
        assert!(line.starts_with("unable to restart shard 1: "), "{line}");
        assert!(
            line.ends_with(
                "answered 2 deliveries with a deferral; trying again in 200 ms"
            ),
            "{line}"
        );
        let State::Down { generation, restart_at, .. } = rig.state(1) else {
            panic!()
        };
        assert_eq!((generation, restart_at), (2, now + 2 * BACKOFF_FIRST));
        assert_eq!(rig.core.in_flight(), 0);
        // The next try is generation 3.
        let fx = rig.tick(2 * BACKOFF_FIRST);
        assert_eq!(fx, [Effect::Start(ShardId { index: 1, generation: 3 })]);
    }

    #[test]
    fn a_reload_reaches_running_shards_at_once_and_a_down_one_at_restart() {
        let mut rig = Rig::new();
        let new: &[u8] = b":20\n.test:=all\n=all:4\n";
        let all = domain::shard_for(b"=all", SHARDS);
        let down = (all + 1) % SHARDS;
        let _ = rig.lose(rig.id(down));
        let (text, parsed) = limits(new);
        let fx = rig.on(Event::Limits { text: text.clone(), parsed });
        let to: Vec<u16> = fx
            .iter()
            .map(|e| match e {
                Effect::Text { shard, control: Control::Limits, text: t } => {
                    assert_eq!(*t, text);
                    shard.index
                }
                e => panic!("{e:?}"),
            })
            .collect();
        let running: Vec<u16> = (0..SHARDS).filter(|&i| i != down).collect();
        assert_eq!(to, running);
        let fx = rig.on(Event::Responses(Rc::from(&b"R2"[..])));
        assert_eq!(fx.len(), running.len());
        // Routing follows the new file: every .test domain is one key.
        for (d, r) in [(1, &b"u@d1.test"[..]), (2, b"v@d2.test")] {
            let fx = rig.send(d, r);
            let [Effect::Job { shard, job }] = &fx[..] else {
                panic!("{fx:?}")
            };
            assert_eq!((shard.index, &job.key[..]), (all, &b"=all"[..]));
        }
        let [Effect::Start(id)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        let fx = rig.started(id);
        assert_eq!(
            fx[..2],
            [
                Effect::Text { shard: id, control: Control::Limits, text },
                Effect::Text {
                    shard: id,
                    control: Control::Responses,
                    text: Rc::from(&b"R2"[..])
                },
            ]
        );
    }

    /// What a driver holds for one shard's job pipe, as the effects
    /// say: texts (which file, which version) and jobs (by delnum), in
    /// order, and how many of them are begun (0 or 1, at the front).
    #[derive(Debug, Default)]
    struct Pipe {
        queue: Vec<(Option<Control>, Rc<[u8]>, u16)>,
        begun: usize,
    }

    impl Pipe {
        fn apply(&mut self, fx: &[Effect], index: u16) {
            for e in fx {
                match e {
                    Effect::Text { shard, control, text }
                        if shard.index == index =>
                    {
                        self.queue.push((Some(*control), text.clone(), 0));
                    }
                    Effect::Replace { shard, control, text }
                        if shard.index == index =>
                    {
                        let queued = self.queue[self.begun..]
                            .iter_mut()
                            .rev()
                            .find(|(c, ..)| *c == Some(*control))
                            .expect("a Replace with no text waiting");
                        queued.1 = text.clone();
                    }
                    Effect::Job { shard, job } if shard.index == index => {
                        self.queue.push((None, Rc::from(&[][..]), job.delnum));
                    }
                    _ => {}
                }
            }
        }

        /// Texts of `control` queued and not begun.
        fn waiting(&self, control: Control) -> Vec<Rc<[u8]>> {
            self.queue[self.begun..]
                .iter()
                .filter(|(c, ..)| *c == Some(control))
                .map(|(_, t, _)| t.clone())
                .collect()
        }
    }

    #[test]
    fn a_storm_of_reloads_leaves_one_text_of_each_file_waiting_per_shard() {
        // Shards just started: their first texts are not written yet.
        let mut fx = Vec::new();
        let mut core = Core::new(
            SLOTS,
            SHARDS,
            limits(b":5\n"),
            Rc::from(&b"R0"[..]),
            &mut fx,
        );
        let now = Instant::now();
        let mut pipes: Vec<Pipe> =
            (0..SHARDS).map(|_| Pipe::default()).collect();
        for e in fx {
            let Effect::Start(id) = e else { unreachable!() };
            let pid = pid(id.index, id.generation);
            let mut fx = Vec::new();
            core.handle(Event::Started { shard: id, pid, now }, &mut fx);
            pipes[usize::from(id.index)].apply(&fx, id.index);
        }
        // A job between the first texts and the storm stays behind them.
        let mut fx = Vec::new();
        core.handle(
            Event::Command(cmd(5, b"7/1", &rcpt_on(2, 0)), Instant::now()),
            &mut fx,
        );
        pipes[2].apply(&fx, 2);
        let mut last = (Rc::from(&b""[..]), Rc::from(&b""[..]));
        for n in 0..2000 {
            let text = format!(":{}\n", 1 + n % 1000);
            let (text, parsed) = limits(text.as_bytes());
            let rules: Rc<[u8]> = Rc::from(format!("R{n}").as_bytes());
            let mut fx = Vec::new();
            core.handle(Event::Limits { text: text.clone(), parsed }, &mut fx);
            core.handle(Event::Responses(rules.clone()), &mut fx);
            assert!(
                fx.iter().all(|e| matches!(e, Effect::Replace { .. })),
                "{fx:?}"
            );
            for (i, pipe) in pipes.iter_mut().enumerate() {
                pipe.apply(&fx, i as u16);
            }
            last = (text, rules);
        }
        for (i, pipe) in pipes.iter().enumerate() {
            assert_eq!(pipe.waiting(Control::Limits), [last.0.clone()], "{i}");
            assert_eq!(pipe.waiting(Control::Responses), [last.1.clone()]);
            let jobs = usize::from(i == 2);
            assert_eq!(pipe.queue.len(), 2 + jobs, "shard {i}: {pipe:?}");
            assert_eq!(
                pipe.queue.last().unwrap().2,
                if jobs == 1 { 5 } else { 0 }
            );
        }
    }

    #[test]
    fn a_text_begun_is_kept_and_the_newest_waits_behind_it() {
        let mut rig = Rig::new();
        // Every text the shards were sent is written: a reload queues.
        let (text, parsed) = limits(b":7\n");
        let fx = rig.on(Event::Limits { text: text.clone(), parsed });
        let mut pipe = Pipe::default();
        pipe.apply(&fx, 1);
        assert!(fx.iter().all(|e| matches!(e, Effect::Text { .. })));
        // Shard 1 begins it; shard 0 has not.
        rig.on(Event::TextBegun {
            shard: rig.id(1),
            control: Control::Limits,
        });
        pipe.begun = 1;
        let (newer, parsed) = limits(b":8\n");
        let fx = rig.on(Event::Limits { text: newer.clone(), parsed });
        pipe.apply(&fx, 1);
        let to = |index: u16| {
            fx.iter()
                .find(|e| match e {
                    Effect::Text { shard, .. }
                    | Effect::Replace { shard, .. } => shard.index == index,
                    _ => false,
                })
                .unwrap()
        };
        assert!(matches!(to(0), Effect::Replace { .. }), "{fx:?}");
        assert!(matches!(to(1), Effect::Text { .. }), "{fx:?}");
        // Further reloads replace only the one behind.
        for t in [&b":9\n"[..], b":10\n"] {
            let (t, parsed) = limits(t);
            let fx = rig.on(Event::Limits { text: t, parsed });
            pipe.apply(&fx, 1);
        }
        assert_eq!(pipe.queue.len(), 2);
        assert_eq!(pipe.queue[0].1, text);
        assert_eq!(&pipe.waiting(Control::Limits)[0][..], b":10\n");
    }

    #[test]
    fn a_text_begun_by_a_dead_incarnation_changes_nothing() {
        let mut rig = Rig::new();
        let old = rig.id(0);
        let _ = rig.lose(old);
        let [Effect::Start(id)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        let pid = pid(id.index, id.generation);
        let _ = rig.on(Event::Started { shard: id, pid, now: rig.now });
        // The old incarnation's news is not the new one's.
        let fx =
            rig.on(Event::TextBegun { shard: old, control: Control::Limits });
        assert_eq!(fx, []);
        let (text, parsed) = limits(b":7\n");
        let fx = rig.on(Event::Limits { text, parsed });
        assert!(
            fx.iter().any(|e| matches!(
                e,
                Effect::Replace { shard, .. } if *shard == id
            )),
            "{fx:?}"
        );
    }

    #[test]
    fn end_of_commands_drains_the_shards_then_exits_once() {
        let mut rig = Rig::new();
        let _ = rig.send(1, &rcpt_on(0, 0));
        let _ = rig.send(2, &rcpt_on(3, 0));
        let fx = rig.on(Event::CommandsEnd);
        let mut expect = vec![Effect::Log(
            Level::Info,
            "end of commands; finishing 2 deliveries in flight".into(),
        )];
        expect.extend((0..SHARDS).map(|i| Effect::CloseJobs(rig.id(i))));
        assert_eq!(fx, expect);
        assert!(
            (0..SHARDS).all(|i| matches!(rig.state(i), State::Draining(_)))
        );
        assert_eq!(rig.on(Event::CommandsEnd), [], "the end comes once");
        for i in [1, 2] {
            let shard = rig.id(i);
            let fx = rig.lose(shard);
            assert_eq!(
                fx,
                [
                    Effect::Forget { shard, unreaped: Some(pid(i, 1)) },
                    Effect::Log(Level::Info, format!("shard {i} finished")),
                ]
            );
            assert_eq!(rig.state(i), State::Gone);
        }
        assert_eq!(records(&rig.done(rig.id(0), 1)).len(), 1);
        assert!(!rig.lose(rig.id(0)).contains(&Effect::Exit));
        let _ = rig.done(rig.id(3), 2);
        let fx = rig.lose(rig.id(3));
        assert_eq!(fx.last(), Some(&Effect::Exit));
        assert_eq!(rig.tick(Duration::from_secs(60)), [], "exit comes once");
        assert_eq!(rig.core.results(), 2);
    }

    #[test]
    fn a_draining_shard_lost_with_deliveries_answers_them_and_stays_gone() {
        let mut rig = Rig::new();
        let _ = rig.send(1, &rcpt_on(2, 0));
        let _ = rig.on(Event::CommandsEnd);
        let shard = rig.id(2);
        let fx = rig.lose(shard);
        assert_eq!(fx[0], Effect::Kill(pid(2, 1)));
        assert_eq!(records(&fx), [(1, lost(2))]);
        assert!(logs(&fx)[0].ends_with("not restarting: qmail-send is gone"));
        assert_eq!(rig.state(2), State::Gone);
        assert_eq!(rig.core.next_deadline(), None);
    }

    #[test]
    fn end_of_commands_gives_up_an_idle_down_shard() {
        let mut rig = Rig::new();
        let _ = rig.lose(rig.id(0));
        let _ = rig.on(Event::CommandsEnd);
        assert_eq!(rig.state(0), State::Gone);
        assert_eq!(rig.core.next_deadline(), None);
        for i in 1..SHARDS {
            let _ = rig.lose(rig.id(i));
        }
        assert_eq!(rig.core.in_flight(), 0);
        // Exit came with the last shard's end.
        assert!((0..SHARDS).all(|i| rig.state(i) == State::Gone));
        assert!(rig.core.exited);
    }

    #[test]
    fn end_of_commands_restarts_a_down_shard_for_what_waits_then_closes_it() {
        let mut rig = Rig::new();
        let _ = rig.lose(rig.id(1));
        let _ = rig.send(3, &rcpt_on(1, 0));
        let _ = rig.on(Event::CommandsEnd);
        assert!(matches!(rig.state(1), State::Down { .. }));
        let [Effect::Start(id)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        let fx = rig.started(id);
        assert_eq!(jobs(&fx), [(id, 3)]);
        assert_eq!(fx.last(), Some(&Effect::CloseJobs(id)));
        assert!(matches!(rig.state(1), State::Draining(_)));
    }

    #[test]
    fn a_failed_restart_after_the_end_of_commands_gives_the_shard_up() {
        let mut rig = Rig::new();
        let _ = rig.lose(rig.id(1));
        let _ = rig.send(3, &rcpt_on(1, 0));
        let _ = rig.on(Event::CommandsEnd);
        let [Effect::Start(id)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        let error = io::Error::from_raw_os_error(12);
        let now = rig.now;
        let fx = rig.on(Event::StartFailed { shard: id, error, now });
        assert_eq!(records(&fx), [(3, lost(1))]);
        assert_eq!(rig.state(1), State::Gone);
    }

    #[test]
    fn events_from_a_dead_incarnation_are_ignored() {
        let mut rig = Rig::new();
        let old = rig.id(0);
        let _ = rig.lose(old);
        let [Effect::Start(new)] = rig.tick(Duration::from_millis(100))[..]
        else {
            panic!()
        };
        // A start answered for the wrong incarnation changes nothing.
        let now = rig.now;
        let wrong = Event::Started { shard: old, pid: pid(0, 9), now };
        assert_eq!(rig.on(wrong), []);
        let error = io::Error::from_raw_os_error(11);
        let wrong = Event::StartFailed { shard: old, error, now };
        assert_eq!(rig.on(wrong), []);
        let _ = rig.started(new);
        let _ = rig.send(5, &rcpt_on(0, 0));
        assert_eq!(rig.done(old, 5), [], "the old one cannot answer it");
        assert_eq!(rig.lose(old), [], "nor lose it");
        assert_eq!(rig.core.held_by(0), 1);
        assert_eq!(records(&rig.done(new, 5)).len(), 1);
        // A start answered twice: the second is not asked for either.
        assert_eq!(rig.started(new), []);
    }

    #[test]
    fn a_command_after_the_end_of_commands_still_gets_one_answer() {
        let mut rig = Rig::new();
        let _ = rig.on(Event::CommandsEnd);
        let fx = rig.send(1, &rcpt_on(2, 0));
        assert_eq!(records(&fx), [(1, lost(2))]);
        assert_eq!(rig.core.in_flight(), 0);
    }

    #[test]
    fn generations_wrap_where_the_driver_token_does() {
        let top = (1 << GENERATION_BITS) - 1;
        assert_eq!(next_generation(top - 1), top);
        assert_eq!(next_generation(top), 0);
    }

    /// Counts the records in `fx` against what is owed per delnum;
    /// returns the starts asked for.
    fn settle(fx: Vec<Effect>, owed: &mut [u32]) -> Vec<ShardId> {
        let mut starts = Vec::new();
        for e in fx {
            match e {
                Effect::Record { delnum, .. } => {
                    let owed = &mut owed[usize::from(delnum)];
                    assert_eq!(*owed, 1, "delnum {delnum} answered twice");
                    *owed = 0;
                }
                Effect::Start(id) => starts.push(id),
                _ => {}
            }
        }
        starts
    }

    /// Commands, results (right and wrong), losses, restarts, failed
    /// starts and reloads in a mix a small generator chooses, then the
    /// end of commands: every accepted delnum gets exactly one record,
    /// and the core's tables agree after every event.
    #[test]
    fn every_delnum_is_answered_exactly_once_in_any_mix() {
        for seed in 1..=40u64 {
            let mut x = seed;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut rig = Rig::new();
            // Per delnum: records owed (1 while in flight).
            let mut owed = vec![0u32; SLOTS as usize];
            for _ in 0..400 {
                let delnum = next(u64::from(SLOTS)) as u16;
                let i = next(u64::from(SHARDS)) as u16;
                let fx = match next(8) {
                    0..=2 => {
                        let was_free =
                            rig.core.owner[usize::from(delnum)] == Owner::Free;
                        let r = rcpt_on(i, next(3) as usize);
                        let fx = rig.send(delnum, &r);
                        if was_free {
                            owed[usize::from(delnum)] += 1;
                        }
                        let recs = records(&fx);
                        assert!(recs.len() <= 1);
                        // A refused command is answered at once: its
                        // record is not owed by the delivery in flight.
                        if !was_free {
                            assert_eq!(
                                recs,
                                [(delnum, Refusal::DelnumInUse.body())]
                            );
                            Vec::new()
                        } else {
                            fx
                        }
                    }
                    3 | 4 => {
                        let owner = rig.core.owner[usize::from(delnum)];
                        let shard = match owner {
                            Owner::Shard(s) if next(4) > 0 => rig.id(s),
                            _ => rig.id(i),
                        };
                        rig.done(shard, delnum)
                    }
                    5 => rig.lose(rig.id(i)),
                    6 => rig.tick(Duration::from_millis(next(300))),
                    _ => {
                        let fx = rig.on(Event::Responses(Rc::from(&b"R"[..])));
                        assert!(records(&fx).is_empty());
                        fx
                    }
                };
                for id in settle(fx, &mut owed) {
                    let fx = if next(4) == 0 {
                        let error = io::Error::from_raw_os_error(11);
                        let now = rig.now;
                        rig.on(Event::StartFailed { shard: id, error, now })
                    } else {
                        rig.started(id)
                    };
                    assert!(settle(fx, &mut owed).is_empty());
                }
                for (d, &n) in owed.iter().enumerate() {
                    let held = rig.core.owner[d] != Owner::Free;
                    assert_eq!(n, u32::from(held), "seed {seed} delnum {d}");
                }
            }
            let fx = rig.on(Event::CommandsEnd);
            let _ = settle(fx, &mut owed);
            // Drain: shards answer what they hold, restarts are carried
            // out, and every pipe ends.
            let mut exited = false;
            for _ in 0..100 {
                for i in 0..SHARDS {
                    let id = rig.id(i);
                    let held: Vec<u16> = (0..SLOTS as u16)
                        .filter(|&d| {
                            rig.core.owner[usize::from(d)] == Owner::Shard(i)
                        })
                        .collect();
                    let mut fx = Vec::new();
                    for d in held {
                        fx.extend(rig.done(id, d));
                    }
                    fx.extend(rig.lose(id));
                    exited |= fx.contains(&Effect::Exit);
                    let _ = settle(fx, &mut owed);
                }
                let fx = rig.tick(Duration::from_secs(5));
                exited |= fx.contains(&Effect::Exit);
                for id in settle(fx, &mut owed) {
                    let fx = rig.started(id);
                    let _ = settle(fx, &mut owed);
                }
                if exited {
                    break;
                }
            }
            assert!(exited, "seed {seed}: no exit");
            assert!(owed.iter().all(|&n| n == 0), "seed {seed}");
        }
    }

    /// A rig whose core keys by site, its resolver up; the limits file
    /// gives google's MX hosts a provider group of 10.
    fn site_rig(wait: Duration) -> Rig {
        let mut rig = Rig::new();
        let text: &[u8] =
            b":20\nexplicit.test:3\n@.google.com:=google\n=google:10\n";
        let (t, parsed) = limits(text);
        let _ = rig.on(Event::Limits { text: t, parsed });
        let mut fx = Vec::new();
        rig.core.use_sites(Sites::new(true, wait, Routes::default()), &mut fx);
        assert_eq!(fx, [Effect::StartResolver(1)]);
        let now = rig.now;
        let fx = rig.on(Event::ResolverStarted {
            generation: 1,
            pid: pid(99, 1),
            now,
        });
        assert_eq!(fx, []);
        rig
    }

    fn lookups(fx: &[Effect]) -> Vec<Vec<u8>> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Lookup(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    fn keys(fx: &[Effect]) -> Vec<(u16, Vec<u8>)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Job { job, .. } => Some((job.delnum, job.key.clone())),
                _ => None,
            })
            .collect()
    }

    fn mx(domain: &[u8], hosts: &[&str]) -> Answer {
        use shardspawn_common::lookup::{Exchange, Outcome};
        let exchanges = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Exchange {
                preference: 10 * i as u16,
                host: h.as_bytes().to_vec(),
            })
            .collect();
        Answer {
            domain: domain.to_vec(),
            ttl: 300,
            outcome: Outcome::Mx(exchanges),
        }
    }

    #[test]
    fn a_domain_waits_for_one_lookup_then_goes_under_its_site() {
        let mut rig = site_rig(Duration::from_secs(5));
        let fx = rig.send(1, b"a@one.test");
        assert_eq!(
            (lookups(&fx), jobs(&fx)),
            (vec![b"one.test".to_vec()], vec![])
        );
        // A second delivery to it, and one spelled otherwise: no second
        // lookup while the first is under way.
        let fx = rig.send(2, b"b@ONE.test.");
        assert_eq!(fx, []);
        assert_eq!(rig.core.in_flight(), 2);
        let now = rig.now;
        let fx = rig.on(Event::Answer(
            mx(b"one.test", &["mx2.site.test", "mx1.site.test"]),
            now,
        ));
        let site = b"@mx1.site.test,mx2.site.test".to_vec();
        assert_eq!(keys(&fx), [(1, site.clone()), (2, site.clone())]);
        // Kept: the next delivery goes at once.
        let fx = rig.send(3, b"c@one.test");
        assert_eq!(keys(&fx), [(3, site)]);
        // Another domain on the same hosts shares the key once known.
        let fx = rig.send(4, b"d@two.test");
        assert_eq!(lookups(&fx), [b"two.test".to_vec()]);
        let fx = rig.on(Event::Answer(
            mx(b"two.test", &["mx1.site.test", "mx2.site.test"]),
            now,
        ));
        assert_eq!(keys(&fx), [(4, b"@mx1.site.test,mx2.site.test".to_vec())]);
    }

    #[test]
    fn a_provider_rule_and_an_explicit_rule_come_before_the_site() {
        let mut rig = site_rig(Duration::from_secs(5));
        // An explicit domain rule: no lookup at all. An IP literal: none.
        let fx = rig.send(1, b"a@explicit.test");
        assert_eq!(
            (lookups(&fx), keys(&fx)),
            (vec![], vec![(1, b"explicit.test".to_vec())])
        );
        let fx = rig.send(2, b"a@[10.0.0.1]");
        assert_eq!(
            (lookups(&fx), keys(&fx)),
            (vec![], vec![(2, b"[10.0.0.1]".to_vec())])
        );
        let _ = rig.send(3, b"a@hosted.test");
        let now = rig.now;
        let fx = rig.on(Event::Answer(
            mx(b"hosted.test", &["aspmx.l.google.com", "backup.other.test"]),
            now,
        ));
        assert_eq!(keys(&fx), [(3, b"=google".to_vec())]);
    }

    #[test]
    fn a_failed_or_slow_lookup_sends_its_deliveries_under_their_domain_once() {
        use shardspawn_common::lookup::Outcome;
        let mut rig = site_rig(Duration::from_secs(5));
        let _ = rig.send(1, b"a@broken.test");
        let now = rig.now;
        let failed = Answer {
            domain: b"broken.test".to_vec(),
            ttl: 0,
            outcome: Outcome::Failed("SERVFAIL".into()),
        };
        let fx = rig.on(Event::Answer(failed, now));
        assert_eq!(keys(&fx), [(1, b"broken.test".to_vec())]);
        let warned = fx.iter().filter(|e| matches!(e, Effect::Log(Level::Warn, l) if l.contains("broken.test") && l.contains("SERVFAIL"))).count();
        assert_eq!(warned, 1);
        // Not asked again, and not logged again, for a while.
        let fx = rig.send(2, b"b@broken.test");
        assert_eq!(fx.len(), 1, "{fx:?}");
        assert_eq!(keys(&fx), [(2, b"broken.test".to_vec())]);
        // Silence: the wait ends at its deadline, not before.
        let _ = rig.send(3, b"a@silent.test");
        assert_eq!(
            rig.core.next_deadline(),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(rig.tick(Duration::from_millis(4999)), []);
        let fx = rig.tick(Duration::from_millis(1));
        assert_eq!(keys(&fx), [(3, b"silent.test".to_vec())]);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(Level::Warn, l) if l.contains("no answer in 5 s"))));
        // A late answer is kept for the next delivery, and answers nobody.
        let fx = rig
            .on(Event::Answer(mx(b"silent.test", &["mx.late.test"]), rig.now));
        assert_eq!(fx, []);
        let fx = rig.send(4, b"b@silent.test");
        assert_eq!(keys(&fx), [(4, b"@mx.late.test".to_vec())]);
        assert_eq!(rig.core.in_flight(), 4);
    }

    #[test]
    fn the_resolver_dying_loses_nothing_and_it_starts_again() {
        let mut rig = site_rig(Duration::from_secs(5));
        let _ = rig.send(1, b"a@one.test");
        let _ = rig.send(2, b"a@two.test");
        let now = rig.now;
        let why = "closed its answer pipe".to_string();
        let fx = rig.on(Event::ResolverLost { generation: 1, why, now });
        assert_eq!(
            fx[0],
            Effect::ForgetResolver { unreaped: Some(pid(99, 1)) }
        );
        assert_eq!(
            keys(&fx),
            [(1, b"one.test".to_vec()), (2, b"two.test".to_vec())]
        );
        // While it is down, no lookup is asked: the domain key at once.
        let fx = rig.send(3, b"a@three.test");
        assert_eq!(
            (lookups(&fx), keys(&fx)),
            (vec![], vec![(3, b"three.test".to_vec())])
        );
        // A late event of the dead one changes nothing.
        let fx = rig.on(Event::ResolverLost {
            generation: 1,
            why: "again".into(),
            now,
        });
        assert_eq!(fx, []);
        let fx = rig.tick(Duration::from_millis(100));
        assert_eq!(fx, [Effect::StartResolver(2)]);
        let fx = rig.on(Event::ResolverStarted {
            generation: 2,
            pid: pid(99, 2),
            now: rig.now,
        });
        assert_eq!(fx, []);
        let fx = rig.send(4, b"a@four.test");
        assert_eq!(lookups(&fx), [b"four.test".to_vec()]);
    }

    #[test]
    fn the_end_of_commands_sends_what_waits_for_dns_under_its_domain() {
        let mut rig = site_rig(Duration::from_secs(5));
        let _ = rig.send(1, b"a@one.test");
        let fx = rig.on(Event::CommandsEnd);
        assert_eq!(keys(&fx), [(1, b"one.test".to_vec())]);
        let closes =
            fx.iter().filter(|e| matches!(e, Effect::CloseJobs(_))).count();
        assert_eq!(closes, usize::from(SHARDS));
        let job_at = fx.iter().position(|e| matches!(e, Effect::Job { .. }));
        let close_at =
            fx.iter().position(|e| matches!(e, Effect::CloseJobs(_)));
        assert!(job_at < close_at, "the job goes before its shard is closed");
    }
}
