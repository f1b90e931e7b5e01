//! What the supervisor and its resolver process say to each other: a
//! domain to look up, and what DNS said of where its mail goes. Frames
//! as [`crate::frame`] writes them (kind, a delnum of 0, payload), so the
//! supervisor reads both its shards and its resolver with one decoder.
//!
//! The resolver is started like a shard (our own binary, `shardspawn
//! resolver`, pipes on fd 0 and 1) and told its settings on its command
//! line ([`ResolverConfig`]).

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::time::Duration;

/// Frame kind: supervisor → resolver, the payload is one normalised
/// domain.
pub const LOOKUP: u8 = b'Q';
/// Frame kind: resolver → supervisor, the payload is an [`Answer`].
pub const ANSWER: u8 = b'A';

/// The longest answer frame the supervisor reads: 64 KiB of MX names is
/// more than any DNS message can carry.
pub const MAX_ANSWER: u32 = 128 * 1024;

/// One mail exchanger of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Exchange {
    /// The MX preference: lower is tried first.
    pub preference: u16,
    /// The host, normalised as [`crate::domain::normalise`] leaves a
    /// name (lowercase, no trailing dot); never empty, no NUL.
    pub host: Vec<u8>,
}

/// Where a domain's mail goes, as DNS says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its MX records (at least one), in the order DNS gave them.
    Mx(Vec<Exchange>),
    /// No MX, but the domain has an address: qmail-remote connects to
    /// the domain itself, so the domain is its own (one-host) site.
    Host,
    /// No such domain, no mail exchanger and no address, or a null MX:
    /// qmail-remote will not deliver there. Counted under its domain.
    NoHost,
    /// No answer: SERVFAIL, refused, a timeout, a broken reply. The text
    /// says which, for the log.
    Failed(String),
}

/// The resolver's answer for one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The domain asked for, as asked.
    pub domain: Vec<u8>,
    /// Seconds the answer may be kept (the smallest TTL of the records
    /// used, or of the negative answer); the supervisor clamps it.
    pub ttl: u32,
    /// What DNS said.
    pub outcome: Outcome,
}

const MX: u8 = b'M';
const HOST: u8 = b'H';
const NO_HOST: u8 = b'N';
const FAILED: u8 = b'F';

impl Answer {
    /// Appends the frame: `domain NUL kind ttl(4, LE) body`, where the
    /// body of an MX answer is `preference(2, LE) host NUL` per exchange
    /// and that of a failure its text (NUL bytes made '?').
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(self.domain.len() + 16);
        payload.extend_from_slice(&self.domain);
        payload.push(0);
        let kind = match &self.outcome {
            Outcome::Mx(_) => MX,
            Outcome::Host => HOST,
            Outcome::NoHost => NO_HOST,
            Outcome::Failed(_) => FAILED,
        };
        payload.push(kind);
        payload.extend_from_slice(&self.ttl.to_le_bytes());
        match &self.outcome {
            Outcome::Mx(exchanges) => {
                for x in exchanges {
                    payload.extend_from_slice(&x.preference.to_le_bytes());
                    payload.extend(x.host.iter().filter(|&&b| b != 0));
                    payload.push(0);
                }
            }
            Outcome::Host | Outcome::NoHost => {}
            Outcome::Failed(why) => payload
                .extend(why.bytes().map(|b| if b == 0 { b'?' } else { b })),
        }
        crate::frame::encode_text(ANSWER, &payload, out);
    }

    /// Parses an [`ANSWER`] frame's payload; `None` if it is malformed
    /// (an MX answer with no exchange, or an empty host, is).
    pub fn from_payload(payload: &[u8]) -> Option<Answer> {
        let nul = payload.iter().position(|&b| b == 0)?;
        let domain = payload[..nul].to_vec();
        let rest = &payload[nul + 1..];
        let (&kind, rest) = rest.split_first()?;
        let ttl = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        let body = &rest[4..];
        let outcome = match kind {
            MX => {
                let mut exchanges = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let pref =
                        u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
                    let rest2 = &rest[2..];
                    let end = rest2.iter().position(|&b| b == 0)?;
                    if end == 0 {
                        return None;
                    }
                    exchanges.push(Exchange {
                        preference: pref,
                        host: rest2[..end].to_vec(),
                    });
                    rest = &rest2[end + 1..];
                }
                if exchanges.is_empty() {
                    return None;
                }
                Outcome::Mx(exchanges)
            }
            HOST if body.is_empty() => Outcome::Host,
            NO_HOST if body.is_empty() => Outcome::NoHost,
            FAILED => {
                Outcome::Failed(String::from_utf8_lossy(body).into_owned())
            }
            _ => return None,
        };
        Some(Answer { domain, ttl, outcome })
    }
}

