//! The stand-in qmail-remote: a program whose behaviour each test scripts
//! through the recipient address.
//!
//! It is run exactly like qmail-remote: argv is `[prog, host, sender,
//! recipient]`, fd 0 is the message, fds 1 and 2 are one pipe. The
//! recipient's local part (before its last '@') is split on '+'; the first
//! word is the mailbox and is ignored, each later word is a directive.
//! Directives are read left to right:
//!
//! | directive | effect |
//! | --- | --- |
//! | `sleepN` | step: sleep N milliseconds (the remote's latency) |
//! | `gate` | step: wait until the test opens the [`Gate`] |
//! | `hang` | step: sleep until killed; never answers |
//! | `crash` | step: SIGKILL itself, no output |
//! | `closeout` | step: close fds 1 and 2, sleep 200 ms, exit 0 |
//! | `linger` | step: leave a child of its own holding fds 1 and 2 for 300 ms |
//! | `exitN` | exit with code N after the output |
//! | `none` | write nothing |
//! | `outHEX` | write exactly these bytes (lowercase hex, may hold 00) |
//! | `stderr` | write the output to fd 2 instead of fd 1 |
//! | `bigN` | write N bytes of `x` before the output |
//! | `inspect` | write `r`␀`K`, facts about this process, ␀ |
//! | `pid` | write `r`␀`Kpid=N`\n␀, N its own pid ([`pid_output`]) |
//! | `strictN` | a strict receiver: at most N at once to this host |
//!
//! `strictN` (N ≥ 1) plays a receiver that allows N connections at once
//! from us: before anything else, the stand-in takes one of N slot files
//! for its host (a non-blocking exclusive `flock`, held until it exits,
//! so a crash lets go too); when all N are taken it writes qmail-remote's
//! greeting failure with a 421 ([`strict_refusal`]) at once and exits 0,
//! skipping every step. The slot files are `DIR/HOST.I` (I in 0..N, HOST
//! with bytes outside `[a-z0-9.-]` as `%XX`) in the directory named by
//! [`ENV_STRICT_DIR`]. [`ENV_STRICT`] makes every delivery without a
//! `strictN` of its own strict with that N. Stand-ins of one host must
//! agree on N: the slots are counted per file, not per number. With
//! [`ENV_STRICT_SITES`] the slots of a listed domain are its site's, so
//! one receiver counts the connections of all the domains it hosts.
//!
//! Steps run in the order written, all before the output; the output
//! directives only say what is written at the end (a later one overrides
//! an earlier one). With no output directive the output is qmail-remote's
//! success, [`default_output`]. An unknown directive is answered with a
//! `D` report naming it, so a typo fails loudly.
//!
//! Environment: [`ENV_LATENCY_MS`] adds a base sleep to every delivery,
//! [`ENV_GATE`] names the gate file, [`ENV_RECORD`] names the recording
//! file (see [`crate::recorder`]; each start line carries the parent
//! pid), [`ENV_PROBE`] is echoed by `inspect`, and [`ENV_STRICT`] and
//! [`ENV_STRICT_DIR`] set up the strict receiver.
//!
//! Parsing is the pure function [`parse_script`]; only [`main`] has
//! effects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::recorder;

/// Milliseconds of latency added to every delivery.
pub const ENV_LATENCY_MS: &str = "SHARDSPAWN_FAKE_LATENCY_MS";
/// The gate file for the `gate` directive.
pub const ENV_GATE: &str = "SHARDSPAWN_FAKE_GATE";
/// The recording file; unset means no recording.
pub const ENV_RECORD: &str = "SHARDSPAWN_FAKE_RECORD";
/// A variable that `inspect` reports, to prove the environment passed.
pub const ENV_PROBE: &str = "SHARDSPAWN_PROBE";
/// `N`: every delivery without a `strictN` directive is `strictN`.
pub const ENV_STRICT: &str = "SHARDSPAWN_FAKE_STRICT";
/// The directory of the strict receiver's slot files.
pub const ENV_STRICT_DIR: &str = "SHARDSPAWN_FAKE_STRICT_DIR";
/// A file of `DOMAIN SITE` lines: a strict receiver counts the slots of
/// a listed domain under its site, so every domain of one MX set shares
/// one receiver's N (issue 16). Domains not listed count on their own.
pub const ENV_STRICT_SITES: &str = "SHARDSPAWN_FAKE_STRICT_SITES";

