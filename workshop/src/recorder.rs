//! The recording of when each stand-in qmail-remote ran, and the peak
//! number of them that ran at once per key.
//!
//! The stand-in ([`crate::remote`]) appends one line when it starts and
//! one just before it exits, to the file named by
//! [`crate::remote::ENV_RECORD`]:
//!
//! ```text
//! S <pid>:<parent pid> <monotonic ns> <host>
//! E <pid> <monotonic ns> <host>
//! ```
//!
//! The parent pid (the shard that started the stand-in, or whoever
//! adopted it if that shard was already gone) is optional: a line
//! written without it (`S <pid> ...`) parses with no parent.
//!
//! Each line is written with one `write(2)` to a file opened `O_APPEND`
//! and is shorter than 512 bytes, so lines from concurrent processes never
//! mix. Times come from `CLOCK_MONOTONIC`, so they compare across
//! processes. A process killed before it exits (a `crash`, a `hang`)
//! leaves a start with no end: its interval counts as open for ever.
//!
//! So two spawners can share one recording: the relays of a fleet
//! (issue 18), each with its own home, point their stand-ins at one
//! file, and the peak of a key is measured across the fleet; the parent
//! pid says which relay's shard started each stand-in.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use nix::time::{ClockId, clock_gettime};

/// Longest host, in bytes, that a recording line carries; longer ones
/// are cut so that the line stays below 512 bytes.
pub const MAX_HOST: usize = 400;

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock of every recording line.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make intervals
    // look earlier, never overlap differently.
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs * 1_000_000_000 + nanos
        }
        Err(_) => 0,
    }
}

/// One recording line, `S`/`E`, as bytes ready for one `write(2)`. A
/// newline or carriage return in the host becomes `?`, and the host is
/// cut at [`MAX_HOST`] bytes.
pub fn line(mark: u8, pid: u32, ns: u64, host: &[u8]) -> Vec<u8> {
    line_with_parent(mark, pid, None, ns, host)
}

/// As [`line`], with the parent pid after the pid (`pid:parent`) when
/// `parent` is given: what ties a stand-in to the shard process that
/// started it.
pub fn line_with_parent(
    mark: u8,
    pid: u32,
    parent: Option<u32>,
    ns: u64,
    host: &[u8],
) -> Vec<u8> {
    let pid = match parent {
        Some(parent) => format!("{pid}:{parent}"),
        None => pid.to_string(),
    };
    let mut out = format!("{} {pid} {ns} ", mark as char).into_bytes();
    let host = &host[..host.len().min(MAX_HOST)];
    out.extend(host.iter().map(|&b| match b {
        b'\n' | b'\r' => b'?',
        b => b,
    }));
    out.push(b'\n');
    out
}

/// When one stand-in qmail-remote ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// Its process id.
    pub pid: u32,
    /// Its parent's pid when it started, if the line says.
    pub parent: Option<u32>,
    /// Its host argument (lossy UTF-8).
    pub host: String,
    /// Monotonic nanoseconds when it started.
    pub start: u64,
    /// Monotonic nanoseconds just before it exited; `None` if it did not
    /// reach an exit (killed, crashed, still running).
    pub end: Option<u64>,
}

/// A parsed recording file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    intervals: Vec<Interval>,
}

