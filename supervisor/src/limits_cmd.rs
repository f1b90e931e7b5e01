//! `shardspawn limits check [FILE]`, `shardspawn limits explain
//! DOMAIN...` and `shardspawn limits rules [FILE]`: what an admin asks
//! before and after changing the limits file or the response rules,
//! without a running spawner.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use shardspawn_common::domain;
use shardspawn_common::limits::{Limits, MatchedRule, Rule};
use shardspawn_common::response::{Action, Responses};
use shardspawn_common::settings::Settings;

const USAGE: &str = "\
usage: shardspawn limits check [FILE]
       shardspawn limits explain DOMAIN...
       shardspawn limits rules [FILE]

check: validates the limits file (default: the SHARDSPAWN_LIMITS setting,
else HOME/control/concurrencydomains) and says what it holds.
explain: for each domain (or address), the rule that matches, the limit
key, the limit, and the shard that owns the key at the current shard
count (SHARDSPAWN_SHARDS, else the number of CPUs).
rules: validates the response rules file (default: the SHARDSPAWN_RESPONSES
setting, else HOME/control/responserules) and lists every rule in force,
in the order they are tried: the file's, then the built-in ones.
";

/// How the limits file reads: absent (every domain gets the default), or
/// parsed, or an error text for the log.
pub fn load(path: &Path) -> Result<Option<Limits>, String> {
    match std::fs::read(path) {
        Ok(text) => Limits::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("unable to read {}: {e}", path.display())),
    }
}

/// Runs `limits ...`; returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let settings =
        match Settings::from_env_and_args(&|k| std::env::var_os(k), &[]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("shardspawn limits: bad setting: {e}");
                return 100;
            }
        };
    match args.first().and_then(|a| a.to_str()) {
        Some("check") if args.len() <= 2 => {
            let path = args
                .get(1)
                .map_or_else(|| settings.limits_path(), PathBuf::from);
            check(&path, args.len() == 2)
        }
        Some("rules") if args.len() <= 2 => {
            let path = args
                .get(1)
                .map_or_else(|| settings.responses_path(), PathBuf::from);
            rules(&path, args.len() == 2)
        }
        Some("explain") if args.len() >= 2 => {
            let shards = settings.shards.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().min(1024) as u16)
                    .unwrap_or(1)
            });
            explain(&settings.limits_path(), shards, &args[1..])
        }
        _ => {
            eprint!("{USAGE}");
            100
        }
    }
}

fn check(path: &Path, named: bool) -> i32 {
    match load(path) {
        Ok(Some(limits)) => {
            let (mut domains, mut subdomains, mut groups) = (0, 0, 0);
            for (_, rule) in limits.rules() {
                match rule {
                    Rule::Domain(..) => domains += 1,
                    Rule::Subdomain(..) => subdomains += 1,
                    Rule::Group(..) => groups += 1,
                    Rule::Default(_) => {}
                }
            }
            println!(
                "{}: ok: default limit {}, {domains} domain rules, \
                 {subdomains} subdomain rules, {groups} groups",
                path.display(),
                limits.default_limit()
            );
            0
        }
        Ok(None) if !named => {
            println!(
                "{}: absent: every domain is its own key with the default \
                 limit of {}",
                path.display(),
                Limits::absent().default_limit()
            );
            0
        }
        Ok(None) => {
            eprintln!("shardspawn limits: {}: no such file", path.display());
            111
        }
        Err(e) => {
            eprintln!("shardspawn limits: {e}");
            if e.starts_with("unable to read") { 111 } else { 100 }
        }
    }
}

fn explain(path: &Path, shards: u16, domains: &[OsString]) -> i32 {
    let limits = match load(path) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("shardspawn limits: {e}");
            return 100;
        }
    };
    let (limits, source) = match limits {
        Some(l) => (l, path.display().to_string()),
        None => (Limits::absent(), format!("{} (absent)", path.display())),
    };
    let rules: Vec<(usize, &Rule)> = limits.rules().collect();
    let line_text = |line: usize| {
        rules
            .iter()
            .find(|(l, _)| *l == line)
            .map_or_else(String::new, |(_, r)| r.to_string())
    };
    for arg in domains {
        let bytes = arg.as_encoded_bytes();
        let host = domain::host(bytes).unwrap_or(bytes);
        let d = domain::normalise(host);
        let m = limits.lookup(&d);
        let rule = match &m.rule {
            MatchedRule::Exact { line } => {
                format!("{source} line {line} '{}'", line_text(*line))
            }
            MatchedRule::Subdomain { line, .. } => {
                format!("{source} line {line} '{}'", line_text(*line))
            }
            MatchedRule::Default { line: Some(line) } => {
                format!(
                    "{source} line {line} '{}' (default)",
                    line_text(*line)
                )
            }
            MatchedRule::Default { line: None } => {
                "the built-in default".to_string()
            }
        };
        let rate = m.rate.map_or_else(String::new, |r| format!("; rate {r}"));
        println!(
            "{}: rule {rule}; key {}; limit {}{rate}; shard {} of {shards}",
            domain::printable(&d),
            domain::printable(&m.key),
            m.limit,
            domain::shard_for(&m.key, shards)
        );
    }
    0
}

/// `limits rules`: the response rules in force, one a line.
fn rules(path: &Path, named: bool) -> i32 {
    let (responses, what) = match std::fs::read(path) {
        Ok(text) => match Responses::parse(&text) {
            Ok(r) => (r, "ok"),
            Err(e) => {
                eprintln!("shardspawn limits: {}: {e}", path.display());
                return 100;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound && !named => {
            (Responses::built_in(), "absent")
        }
        Err(e) => {
            eprintln!(
                "shardspawn limits: unable to read {}: {e}",
                path.display()
            );
            return 111;
        }
    };
    println!(
        "{}: {what}: {} rules of the file, then {} built in",
        path.display(),
        responses.from_file(),
        responses.rules().len() - responses.from_file()
    );
    for rule in responses.rules() {
        let action = match rule.action {
            Action::Adapt => "adapt (site-level pushback)".to_owned(),
            Action::Ignore => "ignore".to_owned(),
            Action::Limit(n) => {
                format!("limit {n} for {}s", rule.duration.as_secs())
            }
            Action::Rate(r) => {
                format!("rate {r} for {}s", rule.duration.as_secs())
            }
            Action::Suspend => {
                format!("suspend for {}s", rule.duration.as_secs())
            }
        };
        println!("{}: \"{}\": {action}", rule.origin, rule.pattern);
    }
    0
}
