//! Starting a child (qmail-remote, a logger): the one module with `unsafe`,
//! each block with its argument.
//!
//! Why not `std::process::Command`: its child keeps the parent's signal
//! mask (a shard blocks SIGCHLD for its signalfd, and the supervisor's
//! SIGHUP is inherited too), it cannot close descriptors the shard
//! inherited without close-on-exec, and it allocates more per spawn than
//! we need. Here the child gets an empty signal mask, SIGPIPE at its
//! default, fds 0, 1, 2 as given and every other descriptor closed, and a
//! failed exec is told apart from qmail-remote's own exit, so that it is
//! answered as stock's child would (exit 111 or 100).
//!
//! Two ways: [`Spawner`], the shard's (a clone that shares memory and
//! descriptors until the child execs, without waiting for the exec), and
//! [`spawn`], glibc's `posix_spawn`, kept for the benchmark's comparison
//! and used for the loggers.
//!
//! Who dies with whom (issue 15): a qmail-remote dies with its shard, and
//! a shard with its supervisor ([`die_with_parent`]), both by SIGKILL
//! from the kernel (`PR_SET_PDEATHSIG`), so a delivery whose true result
//! can no longer reach qmail-send (the shard's was answered `Z`, or the
//! supervisor is gone) neither starts nor goes on; qmail-send runs it
//! again. A logger does not: it reads its pipe to EOF, which comes
//! when the last writer is gone, so the last lines of a process that
//! died, the ones that say why, are written; killed with its parent it
//! would lose them, and it delivers nothing twice.

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

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

/// Makes the child that `cmd` starts die by SIGKILL when this process
/// does: the supervisor's shards (issue 15).
///
/// A shard whose supervisor is gone can send no result anywhere, and
/// qmail-send (which exits when its spawner goes) runs again, after its
/// restart, every delivery it heard nothing of: a delivery the shard
/// started or finished from then on would be made twice. The kernel
/// kills the shard at the supervisor's exit, before the shard's loop can
/// start one more child, and its qmail-remotes die with it ([`Spawner`]).
/// Watching for the death instead (an EPOLLERR on the result pipe, a
/// pidfd) is seen only at the loop's next wait, after a batch of starts,
/// and letting running deliveries finish would keep the duplicates.
///
/// The signal follows the *thread* that started the child: shards must
/// be started by a thread that lives as long as the process, as the
/// supervisor's one thread does. The code runs between fork and exec:
/// two system calls, no allocation.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and is
    // async-signal-safe: prctl and getppid are plain system calls, and
    // an `io::Error` from an errno allocates nothing. It touches no
    // lock and no memory but its captured pid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A parent that died before the prctl sends no signal: we
            // were given to another. Checked after it, so that no death
            // falls between the two.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// How [`Spawner::spawn`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Once the child has exec'd (or failed to): the vfork way, and
    /// `posix_spawn`'s. A failed exec is the start's error.
    WaitForExec,
    /// Once the child is cloned: up to [`PADS`] children exec at once
    /// while the caller goes on, and a failed exec is learnt when the
    /// child is reaped ([`Spawner::exec_failure`]). On targets without
    /// raw system calls here, this is [`Mode::WaitForExec`].
    Overlap,
}

/// Children that may be between clone and exec at once, each with its
/// own stack and staged descriptors. On 2 cores saturated by execs, 8
/// took less of a shard's CPU at 100 in flight (fewer passes find every
/// pad taken) but more at 10,000, with hundreds of stand-ins loading at
/// once, and longer exit→result; with a real qmail-remote, which waits
/// on the network, they are rarely all taken.
pub const PADS: usize = 4;

/// The first staged descriptor: pad `i` stages its child's fd 0 at
/// `STAGE + 2i` and its fds 1 and 2 at `STAGE + 2i + 1`.
const STAGE: libc::c_int = 3;

/// Where a child's `close_range` starts: every staged descriptor is
/// below it.
const ABOVE_STAGE: libc::c_int = STAGE + 2 * PADS as libc::c_int;

/// A child's stack until it execs: it makes a handful of raw system
/// calls and nothing else.
const STACK: usize = 16 * 1024;

