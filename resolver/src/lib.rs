//! The resolver process: shardspawn's own MX lookups, off the loop that
//! relays qmail-send's stream.
//!
//! # Where it sits
//!
//! The supervisor starts it like a shard, as `shardspawn resolver ARGS`
//! ([`main_args`]; ARGS are [`ResolverConfig::to_args`]'s), with fd 0 a
//! pipe of [`LOOKUP`] frames (one normalised domain each), fd 1 a pipe
//! for [`ANSWER`] frames and fd 2 its log. For each lookup it writes one
//! answer, in the order lookups finish, not the order they came; each
//! frame is written whole by one writer, never interleaved with another.
//! At EOF on fd 0 it answers every lookup it has read (those in flight
//! and those queued), then exits 0. `limits explain` asks one domain
//! in-process through [`lookup_blocking`].
//!
//! # Theory of operation
//!
//! Three threads. A reader blocks on fd 0, decodes frames and hands each
//! domain, stamped with the time it arrived, to the lookup loop through a
//! bounded channel (a full channel stops the reader, and the pipe pushes
//! back on the supervisor). The lookup loop is a tokio current-thread
//! runtime: DNS lookups are waits on sockets, and one thread waits for
//! thousands; a thread pool would only compete with the shards for the
//! cores. It runs up to [`IN_FLIGHT`] lookups at once as tasks; each must
//! end by its deadline, `cfg.timeout` after the lookup *arrived*, so an
//! answer never comes later than the supervisor's own bound however long
//! it queued. Answers go through a channel to a writer thread that blocks
//! on fd 1, so a slow reader of answers never stalls the lookups' timers.
//!
//! # What an answer says
//!
//! See [`dns`]: MX records are [`Outcome::Mx`] (hosts normalised, TTL the
//! least of the records used, CNAMEs included); a null MX (RFC 7505) or
//! NXDOMAIN is [`Outcome::NoHost`]; no MX (NODATA) falls back to A, then
//! AAAA, as qmail-remote does: an address is [`Outcome::Host`], none is
//! `NoHost`; SERVFAIL, REFUSED, a timeout or anything else is
//! [`Outcome::Failed`] with a short reason. Names are asked fully
//! qualified (no search list), MX hosts are never looked up (a site is
//! named by its hosts' names), and an IP literal is `Host` without DNS.
//!
//! # What it never does
//!
//! It never caches (the supervisor does, clamping TTLs in one place),
//! never reads the hosts file (qmail-remote does not), never logs per
//! lookup (the supervisor logs a failure once per domain), and never
//! writes a partial frame of its own making.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod dns;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

pub use dns::IN_FLIGHT;
use shardspawn_common::frame::{FrameDecoder, FrameTooLong};
pub use shardspawn_common::lookup::ResolverConfig;
use shardspawn_common::lookup::{ANSWER, Answer, LOOKUP, Outcome};
use tokio::sync::{Semaphore, mpsc};

/// Lookups read and not yet started, at most; then the reader waits.
const QUEUE: usize = 4096;

/// The longest LOOKUP payload read: far beyond any DNS name (255 bytes,
/// four times that escaped), so a longer one means a broken peer.
const MAX_LOOKUP: u32 = 64 * 1024;

/// Most bytes of answers gathered into one write.
const BATCH: usize = 64 * 1024;

/// `shardspawn resolver ARGS`: parses `args` (those after `resolver`)
/// and runs. Bad arguments are one log line and exit 100.
pub fn main_args(args: &[OsString]) -> i32 {
    match ResolverConfig::from_args(args) {
        Ok(cfg) => run(&cfg),
        Err(why) => {
            log(&format!("fatal: {why}"));
            100
        }
    }
}

/// The resolver process's main, on fds 0, 1 and 2 (see the crate's
/// documentation). Exits 0 at EOF of fd 0 once every lookup read is
/// answered; 111 if it could not start (no runtime, no resolv.conf), if
/// fd 0 broke or went out of step, or if writing to fd 1 failed.
pub fn run(cfg: &ResolverConfig) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log(&format!("fatal: unable to start the lookup loop: {e}"));
            return 111;
        }
    };
    let resolver = match runtime.block_on(async { dns::build(cfg) }) {
        Ok(resolver) => resolver,
        Err(why) => {
            log(&format!("fatal: {why}"));
            return 111;
        }
    };
    let (input, output) = match (dup(&io::stdin()), dup(&io::stdout())) {
        (Ok(input), Ok(output)) => (input, output),
        (Err(e), _) | (_, Err(e)) => {
            log(&format!("fatal: unable to duplicate fd 0 or 1: {e}"));
            return 111;
        }
    };
    let (lookups_tx, lookups_rx) = mpsc::channel(QUEUE);
    let (answers_tx, answers_rx) = std_mpsc::channel();
    let threads = std::thread::Builder::new()
        .name("resolver-read".into())
        .spawn(move || read_lookups(input, &lookups_tx))
        .and_then(|reader| {
            std::thread::Builder::new()
                .name("resolver-write".into())
                .spawn(move || write_answers(output, &answers_rx))
                .map(|writer| (reader, writer))
        });
    let (reader, writer) = match threads {
        Ok(threads) => threads,
        Err(e) => {
            log(&format!("fatal: unable to start a thread: {e}"));
            return 111;
        }
    };
    runtime.block_on(serve(resolver, lookups_rx, answers_tx, cfg.timeout));
    // `serve` returns once the reader is done and every answer is handed
    // to the writer, which ends when the last sender is gone.
    let read = reader.join().unwrap_or(Err("the reader panicked".into()));
    let written = writer.join().unwrap_or(false);
    match read {
        Ok(()) if written => 0,
        Ok(()) => 111,
        Err(why) => {
            log(&format!("fatal: {why}"));
            111
        }
    }
}

