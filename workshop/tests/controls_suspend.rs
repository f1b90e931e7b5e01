//! Issue 17: `shardspawn control suspend` and `resume`, through the real
//! binary. A key suspended by hand under load answers what it holds and
//! what comes with the suspension `Z` naming its end, while other keys
//! flow; a resume before the end lets it start within a second; one
//! that ends by itself lets it start within a second of the end it
//! named, its starts spread for a minute (no storm); a
//! control given before a key exists applies when it appears; a resume
//! cancels an automatic suspension; a shard killed with a suspension in
//! force comes back with it; and nobody but root and the owner of the
//! state directory may give one.

mod adaptive_common;
mod controls_common;
mod limits_common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

use shardspawn_workshop::Emulator;
use shardspawn_workshop::remote::default_result;
use shardspawn_workshop::util::{nobody, wait_for};

use adaptive_common::{refuse, refused, suspended_until, unix_now};
use controls_common::{
    control, control_command, run, shard_of, shard_status, wait_read,
};
use limits_common::{Rig, STATE_DIR, finish, next, rcpt, show, soon};

const STATIC: [(&str, &str); 1] = [("SHARDSPAWN_INITIAL_LIMIT", "0")];

/// Sends one delivery to `host` on `delnum` and takes its result.
fn deliver(rig: &Rig, emu: &mut Emulator, delnum: u16, host: &str) -> Vec<u8> {
    rig.send(emu, delnum, &rcpt(&[], host));
    let r = next(emu);
    assert_eq!(r.delnum, delnum);
    r.body
}

/// Delivers to `host` until one is not deferred by its suspension `why`
/// (ending `until`); the moment it came back.
fn deliver_until_it_runs(
    rig: &Rig,
    emu: &mut Emulator,
    delnum: u16,
    host: &str,
    why: &str,
) -> Instant {
    let mut ran = None;
    let ok = wait_for(
        || {
            let body = deliver(rig, emu, delnum, host);
            if body.first() == Some(&b'K') {
                assert_eq!(
                    show(&body),
                    show(&default_result(host.as_bytes()))
                );
                ran = Some(Instant::now());
                return true;
            }
            suspended_until(&body, host, why);
            false
        },
        soon(),
    );
    assert!(ok, "{host} never ran again:\n{}", rig.log_text());
    ran.unwrap()
}

#[test]
fn a_key_suspended_by_hand_defers_with_its_end_others_flow_and_resume_is_prompt()
 {
    let mut rig = Rig::new("sus.test:2\nother.test:2\n", 2);
    let mut emu = rig.start(&STATIC);
    // Under load: 2 running (gated), 3 held.
    for d in 0..5 {
        rig.send(&mut emu, d, &rcpt(&["gate"], "sus.test"));
    }
    rig.wait_started(2);
    rig.wait_key("sus.test", |k| k.held == 3);

    let before = unix_now();
    let said = control(
        &rig,
        &["suspend", "sus.test", "--for", "10m", "--reason", "provider asked"],
    );
    assert!(said.starts_with("sus.test suspended until "), "{said}");
    let why = "by hand: root: provider asked";
    // The three held are answered at once, naming the end.
    let mut until = None;
    for _ in 0..3 {
        let r = next(&mut emu);
        assert!((2..5).contains(&r.delnum), "{}", r.delnum);
        let t = suspended_until(&r.body, "sus.test", why);
        assert!((before + 600..=unix_now() + 600).contains(&t), "{t}");
        assert!(until.is_none_or(|u| u == t));
        until = Some(t);
    }
    let until = until.unwrap();
    // New ones too; another key flows meanwhile.
    let body = deliver(&rig, &mut emu, 5, "sus.test");
    assert_eq!(suspended_until(&body, "sus.test", why), until);
    for d in 6..9 {
        let body = deliver(&rig, &mut emu, d, "other.test");
        assert_eq!(show(&body), show(&default_result(b"other.test")));
    }
    rig.wait_log(&["sus.test: suspended until", why], 1);
    rig.wait_key("sus.test", |k| k.suspended_until == until);
    let list = control(&rig, &["list"]);
    assert!(list.contains("sus.test suspended until"), "{list}");
    assert!(list.contains(why), "{list}");
    // The two running were not stopped.
    rig.gate.open();
    for _ in 0..2 {
        let r = next(&mut emu);
        assert!(r.delnum < 2 && r.body.starts_with(b"K"), "{}", show(&r.body));
    }

    // Resumed before its end: it starts within a second.
    let asked = Instant::now();
    control(&rig, &["resume", "sus.test", "--reason", "provider ok"]);
    let ran = deliver_until_it_runs(&rig, &mut emu, 9, "sus.test", why);
    let took = ran - asked;
    println!("resumed: first delivery ran {took:?} after the command");
    assert!(took < Duration::from_secs(1), "{took:?}");
    rig.wait_log(
        &["sus.test: resumed (suspension cancelled", "provider ok"],
        1,
    );
    let list = control(&rig, &["list"]);
    assert!(!list.contains("sus.test suspended"), "{list}");
    finish(&mut emu);
}

