//! One domain's lookup with hickory, and what its answer means for
//! qmail-remote: MX hosts, the domain itself, nowhere, or unknown.

use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts,
    ResolverConfig as HickoryConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use shardspawn_common::domain;
use shardspawn_common::lookup::{Answer, Exchange, Outcome, ResolverConfig};
use tokio::time::Instant;

/// Lookups running at once; the rest wait their turn.
pub const IN_FLIGHT: usize = 512;

/// The TTL of a negative answer that carries no SOA to take it from.
pub const NEGATIVE_TTL: u32 = 60;

/// The TTL of an IP literal's answer, which no DNS gave: a day (the
/// supervisor clamps it).
const LITERAL_TTL: u32 = 86_400;

/// The TTL of a failure: none from DNS; the supervisor decides how long
/// it keeps one.
const FAILED_TTL: u32 = 0;

/// A resolver as `cfg` says: its servers over UDP and TCP (TCP also
/// takes over a truncated UDP answer), else those of /etc/resolv.conf.
/// No hosts file (qmail-remote asks DNS only), no cache of its own (the
/// supervisor caches answers, so that a TTL is clamped in one place).
/// Must be called inside a tokio runtime.
pub fn build(cfg: &ResolverConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if cfg.servers.is_empty() {
        Resolver::builder(provider)
            .map_err(|e| format!("unable to read /etc/resolv.conf: {e}"))?
    } else {
        let servers = cfg
            .servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = HickoryConfig::from_parts(None, Vec::new(), servers);
        Resolver::builder_with_config(config, provider)
    };
    let opts = builder.options_mut();
    // One request's bound; the whole lookup has its own (see lookup).
    opts.timeout = cfg.timeout.max(Duration::from_millis(1));
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    // Queries on one TCP connection at once: as many as lookups, so that
    // many truncated answers at once are not refused as busy.
    opts.max_active_requests = IN_FLIGHT;
    opts.preserve_intermediates = true;
    builder.build().map_err(|e| format!("unable to set up the resolver: {e}"))
}

/// Looks `domain` (normalised) up, giving up at `deadline`; `timeout`
/// is the bound that deadline stands for, for the failure's text.
pub async fn lookup(
    resolver: &TokioResolver,
    domain: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Answer {
    // `timeout_at` polls its future once even when the deadline is past:
    // a lookup that waited out its time in the queue sends nothing.
    let (ttl, outcome) = if Instant::now() >= deadline {
        (FAILED_TTL, Outcome::Failed(timed_out(timeout)))
    } else {
        let resolve = resolve(resolver, domain, timeout);
        match tokio::time::timeout_at(deadline, resolve).await {
            Ok(answer) => answer,
            Err(_) => (FAILED_TTL, Outcome::Failed(timed_out(timeout))),
        }
    };
    Answer { domain: domain.to_vec(), ttl, outcome }
}

async fn resolve(
    resolver: &TokioResolver,
    domain: &[u8],
    timeout: Duration,
) -> (u32, Outcome) {
    if domain::ip_literal(domain).is_some() {
        // qmail-remote connects to it without DNS.
        return (LITERAL_TTL, Outcome::Host);
    }
    let Some(name) = dns_name(domain) else {
        // No DNS name is spelt so (empty, an empty label, too long):
        // qmail-remote finds no host by it either.
        return (NEGATIVE_TTL, Outcome::NoHost);
    };
    let nodata_ttl = match resolver.mx_lookup(name.clone()).await {
        Ok(lookup) => {
            let mut ttl = u32::MAX;
            let mut exchanges = Vec::new();
            let mut null = false;
            // Every record used counts, the CNAMEs of a chain too.
            for record in lookup.answers() {
                ttl = ttl.min(record.ttl);
                if let RData::MX(mx) = &record.data {
                    if mx.exchange.is_root() {
                        null = true;
                    } else {
                        exchanges.push(Exchange {
                            preference: mx.preference,
                            host: host_of(&mx.exchange),
                        });
                    }
                }
            }
            match (exchanges.is_empty(), null) {
                (false, _) => return (ttl, Outcome::Mx(exchanges)),
                // RFC 7505: "." alone says the domain takes no mail. (With
                // other MX beside it, which the RFC forbids, those count.)
                (true, true) => return (ttl, Outcome::NoHost),
                // Records, none of them MX (a CNAME to a name without
                // MX): no MX, as NODATA.
                (true, false) => ttl,
            }
        }
        Err(e) => match classify(e, timeout) {
            Negative::NoData(ttl) => ttl,
            Negative::NxDomain(ttl) => return (ttl, Outcome::NoHost),
            Negative::Failed(why) => {
                return (FAILED_TTL, Outcome::Failed(why));
            }
        },
    };
    address(resolver, name, nodata_ttl, timeout).await
}

/// No MX: the domain's own address, as qmail-remote falls back to. A
/// first, AAAA only if there is no A.
async fn address(
    resolver: &TokioResolver,
    name: Name,
    mut ttl: u32,
    timeout: Duration,
) -> (u32, Outcome) {
    for rtype in [RecordType::A, RecordType::AAAA] {
        match resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let mut found = false;
                for record in lookup.answers() {
                    ttl = ttl.min(record.ttl);
                    found |=
                        matches!(record.data, RData::A(_) | RData::AAAA(_));
                }
                if found {
                    return (ttl, Outcome::Host);
                }
            }
            Err(e) => match classify(e, timeout) {
                Negative::NoData(n) | Negative::NxDomain(n) => {
                    ttl = ttl.min(n)
                }
                Negative::Failed(why) => {
                    return (FAILED_TTL, Outcome::Failed(why));
                }
            },
        }
    }
    (ttl, Outcome::NoHost)
}

