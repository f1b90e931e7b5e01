//! For tests only (this crate's and the workshop's): a throw-away
//! `redis-server` on a free loopback port, in its own temporary
//! directory, persisting nothing (`--save '' --appendonly no`), killed
//! when dropped. It can be killed and started again on the same port,
//! as an outage.
//!
//! A missing `redis-server` is a failure, never a skip: the test panics
//! saying `apt-get install redis-server`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The client crate, so that a test can look into Redis without a
/// dependency of its own.
pub use redis;

/// How long a server may take to answer after it was started.
const READY: Duration = Duration::from_secs(10);

/// A running `redis-server` (or one killed by [`RedisServer::kill`]).
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Servers started so far: each logs to its own file.
    spawns: u32,
}

impl RedisServer {
    /// Starts a server on a free loopback port. Panics if it cannot
    /// (saying how to install it if `redis-server` is missing).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with more arguments (`["--requirepass", "pw"]`),
    /// kept for [`RedisServer::restart`].
    pub fn start_with(args: &[&str]) -> RedisServer {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardspawn-redis-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("unable to create {dir:?}: {e}"));
        let args = args.iter().map(|&a| a.to_owned()).collect();
        let mut server =
            RedisServer { port: 0, dir, args, child: None, spawns: 0 };
        // A free port may be taken between our probe and the server's
        // bind: then try another.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server would not start: {}", server.log());
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (no password: add yours).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its temporary directory (each start logs to `redis.N.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection, to look at what the fleet keeps (the first
    /// `--requirepass` given is used).
    pub fn connection(&self) -> redis::Connection {
        let url = match self.args.iter().position(|a| a == "--requirepass") {
            Some(i) => format!(
                "redis://:{}@127.0.0.1:{}",
                self.args[i + 1],
                self.port
            ),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(READY))
            .unwrap_or_else(|e| panic!("unable to connect to Redis: {e}"))
    }

    /// Kills it (SIGKILL: an outage, not a shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it (SIGSTOP: it holds its connections and answers
    /// nothing, a hung server) or lets it go on again (SIGCONT).
    pub fn freeze(&self, frozen: bool) {
        use nix::sys::signal::{Signal, kill};
        let child = self.child.as_ref().expect("a running server");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let signal = if frozen { Signal::SIGSTOP } else { Signal::SIGCONT };
        kill(pid, signal).unwrap_or_else(|e| panic!("unable to signal: {e}"));
    }

    /// Starts it again on the same port, empty (it saved nothing).
    /// Panics if it cannot.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server would not restart: {}",
            self.log()
        );
    }

    /// Spawns the server and waits until it answers; false if it
    /// exited first (its port was taken).
    fn spawn(&mut self) -> bool {
        self.spawns += 1;
        let log = self.log_path();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found ({e}): the fleet tests need a real \
                 Redis; apt-get install redis-server"
            ),
            Err(e) => panic!("unable to start redis-server: {e}"),
        };
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // The log, not a connect: another program may hold the port.
            if self.log().contains("Ready to accept connections") {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not answer in {READY:?}");
            }
            std::thread::yield_now();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis.{}.log", self.spawns))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("unable to find a free port: {e}"))
}
