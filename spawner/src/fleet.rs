//! A shared key's standing in its fleet (issue 18), as the core keeps
//! it: the leases and rate tokens Redis gave this shard, the claim out,
//! and what bounds the key while Redis is away. Pure, like the core:
//! time comes in as arguments, claims go out as values.
//!
//! The rules (the README's "A fleet of relays" tells them to admins):
//!
//! - **Shared** (Redis answers): a delivery starts only while the key
//!   runs fewer than its leases ([`Leases::cap`]), and, for a key with a
//!   shared rate, with a token, one per start, on top of the local
//!   spacing. A key the fleet has not answered yet has no lease: what
//!   comes is held and a claim goes out at once.
//! - **Alone** (after `Report::Down`): for one lease time, the change
//!   over, a key runs at most the leases it held plus one batch (and at
//!   most its share): the leases other relays hold were counted with
//!   theirs, so the fleet stays within `limit + relays × batch`. After
//!   it, its share: `limit / relays` (at least 1), and `rate / relays`,
//!   spaced locally, no tokens.
//! - **Back** (`Report::Up`): a key with deliveries running or held
//!   claims at once, counting those running; until the fleet answers it
//!   keeps the cap it had alone. For one lease time after the return it
//!   runs at most that cap plus a batch, whatever the fleet gives: a
//!   relay that claims first may be given leases that another, not yet
//!   back, still runs alone (Redis came back empty, or the other's
//!   reconnect comes a second later). So the return, like the fall,
//!   keeps the fleet within `limit + relays × batch`; within a lease
//!   time every relay has claimed what it runs, and renewals have cut
//!   each to its part.
//!
//! Claims ([`Leases::look`]): one out at a time per key. More is asked
//! when more leases would start something held (or a rated key holds
//! deliveries and has no token): `want = running + held + batch` (at
//! most the limit), `tokens = held` (at most a batch). Leases are given
//! back promptly when other relays wait; else at most once a second,
//! past a batch ahead of need, or all of them when the key is idle.

use std::time::{Duration, Instant};

use shardspawn_common::fleet::{Claim, Grant};
use shardspawn_common::limits::{Allowance, Rate};

/// How soon a key asks again for what the fleet did not give: the
/// fleet is full, and only a holder's give-back or an expiry frees a
/// lease, which no report announces. Ten claims a second per starved
/// key costs Redis little and finds a freed lease within a tenth of a
/// second. A rate token is asked for again no sooner than the rate's
/// interval (a token comes back no faster fleet-wide).
pub const AGAIN: Duration = Duration::from_millis(100);

/// Leases beyond need are given back at most this often, unless other
/// relays wait for them: a key that comes and goes (one delivery at a
/// time) keeps its leases between deliveries rather than costing two
/// claims each.
pub const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);

/// The shard's standing in its fleet: the settings it was told and
/// whether Redis answers.
#[derive(Debug)]
pub struct Fleet {
    /// Relays in the fleet: alone, a key takes 1/relays of its limit.
    pub relays: u32,
    /// Leases and tokens taken ahead of need per key.
    pub batch: u32,
    /// A lease's life: the change-over lasts as long.
    pub lease: Duration,
    /// Whether Redis answers.
    pub mode: Mode,
    /// Back from alone: the return's cap holds until then.
    pub back_until: Option<Instant>,
    /// Commands sent to Redis since start, as the client counted them.
    pub commands: u64,
}

/// Whether Redis answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// It answers (or has not yet said it does not).
    Shared,
    /// It has not answered since `since_unix`, for `why`; keys are in
    /// their change-over until `until`.
    Alone {
        /// When it went away, Unix seconds.
        since_unix: u64,
        /// The end of the change-over.
        until: Instant,
        /// Why, in one line.
        why: String,
    },
}

/// A change of the fleet's mode, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetNote {
    /// Redis went away, for this reason; keys take 1/relays.
    Down {
        /// Why, in one line.
        why: String,
        /// Relays in the fleet.
        relays: u32,
    },
    /// Redis answers again.
    Up,
}

impl std::fmt::Display for FleetNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetNote::Down { why, relays } => write!(
                f,
                "Redis unreachable ({why}): shared keys fall back to \
                 1/{relays} of their limits"
            ),
            FleetNote::Up => f.write_str(
                "Redis answers again: shared keys are shared again",
            ),
        }
    }
}

