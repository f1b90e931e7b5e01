//! One log line per event, in the supervision suites' style:
//! `shardspawn: shard 3: warning: unable to create pipe: Too many open
//! files`. Program and role, severity, what happened, the errno text.
//!
//! Where lines go: fd 2. Under qmail-start fd 2 is closed (Rust reopens
//! it on /dev/null), so with a log directory each process (the supervisor
//! and every shard) starts its own logger, `multilog t DIR/ROLE` or the
//! like, on a pipe that becomes its fd 2: one log directory per shard,
//! read with the usual tools. The process restarts its logger if it dies.
//!
//! Logging never blocks a delivery: fd 2 is non-blocking, a line that
//! does not fit is counted and the count is logged once there is room
//! again, and a line repeated within seconds is counted, and the count
//! written with the next different line.

use std::cell::RefCell;
use std::ffi::{CString, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::spawn;
use crate::sys;

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Routine: start, stop, settings, a restart.
    Info,
    /// Something failed, and a delivery got a `Z` or waits.
    Warning,
    /// The process cannot go on.
    Fatal,
}

/// A logger for one role (`supervisor`, `shard 3`).
#[derive(Clone, Debug)]
pub struct Log {
    role: String,
}

/// The logger process a process writes its fd 2 into: its argv, the
/// log directory last.
struct Channel {
    argv: Vec<CString>,
}

#[derive(Default)]
struct State {
    channel: Option<Channel>,
    /// Lines that found no room in the pipe since the last one that did.
    dropped: u64,
    /// The last line written, when, and how often it came again since.
    last: String,
    last_at: Option<Instant>,
    repeats: u64,
}

/// A line equal to the last one, within this long of it, is counted
/// instead of written.
const REPEAT_WINDOW: Duration = Duration::from_secs(10);

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Starts a logger for this process: `argv` with `dir` appended, reading
/// a pipe that replaces fd 2. `dir` is created if missing. Called once,
/// early, before anything else opens descriptors that matter.
pub fn start_logger(dir: &Path, argv: &[OsString]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    args.push(
        CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    );
    let channel = Channel { argv: args };
    spawn_logger(&channel)?;
    STATE.with(|s| s.borrow_mut().channel = Some(channel));
    Ok(())
}

/// Runs the logger on a new pipe and makes the pipe's write end fd 2.
fn spawn_logger(channel: &Channel) -> io::Result<()> {
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys::io_err)?;
    let null = File::options().write(true).open("/dev/null")?;
    let attr = spawn::Attr::new()?;
    let argv: Vec<&std::ffi::CStr> =
        channel.argv.iter().map(CString::as_c_str).collect();
    // Its output (multilog writes none) goes to /dev/null, never to the
    // pipe it reads.
    spawn::spawn(&attr, &argv, read.as_fd(), null.as_fd())?;
    nix::unistd::dup2_stderr(write.as_fd()).map_err(sys::io_err)?;
    sys::set_nonblocking(io::stderr().as_fd(), true)?;
    Ok(())
}

/// Writes `bytes` to fd 2 without blocking: `Ok(false)` if there was no
/// room, an error if the reader is gone.
fn put(bytes: &[u8]) -> Result<bool, Errno> {
    let stderr = io::stderr();
    let mut at = 0;
    while at < bytes.len() {
        match nix::unistd::write(stderr.as_fd(), &bytes[at..]) {
            Ok(n) => at += n,
            Err(Errno::EINTR) => {}
            // A line cut in half would merge with the next; lines are far
            // below PIPE_BUF, so a pipe takes a whole one or none.
            Err(Errno::EAGAIN) if at == 0 => return Ok(false),
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn emit(state: &mut State, line: &str) {
    for attempt in 0..2 {
        match put(line.as_bytes()) {
            Ok(true) => return,
            Ok(false) => {
                state.dropped += 1;
                return;
            }
            // The logger died: start another once, then give up on this
            // line (fd 2 may simply be closed, with no logger).
            Err(_) if attempt == 0 => match &state.channel {
                Some(channel) if spawn_logger(channel).is_ok() => {}
                _ => return,
            },
            Err(_) => return,
        }
    }
}

/// Writes a process's status files ([`sys::write_atomically`]) into
/// its state directory, once a second, and says so once when that
/// fails: again only after a write has worked in between, so a full
/// disk is one line, not one a second.
#[derive(Debug, Default)]
pub struct StatusWriter {
    failing: bool,
}

impl StatusWriter {
    /// Writes each `(name, bytes)` into `dir`, stopping at the first
    /// failure, which is logged unless the last write failed too.
    pub fn write<'a>(
        &mut self,
        log: &Log,
        dir: &Path,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        let result = files.into_iter().try_for_each(|(name, bytes)| {
            sys::write_atomically(dir, name, bytes)
        });
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                log.warn(format_args!(
                    "unable to write status in {}: {e}",
                    dir.display()
                ));
            }
            Err(_) => {}
        }
    }
}

impl Log {
    /// A logger whose lines say `shardspawn: ROLE: ...`.
    pub fn new(role: impl Into<String>) -> Log {
        Log { role: role.into() }
    }

    /// Writes one line. Failures to log are ignored: a log must never
    /// stop a delivery.
    pub fn line(&self, severity: Severity, what: fmt::Arguments<'_>) {
        let sev = match severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Fatal => "fatal",
        };
        let mut line = format!("shardspawn: {}: {sev}: {what}", self.role);
        line.retain(|c| c != '\n');
        line.push('\n');
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            let recent =
                state.last_at.is_some_and(|at| at.elapsed() < REPEAT_WINDOW);
            if line == state.last && recent {
                state.repeats += 1;
                return;
            }
            if state.repeats > 0 {
                let n = std::mem::take(&mut state.repeats);
                let summary = format!(
                    "shardspawn: {}: info: the last line came {n} more times\n",
                    self.role
                );
                emit(&mut state, &summary);
            }
            if state.dropped > 0 {
                let n = state.dropped;
                let summary = format!(
                    "shardspawn: {}: warning: {n} log lines dropped: the \
                     logger was not keeping up\n",
                    self.role
                );
                state.dropped = 0;
                emit(&mut state, &summary);
                if state.dropped > 0 {
                    // Still no room: keep counting, the summary included.
                    state.dropped = n + 1;
                    return;
                }
            }
            emit(&mut state, &line);
            state.last = line;
            state.last_at = Some(Instant::now());
        });
    }

    /// An info line.
    pub fn info(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Info, what)
    }

    /// A warning line.
    pub fn warn(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Warning, what)
    }

    /// A fatal line.
    pub fn fatal(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Fatal, what)
    }
}

/// The logger to run: the one named, else `multilog t` or `svlogd -tt`
/// if found in PATH.
pub fn choose_logger(named: Option<&[OsString]>) -> Option<Vec<OsString>> {
    if let Some(argv) = named {
        return Some(argv.to_vec());
    }
    let path = std::env::var_os("PATH")?;
    for (prog, flag) in [("multilog", "t"), ("svlogd", "-tt")] {
        if std::env::split_paths(&path).any(|d| d.join(prog).is_file()) {
            return Some(vec![prog.into(), flag.into()]);
        }
    }
    None
}
