//! What a shard decides. No fds, no syscalls, no clock reads: time comes
//! in with the [`Event`]s, work goes out as [`Effect`]s.
//!
//! Vocabulary: a *slot* is one running delivery (a qmail-remote and its
//! pipe); a *key* is what a per-destination limit is counted on; a
//! delivery that cannot start yet is *held* in its key's FIFO until a
//! slot for its key frees, or *refused* with a `Z` once it has waited too
//! long or too many already wait.
//!
//! Two bounds decide whether a delivery starts: its key's limit, and the
//! shard's cap on running processes. When the cap is the bottleneck, keys
//! that could start take turns (a ring of ready keys), so one big
//! destination cannot starve the others.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardspawn_common::frame::Job;
use shardspawn_common::refusal::Refusal;
use shardspawn_common::report::{ChildEnd, Translator};
use shardspawn_common::status::{KeyStatus, printable};

/// A slot of the shard's table and the generation of its occupant, so a
/// late event for a finished delivery can never touch the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    /// Index into the slot table.
    pub index: u32,
    /// Bumped each time the slot is freed.
    pub generation: u32,
}

/// What happened.
#[derive(Debug)]
pub enum Event<'a> {
    /// A job arrived from the supervisor.
    Job {
        /// The job.
        job: Job,
        /// When the loop woke up.
        now: Instant,
    },
    /// The child of a slot wrote this.
    Output(SlotId, &'a [u8]),
    /// The pipe of a slot reached EOF.
    Eof(SlotId),
    /// The child of a slot was reaped.
    Exited(SlotId, ChildEnd),
    /// Starting the slot's child failed; the body says how.
    StartFailed(SlotId, Vec<u8>),
    /// The loop woke up at `now`; held deliveries past their deadline are
    /// due.
    Tick(Instant),
}

/// What the driver must do.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Open the message and run qmail-remote for `job` in slot `id`.
    Start {
        /// The slot the child belongs to.
        id: SlotId,
        /// What to run.
        job: Job,
    },
    /// Send this result to the supervisor.
    Report {
        /// The delnum it answers.
        delnum: u16,
        /// Letter and text.
        body: Vec<u8>,
    },
}

/// Counters a status page shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs received.
    pub received: u64,
    /// Results sent.
    pub reported: u64,
    /// Deliveries refused because their hold bound was reached.
    pub deferred_by_limit: u64,
}

type Key = Rc<[u8]>;

#[derive(Debug)]
enum Slot {
    Free { generation: u32 },
    Busy(Running),
}

#[derive(Debug)]
struct Running {
    generation: u32,
    delnum: u16,
    key: Key,
    output: Translator,
    end: Option<ChildEnd>,
    eof: bool,
}

