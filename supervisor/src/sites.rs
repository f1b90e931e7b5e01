//! Which receiving site a domain's mail goes to, as far as the
//! supervisor's core needs it to pick a limit key: `control/smtproutes`
//! first, then what the resolver process said of the domain's MX hosts,
//! kept for its TTL. Pure like the core: time comes in as arguments, and
//! the lookups it wants go out through the core as effects.
//!
//! A domain's key, most specific first: an explicit domain rule of the
//! limits file; else, with sites on, the relay smtproutes names or the
//! domain's MX hosts (a provider rule or the site, see
//! [`Limits::site`]); else the domain itself. Every way of not knowing
//! the site (sites off, an IP literal, a failed or slow lookup, a domain
//! with no host, the resolver down) ends in the domain key, so DNS can
//! make a delivery wait, never lose it or hold it past [`Sites::wait`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use shardspawn_common::domain;
use shardspawn_common::frame::Job;
use shardspawn_common::limits::{Limits, Match};
use shardspawn_common::lookup::{Answer, Exchange, Outcome};
use shardspawn_common::routes::Routes;

/// An answer is kept at least this long, whatever its TTL: a TTL of 0
/// would otherwise send one lookup per delivery.
pub const TTL_MIN: Duration = Duration::from_secs(60);
/// ... and at most this long: a provider's move is seen within a day.
pub const TTL_MAX: Duration = Duration::from_secs(86_400);
/// A failed lookup (or one with no answer in time) is not asked again
/// for this long; its domain's deliveries go under the domain key.
pub const FAILED_KEEP: Duration = Duration::from_secs(60);
/// Most domains whose answers are kept; the oldest go first. At about
/// 200 bytes each, 100,000 is some 20 MB at most.
pub const CACHE_MAX: usize = 100_000;

/// How the key of a domain was found (for a command in hand).
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Route it under this key now.
    Key(Vec<u8>),
    /// Ask the resolver for this domain, and wait.
    Ask(Vec<u8>),
    /// A lookup of this domain is under way: wait for it.
    Wait(Vec<u8>),
}

/// A lookup's end for the deliveries that waited for it.
#[derive(Debug)]
pub struct Settled {
    /// The domain.
    pub domain: Vec<u8>,
    /// The deliveries that waited, in arrival order (keys not set yet).
    pub jobs: Vec<Job>,
    /// A line for the log, if the lookup failed.
    pub failed: Option<String>,
}

#[derive(Debug)]
struct Cached {
    outcome: Outcome,
    expires: Instant,
    /// Its place in `order`.
    serial: u64,
    /// Its key under the limits in force, as counted in `per_key`.
    key: Vec<u8>,
}

#[derive(Debug)]
struct Asked {
    jobs: Vec<Job>,
    /// When it stops being waited for; tells its place in `deadlines`
    /// from an earlier lookup's of the same domain.
    deadline: Instant,
}

/// The site side of the supervisor's state.
#[derive(Debug)]
pub struct Sites {
    on: bool,
    wait: Duration,
    routes: Routes,
    cache: HashMap<Vec<u8>, Cached>,
    /// Cached domains, oldest first, with the serial they were cached
    /// under (a later answer for the same domain has a later one).
    order: VecDeque<(u64, Vec<u8>)>,
    serial: u64,
    /// Lookups under way, with the deliveries waiting for them.
    asked: HashMap<Vec<u8>, Asked>,
    /// When each lookup under way stops being waited for, in asking
    /// order (the wait is one setting, so this is deadline order too).
    deadlines: VecDeque<(Instant, Vec<u8>)>,
    /// The resolver process is up: lookups can be asked.
    resolver_up: bool,
    /// Kept domains per key: how many domains a site or provider holds
    /// now, for status. Kept up to date as answers come and go, so
    /// publishing it costs no walk of the cache.
    per_key: HashMap<Vec<u8>, u32>,
    /// [`CACHE_MAX`], but for tests.
    cache_max: usize,
}

