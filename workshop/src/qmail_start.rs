//! A stand-in qmail-start, for the tests that run shardspawn under real
//! supervision (svscan/supervise, runsvdir/runsv): qmail-start and
//! qmail-send for the remote channel only.
//!
//! Like qmail-start it runs `qmail-rspawn` found through PATH, with no
//! arguments, the environment it got, fd 0 a command pipe, fd 1 a result
//! pipe and fd 2 closed; the spawner stays its child, in its process
//! group. Like qmail-send it reads the concurrency announcement, then
//! delivers: each new command on the lowest free delnum, at most
//! min(concurrency, slots) in flight, a new one as soon as a delnum is
//! free. Its fd 1 is the service's log, written in qmail-send's style
//! (`status: local 0/0 remote 12/40`), one line per
//! [`ENV_LOG_EVERY`] results.
//!
//! On SIGTERM (read from a signalfd, in the same `poll` as the results)
//! it does what qmail-send does: starts nothing more, waits for the
//! result of every delivery in flight, closes the command pipe, waits
//! for qmail-rspawn to exit, logs `status: exiting` and exits 0. If the
//! spawner closes fd 1 while it is running, it logs qmail-send's "lost
//! spawn connection" alert and exits 111.
//!
//! The workload ([`Workload::from_env`]): `SHARDSPAWN_HOME` is the qmail
//! home; at start it writes [`ENV_MESSAGES`] messages into its
//! `queue/mess` (the same names and contents at every start, so a
//! restart redelivers the same queue), to [`ENV_DOMAINS`] domains with
//! a Zipf-like spread ([`crate::workload`]). Each recipient carries the
//! stand-in qmail-remote's `sleepN` directive ([`ENV_LATENCY_MS`]): the
//! remote's latency is the only pacing, this program never sleeps. It
//! delivers the queue [`ENV_ROUNDS`] times (0: for ever), then waits.
//! The framing is `SHARDSPAWN_DELNUM_BYTES`, as the spawner is told.
//!
//! The ledger ([`ENV_LEDGER`]) is what a test reads afterwards: one line
//! per command sent and per result received, each starting with this
//! process's pid, so the runs before and after a restart can be told
//! apart; [`Ledger`] parses it and replays each run's books.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use shardspawn_common::command::{Command as Cmd, DelnumWidth};
use shardspawn_common::record::{Record, RecordDecoder};

use crate::home::SPLIT;
use crate::workload;

/// Messages in the queue (default 1000).
pub const ENV_MESSAGES: &str = "FAKE_QMAIL_MESSAGES";
/// Domains they go to (default 20).
pub const ENV_DOMAINS: &str = "FAKE_QMAIL_DOMAINS";
/// Zipf skew of the domains (default 1.0; 0 is uniform).
pub const ENV_SKEW: &str = "FAKE_QMAIL_SKEW";
/// Seed of the domain draw (default 1).
pub const ENV_SEED: &str = "FAKE_QMAIL_SEED";
/// The stand-in qmail-remote's latency per delivery, in ms (default 20).
pub const ENV_LATENCY_MS: &str = "FAKE_QMAIL_LATENCY_MS";
/// qmail-send's `control/concurrencyremote` (default 20, as qmail's).
pub const ENV_CONCURRENCY: &str = "FAKE_QMAIL_CONCURRENCY";
/// Passes over the queue; 0 (the default) is for ever.
pub const ENV_ROUNDS: &str = "FAKE_QMAIL_ROUNDS";
/// A `status:` log line every this many results (default 1000).
pub const ENV_LOG_EVERY: &str = "FAKE_QMAIL_LOG_EVERY";
/// The ledger file, appended to; unset: no ledger.
pub const ENV_LEDGER: &str = "FAKE_QMAIL_LEDGER";

/// The first message number: messages are `N % 23 / N` from here on.
pub const FIRST_MESSAGE: u64 = 500_000;