/// Whether this target has the raw system calls a child that runs
/// beside the shard needs (see [`raw`]).
const CAN_OVERLAP: bool =
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// System calls for the child between clone and exec. It shares the
/// shard's memory, thread-local storage included, and with
/// [`Mode::Overlap`] the shard runs meanwhile: libc's wrappers would
/// write a failure into the shard's `errno` under its feet. These
/// return `-errno` and write nothing.
mod raw {
    use nix::libc;

    /// `syscall(n, a, b, c, d)`.
    ///
    /// # Safety
    /// As the system call `n` with those arguments.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(
        n: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: the x86_64 system call convention: number in rax,
        // arguments in rdi, rsi, rdx, r10; the kernel clobbers rcx and
        // r11 and returns in rax. No stack is used.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(n, a, b, c, d)`.
    ///
    /// # Safety
    /// As the system call `n` with those arguments.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(
        n: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        let ret: isize;
        // SAFETY: the aarch64 system call convention: number in x8,
        // arguments in x0-x3, result in x0. No stack is used.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a as isize => ret,
                in("x1") b,
                in("x2") c,
                in("x3") d,
                options(nostack),
            );
        }
        ret
    }

    /// `syscall(n, a, b, c, d)` through libc, which sets `errno`: used
    /// only where every start waits for exec, so the shard is suspended
    /// while its child runs ([`super::CAN_OVERLAP`]).
    ///
    /// # Safety
    /// As the system call `n` with those arguments.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub unsafe fn call(
        n: libc::c_long,
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    ) -> isize {
        // SAFETY: as the caller's.
        unsafe {
            let r = libc::syscall(n, a, b, c, d);
            if r < 0 {
                -(*libc::__errno_location() as isize)
            } else {
                r as isize
            }
        }
    }
}

/// What a child reads between clone and exec. The shard writes it only
/// while the pad is free, the child only reads it.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Where its fd 0 and its fds 1 and 2 are staged.
    stdin: libc::c_int,
    out: libc::c_int,
    /// The shard's pid: the child's parent, unless the shard has died.
    parent: libc::pid_t,
}

/// The part of a pad the child touches. Reached only through a raw
/// pointer (never a `&mut`), since the child uses it while the shard
/// runs.
struct Shared {
    /// Non-zero from just before the clone until the kernel zeroes it
    /// when the child execs or exits (`CLONE_CHILD_CLEARTID`; it also
    /// wakes a futex waiter). Until then the child may be using the
    /// pad's stack, arguments and staged descriptors.
    busy: AtomicU32,
    /// Set by the child to the errno of whatever failed before exec.
    err: AtomicI32,
    args: UnsafeCell<ChildArgs>,
}

/// One child's place between clone and exec.
struct Pad {
    shared: ptr::NonNull<Shared>,
    /// The child using it, until collected.
    pid: Option<Pid>,
    /// Which start used it last.
    started: u64,
    stack: Vec<u8>,
    /// The path and argv, NUL-terminated, and pointers to them.
    strings: Vec<u8>,
    ptrs: Vec<*const libc::c_char>,
    stdin: libc::c_int,
    out: libc::c_int,
}

impl Pad {
    fn shared(&self) -> &Shared {
        // SAFETY: allocated in `Spawner::new`, freed only in `Drop`; only
        // shared references are made, and what the child writes in it
        // is atomic.
        unsafe { self.shared.as_ref() }
    }

    fn is_busy(&self) -> bool {
        self.shared().busy.load(Ordering::Acquire) != 0
    }
}

