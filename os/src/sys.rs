//! The syscalls the supervisor and the shards make, behind small
//! functions with one error convention (`io::Result`, errno kept). No
//! `unsafe` here: nix and std do the raw calls, and [`crate::spawn`] the
//! one nix does not offer. No qmail rule either: what a failure means
//! to qmail-send is decided above this crate.
//!
//! Descriptors are created close-on-exec (std and `pipe2` both do), so a
//! qmail-remote inherits exactly fds 0, 1 and 2 and nothing else.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use shardspawn_common::report::ChildEnd;

/// Converts a nix error into an `io::Error` with the same errno.
pub fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Sets or clears O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io_err)?;
    let mut flags = OFlag::from_bits_retain(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io_err)?;
    Ok(())
}

/// A pipe whose read end is non-blocking (the shard's) and whose write
/// end is blocking (the child's stdout must block as with stock); both
/// close-on-exec.
pub fn child_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    // A fresh read end has no status flag set (O_RDONLY is the access
    // mode, which F_SETFL leaves alone): set O_NONBLOCK without reading
    // the flags first.
    fcntl(read.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(io_err)?;
    Ok((read, write))
}

/// Reads into `buf`: `Ok(Some(n))` with n > 0, `Ok(None)` at EOF, or
/// `Err` (WouldBlock when drained).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Writes what it can of `buf`; `Ok(0)` when the pipe is full.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::write(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// Blocks `signals` for the process and returns a non-blocking
/// signalfd that reports them.
pub fn signal_fd(signals: &[Signal]) -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(io_err)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io_err)
}

/// Empties a signalfd; returns the signals read.
pub fn drain_signals(sfd: &SignalFd) -> Vec<i32> {
    let mut got = Vec::new();
    while let Ok(Some(info)) = sfd.read_signal() {
        got.push(info.ssi_signo as i32);
    }
    got
}

/// What [`reap_pid`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reaped {
    /// It had ended, and is reaped now.
    Ended(ChildEnd),
    /// It runs yet.
    Running,
    /// It is not a child of ours (any more).
    Gone,
}

/// Reaps `pid` if it has ended, without blocking. The kernel finds a
/// given pid directly, where [`reap`] looks at every child in turn: with
/// 10,000 running, that was most of a shard's CPU.
pub fn reap_pid(pid: Pid) -> Reaped {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Reaped::Ended(ChildEnd::Exited(code as u8));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Reaped::Ended(ChildEnd::Signaled(sig as i32));
            }
            Ok(_) => return Reaped::Running,
            Err(Errno::EINTR) => continue,
            Err(_) => return Reaped::Gone,
        }
    }
}

/// Reaps one exited child without blocking: `None` when none is left to
/// reap now. The kernel looks at every child for it: O(children).
pub fn reap() -> Option<(Pid, ChildEnd)> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                return Some((pid, ChildEnd::Exited(code as u8)));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Some((pid, ChildEnd::Signaled(sig as i32)));
            }
            Ok(WaitStatus::StillAlive) => return None,
            // Stopped/continued children are not ends.
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return None, // ECHILD: nobody left.
        }
    }
}

/// Bits of a generation that a [`Token`] keeps: a loop's generations
/// must wrap within them, or an event could be taken for a later owner's.
pub const TOKEN_GENERATION_BITS: u32 = 30;

const GENERATION_MASK: u64 = (1 << TOKEN_GENERATION_BITS) - 1;

/// What an epoll registration carries in its 64 bits of data: which of
/// a loop's few kinds of descriptor it is (2 bits), the generation of
/// what owns it (30 bits), and that owner's index (32 bits). A loop
/// compares the generation with its own, so an event for a descriptor
/// whose owner was replaced after the wait returned is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Which kind of descriptor, below 4.
    pub kind: u8,
    /// The owner's generation; only its low [`TOKEN_GENERATION_BITS`]
    /// are kept.
    pub generation: u32,
    /// The owner's index.
    pub index: u32,
}

impl Token {
    /// The 64 bits epoll keeps.
    pub fn pack(self) -> u64 {
        debug_assert!(self.kind < 4, "a token kind is 2 bits");
        u64::from(self.kind) << 62
            | (u64::from(self.generation) & GENERATION_MASK) << 32
            | u64::from(self.index)
    }

    /// The token [`Token::pack`] made.
    pub fn unpack(data: u64) -> Token {
        Token {
            kind: (data >> 62) as u8,
            generation: ((data >> 32) & GENERATION_MASK) as u32,
            index: data as u32,
        }
    }
}

/// An epoll instance and its event buffer.
pub struct Poller {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    ready: usize,
}

/// What to wait for on a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Readable (or hung up).
    Read,
    /// Writable.
    Write,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        match self {
            Interest::Read => EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
            Interest::Write => EpollFlags::EPOLLOUT,
        }
    }
}

impl Poller {
    /// A new epoll with room for `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<Poller> {
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io_err)?;
        Ok(Poller {
            epoll,
            events: vec![EpollEvent::empty(); capacity],
            ready: 0,
        })
    }

    /// Watches `fd` (level-triggered) with `token`.
    pub fn add(
        &self,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(interest.flags(), token))
            .map_err(io_err)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.delete(fd).map_err(io_err)
    }

    /// Waits until something is ready or `deadline` passes (never
    /// returning before it: the timeout is rounded up to the next
    /// millisecond). EINTR counts as a wake-up with nothing ready.
    pub fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let timeout = match deadline {
            None => nix::sys::epoll::EpollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                let ms =
                    left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
                nix::sys::epoll::EpollTimeout::try_from(Duration::from_millis(
                    ms as u64,
                ))
                .unwrap_or(nix::sys::epoll::EpollTimeout::MAX)
            }
        };
        self.ready = match self.epoll.wait(&mut self.events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(io_err(e)),
        };
        Ok(())
    }

    /// The tokens of the last wait.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.events[..self.ready].iter().map(|e| e.data())
    }
}

/// Writes `dir/name.new` and renames it to `dir/name`, so that a reader
/// sees the old file or the new one, never a part.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let new = dir.join(format!("{name}.new"));
    std::fs::write(&new, bytes)?;
    std::fs::rename(&new, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_back_as_it_went_in() {
        let top = (1 << TOKEN_GENERATION_BITS) - 1;
        for (kind, generation, index) in
            [(0, 0, 0), (3, top, u32::MAX), (2, 12_345, 7), (1, 1, 1 << 31)]
        {
            let t = Token { kind, generation, index };
            assert_eq!(Token::unpack(t.pack()), t);
        }
        // Past its bits a generation wraps, as the loops' own do.
        let t = Token { kind: 1, generation: top + 1, index: 5 };
        assert_eq!(Token::unpack(t.pack()).generation, 0);
    }
}