/// What to deliver and how, from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The qmail home (`SHARDSPAWN_HOME`, default `/var/qmail`).
    pub home: PathBuf,
    /// The framing (`SHARDSPAWN_DELNUM_BYTES`, default 1).
    pub width: DelnumWidth,
    /// Messages in the queue.
    pub messages: usize,
    /// Domains they go to.
    pub domains: usize,
    /// Zipf skew.
    pub skew: f64,
    /// Seed of the domain draw.
    pub seed: u64,
    /// Latency directive per delivery, in ms (0: none).
    pub latency_ms: u64,
    /// Most deliveries in flight (before the slots cap it).
    pub concurrency: usize,
    /// Passes over the queue; 0 is for ever.
    pub rounds: u64,
    /// A `status:` line every this many results.
    pub log_every: u64,
    /// The ledger file.
    pub ledger: Option<PathBuf>,
}

impl Workload {
    /// Reads the workload from `get` (the environment, in [`main`]).
    /// Relative paths are kept as given.
    pub fn from_env(
        get: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Workload, String> {
        let text = |name: &str| -> Result<Option<String>, String> {
            match get(name) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|v| format!("{name}={v:?}: not UTF-8")),
            }
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match text(name)? {
                None => Ok(default),
                Some(v) => {
                    v.parse().map_err(|_| format!("{name}={v}: not a number"))
                }
            }
        };
        let positive = |name: &str, default: u64| -> Result<usize, String> {
            match usize::try_from(number(name, default)?) {
                Ok(0) => Err(format!("{name}=0: must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("{name}: too big")),
            }
        };
        let width = match number("SHARDSPAWN_DELNUM_BYTES", 1)? {
            1 => DelnumWidth::One,
            2 => DelnumWidth::Two,
            n => {
                return Err(format!(
                    "SHARDSPAWN_DELNUM_BYTES={n}: not 1 or 2"
                ));
            }
        };
        let skew = match text(ENV_SKEW)? {
            None => 1.0,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => s,
                _ => return Err(format!("{ENV_SKEW}={v}: not a skew >= 0")),
            },
        };
        Ok(Workload {
            home: get("SHARDSPAWN_HOME")
                .map_or_else(|| PathBuf::from("/var/qmail"), PathBuf::from),
            width,
            messages: positive(ENV_MESSAGES, 1000)?,
            domains: positive(ENV_DOMAINS, 20)?,
            skew,
            seed: number(ENV_SEED, 1)?,
            latency_ms: number(ENV_LATENCY_MS, 20)?,
            concurrency: positive(ENV_CONCURRENCY, 20)?,
            rounds: number(ENV_ROUNDS, 0)?,
            log_every: number(ENV_LOG_EVERY, 1000)?.max(1),
            ledger: get(ENV_LEDGER).map(PathBuf::from),
        })
    }

    /// The queue: one `(messid, recipient)` per message, the same for
    /// the same settings.
    pub fn queue(&self) -> Vec<(String, Vec<u8>)> {
        let local = if self.latency_ms > 0 {
            format!("sleep{}", self.latency_ms)
        } else {
            String::new()
        };
        workload::recipients(
            self.messages,
            self.domains,
            self.skew,
            self.seed,
            &local,
        )
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let n = FIRST_MESSAGE + i as u64;
            (format!("{}/{n}", n % SPLIT), r)
        })
        .collect()
    }

    /// Writes the queue's message files under `home/queue/mess`.
    fn write_queue(&self, queue: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mess = self.home.join("queue/mess");
        for split in 0..SPLIT {
            std::fs::create_dir_all(mess.join(split.to_string()))?;
        }
        for (i, (messid, to)) in queue.iter().enumerate() {
            let body = format!(
                "From: <sender@origin.test>\nTo: <{}>\n\
                 Subject: fake qmail-send message {i}\n\n\
                 Message {i} of {}.\n",
                String::from_utf8_lossy(to),
                queue.len()
            );
            std::fs::write(mess.join(messid), body)?;
        }
        Ok(())
    }
}

