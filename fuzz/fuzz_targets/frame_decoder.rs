//! The supervisor ↔ shard frame decoder, any read boundaries.
//!
//! Input: byte 0 picks the payload maximum; the rest is the stream.
//! Asserts: no panic; progress on every call; the same frames (and the
//! same too-long error) from any split as from the whole input; each
//! frame re-encodes to the bytes it came from; and a job payload that
//! parses re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardspawn_common::frame::{
    DONE, Done, Frame, FrameDecoder, FrameTooLong, JOB, Job, LIMITS,
    encode_text,
};
use shardspawn_fuzz::{cuts, pieces};

type Item = Result<Frame, FrameTooLong>;

fn decode<'a>(
    max: u32,
    pieces: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Item>, bool) {
    let mut decoder = FrameDecoder::new(max);
    let mut items = Vec::new();
    for mut rest in pieces {
        while !rest.is_empty() {
            let (used, item) = decoder.decode(rest);
            assert!(used <= rest.len(), "used more than it was given");
            assert!(used > 0, "no progress");
            rest = &rest[used..];
            match item {
                // A broken stream answers the error for every read; keep
                // the first, so that the count does not depend on cuts.
                Some(Err(e)) if matches!(items.last(), Some(Err(_))) => {
                    assert_eq!(Some(&Err(e)), items.last());
                }
                Some(item) => items.push(item),
                None => {}
            }
        }
    }
    (items, decoder.is_idle())
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else { return };
    let max = [0, 1, 7, 64, 300, u32::MAX][usize::from(head) % 6];

    let whole = decode(max, std::iter::once(stream));
    let cuts = cuts(data, stream.len());
    assert_eq!(whole, decode(max, pieces(stream, &cuts)), "cuts {cuts:?}");
    assert_eq!(whole, decode(max, stream.chunks(1)));

    let mut again = Vec::new();
    for item in &whole.0 {
        let Ok((kind, delnum, payload)) = item else {
            // Only ever the last item: nothing after it is trusted.
            assert!(std::ptr::eq(item, whole.0.last().unwrap()));
            continue;
        };
        assert!(payload.len() as u64 <= u64::from(max));
        let at = again.len();
        again.push(*kind);
        again.extend_from_slice(&delnum.to_le_bytes());
        again.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        again.extend_from_slice(payload);
        let mut encoded = Vec::new();
        match *kind {
            JOB => match Job::from_payload(*delnum, payload) {
                Some(job) => job.encode(&mut encoded),
                None => continue,
            },
            DONE => {
                let body = payload.clone();
                Done { delnum: *delnum, body }.encode(&mut encoded);
            }
            LIMITS if *delnum == 0 => encode_text(LIMITS, payload, &mut encoded),
            _ => continue,
        }
        assert_eq!(encoded, again[at..], "kind {kind} re-encoded");
    }
    assert_eq!(again, stream[..again.len()], "frames re-encoded");
});