/// The address the stand-in says it connected to, in the texts that
/// name one (RFC 5737 documentation space).
pub const FAKE_IP: &str = "192.0.2.1";

/// What a strict receiver says when too many of our connections are
/// open: the reply after `421`.
pub const STRICT_SAID: &str =
    "421 4.7.0 Too many concurrent connections from your IP";

/// Something the stand-in does before writing its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sleep this long.
    Sleep(Duration),
    /// Wait for the gate to open.
    Gate,
    /// Sleep until killed.
    Hang,
    /// Kill itself with SIGKILL.
    Crash,
    /// Close fds 1 and 2, sleep 200 ms, exit 0.
    CloseOut,
    /// Start `sleep 0.3` with fds 1 and 2, and go on without waiting:
    /// the pipe's EOF comes 300 ms after this process ends.
    Linger,
}

/// What the stand-in writes at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// qmail-remote's success report for the host: [`default_output`].
    Default,
    /// Nothing at all.
    Nothing,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// `r`␀`K`, the facts of [`main`]'s inspection, ␀.
    Inspect,
    /// `r`␀`Kpid=N`\n␀ with the stand-in's own pid: what ties a result
    /// to the recording lines of the process that served it.
    Pid,
}

/// A parsed recipient: what the stand-in will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Run in order before the output.
    pub steps: Vec<Step>,
    /// The output after `padding`.
    pub body: Body,
    /// Bytes of `x` written before the body.
    pub padding: usize,
    /// Write to fd 2 instead of fd 1.
    pub to_stderr: bool,
    /// The exit code after the output.
    pub exit_code: i32,
    /// `strictN`: at most N at once to this host.
    pub strict: Option<u32>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            steps: Vec::new(),
            body: Body::Default,
            padding: 0,
            to_stderr: false,
            exit_code: 0,
            strict: None,
        }
    }
}

impl Script {
    /// The bytes to write for `host`. `inspect` is called only for
    /// [`Body::Inspect`]; a NUL in what it returns becomes `?`.
    pub fn output(
        &self,
        host: &[u8],
        inspect: impl FnOnce() -> String,
    ) -> Vec<u8> {
        let mut out = vec![b'x'; self.padding];
        match &self.body {
            Body::Default => out.extend(default_output(host)),
            Body::Nothing => {}
            Body::Bytes(bytes) => out.extend_from_slice(bytes),
            Body::Pid => out.extend(pid_output(std::process::id())),
            Body::Inspect => {
                out.extend_from_slice(b"r\0K");
                out.extend(inspect().bytes().map(|b| match b {
                    0 => b'?',
                    b => b,
                }));
                out.push(0);
            }
        }
        out
    }
}

/// qmail-remote's output for an accepted message:
/// `r`␀`K<host> accepted message.\nRemote host said: 250 ok\n`␀.
pub fn default_output(host: &[u8]) -> Vec<u8> {
    let mut out = b"r\0K".to_vec();
    out.extend_from_slice(host);
    out.extend_from_slice(b" accepted message.\nRemote host said: 250 ok\n\0");
    out
}

/// qmail-remote's output when the greeting is not 220 (qmail-remote.c
/// `quit("ZConnected to "," but greeting failed")`): the address, then
/// `Remote host said: ` and the reply line `said`, then NUL.
pub fn greeting_failure(said: &str) -> Vec<u8> {
    format!(
        "ZConnected to {FAKE_IP} but greeting failed.\n\
         Remote host said: {said}\n\0"
    )
    .into_bytes()
}

/// What a strict receiver's refusal looks like: [`greeting_failure`]
/// with [`STRICT_SAID`].
pub fn strict_refusal() -> Vec<u8> {
    greeting_failure(STRICT_SAID)
}

/// The result body qmail-rspawn makes of an output that is one message
/// report (such as [`greeting_failure`]): the report without its NUL.
pub fn result_of(output: &[u8]) -> Vec<u8> {
    output.strip_suffix(b"\0").unwrap_or(output).to_vec()
}