/// The stand-in qmail-start's whole life; a bin target is just
/// `fn main() { shardspawn_workshop::qmail_start::main() }`.
pub fn main() -> ! {
    let code = match run() {
        Ok(code) => code,
        Err(why) => {
            println!("alert: shardspawn-fake-qmail-start: {why}");
            111
        }
    };
    std::process::exit(code)
}

fn run() -> Result<i32, String> {
    let work = match Workload::from_env(|k| std::env::var_os(k)) {
        Ok(w) => w,
        Err(why) => {
            println!("alert: shardspawn-fake-qmail-start: bad setting: {why}");
            return Ok(100);
        }
    };
    // Before any child exists: the signal is only ever read from the
    // signalfd. Children start with an empty mask (std resets it).
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&term), None)
        .map_err(|e| format!("unable to block SIGTERM: {e}"))?;
    let signals = SignalFd::with_flags(
        &term,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|e| format!("unable to make a signalfd: {e}"))?;

    let work = Workload {
        home: std::path::absolute(&work.home)
            .map_err(|e| format!("unable to find the home: {e}"))?,
        ledger: work
            .ledger
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| format!("unable to find the ledger: {e}"))?,
        ..work
    };
    let queue = work.queue();
    work.write_queue(&queue).map_err(|e| {
        format!("unable to write the queue in {}: {e}", work.home.display())
    })?;
    let ledger = match &work.ledger {
        None => None,
        Some(path) => Some(BufWriter::new(
            OpenOptions::new().create(true).append(true).open(path).map_err(
                |e| format!("unable to open {}: {e}", path.display()),
            )?,
        )),
    };

    // What qmail-start does before it forks the daemons.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::env::set_current_dir("/")
        .map_err(|e| format!("unable to chdir to /: {e}"))?;

    let mut cmd = Command::new("qmail-rspawn");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    crate::sys::close_stderr_in_child(&mut cmd);
    let mut child =
        cmd.spawn().map_err(|e| format!("unable to run qmail-rspawn: {e}"))?;
    let (Some(stdin), Some(stdout)) =
        (child.stdin.take(), child.stdout.take())
    else {
        unreachable!("both pipes were asked for");
    };
    let mut send = Send {
        next_status: work.log_every,
        work,
        queue,
        ledger,
        pid: std::process::id(),
        child,
        commands: Some(File::from(OwnedFd::from(stdin))),
        results: File::from(OwnedFd::from(stdout)),
        signals,
        free: BTreeSet::new(),
        busy: HashMap::new(),
        limit: 0,
        next: 0,
        sent: 0,
        done: 0,
        letters: [0; 4],
        violations: 0,
        exiting: false,
    };
    Ok(send.serve())
}

/// qmail-send's books for the remote channel.
struct Send {
    work: Workload,
    queue: Vec<(String, Vec<u8>)>,
    ledger: Option<BufWriter<File>>,
    pid: u32,
    child: Child,
    /// `None` once closed.
    commands: Option<File>,
    results: File,
    signals: SignalFd,
    /// Delnums below the limit with nothing in flight.
    free: BTreeSet<u16>,
    /// In flight: delnum -> sequence number of the delivery.
    busy: HashMap<u16, u64>,
    limit: usize,
    /// The sequence number of the next delivery.
    next: u64,
    sent: u64,
    done: u64,
    /// Results by letter: K, Z, D, other.
    letters: [u64; 4],
    /// Records for a delnum that was not in flight.
    violations: u64,
    /// The result count at which to log the next `status:` line.
    next_status: u64,
    exiting: bool,
}

impl Send {
    fn note(&mut self, line: &str) {
        if let Some(ledger) = &mut self.ledger {
            // A ledger that cannot be written is lost, not fatal: the
            // test that reads it will say what is missing.
            let _ = writeln!(ledger, "{} {line}", self.pid);
        }
    }

    fn flush_ledger(&mut self) {
        if let Some(ledger) = &mut self.ledger {
            let _ = ledger.flush();
        }
    }

