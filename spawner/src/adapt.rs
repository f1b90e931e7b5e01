//! How one key's limit moves: the adaptation of issue 7, as a small pure
//! type. [`Adaptation`] owns a key's configured allowance, the limit
//! adaptation has learned, the caps response rules set for a time, and
//! the key's suspension; its methods take the moment and a verdict and
//! say what changed and why.
//!
//! It never reads a clock, holds a delivery, or touches another key:
//! the [`Core`](crate::core::Core) owns the FIFOs, the running counts
//! and the wake-ups, and carries out what a [`Learned`] asks (log a
//! change, suspend the key, look at it again at a moment).
//!
//! The rules, as the README states them:
//!
//! - What the receiver takes is proven by good deliveries: one (`K`)
//!   that started beside k others of its key, since the last lowering,
//!   proves the receiver took k + 1 of ours at once. A key's limit never
//!   goes more than one above what is proven (its initial limit needs no
//!   proof), so it runs at most one delivery more than the receiver was
//!   seen to take: against a receiver that takes M, one delivery is
//!   refused, not a round of them.
//! - A good delivery ends a run of failures. If the key was saturated
//!   (at its limit, or with deliveries held), it counts toward a raise:
//!   while climbing (in slow start, before any pushback, and again once
//!   a full receiver's quiet time is over) each one raises the limit by
//!   one, as far as the proof allows, so one more a round; after other
//!   pushback, `limit × 2^p` of them do, where p is the number of raises
//!   in a row that pushback undid (at most [`PROBES_MAX`]), so a limit
//!   that found the site's ceiling probes above it less and less often.
//!   A raise that a delivery at the new limit proves good ends that
//!   count (p = 0).
//! - Site-level pushback lowers the limit by one (not below 1), once per
//!   epoch: deliveries started before the last lowering are already
//!   accounted for. It also counts toward suspension.
//! - But when the receiver itself says it has too many of our
//!   connections ([`hear`]: a 421 at the greeting, or an `adapt` rule
//!   about "too many"), its refusal tells its number: the n others of
//!   the key still running when the refusal came (a refusal at the
//!   greeting comes at once, so they are what the receiver had of ours).
//!   The limit goes straight to n (at least 1; for a delivery started
//!   in the current epoch, at least one step down). A later refusal of
//!   a burst, from a delivery started before that lowering, lowers it
//!   only to a smaller n of its own, never a further step: refusals of
//!   one burst come back in any order. Then nothing raises the limit for
//!   [`QUIET`] (doubled for each probe the receiver refused in a row
//!   before, at most [`QUIET_MAX`]): a time, not a count of deliveries,
//!   so a busy key does not probe a strict receiver more often than an
//!   idle one. A failed connect says no number (nothing may have
//!   answered at all): it is one step, as any other pushback.
//! - A rule's action caps the limit or the rate, or suspends the key,
//!   for the rule's duration; when it ends, the key has again what
//!   adaptation learned meanwhile.
//! - Anything else (a recipient's 4xx, a DNS failure) is neutral.
//!
//! A key forgotten while idle (past the keys a shard remembers) forgets
//! its quiet time too: it starts again at the initial limit, and a
//! strict receiver costs it one more refusal.

use std::fmt;
use std::time::{Duration, Instant};

use shardspawn_common::limits::{Allowance, Rate};
use shardspawn_common::response::{
    self, Action, ResponseRule, Responses, Verdict,
};

/// How keys adapt: the settings of issue 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The effective limit a key starts at; 0: no adaptation (the
    /// effective limit is the configured one, but for rules).
    pub initial: u32,
    /// Site-level failures in a row that suspend a key; 0: never.
    pub suspend_after: u32,
    /// How long such a suspension lasts.
    pub suspend_for: Duration,
}

impl Policy {
    /// Configured limits as they are, no suspension: shardspawn before
    /// issue 7.
    pub const STATIC: Policy = Policy {
        initial: 0,
        suspend_after: 0,
        suspend_for: shardspawn_common::settings::DEFAULT_SUSPEND,
    };

    fn adapts(&self) -> bool {
        self.initial > 0
    }
}

/// The most failed probes in a row that make the next raise slower:
/// after p of them a raise takes `limit × 2^p` good deliveries.
pub const PROBES_MAX: u32 = 6;

/// How long a receiver that said it was full (see [`hear`]) is left at
/// the number it had of ours before a probe above it. A probe refused
/// costs one deferral, which qmail-send retries (about 400 s later for a
/// fresh message), and a receiver's own connection limit is its
/// configuration, which changes seldom: probing it every 10 minutes
/// costs a key at most 6 deferrals an hour, and finds a ceiling that
/// rose within 10 minutes. Each probe it refuses in a row doubles the
/// wait, up to [`QUIET_MAX`].
pub const QUIET: Duration = Duration::from_secs(10 * 60);

/// The longest wait for the next probe of a receiver that keeps saying
/// it is full: [`QUIET`] doubled four times, 2 h 40 min, so a strict
/// receiver costs a key about 9 deferrals a day, and one whose ceiling
/// rose is still found within hours, not days.
pub const QUIET_MAX: Duration = Duration::from_secs(160 * 60);

/// Why a key's limit last changed. A raise in slow start happens on
/// every good delivery at the limit, so it is recorded without a string
/// and without a log line; so is the end of a rule or suspension, the
/// last change of every key that recovered, which the idle keys a shard
/// remembers would each otherwise hold as a line (issue 15); every
/// other change is rare and says itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Why {
    /// Raised by one in slow start.
    SlowStart,
    /// A rule's cap or a suspension ended.
    Ended(Ended),
    /// A change as a log line says it.
    Said(String),
}

