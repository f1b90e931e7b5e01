//! Starting qmail-remote with `posix_spawn`: the one module of the
//! spawner with `unsafe`, each block with its argument.
//!
//! Why not `std::process::Command`: its child keeps the parent's signal
//! mask (a shard blocks SIGCHLD for its signalfd, and the supervisor's
//! SIGHUP is inherited too), it cannot close descriptors the shard
//! inherited without close-on-exec, and it allocates more per spawn than
//! we need. Here the child gets an empty signal mask, SIGPIPE at its
//! default, fds 0, 1, 2 as given and every other descriptor closed.
//! glibc's `posix_spawn` uses `clone(CLONE_VM | CLONE_VFORK)`, so the
//! cost of a start does not grow with the shard's memory, and it reports
//! a failed exec as its return value (glibc >= 2.24), which is how we
//! tell exit 100 from exit 111 the way stock's child would.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;

use nix::libc;
use nix::unistd::Pid;

/// Turns a `posix_spawn*` return value (0 or an errno) into a result.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) }
}

/// The attributes every child gets: an empty signal mask and SIGPIPE
/// at its default action. Made once per shard.
pub struct Attr {
    // Boxed so its address never changes once initialised.
    attr: Box<libc::posix_spawnattr_t>,
}

impl Attr {
    /// Builds the attributes.
    pub fn new() -> io::Result<Attr> {
        let mut raw =
            Box::new(MaybeUninit::<libc::posix_spawnattr_t>::uninit());
        // SAFETY: posix_spawnattr_init initialises the object it is given;
        // the pointer is valid and exclusively ours.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised just above; MaybeUninit<T> has T's layout.
        let attr = unsafe {
            Box::from_raw(Box::into_raw(raw).cast::<libc::posix_spawnattr_t>())
        };
        let attr = Attr { attr };
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        let mut default = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset/sigaddset initialise and fill the sets they
        // are given; the set functions of the attribute copy them; the
        // attribute was initialised above. All pointers are valid.
        unsafe {
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigemptyset(default.as_mut_ptr());
            libc::sigaddset(default.as_mut_ptr(), libc::SIGPIPE);
            let a = attr.ptr();
            check(libc::posix_spawnattr_setsigmask(a, empty.as_ptr()))?;
            check(libc::posix_spawnattr_setsigdefault(a, default.as_ptr()))?;
            let flags =
                libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(a, flags as libc::c_short))?;
        }
        Ok(attr)
    }

    fn ptr(&self) -> *mut libc::posix_spawnattr_t {
        ptr::from_ref(&*self.attr).cast_mut()
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe {
            libc::posix_spawnattr_destroy(self.ptr());
        }
    }
}

/// File actions for one child, destroyed when dropped.
struct Actions(Box<libc::posix_spawn_file_actions_t>);

impl Actions {
    fn new() -> io::Result<Actions> {
        let mut raw = Box::new(
            MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit(),
        );
        // SAFETY: init initialises the object it is given.
        check(unsafe {
            libc::posix_spawn_file_actions_init(raw.as_mut_ptr())
        })?;
        // SAFETY: initialised just above.
        Ok(Actions(unsafe {
            Box::from_raw(
                Box::into_raw(raw).cast::<libc::posix_spawn_file_actions_t>(),
            )
        }))
    }

    fn ptr(&mut self) -> *mut libc::posix_spawn_file_actions_t {
        &mut *self.0
    }
}

impl Drop for Actions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe {
            libc::posix_spawn_file_actions_destroy(self.ptr());
        }
    }
}

