//! Limits per receiving site and provider, found through MX (issue 16),
//! proved through the real binary against a real DNS server on loopback
//! (the workshop's, answering UDP and TCP from a zone this test writes).
//!
//! 200 domains over 4 MX sets: two sets (A and B) have their hosts under
//! `provider.test`, which a provider rule puts in one group of 10; C and
//! D are sites of their own, each with the site limit `@:4`. Every
//! stand-in records its start and end; the peak per provider and per
//! site is computed from that recording, each domain mapped to its set
//! by this test (not by the spawner), and must never pass its limit.

mod limits_common;

use std::collections::BTreeMap;

use std::process::Command;

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::status::SupervisorStatus;
use shardspawn_workshop::dns::{DnsServer, Zone};
use shardspawn_workshop::emulator::{Delivery, Emulator};
use shardspawn_workshop::util::bin_path;
use shardspawn_workshop::workload;

use limits_common::{Rig, STATE_DIR, finish, run_all_k};

const LIMITS: &str = "\
# sites.rs
:20
@:4
@.provider.test:=prov
=prov:10
@relay.test:1
";

const DOMAINS: usize = 200;
const SHARDS: u16 = 4;
const SLOTS: u16 = 500;

/// The MX set of domain rank `r` (1-based): A, B, C or D.
fn set_of(rank: usize) -> usize {
    rank % 4
}

/// Each set's MX lines for `domain`.
fn mx_lines(domain: &str, set: usize) -> String {
    match set {
        0 => format!(
            "{domain} MX 10 mx1.a.provider.test\n{domain} MX 20 mx2.a.provider.test\n"
        ),
        1 => format!("{domain} MX 10 mx.b.provider.test\n"),
        2 => format!("{domain} MX 10 mx.c.test\n"),
        _ => format!("{domain} MX 10 mx1.d.test\n{domain} MX 10 mx2.d.test\n"),
    }
}

