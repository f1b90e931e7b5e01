//! A fake authoritative DNS server on loopback for `simulate`, the bench
//! and anyone trying shardspawn's MX grouping by hand:
//!
//!     shardspawn-fake-dns --zone FILE
//!
//! serves FILE (the syntax of `shardspawn_workshop::dns`) over UDP and
//! TCP on one free `127.0.0.1` port, prints `127.0.0.1:PORT` as one line
//! on stdout once it answers, and serves until killed.

use std::ffi::OsString;
use std::io::Write;

use shardspawn_workshop::dns::{DnsServer, Zone};

const USAGE: &str = "usage: shardspawn-fake-dns --zone FILE";

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[OsString]) -> i32 {
    use lexopt::prelude::*;
    let mut zone_file = None;
    let mut p = lexopt::Parser::from_args(args);
    loop {
        match p.next() {
            Ok(None) => break,
            Ok(Some(Long("zone"))) => match p.value() {
                Ok(v) => zone_file = Some(v),
                Err(e) => return fail(100, &format!("{e}\n{USAGE}")),
            },
            Ok(Some(Long("help") | Short('h'))) => {
                println!("{USAGE}");
                return 0;
            }
            Ok(Some(arg)) => {
                return fail(100, &format!("{}\n{USAGE}", arg.unexpected()));
            }
            Err(e) => return fail(100, &format!("{e}\n{USAGE}")),
        }
    }
    let Some(path) = zone_file else { return fail(100, USAGE) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            let path = path.to_string_lossy();
            return fail(111, &format!("unable to read {path}: {e}"));
        }
    };
    let zone = match Zone::parse(&text) {
        Ok(zone) => zone,
        Err(e) => {
            return fail(100, &format!("{}: {e}", path.to_string_lossy()));
        }
    };
    let server = match DnsServer::start(zone) {
        Ok(server) => server,
        Err(e) => return fail(111, &format!("unable to start serving: {e}")),
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", server.addr()).and_then(|()| out.flush()).is_err() {
        return fail(111, "unable to write the address to stdout");
    }
    drop(out);
    // The server's threads serve; this one only keeps the process up.
    loop {
        std::thread::park();
    }
}

fn fail(code: i32, why: &str) -> i32 {
    eprintln!("shardspawn-fake-dns: fatal: {why}");
    code
}
