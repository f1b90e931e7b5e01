//! A real `redis-server` on loopback for the fleet's tests and bench
//! (issue 18): started by the test in a directory of its own, on a free
//! port, with no persistence (`--save ''`, `--appendonly no`), so that
//! nothing it holds outlives it; SIGKILLed and started again on the same
//! port to play an outage; killed when dropped.
//!
//! The host's own Redis (the Debian package's service, if one runs) is
//! never what a test talks to: every server here is started by the test
//! on a port the kernel just handed out.
//!
//! Readiness is a `PING` over a plain `TcpStream`, answered `+PONG`, not
//! `redis-cli`: [`RedisServer::command`] speaks just enough RESP (arrays
//! of bulk strings out; every reply type in) for a test to ask the
//! server what it holds (`KEYS`, `INFO commandstats`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::wait_for;

/// The program, found through `PATH`.
pub const PROGRAM: &str = "redis-server";

/// How long a starting server has to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` this process started (see the module doc).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// One RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$N`: `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*N`: `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply (lossy), or of an error.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) | Reply::Error(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        }
    }

    /// The texts of an array of bulk strings (`KEYS`), else empty.
    pub fn texts(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => {
                items.iter().filter_map(Reply::text).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl RedisServer {
    /// Starts a server in `dir` (created if missing) on a free loopback
    /// port and waits until it answers `PING`. Fails, saying to install
    /// it, when there is no `redis-server` in `PATH`.
    pub fn start_in(dir: &Path) -> io::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        // The port is free when the kernel hands it out and taken again
        // when the server binds it; another process may get it in
        // between, so a server that cannot bind is tried on another.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server =
                RedisServer { port, dir: dir.to_path_buf(), child: None };
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port")))
    }

    /// Starts the server again on the same port (after
    /// [`RedisServer::kill`]), empty: nothing was saved.
    pub fn start_again(&mut self) -> io::Result<()> {
        self.kill();
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new(PROGRAM)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--databases", "1"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{PROGRAM} not found in PATH: the fleet's tests \
                             need a real one (apt-get install redis-server)"
                        ),
                    )
                } else {
                    io::Error::new(
                        e.kind(),
                        format!("unable to start {PROGRAM}: {e}"),
                    )
                }
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        let mut exited = None;
        let ready = wait_for(
            || {
                if let Some(Ok(Some(status))) =
                    self.child.as_mut().map(Child::try_wait)
                {
                    exited = Some(status);
                    return true;
                }
                self.ping()
            },
            deadline,
        );
        if let Some(status) = exited {
            self.child = None;
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(io::Error::other(format!(
                "{PROGRAM} on port {} exited {status}: {}",
                self.port,
                said.lines().last().unwrap_or("")
            )));
        }
        if !ready {
            self.kill();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{PROGRAM} on port {} never answered PING", self.port),
            ));
        }
        Ok(())
    }

    /// SIGKILLs the server and reaps it, as a crash or a pulled plug
    /// would end it: no goodbye to its clients. Nothing if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether this process has it running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL a relay is given: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers `PING` with `PONG` now.
    pub fn ping(&self) -> bool {
        matches!(self.command(&["PING"]), Ok(Reply::Status(s)) if s == "PONG")
    }

    /// Sends one command on a fresh connection and reads its reply.
    pub fn command(&self, args: &[&str]) -> io::Result<Reply> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        (&stream).write_all(&encode(args))?;
        read_reply(&mut BufReader::new(stream))
    }

    /// Keys matching `pattern` (`KEYS`: fine for a test's few keys).
    pub fn keys(&self, pattern: &str) -> io::Result<Vec<String>> {
        Ok(self.command(&["KEYS", pattern])?.texts())
    }

    /// Calls of `command` the server has run since it started, from
    /// `INFO commandstats` (`cmdstat_evalsha:calls=N,...`); 0 if none.
    pub fn calls(&self, command: &str) -> io::Result<u64> {
        let info = self
            .command(&["INFO", "commandstats"])?
            .text()
            .unwrap_or_default();
        Ok(commandstats_calls(&info, command))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// `args` as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "reply cut short",
        ));
    };
    let (kind, rest) = body.split_first().unwrap_or((&b'?', &[]));
    let text = String::from_utf8_lossy(rest).into_owned();
    let bad = || {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {text}"))
    };
    let len = || text.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(len()?),
        b'$' => match usize::try_from(len()?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Reply::Bulk(Some(buf))
            }
        },
        b'*' => match usize::try_from(len()?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(bad()),
    })
}

/// The `calls=` of `cmdstat_COMMAND` in an `INFO commandstats` text.
pub fn commandstats_calls(info: &str, command: &str) -> u64 {
    let name = format!("cmdstat_{}:", command.to_ascii_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.split(',').find_map(|f| f.strip_prefix("calls=")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Reply {
        read_reply(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(encode(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(encode(&["KEYS", ""]), b"*2\r\n$4\r\nKEYS\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_is_read() {
        assert_eq!(parse(b"+PONG\r\n"), Reply::Status("PONG".into()));
        assert_eq!(parse(b"-ERR no\r\n"), Reply::Error("ERR no".into()));
        assert_eq!(parse(b":-3\r\n"), Reply::Int(-3));
        assert_eq!(parse(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n"),
            Reply::Bulk(Some(b"a\r\n".into()))
        );
        let keys = parse(b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n");
        assert_eq!(keys.texts(), ["a", "bc"]);
        assert_eq!(parse(b"*-1\r\n"), Reply::Array(None));
        for cut in [&b"+PONG"[..], b"$3\r\nab", b"*2\r\n:1\r\n", b"?\r\n"] {
            assert!(read_reply(&mut &cut[..]).is_err(), "{cut:?}");
        }
    }

    #[test]
    fn a_server_starts_dies_and_starts_again_on_its_port() {
        let dir = crate::QmailHome::new().unwrap();
        let mut redis = RedisServer::start_in(&dir.path().join("redis"))
            .unwrap_or_else(|e| panic!("{e}"));
        let port = redis.port();
        assert!(redis.ping());
        assert_eq!(
            redis.command(&["SET", "k", "v"]).unwrap(),
            Reply::Status("OK".into())
        );
        assert_eq!(redis.keys("*").unwrap(), ["k"]);
        assert_eq!(redis.calls("set").unwrap(), 1);
        redis.kill();
        assert!(!redis.is_running() && !redis.ping());
        redis.start_again().unwrap();
        assert_eq!(redis.port(), port);
        // Nothing was saved: it comes back empty.
        assert!(redis.keys("*").unwrap().is_empty());
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    }

    #[test]
    fn commandstats_calls_are_found() {
        let info = "# Commandstats\r\ncmdstat_ping:calls=3,usec=1\r\n\
                    cmdstat_evalsha:calls=42,usec=9,rejected_calls=0\r\n";
        assert_eq!(commandstats_calls(info, "EVALSHA"), 42);
        assert_eq!(commandstats_calls(info, "ping"), 3);
        assert_eq!(commandstats_calls(info, "eval"), 0);
    }
}
