//! `shardspawn control`: the admin's hands on the running shards (issue
//! 17). It writes the controls file in the state directory
//! ([`shardspawn_common::controls`]), which every shard looks at four
//! times a second; it never touches the supervisor or a shard's pipes, so it
//! works the same whether qmail-start or a test started them.
//!
//! Only the owner of the state directory (the user shardspawn runs as,
//! qmail's) and root may write there, so only they may give controls: a
//! command from anyone else is refused on one line, exit 100, before it
//! tries. `list` reads, as `status` does.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lexopt::Arg::{Long, Short, Value};
use lexopt::Parser;
use nix::unistd::{Uid, User};

use shardspawn_common::controls::{
    self, Action, Control, FILE, LOCK, RESUME_KEPT, one_line,
};
use shardspawn_common::domain;
use shardspawn_common::limits::Rate;
use shardspawn_common::settings::Settings;
use shardspawn_common::status::utc;
use shardspawn_os::sys;

use crate::cmdline::{self, Out, Usage, flag_value};
use crate::status_cmd;

const USAGE: &str = "\
usage: shardspawn control suspend KEY --for DURATION [--reason TEXT]
       shardspawn control resume KEY [--reason TEXT]
       shardspawn control pin KEY --limit N|--rate N/s|N/m|N/h --for DURATION
                              [--reason TEXT]
       shardspawn control list
       (each takes [--state-dir DIR])

Gives the running shards a control for a limit key, as `limits explain`
and `status` print keys: a domain, =group, @site or @.provider. Shards
take it within a second, log it (\"by hand: WHO: REASON\"), keep it
across a restart, and apply it to a key that appears later.

suspend: every delivery for the key, held or new, is deferred with a Z
  that names when the suspension ends, until then.
resume:  cancels the key's suspension, automatic ones included, and its
  pins, now; its starts are spread over the next minute.
pin:     the key's limit (or rate) is N, whatever adaptation, the limits
  file and the response rules say, for DURATION.
list:    the controls in force, and the automatic suspensions the shards
  report, with who or which rule set each.

DURATION is like 90s, 10m, 2h or 1d. Only root and the owner of the
state directory (the user shardspawn runs as) may give controls.
";

/// What `control` is asked to do.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Help,
    List,
    Give { key: String, action: Action, lasts: Duration, reason: String },
}

fn parse(mut p: Parser) -> Result<(Ask, Option<PathBuf>), Usage> {
    let mut words: Vec<String> = Vec::new();
    let mut lasts = None;
    let mut reason = None;
    let mut limit = None;
    let mut rate = None;
    let mut dir = None;
    let text = |p: &mut Parser, flag: &str| -> Result<String, Usage> {
        let v = flag_value(p, flag)?;
        v.into_string().map_err(|_| Usage::new(format!("{flag}: not UTF-8")))
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("help") | Short('h') => return Ok((Ask::Help, None)),
            Long("for") => {
                let v = text(&mut p, "--for")?;
                lasts = Some(
                    controls::parse_duration(&v)
                        .map_err(|e| Usage::new(format!("--for={e}")))?,
                );
            }
            Long("reason") => reason = Some(text(&mut p, "--reason")?),
            Long("limit") => {
                let v = text(&mut p, "--limit")?;
                limit = Some(
                    controls::parse_limit(&v)
                        .map_err(|e| Usage::new(format!("--limit={e}")))?,
                );
            }
            Long("rate") => {
                let v = text(&mut p, "--rate")?;
                rate =
                    Some(Rate::parse(v.as_bytes()).map_err(|e| {
                        Usage::new(format!("--rate={v}: {e}"))
                    })?);
            }
            Long("state-dir") => {
                dir = Some(flag_value(&mut p, "--state-dir")?.into())
            }
            Value(v) => words.push(v.into_string().map_err(|v| {
                Usage::new(format!("{}: not UTF-8", v.display()))
            })?),
            arg => return Err(arg.unexpected().into()),
        }
    }
    let mut words = words.into_iter();
    let which = words.next().ok_or_else(|| {
        Usage::new("missing command: suspend, resume, pin or list")
    })?;
    if which == "list" {
        if let Some(extra) = words.next() {
            return Err(Usage::new(format!("unexpected argument {extra}")));
        }
        return Ok((Ask::List, dir));
    }
    let key = words
        .next()
        .ok_or_else(|| Usage::new(format!("{which}: missing KEY")))?;
    if let Some(extra) = words.next() {
        return Err(Usage::new(format!("unexpected argument {extra}")));
    }
    if !controls::key_ok(&key) {
        return Err(Usage::new(format!(
            "{key}: not a key (a domain, =group, @site or @.provider)"
        )));
    }
    // As the shards print keys: a domain normalised (case, a trailing
    // dot), a site or provider in lower case, a group as named.
    let key = if key.starts_with('=') {
        key
    } else if key.starts_with('@') {
        key.to_ascii_lowercase()
    } else {
        domain::printable(&domain::normalise(key.as_bytes()))
    };
    let need_for =
        || lasts.ok_or_else(|| Usage::new(format!("{which}: missing --for")));
    let action = match which.as_str() {
        "suspend" => Action::Suspend,
        "resume" => Action::Resume,
        "pin" => match (limit, rate) {
            (Some(n), None) => Action::Limit(n),
            (None, Some(r)) => Action::Rate(r),
            _ => {
                return Err(Usage::new(
                    "pin: give one of --limit N or --rate N/m",
                ));
            }
        },
        other => {
            return Err(Usage::new(format!(
                "{other}: not a command (suspend, resume, pin, list)"
            )));
        }
    };
    let lasts = match action {
        Action::Resume => RESUME_KEPT,
        _ => need_for()?,
    };
    let reason = one_line(reason.as_deref().unwrap_or(""), true);
    Ok((Ask::Give { key, action, lasts, reason }, dir))
}

