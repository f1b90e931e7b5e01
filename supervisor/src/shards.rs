//! The supervisor's view of its shards: starting one (fork and exec of
//! our own binary, so no state of the supervisor leaks into a shard
//! except the descriptors we wire), its two pipes, and its restarts.
//!
//! A shard's wiring: fd 0 = read end of its job pipe, fd 1 = write end of
//! its result pipe, fd 2 = the supervisor's fd 2 (the log). Everything
//! else the supervisor holds is close-on-exec.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use shardspawn_common::frame::FrameDecoder;
use shardspawn_common::shard_config::ShardConfig;
use shardspawn_os::sys::{io_err, set_nonblocking};

/// Longest result frame a shard may send (a body is at most 10000
/// bytes; anything longer means the shard is broken).
const MAX_DONE: u32 = 64 * 1024;

/// A shard that died this soon after its start is restarted after a
/// growing pause.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A running shard process and our ends of its pipes.
#[derive(Debug)]
pub struct Live {
    /// Its pid.
    pub pid: Pid,
    /// Write end of its job pipe (non-blocking); `None` once closed for
    /// shutdown.
    pub jobs: Option<OwnedFd>,
    /// Read end of its result pipe (non-blocking).
    pub results: OwnedFd,
    /// Splits its result stream.
    pub decoder: FrameDecoder,
    /// Is `jobs` watched for room?
    pub jobs_watched: bool,
    /// When it started.
    pub started: Instant,
    /// Already reaped (SIGCHLD came before its pipe's EOF): its pid may
    /// belong to another process by now.
    pub reaped: bool,
}

/// One shard slot of the supervisor.
#[derive(Debug)]
pub struct Shard {
    /// Its index.
    pub index: u16,
    /// Bumped at every start, so epoll events of a dead incarnation are
    /// ignored.
    pub generation: u32,
    /// Running, or `None` while down.
    pub live: Option<Live>,
    /// Job frames not yet written to it (kept across a restart).
    pub outbox: Vec<u8>,
    /// Delnums it holds (sent or queued, not yet answered).
    pub in_flight: u32,
    /// When to start it again, while down.
    pub restart_at: Option<Instant>,
    /// The pause before the next restart, if it dies young.
    pub backoff: Duration,
    /// Restarts so far.
    pub restarts: u32,
}

impl Shard {
    /// A shard not yet started.
    pub fn new(index: u16) -> Shard {
        Shard {
            index,
            generation: 0,
            live: None,
            outbox: Vec::new(),
            in_flight: 0,
            restart_at: None,
            backoff: Duration::ZERO,
            restarts: 0,
        }
    }

    /// Starts the shard process.
    pub fn start(&mut self, cfg: &ShardConfig) -> io::Result<()> {
        let (job_read, job_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
        let (res_read, res_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
        set_nonblocking(job_write.as_fd(), true)?;
        set_nonblocking(res_read.as_fd(), true)?;
        let cfg = ShardConfig { index: self.index, ..cfg.clone() };
        // /proc/self/exe is this very program even if the file was
        // replaced since (an upgrade in progress): shards always match
        // their supervisor.
        let child = Command::new("/proc/self/exe")
            .arg0("shardspawn")
            .arg("shard")
            .args(cfg.to_args())
            .stdin(Stdio::from(job_read))
            .stdout(Stdio::from(res_write))
            .stderr(Stdio::inherit())
            .spawn()?;
        self.generation = self.generation.wrapping_add(1);
        self.live = Some(Live {
            pid: Pid::from_raw(child.id() as i32),
            jobs: Some(job_write),
            results: res_read,
            decoder: FrameDecoder::new(MAX_DONE),
            jobs_watched: false,
            started: Instant::now(),
            reaped: false,
        });
        self.restart_at = None;
        Ok(())
    }

    /// Marks the shard down at `now` and chooses when to start it again:
    /// at once if it had run a while, else after a pause that doubles up
    /// to five seconds.
    pub fn went_down(&mut self, now: Instant) {
        let started = self.live.take().map(|l| l.started);
        // A start that failed counts as young: never retry in a tight
        // loop.
        let young =
            started.is_none_or(|s| now.duration_since(s) < STABLE_AFTER);
        self.backoff = if young {
            (self.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX)
        } else {
            Duration::ZERO
        };
        self.restart_at = Some(now + self.backoff);
    }
}