/// The result body qmail-rspawn makes of [`default_output`].
pub fn default_result(host: &[u8]) -> Vec<u8> {
    let mut out = b"K".to_vec();
    out.extend_from_slice(host);
    out.extend_from_slice(b" accepted message.\nRemote host said: 250 ok\n");
    out
}

/// The output of the `pid` directive for process `pid`:
/// `r`␀`Kpid=N`\n␀, a success whose result body is `Kpid=N`\n.
pub fn pid_output(pid: u32) -> Vec<u8> {
    format!("r\0Kpid={pid}\n\0").into_bytes()
}

/// The pid in a result body made of [`pid_output`] (`Kpid=N`\n), or
/// `None` for any other body.
pub fn pid_of_result(body: &[u8]) -> Option<u32> {
    let digits = body.strip_prefix(b"Kpid=")?.strip_suffix(b"\n")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads the directives of `recipient` (see the module docs).
pub fn parse_script(recipient: &[u8]) -> Result<Script, String> {
    let local = match recipient.iter().rposition(|&b| b == b'@') {
        Some(at) => &recipient[..at],
        None => recipient,
    };
    let mut script = Script::default();
    for word in local.split(|&b| b == b'+').skip(1) {
        let word = std::str::from_utf8(word).map_err(|_| {
            format!(
                "directive {:?} is not UTF-8",
                String::from_utf8_lossy(word)
            )
        })?;
        let number = |prefix: &str| -> Result<u64, String> {
            let digits = &word[prefix.len()..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!("directive {word:?} needs a number"));
            }
            digits.parse().map_err(|_| format!("directive {word:?}: too big"))
        };
        match word {
            "gate" => script.steps.push(Step::Gate),
            "hang" => script.steps.push(Step::Hang),
            "crash" => script.steps.push(Step::Crash),
            "closeout" => script.steps.push(Step::CloseOut),
            "linger" => script.steps.push(Step::Linger),
            "none" => script.body = Body::Nothing,
            "stderr" => script.to_stderr = true,
            "inspect" => script.body = Body::Inspect,
            "pid" => script.body = Body::Pid,
            _ if word.starts_with("sleep") => {
                let ms = number("sleep")?;
                script.steps.push(Step::Sleep(Duration::from_millis(ms)));
            }
            _ if word.starts_with("exit") => {
                let code = number("exit")?;
                script.exit_code = i32::try_from(code)
                    .ok()
                    .filter(|c| *c <= 255)
                    .ok_or_else(|| format!("directive {word:?}: over 255"))?;
            }
            _ if word.starts_with("strict") => {
                let n = number("strict")?;
                script.strict = Some(
                    u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(
                        || format!("directive {word:?}: 1 to 2^32-1"),
                    )?,
                );
            }
            _ if word.starts_with("big") => {
                let n = number("big")?;
                script.padding = usize::try_from(n)
                    .map_err(|_| format!("directive {word:?}: too big"))?;
            }
            _ if word.starts_with("out") => {
                let bytes = decode_hex(&word[3..])
                    .ok_or_else(|| format!("directive {word:?}: bad hex"))?;
                script.body = Body::Bytes(bytes);
            }
            "" => return Err("empty directive".to_string()),
            _ => return Err(format!("unknown directive {word:?}")),
        }
    }
    Ok(script)
}

/// A recipient for the stand-in: `mailbox+d1+d2@host`.
pub fn recipient(mailbox: &str, directives: &[&str], host: &str) -> Vec<u8> {
    let mut r = mailbox.to_string();
    for d in directives {
        r.push('+');
        r.push_str(d);
    }
    r.push('@');
    r.push_str(host);
    r.into_bytes()
}