#[test]
fn a_suspension_ends_when_it_says_and_the_key_starts_again_spread() {
    let rig = Rig::new("burst.test:20\n", 1);
    let mut emu = rig.start(&STATIC);
    control(&rig, &["suspend", "burst.test", "--for", "2s"]);
    wait_read(&rig, 1, 1);
    let body = deliver(&rig, &mut emu, 0, "burst.test");
    let until = suspended_until(&body, "burst.test", "by hand: root");
    deliver_until_it_runs(&rig, &mut emu, 1, "burst.test", "by hand: root");
    // It ran again within a second of the end the Z named.
    assert!(unix_now() <= until + 1, "{} > {until} + 1", unix_now());
    rig.wait_log(&["burst.test: the suspension ended"], 1);
    // A burst (what qmail-send's SIGALRM flush sends) is spread: its
    // limit of 20 per 10 s for a minute, one start each 500 ms.
    let records = rig.recording().intervals().len();
    for d in 2..7 {
        rig.send(&mut emu, d, &rcpt(&[], "burst.test"));
    }
    for _ in 2..7 {
        assert!(next(&mut emu).body.starts_with(b"K"));
    }
    let mut starts: Vec<u64> = rig.recording().intervals()[records..]
        .iter()
        .map(|i| i.start)
        .collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 5);
    for pair in starts.windows(2) {
        let gap = Duration::from_nanos(pair[1] - pair[0]);
        assert!(gap >= Duration::from_millis(450), "{gap:?}");
    }
    finish(&mut emu);
}

#[test]
fn a_control_given_before_its_key_exists_applies_when_it_appears() {
    let rig = Rig::new("new.test:2\n", 2);
    let mut emu = rig.start(&STATIC);
    control(&rig, &["suspend", "new.test", "--for", "1h"]);
    wait_read(&rig, 1, 2);
    let body = deliver(&rig, &mut emu, 0, "new.test");
    let until = suspended_until(&body, "new.test", "by hand: root");
    assert!(until >= unix_now() + 3590, "{until}");
    assert_eq!(rig.recording().started(), 0);
    // Resumed, the key that now exists runs.
    control(&rig, &["resume", "new.test"]);
    deliver_until_it_runs(&rig, &mut emu, 1, "new.test", "by hand: root");
    finish(&mut emu);
}

#[test]
fn an_automatic_suspension_is_cancelled_by_hand() {
    const SAID: &str = "421 4.3.2 Service shutting down";
    let rig = Rig::new("auto.test:2\n", 2);
    let mut emu = rig.start(&[
        ("SHARDSPAWN_INITIAL_LIMIT", "0"),
        ("SHARDSPAWN_SUSPEND_AFTER", "1"),
        ("SHARDSPAWN_SUSPEND_SECONDS", "3600"),
    ]);
    rig.send(&mut emu, 0, &rcpt(&[&refuse(SAID)], "auto.test"));
    assert_eq!(show(&next(&mut emu).body), show(&refused(SAID)));
    let why = "1 site-level failures in a row";
    let body = deliver(&rig, &mut emu, 1, "auto.test");
    suspended_until(&body, "auto.test", why);
    // `list` names it, and that a rule, not a hand, set it.
    let mut list = String::new();
    let named = wait_for(
        || {
            list = control(&rig, &["list"]);
            list.contains("auto.test suspended until")
        },
        soon(),
    );
    assert!(named, "{list}");
    assert!(list.contains("automatic") && list.contains(why), "{list}");

    control(&rig, &["resume", "auto.test", "--reason", "fixed"]);
    deliver_until_it_runs(&rig, &mut emu, 2, "auto.test", why);
    rig.wait_log(&["auto.test: resumed", "by hand: root: fixed"], 1);
    rig.wait_key("auto.test", |k| k.suspended_until == 0 && k.failures == 0);
    finish(&mut emu);
}

