//! A small authoritative DNS server on loopback, for the tests, `simulate`
//! and the bench: the real thing a resolver talks to, over UDP and TCP on
//! one `127.0.0.1` port, answering from a [`Zone`] written as text.
//!
//! It is authoritative for the whole namespace (the root zone): a name
//! it does not hold does not exist (NXDOMAIN), a name it holds without
//! records of the asked type has none (NODATA); both carry the root's
//! SOA in the authority section, whose TTL and minimum make a negative
//! TTL of [`NEGATIVE_TTL`] seconds. Per name it can also misbehave the
//! ways a resolver must survive: SERVFAIL, REFUSED, never answering, or
//! answering over UDP with an empty, truncated reply (TC bit) so that
//! only TCP gets the records.
//!
//! The wire format is `hickory-proto`'s: name compression, EDNS and the
//! record encodings are a codec of their own, and one written here would
//! test itself. The header bits the tests rely on (TC, RCODE) are pinned
//! by a test that reads raw bytes.
//!
//! # Zone syntax
//!
//! One entry per line (TXT only to make a name exist without the types
//! a mail lookup asks); `#` starts a comment; names are case-insensitive
//! and a trailing dot is optional; TTL is optional (default
//! [`DEFAULT_TTL`]):
//!
//! ```text
//! example.com        MX 10 mx1.example.net   # NAME [TTL] MX PREF HOST
//! example.com  3600  MX 20 mx2.example.net
//! mx1.example.net    A 127.0.0.1             # NAME [TTL] A IPV4
//! mx1.example.net    AAAA ::1                # NAME [TTL] AAAA IPV6
//! www.example.com    CNAME example.com       # NAME [TTL] CNAME TARGET
//! spf.example        TXT v=spf1              # NAME [TTL] TXT WORD
//! nullmx.example     MX 0 .                  # a null MX (RFC 7505)
//! broken.example     SERVFAIL                # also REFUSED, DROP, TRUNCATE
//! $NEGATIVE-TTL 30                           # instead of NEGATIVE_TTL
//! ```
//!
//! `DROP` never answers (the client times out); `TRUNCATE` answers over
//! UDP with no records and the TC bit, over TCP with the full answer. A
//! behaviour applies to queries for that name, not to a CNAME pointing
//! at it. A CNAME is answered with the target's records of the asked type
//! when the zone holds the target, as an authority holding both does.

use std::collections::HashMap;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use hickory_proto::op::{
    Edns, Message, MessageType, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The TTL of a record whose line gives none.
pub const DEFAULT_TTL: u32 = 300;

/// The negative TTL of NXDOMAIN and NODATA answers (the SOA's TTL and
/// minimum both), unless a `$NEGATIVE-TTL` line says otherwise.
pub const NEGATIVE_TTL: u32 = 60;

/// The longest CNAME chain the server follows inside its zone.
const MAX_CHAIN: usize = 8;

/// The EDNS payload size the server announces and honours at most.
const EDNS_PAYLOAD: u16 = 1232;

/// What a name does instead of answering from its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Never answer.
    Drop,
    /// Over UDP an empty answer with the TC bit; over TCP the records.
    Truncate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Data {
    Mx(u16, Name),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
    Txt(String),
}

impl Data {
    fn record_type(&self) -> RecordType {
        match self {
            Data::Mx(..) => RecordType::MX,
            Data::A(_) => RecordType::A,
            Data::Aaaa(_) => RecordType::AAAA,
            Data::Cname(_) => RecordType::CNAME,
            Data::Txt(_) => RecordType::TXT,
        }
    }

    fn rdata(&self) -> RData {
        match self {
            Data::Mx(pref, host) => RData::MX(MX::new(*pref, host.clone())),
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Cname(target) => RData::CNAME(CNAME(target.clone())),
            Data::Txt(text) => RData::TXT(TXT::new(vec![text.clone()])),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    records: Vec<(u32, Data)>,
    behaviour: Option<Behaviour>,
}

impl Node {
    fn cname(&self) -> Option<&Name> {
        self.records.iter().find_map(|(_, d)| match d {
            Data::Cname(target) => Some(target),
            _ => None,
        })
    }
}

/// The names the server holds, their records and behaviours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Keyed by the lowercased name without its trailing dot.
    nodes: HashMap<Vec<u8>, Node>,
    /// Of NXDOMAIN and NODATA answers.
    negative_ttl: u32,
}

impl Default for Zone {
    fn default() -> Zone {
        Zone { nodes: HashMap::new(), negative_ttl: NEGATIVE_TTL }
    }
}

/// The key a name is held under: lowercase, no trailing dot, labels
/// joined with '.' (the root is empty).
fn key_of_text(name: &str) -> Vec<u8> {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase().into_bytes()
}

fn key_of_name(name: &Name) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            key.push(b'.');
        }
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key
}

