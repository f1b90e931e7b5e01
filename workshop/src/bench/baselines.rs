//! The baselines: a bare spawn/waitpid loop in a process of its own
//! (this binary, re-run with [`LOOP_FLAG`]), one or one
//! per core, starting the stand-in as a shard does or with
//! `posix_spawn`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::resource::UsageWho;
use nix::sys::wait::{WaitStatus, waitpid};

use shardspawn_os::spawn;

use super::machine::rusage_ns;
use super::measures::{Baseline, Ctx};
use super::{LOCAL_PART, LOOP_FLAG};
use crate::recorder::monotonic_ns;
use crate::{remote, workload};

/// Share `i` of `total` split `k` ways, the remainder to the first.
pub(super) fn share(total: usize, k: usize, i: usize) -> usize {
    total / k + usize::from(i < total % k)
}

/// Runs `k` baseline loops in parallel, `in_flight` in flight between
/// them, the plan's deliveries between them; each is started, says
/// `ready`, and all are let go at once.
pub(super) fn run_loops(
    ctx: &Ctx,
    k: usize,
    in_flight: usize,
    n: usize,
    extra_fds: usize,
    method: Method,
) -> Result<Baseline, String> {
    let record = ctx.home.path().join(format!(
        "baseline-{k}x-{in_flight}-{extra_fds}-{}.record",
        method.name()
    ));
    let mut loops = Vec::new();
    let mut first = 0;
    for i in 0..k {
        let count = share(n, k, i);
        let conc = share(in_flight, k, i).max(1);
        let mut cmd = Command::new(&ctx.me);
        cmd.arg(LOOP_FLAG)
            .arg(&ctx.remote)
            .arg(method.name())
            .args(
                [conc, count, first, n, ctx.plan.domains]
                    .iter()
                    .map(usize::to_string),
            )
            .arg(ctx.plan.seed.to_string())
            .arg(extra_fds.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(remote::ENV_RECORD, &record)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        first += count;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("unable to start a baseline loop: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        loops.push((child, stdin, stdout));
    }
    let line = |r: &mut BufReader<std::process::ChildStdout>| {
        let mut l = String::new();
        r.read_line(&mut l).map(|_| l.trim().to_string())
    };
    for (_, _, out) in &mut loops {
        let l = line(out).map_err(|e| e.to_string())?;
        if l != "ready" {
            return Err(format!("a baseline loop said {l:?}, not ready"));
        }
    }
    // The exit watch shardspawn's points run beside, here too, so that
    // its reading costs the baselines what it costs shardspawn.
    let watch = crate::exits::ExitWatch::start().ok();
    for (_, stdin, _) in &mut loops {
        writeln!(stdin, "go").map_err(|e| e.to_string())?;
    }
    let mut b = Baseline {
        loops: k,
        in_flight,
        extra_fds,
        method,
        deliveries: 0,
        elapsed: Duration::ZERO,
        max_in_flight: 0,
        rates: Vec::new(),
        loop_cpu_us: 0.0,
        standin_cpu_us: 0.0,
        failures: 0,
    };
    let (mut start, mut end) = (u64::MAX, 0);
    let (mut own_ns, mut child_ns) = (0u64, 0u64);
    for (mut child, _, mut out) in loops {
        let l = line(&mut out).map_err(|e| e.to_string())?;
        let _ = child.wait();
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        if !l.starts_with("done ") || f.len() != 7 {
            return Err(format!("a baseline loop said {l:?}"));
        }
        b.deliveries += f[0] as usize;
        start = start.min(f[1]);
        end = end.max(f[2]);
        b.max_in_flight += f[3] as usize;
        own_ns += f[4];
        child_ns += f[5];
        b.failures += f[6] as usize;
    }
    if let Some(w) = watch {
        let _ = w.finish();
    }
    let _ = std::fs::remove_file(&record);
    b.elapsed = Duration::from_nanos(end.saturating_sub(start));
    b.rates = vec![b.deliveries as f64 / b.elapsed.as_secs_f64().max(1e-9)];
    let per = |ns: u64| ns as f64 / 1000.0 / b.deliveries.max(1) as f64;
    b.loop_cpu_us = per(own_ns);
    b.standin_cpu_us = per(child_ns);
    Ok(b)
}

/// How a baseline loop starts the stand-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    /// [`spawn::Spawner`]: clone with a shared descriptor table that
    /// the child unshares down to fds 0-4, as a shard starts
    /// qmail-remote.
    Clone,
    /// The shard's own start: [`spawn::Spawner`] as with `Clone`, but
    /// not waiting for the child's exec ([`spawn::Mode::Overlap`]).
    Overlap,
    /// glibc's `posix_spawn` ([`spawn::spawn`]), which copies the whole
    /// descriptor table.
    PosixSpawn,
}

impl Method {
    pub(super) fn name(self) -> &'static str {
        match self {
            Method::Clone => "clone",
            Method::Overlap => "overlap",
            Method::PosixSpawn => "posix_spawn",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "clone" => Ok(Method::Clone),
            "overlap" => Ok(Method::Overlap),
            "posix_spawn" => Ok(Method::PosixSpawn),
            _ => Err(format!("unknown start method {s:?}")),
        }
    }
}

