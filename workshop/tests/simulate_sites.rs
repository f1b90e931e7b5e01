//! Issue 16: `shardspawn simulate --mx-sets N` lets a user watch a
//! provider limit hold. The real binary, its own DNS server on loopback,
//! 40 domains over 4 MX sets (2 at the provider `bigmail.test`, 2 sites
//! of their own) and the built-in limits (`@:10`, the provider's group
//! 20, domains unlimited).
//!
//! The peaks in simulate's `check` lines are computed from the
//! stand-ins' own start and exit records, each domain mapped to its key
//! by simulate from the MX hosts it put in the zone (not by shardspawn).
//! If shardspawn counted domains rather than sites, each domain would
//! have the unlimited `:65535` and the provider's peak would pass 20.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use shardspawn_workshop::util::bin_path;

const MESSAGES: usize = 1000;

#[test]
fn simulate_mx_sets_shows_the_provider_and_site_limits_held() {
    let out = Command::new(bin_path("shardspawn-simulate"))
        .args(["--mx-sets", "4", "--domains", "40", "--shards", "2"])
        .args(["--messages", &MESSAGES.to_string(), "--latency-ms", "10"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    // `check KEY limit L peak P deliveries N domains D status yes|no
    // held|OVER`.
    let mut checks = BTreeMap::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"check") {
            continue;
        }
        assert_eq!(words.len(), 13, "{line}");
        assert_eq!(
            [words[2], words[4], words[6], words[8], words[10]],
            ["limit", "peak", "deliveries", "domains", "status"],
            "{line}"
        );
        let num = |i: usize| -> usize { words[i].parse().unwrap() };
        let (limit, peak) = (num(3), num(5));
        assert!(peak <= limit, "{line}\n{stdout}");
        assert_eq!(words[12], "held", "{line}");
        // shardspawn's own status files name the key: it counted under
        // the same keys as simulate's mapping.
        assert_eq!(words[11], "yes", "{line}\n{stdout}");
        checks.insert(words[1].to_string(), (limit, peak, num(7), num(9)));
    }
    // The provider's two sets share one key; the other two are sites
    // named by their MX hosts, with the site limit.
    let keys: Vec<&str> = checks.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "=bigmail",
            "@mx1.site3.test,mx2.site3.test",
            "@mx1.site4.test,mx2.site4.test"
        ],
        "{stdout}"
    );
    let (limit, _, _, domains) = checks["=bigmail"];
    assert_eq!((limit, domains), (20, 20), "{stdout}");
    for site in &keys[1..] {
        let (limit, _, _, domains) = checks[*site];
        assert_eq!((limit, domains), (10, 10), "{site}\n{stdout}");
    }
    let total: usize = checks.values().map(|c| c.2).sum();
    assert_eq!(total, MESSAGES, "{stdout}");
    assert!(
        stdout.contains(&format!("results          K {MESSAGES}  Z 0  D 0")),
        "{stdout}"
    );
    assert!(stdout.contains("limits held      yes"), "{stdout}");
}