fn parse_name(text: &str) -> Result<Name, String> {
    if text == "." {
        return Ok(Name::root());
    }
    let fqdn =
        if text.ends_with('.') { text.into() } else { format!("{text}.") };
    Name::from_ascii(&fqdn).map_err(|e| format!("bad name {text:?}: {e}"))
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Parses the text form (see the module's documentation); the error
    /// names the line.
    pub fn parse(text: &str) -> Result<Zone, String> {
        let mut zone = Zone::new();
        for (i, line) in text.lines().enumerate() {
            zone.add_line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        }
        Ok(zone)
    }

    /// Adds one line of the text form (blank or a comment adds nothing).
    pub fn add_line(&mut self, line: &str) -> Result<(), String> {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace().peekable();
        let Some(owner) = words.next() else { return Ok(()) };
        if owner == "$NEGATIVE-TTL" {
            let ttl = words.next().ok_or("$NEGATIVE-TTL needs seconds")?;
            self.negative_ttl =
                ttl.parse().map_err(|_| format!("bad TTL {ttl:?}"))?;
            return match words.next() {
                Some(extra) => Err(format!("unexpected {extra:?}")),
                None => Ok(()),
            };
        }
        parse_name(owner)?;
        let ttl = match words.peek().map(|w| w.parse::<u32>()) {
            Some(Ok(ttl)) => {
                words.next();
                Some(ttl)
            }
            _ => None,
        };
        let kind = words.next().ok_or("no record type")?.to_ascii_uppercase();
        let mut arg = |what: &str| {
            words.next().ok_or_else(|| format!("{kind} needs {what}"))
        };
        let behaviour = match kind.as_str() {
            "SERVFAIL" => Some(Behaviour::ServFail),
            "REFUSED" => Some(Behaviour::Refused),
            "DROP" => Some(Behaviour::Drop),
            "TRUNCATE" => Some(Behaviour::Truncate),
            _ => None,
        };
        let data = match kind.as_str() {
            _ if behaviour.is_some() => None,
            "MX" => {
                let pref = arg("a preference")?;
                let pref = pref
                    .parse()
                    .map_err(|_| format!("bad MX preference {pref:?}"))?;
                Some(Data::Mx(pref, parse_name(arg("a host")?)?))
            }
            "A" => {
                let ip = arg("an IPv4 address")?;
                Some(Data::A(
                    ip.parse()
                        .map_err(|_| format!("bad IPv4 address {ip:?}"))?,
                ))
            }
            "AAAA" => {
                let ip = arg("an IPv6 address")?;
                Some(Data::Aaaa(
                    ip.parse()
                        .map_err(|_| format!("bad IPv6 address {ip:?}"))?,
                ))
            }
            "CNAME" => Some(Data::Cname(parse_name(arg("a target")?)?)),
            "TXT" => Some(Data::Txt(arg("a word")?.to_string())),
            _ => return Err(format!("unknown record type {kind:?}")),
        };
        if let Some(extra) = words.next() {
            return Err(format!("unexpected {extra:?} after {kind}"));
        }
        let node = self.nodes.entry(key_of_text(owner)).or_default();
        match (behaviour, data) {
            (Some(b), _) => {
                if ttl.is_some() {
                    return Err(format!("{kind} takes no TTL"));
                }
                if node.behaviour.replace(b).is_some_and(|old| old != b) {
                    return Err(format!("{owner} has two behaviours"));
                }
            }
            (None, Some(data)) => {
                let has_cname = node.cname().is_some();
                let is_cname = matches!(data, Data::Cname(_));
                if has_cname || (is_cname && !node.records.is_empty()) {
                    return Err(format!("{owner}: a CNAME and other data"));
                }
                node.records.push((ttl.unwrap_or(DEFAULT_TTL), data));
            }
            (None, None) => unreachable!("every kind is data or behaviour"),
        }
        Ok(())
    }

    /// How many names the zone holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if it holds no name.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl FromStr for Zone {
    type Err = String;
    fn from_str(text: &str) -> Result<Zone, String> {
        Zone::parse(text)
    }
}

/// Which way a query came: the TC behaviour and the size limit differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

fn soa(negative_ttl: u32) -> Record {
    let soa = SOA::new(
        Name::from_ascii("ns.fake-dns.invalid.").expect("a fixed name"),
        Name::from_ascii("hostmaster.fake-dns.invalid.")
            .expect("a fixed name"),
        1,
        3600,
        600,
        86400,
        negative_ttl,
    );
    Record::from_rdata(Name::root(), negative_ttl, RData::SOA(soa))
}

/// The records answering `qtype` at `name`, following CNAMEs inside the
/// zone; empty if there are none (NODATA).
fn answers(zone: &Zone, name: &Name, qtype: RecordType) -> Vec<Record> {
    let mut out = Vec::new();
    let mut name = name.clone();
    for _ in 0..MAX_CHAIN {
        let Some(node) = zone.nodes.get(&key_of_name(&name)) else { break };
        let before = out.len();
        for (ttl, data) in &node.records {
            if qtype == RecordType::ANY || data.record_type() == qtype {
                out.push(Record::from_rdata(name.clone(), *ttl, data.rdata()));
            }
        }
        if out.len() > before {
            break;
        }
        let Some(target) = node.cname() else { break };
        let ttl = node.records[0].0;
        let rdata = RData::CNAME(CNAME(target.clone()));
        out.push(Record::from_rdata(name.clone(), ttl, rdata));
        name = target.clone();
    }
    out
}

/// The reply to one query message, or `None` for no reply (garbage in,
/// or a name that drops).
fn reply(zone: &Zone, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response =
        Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    let limit = match &request.edns {
        Some(edns) => {
            let mut ours = Edns::new();
            ours.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(ours);
            edns.max_payload().clamp(512, EDNS_PAYLOAD)
        }
        None => 512,
    };
    let rcode = match request.queries.as_slice() {
        _ if request.metadata.op_code != OpCode::Query => ResponseCode::NotImp,
        [q] => answer(zone, q, transport, &mut response)?,
        _ => ResponseCode::FormErr,
    };
    response.metadata.response_code = rcode;
    let bytes = response.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > usize::from(limit) {
        return truncated(response);
    }
    Some(bytes)
}

/// Fills `response` for query `q`; the RCODE, or `None` to drop.
fn answer(
    zone: &Zone,
    q: &Query,
    transport: Transport,
    response: &mut Message,
) -> Option<ResponseCode> {
    let Some(node) = zone.nodes.get(&key_of_name(q.name())) else {
        response.add_authority(soa(zone.negative_ttl));
        return Some(ResponseCode::NXDomain);
    };
    match (node.behaviour, transport) {
        (Some(Behaviour::ServFail), _) => return Some(ResponseCode::ServFail),
        (Some(Behaviour::Refused), _) => return Some(ResponseCode::Refused),
        (Some(Behaviour::Drop), _) => return None,
        (Some(Behaviour::Truncate), Transport::Udp) => {
            response.metadata.truncation = true;
            return Some(ResponseCode::NoError);
        }
        (Some(Behaviour::Truncate), Transport::Tcp) | (None, _) => {}
    }
    let records = answers(zone, q.name(), q.query_type());
    if records.is_empty() {
        response.add_authority(soa(zone.negative_ttl));
    }
    response.add_answers(records);
    Some(ResponseCode::NoError)
}

/// `response` without its records and with the TC bit.
fn truncated(mut response: Message) -> Option<Vec<u8>> {
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    response.metadata.truncation = true;
    response.to_vec().ok()
}

struct Shared {
    zone: RwLock<Arc<Zone>>,
    queries: AtomicU64,
}

impl Shared {
    fn reply(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let zone = Arc::clone(&self.zone.read().expect("zone lock poisoned"));
        reply(&zone, query, transport)
    }
}

/// A running server: a UDP socket and a TCP listener on one loopback
/// port, each served by its own thread (and a thread per TCP
/// connection). Stopped by [`DnsServer::stop`] or when dropped; once
/// stopped, its sockets are closed and nothing answers on its port.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Closing it wakes every thread of the server to exit.
    stop: Option<PipeWriter>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `127.0.0.1` on a free port (the same for UDP and TCP) and
    /// starts serving `zone`.
    pub fn start(zone: Zone) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair()?;
        let addr = udp.local_addr()?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(zone)),
            queries: AtomicU64::new(0),
        });
        let (stop_r, stop_w) = io::pipe()?;
        let stop_r2 = stop_r.try_clone()?;
        let s = Arc::clone(&shared);
        let udp_thread = std::thread::Builder::new()
            .name("fake-dns-udp".into())
            .spawn(move || serve_udp(udp, &s, stop_r))?;
        let s = Arc::clone(&shared);
        let tcp_thread = std::thread::Builder::new()
            .name("fake-dns-tcp".into())
            .spawn(move || serve_tcp(tcp, &s, stop_r2))?;
        Ok(DnsServer {
            addr,
            shared,
            stop: Some(stop_w),
            threads: vec![udp_thread, tcp_thread],
        })
    }

    /// Where it listens: `127.0.0.1:PORT`, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far, over both transports (answered or not).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Serves `zone` from the next query on.
    pub fn set_zone(&self, zone: Zone) {
        *self.shared.zone.write().expect("zone lock poisoned") =
            Arc::new(zone);
    }

    /// Stops serving and closes its sockets; returns once every thread of
    /// the server has exited, so no answer leaves after it returns.
    pub fn stop(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            // A thread that panicked has stopped too.
            let _ = thread.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A UDP socket and a TCP listener on the same free loopback port. The
/// kernel picks the UDP port; TCP may find it taken, so a few tries.
fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try"))
}

