//! What a result from qmail-remote says about its destination: the
//! response rules file (`HOME/control/responserules`), the built-in
//! rules, and the site-level pushback that adaptation reacts to.
//!
//! The file follows the limits file's habits: one rule a line, blank
//! lines and `#` comments ignored, blanks around fields trimmed. A rule
//! is `ACTION:DURATION:PATTERN`, split at the first two ':'s, so the
//! pattern may hold ':' itself:
//!
//! ```text
//! suspend:15m:unexpected volume      Yahoo's TSS04: stop for 15 minutes
//! limit=2:1h:too many connections    at most 2 at once for an hour
//! rate=10/m:30m:rate limit           at most 10 starts a minute
//! adapt::421 4.7.0                   counts as the site pushing back
//! ignore::mailbox full               not about the site at all
//! ```
//!
//! ACTION is `adapt` or `ignore` (with an empty DURATION), or `limit=N`
//! (1 to 65535), `rate=N/s|m|h` or `suspend`, each for DURATION: `N`
//! seconds, or `Ns`, `Nm`, `Nh` (at most a week). PATTERN is matched
//! against the text of a `Z` or `D` result from qmail-remote (never
//! against shardspawn's own refusals), ASCII case ignored; `*` matches
//! any run of bytes, and the pattern may match anywhere in the text.
//! The first rule that matches decides; the file's rules come before the
//! built-in ones ([`BUILT_IN`]), so an `ignore` line in the file turns a
//! built-in rule off.
//!
//! With no rule matching, a result is site-level pushback when
//! qmail-remote says it could not connect, that the greeting failed, or
//! that the remote host said 421 (closing the channel): see
//! [`judge`]. A recipient's own 4xx or 5xx, a DNS failure and every
//! other text are neutral.

use std::fmt;
use std::time::Duration;

use crate::control::{self, ControlError, trim};
use crate::limits::Rate;

/// What a rule does when its pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Count the result as site-level pushback.
    Adapt,
    /// Not feedback at all.
    Ignore,
    /// The key's limit is at most this for the duration.
    Limit(u32),
    /// The key's rate is at most this for the duration.
    Rate(Rate),
    /// The key is suspended for the duration.
    Suspend,
}

/// Where a rule came from, for the reason a key changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Line N of the file.
    Line(usize),
    /// Built-in rule N (1-based, in [`BUILT_IN`] order).
    BuiltIn(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "response rule {n}"),
            Origin::BuiltIn(n) => write!(f, "built-in rule {n}"),
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseRule {
    /// Its line, or its place among the built-in rules.
    pub origin: Origin,
    /// What it does.
    pub action: Action,
    /// For how long (zero for `adapt` and `ignore`).
    pub duration: Duration,
    /// The pattern as written, trimmed.
    pub pattern: String,
    /// The pattern lowercased and split at its `*`s, empty parts
    /// dropped.
    parts: Vec<Vec<u8>>,
}

/// The rules every shardspawn has, after the file's, in order: receivers'
/// well-known words for "too many connections", "slow down" and "go away
/// for a while". A per-recipient rate text (Gmail's "receiving mail at a
/// rate") is not about the site, so it comes first, as `ignore`.
pub const BUILT_IN: &[&str] = &[
    "ignore::receiving mail at a rate",
    "adapt::too many connections",
    "adapt::too many concurrent",
    "adapt::too many simultaneous",
    "rate=30/m:10m:rate limit",
    "rate=30/m:10m:rate-limit",
    "rate=30/m:10m:ratelimit",
    "rate=30/m:10m:unusual rate",
    "rate=30/m:10m:too many messages",
    "suspend:5m:server busy",
    "suspend:15m:unexpected volume",
];

/// The longest DURATION: a week.
const DURATION_MAX: u64 = 7 * 24 * 3600;

/// The rules in force: the file's, then the built-in ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responses {
    rules: Vec<ResponseRule>,
    /// How many of `rules` came from the file.
    from_file: usize,
}

