//! The emulated qmail-send: the other end of the spawner's fd 0 and fd 1.
//!
//! [`Emulator::start`] runs the spawner as qmail-start would (fd 0 a
//! command pipe, fd 1 a result pipe, fd 2 closed unless asked otherwise),
//! reads the concurrency announcement, and from then on a reader thread
//! decodes result records and queues them with the instant they arrived.
//! The test side sends commands ([`Emulator::send`], or raw bytes for
//! hostile input) and takes records ([`Emulator::recv`]) with a deadline,
//! and can hang up either pipe ([`Emulator::close_commands`],
//! [`Emulator::close_results`]).
//!
//! Every record is checked against the books: its delnum must be one that
//! was sent and not yet answered, as qmail-send requires ("delivery report
//! out of range"). Anything else is kept as a violation for the test to
//! assert on. [`Emulator::run`] drives a whole workload the way
//! qmail-send does: lowest free delnum first, at most
//! min(concurrency, slots) in flight, a new command as soon as a delnum
//! is free.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::record::{Record, RecordDecoder};

use crate::util::wait_for;

/// Where the spawner's fd 2 goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stderr {
    /// Closed, as qmail-start leaves qmail-rspawn's.
    #[default]
    Closed,
    /// The test's own stderr.
    Inherit,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// How the emulator runs the spawner.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the spawner's fd 2 goes.
    pub stderr: Stderr,
    /// Write commands one byte per `write(2)`, to cut every command at
    /// every boundary.
    pub byte_per_write: bool,
    /// How long the spawner has to write its announcement.
    pub announce_within: Duration,
    /// Start the spawner in a process group of its own, and kill the
    /// whole group (shards, stand-ins) when the emulator goes away.
    pub own_process_group: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            stderr: Stderr::Closed,
            byte_per_write: false,
            announce_within: Duration::from_secs(10),
            own_process_group: true,
        }
    }
}

/// One recipient of one message, as qmail-send hands it to its spawner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `split/number` under `queue/mess`.
    pub messid: String,
    /// Envelope sender (may be empty).
    pub sender: Vec<u8>,
    /// The recipient address.
    pub recipient: Vec<u8>,
}

/// Results counted by status letter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Letters {
    /// `K`: delivered.
    pub k: usize,
    /// `Z`: deferred.
    pub z: usize,
    /// `D`: failed for good.
    pub d: usize,
    /// Anything else (qmail-send: "report mangled, will defer").
    pub other: usize,
}

impl Letters {
    /// Counts one result body.
    pub fn count(&mut self, body: &[u8]) {
        match body.first() {
            Some(b'K') => self.k += 1,
            Some(b'Z') => self.z += 1,
            Some(b'D') => self.d += 1,
            _ => self.other += 1,
        }
    }

    /// All results counted.
    pub fn total(&self) -> usize {
        self.k + self.z + self.d + self.other
    }
}

/// How a [`Emulator::run`] is going; passed to its progress callback.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Deliveries in the run.
    pub total: usize,
    /// Commands sent so far.
    pub sent: usize,
    /// Results received so far.
    pub done: usize,
    /// Sent and not yet answered.
    pub in_flight: usize,
    /// The results so far by letter.
    pub letters: Letters,
    /// Since the run began.
    pub elapsed: Duration,
}

/// The result of one delivery in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The delnum it ran under.
    pub delnum: u16,
    /// The result body: letter, then text.
    pub body: Vec<u8>,
    /// When its command was written.
    pub sent: Instant,
    /// When its result arrived.
    pub answered: Instant,
}

impl Outcome {
    /// The status letter, if the body has one.
    pub fn letter(&self) -> Option<u8> {
        self.body.first().copied()
    }

    /// From command to result.
    pub fn latency(&self) -> Duration {
        self.answered.saturating_duration_since(self.sent)
    }
}

/// What a [`Emulator::run`] saw.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Per delivery, in the order given: its outcome, or `None` if no
    /// result came by the deadline.
    pub outcomes: Vec<Option<Outcome>>,
    /// The results by letter.
    pub letters: Letters,
    /// The most deliveries that were in flight at once.
    pub max_in_flight: usize,
    /// From the first command to the last result (or the deadline).
    pub elapsed: Duration,
    /// Protocol breaches: results for idle delnums (double results),
    /// missing results at the deadline, a result stream that ended early,
    /// a command that could not be written.
    pub violations: Vec<String>,
}

