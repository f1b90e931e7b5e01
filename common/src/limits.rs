//! The per-destination limits file (`HOME/control/concurrencydomains`):
//! its syntax, its rules, and which rule, key and limit apply to a
//! recipient's domain.
//!
//! The file follows qmail's control-file habits (like `smtproutes`): one
//! rule a line, `KEY:VALUE`, split at the *first* ':'. Blank lines and
//! lines whose first non-blank byte is `#` are ignored; blanks (spaces,
//! tabs, carriage returns) around the line, the key and the value are
//! trimmed.
//!
//! ```text
//! :20                  the default for every domain not named
//! example.com:5        one domain
//! .example.com:3       every subdomain of example.com, not example.com
//! gmail.com:=google    gmail.com belongs to group "google" ...
//! .google.com:=google  ... and so does every subdomain of google.com
//! =google:10           ... and the whole group shares one limit of 10
//! ```
//!
//! A value is a limit (1 to 65535) or `=NAME`, membership of a group
//! (for domain and subdomain keys only). A limit may carry a rate after
//! a comma, `N/s`, `N/m` or `N/h` (N 1 to 65535): `gmail.com:20,600/m`
//! lets at most 600 deliveries a minute start for the key, one every
//! 100 ms, and `:20,60/m` gives every domain such a rate of its own. Domains are stored as
//! [`domain::normalise`] leaves a recipient's host (escapes decoded,
//! ASCII lowercased, trailing dots removed, IP literals as `[a.b.c.d]`),
//! suffixes likewise (as names: `.1.2.3.4` is no literal), group names
//! lowercased; so a rule matches every spelling of its domain, and
//! printing a parsed file ([`Limits`]'s `Display`) gives its rules
//! normalised, which parse back to the same rules. A domain that a
//! rule cannot spell plainly (one with a ':' or a space, or starting
//! with '=' or '#') is written with `\DDD` escapes, as the resolver
//! reads them: `\061google:5` names the domain `=google`.
//!
//! Matching, most specific first: the exact domain; else the longest
//! subdomain rule (qmail's `smtproutes` order); else the default (20
//! when the file is absent or has no default line). An IP literal
//! matches exact rules only; a name in brackets that is no literal
//! (`[x].example.com`) is a name like any other.
//!
//! A delivery is counted under a **key**: `=NAME` for a group, otherwise
//! the domain itself, so a subdomain rule or the default gives each
//! domain its own limit, not a shared one. Recipient domains come from
//! outside, and one could literally be `=google`: it must not share the
//! group's count. [`domain::normalise`] writes a leading '=' as `\061`,
//! the resolver's spelling of the same name, so no normalised domain
//! starts with '='; [`Limits::lookup`] keys any domain that does (one
//! not normalised) the same way. A key never holds a NUL: it travels to
//! its shard as a NUL-terminated field of a job frame.
//!
//! XXX: an IPv6 literal (`[IPv6:::1]`) is a name to stock qmail-remote,
//! which has no IPv6 and fails to resolve it; the file can name it only
//! with its colons escaped (`[ipv6\058\058\0581]`).
//!
//! [`domain::normalise`]: crate::domain::normalise

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::control::{self, ControlError, trim};
use crate::domain;

/// The limit of a domain when the file is absent or has no default line.
pub const DEFAULT_LIMIT: u32 = 20;

/// The largest limit a rule may give.
pub const LIMIT_MAX: u32 = 65535;

/// The longest group name, in bytes.
const GROUP_NAME_MAX: usize = 64;

/// How often deliveries for a key may start: `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Starts per period, `1..=65535`.
    pub count: u32,
    /// The period: 1 s, 60 s or 3600 s.
    pub per: Per,
}

/// The period of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    /// `/s`
    Second,
    /// `/m`
    Minute,
    /// `/h`
    Hour,
}

impl Rate {
    /// The time between two starts: the period divided by the count.
    pub fn interval(self) -> std::time::Duration {
        let period: u64 = match self.per {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        };
        std::time::Duration::from_nanos(
            period * 1_000_000_000 / u64::from(self.count.max(1)),
        )
    }

    /// Parses `N/s`, `N/m` or `N/h` (the unit in either case, as the
    /// rest of the file).
    pub fn parse(text: &[u8]) -> Result<Rate, String> {
        let text = trim(text);
        let bad = || format!("a rate is N/s, N/m or N/h, N 1 to {LIMIT_MAX}");
        let slash = text.iter().position(|&b| b == b'/').ok_or_else(bad)?;
        let count = limit(trim(&text[..slash])).map_err(|_| bad())?;
        let per = match trim(&text[slash + 1..]) {
            b"s" | b"S" => Per::Second,
            b"m" | b"M" => Per::Minute,
            b"h" | b"H" => Per::Hour,
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }

    /// The lower of two rates (the one with the longer interval).
    pub fn min(self, other: Rate) -> Rate {
        if other.interval() > self.interval() { other } else { self }
    }
}

/// `N/s`, `N/m` or `N/h`.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.per {
            Per::Second => 's',
            Per::Minute => 'm',
            Per::Hour => 'h',
        };
        write!(f, "{}/{per}", self.count)
    }
}

/// What a key may use: a limit, and maybe a rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allowance {
    /// Most deliveries running at once, `1..=65535` (`u32::MAX` for
    /// none, in a shard that has no limits).
    pub limit: u32,
    /// Most starts per period, if any.
    pub rate: Option<Rate>,
}

impl From<u32> for Allowance {
    fn from(limit: u32) -> Allowance {
        Allowance { limit, rate: None }
    }
}

/// `LIMIT` or `LIMIT,RATE`.
impl fmt::Display for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.limit)?;
        if let Some(rate) = self.rate {
            write!(f, ",{rate}")?;
        }
        Ok(())
    }
}

/// What a domain or subdomain rule gives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// Its own limit (and rate).
    Limit(Allowance),
    /// Membership of a group (lowercase name), which has the limit.
    Group(String),
}

/// One line of the file, normalised. `FromStr` and `Display` round-trip.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `:LIMIT`: the limit of every domain no other rule names.
    Default(Allowance),
    /// `DOMAIN:VALUE`: one domain (normalised).
    Domain(Vec<u8>, Value),
    /// `.SUFFIX:VALUE`: every domain ending in `.SUFFIX`; the vector is
    /// the suffix without its leading '.'.
    Subdomain(Vec<u8>, Value),
    /// `=NAME:LIMIT`: the limit shared by the group's members.
    Group(String, Allowance),
}

/// A line of the file that did not parse, or a group used and never
/// defined: the error of every control file. Displays as `line N: TEXT:
/// why`; the caller adds the file's name.
pub type LimitsError = ControlError;

/// Which rule gave a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchedRule {
    /// A rule naming the domain itself.
    Exact {
        /// Its line in the file.
        line: usize,
    },
    /// A subdomain rule.
    Subdomain {
        /// Its line in the file.
        line: usize,
        /// The rule's suffix, without its leading '.'.
        suffix: Vec<u8>,
    },
    /// The default.
    Default {
        /// Its line in the file; `None` for the built-in default.
        line: Option<usize>,
    },
}