    fn serve(&mut self) -> i32 {
        let slots = match self.announcement() {
            Ok(slots) => slots,
            Err(why) => {
                println!(
                    "alert: cannot start: hath the daemon spawn no fire?"
                );
                self.note(&format!("nofire {why}"));
                return self.finish(111);
            }
        };
        self.limit = self.work.concurrency.min(usize::from(slots));
        self.free =
            (0..self.limit).filter_map(|d| u16::try_from(d).ok()).collect();
        self.note(&format!(
            "start rspawn={} slots={slots} concurrency={} messages={} \
             domains={} bytes={}",
            self.child.id(),
            self.limit,
            self.work.messages,
            self.work.domains,
            self.work.width.bytes()
        ));
        println!(
            "status: shardspawn-fake-qmail-start pid {}: qmail-rspawn pid {} \
             announced {slots} slots; remote concurrency {}",
            self.pid,
            self.child.id(),
            self.limit
        );
        self.status();
        let mut decoder = RecordDecoder::new(self.work.width);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.start_deliveries();
            if self.exiting && self.busy.is_empty() {
                break;
            }
            self.flush_ledger();
            let mut fds = [
                PollFd::new(self.results.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    println!("alert: unable to poll: {e}");
                    return self.finish(111);
                }
            }
            let (results_ready, signalled) =
                (fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false));
            if signalled {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if info.ssi_signo == Signal::SIGTERM as u32
                        && !self.exiting
                    {
                        self.exiting = true;
                        self.note(&format!("term busy={}", self.busy.len()));
                    }
                }
            }
            if results_ready {
                match self.results.read(&mut buf) {
                    Ok(0) => {
                        println!(
                            "alert: oh no! lost spawn connection! dying..."
                        );
                        self.note(&format!("lost busy={}", self.busy.len()));
                        return self.finish(111);
                    }
                    Ok(n) => self.take(&mut decoder, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        println!("alert: unable to read results: {e}");
                        return self.finish(111);
                    }
                }
            }
        }
        self.status();
        self.finish(0)
    }

    /// Reads the announcement: 1 or 2 bytes, low first.
    fn announcement(&mut self) -> io::Result<u16> {
        let mut bytes = [0u8; 2];
        let need = self.work.width.bytes();
        self.results.read_exact(&mut bytes[..need])?;
        Ok(match self.work.width {
            DelnumWidth::One => u16::from(bytes[0]),
            DelnumWidth::Two => u16::from_le_bytes(bytes),
        })
    }

    /// Sends a command on every free delnum, lowest first, while there
    /// is work and qmail-send is not exiting.
    fn start_deliveries(&mut self) {
        let total = self.work.rounds.saturating_mul(self.queue.len() as u64);
        while !self.exiting && (self.work.rounds == 0 || self.next < total) {
            let Some(delnum) = self.free.pop_first() else { return };
            let seq = self.next;
            let (messid, recipient) =
                &self.queue[(seq % self.queue.len() as u64) as usize];
            let cmd = Cmd {
                delnum,
                messid: messid.clone().into_bytes(),
                sender: workload::SENDER.to_vec(),
                recipient: recipient.clone(),
            };
            let mut bytes = Vec::new();
            cmd.encode(self.work.width, &mut bytes);
            let written = match &mut self.commands {
                Some(pipe) => pipe.write_all(&bytes),
                None => Err(io::ErrorKind::BrokenPipe.into()),
            };
            if let Err(e) = written {
                // The spawner is going away; its EOF on fd 1 ends us.
                self.free.insert(delnum);
                println!("alert: unable to write to qmail-rspawn: {e}");
                self.commands = None;
                self.exiting = true;
                return;
            }
            let line = format!(
                "send {delnum} {seq} {messid} {}",
                String::from_utf8_lossy(recipient)
            );
            self.note(&line);
            self.busy.insert(delnum, seq);
            self.next += 1;
            self.sent += 1;
        }
    }

    /// Books the records in `bytes`.
    fn take(&mut self, decoder: &mut RecordDecoder, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (used, record) = decoder.decode(bytes);
            bytes = &bytes[used..];
            match record {
                Some(record) => self.result(record),
                None if used == 0 => return,
                None => {}
            }
        }
    }

    fn result(&mut self, record: Record) {
        let body = escape(&record.body);
        self.note(&format!("result {} {body}", record.delnum));
        if self.busy.remove(&record.delnum).is_none() {
            // qmail-send: "delivery report out of range".
            self.violations += 1;
            println!(
                "warning: internal error: delivery report out of range \
                 (delnum {})",
                record.delnum
            );
            return;
        }
        self.free.insert(record.delnum);
        self.done += 1;
        let i = match record.body.first() {
            Some(b'K') => 0,
            Some(b'Z') => 1,
            Some(b'D') => 2,
            _ => 3,
        };
        self.letters[i] += 1;
        if self.done == self.next_status {
            self.next_status += self.work.log_every;
            self.status();
        }
    }

    /// qmail-send's status line, with the results so far.
    fn status(&self) {
        let [k, z, d, other] = self.letters;
        println!(
            "status: local 0/0 remote {}/{} ({} results: {k} K, {z} Z, \
             {d} D, {other} other)",
            self.busy.len(),
            self.limit,
            self.done
        );
    }

    /// Closes the command pipe, waits for the spawner to close fd 1 and
    /// exit, writes the summary line, and returns `code`.
    fn finish(&mut self, code: i32) -> i32 {
        self.commands = None;
        // Anything still coming is surplus: nothing is in flight unless
        // the spawner broke down, and then it answers nothing more.
        let mut decoder = RecordDecoder::new(self.work.width);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.results.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.take(&mut decoder, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let status = self.child.wait();
        let spawner = match &status {
            Ok(s) => describe(*s),
            Err(e) => format!("unknown({e})"),
        };
        self.note(&format!(
            "summary sent={} results={} unanswered={} violations={} \
             spawner={spawner}",
            self.sent,
            self.done,
            self.busy.len(),
            self.violations
        ));
        self.flush_ledger();
        println!(
            "status: exiting (sent {}, {} results, {} unanswered; \
             qmail-rspawn {spawner})",
            self.sent,
            self.done,
            self.busy.len()
        );
        code
    }
}