/// What ended at [`Adaptation::refresh`], and the limit and rate it
/// left: the numbers of its log line, which `Display` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    limit: bool,
    rate: bool,
    suspension: bool,
    /// A pin given by hand (`shardspawn control pin`) ended.
    pin: bool,
    before: u32,
    after: u32,
    rate_after: Option<Rate>,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ended = [
            (self.limit, "the rule's limit ended"),
            (self.rate, "the rule's rate ended"),
            (self.suspension, "the suspension ended"),
            (self.pin, "the pin by hand ended"),
        ];
        let mut first = true;
        for (_, what) in ended.iter().filter(|(yes, _)| *yes) {
            f.write_str(if first { "" } else { ", " })?;
            f.write_str(what)?;
            first = false;
        }
        write!(
            f,
            "; effective limit {} -> {}, rate ",
            self.before, self.after
        )?;
        match self.rate_after {
            Some(rate) => write!(f, "{rate}"),
            None => f.write_str("none"),
        }
    }
}

/// A delivery whose result came, as its key saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ran {
    /// The key's epoch when it started: pushback from a delivery started
    /// before the last lowering is not counted again, and a good result
    /// of one proves nothing.
    pub epoch: u32,
    /// Others of the key running when it started: a good result says the
    /// receiver took them and this one at once.
    pub beside: u32,
    /// Others of the key still running when the result came: what a
    /// receiver that refused it for having too many of ours had of them.
    pub others: u32,
    /// The key was running at its limit, or had deliveries held, when the
    /// result came: only then does a good result say the limit itself
    /// was fine.
    pub saturated: bool,
}

/// What one result taught, for the core to carry out.
#[must_use]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// The limit, rate or state changed: record it (and log it, unless
    /// it is a raise in slow start).
    pub change: Option<Why>,
    /// Suspend the key until then, for this reason.
    pub suspend: Option<(Instant, String)>,
    /// A rule's cap ends then: look at the key again.
    pub wake: Option<Instant>,
}

/// A result as adaptation hears it: the verdict of the response rules,
/// and whether the receiver said it has too many of our connections.
#[derive(Debug, PartialEq, Eq)]
pub struct Heard<'a> {
    /// What [`response::judge`] says of it.
    pub verdict: Verdict<'a>,
    /// Site-level pushback in the receiver's own words that it is full:
    /// the others of the key still running when it came are its number.
    pub full: bool,
}

/// Hears a result body (letter and text) from a qmail-remote that ran.
/// It is pushback that says the receiver is full when the rule that
/// made it pushback is an `adapt` rule whose pattern says "too many"
/// (the built-in "too many connections", "too many concurrent", "too
/// many simultaneous", or a file's own), or when qmail-remote connected
/// and the greeting was a 421 (what a receiver answers a connection it
/// will not serve now). "Wasn't able to establish an SMTP connection"
/// is never full: a dead host, a filter, a timeout say no number.
pub fn hear<'a>(responses: &'a Responses, body: &[u8]) -> Heard<'a> {
    let verdict = response::judge(responses, body);
    let full = matches!(verdict, Verdict::Pushback(_))
        && says_full(responses, body.get(1..).unwrap_or_default());
    Heard { verdict, full }
}

