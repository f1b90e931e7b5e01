//! Issue #7: a response rule turns a receiver's words into a limit or a
//! suspension for a while, and when the while is over the key is back
//! where it was.
//!
//! Each test writes `control/responserules`, lets one stand-in answer
//! with a text the rule matches (the result goes to qmail-send as the
//! stand-in wrote it), and then watches what the key does: from the
//! recording (who started when, on the stand-ins' monotonic clock), the
//! records, and the shard's status file. Adaptation is off
//! (`SHARDSPAWN_INITIAL_LIMIT=0`), so the only thing that changes the
//! key is the rule.

mod adaptive_common;
mod limits_common;

use shardspawn_workshop::remote::{default_result, out_directive};

use adaptive_common::{suspended_until, wait_until_past, write_rules};
use limits_common::{Rig, finish, next, next_n, rcpt, show, soon};
use shardspawn_workshop::util::wait_for;

const RULE_TEXT: &[u8] = b"ZConnected to 192.0.2.1 but sender was \
    rejected.\nRemote host said: 451 4.7.1 Slow Down Please, you send \
    too fast\n\0";

fn assert_body(body: &[u8], want: &[u8]) {
    assert_eq!(show(body), show(want));
}

#[test]
fn a_limit_rule_holds_the_key_to_its_limit_for_its_duration() {
    let mut rig = Rig::new("d1.test:10\n", 2);
    // The rule on line 3: the reason must name the line.
    write_rules(&rig, "# response_rules.rs\n\nlimit=1:2s:slow down please\n");
    let mut emu = rig.start(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);

    rig.send(&mut emu, 0, &rcpt(&[&out_directive(RULE_TEXT)], "d1.test"));
    let r = next(&mut emu);
    assert_body(&r.body, &RULE_TEXT[..RULE_TEXT.len() - 1]);
    // The rule began after that stand-in's end was recorded, and lasts
    // 2 s from then: until `window`, at most one may run.
    let trigger = rig.recording().intervals()[0].end.expect("it exited");
    let window = trigger + 2_000_000_000;

    // Four that stay at the gate: under the configured 10 all would
    // start at once; under the rule's 1, the others wait for its end.
    for delnum in 1..=4 {
        rig.send(&mut emu, delnum, &rcpt(&["gate"], "d1.test"));
    }
    rig.wait_started(5);
    let recording = rig.recording();
    let early: Vec<_> = recording.intervals()[1..]
        .iter()
        .filter(|i| i.start < window)
        .collect();
    assert!(
        early.len() <= 1,
        "{} started while the rule held the key to 1: {early:?}",
        early.len()
    );
    // After it, the key is back at its configured limit.
    rig.wait_key("d1.test", |k| k.running == 4 && k.effective == 10);
    let changes = rig.log_lines(&["d1.test", "response rule 3 matched"]);
    assert!(
        changes.iter().any(|l| l.contains("slow down please")),
        "no log line for the rule:\n{}",
        rig.log_text()
    );

    rig.gate.open();
    for r in next_n(&mut emu, 4) {
        assert_body(&r.body, &default_result(b"d1.test"));
    }
    finish(&mut emu);
}

#[test]
fn a_suspend_rule_answers_at_once_until_it_ends() {
    let rig = Rig::new("d1.test:10\n", 2);
    write_rules(&rig, "suspend : 2s : slow down please\n");
    let mut emu = rig.start(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);

    rig.send(&mut emu, 0, &rcpt(&[&out_directive(RULE_TEXT)], "d1.test"));
    assert_body(&next(&mut emu).body, &RULE_TEXT[..RULE_TEXT.len() - 1]);
    let reason = "response rule 1 matched \"slow down please\"";
    // Suspended: answered by the shard, no stand-in runs.
    rig.send(&mut emu, 1, &rcpt(&[], "d1.test"));
    let r = next(&mut emu);
    assert_eq!(r.delnum, 1);
    let until = suspended_until(&r.body, "d1.test", reason);
    assert_eq!(rig.recording().started(), 1);
    // Another key is not touched.
    rig.send(&mut emu, 2, &rcpt(&[], "d2.test"));
    assert_body(&next(&mut emu).body, &default_result(b"d2.test"));
    // The log says so (the status file may already be past the 2 s by
    // the time we look: status_per_key.rs reads a suspension there).
    rig.wait_log(&["d1.test", "suspended until", reason], 1);

    // Once its time is past, d1.test takes deliveries again. The shard
    // may lift the suspension a moment after the second it names, so a
    // refusal still naming the same time is allowed while we wait.
    wait_until_past(until);
    let delivered = wait_for(
        || {
            rig.send(&mut emu, 3, &rcpt(&[], "d1.test"));
            let r = next(&mut emu);
            assert_eq!(r.delnum, 3);
            if r.body.starts_with(b"K") {
                assert_body(&r.body, &default_result(b"d1.test"));
                return true;
            }
            assert_eq!(suspended_until(&r.body, "d1.test", reason), until);
            false
        },
        soon(),
    );
    assert!(delivered, "d1.test still suspended:\n{}", rig.log_text());
    rig.wait_key("d1.test", |k| k.suspended_until == 0);
    finish(&mut emu);
}

/// Replaces the rules file as an admin should: a new file renamed over
/// the old one, so the spawner never reads half of it.
fn replace_rules(rig: &Rig, text: &str) {
    let tmp = rig.home.path().join("control/responserules.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, rig.home.path().join(adaptive_common::RULES))
        .unwrap();
}

#[test]
fn rules_are_reloaded_while_it_runs_and_a_broken_file_is_kept_out() {
    let rig = Rig::new("d1.test:10\nd2.test:10\n", 1);
    let mut emu = rig.start(&[("SHARDSPAWN_INITIAL_LIMIT", "0")]);
    // No file: the text is a deferral like any other, nothing follows.
    rig.send(&mut emu, 0, &rcpt(&[&out_directive(RULE_TEXT)], "d1.test"));
    assert_body(&next(&mut emu).body, &RULE_TEXT[..RULE_TEXT.len() - 1]);
    rig.send(&mut emu, 1, &rcpt(&[], "d1.test"));
    assert_body(&next(&mut emu).body, &default_result(b"d1.test"));

    // A rule appears: the supervisor reloads it within seconds and sends
    // it to the shard ahead of any job sent after that.
    replace_rules(&rig, "suspend:1h:slow down please\n");
    rig.wait_log(&["response rules reloaded"], 1);
    let reason = "response rule 1 matched \"slow down please\"";
    rig.send(&mut emu, 2, &rcpt(&[&out_directive(RULE_TEXT)], "d1.test"));
    assert_body(&next(&mut emu).body, &RULE_TEXT[..RULE_TEXT.len() - 1]);
    rig.send(&mut emu, 3, &rcpt(&[], "d1.test"));
    suspended_until(&next(&mut emu).body, "d1.test", reason);

    // A broken file is logged and kept out: the rule in force stays.
    replace_rules(&rig, "suspend:0:slow down please\n");
    rig.wait_log(&["response rules not reloaded", "line 1"], 1);
    rig.send(&mut emu, 4, &rcpt(&[&out_directive(RULE_TEXT)], "d2.test"));
    assert_body(&next(&mut emu).body, &RULE_TEXT[..RULE_TEXT.len() - 1]);
    rig.send(&mut emu, 5, &rcpt(&[], "d2.test"));
    suspended_until(&next(&mut emu).body, "d2.test", reason);
    // 0, 1, 2 and 4 ran; the suspended 3 and 5 did not.
    assert_eq!(rig.recording().started(), 4);
    finish(&mut emu);
}