impl Recording {
    /// Reads and parses the recording at `path`. A missing file is an
    /// empty recording: no stand-in has started yet.
    pub fn read(path: impl AsRef<Path>) -> io::Result<Recording> {
        match std::fs::read(path) {
            Ok(bytes) => Recording::parse(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Recording::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Parses recording text. A last line without its newline is being
    /// written right now and is skipped. An `E` pairs with the latest
    /// open `S` of the same pid (pids are reused only after the earlier
    /// process is gone). A malformed line, or an `E` with no open `S`, is
    /// `InvalidData`.
    pub fn parse(bytes: &[u8]) -> io::Result<Recording> {
        let mut intervals: Vec<Interval> = Vec::new();
        let mut open: HashMap<u32, usize> = HashMap::new();
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(last) => &bytes[..=last],
            None => &[][..],
        };
        for (n, raw) in complete.split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            let bad = |why: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "recording line {}: {why}: {:?}",
                        n + 1,
                        String::from_utf8_lossy(raw)
                    ),
                )
            };
            let mut fields = raw.splitn(4, |&b| b == b' ');
            let mark = fields.next().unwrap_or_default();
            // `pid` or `pid:parent`.
            let pids = fields.next().unwrap_or_default();
            let (pid, parent) = match pids.iter().position(|&b| b == b':') {
                Some(colon) => (&pids[..colon], Some(&pids[colon + 1..])),
                None => (pids, None),
            };
            let pid = number(Some(pid)).ok_or_else(|| bad("bad pid"))?;
            let parent = parent
                .map(|p| {
                    number(Some(p))
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or_else(|| bad("bad parent pid"))
                })
                .transpose()?;
            let ns = number(fields.next()).ok_or_else(|| bad("bad time"))?;
            let host = String::from_utf8_lossy(fields.next().unwrap_or(b""))
                .into_owned();
            let pid = u32::try_from(pid).map_err(|_| bad("bad pid"))?;
            match mark {
                b"S" => {
                    open.insert(pid, intervals.len());
                    intervals.push(Interval {
                        pid,
                        parent,
                        host,
                        start: ns,
                        end: None,
                    });
                }
                b"E" => {
                    if parent.is_some() {
                        return Err(bad("an end with a parent pid"));
                    }
                    let i = open
                        .remove(&pid)
                        .ok_or_else(|| bad("end without a start"))?;
                    intervals[i].end = Some(ns);
                }
                _ => return Err(bad("mark is neither S nor E")),
            }
        }
        Ok(Recording { intervals })
    }

    /// Every interval, in the order the starts were recorded.
    pub fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    /// How many stand-ins started.
    pub fn started(&self) -> usize {
        self.intervals.len()
    }

    /// How many stand-ins reached their exit.
    pub fn ended(&self) -> usize {
        self.intervals.iter().filter(|i| i.end.is_some()).count()
    }

    /// For each key (computed from the host by `key`), the largest number
    /// of intervals with that key that were open at one instant.
    ///
    /// A sweep over the sorted starts and ends. At equal times ends are
    /// taken before starts: a delivery that starts in the nanosecond
    /// another one ended did not overlap it (a zero-length interval still
    /// counts at its instant). An interval with no end is open for ever.
    pub fn peak_by(
        &self,
        key: impl Fn(&str) -> String,
    ) -> BTreeMap<String, usize> {
        // (time, kind, key index). Kind orders the events of one
        // instant: ends of intervals that started earlier (0), then
        // starts (1), then ends of zero-length intervals (2), which must
        // not be taken before their own start.
        let mut keys: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut events: Vec<(u64, u8, usize)> = Vec::new();
        for interval in &self.intervals {
            let k = key(&interval.host);
            let next = keys.len();
            let i = *index.entry(k.clone()).or_insert(next);
            if i == next {
                keys.push(k);
            }
            events.push((interval.start, 1, i));
            if let Some(end) = interval.end {
                let kind = if end == interval.start { 2 } else { 0 };
                events.push((end, kind, i));
            }
        }
        events.sort_unstable();
        let mut now = vec![0usize; keys.len()];
        let mut peak = vec![0usize; keys.len()];
        for (_, kind, i) in events {
            if kind == 1 {
                now[i] += 1;
                peak[i] = peak[i].max(now[i]);
            } else {
                // An end recorded before its start (clock skew cannot
                // happen on one monotonic clock, but a crafted file can)
                // must not wrap.
                now[i] = now[i].saturating_sub(1);
            }
        }
        keys.into_iter().zip(peak).collect()
    }

    /// The largest number of intervals open at one instant, any host.
    pub fn peak(&self) -> usize {
        self.peak_by(|_| String::new()).values().copied().max().unwrap_or(0)
    }

    /// The largest number of intervals chosen by `pick` open at one
    /// instant `t` with `from <= t < to`: a peak within one phase of a
    /// run (before an outage, during it, after it). Open at `t` means as
    /// in [`Recording::peak_by`]: started at or before `t`, not ended
    /// before or at it (a zero-length interval counts at its instant).
    pub fn peak_within(
        &self,
        pick: impl Fn(&Interval) -> bool,
        from: u64,
        to: u64,
    ) -> usize {
        let picked: Vec<&Interval> =
            self.intervals.iter().filter(|i| pick(i)).collect();
        let open_at = |t: u64| {
            picked
                .iter()
                .filter(|i| {
                    i.start <= t
                        && i.end
                            .is_none_or(|e| e > t || (e == t && e == i.start))
                })
                .count()
        };
        // The count only rises at a start, so the peak is at `from` or
        // at a start inside the window.
        picked
            .iter()
            .map(|i| i.start)
            .filter(|&s| s > from && s < to)
            .chain((from < to).then_some(from))
            .map(open_at)
            .max()
            .unwrap_or(0)
    }

    /// Starts of intervals chosen by `pick`, sorted.
    pub fn starts(&self, pick: impl Fn(&Interval) -> bool) -> Vec<u64> {
        let mut starts: Vec<u64> = self
            .intervals
            .iter()
            .filter(|i| pick(i))
            .map(|i| i.start)
            .collect();
        starts.sort_unstable();
        starts
    }
}

