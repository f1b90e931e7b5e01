//! Issue 14: `shardspawn status --json` is JSON that serde_json reads
//! back, with the supervisor, each shard and the busiest keys, from the
//! status files in the state directory; `null` for what is not running.

use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use shardspawn_common::status::{
    KeyStatus, ShardStatus, SiteStatus, SupervisorStatus,
};
use shardspawn_workshop::QmailHome;
use shardspawn_workshop::util::bin_path;

/// `shardspawn ARGS` in a clean environment.
fn shardspawn(args: &[&str]) -> Output {
    Command::new(bin_path("shardspawn"))
        .env_clear()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn status_json_is_json() {
    let home = QmailHome::new().unwrap();
    let now = unix_now();
    let me = std::process::id();
    let supervisor = SupervisorStatus {
        pid: me,
        started: now - 60,
        updated: now,
        stopped: 0,
        slots: 300,
        delnum_bytes: 2,
        shards: 1,
        in_flight: 4,
        results: 99,
        letters: [90, 8, 1],
        restarts: 1,
        sites: 1,
        dns_waiting: 2,
        dns_cached: 7,
        sites_list: vec![SiteStatus {
            key: "@mx.site.test".to_owned(),
            kind: "site".to_owned(),
            domains: 5,
        }],
    };
    let key = KeyStatus {
        key: "d1.test".to_owned(),
        running: 3,
        held: 1,
        limit: 10,
        effective: 4,
        rate: "600/m".to_owned(),
        why: "response rule 1 matched \"slow\\down\"".to_owned(),
        ..KeyStatus::default()
    };
    let quiet = KeyStatus {
        key: "d2.test".to_owned(),
        limit: 8,
        effective: 8,
        ..KeyStatus::default()
    };
    let shard = ShardStatus {
        shard: 0,
        pid: me,
        started: now - 50,
        updated: now,
        stopped: 0,
        running: 3,
        held: 1,
        received: 40,
        reported: 36,
        deferred_by_limit: 2,
        keys: vec![key, quiet],
        ..ShardStatus::default()
    };
    home.write_file("state/supervisor", supervisor.render().as_bytes())
        .unwrap();
    home.write_file("state/shard0", shard.render().as_bytes()).unwrap();
    let dir = home.path().join("state");
    let out = shardspawn(&[
        "status",
        "--json",
        "--keys",
        "5",
        "--state-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(v["state_dir"], dir.to_str().unwrap());
    let s = &v["supervisor"];
    assert_eq!(s["state"], "up");
    assert_eq!(s["pid"], me);
    assert_eq!(s["slots"], 300);
    assert_eq!(s["delnum_bytes"], 2);
    assert_eq!(s["results"], 99);
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0]["shard"], 0);
    assert_eq!(shards[0]["state"], "up");
    assert_eq!(shards[0]["deferred_by_limit"], 2);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["key"], "d1.test");
    assert_eq!(keys[0]["effective"], 4);
    assert_eq!(keys[0]["rate"], "600/m");
    assert_eq!(keys[0]["why"], "response rule 1 matched \"slow\\down\"");
    assert_eq!(keys[1]["key"], "d2.test");
    assert!(keys[1]["rate"].is_null());
    assert_eq!(s["sites"], true);
    assert_eq!(s["dns_cached"], 7);
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["key"], "@mx.site.test");
    assert_eq!(sites[0]["kind"], "site");
    assert_eq!(sites[0]["domains"], 5);

    // Not running: null, still JSON, exit 1.
    let empty = home.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = shardspawn(&[
        "status",
        "--json",
        "--state-dir",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["supervisor"].is_null());
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(0));
}