impl RunReport {
    /// Every delivery got exactly one result and nothing else went wrong.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.outcomes.iter().all(Option::is_some)
    }

    /// The result bodies, with `None` for missing ones.
    pub fn bodies(&self) -> Vec<Option<&[u8]>> {
        self.outcomes
            .iter()
            .map(|o| o.as_ref().map(|o| o.body.as_slice()))
            .collect()
    }
}

/// What the reader thread saw on the spawner's fd 1.
enum Event {
    Announced(u16),
    Record(Instant, Record),
    /// EOF or a read error; `mid_record` if bytes of an unfinished record
    /// (or announcement) were pending.
    Closed {
        mid_record: bool,
        error: Option<io::Error>,
    },
}

/// What waiting for the next record gave.
enum Next {
    Record(Instant, Record),
    Timeout,
    Closed,
}

/// The emulated qmail-send. See the module docs.
#[derive(Debug)]
pub struct Emulator {
    child: Option<Child>,
    own_process_group: bool,
    width: DelnumWidth,
    slots: u16,
    byte_per_write: bool,
    commands: Option<File>,
    events: Receiver<Event>,
    /// Commands sent and not yet answered, per delnum (more than one
    /// only when a test reused a busy delnum on purpose).
    outstanding: BTreeMap<u16, usize>,
    violations: Vec<String>,
    busy_reuses: Vec<u16>,
    results_closed: bool,
    /// Write end of the reader thread's hang-up pipe: dropping it makes
    /// the reader close the result pipe ([`Emulator::close_results`]).
    hang_up: Option<OwnedFd>,
    exit: Option<ExitStatus>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Announced(n) => write!(f, "Announced({n})"),
            Event::Record(_, r) => write!(f, "Record({r:?})"),
            Event::Closed { mid_record, error } => {
                write!(f, "Closed {{ mid_record: {mid_record}, {error:?} }}")
            }
        }
    }
}

