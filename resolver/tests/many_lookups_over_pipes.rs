//! The resolver as the supervisor runs it: a process with LOOKUP frames
//! on fd 0 and ANSWER frames on fd 1. Thousands of lookups written at
//! once, some of them never answered by the server, then EOF: every
//! lookup gets exactly one right answer, the silent ones included, and
//! the process exits 0.
//!
//! The child is this test binary itself, re-executed with
//! `SHARDSPAWN_RESOLVER_TEST_CHILD` set, which calls
//! `shardspawn_resolver::main_args` as `shardspawn resolver` does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardspawn_common::frame::FrameDecoder;
use shardspawn_common::lookup::{
    ANSWER, Answer, Exchange, MAX_ANSWER, Outcome, ResolverConfig,
    encode_lookup,
};
use shardspawn_workshop::dns::{DnsServer, Zone};

const CHILD: &str = "SHARDSPAWN_RESOLVER_TEST_CHILD";

fn main() {
    if std::env::var_os(CHILD).is_some() {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        std::process::exit(shardspawn_resolver::main_args(&args));
    }
    let tests: [(&str, fn()); 3] = [
        ("every_lookup_gets_one_answer", every_lookup_gets_one_answer),
        ("bad_arguments_exit_100", bad_arguments_exit_100),
        ("cold_lookup_latency", cold_lookup_latency),
    ];
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
}

fn child(args: &[OsString]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(args).env(CHILD, "1");
    cmd
}

/// Domains: 4 MX sets over 200 domains, and 20 each with an address
/// only, that do not exist, whose server never answers, that fail, and
/// whose MX come only over TCP.
fn zone_and_expected() -> (String, HashMap<Vec<u8>, Outcome>) {
    let mut zone = String::new();
    let mut expect = HashMap::new();
    for i in 0..200 {
        let set = i % 4;
        let d = format!("d{i}.test");
        zone.push_str(&format!("{d} MX 10 mx{set}a.provider{set}.example\n"));
        zone.push_str(&format!("{d} MX 20 mx{set}b.provider{set}.example\n"));
        let host = |h: &str| format!("mx{set}{h}.provider{set}.example");
        expect.insert(
            d.into_bytes(),
            Outcome::Mx(vec![
                Exchange { preference: 10, host: host("a").into_bytes() },
                Exchange { preference: 20, host: host("b").into_bytes() },
            ]),
        );
    }
    for i in 0..20 {
        zone.push_str(&format!("h{i}.test A 127.0.0.{}\n", i + 1));
        expect.insert(format!("h{i}.test").into_bytes(), Outcome::Host);
        expect.insert(format!("nx{i}.test").into_bytes(), Outcome::NoHost);
        zone.push_str(&format!("sf{i}.test SERVFAIL\n"));
        expect.insert(
            format!("sf{i}.test").into_bytes(),
            Outcome::Failed("SERVFAIL".into()),
        );
        zone.push_str(&format!(
            "tc{i}.test TRUNCATE\ntc{i}.test MX 1 big{i}\n"
        ));
        expect.insert(
            format!("tc{i}.test").into_bytes(),
            Outcome::Mx(vec![Exchange {
                preference: 1,
                host: format!("big{i}").into_bytes(),
            }]),
        );
        zone.push_str(&format!("silent{i}.test DROP\n"));
        expect.insert(
            format!("silent{i}.test").into_bytes(),
            Outcome::Failed("timed out after 2 s".into()),
        );
    }
    (zone, expect)
}

/// How long a conversation may take before the child is taken to hang.
const HANG: Duration = Duration::from_secs(120);

/// Writes `lookups` to the child's fd 0 and closes it, while reading
/// every answer from its fd 1; the answers and the exit code. A child
/// that has not finished after [`HANG`] is killed and the test fails.
fn converse(cfg: &ResolverConfig, lookups: Vec<u8>) -> (Vec<Answer>, i32) {
    let mut proc = child(&cfg.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = proc.stdin.take().unwrap();
    let mut stdout = proc.stdout.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&lookups).unwrap();
        // Dropped: EOF on the child's fd 0.
    });
    let (done_tx, done) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        let _ = done_tx.send(());
        out
    });
    if done.recv_timeout(HANG).is_err() {
        let _ = proc.kill();
        let _ = proc.wait();
        panic!("the resolver did not finish within {HANG:?}");
    }
    let out = reader.join().unwrap();
    writer.join().unwrap();
    let code = proc.wait().unwrap().code().expect("exited, not killed");
    let mut decoder = FrameDecoder::new(MAX_ANSWER);
    let mut answers = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let (used, frame) = decoder.decode(rest);
        rest = &rest[used..];
        if let Some(frame) = frame {
            let (kind, delnum, payload) = frame.expect("a sane frame");
            assert_eq!((kind, delnum), (ANSWER, 0));
            answers.push(Answer::from_payload(&payload).expect("an answer"));
        }
    }
    assert!(decoder.is_idle(), "fd 1 ended inside a frame");
    (answers, code)
}

