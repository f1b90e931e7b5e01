//! What the supervisor and the spawner shards share, and what can be
//! tested without a process.
//!
//! This crate is **pure**: no file descriptors, no processes, no clock
//! reads, no environment reads (callers pass the environment in). Bytes
//! and values in, bytes and values out.
//!
//! - [`command`]: the incremental decoder (and the encoder, for emulators)
//!   of the commands qmail-send writes to its spawner, in both framings.
//! - [`record`]: the concurrency announcement and the result records the
//!   spawner writes back, and a decoder for them.
//! - [`refusal`]: every status text qmail-rspawn can send without running
//!   qmail-remote, one variant each, and the letters.
//! - [`report`]: how a finished qmail-remote (exit status plus output)
//!   becomes one result body, exactly as qmail-rspawn's `report()`.
//! - [`validate`]: the checks of a command that need no file, in
//!   qmail's order.
//! - [`domain`]: the recipient's host, its normalised limit key, and the
//!   stable key → shard hash.
//! - [`frame`]: the plain framing between the supervisor and its shards.
//! - [`controls`]: the run-time controls file `shardspawn control` writes.
//! - [`control`]: what the control files share: their lines, and the
//!   error that names one.
//! - [`limits`]: the per-destination limits file, and which key and
//!   limit a domain is counted under.
//! - [`routes`]: qmail's `control/smtproutes`, and which relay a
//!   domain's mail goes to.
//! - [`lookup`]: what the supervisor and its resolver process say:
//!   a domain to look up, and its mail exchangers.
//! - [`settings`]: the settings table, parsed from flags and environment.
//! - [`response`]: the response rules, and what a result says about its
//!   destination (site-level pushback or not).
//! - [`status`]: the live status files a shard and the supervisor publish.
//! - [`fleet`]: what a shard and its fleet client (Redis) say: claims
//!   of leases and rate tokens for shared keys, and what was granted.
//! - [`errno`]: which errnos qmail calls temporary, and what a failed
//!   start tells qmail-send.
//! - [`shard_config`]: what the supervisor tells a shard on its command
//!   line, written and read back.
#![deny(missing_docs)]

pub mod command;
pub mod control;
pub mod controls;
pub mod domain;
pub mod errno;
pub mod fleet;
pub mod frame;
pub mod limits;
pub mod lookup;
pub mod record;
pub mod refusal;
pub mod report;
pub mod response;
pub mod routes;
pub mod settings;
pub mod shard_config;
pub mod status;
pub mod validate;

#[cfg(test)]
mod testutil;
