//! One spawner shard: the process that turns jobs into running
//! qmail-remote processes and their ends into result bodies.
//!
//! # Theory of operation
//!
//! The supervisor starts each shard as `shardspawn shard ...` with its
//! descriptors wired at fixed numbers: fd 0 carries [`Job`] frames from
//! the supervisor, fd 1 carries [`Done`] frames back, fd 2 is the log.
//! The working directory is `QMAILHOME/queue/mess`, so a job's messid
//! opens as qmail-rspawn opens it.
//!
//! The shard is one thread and one epoll loop ([`driver`]). The loop
//! waits for: job bytes on fd 0, room on fd 1, SIGCHLD on a signalfd,
//! output on each running delivery's pipe, and the earliest deadline of a
//! held delivery. Every decision (start now, hold, refuse, report) is made
//! by the pure [`core::Core`] from events; the driver carries out its
//! effects through [`start`] and `shardspawn_os`, which makes every
//! syscall.
//!
//! A key marked `shared` in a relay that has a fleet (issue 18) is
//! also bounded by the leases and rate tokens Redis gives this shard:
//! a thread of the `shardspawn-fleet` crate talks to Redis, the loop
//! watches its eventfd, and the core's per-key standing in the fleet
//! is [`fleet`]'s. The thread never blocks the loop; when Redis is away
//! each key takes its share, 1/relays of its limit.
//!
//! A delivery's result exists only when its child has been reaped *and*
//! its pipe has reached EOF, in either order. Every job gets exactly one
//! [`Done`], whatever fails: a failed open, pipe or spawn is one more
//! event that ends in a refusal body.
//!
//! The shard never speaks qmail-send's framing and never writes to
//! qmail-send; it knows nothing of delnum ranges or of other shards.
//!
//! [`Job`]: shardspawn_common::frame::Job
//! [`Done`]: shardspawn_common::frame::Done

pub mod adapt;
pub mod core;
pub mod driver;
pub mod fleet;
pub mod publish;
pub mod start;