/// What applies to one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The key the delivery is counted under: `=NAME` for a group, else
    /// the domain (NUL-prefixed if it starts with '=').
    pub key: Vec<u8>,
    /// The most deliveries running at once under `key`.
    pub limit: u32,
    /// The most starts per period under `key`, if any.
    pub rate: Option<Rate>,
    /// The rule that matched.
    pub rule: MatchedRule,
}

/// A parsed limits file.
///
/// Two `Limits` are equal when they hold the same rules in the same
/// order; the line numbers the rules came from are not compared, so a
/// file and its normalised print are equal.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Every rule with its line, in file order.
    rules: Vec<(usize, Rule)>,
    /// The default line's number and allowance, if there is one.
    default: Option<(usize, Allowance)>,
    /// Domain → its rule's line and value.
    domains: HashMap<Vec<u8>, (usize, Value)>,
    /// Suffix (no leading '.') → its rule's line and value.
    suffixes: HashMap<Vec<u8>, (usize, Value)>,
    /// Group name → its definition's line and allowance.
    groups: HashMap<String, (usize, Allowance)>,
    /// The longest suffix in `suffixes`: no longer tail of a domain can
    /// match, so none is hashed.
    suffix_max: usize,
}

impl PartialEq for Limits {
    fn eq(&self, other: &Limits) -> bool {
        self.rules().map(|(_, r)| r).eq(other.rules().map(|(_, r)| r))
    }
}

impl Eq for Limits {}

impl Limits {
    /// No file: every domain its own key, limit [`DEFAULT_LIMIT`].
    pub fn absent() -> Limits {
        Limits {
            rules: Vec::new(),
            default: None,
            domains: HashMap::new(),
            suffixes: HashMap::new(),
            groups: HashMap::new(),
            suffix_max: 0,
        }
    }

    /// Parses the file's contents. The first error in line order is
    /// returned; a group used but never defined is found once the whole
    /// file is read, and reported at its first use.
    pub fn parse(text: &[u8]) -> Result<Limits, LimitsError> {
        let mut limits = Limits::absent();
        // Each use of a group: line, text, name.
        let mut uses: Vec<(usize, &[u8], String)> = Vec::new();
        for (line, text) in control::lines(text) {
            let error = |why: String| ControlError::new(line, text, why);
            let rule = Rule::parse_trimmed(text).map_err(error)?;
            if let Rule::Domain(_, Value::Group(name))
            | Rule::Subdomain(_, Value::Group(name)) = &rule
            {
                uses.push((line, text, name.clone()));
            }
            if let Err(first) = limits.add(line, rule) {
                return Err(error(format!(
                    "named twice; first on line {first}"
                )));
            }
        }
        // `uses` is in line order, so this is the first use.
        let undefined =
            uses.into_iter().find(|(_, _, g)| !limits.groups.contains_key(g));
        if let Some((line, text, name)) = undefined {
            let why = format!("group {name} is used but not defined");
            return Err(ControlError::new(line, text, why));
        }
        Ok(limits)
    }

    /// Adds a rule, or gives the line that already named its domain,
    /// suffix, group or the default.
    fn add(&mut self, line: usize, rule: Rule) -> Result<(), usize> {
        let first = match &rule {
            Rule::Default(_) => self.default.map(|(line, _)| line),
            Rule::Domain(d, _) => self.domains.get(d).map(|(line, _)| *line),
            Rule::Subdomain(s, _) => {
                self.suffixes.get(s).map(|(line, _)| *line)
            }
            Rule::Group(g, _) => self.groups.get(g).map(|(line, _)| *line),
        };
        if let Some(first) = first {
            return Err(first);
        }
        match &rule {
            Rule::Default(n) => self.default = Some((line, *n)),
            Rule::Domain(d, v) => {
                self.domains.insert(d.clone(), (line, v.clone()));
            }
            Rule::Subdomain(s, v) => {
                self.suffix_max = self.suffix_max.max(s.len());
                self.suffixes.insert(s.clone(), (line, v.clone()));
            }
            Rule::Group(g, n) => {
                self.groups.insert(g.clone(), (line, *n));
            }
        }
        self.rules.push((line, rule));
        Ok(())
    }

    /// The rules with their lines, in file order.
    pub fn rules(&self) -> impl Iterator<Item = (usize, &Rule)> {
        self.rules.iter().map(|(line, rule)| (*line, rule))
    }

    /// The default limit in force: the default line's, else
    /// [`DEFAULT_LIMIT`].
    pub fn default_limit(&self) -> u32 {
        self.default_allowance().limit
    }

    /// The default allowance in force: the default line's, else
    /// [`DEFAULT_LIMIT`] and no rate.
    pub fn default_allowance(&self) -> Allowance {
        self.default.map_or(DEFAULT_LIMIT.into(), |(_, a)| a)
    }

    /// The limit of group `name` (any case), if the file defines it.
    pub fn group_limit(&self, name: &str) -> Option<u32> {
        self.group_allowance(name).map(|a| a.limit)
    }

    /// The allowance of group `name` (any case), if the file defines it.
    pub fn group_allowance(&self, name: &str) -> Option<Allowance> {
        // Keys from `lookup` are lowercase already: no allocation then.
        let found = self.groups.get(name);
        let found =
            found.or_else(|| self.groups.get(&name.to_ascii_lowercase()));
        found.map(|&(_, a)| a)
    }

    /// What applies to a normalised domain (as [`domain::normalise`]
    /// gives it). An IP literal (`[1.2.3.4]`) matches exact rules only.
    /// Any bytes are looked up without a panic, and a domain's key is a
    /// group's only if its rule gives the group; but a domain not
    /// normalised may miss the rule that names it.
    ///
    /// Linear in the domain's length, whatever its labels: it comes from
    /// a sender.
    ///
    /// [`domain::normalise`]: crate::domain::normalise
    pub fn lookup(&self, domain: &[u8]) -> Match {
        if let Some((line, value)) = self.domains.get(domain) {
            let matched = MatchedRule::Exact { line: *line };
            return self.resolve(domain, value, matched);
        }
        if domain::ip_literal(domain).is_none() {
            // Suffixes after each '.', left to right: longest first. In
            // a normalised domain every '.' ends a label.
            let dots = domain.iter().enumerate().filter(|&(_, &b)| b == b'.');
            for (dot, _) in dots {
                let suffix = &domain[dot + 1..];
                // Hashing every tail of a name of 8000 one-byte labels
                // would be quadratic; only tails as short as a rule's
                // can match.
                if suffix.len() > self.suffix_max {
                    continue;
                }
                if let Some((line, value)) = self.suffixes.get(suffix) {
                    let matched = MatchedRule::Subdomain {
                        line: *line,
                        suffix: suffix.to_vec(),
                    };
                    return self.resolve(domain, value, matched);
                }
            }
        }
        let line = self.default.map(|(line, _)| line);
        let value = Value::Limit(self.default_allowance());
        self.resolve(domain, &value, MatchedRule::Default { line })
    }

    /// The key and limit for `domain` under a rule giving `value`.
    fn resolve(
        &self,
        domain: &[u8],
        value: &Value,
        rule: MatchedRule,
    ) -> Match {
        let (key, allowance) = match value {
            Value::Limit(a) => (domain_key(domain), *a),
            Value::Group(name) => {
                let mut key = Vec::with_capacity(1 + name.len());
                key.push(b'=');
                key.extend_from_slice(name.as_bytes());
                // `parse` checked every used group is defined.
                let allowance = self
                    .group_allowance(name)
                    .unwrap_or_else(|| self.default_allowance());
                (key, allowance)
            }
        };
        Match { key, limit: allowance.limit, rate: allowance.rate, rule }
    }