/// Appends a [`LOOKUP`] frame for `domain` (normalised, no NUL).
pub fn encode_lookup(domain: &[u8], out: &mut Vec<u8>) {
    crate::frame::encode_text(LOOKUP, domain, out);
}

/// What the resolver process is told on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers to ask; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// How long one lookup may take in all before it is a failure.
    pub timeout: Duration,
}

impl ResolverConfig {
    /// The arguments [`ResolverConfig::from_args`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string().into(),
        ];
        for server in &self.servers {
            args.push("--server".into());
            args.push(server.to_string().into());
        }
        args
    }

    /// Reads what [`ResolverConfig::to_args`] wrote.
    pub fn from_args<S: AsRef<OsStr>>(
        args: &[S],
    ) -> Result<ResolverConfig, String> {
        let mut cfg = ResolverConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
        };
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let value =
                it.next().and_then(OsStr::to_str).ok_or_else(|| {
                    format!("{} needs a value", flag.to_string_lossy())
                })?;
            match flag.to_str() {
                Some("--timeout-ms") => {
                    let ms: u64 = value.parse().map_err(|_| {
                        format!("--timeout-ms: not a number: {value}")
                    })?;
                    cfg.timeout = Duration::from_millis(ms);
                }
                Some("--server") => {
                    cfg.servers.push(value.parse().map_err(|_| {
                        format!("--server: not IP:PORT: {value}")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "unknown argument {}",
                        flag.to_string_lossy()
                    ));
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    fn round_trip(answer: Answer) {
        let mut out = Vec::new();
        answer.encode(&mut out);
        let mut decoder = FrameDecoder::new(MAX_ANSWER);
        let (used, frame) = decoder.decode(&out);
        assert_eq!(used, out.len());
        let (kind, delnum, payload) = frame.unwrap().unwrap();
        assert_eq!((kind, delnum), (ANSWER, 0));
        assert_eq!(Answer::from_payload(&payload), Some(answer));
    }

    #[test]
    fn every_outcome_reads_back() {
        let mx = vec![
            Exchange { preference: 10, host: b"mx1.example.net".to_vec() },
            Exchange { preference: 20, host: b"mx2.example.net".to_vec() },
        ];
        for outcome in [
            Outcome::Mx(mx),
            Outcome::Host,
            Outcome::NoHost,
            Outcome::Failed("SERVFAIL".into()),
        ] {
            round_trip(Answer {
                domain: b"example.com".to_vec(),
                ttl: 300,
                outcome,
            });
        }
    }

    #[test]
    fn a_broken_payload_is_refused() {
        assert_eq!(Answer::from_payload(b"example.com"), None);
        assert_eq!(Answer::from_payload(b"example.com\0M\x01\0\0\0"), None);
        assert_eq!(
            Answer::from_payload(b"example.com\0M\x01\0\0\0\x0a\0\0"),
            None
        );
        assert_eq!(Answer::from_payload(b"example.com\0H\x01\0\0\0x"), None);
        assert_eq!(Answer::from_payload(b"example.com\0Z\x01\0\0\0"), None);
    }

    #[test]
    fn the_config_reads_back() {
        let cfg = ResolverConfig {
            servers: vec!["127.0.0.1:5353".parse().unwrap()],
            timeout: Duration::from_millis(2500),
        };
        assert_eq!(ResolverConfig::from_args(&cfg.to_args()), Ok(cfg));
        assert!(ResolverConfig::from_args(&["--server", "nowhere"]).is_err());
    }
}
