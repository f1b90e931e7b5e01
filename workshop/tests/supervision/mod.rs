//! What the tests of the qmail-send service under real supervision share
//! (daemontools_service.rs, runit_service.rs): a scratch service built
//! from the run scripts in `init/`, the scanner (`svscan` or `runsvdir`)
//! started as a child of the test in a process group of its own and
//! killed with it when the test ends, also on a panic, and the checks
//! both suites make: the stand-in qmail-start's ledger, shardspawn's
//! status and its log directories, the service's own log.
//!
//! The service runs the real `shardspawn` as `qmail-rspawn` under
//! `shardspawn-fake-qmail-start`, which plays qmail-start and qmail-send
//! (see `shardspawn_workshop::qmail_start`), delivering for ever through
//! the stand-in qmail-remote until the supervisor stops it.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SIGKILL, killpg};
use nix::unistd::{Pid, Uid, User};

use shardspawn_workshop::QmailHome;
use shardspawn_workshop::qmail_start::{self, Ledger, Run};
use shardspawn_workshop::util::{bin_path, deadline_in, wait_for};

/// Shards, slots and framing the service's env dir asks for.
pub const SHARDS: u16 = 3;
pub const SLOTS: u32 = 300;
/// qmail-send's remote concurrency (the stand-in's).
pub const CONCURRENCY: usize = 40;

/// The soft open-files limit the scanner starts with, so that the run
/// script has to raise it: SLOTS + 64.
pub const LOW_NOFILE: u64 = 256;
/// The soft process limit the scanner starts with when the test runs as
/// root (whom the kernel exempts from it): below SLOTS + 2 * SHARDS + 32.
pub const LOW_NPROC: u64 = 200;

/// How long a test waits for what should come soon. Long, as the
/// machine may be busy with other tests; a passing test never waits it
/// out.
pub fn soon() -> Instant {
    deadline_in(Duration::from_secs(20))
}

/// The two supervision suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// svscan, supervise, svc, svstat, envdir, multilog.
    Daemontools,
    /// runsvdir, runsv, sv, chpst, svlogd.
    Runit,
}

impl Suite {
    fn dir(self) -> &'static str {
        match self {
            Suite::Daemontools => "daemontools",
            Suite::Runit => "runit",
        }
    }
}

/// A scratch qmail home with the qmail-send service made from `init/`.
pub struct Scene {
    /// The suite whose scripts were copied.
    pub suite: Suite,
    /// The qmail home: queue, control, and `bin/` for QMAILHOME/bin.
    pub home: QmailHome,
    /// What the scanner scans: holds only `qmail-send`.
    pub scan: PathBuf,
    /// The service directory.
    pub service: PathBuf,
    /// SHARDSPAWN_LOG_DIR.
    pub logs: PathBuf,
    /// SHARDSPAWN_STATE_DIR.
    pub state: PathBuf,
    /// The stand-in qmail-start's ledger.
    pub ledger: PathBuf,
    /// The scanner's own output.
    pub scanner_out: PathBuf,
}

impl Scene {
    /// Copies `init/SUITE/qmail-send` into a scratch scan directory and
    /// sets its env dir: the example files first, then the test's
    /// settings over them, then `extra` (name, value).
    pub fn new(suite: Suite, extra: &[(&str, String)]) -> Scene {
        let home = QmailHome::new().expect("make a qmail home");
        let scan = home.path().join("service");
        let service = scan.join("qmail-send");
        let init = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../init")
            .join(suite.dir())
            .join("qmail-send");
        copy_tree(&init, &service);
        let scene = Scene {
            suite,
            logs: home.path().join("log/shardspawn"),
            state: home.path().join("state"),
            ledger: home.path().join("ledger"),
            scanner_out: home.path().join("scanner.out"),
            home,
            scan,
            service,
        };
        let mut env: Vec<(&str, String)> = vec![
            ("SHARDSPAWN_HOME", scene.home.path().display().to_string()),
            ("SHARDSPAWN_SITES", "0".to_string()),
            ("SHARDSPAWN_SHARDS", SHARDS.to_string()),
            ("SHARDSPAWN_QUEUE_OWNER", scene.home.owner_uid().to_string()),
            ("QMAILREMOTE", path_text(&bin_path("shardspawn-fake-remote"))),
            ("SHARDSPAWN_DELNUM_BYTES", "2".to_string()),
            ("SHARDSPAWN_SLOTS", SLOTS.to_string()),
            ("SHARDSPAWN_LOG_DIR", path_text(&scene.logs)),
            ("SHARDSPAWN_STATE_DIR", path_text(&scene.state)),
            (qmail_start::ENV_LEDGER, path_text(&scene.ledger)),
            (qmail_start::ENV_MESSAGES, "500".to_string()),
            (qmail_start::ENV_DOMAINS, "12".to_string()),
            (qmail_start::ENV_LATENCY_MS, "20".to_string()),
            (qmail_start::ENV_CONCURRENCY, CONCURRENCY.to_string()),
            (qmail_start::ENV_LOG_EVERY, "100".to_string()),
        ];
        env.extend(extra.iter().cloned());
        for (name, value) in env {
            fs::write(scene.env_file(name), format!("{value}\n"))
                .unwrap_or_else(|e| panic!("unable to write env/{name}: {e}"));
        }
        scene
    }

