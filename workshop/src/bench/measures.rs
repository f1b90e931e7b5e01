//! What one measurement holds: a baseline, a shardspawn point, their
//! latencies, the machine, and the whole run's [`Results`]; and how the
//! rounds of one point merge into one.

use std::path::PathBuf;
use std::time::Duration;

use super::baselines::Method;
use super::latency::{LatRaw, summarize};
use super::plan::Plan;
use super::report::{micros, thousands};
use crate::home::QmailHome;

/// Everything the measurements share.
pub(super) struct Ctx {
    pub(super) me: PathBuf,
    pub(super) remote: PathBuf,
    pub(super) shardspawn: PathBuf,
    pub(super) home: QmailHome,
    pub(super) deliveries: Vec<crate::emulator::Delivery>,
    /// The same messages and recipients, each stand-in told to live 5 to
    /// 15 s, for the live points.
    pub(super) live: Vec<crate::emulator::Delivery>,
    pub(super) plan: Plan,
    pub(super) clk_tck: u64,
}

/// One baseline measurement.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Baseline {
    pub(super) loops: usize,
    pub(super) in_flight: usize,
    /// Descriptors each loop held open besides its own few.
    pub(super) extra_fds: usize,
    /// How it started the stand-in.
    pub(super) method: Method,
    pub(super) deliveries: usize,
    pub(super) elapsed: Duration,
    pub(super) max_in_flight: usize,
    /// Deliveries per second of each round.
    pub(super) rates: Vec<f64>,
    /// CPU of the loop processes themselves, µs per delivery.
    pub(super) loop_cpu_us: f64,
    /// CPU of the stand-ins, µs per delivery.
    pub(super) standin_cpu_us: f64,
    pub(super) failures: usize,
}

impl Baseline {
    /// The median of the rounds' rates.
    pub(super) fn rate(&self) -> f64 {
        median(&self.rates).unwrap_or_else(|| {
            self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
        })
    }

    /// The rounds of one baseline as one: rates kept, costs weighted
    /// by deliveries.
    pub(super) fn merge(rounds: Vec<Baseline>) -> Option<Baseline> {
        let mut it = rounds.into_iter();
        let mut m = it.next()?;
        let w = |b: &Baseline, x: f64| x * b.deliveries as f64;
        let (mut loop_cpu, mut standin) =
            (w(&m, m.loop_cpu_us), w(&m, m.standin_cpu_us));
        for b in it {
            loop_cpu += w(&b, b.loop_cpu_us);
            standin += w(&b, b.standin_cpu_us);
            m.deliveries += b.deliveries;
            m.elapsed += b.elapsed;
            m.max_in_flight = m.max_in_flight.max(b.max_in_flight);
            m.failures += b.failures;
            m.rates.extend(b.rates);
        }
        let n = m.deliveries.max(1) as f64;
        m.loop_cpu_us = loop_cpu / n;
        m.standin_cpu_us = standin / n;
        Some(m)
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
pub(super) fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> =
        xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// A point's latencies for the progress lines.
pub(super) fn describe(l: &Latency) -> String {
    format!(
        ", exit→result p50 {} p99 {} max {}{} (from the exit record: p99 \
         {}), command→start p50 {}",
        micros(l.p50_us),
        micros(l.p99_us),
        micros(l.max_us),
        if l.kernel { "" } else { " (records: no kernel reports)" },
        micros(l.record_p99_us),
        micros(l.to_start_p50_us)
    )
}

/// "1,200–1,350" for the rates of several rounds, "" for one.
pub(super) fn spread(rates: &[f64]) -> String {
    if rates.len() < 2 {
        return "–".into();
    }
    let lo = rates.iter().copied().fold(f64::MAX, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    format!("{}–{}", thousands(lo), thousands(hi))
}

/// Exit to result, in µs; and, to see where a delivery in flight
/// waits, the medians of command → stand-in start and start → exit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Latency {
    /// Results matched with the exit they count from, and not.
    pub(super) matched: usize,
    pub(super) unmatched: usize,
    /// From the child's exit as the kernel reported it ([`crate::exits`])
    /// where the bench could watch exits, else from the stand-in's exit
    /// record; `kernel` says which.
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) max_us: f64,
    pub(super) kernel: bool,
    /// From the stand-in's exit record, its last act before `exit`.
    pub(super) record_p99_us: f64,
    pub(super) to_start_p50_us: f64,
    pub(super) running_p50_us: f64,
}

/// A result as the emulator saw it: the pid in its body, when its
/// command was sent and when it arrived, in monotonic ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Arrival {
    pub(super) pid: Option<u32>,
    pub(super) sent: u64,
    pub(super) answered: u64,
}

