//! Issue 17, item 3: `shardspawn top` through the real binary, against
//! status files the test writes (as status_json does). Plain lines (no
//! terminal on stdout): the sort the user picks, and refusals per
//! minute from each key's `refusals` counter over two refreshes. Full
//! screen, in a detached 80x24 tmux session: the header and a key row
//! are on the screen, a key re-sorts it, and `q` ends it with exit 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardspawn_common::status::{KeyStatus, ShardStatus, SupervisorStatus};
use shardspawn_workshop::QmailHome;
use shardspawn_workshop::util::{bin_path, deadline_in, wait_for};

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `shardspawn ARGS` in a clean environment, stdout a pipe.
fn shardspawn(args: &[&str]) -> Output {
    Command::new(bin_path("shardspawn"))
        .env_clear()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Writes a status file as the processes do: whole, by a rename.
fn put(dir: &Path, name: &str, body: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn key(name: &str, running: u32, held: u32, refusals: u64) -> KeyStatus {
    KeyStatus {
        key: name.to_owned(),
        running,
        held,
        limit: 20,
        effective: 20,
        refusals,
        ..KeyStatus::default()
    }
}

/// A supervisor and one shard, both "up" (this process's pid), stamped
/// `at`: a.test is the busiest (6), b.test runs the most (4), c.test
/// is suspended and has an adapted limit and a reason.
fn write_state(dir: &Path, at: u64, results: u64, refusals: [u64; 3]) {
    let me = std::process::id();
    let supervisor = SupervisorStatus {
        pid: me,
        started: at - 600,
        updated: at,
        slots: 100,
        delnum_bytes: 1,
        shards: 1,
        in_flight: 13,
        results,
        // Nine in ten delivered, one in ten deferred.
        letters: [results - results / 10, results / 10, 0],
        sites: 0,
        ..SupervisorStatus::default()
    };
    let suspended = KeyStatus {
        effective: 2,
        suspended_until: at + 300,
        changed: at - 30,
        why: "suspended: 10 site-level failures in a row".to_owned(),
        ..key("c.test", 2, 1, refusals[2])
    };
    let shard = ShardStatus {
        shard: 0,
        pid: me,
        started: at - 600,
        updated: at,
        running: 7,
        held: 6,
        keys: vec![
            key("a.test", 1, 5, refusals[0]),
            key("b.test", 4, 0, refusals[1]),
            suspended,
        ],
        ..ShardStatus::default()
    };
    put(dir, "supervisor", &supervisor.render());
    put(dir, "shard0", &shard.render());
}

/// The key column of a block's table, in order.
fn key_order(block: &str) -> Vec<String> {
    let mut lines = block.lines().skip_while(|l| !l.starts_with("key "));
    assert!(lines.next().is_some(), "no table in:\n{block}");
    lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// A key's row, as words.
fn row<'a>(block: &'a str, name: &str) -> Vec<&'a str> {
    block
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{block}"))
        .split_whitespace()
        .collect()
}

fn state_dir(home: &QmailHome) -> PathBuf {
    let dir = home.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn once_sorts_by_the_column_asked_for() {
    let home = QmailHome::new().unwrap();
    let dir = state_dir(&home);
    write_state(&dir, unix_now(), 100, [10, 0, 100]);
    let d = dir.to_str().unwrap();
    let once = |sort: &str| -> String {
        let out =
            shardspawn(&["top", "--once", "--state-dir", d, "--sort", sort]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let busy = once("busy");
    assert_eq!(key_order(&busy), ["a.test", "b.test", "c.test"]);
    assert!(busy.starts_with("shardspawn up "), "{busy}");
    assert!(busy.contains("in flight 13  running 7  held 6"), "{busy}");
    let header: Vec<&str> = busy
        .lines()
        .find(|l| l.starts_with("key "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "key",
            "shard",
            "running",
            "held",
            "limit",
            "eff",
            "rate",
            "suspended",
            "ref/min",
            "changed",
            "why"
        ]
    );
    // One read: no rate yet. c.test's suspension, age and reason.
    assert_eq!(row(&busy, "a.test")[8], "-");
    let c = row(&busy, "c.test");
    assert_eq!(c[5], "2", "{busy}");
    assert!(c[7] == "5m" || c[7] == "4m", "{busy}");
    assert_eq!(c[9], "30s", "{busy}");
    assert_eq!(
        c[10..].join(" "),
        "suspended: 10 site-level failures in a row"
    );
    assert_eq!(key_order(&once("running")), ["b.test", "c.test", "a.test"]);
    assert_eq!(key_order(&once("held")), ["a.test", "c.test", "b.test"]);
    assert_eq!(key_order(&once("key")), ["a.test", "b.test", "c.test"]);
    assert_eq!(key_order(&once("suspended"))[0], "c.test");

    // --keys bounds the table; a bad column is a usage error.
    let out = shardspawn(&["top", "--once", "--state-dir", d, "--keys", "1"]);
    assert_eq!(key_order(&text(&out.stdout)), ["a.test"]);
    let out =
        shardspawn(&["top", "--once", "--state-dir", d, "--sort", "nope"]);
    assert_eq!(out.status.code(), Some(100));
    assert!(text(&out.stderr).contains("--sort=nope: not a column"));

    // Not running: said, exit 1.
    let empty = home.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out =
        shardspawn(&["top", "--once", "--state-dir", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).starts_with("shardspawn not running (no status in")
    );
}

#[test]
fn refusals_per_minute_come_from_the_counter_over_two_refreshes() {
    let home = QmailHome::new().unwrap();
    let dir = state_dir(&home);
    let t0 = unix_now() - 2;
    write_state(&dir, t0, 100, [10, 0, 100]);
    let mut child = Command::new(bin_path("shardspawn"))
        .env_clear()
        .args(["top", "--sort", "refusals", "--state-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks end with a blank line.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut block = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if tx.send(std::mem::take(&mut block)).is_err() {
                    break;
                }
            } else {
                block.push_str(&line);
                block.push('\n');
            }
        }
    });
    let first =
        rx.recv_timeout(Duration::from_secs(10)).expect("a first block");
    assert_eq!(row(&first, "a.test")[8], "-", "{first}");
    assert!(first.contains("results -/s"), "{first}");

    // Two seconds on: a.test refused 6 more (180 a minute), c.test 1
    // (30 a minute), b.test none; 200 more results (100 a second).
    write_state(&dir, t0 + 2, 300, [16, 0, 101]);
    let mut seen = String::new();
    let found = wait_for(
        || match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(block) => {
                seen = block;
                row(&seen, "a.test")[8] != "-"
            }
            Err(_) => false,
        },
        deadline_in(Duration::from_secs(10)),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no refusal rate within 10 s; last block:\n{seen}");
    assert_eq!(row(&seen, "a.test")[8], "180", "{seen}");
    assert_eq!(row(&seen, "c.test")[8], "30", "{seen}");
    assert_eq!(row(&seen, "b.test")[8], "0.0", "{seen}");
    assert_eq!(key_order(&seen), ["a.test", "c.test", "b.test"], "{seen}");
    assert!(seen.contains("results 100/s: K 90 Z 10 D 0.0"), "{seen}");
}

/// The tmux server of this test: its own socket (in the test's home,
/// so it goes with it), no config file.
struct Tmux(PathBuf);

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .args(["-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        text(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn full_screen_in_tmux_fits_80x24_resorts_and_quits_on_q() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipped: no tmux");
        return;
    }
    let home = QmailHome::new().unwrap();
    let dir = state_dir(&home);
    // The writer stays "up" while the test runs: rewritten each second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_state(&dir, unix_now(), 100 + n * 10, [10 + n, 0, 100]);
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let exit = home.path().join("exit");
    let command = format!(
        "{} top --state-dir {}; echo $? > {}",
        bin_path("shardspawn").display(),
        dir.display(),
        exit.display()
    );
    let tmux = Tmux(home.path().join("tmux"));
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        "sh",
        "-c",
        &command,
    ]);
    assert!(out.status.success(), "tmux: {}", text(&out.stderr));

    let mut screen = String::new();
    let shown = wait_for(
        || {
            screen = tmux.screen();
            // The footer too: a capture can catch a frame half drawn.
            screen.contains("in flight 13")
                && screen.contains("a.test")
                && screen.contains("q quit")
        },
        deadline_in(Duration::from_secs(10)),
    );
    assert!(shown, "no view within 10 s:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24, "{screen}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{screen}");
    assert!(lines[0].starts_with("shardspawn up "), "{screen}");
    assert!(screen.contains("q quit"), "{screen}");
    let order = |screen: &str| -> Vec<String> {
        screen
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.ends_with(".test"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        order(&screen)[..3],
        ["a.test", "b.test", "c.test"],
        "{screen}"
    );
    let c =
        screen.lines().find(|l| l.starts_with("c.test")).unwrap().to_owned();
    // Changed 30 s before the file's stamp; top reads its own clock, which
    // may have passed into the next second since the writer's.
    let ago = c.contains("30s") || c.contains("31s");
    assert!(c.contains(" 2 ") && ago, "{screen}");

    // r: by running.
    tmux.run(&["send-keys", "-t", "top", "r"]);
    let resorted = wait_for(
        || {
            screen = tmux.screen();
            order(&screen).first().map(String::as_str) == Some("b.test")
        },
        deadline_in(Duration::from_secs(5)),
    );
    assert!(resorted, "r did not sort by running:\n{screen}");
    assert!(screen.contains("sort running"), "{screen}");

    // q: it ends, exit 0 (running), and the session with it.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let ended = wait_for(
        || std::fs::read_to_string(&exit).is_ok_and(|s| s.ends_with('\n')),
        deadline_in(Duration::from_secs(5)),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(ended, "q did not end it:\n{}", tmux.screen());
    assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "0");
}