    /// The file of `name` in the service's env dir.
    pub fn env_file(&self, name: &str) -> PathBuf {
        self.service.join("env").join(name)
    }

    /// Makes `dir` hold `qmail-rspawn` -> the built shardspawn and
    /// `qmail-start` -> the stand-in, as a qmail home's `bin` would
    /// after install.sh.
    pub fn link_bins(&self, dir: &Path) {
        fs::create_dir_all(dir).expect("make the bin directory");
        for (name, target) in [
            ("qmail-rspawn", "shardspawn"),
            ("qmail-start", "shardspawn-fake-qmail-start"),
        ] {
            symlink(bin_path(target), dir.join(name))
                .unwrap_or_else(|e| panic!("unable to link {name}: {e}"));
        }
    }

    /// Starts the scanner on [`Scene::scan`], with the soft limits
    /// lowered first (see [`LOW_NOFILE`]) and a plain environment: PATH
    /// and the users the log and run scripts switch to.
    pub fn start_scanner(&self) -> Scanner {
        let (program, package) = match self.suite {
            Suite::Daemontools => ("svscan", "daemontools"),
            Suite::Runit => ("runsvdir", "runit"),
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        assert!(
            std::env::split_paths(&path).any(|d| d.join(program).is_file()),
            "{program} is not in PATH: install {package} (.ci/run does)"
        );
        let nproc = if Uid::effective().is_root() {
            format!(
                "if ulimit -u >/dev/null 2>&1; then f=-u; else f=-p; fi; \
                 ulimit -S $f {LOW_NPROC} || exit 111; "
            )
        } else {
            String::new()
        };
        let script = format!(
            "ulimit -S -n {LOW_NOFILE} || exit 111; {nproc}exec \"$@\""
        );
        let out = fs::File::create(&self.scanner_out).expect("scanner.out");
        let me = current_user();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(program)
            .arg(&self.scan)
            .env_clear()
            .env("PATH", &path)
            .env("QMAILL_USER", &me)
            .env("QMAILR_USER", &me)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup scanner.out"))
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("unable to start {program}: {e}"));
        Scanner { child }
    }

    /// The ledger as written so far.
    pub fn ledger(&self) -> Ledger {
        Ledger::read(&self.ledger).expect("read the ledger")
    }

    /// Waits until the ledger has a run whose pid is not in `not`, with
    /// at least `results` results; returns its pid.
    pub fn wait_for_run(&self, not: &[u32], results: usize) -> u32 {
        let mut pid = None;
        let found = wait_for(
            || {
                pid = self
                    .ledger()
                    .runs
                    .iter()
                    .find(|r| !not.contains(&r.pid) && r.results() >= results)
                    .map(|r| r.pid);
                pid.is_some()
            },
            soon(),
        );
        assert!(
            found,
            "no run of the stand-in qmail-start (other than {not:?}) with \
             {results} results in the ledger; {}",
            self.post_mortem()
        );
        pid.expect("found")
    }

    /// Waits until the run of `pid` has its summary line; returns it.
    pub fn wait_for_summary(&self, pid: u32) -> Run {
        let mut run = None;
        let done = wait_for(
            || {
                run = self
                    .ledger()
                    .run(pid)
                    .filter(|r| r.summary.is_some())
                    .cloned();
                run.is_some()
            },
            soon(),
        );
        assert!(
            done,
            "the stand-in qmail-start {pid} wrote no summary; {}",
            self.post_mortem()
        );
        run.expect("found")
    }

    /// Checks that every command of the run of `pid` was answered
    /// exactly once and that it ended cleanly.
    pub fn assert_clean(&self, pid: u32) -> Run {
        let run = self.wait_for_summary(pid);
        let breaches = run.breaches();
        assert!(
            breaches.is_empty(),
            "run {pid}: {} commands, {} results; breaches: {breaches:#?}",
            run.sent(),
            run.results()
        );
        assert!(run.other.is_empty(), "run {pid}: {:?}", run.other);
        run
    }