/// One shardspawn measurement.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Point {
    pub(super) in_flight: usize,
    pub(super) width: usize,
    pub(super) shards: u16,
    pub(super) slots: usize,
    pub(super) deliveries: usize,
    pub(super) elapsed: Duration,
    /// Deliveries per second of each round.
    pub(super) rates: Vec<f64>,
    pub(super) max_in_flight: usize,
    pub(super) mean_in_flight: f64,
    pub(super) peak_running: usize,
    /// Supervisor + shards, µs of CPU per delivery.
    pub(super) cpu_us: f64,
    /// Summed VmHWM of the supervisor and shards, KiB.
    pub(super) hwm_kib: u64,
    pub(super) standin_cpu_us: f64,
    pub(super) emulator_cpu_us: f64,
    pub(super) latency: Option<Latency>,
    pub(super) problems: Vec<String>,
}

impl Point {
    /// The median of the rounds' rates.
    pub(super) fn rate(&self) -> f64 {
        median(&self.rates).unwrap_or_else(|| {
            self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
        })
    }

    /// The rounds of one point as one: rates kept, CPU weighted by
    /// deliveries, peaks the highest, latencies pooled.
    pub(super) fn merge(rounds: Vec<(Point, LatRaw)>) -> Option<Point> {
        let mut it = rounds.into_iter();
        let (mut m, mut lat) = it.next()?;
        let w = |p: &Point, x: f64| x * p.deliveries as f64;
        let (mut cpu, mut standin, mut emu) = (
            w(&m, m.cpu_us),
            w(&m, m.standin_cpu_us),
            w(&m, m.emulator_cpu_us),
        );
        let mut busy = m.mean_in_flight * m.elapsed.as_secs_f64();
        for (p, l) in it {
            cpu += w(&p, p.cpu_us);
            standin += w(&p, p.standin_cpu_us);
            emu += w(&p, p.emulator_cpu_us);
            busy += p.mean_in_flight * p.elapsed.as_secs_f64();
            m.slots = m.slots.min(p.slots);
            m.deliveries += p.deliveries;
            m.elapsed += p.elapsed;
            m.rates.extend(p.rates);
            m.max_in_flight = m.max_in_flight.max(p.max_in_flight);
            m.peak_running = m.peak_running.max(p.peak_running);
            m.hwm_kib = m.hwm_kib.max(p.hwm_kib);
            m.problems.extend(p.problems);
            lat.exit.extend(l.exit);
            lat.kernel.extend(l.kernel);
            lat.kernel_unmatched += l.kernel_unmatched;
            lat.to_start.extend(l.to_start);
            lat.running.extend(l.running);
            lat.unmatched += l.unmatched;
        }
        let n = m.deliveries.max(1) as f64;
        m.cpu_us = cpu / n;
        m.standin_cpu_us = standin / n;
        m.emulator_cpu_us = emu / n;
        m.mean_in_flight = busy / m.elapsed.as_secs_f64().max(1e-9);
        m.latency = summarize(lat);
        Some(m)
    }

    /// Peak memory per delivery in flight, bytes (divided by the most in
    /// flight actually reached).
    pub(super) fn mem_per_in_flight(&self) -> f64 {
        self.hwm_kib as f64 * 1024.0 / self.max_in_flight.max(1) as f64
    }
}

/// Facts about the machine, for the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Machine {
    pub(super) nproc: usize,
    pub(super) memory: String,
    pub(super) kernel: String,
    pub(super) rustc: String,
    pub(super) nofile: String,
    pub(super) pid_max: String,
    pub(super) load_before: String,
    pub(super) load_after: String,
    pub(super) when: String,
    /// `git describe --always --dirty` where the bench ran.
    pub(super) commit: String,
    /// Where the bench's home was made.
    pub(super) home: String,
}

/// The baselines at one in flight: (in flight, one loop, one loop per
/// core).
pub(super) type BaselineRow = (usize, Option<Baseline>, Option<Baseline>);

/// Everything measured in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Results {
    pub(super) command: String,
    pub(super) deliveries: usize,
    pub(super) domains: usize,
    pub(super) machine: Machine,
    /// Per in flight: (one loop, one loop per core).
    pub(super) baselines: Vec<BaselineRow>,
    pub(super) points: Vec<Point>,
    /// One loop at 100 in flight with [`FD_SWEEP`] descriptors open,
    /// with `posix_spawn` and with the shard's clone.
    pub(super) fd_sweep: Vec<Baseline>,
    /// Many stand-ins alive at once, one point per shard count.
    pub(super) live: Vec<Point>,
    /// Rounds asked for.
    pub(super) rounds: usize,
    pub(super) duration: Duration,
}

/// Descriptors held open in the descriptor-table experiment.
pub(super) const FD_SWEEP: [usize; 3] = [0, 1000, 10_000];

