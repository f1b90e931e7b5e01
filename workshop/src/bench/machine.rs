//! The machine, and the processes on it, read through /proc and
//! getrusage: CPU time and peak memory.

use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};

use super::measures::Machine;

pub(super) fn machine() -> Machine {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or("?".into(), |s| s.trim().to_string())
    };
    let run = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let nofile = nix::sys::resource::getrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
    )
    .map_or("?".into(), |(soft, hard)| format!("soft {soft}, hard {hard}"));
    let memory = run("free", &["-h"]).unwrap_or_else(|| {
        read("/proc/meminfo").lines().next().unwrap_or("?").to_string()
    });
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory,
        kernel: run("uname", &["-srm"])
            .unwrap_or_else(|| read("/proc/sys/kernel/osrelease")),
        rustc: run("rustc", &["--version"]).unwrap_or_else(|| "?".into()),
        nofile,
        pid_max: read("/proc/sys/kernel/pid_max"),
        load_before: loadavg(),
        load_after: String::new(),
        when: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .unwrap_or_else(|| "?".into()),
        commit: run("git", &["describe", "--always", "--dirty"])
            .unwrap_or_else(|| "?".into()),
        home: String::new(),
    }
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

pub(super) fn rusage_ns(who: UsageWho) -> u64 {
    getrusage(who).map_or(0, |u| {
        let ns = |t: nix::sys::time::TimeVal| {
            (t.tv_sec() as u64) * 1_000_000_000 + (t.tv_usec() as u64) * 1000
        };
        ns(u.user_time()) + ns(u.system_time())
    })
}

// shardspawn

/// utime + stime and cutime + cstime of `pid`, in clock ticks.
pub(super) fn proc_cpu(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// Fields 14-17 of a /proc/PID/stat line (after the command name in
/// parentheses, which may hold anything): (utime + stime, cutime +
/// cstime).
pub(super) fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((n(11)? + n(12)?, n(13)? + n(14)?))
}

/// VmHWM of `pid`, KiB.
pub(super) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    crate::util::memory_kib(pid, "VmHWM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some((300, 10)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(crate::util::status_kib(status, "VmHWM"), Some(2048));
        assert_eq!(crate::util::status_kib(status, "VmPeak"), Some(9));
        assert_eq!(crate::util::status_kib("Name: x\n", "VmHWM"), None);
        let (own, _) = proc_cpu(std::process::id()).unwrap();
        assert!(own < u64::MAX);
        assert!(vm_hwm_kib(std::process::id()).unwrap() > 0);
    }
}
