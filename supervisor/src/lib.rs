//! The process qmail-start runs as `qmail-rspawn`.
//!
//! The supervisor reads the settings, raises the descriptor and process
//! limits, does qmail-rspawn's startup duties (chdir to `queue/mess`,
//! zero `queue/lock/tcpto`, resolve the queue owner), starts the spawner
//! shards, announces the slots, and then multiplexes: it decodes each
//! command from qmail-send, runs the checks that need no file, routes the
//! command to the shard that owns its limit key, and writes every result
//! back on fd 1.
//!
//! It is the **only writer of fd 1**, so records never interleave. It
//! knows which shard holds every delnum in flight, so when a shard dies it
//! answers each of them once with a `Z` and starts a replacement. It knows
//! nothing of per-domain limits beyond which shard owns a key.
//!
//! Like a shard, it is a pure core and a thin driver: [`core`] makes
//! every decision (checks, routing, the owner of each delnum, shard
//! states and restarts) from events and is tested without processes;
//! [`mux`] waits on the descriptors and carries its effects out;
//! [`shards`] starts a shard process and holds its pipes.
//!
//! Everything that can fail fatally happens before the announcement
//! ([`startup`]); after it, a failure costs one record for one delnum,
//! never the process.

pub mod cli;
pub mod cmdline;
pub mod control_cmd;
pub mod core;
pub mod framing;
pub mod limits_cmd;
pub mod mux;
pub mod resolver;
pub mod shards;
pub mod sites;
pub mod startup;
pub mod status_cmd;
pub mod top;
