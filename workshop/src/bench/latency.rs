//! From each result back to the exit of the child that served it: the
//! matching, and the percentiles of the times.

use std::collections::HashMap;

use super::measures::{Arrival, Latency};

/// Raw times of one or more rounds, ns: exit → result, command →
/// start, start → exit; and how many results found no run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LatRaw {
    pub(super) exit: Vec<u64>,
    /// From the kernel's exit report (see [`crate::exits`]) to the
    /// result; empty where the bench could not watch exits.
    pub(super) kernel: Vec<u64>,
    pub(super) kernel_unmatched: usize,
    pub(super) to_start: Vec<u64>,
    pub(super) running: Vec<u64>,
    pub(super) unmatched: usize,
}

/// Matches each result with the run of the stand-in that served it:
/// the latest (exit, start) of its pid whose exit is not after the
/// result's arrival. A pid is reused only after its process is reaped,
/// and the kernel hands pids out in a cycle, so the last exit before the
/// result is the one that made it.
pub(super) fn match_runs(
    runs: &mut HashMap<u32, Vec<(u64, u64)>>,
    arrivals: &[Arrival],
) -> LatRaw {
    for v in runs.values_mut() {
        v.sort_unstable();
    }
    let mut raw = LatRaw::default();
    for a in arrivals {
        let run = a.pid.and_then(|p| {
            let v = runs.get(&p)?;
            let i = v.partition_point(|&(end, _)| end <= a.answered);
            i.checked_sub(1).map(|i| v[i])
        });
        match run {
            Some((end, start)) => {
                raw.exit.push(a.answered - end);
                raw.to_start.push(start.saturating_sub(a.sent));
                raw.running.push(end.saturating_sub(start));
            }
            None => raw.unmatched += 1,
        }
    }
    raw
}

/// From each result back to its child's exit as the kernel reported
/// it: the latest exit of its pid not after the result's arrival (as in
/// [`match_runs`]); and how many results found none.
pub(super) fn match_exits(
    exits: &crate::exits::Exits,
    arrivals: &[Arrival],
) -> (Vec<u64>, usize) {
    let found: Vec<u64> = arrivals
        .iter()
        .filter_map(|a| {
            let times = exits.by_pid.get(&a.pid?)?;
            let end = times.iter().filter(|&&t| t <= a.answered).max()?;
            Some(a.answered - end)
        })
        .collect();
    let unmatched = arrivals.len() - found.len();
    (found, unmatched)
}

/// The percentiles of raw times, in µs; `None` with no matched result.
pub(super) fn summarize(mut raw: LatRaw) -> Option<Latency> {
    for v in
        [&mut raw.exit, &mut raw.kernel, &mut raw.to_start, &mut raw.running]
    {
        v.sort_unstable();
    }
    let us = |v: &[u64], p: f64| percentile(v, p).map(|ns| ns as f64 / 1000.0);
    let kernel = !raw.kernel.is_empty();
    let (exit, unmatched) = if kernel {
        (&raw.kernel, raw.kernel_unmatched)
    } else {
        (&raw.exit, raw.unmatched)
    };
    Some(Latency {
        matched: exit.len(),
        unmatched,
        p50_us: us(exit, 50.0)?,
        p99_us: us(exit, 99.0)?,
        max_us: us(exit, 100.0)?,
        kernel,
        record_p99_us: us(&raw.exit, 99.0)?,
        to_start_p50_us: us(&raw.to_start, 50.0)?,
        running_p50_us: us(&raw.running, 50.0)?,
    })
}

/// The nearest-rank percentile `p` (0 to 100) of ascending `sorted`.
pub(super) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::super::measures::Arrival;
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn exits_match_the_latest_end_before_the_result() {
        // Pid 10 ran twice (started at 800 and 4,000); each result takes
        // the run whose exit is just before it.
        let mut runs = HashMap::from([
            (10, vec![(5_000, 4_000), (1_000, 800)]),
            (11, vec![(2_000, 1_900)]),
        ]);
        let a = |pid, sent, answered| Arrival { pid, sent, answered };
        let arrivals = [
            a(Some(10), 500, 1_500),
            a(Some(10), 3_000, 9_000),
            a(Some(11), 1_000, 2_100),
            a(Some(12), 0, 3_000), // no such pid
            a(None, 0, 3_000),     // no pid in the body
            a(Some(11), 0, 1_000), // before any exit of 11
        ];
        let mut raw = match_runs(&mut runs, &arrivals);
        assert_eq!(raw.exit, [500, 4_000, 100]);
        let l = summarize(raw.clone()).unwrap();
        assert_eq!((l.matched, l.unmatched, l.kernel), (3, 3, false));
        // Exit to result 500, 4,000, 100 ns; sent to start 300, 1,000,
        // 900; start to exit 200, 1,000, 100.
        assert_eq!((l.p50_us, l.max_us, l.record_p99_us), (0.5, 4.0, 4.0));
        assert_eq!((l.to_start_p50_us, l.running_p50_us), (0.9, 0.2));
        // The kernel saw each exit a little later than the record, and
        // the second run of 10 not at all: that result matches its first
        // exit, as a pid's earlier run would.
        let exits = crate::exits::Exits {
            by_pid: HashMap::from([(10, vec![1_200]), (11, vec![2_050])]),
            dropped: false,
        };
        (raw.kernel, raw.kernel_unmatched) = match_exits(&exits, &arrivals);
        assert_eq!(
            (&raw.kernel[..], raw.kernel_unmatched),
            (&[300, 7_800, 50][..], 3)
        );
        let l = summarize(raw).unwrap();
        assert_eq!((l.matched, l.unmatched, l.kernel), (3, 3, true));
        assert_eq!((l.p50_us, l.max_us, l.record_p99_us), (0.3, 7.8, 4.0));
        let none = [a(Some(1), 0, 5)];
        assert!(summarize(match_runs(&mut HashMap::new(), &none)).is_none());
    }
}