/// The baseline loop process: `LOOP_FLAG REMOTE METHOD CONCURRENCY
/// COUNT FIRST TOTAL DOMAINS SEED EXTRA_FDS`, holding EXTRA_FDS
/// descriptors open (pipes) while it runs. Prints `ready`, waits for
/// `go` on stdin, runs deliveries FIRST.. FIRST+COUNT of the workload,
/// and prints `done COUNT START_NS END_NS MAX_IN_FLIGHT OWN_CPU_NS
/// CHILD_CPU_NS FAILURES`.
pub(super) fn loop_main(args: &[String]) -> i32 {
    match baseline_loop(args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("shardspawn-bench: baseline loop: {e}");
            111
        }
    }
}

pub(super) fn baseline_loop(args: &[String]) -> Result<String, String> {
    let [remote, method, rest @ ..] = args else {
        return Err("no arguments".into());
    };
    let program =
        CString::new(PathBuf::from(remote).into_os_string().into_vec())
            .map_err(|e| e.to_string())?;
    // First, as in a shard: the spawner takes its staging descriptors.
    let mut spawner = match method.parse::<Method>()? {
        Method::Clone => Some(
            spawn::Spawner::new(program.clone(), spawn::Mode::WaitForExec)
                .map_err(|e| e.to_string())?,
        ),
        Method::Overlap => Some(
            spawn::Spawner::new(program.clone(), spawn::Mode::Overlap)
                .map_err(|e| e.to_string())?,
        ),
        Method::PosixSpawn => None,
    };
    let nums: Vec<usize> = rest
        .iter()
        .map(|a| a.parse().map_err(|_| a.clone()))
        .collect::<Result<_, _>>()?;
    let [conc, count, first, total, domains, seed, extra_fds] = nums[..]
    else {
        return Err(format!("want 9 arguments, got {}", args.len()));
    };
    if extra_fds > 0 {
        // As the supervisor does for its shards: the soft limit up to
        // the hard one.
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    // Held open (close-on-exec, as a shard's pipes are) for the whole
    // run: what a shard with that many deliveries running holds.
    let held: Vec<_> = (0..extra_fds / 2)
        .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unable to open {extra_fds} fds: {e}"))?;
    let attr = spawn::Attr::new().map_err(|e| e.to_string())?;
    let null_in = File::open("/dev/null").map_err(|e| e.to_string())?;
    let null_out = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.to_string())?;
    let rcpts =
        workload::recipients(total, domains, 0.0, seed as u64, LOCAL_PART);
    let c = |b: &[u8]| CString::new(b).map_err(|e| e.to_string());
    let argvs: Vec<[CString; 3]> = rcpts
        .get(first..first + count)
        .ok_or("deliveries out of range")?
        .iter()
        .map(|r| {
            let host = shardspawn_common::domain::host(r).unwrap_or_default();
            Ok([c(host)?, c(workload::SENDER)?, c(r)?])
        })
        .collect::<Result<_, String>>()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).map_err(|e| e.to_string())?;
    if go.trim() != "go" {
        return Err(format!("told {go:?}, not go"));
    }
    let own_before = rusage_ns(UsageWho::RUSAGE_SELF);
    let start = monotonic_ns();
    let (mut started, mut done, mut running, mut max, mut failures) =
        (0, 0, 0, 0, 0);
    while done < count {
        while running < conc && started < count {
            let [host, sender, rcpt] = &argvs[started];
            let argv = [program.as_c_str(), host, sender, rcpt];
            let (stdin, out) = (null_in.as_fd(), null_out.as_fd());
            let spawned = match spawner.as_mut() {
                Some(s) => s.spawn(&argv, stdin, out),
                None => spawn::spawn(&attr, &argv, stdin, out),
            };
            match spawned {
                Ok(_) => running += 1,
                Err(_) => {
                    failures += 1;
                    done += 1;
                }
            }
            started += 1;
        }
        max = max.max(running);
        if running == 0 {
            continue;
        }
        let reaped = waitpid(None, None);
        if let (Some(s), Ok(status)) = (spawner.as_mut(), &reaped)
            && let Some(pid) = status.pid()
        {
            // Frees its pad (and says whether its exec failed: it then
            // exited 127, counted below).
            let _ = s.exec_failure(pid);
        }
        match reaped {
            Ok(WaitStatus::Exited(_, 0)) => {}
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                failures += 1
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        }
        running -= 1;
        done += 1;
    }
    let end = monotonic_ns();
    let own = rusage_ns(UsageWho::RUSAGE_SELF) - own_before;
    drop(held);
    let children = rusage_ns(UsageWho::RUSAGE_CHILDREN);
    Ok(format!("done {count} {start} {end} {max} {own} {children} {failures}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, k) in [(20_000, 2), (100, 3), (7, 4), (1, 2)] {
            let parts: Vec<usize> =
                (0..k).map(|i| share(total, k, i)).collect();
            assert_eq!(parts.iter().sum::<usize>(), total);
            assert!(
                parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1
            );
        }
    }
}
