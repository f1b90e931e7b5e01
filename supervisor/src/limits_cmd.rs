//! `shardspawn limits check [FILE]`, `shardspawn limits explain
//! DOMAIN...` and `shardspawn limits rules [FILE]`: what an admin asks
//! before and after changing the limits file or the response rules,
//! without a running spawner.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lexopt::Arg::{Long, Short, Value};
use lexopt::Parser;

use shardspawn_common::domain;
use shardspawn_common::limits::{Limits, MatchedRule, Rule};
use shardspawn_common::lookup::{Answer, Exchange, Outcome, ResolverConfig};
use shardspawn_common::response::{Action, Responses};
use shardspawn_common::routes::Routes;
use shardspawn_common::settings::Settings;

use crate::cmdline::{self, Out, Usage, flag_value};
use crate::startup::{ControlFileError, ROUTES, default_shards, read_control};

/// smtproutes as `explain` reads it: a file it cannot read or parse is
/// said once and counts as none, as the supervisor does.
fn read_routes(path: &Path) -> Routes {
    match read_control(path) {
        Ok(Some(text)) => Routes::parse(&text).unwrap_or_else(|e| {
            eprintln!(
                "shardspawn limits: {}: {e}; routing by MX only",
                path.display()
            );
            Routes::absent()
        }),
        Ok(None) => Routes::absent(),
        Err(e) => {
            eprintln!("shardspawn limits: {e}; routing by MX only");
            Routes::absent()
        }
    }
}

const USAGE: &str = "\
usage: shardspawn limits check [FILE]
       shardspawn limits explain [--limits FILE] DOMAIN...
       shardspawn limits rules [FILE]

check: validates the limits file (default: the SHARDSPAWN_LIMITS setting,
else HOME/control/concurrencydomains) and says what it holds.
explain: for each domain (or address), where its mail goes (the relay
HOME/control/smtproutes names, else its MX hosts, looked up now unless
SHARDSPAWN_SITES=0, through SHARDSPAWN_DNS if set), the rule that
matches (a domain rule, a provider rule of MX hosts, the site, or the
default), the limit key, the limit, the rate, whether the key is shared
by the fleet (a `shared` limit, kept in Redis when SHARDSPAWN_REDIS is
set), and the shard that owns the key at the current shard count
(SHARDSPAWN_SHARDS, else the number of CPUs); --limits names the limits
file, as check's FILE does.
rules: validates the response rules file (default: the SHARDSPAWN_RESPONSES
setting, else HOME/control/responserules) and lists every rule in force,
in the order they are tried: the file's, then the built-in ones.
";

/// How the limits file reads: absent (every domain gets the default),
/// or parsed. A file that was `named` must be there.
pub fn load(
    path: &Path,
    named: bool,
) -> Result<Option<Limits>, ControlFileError> {
    match read_control(path)? {
        Some(text) => Limits::parse(&text).map(Some).map_err(|error| {
            ControlFileError::Parse { path: path.to_path_buf(), error }
        }),
        None if named => {
            Err(ControlFileError::Missing { path: path.to_path_buf() })
        }
        None => Ok(None),
    }
}

/// A `limits` command, as its command line asks.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `check [FILE]`.
    Check(Option<PathBuf>),
    /// `explain [--limits FILE] DOMAIN...`.
    Explain(Option<PathBuf>, Vec<OsString>),
    /// `rules [FILE]`.
    Rules(Option<PathBuf>),
    /// `--help`, at any level.
    Help,
}