/// What bounds a shared key's deliveries now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Its leases ([`Leases::allowed`]), and tokens for its rate.
    Leases,
    /// Its leases and tokens, but at most this many, in the lease time
    /// after Redis came back: the cap it had alone plus a batch.
    Return(u32),
    /// Back from alone, before the fleet's first answer: this cap, the
    /// one it had alone.
    Interim(u32),
    /// Alone, in the change-over: the leases it held plus a batch (at
    /// most its share).
    ChangeOver(u32),
    /// Alone: its share of the limit.
    Share,
}

/// One shared key's leases and tokens.
#[derive(Debug)]
pub struct Leases {
    /// Leases the fleet gave: deliveries this shard may run at once.
    pub allowed: u32,
    /// Rate tokens held: starts the shared rate allows now.
    pub tokens: u32,
    /// Leases the whole fleet held at the last answer.
    pub fleet: u32,
    /// Other holders that wanted more at the last answer.
    pub waiting: u32,
    /// A claim is out: no other goes until it is answered (or Redis
    /// goes away).
    pub in_flight: bool,
    /// What bounds the key now.
    pub gate: Gate,
    /// The `want` of the last claim: what Redis counts as wanted.
    wanted: u32,
    /// The last claim asked for tokens.
    asked_tokens: bool,
    /// What the key ran when its cap last fell below that: it runs no
    /// more than `max(cap, fell)` (it starts none while over its cap).
    fell: u32,
    /// When the last claim went.
    last_claim: Option<Instant>,
    /// No claim for more before then: the last one was not met.
    again: Option<Instant>,
    /// The wake-up last asked for, so one is not asked twice.
    wake: Option<Instant>,
    /// Waits to be looked at ([`crate::core::Core`]'s list).
    pub dirty: bool,
    relays: u32,
    batch: u32,
}

/// What [`Leases::look`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing now.
    Nothing,
    /// Send this claim.
    Claim(Claim),
    /// Look again then (a give-back or a claim is due).
    At(Instant),
}

/// A key's counts, as a claim needs them.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// Its deliveries running.
    pub running: u32,
    /// Its deliveries held.
    pub held: u32,
    /// Its limit in force here (adaptation, rules, pins): more leases
    /// than this would never be used.
    pub limit: u32,
    /// What the limits file gives it: the shared limit and rate.
    pub configured: Allowance,
}

/// `count / relays` of a rate, at least 1.
pub fn share_of_rate(rate: Rate, relays: u32) -> Rate {
    Rate { count: (rate.count / relays.max(1)).max(1), per: rate.per }
}

impl Leases {
    /// A shared key first seen, with the fleet in `fleet`'s mode at
    /// `now`, its configured limit `limit`: no lease yet.
    pub fn new(fleet: &Fleet, limit: u32, now: Instant) -> Leases {
        let share = (limit / fleet.relays.max(1)).max(1);
        let gate = match &fleet.mode {
            Mode::Shared if fleet.back_until.is_some_and(|t| now < t) => {
                Gate::Return(share.saturating_add(fleet.batch))
            }
            Mode::Shared => Gate::Leases,
            Mode::Alone { until, .. } if now < *until => {
                Gate::ChangeOver(fleet.batch)
            }
            Mode::Alone { .. } => Gate::Share,
        };
        Leases {
            allowed: 0,
            tokens: 0,
            fleet: 0,
            waiting: 0,
            in_flight: false,
            gate,
            wanted: 0,
            asked_tokens: false,
            fell: 0,
            last_claim: None,
            again: None,
            wake: None,
            dirty: false,
            relays: fleet.relays.max(1),
            batch: fleet.batch,
        }
    }

    /// Deliveries the fleet lets the key run here now, for a key whose
    /// configured (shared) limit is `limit`.
    pub fn cap(&self, limit: u32) -> u32 {
        let share = (limit / self.relays).max(1);
        match self.gate {
            Gate::Leases => self.allowed,
            Gate::Return(n) => self.allowed.min(n),
            Gate::Interim(n) => n,
            Gate::ChangeOver(n) => n.min(share),
            Gate::Share => share,
        }
    }

    /// The most the key may be running now: its cap, or what it ran
    /// when the cap fell below that (nothing starts until it is under).
    pub fn bound(&self, limit: u32) -> u32 {
        self.cap(limit).max(self.fell)
    }

