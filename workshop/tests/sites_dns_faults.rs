//! Issue 16: DNS never loses or stalls mail. Through the real binary,
//! against a real DNS server on loopback that misbehaves per name: every
//! delivery gets exactly one result, a K, under the key its answer (or
//! the lack of one) gives; and the resolver process dying is handled as
//! a shard's death is: nothing waits for it, and it comes back.

mod limits_common;

use std::collections::BTreeMap;
use std::time::Duration;

use shardspawn_common::status::ShardStatus;
use shardspawn_workshop::dns::{DnsServer, Zone};
use shardspawn_workshop::emulator::{Delivery, Emulator};
use shardspawn_workshop::util::{deadline_in, wait_for};

use limits_common::{Rig, STATE_DIR, finish, run_all_k, show};

const SHARDS: u16 = 2;

fn deliveries(rig: &Rig, domains: &[&str], each: usize) -> Vec<Delivery> {
    let mut all = Vec::new();
    for i in 0..each {
        for d in domains {
            all.push(Delivery {
                messid: rig.messid.clone(),
                sender: b"s@origin.test".to_vec(),
                recipient: format!("u{i}+sleep20@{d}").into_bytes(),
            });
        }
    }
    all
}

fn start(rig: &Rig, dns: &DnsServer, wait: &str) -> Emulator {
    let addr = dns.addr().to_string();
    rig.start(&[
        ("SHARDSPAWN_SITES", "1"),
        ("SHARDSPAWN_DNS", &addr),
        ("SHARDSPAWN_DNS_SECONDS", wait),
        ("SHARDSPAWN_HOLD_SECONDS", "600"),
        ("SHARDSPAWN_HOLD_MAX", "100000"),
    ])
}

fn run_all(rig: &Rig, emu: &mut Emulator, all: &[Delivery]) {
    let _ = run_all_k(rig, emu, all, 200);
}

/// Every key the shards counted, with its limit, from their last status.
fn keys(rig: &Rig) -> BTreeMap<String, u32> {
    let mut keys = BTreeMap::new();
    for shard in 0..SHARDS {
        let path =
            rig.home.path().join(STATE_DIR).join(format!("shard{shard}"));
        let text = std::fs::read_to_string(&path).unwrap();
        for k in ShardStatus::parse(&text).unwrap().keys {
            keys.insert(k.key, k.limit);
        }
    }
    keys
}

#[test]
fn every_kind_of_dns_trouble_ends_in_one_result_under_a_sane_key() {
    let rig = Rig::new(":20\n@:3\n", SHARDS);
    let mut zone = String::from(
        "ok.test MX 10 mx.ok.test\n\
         mx.ok.test A 127.0.0.1\n\
         servfail.test SERVFAIL\n\
         refused.test REFUSED\n\
         slow.test DROP\n\
         alias.test CNAME target.test\n\
         target.test MX 10 mx.target.test\n\
         noaddr.test MX 10 mx.nowhere.test\n\
         nomx.test A 127.0.0.1\n\
         nullmx.test MX 0 .\n\
         big.test TRUNCATE\n",
    );
    // More MX records than a 512-byte UDP answer holds.
    for i in 0..40 {
        zone.push_str(&format!(
            "big.test MX {i} a-rather-long-mail-exchanger-name-{i:02}.big-provider.test\n"
        ));
    }
    let dns = DnsServer::start(Zone::parse(&zone).unwrap()).unwrap();
    let mut emu = start(&rig, &dns, "1");
    let domains = [
        "ok.test",
        "servfail.test",
        "refused.test",
        "nx.test",
        "slow.test",
        "alias.test",
        "target.test",
        "noaddr.test",
        "nomx.test",
        "nullmx.test",
        "big.test",
    ];
    let all = deliveries(&rig, &domains, 10);
    run_all(&rig, &mut emu, &all);
    finish(&mut emu);
    let keys = keys(&rig);
    let big: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "a-rather-long-mail-exchanger-name-{i:02}.big-provider.test"
            )
        })
        .collect();
    let mut big_key = String::from("@");
    for host in &big {
        // Cut at 1024 bytes by whole hosts: merging, never splitting.
        if big_key.len() + host.len() + 1 > 1024 {
            break;
        }
        if big_key.len() > 1 {
            big_key.push(',');
        }
        big_key.push_str(host);
    }
    let want: BTreeMap<String, u32> = [
        // Found: the site, at the site limit.
        ("@mx.ok.test", 3),
        // A CNAME is followed: the alias shares its target's site.
        ("@mx.target.test", 3),
        // MX hosts with no address still name the site.
        ("@mx.nowhere.test", 3),
        // No MX, an address: the domain is its own host.
        ("@nomx.test", 3),
        // A truncated answer is fetched over TCP.
        (big_key.as_str(), 3),
        // No answer, no such domain, a null MX: the domain's own key.
        ("servfail.test", 20),
        ("refused.test", 20),
        ("slow.test", 20),
        ("nx.test", 20),
        ("nullmx.test", 20),
    ]
    .into_iter()
    .map(|(k, l)| (k.to_string(), l))
    .collect();
    assert_eq!(keys, want, "log:\n{}", rig.log_text());
    // A failure is logged once per domain; an answer that there is no
    // such domain is no failure.
    for (domain, n) in [
        ("servfail.test", 1),
        ("refused.test", 1),
        ("slow.test", 1),
        ("nx.test", 0),
    ] {
        let lines =
            rig.log_lines(&["MX lookup of", &format!("{domain} failed")]);
        assert_eq!(lines.len(), n, "{domain}: {lines:?}");
    }
}

