//! Issue 14: every command of the `shardspawn` binary reads its command
//! line alike. `--help` prints the usage on stdout and exits 0;
//! `--version` says `shardspawn VERSION`; a flag or argument it does not
//! know is named in one line on stderr with exit 100; `limits explain`
//! takes `--limits FILE` before or after its domains; a reader that goes
//! away ends a command quietly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use shardspawn_common::domain::shard_for;
use shardspawn_workshop::QmailHome;
use shardspawn_workshop::util::bin_path;

/// `shardspawn ARGS` in a clean environment plus `env`.
fn shardspawn(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin_path("shardspawn"));
    // No DNS: `limits explain` would ask this machine's resolver.
    cmd.env_clear()
        .env("SHARDSPAWN_SITES", "0")
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every command, as its words.
const COMMANDS: [&[&str]; 6] = [
    &[],
    &["limits", "check"],
    &["limits", "explain"],
    &["limits", "rules"],
    &["status"],
    &["simulate"],
];

#[test]
fn every_command_answers_help_with_its_usage_on_stdout() {
    for words in COMMANDS {
        for help in ["--help", "-h"] {
            let args: Vec<&str> =
                words.iter().copied().chain([help]).collect();
            let out = shardspawn(&args, &[]);
            assert_eq!(out.status.code(), Some(0), "{args:?}");
            let stdout = text(&out.stdout);
            assert!(stdout.starts_with("usage: shardspawn"), "{args:?}");
            let name = words.first().copied().unwrap_or("[--home DIR]");
            assert!(
                stdout.lines().next().unwrap().contains(name),
                "{args:?}: {stdout}"
            );
            assert_eq!(text(&out.stderr), "", "{args:?}");
        }
    }
    // `limits --help` too, and help after a good flag.
    for args in [&["limits", "--help"][..], &["status", "--json", "--help"]] {
        let out = shardspawn(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).starts_with("usage: shardspawn"));
    }
}

