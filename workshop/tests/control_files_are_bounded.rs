//! Issue 15, findings 1 and 4: a control file is read one way, bounded,
//! wherever it is read (startup, reload, `limits check`), and whatever
//! the supervisor takes every shard takes.
//!
//! - A valid limits file of 60,000 rules (1.9 MB, more than the 1 MiB a
//!   shard used to take in one frame) is taken at startup and on reload:
//!   deliveries get their `K`, and no shard dies on it.
//! - A FIFO named as the limits file is refused at startup (exit 100, a
//!   line naming it) without waiting for a writer; put in the file's
//!   place while running, it is not read, and deliveries go on.
//! - `/dev/zero` (or a link to it) as a control file is refused at once,
//!   in bounded memory (the process runs under an address-space limit
//!   it could never exceed by reading the file whole).
//! - `limits check` refuses what the supervisor refuses, and names the
//!   cap of a file over it.

mod limits_common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, mkfifo};
use shardspawn_common::status::SupervisorStatus;
use shardspawn_workshop::home::LIMITS;
use shardspawn_workshop::remote::default_result;
use shardspawn_workshop::util::{bin_path, wait_for};

use limits_common::{Rig, finish, next, rcpt, show, soon};

const NOT_RELOADED: &str = "limits not reloaded, keeping the ones in force: ";

/// A valid limits file of `rules` domain rules and a default of
/// `default`: the size of the largest file seen in use.
fn large_limits(rules: usize, default: u32) -> String {
    let mut text = format!("# generated\n:{default}\n");
    for i in 0..rules {
        text.push_str(&format!(
            "d{i:05}.example-customer.test:{}\n",
            1 + i % 50
        ));
    }
    text
}

/// The address-space limit a refusal must fit in: far below what
/// reading `/dev/zero` whole would take, far above what the binary
/// needs to start and refuse.
const AS_LIMIT_KIB: u64 = 512 * 1024;

/// `cmd` (a program, its arguments and a cleared environment), run under
/// an address-space limit of [`AS_LIMIT_KIB`] by the shell's `ulimit`.
fn bounded(cmd: &Command) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.env_clear()
        .arg("-c")
        .arg(format!("ulimit -v {AS_LIMIT_KIB} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh
}

/// Runs `cmd` with fd 0 a pipe no one writes (as a qmail-send that has
/// not spoken yet), waits for it to exit, and returns what it said;
/// kills it and panics if it has not exited soon: it hung.
fn run_soon(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    if !wait_for(
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
        soon(),
    ) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not exit: it hung");
    }
    let read = |child: &mut Child, out: bool| {
        let mut bytes = Vec::new();
        if out {
            child.stdout.take().unwrap().read_to_end(&mut bytes).unwrap();
        } else {
            child.stderr.take().unwrap().read_to_end(&mut bytes).unwrap();
        }
        bytes
    };
    let stdout = read(&mut child, true);
    let stderr = read(&mut child, false);
    Output { status: status.unwrap(), stdout, stderr }
}

