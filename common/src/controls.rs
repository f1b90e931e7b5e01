//! The run-time controls file (issue 17): what `shardspawn control`
//! writes in the state directory and every shard reads.
//!
//! One control a line, fields separated by one space, the reason last
//! (it may hold spaces):
//!
//! ```text
//! KEY ACTION UNTIL WHO REASON
//! gmail.com suspend 1764336060 root provider asked us to slow down
//! @.outlook limit=2 1764339600 qmaild -
//! =big rate=30/m 1764339600 root warming up
//! yahoo.com resume 1764336120 root -
//! ```
//!
//! KEY is a limit key as `limits explain` and `status` print it (a
//! domain, `=group`, `@site`, `@.provider`); ACTION is `suspend`,
//! `limit=N`, `rate=N/s|m|h` or `resume`; UNTIL is when it ends, in
//! Unix seconds; WHO is the user who gave it. A `resume` line cancels
//! whatever suspension (automatic ones included) and pins a key has
//! when a shard first sees it, and is kept a short while
//! ([`RESUME_KEPT`]) so that every shard does. A key has at most one
//! line of each action. Lines whose time is past are dropped by the
//! next rewrite; a line that does not parse is skipped by the shards
//! (and named by `control list`), so one bad line cannot stop the rest.

use std::fmt;
use std::time::Duration;

use crate::limits::{LIMIT_MAX, Rate};

/// The file's name in the state directory.
pub const FILE: &str = "controls";

/// The lock `shardspawn control` takes while it rewrites [`FILE`].
pub const LOCK: &str = "controls.lock";

/// How long a `resume` line stays in the file: every shard looks at the
/// file four times a second, so a shard that is up sees it well
/// within this; one that starts later has nothing of the key to resume.
pub const RESUME_KEPT: Duration = Duration::from_secs(60);

/// The longest a control may last: a year. Longer is a typo.
pub const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a control does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer every delivery for the key with the suspension `Z`.
    Suspend,
    /// The key's limit is this, whatever adaptation and rules say.
    Limit(u32),
    /// The key's rate is this.
    Rate(Rate),
    /// Cancel the key's suspension (automatic or not) and pins.
    Resume,
}

impl Action {
    /// Which of a key's lines this is: one of each kind a key.
    pub fn kind(self) -> u8 {
        match self {
            Action::Suspend => 0,
            Action::Limit(_) => 1,
            Action::Rate(_) => 2,
            Action::Resume => 3,
        }
    }

    fn parse(word: &str) -> Result<Action, String> {
        match word {
            "suspend" => return Ok(Action::Suspend),
            "resume" => return Ok(Action::Resume),
            _ => {}
        }
        if let Some(n) = word.strip_prefix("limit=") {
            return parse_limit(n).map(Action::Limit);
        }
        if let Some(r) = word.strip_prefix("rate=") {
            return Rate::parse(r.as_bytes()).map(Action::Rate);
        }
        Err(format!(
            "{word}: not an action (suspend, limit=N, rate=N/m, resume)"
        ))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Suspend => f.write_str("suspend"),
            Action::Limit(n) => write!(f, "limit={n}"),
            Action::Rate(r) => write!(f, "rate={r}"),
            Action::Resume => f.write_str("resume"),
        }
    }
}

/// A limit for a pin: 1 to [`LIMIT_MAX`].
pub fn parse_limit(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=LIMIT_MAX).contains(n))
        .ok_or_else(|| format!("{text}: a limit is 1 to {LIMIT_MAX}"))
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The key, printable, as `status` shows it.
    pub key: String,
    /// What it does.
    pub action: Action,
    /// When it ends (for `resume`: when it is dropped), Unix seconds.
    pub until: u64,
    /// Who gave it.
    pub who: String,
    /// Why, one line; `-` for none given.
    pub reason: String,
}

impl Control {
    /// Parses one line (no newline).
    pub fn parse(line: &str) -> Result<Control, String> {
        let mut f = line.splitn(5, ' ');
        let mut field = |name: &str| {
            f.next()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("missing {name}"))
        };
        let key = field("key")?.to_string();
        let action = Action::parse(field("action")?)?;
        let until = field("until")?;
        let until = until
            .parse::<u64>()
            .map_err(|_| format!("{until}: not a time in Unix seconds"))?;
        let who = field("who")?.to_string();
        let reason = field("reason")?.to_string();
        if !key_ok(&key) {
            return Err(format!("{key}: not a key"));
        }
        Ok(Control { key, action, until, who, reason })
    }

    /// Whether it is still in force at `now` (Unix seconds).
    pub fn in_force(&self, now: u64) -> bool {
        self.until > now
    }

    /// Who and why, as a log line or `list` says it: `by hand: WHO:
    /// REASON` (no reason: `by hand: WHO`).
    pub fn by_hand(&self) -> String {
        if self.reason == "-" {
            format!("by hand: {}", self.who)
        } else {
            format!("by hand: {}: {}", self.who, self.reason)
        }
    }
}