/// The pid of `parent`'s child whose command line has `word`.
fn child_with(parent: u32, word: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>()
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        else {
            continue;
        };
        // The parent pid is the second field after the parenthesised name.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid = after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline =
            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|w| w == word.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn the_resolver_dying_loses_nothing_and_it_comes_back() {
    let rig = Rig::new(":20\n@:3\n", SHARDS);
    let zone = "slow.test DROP\nlater.test MX 10 mx.later.test\n";
    let dns = DnsServer::start(Zone::parse(zone).unwrap()).unwrap();
    // A wait far longer than the test: only the resolver's death can
    // release what waits for slow.test.
    let mut emu = start(&rig, &dns, "300");
    for delnum in 0..5u16 {
        rig.send(&mut emu, delnum, format!("u{delnum}@slow.test").as_bytes());
    }
    let first = child_with(emu.pid(), "resolver").expect("a resolver runs");
    // Asked, and waiting: the query reached the server.
    assert!(wait_for(
        || dns.queries() >= 1,
        deadline_in(Duration::from_secs(20))
    ));
    assert_eq!(emu.in_flight(), 5);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..5 {
        let rec = emu
            .recv(deadline_in(Duration::from_secs(20)))
            .unwrap_or_else(|| {
                panic!(
                    "a delivery waiting for DNS was lost; log:\n{}",
                    rig.log_text()
                )
            });
        assert_eq!(rec.body.first(), Some(&b'K'), "{}", show(&rec.body));
    }
    rig.wait_log(&["the resolver is gone", "5 deliveries waiting for DNS"], 1);
    // It comes back, and new domains are looked up again.
    let mut second = None;
    assert!(
        wait_for(
            || {
                second =
                    child_with(emu.pid(), "resolver").filter(|&p| p != first);
                second.is_some()
            },
            deadline_in(Duration::from_secs(20))
        ),
        "no new resolver; log:\n{}",
        rig.log_text()
    );
    let asked = dns.queries();
    rig.send(&mut emu, 0, b"u@later.test");
    let rec =
        emu.recv(deadline_in(Duration::from_secs(20))).expect("answered");
    assert_eq!(rec.body.first(), Some(&b'K'), "{}", show(&rec.body));
    assert!(dns.queries() > asked, "later.test was not looked up");
    finish(&mut emu);
    let keys = keys(&rig);
    assert!(keys.contains_key("@mx.later.test"), "{keys:?}");
    assert!(keys.contains_key("slow.test"), "{keys:?}");
}
