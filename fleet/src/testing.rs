//! For tests only (this crate's and the workshop's): a throw-away
//! `redis-server` on a free loopback port, in its own temporary
//! directory, persisting nothing (`--save '' --appendonly no`), killed
//! when dropped. It can be killed and started again on the same port,
//! as an outage.
//!
//! [`RedisServer::start_tls`] starts one that speaks TLS only, with a
//! throw-away CA and a certificate for 127.0.0.1 made by the `openssl`
//! program in its directory.
//!
//! A missing `redis-server` (or `openssl`) is a failure, never a skip:
//! the test panics saying what to install.

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
    /// TLS only: the CA file its certificate chains to.
    ca: Option<PathBuf>,
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
        RedisServer::launch(args, false)
    }

    /// Starts a server that speaks TLS only (no plain port), its
    /// certificate for `127.0.0.1` (an IP address SAN) signed by a CA
    /// made for it alone: [`RedisServer::ca`]. Clients are not asked
    /// for certificates. Panics if `openssl` is missing or fails.
    pub fn start_tls() -> RedisServer {
        RedisServer::start_tls_with(&[])
    }

    /// [`RedisServer::start_tls`] with more arguments.
    pub fn start_tls_with(args: &[&str]) -> RedisServer {
        RedisServer::launch(args, true)
    }

    fn launch(args: &[&str], tls: bool) -> RedisServer {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardspawn-redis-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("unable to create {dir:?}: {e}"));
        let mut args: Vec<String> =
            args.iter().map(|&a| a.to_owned()).collect();
        let ca = tls.then(|| {
            let (ca, cert, key) = make_certificates(&dir);
            for (option, file) in [
                ("--tls-cert-file", &cert),
                ("--tls-key-file", &key),
                ("--tls-ca-cert-file", &ca),
            ] {
                args.push(option.to_owned());
                args.push(file.display().to_string());
            }
            args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
            ca
        });
        let mut server =
            RedisServer { port: 0, dir, args, child: None, spawns: 0, ca };
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

    /// `redis://127.0.0.1:PORT`, or `rediss://` if it speaks TLS (no
    /// password: add yours).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA file of a TLS server ([`RedisServer::start_tls`]).
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Its temporary directory (each start logs to `redis.N.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection, to look at what the fleet keeps (the first
    /// `--requirepass` given is used; over TLS, trusting its CA, which
    /// needs the `tls` feature).
    pub fn connection(&self) -> redis::Connection {
        let url = self.url();
        let url = match self.args.iter().position(|a| a == "--requirepass") {
            Some(i) => {
                url.replacen("://", &format!("://:{}@", self.args[i + 1]), 1)
            }
            None => url,
        };
        let client = match &self.ca {
            None => redis::Client::open(url),
            #[cfg(feature = "tls")]
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .unwrap_or_else(|e| panic!("unable to read {ca:?}: {e}"));
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url, certs)
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                panic!("a TLS server's connection needs the tls feature")
            }
        };
        client
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
        // A TLS server listens on the port with TLS, and on no other.
        let port = self.port.to_string();
        let ports: &[&str] = match self.ca {
            None => &["--port", &port],
            Some(_) => &["--port", "0", "--tls-port", &port],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
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

/// Makes, in `dir`, a CA and a server certificate for 127.0.0.1 signed
/// by it (P-256 keys: quick to make, and what rustls verifies); returns
/// the CA's, the certificate's and the key's files. Valid for a day.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let file = |name: &str| dir.join(name);
    std::fs::write(
        file("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n\
         x509_extensions = ext\n\
         [dn]\nCN = shardspawn test CA\n\
         [ext]\nbasicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .unwrap_or_else(|e| panic!("unable to write in {dir:?}: {e}"));
    std::fs::write(
        file("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n\
         [dn]\nCN = 127.0.0.1\n\
         [ext]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1\n\
         authorityKeyIdentifier = keyid\n",
    )
    .unwrap_or_else(|e| panic!("unable to write in {dir:?}: {e}"));
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let path = |name: &str| file(name).display().to_string();
    openssl(&[
        &["req", "-x509", "-nodes", "-days", "1"][..],
        &p256,
        &["-config", &path("ca.cnf"), "-keyout", &path("ca.key")],
        &["-out", &path("ca.pem")],
    ]);
    openssl(&[
        &["req", "-new", "-nodes"][..],
        &p256,
        &["-config", &path("server.cnf"), "-keyout", &path("server.key")],
        &["-out", &path("server.csr")],
    ]);
    openssl(&[
        &["x509", "-req", "-days", "1", "-in", &path("server.csr")][..],
        &["-CA", &path("ca.pem"), "-CAkey", &path("ca.key")],
        &["-set_serial", "2", "-extfile", &path("server.cnf")],
        &["-extensions", "ext", "-out", &path("server.pem")],
    ]);
    (file("ca.pem"), file("server.pem"), file("server.key"))
}

/// Runs `openssl` with `args`; panics, with what it said, unless it
/// succeeds.
fn openssl(args: &[&[&str]]) {
    let out = Command::new("openssl")
        .args(args.concat())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("unable to run openssl ({e}): apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {:?}: {}",
        args.concat(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("unable to find a free port: {e}"))
}
