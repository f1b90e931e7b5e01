//! A fatal setup error exits without announcing: qmail-send must see EOF
//! on the result pipe before any byte ("hath the daemon spawn no fire?"),
//! never a concurrency it would then rely on.
//!
//! (This file also makes `cargo test` build the `shardspawn` and
//! `shardspawn-fake-remote` binaries that the end-to-end tests in
//! `tests/` run.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn run(env: &[(&str, &str)]) -> (Option<i32>, Vec<u8>) {
    let (code, stdout, _) = run_with(env, &[]);
    (code, stdout)
}

/// Runs it with stdin at EOF: the exit code, what it wrote on fd 1 and
/// what it logged on fd 2.
fn run_with(
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardspawn"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        // A pipe, closed at once (epoll takes no /dev/null).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run shardspawn");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), out.stdout, log)
}

/// A qmail home that starts: queue/mess, control, a program that runs
/// (`bin/remote`, 0755) and our own uid as the queue owner. Removed on
/// drop.
struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Home {
        let home = std::env::temp_dir()
            .join(format!("shardspawn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join("queue/mess")).unwrap();
        std::fs::create_dir_all(home.join("control")).unwrap();
        std::fs::create_dir_all(home.join("bin")).unwrap();
        let remote = home.join("bin/remote");
        std::fs::write(&remote, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&remote, PermissionsExt::from_mode(0o755))
            .unwrap();
        Home(home)
    }

    fn path(&self, rel: &str) -> String {
        self.0.join(rel).to_str().unwrap().to_owned()
    }

    /// The settings every run here has, then `more` (later wins).
    fn env<'a>(
        &'a self,
        more: &[(&'a str, String)],
    ) -> Vec<(&'a str, String)> {
        let uid = std::fs::metadata(&self.0).unwrap().uid().to_string();
        let mut env = vec![
            ("SHARDSPAWN_HOME", self.path("")),
            ("SHARDSPAWN_QUEUE_OWNER", uid),
            ("SHARDSPAWN_STATE_DIR", self.path("state")),
            ("SHARDSPAWN_SHARDS", "1".to_owned()),
            ("QMAILREMOTE", self.path("bin/remote")),
        ];
        for (k, v) in more {
            env.retain(|(key, _)| key != k);
            env.push((k, v.clone()));
        }
        env
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs it in `home` with `more` settings and `args`: the exit code,
/// fd 1 and the log.
fn run_in(
    home: &Home,
    more: &[(&str, String)],
    args: &[&str],
) -> (Option<i32>, Vec<u8>, String) {
    let env = home.env(more);
    let env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_with(&env, args)
}

/// Refused: exit 100, nothing announced, and one fatal line that starts
/// with `want` (the setting, as it was spelled, and its value).
fn assert_refused(got: (Option<i32>, Vec<u8>, String), want: &str) {
    let (code, stdout, log) = got;
    assert_eq!(code, Some(100), "log: {log}");
    assert!(stdout.is_empty(), "announced {stdout:?}; log: {log}");
    let fatal: Vec<&str> =
        log.lines().filter(|l| l.contains(": fatal: ")).collect();
    assert_eq!(fatal.len(), 1, "log: {log}");
    let want = format!("fatal: bad setting: {want}");
    assert!(fatal[0].contains(&want), "want {want:?} in {log}");
    assert!(!log.contains("started:"), "it started: {log}");
}

/// Issue 15: a limits file the admin named and that is not there was
/// read as empty, one info line, and every destination got the built-in
/// default.
#[test]
fn a_named_limits_file_that_does_not_exist_exits_100_naming_it() {
    let home = Home::new("named-limits");
    let got =
        run_in(&home, &[("SHARDSPAWN_LIMITS", "control/nope".into())], &[]);
    assert_refused(
        got,
        &format!(
            "SHARDSPAWN_LIMITS=control/nope: no such file: {}",
            home.path("control/nope")
        ),
    );
    let nope = home.path("nope");
    let got = run_in(&home, &[], &["--limits", &nope]);
    assert_refused(got, &format!("--limits={nope}: no such file"));
}

#[test]
fn a_named_response_rules_file_that_does_not_exist_exits_100_naming_it() {
    let home = Home::new("named-rules");
    let nope = home.path("control/nope");
    let got = run_in(&home, &[("SHARDSPAWN_RESPONSES", nope.clone())], &[]);
    assert_refused(got, &format!("SHARDSPAWN_RESPONSES={nope}: no such file"));
    let got = run_in(&home, &[], &["--responses", "rules"]);
    assert_refused(got, "--responses=rules: no such file");
}

/// Issue 15: a QMAILREMOTE that cannot run was found only when every
/// remote delivery bounced.
#[test]
fn a_remote_that_cannot_run_exits_100_naming_qmailremote() {
    let home = Home::new("remote");
    let missing = home.path("bin/no-such-remote");
    let got = run_in(&home, &[("QMAILREMOTE", missing.clone())], &[]);
    assert_refused(got, &format!("QMAILREMOTE={missing}: unable to run it"));
    // Not executable: stock's exec fails with EACCES, a bounce too.
    let remote = home.path("bin/remote");
    std::fs::set_permissions(&remote, PermissionsExt::from_mode(0o644))
        .unwrap();
    let got = run_in(&home, &[], &[]);
    assert_refused(got, &format!("QMAILREMOTE={remote}: unable to run it"));
    // The flag beats the variable, and is named.
    let more = [("QMAILREMOTE", "/bin/sh".to_owned())];
    let got = run_in(&home, &more, &["--remote", &remote]);
    assert_refused(got, &format!("--remote={remote}: unable to run it"));
    // A directory passes access(X_OK), and exec still fails.
    let dir = home.path("bin");
    let got = run_in(&home, &[("QMAILREMOTE", dir.clone())], &[]);
    assert_refused(got, &format!("QMAILREMOTE={dir}: unable to run it"));
}

#[test]
fn a_remote_not_in_path_exits_100_naming_qmailremote() {
    let home = Home::new("remote-path");
    let bin = home.path("bin");
    // A bare name, and the default, are looked up in PATH as the shards
    // will look them up.
    let more = [("QMAILREMOTE", "remote".to_owned()), ("PATH", bin.clone())];
    let (code, stdout, log) = run_in(&home, &more, &[]);
    assert_eq!((code, stdout.len()), (Some(0), 1), "log: {log}");
    let more = [("QMAILREMOTE", "nope".to_owned()), ("PATH", bin.clone())];
    let got = run_in(&home, &more, &[]);
    assert_refused(
        got,
        &format!("QMAILREMOTE=nope: no executable nope in PATH={bin}"),
    );
    let env = home.env(&[("PATH", bin.clone())]);
    let env: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| *k != "QMAILREMOTE")
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    assert_refused(
        run_with(&env, &[]),
        &format!(
            "QMAILREMOTE=: unset, and no executable qmail-remote in PATH={bin}"
        ),
    );
}

/// Only a file that was named must be there: without one, an absent
/// limits or rules file means the built-in defaults, as before.
#[test]
fn absent_default_control_files_still_start() {
    let home = Home::new("defaults");
    assert!(!Path::new(&home.path("control/concurrencydomains")).exists());
    let (code, stdout, log) = run_in(&home, &[], &[]);
    assert_eq!(code, Some(0), "log: {log}");
    assert_eq!(stdout, [255], "log: {log}");
    assert!(log.contains("concurrencydomains (absent)"), "log: {log}");
}

#[test]
fn a_bad_setting_exits_100_without_announcing() {
    let (code, stdout) = run(&[("SHARDSPAWN_SLOTS", "0")]);
    assert_eq!(code, Some(100));
    assert!(stdout.is_empty(), "announced {stdout:?}");
    let (code, stdout) = run(&[("SHARDSPAWN_DELNUM_BYTES", "3")]);
    assert_eq!(code, Some(100));
    assert!(stdout.is_empty());
}

#[test]
fn a_missing_queue_exits_111_without_announcing() {
    let (code, stdout) =
        run(&[("SHARDSPAWN_HOME", "/nonexistent/qmail-home-for-test")]);
    assert_eq!(code, Some(111));
    assert!(stdout.is_empty(), "announced {stdout:?}");
}

#[test]
fn a_missing_queue_owner_exits_111_without_announcing() {
    let home = std::env::temp_dir()
        .join(format!("shardspawn-startup-{}", std::process::id()));
    std::fs::create_dir_all(home.join("queue/mess")).unwrap();
    let (code, stdout) = run(&[
        ("SHARDSPAWN_HOME", home.to_str().unwrap()),
        ("SHARDSPAWN_QUEUE_OWNER", "no-such-user-shardspawn"),
    ]);
    std::fs::remove_dir_all(&home).unwrap();
    assert_eq!(code, Some(111));
    assert!(stdout.is_empty(), "announced {stdout:?}");
}

#[test]
fn a_bad_setting_is_logged_in_the_log_dir_even_with_fd_2_closed() {
    // Under qmail-start fd 2 is closed: the fatal line must reach the
    // log directory the environment names, or the admin never learns why
    // remote delivery stopped. (Needs multilog: CI installs daemontools.)
    let dir = std::env::temp_dir()
        .join(format!("shardspawn-lastwords-{}", std::process::id()));
    let logs = dir.join("logs");
    let (code, stdout) = run(&[
        ("PATH", "/usr/bin:/bin"),
        ("SHARDSPAWN_SLOTS", "0"),
        ("SHARDSPAWN_LOG_DIR", logs.to_str().unwrap()),
    ]);
    assert_eq!(code, Some(100));
    assert!(stdout.is_empty());
    let current = logs.join("supervisor/current");
    let want = "fatal: bad setting: SHARDSPAWN_SLOTS=0: must be at least 1";
    // multilog writes when its input ends, which is now; give it a while.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&current).unwrap_or_default();
        if text.contains(want) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(text.contains(want), "log: {text:?}");
}

#[test]
fn a_broken_response_rules_file_exits_100_without_announcing() {
    // As a broken limits file does: the admin meant something by it, and
    // running without it would be a surprise. (Queue owner: our own uid,
    // so that startup reaches the control files.)
    let home = std::env::temp_dir()
        .join(format!("shardspawn-rules-{}", std::process::id()));
    std::fs::create_dir_all(home.join("queue/mess")).unwrap();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/responserules"), "suspend:0:x\n")
        .unwrap();
    let uid = std::fs::metadata(&home).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let (code, stdout) = run(&[
        ("SHARDSPAWN_HOME", home.to_str().unwrap()),
        ("SHARDSPAWN_QUEUE_OWNER", &uid.unwrap().to_string()),
        ("SHARDSPAWN_STATE_DIR", home.join("state").to_str().unwrap()),
    ]);
    std::fs::remove_dir_all(&home).unwrap();
    assert_eq!(code, Some(100));
    assert!(stdout.is_empty(), "announced {stdout:?}");
}