/// `KEY ACTION UNTIL WHO REASON`, no newline.
impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.key, self.action, self.until, self.who, self.reason
        )
    }
}

/// A key as the file holds it: printable ASCII, no spaces (what
/// [`crate::domain::printable`] writes), at most 1024 bytes.
pub fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A reason or a user name made one field: control bytes and newlines
/// become spaces (a user name's spaces `_`), runs of spaces one, and
/// nothing is `-`. At most 200 bytes.
pub fn one_line(text: &str, spaces: bool) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() || c == ' ' { ' ' } else { c };
        let c = if c == ' ' && !spaces { '_' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    if out.is_empty() { "-".to_string() } else { out }
}

/// The file's lines: those that parse, and (line number, error) for the
/// rest. Blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> (Vec<Control>, Vec<(usize, String)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match Control::parse(line) {
            Ok(c) => good.push(c),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    (good, bad)
}

/// The file's text for `controls`: one line each, in order.
pub fn render(controls: &[Control]) -> String {
    let mut out = String::new();
    for c in controls {
        out.push_str(&c.to_string());
        out.push('\n');
    }
    out
}

/// Adds `new` to `controls` as `shardspawn control` does: lines past
/// `now` go; a `resume` takes the key's suspension and pins with it; a
/// suspension or pin takes the key's `resume` (and its own earlier
/// line of that kind).
pub fn add(controls: &mut Vec<Control>, new: Control, now: u64) {
    controls.retain(|c| {
        if !c.in_force(now) {
            return false;
        }
        if c.key != new.key {
            return true;
        }
        match new.action {
            Action::Resume => false,
            a => c.action.kind() != a.kind() && c.action != Action::Resume,
        }
    });
    controls.push(new);
}

/// Parses `90s`, `10m`, `2h`, `1d` (a bare number is seconds): at least
/// a second, at most [`LONGEST`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text}: a duration is like 90s, 10m, 2h or 1d");
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(secs);
    if secs == 0 || d > LONGEST {
        return Err(format!("{text}: a duration is 1s to 366d"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, action: Action, until: u64) -> Control {
        Control {
            key: key.into(),
            action,
            until,
            who: "root".into(),
            reason: "a reason".into(),
        }
    }

    #[test]
    fn lines_read_back_as_written() {
        let rate = Rate::parse(b"30/m").unwrap();
        let all = vec![
            c("gmail.com", Action::Suspend, 100),
            c("@.outlook", Action::Limit(2), 200),
            c("=big", Action::Rate(rate), 300),
            c("@mx.a.test", Action::Resume, 400),
        ];
        let text = render(&all);
        assert!(text.starts_with("gmail.com suspend 100 root a reason\n"));
        assert_eq!(parse(&text), (all, vec![]));
    }

    #[test]
    fn a_bad_line_is_named_and_the_rest_kept() {
        let text = "a.test suspend 10 root x\na.test stop 10 root x\n\
                    b.test limit=0 10 root x\nc.test suspend\n";
        let (good, bad) = parse(text);
        assert_eq!(good.len(), 1);
        let lines: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, [2, 3, 4]);
    }

    #[test]
    fn adding_replaces_its_kind_and_resume_clears_the_key() {
        let mut all = vec![
            c("a.test", Action::Suspend, 100),
            c("a.test", Action::Limit(3), 100),
            c("b.test", Action::Suspend, 100),
            c("old.test", Action::Suspend, 5),
        ];
        add(&mut all, c("a.test", Action::Suspend, 200), 10);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(!all.iter().any(|x| x.key == "old.test"));
        add(&mut all, c("a.test", Action::Resume, 70), 10);
        let a: Vec<_> = all.iter().filter(|x| x.key == "a.test").collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].action, Action::Resume);
        add(&mut all, c("a.test", Action::Limit(2), 70), 10);
        let a: Vec<_> = all.iter().filter(|x| x.key == "a.test").collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].action, Action::Limit(2));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "0s", "m", "5x", "-1s", "400d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons_and_names_are_one_field() {
        assert_eq!(one_line("  a\nb   c ", true), "a b c");
        assert_eq!(one_line("", true), "-");
        assert_eq!(one_line("x y", false), "x_y");
    }
}
