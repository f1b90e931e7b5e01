//! Issue 15, finding 11: `shardspawn status` says what is so.
//!
//! - A user who may not read the status is told "no permission", with
//!   the path and who may, not "not running".
//! - No state directory at all is "not running", exit 1, as an empty
//!   one is.
//! - After a clean stop the last counts are the final ones: 2,000
//!   deliveries, 2,000 results, none in flight, and the shards' reports
//!   add up to the same.
//! - "down N seconds" counts from the stop (or, for a process that died
//!   without its last write, from its last update), not from its start.
//! - A run with fewer shards than the last removes the files, `.prom`
//!   included, of the shards it no longer has.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::unistd::geteuid;
use shardspawn_workshop::util::nobody;

use shardspawn_common::command::DelnumWidth;
use shardspawn_workshop::spawner::{Spawner, status_names_pid};
use shardspawn_workshop::util::{bin_path, deadline_in, fork_lock, wait_for};
use shardspawn_workshop::{QmailHome, workload};

/// `shardspawn status ARGS --state-dir DIR` in a clean environment,
/// through `wrapper` (e.g. `setpriv ...`) if any.
fn status(dir: &Path, args: &[&str], wrapper: &[&str]) -> Output {
    let bin = bin_path("shardspawn");
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.env_clear()
        .arg("status")
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap();
}

/// A supervisor status file as the format documents it.
fn supervisor_text(
    pid: u32,
    started: u64,
    updated: u64,
    stopped: u64,
) -> String {
    format!(
        "shardspawn-status 1 supervisor\npid {pid}\nstarted {started}\n\
         updated {updated}\nstopped {stopped}\nslots 100\ndelnum_bytes 2\n\
         shards 1\nin_flight 0\nresults 2000\nrestarts 0\n"
    )
}

/// A shard's status file, likewise.
fn shard_text(pid: u32, started: u64, updated: u64, stopped: u64) -> String {
    format!(
        "shardspawn-status 1 shard\nshard 0\npid {pid}\nstarted {started}\n\
         updated {updated}\nstopped {stopped}\nrunning 0\nheld 0\n\
         received 2000\nreported 2000\ndeferred_by_limit 0\n"
    )
}

/// The pid of a process that has ended and been reaped.
fn dead_pid() -> u32 {
    let _lock = fork_lock();
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn status_for_a_user_who_may_not_read_it_says_no_permission() {
    if !geteuid().is_root() {
        println!("status_says_why: no permission: skipped: needs root");
        return;
    }
    let (uid, gid) = nobody();
    let reuid = format!("--reuid={uid}");
    let regid = format!("--regid={gid}");
    let as_nobody = ["setpriv", &reuid, &regid, "--clear-groups"];
    let home = QmailHome::new().unwrap();
    let now = unix_now();
    let me = std::process::id();

    // The directory is the group's (root's here) alone: not listable.
    let closed = home.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    set_mode(&closed, 0o750);
    std::fs::write(
        closed.join("supervisor"),
        supervisor_text(me, now, now, 0),
    )
    .unwrap();
    // A file left mode 0600 (umask 077, before files were 0640) in a
    // directory that is listable.
    let open = home.path().join("open");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o755);
    let file = open.join("supervisor");
    std::fs::write(&file, supervisor_text(me, now, now, 0)).unwrap();
    set_mode(&file, 0o600);

    for (dir, path) in [(&closed, &closed), (&open, &file)] {
        for args in [&[][..], &["--json"]] {
            let out = status(dir, args, &as_nobody);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(111), "{stdout}{stderr}");
            assert!(!stdout.contains("not running"), "{stdout}");
            let want = format!(
                "shardspawn status: no permission to read {}: run it as \
                 root or as a member of group root",
                path.display()
            );
            assert_eq!(stderr.trim_end(), want);
        }
    }
}

