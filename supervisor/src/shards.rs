//! A shard process, the OS side: starting one (fork and exec of our own
//! binary, so no state of the supervisor leaks into a shard except the
//! descriptors we wire) and our ends of its two pipes. When to start,
//! restart or give one up is decided in [`crate::core`], never here.
//!
//! A shard's wiring: fd 0 = read end of its job pipe, fd 1 = write end of
//! its result pipe, fd 2 = the supervisor's fd 2 (the log). Everything
//! else the supervisor holds is close-on-exec. A shard is killed by the
//! kernel when the supervisor dies ([`spawn::die_with_parent`]); in a
//! normal shutdown the supervisor reaps every shard before it exits, so
//! that never fires.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use shardspawn_common::frame::FrameDecoder;
use shardspawn_common::shard_config::ShardConfig;
use shardspawn_os::spawn;
use shardspawn_os::sys::{io_err, set_nonblocking};

use crate::core::ShardId;

/// Longest result frame a shard may send (a body is at most 10000
/// bytes; anything longer means the shard is broken).
const MAX_DONE: u32 = 64 * 1024;

/// A running shard process and our ends of its pipes.
#[derive(Debug)]
pub struct Process {
    /// The incarnation it is.
    pub id: ShardId,
    /// Its pid.
    pub pid: Pid,
    /// Write end of its job pipe (non-blocking); `None` once closed for
    /// shutdown.
    pub jobs: Option<OwnedFd>,
    /// Read end of its result pipe (non-blocking).
    pub results: OwnedFd,
    /// Splits its result stream.
    pub decoder: FrameDecoder,
    /// Frames not yet written to its job pipe.
    pub outbox: Vec<u8>,
    /// Is `jobs` watched for room?
    pub jobs_watched: bool,
    /// Close `jobs` once `outbox` is written.
    pub closing: bool,
}

/// Starts incarnation `id` of a shard: fork and exec of our own binary
/// with its pipes wired as the module docs say.
pub fn start(id: ShardId, cfg: &ShardConfig) -> io::Result<Process> {
    let (job_read, job_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    let (res_read, res_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    set_nonblocking(job_write.as_fd(), true)?;
    set_nonblocking(res_read.as_fd(), true)?;
    let cfg = ShardConfig { index: id.index, ..cfg.clone() };
    // /proc/self/exe is this very program even if the file was replaced
    // since (an upgrade in progress): shards always match their
    // supervisor.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("shardspawn")
        .arg("shard")
        .args(cfg.to_args())
        .stdin(Stdio::from(job_read))
        .stdout(Stdio::from(res_write))
        .stderr(Stdio::inherit());
    // With us gone its results reach no one: it dies with us, and its
    // qmail-remotes with it (issue 15).
    spawn::die_with_parent(&mut cmd);
    let child = cmd.spawn()?;
    Ok(Process {
        id,
        pid: Pid::from_raw(child.id() as i32),
        jobs: Some(job_write),
        results: res_read,
        decoder: FrameDecoder::new(MAX_DONE),
        outbox: Vec::new(),
        jobs_watched: false,
        closing: false,
    })
}
