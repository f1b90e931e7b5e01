//! The workshop: everything around shardspawn that proves, measures
//! and shows what it does, and nothing that delivers mail.
//!
//! # Where it sits
//!
//! On top of the product, never under it. The crate graph is
//! `common <- os <- {spawner, resolver, supervisor}`, and the workshop depends on
//! `common` and `os` and runs the built `shardspawn` binary as a
//! separate process, as qmail-start would. Nothing the admin installs
//! depends on it: `shardspawn` does not link it (its `simulate`
//! subcommand runs `shardspawn-simulate` from beside it), `init/`
//! installs only `shardspawn`, and the workshop's binaries
//! (`shardspawn-fake-remote`, `shardspawn-fake-qmail-start`,
//! `shardspawn-simulate`, `shardspawn-bench`) exist for tests, the demo
//! and the bench. A change here can break a test, never a mail host.
//!
//! # What it owns
//!
//! It plays the four parts around the spawner:
//!
//! - **qmail-send**, the other end of the wire ([`emulator`]): it starts
//!   the spawner with fd 0 a command pipe, fd 1 a result pipe and fd 2
//!   closed, as qmail-start does; it reads the concurrency announcement,
//!   writes commands in either framing (whole, or one byte per write),
//!   decodes result records, and keeps the books qmail-send keeps, so a
//!   record for a delnum that is not busy, a second record, a missing one
//!   or a cut one is a listed violation rather than a silent oddity. It
//!   can also drive a whole workload as qmail-send does: lowest free
//!   delnum, at most min(concurrency, slots) in flight.
//! - **qmail-remote**, scripted ([`remote`]): a stand-in whose latency,
//!   output, exit code, crash or hang each test chooses through the
//!   recipient address (`user+sleep50+exit111@d1.test`), and which can
//!   report what it was given (argv, fds, cwd, environment, signal mask).
//! - **the DNS** ([`dns`]): a small authoritative server on loopback
//!   (UDP and TCP on one port, answers from a zone written as text, and
//!   per name the ways a server fails: SERVFAIL, REFUSED, silence, a
//!   truncated UDP answer), which the tests of sites, `simulate
//!   --mx-sets` and the bench name with `SHARDSPAWN_DNS`; also a
//!   binary, `shardspawn-fake-dns`.
//! - **a recorder** ([`recorder`]): every stand-in appends when it started
//!   and ended on one monotonic clock, so a test can compute the peak
//!   number of deliveries that ran at once per domain and prove a limit
//!   was never exceeded.
//!
//! Around them: a fresh qmail home per test ([`home`]); the spawner set
//! up the one way the tests run it ([`spawner`]: the settings every test
//! gives, and always a state directory inside the home); qmail-start
//! and qmail-send under real supervision ([`qmail_start`]); the kernel's
//! exit reports ([`exits`]); a real `redis-server` on loopback for the
//! fleet's tests ([`redis`]); synthetic traffic with a Zipf-like spread
//! over domains ([`workload`]); helpers to wait, find the built
//! binaries and look at processes through /proc ([`util`]); and the two
//! programs built on all of it, the demo ([`simulate`]) and the bench
//! ([`bench`](mod@bench)), which rewrites the tables of `BENCHMARKS.md`
//! and draws `benchmarks.svg`.
//!
//! # What it never does
//!
//! It never re-implements the wire format: the codecs are
//! `shardspawn-common`'s, the same ones the spawner uses, so the harness
//! tests behaviour, and `common`'s own tests pin the bytes. A second
//! encoder here could agree with a wrong spawner.
//!
//! It never sleeps to paper over a race. It waits on an event (a record
//! arriving, a pipe reaching EOF, a gate's lock being let go) or, where
//! there is no event to wait on (a process exiting, a file appearing),
//! polls with [`util::wait_for`] up to an absolute deadline, the only
//! place that pauses. Timing-sensitive facts (who overlapped whom) come
//! from the recording, never from when the test happened to look.
//!
//! It never writes outside the test's own home: no status files in the
//! host's `/run/shardspawn`, no files left behind in the temporary
//! directory unless asked to keep them ([`home::ENV_KEEP_TMP`]).
//!
//! Its `unsafe` (closing the spawner's fd 2 before exec, and the bench's
//! netlink socket for the kernel's exit reports) lives in one private
//! module, `sys`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod emulator;
pub mod exits;
pub mod home;
pub mod qmail_start;
pub mod recorder;
pub mod redis;
pub mod remote;
pub mod spawner;
mod sys;
pub mod util;
pub mod workload;

pub use emulator::{Delivery, Emulator, Options, RunReport, Stderr};
pub use home::QmailHome;
pub use recorder::Recording;
pub use util::{bin_path, wait_for};
pub mod bench;
pub mod dns;
pub mod simulate;
