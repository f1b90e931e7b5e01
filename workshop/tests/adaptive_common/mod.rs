//! What the end-to-end tests of issue #7 share (adaptive_strict_receiver.rs,
//! response_rules.rs, rate_limits.rs, suspension.rs, status_per_key.rs):
//! the response rules file, the stand-in outputs that play a receiver's
//! pushback, and the suspension `Z` with its UTC time read back.
//!
//! The spawner, its log, recording and status files come from
//! `limits_common`'s [`Rig`].
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardspawn_workshop::remote::{greeting_failure, out_directive};
use shardspawn_workshop::util::{deadline_in, wait_for};

use crate::limits_common::{Rig, show};

/// The response rules file, relative to the home (the default of
/// `SHARDSPAWN_RESPONSES`).
pub const RULES: &str = "control/responserules";

/// Writes the response rules file of `rig`.
pub fn write_rules(rig: &Rig, text: &str) {
    rig.home.write_file(RULES, text.as_bytes()).unwrap();
}

/// The stand-in directive that makes it answer qmail-remote's greeting
/// failure with reply line `said` (e.g. `421 4.7.0 Try again later`).
pub fn refuse(said: &str) -> String {
    out_directive(&greeting_failure(said))
}

/// The result qmail-send gets for [`refuse`]`(said)`.
pub fn refused(said: &str) -> Vec<u8> {
    let out = greeting_failure(said);
    out[..out.len() - 1].to_vec()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Unix seconds of a `YYYY-MM-DD HH:MM:SS` UTC time.
pub fn parse_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Checks that `body` is exactly the suspension `Z` of spec7.md for
/// `key` with `reason`, and returns the Unix seconds it is suspended
/// until.
pub fn suspended_until(body: &[u8], key: &str, reason: &str) -> u64 {
    let text = String::from_utf8_lossy(body);
    let head = format!("Zshardspawn: {key} is suspended until ");
    let tail = format!(" UTC: {reason}. (#4.4.5)\n");
    let time = text
        .strip_prefix(&head)
        .and_then(|t| t.strip_suffix(&tail))
        .unwrap_or_else(|| {
            panic!(
                "not the suspension of {key} for {reason:?}: {}",
                show(body)
            )
        });
    parse_utc(time).unwrap_or_else(|| panic!("bad time in {}", show(body)))
}

/// Waits until the wall clock is past `until` (Unix seconds, as the
/// suspension text gives it, cut to the second): the condition after
/// which the key must take deliveries again.
pub fn wait_until_past(until: u64) {
    let ok = wait_for(
        || unix_now() > until,
        deadline_in(Duration::from_secs(
            until.saturating_sub(unix_now()) + 20,
        )),
    );
    assert!(ok, "the clock never passed {until}");
}

#[test]
fn utc_times_are_read_back() {
    assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
    assert_eq!(parse_utc("2026-11-28 16:05:12"), Some(1_795_881_912));
    assert_eq!(parse_utc("2000-02-29 23:59:59"), Some(951_868_799));
    for bad in ["2026-11-28T16:05:12", "2026-13-01 00:00:00", "x", ""] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
}