/// Splits `limits ...`; the error is the usage error and the command
/// it belongs to (`limits explain`).
fn parse(mut p: Parser) -> Result<Command, (Usage, String)> {
    let mut name = "limits".to_owned();
    let usage = |e: Usage| (e, name.clone());
    let which = match p.next().map_err(|e| usage(e.into()))? {
        Some(Long("help") | Short('h')) => return Ok(Command::Help),
        Some(Value(which)) => which,
        Some(arg) => return Err(usage(arg.unexpected().into())),
        None => {
            return Err(usage(Usage::new(
                "missing command: check, explain or rules",
            )));
        }
    };
    let which = match which.to_str() {
        Some(w @ ("check" | "explain" | "rules")) => w,
        _ => {
            let what = format!("unknown command {}", which.display());
            return Err(usage(Usage::new(what)));
        }
    };
    name = format!("limits {which}");
    let usage = |e: Usage| (e, name.clone());
    let explain = which == "explain";
    let (mut file, mut domains) = (None, Vec::new());
    while let Some(arg) = p.next().map_err(|e| usage(e.into()))? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help),
            Long("limits") if explain => {
                let value = flag_value(&mut p, "--limits").map_err(usage)?;
                file = Some(PathBuf::from(value));
            }
            Value(domain) if explain => domains.push(domain),
            Value(path) if file.is_none() => file = Some(PathBuf::from(path)),
            arg => return Err(usage(arg.unexpected().into())),
        }
    }
    Ok(match which {
        "check" => Command::Check(file),
        "rules" => Command::Rules(file),
        _ if domains.is_empty() => {
            return Err(usage(Usage::new("missing DOMAIN")));
        }
        _ => Command::Explain(file, domains),
    })
}

/// Runs `limits ...`; returns the exit code.
pub fn main(p: Parser) -> i32 {
    let command = match parse(p) {
        Ok(Command::Help) => return cmdline::help(USAGE),
        Ok(command) => command,
        Err((e, name)) => return e.report(&name),
    };
    let settings = match Settings::from_env(&|k| std::env::var_os(k)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardspawn limits: bad setting: {e}");
            return 100;
        }
    };
    let mut out = Out::new();
    let r = match command {
        Command::Check(file) => {
            let named = file.is_some();
            let path = file.unwrap_or_else(|| settings.limits_path());
            check(&mut out, &path, named)
        }
        Command::Rules(file) => {
            let named = file.is_some();
            let path = file.unwrap_or_else(|| settings.responses_path());
            rules(&mut out, &path, named)
        }
        Command::Explain(file, domains) => {
            let shards = settings.shards.unwrap_or_else(default_shards);
            let named = file.is_some();
            let path = file.unwrap_or_else(|| settings.limits_path());
            let cfg = ResolverConfig {
                servers: settings.dns.clone(),
                timeout: settings.dns_wait,
            };
            let lookup =
                |d: &[u8]| shardspawn_resolver::lookup_blocking(&cfg, d);
            let sites = settings.sites.then(|| SiteFinder {
                routes: read_routes(&settings.home.join(ROUTES)),
                lookup: &lookup,
            });
            explain(&mut out, &path, named, shards, &domains, sites)
        }
        Command::Help => Ok(0),
    };
    out.finish(r)
}

fn check(out: &mut impl Write, path: &Path, named: bool) -> io::Result<i32> {
    match load(path, named) {
        Ok(Some(limits)) => {
            let (mut domains, mut subdomains, mut groups) = (0, 0, 0);
            let mut mx = 0;
            for (_, rule) in limits.rules() {
                match rule {
                    Rule::Domain(..) => domains += 1,
                    Rule::Subdomain(..) => subdomains += 1,
                    Rule::Group(..) => groups += 1,
                    Rule::Exchange(..) | Rule::ExchangeSuffix(..) => mx += 1,
                    Rule::Default(_) | Rule::SiteDefault(_) => {}
                }
            }
            // Said only when there are some: the line of a file without
            // them is as it always was.
            let shared = match limits.shared_rules() {
                0 => String::new(),
                n => format!(", {n} shared rules"),
            };
            writeln!(
                out,
                "{}: ok: default limit {}, site limit {}, {domains} domain \
                 rules, {subdomains} subdomain rules, {mx} MX host rules, \
                 {groups} groups{shared}",
                path.display(),
                limits.default_limit(),
                limits.site_allowance().limit,
            )?;
            Ok(0)
        }
        Ok(None) => {
            writeln!(
                out,
                "{}: absent: every domain is its own key with the default \
                 limit of {}",
                path.display(),
                Limits::absent().default_limit()
            )?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("shardspawn limits: {e}");
            Ok(e.code())
        }
    }
}

