//! Issue 16: a strict receiver counts our connections per receiving
//! system, not per domain. Four receiving sites, each hosting ten
//! domains, each refusing (a 421 at the greeting) a sixth connection
//! from us to any of its domains; no limit configured for any of them.
//!
//! The same workload runs twice through the real spawner, with its
//! default adaptation: with sites on (keys are the four MX sets, found
//! through a real DNS server on loopback) and off (keys are the forty
//! domains, each adapting on its own and together overrunning their
//! receiver). Refusals per key must average at most one with sites on;
//! the test prints both runs' counts.

mod limits_common;

use std::fmt::Write as _;
use std::time::Duration;

use shardspawn_common::status::ShardStatus;
use shardspawn_workshop::dns::{DnsServer, Zone};
use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::remote::{
    ENV_STRICT_DIR, ENV_STRICT_SITES, result_of, strict_refusal,
};
use shardspawn_workshop::util::deadline_in;

use limits_common::{Rig, STATE_DIR, finish, show};

/// Connections each receiver takes from us at once.
const M: u32 = 5;
const SITES: usize = 4;
const DOMAINS_PER_SITE: usize = 10;
const DELIVERIES: usize = 600;
/// How long each delivery holds its connection, in ms. Long beside the
/// time a busy machine takes to see a stand-in's end: a stand-in gone
/// but not yet reaped still counts as running, and a key that started
/// a delivery beside it would think the receiver took one more.
const SESSION_MS: u32 = 200;
const IN_FLIGHT: usize = 200;

fn domain(site: usize, d: usize) -> String {
    format!("s{site}d{d}.test")
}

/// Refusals in a run with sites `on`.
fn refusals(on: bool) -> usize {
    let rig = Rig::new(":20\n", 2);
    let mut zone = String::new();
    let mut sites = String::new();
    for s in 0..SITES {
        for d in 0..DOMAINS_PER_SITE {
            let name = domain(s, d);
            let _ = writeln!(zone, "{name} MX 10 mx.site{s}.test");
            let _ = writeln!(sites, "{name} site{s}");
        }
        let _ = writeln!(zone, "mx.site{s}.test A 127.0.0.1");
    }
    let dns = DnsServer::start(Zone::parse(&zone).unwrap()).unwrap();
    let sites_file = rig.home.path().join("strict-sites");
    std::fs::write(&sites_file, sites).unwrap();
    let slots = rig.home.path().join("strict-slots");
    std::fs::create_dir(&slots).unwrap();
    let addr = dns.addr().to_string();
    let mut emu = rig.start(&[
        ("SHARDSPAWN_SITES", if on { "1" } else { "0" }),
        ("SHARDSPAWN_DNS", &addr),
        // The default adaptation, as an admin has it.
        ("SHARDSPAWN_INITIAL_LIMIT", "5"),
        ("SHARDSPAWN_SLOTS", "255"),
        ("SHARDSPAWN_HOLD_MAX", "100000"),
        ("SHARDSPAWN_HOLD_SECONDS", "600"),
        ("SHARDSPAWN_SUSPEND_AFTER", "0"),
        (ENV_STRICT_DIR, slots.to_str().unwrap()),
        (ENV_STRICT_SITES, sites_file.to_str().unwrap()),
    ]);
    let deliveries: Vec<Delivery> = (0..DELIVERIES)
        .map(|i| {
            let site = i % SITES;
            let d = (i / SITES) % DOMAINS_PER_SITE;
            Delivery {
                messid: rig.messid.clone(),
                sender: b"s@origin.test".to_vec(),
                recipient: format!(
                    "u{i}+sleep{SESSION_MS}+strict{M}@{}",
                    domain(site, d)
                )
                .into_bytes(),
            }
        })
        .collect();
    let report =
        emu.run(&deliveries, IN_FLIGHT, deadline_in(Duration::from_secs(180)));
    assert!(report.is_clean(), "{:?}\n{}", report.violations, rig.log_text());
    finish(&mut emu);
    let refusal = result_of(&strict_refusal());
    let mut refused = 0;
    for (d, o) in deliveries.iter().zip(&report.outcomes) {
        let body = &o.as_ref().expect("every delivery answered").body;
        if *body == refusal {
            refused += 1;
        } else {
            assert_eq!(
                body.first(),
                Some(&b'K'),
                "{}: {}",
                show(&d.recipient),
                show(body)
            );
        }
    }
    // The shards counted the same refusals, per key, in their status
    // (which lists each shard's 20 busiest keys: all of them when the
    // keys are the four sites).
    let mut counted = 0;
    for shard in 0..2 {
        let path =
            rig.home.path().join(STATE_DIR).join(format!("shard{shard}"));
        let text = std::fs::read_to_string(path).unwrap();
        let keys = ShardStatus::parse(&text).unwrap().keys;
        counted += keys.iter().map(|k| k.refusals).sum::<u64>();
    }
    if on {
        assert_eq!(counted, refused as u64, "refusals in the status files");
    } else {
        assert!(
            counted <= refused as u64,
            "{counted} counted, {refused} refused"
        );
    }
    refused
}

#[test]
fn a_strict_receiver_is_found_once_per_site_not_once_per_domain() {
    let on = refusals(true);
    let off = refusals(false);
    let per_site = on as f64 / SITES as f64;
    let per_domain = off as f64 / (SITES * DOMAINS_PER_SITE) as f64;
    eprintln!(
        "refusals: sites on {on} ({per_site:.2} per key, {SITES} keys); \
         sites off {off} ({per_domain:.2} per key, {} keys)",
        SITES * DOMAINS_PER_SITE
    );
    assert!(per_site <= 1.0, "sites on: {on} refusals over {SITES} keys");
    assert!(
        off > on,
        "per-domain keys should overrun their receivers: {off} vs {on}"
    );
}