impl Default for Responses {
    fn default() -> Responses {
        Responses::built_in()
    }
}

impl Responses {
    /// No file: the built-in rules only.
    pub fn built_in() -> Responses {
        let rules = BUILT_IN
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut rule = ResponseRule::parse(line.as_bytes())
                    .expect("built-in rules parse");
                rule.origin = Origin::BuiltIn(i + 1);
                rule
            })
            .collect();
        Responses { rules, from_file: 0 }
    }

    /// Parses the file's contents; the first bad line is the error.
    pub fn parse(text: &[u8]) -> Result<Responses, ControlError> {
        let mut rules = Vec::new();
        for (n, line) in control::lines(text) {
            let mut rule = ResponseRule::parse(line)
                .map_err(|why| ControlError::new(n, line, why))?;
            rule.origin = Origin::Line(n);
            rules.push(rule);
        }
        let from_file = rules.len();
        rules.extend(Responses::built_in().rules);
        Ok(Responses { rules, from_file })
    }

    /// Every rule in force, the file's first.
    pub fn rules(&self) -> &[ResponseRule] {
        &self.rules
    }

    /// How many rules came from the file.
    pub fn from_file(&self) -> usize {
        self.from_file
    }

    /// The first rule whose pattern is in `lower` (a result's text,
    /// ASCII lowercased).
    pub fn find(&self, lower: &[u8]) -> Option<&ResponseRule> {
        self.rules.iter().find(|r| r.matches(lower))
    }
}

impl ResponseRule {
    /// Parses one trimmed line that is no comment; the error says why.
    fn parse(line: &[u8]) -> Result<ResponseRule, String> {
        let mut fields = line.splitn(3, |&b| b == b':');
        let action = trim(fields.next().unwrap_or_default());
        let (Some(duration), Some(pattern)) = (fields.next(), fields.next())
        else {
            return Err("not ACTION:DURATION:PATTERN".to_owned());
        };
        let (duration, pattern) = (trim(duration), trim(pattern));
        let action = parse_action(action)?;
        let timed = !matches!(action, Action::Adapt | Action::Ignore);
        let duration = match (timed, duration.is_empty()) {
            (true, true) => return Err("this action needs a duration".into()),
            (false, false) => {
                return Err("adapt and ignore take no duration".into());
            }
            (false, true) => Duration::ZERO,
            (true, false) => parse_duration(duration)?,
        };
        if pattern.is_empty() || pattern.iter().all(|&b| b == b'*') {
            return Err("empty pattern".to_owned());
        }
        if pattern.iter().any(|&b| b == 0 || b == b'\r') {
            return Err("a pattern cannot hold NUL or CR".to_owned());
        }
        let parts = pattern
            .to_ascii_lowercase()
            .split(|&b| b == b'*')
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Ok(ResponseRule {
            origin: Origin::Line(0),
            action,
            duration,
            pattern: String::from_utf8_lossy(pattern).into_owned(),
            parts,
        })
    }