#[test]
fn a_shard_killed_with_a_suspension_in_force_keeps_it() {
    let rig = Rig::new("kept.test:2\n", 2);
    let mut emu = rig.start(&STATIC);
    let shard = shard_of(&rig, "kept.test");
    control(&rig, &["suspend", "kept.test", "--for", "1h", "--reason", "x"]);
    wait_read(&rig, 1, 2);
    let why = "by hand: root: x";
    let body = deliver(&rig, &mut emu, 0, "kept.test");
    let until = suspended_until(&body, "kept.test", why);

    let mut old = 0;
    assert!(wait_for(
        || {
            old = shard_status(&rig, shard).map_or(0, |s| s.pid);
            old != 0
        },
        soon()
    ));
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let restarted = wait_for(
        || {
            shard_status(&rig, shard)
                .is_some_and(|s| s.pid != old && s.pid != 0 && s.stopped == 0)
        },
        soon(),
    );
    assert!(restarted, "shard {shard} never came back:\n{}", rig.log_text());
    // The new shard read the file before its first job: same end.
    let body = deliver(&rig, &mut emu, 1, "kept.test");
    assert_eq!(suspended_until(&body, "kept.test", why), until);
    assert_eq!(rig.recording().started(), 0);
    finish(&mut emu);
}

#[test]
fn controls_are_refused_to_anyone_but_root_and_the_owner() {
    if !geteuid().is_root() {
        println!("controls_suspend: refused: skipped: needs root");
        return;
    }
    let rig = Rig::new("x.test:2\n", 1);
    let mut emu = rig.start(&STATIC);
    let (uid, gid) = nobody();
    let dir = rig.home.path().join(STATE_DIR);
    for args in [
        &["suspend", "x.test", "--for", "1m"][..],
        &["resume", "x.test"][..],
        &["pin", "x.test", "--limit", "1", "--for", "1m"][..],
    ] {
        let mut cmd = control_command(&rig, args);
        cmd.uid(uid).gid(gid);
        let out = run(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(100), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("shardspawn control: refused: only root"));
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
    assert!(!dir.join("controls").exists());
    let body = deliver(&rig, &mut emu, 0, "x.test");
    assert!(body.starts_with(b"K"), "{}", show(&body));
    finish(&mut emu);
}

/// The shards run as the owner of the state directory (qmail's user),
/// not as root: what root writes there must be theirs to read, and the
/// owner must be able to give the next control after root did.
#[test]
fn what_root_writes_is_the_owners_to_read_and_rewrite() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !geteuid().is_root() {
        println!("controls_suspend: owner: skipped: needs root");
        return;
    }
    let (uid, gid) = nobody();
    let rig = Rig::new("x.test:2\n", 1);
    let dir = rig.home.path().join(STATE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
        .unwrap();
    nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into())).unwrap();
    // nobody must reach the directory through the home.
    let mut up = dir.parent();
    while let Some(p) = up {
        let mode = std::fs::metadata(p).unwrap().mode();
        if mode & 0o001 == 0 {
            println!(
                "controls_suspend: owner: skipped: {} closed",
                p.display()
            );
            return;
        }
        up = p.parent();
    }
    control(&rig, &["suspend", "x.test", "--for", "1m"]);
    for name in ["controls", "controls.lock"] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{name}");
    }
    let mut cmd = control_command(
        &rig,
        &["pin", "x.test", "--limit", "1", "--for", "1m"],
    );
    cmd.uid(uid).gid(gid);
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = std::fs::read_to_string(dir.join("controls")).unwrap();
    assert!(
        text.contains("x.test suspend ") && text.contains("x.test limit=1 ")
    );
}
