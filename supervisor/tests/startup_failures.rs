//! A fatal setup error exits without announcing: qmail-send must see EOF
//! on the result pipe before any byte ("hath the daemon spawn no fire?"),
//! never a concurrency it would then rely on.
//!
//! (This file also makes `cargo test` build the `shardspawn` and
//! `shardspawn-fake-remote` binaries that the end-to-end tests in
//! `tests/` run.)

use std::process::{Command, Stdio};

fn run(env: &[(&str, &str)]) -> (Option<i32>, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardspawn"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run shardspawn");
    (out.status.code(), out.stdout)
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