/// What an error from hickory says of the name.
#[derive(Debug, PartialEq, Eq)]
enum Negative {
    /// The name exists without records of the type; the negative TTL.
    NoData(u32),
    /// The name does not exist; the negative TTL.
    NxDomain(u32),
    /// No answer to go by.
    Failed(String),
}

fn classify(e: NetError, timeout: Duration) -> Negative {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            negative_ttl,
            ..
        })) => {
            let ttl = negative_ttl.unwrap_or(NEGATIVE_TTL);
            match response_code {
                ResponseCode::NoError => Negative::NoData(ttl),
                ResponseCode::NXDomain => Negative::NxDomain(ttl),
                code => Negative::Failed(rcode_text(code)),
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Negative::Failed(rcode_text(code))
        }
        NetError::Timeout => Negative::Failed(timed_out(timeout)),
        NetError::Truncated => {
            Negative::Failed("truncated answer, over TCP too".into())
        }
        NetError::NoConnections => {
            Negative::Failed("no name server to ask".into())
        }
        NetError::Io(e) => Negative::Failed(format!("name server: {e}")),
        e => {
            let mut why = e.to_string();
            if let Some((cut, _)) = why.char_indices().nth(200) {
                why.truncate(cut);
            }
            Negative::Failed(why)
        }
    }
}

/// An RCODE as dig names it.
fn rcode_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        code => format!("RCODE {}", u16::from(code)),
    }
}

/// "timed out after 5 s", "… after 2.5 s".
pub fn timed_out(timeout: Duration) -> String {
    let ms = timeout.as_millis();
    let secs = if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        let frac = format!("{:03}", ms % 1000);
        format!("{}.{}", ms / 1000, frac.trim_end_matches('0'))
    };
    format!("timed out after {secs} s")
}