impl Emulator {
    /// Runs `cmd` as the spawner and waits for its announcement.
    ///
    /// `cmd` is used as built (program, arguments, environment, working
    /// directory): the emulator only wires fds 0, 1 and 2 and, with
    /// [`Options::own_process_group`], the process group. Fails with
    /// `UnexpectedEof` if the spawner closes fd 1 before announcing
    /// (qmail-send: "hath the daemon spawn no fire?"), and `TimedOut` if
    /// it says nothing within [`Options::announce_within`].
    pub fn start(
        mut cmd: std::process::Command,
        width: DelnumWidth,
        opts: Options,
    ) -> io::Result<Emulator> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        match &opts.stderr {
            Stderr::Closed => {
                cmd.stderr(Stdio::null());
                crate::sys::close_stderr_in_child(&mut cmd);
            }
            Stderr::Inherit => {
                cmd.stderr(Stdio::inherit());
            }
            Stderr::File(path) => {
                let file =
                    OpenOptions::new().create(true).append(true).open(path)?;
                cmd.stderr(file);
            }
        }
        if opts.own_process_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout)) =
            (child.stdin.take(), child.stdout.take())
        else {
            unreachable!("both pipes were asked for");
        };
        let commands = File::from(OwnedFd::from(stdin));
        let results = File::from(OwnedFd::from(stdout));
        Emulator::connect(Some(child), commands, results, width, &opts)
    }

    /// The emulator over pipes already connected to a spawner; waits for
    /// the announcement.
    fn connect(
        child: Option<Child>,
        commands: File,
        results: File,
        width: DelnumWidth,
        opts: &Options,
    ) -> io::Result<Emulator> {
        let (tx, rx) = mpsc::channel();
        let (hung_up, hang_up) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(io::Error::from)?;
        std::thread::Builder::new()
            .name("emulator-results".into())
            .spawn(move || read_results(results, hung_up, width, tx))?;
        // From here on, Drop kills the child on every error path.
        let mut emu = Emulator {
            child,
            own_process_group: opts.own_process_group,
            width,
            slots: 0,
            byte_per_write: opts.byte_per_write,
            commands: Some(commands),
            events: rx,
            outstanding: BTreeMap::new(),
            violations: Vec::new(),
            busy_reuses: Vec::new(),
            results_closed: false,
            hang_up: Some(hang_up),
            exit: None,
        };
        match emu.events.recv_timeout(opts.announce_within) {
            Ok(Event::Announced(slots)) => {
                emu.slots = slots;
                Ok(emu)
            }
            Ok(Event::Closed { error: Some(e), .. }) => Err(e),
            Ok(Event::Closed { error: None, .. })
            | Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "hath the daemon spawn no fire? \
                 (fd 1 closed before the announcement)",
            )),
            Ok(Event::Record(..)) => {
                unreachable!("records follow the announcement")
            }
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no announcement within {:?}", opts.announce_within),
            )),
        }
    }

    /// The number of slots the spawner announced.
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// The framing in use.
    pub fn width(&self) -> DelnumWidth {
        self.width
    }

    /// The spawner's process id (0 for an emulator over bare pipes).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Encodes and writes one command, and books its delnum as busy.
    /// Sending a delnum that is already busy is allowed (to test "delnum
    /// in use"); it is noted in [`Emulator::busy_reuses`].
    pub fn send(&mut self, cmd: &Command) -> io::Result<()> {
        let mut bytes = Vec::new();
        cmd.encode(self.width, &mut bytes);
        let count = self.outstanding.entry(cmd.delnum).or_insert(0);
        if *count > 0 {
            self.busy_reuses.push(cmd.delnum);
        }
        *count += 1;
        let written = self.send_raw(&bytes);
        if written.is_err() {
            // Not sent (or not all of it): nothing will answer it.
            self.unbook(cmd.delnum);
        }
        written
    }

    /// Writes `bytes` to the command pipe as they are, with no booking:
    /// for truncated and malformed input. Honours
    /// [`Options::byte_per_write`].
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(pipe) = self.commands.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the command pipe is closed",
            ));
        };
        if self.byte_per_write {
            for b in bytes {
                pipe.write_all(std::slice::from_ref(b))?;
            }
            Ok(())
        } else {
            pipe.write_all(bytes)
        }
    }

    /// Books `delnum` as busy without writing anything, for a command
    /// the test wrote itself with [`Emulator::send_raw`].
    pub fn book(&mut self, delnum: u16) {
        *self.outstanding.entry(delnum).or_insert(0) += 1;
    }

    fn unbook(&mut self, delnum: u16) -> bool {
        match self.outstanding.get_mut(&delnum) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    self.outstanding.remove(&delnum);
                }
                true
            }
            None => false,
        }
    }

    /// The next result record, or `None` if none came by `deadline` or
    /// the result stream has ended (see [`Emulator::results_closed`]).
    pub fn recv(&mut self, deadline: Instant) -> Option<Record> {
        self.recv_timed(deadline).map(|(_, record)| record)
    }

    /// As [`Emulator::recv`], with the instant the record was read.
    pub fn recv_timed(
        &mut self,
        deadline: Instant,
    ) -> Option<(Instant, Record)> {
        match self.next(deadline) {
            Next::Record(at, record) => Some((at, record)),
            Next::Timeout | Next::Closed => None,
        }
    }

    /// Waits for the next event and books any record.
    fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.results_closed {
                return Next::Closed;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(Event::Record(at, record)) => {
                    if !self.unbook(record.delnum) {
                        self.violations.push(format!(
                            "record for idle delnum {}: {:?}",
                            record.delnum,
                            String::from_utf8_lossy(&record.body)
                        ));
                    }
                    return Next::Record(at, record);
                }
                Ok(Event::Closed { mid_record, error }) => {
                    self.results_closed = true;
                    if mid_record {
                        self.violations.push(
                            "result stream ended inside a record".into(),
                        );
                    }
                    if let Some(e) = error {
                        self.violations
                            .push(format!("unable to read results: {e}"));
                    }
                }
                Ok(Event::Announced(_)) => {
                    unreachable!("the announcement is read once, at start")
                }
                Err(RecvTimeoutError::Timeout) => return Next::Timeout,
                Err(RecvTimeoutError::Disconnected) => {
                    self.results_closed = true;
                }
            }
        }
    }

    /// Whether the spawner's fd 1 reached EOF and every record before it
    /// has been taken.
    pub fn results_closed(&self) -> bool {
        self.results_closed
    }

    /// Delnums sent and not yet answered, ascending.
    pub fn busy_delnums(&self) -> Vec<u16> {
        self.outstanding.keys().copied().collect()
    }

    /// How many commands are sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.outstanding.values().sum()
    }

    /// Protocol breaches seen so far, e.g. `record for idle delnum 3`.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Delnums that were sent while already busy, in order.
    pub fn busy_reuses(&self) -> &[u16] {
        &self.busy_reuses
    }

    /// Closes the command pipe: the spawner reads EOF, as when qmail-send
    /// exits.
    pub fn close_commands(&mut self) {
        self.commands = None;
    }

    /// qmail-send goes away: closes the command pipe, takes every record
    /// still to come up to the end of the result stream, and checks what
    /// every such end must show: fd 1 closed, the spawner exited 0, and
    /// no record that broke the books (a second result, one for an idle
    /// delnum, a cut one). Returns the records taken. Each wait (for a
    /// record, for the exit) gives up after `within`.
    ///
    /// Panics, as a test assertion, when a check fails.
    pub fn finish(&mut self, within: Duration) -> Vec<Record> {
        self.close_commands();
        let mut rest = Vec::new();
        while let Some(r) = self.recv(Instant::now() + within) {
            rest.push(r);
        }
        assert!(self.results_closed(), "fd 1 still open after EOF on fd 0");
        let status = self.wait_exit(Instant::now() + within);
        assert!(
            status.is_some_and(|s| s.success()),
            "shardspawn did not exit 0 after EOF: {status:?}"
        );
        assert!(self.violations().is_empty(), "{:?}", self.violations());
        rest
    }

    /// Closes the read end of the result pipe, as if qmail-send had gone
    /// away from it: the spawner's next write to fd 1 fails with EPIPE.
    /// Records that arrived before are taken and booked as usual; returns
    /// once the pipe is closed, after which [`Emulator::results_closed`]
    /// is true and nothing more can arrive. The command pipe stays open.
    pub fn close_results(&mut self) {
        self.hang_up = None;
        // The reader is never stuck in a read (it polls the hang-up pipe
        // too), so its Closed event follows at once.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Next::Record(..) = self.next(deadline) {}
    }

    /// Waits until the spawner exits, up to `deadline`. On timeout it is
    /// killed (with its process group, see
    /// [`Options::own_process_group`]), reaped, and `None` is returned.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_for(
            || match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            },
            deadline,
        );
        if status.is_none() {
            self.kill();
        }
        self.exit = status;
        status
    }

    /// The spawner's exit status, if [`Emulator::wait_exit`] saw it.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Kills the spawner (and its group) and reaps it.
    fn kill(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if self.own_process_group {
            use nix::sys::signal::{SIGKILL, killpg};
            use nix::unistd::Pid;
            // While the leader is unreaped its pid, and so the group id,
            // cannot be reused. Once it is reaped, the group lives on
            // while any member does and its id is still not reused; a
            // process that now has the leader's pid proves the id was
            // recycled, and that group is not ours to kill.
            let pgid = child.id();
            let ours = self.exit.is_none()
                || !std::path::Path::new(&format!("/proc/{pgid}")).exists();
            if let (true, Ok(pgid)) = (ours, i32::try_from(pgid)) {
                let _ = killpg(Pid::from_raw(pgid), SIGKILL);
            }
        }
        if self.exit.is_none() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exit = Some(status);
            }
        }
    }

    /// Runs `deliveries` as qmail-send would, until each has its result
    /// or `deadline` passes. See [`Emulator::run_with_progress`].
    pub fn run(
        &mut self,
        deliveries: &[Delivery],
        concurrency: usize,
        deadline: Instant,
    ) -> RunReport {
        self.run_with_progress(deliveries, concurrency, deadline, |_| {})
    }

    /// Runs `deliveries` as qmail-send would: at most min(`concurrency`,
    /// slots) in flight, each new command on the lowest free delnum, a
    /// new command as soon as a delnum is free, until every delivery has
    /// its result or `deadline` passes. Delnums still busy from earlier
    /// [`Emulator::send`]s are left alone.
    ///
    /// `progress` is called about every 200 ms while the run waits, and
    /// once at the end.
    pub fn run_with_progress(
        &mut self,
        deliveries: &[Delivery],
        concurrency: usize,
        deadline: Instant,
        mut progress: impl FnMut(&Progress),
    ) -> RunReport {
        const TICK: Duration = Duration::from_millis(200);
        let began = Instant::now();
        let violations_before = self.violations.len();
        let mut violations = Vec::new();
        let limit = concurrency.min(usize::from(self.slots));
        let mut free: BTreeSet<u16> = (0..limit)
            .filter_map(|d| u16::try_from(d).ok())
            .filter(|d| !self.outstanding.contains_key(d))
            .collect();
        if free.is_empty() && !deliveries.is_empty() {
            violations.push(format!(
                "no delnum to run on (concurrency {concurrency}, {} slots)",
                self.slots
            ));
        }
        // delnum -> (delivery index, when sent)
        let mut flying: HashMap<u16, (usize, Instant)> = HashMap::new();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; deliveries.len()];
        let mut letters = Letters::default();
        let (mut sent, mut done, mut max_in_flight) = (0, 0, 0);
        let mut can_write = true;
        let mut last_tick = began;
        let snapshot = |sent, done, flying: usize, letters| Progress {
            total: deliveries.len(),
            sent,
            done,
            in_flight: flying,
            letters,
            elapsed: began.elapsed(),
        };
        loop {
            while can_write && sent < deliveries.len() {
                let Some(delnum) = free.pop_first() else { break };
                let d = &deliveries[sent];
                let cmd = Command {
                    delnum,
                    messid: d.messid.clone().into_bytes(),
                    sender: d.sender.clone(),
                    recipient: d.recipient.clone(),
                };
                let at = Instant::now();
                match self.send(&cmd) {
                    Ok(()) => {
                        flying.insert(delnum, (sent, at));
                        sent += 1;
                    }
                    Err(e) => {
                        violations.push(format!(
                            "unable to write the command of delivery \
                             {sent}: {e}"
                        ));
                        free.insert(delnum);
                        can_write = false;
                    }
                }
            }
            max_in_flight = max_in_flight.max(flying.len());
            if flying.is_empty() && (sent == deliveries.len() || !can_write) {
                break;
            }
            if free.is_empty() && flying.is_empty() {
                break; // nothing can ever run
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.next(deadline.min(last_tick + TICK)) {
                Next::Record(at, record) => {
                    // A delnum this run did not send is booked (and
                    // judged) by next(); here only ours count.
                    if let Some((i, sent_at)) = flying.remove(&record.delnum) {
                        letters.count(&record.body);
                        outcomes[i] = Some(Outcome {
                            delnum: record.delnum,
                            body: record.body,
                            sent: sent_at,
                            answered: at,
                        });
                        free.insert(record.delnum);
                        done += 1;
                    }
                }
                Next::Timeout => {}
                Next::Closed => {
                    violations.push(format!(
                        "spawner closed fd 1 with {} deliveries in flight",
                        flying.len()
                    ));
                    break;
                }
            }
            if last_tick.elapsed() >= TICK {
                progress(&snapshot(sent, done, flying.len(), letters));
                last_tick = Instant::now();
            }
        }
        let mut missing: Vec<(usize, u16)> =
            flying.iter().map(|(&delnum, &(i, _))| (i, delnum)).collect();
        missing.sort_unstable();
        for (i, delnum) in missing {
            violations.push(format!(
                "no result for delivery {i} (delnum {delnum}, {:?})",
                String::from_utf8_lossy(&deliveries[i].recipient)
            ));
        }
        if sent < deliveries.len() {
            violations.push(format!(
                "{} deliveries never sent",
                deliveries.len() - sent
            ));
        }
        // Records that already arrived while nothing is booked can only
        // be surplus (a second result): take them now, without waiting,
        // so the report shows them. Later ones show in violations().
        while self.outstanding.is_empty() {
            if let Next::Timeout | Next::Closed = self.next(Instant::now()) {
                break;
            }
        }
        violations
            .extend(self.violations[violations_before..].iter().cloned());
        progress(&snapshot(sent, done, flying.len(), letters));
        RunReport {
            outcomes,
            letters,
            max_in_flight,
            elapsed: began.elapsed(),
            violations,
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.commands = None;
        self.kill();
    }
}

