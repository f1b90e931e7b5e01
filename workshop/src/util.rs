//! Waiting, finding the built binaries, and looking at processes through
//! /proc.
//!
//! [`wait_for`] is the only place in the harness that pauses: everything
//! else waits on an event (a record, a pipe's EOF, a lock) or calls it.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Polls `pred` until it is true or `deadline` passes; true if it became
/// true. Checks once more at the deadline, so a short deadline still
/// gets a fair look. Pauses start at 1 ms and grow to 20 ms.
pub fn wait_for(mut pred: impl FnMut() -> bool, deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if pred() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// `now + d`: the way tests write a deadline.
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}

/// The path of binary `name` built by cargo into the same target
/// directory as the running test executable (its directory, or that
/// directory's parent when it is `deps`).
///
/// Panics, naming the path it expected, if the binary is not there.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("unable to find the test executable: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no directory", exe.display()))
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {name:?} not found at {}: build it first \
             (cargo build --bins, or cargo test in its package)",
            path.display()
        );
    }
    path
}

/// A memory figure of `/proc/PID/status` in KiB (`field` is `VmRSS`,
/// `VmHWM`, ...): `None` when the process is gone or has no such line.
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, field)
}

/// The `field` line of a `/proc/PID/status` text, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// The uid and gid of `nobody` (65534 where there is no such user): an
/// unprivileged user for the tests that run something as one, as root.
pub fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").ok().flatten();
    user.map_or((65534, 65534), |u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Taken by every test that forks or reaps children in a way another
/// test in the same process could disturb (`waitpid(-1)`, process-wide
/// signal masks, fd counting). Survives a panicking holder.
pub fn fork_lock() -> MutexGuard<'static, ()> {
    static FORK_LOCK: Mutex<()> = Mutex::new(());
    FORK_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The open fds of process `pid` and what each points to, sorted. When
/// `pid` is this process, the fd used to read /proc is left out.
///
/// Panics if /proc/PID/fd cannot be read (gone, or not ours).
pub fn open_fds(pid: u32) -> Vec<(i32, PathBuf)> {
    let dir = format!("/proc/{pid}/fd");
    let fds: Vec<i32> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => panic!("unable to read {dir}: {e}"),
    };
    // The directory is closed now, so its fd no longer resolves.
    let mut out: Vec<(i32, PathBuf)> = fds
        .into_iter()
        .filter_map(|fd| {
            Some((fd, std::fs::read_link(format!("{dir}/{fd}")).ok()?))
        })
        .collect();
    out.sort();
    out
}

/// How many fds process `pid` has open. See [`open_fds`].
pub fn fd_count(pid: u32) -> usize {
    open_fds(pid).len()
}

/// The children of `pid` with their state letter (`R`, `S`, `Z`, ...),
/// from /proc/*/stat, sorted by pid.
pub fn children(pid: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(u32, char)> = entries
        .filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            // Processes come and go while we look: skip what vanished.
            let stat =
                std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            (ppid == pid).then_some((child, state))
        })
        .collect();
    out.sort_unstable();
    out
}

/// How many children of `pid` are zombies (exited, not reaped).
pub fn zombie_children(pid: u32) -> usize {
    children(pid).iter().filter(|(_, state)| *state == 'Z').count()
}

/// State and parent pid from a /proc/PID/stat line. The command name is
/// in parentheses and may itself hold spaces and parentheses, so the
/// fields are read after the last ')'.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_true_and_false() {
        assert!(wait_for(|| true, Instant::now()));
        let mut n = 0;
        assert!(wait_for(
            || {
                n += 1;
                n == 3
            },
            deadline_in(Duration::from_secs(5))
        ));
        let start = Instant::now();
        assert!(!wait_for(|| false, start + Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn stat_lines() {
        assert_eq!(parse_stat("12 (sh) S 1 12 12 0"), Some(('S', 1)));
        assert_eq!(parse_stat("13 (a) b) (c) Z 12 13"), Some(('Z', 12)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_fds_exclude_the_dir_fd() {
        let me = std::process::id();
        let before = fd_count(me);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        // Other tests open fds concurrently, so compare with the file's
        // own entry rather than a count.
        use std::os::fd::AsRawFd;
        let fds = open_fds(me);
        assert!(fds.iter().any(|(fd, _)| *fd == f.as_raw_fd()));
        assert!(before > 0);
    }

    #[test]
    fn zombies_are_counted() {
        let _lock = fork_lock();
        let me = std::process::id();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        assert!(wait_for(
            || children(me).contains(&(pid, 'Z')),
            deadline_in(Duration::from_secs(10))
        ));
        assert!(zombie_children(me) >= 1);
        child.wait().unwrap();
        assert!(!children(me).iter().any(|(p, _)| *p == pid));
    }

    #[test]
    #[should_panic(expected = "no-such-binary")]
    fn missing_binary_panics_with_its_path() {
        bin_path("no-such-binary");
    }
}