fn every_lookup_gets_one_answer() {
    let (zone, expect) = zone_and_expected();
    let server = DnsServer::start(Zone::parse(&zone).unwrap()).unwrap();
    let cfg = ResolverConfig {
        servers: vec![server.addr()],
        timeout: Duration::from_secs(2),
    };
    // Each domain 5 times, interleaved: 1500 lookups.
    let mut domains: Vec<&Vec<u8>> = expect.keys().collect();
    domains.sort();
    let mut asked: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut lookups = Vec::new();
    for _ in 0..5 {
        for d in &domains {
            encode_lookup(d, &mut lookups);
            *asked.entry(d.to_vec()).or_default() += 1;
        }
    }
    let (answers, code) = converse(&cfg, lookups);
    assert_eq!(code, 0);
    let mut answered: HashMap<Vec<u8>, usize> = HashMap::new();
    for a in &answers {
        *answered.entry(a.domain.clone()).or_default() += 1;
        assert_eq!(
            Some(&a.outcome),
            expect.get(&a.domain),
            "{}",
            String::from_utf8_lossy(&a.domain)
        );
    }
    assert_eq!(answered, asked, "one answer per lookup");
    assert_eq!(answers.len(), 5 * expect.len());
}

fn bad_arguments_exit_100() {
    let args: Vec<OsString> = vec!["--server".into(), "nowhere".into()];
    let out = child(&args).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(100));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("shardspawn: resolver: fatal: --server"), "{err}");
    // No lookups at all: EOF at once is a clean exit.
    let server = DnsServer::start(Zone::new()).unwrap();
    let cfg = ResolverConfig {
        servers: vec![server.addr()],
        timeout: Duration::from_secs(2),
    };
    let (answers, code) = converse(&cfg, Vec::new());
    assert_eq!((answers.len(), code), (0, 0));
}

/// Not an assertion: the time from a LOOKUP written to its ANSWER read,
/// one at a time, each domain new to the resolver (it keeps no cache),
/// printed for the record.
fn cold_lookup_latency() {
    let (zone, expect) = zone_and_expected();
    let server = DnsServer::start(Zone::parse(&zone).unwrap()).unwrap();
    let cfg = ResolverConfig {
        servers: vec![server.addr()],
        timeout: Duration::from_secs(2),
    };
    let mut proc = child(&cfg.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = proc.stdin.take().unwrap();
    let mut stdout = proc.stdout.take().unwrap();
    let mut decoder = FrameDecoder::new(MAX_ANSWER);
    let mut times = Vec::new();
    let mut buf = [0; 4096];
    for i in 0..200 {
        let domain = format!("d{i}.test");
        let mut frame = Vec::new();
        encode_lookup(domain.as_bytes(), &mut frame);
        let start = Instant::now();
        stdin.write_all(&frame).unwrap();
        let answer = loop {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "EOF before the answer");
            let (used, frame) = decoder.decode(&buf[..n]);
            assert_eq!(used, n, "one answer at a time");
            if let Some(frame) = frame {
                break Answer::from_payload(&frame.unwrap().2).unwrap();
            }
        };
        times.push(start.elapsed());
        assert_eq!(Some(&answer.outcome), expect.get(domain.as_bytes()));
    }
    drop(stdin);
    assert!(proc.wait().unwrap().success());
    times.sort();
    let p = |q: usize| times[(times.len() - 1) * q / 100];
    println!(
        "cold MX lookup over loopback, LOOKUP to ANSWER: p50 {:?}, p99 {:?}, max {:?}",
        p(50),
        p(99),
        times[times.len() - 1]
    );
}
