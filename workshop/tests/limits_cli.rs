//! `shardspawn limits check [FILE]`, `shardspawn limits rules [FILE]` and
//! `shardspawn limits explain
//! DOMAIN...`, what an admin runs before and after editing the limits
//! file: `check` says what a good file holds and names the line of a bad
//! one (exit 100, as the spawner would refuse to start on it); `explain`
//! gives, per domain, the rule that matches, the key it is counted on,
//! the limit, and the shard that owns the key, which must be the shard
//! the supervisor routes to (`domain::shard_for` of the key).

use std::path::Path;
use std::process::{Command, Output};

use shardspawn_common::domain::{normalise, printable, shard_for};
use shardspawn_common::limits::Limits;
use shardspawn_workshop::QmailHome;
use shardspawn_workshop::util::bin_path;

const LIMITS: &str = "\
# limits for limits_cli.rs
:4

d1.test:10
D2.Test.:6
.sub.test:2
d3.test:=trio
d4.test:=trio
.trio.test:=trio
=Trio:5
";

/// `shardspawn limits ARGS` in a clean environment plus `env`; sites
/// off unless `env` turns them on (with its own DNS server): this
/// machine's resolver is none of the test's business.
fn limits(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin_path("shardspawn"));
    cmd.env_clear().env("SHARDSPAWN_SITES", "0").arg("limits").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_says_what_a_good_file_holds() {
    let home = QmailHome::new().unwrap();
    let file = home.write_file("limits", LIMITS.as_bytes()).unwrap();
    let out = limits(&["check", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok: default limit 4, site limit 4, 4 domain rules, 2 \
             subdomain rules, 0 MX host rules, 1 groups\n",
            file.display()
        )
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_names_the_line_of_a_broken_file_and_exits_100() {
    let home = QmailHome::new().unwrap();
    // (file, the error after "FILE: ")
    let cases = [
        ("d1.test:10\nd2.test:x\n", "line 2: d2.test:x: not a number"),
        ("# ok\n\n:0\n", "line 3: :0: a limit must be at least 1"),
        (
            ":4\nd1.test:5\nd1.test:6\n",
            "line 3: d1.test:6: named twice; first on line 2",
        ),
        (
            "a.test:=g\nb.test:=h\n=g:2\n",
            "line 2: b.test:=h: group h is used but not defined",
        ),
        ("d1.test 10\n", "line 1: d1.test 10: no ':' between key and value"),
    ];
    for (i, (contents, error)) in cases.into_iter().enumerate() {
        let file = home
            .write_file(format!("broken{i}"), contents.as_bytes())
            .unwrap();
        let out = limits(&["check", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(100), "{contents:?}");
        assert_eq!(text(&out.stdout), "", "{contents:?}");
        assert_eq!(
            text(&out.stderr),
            format!("shardspawn limits: {}: {error}\n", file.display()),
            "{contents:?}"
        );
    }
}

#[test]
fn explain_gives_rule_key_limit_and_the_owning_shard() {
    const SHARDS: u16 = 4;
    let home = QmailHome::new().unwrap();
    let file = home.write_file("limits", LIMITS.as_bytes()).unwrap();
    let parsed = Limits::parse(LIMITS.as_bytes()).unwrap();
    // (argument, printed domain, rule as printed, key, limit)
    let table: [(&str, &str, &str, &str, u32); 9] = [
        ("d1.test", "d1.test", "line 4 'd1.test:10'", "d1.test", 10),
        ("u@D2.TEST.", "d2.test", "line 5 'd2.test:6'", "d2.test", 6),
        ("a.sub.test", "a.sub.test", "line 6 '.sub.test:2'", "a.sub.test", 2),
        (
            "x.y.sub.test",
            "x.y.sub.test",
            "line 6 '.sub.test:2'",
            "x.y.sub.test",
            2,
        ),
        ("d3.test", "d3.test", "line 7 'd3.test:=trio'", "=trio", 5),
        ("d4.test", "d4.test", "line 8 'd4.test:=trio'", "=trio", 5),
        (
            "m.trio.test",
            "m.trio.test",
            "line 9 '.trio.test:=trio'",
            "=trio",
            5,
        ),
        ("sub.test", "sub.test", "line 2 ':4' (default)", "sub.test", 4),
        ("[10.0.0.1]", "[10.0.0.1]", "line 2 ':4' (default)", "[10.0.0.1]", 4),
    ];
    let args: Vec<&str> =
        ["explain"].into_iter().chain(table.iter().map(|t| t.0)).collect();
    let out = limits(
        &args,
        &[("SHARDSPAWN_LIMITS", &file), ("SHARDSPAWN_SHARDS", Path::new("4"))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), table.len(), "{stdout}");
    for (line, (arg, domain, rule, key, limit)) in lines.iter().zip(table) {
        // What the supervisor computes for this recipient.
        let host = arg.rsplit('@').next().unwrap();
        let m = parsed.lookup(&normalise(host.as_bytes()));
        assert_eq!((printable(&m.key).as_str(), m.limit), (key, limit));
        let shard = shard_for(&m.key, SHARDS);
        assert_eq!(
            *line,
            format!(
                "{domain}: rule {} {rule}; key {key}; limit {limit}; \
                 shard {shard} of {SHARDS}",
                file.display()
            ),
        );
    }
    // A group's members meet on one shard.
    let trio: Vec<&&str> =
        lines.iter().filter(|l| l.contains("key =trio;")).collect();
    assert_eq!(trio.len(), 3);
    assert!(trio.iter().all(|l| {
        l.ends_with(&format!("shard {} of 4", shard_for(b"=trio", SHARDS)))
    }));
}

#[test]
fn explain_without_a_file_uses_the_built_in_default() {
    let home = QmailHome::new().unwrap();
    let absent = home.path().join("no-such-limits");
    let out = limits(
        &["explain", "a.test"],
        &[
            ("SHARDSPAWN_LIMITS", &absent),
            ("SHARDSPAWN_SHARDS", Path::new("3")),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "a.test: rule the built-in default; key a.test; limit 20; \
             shard {} of 3\n",
            shard_for(b"a.test", 3)
        )
    );
}

#[test]
fn explain_names_a_rate_and_rules_lists_the_rules_in_force() {
    let home = QmailHome::new().unwrap();
    let file = home
        .write_file("limits", b":4\nr.test:3,90/m\n=g:2,1/s\ng.test:=g\n")
        .unwrap();
    let out = limits(
        &["explain", "r.test", "g.test", "x.test"],
        &[("SHARDSPAWN_LIMITS", &file), ("SHARDSPAWN_SHARDS", Path::new("1"))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> =
        text(&out.stdout).lines().map(String::from).collect();
    assert!(
        lines[0].ends_with("key r.test; limit 3; rate 90/m; shard 0 of 1")
    );
    assert!(lines[1].ends_with("key =g; limit 2; rate 1/s; shard 0 of 1"));
    assert!(lines[2].ends_with("key x.test; limit 4; shard 0 of 1"));

    // The file's rules first, then the built-in ones, each with its
    // origin; the default path is HOME/control/responserules.
    home.write_file("control/responserules", b"# ours\nsuspend:2m:go away\n")
        .unwrap();
    let out = limits(&["rules"], &[("SHARDSPAWN_HOME", home.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = text(&out.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(
        "responserules: ok: 1 rules of the file, then 11 built in"
    ));
    assert_eq!(lines[1], "response rule 2: \"go away\": suspend for 120s");
    assert_eq!(
        lines[2],
        "built-in rule 1: \"receiving mail at a rate\": ignore"
    );
    assert_eq!(lines.len(), 13);

    // A bad line is named, exit 100 as the spawner would refuse it.
    let bad = home.write_file("bad-rules", b"limit=0:5m:x\n").unwrap();
    let out = limits(&["rules", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(100));
    assert_eq!(
        text(&out.stderr),
        format!(
            "shardspawn limits: {}: line 1: limit=0:5m:x: limit=0: a limit \
             must be at least 1\n",
            bad.display()
        )
    );
}

/// The provider rules shipped in init/ parse, and `explain` puts a
/// domain hosted at a provider under the provider's key, found through
/// MX on a real (loopback) DNS server, and one routed by smtproutes
/// under its relay.
#[test]
fn the_shipped_provider_rules_hold_and_explain_shows_the_route() {
    use shardspawn_workshop::dns::{DnsServer, Zone};
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../init/providers.limits");
    let out = limits(&["check", shipped.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let zone = "\
hosted.test MX 1 aspmx.l.google.com
hosted.test MX 5 alt1.aspmx.l.google.com
ms.test MX 10 ms-test.mail.protection.outlook.com
own.test MX 10 mx1.own.test
own.test MX 20 mx2.own.test
";
    let dns = DnsServer::start(Zone::parse(zone).unwrap()).unwrap();
    let home = QmailHome::new().unwrap();
    home.write_file("control/smtproutes", b"routed.test:relay.test:2525\n")
        .unwrap();
    let addr = dns.addr().to_string();
    let out = limits(
        &[
            "explain",
            "--limits",
            shipped.to_str().unwrap(),
            "a@hosted.test",
            "ms.test",
            "own.test",
            "routed.test",
        ],
        &[
            ("SHARDSPAWN_HOME", home.path()),
            ("SHARDSPAWN_SITES", Path::new("1")),
            ("SHARDSPAWN_DNS", Path::new(&addr)),
            ("SHARDSPAWN_SHARDS", Path::new("4")),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> =
        text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let shard = |key: &str| shard_for(key.as_bytes(), 4);
    assert!(
        lines[0].starts_with(
            "hosted.test: MX 1 aspmx.l.google.com, 5 alt1.aspmx.l.google.com; \
             provider rule "
        ) && lines[0].contains(
            "'@.google.com:=google' (matched by aspmx.l.google.com)"
        ) && lines[0].ends_with(&format!(
            "key =google; limit 5; rate 100/m; shard {} of 4",
            shard("=google")
        )),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("key =office365; limit 5"), "{}", lines[1]);
    assert!(
        lines[2].contains("site, limit from")
            && lines[2].contains("key @mx1.own.test,mx2.own.test; limit 10"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with(
            "routed.test: smtproutes line 1: relay relay.test:2525; "
        ) && lines[3].contains("key @relay.test; limit 10"),
        "{}",
        lines[3]
    );
    // Sites off: the domain, as before.
    let out = limits(
        &["explain", "--limits", shipped.to_str().unwrap(), "ms.test"],
        &[("SHARDSPAWN_SITES", Path::new("0"))],
    );
    assert!(
        text(&out.stdout).contains("key ms.test; limit 20"),
        "{}",
        text(&out.stdout)
    );
}
