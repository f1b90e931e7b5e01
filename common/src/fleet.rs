//! What a shard and its fleet client say to each other (issue 18): the
//! client is a thread beside the shard's loop that keeps the shard's
//! shared keys in Redis, so that a fleet of relays shares one limit and
//! one rate per key. The shard's core decides what it needs
//! ([`Claim`]); the client asks Redis, in batches, and answers
//! ([`Report`]). Neither waits for the other.
//!
//! A key's **leases** are how many of its deliveries the fleet lets
//! this shard run at once; each holder's leases carry one expiry, which
//! the client renews, so a relay that dies gives its leases back within
//! the lease time. A key's **tokens** are starts its shared rate allows
//! now, taken from a GCRA kept on the server.

use crate::limits::Rate;

/// What a shard needs of one shared key now. Counts are absolute, not
/// increments: a claim sent twice, or after Redis lost everything,
/// records the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The key as the shard counts it (a domain, `=group`, `@site`).
    pub key: Vec<u8>,
    /// The key's shared limit: its configured limit, the same on every
    /// relay that reads the same rules.
    pub limit: u32,
    /// Deliveries of the key running here now: leases the shard holds
    /// whatever the fleet says (they started; they are counted).
    pub running: u32,
    /// Leases the shard would hold: `running`, what waits, and a batch
    /// ahead of need, at most `limit`. 0 with `running` 0: give all back.
    pub want: u32,
    /// The key's shared rate, if it has one.
    pub rate: Option<Rate>,
    /// Rate tokens wanted now (0: none).
    pub tokens: u32,
    /// Rate tokens taken before and not used: given back.
    pub unused: u32,
}

/// What the fleet gave one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The key, as claimed.
    pub key: Vec<u8>,
    /// How many of the key's deliveries this shard may run at once now.
    /// At most `want`; below `running` when others wait and this shard
    /// holds more than its fair share (it starts none until it is under).
    pub allowed: u32,
    /// Leases the whole fleet holds for the key now, this shard's
    /// included.
    pub fleet: u32,
    /// Other holders that want more than they hold: give back promptly.
    pub waiting: u32,
    /// Rate tokens granted: starts this shard may make now.
    pub tokens: u32,
}

/// What the fleet client tells the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Answers to claims.
    Granted(Vec<Grant>),
    /// Redis cannot be reached (or answered with an error): why, in
    /// one line. Claims sent meanwhile are dropped; the shard is alone
    /// until [`Report::Up`].
    Down(String),
    /// Redis answers again.
    Up,
}