/// What `explain` needs to find sites: smtproutes, and a way to ask
/// DNS (the resolver's, blocking: a command line may wait).
pub struct SiteFinder<'a> {
    /// The routes in force.
    pub routes: Routes,
    /// Asks DNS about one normalised domain.
    pub lookup: &'a dyn Fn(&[u8]) -> Answer,
}

fn explain(
    out: &mut impl Write,
    path: &Path,
    named: bool,
    shards: u16,
    domains: &[OsString],
    sites: Option<SiteFinder<'_>>,
) -> io::Result<i32> {
    let limits = match load(path, named) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("shardspawn limits: {e}");
            return Ok(e.code());
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
    let at_line =
        |line: usize| format!("{source} line {line} '{}'", line_text(line));
    for arg in domains {
        let bytes = arg.as_encoded_bytes();
        let host = domain::host(bytes).unwrap_or(bytes);
        let d = domain::normalise(host);
        let mut m = limits.lookup(&d);
        // Where its mail goes, when that decides the key.
        let mut found = String::new();
        if let Some(sites) = &sites
            && !m.is_domain_rule()
            && domain::ip_literal(&d).is_none()
        {
            let (said, exchanges) = where_mail_goes(sites, &d);
            found = format!("{said}; ");
            if let Some(exchanges) = exchanges {
                m = limits.site(&exchanges);
            }
        }
        let rule = match &m.rule {
            MatchedRule::Exact { line }
            | MatchedRule::Subdomain { line, .. } => {
                format!("rule {}", at_line(*line))
            }
            MatchedRule::Default { line: Some(line) } => {
                format!("rule {} (default)", at_line(*line))
            }
            MatchedRule::Default { line: None } => {
                "rule the built-in default".to_string()
            }
            MatchedRule::Provider { line, host, .. } => format!(
                "provider rule {} (matched by {})",
                at_line(*line),
                domain::printable(host)
            ),
            MatchedRule::Site { line: Some(line) } => {
                format!("site, limit from {}", at_line(*line))
            }
            MatchedRule::Site { line: None } => {
                "site, limit from the built-in default".to_string()
            }
        };
        let rate = m.rate.map_or_else(String::new, |r| format!("; rate {r}"));
        // Whether Redis is set is the supervisor's to say (it logs it at
        // start); the file's word is what this shows.
        let shared =
            if m.shared { "; shared by the fleet (Redis)" } else { "" };
        writeln!(
            out,
            "{}: {found}{rule}; key {}; limit {}{rate}{shared}; shard {} of \
             {shards}",
            domain::printable(&d),
            domain::printable(&m.key),
            m.limit,
            domain::shard_for(&m.key, shards)
        )?;
    }
    Ok(0)
}

/// What smtproutes or DNS say of where `d`'s mail goes, for the line,
/// and the exchanges that make its site (`None`: its domain key).
fn where_mail_goes(
    sites: &SiteFinder<'_>,
    d: &[u8],
) -> (String, Option<Vec<Exchange>>) {
    if let Some(route) = sites.routes.route(d)
        && let Some(relay) = route.relay
    {
        let port = route.port.map_or_else(String::new, |p| format!(":{p}"));
        let said = format!(
            "smtproutes line {}: relay {}{port}",
            route.line,
            domain::printable(&relay)
        );
        return (said, Some(vec![Exchange { preference: 0, host: relay }]));
    }
    let answer = (sites.lookup)(d);
    match answer.outcome {
        Outcome::Mx(exchanges) => {
            let hosts: Vec<String> = exchanges
                .iter()
                .map(|x| {
                    format!("{} {}", x.preference, domain::printable(&x.host))
                })
                .collect();
            (format!("MX {}", hosts.join(", ")), Some(exchanges))
        }
        Outcome::Host => {
            let own = vec![Exchange { preference: 0, host: d.to_vec() }];
            ("no MX: its own host".to_string(), Some(own))
        }
        Outcome::NoHost => ("no MX and no address".to_string(), None),
        Outcome::Failed(why) => (format!("MX lookup failed ({why})"), None),
    }
}