#[test]
fn with_no_state_directory_status_says_not_running_and_exits_1() {
    let home = QmailHome::new().unwrap();
    let dir = home.path().join("state");
    assert!(!dir.exists());
    let out = status(&dir, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "shardspawn: not running (no state directory {})\n",
            dir.display()
        )
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = status(&dir, &["--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["supervisor"].is_null());
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(0));
}

#[test]
fn after_a_clean_run_the_last_counts_are_in_the_status() {
    let _lock = fork_lock();
    let home = QmailHome::new().unwrap();
    let s = Spawner::new(&home, DelnumWidth::Two, 4).slots(1000);
    let mut emu = s.start().unwrap();
    let work = workload::generate(&home, 2000, 200, 1.0, 15, "");
    let report = emu.run(&work, 1000, deadline_in(Duration::from_secs(60)));
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(report.letters.k, 2000);
    emu.close_commands();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");

    let out = status_json(&s.state_dir());
    let sup = &out["supervisor"];
    assert_eq!(sup["state"], "down", "{out}");
    assert_eq!(sup["results"], 2000, "{out}");
    assert_eq!(sup["in_flight"], 0, "{out}");
    let shards = out["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "{out}");
    let reported: u64 =
        shards.iter().map(|s| s["reported"].as_u64().unwrap()).sum();
    assert_eq!(reported, 2000, "{out}");
    for shard in shards {
        assert_eq!(shard["state"], "down", "{out}");
        assert_eq!(
            (&shard["running"], &shard["held"]),
            (&0.into(), &0.into())
        );
    }
}

fn status_json(dir: &Path) -> serde_json::Value {
    let out = status(dir, &["--json"], &[]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// The seconds a status page's first line says its supervisor has been
/// in its state: `shardspawn: down (pid P) N seconds, ...`.
fn seconds_said(page: &str) -> u64 {
    let first = page.lines().next().unwrap_or("");
    let (_, rest) = first.split_once(") ").unwrap_or(("", ""));
    let n = rest.split(' ').next().unwrap_or("");
    n.parse().unwrap_or_else(|_| panic!("no seconds in {first:?}"))
}

#[test]
fn down_counts_from_the_stop_not_from_the_start() {
    let home = QmailHome::new().unwrap();
    let dir = home.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let pid = dead_pid();
    let now = unix_now();
    let day_ago = now - 86_400;
    // Up for a day, stopped 3 seconds ago: its last write says so.
    let stopped = now - 3;
    std::fs::write(
        dir.join("supervisor"),
        supervisor_text(pid, day_ago, stopped, stopped),
    )
    .unwrap();
    std::fs::write(
        dir.join("shard0"),
        shard_text(pid, day_ago, stopped, stopped),
    )
    .unwrap();
    let out = status(&dir, &[], &[]);
    let page = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{page}");
    assert!(page.starts_with(&format!("shardspawn: down (pid {pid}) ")));
    // Reading takes a moment (more on a busy machine), never a day.
    assert!((3..=60).contains(&seconds_said(&page)), "{page}");
    let row: Vec<&str> = page
        .lines()
        .find(|l| l.starts_with("0 "))
        .unwrap_or_else(|| panic!("no shard row in {page}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "down", "{page}");
    let secs: u64 = row[3].parse().unwrap();
    assert!((3..=60).contains(&secs), "{page}");

    // Died without its last write: down since its last update.
    let updated = now - 7;
    std::fs::write(
        dir.join("supervisor"),
        supervisor_text(pid, day_ago, updated, 0),
    )
    .unwrap();
    let page = text(&status(&dir, &[], &[]).stdout);
    assert!(page.starts_with("shardspawn: down "), "{page}");
    assert!((7..=60).contains(&seconds_said(&page)), "{page}");
}

#[test]
fn a_run_with_fewer_shards_removes_the_others_files() {
    let _lock = fork_lock();
    let home = QmailHome::new().unwrap();
    let dir = home.path().join("state");
    let names = |i: u16| [format!("shard{i}"), format!("shard{i}.prom")];

    let four = Spawner::new(&home, DelnumWidth::Two, 4);
    let mut emu = four.start().unwrap();
    let all = wait_for(
        || (0..4).flat_map(names).all(|n| dir.join(n).is_file()),
        deadline_in(Duration::from_secs(20)),
    );
    emu.close_commands();
    assert!(emu.wait_exit(deadline_in(Duration::from_secs(20))).is_some());
    assert!(all, "four shards never published");

    let two = Spawner::new(&home, DelnumWidth::Two, 2);
    let mut emu = two.start().unwrap();
    let pid = emu.pid();
    // Removed before the announcement, which start() waited for.
    for name in (2..4).flat_map(names) {
        assert!(!dir.join(&name).exists(), "{name} is still there");
    }
    let published = wait_for(
        || {
            let t = std::fs::read_to_string(two.status_file());
            t.is_ok_and(|t| status_names_pid(&t, pid))
        },
        deadline_in(Duration::from_secs(20)),
    );
    assert!(published);
    let out = status_json(&dir);
    let listed: Vec<u64> = out["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [0, 1], "{out}");
    emu.close_commands();
    assert!(emu.wait_exit(deadline_in(Duration::from_secs(20))).is_some());
}