    /// The rate a key alone keeps beside its own: its share of the
    /// shared rate. `None` while the fleet's tokens pace it.
    pub fn alone_rate(&self, configured: Option<Rate>) -> Option<Rate> {
        match self.gate {
            Gate::Leases | Gate::Return(_) => None,
            Gate::Interim(_) | Gate::ChangeOver(_) | Gate::Share => {
                configured.map(|r| share_of_rate(r, self.relays))
            }
        }
    }

    /// Whether a start may go, as far as tokens go, for a key that
    /// has a shared rate (`rated`).
    pub fn has_token(&self, rated: bool) -> bool {
        !(rated && self.paced()) || self.tokens > 0
    }

    /// A delivery of the key started: it took a token if it needed one.
    pub fn started(&mut self, rated: bool) {
        if rated && self.paced() {
            self.tokens = self.tokens.saturating_sub(1);
        }
    }

    /// Paced by the fleet's tokens (Redis answered this key), not by a
    /// share of the rate.
    fn paced(&self) -> bool {
        matches!(self.gate, Gate::Leases | Gate::Return(_))
    }

    /// Holds nothing in Redis and asks for nothing: the key may be
    /// forgotten.
    pub fn is_clear(&self) -> bool {
        self.allowed == 0
            && self.tokens == 0
            && self.wanted == 0
            && !self.in_flight
    }

    /// The cap may have changed: remember what ran if it is now over.
    pub fn cap_changed(&mut self, running: u32, limit: u32) {
        self.fell = if running > self.cap(limit) { running } else { 0 };
    }

    /// A wake-up at `at` is worth asking for (none asked for it yet).
    pub fn wake_at(&mut self, at: Instant) -> bool {
        if self.wake == Some(at) {
            return false;
        }
        self.wake = Some(at);
        true
    }

    /// Whether the key claims now, later, or not: see the module's
    /// rules. A claim made is in flight from now.
    pub fn look(&mut self, key: &[u8], n: Need, now: Instant) -> Look {
        match self.gate {
            Gate::Leases | Gate::Return(_) | Gate::Interim(_) => {}
            // Alone: nobody to ask.
            Gate::ChangeOver(_) | Gate::Share => return Look::Nothing,
        }
        if self.in_flight {
            return Look::Nothing;
        }
        let (allowed, ceiling) = match self.gate {
            Gate::Leases => (self.allowed, n.limit),
            // More leases than the return's cap would not be used.
            Gate::Return(cap) => (self.allowed, n.limit.min(cap)),
            Gate::Interim(_) | Gate::ChangeOver(_) | Gate::Share => {
                (0, n.limit)
            }
        };
        let rated = n.configured.rate.is_some();
        let used = n.running.saturating_add(n.held);
        let ahead = used.saturating_add(self.batch).min(n.limit);
        let more = used > allowed && allowed < ceiling;
        let token = rated && n.held > 0 && self.tokens == 0;
        if more || token {
            if let Some(at) = self.again.filter(|&at| at > now) {
                return Look::At(at);
            }
            let tokens = match rated {
                true => n.held.saturating_sub(self.tokens).min(self.batch),
                false => 0,
            };
            return Look::Claim(self.claim(key, n, ahead, tokens, now));
        }
        let holding = allowed.max(self.wanted);
        if self.waiting > 0 && holding > used {
            // Others wait: what is not used goes back now.
            return Look::Claim(self.claim(key, n, used.min(n.limit), 0, now));
        }
        let idle = used == 0;
        let spare = holding > used.saturating_add(self.batch);
        if (idle && (holding > 0 || self.tokens > 0)) || spare {
            let at = self.last_claim.map_or(now, |t| t + GIVE_BACK_EVERY);
            if at > now {
                return Look::At(at);
            }
            let want = if idle { 0 } else { ahead };
            return Look::Claim(self.claim(key, n, want, 0, now));
        }
        Look::Nothing
    }

    /// The claim of `want` leases and `tokens` tokens, in flight from
    /// `now`; an idle key's tokens go back with it.
    fn claim(
        &mut self,
        key: &[u8],
        n: Need,
        want: u32,
        tokens: u32,
        now: Instant,
    ) -> Claim {
        let unused = if want == 0 && n.running == 0 {
            std::mem::take(&mut self.tokens)
        } else {
            0
        };
        self.in_flight = true;
        self.last_claim = Some(now);
        self.wanted = want;
        self.asked_tokens = tokens > 0;
        Claim {
            key: key.to_vec(),
            limit: n.configured.limit,
            running: n.running,
            want,
            rate: n.configured.rate,
            tokens,
            unused,
        }
    }

