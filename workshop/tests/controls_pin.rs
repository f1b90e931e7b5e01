//! Issue 17: `shardspawn control pin`, through the real binary. A limit
//! pinned by hand (given before the key exists) is the key's limit: the
//! recorded peak of its stand-ins never goes above it, though the limits
//! file allows five times as many; when the pin ends, the key has its
//! configured limit again and uses it. A pinned rate spaces the starts.

mod controls_common;
mod limits_common;

use std::time::Duration;

use shardspawn_workshop::emulator::Delivery;
use shardspawn_workshop::recorder::Interval;

use controls_common::{control, wait_read};
use limits_common::{Rig, finish, rcpt, run_all_k};

const KEY: &str = "pin.test";

/// `n` deliveries to [`KEY`], each taking `ms` milliseconds.
fn load(rig: &Rig, n: usize, ms: u32) -> Vec<Delivery> {
    let sleep = format!("sleep{ms}");
    (0..n)
        .map(|_| Delivery {
            messid: rig.messid.clone(),
            sender: b"s@origin.test".to_vec(),
            recipient: rcpt(&[&sleep], KEY),
        })
        .collect()
}

/// Most of `intervals` open at once.
fn peak(intervals: &[Interval]) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for i in intervals {
        events.push((i.start, 1));
        events.push((i.end.unwrap_or(u64::MAX), -1));
    }
    events.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn a_pinned_limit_is_never_exceeded_and_ends_when_it_says() {
    let rig = Rig::new(&format!("{KEY}:10\n"), 2);
    let mut emu = rig.start(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);
    let said = control(
        &rig,
        &["pin", KEY, "--limit", "2", "--for", "4s", "--reason", "careful"],
    );
    assert!(said.starts_with("pin.test limit pinned to 2 until "), "{said}");
    let list = control(&rig, &["list"]);
    assert!(list.contains("pin.test limit pinned to 2"), "{list}");
    assert!(list.contains("by hand: root: careful"), "{list}");
    wait_read(&rig, 1, 2);

    // 20 at once, 100 ms each: at most 2 ran at a time.
    run_all_k(&rig, &mut emu, &load(&rig, 20, 100), 20);
    let pinned = rig.recording().intervals().to_vec();
    assert_eq!(pinned.len(), 20);
    assert_eq!(peak(&pinned), 2, "the pin was exceeded or never reached");
    rig.wait_log(&["pin.test: limit pinned to 2 until", "careful"], 1);

    // The pin ends at its time: the configured 10 again.
    rig.wait_log(&["pin.test: the pin by hand ended"], 1);
    rig.wait_key(KEY, |k| k.effective == 10);
    run_all_k(&rig, &mut emu, &load(&rig, 20, 300), 20);
    let after = rig.recording().intervals()[20..].to_vec();
    let most = peak(&after);
    assert!((3..=10).contains(&most), "after the pin: {most} at once");
    let list = control(&rig, &["list"]);
    assert!(!list.contains("pinned"), "{list}");
    finish(&mut emu);
}

#[test]
fn a_pinned_rate_spaces_the_starts() {
    let rig = Rig::new(&format!("{KEY}:10\n"), 1);
    let mut emu = rig.start(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);
    control(&rig, &["pin", KEY, "--rate", "300/m", "--for", "1h"]);
    wait_read(&rig, 1, 1);
    run_all_k(&rig, &mut emu, &load(&rig, 6, 0), 6);
    let mut starts: Vec<u64> =
        rig.recording().intervals().iter().map(|i| i.start).collect();
    starts.sort_unstable();
    for pair in starts.windows(2) {
        let gap = Duration::from_nanos(pair[1] - pair[0]);
        // 300/m: one each 200 ms, less the loop's lateness at most.
        assert!(gap >= Duration::from_millis(180), "{gap:?}");
    }
    rig.wait_log(
        &["pin.test: rate pinned to 300/m until", "by hand: root"],
        1,
    );
    finish(&mut emu);
}
