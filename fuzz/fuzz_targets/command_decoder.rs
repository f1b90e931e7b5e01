//! The command decoder, both framings, any read boundaries.
//!
//! Input: byte 0 picks the framing (bit 0) and the field limit (bits
//! 1-3); the rest is what qmail-send wrote. Asserts: no panic; every
//! call makes progress and uses at most what it was given; the items
//! from any split equal those from the whole input; fields stay within
//! the limit and hold no NUL; each command re-encodes to bytes that
//! decode back to it; and without an oversize command, re-encoding all
//! of them gives back the input up to the end of the last one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardspawn_common::command::{CommandDecoder, Decoded, DelnumWidth};
use shardspawn_fuzz::{cuts, pieces};

/// Items decoded, bytes used up to the end of the last item, and whether
/// the decoder was idle at the end.
fn decode(
    width: DelnumWidth,
    limit: usize,
    pieces: impl Iterator<Item = impl AsRef<[u8]>>,
) -> (Vec<Decoded>, usize, bool) {
    let mut decoder = CommandDecoder::new(width, limit);
    let (mut items, mut total, mut last_end) = (Vec::new(), 0, 0);
    for piece in pieces {
        let mut rest = piece.as_ref();
        while !rest.is_empty() {
            let (used, item) = decoder.decode(rest);
            assert!(used <= rest.len(), "used more than it was given");
            assert!(used > 0, "no progress");
            total += used;
            rest = &rest[used..];
            if let Some(item) = item {
                assert!(decoder.is_idle(), "busy after a whole command");
                items.push(item);
                last_end = total;
            }
        }
    }
    (items, last_end, decoder.is_idle())
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else { return };
    let width =
        if head & 1 == 0 { DelnumWidth::One } else { DelnumWidth::Two };
    let limit =
        [0, 1, 2, 3, 8, 64, 1024, usize::MAX][usize::from(head >> 1) & 7];

    let whole = decode(width, limit, std::iter::once(stream));
    let cuts = cuts(data, stream.len());
    let split = decode(width, limit, pieces(stream, &cuts));
    assert_eq!(whole, split, "cuts {cuts:?}");
    let bytewise = decode(width, limit, stream.chunks(1));
    assert_eq!(whole, bytewise);

    let (items, end, _) = whole;
    let mut again = Vec::new();
    let mut lossless = true;
    for item in &items {
        let Decoded::Command(cmd) = item else {
            lossless = false;
            continue;
        };
        for field in [&cmd.messid, &cmd.sender, &cmd.recipient] {
            assert!(field.len() <= limit, "field over the limit");
            assert!(!field.contains(&0), "NUL inside a field");
        }
        if width == DelnumWidth::One {
            assert!(cmd.delnum <= 255, "one-byte delnum {}", cmd.delnum);
        }
        let mut bytes = Vec::new();
        cmd.encode(width, &mut bytes);
        let (back, used, idle) = decode(width, limit, std::iter::once(&bytes));
        assert_eq!(back, [Decoded::Command(cmd.clone())], "re-encoded");
        assert_eq!((used, idle), (bytes.len(), true));
        again.extend_from_slice(&bytes);
    }
    if lossless {
        assert_eq!(again, stream[..end], "re-encoding lost bytes");
    }
});
