//! The promise of the limits file, proved on a real run: 20,000
//! deliveries over 200 domains, a few of them far busier than the rest
//! (Zipf), through 4 shards in the big-concurrency framing, and no limit
//! key ever has more qmail-remotes running than its limit: not a single
//! domain, not a subdomain rule's domains, not the three domains of a
//! group together, not the default.
//!
//! Every stand-in qmail-remote records when it started and ended; the
//! peak overlap per limit key is computed from that recording, each host
//! mapped to its key by `Limits::lookup` on the very same file text the
//! spawner reads. The test also demands that the busiest keys *reach*
//! their limit, so it fails if limits were ignored or if the run was too
//! gentle to prove anything.

mod limits_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardspawn_common::command::DelnumWidth;
use shardspawn_common::domain;
use shardspawn_common::limits::Limits;
use shardspawn_common::status::ShardStatus;
use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::util::deadline_in;
use shardspawn_workshop::workload;

use limits_common::{Rig, STATE_DIR, finish, show};

const LIMITS: &str = "\
# limit_never_exceeded.rs
:4
d1.test:10
d2.test:6
.sub.test:2
d3.test:=trio
d4.test:=trio
d5.test:=trio
=trio:5
";

const DELIVERIES: usize = 20_000;
const DOMAINS: usize = 200;
/// Extra deliveries to each of a.sub.test and b.sub.test.
const PER_SUBDOMAIN: usize = 300;
const SHARDS: u16 = 4;
const SLOTS: u16 = 2000;

/// The limit key of `host`, as the spawner counts it, printable.
fn key_of(limits: &Limits, host: &str) -> String {
    let m = limits.lookup(&domain::normalise(host.as_bytes()));
    domain::printable(&m.key)
}

#[test]
fn no_key_ever_runs_more_than_its_limit_under_a_skewed_load() {
    let began = Instant::now();
    let rig = Rig::new(LIMITS, SHARDS);
    let limits = Limits::parse(LIMITS.as_bytes()).unwrap();

    // One message file serves every delivery: what is measured is the
    // spawning, not the writing of 20,000 files.
    let delivery = |recipient: Vec<u8>| Delivery {
        messid: rig.messid.clone(),
        sender: workload::SENDER.to_vec(),
        recipient,
    };
    let mut deliveries: Vec<Delivery> =
        workload::recipients(DELIVERIES, DOMAINS, 1.0, 2024, "")
            .into_iter()
            .map(delivery)
            .collect();
    // The subdomains' deliveries spread through the run, alternating.
    let every = deliveries.len() / (2 * PER_SUBDOMAIN);
    for i in (0..2 * PER_SUBDOMAIN).rev() {
        let host = if i % 2 == 0 { "a.sub.test" } else { "b.sub.test" };
        let sub = delivery(format!("sub{i}@{host}").into_bytes());
        deliveries.insert(i * every, sub);
    }
    let total = deliveries.len();

    // A hold long and deep enough that nothing is deferred: every
    // delivery waits its turn and ends in a K.
    let mut emu = rig.start_width(
        DelnumWidth::Two,
        &[
            ("SHARDSPAWN_SLOTS", &SLOTS.to_string()),
            ("SHARDSPAWN_HOLD_SECONDS", "600"),
            ("SHARDSPAWN_HOLD_MAX", "100000"),
            ("SHARDSPAWN_FAKE_LATENCY_MS", "5"),
        ],
    );
    assert_eq!(emu.slots(), SLOTS);
    let report =
        emu.run(&deliveries, usize::from(SLOTS), deadline_in(secs(120)));
    let run_took = report.elapsed;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let missing = report.outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(missing, 0, "deliveries without a result");
    for (d, o) in deliveries.iter().zip(&report.outcomes) {
        let body = &o.as_ref().expect("checked above").body;
        assert_eq!(
            body.first(),
            Some(&b'K'),
            "{}: {}",
            show(&d.recipient),
            show(body)
        );
    }
    assert_eq!(report.letters.k, total);
    finish(&mut emu);

    // Recorded intervals run from the stand-in's first instruction to
    // just before its exit, which lies strictly inside the spawner's
    // spawn..reap interval for that delivery. So the overlap seen here
    // can only be lower than the count the spawner keeps, never higher:
    // a recorded peak over the limit is a real breach, and a recorded
    // peak at the limit proves the limit was reached.
    let recording = rig.recording();
    assert_eq!(recording.started(), total);
    assert_eq!(recording.ended(), total);
    let peaks = recording.peak_by(|host| key_of(&limits, host));
    let limit_of =
        |key: &str| -> usize { limits.limit_of_key(key.as_bytes()) as usize };
    let over: Vec<(&String, usize, usize)> = peaks
        .iter()
        .map(|(k, &p)| (k, p, limit_of(k)))
        .filter(|&(_, p, limit)| p > limit)
        .collect();
    assert!(
        over.is_empty(),
        "keys over their limit (key, peak, limit): {over:?}"
    );

    // The group is one key: its three domains together, at any instant,
    // never more than 5 (each alone could have run 5).
    assert!(peaks["=trio"] <= 5, "trio together: {}", peaks["=trio"]);

    // The busiest keys were pushed to their limits, so the checks above
    // would have seen a limit that was ignored.
    let busiest_default = (6..=DOMAINS)
        .map(workload::domain_name)
        .find(|d| peaks.contains_key(d))
        .expect("some default domain got mail");
    for key in ["d1.test", "d2.test", "=trio", "a.sub.test", "b.sub.test"]
        .iter()
        .map(|k| k.to_string())
        .chain([busiest_default])
    {
        assert_eq!(
            peaks.get(&key).copied(),
            Some(limit_of(&key)),
            "{key} never reached its limit; peaks: {peaks:?}"
        );
    }

    // The spawner's own count agrees: each shard's final status gives
    // the peak it kept per key (the busiest 20 keys of each shard).
    let mut kept: BTreeMap<String, u32> = BTreeMap::new();
    for shard in 0..SHARDS {
        let path =
            rig.home.path().join(STATE_DIR).join(format!("shard{shard}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let status = ShardStatus::parse(&text).unwrap();
        assert_eq!((status.running, status.held), (0, 0));
        for k in status.keys {
            assert!(
                k.peak <= k.limit,
                "shard {shard} counted {} at once for {} (limit {})",
                k.peak,
                k.key,
                k.limit
            );
            assert_eq!(k.limit as usize, limit_of(&k.key), "{}", k.key);
            assert_eq!(k.deferred, 0, "{}", k.key);
            kept.insert(k.key, k.peak);
        }
    }
    for key in ["d1.test", "d2.test", "=trio"] {
        assert_eq!(
            kept.get(key).map(|&p| p as usize),
            Some(limit_of(key)),
            "{key} in the status files: {kept:?}"
        );
    }
    eprintln!(
        "{total} deliveries in {run_took:?} ({:?} with setup); peaks: \
         d1 {}, d2 {}, trio {}, a.sub {}, b.sub {}",
        began.elapsed(),
        peaks["d1.test"],
        peaks["d2.test"],
        peaks["=trio"],
        peaks["a.sub.test"],
        peaks["b.sub.test"],
    );
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