    /// `shardspawn status --state-dir STATE`: exit code and output.
    pub fn status(&self) -> (Option<i32>, String) {
        run(Command::new(bin_path("shardspawn"))
            .arg("status")
            .arg("--state-dir")
            .arg(&self.state))
    }

    /// Waits until `shardspawn status` says shardspawn `rspawn` is up
    /// with every shard up and busy keys listed; returns the page.
    pub fn wait_for_status(&self, rspawn: u32) -> String {
        let mut page = String::new();
        let want = format!("shardspawn: up (pid {rspawn})");
        let ok = wait_for(
            || {
                let (code, text) = self.status();
                page = text;
                let shards_up = (0..SHARDS).all(|i| {
                    page.lines().any(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        w.len() > 2 && w[0] == i.to_string() && w[1] == "up"
                    })
                });
                code == Some(0)
                    && page.starts_with(&want)
                    && page.contains(&format!("{SHARDS} shards"))
                    && page.contains(&format!("{SLOTS} slots (2-byte"))
                    && shards_up
                    && page.contains("busiest keys:")
                    && page.contains(".test ")
            },
            soon(),
        );
        assert!(
            ok,
            "shardspawn status never showed {rspawn} up with {SHARDS} \
             shards, {SLOTS} slots and busy keys:\n{page}\n{}",
            self.post_mortem()
        );
        page
    }

    /// Waits until `DIR/current` holds a line containing `needle`.
    pub fn wait_for_log(&self, dir: &Path, needle: &str) -> String {
        let current = dir.join("current");
        let mut text = String::new();
        let ok = wait_for(
            || {
                text = read_text(&current);
                text.contains(needle)
            },
            soon(),
        );
        assert!(
            ok,
            "{} never held {needle:?}; it holds:\n{text}\n{}",
            current.display(),
            self.post_mortem()
        );
        text
    }

    /// Checks the logs shardspawn writes: `DIR/supervisor` and each
    /// `DIR/shardN` has a `current` with that role's start line, each
    /// line stamped by the logger (`stamped` says how a line begins).
    pub fn assert_shardspawn_logs(&self, stamped: fn(&str) -> bool) {
        let dirs = std::iter::once(("supervisor".to_string(), "supervisor"))
            .chain((0..SHARDS).map(|i| (format!("shard{i}"), "shard")));
        for (dir, role) in dirs {
            let needle = if role == "supervisor" {
                "shardspawn: supervisor: info: started".to_string()
            } else {
                format!("shardspawn: shard {}: info: started", &dir[5..])
            };
            let text = self.wait_for_log(&self.logs.join(&dir), &needle);
            for line in text.lines() {
                assert!(stamped(line), "{dir}: unstamped line {line:?}");
                assert!(line.contains("shardspawn: "), "{dir}: {line:?}");
            }
        }
    }

    /// Checks the soft and hard limits of process `pid` (the stand-in
    /// qmail-start: what every daemon it starts inherits) are at least
    /// what the run script derives from the env dir, and that the soft
    /// ones were raised from what the scanner started with.
    pub fn assert_limits_raised(&self, pid: u32) {
        let limits = read_text(Path::new(&format!("/proc/{pid}/limits")));
        let nofile = u64::from(SLOTS) + 64;
        let nproc = u64::from(SLOTS) + 2 * u64::from(SHARDS) + 32;
        let mut checks = vec![("Max open files", nofile)];
        if Uid::effective().is_root() {
            checks.push(("Max processes", nproc));
        }
        for (name, want) in checks {
            let line = limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name:?} in\n{limits}"));
            let values: Vec<&str> =
                line[name.len()..].split_whitespace().take(2).collect();
            for v in values {
                if v != "unlimited" {
                    let n: u64 = v.parse().expect("a number");
                    assert!(n >= want, "{name}: {line:?}, want >= {want}");
                }
            }
        }
    }
    /// What both supervision suites prove, once the scanner runs: the
    /// service comes up (`up_pid` reads svstat or sv status); the run
    /// script raised the limits; the env dir reached shardspawn, whose
    /// status shows mail flowing; shardspawn's per-process logs and the
    /// service's own log are written in the logger's format (`stamped`);
    /// and `restart` (svc -t, sv restart) makes the running qmail-send
    /// finish every delivery it had sent, exactly once, before a new one
    /// and a new shardspawn start. Returns the two stand-ins' pids.
    pub fn serve_then_restart(
        &self,
        up_pid: fn(&Path) -> Option<u32>,
        restart: (&str, &str),
        stamped: fn(&str) -> bool,
        never_up: &str,
    ) -> (u32, u32) {
        let service = &self.service;
        let mut first = None;
        assert!(
            wait_for(
                || {
                    first = up_pid(service);
                    first.is_some()
                },
                soon()
            ),
            "{never_up}; {}",
            self.post_mortem()
        );
        let first = first.expect("up");
        assert_eq!(self.wait_for_run(&[], 200), first, "the stand-in's pid");
        let rspawn = self.ledger().run(first).and_then(|r| r.rspawn);
        let rspawn = rspawn.expect("the start line names qmail-rspawn");
        self.assert_limits_raised(first);

        // The env dir reached shardspawn; mail is flowing through 3 shards.
        let page = self.wait_for_status(rspawn);
        eprintln!("{page}");

        // shardspawn's logs, one log directory per process.
        self.assert_shardspawn_logs(stamped);
        // qmail-send's log, through the service's log/run.
        let main = service.join("log").join("main");
        self.wait_for_log(&main, "status: local 0/0 remote");
        let text =
            self.wait_for_log(&main, "qmail-send/run: limits: open files");
        assert!(text.lines().all(stamped), "{text}");
        assert!(
            text.contains(&format!("pid {first}: qmail-rspawn pid {rspawn}"))
        );

        // The restart: qmail-send finishes what is in flight, then a new one.
        ok(restart.0, &[Path::new(restart.1), service]);
        let second = self.wait_for_run(&[first], 100);
        let old = self.assert_clean(first);
        assert!(old.term_busy.is_some(), "no SIGTERM reached {first}");
        assert!(!alive(rspawn), "the old shardspawn {rspawn} is still there");
        assert!(
            wait_for(|| up_pid(service) == Some(second), soon()),
            "{second} is not shown up"
        );
        let rspawn2 = self.ledger().run(second).and_then(|r| r.rspawn);
        let rspawn2 = rspawn2.expect("the start line names qmail-rspawn");
        self.wait_for_status(rspawn2);
        // The old shardspawn ended cleanly, and the new one logs into the
        // same directory (its logger took over the old one's lock).
        let supervisor = self.logs.join("supervisor");
        self.wait_for_log(
            &supervisor,
            "end of commands; finishing 0 deliveries in flight",
        );
        self.wait_for_log(&supervisor, &format!("started: pid {rspawn2},"));
        eprintln!(
            "first run: {} commands, {} in flight at SIGTERM; second: \
             {second}",
            old.sent(),
            old.term_busy.unwrap_or(0)
        );
        (first, second)
    }

    /// What a failed check prints: the scanner's output, the service's
    /// log and the supervisor's.
    pub fn post_mortem(&self) -> String {
        let tail = |p: &Path| {
            let text = read_text(p);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "scanner output:\n{}\nservice log:\n{}\nsupervisor log:\n{}",
            tail(&self.scanner_out),
            tail(&self.service.join("log/main/current")),
            tail(&self.logs.join("supervisor/current"))
        )
    }
}

