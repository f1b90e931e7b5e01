//! Hold first, then defer (DESIGN.md): a delivery whose key is at its
//! limit waits in that key's FIFO; it is answered with a `Z` naming the
//! key and the limit once it has waited longer than the hold bound, or
//! at once when too many already wait; a delivery that waits only for a
//! free process (its key under its limit) says so instead. A saturated
//! key never stops the others.
//!
//! Deliveries that must stay running are held at the stand-in's gate (a
//! flock the test holds); the tests wait on events only: a record, the
//! recording, or the shard's status file (published once a second).
//! Each test ends by opening the gate and closing the command pipe, and
//! checks that every delnum got exactly one record and the spawner
//! exited 0.

mod limits_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shardspawn_common::domain::shard_for;
use shardspawn_workshop::Emulator;
use shardspawn_workshop::remote::{default_result, parse_inspect, recipient};

use limits_common::{
    Rig, assert_no_record_yet, finish, next, next_n, rcpt, show,
};

/// The `Z` for a delivery held past the hold bound, `limit` 2, 1 s.
const HELD_1S: &[u8] =
    b"Zshardspawn: d1.test is at its limit of 2; held 1s, longer than \
      the hold limit. (#4.4.5)\n";

fn ok(host: &str) -> Vec<u8> {
    default_result(host.as_bytes())
}

/// Checks `body` is `want`, showing both readably.
fn assert_body(body: &[u8], want: &[u8]) {
    assert_eq!(show(body), show(want));
}

/// Opens the gate and takes `n` records, each a `K` from `host`.
fn open_and_take_ks(rig: &mut Rig, emu: &mut Emulator, n: usize, host: &str) {
    rig.gate.open();
    for r in next_n(emu, n) {
        assert_body(&r.body, &ok(host));
    }
}

#[test]
fn held_deliveries_start_in_the_order_they_were_sent() {
    // Limit 1: a held delivery is spawned only after the one before it
    // was reaped, so the order they start in is the spawner's choice
    // alone, with no race between two children starting at once.
    let mut rig = Rig::new("d1.test:1\n", 2);
    // Room for all 7 to wait (the default is 4 × 1).
    let mut emu = rig.start(&[("SHARDSPAWN_HOLD_MAX", "7")]);
    rig.send(&mut emu, 0, &rcpt(&["gate"], "d1.test"));
    rig.wait_started(1);
    // Sent in an order that is not delnum order, so FIFO cannot pass
    // for "lowest delnum first".
    let order: [u16; 7] = [5, 2, 7, 1, 6, 3, 4];
    for &delnum in &order {
        rig.send(&mut emu, delnum, &rcpt(&["inspect"], "d1.test"));
    }
    rig.wait_key("d1.test", |k| k.running == 1 && k.held == 7);
    assert_eq!(rig.recording().started(), 1);

    rig.gate.open();
    let first = next(&mut emu);
    assert_eq!(first.delnum, 0);
    assert_body(&first.body, &ok("d1.test"));
    // Results in the order sent, each from its own stand-in.
    let mut pid_of = HashMap::new();
    for &delnum in &order {
        let r = next(&mut emu);
        assert_eq!(r.delnum, delnum, "results out of order");
        let facts = parse_inspect(&r.body);
        pid_of.insert(facts["pid"].parse::<u32>().unwrap(), delnum);
    }
    finish(&mut emu);
    // And the recording agrees: started in the order sent, never two at
    // once.
    let recording = rig.recording();
    let started: Vec<u16> =
        recording.intervals()[1..].iter().map(|i| pid_of[&i.pid]).collect();
    assert_eq!(started, order);
    assert_eq!(recording.peak(), 1);
}

#[test]
fn a_held_delivery_is_deferred_after_the_hold_seconds() {
    let mut rig = Rig::new("d1.test:2\n", 2);
    let mut emu = rig.start(&[("SHARDSPAWN_HOLD_SECONDS", "1")]);
    rig.send(&mut emu, 0, &rcpt(&["gate"], "d1.test"));
    rig.send(&mut emu, 1, &rcpt(&["gate"], "d1.test"));
    rig.wait_started(2);
    let sent = Instant::now();
    rig.send(&mut emu, 2, &rcpt(&[], "d1.test"));
    let r = next(&mut emu);
    let waited = sent.elapsed();
    assert_eq!(r.delnum, 2);
    assert_body(&r.body, HELD_1S);
    // Not before its second was up (the shard's clock started after we
    // sent), and not much after: answered by a timer, not by the next
    // event that happened along.
    assert!(waited >= Duration::from_secs(1), "after {waited:?}");
    assert!(waited < Duration::from_secs(5), "after {waited:?}");
    // The two it waited for are still running; it never ran.
    let recording = rig.recording();
    assert_eq!((recording.started(), recording.ended()), (2, 0));
    open_and_take_ks(&mut rig, &mut emu, 2, "d1.test");
    finish(&mut emu);
    assert_eq!(rig.recording().started(), 2);
}