#[test]
fn version_says_the_name_and_version() {
    for flag in ["--version", "-V"] {
        let out = shardspawn(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            text(&out.stdout),
            format!("shardspawn {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(text(&out.stderr), "");
    }
}

#[test]
fn an_unknown_flag_is_named_in_one_line_and_exits_100() {
    for words in COMMANDS {
        let args: Vec<&str> =
            words.iter().copied().chain(["--nope"]).collect();
        let out = shardspawn(&args, &[]);
        assert_eq!(out.status.code(), Some(100), "{args:?}");
        let command = words.join(" ");
        let want = if command.is_empty() {
            "shardspawn: unknown flag --nope\n".to_owned()
        } else {
            format!("shardspawn: {command}: unknown flag --nope\n")
        };
        assert_eq!(text(&out.stderr), want, "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
    // An inline value is not taken for part of the flag's name.
    let out = shardspawn(&["--nope=1"], &[]);
    assert_eq!(out.status.code(), Some(100));
    assert_eq!(text(&out.stderr), "shardspawn: unknown flag --nope\n");
}

#[test]
fn an_extra_argument_is_named_in_one_line_and_exits_100() {
    let home = QmailHome::new().unwrap();
    let file = home.write_file("limits", b":4\n").unwrap();
    let file = file.to_str().unwrap();
    let table: [(&[&str], &str); 6] = [
        (&["extra"], "shardspawn: unexpected argument extra\n"),
        (
            &["limits", "check", file, "extra"],
            "shardspawn: limits check: unexpected argument extra\n",
        ),
        (
            &["limits", "rules", file, "extra"],
            "shardspawn: limits rules: unexpected argument extra\n",
        ),
        (
            &["status", "extra"],
            "shardspawn: status: unexpected argument extra\n",
        ),
        (
            &["simulate", "extra"],
            "shardspawn: simulate: unexpected argument extra\n",
        ),
        (&["limits", "nope"], "shardspawn: limits: unknown command nope\n"),
    ];
    for (args, want) in table {
        let out = shardspawn(args, &[]);
        assert_eq!(out.status.code(), Some(100), "{args:?}");
        assert_eq!(text(&out.stderr), want, "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
    // A flag without its value, and explain without a domain.
    let table: [(&[&str], &str); 3] = [
        (&["--shards"], "shardspawn: --shards: missing value\n"),
        (&["status", "--keys"], "shardspawn: status: --keys: missing value\n"),
        (
            &["limits", "explain"],
            "shardspawn: limits explain: missing DOMAIN\n",
        ),
    ];
    for (args, want) in table {
        let out = shardspawn(args, &[]);
        assert_eq!(out.status.code(), Some(100), "{args:?}");
        assert_eq!(text(&out.stderr), want, "{args:?}");
    }
}

#[test]
fn a_settings_flag_still_beats_the_environment() {
    // A bad value from the environment, a good one from the flag: the
    // flag wins, so startup gets as far as the (missing) queue: 111.
    let out = shardspawn(
        &["--slots", "7", "--home=/nonexistent/qmail-home-for-test"],
        &[("SHARDSPAWN_SLOTS", Path::new("0"))],
    );
    assert_eq!(out.status.code(), Some(111), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    // And a bad flag value is a bad setting, named as before.
    let out = shardspawn(&["--slots=0"], &[]);
    assert_eq!(out.status.code(), Some(100));
    assert!(
        text(&out.stderr)
            .contains("bad setting: --slots=0: must be at least 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn explain_takes_limits_before_or_after_its_domains() {
    let home = QmailHome::new().unwrap();
    let file = home.write_file("limits", b":4\nd1.test:7\n").unwrap();
    let f = file.to_str().unwrap();
    let want = format!(
        "d1.test: rule {f} line 2 'd1.test:7'; key d1.test; limit 7; shard \
         {} of 2\nd2.test: rule {f} line 1 ':4' (default); key d2.test; \
         limit 4; shard {} of 2\n",
        shard_for(b"d1.test", 2),
        shard_for(b"d2.test", 2)
    );
    let shards = [("SHARDSPAWN_SHARDS", Path::new("2"))];
    for args in [
        &["limits", "explain", "--limits", f, "d1.test", "d2.test"][..],
        &["limits", "explain", "d1.test", "d2.test", "--limits", f],
        &["limits", "explain", "d1.test", &format!("--limits={f}"), "d2.test"],
    ] {
        let out = shardspawn(args, &shards);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "{args:?}");
        assert_eq!(text(&out.stderr), "");
    }
    // The flag beats SHARDSPAWN_LIMITS; a named file that is not there
    // is an error, as for `limits check FILE`.
    let other = home.write_file("other", b":9\n").unwrap();
    let env = [("SHARDSPAWN_LIMITS", other.as_path()), shards[0]];
    let out =
        shardspawn(&["limits", "explain", "d1.test", "--limits", f], &env);
    assert!(text(&out.stdout).contains("limit 7;"), "{}", text(&out.stdout));
    let absent = home.path().join("absent");
    let absent = absent.to_str().unwrap();
    let out = shardspawn(&["limits", "explain", "--limits", absent, "d"], &[]);
    assert_eq!(out.status.code(), Some(111));
    assert_eq!(
        text(&out.stderr),
        format!("shardspawn limits: {absent}: no such file\n")
    );
}

/// Runs `args`, reads one line of its stdout, closes the pipe, and
/// returns the exit status and stderr: `| head -1`.
fn head_1(args: &[String], env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin_path("shardspawn"));
    cmd.env_clear()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "no first line");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // Far more than a pipe holds (64 KiB), so the command is still
    // writing when the reader goes away, whatever the scheduling.
    let mut args: Vec<String> = vec!["limits".into(), "explain".into()];
    args.extend((0..5000).map(|i| format!("domain{i}.example.test")));
    let absent = Path::new("/nonexistent/limits");
    let env =
        [("SHARDSPAWN_LIMITS", absent), ("SHARDSPAWN_SHARDS", Path::new("3"))];
    let (code, stderr) = head_1(&args, &env);
    assert_eq!(stderr, "", "stderr of `limits explain ... | head -1`");
    assert_eq!(code, Some(0));
}

#[test]
fn an_unreadable_control_file_is_temporary_a_broken_one_is_not() {
    // A directory reads as EISDIR, for root too: 111, as the file may
    // read next time; a line that does not parse is 100.
    let home = QmailHome::new().unwrap();
    let dir = home.path().to_str().unwrap();
    let broken = home.write_file("broken", b"d1.test:x\n").unwrap();
    let broken = broken.to_str().unwrap();
    let table: [(&[&str], i32); 5] = [
        (&["limits", "check", dir], 111),
        (&["limits", "rules", dir], 111),
        (&["limits", "explain", "--limits", dir, "d1.test"], 111),
        (&["limits", "check", broken], 100),
        (&["limits", "explain", "d1.test", "--limits", broken], 100),
    ];
    for (args, code) in table {
        let out = shardspawn(args, &[]);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let stderr = text(&out.stderr);
        let want = if code == 111 {
            format!("shardspawn limits: unable to read {dir}: ")
        } else {
            format!("shardspawn limits: {broken}: line 1: d1.test:x: ")
        };
        assert!(stderr.starts_with(&want), "{args:?}: {stderr}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
}