impl Sites {
    /// Sites `on` or off; a delivery waits at most `wait` for DNS.
    pub fn new(on: bool, wait: Duration, routes: Routes) -> Sites {
        Sites {
            on,
            wait,
            routes,
            cache: HashMap::new(),
            order: VecDeque::new(),
            serial: 0,
            asked: HashMap::new(),
            deadlines: VecDeque::new(),
            resolver_up: false,
            per_key: HashMap::new(),
            cache_max: CACHE_MAX,
        }
    }

    /// Off: every domain is its own key (or its rule's).
    pub fn off() -> Sites {
        Sites::new(false, Duration::from_secs(5), Routes::default())
    }

    /// Whether domains are grouped into sites at all.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The longest a delivery waits for DNS.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A changed smtproutes file.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
    }

    /// Lookups under way.
    pub fn asked(&self) -> usize {
        self.asked.len()
    }

    /// Deliveries waiting for lookups.
    pub fn waiting(&self) -> usize {
        self.asked.values().map(|a| a.jobs.len()).sum()
    }

    /// Domains whose answers are kept.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The key of normalised `domain`, or what to do to find it.
    pub fn find(&self, limits: &Limits, domain: &[u8], now: Instant) -> Found {
        let m = limits.lookup(domain);
        if !self.on
            || m.is_domain_rule()
            || domain::ip_literal(domain).is_some()
        {
            return Found::Key(m.key);
        }
        if let Some(route) = self.routes.route(domain)
            && let Some(relay) = route.relay
        {
            return Found::Key(relay_match(limits, relay).key);
        }
        // Kept with its key (made again when the limits change): a
        // cached domain costs one hash lookup, not a site computed anew.
        if let Some(c) = self.cache.get(domain)
            && now < c.expires
        {
            return Found::Key(c.key.clone());
        }
        if self.asked.contains_key(domain) {
            return Found::Wait(domain.to_vec());
        }
        if !self.resolver_up {
            return Found::Key(m.key);
        }
        Found::Ask(domain.to_vec())
    }

    /// What applies to `domain` with what is known now, without asking:
    /// for `limits explain` and status. `None` when DNS would be asked.
    pub fn known(
        &self,
        limits: &Limits,
        domain: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        match self.find(limits, domain, now) {
            Found::Key(key) => Some(key),
            Found::Ask(_) | Found::Wait(_) => None,
        }
    }

    /// `job` waits for the lookup of `domain` (asked now if `ask`).
    pub fn hold(
        &mut self,
        domain: Vec<u8>,
        job: Job,
        ask: bool,
        now: Instant,
    ) {
        let deadline = now + self.wait;
        if ask {
            self.deadlines.push_back((deadline, domain.clone()));
        }
        let asked = self.asked.entry(domain);
        asked.or_insert(Asked { jobs: Vec::new(), deadline }).jobs.push(job);
    }

    /// The resolver answered: keep the answer, and hand back whoever
    /// waited for it. An answer nobody waits for any more (it came after
    /// the wait) is kept all the same.
    pub fn answered(
        &mut self,
        limits: &Limits,
        answer: Answer,
        now: Instant,
    ) -> Option<Settled> {
        let failed = match &answer.outcome {
            Outcome::Failed(why) => Some(failed_line(&answer.domain, why)),
            Outcome::Mx(_) | Outcome::Host | Outcome::NoHost => None,
        };
        let keep = match answer.outcome {
            Outcome::Failed(_) => FAILED_KEEP,
            _ => {
                Duration::from_secs(answer.ttl.into()).clamp(TTL_MIN, TTL_MAX)
            }
        };
        let domain = answer.domain.clone();
        self.remember(limits, domain, answer.outcome, now + keep);
        let asked = self.asked.remove(&answer.domain)?;
        Some(Settled { domain: answer.domain, jobs: asked.jobs, failed })
    }

    /// Lookups waited for past the wait: their deliveries go under their
    /// domain keys, and the domain is not asked again for a while.
    pub fn expired(&mut self, limits: &Limits, now: Instant) -> Vec<Settled> {
        let mut settled = Vec::new();
        while let Some((deadline, _)) = self.deadlines.front()
            && *deadline <= now
        {
            let (deadline, domain) =
                self.deadlines.pop_front().expect("front");
            // Answered already (and perhaps asked again since): nothing
            // waits for this lookup.
            if self.asked.get(&domain).is_none_or(|a| a.deadline != deadline) {
                continue;
            }
            let asked = self.asked.remove(&domain).expect("just seen");
            let why = format!("no answer in {} s", self.wait.as_secs());
            let failed = Some(failed_line(&domain, &why));
            self.remember(
                limits,
                domain.clone(),
                Outcome::Failed(why),
                now + FAILED_KEEP,
            );
            settled.push(Settled { domain, jobs: asked.jobs, failed });
        }
        settled
    }

    fn uncount(&mut self, key: &[u8]) {
        if let Some(n) = self.per_key.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(key);
            }
        }
    }

    /// New limits: every kept domain's key again (a provider rule may
    /// now take a site, or let it go).
    pub fn rekey(&mut self, limits: &Limits) {
        self.per_key.clear();
        for (domain, c) in &mut self.cache {
            c.key = key_of(limits, domain, &c.outcome, limits.lookup(domain));
            *self.per_key.entry(c.key.clone()).or_insert(0) += 1;
        }
    }

    /// The `top` keys holding the most kept domains, most first (ties
    /// by key), with how many: sites and providers as DNS made them.
    pub fn busiest_sites(&self, top: usize) -> Vec<(&[u8], u32)> {
        // A domain's own key (a failed lookup) holds one: not a site.
        let mut keys: Vec<(&[u8], u32)> = self
            .per_key
            .iter()
            .filter(|(k, _)| matches!(k.first(), Some(b'@' | b'=')))
            .map(|(k, &n)| (&k[..], n))
            .collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        keys.truncate(top);
        keys
    }

    /// The earliest moment a lookup stops being waited for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// The resolver is up (started, or started again).
    pub fn resolver_up(&mut self) {
        self.resolver_up = true;
    }

    /// The resolver is gone: no answer will come for what was asked.
    /// Hands back every delivery that waited, to go under its domain.
    pub fn resolver_down(&mut self) -> Vec<Settled> {
        self.resolver_up = false;
        self.deadlines.clear();
        self.take_all()
    }

    /// qmail-send is gone: nothing more comes, so nothing should wait
    /// for DNS. Hands back every delivery that waited.
    pub fn take_all(&mut self) -> Vec<Settled> {
        let mut asked: Vec<_> = self.asked.drain().collect();
        // Arrival order across domains is lost in the map; delnum order
        // of each domain's first job is stable and enough.
        asked.sort_by_key(|(_, a)| a.jobs.first().map(|j| j.delnum));
        asked
            .into_iter()
            .map(|(domain, a)| Settled { domain, jobs: a.jobs, failed: None })
            .collect()
    }

    /// Keeps `outcome` for `domain` until `expires`, dropping the oldest
    /// answers past [`CACHE_MAX`].
    fn remember(
        &mut self,
        limits: &Limits,
        domain: Vec<u8>,
        outcome: Outcome,
        expires: Instant,
    ) {
        self.serial += 1;
        let serial = self.serial;
        self.order.push_back((serial, domain.clone()));
        let key = key_of(limits, &domain, &outcome, limits.lookup(&domain));
        *self.per_key.entry(key.clone()).or_insert(0) += 1;
        let cached = Cached { outcome, expires, serial, key };
        if let Some(old) = self.cache.insert(domain, cached) {
            self.uncount(&old.key);
        }
        while self.cache.len() > self.cache_max {
            let Some((serial, oldest)) = self.order.pop_front() else { break };
            if self.cache.get(&oldest).is_some_and(|c| c.serial == serial)
                && let Some(old) = self.cache.remove(&oldest)
            {
                self.uncount(&old.key);
            }
        }
        // Entries replaced by a later answer leave stale places behind;
        // drop them from the front so `order` stays near the cache's size.
        while let Some((serial, front)) = self.order.front()
            && self.cache.get(front).is_none_or(|c| c.serial != *serial)
        {
            self.order.pop_front();
        }
    }
}