/// The reader thread: the announcement, then records, then EOF. Each
/// record is stamped when it is decoded. When `hung_up` reports the
/// emulator's end gone, it stops and drops (closes) `results`.
fn read_results(
    mut results: File,
    hung_up: OwnedFd,
    width: DelnumWidth,
    tx: Sender<Event>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let need = width.bytes();
    let mut announcement = Vec::with_capacity(need);
    let mut decoder = RecordDecoder::new(width);
    let mut buf = vec![0u8; 16 * 1024];
    let error = loop {
        let mut fds = [
            PollFd::new(results.as_fd(), PollFlags::POLLIN),
            PollFd::new(hung_up.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break Some(io::Error::from(e)),
        }
        if fds[1].any().unwrap_or(false) {
            // The test hung up on purpose: not the spawner's doing.
            drop(results);
            let _ = tx.send(Event::Closed { mid_record: false, error: None });
            return;
        }
        let n = match results.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        };
        let mut rest = &buf[..n];
        if announcement.len() < need {
            let take = (need - announcement.len()).min(rest.len());
            announcement.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if announcement.len() == need {
                let slots = match width {
                    DelnumWidth::One => u16::from(announcement[0]),
                    DelnumWidth::Two => {
                        u16::from_le_bytes([announcement[0], announcement[1]])
                    }
                };
                if tx.send(Event::Announced(slots)).is_err() {
                    return;
                }
            }
        }
        while !rest.is_empty() {
            let (used, record) = decoder.decode(rest);
            rest = &rest[used..];
            if let Some(record) = record {
                if tx.send(Event::Record(Instant::now(), record)).is_err() {
                    return; // the emulator is gone
                }
            } else if used == 0 {
                // A decoder that takes nothing would spin here for ever.
                break;
            }
        }
    };
    let mid_record = announcement.len() < need || !decoder.is_idle();
    let _ = tx.send(Event::Closed { mid_record, error });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shardspawn_common::command::{CommandDecoder, Decoded};
    use shardspawn_common::record::{announcement, encode};

    use super::*;
    use crate::util::{deadline_in, fork_lock};

    fn secs(n: u64) -> Instant {
        deadline_in(Duration::from_secs(n))
    }

    fn sh(script: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    /// How the in-process spawner answers one command.
    #[derive(Clone, Copy)]
    enum Answer {
        Once,
        Twice,
        Never,
    }

    /// A spawner in a thread, over real pipes: announces `slots`, then
    /// answers each command with `K<recipient>` per `answer(recipient)`,
    /// keeping up to `hold` answers back and releasing them newest
    /// first, so results come out of command order. Reports the delnums
    /// it saw, and the most commands it held at once.
    fn in_process(
        width: DelnumWidth,
        slots: u16,
        hold: usize,
        answer: fn(&[u8]) -> Answer,
        opts: Options,
    ) -> (Emulator, std::thread::JoinHandle<Vec<u16>>) {
        let (cmd_r, cmd_w) = nix::unistd::pipe().unwrap();
        let (res_r, res_w) = nix::unistd::pipe().unwrap();
        let spawner = std::thread::spawn(move || {
            let mut commands = File::from(cmd_r);
            let mut results = File::from(res_w);
            results.write_all(&announcement(width, slots)).unwrap();
            let mut decoder = CommandDecoder::new(width, 1000);
            let mut seen = Vec::new();
            let mut held: Vec<(u16, Vec<u8>)> = Vec::new();
            let mut buf = [0u8; 100];
            let flush = |held: &mut Vec<(u16, Vec<u8>)>,
                         results: &mut File| {
                while let Some((delnum, recipient)) = held.pop() {
                    let mut body = b"K".to_vec();
                    body.extend(&recipient);
                    let mut out = Vec::new();
                    match answer(&recipient) {
                        Answer::Never => {}
                        Answer::Once => encode(width, delnum, &body, &mut out),
                        Answer::Twice => {
                            encode(width, delnum, &body, &mut out);
                            encode(width, delnum, &body, &mut out);
                        }
                    }
                    results.write_all(&out).unwrap();
                }
            };
            loop {
                let n = commands.read(&mut buf).unwrap();
                if n == 0 {
                    flush(&mut held, &mut results);
                    return seen;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let (used, cmd) = decoder.decode(rest);
                    rest = &rest[used..];
                    if let Some(Decoded::Command(cmd)) = cmd {
                        seen.push(cmd.delnum);
                        held.push((cmd.delnum, cmd.recipient));
                        if held.len() >= hold {
                            flush(&mut held, &mut results);
                        }
                    }
                }
            }
        });
        let emu = Emulator::connect(
            None,
            File::from(cmd_w),
            File::from(res_r),
            width,
            &opts,
        )
        .unwrap();
        (emu, spawner)
    }

    fn deliveries(n: usize) -> Vec<Delivery> {
        (0..n)
            .map(|i| Delivery {
                messid: format!("{}/{}", i % 23, 1000 + i),
                sender: b"s@o.test".to_vec(),
                recipient: format!("user{i}@d{}.test", i % 3).into_bytes(),
            })
            .collect()
    }

    #[test]
    fn run_keeps_concurrency_and_lowest_delnums() {
        for width in [DelnumWidth::One, DelnumWidth::Two] {
            let (mut emu, spawner) =
                in_process(width, 5, 3, |_| Answer::Once, Options::default());
            assert_eq!(emu.slots(), 5);
            // A multiple of the spawner's hold, so no answer stays held.
            let work = deliveries(21);
            let mut ticks = 0;
            let report =
                emu.run_with_progress(&work, 3, secs(20), |_| ticks += 1);
            assert!(report.is_clean(), "{:?}", report.violations);
            assert_eq!(report.letters.k, 21);
            assert_eq!(report.max_in_flight, 3);
            assert!(ticks >= 1);
            for (d, o) in work.iter().zip(&report.outcomes) {
                let o = o.as_ref().unwrap();
                assert_eq!(o.body[1..], d.recipient[..]);
                assert!(o.answered >= o.sent);
            }
            emu.close_commands();
            let seen = spawner.join().unwrap();
            assert_eq!(seen.len(), 21);
            assert!(seen.iter().all(|&d| d < 3), "{seen:?}");
            // The first three go out on 0, 1, 2; the spawner answers 2,
            // 1, 0 (newest first); each freed delnum is reused at once,
            // lowest first.
            assert_eq!(&seen[..6], &[0, 1, 2, 2, 1, 0]);
        }
    }

    #[test]
    fn concurrency_is_capped_by_slots() {
        let (mut emu, _spawner) = in_process(
            DelnumWidth::One,
            2,
            1,
            |_| Answer::Once,
            Options::default(),
        );
        let report = emu.run(&deliveries(7), 50, secs(20));
        assert!(report.is_clean(), "{:?}", report.violations);
        assert_eq!(report.max_in_flight, 2);
    }

    #[test]
    fn byte_per_write_still_decodes() {
        let opts = Options { byte_per_write: true, ..Options::default() };
        let (mut emu, _spawner) =
            in_process(DelnumWidth::Two, 300, 1, |_| Answer::Once, opts);
        assert_eq!(emu.slots(), 300);
        let report = emu.run(&deliveries(5), 4, secs(20));
        assert!(report.is_clean(), "{:?}", report.violations);
    }

    #[test]
    fn double_result_is_a_violation() {
        let (mut emu, _spawner) = in_process(
            DelnumWidth::One,
            4,
            1,
            |r| {
                if r.starts_with(b"user1@") {
                    Answer::Twice
                } else {
                    Answer::Once
                }
            },
            Options::default(),
        );
        // Delivery 1's second result is taken as delivery 2's (qmail-send
        // could not tell either), so the surplus is the last record.
        let report = emu.run(&deliveries(3), 1, secs(20));
        assert!(report.outcomes.iter().all(Option::is_some));
        if report.violations.is_empty() {
            // It had not arrived when the run ended.
            assert!(emu.recv(secs(10)).is_some());
        }
        assert_eq!(
            emu.violations(),
            &["record for idle delnum 0: \"Kuser2@d2.test\"".to_string()]
        );
    }

    #[test]
    fn missing_result_is_a_violation() {
        let (mut emu, _spawner) = in_process(
            DelnumWidth::One,
            4,
            1,
            |r| {
                if r.starts_with(b"user1@") {
                    Answer::Never
                } else {
                    Answer::Once
                }
            },
            Options::default(),
        );
        let report = emu.run(
            &deliveries(4),
            4,
            deadline_in(Duration::from_millis(300)),
        );
        assert!(!report.is_clean());
        assert!(report.outcomes[1].is_none());
        assert_eq!(report.letters.k, 3);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.starts_with("no result for delivery 1 (delnum 1")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn send_and_recv_book_delnums() {
        let (mut emu, _spawner) = in_process(
            DelnumWidth::One,
            4,
            2,
            |_| Answer::Once,
            Options::default(),
        );
        let cmd = |delnum| Command {
            delnum,
            messid: b"1/1000".to_vec(),
            sender: vec![],
            recipient: b"u@h".to_vec(),
        };
        emu.send(&cmd(3)).unwrap();
        assert_eq!(emu.busy_delnums(), vec![3]);
        emu.send(&cmd(3)).unwrap();
        assert_eq!(emu.busy_reuses(), &[3]);
        assert_eq!(emu.in_flight(), 2);
        assert_eq!(emu.recv(secs(10)).unwrap().delnum, 3);
        assert_eq!(emu.recv(secs(10)).unwrap().delnum, 3);
        assert!(emu.violations().is_empty(), "{:?}", emu.violations());
        assert_eq!(emu.in_flight(), 0);
        // Nothing more to come: the deadline ends the wait.
        assert!(emu.recv(deadline_in(Duration::from_millis(20))).is_none());
        assert!(!emu.results_closed());
        emu.close_commands();
        assert!(emu.recv(secs(10)).is_none());
        assert!(emu.results_closed());
    }

    #[test]
    fn announcement_then_clean_exit() {
        let _lock = fork_lock();
        let mut emu = Emulator::start(
            sh(r"printf '\170'; exec cat >/dev/null"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap();
        assert_eq!(emu.slots(), 120);
        assert!(emu.pid() > 0);
        emu.close_commands();
        let status = emu.wait_exit(secs(10)).unwrap();
        assert!(status.success());
        assert!(emu.recv(secs(10)).is_none());
        assert!(emu.results_closed());
        assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    }

    #[test]
    fn two_byte_announcement() {
        let _lock = fork_lock();
        let emu = Emulator::start(
            sh(r"printf '\375\001'; exec cat >/dev/null"),
            DelnumWidth::Two,
            Options::default(),
        )
        .unwrap();
        assert_eq!(emu.slots(), 509);
    }

    #[test]
    fn no_announcement_is_fatal() {
        let _lock = fork_lock();
        let err = Emulator::start(
            sh("exit 0"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("hath the daemon spawn no fire"));
        // Half an announcement is no announcement.
        let err = Emulator::start(
            sh(r"printf '\001'"),
            DelnumWidth::Two,
            Options::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn silent_spawner_times_out_and_is_killed() {
        let _lock = fork_lock();
        let opts = Options {
            announce_within: Duration::from_millis(100),
            ..Options::default()
        };
        let err = Emulator::start(sh("exec sleep 60"), DelnumWidth::One, opts)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn fd2_is_closed_by_default() {
        let _lock = fork_lock();
        // The shell announces 1 slot if its fd 2 is closed, 2 if open.
        let script = r"if [ -e /proc/$$/fd/2 ]; then printf '\002'; \
                       else printf '\001'; fi; exec cat >/dev/null";
        let emu =
            Emulator::start(sh(script), DelnumWidth::One, Options::default())
                .unwrap();
        assert_eq!(emu.slots(), 1);
        let opts = Options { stderr: Stderr::Inherit, ..Options::default() };
        let emu = Emulator::start(sh(script), DelnumWidth::One, opts).unwrap();
        assert_eq!(emu.slots(), 2);
    }

    #[test]
    fn stderr_to_a_file() {
        let _lock = fork_lock();
        let home = crate::home::QmailHome::new().unwrap();
        let log = home.path().join("log");
        let opts = Options {
            stderr: Stderr::File(log.clone()),
            ..Options::default()
        };
        let mut emu = Emulator::start(
            sh(r"echo hello >&2; printf '\001'; exec cat >/dev/null"),
            DelnumWidth::One,
            opts,
        )
        .unwrap();
        emu.close_commands();
        assert!(emu.wait_exit(secs(10)).unwrap().success());
        assert_eq!(std::fs::read(&log).unwrap(), b"hello\n");
    }

    #[test]
    fn records_for_idle_delnums_and_cut_records() {
        let _lock = fork_lock();
        // Announces 3, answers delnum 1 unasked, then stops mid-record.
        let mut emu = Emulator::start(
            sh(r"printf '\003\001Kok\000\002Zcut'"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap();
        let r = emu.recv(secs(10)).unwrap();
        assert_eq!((r.delnum, r.body.as_slice()), (1, &b"Kok"[..]));
        assert!(emu.recv(secs(10)).is_none());
        assert!(emu.results_closed());
        assert_eq!(
            emu.violations(),
            &[
                "record for idle delnum 1: \"Kok\"".to_string(),
                "result stream ended inside a record".to_string()
            ]
        );
    }

    #[test]
    fn close_results_gives_the_spawner_epipe() {
        let _lock = fork_lock();
        // Announces, waits for a line, then writes a record: with the
        // read end closed that write raises SIGPIPE (default in sh).
        let mut emu = Emulator::start(
            sh(r"printf '\001'; read x; printf '\000Kok\000'; exit 3"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap();
        emu.close_results();
        assert!(emu.results_closed());
        emu.send_raw(b"go\n").unwrap();
        let status = emu.wait_exit(secs(10)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(nix::libc::SIGPIPE), "{status:?}");
        assert!(emu.recv(secs(1)).is_none());
        assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    }

    #[test]
    fn wait_exit_kills_on_timeout() {
        let _lock = fork_lock();
        let mut emu = Emulator::start(
            sh(r"printf '\001'; exec sleep 60"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap();
        let pid = emu.pid();
        assert!(
            emu.wait_exit(deadline_in(Duration::from_millis(50))).is_none()
        );
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn writing_to_a_dead_spawner_fails() {
        let _lock = fork_lock();
        let mut emu = Emulator::start(
            sh(r"printf '\001'"),
            DelnumWidth::One,
            Options::default(),
        )
        .unwrap();
        assert!(emu.wait_exit(secs(10)).is_some());
        let report = emu.run(&deliveries(2), 1, secs(10));
        assert!(!report.is_clean());
        assert!(emu.busy_delnums().is_empty());
    }
}