fn says_full(responses: &Responses, text: &[u8]) -> bool {
    let lower = text.to_ascii_lowercase();
    let too_many = |rule: &ResponseRule| {
        rule.action == Action::Adapt
            && rule.pattern.to_ascii_lowercase().contains("too many")
    };
    if responses.find(&lower).is_some_and(too_many) {
        return true;
    }
    find(&lower, b"but greeting failed").is_some_and(|at| {
        let after = &lower[at..];
        find(after, b"remote host said: 421").is_some()
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A cap set by a response rule, until a moment.
#[derive(Clone, Copy, Debug)]
struct Timed<T> {
    value: T,
    until: Instant,
}

/// A key refused until a moment.
#[derive(Debug)]
pub struct Suspension {
    /// When it ends.
    pub until: Instant,
    /// `until` as Unix seconds, for texts.
    pub until_unix: u64,
    /// Why, as the refusal says it.
    pub why: String,
}

/// One key's limit, rate and suspension, and what adaptation keeps to
/// move them.
#[derive(Debug)]
pub struct Adaptation {
    /// What the limits file gives it (its limit at least 1).
    configured: Allowance,
    /// The limit adaptation arrived at, `1..=configured.limit`.
    adaptive: u32,
    /// Each good delivery at the limit raises it by one, up to one above
    /// `proven`: in slow start (until the first pushback), and once a
    /// full receiver's quiet time is over. Otherwise (after other
    /// pushback) a raise takes `limit × 2^probes_failed` of them.
    climbing: bool,
    /// The most of ours the receiver was seen to take at once since the
    /// last lowering: a good delivery started in this epoch beside k
    /// others of the key proves k + 1.
    proven: u32,
    /// A receiver said it was full: no raise before then.
    quiet_until: Option<Instant>,
    /// Good deliveries at the limit since the last change.
    streak: u32,
    /// Raises that were followed by pushback, in a row.
    probes_failed: u32,
    /// The last change of `adaptive` was a raise.
    last_was_raise: bool,
    /// Bumped at each lowering.
    epoch: u32,
    /// Site-level failures in a row.
    failures: u32,
    rule_limit: Option<Timed<u32>>,
    rule_rate: Option<Timed<Rate>>,
    suspended: Option<Suspension>,
    /// Pins given by hand: the limit and the rate in force, whatever
    /// adaptation, the limits file and rules say, until they end.
    pin_limit: Option<Timed<u32>>,
    pin_rate: Option<Timed<Rate>>,
    /// Back from a suspension: starts spaced by this rate for a while
    /// (see [`ramp`]).
    ramp: Option<Timed<Rate>>,
}

/// How long a key back from a suspension has its starts spread.
pub const RAMP: Duration = Duration::from_secs(60);

/// The rate that spreads the starts of a key back from a suspension
/// whose configured limit is `limit`: its limit (at least 10) per
/// 10 seconds, so a key of limit 20 fills its limit over 10 s rather
/// than in one burst, and one of limit 1 starts at most one a second.
pub fn ramp(limit: u32) -> Rate {
    let per_10s = limit.clamp(10, 10_000);
    Rate { count: per_10s * 6, per: shardspawn_common::limits::Per::Minute }
}

impl Adaptation {
    /// A key first seen: its configured allowance, and the initial limit
    /// if `policy` adapts.
    pub fn new(configured: Allowance, policy: &Policy) -> Adaptation {
        let configured = floor(configured);
        Adaptation {
            configured,
            adaptive: match policy.initial {
                0 => configured.limit,
                n => n.min(configured.limit),
            },
            climbing: true,
            proven: 0,
            quiet_until: None,
            streak: 0,
            probes_failed: 0,
            last_was_raise: false,
            epoch: 0,
            failures: 0,
            rule_limit: None,
            rule_rate: None,
            suspended: None,
            pin_limit: None,
            pin_rate: None,
            ramp: None,
        }
    }

    /// New limits: the configured allowance changes now, and an
    /// effective limit above a lowered one comes down to it.
    pub fn configure(&mut self, configured: Allowance, policy: &Policy) {
        self.configured = floor(configured);
        self.adaptive = if policy.adapts() {
            self.adaptive.min(self.configured.limit)
        } else {
            self.configured.limit
        };
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        if let Some(pin) = self.pin_limit {
            return pin.value.max(1);
        }
        let rule = self.rule_limit.map_or(u32::MAX, |t| t.value);
        self.adaptive.min(rule).min(self.configured.limit).max(1)
    }

    /// The rate in force, if any.
    pub fn rate(&self) -> Option<Rate> {
        if let Some(pin) = self.pin_rate {
            return Some(pin.value);
        }
        let both = |a: Option<Rate>, b: Option<Rate>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rate = both(self.configured.rate, self.rule_rate.map(|t| t.value));
        both(rate, self.ramp.map(|t| t.value))
    }

    /// What the limits file gives the key.
    pub fn configured(&self) -> Allowance {
        self.configured
    }

    /// The limit adaptation arrived at, before any rule's cap.
    pub fn adaptive(&self) -> u32 {
        self.adaptive
    }

    /// Bumped at each lowering: a delivery remembers it at its start.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Site-level failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The key's suspension, while it lasts.
    pub fn suspension(&self) -> Option<&Suspension> {
        self.suspended.as_ref()
    }

    /// A rule's cap or a suspension is in force: the key must not be
    /// forgotten, or it would end early.
    pub fn is_timed(&self) -> bool {
        self.suspended.is_some()
            || self.rule_limit.is_some()
            || self.rule_rate.is_some()
            || self.pin_limit.is_some()
            || self.pin_rate.is_some()
    }

    /// Suspends the key by hand: this suspension replaces any in force,
    /// longer or not (the admin's word is the last).
    pub fn suspend_by_hand(
        &mut self,
        until: Instant,
        until_unix: u64,
        why: String,
    ) {
        self.suspended = Some(Suspension { until, until_unix, why });
    }

    /// Cancels the key's suspension, if any, at `now`: it starts again
    /// as when a suspension ends. Whether there was one.
    pub fn resume(&mut self, now: Instant, policy: &Policy) -> bool {
        if self.suspended.take().is_none() {
            return false;
        }
        self.restart(now, policy);
        true
    }

    /// Lifts both pins; whether there was one.
    pub fn unpin(&mut self) -> bool {
        let had = self.pin_limit.is_some() || self.pin_rate.is_some();
        self.pin_limit = None;
        self.pin_rate = None;
        had
    }

    /// Pins the limit (or, `None`, unpins it).
    pub fn pin_limit(&mut self, pin: Option<(u32, Instant)>) {
        self.pin_limit = pin.map(|(value, until)| Timed { value, until });
    }

    /// Pins the rate (or, `None`, unpins it).
    pub fn pin_rate(&mut self, pin: Option<(Rate, Instant)>) {
        self.pin_rate = pin.map(|(value, until)| Timed { value, until });
    }

    /// A key back from a suspension: no failures, slow start from 1 if
    /// the key adapts, and its starts spread for [`RAMP`].
    fn restart(&mut self, now: Instant, policy: &Policy) {
        self.failures = 0;
        if policy.adapts() {
            self.adaptive = 1;
            self.climbing = true;
            self.proven = 0;
            self.quiet_until = None;
            self.streak = 0;
            self.probes_failed = 0;
            self.last_was_raise = false;
            self.epoch = self.epoch.wrapping_add(1);
        }
        let value = ramp(self.configured.limit);
        self.ramp = Some(Timed { value, until: now + RAMP });
    }

    /// What the result of a delivery that `ran` teaches.
    pub fn learn(
        &mut self,
        heard: Heard<'_>,
        ran: Ran,
        now: Instant,
        policy: &Policy,
    ) -> Learned {
        let before = self.limit();
        let full = heard.full;
        let mut learned = match heard.verdict {
            Verdict::Neutral => Learned::default(),
            Verdict::Good => self.good(ran, now, policy),
            Verdict::Pushback(why) => {
                let took = full.then_some(ran.others);
                self.pushback(&why, took, ran.epoch, now, policy)
            }
            Verdict::Rule(rule) => self.rule(rule, now),
        };
        if let Some(Why::Said(why)) = &mut learned.change {
            let after = self.limit();
            if after != before {
                *why = format!("effective limit {before} -> {after}: {why}");
            }
        }
        learned
    }

    /// A good delivery: the failures end, what it ran beside is proven,
    /// and at the limit it counts toward a raise.
    fn good(&mut self, ran: Ran, now: Instant, policy: &Policy) -> Learned {
        self.failures = 0;
        if !policy.adapts() {
            return Learned::default();
        }
        // Started before the last lowering, it proves nothing: the
        // receiver refused one of ours since.
        if ran.epoch == self.epoch {
            let took = ran.beside.saturating_add(1);
            self.proven = self.proven.max(took);
            if took >= self.adaptive && self.last_was_raise {
                // It ran at the raised limit: the probe held.
                self.probes_failed = 0;
            }
        }
        if !ran.saturated
            || self.adaptive >= self.configured.limit
            || self.quiet_until.is_some_and(|t| now < t)
        {
            return Learned::default();
        }
        let need = if self.climbing {
            1
        } else {
            self.adaptive.saturating_mul(1 << self.probes_failed)
        };
        self.streak = self.streak.saturating_add(1);
        // Never more than one above what the receiver was seen to take.
        if self.streak < need || self.adaptive > self.proven {
            return Learned::default();
        }
        self.adaptive += 1;
        self.streak = 0;
        self.last_was_raise = true;
        let why = match (self.climbing, self.quiet_until.take()) {
            (true, None) => Why::SlowStart,
            (true, Some(_)) => {
                Why::Said("a probe, the receiver's quiet time over".into())
            }
            (false, _) => {
                Why::Said(format!("{need} good deliveries at the limit"))
            }
        };
        Learned { change: Some(why), ..Learned::default() }
    }

    /// Site-level pushback: one step down once per epoch, or straight
    /// to the number a receiver that said it was full `took`, and then
    /// a quiet time; and one more failure in a row toward suspension.
    fn pushback(
        &mut self,
        why: &str,
        took: Option<u32>,
        epoch: u32,
        now: Instant,
        policy: &Policy,
    ) -> Learned {
        let mut learned = Learned::default();
        self.failures = self.failures.saturating_add(1);
        self.streak = 0;
        if policy.adapts() {
            let current = epoch == self.epoch;
            let refused = self.probes_failed;
            let step = self.adaptive.saturating_sub(1).max(1);
            let to = match (took, current) {
                (Some(n), true) => n.clamp(1, step),
                // Started before the last lowering: one of a burst
                // already answered for, which lowers no further step,
                // but its own number may be smaller.
                (Some(n), false) => n.max(1),
                (None, true) => step,
                (None, false) => self.adaptive,
            };
            if to < self.adaptive {
                if self.last_was_raise {
                    self.probes_failed =
                        (self.probes_failed + 1).min(PROBES_MAX);
                }
                self.adaptive = to;
                self.proven = self.proven.min(to);
                self.epoch = self.epoch.wrapping_add(1);
                self.last_was_raise = false;
                let line = match took {
                    Some(n) => format!(
                        "site-level failure: {why} with {n} others running"
                    ),
                    None => format!("site-level failure: {why}"),
                };
                learned.change = Some(Why::Said(line));
            }
            match (took, current) {
                // It told its number: climb from there, but not before
                // its quiet time is over. The rest of a burst came back
                // from what that time already answers for.
                (Some(_), true) => {
                    self.climbing = true;
                    let until = now + quiet(refused);
                    self.quiet_until = self.quiet_until.max(Some(until));
                }
                (Some(_), false) => {}
                (None, _) => self.climbing = false,
            }
        }
        let n = self.failures;
        // Deliveries that were running when the key was suspended end as
        // they end; their failures do not extend it.
        if policy.suspend_after > 0
            && n >= policy.suspend_after
            && self.suspended.is_none()
        {
            learned.suspend = Some((
                now + policy.suspend_for,
                format!("{n} site-level failures in a row"),
            ));
        }
        learned
    }

    /// A rule with a timed action matched: cap the limit or the rate, or
    /// ask for a suspension, until the rule's time ends.
    fn rule(&mut self, rule: &ResponseRule, now: Instant) -> Learned {
        let why = format!("{} matched \"{}\"", rule.origin, rule.pattern);
        let until = now + rule.duration;
        let secs = rule.duration.as_secs();
        let mut learned = Learned { wake: Some(until), ..Learned::default() };
        match rule.action {
            Action::Limit(n) => {
                self.rule_limit = Some(Timed { value: n, until });
                let line = format!("limit {n} for {secs}s: {why}");
                learned.change = Some(Why::Said(line));
            }
            Action::Rate(r) => {
                self.rule_rate = Some(Timed { value: r, until });
                let line = format!("rate {r} for {secs}s: {why}");
                learned.change = Some(Why::Said(line));
            }
            Action::Suspend => learned.suspend = Some((until, why)),
            // Never a timed verdict: `judge` turns them into pushback
            // and neutral.
            Action::Adapt | Action::Ignore => {}
        }
        learned
    }

    /// Suspends the key until `until` (`until_unix` in Unix seconds),
    /// unless a suspension that lasts as long is in force already.
    /// Whether it did.
    pub fn suspend(
        &mut self,
        until: Instant,
        until_unix: u64,
        why: String,
    ) -> bool {
        if self.suspended.as_ref().is_some_and(|s| s.until >= until) {
            return false;
        }
        self.suspended = Some(Suspension { until, until_unix, why });
        true
    }

    /// Ends what has ended at `now`: a rule's cap, a suspension. A key
    /// back from suspension starts again at 1, in slow start. What
    /// ended, if anything did.
    pub fn refresh(&mut self, now: Instant, policy: &Policy) -> Option<Ended> {
        let before = self.limit();
        let limit = self.rule_limit.is_some_and(|t| t.until <= now);
        if limit {
            self.rule_limit = None;
        }
        let rate = self.rule_rate.is_some_and(|t| t.until <= now);
        if rate {
            self.rule_rate = None;
        }
        let pin = self.pin_limit.is_some_and(|t| t.until <= now)
            || self.pin_rate.is_some_and(|t| t.until <= now);
        if pin {
            self.pin_limit = self.pin_limit.filter(|t| t.until > now);
            self.pin_rate = self.pin_rate.filter(|t| t.until > now);
        }
        if self.ramp.is_some_and(|t| t.until <= now) {
            // Quietly: it only ever spread starts.
            self.ramp = None;
        }
        let suspension =
            self.suspended.as_ref().is_some_and(|s| s.until <= now);
        if suspension {
            self.suspended = None;
            self.restart(now, policy);
        }
        (limit || rate || suspension || pin).then(|| Ended {
            limit,
            rate,
            suspension,
            pin,
            before,
            after: self.limit(),
            rate_after: self.rate(),
        })
    }
}

/// How long a receiver that said it was full is left at what it had of
/// ours, when it had `refused` probes in a row before: [`QUIET`] doubled
/// for each, at most [`QUIET_MAX`].
fn quiet(refused: u32) -> Duration {
    QUIET.saturating_mul(1 << refused.min(16)).min(QUIET_MAX)
}

/// A configured limit of 0 would stop the key for good: it is 1.
fn floor(configured: Allowance) -> Allowance {
    Allowance { limit: configured.limit.max(1), ..configured }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardspawn_common::response::Responses;

    /// Initial 5, suspension after 4 failures for 60 s.
    const POLICY: Policy = Policy {
        initial: 5,
        suspend_after: 4,
        suspend_for: Duration::from_secs(60),
    };

    fn key(limit: u32) -> Adaptation {
        Adaptation::new(limit.into(), &POLICY)
    }

    /// A verdict that says no number.
    fn plain(verdict: Verdict<'_>) -> Heard<'_> {
        Heard { verdict, full: false }
    }

    /// A delivery started in `epoch` beside `beside` others, whose
    /// result came with `others` still running, the key saturated.
    fn ran(epoch: u32, beside: u32, others: u32) -> Ran {
        Ran { epoch, beside, others, saturated: true }
    }

    /// A delivery that ran at the key's limit, in its current epoch.
    fn at_limit(a: &Adaptation) -> Ran {
        ran(a.epoch(), a.adaptive() - 1, 0)
    }

    fn push(a: &mut Adaptation, now: Instant) -> Learned {
        let verdict = Verdict::Pushback("greeting failed".into());
        a.learn(plain(verdict), ran(a.epoch(), 0, 0), now, &POLICY)
    }

    /// A good delivery that ran at the limit.
    fn good(a: &mut Adaptation, now: Instant) -> Learned {
        a.learn(plain(Verdict::Good), at_limit(a), now, &POLICY)
    }

    /// Good deliveries at the limit until the next raise; how many.
    fn raise(a: &mut Adaptation, now: Instant) -> u32 {
        let limit = a.limit();
        let mut n = 0;
        while a.limit() == limit {
            n += 1;
            let _ = good(a, now);
            assert!(n <= 1 << 20, "never raised");
        }
        n
    }

    #[test]
    fn slow_start_raises_by_one_per_good_delivery_at_the_limit() {
        let now = Instant::now();
        let mut a = key(20);
        assert_eq!(a.limit(), 5);
        assert_eq!(good(&mut a, now).change, Some(Why::SlowStart));
        assert_eq!(a.limit(), 6);
        // Not at the limit, nothing waiting: it says nothing of the limit.
        let idle = Ran { saturated: false, ..at_limit(&a) };
        let idle = a.learn(plain(Verdict::Good), idle, now, &POLICY);
        assert_eq!((idle, a.limit()), (Learned::default(), 6));
        // Never past the configured limit.
        for _ in 0..40 {
            let _ = good(&mut a, now);
        }
        assert_eq!(a.limit(), 20);
        // Without adaptation, the configured limit from the start.
        let fixed = Adaptation::new(20.into(), &Policy::STATIC);
        assert_eq!(fixed.limit(), 20);
    }

    #[test]
    fn the_first_pushback_lowers_by_one_and_ends_slow_start() {
        let now = Instant::now();
        let mut a = key(20);
        let learned = push(&mut a, now);
        let said = "effective limit 5 -> 4: site-level failure: greeting \
                    failed";
        assert_eq!(learned.change, Some(Why::Said(said.into())));
        assert_eq!((a.limit(), a.failures()), (4, 1));
        // Out of slow start: a raise now takes limit × 2^0 of them.
        assert_eq!(raise(&mut a, now), 4);
        assert_eq!(a.limit(), 5);
    }

    #[test]
    fn pushback_lowers_once_per_epoch() {
        let now = Instant::now();
        let mut a = key(20);
        let started = a.epoch();
        let _ = push(&mut a, now);
        // A delivery started before the lowering: counted, not lowered.
        let verdict = Verdict::Pushback("greeting failed".into());
        let late = a.learn(plain(verdict), ran(started, 0, 0), now, &POLICY);
        assert_eq!(late.change, None);
        assert_eq!((a.limit(), a.failures()), (4, 2));
        // One started since: lowers again.
        let _ = push(&mut a, now);
        assert_eq!(a.limit(), 3);
        // Never below 1.
        for _ in 0..10 {
            let _ = push(&mut a, now);
        }
        assert_eq!(a.limit(), 1);
    }

    /// Pushback at `now` from a receiver that said it was full, started
    /// in `epoch`, with `others` of the key still running.
    fn full_at(
        a: &mut Adaptation,
        epoch: u32,
        others: u32,
        now: Instant,
    ) -> Learned {
        let heard = Heard {
            verdict: Verdict::Pushback("too many".into()),
            full: true,
        };
        a.learn(heard, ran(epoch, others, others), now, &POLICY)
    }

    /// [`full_at`] any time.
    fn full(a: &mut Adaptation, epoch: u32, others: u32) -> Learned {
        full_at(a, epoch, others, Instant::now())
    }

    /// [`full_at`] from a delivery started in the current epoch.
    fn now_full(a: &mut Adaptation, others: u32, now: Instant) -> Learned {
        let epoch = a.epoch();
        full_at(a, epoch, others, now)
    }

    #[test]
    fn a_full_receiver_is_taken_at_its_number_once_per_burst() {
        let now = Instant::now();
        let mut a =
            Adaptation::new(50.into(), &Policy { initial: 50, ..POLICY });
        let burst = a.epoch();
        // Straight to what it had of ours, said with the number.
        let learned = full(&mut a, burst, 12);
        assert_eq!(
            learned.change,
            Some(Why::Said(
                "effective limit 50 -> 12: site-level failure: too many \
                 with 12 others running"
                    .into()
            ))
        );
        // The rest of the burst, in any order: down to a smaller number
        // of its own, never a step below what one of them said.
        assert_eq!(full(&mut a, burst, 14).change, None);
        assert_eq!(a.limit(), 12);
        let _ = full(&mut a, burst, 5);
        assert_eq!(a.limit(), 5);
        assert_eq!(full(&mut a, burst, 5).change, None);
        assert_eq!(full(&mut a, burst, 7).change, None);
        assert_eq!(a.limit(), 5);
        // Pushback that says no number, from the burst: nothing.
        let verdict = Verdict::Pushback("no SMTP connection".into());
        let late = a.learn(plain(verdict), ran(burst, 0, 0), now, &POLICY);
        assert_eq!((late.change, a.limit()), (None, 5));
        // Started since the last lowering: at least one step, even if it
        // ran beside as many as the limit.
        let _ = now_full(&mut a, 6, now);
        assert_eq!(a.limit(), 4);
        // Nothing else of ours running: 1, not 0.
        let _ = now_full(&mut a, 0, now);
        assert_eq!(a.limit(), 1);
        // Every refusal since the last good delivery, of the burst or
        // not, is one more failure in a row.
        assert_eq!(a.failures(), 8);
    }

    /// The results of one round at the limit, all good, in the order of
    /// `order` (the others each ran beside).
    fn round(a: &mut Adaptation, order: &[u32], now: Instant) -> Vec<u32> {
        let epoch = a.epoch();
        let mut limits = Vec::new();
        for &beside in order {
            let heard = plain(Verdict::Good);
            let _ = a.learn(heard, ran(epoch, beside, 0), now, &POLICY);
            limits.push(a.limit());
        }
        limits
    }

    /// Slow start raises one above what the receiver was seen to take,
    /// never more: the deliveries of a round that ran beside fewer say
    /// nothing new, so a round at the limit raises it by one, whatever
    /// order its results come in, and a receiver that takes 5 refuses
    /// one delivery of ours, not a round of them.
    #[test]
    fn slow_start_runs_at_most_one_above_what_was_proven() {
        let now = Instant::now();
        let mut a = key(50);
        // The initial limit needs no proof; one above it does.
        assert_eq!(round(&mut a, &[0, 1, 2, 3], now), [5, 5, 5, 5]);
        assert_eq!(round(&mut a, &[4], now), [6]);
        assert_eq!(round(&mut a, &[2, 4, 0, 3, 1], now), [6; 5]);
        // One that ran beside 5 proves 6, and the limit goes to 7.
        assert_eq!(
            round(&mut a, &[3, 5, 0, 4, 1, 2], now),
            [6, 7, 7, 7, 7, 7]
        );
        // A lowering: what ran before it proves nothing, however many
        // it ran beside.
        let _ = push(&mut a, now);
        assert_eq!(a.limit(), 6);
        let stale = ran(a.epoch() - 1, 6, 0);
        let _ = a.learn(plain(Verdict::Good), stale, now, &POLICY);
        let _ = a.learn(plain(Verdict::Good), stale, now, &POLICY);
        assert_eq!(a.limit(), 6);
    }

    /// A receiver that takes all: one more a round, from the initial 5
    /// to the configured 50 in 45 rounds, and never past it.
    #[test]
    fn a_roomy_receiver_is_climbed_one_a_round_to_the_configured_limit() {
        let now = Instant::now();
        let mut a = key(50);
        let mut rounds = 0;
        while a.limit() < 50 {
            let order: Vec<u32> = (0..a.limit()).rev().collect();
            let _ = round(&mut a, &order, now);
            rounds += 1;
            assert!(rounds <= 100, "stuck at {}", a.limit());
        }
        assert_eq!(rounds, 45);
        let order: Vec<u32> = (0..50).collect();
        assert_eq!(round(&mut a, &order, now), [50; 50]);
    }

    /// A receiver that said it was full: the limit is what it had of
    /// ours, and nothing raises it for [`QUIET`], however many good
    /// deliveries run at it; then one good delivery at the limit raises
    /// it, a probe, with a line that says so.
    #[test]
    fn after_a_full_receiver_the_probe_waits_its_time() {
        let t0 = Instant::now();
        let mut a = key(50);
        let _ = round(&mut a, &[0, 1, 2, 3, 4], t0);
        assert_eq!(a.limit(), 6);
        // The sixth refused, with the five others running.
        let _ = now_full(&mut a, 5, t0);
        assert_eq!(a.limit(), 5);
        let almost = t0 + QUIET - Duration::from_millis(1);
        for _ in 0..1000 {
            assert_eq!(good(&mut a, almost).change, None);
        }
        assert_eq!(a.limit(), 5);
        let learned = good(&mut a, t0 + QUIET);
        assert_eq!(
            learned.change,
            Some(Why::Said(
                "effective limit 5 -> 6: a probe, the receiver's quiet time \
                 over"
                    .into()
            ))
        );
        // The rest of a burst that came back later sets no new time.
        let mut b =
            Adaptation::new(50.into(), &Policy { initial: 50, ..POLICY });
        let burst = b.epoch();
        let _ = full_at(&mut b, burst, 7, t0);
        let _ = full_at(&mut b, burst, 5, t0 + QUIET - Duration::from_secs(1));
        assert_eq!(b.limit(), 5);
        let _ = good(&mut b, t0 + QUIET);
        assert_eq!(b.limit(), 6);
    }

    /// The time before the next probe, after a full receiver's refusal
    /// at `t`: the moment a good delivery at the limit first raises it,
    /// looked for at the waits it may be.
    fn wait_for_probe(a: &mut Adaptation, t: Instant) -> Duration {
        let limit = a.limit();
        let mut wait = QUIET / 2;
        while a.limit() == limit {
            wait *= 2;
            assert!(wait <= QUIET_MAX * 4, "never probed");
            let _ = good(a, t + wait - Duration::from_millis(1));
            if a.limit() == limit {
                let _ = good(a, t + wait);
            }
        }
        wait
    }

    /// Each probe the receiver refuses doubles the wait for the next, up
    /// to [`QUIET_MAX`]; a probe that holds (a good delivery at the
    /// raised limit) ends the doubling, and climbing goes on from there.
    #[test]
    fn refused_probes_double_the_quiet_time_and_one_that_holds_ends_it() {
        let mut t = Instant::now();
        let mut a = key(50);
        let _ = round(&mut a, &[0, 1, 2, 3, 4], t);
        let mut waits = Vec::new();
        for _ in 0..7 {
            // The probe at 6 refused, with 5 others running.
            let _ = now_full(&mut a, 5, t);
            assert_eq!(a.limit(), 5);
            let wait = wait_for_probe(&mut a, t);
            waits.push(wait.as_secs() / 60);
            t += wait;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 160, 160]);
        assert_eq!(QUIET_MAX.as_secs() / 60, 160);
        // The probe at 6 holds: one ran beside 5. Climbing goes on, one
        // a round: the next at 7.
        assert_eq!(round(&mut a, &[0, 5], t), [6, 7]);
        // Refused at 7: the wait is back at its start.
        let _ = now_full(&mut a, 6, t);
        assert_eq!(a.limit(), 6);
        assert_eq!(wait_for_probe(&mut a, t), QUIET);
    }

    #[test]
    fn a_failed_connect_is_one_step_even_with_nothing_running() {
        let now = Instant::now();
        let mut a = key(20);
        let verdict = Verdict::Pushback("no SMTP connection".into());
        let epoch = a.epoch();
        let _ = a.learn(plain(verdict), ran(epoch, 0, 0), now, &POLICY);
        assert_eq!(a.limit(), 4);
    }

    /// What says a receiver is full: a 421 at the greeting, or an
    /// `adapt` rule about "too many"; not a failed connect, another
    /// greeting failure, a 421 later on, or an `adapt` rule about
    /// something else.
    #[test]
    fn a_receiver_is_heard_full_by_its_own_words() {
        let rules =
            Responses::parse(b"adapt::too many sessions\nadapt::try later\n")
                .unwrap();
        let greeting = |said: &str| {
            format!(
                "ZConnected to 192.0.2.1 but greeting failed.\nRemote host \
                 said: {said}\n"
            )
        };
        let table = [
            (greeting("421 4.7.0 Too many concurrent connections"), true),
            (greeting("421 4.3.2 Service not available, closing"), true),
            (greeting("421 try later"), true),
            (greeting("554 5.7.1 go away"), false),
            (greeting("450 too busy"), false),
            (
                "ZSorry, I wasn't able to establish an SMTP connection. \
                 (#4.4.1)\n"
                    .into(),
                false,
            ),
            (
                "Z192.0.2.1 does not like recipient.\nRemote host said: 421 \
                 4.3.2 closing\n"
                    .into(),
                false,
            ),
            (
                "Z192.0.2.1 does not like recipient.\nRemote host said: 451 \
                 too many sessions from you\n"
                    .into(),
                true,
            ),
            (
                "Z192.0.2.1 does not like recipient.\nRemote host said: 451 \
                 try later\n"
                    .into(),
                false,
            ),
            (
                "Z192.0.2.1 failed after I sent the message.\nRemote host \
                 said: 451 Too many connections\n"
                    .into(),
                true,
            ),
            ("K192.0.2.1 accepted message.\n".into(), false),
            (String::new(), false),
        ];
        for (body, want) in table {
            let heard = hear(&rules, body.as_bytes());
            assert_eq!(heard.full, want, "{body}");
            // Full is always pushback.
            if heard.full {
                assert!(matches!(heard.verdict, Verdict::Pushback(_)));
            }
        }
    }

    #[test]
    fn failed_probes_double_the_wait_for_the_next_up_to_2_to_the_6() {
        let now = Instant::now();
        let mut a = key(100);
        let _ = push(&mut a, now);
        assert_eq!(raise(&mut a, now), 4);
        // Each probe to 5 is pushed back: the next takes twice as long.
        let mut waits = Vec::new();
        for _ in 0..8 {
            let _ = push(&mut a, now);
            assert_eq!(a.limit(), 4);
            waits.push(raise(&mut a, now));
        }
        assert_eq!(waits, [8, 16, 32, 64, 128, 256, 256, 256]);
        // A probe that holds is known as soon as a delivery ran at the
        // raised limit: the next raise is quick again.
        assert_eq!(raise(&mut a, now), 5);
        assert_eq!(raise(&mut a, now), 6);
    }

    #[test]
    fn failures_in_a_row_suspend_and_a_good_delivery_resets_them() {
        let now = Instant::now();
        let mut a = key(20);
        for _ in 0..3 {
            assert_eq!(push(&mut a, now).suspend, None);
        }
        let _ = good(&mut a, now);
        assert_eq!(a.failures(), 0);
        for _ in 0..3 {
            assert_eq!(push(&mut a, now).suspend, None);
        }
        let until = now + Duration::from_secs(60);
        let why = "4 site-level failures in a row".to_owned();
        assert_eq!(push(&mut a, now).suspend, Some((until, why.clone())));
        assert!(a.suspend(until, 60, why.clone()));
        assert!(!a.suspend(until, 60, why), "already until then");
        // Failures of deliveries still running do not extend it.
        assert_eq!(push(&mut a, now).suspend, None);
        assert_eq!(a.refresh(now, &POLICY), None);
        // At its end: 1, in slow start, no failures, its starts spread
        // for a minute (issue 17).
        let line = a.refresh(until, &POLICY).unwrap().to_string();
        assert_eq!(
            line,
            "the suspension ended; effective limit 1 -> 1, rate 120/m"
        );
        assert!(a.suspension().is_none());
        assert_eq!((a.limit(), a.failures()), (1, 0));
        assert_eq!(good(&mut a, now).change, Some(Why::SlowStart));
    }

    #[test]
    fn a_lowered_configured_limit_lowers_the_effective_one() {
        let now = Instant::now();
        let mut a = key(20);
        for _ in 0..5 {
            let _ = good(&mut a, now);
        }
        assert_eq!(a.limit(), 10);
        a.configure(7.into(), &POLICY);
        assert_eq!((a.limit(), a.adaptive()), (7, 7));
        // Raised again, it does not jump back.
        a.configure(20.into(), &POLICY);
        assert_eq!(a.limit(), 7);
        // Without adaptation, the configured limit is the limit.
        let mut fixed = Adaptation::new(20.into(), &Policy::STATIC);
        fixed.configure(3.into(), &Policy::STATIC);
        assert_eq!(fixed.limit(), 3);
        fixed.configure(30.into(), &Policy::STATIC);
        assert_eq!(fixed.limit(), 30);
    }

    /// An end kept as numbers says what the line it replaced said.
    #[test]
    fn an_end_is_written_as_its_line() {
        use shardspawn_common::limits::Per;
        let all = Ended {
            limit: true,
            rate: true,
            suspension: true,
            pin: false,
            before: 1,
            after: 5,
            rate_after: Some(Rate { count: 30, per: Per::Minute }),
        };
        assert_eq!(
            all.to_string(),
            "the rule's limit ended, the rule's rate ended, the suspension \
             ended; effective limit 1 -> 5, rate 30/m"
        );
        let rate = Ended { limit: false, suspension: false, ..all };
        assert_eq!(
            rate.to_string(),
            "the rule's rate ended; effective limit 1 -> 5, rate 30/m"
        );
    }

    #[test]
    fn a_rules_cap_ends_back_at_what_adaptation_learned() {
        let now = Instant::now();
        let rules = Responses::parse(b"limit=1:30s:slow down\n").unwrap();
        let rule = &rules.rules()[0];
        let mut a = key(20);
        let learned =
            a.learn(plain(Verdict::Rule(rule)), ran(0, 0, 0), now, &POLICY);
        let until = now + Duration::from_secs(30);
        assert_eq!(learned.wake, Some(until));
        assert_eq!(
            learned.change,
            Some(Why::Said(
                "effective limit 5 -> 1: limit 1 for 30s: response rule 1 \
                 matched \"slow down\""
                    .into()
            ))
        );
        assert_eq!(a.limit(), 1);
        assert!(a.is_timed());
        // Meanwhile adaptation goes on learning under the cap: one
        // started before it ran at 5, and under it one at a time proves
        // nothing more.
        let _ = a.learn(plain(Verdict::Good), ran(0, 4, 0), now, &POLICY);
        let _ = a.learn(plain(Verdict::Good), ran(0, 0, 0), now, &POLICY);
        assert_eq!((a.limit(), a.adaptive()), (1, 6));
        assert_eq!(a.refresh(until - Duration::from_millis(1), &POLICY), None);
        let line = a.refresh(until, &POLICY).unwrap().to_string();
        assert_eq!(
            line,
            "the rule's limit ended; effective limit 1 -> 6, rate none"
        );
        assert_eq!(a.limit(), 6);
        assert!(!a.is_timed());
    }
}
