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