/// The `outHEX` directive that makes the stand-in write exactly `bytes`.
pub fn out_directive(bytes: &[u8]) -> String {
    let mut d = "out".to_string();
    for b in bytes {
        let _ = write!(d, "{b:02x}");
    }
    d
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let pairs = hex.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs.map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// Splits the body of an `inspect` result (`K` then `key=value` lines)
/// into its facts.
pub fn parse_inspect(body: &[u8]) -> BTreeMap<String, String> {
    let text =
        String::from_utf8_lossy(body.strip_prefix(b"K").unwrap_or(body));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The name of slot file `index` of `host` (see the module docs).
pub fn slot_name(host: &[u8], index: u32) -> String {
    let mut name = String::new();
    for &b in host {
        match b.to_ascii_lowercase() {
            b @ (b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-') => {
                name.push(b as char)
            }
            b => {
                let _ = write!(name, "%{b:02X}");
            }
        }
    }
    // "." and ".." would not be files of their own.
    if name.bytes().all(|b| b == b'.') {
        name = name.replace('.', "%2E");
    }
    let _ = write!(name, ".{index}");
    name
}

/// Takes a free one of the `n` slots of `host` in `dir`: the lock on
/// its file, held as long as the returned value lives (or the process
/// does). `None` when all `n` are taken. Never waits.
pub fn take_slot(
    dir: &Path,
    host: &[u8],
    n: u32,
) -> io::Result<Option<Flock<File>>> {
    for i in 0..n {
        let path = dir.join(slot_name(host, i));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) => break,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(io::Error::from(e)),
            }
        }
    }
    Ok(None)
}

/// The test's side of the `gate` directive: a file the test holds an
/// exclusive `flock` on. Each stand-in at a `gate` step blocks on a
/// shared lock of it, so it passes once the test opens the gate: no
/// polling and no race between "gate opened" and "child arrived".
#[derive(Debug)]
pub struct Gate {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl Gate {
    /// Creates (or reuses) the file at `path` and closes the gate.
    pub fn closed(path: impl Into<PathBuf>) -> io::Result<Gate> {
        let mut gate = Gate { path: path.into(), lock: None };
        gate.close()?;
        Ok(gate)
    }

    /// The file to pass in [`ENV_GATE`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets every waiting and future stand-in through.
    pub fn open(&mut self) {
        self.lock = None;
    }

    /// Closes the gate again (blocks while a stand-in is passing it).
    pub fn close(&mut self) -> io::Result<()> {
        if self.lock.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            let lock = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| io::Error::from(e))?;
            self.lock = Some(lock);
        }
        Ok(())
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        self.lock.is_none()
    }
}

/// The stand-in qmail-remote's whole life. A bin target is just
/// `fn main() { shardspawn_workshop::remote::main() }`.
pub fn main() -> ! {
    let args: Vec<Vec<u8>> =
        std::env::args_os().map(OsStringExt::into_vec).collect();
    let arg = |i: usize| args.get(i).map(Vec::as_slice).unwrap_or(b"");
    let host = arg(1).to_vec();
    let record = std::env::var_os(ENV_RECORD).map(PathBuf::from);
    let mark = |m: u8| {
        if let Some(path) = &record {
            // The start names the parent: the shard that started it.
            let parent = (m == b'S').then(std::os::unix::process::parent_id);
            let line = recorder::line_with_parent(
                m,
                std::process::id(),
                parent,
                recorder::monotonic_ns(),
                &host,
            );
            // One write to an O_APPEND file: lines never mix. A failure
            // only loses the line; the delivery goes on.
            if let Ok(mut f) =
                OpenOptions::new().append(true).create(true).open(path)
            {
                let _ = f.write_all(&line);
            }
        }
    };
    mark(b'S');
    let exit = |code: i32| -> ! {
        mark(b'E');
        std::process::exit(code)
    };

    let script = match parse_script(arg(3)) {
        Ok(script) => script,
        Err(why) => {
            write_fd(io::stdout().as_fd(), &failure(&why));
            exit(0)
        }
    };
    // The connection lasts the whole delivery: the slot is held until
    // exit (the lock goes with the process, whichever way it ends).
    let strict = script.strict.or_else(|| {
        std::env::var(ENV_STRICT).ok()?.trim().parse().ok().filter(|n| *n > 0)
    });
    let receiver = site_of(&host).unwrap_or_else(|| host.clone());
    let _slot = match strict.map(|n| strict_slot(&receiver, n)) {
        None => None,
        Some(Ok(Some(slot))) => Some(slot),
        Some(Ok(None)) => {
            write_fd(io::stdout().as_fd(), &strict_refusal());
            exit(0)
        }
        Some(Err(why)) => {
            write_fd(io::stdout().as_fd(), &failure(&why));
            exit(0)
        }
    };
    let base = std::env::var(ENV_LATENCY_MS)
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if base > 0 {
        std::thread::sleep(Duration::from_millis(base));
    }
    for step in &script.steps {
        match step {
            Step::Sleep(d) => std::thread::sleep(*d),
            Step::Gate => {
                if let Err(why) = pass_gate() {
                    write_fd(io::stdout().as_fd(), &failure(&why));
                    exit(0)
                }
            }
            Step::Hang => loop {
                nix::unistd::pause();
            },
            Step::Crash => {
                let _ = nix::sys::signal::raise(nix::sys::signal::SIGKILL);
                std::process::abort()
            }
            Step::CloseOut => {
                let _ = nix::unistd::close(1);
                let _ = nix::unistd::close(2);
                std::thread::sleep(Duration::from_millis(200));
                exit(0)
            }
            Step::Linger => {
                // Inherits fds 1 and 2; never waited for (init reaps it).
                if let Err(e) = std::process::Command::new("sleep")
                    .arg("0.3")
                    .stdin(std::process::Stdio::null())
                    .spawn()
                {
                    write_fd(io::stdout().as_fd(), &failure(&e.to_string()));
                    exit(0)
                }
            }
        }
    }
    let out = script.output(&host, || inspect(&args, io::stdin().as_fd()));
    if script.to_stderr {
        write_fd(io::stderr().as_fd(), &out);
    } else {
        write_fd(io::stdout().as_fd(), &out);
    }
    exit(script.exit_code)
}

