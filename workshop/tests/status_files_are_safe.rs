//! Issue 15, finding 7: the status files never write through a link,
//! and the state directory must be the spawner's user's alone.
//!
//! - A symlink planted at the name status used to be written through
//!   (`NAME.new`, opened with create and truncate), or at a status
//!   file's own name, leaves its target unchanged: files are written to
//!   a fresh exclusive temporary name and renamed. (The temporary names
//!   this process would take next are the unit test's, in `os::sys`.)
//! - Under qmail-start's umask 077 a state directory the spawner makes
//!   is 0750 and its files 0640, so `shardspawn status` works for the
//!   admin's group without root.
//! - A state directory of another user, or one its group or everyone
//!   may write in (0770, 0777, 1777), is refused before the
//!   announcement: exit 100 and one line naming it.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::geteuid;
use shardspawn_workshop::util::nobody;

use shardspawn_common::command::DelnumWidth;
use shardspawn_workshop::spawner::{Spawner, status_names_pid};
use shardspawn_workshop::util::{bin_path, deadline_in, wait_for};
use shardspawn_workshop::{Emulator, QmailHome};

const SHARDS: u16 = 2;

/// Every status file a run with [`SHARDS`] shards writes.
fn status_names() -> Vec<String> {
    let mut names = vec!["supervisor".to_string()];
    for i in 0..SHARDS {
        names.push(format!("shard{i}"));
        names.push(format!("shard{i}.prom"));
    }
    names
}

/// `s`'s command run as qmail-start runs it: with umask 077.
fn under_umask_077(s: &Spawner<'_>) -> Command {
    let plain = s.command();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("umask 077 && exec \"$0\"")
        .arg(bin_path("shardspawn"))
        .env_clear();
    for (k, v) in plain.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// Starts `s` under umask 077, waits until every status file names its
/// process, and stops it cleanly.
fn run_until_published(s: &Spawner<'_>) {
    let mut emu: Emulator = s.start_command(under_umask_077(s)).unwrap();
    let dir = s.state_dir();
    let pid = emu.pid();
    let published = wait_for(
        || {
            let text = std::fs::read_to_string(s.status_file());
            text.is_ok_and(|t| status_names_pid(&t, pid))
                && status_names().iter().all(|n| {
                    std::fs::symlink_metadata(dir.join(n))
                        .is_ok_and(|m| m.is_file())
                })
        },
        deadline_in(Duration::from_secs(20)),
    );
    emu.close_commands();
    let status = emu.wait_exit(deadline_in(Duration::from_secs(20)));
    assert!(published, "no status from pid {pid} in {}", dir.display());
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap();
}

#[test]
fn a_link_planted_where_status_is_written_is_not_followed() {
    let home = QmailHome::new().unwrap();
    let s = Spawner::new(&home, DelnumWidth::Two, SHARDS);
    let dir = s.state_dir();
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o750);
    let victim = home.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    for name in status_names() {
        symlink(&victim, dir.join(format!("{name}.new"))).unwrap();
    }
    symlink(&victim, dir.join("supervisor")).unwrap();

    run_until_published(&s);

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    for name in status_names() {
        let meta = std::fs::symlink_metadata(dir.join(&name)).unwrap();
        assert!(meta.is_file(), "{name} is not a file");
    }
}

#[test]
fn a_state_dir_made_under_umask_077_is_0750_and_its_files_0640() {
    let home = QmailHome::new().unwrap();
    let s = Spawner::new(&home, DelnumWidth::Two, SHARDS);
    let dir = s.state_dir();
    assert!(!dir.exists());

    run_until_published(&s);

    assert_eq!(mode(&dir), 0o750, "{}", dir.display());
    for name in status_names() {
        assert_eq!(mode(&dir.join(&name)), 0o640, "{name}");
    }
}

#[test]
fn a_state_dir_of_another_user_or_writable_by_others_is_refused() {
    if !geteuid().is_root() {
        println!("status_files_are_safe: refused: skipped: needs root");
        return;
    }
    let (nobody, _) = nobody();
    let cases: [(Option<u32>, u32, &str); 4] = [
        (Some(nobody), 0o750, &format!("owned by uid {nobody}, not by uid 0")),
        (None, 0o1777, "mode 1777 lets others write in it"),
        (None, 0o777, "mode 0777 lets others write in it"),
        (None, 0o770, "mode 0770 lets others write in it"),
    ];
    for (owner, dir_mode, why) in cases {
        let home = QmailHome::new().unwrap();
        let s = Spawner::new(&home, DelnumWidth::Two, SHARDS);
        let dir = s.state_dir();
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, dir_mode);
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
        }
        // qmail-send's end of the command pipe closes at once: a
        // spawner that does not refuse announces and exits 0.
        let out = s
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(100), "{dir_mode:o}: {log}");
        assert!(out.stdout.is_empty(), "it announced: {:?}", out.stdout);
        let want = format!(
            "shardspawn: supervisor: fatal: unsafe state directory {}: {why}",
            dir.display()
        );
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            lines.iter().any(|l| l.starts_with(&want)),
            "{want}\nnot in\n{log}"
        );
        // Nothing was written there.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid()),
            (dir_mode, owner.unwrap_or(0))
        );
    }
}