/// The log line of a lookup of `domain` that failed, once per failure.
fn failed_line(domain: &[u8], why: &str) -> String {
    format!(
        "MX lookup of {} failed ({why}); its deliveries go under its \
         domain for {} s",
        domain::printable(domain),
        FAILED_KEEP.as_secs()
    )
}

/// The key of a domain whose lookup said `outcome`; `m` is its match
/// without a site (the default: its domain key).
fn key_of(
    limits: &Limits,
    domain: &[u8],
    outcome: &Outcome,
    m: Match,
) -> Vec<u8> {
    match outcome {
        Outcome::Mx(exchanges) => limits.site(exchanges).key,
        Outcome::Host => {
            let own = [Exchange { preference: 0, host: domain.to_vec() }];
            limits.site(&own).key
        }
        Outcome::NoHost | Outcome::Failed(_) => m.key,
    }
}

/// What applies to a domain smtproutes sends to `relay`: the one-host
/// site of the relay (its port does not make it another receiver).
fn relay_match(limits: &Limits, relay: Vec<u8>) -> Match {
    limits.site(&[Exchange { preference: 0, host: relay }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardspawn_common::lookup::Exchange;

    fn mx(domain: &str, host: &str, ttl: u32) -> Answer {
        let x = Exchange { preference: 10, host: host.as_bytes().to_vec() };
        Answer {
            domain: domain.as_bytes().to_vec(),
            ttl,
            outcome: Outcome::Mx(vec![x]),
        }
    }

    fn key(
        sites: &Sites,
        limits: &Limits,
        domain: &str,
        now: Instant,
    ) -> Found {
        sites.find(limits, domain.as_bytes(), now)
    }

    #[test]
    fn an_answer_is_kept_for_its_ttl_clamped() {
        let limits = Limits::parse(b":20\n").unwrap();
        let mut sites =
            Sites::new(true, Duration::from_secs(5), Routes::absent());
        sites.resolver_up();
        let t0 = Instant::now();
        assert_eq!(
            key(&sites, &limits, "a.test", t0),
            Found::Ask(b"a.test".to_vec())
        );
        // TTL 0 is kept a minute; TTL a week, a day.
        let _ = sites.answered(&limits, mx("a.test", "mx.s.test", 0), t0);
        let _ =
            sites.answered(&limits, mx("b.test", "mx.s.test", 7 * 86_400), t0);
        let site = Found::Key(b"@mx.s.test".to_vec());
        assert_eq!(
            key(
                &sites,
                &limits,
                "a.test",
                t0 + TTL_MIN - Duration::from_millis(1)
            ),
            site
        );
        assert_eq!(
            key(&sites, &limits, "a.test", t0 + TTL_MIN),
            Found::Ask(b"a.test".to_vec())
        );
        assert_eq!(
            key(
                &sites,
                &limits,
                "b.test",
                t0 + TTL_MAX - Duration::from_millis(1)
            ),
            site
        );
        assert_eq!(
            key(&sites, &limits, "b.test", t0 + TTL_MAX),
            Found::Ask(b"b.test".to_vec())
        );
    }

    #[test]
    fn the_cache_is_bounded_oldest_first_and_its_counts_follow_it() {
        let limits = Limits::parse(b":20\n").unwrap();
        let mut sites =
            Sites::new(true, Duration::from_secs(5), Routes::absent());
        sites.cache_max = 3;
        sites.resolver_up();
        let t0 = Instant::now();
        for d in ["a", "b", "c"] {
            let _ = sites.answered(
                &limits,
                mx(&format!("{d}.test"), "mx.s.test", 300),
                t0,
            );
        }
        assert_eq!(sites.busiest_sites(5), [(&b"@mx.s.test"[..], 3)]);
        // A fresh answer for a: it is now the newest, b the oldest.
        let _ = sites.answered(&limits, mx("a.test", "mx.t.test", 300), t0);
        let _ = sites.answered(&limits, mx("d.test", "mx.t.test", 300), t0);
        assert_eq!(sites.cached(), 3);
        assert_eq!(
            key(&sites, &limits, "b.test", t0),
            Found::Ask(b"b.test".to_vec())
        );
        assert_eq!(
            key(&sites, &limits, "c.test", t0),
            Found::Key(b"@mx.s.test".to_vec())
        );
        assert_eq!(
            sites.busiest_sites(5),
            [(&b"@mx.t.test"[..], 2), (&b"@mx.s.test"[..], 1)]
        );
        assert!(
            sites.order.len() <= 4,
            "stale places pile up: {}",
            sites.order.len()
        );
        // New limits: a provider rule takes site t, and the counts say so.
        let limits = Limits::parse(b":20\n@mx.t.test:=big\n=big:5\n").unwrap();
        sites.rekey(&limits);
        assert_eq!(
            sites.busiest_sites(5),
            [(&b"=big"[..], 2), (&b"@mx.s.test"[..], 1)]
        );
        assert_eq!(
            key(&sites, &limits, "a.test", t0),
            Found::Key(b"=big".to_vec())
        );
    }

    #[test]
    fn a_later_lookup_of_a_domain_keeps_its_own_deadline() {
        let limits = Limits::parse(b":20\n").unwrap();
        let wait = Duration::from_secs(5);
        let mut sites = Sites::new(true, wait, Routes::absent());
        sites.resolver_up();
        let t0 = Instant::now();
        let job = |delnum| Job {
            delnum,
            messid: b"1".to_vec(),
            sender: Vec::new(),
            recipient: b"u@a.test".to_vec(),
            key: Vec::new(),
        };
        sites.hold(b"a.test".to_vec(), job(1), true, t0);
        // Answered (a failure, kept a minute), then past that minute
        // asked again: the first lookup's deadline must not end the
        // second's wait.
        let _ = sites.answered(
            &limits,
            Answer {
                domain: b"a.test".to_vec(),
                ttl: 0,
                outcome: Outcome::Failed("SERVFAIL".into()),
            },
            t0,
        );
        let t1 = t0 + FAILED_KEEP;
        assert_eq!(
            key(&sites, &limits, "a.test", t1),
            Found::Ask(b"a.test".to_vec())
        );
        sites.hold(b"a.test".to_vec(), job(2), true, t1);
        assert!(sites.expired(&limits, t0 + wait).is_empty());
        assert_eq!(sites.waiting(), 1);
        let over = sites.expired(&limits, t1 + wait);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].jobs[0].delnum, 2);
        assert!(
            over[0].failed.as_deref().unwrap().contains("no answer in 5 s")
        );
    }

    #[test]
    fn sites_off_a_domain_rule_a_literal_and_a_route_ask_no_dns() {
        let limits =
            Limits::parse(b":20\nnamed.test:3\n@relay.test:7\n").unwrap();
        let routes = Routes::parse(b"routed.test:relay.test:2525\n").unwrap();
        let mut sites = Sites::new(true, Duration::from_secs(5), routes);
        sites.resolver_up();
        let t0 = Instant::now();
        let k = |s: &Sites, d: &str| key(s, &limits, d, t0);
        assert_eq!(
            k(&sites, "named.test"),
            Found::Key(b"named.test".to_vec())
        );
        assert_eq!(
            k(&sites, "[10.1.2.3]"),
            Found::Key(b"[10.1.2.3]".to_vec())
        );
        assert_eq!(
            k(&sites, "routed.test"),
            Found::Key(b"@relay.test".to_vec())
        );
        assert_eq!(
            k(&sites, "other.test"),
            Found::Ask(b"other.test".to_vec())
        );
        let off = Sites::off();
        assert_eq!(k(&off, "other.test"), Found::Key(b"other.test".to_vec()));
        // The resolver down: the domain at once.
        let _ = sites.resolver_down();
        assert_eq!(
            k(&sites, "other.test"),
            Found::Key(b"other.test".to_vec())
        );
    }
}