/// The site [`ENV_STRICT_SITES`] lists for `host` (any case), if any.
fn site_of(host: &[u8]) -> Option<Vec<u8>> {
    let file = std::env::var_os(ENV_STRICT_SITES)?;
    let text = std::fs::read(file).ok()?;
    text.split(|&b| b == b'\n').find_map(|line| {
        let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let domain = words.next()?;
        let site = words.next()?;
        domain.eq_ignore_ascii_case(host).then(|| site.to_vec())
    })
}

/// One of `n` slots for `host` in [`ENV_STRICT_DIR`], or `None` if all
/// are taken.
fn strict_slot(host: &[u8], n: u32) -> Result<Option<Flock<File>>, String> {
    let dir = std::env::var_os(ENV_STRICT_DIR)
        .ok_or_else(|| format!("strict receiver without {ENV_STRICT_DIR}"))?;
    take_slot(Path::new(&dir), host, n)
        .map_err(|e| format!("unable to take a strict slot in {dir:?}: {e}"))
}

/// A `D` report for a script the stand-in cannot follow.
fn failure(why: &str) -> Vec<u8> {
    format!("Dshardspawn fake qmail-remote: {why}\n\0").into_bytes()
}

/// Waits at the gate: a shared lock is granted once the test drops its
/// exclusive one. The lock is let go at once, so its fd is closed before
/// any `inspect` lists fds.
fn pass_gate() -> Result<(), String> {
    let path = std::env::var_os(ENV_GATE)
        .ok_or_else(|| format!("gate directive without {ENV_GATE}"))?;
    let mut file = File::open(&path)
        .map_err(|e| format!("unable to open gate {path:?}: {e}"))?;
    loop {
        match Flock::lock(file, FlockArg::LockShared) {
            Ok(_passed) => return Ok(()),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(format!("unable to lock gate: {e}")),
        }
    }
}