/// Runs `argv[0]` (through PATH unless it has a '/') with `argv`, the
/// process environment, fd 0 = `stdin`, fds 1 and 2 = `out`, and no
/// other descriptor. `stdin` and `out` must be above 2 (a shard's
/// fds 0-2 are its own stdio, so anything it opens is).
pub fn spawn(
    attr: &Attr,
    argv: &[&CStr],
    stdin: BorrowedFd<'_>,
    out: BorrowedFd<'_>,
) -> io::Result<Pid> {
    debug_assert!(stdin.as_raw_fd() > 2 && out.as_raw_fd() > 2);
    let mut ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    ptrs.push(ptr::null_mut());
    let mut actions = Actions::new()?;
    let a = actions.ptr();
    // SAFETY: `a` is an initialised file-actions object; the fds are
    // plain integers here, used by the child.
    unsafe {
        check(libc::posix_spawn_file_actions_adddup2(
            a,
            stdin.as_raw_fd(),
            0,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(a, out.as_raw_fd(), 1))?;
        check(libc::posix_spawn_file_actions_adddup2(a, out.as_raw_fd(), 2))?;
        check(libc::posix_spawn_file_actions_addclosefrom_np(a, 3))?;
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: `ptrs` is a
    // NULL-terminated array of NUL-terminated strings that outlive it;
    // `environ` is the process environment, which this single-threaded
    // program never changes, so nothing writes it during the call.
    let r = unsafe {
        libc::posix_spawnp(
            &mut pid,
            ptrs[0],
            a,
            attr.ptr(),
            ptrs.as_ptr(),
            libc::environ.cast_const(),
        )
    };
    check(r)?;
    Ok(Pid::from_raw(pid))
}

/// The descriptor a child's fd 0 is staged at before the clone.
const STAGE_IN: libc::c_int = 3;
/// The descriptor a child's fds 1 and 2 are staged at.
const STAGE_OUT: libc::c_int = 4;

/// Starts qmail-remote at a cost that does not grow with the number of
/// deliveries running.
///
/// `posix_spawn` clones the shard's whole descriptor table and then
/// closes it in the child: with one pipe per running delivery, that is
/// O(running) per start, measured at 67 µs of shard CPU with nothing
/// open, 197 µs with 10,000 descriptors and 417 µs with 18,000 (and the
/// shard is frozen meanwhile, since the child shares its memory). Here
/// the child shares the table for an instant instead (`CLONE_FILES`):
/// the shard stages the message at fd 3 and the pipe at fd 4, and the
/// child's first act is `close_range(5, ~0, CLOSE_RANGE_UNSHARE)`, which
/// gives it a private table holding only fds 0–4, copied in constant
/// time. It then moves 3 and 4 onto 0, 1, 2, resets its signal mask and
/// SIGPIPE, and execs.
///
/// Fds 3 and 4 are ours for this: [`Spawner::new`] takes them (over
/// whatever was there) and must run before the shard opens anything
/// else.
pub struct Spawner {
    /// Where fds 3 and 4 point between starts.
    devnull: std::os::fd::OwnedFd,
    /// The child's stack until it execs (the shard is suspended until
    /// then: `CLONE_VFORK`).
    stack: Vec<u8>,
    /// The program as found in PATH, cached; looked up again if it
    /// disappears.
    path: Option<std::ffi::CString>,
    program: std::ffi::CString,
}

/// What the child reads and writes, in the shard's memory.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
    /// Set by the child to the errno of whatever failed before exec.
    err: libc::c_int,
}

/// The child between clone and exec. It runs on [`Spawner::stack`] in
/// the shard's memory, so it only makes raw system calls: no
/// allocation, no lock, no Rust runtime.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the shard passed to clone; the
    // shard is suspended (CLONE_VFORK) until we exec or exit, so it stays
    // valid and nobody else touches it. Every call below is a plain
    // system call wrapper, async-signal-safe.
    unsafe {
        let args = &mut *arg.cast::<ChildArgs>();
        let fail = |args: &mut ChildArgs| -> ! {
            args.err = *libc::__errno_location();
            libc::_exit(127)
        };
        if libc::close_range(
            5,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE as i32,
        ) != 0
        {
            fail(args);
        }
        if libc::dup2(STAGE_IN, 0) < 0
            || libc::dup2(STAGE_OUT, 1) < 0
            || libc::dup2(STAGE_OUT, 2) < 0
        {
            fail(args);
        }
        libc::close(STAGE_IN);
        libc::close(STAGE_OUT);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), ptr::null_mut());
        libc::execve(args.path, args.argv.cast(), args.envp.cast());
        fail(args)
    }
}

