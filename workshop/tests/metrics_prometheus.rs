//! Issue 17, item 4: the Prometheus files a dashboard reads, parsed by
//! a parser of the text format written by others (openmetrics-parser),
//! from the real binary.
//!
//! Two shards, sites on (a DNS server on loopback puts three domains
//! under one MX set), `SHARDSPAWN_METRICS_KEYS=4`. First five deliveries
//! wait at the stand-in's gate, among them keys holding a backslash
//! (`h\233.test`, from the byte 0xe9) and a double quote: while nothing
//! moves, each shard's `.prom` must say what its status file says, key
//! by key, and the supervisor's what `supervisor` says. Then refusals of
//! every kind: a strict receiver's 421 (built-in rule 3), an `adapt` and
//! a `suspend` rule of the rules file (response rules 1 and 2), a failed
//! connect no rule names; and more keys than the bound. Once the spawner
//! has exited, its last files must count exactly the refusals qmail-send
//! got, by rule, and agree with the status files again. Last, the
//! sample Grafana dashboard in `init/` must be valid JSON whose queries
//! name only metrics these files hold.

mod adaptive_common;
mod limits_common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};
use shardspawn_common::status::{KeyStatus, ShardStatus, SupervisorStatus};
use shardspawn_workshop::dns::{DnsServer, Zone};
use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::remote::{
    ENV_STRICT_DIR, out_directive, result_of, strict_refusal,
};
use shardspawn_workshop::util::{deadline_in, wait_for};

use adaptive_common::{refuse, write_rules};
use limits_common::{Rig, STATE_DIR, finish, next, next_n, rcpt, soon};

const SHARDS: u16 = 2;
const METRICS_KEYS: usize = 4;
const RULES: &str = "adapt::please try later\nsuspend:1h:go away now\n";
const NO_SMTP: &str =
    "ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0";

/// One metric family as the parser read it.
#[derive(Debug)]
struct Family {
    kind: PrometheusType,
    help: String,
    /// Each sample's labels and value.
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

/// Parses a `.prom` file's text; panics with the text if it does not
/// parse.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let exposition = parse_prometheus(text)
        .unwrap_or_else(|e| panic!("not the text format: {e}\n{text}"));
    let mut out = BTreeMap::new();
    for (name, family) in exposition.families {
        let mut samples = Vec::new();
        for s in family.iter_samples() {
            let labels = s
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match &s.value {
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => {
                    n.as_f64()
                }
                PrometheusValue::Counter(c) => c.value.as_f64(),
                other => panic!("{name}: not a counter or gauge: {other:?}"),
            };
            samples.push((labels, value));
        }
        out.insert(
            name,
            Family {
                kind: family.family_type.clone(),
                help: family.help.clone(),
                samples,
            },
        );
    }
    out
}

/// The value of `name` with exactly `labels`, if the file has it.
fn value(
    prom: &BTreeMap<String, Family>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let want: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let family = prom.get(name)?;
    family.samples.iter().find(|(l, _)| *l == want).map(|(_, v)| *v)
}

/// Names, types and help: every family has a help text, `shardspawn_`
/// names, counters and only counters end in `_total`.
fn check_conventions(prom: &BTreeMap<String, Family>, file: &str) {
    assert!(!prom.is_empty(), "{file}: empty");
    for (name, f) in prom {
        assert!(name.starts_with("shardspawn_"), "{file}: {name}");
        assert!(!f.help.is_empty(), "{file}: {name} has no help");
        let counter = name.ends_with("_total");
        let want = if counter {
            PrometheusType::Counter
        } else {
            PrometheusType::Gauge
        };
        assert_eq!(f.kind, want, "{file}: {name}");
        assert!(!f.samples.is_empty(), "{file}: {name} has no sample");
    }
}