/// Writes all of `bytes`, as qmail-remote does, ignoring a reader that
/// went away (qmail-remote exits 0 even then).
fn write_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The facts `inspect` reports, one `key=value` line each; `message` is
/// fd 0 (a parameter so that tests can pass a file). Argument bytes are
/// shown as lossy UTF-8 with `\` and newline escaped.
fn inspect(args: &[Vec<u8>], message: BorrowedFd<'_>) -> String {
    // Order matters: list fds before this function opens anything, and
    // take fd 0's offset before reading it.
    let fds = open_fds();
    let offset = nix::unistd::lseek(message, 0, nix::unistd::Whence::SeekCur)
        .map_or_else(|e| format!("error {e}"), |o| o.to_string());
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < head.len() {
        match nix::unistd::read(message, &mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| match (
        nix::sys::stat::fstat(a),
        nix::sys::stat::fstat(b),
    ) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    };
    let fd1_is_fd2 = same(io::stdout().as_fd(), io::stderr().as_fd());

    let mut out = String::new();
    for (i, a) in args.iter().enumerate().take(4) {
        let _ = writeln!(out, "argv{i}={}", escape(a));
    }
    let _ = writeln!(out, "argc={}", args.len());
    let cwd = std::env::current_dir().map_or_else(
        |e| format!("error {e}"),
        |d| escape(d.as_os_str().as_encoded_bytes()),
    );
    let _ = writeln!(out, "cwd={cwd}");
    let fds: Vec<String> = fds.iter().map(i32::to_string).collect();
    let _ = writeln!(out, "fds={}", fds.join(","));
    let _ = writeln!(out, "fd0_offset={offset}");
    let mut hex = String::new();
    for b in &head[..got] {
        let _ = write!(hex, "{b:02x}");
    }
    let _ = writeln!(out, "fd0_head={hex}");
    let _ = writeln!(out, "fd1_is_fd2={fd1_is_fd2}");
    let probe = std::env::var_os(ENV_PROBE)
        .map_or_else(|| "unset".to_string(), |v| escape(v.as_encoded_bytes()));
    let _ = writeln!(out, "env_PROBE={probe}");
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| escape(name.as_encoded_bytes()))
        .collect();
    names.sort();
    let _ = writeln!(out, "env_names={}", names.join(","));
    let blocked = status_mask("SigBlk");
    let _ = writeln!(
        out,
        "sigmask_empty={}",
        blocked.map_or("unknown".to_string(), |m| (m == 0).to_string())
    );
    let _ = writeln!(out, "pid={}", std::process::id());
    let _ = writeln!(out, "ppid={}", std::os::unix::process::parent_id());
    out
}

/// The open fds of this process, sorted, without the one used to read
/// /proc/self/fd: the list is taken first and each entry is checked
/// again after that directory is closed.
fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return Vec::new(),
    };
    fds.retain(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok());
    fds.sort_unstable();
    fds
}

fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\\', "\\\\").replace('\n', "\\n")
}