/// The most of `starts` (sorted, ns) in any window `[t, t + window)`
/// that begins at one of them: the busiest stretch of that length, for a
/// test of a rate.
pub fn most_in_window(starts: &[u64], window: u64) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (i, &t) in starts.iter().enumerate() {
        end = end.max(i);
        while end < starts.len() && starts[end] < t.saturating_add(window) {
            end += 1;
        }
        most = most.max(end - i);
    }
    most
}

fn number(field: Option<&[u8]>) -> Option<u64> {
    let field = field?;
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(text: &str) -> Recording {
        Recording::parse(text.as_bytes()).unwrap()
    }

    fn peaks(r: &Recording) -> Vec<(String, usize)> {
        r.peak_by(|h| h.to_string()).into_iter().collect()
    }

    #[test]
    fn line_is_parsed_back() {
        let mut text = line(b'S', 7, 100, b"d1.test");
        text.extend(line(b'E', 7, 250, b"d1.test"));
        let r = Recording::parse(&text).unwrap();
        assert_eq!(
            r.intervals(),
            &[Interval {
                pid: 7,
                parent: None,
                host: "d1.test".into(),
                start: 100,
                end: Some(250)
            }]
        );
        assert_eq!((r.started(), r.ended()), (1, 1));
    }

    #[test]
    fn parent_pid_is_parsed_back() {
        let mut text = line_with_parent(b'S', 7, Some(3), 100, b"d1.test");
        assert_eq!(text, b"S 7:3 100 d1.test\n");
        text.extend(line(b'E', 7, 250, b"d1.test"));
        text.extend(line(b'S', 8, 260, b"d2.test"));
        let r = Recording::parse(&text).unwrap();
        assert_eq!(r.intervals()[0].parent, Some(3));
        assert_eq!(r.intervals()[0].end, Some(250));
        assert_eq!(r.intervals()[1].parent, None);
        for text in ["S 1: 1 a\n", "S 1:x 1 a\n", "S :2 1 a\n"] {
            assert!(Recording::parse(text.as_bytes()).is_err(), "{text:?}");
        }
        // An end names no parent.
        assert!(Recording::parse(b"S 1:2 1 a\nE 1:2 2 a\n").is_err());
    }

    #[test]
    fn line_is_short_and_single() {
        let host = vec![b'\n'; 10_000];
        let l = line(b'S', u32::MAX, u64::MAX, &host);
        assert!(l.len() < 512);
        assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(l.last(), Some(&b'\n'));
    }

    #[test]
    fn host_with_spaces_survives() {
        let r = rec("S 1 5 a b c\nE 1 6 a b c\n");
        assert_eq!(r.intervals()[0].host, "a b c");
    }

    #[test]
    fn overlapping_intervals_per_key() {
        let r = rec("S 1 10 a\nS 2 20 a\nS 3 25 b\nE 1 30 a\n\
             S 4 30 a\nE 2 40 a\nE 3 41 b\nE 4 50 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(r.peak(), 3);
    }

    #[test]
    fn end_and_start_at_the_same_time_do_not_overlap() {
        // 1 ends at 30 exactly when 2 starts: never two at once.
        let r = rec("S 1 10 a\nE 1 30 a\nS 2 30 a\nE 2 40 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 1)]);
        // Recorded in the other order in the file: same answer.
        let r = rec("S 2 30 a\nS 1 10 a\nE 2 40 a\nE 1 30 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 1)]);
    }

    #[test]
    fn equal_starts_overlap() {
        let r = rec("S 1 10 a\nS 2 10 a\nE 1 11 a\nE 2 11 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 2)]);
    }

    #[test]
    fn zero_length_interval_counts_once() {
        let r = rec("S 1 10 a\nE 1 10 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 1)]);
    }

    #[test]
    fn open_interval_lasts_for_ever() {
        // 1 crashed (no E); 2 and 3 run much later, one after the other.
        let r = rec("S 1 10 a\nS 2 100 a\nE 2 200 a\nS 3 300 a\n");
        assert_eq!(peaks(&r), vec![("a".into(), 2)]);
        assert_eq!((r.started(), r.ended()), (3, 1));
    }

    #[test]
    fn reused_pid_pairs_with_latest_start() {
        let r = rec("S 9 10 a\nS 9 100 b\nE 9 150 b\n");
        assert_eq!(r.intervals()[0].end, None);
        assert_eq!(r.intervals()[1].end, Some(150));
    }

    #[test]
    fn key_function_groups_hosts() {
        let r = rec("S 1 10 A.test\nS 2 11 a.test\nE 1 20 A.test\n\
             E 2 21 a.test\n");
        let p = r.peak_by(|h| h.to_ascii_lowercase());
        assert_eq!(p.get("a.test"), Some(&2));
    }

    #[test]
    fn partial_last_line_is_skipped() {
        let r = rec("S 1 10 a\nE 1 2");
        assert_eq!(r.ended(), 0);
        assert_eq!(r.started(), 1);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for text in ["X 1 1 a\n", "S x 1 a\n", "S 1 -1 a\n", "E 1 5 a\n"] {
            assert!(Recording::parse(text.as_bytes()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn peak_within_a_window() {
        // a: 10-30, 20-40, 35-50; b: 25-60; 9 never ends.
        let r = rec("S 1 10 a\nS 2 20 a\nS 3 25 b\nE 1 30 a\n\
             S 4 35 a\nE 2 40 a\nE 4 50 a\nE 3 60 b\nS 9 70 a\n");
        let a = |i: &Interval| i.host == "a";
        assert_eq!(r.peak_within(a, 0, 100), 2);
        // Open at 30: only 2 (1 ended at 30); at 35: 2 and 4.
        assert_eq!(r.peak_within(a, 30, 35), 1);
        assert_eq!(r.peak_within(a, 30, 36), 2);
        assert_eq!(r.peak_within(a, 41, 69), 1);
        assert_eq!(r.peak_within(a, 50, 70), 0);
        assert_eq!(r.peak_within(a, 70, 1000), 1);
        assert_eq!(r.peak_within(|_| true, 25, 26), 3);
        assert_eq!(r.peak_within(|_| true, 5, 5), 0);
        assert_eq!(r.starts(a), [10, 20, 35, 70]);
    }

    #[test]
    fn most_in_window_counts_a_burst() {
        let ms = 1_000_000;
        let starts = [0, 10 * ms, 20 * ms, 500 * ms, 501 * ms, 502 * ms];
        assert_eq!(most_in_window(&starts, 100 * ms), 3);
        assert_eq!(most_in_window(&starts, 10 * ms), 3);
        assert_eq!(most_in_window(&starts, 11 * ms), 3);
        assert_eq!(most_in_window(&starts, 21 * ms), 3);
        assert_eq!(most_in_window(&starts, ms), 1);
        assert_eq!(most_in_window(&starts, 2 * ms), 2);
        assert_eq!(most_in_window(&starts, 1000 * ms), 6);
        assert_eq!(most_in_window(&[], ms), 0);
    }

    #[test]
    fn missing_file_is_empty() {
        let r = Recording::read("/nonexistent/shardspawn/recording").unwrap();
        assert_eq!(r.started(), 0);
        assert!(r.peak_by(|h| h.into()).is_empty());
    }

    /// The peak by definition: at each start time, after every start at
    /// that time, count the intervals open there.
    fn peak_by_definition(spans: &[(u64, Option<u64>)]) -> usize {
        let open_at = |t: u64| {
            spans
                .iter()
                .filter(|&&(s, e)| match e {
                    None => s <= t,
                    Some(e) => s <= t && (e > t || (e == t && s == t)),
                })
                .count()
        };
        spans.iter().map(|&(s, _)| open_at(s)).max().unwrap_or(0)
    }

    proptest::proptest! {
        #[test]
        fn sweep_matches_definition(
            spans in proptest::collection::vec(
                (0u64..20, proptest::option::of(0u64..8)),
                0..12,
            ),
        ) {
            let spans: Vec<(u64, Option<u64>)> =
                spans.into_iter().map(|(s, d)| (s, d.map(|d| s + d))).collect();
            let mut text = Vec::new();
            for (pid, (s, _)) in spans.iter().enumerate() {
                text.extend(line(b'S', pid as u32, *s, b"h"));
            }
            for (pid, (_, e)) in spans.iter().enumerate() {
                if let Some(e) = e {
                    text.extend(line(b'E', pid as u32, *e, b"h"));
                }
            }
            let r = Recording::parse(&text).unwrap();
            proptest::prop_assert_eq!(r.peak(), peak_by_definition(&spans));
        }
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