fn state(rig: &Rig) -> std::path::PathBuf {
    rig.home.path().join(STATE_DIR)
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// A shard's status and `.prom` of one moment: the status read before
/// and after the `.prom` says the same (but for when it was written).
fn shard_files(rig: &Rig, shard: u16) -> (ShardStatus, String) {
    let dir = state(rig);
    let status = dir.join(format!("shard{shard}"));
    let prom = dir.join(format!("shard{shard}.prom"));
    let mut last = None;
    let ok = wait_for(
        || {
            let before =
                read(&status).and_then(|t| ShardStatus::parse(&t).ok());
            let text = read(&prom);
            let after =
                read(&status).and_then(|t| ShardStatus::parse(&t).ok());
            let (Some(before), Some(text), Some(after)) =
                (before, text, after)
            else {
                return false;
            };
            let same = ShardStatus { updated: 0, ..before.clone() }
                == ShardStatus { updated: 0, ..after };
            last = Some((before, text));
            same
        },
        soon(),
    );
    assert!(ok, "shard {shard}'s files never stood still");
    last.unwrap()
}

/// The supervisor's status and `.prom`, read as [`shard_files`] reads a
/// shard's.
fn supervisor_files(rig: &Rig) -> (SupervisorStatus, String) {
    let dir = state(rig);
    let mut last = None;
    let ok = wait_for(
        || {
            let parse = |t: String| SupervisorStatus::parse(&t).ok();
            let before = read(&dir.join("supervisor")).and_then(parse);
            let text = read(&dir.join("supervisor.prom"));
            let after = read(&dir.join("supervisor")).and_then(parse);
            let (Some(before), Some(text), Some(after)) =
                (before, text, after)
            else {
                return false;
            };
            let same = SupervisorStatus { updated: 0, ..before.clone() }
                == SupervisorStatus { updated: 0, ..after };
            last = Some((before, text));
            same
        },
        soon(),
    );
    assert!(ok, "the supervisor's files never stood still");
    last.unwrap()
}

/// What a key's series must say: its line in the status file.
fn key_series(k: &KeyStatus) -> Vec<(&'static str, Option<u64>)> {
    let suspended = k.suspended_until > 0;
    vec![
        ("shardspawn_key_running", Some(k.running.into())),
        ("shardspawn_key_held", Some(k.held.into())),
        ("shardspawn_key_limit", Some(k.limit.into())),
        ("shardspawn_key_effective_limit", Some(k.effective.into())),
        ("shardspawn_key_suspended", Some(u64::from(suspended))),
        (
            "shardspawn_key_suspension_end_time_seconds",
            suspended.then_some(k.suspended_until),
        ),
        ("shardspawn_key_failures", Some(k.failures.into())),
        ("shardspawn_key_started_total", Some(k.started)),
        ("shardspawn_key_deferred_total", Some(k.deferred)),
        ("shardspawn_key_refusals_total", Some(k.refusals)),
    ]
}

/// A shard's `.prom` says what its status says: the totals, when it
/// started, and the series of its first [`METRICS_KEYS`] keys, each
/// labelled with its key as the status file writes it and the shard,
/// and of no other key. Returns the parsed file.
fn check_shard(rig: &Rig, shard: u16) -> BTreeMap<String, Family> {
    let (status, text) = shard_files(rig, shard);
    let prom = parse(&text);
    let file = format!("shard{shard}.prom");
    check_conventions(&prom, &file);
    let s = shard.to_string();
    let by_shard = [("shard", s.as_str())];
    for (name, want) in [
        ("shardspawn_running", u64::from(status.running)),
        ("shardspawn_held", status.held.into()),
        ("shardspawn_received_total", status.received),
        ("shardspawn_reported_total", status.reported),
        ("shardspawn_deferred_by_limit_total", status.deferred_by_limit),
        ("shardspawn_start_time_seconds", status.started),
    ] {
        assert_eq!(
            value(&prom, name, &by_shard),
            Some(want as f64),
            "{file}: {name}\n{text}"
        );
    }
    let listed = &status.keys[..METRICS_KEYS.min(status.keys.len())];
    for k in listed {
        let labels = [("key", k.key.as_str()), ("shard", s.as_str())];
        for (name, want) in key_series(k) {
            assert_eq!(
                value(&prom, name, &labels),
                want.map(|v| v as f64),
                "{file}: {name} of {}\n{text}",
                k.key
            );
        }
    }
    // No other key, and every sample of a key family is labelled so.
    let keys: BTreeSet<&str> = listed.iter().map(|k| k.key.as_str()).collect();
    for (name, f) in
        prom.iter().filter(|(n, _)| n.starts_with("shardspawn_key_"))
    {
        for (labels, _) in &f.samples {
            let names: Vec<&str> = labels.keys().map(String::as_str).collect();
            assert_eq!(names, ["key", "shard"], "{file}: {name}");
            assert_eq!(labels["shard"], s, "{file}: {name}");
            assert!(keys.contains(labels["key"].as_str()), "{file}: {name}");
        }
    }
    prom
}

/// The supervisor's `.prom` says what `supervisor` says. Returns the
/// parsed file.
fn check_supervisor(rig: &Rig) -> BTreeMap<String, Family> {
    let (status, text) = supervisor_files(rig);
    let prom = parse(&text);
    check_conventions(&prom, "supervisor.prom");
    for (name, want) in [
        ("shardspawn_supervisor_start_time_seconds", status.started),
        ("shardspawn_slots", status.slots.into()),
        ("shardspawn_shards", status.shards.into()),
        ("shardspawn_in_flight", status.in_flight.into()),
        ("shardspawn_results_total", status.results),
        ("shardspawn_shard_restarts_total", status.restarts),
        ("shardspawn_dns_waiting", status.dns_waiting.into()),
        ("shardspawn_dns_cached_domains", status.dns_cached.into()),
    ] {
        assert_eq!(
            value(&prom, name, &[]),
            Some(want as f64),
            "supervisor.prom: {name}\n{text}"
        );
    }
    assert!(!status.sites_list.is_empty(), "no site to show");
    for site in &status.sites_list {
        let labels =
            [("key", site.key.as_str()), ("kind", site.kind.as_str())];
        assert_eq!(
            value(&prom, "shardspawn_site_domains", &labels),
            Some(f64::from(site.domains)),
            "supervisor.prom: {}\n{text}",
            site.key
        );
    }
    assert_eq!(
        prom["shardspawn_site_domains"].samples.len(),
        status.sites_list.len()
    );
    prom
}

/// Every `shardspawn_` name in `text`.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("shardspawn_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        into.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
}