/// The scanner and its process group: every supervise/runsv, run script,
/// logger, stand-in and shardspawn process under it. Dropping it kills
/// the whole group, so nothing outlives the test, even when it panics.
pub struct Scanner {
    child: Child,
}

impl Scanner {
    /// The scanner's pid, which is also its process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        // The leader is not reaped until after this, so the group id
        // cannot have been reused.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pgid), SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion: exit code and stdout + stderr.
pub fn run(cmd: &mut Command) -> (Option<i32>, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        }
        Err(e) => panic!("unable to run {cmd:?}: {e}"),
    }
}

/// Runs `program args...` and asserts it exits 0; returns its output.
pub fn ok(program: &str, args: &[&Path]) -> String {
    let (code, text) = run(Command::new(program).args(args));
    assert_eq!(code, Some(0), "{program} {args:?}: {text}");
    text
}

/// A file's text, empty if it cannot be read (yet).
pub fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The pid in the first `(pid N)` of `text`, as svstat and sv print it.
pub fn pid_in(text: &str) -> Option<u32> {
    let at = text.find("(pid ")? + 5;
    let end = text[at..].find(')')? + at;
    text[at..end].parse().ok()
}

/// Whether process `pid` exists (a zombie counts: it is not reaped).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn path_text(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// The user running the test, by name if it has one.
fn current_user() -> String {
    let uid = Uid::effective();
    match User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// Copies a directory tree, keeping file modes (the run scripts must
/// stay executable).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("make the service directory");
    let entries = fs::read_dir(from)
        .unwrap_or_else(|e| panic!("unable to read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("read a directory entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap_or_else(|e| {
                panic!("unable to copy {}: {e}", src.display())
            });
        }
    }
}