/// Waits until `fd` is readable; false once `stop` is (its writer
/// closed) or poll fails.
fn wait_readable(fd: &impl AsFd, stop: &PipeReader) -> bool {
    loop {
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
        if fds[1].any().unwrap_or(true) {
            return false;
        }
        if fds[0].any().unwrap_or(false) {
            return true;
        }
    }
}

fn serve_udp(udp: UdpSocket, shared: &Shared, stop: PipeReader) {
    let mut buf = vec![0; 65536];
    while wait_readable(&udp, &stop) {
        let Ok((n, peer)) = udp.recv_from(&mut buf) else { continue };
        if let Some(bytes) = shared.reply(&buf[..n], Transport::Udp) {
            let _ = udp.send_to(&bytes, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, shared: &Arc<Shared>, stop: PipeReader) {
    let mut conns = Vec::new();
    while wait_readable(&listener, &stop) {
        let Ok((stream, _)) = listener.accept() else { continue };
        let (Ok(stop), s) = (stop.try_clone(), Arc::clone(shared)) else {
            continue;
        };
        conns.retain(|c: &JoinHandle<()>| !c.is_finished());
        match std::thread::Builder::new()
            .name("fake-dns-conn".into())
            .spawn(move || serve_conn(stream, &s, stop))
        {
            Ok(thread) => conns.push(thread),
            Err(_) => continue,
        }
    }
    drop(listener);
    for conn in conns {
        let _ = conn.join();
    }
}

/// One TCP connection: messages with a 2-byte length prefix, answered in
/// the order they came (a dropped one is skipped).
fn serve_conn(mut stream: TcpStream, shared: &Shared, stop: PipeReader) {
    let mut input = Vec::new();
    let mut buf = [0; 4096];
    while wait_readable(&stream, &stop) {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&buf[..n]);
        while input.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([input[0], input[1]]));
            if input.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = input.drain(..2 + len).skip(2).collect();
            let Some(bytes) = shared.reply(&query, Transport::Tcp) else {
                continue;
            };
            let Ok(len) = u16::try_from(bytes.len()) else { continue };
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(&bytes);
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ZONE: &str = "\
# a test zone
example.com        MX 10 mx1.example.net
Example.COM. 3600  MX 20 mx2.example.net.
mx1.example.net    A 127.0.0.1
mx1.example.net 30 AAAA ::1
www.example.com    CNAME example.com
loop.example       CNAME loop.example
nullmx.example     MX 0 .
broken.example     SERVFAIL
refused.example    REFUSED
silent.example     DROP
big.example        TRUNCATE
big.example        MX 10 mx1.example.net
";

    fn server() -> DnsServer {
        DnsServer::start(Zone::parse(ZONE).unwrap()).unwrap()
    }

    fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    /// The raw reply over UDP, or `None` if none came within `wait`.
    fn udp_raw(
        addr: SocketAddr,
        query: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        // Connected, so that a closed port is ECONNREFUSED at once.
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sock.connect(addr).unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send(query).unwrap();
        let mut buf = vec![0; 65536];
        match sock.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionRefused
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    fn udp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let q = query_bytes(name, qtype, true);
        let raw = udp_raw(addr, &q, Duration::from_secs(10)).expect("a reply");
        Message::from_vec(&raw).unwrap()
    }

    fn tcp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let mut s = TcpStream::connect(addr).unwrap();
        let q = query_bytes(name, qtype, false);
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out).unwrap();
        let mut len = [0; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        Message::from_vec(&body).unwrap()
    }

    fn mx_of(m: &Message) -> Vec<(u32, u16, String)> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => {
                    Some((r.ttl, mx.preference, mx.exchange.to_ascii()))
                }
                _ => None,
            })
            .collect()
    }

    fn negative_ttl(m: &Message) -> Option<u32> {
        m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
    }

    #[test]
    fn mx_records_come_with_their_ttls_any_case() {
        let s = server();
        let m = udp(s.addr(), "EXAMPLE.com.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            mx_of(&m),
            vec![
                (300, 10, "mx1.example.net.".into()),
                (3600, 20, "mx2.example.net.".into())
            ]
        );
        assert_eq!(s.queries(), 1);
    }

    #[test]
    fn addresses_of_both_families() {
        let s = server();
        let m = udp(s.addr(), "mx1.example.net.", RecordType::A);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
        let m = udp(s.addr(), "mx1.example.net.", RecordType::AAAA);
        assert_eq!(m.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
        assert_eq!(m.answers[0].ttl, 30);
    }

    #[test]
    fn an_unknown_name_is_nxdomain_with_a_negative_ttl() {
        let s = server();
        let m = udp(s.addr(), "nowhere.example.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert_eq!(negative_ttl(&m), Some(NEGATIVE_TTL));
    }

    #[test]
    fn the_negative_ttl_can_be_set() {
        let zone =
            Zone::parse("$NEGATIVE-TTL 17\na.example A 1.2.3.4").unwrap();
        let s = DnsServer::start(zone).unwrap();
        let m = udp(s.addr(), "b.example.", RecordType::MX);
        assert_eq!(negative_ttl(&m), Some(17));
        let m = udp(s.addr(), "a.example.", RecordType::MX);
        assert_eq!(negative_ttl(&m), Some(17));
    }

    #[test]
    fn a_known_name_without_the_type_is_nodata() {
        let s = server();
        let m = udp(s.addr(), "mx2.example.net.", RecordType::A);
        // mx2 is only a target, not in the zone: NXDOMAIN.
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = udp(s.addr(), "example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(negative_ttl(&m), Some(NEGATIVE_TTL));
    }

    #[test]
    fn a_cname_comes_with_its_targets_records() {
        let s = server();
        let m = udp(s.addr(), "www.example.com.", RecordType::MX);
        assert_eq!(m.answers.len(), 3);
        assert_eq!(
            m.answers[0].data,
            RData::CNAME(CNAME(Name::from_ascii("example.com.").unwrap()))
        );
        assert_eq!(mx_of(&m).len(), 2);
        // A loop ends: the chain is cut, not followed forever.
        let m = udp(s.addr(), "loop.example.", RecordType::MX);
        assert_eq!(m.answers.len(), MAX_CHAIN);
    }

    #[test]
    fn a_null_mx_is_served() {
        let s = server();
        let m = udp(s.addr(), "nullmx.example.", RecordType::MX);
        assert_eq!(mx_of(&m), vec![(300, 0, ".".into())]);
    }

    #[test]
    fn servfail_and_refused() {
        let s = server();
        let m = udp(s.addr(), "broken.example.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = tcp(s.addr(), "refused.example.", RecordType::MX);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn drop_never_answers_but_counts() {
        let s = server();
        let q = query_bytes("silent.example.", RecordType::MX, true);
        // Then one that is answered: had the first been answered, its
        // reply would have arrived first on the same socket.
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sock.send_to(&q, s.addr()).unwrap();
        let q2 = query_bytes("example.com.", RecordType::MX, true);
        sock.send_to(&q2, s.addr()).unwrap();
        let mut buf = vec![0; 65536];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.queries[0].name().to_ascii(), "example.com.");
        assert_eq!(s.queries(), 2);
    }

    #[test]
    fn truncate_sets_tc_over_udp_and_answers_over_tcp() {
        let s = server();
        let m = udp(s.addr(), "big.example.", RecordType::MX);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let m = tcp(s.addr(), "big.example.", RecordType::MX);
        assert!(!m.metadata.truncation);
        assert_eq!(mx_of(&m), vec![(300, 10, "mx1.example.net.".into())]);
    }

    #[test]
    fn header_bits_on_the_wire() {
        // Pins the bytes the codec writes: flags in bytes 2 and 3 (QR,
        // AA, TC, RD; RCODE in the low nibble), counts big-endian.
        let s = server();
        let q = query_bytes("big.example.", RecordType::MX, false);
        let raw = udp_raw(s.addr(), &q, Duration::from_secs(10)).unwrap();
        assert_eq!(raw[..2], q[..2], "the id is echoed");
        assert_eq!(raw[2], 0x80 | 0x04 | 0x02 | 0x01, "QR AA TC RD");
        assert_eq!(raw[3] & 0x0f, 0, "NOERROR");
        assert_eq!(raw[6..8], [0, 0], "no answers");
        let q = query_bytes("broken.example.", RecordType::MX, false);
        let raw = udp_raw(s.addr(), &q, Duration::from_secs(10)).unwrap();
        assert_eq!(raw[3] & 0x0f, 2, "SERVFAIL");
        let q = query_bytes("gone.example.", RecordType::MX, false);
        let raw = udp_raw(s.addr(), &q, Duration::from_secs(10)).unwrap();
        assert_eq!(raw[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(raw[8..10], [0, 1], "one authority record: the SOA");
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated() {
        let mut text = String::new();
        for i in 0..60 {
            text.push_str(&format!(
                "many.example MX {i} mx{i}.a-long-host-name.example\n"
            ));
        }
        let s = DnsServer::start(Zone::parse(&text).unwrap()).unwrap();
        let q = query_bytes("many.example.", RecordType::MX, false);
        let raw = udp_raw(s.addr(), &q, Duration::from_secs(10)).unwrap();
        assert!(raw.len() <= 512);
        let m = Message::from_vec(&raw).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(
            mx_of(&tcp(s.addr(), "many.example.", RecordType::MX)).len(),
            60
        );
    }

    #[test]
    fn set_zone_swaps_the_records() {
        let s = server();
        s.set_zone(Zone::parse("example.com MX 5 other.example.net").unwrap());
        let m = udp(s.addr(), "example.com.", RecordType::MX);
        assert_eq!(mx_of(&m), vec![(300, 5, "other.example.net.".into())]);
    }

    #[test]
    fn after_stop_nothing_answers() {
        let mut s = server();
        let addr = s.addr();
        // A TCP connection open before the stop is closed by it.
        let mut open = TcpStream::connect(addr).unwrap();
        assert_eq!(tcp(addr, "example.com.", RecordType::MX).answers.len(), 2);
        s.stop();
        let q = query_bytes("example.com.", RecordType::MX, true);
        assert_eq!(udp_raw(addr, &q, Duration::from_secs(10)), None);
        assert!(TcpStream::connect(addr).is_err());
        let mut buf = [0; 1];
        assert!(matches!(open.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn zone_lines_are_checked() {
        for (text, why) in [
            ("a.example", "no record type"),
            ("a.example MX 10", "MX needs a host"),
            ("a.example MX ten b.example", "bad MX preference"),
            ("a.example A 1.2.3", "bad IPv4 address"),
            ("a.example AAAA 1.2.3.4", "bad IPv6 address"),
            ("a.example SRV 1 2 3 b.example", "unknown record type"),
            ("a.example 60 DROP", "takes no TTL"),
            ("a.example A 1.2.3.4 5.6.7.8", "unexpected"),
            (
                "a.example A 1.2.3.4\na.example CNAME b.example",
                "CNAME and other",
            ),
            ("a.example DROP\na.example SERVFAIL", "two behaviours"),
        ] {
            let err = Zone::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.starts_with("line "), "{err}");
        }
        let zone = Zone::parse(
            "# only a comment\n\n  \nA.Example. 7 a 1.2.3.4 # ok\n",
        )
        .unwrap();
        assert_eq!(zone.len(), 1);
        assert_eq!(
            zone.nodes[&b"a.example"[..]].records,
            vec![(7, Data::A(Ipv4Addr::new(1, 2, 3, 4)))]
        );
        let zone = Zone::parse("$NEGATIVE-TTL 7").unwrap();
        assert_eq!((zone.len(), zone.negative_ttl), (0, 7));
        assert!(Zone::parse("$NEGATIVE-TTL x").is_err());
    }
}