    /// Redis answered for the key (a claim's answer or a renewal's).
    /// What it was not given, it asks again for after [`AGAIN`] (or
    /// the rate's `interval` for tokens). `returning`: within the lease
    /// time after Redis came back, when the return's cap holds.
    pub fn granted(
        &mut self,
        g: &Grant,
        running: u32,
        configured: Allowance,
        returning: bool,
        now: Instant,
    ) {
        if self.in_flight {
            let no_tokens = self.asked_tokens && g.tokens == 0;
            if no_tokens || g.allowed < self.wanted {
                let interval = configured.rate.map(Rate::interval);
                let wait = match no_tokens {
                    true => interval.map_or(AGAIN, |t| t.max(AGAIN)),
                    false => AGAIN,
                };
                self.again = Some(now + wait);
            }
        }
        self.in_flight = false;
        self.asked_tokens = false;
        self.gate = match self.gate {
            Gate::Interim(n) if returning => {
                Gate::Return(n.saturating_add(self.batch))
            }
            Gate::Return(n) if returning => Gate::Return(n),
            _ => Gate::Leases,
        };
        self.allowed = g.allowed;
        self.fleet = g.fleet;
        self.waiting = g.waiting;
        self.tokens = self.tokens.saturating_add(g.tokens);
        self.cap_changed(running, configured.limit);
    }

    /// Redis went away: the change-over cap is the leases held plus a
    /// batch; what Redis held for the key is let go (it expires there).
    pub fn down(&mut self, running: u32, limit: u32) {
        self.gate = match self.gate {
            Gate::Leases | Gate::Return(_) => {
                Gate::ChangeOver(self.cap(limit).saturating_add(self.batch))
            }
            Gate::Interim(n) | Gate::ChangeOver(n) => Gate::ChangeOver(n),
            Gate::Share => Gate::Share,
        };
        self.allowed = 0;
        self.tokens = 0;
        self.fleet = 0;
        self.waiting = 0;
        self.in_flight = false;
        self.wanted = 0;
        self.asked_tokens = false;
        self.again = None;
        self.cap_changed(running, limit);
    }

    /// The change-over is over: the key takes its share.
    pub fn alone(&mut self, running: u32, limit: u32) {
        if let Gate::ChangeOver(_) = self.gate {
            self.gate = Gate::Share;
            self.cap_changed(running, limit);
        }
    }

    /// The return is over: the key runs what its leases allow.
    pub fn returned(&mut self, running: u32, limit: u32) {
        if let Gate::Return(_) = self.gate {
            self.gate = Gate::Leases;
            self.cap_changed(running, limit);
        }
    }

    /// Redis answers again: a key with deliveries running or held
    /// claims now and keeps its cap until the answer; one at rest waits
    /// for a need, with no lease (and the return's cap).
    pub fn up(&mut self, key: &[u8], n: Need, now: Instant) -> Option<Claim> {
        let used = n.running.saturating_add(n.held);
        let cap = self.cap(n.configured.limit);
        if used == 0 {
            self.gate = Gate::Return(cap.saturating_add(self.batch));
            self.cap_changed(n.running, n.configured.limit);
            return None;
        }
        self.gate = Gate::Interim(cap);
        let want = used.saturating_add(self.batch).min(n.limit);
        let tokens = match n.configured.rate {
            Some(_) => n.held.min(self.batch),
            None => 0,
        };
        Some(self.claim(key, n, want, tokens, now))
    }

    /// Panics if the key's standing breaks a rule: it runs more than
    /// its bound, or holds what its mode cannot have.
    pub fn check(&self, running: u32, limit: u32, alone: bool) {
        assert!(
            running <= self.bound(limit),
            "a shared key runs {running}, above its bound {}",
            self.bound(limit)
        );
        match self.gate {
            Gate::Leases | Gate::Return(_) | Gate::Interim(_) => {
                assert!(!alone, "a key alone bounded by leases")
            }
            Gate::ChangeOver(_) | Gate::Share => {
                assert!(alone, "a key in Redis bounded as alone");
                assert!(!self.in_flight, "a claim out while alone");
            }
        }
        assert!(
            self.tokens == 0 || self.paced(),
            "tokens held while not paced by them"
        );
    }
}
