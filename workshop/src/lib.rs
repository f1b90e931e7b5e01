//! The end-to-end harness: everything a test needs to run the real
//! shardspawn binary as qmail would, and to prove what it did.
//!
//! It plays the three parts around the spawner:
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
//! - **a recorder** ([`recorder`]): every stand-in appends when it started
//!   and ended on one monotonic clock, so a test can compute the peak
//!   number of deliveries that ran at once per domain and prove a limit
//!   was never exceeded.
//!
//! Around them: a fresh qmail home per test ([`home`]), synthetic
//! traffic with a Zipf-like spread over domains ([`workload`]), and
//! helpers to wait, find the built binaries and look at processes
//! through /proc ([`util`]).
//!
//! What it never does: sleep to paper over a race. It waits on an event
//! (a record arriving, a pipe reaching EOF, a gate's lock being let go)
//! or, where there is no event to wait on (a process exiting, a file
//! appearing), polls with [`util::wait_for`] up to an absolute deadline,
//! the only place that pauses. Timing-sensitive facts (who overlapped
//! whom) come from the recording, never from when the test happened to
//! look. It does not re-implement the wire format either: the codecs are
//! `shardspawn-common`'s, the same ones the spawner uses, so the harness
//! tests behaviour, and `common`'s own tests pin the bytes.
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
pub mod simulate;