/// The hexadecimal signal mask on line `name` of /proc/self/status.
fn status_mask(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        u64::from_str_radix(rest.trim(), 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(r: &str) -> Script {
        parse_script(r.as_bytes()).unwrap()
    }

    fn ms(n: u64) -> Step {
        Step::Sleep(Duration::from_millis(n))
    }

    #[test]
    fn no_directives_is_the_default() {
        assert_eq!(parse("user1@d1.test"), Script::default());
        assert_eq!(parse("nobody"), Script::default());
        assert_eq!(parse("@d1.test"), Script::default());
    }

    #[test]
    fn first_word_is_the_mailbox() {
        // "sleep5" is the mailbox here, not a directive.
        assert_eq!(parse("sleep5@d.test"), Script::default());
        assert_eq!(parse("sleep5+sleep7@d.test").steps, vec![ms(7)]);
    }

    #[test]
    fn host_is_after_the_last_at() {
        // The local part is everything before the last '@', including
        // an earlier '@'.
        assert!(parse_script(b"u+exit3@x@d.test").is_err());
        assert_eq!(parse("u@x+exit4@d.test").exit_code, 4);
    }

    #[test]
    fn directives_combine_left_to_right() {
        let s = parse("u+sleep50+exit111@d1.test");
        assert_eq!(s.steps, vec![ms(50)]);
        assert_eq!(s.exit_code, 111);
        assert_eq!(s.body, Body::Default);

        let s = parse("u+gate+sleep1+hang+crash+closeout@h");
        assert_eq!(
            s.steps,
            vec![Step::Gate, ms(1), Step::Hang, Step::Crash, Step::CloseOut]
        );
    }

    #[test]
    fn output_directives() {
        assert_eq!(parse("u+none@h").body, Body::Nothing);
        assert_eq!(parse("u+inspect@h").body, Body::Inspect);
        assert_eq!(
            parse("u+out00ff7a@h").body,
            Body::Bytes(vec![0, 255, b'z'])
        );
        assert_eq!(parse("u+out@h").body, Body::Bytes(vec![]));
        assert!(parse("u+stderr@h").to_stderr);
        assert_eq!(parse("u+big4096@h").padding, 4096);
        // The later output directive wins.
        assert_eq!(parse("u+none+out61@h").body, Body::Bytes(b"a".to_vec()));
        assert_eq!(parse("u+out61+none@h").body, Body::Nothing);
    }

    #[test]
    fn bad_directives_are_refused() {
        for r in [
            "u+sleep@h",
            "u+sleep-1@h",
            "u+sleepx@h",
            "u+exit256@h",
            "u+exit@h",
            "u+big@h",
            "u+out0@h",
            "u+outAB@h",
            "u+outzz@h",
            "u+teleport@h",
            "u++exit1@h",
            "u+@h",
            "u+sleep99999999999999999999999@h",
        ] {
            assert!(parse_script(r.as_bytes()).is_err(), "{r}");
        }
        assert!(parse_script(b"u+\xff@h").is_err());
        let why = parse_script(b"u+teleport@h").unwrap_err();
        assert!(why.contains("teleport"), "{why}");
    }

    #[test]
    fn eight_bit_mailbox_is_ignored() {
        assert_eq!(parse_script(b"\xe9t\xe9+exit1@h").unwrap().exit_code, 1);
    }

    #[test]
    fn default_output_and_its_result() {
        assert_eq!(
            default_output(b"d1.test"),
            b"r\0Kd1.test accepted message.\nRemote host said: 250 ok\n\0"
        );
        assert_eq!(
            default_result(b"d1.test"),
            b"Kd1.test accepted message.\nRemote host said: 250 ok\n"
        );
    }

    #[test]
    fn output_bytes() {
        let none = || -> String { unreachable!() };
        assert_eq!(parse("u@h").output(b"h", none), default_output(b"h"));
        assert_eq!(parse("u+none@h").output(b"h", none), b"");
        let mut want = b"xxx".to_vec();
        want.extend(default_output(b"h"));
        assert_eq!(parse("u+big3@h").output(b"h", none), want);
        assert_eq!(parse("u+big2+none@h").output(b"h", none), b"xx");
        assert_eq!(
            parse("u+inspect@h").output(b"h", || "a=1\nb\0=2\n".into()),
            b"r\0Ka=1\nb?=2\n\0"
        );
    }

    #[test]
    fn helpers_round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff, b'Z'];
        let r = recipient("u", &[&out_directive(&bytes), "exit1"], "d.test");
        assert_eq!(
            r,
            format!("u+{}+exit1@d.test", out_directive(&bytes)).as_bytes()
        );
        let s = parse_script(&r).unwrap();
        assert_eq!(s.body, Body::Bytes(bytes.to_vec()));
        assert_eq!(s.exit_code, 1);
    }

    #[test]
    fn pid_directive_reports_the_pid_in_the_result() {
        let s = parse("u+pid@h");
        assert_eq!(s.body, Body::Pid);
        assert_eq!(s.steps, vec![]);
        assert_eq!(parse("u+pid+none@h").body, Body::Nothing);
        assert_eq!(parse("u+none+pid@h").body, Body::Pid);
        let none = || -> String { unreachable!() };
        let out = s.output(b"h", none);
        assert_eq!(out, pid_output(std::process::id()));
        assert_eq!(pid_output(42), b"r\0Kpid=42\n\0");
        // What qmail-rspawn makes of it: the text of the first segment.
        let mut t = shardspawn_common::report::Translator::new();
        t.push(&pid_output(31337));
        let body = t.finish(shardspawn_common::report::ChildEnd::Exited(0));
        assert_eq!(body, b"Kpid=31337\n");
        assert_eq!(pid_of_result(&body), Some(31337));
        for bad in [&b"Kpid=\n"[..], b"Kpid=12", b"Zpid=1\n", b"Kpid=1x\n"] {
            assert_eq!(pid_of_result(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn inspect_body_is_parsed() {
        let facts =
            parse_inspect(b"Kargv1=d.test\nfds=0,1,2\nenv_PROBE=a=b\n");
        assert_eq!(facts["argv1"], "d.test");
        assert_eq!(facts["fds"], "0,1,2");
        assert_eq!(facts["env_PROBE"], "a=b");
    }

    #[test]
    fn inspection_of_this_process() {
        let home = crate::home::QmailHome::new().unwrap();
        let body = [b'm'; 100];
        let messid = home.add_message(&body);
        let message = File::open(home.message_path(&messid)).unwrap();
        let args = [b"prog".to_vec(), b"a\nb".to_vec()];
        let facts = parse_inspect(
            format!("K{}", inspect(&args, message.as_fd())).as_bytes(),
        );
        assert_eq!(facts["fd0_offset"], "0");
        assert_eq!(facts["fd0_head"], "6d".repeat(64));
        assert_eq!(facts["argv0"], "prog");
        assert_eq!(facts["argv1"], "a\\nb");
        assert_eq!(facts["argc"], "2");
        assert!(facts["fds"].split(',').any(|fd| fd == "1"), "{facts:?}");
        assert!(!facts.contains_key("argv2"));
        for key in ["sigmask_empty", "fd1_is_fd2"] {
            assert!(
                ["true", "false"].contains(&facts[key].as_str()),
                "{key}: {facts:?}"
            );
        }
    }

    #[test]
    fn strict_directive() {
        assert_eq!(parse("u@h").strict, None);
        assert_eq!(parse("u+strict3@h").strict, Some(3));
        assert_eq!(parse("u+strict3+sleep5@h").steps, vec![ms(5)]);
        for r in ["u+strict@h", "u+strict0@h", "u+strict4294967296@h"] {
            assert!(parse_script(r.as_bytes()).is_err(), "{r}");
        }
    }

    #[test]
    fn strict_refusal_is_qmail_remotes_greeting_failure() {
        assert_eq!(
            strict_refusal(),
            b"ZConnected to 192.0.2.1 but greeting failed.\nRemote host \
              said: 421 4.7.0 Too many concurrent connections from your \
              IP\n\0"
        );
        // What qmail-rspawn makes of it, and what result_of says.
        let mut t = shardspawn_common::report::Translator::new();
        t.push(&strict_refusal());
        let body = t.finish(shardspawn_common::report::ChildEnd::Exited(0));
        assert_eq!(body, result_of(&strict_refusal()));
        assert!(body.starts_with(b"ZConnected to "));
    }

    #[test]
    fn slot_names_are_one_file_per_host_and_index() {
        assert_eq!(slot_name(b"D1.Test", 0), "d1.test.0");
        assert_eq!(slot_name(b"a/b c", 12), "a%2Fb%20c.12");
        assert_eq!(slot_name(b"..", 1), "%2E%2E.1");
        assert_eq!(slot_name(b"", 1), ".1");
    }

    #[test]
    fn strict_slots_are_counted_per_host() {
        let home = crate::home::QmailHome::new().unwrap();
        let dir = home.path();
        let take = |host: &[u8]| take_slot(dir, host, 2).unwrap();
        let a = take(b"a.test").expect("first slot");
        let b = take(b"a.test").expect("second slot");
        // Both taken: refused at once, without waiting.
        assert!(take(b"a.test").is_none());
        // Another host has slots of its own.
        let other = take(b"b.test").expect("other host");
        // A slot let go (a stand-in that exited) is free again.
        drop(a);
        let c = take(b"a.test").expect("freed slot");
        assert!(take(b"a.test").is_none());
        drop((b, c, other));
        // A single-slot receiver.
        let one = take_slot(dir, b"c.test", 1).unwrap().unwrap();
        assert!(take_slot(dir, b"c.test", 1).unwrap().is_none());
        drop(one);
        assert!(take_slot(dir, b"c.test", 1).unwrap().is_some());
    }

    #[test]
    fn gate_opens_and_closes() {
        let dir = crate::home::QmailHome::new().unwrap();
        let mut gate = Gate::closed(dir.path().join("gate")).unwrap();
        assert!(!gate.is_open());
        // Closed: a shared lock is refused.
        let f = File::open(gate.path()).unwrap();
        let f = match Flock::lock(f, FlockArg::LockSharedNonblock) {
            Err((f, Errno::EWOULDBLOCK)) => f,
            other => panic!("gate should be closed: {other:?}"),
        };
        gate.open();
        assert!(gate.is_open());
        let passed = Flock::lock(f, FlockArg::LockSharedNonblock).unwrap();
        drop(passed);
        gate.close().unwrap();
        assert!(!gate.is_open());
    }
}