#[test]
fn the_delivery_past_hold_max_is_deferred_at_once() {
    let mut rig = Rig::new("d1.test:2\n", 2);
    let mut emu = rig.start(&[("SHARDSPAWN_HOLD_MAX", "3")]);
    for delnum in 0..2 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(2);
    for delnum in 2..5 {
        rig.send(&mut emu, delnum, &rcpt(&[], "d1.test"));
    }
    // The fourth to wait: the hold lasts 120 s, so a Z now can only be
    // the depth bound.
    rig.send(&mut emu, 5, &rcpt(&[], "d1.test"));
    let r = next(&mut emu);
    assert_eq!(r.delnum, 5);
    assert_body(
        &r.body,
        b"Zshardspawn: d1.test is at its limit of 2; 3 deliveries \
          already wait for it. (#4.4.5)\n",
    );
    assert_no_record_yet(&mut emu);
    rig.wait_key("d1.test", |k| k.running == 2 && k.held == 3);
    // The three that waited still run, in turn, once the gate opens.
    open_and_take_ks(&mut rig, &mut emu, 5, "d1.test");
    finish(&mut emu);
    assert_eq!(rig.recording().started(), 5);
    assert_eq!(rig.recording().peak(), 2);
}

#[test]
fn by_default_four_times_the_limit_may_wait() {
    let mut rig = Rig::new("d1.test:2\n", 2);
    let mut emu = rig.start(&[]);
    for delnum in 0..2 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(2);
    // 4 × 2 = 8 may wait; the ninth to wait is refused.
    for delnum in 2..10 {
        rig.send(&mut emu, delnum, &rcpt(&[], "d1.test"));
    }
    rig.send(&mut emu, 10, &rcpt(&[], "d1.test"));
    let r = next(&mut emu);
    assert_eq!(r.delnum, 10);
    assert_body(
        &r.body,
        b"Zshardspawn: d1.test is at its limit of 2; 8 deliveries \
          already wait for it. (#4.4.5)\n",
    );
    assert_no_record_yet(&mut emu);
    rig.wait_key("d1.test", |k| k.running == 2 && k.held == 8);
    open_and_take_ks(&mut rig, &mut emu, 10, "d1.test");
    finish(&mut emu);
    assert_eq!(rig.recording().started(), 10);
}

#[test]
fn a_saturated_key_does_not_stop_other_domains() {
    const SHARDS: u16 = 4;
    let mut rig = Rig::new("d1.test:2\n", SHARDS);
    let mut emu = rig.start(&[]);
    for delnum in 0..4 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(2);
    rig.wait_key("d1.test", |k| k.running == 2 && k.held == 2);

    // Other domains, half of them owned by d1.test's own shard: its
    // event loop must not be stuck behind the held ones either.
    let d1_shard = shard_for(b"d1.test", SHARDS);
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for i in 0.. {
        if same.len() == 4 && other.len() == 4 {
            break;
        }
        let host = format!("o{i}.test");
        let list = if shard_for(host.as_bytes(), SHARDS) == d1_shard {
            &mut same
        } else {
            &mut other
        };
        if list.len() < 4 {
            list.push(host);
        }
    }
    let mut host_of = HashMap::new();
    let mut delnum = 10;
    for round in 0..3 {
        for host in same.iter().chain(&other) {
            let mailbox = format!("u{round}");
            rig.send(&mut emu, delnum, &recipient(&mailbox, &[], host));
            host_of.insert(delnum, host.clone());
            delnum += 1;
        }
    }
    // Every one is answered while d1.test's are still at the gate.
    for r in next_n(&mut emu, host_of.len()) {
        let host = host_of
            .remove(&r.delnum)
            .unwrap_or_else(|| panic!("record for delnum {}", r.delnum));
        assert_body(&r.body, &ok(&host));
    }
    let d1 = rig.recording();
    let d1: Vec<_> =
        d1.intervals().iter().filter(|i| i.host == "d1.test").collect();
    assert_eq!(d1.len(), 2);
    assert!(d1.iter().all(|i| i.end.is_none()), "{d1:?}");

    open_and_take_ks(&mut rig, &mut emu, 4, "d1.test");
    finish(&mut emu);
}

#[test]
fn a_delivery_waiting_only_for_a_process_says_all_were_busy() {
    let mut rig = Rig::new("d1.test:2\n", 1);
    let mut emu = rig.start(&[
        ("SHARDSPAWN_MAX_RUNNING", "1"),
        ("SHARDSPAWN_HOLD_SECONDS", "1"),
    ]);
    rig.send(&mut emu, 0, &rcpt(&["gate"], "d1.test"));
    rig.wait_started(1);
    // d2.test is far under its limit (the default, 20), but the one
    // process the shard may run is taken.
    let sent = Instant::now();
    rig.send(&mut emu, 1, &rcpt(&[], "d2.test"));
    let r = next(&mut emu);
    let waited = sent.elapsed();
    assert_eq!(r.delnum, 1);
    assert_body(
        &r.body,
        b"Zshardspawn: all 1 delivery processes were busy; held 1s, \
          longer than the hold limit. (#4.3.0)\n",
    );
    assert!(waited >= Duration::from_secs(1), "after {waited:?}");
    assert!(waited < Duration::from_secs(5), "after {waited:?}");
    open_and_take_ks(&mut rig, &mut emu, 1, "d1.test");
    finish(&mut emu);
    assert_eq!(rig.recording().started(), 1);
}
