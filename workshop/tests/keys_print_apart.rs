//! Issue 15, finding 8: two destinations that differ only in a byte
//! at or above 0x80 must read differently wherever a key is shown: in
//! the `Z` qmail-send logs, the shard's log and its status file. Every
//! such byte used to print as `?`, so `h\xe9.test` and `h\xe8.test`
//! were one `h?.test` to whoever read them; the README promises
//! `\DDD`, as the resolver writes it.
//!
//! Each domain is suspended by its first failure
//! (`SHARDSPAWN_SUSPEND_AFTER=1`), so that the next delivery for it is
//! answered with a `Z` that names its key.

mod adaptive_common;
mod limits_common;

use std::fs;

use shardspawn_common::status::{KeyStatus, ShardStatus};
use shardspawn_workshop::util::wait_for;

use adaptive_common::{refuse, refused};
use limits_common::{Rig, STATE_DIR, finish, next, rcpt, show, soon};

const SAID: &str = "421 4.3.2 Service shutting down";

/// A recipient at `h` + `byte` + `.test`, with `directives`.
fn at(directives: &[&str], byte: u8) -> Vec<u8> {
    let mut r = rcpt(directives, "h");
    r.push(byte);
    r.extend_from_slice(b".test");
    r
}

/// The key lines of every shard's status file.
fn keys(rig: &Rig) -> Vec<KeyStatus> {
    (0..rig.shards)
        .filter_map(|i| {
            let path =
                rig.home.path().join(STATE_DIR).join(format!("shard{i}"));
            ShardStatus::parse(&fs::read_to_string(path).ok()?).ok()
        })
        .flat_map(|s| s.keys)
        .collect()
}

#[test]
fn keys_differing_in_an_8bit_byte_print_apart() {
    let rig = Rig::new(":5\n", 2);
    let mut emu = rig.start(&[
        ("SHARDSPAWN_SUSPEND_AFTER", "1"),
        ("SHARDSPAWN_SUSPEND_SECONDS", "600"),
    ]);
    let mut texts = Vec::new();
    for (i, byte) in [0xe9u8, 0xe8].into_iter().enumerate() {
        let delnum = 2 * i as u16;
        rig.send(&mut emu, delnum, &at(&[&refuse(SAID)], byte));
        assert_eq!(show(&next(&mut emu).body), show(&refused(SAID)));
        rig.send(&mut emu, delnum + 1, &at(&[], byte));
        let r = next(&mut emu);
        assert_eq!(r.delnum, delnum + 1);
        texts.push(show(&r.body));
    }
    assert_ne!(texts[0], texts[1], "two domains, one text");
    for (text, key) in texts.iter().zip(["h\\233.test", "h\\232.test"]) {
        let head = format!("Zshardspawn: {key} is suspended until ");
        assert!(text.starts_with(&head), "{text}");
    }
    // The log names each, and so does the status file: two keys.
    for key in ["h\\233.test", "h\\232.test"] {
        rig.wait_log(&[&format!("{key}: suspended until")], 1);
    }
    let mut last = Vec::new();
    let both = wait_for(
        || {
            last = keys(&rig);
            ["h\\233.test", "h\\232.test"].iter().all(|key| {
                last.iter().any(|k| k.key == *key && k.suspended_until > 0)
            })
        },
        soon(),
    );
    assert!(both, "status never showed both keys apart: {last:?}");
    finish(&mut emu);
}