/// Live (not zombie) shardspawn processes whose command line names
/// `needle` (not the tmux server, whose command line names it too).
fn live_with(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            !zombie
                && argv0.ends_with(b"shardspawn")
                && text(&cmd).contains(needle)
        })
        .collect()
}

/// An ssh connection that drops hangs the terminal up under `top`:
/// crossterm would read its end over and over; top must end instead.
#[test]
fn a_terminal_that_hangs_up_ends_it() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipped: no tmux");
        return;
    }
    let home = QmailHome::new().unwrap();
    let dir = state_dir(&home);
    write_state(&dir, unix_now(), 100, [0, 0, 0]);
    let tmux = Tmux(home.path().join("tmux"));
    let bin = bin_path("shardspawn");
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        bin.to_str().unwrap(),
        "top",
        "--state-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "tmux: {}", text(&out.stderr));
    let needle = dir.to_str().unwrap();
    let mut screen = String::new();
    assert!(
        wait_for(
            || {
                screen = tmux.screen();
                screen.contains("a.test")
            },
            deadline_in(Duration::from_secs(10))
        ),
        "no view:\n{screen}"
    );
    assert_eq!(live_with(needle).len(), 1);
    tmux.run(&["kill-server"]);
    let gone = wait_for(
        || live_with(needle).is_empty(),
        deadline_in(Duration::from_secs(10)),
    );
    let left = live_with(needle);
    for pid in &left {
        let _ =
            Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    assert!(gone, "top still runs after its terminal hung up: {left:?}");
}