/// Starts qmail-remote at a cost that does not grow with the number of
/// deliveries running, and (with [`Mode::Overlap`]) without waiting for
/// its exec.
///
/// `posix_spawn` clones the shard's whole descriptor table and then
/// closes it in the child: with one pipe per running delivery, that is
/// O(running) per start, measured at 67 µs of shard CPU with nothing
/// open, 197 µs with 10,000 descriptors and 417 µs with 18,000. Here the
/// child shares the table for an instant instead (`CLONE_FILES`): the
/// shard stages the message and the pipe at a pad's two descriptors,
/// below [`ABOVE_STAGE`]. The child asks to be killed when the shard
/// dies (and exits if it already has), then calls
/// `close_range(ABOVE_STAGE, ~0, CLOSE_RANGE_UNSHARE)`, which gives it a
/// private table holding only fds 0 to `ABOVE_STAGE - 1`, copied in
/// constant time. It moves its pad's two onto 0, 1, 2, closes the rest,
/// resets its signal mask and SIGPIPE, and execs.
///
/// The child shares the shard's memory (`CLONE_VM`: nothing to copy) and
/// runs on its pad's stack; with [`Mode::Overlap`] the shard does not
/// wait for it, but goes on while the kernel loads qmail-remote, which
/// is most of a start's time. A pad is reused only after the kernel has
/// zeroed its `busy` word, at the child's exec or exit; until then the
/// shard keeps the staged descriptors, and releases them when it
/// collects the pad ([`Spawner::collect`], or at the latest when the
/// child is reaped).
///
/// A child dies by SIGKILL when the thread that started it ends (see the
/// module docs): a shard's one thread, which ends with the shard. Use a
/// spawner from a thread that lives as long as its children may.
///
/// Fds `STAGE` to `ABOVE_STAGE - 1` are ours for this: [`Spawner::new`]
/// takes them (over whatever was there) and must run before the shard
/// opens anything else.
pub struct Spawner {
    mode: Mode,
    /// Where staged descriptors point between starts.
    devnull: std::os::fd::OwnedFd,
    pads: Vec<Pad>,
    /// Starts so far: a pad's `started` tells the oldest.
    starts: u64,
    /// Children whose exec failed, with its errno, until asked about.
    failed: Vec<(Pid, i32)>,
    /// The program as found in PATH, cached; looked up again if it
    /// disappears.
    path: Option<std::ffi::CString>,
    program: std::ffi::CString,
    /// What every child gets as its environment.
    env: Environment,
}

/// A child's environment: a copy of the process's, taken once, less
/// any variable hidden from children ([`Spawner::hide_env`]). Its own
/// copy, so a child's `envp` never depends on `environ` staying as it
/// was.
struct Environment {
    /// `NAME=value`, each with its NUL. A `CString`'s bytes stay where
    /// they are when the vector moves or grows.
    strings: Vec<std::ffi::CString>,
    /// Pointers into `strings`, then NULL: the `envp` of every child.
    ptrs: Vec<*const libc::c_char>,
}

impl Environment {
    /// The process's environment now, in its order.
    fn of_process() -> Environment {
        use std::os::unix::ffi::OsStrExt;
        let strings = std::env::vars_os()
            .filter_map(|(name, value)| {
                let mut entry = name.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                // Neither holds a NUL (the kernel's strings cannot).
                std::ffi::CString::new(entry).ok()
            })
            .collect();
        let mut env = Environment { strings, ptrs: Vec::new() };
        env.point();
        env
    }

    /// Drops `name` from it.
    fn hide(&mut self, name: &str) {
        let prefix = [name.as_bytes(), b"="].concat();
        self.strings.retain(|s| !s.as_bytes().starts_with(&prefix));
        self.point();
    }

    fn point(&mut self) {
        self.ptrs = self.strings.iter().map(|s| s.as_ptr()).collect();
        self.ptrs.push(ptr::null());
    }
}

