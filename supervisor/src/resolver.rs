//! The resolver process, the OS side: started like a shard (our own
//! binary, `shardspawn resolver`, fd 0 = lookups in, fd 1 = answers out,
//! fd 2 = the supervisor's log), so DNS runs off the supervisor's loop
//! and in a process that can die alone. When to start or restart it is
//! the core's decision ([`crate::core`]); this only starts it and holds
//! our ends of its pipes.
//!
//! Why a process rather than a thread: the supervisor forks shards at any
//! time and stays single-threaded so that is safe; the resolver's
//! runtime (tokio, for hickory) then lives in a process of its own, whose
//! death is seen as an EOF and handled as a shard's is: nothing waits
//! for it, and it is started again.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::unistd::Pid;

use shardspawn_common::frame::FrameDecoder;
use shardspawn_common::lookup::{self, MAX_ANSWER, ResolverConfig};
use shardspawn_os::sys;

use crate::shards::start_self;

/// A running resolver and our ends of its pipes.
#[derive(Debug)]
pub struct ResolverProc {
    /// Which start of it.
    pub generation: u32,
    /// Its pid.
    pub pid: Pid,
    /// Write end of its lookup pipe (non-blocking).
    pub lookups: OwnedFd,
    /// Read end of its answer pipe (non-blocking).
    pub answers: OwnedFd,
    /// Splits its answer stream.
    pub decoder: FrameDecoder,
    /// Lookup frames not yet written, and how much of them was.
    out: Vec<u8>,
    written: usize,
    /// Is `lookups` watched for room?
    pub watched: bool,
}

/// Starts the resolver: fork and exec of our own binary, as a shard.
pub fn start(
    generation: u32,
    cfg: &ResolverConfig,
) -> io::Result<ResolverProc> {
    let child = start_self("resolver", cfg.to_args(), None)?;
    Ok(ResolverProc {
        generation,
        pid: child.pid,
        lookups: child.input,
        answers: child.output,
        decoder: FrameDecoder::new(MAX_ANSWER),
        out: Vec::new(),
        written: 0,
        watched: false,
    })
}

impl ResolverProc {
    /// Queues a lookup of `domain`.
    pub fn push(&mut self, domain: &[u8]) {
        lookup::encode_lookup(domain, &mut self.out);
    }

    /// Writes what the lookup pipe takes; true if nothing is left. An
    /// error (EPIPE: it is dying) drops what is queued: its answer pipe
    /// will say it is gone, and the core settles what waited.
    pub fn flush(&mut self) -> bool {
        while self.written < self.out.len() {
            match sys::write(self.lookups.as_fd(), &self.out[self.written..]) {
                // Full.
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(_) => self.written = self.out.len(),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            return true;
        }
        false
    }
}
