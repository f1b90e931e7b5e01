//! `shardspawn-fake-dns --zone FILE` prints the address it serves on as
//! one line, answers from FILE over UDP until killed, and refuses a bad
//! zone with exit 100 and a line naming where.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardspawn-fake-dns"))
}

/// Kills the server when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ask(addr: SocketAddr, name: &str) -> Message {
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::MX));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.send(&q.to_vec().unwrap()).unwrap();
    let mut buf = vec![0; 65536];
    let n = sock.recv(&mut buf).expect("an answer");
    Message::from_vec(&buf[..n]).unwrap()
}

#[test]
fn it_prints_its_address_and_serves_the_file() {
    let dir = std::env::temp_dir()
        .join(format!("shardspawn-fake-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zone = dir.join("zone");
    std::fs::write(&zone, "example.com MX 10 mx.example.net\n").unwrap();
    let mut child = Killed(
        bin().arg("--zone").arg(&zone).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line.trim_end().parse().expect("IP:PORT");
    assert!(addr.ip().is_loopback());
    let m = ask(addr, "example.com.");
    match &m.answers[..] {
        [r] => match &r.data {
            RData::MX(mx) => {
                assert_eq!(mx.exchange.to_ascii(), "mx.example.net.")
            }
            other => panic!("not an MX: {other:?}"),
        },
        other => panic!("one answer expected: {other:?}"),
    }
    assert_eq!(
        ask(addr, "other.example.").metadata.response_code,
        ResponseCode::NXDomain
    );
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_zone_is_refused_with_its_line() {
    let dir = std::env::temp_dir()
        .join(format!("shardspawn-fake-dns-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zone = dir.join("zone");
    std::fs::write(&zone, "# fine\nexample.com MX ten mx.example.net\n")
        .unwrap();
    let out = bin().arg("--zone").arg(&zone).output().unwrap();
    assert_eq!(out.status.code(), Some(100));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: bad MX preference"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = bin().output().unwrap();
    assert_eq!(out.status.code(), Some(100));
    std::fs::remove_dir_all(&dir).unwrap();
}