/// A run's results, made up, for the tests of the report and the plot.
#[cfg(test)]
pub(super) fn sample() -> Results {
    let base = |loops, rate: f64| Baseline {
        loops,
        in_flight: 100,
        extra_fds: 0,
        method: Method::Clone,
        deliveries: 1000,
        elapsed: Duration::from_secs_f64(1000.0 / rate),
        rates: vec![rate],
        max_in_flight: 100,
        loop_cpu_us: 50.0,
        standin_cpu_us: 300.0,
        failures: 0,
    };
    let point = |in_flight, width, shards, rate: f64, cpu, hwm| Point {
        in_flight,
        width,
        shards,
        slots: in_flight,
        deliveries: 1000,
        elapsed: Duration::from_secs_f64(1000.0 / rate),
        rates: vec![rate],
        max_in_flight: in_flight,
        mean_in_flight: in_flight as f64 * 0.9,
        peak_running: 5,
        cpu_us: cpu,
        hwm_kib: hwm,
        standin_cpu_us: 300.0,
        emulator_cpu_us: 10.0,
        latency: Some(Latency {
            matched: 1000,
            unmatched: 0,
            p50_us: 100.0,
            p99_us: 900.0,
            max_us: 2000.0,
            kernel: true,
            record_p99_us: 1500.0,
            to_start_p50_us: 50.0,
            running_p50_us: 500.0,
        }),
        problems: vec![],
    };
    Results {
        command: "bench".into(),
        deliveries: 1000,
        domains: 10,
        machine: Machine { nproc: 2, ..Machine::default() },
        baselines: vec![
            (100, Some(base(1, 1000.0)), Some(base(2, 2000.0))),
            (10_000, Some(base(1, 1000.0)), Some(base(2, 2000.0))),
        ],
        points: vec![
            point(100, 1, 1, 960.0, 40.0, 6000),
            point(100, 2, 1, 950.0, 41.0, 6000),
            point(100, 2, 2, 1900.0, 45.0, 9000),
            point(10_000, 2, 1, 900.0, 60.0, 30_000),
            point(10_000, 2, 2, 1850.0, 50.0, 40_000),
        ],
        fd_sweep: vec![base(1, 1000.0)],
        live: vec![
            {
                let mut p = point(10_000, 2, 1, 700.0, 55.0, 30_000);
                if let Some(l) = &mut p.latency {
                    l.p99_us = 6000.0;
                }
                p
            },
            point(10_000, 2, 2, 700.0, 50.0, 40_000),
        ],
        rounds: 1,
        duration: Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {

    use super::super::latency::LatRaw;
    use super::super::run::rounds_for;
    use super::*;

    #[test]
    fn rounds_merge_into_a_median_and_weighted_costs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[1200.0, 1000.0, 1500.0]), "1,000–1,500");
        assert_eq!(spread(&[1200.0]), "–");
        // 20,000 deliveries: three rounds at 100 and 1,000 in flight,
        // one at 10,000.
        assert_eq!(rounds_for(20_000, 100, 3), 3);
        assert_eq!(rounds_for(20_000, 1000, 3), 3);
        assert_eq!(rounds_for(20_000, 10_000, 3), 1);
        assert_eq!(rounds_for(2000, 1000, 1), 1);
        assert_eq!(rounds_for(100, 10_000, 3), 1);

        let r = sample();
        let mut a = r.points[0].clone();
        let mut b = a.clone();
        (a.deliveries, a.cpu_us, a.rates, a.hwm_kib) =
            (1000, 40.0, vec![900.0], 10);
        (b.deliveries, b.cpu_us, b.rates, b.hwm_kib) =
            (3000, 80.0, vec![1100.0], 30);
        let raw = |exit: Vec<u64>| LatRaw {
            to_start: exit.clone(),
            running: exit.clone(),
            kernel: exit.iter().map(|t| t / 2).collect(),
            kernel_unmatched: 0,
            exit,
            unmatched: 1,
        };
        let m = Point::merge(vec![
            (a, raw(vec![1000, 2000])),
            (b, raw(vec![3000])),
        ])
        .unwrap();
        assert_eq!(m.deliveries, 4000);
        assert_eq!(m.cpu_us, 70.0);
        assert_eq!(m.rate(), 1000.0);
        assert_eq!(m.hwm_kib, 30);
        let l = m.latency.unwrap();
        assert_eq!((l.matched, l.unmatched, l.max_us), (3, 0, 1.5));
        assert_eq!(l.record_p99_us, 3.0);
        assert!(Point::merge(vec![]).is_none());

        let one = r.baselines[0].1.clone().unwrap();
        let mut two = one.clone();
        two.rates = vec![3000.0];
        two.loop_cpu_us = 150.0;
        let m = Baseline::merge(vec![one.clone(), two, one]).unwrap();
        assert_eq!(m.rate(), 1000.0);
        assert_eq!(m.deliveries, 3000);
        assert!((m.loop_cpu_us - 250.0 / 3.0).abs() < 1e-9);
    }
}