/// `exit0`, `exit111`, `signal9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit{code}"),
        (None, Some(sig)) => format!("signal{sig}"),
        _ => "unknown".to_string(),
    }
}

/// A result body on one ledger line: newlines as `\n`, other bytes
/// outside printable ASCII as `\xHH`, backslash doubled.
pub fn escape(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for &b in body {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// One event of a run, as the ledger says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command was sent on this delnum.
    Send {
        /// Its delnum.
        delnum: u16,
        /// The delivery's sequence number in the run.
        seq: u64,
        /// The recipient.
        recipient: String,
    },
    /// A result was received for this delnum.
    Result {
        /// Its delnum.
        delnum: u16,
        /// Its status letter.
        letter: char,
    },
}

/// What one run (one pid) of the stand-in wrote in the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// The stand-in's pid.
    pub pid: u32,
    /// The spawner's pid, from the `start` line.
    pub rspawn: Option<u32>,
    /// The slots announced, from the `start` line.
    pub slots: Option<u32>,
    /// Commands and results, in order.
    pub events: Vec<Event>,
    /// It got SIGTERM with this many in flight.
    pub term_busy: Option<usize>,
    /// The `summary` line's fields (`sent`, `results`, `unanswered`,
    /// `violations`, `spawner`).
    pub summary: Option<BTreeMap<String, String>>,
    /// Other lines (`lost`, `nofire`), as written.
    pub other: Vec<String>,
}

impl Run {
    /// Commands sent.
    pub fn sent(&self) -> usize {
        self.events.iter().filter(|e| matches!(e, Event::Send { .. })).count()
    }

    /// Results received.
    pub fn results(&self) -> usize {
        self.events.len() - self.sent()
    }

