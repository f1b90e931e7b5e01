//! The limits file parser and the lookup of hostile domains.
//!
//! Input: byte 0 says where the rest splits (in 256ths) into the file's
//! text and a list of domains, one a line. Asserts: `Limits::parse`
//! never panics, and a file it accepts prints to bytes that parse back
//! to the same rules; looking up any domain never panics; a key is a
//! group's `=NAME` exactly when the matched rule gives that group; and
//! for a normalised domain (what the supervisor looks up) the key has
//! no NUL, rides a job frame unchanged, gives back its limit, and the
//! printed file answers the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardspawn_common::domain::{normalise, printable, shard_for};
use shardspawn_common::frame::Job;
use shardspawn_common::limits::{Limits, MatchedRule, Rule, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let split = rest.len() * usize::from(head) / 256;
    let (text, probes) = rest.split_at(split);

    let limits = match Limits::parse(text) {
        Ok(limits) => limits,
        Err(e) => {
            let lines = text.split(|&b| b == b'\n').count();
            assert!((1..=lines).contains(&e.line), "error on line {}", e.line);
            let _ = e.to_string();
            // Still look the domains up, in no file at all.
            let (none, lines) =
                (Limits::absent(), probes.split(|&b| b == b'\n'));
            check_lookups(&none, &none, lines);
            return;
        }
    };
    let printed = limits.to_bytes();
    let again = Limits::parse(&printed).expect("the printed file parses");
    assert_eq!(
        again,
        limits,
        "printed {:?}",
        String::from_utf8_lossy(&printed)
    );
    if let Ok(printed) = std::str::from_utf8(&printed) {
        assert_eq!(limits.to_string(), printed);
    }
    for (line, rule) in limits.rules() {
        assert_eq!(Rule::parse(&rule.to_bytes()).as_ref(), Ok(rule));
        // A rule matches every spelling of what it names.
        match rule {
            Rule::Domain(d, _) => {
                for spelling in
                    [&d.to_ascii_uppercase(), &[&d[..], b"."].concat()]
                {
                    let m = limits.lookup(&normalise(spelling));
                    assert_eq!(m.rule, MatchedRule::Exact { line });
                }
            }
            Rule::Subdomain(s, _) => {
                let sub = [b"X.", &s.to_ascii_uppercase()[..], b"."].concat();
                let m = limits.lookup(&normalise(&sub));
                if !matches!(m.rule, MatchedRule::Exact { .. }) {
                    let suffix = s.clone();
                    assert_eq!(
                        m.rule,
                        MatchedRule::Subdomain { line, suffix }
                    );
                }
            }
            // Rules of MX hosts: never matched by a domain's lookup.
            Rule::Default(_)
            | Rule::Group(..)
            | Rule::Exchange(..)
            | Rule::ExchangeSuffix(..)
            | Rule::SiteDefault(_) => {}
        }
    }

    // The domains the file names, in the forms a sender might use.
    let mut domains: Vec<Vec<u8>> = Vec::new();
    for (_, rule) in limits.rules() {
        match rule {
            Rule::Domain(d, _) => domains.push(d.clone()),
            Rule::Subdomain(s, _) => {
                domains.push([b"x.".as_slice(), s].concat());
                domains.push(s.clone());
            }
            Rule::Group(g, _) => domains.push(format!("={g}").into_bytes()),
            Rule::Exchange(h, _) => domains.push([b"@", &h[..]].concat()),
            Rule::ExchangeSuffix(s, _) => {
                domains.push([b"@.", &s[..]].concat())
            }
            Rule::Default(_) | Rule::SiteDefault(_) => {}
        }
    }
    let n = domains.len();
    for i in 0..n {
        domains.push(domains[i].to_ascii_uppercase());
        domains.push([&domains[i][..], b"."].concat());
    }
    let lines = probes.split(|&b| b == b'\n');
    check_lookups(
        &limits,
        &again,
        lines.chain(domains.iter().map(|d| &d[..])),
    );
});

/// Looks up every domain, as given and normalised; `again` is `limits`
/// printed and parsed back.
fn check_lookups<'a>(
    limits: &Limits,
    again: &Limits,
    domains: impl Iterator<Item = &'a [u8]>,
) {
    for raw in domains {
        let norm = normalise(raw);
        assert_eq!(normalise(&norm), norm, "normalise is not idempotent");
        assert_eq!(normalise(&raw.to_ascii_uppercase()), norm, "case");
        if raw.last().is_some_and(|&b| b != b'\\') {
            let dotted = [raw, b"."].concat();
            assert_eq!(normalise(&dotted), norm, "a trailing dot");
        }
        assert!(!norm.contains(&0), "NUL in a normalised domain");
        check_key(limits, raw);
        let m = check_key(limits, &norm);
        assert!(!m.key.contains(&0), "NUL in the key of {norm:?}");
        assert_eq!(limits.limit_of_key(&m.key), m.limit, "limit_of_key");
        let n = again.lookup(&norm);
        assert_eq!((&n.key, n.limit), (&m.key, m.limit), "the printed file");
        assert!(shard_for(&m.key, 7) < 7);
        let line = printable(&m.key);
        assert!(!line.contains(['\n', '\r', ' ']), "key line {line:?}");
        // The supervisor hands the key to a shard in a job frame.
        let job = Job {
            delnum: 1,
            messid: b"1".to_vec(),
            sender: Vec::new(),
            recipient: [b"u@", raw].concat(),
            key: m.key.clone(),
        };
        if !raw.contains(&0) {
            let mut frame = Vec::new();
            job.encode(&mut frame);
            assert_eq!(Job::from_payload(1, &frame[7..]), Some(job));
        }
    }
}

/// Looks `domain` up and checks that its key is a group's exactly when
/// the matched rule gives a group.
fn check_key(
    limits: &Limits,
    domain: &[u8],
) -> shardspawn_common::limits::Match {
    let m = limits.lookup(domain);
    assert!((1..=65535).contains(&m.limit), "limit {}", m.limit);
    let line = match &m.rule {
        MatchedRule::Exact { line } | MatchedRule::Subdomain { line, .. } => {
            Some(*line)
        }
        MatchedRule::Default { line } => {
            assert_eq!(
                *line,
                limits.rules().find_map(|(l, r)| {
                    matches!(r, Rule::Default(_)).then_some(l)
                })
            );
            None
        }
        MatchedRule::Provider { .. } | MatchedRule::Site { .. } => {
            panic!("a domain's lookup matched an MX rule: {m:?}")
        }
    };
    let rule = line.map(|l| {
        limits.rules().find(|&(at, _)| at == l).expect("the matched line").1
    });
    let group = match rule {
        Some(Rule::Domain(_, Value::Group(g)))
        | Some(Rule::Subdomain(_, Value::Group(g))) => Some(g),
        Some(Rule::Domain(..)) | Some(Rule::Subdomain(..)) | None => None,
        Some(
            r @ (Rule::Default(_)
            | Rule::Group(..)
            | Rule::Exchange(..)
            | Rule::ExchangeSuffix(..)
            | Rule::SiteDefault(_)),
        ) => {
            panic!("matched {r:?}")
        }
    };
    match group {
        Some(g) => assert_eq!(m.key, format!("={g}").into_bytes()),
        None => {
            assert_ne!(m.key.first(), Some(&b'='), "{m:?}");
            assert_ne!(m.key.first(), Some(&b'@'), "{m:?}");
        }
    }
    m
}
