//! Every `unsafe` of the harness, each block with its argument.
//!
//! One thing cannot be done in safe Rust: leaving the spawner's fd 2
//! **closed**, the way qmail-start leaves qmail-rspawn's.
//! `std::process::Command` always gives the child some fd 2, so a
//! `pre_exec` hook closes it between fork and exec.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;

/// Makes the child of `cmd` start with fd 2 closed.
///
/// The caller should also set `cmd.stderr(Stdio::null())`, so that if
/// the hook ever failed the child would not write to the test's stderr.
pub(crate) fn close_stderr_in_child(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child between fork and exec,
    // after std has set up fds 0-2. It only calls close(2), which is
    // async-signal-safe, allocates nothing and takes no lock; EBADF (fd 2
    // already closed) is the state we want. Turning an errno into an
    // io::Error (`from_raw_os_error`) does not allocate either.
    unsafe {
        cmd.pre_exec(|| match nix::unistd::close(2) {
            Ok(()) | Err(Errno::EBADF) => Ok(()),
            Err(errno) => Err(std::io::Error::from_raw_os_error(errno as i32)),
        });
    }
}