    /// Whether the pattern is in `lower`: its parts in order, anywhere.
    pub fn matches(&self, lower: &[u8]) -> bool {
        let mut rest = lower;
        for part in &self.parts {
            match find(rest, part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_action(text: &[u8]) -> Result<Action, String> {
    let lower = text.to_ascii_lowercase();
    match lower.as_slice() {
        b"adapt" => Ok(Action::Adapt),
        b"ignore" => Ok(Action::Ignore),
        b"suspend" => Ok(Action::Suspend),
        _ => {
            if let Some(n) = lower.strip_prefix(b"limit=") {
                return crate::limits::limit(n)
                    .map(Action::Limit)
                    .map_err(|why| format!("limit={}: {why}", show(n)));
            }
            if let Some(r) = lower.strip_prefix(b"rate=") {
                return Rate::parse(r).map(Action::Rate);
            }
            Err(format!(
                "unknown action {}: adapt, ignore, limit=N, rate=N/m or \
                 suspend",
                show(text)
            ))
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `N`, `Ns`, `Nm` or `Nh`, 1 second to a week.
fn parse_duration(text: &[u8]) -> Result<Duration, String> {
    let bad = || {
        format!(
            "a duration is N, Ns, Nm or Nh, 1 second to {} hours",
            DURATION_MAX / 3600
        )
    };
    let (digits, unit) = match text.last() {
        Some(b's' | b'S') => (&text[..text.len() - 1], 1),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 60),
        Some(b'h' | b'H') => (&text[..text.len() - 1], 3600),
        _ => (text, 1),
    };
    if digits.is_empty() || digits.len() > 9 {
        return Err(bad());
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = show(digits).parse().map_err(|_| bad())?;
    let secs = n * unit;
    if secs == 0 || secs > DURATION_MAX {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// What one finished delivery says about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Delivered (`K`).
    Good,
    /// The site pushed back; the words say how.
    Pushback(String),
    /// A rule with a timed action matched.
    Rule(&'a ResponseRule),
    /// Nothing to learn: a recipient's 4xx, a DNS failure, an `ignore`.
    Neutral,
}

/// Judges a result body (letter and text, as sent to qmail-send) from a
/// qmail-remote that ran.
pub fn judge<'a>(responses: &'a Responses, body: &[u8]) -> Verdict<'a> {
    let Some((&letter, text)) = body.split_first() else {
        return Verdict::Neutral;
    };
    if letter == b'K' {
        return Verdict::Good;
    }
    let lower = text.to_ascii_lowercase();
    if let Some(rule) = responses.find(&lower) {
        return match rule.action {
            Action::Adapt => Verdict::Pushback(format!(
                "{} matched \"{}\"",
                rule.origin, rule.pattern
            )),
            Action::Ignore => Verdict::Neutral,
            Action::Limit(_) | Action::Rate(_) | Action::Suspend => {
                Verdict::Rule(rule)
            }
        };
    }
    let said = |words: &[u8]| find(&lower, words).is_some();
    if said(b"wasn't able to establish an smtp connection") {
        Verdict::Pushback("no SMTP connection".to_owned())
    } else if said(b"but greeting failed") {
        Verdict::Pushback("greeting failed".to_owned())
    } else if said(b"remote host said: 421") {
        Verdict::Pushback("the remote host said 421".to_owned())
    } else {
        Verdict::Neutral
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Per;

    fn verdict(responses: &Responses, body: &str) -> String {
        match judge(responses, body.as_bytes()) {
            Verdict::Good => "good".into(),
            Verdict::Pushback(why) => format!("pushback: {why}"),
            Verdict::Rule(rule) => format!("rule: {}", rule.origin),
            Verdict::Neutral => "neutral".into(),
        }
    }

    #[test]
    fn qmail_remote_texts_are_judged_site_or_recipient() {
        let r = Responses::built_in();
        let table = [
            ("K1.2.3.4 accepted message.\nRemote host said: 250 ok\n", "good"),
            (
                "ZSorry, I wasn't able to establish an SMTP connection. \
                 (#4.4.1)\n",
                "pushback: no SMTP connection",
            ),
            (
                "ZConnected to 1.2.3.4 but greeting failed.\nRemote host \
                 said: 554 go away\n",
                "pushback: greeting failed",
            ),
            (
                "Z1.2.3.4 does not like recipient.\nRemote host said: 421 \
                 4.3.2 closing\nGiving up on 1.2.3.4.\n",
                "pushback: the remote host said 421",
            ),
            (
                "Z1.2.3.4 does not like recipient.\nRemote host said: 450 \
                 4.2.1 mailbox busy\nGiving up on 1.2.3.4.\n",
                "neutral",
            ),
            (
                "Z1.2.3.4 does not like recipient.\nRemote host said: 452 \
                 4.2.2 over quota\nGiving up on 1.2.3.4.\n",
                "neutral",
            ),
            (
                "ZSorry, I couldn't find any host by that name. (#4.1.2)\n",
                "neutral",
            ),
            (
                "ZConnected to 1.2.3.4 but greeting failed.\nRemote host \
                 said: 421 4.7.0 Too many concurrent SMTP connections\n",
                "pushback: built-in rule 3 matched \"too many concurrent\"",
            ),
            (
                "Z1.2.3.4 does not like recipient.\nRemote host said: \
                 452-4.2.1 The user you are trying to contact is receiving \
                 mail at a rate that prevents additional messages\n",
                "neutral",
            ),
            (
                "Z1.2.3.4 failed after I sent the message.\nRemote host \
                 said: 451 4.7.500 Server busy. Please try again later\n",
                "rule: built-in rule 10",
            ),
            (
                "ZConnected to 1.2.3.4 but greeting failed.\nRemote host \
                 said: 421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily \
                 deferred due to unexpected volume or user complaints\n",
                "rule: built-in rule 11",
            ),
            ("Zqmail-remote crashed.\n", "neutral"),
            ("", "neutral"),
        ];
        for (body, want) in table {
            assert_eq!(verdict(&r, body), want, "{body}");
        }
    }

    #[test]
    fn the_file_comes_first_and_can_turn_a_built_in_rule_off() {
        let r = Responses::parse(
            b"# ours\n\n ignore :: Server Busy \nlimit=2 : 1h : too many \
              conn*ections\nrate=10/m:30:SLOW: down*please\nsuspend:2S:*\
              go*away*\n",
        )
        .unwrap();
        assert_eq!(r.from_file(), 4);
        assert_eq!(r.rules().len(), 4 + BUILT_IN.len());
        let rule = |body: &str| match judge(&r, body.as_bytes()) {
            Verdict::Rule(rule) => {
                Some((rule.origin, rule.action, rule.duration))
            }
            _ => None,
        };
        assert_eq!(verdict(&r, "Zserver busy\n"), "neutral");
        assert_eq!(
            rule("Z421 Too many connections from you"),
            Some((
                Origin::Line(4),
                Action::Limit(2),
                Duration::from_secs(3600)
            ))
        );
        assert_eq!(
            rule("Dslow: down, please"),
            Some((
                Origin::Line(5),
                Action::Rate(Rate { count: 10, per: Per::Minute }),
                Duration::from_secs(30)
            ))
        );
        assert_eq!(rule("Zslow: down"), None, "parts in order");
        assert_eq!(
            rule("ZGo Away"),
            Some((Origin::Line(6), Action::Suspend, Duration::from_secs(2)))
        );
        assert_eq!(r.rules()[3].pattern, "*go*away*");
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, why) in [
            ("suspend:5m", "not ACTION:DURATION:PATTERN"),
            ("hold:5m:x", "unknown action hold"),
            ("suspend::x", "needs a duration"),
            ("adapt:5m:x", "take no duration"),
            ("suspend:0:x", "a duration is"),
            ("suspend:8d:x", "a duration is"),
            ("suspend:9999999h:x", "a duration is"),
            ("limit=0:5m:x", "limit=0: a limit must be at least 1"),
            ("limit=x:5m:x", "not a number"),
            ("rate=5:5m:x", "a rate is"),
            ("suspend:5m: ** ", "empty pattern"),
        ] {
            let e = Responses::parse(format!("# c\n{text}\n").as_bytes())
                .unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert!(e.why.contains(why), "{text}: {}", e.why);
        }
    }

    #[test]
    fn built_in_rules_are_numbered_from_one() {
        let r = Responses::built_in();
        assert_eq!(r.rules()[0].origin, Origin::BuiltIn(1));
        assert_eq!(r.rules()[0].action, Action::Ignore);
        assert_eq!(r.from_file(), 0);
        assert_eq!(Origin::Line(3).to_string(), "response rule 3");
    }
}
