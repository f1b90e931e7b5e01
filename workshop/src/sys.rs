//! Every `unsafe` of the harness, each block with its argument.
//!
//! Two things cannot be done in safe Rust. Leaving the spawner's fd 2
//! **closed**, the way qmail-start leaves qmail-rspawn's:
//! `std::process::Command` always gives the child some fd 2, so a
//! `pre_exec` hook closes it between fork and exec. And the bench's
//! netlink socket on the kernel's proc connector ([`proc_exit_socket`]),
//! which neither std nor nix makes.
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

/// A netlink socket on the kernel's proc connector, told to send the
/// exit of every process (and, on kernels before 6.6, which cannot
/// filter, every other process event too: the reader keeps exits only).
/// Needs CAP_NET_ADMIN. Reads time out after 50 ms, so a reader can look
/// at a stop flag; the receive buffer is 32 MiB, so a burst of exits is
/// not dropped while the reader waits for a core.
pub(crate) fn proc_exit_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::io::Error;
    use std::os::fd::{FromRawFd, OwnedFd};

    const NETLINK_CONNECTOR: libc::c_int = 11;
    const CN_IDX_PROC: u32 = 1;
    const CN_VAL_PROC: u32 = 1;
    const PROC_CN_MCAST_LISTEN: u32 = 1;
    const PROC_EVENT_EXIT: u32 = 0x8000_0000;

    // SAFETY: socket(2) with constant arguments returns a new descriptor
    // or -1; a new one is owned by nothing else, so OwnedFd may own it.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        );
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let check = |r: libc::c_int| {
        if r < 0 { Err(Error::last_os_error()) } else { Ok(()) }
    };
    let size: libc::c_int = 32 << 20;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: a zeroed sockaddr_nl is valid (the kernel picks our port);
    // each pointer passed below points at a live value of the length
    // given with it, which the kernel only reads.
    unsafe {
        // Without CAP_NET_ADMIN the forced size fails; the default will do.
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        check(libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        check(libc::bind(
            raw,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ))?;
    }
    // nlmsghdr (16) + cn_msg (20) + proc_input { op, event_type } (8).
    let mut msg = Vec::with_capacity(44);
    msg.extend_from_slice(&44u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&8u16.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg.extend_from_slice(&PROC_EVENT_EXIT.to_ne_bytes());
    // SAFETY: `msg` is live and `msg.len()` bytes long; send only reads.
    let sent = unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(Error::last_os_error());
    }
    Ok(fd)
}