    /// Replays the run's books from its events and its summary; returns
    /// every breach: a command on a delnum in flight, a result for a
    /// delnum not in flight, a command never answered, no summary or a
    /// summary that disagrees or is not clean (spawner `exit0`, nothing
    /// unanswered, no violations). Empty means every command sent got
    /// exactly one result and the run ended cleanly.
    pub fn breaches(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut busy: BTreeMap<u16, u64> = BTreeMap::new();
        for e in &self.events {
            match e {
                Event::Send { delnum, seq, .. } => {
                    if let Some(old) = busy.insert(*delnum, *seq) {
                        out.push(format!(
                            "delivery {seq} sent on delnum {delnum} while \
                             delivery {old} was in flight there"
                        ));
                    }
                }
                Event::Result { delnum, letter } => {
                    if busy.remove(delnum).is_none() {
                        out.push(format!(
                            "result {letter} for delnum {delnum}, which had \
                             nothing in flight"
                        ));
                    }
                }
            }
        }
        for (delnum, seq) in &busy {
            out.push(format!(
                "delivery {seq} (delnum {delnum}) never answered"
            ));
        }
        match &self.summary {
            None => out.push("no summary line".to_string()),
            Some(s) => {
                let want = [
                    ("sent", self.sent().to_string()),
                    ("results", self.results().to_string()),
                    ("unanswered", "0".to_string()),
                    ("violations", "0".to_string()),
                    ("spawner", "exit0".to_string()),
                ];
                for (field, value) in want {
                    if s.get(field) != Some(&value) {
                        out.push(format!(
                            "summary says {field}={:?}, expected {value}",
                            s.get(field)
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A parsed ledger: the runs in the order they started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// One per pid, in order of first appearance.
    pub runs: Vec<Run>,
}

impl Ledger {
    /// Reads the ledger at `path`; a missing file is an empty ledger.
    pub fn read(path: &Path) -> io::Result<Ledger> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Ledger::parse(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Ledger::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Parses ledger text. A last line without its newline is still
    /// being written and is left out; lines that do not parse are kept
    /// in their run's [`Run::other`].
    pub fn parse(bytes: &[u8]) -> Ledger {
        let text = String::from_utf8_lossy(bytes);
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let mut ledger = Ledger::default();
        let mut index: HashMap<u32, usize> = HashMap::new();
        for line in complete.lines() {
            let mut words = line.splitn(3, ' ');
            let (Some(pid), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            let rest = words.next().unwrap_or("");
            let i = *index.entry(pid).or_insert_with(|| {
                ledger.runs.push(Run { pid, ..Run::default() });
                ledger.runs.len() - 1
            });
            let run = &mut ledger.runs[i];
            let fields = |rest: &str| -> BTreeMap<String, String> {
                rest.split(' ')
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            let parsed = match kind {
                "start" => {
                    let f = fields(rest);
                    run.rspawn = f.get("rspawn").and_then(|v| v.parse().ok());
                    run.slots = f.get("slots").and_then(|v| v.parse().ok());
                    true
                }
                "send" => {
                    let w: Vec<&str> = rest.splitn(4, ' ').collect();
                    match (w.first(), w.get(1), w.get(3)) {
                        (Some(d), Some(s), Some(r)) => {
                            match (d.parse(), s.parse()) {
                                (Ok(delnum), Ok(seq)) => {
                                    run.events.push(Event::Send {
                                        delnum,
                                        seq,
                                        recipient: r.to_string(),
                                    });
                                    true
                                }
                                _ => false,
                            }
                        }
                        _ => false,
                    }
                }
                "result" => match rest.split_once(' ') {
                    Some((d, body)) => match d.parse() {
                        Ok(delnum) => {
                            run.events.push(Event::Result {
                                delnum,
                                letter: body.chars().next().unwrap_or('?'),
                            });
                            true
                        }
                        Err(_) => false,
                    },
                    None => false,
                },
                "term" => {
                    run.term_busy =
                        fields(rest).get("busy").and_then(|v| v.parse().ok());
                    true
                }
                "summary" => {
                    run.summary = Some(fields(rest));
                    true
                }
                _ => false,
            };
            if !parsed {
                run.other.push(line.to_string());
            }
        }
        ledger
    }

    /// The run of `pid`.
    pub fn run(&self, pid: u32) -> Option<&Run> {
        self.runs.iter().find(|r| r.pid == pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn workload_defaults_and_errors() {
        let w = Workload::from_env(env(&[])).unwrap();
        assert_eq!(w.home, PathBuf::from("/var/qmail"));
        assert_eq!(w.width, DelnumWidth::One);
        assert_eq!((w.messages, w.domains, w.concurrency), (1000, 20, 20));
        assert_eq!((w.latency_ms, w.rounds, w.log_every), (20, 0, 1000));
        assert!(w.ledger.is_none());
        let w = Workload::from_env(env(&[
            ("SHARDSPAWN_DELNUM_BYTES", "2\n"),
            (ENV_MESSAGES, "5"),
            (ENV_LATENCY_MS, "0"),
        ]))
        .unwrap();
        assert_eq!(w.width, DelnumWidth::Two);
        let q = w.queue();
        assert_eq!(q.len(), 5);
        assert_eq!(q[0].0, format!("{}/{FIRST_MESSAGE}", FIRST_MESSAGE % 23));
        assert!(!q[0].1.contains(&b'+'));
        let q =
            Workload::from_env(env(&[(ENV_MESSAGES, "2")])).unwrap().queue();
        assert!(q[1].1.starts_with(b"user1+sleep20@d"), "{:?}", q[1]);
        for bad in [
            (ENV_MESSAGES, "0"),
            (ENV_CONCURRENCY, "x"),
            (ENV_SKEW, "-1"),
            ("SHARDSPAWN_DELNUM_BYTES", "3"),
        ] {
            assert!(Workload::from_env(env(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_stay_on_one_line() {
        assert_eq!(
            escape(b"Kok\nsaid: 250 \\ \x01"),
            "Kok\\nsaid: 250 \\\\ \\x01"
        );
    }

    #[test]
    fn ledger_replay() {
        let text = "\
7 start rspawn=8 slots=300 concurrency=2 messages=3 domains=1 bytes=2
7 send 0 0 1/500000 user0@d1.test
7 send 1 1 2/500001 user1@d1.test
7 result 1 Kd1.test accepted message.\\nRemote host said: 250 ok\\n
7 send 1 2 3/500002 user2@d1.test
7 term busy=2
7 result 0 Zno
7 result 1 Kyes
7 summary sent=3 results=3 unanswered=0 violations=0 spawner=exit0
9 start rspawn=10 slots=300 concurrency=2 messages=3 domains=1 bytes=2
9 send 0 0 1/500000 user0@d1.test
9 result 0 Kyes
9 result 0 Kagain
9 send 0 1 2/500001 user1@d1.test
9 send 0 2 3/500002 user2@d1.test
9 summary sent=3 results=2 unanswered=1 violations=1 spawner=signal9
9 half a li";
        let ledger = Ledger::parse(text.as_bytes());
        assert_eq!(ledger.runs.len(), 2);
        let a = ledger.run(7).unwrap();
        assert_eq!(
            (a.rspawn, a.slots, a.term_busy),
            (Some(8), Some(300), Some(2))
        );
        assert_eq!((a.sent(), a.results()), (3, 3));
        assert_eq!(a.breaches(), Vec::<String>::new());
        let b = ledger.run(9).unwrap();
        let breaches = b.breaches();
        assert!(
            breaches.iter().any(|x| x.contains("nothing in flight")),
            "{breaches:?}"
        );
        assert!(breaches.iter().any(|x| x.contains("while delivery 1")));
        assert!(breaches.iter().any(|x| x.contains("never answered")));
        assert!(breaches.iter().any(|x| x.contains("spawner")));
        assert!(b.other.is_empty(), "{:?}", b.other);
    }
}