#[derive(Debug)]
struct Held {
    job: Job,
    since: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct KeyState {
    key: Key,
    limit: u32,
    running: u32,
    held: VecDeque<Held>,
    /// In `Core::ready`: could start but for the shard's running cap.
    queued: bool,
    /// Most running at once since the key was first seen.
    peak: u32,
    /// Deliveries started, held, and refused for it, in all.
    started: u64,
    held_total: u64,
    deferred: u64,
}

/// Idle keys are remembered (with their counters, for the status page)
/// until there are this many keys; past it, an idle key is forgotten, so
/// keys from outside cannot grow the map without bound.
const KEY_MEMORY: usize = 4096;

/// The per-destination limits a shard obeys: the limit of a key, or
/// `u32::MAX` for none.
pub type LimitFn = Box<dyn Fn(&[u8]) -> u32>;

/// A shard's whole decision state.
pub struct Core {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Keys come from recipients, which senders choose. std's
    /// `HashMap` hashes with SipHash under a random key per process, so
    /// a sender cannot pick keys that all land in one bucket and make
    /// each lookup walk them (hash flooding); keep a keyed hasher here
    /// (no FxHash, no fixed seed) if this map is ever changed.
    keys: HashMap<Key, KeyState>,
    /// Keys with held deliveries that only the running cap stops.
    ready: VecDeque<Key>,
    /// Every hold's deadline in arrival order, which is deadline order
    /// since every hold lasts as long. Entries whose delivery already
    /// left are skipped when they come up.
    deadlines: VecDeque<(Instant, Key)>,
    running: u32,
    held: u32,
    max_running: u32,
    hold: Duration,
    hold_max: Option<u32>,
    limit_of: LimitFn,
    counters: Counters,
    notes: Notes,
}

/// What happened since the driver last asked, for the log: keys that
/// began holding deliveries (with their limits). Deferrals are in
/// [`Counters`].
#[derive(Debug, Default)]
pub struct Notes {
    /// Keys that went from running freely to holding, with their limit.
    pub saturated: Vec<(Rc<[u8]>, u32)>,
}

impl Core {
    /// A shard core that runs at most `max_running` children, holds a
    /// delivery at most `hold`, and lets at most `hold_max` (default 4 ×
    /// the key's limit) wait per key.
    pub fn new(
        max_running: u32,
        hold: Duration,
        hold_max: Option<u32>,
        limit_of: LimitFn,
    ) -> Core {
        Core {
            slots: Vec::new(),
            free: Vec::new(),
            keys: HashMap::new(),
            ready: VecDeque::new(),
            deadlines: VecDeque::new(),
            running: 0,
            held: 0,
            max_running: max_running.max(1),
            hold,
            hold_max,
            limit_of,
            counters: Counters::default(),
            notes: Notes::default(),
        }
    }

    /// Handles one event, appending what must be done to `effects`.
    pub fn handle(&mut self, event: Event<'_>, effects: &mut Vec<Effect>) {
        match event {
            Event::Job { job, now } => {
                self.counters.received += 1;
                self.admit(job, now, effects);
            }
            Event::Output(id, bytes) => {
                if let Some(run) = self.running_mut(id) {
                    run.output.push(bytes);
                }
            }
            Event::Eof(id) => {
                if let Some(run) = self.running_mut(id) {
                    run.eof = true;
                }
                self.finish_if_done(id, effects);
            }
            Event::Exited(id, end) => {
                if let Some(run) = self.running_mut(id) {
                    run.end = Some(end);
                }
                self.finish_if_done(id, effects);
            }
            Event::StartFailed(id, body) => self.release(id, body, effects),
            Event::Tick(now) => self.expire(now, effects),
        }
    }

    /// The next moment a held delivery must be answered. The driver never
    /// sleeps past it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// No delivery running or held: after EOF on the job pipe, the shard
    /// may exit.
    pub fn is_idle(&self) -> bool {
        self.running == 0 && self.held == 0
    }

    /// Deliveries running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// Deliveries held now.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Counters since start.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// What happened since the last call, for the log.
    pub fn take_notes(&mut self) -> Notes {
        std::mem::take(&mut self.notes)
    }

