//! The syscalls the supervisor and the shards make, behind small
//! functions with one error convention (`io::Result`, errno kept). No
//! `unsafe` here: nix and std do the raw calls, and [`crate::spawn`] the
//! one nix does not offer. No qmail rule either: what a failure means
//! to qmail-send is decided above this crate.
//!
//! Descriptors are created close-on-exec (std and `pipe2` both do), so a
//! qmail-remote inherits exactly fds 0, 1 and 2 and nothing else.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The mode of every status file: the owner writes it, the group reads
/// it (the group shardspawn runs as, qmail: the admin's way to run
/// `shardspawn status` without root), others nothing. Set on the open
/// file, as qmail-start runs us with umask 077 and the umask would take
/// the group's bit away.
pub const STATUS_MODE: u32 = 0o640;

/// The mode of a state directory shardspawn makes itself: the same
/// readers as its files, and a search bit for the group to reach them.
pub const STATE_DIR_MODE: u32 = 0o750;

/// Temporary names tried before [`write_atomically`] gives up: only a
/// name someone else made is skipped, and each try takes a fresh one.
const TEMPORARY_TRIES: u32 = 100;

/// Temporary status files made by this process so far: part of each
/// unique name.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` as `dir/name`, mode [`STATUS_MODE`], so that a reader
/// sees the old file or the new one, never a part.
///
/// The text goes to a fresh temporary name, `.NAME.PID.N`, made with
/// O_CREAT|O_EXCL|O_NOFOLLOW, and is renamed over `name`. A fixed name
/// (the `NAME.new` of old) opened with create and truncate would follow
/// a symlink planted there and overwrite its target; an exclusive
/// create never opens what is already there, link or file, so a planted
/// name is skipped for the next one, and a rename replaces a link at
/// `name` itself rather than writing through it.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let (temporary, mut file) = create_temporary(dir, name)?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(STATUS_MODE))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temporary, dir.join(name)));
    if written.is_err() {
        // Ours, made above: nobody else's file is removed.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Creates a new, empty, temporary file for `name` in `dir`.
fn create_temporary(
    dir: &Path,
    name: &str,
) -> io::Result<(PathBuf, std::fs::File)> {
    let pid = std::process::id();
    for _ in 0..TEMPORARY_TRIES {
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.{pid}.{n}"));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(STATUS_MODE)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&path);
        match opened {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{TEMPORARY_TRIES} temporary names for {name} already taken"),
    ))
}

/// Whether `name` is one of [`write_atomically`]'s temporary names for
/// a file whose name starts with `prefix`: what a process that died
/// between the create and the rename leaves behind.
pub fn is_temporary(name: &str, prefix: &str) -> bool {
    name.strip_prefix('.').is_some_and(|rest| {
        let mut parts = rest.rsplitn(3, '.');
        let (n, pid) = (parts.next(), parts.next());
        let digits = |s: Option<&str>| {
            s.is_some_and(|s| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
            })
        };
        digits(n)
            && digits(pid)
            && parts.next().is_some_and(|base| base.starts_with(prefix))
    })
}

/// Makes directory `path` if it is missing (and its parents), and gives
/// it `mode` whatever the umask. A directory that exists is left as it
/// is: its owner and mode are for the caller to judge.
pub fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    let made = match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent)?;
            std::fs::DirBuilder::new().mode(mode).create(path)
        }
        Err(e) => Err(e),
    };
    match made {
        Ok(()) => std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(mode),
        ),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
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

    /// A fresh directory for one test, removed when it ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("shardspawn-os-{what}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Issue 15, finding 7: a symlink planted at the name a status file
    /// was written through (`NAME.new`), or at the temporary names this
    /// process would use next, is never written through.
    #[test]
    fn a_link_planted_at_a_status_files_temporary_name_is_not_followed() {
        use std::os::unix::fs::symlink;
        let scratch = Scratch::new("links");
        let dir = scratch.0.join("state");
        std::fs::create_dir(&dir).unwrap();
        let victim = scratch.0.join("victim");
        std::fs::write(&victim, b"precious\n").unwrap();
        symlink(&victim, dir.join("supervisor.new")).unwrap();
        let pid = std::process::id();
        let next = TEMPORARIES.load(Ordering::Relaxed);
        for n in next..next + 8 {
            let name = dir.join(format!(".supervisor.{pid}.{n}"));
            symlink(&victim, name).unwrap();
        }
        for round in 0..3 {
            let text = format!("round {round}\n");
            write_atomically(&dir, "supervisor", text.as_bytes()).unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("supervisor")).unwrap(),
                text
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        // A link at the name itself is replaced, not written through.
        symlink(&victim, dir.join("shard0")).unwrap();
        write_atomically(&dir, "shard0", b"new\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        let meta = std::fs::symlink_metadata(dir.join("shard0")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, STATUS_MODE);
    }

    #[test]
    fn temporary_names_are_told_from_status_files() {
        assert!(is_temporary(".shard3.prom.4242.17", "shard"));
        assert!(is_temporary(".supervisor.1.0", "supervisor"));
        assert!(!is_temporary(".supervisor.1.0", "shard"));
        for name in ["shard3", "shard3.prom", ".shard3", ".shard3.x.1", "."] {
            assert!(!is_temporary(name, "shard"), "{name}");
        }
    }

    #[test]
    fn a_made_directory_has_its_mode_whatever_the_umask() {
        let scratch = Scratch::new("mkdir");
        let dir = scratch.0.join("a/state");
        make_dir(&dir, 0o750).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o750);
        // One that exists is left alone.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .unwrap();
        make_dir(&dir, 0o750).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