impl Spawner {
    /// Takes fds 3 and 4 and readies a stack. `program` is run through
    /// PATH unless it holds a '/'.
    pub fn new(program: std::ffi::CString) -> io::Result<Spawner> {
        use std::os::fd::FromRawFd;
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // The spare copy lives above the staging numbers; `null` itself
        // may well be fd 3 or 4, so it is closed before they are taken.
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor nothing else
        // owns.
        let devnull = unsafe {
            let fd = libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 5);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            std::os::fd::OwnedFd::from_raw_fd(fd)
        };
        drop(null);
        for fd in [STAGE_IN, STAGE_OUT] {
            // SAFETY: dup2 onto a fixed number; anything that was there
            // (an fd inherited by accident) is closed by it, which is the
            // point: these two numbers are ours from now on.
            if unsafe { libc::dup2(devnull.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Spawner { devnull, stack: vec![0; 64 * 1024], path: None, program })
    }

    /// The program's path: as given if it holds a '/', else the first
    /// executable file of that name in PATH (None if there is none, so
    /// the exec fails with ENOENT, as execvp's would).
    fn resolve(&mut self) -> std::ffi::CString {
        if let Some(p) = &self.path {
            return p.clone();
        }
        let name = self.program.as_bytes();
        let found = if name.contains(&b'/') {
            Some(self.program.clone())
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path).find_map(|dir| {
                    let full = dir.join(std::ffi::OsStr::from_bytes(name));
                    let c =
                        std::ffi::CString::new(full.as_os_str().as_bytes())
                            .ok()?;
                    // SAFETY: a NUL-terminated path.
                    let ok =
                        unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
                    (ok && full.is_file()).then_some(c)
                })
            })
        };
        let path = found.unwrap_or_else(|| self.program.clone());
        self.path = Some(path.clone());
        path
    }

    /// Runs the program with `argv` (argv\[0\] included), fd 0 =
    /// `stdin`, fds 1 and 2 = `out`, nothing else open, the process
    /// environment, an empty signal mask and SIGPIPE at default.
    pub fn spawn(
        &mut self,
        argv: &[&CStr],
        stdin: BorrowedFd<'_>,
        out: BorrowedFd<'_>,
    ) -> io::Result<Pid> {
        let path = self.resolve();
        let result = self.clone_child(&path, argv, stdin, out);
        if let Err(e) = &result
            && e.raw_os_error() == Some(libc::ENOENT)
        {
            // Gone since we looked (or never there): look again next time.
            self.path = None;
        }
        result
    }

    fn clone_child(
        &mut self,
        path: &CStr,
        argv: &[&CStr],
        stdin: BorrowedFd<'_>,
        out: BorrowedFd<'_>,
    ) -> io::Result<Pid> {
        let mut ptrs: Vec<*mut libc::c_char> =
            argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        ptrs.push(ptr::null_mut());
        let mut args = ChildArgs {
            path: path.as_ptr(),
            argv: ptrs.as_ptr(),
            // SAFETY: read of the process environment pointer; this
            // single-threaded program never changes the environment.
            envp: unsafe { libc::environ.cast_const() },
            err: 0,
        };
        // Stage the child's descriptors at 3 and 4.
        // SAFETY: dup2 onto our own reserved numbers.
        unsafe {
            if libc::dup2(stdin.as_raw_fd(), STAGE_IN) < 0
                || libc::dup2(out.as_raw_fd(), STAGE_OUT) < 0
            {
                let e = io::Error::last_os_error();
                self.unstage();
                return Err(e);
            }
        }
        // The stack grows down on every Linux target we build for; keep
        // the top 16-byte aligned.
        let top = {
            let end = self.stack.as_mut_ptr_range().end as usize;
            (end & !15) as *mut libc::c_void
        };
        // SAFETY: `child` runs on `self.stack` (ours, unused while the
        // shard is suspended by CLONE_VFORK) with `args`, which outlives
        // the call; CLONE_VM shares our memory only until the child
        // execs or exits, and it touches nothing but `args`. SIGCHLD is
        // the exit signal, as for any child, so the shard's signalfd
        // sees its end.
        let pid = unsafe {
            libc::clone(
                child,
                top,
                libc::CLONE_VM
                    | libc::CLONE_VFORK
                    | libc::CLONE_FILES
                    | libc::SIGCHLD,
                (&raw mut args).cast(),
            )
        };
        let clone_err = io::Error::last_os_error();
        self.unstage();
        if pid < 0 {
            return Err(clone_err);
        }
        let pid = Pid::from_raw(pid);
        if args.err != 0 {
            // It exited 127 before exec: reap it now, so the shard's own
            // reaping never sees a pid it did not start.
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(io::Error::from_raw_os_error(args.err));
        }
        Ok(pid)
    }

    /// Points fds 3 and 4 back at /dev/null, so the shard holds no
    /// reference to the last child's message or pipe (the pipe's EOF
    /// depends on it).
    fn unstage(&self) {
        for fd in [STAGE_IN, STAGE_OUT] {
            // SAFETY: dup2 onto our own reserved numbers.
            unsafe {
                libc::dup2(self.devnull.as_raw_fd(), fd);
            }
        }
    }
}