    fn admit(&mut self, job: Job, now: Instant, effects: &mut Vec<Effect>) {
        let key: Key = Rc::from(job.key.as_slice());
        let limit_of = &self.limit_of;
        let state = self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            limit: (limit_of)(&key).max(1),
            key: key.clone(),
            running: 0,
            held: VecDeque::new(),
            queued: false,
            peak: 0,
            started: 0,
            held_total: 0,
            deferred: 0,
        });
        let may_start = state.held.is_empty() && state.running < state.limit;
        if may_start && self.running < self.max_running {
            self.start(job, key, effects);
            return;
        }
        let hold_max = self
            .hold_max
            .unwrap_or_else(|| state.limit.saturating_mul(4))
            .max(1);
        let waiting = u32::try_from(state.held.len()).unwrap_or(u32::MAX);
        if waiting >= hold_max {
            self.counters.deferred_by_limit += 1;
            state.deferred += 1;
            let refusal = Refusal::HoldFull {
                key: key.to_vec(),
                limit: state.limit,
                waiting,
            };
            self.report(job.delnum, refusal.body(), effects);
            return;
        }
        let deadline = now + self.hold;
        if state.held.is_empty() && !may_start {
            // From running freely to holding: worth a log line.
            self.notes.saturated.push((key.clone(), state.limit));
        }
        state.held.push_back(Held { job, since: now, deadline });
        state.held_total += 1;
        self.held += 1;
        self.deadlines.push_back((deadline, key.clone()));
        if may_start && !state.queued {
            state.queued = true;
            self.ready.push_back(key);
        }
    }

    /// The one place a slot is taken and a key's running count goes up.
    fn start(&mut self, job: Job, key: Key, effects: &mut Vec<Effect>) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::Free { generation: 0 });
                u32::try_from(self.slots.len() - 1)
                    .expect("slot table fits u32")
            }
        };
        let generation = match self.slots[index as usize] {
            Slot::Free { generation } => generation,
            Slot::Busy(_) => unreachable!("free list holds a busy slot"),
        };
        if let Some(state) = self.keys.get_mut(&key) {
            state.running += 1;
            state.started += 1;
            state.peak = state.peak.max(state.running);
        }
        self.running += 1;
        self.slots[index as usize] = Slot::Busy(Running {
            generation,
            delnum: job.delnum,
            key,
            output: Translator::new(),
            end: None,
            eof: false,
        });
        effects.push(Effect::Start { id: SlotId { index, generation }, job });
    }

    /// A result exists only when the child is reaped *and* its pipe is at
    /// EOF; either may come first.
    fn finish_if_done(&mut self, id: SlotId, effects: &mut Vec<Effect>) {
        let Some(run) = self.running_mut(id) else { return };
        let (Some(end), true) = (run.end, run.eof) else { return };
        let body = std::mem::take(&mut run.output).finish(end);
        self.release(id, body, effects);
    }

    /// The one place a slot is freed and a key's running count goes down;
    /// every end of a started delivery comes here.
    fn release(
        &mut self,
        id: SlotId,
        body: Vec<u8>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(run) = self.running_mut(id) else { return };
        let (delnum, key) = (run.delnum, run.key.clone());
        self.slots[id.index as usize] =
            Slot::Free { generation: id.generation.wrapping_add(1) };
        self.free.push(id.index);
        self.running -= 1;
        self.report(delnum, body, effects);
        if let Some(state) = self.keys.get_mut(&key) {
            state.running -= 1;
            if !state.held.is_empty()
                && state.running < state.limit
                && !state.queued
            {
                // This key's own turn comes first: a held delivery starts
                // as soon as a process for its key ends.
                state.queued = true;
                self.ready.push_front(key.clone());
            }
        }
        self.schedule(effects);
        self.forget_if_unused(&key);
    }

    /// Starts held deliveries while the running cap allows, one per ready
    /// key in turn.
    fn schedule(&mut self, effects: &mut Vec<Effect>) {
        while self.running < self.max_running {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(state) = self.keys.get_mut(&key) else { continue };
            state.queued = false;
            if state.running >= state.limit {
                continue;
            }
            let Some(next) = state.held.pop_front() else { continue };
            self.held -= 1;
            let requeue =
                !state.held.is_empty() && state.running + 1 < state.limit;
            if requeue {
                state.queued = true;
                self.ready.push_back(key.clone());
            }
            self.start(next.job, key, effects);
        }
    }

    /// Refuses every held delivery whose deadline has come.
    fn expire(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        while let Some((at, _)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            let (_, key) = self.deadlines.pop_front().expect("front exists");
            let Some(state) = self.keys.get_mut(&key) else { continue };
            // The key's FIFO is in deadline order too, so a due delivery
            // of this key is at its front (earlier ones left already).
            let due = state.held.front().is_some_and(|h| h.deadline <= now);
            if !due {
                continue;
            }
            let held = state.held.pop_front().expect("front exists");
            self.held -= 1;
            self.counters.deferred_by_limit += 1;
            state.deferred += 1;
            let waited = now.saturating_duration_since(held.since);
            // Name what it really waited for: its key's limit, or a
            // process slot of the shard.
            let refusal = if state.running >= state.limit {
                Refusal::HoldExpired {
                    key: key.to_vec(),
                    limit: state.limit,
                    waited,
                }
            } else {
                Refusal::BusyExpired { cap: self.max_running, waited }
            };
            self.report(held.job.delnum, refusal.body(), effects);
            self.forget_if_unused(&key);
        }
    }

    fn report(
        &mut self,
        delnum: u16,
        body: Vec<u8>,
        effects: &mut Vec<Effect>,
    ) {
        self.counters.reported += 1;
        effects.push(Effect::Report { delnum, body });
    }

    /// Drops a key with nothing running or held once more than
    /// [`KEY_MEMORY`] keys are known.
    fn forget_if_unused(&mut self, key: &Key) {
        if self.keys.len() > KEY_MEMORY
            && let Some(state) = self.keys.get(key)
            && state.running == 0
            && state.held.is_empty()
        {
            self.keys.remove(key);
        }
    }

    /// New limits: every known key takes its new limit now. Running
    /// deliveries are never stopped; a raised limit lets held ones start
    /// at once, a lowered one lets fewer start from now on.
    pub fn set_limits(
        &mut self,
        limit_of: LimitFn,
        effects: &mut Vec<Effect>,
    ) {
        self.limit_of = limit_of;
        for state in self.keys.values_mut() {
            state.limit = (self.limit_of)(&state.key).max(1);
            if !state.held.is_empty()
                && state.running < state.limit
                && !state.queued
            {
                state.queued = true;
                self.ready.push_back(state.key.clone());
            }
        }
        self.schedule(effects);
    }

    /// The `top` busiest keys (running plus held, then most started),
    /// for the status page.
    pub fn key_status(&self, top: usize) -> Vec<KeyStatus> {
        let mut keys: Vec<&KeyState> = self.keys.values().collect();
        keys.sort_by(|a, b| {
            let busy = |k: &KeyState| k.running as usize + k.held.len();
            busy(b)
                .cmp(&busy(a))
                .then(b.held_total.cmp(&a.held_total))
                .then(b.started.cmp(&a.started))
                .then(a.key.cmp(&b.key))
        });
        keys.into_iter()
            .take(top)
            .map(|k| KeyStatus {
                key: printable(&k.key),
                running: k.running,
                held: k.held.len() as u32,
                limit: k.limit,
                peak: k.peak,
                started: k.started,
                held_total: k.held_total,
                deferred: k.deferred,
                effective: k.limit,
                ..KeyStatus::default()
            })
            .collect()
    }

    fn running_mut(&mut self, id: SlotId) -> Option<&mut Running> {
        match self.slots.get_mut(id.index as usize)? {
            Slot::Busy(run) if run.generation == id.generation => Some(run),
            Slot::Busy(_) | Slot::Free { .. } => None,
        }
    }

    /// Checks that the counts agree with the slot table: per key, the
    /// running count is the number of busy slots with that key. The
    /// driver calls it after each loop pass in debug builds; it costs a
    /// walk of the table, so it is skipped above 4096 slots.
    pub fn check_invariants(&self) {
        if self.slots.len() > 4096 {
            return;
        }
        let mut per_key: HashMap<&[u8], u32> = HashMap::new();
        for slot in &self.slots {
            if let Slot::Busy(run) = slot {
                *per_key.entry(&run.key).or_default() += 1;
            }
        }
        let busy: u32 = per_key.values().sum();
        assert_eq!(busy, self.running, "running count drifted");
        for state in self.keys.values() {
            let n = per_key.get(&*state.key).copied().unwrap_or(0);
            assert_eq!(n, state.running, "key count drifted");
        }
        let held: usize = self.keys.values().map(|k| k.held.len()).sum();
        assert_eq!(held as u32, self.held, "held count drifted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(delnum: u16, key: &str) -> Job {
        Job {
            delnum,
            messid: b"1/1".to_vec(),
            sender: b"a@b".to_vec(),
            recipient: format!("u@{key}").into_bytes(),
            key: key.as_bytes().to_vec(),
        }
    }

    /// A core with `max_running`, hold 10 s, and limit 2 for "a.test",
    /// none for others.
    fn core(max_running: u32, hold_max: Option<u32>) -> Core {
        Core::new(
            max_running,
            Duration::from_secs(10),
            hold_max,
            Box::new(|k: &[u8]| if k == b"a.test" { 2 } else { u32::MAX }),
        )
    }

    fn starts(effects: &[Effect]) -> Vec<(SlotId, u16)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start { id, job } => Some((*id, job.delnum)),
                Effect::Report { .. } => None,
            })
            .collect()
    }

    fn reports(effects: &[Effect]) -> Vec<(u16, Vec<u8>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Report { delnum, body } => {
                    Some((*delnum, body.clone()))
                }
                Effect::Start { .. } => None,
            })
            .collect()
    }

    /// Ends slot `id` the usual way: output, exit 0, EOF.
    fn finish(core: &mut Core, id: SlotId, fx: &mut Vec<Effect>) {
        core.handle(Event::Output(id, b"r\0Kok\n\0"), fx);
        core.handle(Event::Exited(id, ChildEnd::Exited(0)), fx);
        core.handle(Event::Eof(id), fx);
    }

    #[test]
    fn result_waits_for_both_exit_and_eof_in_either_order() {
        let now = Instant::now();
        let mut c = core(10, None);
        let mut fx = Vec::new();
        c.handle(Event::Job { job: job(1, "b.test"), now }, &mut fx);
        c.handle(Event::Job { job: job(2, "b.test"), now }, &mut fx);
        let ids = starts(&fx);
        fx.clear();
        c.handle(Event::Output(ids[0].0, b"r\0Kfine\n\0"), &mut fx);
        c.handle(Event::Eof(ids[0].0), &mut fx);
        assert!(fx.is_empty(), "EOF alone is not a result");
        c.handle(Event::Exited(ids[0].0, ChildEnd::Exited(0)), &mut fx);
        assert_eq!(reports(&fx), vec![(1, b"Kfine\n".to_vec())]);
        fx.clear();
        c.handle(Event::Exited(ids[1].0, ChildEnd::Signaled(9)), &mut fx);
        assert!(fx.is_empty(), "exit alone is not a result");
        c.handle(Event::Eof(ids[1].0), &mut fx);
        assert_eq!(
            reports(&fx),
            vec![(2, b"Zqmail-remote crashed.\n".to_vec())]
        );
        assert!(c.is_idle());
        c.check_invariants();
    }

    #[test]
    fn stale_events_for_a_reused_slot_are_ignored() {
        let now = Instant::now();
        let mut c = core(10, None);
        let mut fx = Vec::new();
        c.handle(Event::Job { job: job(1, "b.test"), now }, &mut fx);
        let old = starts(&fx)[0].0;
        finish(&mut c, old, &mut fx);
        fx.clear();
        c.handle(Event::Job { job: job(2, "b.test"), now }, &mut fx);
        let new = starts(&fx)[0].0;
        assert_eq!(new.index, old.index);
        assert_ne!(new.generation, old.generation);
        fx.clear();
        c.handle(Event::Exited(old, ChildEnd::Exited(0)), &mut fx);
        c.handle(Event::Eof(old), &mut fx);
        c.handle(Event::StartFailed(old, b"Zx\n".to_vec()), &mut fx);
        assert!(fx.is_empty());
        assert_eq!(c.running(), 1);
        c.check_invariants();
    }

    #[test]
    fn a_key_never_runs_more_than_its_limit_and_its_fifo_keeps_order() {
        let now = Instant::now();
        let mut c = core(100, None);
        let mut fx = Vec::new();
        for d in 0..6 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        let first = starts(&fx);
        assert_eq!(first.iter().map(|s| s.1).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(c.held(), 4);
        let mut order = Vec::new();
        let mut running: Vec<SlotId> = first.iter().map(|s| s.0).collect();
        while let Some(id) = running.pop() {
            fx.clear();
            finish(&mut c, id, &mut fx);
            for (id, delnum) in starts(&fx) {
                order.push(delnum);
                running.insert(0, id);
            }
            assert!(c.running() <= 2);
            c.check_invariants();
        }
        assert_eq!(order, vec![2, 3, 4, 5]);
        assert!(c.is_idle());
    }

    #[test]
    fn a_held_delivery_is_deferred_at_its_deadline_and_not_before() {
        let now = Instant::now();
        let mut c = core(100, None);
        let mut fx = Vec::new();
        for d in 0..3 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        let later = now + Duration::from_secs(3);
        c.handle(Event::Job { job: job(3, "a.test"), now: later }, &mut fx);
        assert_eq!(c.next_deadline(), Some(now + Duration::from_secs(10)));
        fx.clear();
        c.handle(Event::Tick(now + Duration::from_millis(9999)), &mut fx);
        assert!(fx.is_empty());
        c.handle(Event::Tick(now + Duration::from_secs(10)), &mut fx);
        assert_eq!(
            reports(&fx),
            vec![(
                2,
                b"Zshardspawn: a.test is at its limit of 2; held 10s, \
                  longer than the hold limit. (#4.4.5)\n"
                    .to_vec()
            )]
        );
        assert_eq!(c.held(), 1);
        assert_eq!(c.counters().deferred_by_limit, 1);
        c.check_invariants();
    }

    #[test]
    fn too_many_waiting_is_deferred_at_once() {
        let now = Instant::now();
        let mut c = core(100, None);
        let mut fx = Vec::new();
        // limit 2, default hold_max 4 × 2 = 8: 2 run, 8 wait, 11th refused.
        for d in 0..11 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        assert_eq!(starts(&fx).len(), 2);
        assert_eq!(c.held(), 8);
        assert_eq!(
            reports(&fx),
            vec![(
                10,
                b"Zshardspawn: a.test is at its limit of 2; 8 deliveries \
                  already wait for it. (#4.4.5)\n"
                    .to_vec()
            )]
        );
        let mut c = core(100, Some(1));
        fx.clear();
        for d in 0..4 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        assert_eq!(
            reports(&fx).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn other_keys_flow_while_one_is_saturated() {
        let now = Instant::now();
        let mut c = core(100, None);
        let mut fx = Vec::new();
        for d in 0..5 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        fx.clear();
        c.handle(Event::Job { job: job(9, "b.test"), now }, &mut fx);
        assert_eq!(
            starts(&fx).iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![9]
        );
    }

    #[test]
    fn under_the_running_cap_waiting_keys_take_turns() {
        let now = Instant::now();
        let mut c = Core::new(
            1,
            Duration::from_secs(10),
            Some(100),
            Box::new(|_| u32::MAX),
        );
        let mut fx = Vec::new();
        // One big key with 5, then two small keys with 1 each.
        for d in 0..5 {
            c.handle(Event::Job { job: job(d, "big.test"), now }, &mut fx);
        }
        c.handle(Event::Job { job: job(10, "x.test"), now }, &mut fx);
        c.handle(Event::Job { job: job(20, "y.test"), now }, &mut fx);
        let mut order = Vec::new();
        let mut running = starts(&fx);
        order.extend(running.iter().map(|s| s.1));
        while let Some((id, _)) = running.pop() {
            fx.clear();
            finish(&mut c, id, &mut fx);
            let next = starts(&fx);
            assert!(next.len() <= 1, "the cap is 1");
            order.extend(next.iter().map(|s| s.1));
            running.extend(next);
        }
        // The small keys do not wait behind all of the big one.
        let pos = |d| order.iter().position(|&x| x == d).unwrap();
        assert!(pos(10) < pos(4) && pos(20) < pos(4), "order {order:?}");
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn a_failed_start_frees_the_slot_and_the_key() {
        let now = Instant::now();
        let mut c = core(100, None);
        let mut fx = Vec::new();
        for d in 0..3 {
            c.handle(Event::Job { job: job(d, "a.test"), now }, &mut fx);
        }
        let id = starts(&fx)[0].0;
        fx.clear();
        c.handle(
            Event::StartFailed(
                id,
                b"Zqmail-spawn unable to create pipe. (#4.3.0)\n".to_vec(),
            ),
            &mut fx,
        );
        assert_eq!(reports(&fx)[0].0, 0);
        assert_eq!(starts(&fx).len(), 1, "the held one starts");
        c.check_invariants();
    }
}
