//! The streaming report translation, any read boundaries.
//!
//! Input: byte 0 picks how the child ended (mostly exit 0, where the
//! output decides), byte 1 the exit code or signal; the rest is the
//! child's output. Asserts: the `Translator` fed in pieces gives what
//! `body_for` gives for the whole output; that body is at most
//! `BODY_MAX` bytes, holds no NUL and starts with K, Z or D; and it is
//! protocol §4.2's body cut at `BODY_MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardspawn_common::report::{
    BODY_MAX, ChildEnd, Translator, body_for, reference,
};
use shardspawn_fuzz::{cuts, pieces};

fuzz_target!(|data: &[u8]| {
    let [how, code, output @ ..] = data else { return };
    let end = match how % 8 {
        6 => ChildEnd::Exited(*code),
        7 => ChildEnd::Signaled(i32::from(*code)),
        _ => ChildEnd::Exited(0),
    };

    let whole = body_for(end, output);
    let cuts = cuts(data, output.len());
    let mut t = Translator::new();
    for piece in pieces(output, &cuts) {
        t.push(piece);
    }
    assert_eq!(t.len(), output.len() as u64);
    let streamed = t.finish(end);
    assert_eq!(streamed, whole, "cuts {cuts:?}");

    assert!(whole.len() <= BODY_MAX, "body of {} bytes", whole.len());
    assert!(!whole.contains(&0), "NUL in the body");
    assert!(matches!(whole[0], b'K' | b'Z' | b'D'), "letter {}", whole[0]);
    let mut want = reference(end, output);
    want.truncate(BODY_MAX);
    assert_eq!(whole, want, "not protocol §4.2's body");
});