/// The DNS name a normalised domain spells (see
/// [`shardspawn_common::domain::normalise`]: labels split at '.', `\DDD`
/// and `\X` escapes decoded), fully qualified so that no search list
/// applies; `None` if no DNS name is spelt so.
fn dns_name(domain: &[u8]) -> Option<Name> {
    let mut labels: Vec<Vec<u8>> = vec![Vec::new()];
    let mut i = 0;
    while let Some(&b) = domain.get(i) {
        i += 1;
        let byte = match b {
            b'.' => {
                labels.push(Vec::new());
                continue;
            }
            b'\\' => match domain.get(i..i + 3) {
                Some(&[x, y, z])
                    if [x, y, z].iter().all(u8::is_ascii_digit)
                        && (x, y, z) <= (b'2', b'5', b'5') =>
                {
                    i += 3;
                    (x - b'0') * 100 + (y - b'0') * 10 + (z - b'0')
                }
                _ => match domain.get(i) {
                    Some(&x) => {
                        i += 1;
                        x
                    }
                    None => break,
                },
            },
            b => b,
        };
        labels.last_mut().expect("never empty").push(byte);
    }
    if labels.last().is_some_and(Vec::is_empty) {
        labels.pop();
    }
    if labels.is_empty() || labels.iter().any(Vec::is_empty) {
        return None;
    }
    let name = Name::from_labels(labels.iter().map(Vec::as_slice)).ok()?;
    // The wire form is at most 255 bytes.
    (name.len() <= 255).then_some(name)
}

/// An exchange's host as the supervisor keys it: normalised, no
/// trailing dot. A byte DNS carries in a label that the text form
/// cannot hold plain ('.', '\') is written as an escape first.
fn host_of(name: &Name) -> Vec<u8> {
    let mut text = Vec::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            text.push(b'.');
        }
        for &b in label {
            match b {
                b'.' | b'\\' => {
                    text.extend(format!("\\{b:03}").bytes());
                }
                b => text.push(b),
            }
        }
    }
    domain::normalise(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_normalise_writes_them() {
        let name = dns_name(b"mail.example.com").unwrap();
        assert!(name.is_fqdn());
        assert_eq!(name.to_ascii(), "mail.example.com.");
        let name = dns_name(b"a\\046b.example").unwrap();
        assert_eq!(name.iter().next(), Some(&b"a.b"[..]));
        assert_eq!(dns_name(b"tld").unwrap().to_ascii(), "tld.");
        assert_eq!(dns_name(b""), None);
        assert_eq!(dns_name(b"a..b"), None);
        assert_eq!(dns_name(&[b'a'; 64]), None);
        let long = vec![&b"abcdefghi"[..]; 30].join(&b'.');
        assert_eq!(dns_name(&long), None);
    }

    #[test]
    fn hosts_come_back_normalised() {
        let name = Name::from_ascii("MX1.Example.NET.").unwrap();
        assert_eq!(host_of(&name), b"mx1.example.net");
        let name = Name::from_labels([&b"a.b"[..], b"example"]).unwrap();
        assert_eq!(host_of(&name), b"a\\046b.example");
        assert_eq!(dns_name(&host_of(&name)), Some(name));
    }

    #[test]
    fn timeouts_read_in_seconds() {
        assert_eq!(timed_out(Duration::from_secs(5)), "timed out after 5 s");
        assert_eq!(
            timed_out(Duration::from_millis(2500)),
            "timed out after 2.5 s"
        );
        assert_eq!(
            timed_out(Duration::from_millis(300)),
            "timed out after 0.3 s"
        );
    }

    #[test]
    fn errors_are_classified() {
        let t = Duration::from_secs(5);
        let mut nx = NoRecords::new(
            hickory_resolver::proto::op::Query::new(),
            ResponseCode::NXDomain,
        );
        nx.negative_ttl = Some(30);
        assert_eq!(
            classify(NetError::Dns(DnsError::NoRecordsFound(nx)), t),
            Negative::NxDomain(30)
        );
        let nodata = NoRecords::new(
            hickory_resolver::proto::op::Query::new(),
            ResponseCode::NoError,
        );
        assert_eq!(
            classify(NetError::Dns(DnsError::NoRecordsFound(nodata)), t),
            Negative::NoData(NEGATIVE_TTL)
        );
        assert_eq!(
            classify(
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)),
                t
            ),
            Negative::Failed("SERVFAIL".into())
        );
        assert_eq!(
            classify(NetError::Timeout, t),
            Negative::Failed("timed out after 5 s".into())
        );
    }
}