/// `limits rules`: the response rules in force, one a line.
fn rules(out: &mut Out, path: &Path, named: bool) -> io::Result<i32> {
    let read = match read_control(path) {
        Ok(Some(text)) => {
            Responses::parse(&text).map(|r| (r, "ok")).map_err(|error| {
                ControlFileError::Parse { path: path.to_path_buf(), error }
            })
        }
        Ok(None) if named => {
            Err(ControlFileError::Missing { path: path.to_path_buf() })
        }
        Ok(None) => Ok((Responses::built_in(), "absent")),
        Err(e) => Err(e),
    };
    let (responses, what) = match read {
        Ok(read) => read,
        Err(e) => {
            eprintln!("shardspawn limits: {e}");
            return Ok(e.code());
        }
    };
    writeln!(
        out,
        "{}: {what}: {} rules of the file, then {} built in",
        path.display(),
        responses.from_file(),
        responses.rules().len() - responses.from_file()
    )?;
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
        writeln!(out, "{}: \"{}\": {action}", rule.origin, rule.pattern)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limits file in a directory of this test's own.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shardspawn-limits-cmd-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limits");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn printed(run: impl FnOnce(&mut Vec<u8>) -> io::Result<i32>) -> String {
        let mut out = Vec::new();
        assert_eq!(run(&mut out).unwrap(), 0);
        String::from_utf8(out).unwrap()
    }

    /// Issue 18: `explain` says a key is shared, whatever kind of key,
    /// and says nothing new of one that is not; `check` counts them.
    #[test]
    fn explain_says_a_key_is_shared_by_the_fleet() {
        let path = file(
            "explain",
            ":4,shared\n=yahoo:10,50000/d,shared\nyahoo.com:=yahoo\n\
             orange.fr:2,SHARED\nlocal.test:3,1/s\n",
        );
        let domains: Vec<OsString> =
            ["u@yahoo.com", "orange.fr", "other.test", "local.test"]
                .map(OsString::from)
                .to_vec();
        let text = printed(|out| explain(out, &path, true, 4, &domains, None));
        let p = path.display();
        let shard = |key: &str| domain::shard_for(key.as_bytes(), 4);
        let want = [
            format!(
                "yahoo.com: rule {p} line 3 'yahoo.com:=yahoo'; key =yahoo; \
                 limit 10; rate 50000/d; shared by the fleet (Redis); shard \
                 {} of 4",
                shard("=yahoo")
            ),
            format!(
                "orange.fr: rule {p} line 4 'orange.fr:2,shared'; key \
                 orange.fr; limit 2; shared by the fleet (Redis); shard {} \
                 of 4",
                shard("orange.fr")
            ),
            format!(
                "other.test: rule {p} line 1 ':4,shared' (default); key \
                 other.test; limit 4; shared by the fleet (Redis); shard {} \
                 of 4",
                shard("other.test")
            ),
            format!(
                "local.test: rule {p} line 5 'local.test:3,1/s'; key \
                 local.test; limit 3; rate 1/s; shard {} of 4",
                shard("local.test")
            ),
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        assert_eq!(
            printed(|out| check(out, &path, true)),
            format!(
                "{p}: ok: default limit 4, site limit 4, 3 domain rules, 0 \
                 subdomain rules, 0 MX host rules, 1 groups, 3 shared \
                 rules\n"
            )
        );
        // A file with no shared rule checks as it always did.
        let path = file("check", ":4\na.test:2,1/d\n");
        assert_eq!(
            printed(|out| check(out, &path, true)),
            format!(
                "{}: ok: default limit 4, site limit 4, 1 domain rules, 0 \
                 subdomain rules, 0 MX host rules, 0 groups\n",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