/// What the recording's hosts are counted under: the provider for A
/// and B, the site for C and D, as the limits file says.
fn receiver_of(host: &str) -> String {
    let rank: usize = host
        .strip_prefix('d')
        .and_then(|h| h.strip_suffix(".test"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a host of no set: {host}"));
    match set_of(rank) {
        0 | 1 => "prov".to_owned(),
        2 => "site C".to_owned(),
        _ => "site D".to_owned(),
    }
}

fn zone() -> Zone {
    let mut text = String::new();
    for rank in 1..=DOMAINS {
        text.push_str(&mx_lines(&workload::domain_name(rank), set_of(rank)));
    }
    for host in [
        "mx1.a.provider.test",
        "mx2.a.provider.test",
        "mx.b.provider.test",
        "mx.c.test",
        "mx1.d.test",
        "mx2.d.test",
        "relay.test",
    ] {
        text.push_str(&format!("{host} A 127.0.0.1\n"));
    }
    Zone::parse(&text).expect("the test's zone parses")
}

fn deliveries(
    rig: &Rig,
    n: usize,
    ranks: std::ops::RangeInclusive<usize>,
) -> Vec<Delivery> {
    let ranks: Vec<usize> = ranks.collect();
    (0..n)
        .map(|i| Delivery {
            messid: rig.messid.clone(),
            sender: workload::SENDER.to_vec(),
            recipient: format!(
                "user{i}@{}",
                workload::domain_name(ranks[i % ranks.len()])
            )
            .into_bytes(),
        })
        .collect()
}

fn start(rig: &Rig, dns: &DnsServer, wait: &str) -> Emulator {
    let addr = dns.addr().to_string();
    rig.start_width(
        DelnumWidth::Two,
        &[
            ("SHARDSPAWN_SITES", "1"),
            ("SHARDSPAWN_DNS", &addr),
            ("SHARDSPAWN_DNS_SECONDS", wait),
            ("SHARDSPAWN_SLOTS", &SLOTS.to_string()),
            ("SHARDSPAWN_HOLD_SECONDS", "600"),
            ("SHARDSPAWN_HOLD_MAX", "100000"),
            ("SHARDSPAWN_FAKE_LATENCY_MS", "5"),
        ],
    )
}

fn run_all(rig: &Rig, emu: &mut Emulator, deliveries: &[Delivery]) {
    let _ = run_all_k(rig, emu, deliveries, usize::from(SLOTS));
}

fn peaks(rig: &Rig) -> BTreeMap<String, usize> {
    rig.recording().peak_by(receiver_of)
}

#[test]
fn a_provider_and_each_site_never_run_more_than_their_limits() {
    let rig = Rig::new(LIMITS, SHARDS);
    let dns = DnsServer::start(zone()).unwrap();
    let mut emu = start(&rig, &dns, "5");
    let all = deliveries(&rig, 3000, 1..=DOMAINS);
    run_all(&rig, &mut emu, &all);
    finish(&mut emu);
    let recording = rig.recording();
    assert_eq!(
        (recording.started(), recording.ended()),
        (all.len(), all.len())
    );
    let peaks = peaks(&rig);
    // Each limit held, and was reached: a limit that was ignored, or a
    // run too gentle to push it, would fail here.
    assert_eq!(peaks["prov"], 10, "{peaks:?}");
    assert_eq!(peaks["site C"], 4, "{peaks:?}");
    assert_eq!(peaks["site D"], 4, "{peaks:?}");
    // The status says how many domains each site and provider holds.
    let state = rig.home.path().join(STATE_DIR);
    let text = std::fs::read_to_string(state.join("supervisor")).unwrap();
    let status = SupervisorStatus::parse(&text).unwrap();
    let sites: Vec<(String, String, u32)> = status
        .sites_list
        .into_iter()
        .map(|s| (s.key, s.kind, s.domains))
        .collect();
    let want = [
        ("=prov", "group", 100),
        ("@mx.c.test", "site", 50),
        ("@mx1.d.test,mx2.d.test", "site", 50),
    ];
    let want: Vec<(String, String, u32)> = want
        .iter()
        .map(|(k, t, n)| (k.to_string(), t.to_string(), *n))
        .collect();
    assert_eq!(sites, want);
    let page = Command::new(bin_path("shardspawn"))
        .args(["status", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("site or provider"), "{page}");
    assert!(
        page.lines().any(|l| l.starts_with("=prov ") && l.contains(" 100 ")),
        "{page}"
    );
    // One lookup per domain, not per delivery: the answers were kept.
    assert!(dns.queries() < 2 * DOMAINS as u64, "{} queries", dns.queries());
    eprintln!("peaks {peaks:?}; {} DNS queries", dns.queries());
}

#[test]
fn with_the_dns_server_stopped_halfway_mail_goes_on_under_domains() {
    let rig = Rig::new(LIMITS, SHARDS);
    let mut dns = DnsServer::start(zone()).unwrap();
    let mut emu = start(&rig, &dns, "1");
    // The first half of the domains is looked up and kept.
    let first = deliveries(&rig, 1000, 1..=DOMAINS / 2);
    run_all(&rig, &mut emu, &first);
    dns.stop();
    // The second half: no answer comes. Each domain waits its second,
    // once, and its deliveries go under its own key; none is lost.
    let second = deliveries(&rig, 1000, DOMAINS / 2 + 1..=DOMAINS);
    run_all(&rig, &mut emu, &second);
    finish(&mut emu);
    let recording = rig.recording();
    assert_eq!(recording.started(), first.len() + second.len());
    // The first half was counted by site and provider, and held; the
    // second half went under each domain's own key (its limit of 20).
    let by_receiver = recording.peak_by(|host| {
        let rank: usize = host[1..host.len() - 5].parse().unwrap();
        if rank <= DOMAINS / 2 { receiver_of(host) } else { host.to_owned() }
    });
    assert_eq!(by_receiver["prov"], 10, "{by_receiver:?}");
    assert!(
        by_receiver.iter().all(|(k, &p)| p
            <= if k == "prov" {
                10
            } else if k.starts_with("site") {
                4
            } else {
                20
            }),
        "{by_receiver:?}"
    );
    // A failed lookup is logged once per domain, not per delivery.
    for rank in DOMAINS / 2 + 1..=DOMAINS {
        let domain = workload::domain_name(rank);
        let lines =
            rig.log_lines(&["MX lookup of", &format!("{domain} failed")]);
        assert_eq!(lines.len(), 1, "{domain}: {lines:?}");
    }
    let failed = rig.log_lines(&["MX lookup of", "failed"]).len();
    assert_eq!(failed, DOMAINS / 2, "{}", rig.log_text());
}

#[test]
fn smtproutes_comes_before_mx() {
    let rig = Rig::new(LIMITS, SHARDS);
    // d3 and d7 are in set D by MX; smtproutes sends d3 to relay.test,
    // whose rule allows 1 at once.
    rig.home
        .write_file("control/smtproutes", b"d3.test:relay.test:2525\n")
        .unwrap();
    let dns = DnsServer::start(zone()).unwrap();
    let mut emu = start(&rig, &dns, "5");
    let mut mixed = deliveries(&rig, 40, 3..=3);
    mixed.extend(deliveries(&rig, 40, 7..=7));
    run_all(&rig, &mut emu, &mixed);
    finish(&mut emu);
    let peaks = rig.recording().peak_by(|h| h.to_owned());
    assert_eq!(peaks["d3.test"], 1, "the relay's limit: {peaks:?}");
    assert_eq!(peaks["d7.test"], 4, "site D's limit: {peaks:?}");
    // The routed domain was never looked up: one query, d7's.
    assert_eq!(dns.queries(), 1);
}
