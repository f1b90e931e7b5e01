//! The OS layer the supervisor and the shards stand on.
//!
//! It owns every syscall of the product, behind small functions with one
//! error convention (`io::Result` with the errno kept):
//!
//! - [`sys`]: epoll ([`sys::Poller`]), signalfd, pipes made close-on-exec
//!   (and non-blocking where we read), reaping by pid, reads and writes
//!   that retry EINTR, and status files written to a fresh temporary
//!   name that never follows a link, then renamed.
//! - [`spawn`]: starting a child with an empty signal mask and fds 0, 1
//!   and 2 only, a failed exec told apart from the child's own exit. All
//!   of the product's `unsafe` lives here, each block with a `SAFETY:`
//!   line that says why it is sound.
//! - [`log`]: one log line per event in the supervision suites' style,
//!   on a non-blocking fd 2, through a logger it starts and restarts.
//!
//! What it never does: decide anything qmail-send hears. Which errno is
//! temporary, which letter a failed start earns, what a child's output
//! means: those are qmail's rules and live in `shardspawn-common`; how a
//! delivery is started lives in the spawner. This crate only reports
//! what the kernel said.

#![deny(missing_docs)]

pub mod log;
pub mod spawn;
pub mod sys;