/// One lookup done in-process, for `limits explain`: the answer the
/// resolver process would give for `domain` (normalised).
pub fn lookup_blocking(cfg: &ResolverConfig, domain: &[u8]) -> Answer {
    let failed = |why: String| Answer {
        domain: domain.to_vec(),
        ttl: 0,
        outcome: Outcome::Failed(why),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return failed(format!("unable to start a runtime: {e}"));
        }
    };
    runtime.block_on(async {
        let deadline = deadline(Instant::now(), cfg.timeout);
        match dns::build(cfg) {
            Ok(resolver) => {
                dns::lookup(&resolver, domain, deadline, cfg.timeout).await
            }
            Err(why) => failed(why),
        }
    })
}

/// `timeout` after `arrived`, or far off if that cannot be told.
fn deadline(arrived: Instant, timeout: Duration) -> tokio::time::Instant {
    let far = Duration::from_secs(86_400 * 365);
    let at = arrived.checked_add(timeout.min(far)).unwrap_or(arrived);
    tokio::time::Instant::from_std(at)
}

/// Runs the lookups that come through `lookups`, at most [`IN_FLIGHT`] at
/// once, handing each answer to `answers`; returns when `lookups` is
/// closed and every lookup is answered.
async fn serve(
    resolver: hickory_resolver::TokioResolver,
    mut lookups: mpsc::Receiver<(Vec<u8>, Instant)>,
    answers: std_mpsc::Sender<Answer>,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((domain, arrived)) = lookups.recv().await {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let resolver = resolver.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let deadline = deadline(arrived, timeout);
            let answer =
                dns::lookup(&resolver, &domain, deadline, timeout).await;
            // A writer gone has said why; the answer has nowhere to go.
            let _ = answers.send(answer);
            drop(permit);
        });
    }
    let all = u32::try_from(IN_FLIGHT).expect("a small number");
    let _ = permits.acquire_many(all).await;
}

/// The reader: LOOKUP frames from `input` to `lookups` until EOF. An
/// error says why reading stopped early.
fn read_lookups(
    mut input: File,
    lookups: &mpsc::Sender<(Vec<u8>, Instant)>,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::new(MAX_LOOKUP);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) if decoder.is_idle() => return Ok(()),
            Ok(0) => return Err("fd 0 ended inside a frame".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("unable to read fd 0: {e}")),
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, frame) = decoder.decode(rest);
            rest = &rest[used..];
            match frame {
                None => {}
                Some(Ok((LOOKUP, _, domain))) => {
                    lookups
                        .blocking_send((domain, Instant::now()))
                        .map_err(|_| "the lookup loop ended".to_string())?;
                }
                Some(Ok((kind, _, _))) => log(&format!(
                    "warning: ignored a frame of unknown kind {kind:#04x} on fd 0"
                )),
                Some(Err(FrameTooLong { len })) => {
                    return Err(format!(
                        "a frame of {len} bytes on fd 0: out of step"
                    ));
                }
            }
        }
    }
}

/// The writer: answers to `output`, as many as are ready in one write.
/// False if a write failed (then the rest are read and dropped, so the
/// lookup loop never blocks on it).
fn write_answers(
    mut output: File,
    answers: &std_mpsc::Receiver<Answer>,
) -> bool {
    let mut ok = true;
    let mut buf = Vec::new();
    while let Ok(answer) = answers.recv() {
        buf.clear();
        answer.encode(&mut buf);
        while buf.len() < BATCH {
            match answers.try_recv() {
                Ok(answer) => answer.encode(&mut buf),
                Err(_) => break,
            }
        }
        debug_assert_eq!(buf.first(), Some(&ANSWER));
        if ok && let Err(e) = output.write_all(&buf) {
            log(&format!("fatal: unable to write to fd 1: {e}"));
            ok = false;
        }
    }
    ok
}

/// An fd of ours as a plain `File`: std's stdout buffers by line and
/// would cut frames at a newline byte.
fn dup(fd: &impl AsFd) -> io::Result<File> {
    Ok(File::from(fd.as_fd().try_clone_to_owned()?))
}

/// One line to fd 2, in one write: `shardspawn: resolver: LINE`.
fn log(line: &str) {
    let line = format!("shardspawn: resolver: {line}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}
