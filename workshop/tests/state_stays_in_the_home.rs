//! Every test's shardspawn keeps its status files in the test's own
//! home, never in the host's `/run/shardspawn`: the fixture
//! ([`shardspawn_workshop::spawner::Spawner`]) always sets a state
//! directory inside the home, and a spawner it starts publishes its
//! supervisor status there, naming its own pid, and not in `/run`.
//!
//! `/run/shardspawn` may hold files from runs that are not ours (other
//! checkouts, an installed service), so the check is by pid: the host's
//! supervisor file must not name the supervisor this test started.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardspawn_common::command::DelnumWidth;
use shardspawn_workshop::QmailHome;
use shardspawn_workshop::spawner::{
    HOST_STATE_DIR, Spawner, state_dir, status_names_pid,
};
use shardspawn_workshop::util::{deadline_in, wait_for};

fn value(cmd: &Command, key: &str) -> Option<String> {
    let text = |s: &OsStr| s.to_string_lossy().into_owned();
    cmd.get_envs().find(|(k, _)| *k == key)?.1.map(text)
}

#[test]
fn the_fixture_always_names_a_state_dir_inside_the_home() {
    let home = QmailHome::new().unwrap();
    for width in [DelnumWidth::One, DelnumWidth::Two] {
        let s = Spawner::new(&home, width, 2);
        let cmd = s.command();
        let dir = PathBuf::from(value(&cmd, "SHARDSPAWN_STATE_DIR").unwrap());
        assert!(dir.starts_with(home.path()), "{}", dir.display());
        assert_eq!(dir, state_dir(&home));
        assert_eq!(s.status_file(), home.path().join("state/supervisor"));
        assert!(!s.status_file().starts_with(HOST_STATE_DIR));
    }
}

#[test]
fn the_fixture_sets_what_every_test_sets_and_later_values_win() {
    let home = QmailHome::new().unwrap();
    let cmd = Spawner::new(&home, DelnumWidth::Two, 3)
        .slots(1000)
        .env("SHARDSPAWN_SHARDS", "4")
        .command();
    let want = [
        ("SHARDSPAWN_SHARDS", "4"),
        ("SHARDSPAWN_SLOTS", "1000"),
        ("SHARDSPAWN_DELNUM_BYTES", "2"),
        ("SHARDSPAWN_INITIAL_LIMIT", "0"),
        // No DNS unless a test brings its own server.
        ("SHARDSPAWN_SITES", "0"),
    ];
    for (k, v) in want {
        assert_eq!(value(&cmd, k).as_deref(), Some(v), "{k}");
    }
    let home_text = home.path().to_string_lossy().into_owned();
    assert_eq!(value(&cmd, "SHARDSPAWN_HOME"), Some(home_text));
    let owner = home.owner_uid().to_string();
    assert_eq!(value(&cmd, "SHARDSPAWN_QUEUE_OWNER"), Some(owner));
    let remote = value(&cmd, "QMAILREMOTE").unwrap();
    assert!(remote.ends_with("shardspawn-fake-remote"), "{remote}");
    // A cleared environment: nothing of the test's own leaks in.
    assert_eq!(cmd.get_envs().count(), 9);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_started_supervisor_publishes_its_status_in_the_home_not_in_run() {
    let home = QmailHome::new().unwrap();
    let s = Spawner::new(&home, DelnumWidth::One, 2);
    let mut emu = s.start().unwrap();
    let pid = emu.pid();
    let mine = s.status_file();
    let published = wait_for(
        || status_names_pid(&read(&mine), pid),
        deadline_in(Duration::from_secs(20)),
    );
    assert!(published, "no status for pid {pid} in {}", mine.display());
    let host = Path::new(HOST_STATE_DIR).join("supervisor");
    assert!(
        !status_names_pid(&read(&host), pid),
        "pid {pid} also wrote {}",
        host.display()
    );
    emu.close_commands();
    assert!(emu.wait_exit(deadline_in(Duration::from_secs(20))).is_some());
}