/// The child between clone and exec. It runs on its pad's stack in the
/// shard's memory, so it makes raw system calls only: no allocation, no
/// lock, no `errno`, no Rust runtime.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the pad's `Shared`, which the shard keeps and does
    // not write until `busy` is zeroed by the kernel at our exec or exit;
    // the pointers in it are valid until then for the same reason
    // (the environment's copy changes only in `hide_env`, which takes
    // `&mut Spawner` and waits for every pad first). Each system call gets
    // valid arguments: plain numbers (prctl, getppid: no pointer, no
    // errno written), descriptor numbers, a zeroed `sigaction` (SIG_DFL)
    // and an empty mask of the kernel's size (8 bytes), NUL-terminated
    // strings and NULL-terminated arrays.
    unsafe {
        let shared = &*arg.cast::<Shared>();
        let a = &*shared.args.get();
        let fail = |ret: isize| -> ! {
            shared.err.store(-ret as i32, Ordering::Relaxed);
            // Seen before the kernel zeroes `busy` on our way out, which
            // is what the shard waits for before it reads `err`.
            std::sync::atomic::fence(Ordering::SeqCst);
            raw::call(libc::SYS_exit, 127, 0, 0, 0);
            unreachable_exit()
        };
        // Die with the shard (issue 15). When a shard dies the supervisor
        // answers each of its deliveries with a `Z`, and qmail-send runs
        // each again: a qmail-remote that went on would deliver twice.
        // Killed at once it drops its SMTP connection, and a receiver
        // that has not answered the final '.' delivers nothing; only one
        // past the receiver's 250, in its last moment, can still
        // duplicate. Relaying its real result instead would need its
        // output pipe to outlive the shard, held by the supervisor: every
        // running delivery's descriptor in one process, which is what
        // the shards exist to avoid, for an event that is rare.
        // SIGKILL: whatever runs as qmail-remote can neither catch nor
        // delay it.
        let r = raw::call(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as usize,
            libc::SIGKILL as usize,
            0,
            0,
        );
        if r < 0 {
            fail(r);
        }
        // A shard that died before that call sends no signal: we were
        // given to another parent. Checked after it, so that no death
        // falls between the two.
        if raw::call(libc::SYS_getppid, 0, 0, 0, 0) != a.parent as isize {
            fail(-(libc::ESRCH as isize));
        }
        let r = raw::call(
            libc::SYS_close_range,
            ABOVE_STAGE as usize,
            libc::c_uint::MAX as usize,
            libc::CLOSE_RANGE_UNSHARE as usize,
            0,
        );
        if r < 0 {
            fail(r);
        }
        for (from, to) in [(a.stdin, 0), (a.out, 1), (a.out, 2)] {
            let r = raw::call(libc::SYS_dup3, from as usize, to, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        raw::call(
            libc::SYS_close_range,
            STAGE as usize,
            (ABOVE_STAGE - 1) as usize,
            0,
            0,
        );
        let default = [0u64; 4];
        raw::call(
            libc::SYS_rt_sigaction,
            libc::SIGPIPE as usize,
            default.as_ptr() as usize,
            0,
            8,
        );
        let empty = 0u64;
        raw::call(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &raw const empty as usize,
            0,
            8,
        );
        let r = raw::call(
            libc::SYS_execve,
            a.path as usize,
            a.argv as usize,
            a.envp as usize,
            0,
        );
        fail(r)
    }
}

/// After an exit system call, which does not return.
fn unreachable_exit() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

impl Spawner {
    /// Takes fds `STAGE` to `ABOVE_STAGE - 1` and readies the pads.
    /// `program` is run through PATH unless it holds a '/'.
    pub fn new(program: std::ffi::CString, mode: Mode) -> io::Result<Spawner> {
        use std::os::fd::FromRawFd;
        let mode = if CAN_OVERLAP { mode } else { Mode::WaitForExec };
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // The spare copy lives above the staging numbers; `null` itself
        // may well be one of them, so it is closed before they are taken.
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor nothing else
        // owns.
        let devnull = unsafe {
            let fd = libc::fcntl(
                null.as_raw_fd(),
                libc::F_DUPFD_CLOEXEC,
                ABOVE_STAGE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            std::os::fd::OwnedFd::from_raw_fd(fd)
        };
        drop(null);
        let pads = match mode {
            Mode::WaitForExec => 1,
            Mode::Overlap => PADS,
        };
        // The process that clones, and so its children's parent: the
        // spawner is used where it is made (a shard never forks).
        let parent = nix::unistd::getpid().as_raw();
        let mut spawner = Spawner {
            mode,
            devnull,
            pads: Vec::with_capacity(pads),
            starts: 0,
            failed: Vec::new(),
            path: None,
            program,
            env: Environment::of_process(),
        };
        for i in 0..pads as libc::c_int {
            let shared = Box::new(Shared {
                busy: AtomicU32::new(0),
                err: AtomicI32::new(0),
                args: UnsafeCell::new(ChildArgs {
                    path: ptr::null(),
                    argv: ptr::null(),
                    envp: ptr::null(),
                    stdin: STAGE + 2 * i,
                    out: STAGE + 2 * i + 1,
                    parent,
                }),
            });
            spawner.pads.push(Pad {
                shared: ptr::NonNull::from(Box::leak(shared)),
                pid: None,
                started: 0,
                stack: vec![0; STACK],
                strings: Vec::with_capacity(512),
                ptrs: Vec::with_capacity(8),
                stdin: STAGE + 2 * i,
                out: STAGE + 2 * i + 1,
            });
        }
        // Every staging number, even of pads not used (WaitForExec), so
        // that a child's table below ABOVE_STAGE holds nothing stray.
        for fd in STAGE..ABOVE_STAGE {
            // SAFETY: dup2 onto a fixed number; anything that was there
            // (an fd inherited by accident) is closed by it, which is the
            // point: these numbers are ours from now on.
            if unsafe { libc::dup2(spawner.devnull.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(spawner)
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

    /// Keeps the variable `name` from every child started from now on:
    /// a shard's Redis address, which may hold a password, is the
    /// shard's own and no business of qmail-remote's. Waits first for
    /// any child still before its exec, which may be reading the
    /// environment being changed.
    pub fn hide_env(&mut self, name: &str) {
        for i in 0..self.pads.len() {
            self.settle(i);
        }
        self.env.hide(name);
    }

    /// Runs the program with `argv` (argv\[0\] included), fd 0 =
    /// `stdin`, fds 1 and 2 = `out`, nothing else open, the process's
    /// environment as it was when the spawner was made (less what
    /// [`Spawner::hide_env`] hid), an empty signal mask and SIGPIPE at default. With
    /// [`Mode::Overlap`] it waits only when every pad's child is still
    /// before its exec, for the oldest.
    pub fn spawn(
        &mut self,
        argv: &[&CStr],
        stdin: BorrowedFd<'_>,
        out: BorrowedFd<'_>,
    ) -> io::Result<Pid> {
        let path = self.resolve();
        self.collect();
        let i = match self.pads.iter().position(|p| p.pid.is_none()) {
            Some(free) => free,
            None => {
                // Every child is before its exec: wait for the one that
                // has been longest.
                let oldest = (0..self.pads.len())
                    .min_by_key(|&i| self.pads[i].started)
                    .unwrap_or(0);
                self.settle(oldest);
                oldest
            }
        };
        self.starts += 1;
        self.pads[i].started = self.starts;
        let pad = &mut self.pads[i];
        pad.strings.clear();
        for s in std::iter::once(path.as_c_str()).chain(argv.iter().copied()) {
            pad.strings.extend_from_slice(s.to_bytes_with_nul());
        }
        // Pointers only now: the buffer no longer moves. Each argument
        // starts where the one before it (the path, first) ended.
        let base = pad.strings.as_ptr().cast::<libc::c_char>();
        pad.ptrs.clear();
        let mut at = path.to_bytes_with_nul().len();
        for s in argv {
            // SAFETY: `at` is within `strings`, which holds the path and
            // every argument, each with its NUL.
            pad.ptrs.push(unsafe { base.add(at) });
            at += s.to_bytes_with_nul().len();
        }
        pad.ptrs.push(ptr::null());
        // Stage the child's descriptors.
        // SAFETY: dup2 onto the pad's own reserved numbers.
        unsafe {
            if libc::dup2(stdin.as_raw_fd(), pad.stdin) < 0
                || libc::dup2(out.as_raw_fd(), pad.out) < 0
            {
                let e = io::Error::last_os_error();
                self.unstage(i);
                return Err(e);
            }
        }
        let shared = pad.shared.as_ptr();
        // SAFETY: the pad is free (settled above): no child reads its
        // arguments, so writing them through the cell is exclusive.
        unsafe {
            let args = &mut *(*shared).args.get();
            args.path = base;
            args.argv = pad.ptrs.as_ptr();
            args.envp = self.env.ptrs.as_ptr();
        }
        pad.shared().err.store(0, Ordering::Relaxed);
        pad.shared().busy.store(1, Ordering::Release);
        // The stack grows down on every Linux target we build for; keep
        // the top 16-byte aligned.
        let top = {
            let end = pad.stack.as_mut_ptr_range().end as usize;
            (end & !15) as *mut libc::c_void
        };
        let mut flags = libc::CLONE_VM
            | libc::CLONE_FILES
            | libc::CLONE_CHILD_CLEARTID
            | libc::SIGCHLD;
        if self.mode == Mode::WaitForExec {
            flags |= libc::CLONE_VFORK;
        }
        // SAFETY: `child` runs on the pad's stack with the pad's
        // `Shared`, which stay ours and untouched until the kernel zeroes
        // `busy` (CLONE_CHILD_CLEARTID, pointed at it) at the child's exec
        // or exit; CLONE_VM shares our memory until then, and the child
        // touches nothing else (see `child`). SIGCHLD is the exit signal,
        // as for any child, so the shard's signalfd sees its end.
        let pid = unsafe {
            libc::clone(
                child,
                top,
                flags,
                shared.cast(),
                ptr::null_mut::<libc::pid_t>(),
                ptr::null_mut::<libc::c_void>(),
                (&raw const (*shared).busy).cast_mut().cast::<libc::pid_t>(),
            )
        };
        if pid < 0 {
            let e = io::Error::last_os_error();
            self.pads[i].shared().busy.store(0, Ordering::Release);
            self.unstage(i);
            return Err(e);
        }
        let pid = Pid::from_raw(pid);
        self.pads[i].pid = Some(pid);
        if self.mode == Mode::Overlap {
            return Ok(pid);
        }
        // CLONE_VFORK: the child has exec'd or exited by now.
        self.settle(i);
        match self.exec_failure(pid) {
            Some(e) => {
                // It exited 127 before exec: reap it now, so the caller's
                // own reaping never sees a pid it did not start.
                let _ = nix::sys::wait::waitpid(pid, None);
                Err(e)
            }
            None => Ok(pid),
        }
    }

    /// Waits until pad `i`'s child, if any, has exec'd or exited, and
    /// collects the pad.
    fn settle(&mut self, i: usize) {
        if self.pads[i].pid.is_none() {
            return;
        }
        loop {
            let busy = self.pads[i].shared().busy.load(Ordering::Acquire);
            if busy == 0 {
                break;
            }
            // SAFETY: a futex wait on our own word while it still holds
            // `busy`; the kernel's wake at the child's exec or exit is not
            // private, so neither is the wait. EINTR and EAGAIN just loop.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    &raw const self.pads[i].shared().busy,
                    libc::FUTEX_WAIT,
                    busy,
                    ptr::null::<libc::timespec>(),
                );
            }
        }
        self.collect_pad(i);
    }

    /// Pad `i`'s child has exec'd or exited: let go of its descriptors
    /// (the pipe's EOF depends on it) and note a failed exec.
    fn collect_pad(&mut self, i: usize) {
        let Some(pid) = self.pads[i].pid.take() else { return };
        self.unstage(i);
        let err = self.pads[i].shared().err.load(Ordering::Acquire);
        if err != 0 {
            if err == libc::ENOENT {
                // Gone since we looked (or never there): look again.
                self.path = None;
            }
            self.failed.push((pid, err));
        }
    }

    /// Whether a start now would not wait: a pad is free, or becomes free
    /// as it is collected.
    pub fn can_start(&mut self) -> bool {
        self.collect();
        self.pads.iter().any(|p| p.pid.is_none())
    }

    /// Collects every pad whose child has exec'd or exited since.
    /// Cheap (one load per pad); call it once per pass of a loop.
    pub fn collect(&mut self) {
        for i in 0..self.pads.len() {
            if self.pads[i].pid.is_some() && !self.pads[i].is_busy() {
                self.collect_pad(i);
            }
        }
    }

    /// For a child just reaped: the error its exec failed with, if it
    /// did (it then exited 127, which is not qmail-remote's answer).
    pub fn exec_failure(&mut self, pid: Pid) -> Option<io::Error> {
        if let Some(i) = self.pads.iter().position(|p| p.pid == Some(pid)) {
            // Reaped, so past its exit: the pad is free.
            self.settle(i);
        }
        let at = self.failed.iter().position(|&(p, _)| p == pid)?;
        let (_, err) = self.failed.swap_remove(at);
        Some(io::Error::from_raw_os_error(err))
    }

    /// Points pad `i`'s descriptors back at /dev/null, so the shard
    /// holds no reference to the last child's message or pipe.
    fn unstage(&self, i: usize) {
        for fd in [self.pads[i].stdin, self.pads[i].out] {
            // SAFETY: dup2 onto our own reserved numbers.
            unsafe {
                libc::dup2(self.devnull.as_raw_fd(), fd);
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        for pad in self.pads.drain(..) {
            if pad.pid.is_some() && pad.is_busy() {
                // A child still before its exec may use the stack and
                // `Shared`: leave them to the process rather than wait.
                std::mem::forget(pad.stack);
                continue;
            }
            // SAFETY: leaked from a Box in `new`, freed once, here; no
            // child uses it any more.
            drop(unsafe { Box::from_raw(pad.shared.as_ptr()) });
        }
    }
}
