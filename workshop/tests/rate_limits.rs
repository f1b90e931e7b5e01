//! Issue #7: a key with a rate (`d1.test:20,10/s` in the limits file)
//! spreads its starts evenly, at most one every period/N with no burst,
//! and a delivery held by the rate past the hold bounds is answered with
//! a `Z` that names the key and the rate.
//!
//! The spacing is read from the recording: each stand-in writes its own
//! start on the monotonic clock, so the gaps are the spawner's doing,
//! not the test's. Adaptation is off (`SHARDSPAWN_INITIAL_LIMIT=0`) so
//! that only the rate shapes the starts.

mod limits_common;

use shardspawn_workshop::remote::default_result;

use limits_common::{Rig, assert_no_record_yet, finish, next, rcpt, show};

fn assert_body(body: &[u8], want: &[u8]) {
    assert_eq!(show(body), show(want));
}

#[test]
fn starts_are_spaced_at_the_configured_rate() {
    const N: usize = 8;
    // 10/s: one start every 100 ms. The default key has a rate too, so
    // a domain with no line of its own is spaced per domain.
    let rig = Rig::new("d1.test:20,10/s\n:20,20/s\n", 2);
    let mut emu = rig.start(&[
        ("SHARDSPAWN_INITIAL_LIMIT", "0"),
        ("SHARDSPAWN_HOLD_MAX", "100"),
    ]);
    // All sent at once, quick stand-ins: without the rate they would
    // all start within a few milliseconds.
    for delnum in 0..N as u16 {
        rig.send(&mut emu, delnum, &rcpt(&[], "d1.test"));
        rig.send(&mut emu, 100 + delnum, &rcpt(&[], "other.test"));
    }
    for _ in 0..2 * N {
        let r = next(&mut emu);
        let host = if r.delnum < 100 { "d1.test" } else { "other.test" };
        assert_body(&r.body, &default_result(host.as_bytes()));
    }
    let recording = rig.recording();
    for (host, period_ms) in [("d1.test", 100), ("other.test", 50)] {
        let mut starts: Vec<u64> = recording
            .intervals()
            .iter()
            .filter(|i| i.host == host)
            .map(|i| i.start)
            .collect();
        assert_eq!(starts.len(), N, "{host}");
        starts.sort_unstable();
        let gaps: Vec<u64> =
            starts.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
        // The spawner schedules the starts; each stand-in records its
        // own a little after exec, so one late exec can shorten the
        // next gap by that much. 20% covers it; a burst would not.
        let least = period_ms * 8 / 10;
        assert!(
            gaps.iter().all(|&g| g >= least),
            "{host}: gaps {gaps:?} ms, period {period_ms} ms"
        );
    }
    rig.wait_key("d1.test", |k| k.rate == "10/s" && k.limit == 20);
    finish(&mut emu);
}

#[test]
fn a_delivery_held_by_the_rate_past_the_hold_bounds_is_deferred() {
    // 1/m: after the first start, the next may start only a minute
    // later; the hold lasts 2 s and two may wait.
    let rig = Rig::new("d1.test:5,1/m\n", 2);
    let mut emu = rig.start(&[
        ("SHARDSPAWN_INITIAL_LIMIT", "0"),
        ("SHARDSPAWN_HOLD_SECONDS", "2"),
        ("SHARDSPAWN_HOLD_MAX", "2"),
    ]);
    rig.send(&mut emu, 0, &rcpt(&[], "d1.test"));
    assert_body(&next(&mut emu).body, &default_result(b"d1.test"));
    // Far under its limit of 5, but at its rate. One key, one shard, one
    // pipe: the three arrive in order, so the third finds two waiting
    // (unless two seconds pass between them).
    for delnum in 1..=3 {
        rig.send(&mut emu, delnum, &rcpt(&[], "d1.test"));
    }
    let r = next(&mut emu);
    assert_eq!(r.delnum, 3, "{}", show(&r.body));
    assert_body(
        &r.body,
        b"Zshardspawn: d1.test is at its rate of 1/m; 2 deliveries already \
          wait for it. (#4.4.5)\n",
    );
    assert_no_record_yet(&mut emu);
    rig.wait_key("d1.test", |k| k.rate == "1/m");
    let mut held = [next(&mut emu), next(&mut emu)];
    held.sort_by_key(|r| r.delnum);
    for (r, delnum) in held.iter().zip([1, 2]) {
        assert_eq!(r.delnum, delnum);
        assert_body(
            &r.body,
            b"Zshardspawn: d1.test is at its rate of 1/m; held 2s, longer \
              than the hold limit. (#4.4.5)\n",
        );
    }
    finish(&mut emu);
    assert_eq!(rig.recording().started(), 1);
}