/// Runs `control ...`; returns the exit code.
pub fn main(p: Parser) -> i32 {
    let (ask, dir) = match parse(p) {
        Ok(a) => a,
        Err(e) => return e.report("control"),
    };
    if ask == Ask::Help {
        return cmdline::help(USAGE);
    }
    let dir = match dir {
        Some(d) => d,
        None => match Settings::from_env(&|k| std::env::var_os(k)) {
            Ok(s) => s.home.join(&s.state_dir),
            Err(e) => {
                eprintln!("shardspawn control: bad setting: {e}");
                return 100;
            }
        },
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match ask {
        Ask::Help => unreachable!("answered above"),
        Ask::List => list(&dir, now),
        Ask::Give { key, action, lasts, reason } => {
            if let Err(code) = may_write(&dir) {
                return code;
            }
            let c = Control {
                key,
                action,
                until: now + lasts.as_secs(),
                who: who(),
                reason,
            };
            match give(&dir, c.clone(), now) {
                Ok(()) => {
                    let mut out = Out::new();
                    let r = writeln!(out, "{}", said(&c, now));
                    out.finish(r.map(|()| 0))
                }
                Err(e) => {
                    eprintln!(
                        "shardspawn control: unable to write {}: {e}",
                        dir.join(FILE).display()
                    );
                    111
                }
            }
        }
    }
}

/// Only root and the state directory's owner may give controls: the
/// directory is theirs alone (0750 and its owner's, as startup checks).
/// Anyone else is told so on one line, exit 100; no state directory is
/// 111 (nothing has run here yet, or /run was emptied).
fn may_write(dir: &Path) -> Result<(), i32> {
    let euid = Uid::effective().as_raw();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // Not even allowed to look at it: not its owner, not root.
            eprintln!(
                "shardspawn control: refused: only root and the owner of \
                 the state directory {} may give controls",
                dir.display()
            );
            return Err(100);
        }
        Err(e) => {
            eprintln!(
                "shardspawn control: unable to use the state directory {}: \
                 {e}",
                dir.display()
            );
            return Err(111);
        }
    };
    if euid == 0 || euid == meta.uid() {
        return Ok(());
    }
    let owner = User::from_uid(Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
    eprintln!(
        "shardspawn control: refused: only root and the owner of the state \
         directory {} ({owner}) may give controls",
        dir.display()
    );
    Err(100)
}

/// The user giving the control: the real user's name (under sudo, the
/// user who ran sudo, as root).
fn who() -> String {
    let uid = Uid::current();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid{uid}"), |u| u.name);
    let name = match std::env::var("SUDO_USER") {
        Ok(sudo) if uid.is_root() && !sudo.is_empty() => {
            format!("{name}({sudo})")
        }
        _ => name,
    };
    one_line(&name, false)
}