/// Replaces the file at `path` with a FIFO, as `mv` would put one there.
fn fifo_in_place_of(path: &Path) {
    let tmp = path.with_extension("fifo");
    mkfifo(&tmp, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The supervisor's shard restarts, from its status file, once it has
/// published one.
fn restarts(rig: &Rig) -> u64 {
    let path =
        rig.home.path().join(limits_common::STATE_DIR).join("supervisor");
    let mut restarts = None;
    let published = wait_for(
        || {
            restarts = fs::read_to_string(&path)
                .ok()
                .and_then(|t| SupervisorStatus::parse(&t).ok())
                .map(|s| s.restarts);
            restarts.is_some()
        },
        soon(),
    );
    assert!(published, "no supervisor status in {}", path.display());
    restarts.unwrap()
}

/// Sends one delivery to each of `hosts` from `first` on, and checks each
/// is answered with the stand-in's `K`.
fn deliver(
    rig: &Rig,
    emu: &mut shardspawn_workshop::Emulator,
    first: u16,
    hosts: &[&str],
) {
    for (i, host) in hosts.iter().enumerate() {
        rig.send(emu, first + i as u16, &rcpt(&[], host));
    }
    let mut got: Vec<(u16, Vec<u8>)> = hosts
        .iter()
        .map(|_| {
            let r = next(emu);
            (r.delnum, r.body)
        })
        .collect();
    got.sort();
    for (i, host) in hosts.iter().enumerate() {
        let (delnum, body) = &got[i];
        assert_eq!(*delnum, first + i as u16);
        assert_eq!(
            show(body),
            show(&default_result(host.as_bytes())),
            "delnum {delnum}; log:\n{}",
            rig.log_text()
        );
    }
}

#[test]
fn a_valid_limits_file_over_a_mebibyte_is_taken_at_startup_and_on_reload() {
    let first = large_limits(60_000, 65_535);
    assert!(first.len() > 1 << 20, "{} bytes", first.len());
    let rig = Rig::new(&first, 2);
    let mut emu = rig.start(&[]);
    let hosts = [
        "d00001.example-customer.test",
        "d59999.example-customer.test",
        "other.test",
        "d1.test",
    ];
    deliver(&rig, &mut emu, 0, &hosts);

    // Another version, as large: the default differs, so each shard's
    // "limits in force" line shows it took the new one.
    rig.replace_limits(&large_limits(60_000, 65_534));
    rig.wait_log(&["limits reloaded from", "default 65534, 60001 rules"], 1);
    rig.wait_log(&["limits in force: default 65534"], usize::from(rig.shards));
    deliver(&rig, &mut emu, 4, &hosts);

    assert_eq!(restarts(&rig), 0, "log:\n{}", rig.log_text());
    let log = rig.log_text();
    assert!(!log.contains("died") && !log.contains("fatal"), "{log}");
    finish(&mut emu);
}

#[test]
fn a_fifo_as_the_limits_file_is_refused_at_startup_by_name() {
    let rig = Rig::new(":5\n", 1);
    let path = rig.home.path().join(LIMITS);
    fifo_in_place_of(&path);
    let out = run_soon(rig.command(&[]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "announced: {}", show(&out.stdout));
    assert_eq!(out.status.code(), Some(100), "{log}");
    let line = format!("{}: is a FIFO, not a regular file", path.display());
    assert!(log.lines().any(|l| l.ends_with(&line)), "{log}");
}

#[test]
fn a_fifo_put_in_place_of_the_limits_file_is_not_read_and_mail_flows() {
    let rig = Rig::new("d1.test:3\n", 2);
    let mut emu = rig.start(&[]);
    let path = rig.home.path().join(LIMITS);
    fifo_in_place_of(&path);
    // At once, rather than at the next look at the file.
    let supervisor = Pid::from_raw(i32::try_from(emu.pid()).unwrap());
    kill(supervisor, Signal::SIGHUP).unwrap();
    rig.wait_log(&[NOT_RELOADED, "is a FIFO, not a regular file"], 1);
    deliver(&rig, &mut emu, 0, &["d1.test", "d2.test", "d3.test"]);
    finish(&mut emu);
}

#[test]
fn dev_zero_as_a_control_file_is_refused_at_once_in_bounded_memory() {
    let rig = Rig::new(":5\n", 1);
    let rules = rig.home.path().join("control/responserules");
    std::os::unix::fs::symlink("/dev/zero", &rules).unwrap();
    let out = run_soon(bounded(&rig.command(&[])));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "announced: {}", show(&out.stdout));
    assert_eq!(out.status.code(), Some(100), "{:?}: {log}", out.status);
    let line = format!(
        "{}: is a character device, not a regular file",
        rules.display()
    );
    assert!(log.lines().any(|l| l.ends_with(&line)), "{log}");
}

#[test]
fn limits_check_refuses_what_the_supervisor_refuses() {
    let rig = Rig::new(":5\n", 1);
    let dir = rig.home.path();
    let fifo = dir.join("fifo");
    fifo_in_place_of(&fifo);
    let over = dir.join("over");
    // Valid but for its size: one comment line past the cap.
    let mut text = vec![b'#'; 8 << 20];
    text.push(b'\n');
    fs::write(&over, &text).unwrap();
    let large = dir.join("large");
    fs::write(&large, large_limits(60_000, 20)).unwrap();

    let check = |args: &[&str]| {
        let mut cmd = Command::new(bin_path("shardspawn"));
        cmd.env_clear().args(args);
        run_soon(bounded(&cmd))
    };
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    for (args, code, says) in [
        (
            vec!["limits", "check", &p(&fifo)],
            100,
            format!("{}: is a FIFO, not a regular file", fifo.display()),
        ),
        (
            vec!["limits", "rules", &p(&fifo)],
            100,
            format!("{}: is a FIFO, not a regular file", fifo.display()),
        ),
        (
            vec!["limits", "check", "/dev/zero"],
            100,
            "/dev/zero: is a character device, not a regular file".to_owned(),
        ),
        (
            vec!["limits", "explain", "--limits", "/dev/zero", "d1.test"],
            100,
            "/dev/zero: is a character device, not a regular file".to_owned(),
        ),
        (
            vec!["limits", "check", &p(&over)],
            100,
            format!(
                "{}: over 8388608 bytes (8 MiB), the most a control file \
                 may hold",
                over.display()
            ),
        ),
    ] {
        let out = check(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("shardspawn limits: {says}\n"), "{args:?}");
    }
    let out = check(&["limits", "check", &p(&large)]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            ": ok: default limit 20, site limit 20, 60000 domain rules"
        ),
        "{stdout}"
    );
}