/// Every query string of a Grafana dashboard (`expr`, and a variable's
/// `query` or `definition`).
fn queries(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if let (true, Some(s)) = (
                    ["expr", "query", "definition"].contains(&k.as_str()),
                    v.as_str(),
                ) {
                    into.push(s.to_string());
                }
                queries(v, into);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| queries(v, into));
        }
        _ => {}
    }
}

/// The sample dashboard is valid JSON with a Prometheus data-source
/// variable, its panels query through it, and every metric it names is
/// one of `names`.
fn check_dashboard(names: &BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../init/grafana-dashboard.json");
    let text = fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus data-source variable"
    );
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5, "{} panels", panels.len());
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty());
    }
    let mut texts = Vec::new();
    queries(&dash, &mut texts);
    let mut used = BTreeSet::new();
    for q in &texts {
        metric_names(q, &mut used);
    }
    for want in [
        "shardspawn_in_flight",
        "shardspawn_key_running",
        "shardspawn_key_effective_limit",
        "shardspawn_refusals_total",
        "shardspawn_dns_waiting",
        "shardspawn_dns_cached_domains",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
    let unknown: Vec<&String> = used.difference(names).collect();
    assert!(unknown.is_empty(), "not in the files: {unknown:?}");
}

#[test]
fn the_metrics_files_parse_and_agree_with_the_status_files() {
    let mut rig = Rig::new(":20\n", SHARDS);
    write_rules(&rig, RULES);
    let mut zone = String::new();
    for d in 0..3 {
        let _ = writeln!(zone, "s{d}.test MX 10 mx.site.test");
    }
    zone.push_str("mx.site.test A 127.0.0.1\n");
    let dns = DnsServer::start(Zone::parse(&zone).unwrap()).unwrap();
    let addr = dns.addr().to_string();
    let slots = rig.home.path().join("strict-slots");
    fs::create_dir(&slots).unwrap();
    let keys = METRICS_KEYS.to_string();
    let mut emu = rig.start(&[
        ("SHARDSPAWN_SITES", "1"),
        ("SHARDSPAWN_DNS", &addr),
        ("SHARDSPAWN_DNS_SECONDS", "1"),
        ("SHARDSPAWN_METRICS_KEYS", &keys),
        ("SHARDSPAWN_SUSPEND_AFTER", "0"),
        ("SHARDSPAWN_HOLD_MAX", "1000"),
        ("SHARDSPAWN_HOLD_SECONDS", "600"),
        (ENV_STRICT_DIR, slots.to_str().unwrap()),
    ]);

    // While five wait at the gate, nothing moves.
    let quoted = rcpt(&["gate"], "q\"t.test");
    let mut eight_bit = rcpt(&["gate"], "h");
    eight_bit.push(0xe9);
    eight_bit.extend_from_slice(b".test");
    let gated = [
        rcpt(&["gate"], "s0.test"),
        rcpt(&["gate"], "s1.test"),
        rcpt(&["gate"], "plain.test"),
        quoted,
        eight_bit,
    ];
    for (delnum, r) in gated.iter().enumerate() {
        rig.send(&mut emu, delnum as u16, r);
    }
    rig.wait_started(gated.len());
    // Once both have published them (once a second).
    let dir = state(&rig);
    let published = wait_for(
        || {
            let running: u32 = (0..SHARDS)
                .filter_map(|i| read(&dir.join(format!("shard{i}"))))
                .filter_map(|t| ShardStatus::parse(&t).ok())
                .map(|s| s.running)
                .sum();
            let in_flight = read(&dir.join("supervisor"))
                .and_then(|t| SupervisorStatus::parse(&t).ok())
                .map(|s| s.in_flight);
            running == 5 && in_flight == Some(5)
        },
        soon(),
    );
    assert!(published, "the status files never showed the five");
    let mut running = 0;
    let mut keys_seen = BTreeSet::new();
    for shard in 0..SHARDS {
        let prom = check_shard(&rig, shard);
        running += value(
            &prom,
            "shardspawn_running",
            &[("shard", &shard.to_string())],
        )
        .unwrap() as usize;
        // (A shard may have none of these keys.)
        if let Some(f) = prom.get("shardspawn_key_running") {
            for (labels, _) in &f.samples {
                keys_seen.insert(labels["key"].clone());
            }
        }
    }
    assert_eq!(running, gated.len());
    // Backslash and quote read back as the status file writes the keys.
    for key in ["q\"t.test", "h\\233.test", "plain.test"] {
        assert!(keys_seen.contains(key), "{key} not in {keys_seen:?}");
    }
    assert!(
        keys_seen.iter().any(|k| k.starts_with('@')),
        "no site key: {keys_seen:?}"
    );
    let sup = check_supervisor(&rig);
    assert_eq!(value(&sup, "shardspawn_in_flight", &[]), Some(5.0));
    rig.gate.open();
    next_n(&mut emu, gated.len());

    // Refusals of every kind, and more keys than the bound.
    let says = |words: &str| out_directive(format!("Z{words}\n\0").as_bytes());
    let mut deliveries: Vec<Vec<u8>> = Vec::new();
    for i in 0..24 {
        deliveries.push(
            format!("u{i}+sleep100+strict2@s{}.test", i % 3).into_bytes(),
        );
    }
    for _ in 0..2 {
        deliveries
            .push(rcpt(&[&says("sorry, please try later")], "plain.test"));
    }
    deliveries.push(rcpt(&[&refuse("554 go away now")], "away.test"));
    deliveries.push(rcpt(&[&out_directive(NO_SMTP.as_bytes())], "dead.test"));
    for i in 0..16 {
        deliveries.push(rcpt(&[], &format!("k{i}.test")));
    }
    let deliveries: Vec<Delivery> = deliveries
        .into_iter()
        .map(|recipient| Delivery {
            messid: rig.messid.clone(),
            sender: b"s@origin.test".to_vec(),
            recipient,
        })
        .collect();
    let report =
        emu.run(&deliveries, 12, deadline_in(Duration::from_secs(60)));
    assert!(report.is_clean(), "{:?}\n{}", report.violations, rig.log_text());
    let strict = result_of(&strict_refusal());
    let body = |i: usize| report.outcomes[i].as_ref().unwrap().body.clone();
    let strict_refused = (0..24).filter(|&i| body(i) == strict).count() as f64;
    assert!(strict_refused > 0.0, "the strict receiver refused none");
    // The suspended key defers the next one itself.
    rig.send(&mut emu, 0, &rcpt(&[], "away.test"));
    let r = next(&mut emu);
    assert!(
        String::from_utf8_lossy(&r.body).contains("away.test is suspended"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    finish(&mut emu);

    // The last files, written as each process exited.
    let stopped = wait_for(
        || {
            let shards = (0..SHARDS).all(|i| {
                read(&dir.join(format!("shard{i}")))
                    .and_then(|t| ShardStatus::parse(&t).ok())
                    .is_some_and(|s| s.stopped > 0)
            });
            let sup = read(&dir.join("supervisor"))
                .and_then(|t| SupervisorStatus::parse(&t).ok())
                .is_some_and(|s| s.stopped > 0);
            shards && sup
        },
        soon(),
    );
    assert!(stopped, "the last status files never came");
    let mut names = BTreeSet::new();
    let mut by_rule: BTreeMap<String, f64> = BTreeMap::new();
    let mut suspended = Vec::new();
    for shard in 0..SHARDS {
        let prom = check_shard(&rig, shard);
        let (status, _) = shard_files(&rig, shard);
        // The bound: as many keys as the setting, when there are more.
        assert!(status.keys.len() > METRICS_KEYS, "{status:?}");
        assert_eq!(prom["shardspawn_key_running"].samples.len(), METRICS_KEYS);
        for (labels, n) in &prom["shardspawn_refusals_total"].samples {
            assert_eq!(labels["shard"], shard.to_string());
            *by_rule.entry(labels["rule"].clone()).or_default() += n;
        }
        if let Some(f) = prom.get("shardspawn_key_suspended") {
            for (labels, v) in &f.samples {
                if *v == 1.0 {
                    suspended.push(labels["key"].clone());
                }
            }
        }
        names.extend(prom.into_keys());
    }
    let want: BTreeMap<String, f64> = [
        ("built-in rule 3", strict_refused),
        ("response rule 1", 2.0),
        ("response rule 2", 1.0),
        ("no SMTP connection", 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_rule, want, "refusals by rule");
    assert_eq!(suspended, ["away.test"], "suspended keys");
    let sup = check_supervisor(&rig);
    assert_eq!(value(&sup, "shardspawn_in_flight", &[]), Some(0.0));
    names.extend(sup.into_keys());
    for want in [
        "shardspawn_key_suspension_end_time_seconds",
        "shardspawn_refusals_total",
        "shardspawn_site_domains",
    ] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }
    check_dashboard(&names);
}