/// Adds `c` to the controls file under its lock, so that two admins at
/// once each keep the other's line: read, add, write a new file and
/// rename it over the old one (a shard reads the old or the new).
///
/// Root gives the files to the directory's owner and group: the shards
/// run as that user and must read what root wrote, and the owner must
/// be able to take the lock and rewrite the file after root did. (A
/// shard that looks between the rename and the chown cannot read it,
/// says so once, and reads it a quarter of a second later.)
fn give(dir: &Path, c: Control, now: u64) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    let owner = (Uid::effective().is_root() && meta.uid() != 0)
        .then_some((meta.uid(), meta.gid()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&lock, Some(uid), Some(gid))?;
    }
    lock.lock()?;
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let (mut lines, _bad) = controls::parse(&text);
    controls::add(&mut lines, c, now);
    sys::write_atomically(dir, FILE, controls::render(&lines).as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.join(FILE), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// What a command says it did, or what `list` says of a line.
fn said(c: &Control, now: u64) -> String {
    let left = c.until.saturating_sub(now);
    let when = format!("until {} ({left}s)", utc(c.until));
    match c.action {
        Action::Suspend => {
            format!("{} suspended {when}: {}", c.key, c.by_hand())
        }
        Action::Limit(n) => {
            format!("{} limit pinned to {n} {when}: {}", c.key, c.by_hand())
        }
        Action::Rate(r) => {
            format!("{} rate pinned to {r} {when}: {}", c.key, c.by_hand())
        }
        Action::Resume => format!(
            "{} resumed (its suspension and pins cancelled): {}",
            c.key,
            c.by_hand()
        ),
    }
}

/// `control list`: the lines in force, then the automatic suspensions
/// the shards' status files show.
fn list(dir: &Path, now: u64) -> i32 {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            eprintln!(
                "shardspawn control: unable to read {}: {e}",
                path.display()
            );
            return 111;
        }
    };
    let (lines, bad) = controls::parse(&text);
    let mut page = String::new();
    let mut any = false;
    for c in lines.iter().filter(|c| c.in_force(now)) {
        if c.action == Action::Resume {
            continue;
        }
        let _ = writeln!(page, "{}", said(c, now));
        any = true;
    }
    for (n, e) in bad {
        let _ = writeln!(page, "{} line {n} skipped: {e}", path.display());
    }
    if let Ok(view) = status_cmd::gather(dir) {
        for (s, _) in &view.shards {
            for k in &s.keys {
                let by_hand = k.why.contains("by hand: ");
                if k.suspended_until > now && !by_hand {
                    let left = k.suspended_until - now;
                    let _ = writeln!(
                        page,
                        "{} suspended until {} ({left}s): automatic, \
                         shard {}: {}",
                        k.key,
                        utc(k.suspended_until),
                        s.shard,
                        k.why
                    );
                    any = true;
                }
            }
        }
    }
    if !any {
        page.push_str("no controls in force\n");
    }
    let mut out = Out::new();
    let r = out.write_all(page.as_bytes());
    out.finish(r.map(|()| 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(args: &[&str]) -> Result<Ask, String> {
        parse(Parser::from_args(args.iter().copied()))
            .map(|(a, _)| a)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            ask(&["suspend", "Gmail.com.", "--for", "10m", "--reason", "x y"]),
            Ok(Ask::Give {
                key: "gmail.com".into(),
                action: Action::Suspend,
                lasts: Duration::from_secs(600),
                reason: "x y".into(),
            })
        );
        assert_eq!(
            ask(&["pin", "=big", "--limit", "3", "--for", "1h"]),
            Ok(Ask::Give {
                key: "=big".into(),
                action: Action::Limit(3),
                lasts: Duration::from_secs(3600),
                reason: "-".into(),
            })
        );
        assert_eq!(ask(&["list"]), Ok(Ask::List));
        assert!(ask(&["suspend", "a.test"]).unwrap_err().contains("--for"));
        assert!(ask(&["pin", "a.test", "--for", "1m"]).is_err());
        assert!(ask(&["stop", "a.test"]).is_err());
        assert!(ask(&[]).is_err());
        assert!(ask(&["suspend", "a b", "--for", "1m"]).is_err());
    }
}
