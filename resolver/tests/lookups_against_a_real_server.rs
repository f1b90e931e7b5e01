//! Each kind of answer the resolver gives, from a real authoritative
//! server on loopback (the workshop's), through `lookup_blocking`, which
//! runs the same lookup as the process does.

use std::time::{Duration, Instant};

use shardspawn_common::lookup::{Answer, Exchange, Outcome, ResolverConfig};
use shardspawn_resolver::lookup_blocking;
use shardspawn_workshop::dns::{DnsServer, Zone};

const ZONE: &str = "\
$NEGATIVE-TTL 45
mx.example       3600 MX 10 MX1.Example.NET.
mx.example       600  MX 10 mx2.example.net
mx.example       900  MX 20 backup.example.net
mx1.example.net       A 127.0.0.1
host.example     120  A 127.0.0.2
v6.example       240  AAAA ::1
nothing.example       CNAME nowhere-else.example
bare.example          TXT v=spf1
empty.example         A 127.0.0.3
www.example      100  CNAME mx.example
alias.example    70   CNAME host.example
noaddr.example        MX 10 unknown-1.example.net
noaddr.example        MX 20 unknown-2.example.net
null.example          MX 0 .
tld                   MX 5 mx.tld
broken.example        SERVFAIL
refused.example       REFUSED
silent.example        DROP
big.example           TRUNCATE
big.example           MX 10 mx1.example.net
";

fn server() -> DnsServer {
    DnsServer::start(Zone::parse(ZONE).unwrap()).unwrap()
}

fn cfg(server: &DnsServer, timeout: Duration) -> ResolverConfig {
    ResolverConfig { servers: vec![server.addr()], timeout }
}

fn ask(server: &DnsServer, domain: &str) -> Answer {
    let answer = lookup_blocking(
        &cfg(server, Duration::from_secs(10)),
        domain.as_bytes(),
    );
    assert_eq!(answer.domain, domain.as_bytes());
    answer
}

fn mx(list: &[(u16, &str)]) -> Outcome {
    Outcome::Mx(
        list.iter()
            .map(|&(preference, host)| Exchange {
                preference,
                host: host.as_bytes().to_vec(),
            })
            .collect(),
    )
}

#[test]
fn mx_records_with_several_preferences_and_the_least_ttl() {
    let s = server();
    let a = ask(&s, "mx.example");
    assert_eq!(
        a.outcome,
        mx(&[
            (10, "mx1.example.net"),
            (10, "mx2.example.net"),
            (20, "backup.example.net")
        ])
    );
    assert_eq!(a.ttl, 600);
}

#[test]
fn a_single_label_domain_is_asked_as_is() {
    let s = server();
    assert_eq!(ask(&s, "tld").outcome, mx(&[(5, "mx.tld")]));
}

#[test]
fn mx_hosts_without_an_address_are_not_looked_up() {
    let s = server();
    let a = ask(&s, "noaddr.example");
    assert_eq!(
        a.outcome,
        mx(&[(10, "unknown-1.example.net"), (20, "unknown-2.example.net")])
    );
    assert_eq!(s.queries(), 1, "one MX query, no address queries");
}

#[test]
fn no_mx_but_an_address_is_the_host_itself() {
    let s = server();
    let a = ask(&s, "host.example");
    assert_eq!((a.outcome, a.ttl), (Outcome::Host, 45));
    // The MX NODATA (45) and the A (120) were both used.
    let a = ask(&s, "v6.example");
    assert_eq!((a.outcome, a.ttl), (Outcome::Host, 45));
}

#[test]
fn no_mx_and_no_address_is_no_host() {
    let s = server();
    // Known, but without MX, A or AAAA: NODATA three times.
    let a = ask(&s, "bare.example");
    assert_eq!((a.outcome, a.ttl), (Outcome::NoHost, 45));
    assert_eq!(s.queries(), 3, "MX, A, AAAA");
}

#[test]
fn nxdomain_is_no_host_with_the_negative_ttl() {
    let s = server();
    let a = ask(&s, "nowhere.example");
    assert_eq!((a.outcome, a.ttl), (Outcome::NoHost, 45));
}

#[test]
fn a_null_mx_is_no_host() {
    let s = server();
    let a = ask(&s, "null.example");
    assert_eq!((a.outcome, a.ttl), (Outcome::NoHost, 300));
    assert_eq!(s.queries(), 1, "no address fallback after a null MX");
}

#[test]
fn servfail_and_refused_are_failures() {
    let s = server();
    assert_eq!(
        ask(&s, "broken.example").outcome,
        Outcome::Failed("SERVFAIL".into())
    );
    assert_eq!(
        ask(&s, "refused.example").outcome,
        Outcome::Failed("REFUSED".into())
    );
}

#[test]
fn silence_times_out_within_the_bound() {
    let s = server();
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let a = lookup_blocking(&cfg(&s, timeout), b"silent.example");
    let took = started.elapsed();
    assert_eq!(a.outcome, Outcome::Failed("timed out after 1.5 s".into()));
    assert!(took >= timeout, "gave up early: {took:?}");
    assert!(took < timeout + Duration::from_secs(5), "took {took:?}");
    assert!(s.queries() >= 1);
}

#[test]
fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let s = server();
    // Over UDP the server gives TC and no records: the MX can only have
    // come over TCP.
    let a = ask(&s, "big.example");
    assert_eq!(a.outcome, mx(&[(10, "mx1.example.net")]));
    assert!(s.queries() >= 2, "UDP then TCP: {}", s.queries());
}

#[test]
fn a_cname_to_a_name_with_mx_is_followed() {
    let s = server();
    let a = ask(&s, "www.example");
    assert_eq!(
        a.outcome,
        mx(&[
            (10, "mx1.example.net"),
            (10, "mx2.example.net"),
            (20, "backup.example.net")
        ])
    );
    assert_eq!(a.ttl, 100, "the CNAME's TTL counts");
}

#[test]
fn a_cname_to_a_host_without_mx_is_that_host() {
    let s = server();
    let a = ask(&s, "alias.example");
    assert_eq!(a.outcome, Outcome::Host);
    assert!(a.ttl <= 70, "the CNAME's TTL counts: {}", a.ttl);
}

#[test]
fn a_cname_to_nowhere_is_no_host() {
    let s = server();
    assert_eq!(ask(&s, "nothing.example").outcome, Outcome::NoHost);
}

#[test]
fn an_ip_literal_asks_no_dns() {
    let s = server();
    let a = ask(&s, "[127.0.0.1]");
    assert_eq!(a.outcome, Outcome::Host);
    assert_eq!(s.queries(), 0);
}

#[test]
fn a_stopped_server_is_a_failure_not_a_hang() {
    let mut s = server();
    let cfg = cfg(&s, Duration::from_secs(2));
    s.stop();
    let a = lookup_blocking(&cfg, b"mx.example");
    assert!(matches!(a.outcome, Outcome::Failed(_)), "{a:?}");
}