    /// The limit of a key as [`lookup`](Limits::lookup) produces it (a
    /// group key or a domain key), for a shard that only has the key.
    /// An unknown group has the default limit.
    pub fn limit_of_key(&self, key: &[u8]) -> u32 {
        self.allowance_of_key(key).limit
    }

    /// The limit and rate of a key, as [`limit_of_key`] finds them.
    ///
    /// [`limit_of_key`]: Limits::limit_of_key
    pub fn allowance_of_key(&self, key: &[u8]) -> Allowance {
        match key.split_first() {
            Some((b'=', name)) => std::str::from_utf8(name)
                .ok()
                .and_then(|name| self.group_allowance(name))
                .unwrap_or_else(|| self.default_allowance()),
            _ => {
                let m = self.lookup(key);
                Allowance { limit: m.limit, rate: m.rate }
            }
        }
    }

    /// The rules as normalised lines, in file order, each ending in a
    /// newline; exactly what [`parse`](Limits::parse) reads back to an
    /// equal `Limits`, 8-bit bytes included. `Display` is the same text
    /// made UTF-8 (lossily, for a domain that is not).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, rule) in &self.rules {
            out.extend_from_slice(&rule.to_bytes());
            out.push(b'\n');
        }
        out
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (_, rule) in &self.rules {
            writeln!(f, "{rule}")?;
        }
        Ok(())
    }
}

impl FromStr for Limits {
    type Err = LimitsError;

    fn from_str(text: &str) -> Result<Limits, LimitsError> {
        Limits::parse(text.as_bytes())
    }
}

/// A domain's own key: the domain, with a leading '=' written `\061` as
/// [`domain::normalise`] writes it, so that no domain is taken for a
/// group. (A normalised domain never starts with '='; this is for one
/// that is not.)
///
/// The prefix was once a NUL; but the key travels in a job frame as a
/// NUL-terminated field, so a recipient `u@=x` broke the frame and made
/// its shard exit 101 (test: `a_group_like_domain_keys_without_a_nul`).
fn domain_key(domain: &[u8]) -> Vec<u8> {
    match domain.split_first() {
        Some((b'=', rest)) => [b"\\061".as_slice(), rest].concat(),
        _ => domain.to_vec(),
    }
}

impl Rule {
    /// Parses one line (surrounding blanks allowed). A blank line or a
    /// comment is an error here, as it is not a rule. Errors give line 1.
    pub fn parse(line: &[u8]) -> Result<Rule, LimitsError> {
        let text = trim(line);
        let why = if text.is_empty() || text[0] == b'#' {
            "not a rule: blank or a comment".to_owned()
        } else if text.contains(&b'\n') {
            "not a rule: more than one line".to_owned()
        } else {
            match Rule::parse_trimmed(text) {
                Ok(rule) => return Ok(rule),
                Err(why) => why,
            }
        };
        let text = String::from_utf8_lossy(text).into_owned();
        Err(LimitsError { line: 1, text, why })
    }

    /// Parses a trimmed line that is neither blank nor a comment.
    fn parse_trimmed(line: &[u8]) -> Result<Rule, String> {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("no ':' between key and value")?;
        let key = trim(&line[..colon]);
        let value = &line[colon + 1..];
        match key.split_first() {
            None => match parse_value(value)? {
                Value::Limit(a) => Ok(Rule::Default(a)),
                Value::Group(_) => {
                    Err("the default must be a limit, not a group".to_owned())
                }
            },
            Some((b'=', name)) => {
                let name = group_name(name)?;
                match parse_value(value)? {
                    Value::Limit(a) => Ok(Rule::Group(name, a)),
                    Value::Group(_) => {
                        Err("a group's value must be a limit".to_owned())
                    }
                }
            }
            Some((b'.', suffix)) => {
                check_host_bytes(suffix)?;
                let suffix = domain::normalise_name(suffix, false);
                if suffix.is_empty() {
                    return Err("empty domain after '.'".to_owned());
                }
                Ok(Rule::Subdomain(suffix, parse_value(value)?))
            }
            Some(_) => {
                check_host_bytes(key)?;
                // Empty only if it was a lone backslash, which the
                // resolver ignores; printed, it would be the default.
                let domain = domain::normalise(key);
                if domain.is_empty() {
                    return Err("empty domain".to_owned());
                }
                Ok(Rule::Domain(domain, parse_value(value)?))
            }
        }
    }

    /// The rule as one line, without a newline; 8-bit bytes as they are.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Rule::Default(n) => {
                out.extend_from_slice(format!(":{n}").as_bytes())
            }
            Rule::Domain(domain, value) => {
                out.extend_from_slice(domain);
                out.extend_from_slice(format!(":{value}").as_bytes());
            }
            Rule::Subdomain(suffix, value) => {
                out.push(b'.');
                out.extend_from_slice(suffix);
                out.extend_from_slice(format!(":{value}").as_bytes());
            }
            Rule::Group(name, n) => {
                out.extend_from_slice(format!("={name}:{n}").as_bytes())
            }
        }
        out
    }
}

/// `DOMAIN:VALUE` and so on; a domain that is not UTF-8 is shown lossily
/// (use [`Rule::to_bytes`] to write it back).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl FromStr for Rule {
    type Err = LimitsError;

    fn from_str(line: &str) -> Result<Rule, LimitsError> {
        Rule::parse(line.as_bytes())
    }
}

/// `LIMIT` or `=NAME`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Limit(a) => write!(f, "{a}"),
            Value::Group(name) => write!(f, "={name}"),
        }
    }
}

/// A domain or suffix may hold any byte a recipient's host can, which
/// excludes whitespace, '@' (the host is after the last one), ':' (the
/// file's separator) and NUL (qmail-send's terminator).
fn check_host_bytes(bytes: &[u8]) -> Result<(), String> {
    let bad = |b: &u8| {
        matches!(
            b,
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'@' | b':' | 0
        )
    };
    if bytes.iter().any(bad) {
        return Err(
            "a domain cannot contain whitespace, '@', ':' or NUL".to_owned()
        );
    }
    Ok(())
}

/// A value: a limit with maybe a rate (`20,600/m`), or `=NAME`.
fn parse_value(value: &[u8]) -> Result<Value, String> {
    let value = trim(value);
    match value.split_first() {
        None => Err("no value after ':'".to_owned()),
        Some((b'=', name)) => Ok(Value::Group(group_name(name)?)),
        Some(_) => {
            let (n, rate) = match value.iter().position(|&b| b == b',') {
                Some(comma) => (
                    trim(&value[..comma]),
                    Some(Rate::parse(&value[comma + 1..])?),
                ),
                None => (value, None),
            };
            Ok(Value::Limit(Allowance { limit: limit(n)?, rate }))
        }
    }
}

