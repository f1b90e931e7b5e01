//! Issue 18: the fleet's settings are checked before anything starts.
//! A bad one is a bad setting like any other (STYLE habit 5, and
//! `command_line.rs`): exit 100, one line on fd 2 naming it, no
//! announcement on fd 1, so qmail-send sees no spawner rather than one
//! that half works. `SHARDSPAWN_REDIS` without `SHARDSPAWN_FLEET_RELAYS`
//! is one: a relay that does not know how many share its limits cannot
//! work out its share when Redis is away. A password in the URL is
//! never printed, and never on a shard's command line (a shard reads the
//! URL from its environment).

mod limits_common;

use std::process::{Output, Stdio};

use shardspawn_workshop::redis::RedisServer;
use shardspawn_workshop::util::{children, wait_for};

use limits_common::{Rig, finish, soon};

const LIMITS: &str = "shared.test:10,shared\n:100\n";
const URL: &str = "redis://127.0.0.1:1";

fn run(rig: &Rig, env: &[(&str, &str)], args: &[&str]) -> Output {
    rig.command(env).args(args).stdin(Stdio::null()).output().unwrap()
}

/// Exit 100, nothing on fd 1, one line on fd 2 with every one of
/// `names`; the line.
fn refused(out: &Output, names: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(100), "{err}");
    assert!(out.stdout.is_empty(), "announced: {:?}", out.stdout);
    assert_eq!(err.lines().count(), 1, "{err}");
    for n in names {
        assert!(err.contains(n), "{n} not named: {err}");
    }
    err
}

#[test]
fn redis_without_the_number_of_relays_is_a_bad_setting() {
    let rig = Rig::new(LIMITS, 2);
    let out = run(&rig, &[("SHARDSPAWN_REDIS", URL)], &[]);
    refused(&out, &["SHARDSPAWN_FLEET_RELAYS"]);
    // The same from the flags.
    let out = run(&rig, &[], &["--redis", URL]);
    refused(&out, &["fleet-relays"]);
}

#[test]
fn fleet_numbers_out_of_range_are_bad_settings() {
    let rig = Rig::new(LIMITS, 2);
    for (name, value) in [
        ("SHARDSPAWN_FLEET_RELAYS", "0"),
        ("SHARDSPAWN_FLEET_RELAYS", "1001"),
        ("SHARDSPAWN_FLEET_BATCH", "0"),
        ("SHARDSPAWN_FLEET_BATCH", "101"),
        ("SHARDSPAWN_LEASE_SECONDS", "1"),
        ("SHARDSPAWN_LEASE_SECONDS", "3601"),
    ] {
        let mut env = vec![("SHARDSPAWN_REDIS", URL), (name, value)];
        if name != "SHARDSPAWN_FLEET_RELAYS" {
            env.push(("SHARDSPAWN_FLEET_RELAYS", "2"));
        }
        let out = run(&rig, &env, &[]);
        refused(&out, &[&format!("{name}={value}")]);
    }
}

#[test]
fn a_password_is_never_printed_nor_on_a_command_line() {
    let rig = Rig::new(LIMITS, 2);
    // Not a Redis URL: refused, and the password in it not repeated.
    let out = run(
        &rig,
        &[
            ("SHARDSPAWN_REDIS", "http://:hunter2@127.0.0.1:1"),
            ("SHARDSPAWN_FLEET_RELAYS", "2"),
        ],
        &[],
    );
    let line = refused(&out, &["SHARDSPAWN_REDIS"]);
    assert!(!line.contains("hunter2"), "{line}");

    // A good URL with a password: the shards run, and no process of the
    // relay has it in its argv.
    let redis = RedisServer::start_in(&rig.home.path().join("redis"))
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://:hunter2@127.0.0.1:{}", redis.port());
    let mut emu = rig.start(&[
        ("SHARDSPAWN_REDIS", &url),
        ("SHARDSPAWN_FLEET_RELAYS", "2"),
    ]);
    let mut shards = Vec::new();
    let ok = wait_for(
        || {
            shards = children(emu.pid());
            shards.len() == 2
        },
        soon(),
    );
    assert!(ok, "shards: {shards:?}");
    for pid in shards.iter().map(|c| c.0).chain([emu.pid()]) {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv = String::from_utf8_lossy(&argv);
        assert!(!argv.contains("hunter2"), "pid {pid}: {argv}");
    }
    finish(&mut emu);
    assert!(!rig.log_text().contains("hunter2"), "{}", rig.log_text());
}

/// `SHARDSPAWN_REDIS_CA` is checked at start: it needs a rediss://
/// address, and a file the shards' TLS client takes (readable, with at
/// least one PEM certificate). Else a bad setting naming it and the
/// file, with no password.
#[test]
fn a_redis_ca_is_checked_at_start() {
    let rig = Rig::new(LIMITS, 2);
    let tls = "rediss://:hunter2@127.0.0.1:1";
    let dir = rig.home.path();
    let missing = dir.join("no-such-ca.pem");
    let garbage = dir.join("garbage-ca.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let broken = dir.join("broken-ca.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = missing.to_str().unwrap();
    let garbage = garbage.to_str().unwrap();
    let broken = broken.to_str().unwrap();
    for (redis, ca, why) in [
        (URL, garbage, "only applies to rediss://"),
        (tls, missing, "unable to read it: No such file or directory"),
        (tls, garbage, "not a CA file: no PEM certificate"),
        (tls, broken, "not a CA file: certificate 1 is no CA"),
    ] {
        let env = [
            ("SHARDSPAWN_REDIS", redis),
            ("SHARDSPAWN_FLEET_RELAYS", "2"),
            ("SHARDSPAWN_REDIS_CA", ca),
        ];
        let out = run(&rig, &env, &[]);
        let line =
            refused(&out, &[&format!("SHARDSPAWN_REDIS_CA={ca}: "), why]);
        assert!(!line.contains("hunter2"), "{line}");
    }
    // Without any Redis, from the flag.
    let out = run(&rig, &[], &["--redis-ca", garbage]);
    refused(&out, &["--redis-ca", garbage, "SHARDSPAWN_REDIS is unset"]);
}
