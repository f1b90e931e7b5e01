//! The kernel's own time of each process exit, for the bench.
//!
//! A stand-in records its exit just before it calls `exit`, but it has
//! not exited then: the kernel still frees its memory and closes its
//! files (its pipe reaches EOF there), and only then makes it a zombie
//! its parent can reap and sends SIGCHLD. That last step is when a
//! spawner can first know a child's exit status, and the proc connector
//! reports it right after (`do_exit`: `exit_notify`, then
//! `proc_exit_connector`) with a CLOCK_MONOTONIC time (`ktime_get_ns`),
//! the clock of the recordings. [`ExitWatch`] listens for those reports
//! on a thread and hands back every exit it saw, by pid.
//!
//! Were the exiting child preempted between those two steps, its parent
//! could reap it before the report's time, and an exit→result counted
//! from the report would be short. Checked on this kernel (6.18) with a
//! parent that timestamps each `wait` return: of 6,000 children, 4,000
//! of them beside 8 busy loops on 2 cores, no report came after the reap
//! (it came 18–23 µs before at the median). A result that arrived before
//! its exit's report would be counted unmatched; the bench reports how
//! many.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// What a watch saw: exit times (ns, CLOCK_MONOTONIC) of each pid, in
/// the order they came, and whether the kernel dropped any (the
/// socket's buffer overflowed).
#[derive(Debug, Default)]
pub struct Exits {
    /// Exit times by pid: a pid is reused, so there may be several.
    pub by_pid: HashMap<u32, Vec<u64>>,
    /// Some reports were lost (ENOBUFS): an exit may be missing.
    pub dropped: bool,
}

/// A thread reading the kernel's exit reports until [`ExitWatch::finish`].
pub struct ExitWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Exits>>,
}

impl ExitWatch {
    /// Subscribes and starts reading. Fails without CAP_NET_ADMIN or a
    /// kernel built without the proc connector.
    pub fn start() -> io::Result<ExitWatch> {
        let fd = crate::sys::proc_exit_socket()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("exit-watch".into())
            .spawn(move || read_exits(&fd, &flag))?;
        Ok(ExitWatch { stop, thread })
    }

    /// Every exit reported so far: the reports of children whose results
    /// have arrived are queued by now (see the module's note).
    pub fn finish(self) -> io::Result<Exits> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("exit watch panicked")))
    }
}

fn read_exits(fd: &OwnedFd, stop: &AtomicBool) -> io::Result<Exits> {
    use nix::errno::Errno;
    let mut exits = Exits::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Once stopped, read what is queued and no more.
        let stopping = stop.load(Ordering::Relaxed);
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(n) => parse(&buf[..n], &mut exits),
            Err(Errno::EAGAIN) if stopping => return Ok(exits),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => exits.dropped = true,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `PROC_EVENT_EXIT`.
const EXIT: u32 = 0x8000_0000;

/// Adds the exits in one datagram of netlink messages to `exits`: each
/// message is an nlmsghdr (16 bytes), a cn_msg (20) and a proc_event
/// (`what`, `cpu`, `timestamp_ns`, then for an exit the pid and tgid).
/// Only a thread group's leader counts: its exit is the process's.
fn parse(mut data: &[u8], exits: &mut Exits) {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while let Some(len) = u32_at(data, 0) {
        let len = len as usize;
        let Some(msg) = data.get(..len) else { break };
        let event = msg.get(36..).unwrap_or_default();
        if u32_at(event, 0) == Some(EXIT)
            && let (Some(ts), Some(pid), Some(tgid)) = (
                event
                    .get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes),
                u32_at(event, 16),
                u32_at(event, 20),
            )
            && pid == tgid
        {
            exits.by_pid.entry(pid).or_default().push(ts);
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = (len + 3) & !3;
        if len < 16 || next > data.len() {
            break;
        }
        data = &data[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, ts: u64, pid: u32, tgid: u32) -> Vec<u8> {
        let mut m = vec![0u8; 36 + 40];
        m[..4].copy_from_slice(&76u32.to_ne_bytes());
        m[36..40].copy_from_slice(&what.to_ne_bytes());
        m[44..52].copy_from_slice(&ts.to_ne_bytes());
        m[52..56].copy_from_slice(&pid.to_ne_bytes());
        m[56..60].copy_from_slice(&tgid.to_ne_bytes());
        m
    }

    #[test]
    fn keeps_the_exits_of_processes_only() {
        let mut data = message(EXIT, 100, 7, 7);
        data.extend(message(EXIT, 150, 8, 7)); // a thread of 7
        data.extend(message(1, 160, 9, 9)); // a fork
        data.extend(message(EXIT, 200, 7, 7)); // 7 reused
        let mut exits = Exits::default();
        parse(&data, &mut exits);
        assert_eq!(exits.by_pid.len(), 1);
        assert_eq!(exits.by_pid[&7], [100, 200]);
    }

    #[test]
    fn a_cut_message_ends_the_datagram() {
        let mut data = message(EXIT, 100, 7, 7);
        data.truncate(60);
        let mut exits = Exits::default();
        parse(&data, &mut exits);
        assert!(exits.by_pid.is_empty());
    }

    #[test]
    fn sees_a_child_exit_when_root() {
        let Ok(watch) = ExitWatch::start() else {
            eprintln!("no proc connector here (not root?): skipped");
            return;
        };
        let before = crate::recorder::monotonic_ns();
        let status = std::process::Command::new("true").status();
        let child_done = crate::recorder::monotonic_ns();
        assert!(status.is_ok_and(|s| s.success()));
        let exits = watch.finish().expect("watch");
        let seen: Vec<u64> =
            exits.by_pid.values().flatten().copied().collect();
        assert!(
            seen.iter().any(|&t| before <= t && t <= child_done),
            "no exit between {before} and {child_done}: {seen:?}"
        );
    }
}