/// A decimal limit, `1..=LIMIT_MAX`.
pub(crate) fn limit(text: &[u8]) -> Result<u32, String> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err("not a number".to_owned());
    }
    // All digits, so only overflow fails, and that is over the maximum.
    let n = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    if n == 0 {
        return Err("a limit must be at least 1".to_owned());
    }
    if n > LIMIT_MAX {
        return Err(format!("a limit must be at most {LIMIT_MAX}"));
    }
    Ok(n)
}

/// A group name: 1 to 64 of `[A-Za-z0-9._-]`, lowercased.
fn group_name(name: &[u8]) -> Result<String, String> {
    let good = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if name.is_empty() || name.len() > GROUP_NAME_MAX || !name.iter().all(good)
    {
        return Err(format!(
            "a group name is 1 to {GROUP_NAME_MAX} letters, digits, \
             '.', '_' or '-'"
        ));
    }
    // All ASCII, so this is the same bytes.
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{normalise, shard_for};
    use crate::frame::Job;
    use proptest::prelude::*;

    /// The worked example of the module docs, one rule a line.
    const EXAMPLE: &str = "\
:20
example.com:5
.example.com:3
gmail.com:=google
googlemail.com:=google
.google.com:=google
=google:10
";

    fn parse(text: &str) -> Limits {
        Limits::parse(text.as_bytes()).unwrap()
    }

    fn error(text: &[u8]) -> String {
        Limits::parse(text).unwrap_err().to_string()
    }

    fn exact(line: usize) -> MatchedRule {
        MatchedRule::Exact { line }
    }

    fn sub(line: usize, suffix: &str) -> MatchedRule {
        MatchedRule::Subdomain { line, suffix: suffix.as_bytes().to_vec() }
    }

    fn default(line: Option<usize>) -> MatchedRule {
        MatchedRule::Default { line }
    }

    /// Checks `lookup` against (domain, key, limit, rule) rows.
    fn check(limits: &Limits, table: &[(&[u8], &[u8], u32, MatchedRule)]) {
        for (domain, key, limit, rule) in table {
            let want = Match {
                key: key.to_vec(),
                limit: *limit,
                rate: None,
                rule: rule.clone(),
            };
            let d = String::from_utf8_lossy(domain);
            assert_eq!(limits.lookup(domain), want, "{d}");
        }
    }

    #[test]
    fn the_example_file() {
        let limits = parse(EXAMPLE);
        assert_eq!(limits.default_limit(), 20);
        assert_eq!(limits.group_limit("google"), Some(10));
        assert_eq!(limits.group_limit("GOOGLE"), Some(10));
        assert_eq!(limits.group_limit("yahoo"), None);
        check(
            &limits,
            &[
                (b"example.com", b"example.com", 5, exact(2)),
                (b"a.example.com", b"a.example.com", 3, sub(3, "example.com")),
                (b"b.example.com", b"b.example.com", 3, sub(3, "example.com")),
                (
                    b"x.y.example.com",
                    b"x.y.example.com",
                    3,
                    sub(3, "example.com"),
                ),
                (b"gmail.com", b"=google", 10, exact(4)),
                (b"googlemail.com", b"=google", 10, exact(5)),
                (b"mail.google.com", b"=google", 10, sub(6, "google.com")),
                (b"a.b.google.com", b"=google", 10, sub(6, "google.com")),
                // The suffix rule names subdomains only.
                (b"google.com", b"google.com", 20, default(Some(1))),
                (b"other.test", b"other.test", 20, default(Some(1))),
                (b"xexample.com", b"xexample.com", 20, default(Some(1))),
                (b"[10.0.0.1]", b"[10.0.0.1]", 20, default(Some(1))),
            ],
        );
        let rules: Vec<Rule> =
            limits.rules().map(|(_, r)| r.clone()).collect();
        let google = || Value::Group("google".to_owned());
        assert_eq!(
            rules,
            [
                Rule::Default(20.into()),
                Rule::Domain(b"example.com".to_vec(), Value::Limit(5.into())),
                Rule::Subdomain(
                    b"example.com".to_vec(),
                    Value::Limit(3.into())
                ),
                Rule::Domain(b"gmail.com".to_vec(), google()),
                Rule::Domain(b"googlemail.com".to_vec(), google()),
                Rule::Subdomain(b"google.com".to_vec(), google()),
                Rule::Group("google".to_owned(), 10.into()),
            ]
        );
        assert_eq!(limits.to_string(), EXAMPLE);
    }

    #[test]
    fn most_specific_rule_wins() {
        let limits = parse(
            ".com:2\n.example.com:3\n.b.example.com:4\nexample.com:5\n\
             a.b.example.com:6\n:7\n[10.0.0.1]:8\n.1]:9\n.0.0.1]:9\n",
        );
        check(
            &limits,
            &[
                (b"a.b.example.com", b"a.b.example.com", 6, exact(5)),
                (b"x.a.b.example.com", b"x.a.b.example.com", 4, {
                    sub(3, "b.example.com")
                }),
                (b"c.b.example.com", b"c.b.example.com", 4, {
                    sub(3, "b.example.com")
                }),
                (b"b.example.com", b"b.example.com", 3, sub(2, "example.com")),
                (b"z.example.com", b"z.example.com", 3, sub(2, "example.com")),
                (b"example.com", b"example.com", 5, exact(4)),
                (b"other.com", b"other.com", 2, sub(1, "com")),
                (b"com", b"com", 7, default(Some(6))),
                (b"org", b"org", 7, default(Some(6))),
                // IP literals match exact rules only.
                (b"[10.0.0.1]", b"[10.0.0.1]", 8, exact(7)),
                (b"[10.0.0.2]", b"[10.0.0.2]", 7, default(Some(6))),
                // Not IP literals (qmail's are four numbers), so names,
                // and suffixes apply.
                (b"[1.1]", b"[1.1]", 9, sub(8, "1]")),
                (b"x.1]", b"x.1]", 9, sub(8, "1]")),
            ],
        );
    }

    #[test]
    fn case_and_trailing_dots_in_the_file() {
        let limits = parse(
            "Example.COM.:5\n.Sub.Example.Com..:3\nGMail.com:=Google\n\
             =GOOGLE:10\n[010.0.0.1].:4\n",
        );
        check(
            &limits,
            &[
                (b"example.com", b"example.com", 5, exact(1)),
                (b"a.sub.example.com", b"a.sub.example.com", 3, {
                    sub(2, "sub.example.com")
                }),
                (b"gmail.com", b"=google", 10, exact(3)),
                // An IP literal is one spelling, as `normalise` gives.
                (b"[10.0.0.1]", b"[10.0.0.1]", 4, exact(5)),
            ],
        );
        assert_eq!(
            limits.to_string(),
            "example.com:5\n.sub.example.com:3\ngmail.com:=google\n\
             =google:10\n[10.0.0.1]:4\n"
        );
        // 8-bit bytes are kept; only ASCII is lowercased.
        let limits = Limits::parse(b"\xc3\x89X.test:2\n").unwrap();
        let m = limits.lookup(b"\xc3\x89x.test");
        assert_eq!((m.key, m.limit), (b"\xc3\x89x.test".to_vec(), 2));
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let text = "# limits\r\n\r\n  \t\n   # indented comment\r\n\
                    example.com : 5 \r\n\t.x.com\t:\t=g\r\n=g:2\r\n\
                    a#b.test:3\n#:4\n \r";
        let limits = parse(text);
        check(
            &limits,
            &[
                (b"example.com", b"example.com", 5, exact(5)),
                (b"y.x.com", b"=g", 2, sub(6, "x.com")),
                (b"a#b.test", b"a#b.test", 3, exact(8)),
                (b"other", b"other", 20, default(None)),
            ],
        );
        assert_eq!(
            limits.to_string(),
            "example.com:5\n.x.com:=g\n=g:2\na#b.test:3\n"
        );
        // A file of comments is an empty one.
        assert_eq!(parse("# nothing\n\n"), Limits::absent());
        assert_eq!(parse(""), Limits::absent());
    }

    #[test]
    fn absent_file_gives_every_domain_its_own_key() {
        let limits = Limits::absent();
        assert_eq!(limits.default_limit(), DEFAULT_LIMIT);
        assert_eq!(DEFAULT_LIMIT, 20);
        assert_eq!(limits.to_string(), "");
        check(
            &limits,
            &[
                (b"a.test", b"a.test", 20, default(None)),
                (b"b.test", b"b.test", 20, default(None)),
                (b"[10.0.0.1]", b"[10.0.0.1]", 20, default(None)),
                (b"=google", b"\\061google", 20, default(None)),
            ],
        );
        assert_eq!(limits.limit_of_key(b"=google"), 20);
        // A file without a default line has the built-in one.
        let limits = parse("a.test:3\n");
        assert_eq!(limits.default_limit(), 20);
        check(&limits, &[(b"b.test", b"b.test", 20, default(None))]);
    }

    #[test]
    fn each_error_quotes_the_line_and_says_why() {
        let table: &[(&[u8], &str)] = &[
            (
                b"example.com",
                "line 1: example.com: no ':' between key and value",
            ),
            (b"example.com:five", "line 1: example.com:five: not a number"),
            (b"example.com:-5", "line 1: example.com:-5: not a number"),
            (b"example.com:+5", "line 1: example.com:+5: not a number"),
            (b"example.com:5 5", "line 1: example.com:5 5: not a number"),
            (b"example.com:0x10", "line 1: example.com:0x10: not a number"),
            (b"example.com:5:6", "line 1: example.com:5:6: not a number"),
            (b"example.com:  ", "line 1: example.com:: no value after ':'"),
            (
                b"example.com:0",
                "line 1: example.com:0: a limit must be at least 1",
            ),
            (b":000", "line 1: :000: a limit must be at least 1"),
            (
                b"example.com:65536",
                "line 1: example.com:65536: a limit must be at most 65535",
            ),
            (
                b":99999999999999999999",
                "line 1: :99999999999999999999: a limit must be at most 65535",
            ),
            (b".:5", "line 1: .:5: empty domain after '.'"),
            // The resolver ignores a backslash at the end of a name.
            (b"\\:5", "line 1: \\:5: empty domain"),
            (b".\\:5", "line 1: .\\:5: empty domain after '.'"),
            (b"..:5", "line 1: ..:5: empty domain after '.'"),
            (b". :5", "line 1: . :5: empty domain after '.'"),
            (
                b"=:5",
                "line 1: =:5: a group name is 1 to 64 letters, digits, \
                 '.', '_' or '-'",
            ),
            (
                b"=go ogle:5",
                "line 1: =go ogle:5: a group name is 1 to 64 letters, \
                 digits, '.', '_' or '-'",
            ),
            (
                b"x.com:=goo/gle",
                "line 1: x.com:=goo/gle: a group name is 1 to 64 letters, \
                 digits, '.', '_' or '-'",
            ),
            (
                b"x.com:=",
                "line 1: x.com:=: a group name is 1 to 64 letters, \
                 digits, '.', '_' or '-'",
            ),
            (
                b"x.com:= g\n=g:1",
                "line 1: x.com:= g: a group name is 1 to 64 letters, \
                 digits, '.', '_' or '-'",
            ),
            (b"a.com:=g", "line 1: a.com:=g: group g is used but not defined"),
            (
                b"  a.com : =G \r\n.b.com:=G\n",
                "line 1: a.com : =G: group g is used but not defined",
            ),
            (
                b":=g\n=g:1",
                "line 1: :=g: the default must be a limit, not a group",
            ),
            (b"=g:=h\n=h:1", "line 1: =g:=h: a group's value must be a limit"),
            (
                b"exa mple.com:5",
                "line 1: exa mple.com:5: a domain cannot contain \
                 whitespace, '@', ':' or NUL",
            ),
            (
                b"u@example.com:5",
                "line 1: u@example.com:5: a domain cannot contain \
                 whitespace, '@', ':' or NUL",
            ),
            (
                b".a\tb.com:5",
                "line 1: .a\tb.com:5: a domain cannot contain \
                 whitespace, '@', ':' or NUL",
            ),
            (
                b"a\0b:5",
                "line 1: a\0b:5: a domain cannot contain \
                 whitespace, '@', ':' or NUL",
            ),
            (
                b"a\rb:5",
                "line 1: a\rb:5: a domain cannot contain \
                 whitespace, '@', ':' or NUL",
            ),
            (
                b"example.com:5\nEXAMPLE.com.:6",
                "line 2: EXAMPLE.com.:6: named twice; first on line 1",
            ),
            (
                b".a.com:1\n\n.A.COM:2",
                "line 3: .A.COM:2: named twice; first on line 1",
            ),
            (b"=g:1\n=G:2", "line 2: =G:2: named twice; first on line 1"),
            (b":1\n# x\n :2", "line 3: :2: named twice; first on line 1"),
            // The first error in line order ...
            (b"a.com:x\nb.com:0", "line 1: a.com:x: not a number"),
            // ... and undefined groups only once the whole file is read,
            // at the first use of the first one used.
            (b"a.com:=g\nb.com:x", "line 2: b.com:x: not a number"),
            (
                b"c.com:=h\na.com:=g\nb.com:=h\n=h:1\nd.com:=g",
                "line 2: a.com:=g: group g is used but not defined",
            ),
        ];
        for (text, want) in table {
            let name = String::from_utf8_lossy(text);
            assert_eq!(&error(text), want, "{name:?}");
        }
        let long = format!("x.com:={}\n", "a".repeat(65));
        assert_eq!(
            Limits::parse(long.as_bytes()).unwrap_err(),
            LimitsError {
                line: 1,
                text: long.trim_end().to_owned(),
                why:
                    "a group name is 1 to 64 letters, digits, '.', '_' or '-'"
                        .to_owned(),
            }
        );
        // 64 bytes is allowed, and so is a group used before defined.
        let name = "A.b_c-9".repeat(10)[..64].to_owned();
        let limits = parse(&format!("x.com:={name}\n={name}:7\n"));
        assert_eq!(limits.lookup(b"x.com").limit, 7);
    }

    #[test]
    fn limit_of_key_inverts_lookup() {
        let limits = parse(&format!("{EXAMPLE}.test:3\n=x:4\n[10.0.0.1]:6\n"));
        let domains: &[&[u8]] = &[
            b"example.com",
            b"a.example.com",
            b"gmail.com",
            b"googlemail.com",
            b"mail.google.com",
            b"google.com",
            b"other",
            b"a.test",
            b"=a.test",
            b"=google",
            b"=x",
            b"=google.com",
            b"=mail.google.com",
            b"[10.0.0.1]",
            b"[10.0.0.2]",
            b"",
        ];
        for domain in domains {
            let m = limits.lookup(domain);
            let d = String::from_utf8_lossy(domain);
            assert_eq!(limits.limit_of_key(&m.key), m.limit, "{d}");
        }
        assert_eq!(limits.limit_of_key(b"=google"), 10);
        assert_eq!(limits.limit_of_key(b"=x"), 4);
        assert_eq!(limits.limit_of_key(b"=nosuch"), 20);
        assert_eq!(limits.limit_of_key(b"=\xff"), 20);
        assert_eq!(limits.limit_of_key(b"\\061a.test"), 3);
    }

    #[test]
    fn a_hostile_domain_named_like_a_group_gets_its_own_key() {
        let limits = parse(&format!("{EXAMPLE}.test:3\n"));
        let group = limits.lookup(b"gmail.com");
        assert_eq!(group.key, b"=google");
        // As the supervisor looks it up, and as given.
        for domain in [normalise(b"=google"), b"=google".to_vec()] {
            let hostile = limits.lookup(&domain);
            assert_eq!(hostile.key, b"\\061google");
            assert_eq!((hostile.limit, hostile.rule), (20, default(Some(1))));
            assert_eq!(limits.limit_of_key(&hostile.key), 20);
        }
        // Under a subdomain rule with a limit, too.
        let m = limits.lookup(&normalise(b"=google.test"));
        assert_eq!((m.key, m.limit), (b"\\061google.test".to_vec(), 3));
        // A member of the group through a suffix is in the group.
        let m = limits.lookup(&normalise(b"=x.google.com"));
        assert_eq!(m.key, b"=google");
        // The file can name the domain `=google`, apart from the group.
        let limits = parse(&format!("{EXAMPLE}\\061GOOGLE.:4\n"));
        let m = limits.lookup(&normalise(b"=google"));
        assert_eq!((&m.key[..], m.limit), (&b"\\061google"[..], 4));
        assert_eq!(limits.lookup(b"gmail.com").limit, 10);
        assert!(limits.to_string().ends_with("\n\\061google:4\n"));
    }

    /// Found by the `limits_parser` fuzz target's job-frame check: the
    /// key of a domain starting with '=' was once NUL-prefixed, and the
    /// supervisor sends a key to its shard as a NUL-terminated field of
    /// a job frame; a recipient `u@=x` from any sender made the frame
    /// unreadable, and the shard exit 101 with all it was running.
    #[test]
    fn a_group_like_domain_keys_without_a_nul() {
        let limits = parse(EXAMPLE);
        for host in [&b"=google"[..], b"=", b"==", b"=x.test", b"\\061x"] {
            for domain in [normalise(host), host.to_vec()] {
                let key = limits.lookup(&domain).key;
                assert!(!key.contains(&0), "{key:?}");
                let job = Job {
                    delnum: 7,
                    messid: b"1".to_vec(),
                    sender: Vec::new(),
                    recipient: [b"u@", host].concat(),
                    key,
                };
                let mut frame = Vec::new();
                job.encode(&mut frame);
                // Kind, delnum and length, then the payload.
                assert_eq!(Job::from_payload(7, &frame[7..]), Some(job));
            }
        }
    }

    /// Hostile destinations: every spelling a sender can choose for a
    /// limited destination is counted under its key.
    #[test]
    fn no_spelling_of_a_destination_escapes_its_limit() {
        let limits = parse(&format!("{EXAMPLE}[10.0.0.1]:4\n"));
        let table: &[(&[u8], &[u8], u32)] = &[
            // Case, trailing dots, escapes.
            (b"EXAMPLE.com", b"example.com", 5),
            (b"example.com.", b"example.com", 5),
            (b"example.com...", b"example.com", 5),
            (b"ex\\097mple.com", b"example.com", 5),
            (b"\\E\\X\\AMPLE.\\C\\079M.", b"example.com", 5),
            (b"example.com\\", b"example.com", 5),
            (b"Mail.Google.COM.", b"=google", 10),
            (b"mail.goo\\103le.com", b"=google", 10),
            // IP literals, however written.
            (b"[10.0.0.1]", b"[10.0.0.1]", 4),
            (b"10.0.0.1", b"[10.0.0.1]", 4),
            (b"[010.0.0.001]", b"[10.0.0.1]", 4),
            (b"[10.0.0.257]", b"[10.0.0.1]", 4),
            (b"[10.0.0.1].", b"[10.0.0.1]", 4),
            // In brackets but no literal: a name, and suffixes apply.
            (b"[x].google.com", b"=google", 10),
            // 8-bit bytes are kept, and not case-folded (DNS does not).
            (b"\xc3\x89.example.com", b"\xc3\x89.example.com", 3),
            (b"\xff.google.com", b"=google", 10),
            // A domain called like the group is not in it.
            (b"=google", b"\\061google", 20),
            (b"=GOOGLE.", b"\\061google", 20),
        ];
        for (host, key, limit) in table {
            let m = limits.lookup(&normalise(host));
            let show = String::from_utf8_lossy(host);
            assert_eq!((&m.key[..], m.limit), (*key, *limit), "{show}");
            assert_eq!(limits.limit_of_key(&m.key), m.limit, "{show}");
        }
    }

    /// A 100 KB domain (the supervisor keeps 16 KB of a recipient, but
    /// nothing here should rely on that) costs one pass: with a
    /// subdomain rule, looking up each tail of 50,000 labels hashed
    /// 2.5 GB: this test took 351 s before `suffix_max`, 0.6 s after
    /// (debug build). At the supervisor's 16 KB it still hashed 64 MB
    /// a recipient, in the loop that serves every delivery.
    #[test]
    fn a_100_kb_domain_is_looked_up_in_linear_time() {
        let limits = parse(&format!("{EXAMPLE}.a.test:3\n"));
        let start = std::time::Instant::now();
        let hosts = [
            b"a.".repeat(50_000),
            [&b"A.".repeat(50_000)[..], b"google.com"].concat(),
            b"\\.".repeat(50_000),
            b"\\000".repeat(25_000),
            b"1.".repeat(50_000),
            [b"[", &b"1".repeat(100_000)[..], b".2.3.4]"].concat(),
        ];
        for host in &hosts {
            let domain = normalise(host);
            let m = limits.lookup(&domain);
            assert_eq!(limits.limit_of_key(&m.key), m.limit);
            assert!(shard_for(&m.key, 16) < 16);
        }
        assert_eq!(limits.lookup(&normalise(&hosts[1])).key, b"=google");
        // 111...1 (100,000 ones) is 199 modulo 256.
        assert_eq!(normalise(&hosts[5]), b"[199.2.3.4]");
        // Generous: a debug build does all of it in milliseconds.
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_limit_may_carry_a_rate() {
        let rate = |count, per| Some(Rate { count, per });
        let limits = Limits::parse(
            b":20,60/m\ngmail.com:=google\n=google:10, 30 / s\n\
              slow.test:2,1/h\nfast.test:5\n",
        )
        .unwrap();
        let a = |key: &[u8]| limits.allowance_of_key(key);
        assert_eq!(
            a(b"x.test"),
            Allowance { limit: 20, rate: rate(60, Per::Minute) }
        );
        assert_eq!(
            a(b"=google"),
            Allowance { limit: 10, rate: rate(30, Per::Second) }
        );
        assert_eq!(limits.lookup(b"gmail.com").rate, rate(30, Per::Second));
        assert_eq!(a(b"slow.test").rate, rate(1, Per::Hour));
        assert_eq!(a(b"fast.test"), 5.into());
        assert_eq!(
            limits.to_string(),
            ":20,60/m\ngmail.com:=google\n=google:10,30/s\nslow.test:2,1/h\n\
             fast.test:5\n"
        );
        assert_eq!(
            rate(600, Per::Minute).unwrap().interval().as_millis(),
            100
        );
        assert_eq!(
            rate(3, Per::Second).unwrap().interval().as_nanos(),
            333_333_333
        );
        for bad in [
            "a.test:5,",
            "a.test:5,10",
            "a.test:5,0/s",
            "a.test:5,10/d",
            "a.test:5,70000/s",
            "a.test:=g,10/s",
            "a.test:5,/s",
        ] {
            let e = Rule::parse(bad.as_bytes()).unwrap_err();
            assert!(!e.why.is_empty(), "{bad}");
        }
        let slower =
            rate(1, Per::Second).unwrap().min(rate(30, Per::Minute).unwrap());
        assert_eq!(slower.to_string(), "30/m");
    }

    #[test]
    fn single_rules_parse_and_print() {
        let table: &[(&str, Rule, &str)] = &[
            (" :20 ", Rule::Default(20.into()), ":20"),
            (
                "A.B:05",
                Rule::Domain(b"a.b".to_vec(), Value::Limit(5.into())),
                "a.b:5",
            ),
            (
                ".A.B.:=G",
                Rule::Subdomain(b"a.b".to_vec(), Value::Group("g".into())),
                ".a.b:=g",
            ),
            ("=G:1", Rule::Group("g".into(), 1.into()), "=g:1"),
        ];
        for (text, rule, printed) in table {
            assert_eq!(&text.parse::<Rule>().unwrap(), rule, "{text}");
            assert_eq!(&rule.to_string(), printed);
        }
        // Not one rule: Rule::parse has no file around it.
        for (text, why) in [
            ("", "not a rule: blank or a comment"),
            (" # x", "not a rule: blank or a comment"),
            ("a:1\nb:2", "not a rule: more than one line"),
            ("a:=g", "ok"),
        ] {
            match text.parse::<Rule>() {
                Ok(_) => assert_eq!(why, "ok"),
                Err(e) => assert_eq!((e.line, e.why.as_str()), (1, why)),
            }
        }
    }

    /// Bytes for domains: lowercase ASCII and some odd bytes, which
    /// `normalise` escapes or keeps, and, if `wide`, 8-bit ones (which
    /// `Display` cannot carry).
    fn label(narrow: bool, wide: bool) -> BoxedStrategy<Vec<u8>> {
        let mut bytes: Vec<u8> = (b'a'..=b'c').collect();
        if !narrow {
            bytes.extend(b'd'..=b'z');
            bytes.extend(b"0123456789-_#=[]\x01\x7fQ\\: @");
        }
        if wide {
            bytes.extend([0x80, 0xa0, 0xc3, 0xa9, 0xff]);
        }
        let len = if narrow { 1..3 } else { 1..6 };
        prop::collection::vec(crate::testutil::one_of(bytes), len).boxed()
    }

    fn host(narrow: bool, wide: bool) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(label(narrow, wide), 1..4)
            .prop_map(|labels| labels.join(&b'.'))
    }

    fn group(narrow: bool) -> BoxedStrategy<String> {
        if narrow { "[a-c]".boxed() } else { "[a-z0-9._-]{1,64}".boxed() }
    }

    fn limit() -> impl Strategy<Value = u32> {
        prop_oneof![1..=LIMIT_MAX, Just(1), Just(LIMIT_MAX)]
    }

    /// A limit, half the time with a rate.
    fn allowance() -> impl Strategy<Value = Allowance> {
        let per =
            prop_oneof![Just(Per::Second), Just(Per::Minute), Just(Per::Hour)];
        let rate = prop::option::of(
            (limit(), per).prop_map(|(count, per)| Rate { count, per }),
        );
        (limit(), rate).prop_map(|(limit, rate)| Allowance { limit, rate })
    }

    /// Any normalised rule. `narrow` makes clashes and nesting likely.
    fn rule(narrow: bool, wide: bool) -> impl Strategy<Value = Rule> {
        let value = prop_oneof![
            allowance().prop_map(Value::Limit),
            group(narrow).prop_map(Value::Group),
        ];
        // Normalised as a file's are. (A label of backslashes only can
        // vanish, and an empty domain is no rule.)
        let domain = host(narrow, wide)
            .prop_map(|d| normalise(&d))
            .prop_filter("empty", |d| !d.is_empty());
        let suffix = host(narrow, wide)
            .prop_map(|s| crate::domain::normalise_name(&s, false))
            .prop_filter("empty", |s| !s.is_empty());
        prop_oneof![
            allowance().prop_map(Rule::Default),
            (domain, value.clone()).prop_map(|(d, v)| Rule::Domain(d, v)),
            (suffix, value).prop_map(|(s, v)| Rule::Subdomain(s, v)),
            (group(narrow), allowance()).prop_map(|(g, a)| Rule::Group(g, a)),
        ]
    }

    /// A valid file's rules: clashes dropped, used groups defined.
    fn valid(rules: Vec<Rule>, extra: u32) -> Vec<Rule> {
        let mut limits = Limits::absent();
        let mut used = Vec::new();
        for rule in rules {
            if let Rule::Domain(_, Value::Group(g))
            | Rule::Subdomain(_, Value::Group(g)) = &rule
            {
                used.push(g.clone());
            }
            let _ = limits.add(0, rule);
        }
        for g in used {
            let _ = limits.add(0, Rule::Group(g, extra.into()));
        }
        limits.rules.into_iter().map(|(_, r)| r).collect()
    }

    /// One rule as a user might write it: `how`'s bits ask for upper
    /// case, a trailing dot, blanks, CRLF, a comment and a blank line.
    fn written(rule: &Rule, how: u8) -> Vec<u8> {
        let line = rule.to_bytes();
        let colon = line.iter().position(|&b| b == b':').unwrap();
        let (mut key, mut value) =
            (line[..colon].to_vec(), line[colon..].to_vec());
        let named = matches!(rule, Rule::Domain(..) | Rule::Subdomain(..));
        if how & 2 != 0 && named {
            key.push(b'.');
        }
        if how & 1 != 0 {
            key.make_ascii_uppercase();
            value.make_ascii_uppercase();
        }
        let mut out = Vec::new();
        if how & 16 != 0 {
            out.extend_from_slice(b"  # a comment: x.test:1\n");
        }
        if how & 32 != 0 {
            out.extend_from_slice(b" \t\r\n");
        }
        if how & 4 != 0 {
            out.extend_from_slice(b" \t");
            out.extend_from_slice(&key);
            out.extend_from_slice(b" \t:\t ");
            out.extend_from_slice(&value[1..]);
            out.push(b' ');
        } else {
            out.extend_from_slice(&key);
            out.extend_from_slice(&value);
        }
        out.extend_from_slice(if how & 8 != 0 { b"\r\n" } else { b"\n" });
        out
    }

    proptest! {
        #[test]
        fn each_rule_round_trips(rule in rule(false, false)) {
            prop_assert_eq!(rule.to_string().parse::<Rule>(), Ok(rule));
        }

        #[test]
        fn each_rule_round_trips_as_bytes(rule in rule(false, true)) {
            prop_assert_eq!(Rule::parse(&rule.to_bytes()), Ok(rule));
        }

        #[test]
        fn a_valid_file_round_trips(
            (wide, rules) in (any::<bool>(), any::<bool>())
                .prop_flat_map(|(narrow, wide)| (
                    Just(wide),
                    prop::collection::vec(rule(narrow, wide), 0..24),
                )),
            hows in prop::collection::vec(any::<u8>(), 1..24),
            extra in limit(),
        ) {
            let rules = valid(rules, extra);
            let text: Vec<u8> = rules
                .iter()
                .zip(hows.iter().cycle())
                .flat_map(|(rule, &how)| written(rule, how))
                .collect();
            let limits = Limits::parse(&text).unwrap();
            let got: Vec<&Rule> = limits.rules().map(|(_, r)| r).collect();
            prop_assert_eq!(got, rules.iter().collect::<Vec<_>>());
            let again = if wide {
                Limits::parse(&limits.to_bytes()).unwrap()
            } else {
                let printed = limits.to_string();
                prop_assert_eq!(limits.to_bytes(), printed.as_bytes());
                limits.to_string().parse::<Limits>().unwrap()
            };
            prop_assert_eq!(&again, &limits);
            // The same answers, and keys that give back their limits.
            for rule in &rules {
                let domain = match rule {
                    Rule::Domain(d, _) => d.clone(),
                    Rule::Subdomain(s, _) => [b"x.".as_slice(), s].concat(),
                    Rule::Default(_) | Rule::Group(..) => b"=a".to_vec(),
                };
                let (m, n) = (limits.lookup(&domain), again.lookup(&domain));
                prop_assert_eq!((&m.key, m.limit), (&n.key, n.limit));
                prop_assert_eq!(limits.limit_of_key(&m.key), m.limit);
                prop_assert_eq!(again.limit_of_key(&m.key), m.limit);
            }
        }
    }

    /// A line of a hostile file: tokens that mean something to the
    /// parser, to `normalise` or to the resolver, and any bytes.
    fn hostile_line() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            crate::testutil::one_of(vec![
                &b":"[..],
                b"=",
                b".",
                b"=g",
                b"a",
                b"A.b",
                b"\\",
                b"\\061",
                b"#",
                b" ",
                b"\r",
                b"\0",
                b"5",
                b"0",
                b"70000",
                b"1.2.3.4",
                b"[",
                b"]",
                b"\xff",
            ])
            .prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 1..3),
        ];
        prop::collection::vec(token, 0..8).prop_map(|t| t.concat())
    }

    /// The checks of the `limits_parser` fuzz target on one domain: no
    /// panic; a group's key only from a group's rule; and for the
    /// domain normalised, a key without a NUL that rides a job frame,
    /// gives back its limit, and is the printed file's key too.
    fn check_domain(
        limits: &Limits,
        again: &Limits,
        raw: &[u8],
    ) -> Result<(), TestCaseError> {
        let norm = normalise(raw);
        prop_assert_eq!(&normalise(&norm), &norm);
        prop_assert_eq!(&normalise(&raw.to_ascii_uppercase()), &norm);
        if raw.last().is_some_and(|&b| b != b'\\') {
            prop_assert_eq!(&normalise(&[raw, b"."].concat()), &norm);
        }
        for domain in [raw, &norm[..]] {
            let m = limits.lookup(domain);
            prop_assert!((1..=LIMIT_MAX).contains(&m.limit));
            let line = match m.rule {
                MatchedRule::Exact { line }
                | MatchedRule::Subdomain { line, .. } => line,
                MatchedRule::Default { .. } => 0,
            };
            let group = limits.rules().find(|&(l, _)| l == line).and_then(
                |(_, rule)| match rule {
                    Rule::Domain(_, Value::Group(g))
                    | Rule::Subdomain(_, Value::Group(g)) => Some(g),
                    _ => None,
                },
            );
            match group {
                Some(g) => {
                    prop_assert_eq!(&m.key, &format!("={g}").into_bytes())
                }
                None => prop_assert_ne!(m.key.first(), Some(&b'=')),
            }
        }
        let m = limits.lookup(&norm);
        prop_assert!(!m.key.contains(&0));
        prop_assert_eq!(limits.limit_of_key(&m.key), m.limit);
        let n = again.lookup(&norm);
        prop_assert_eq!((&n.key, n.limit), (&m.key, m.limit));
        let job = Job {
            delnum: 1,
            messid: b"1".to_vec(),
            sender: Vec::new(),
            recipient: b"u@x".to_vec(),
            key: m.key,
        };
        let mut frame = Vec::new();
        job.encode(&mut frame);
        prop_assert_eq!(Job::from_payload(1, &frame[7..]), Some(job));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The twin of the `limits_parser` fuzz target (`fuzz/`): a
        /// hostile file parses or is refused without a panic; one that
        /// parses prints to bytes that parse back to it; and any domain,
        /// written any way, is looked up as `check_domain` says.
        #[test]
        fn twin_of_the_limits_parser_fuzz_target(
            lines in prop::collection::vec(prop_oneof![
                hostile_line(),
                rule(false, true).prop_map(|r| r.to_bytes()),
            ], 0..8),
            probes in prop::collection::vec(hostile_line(), 0..6),
        ) {
            let text = lines.join(&b'\n');
            let limits = match Limits::parse(&text) {
                Ok(limits) => limits,
                Err(e) => {
                    let count = text.split(|&b| b == b'\n').count();
                    prop_assert!((1..=count).contains(&e.line));
                    Limits::absent()
                }
            };
            let again = Limits::parse(&limits.to_bytes());
            prop_assert_eq!(again.as_ref(), Ok(&limits));
            let again = again.unwrap();
            // A rule matches every spelling of what it names.
            for (line, rule) in limits.rules() {
                let (spelling, want) = match rule {
                    Rule::Domain(d, _) => {
                        (d.to_ascii_uppercase(), MatchedRule::Exact { line })
                    }
                    Rule::Subdomain(s, _) => (
                        [b"x.", &s.to_ascii_uppercase()[..], b"."].concat(),
                        MatchedRule::Subdomain { line, suffix: s.clone() },
                    ),
                    Rule::Default(_) | Rule::Group(..) => continue,
                };
                let got = limits.lookup(&normalise(&spelling)).rule;
                if !matches!(got, MatchedRule::Exact { .. }) {
                    prop_assert_eq!(got, want);
                }
            }
            let named = limits.rules().filter_map(|(_, rule)| match rule {
                Rule::Domain(d, _) => Some(d.clone()),
                Rule::Subdomain(s, _) => Some([b"x.".as_slice(), s].concat()),
                Rule::Default(_) | Rule::Group(..) => None,
            });
            for domain in probes.into_iter().chain(named) {
                check_domain(&limits, &again, &domain)?;
            }
        }
    }
}
