//! What the spawner writes on fd 1: the concurrency announcement once,
//! then one result record per command.
//!
//! A record is delnum (1 or 2 bytes, as the command framing), the body
//! (status letter then text, no NUL inside), and one NUL.

use crate::command::DelnumWidth;

/// The announcement: `slots` as one byte, or two bytes low-first.
/// Callers have already bounded `slots` (255 or 65535).
pub fn announcement(width: DelnumWidth, slots: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(width.bytes());
    width.put(slots, &mut out);
    out
}

/// Appends one result record. `body` must not contain a NUL (report
/// bodies never do; debug-asserted).
pub fn encode(
    width: DelnumWidth,
    delnum: u16,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    debug_assert!(!body.contains(&0), "NUL inside a result body");
    width.put(delnum, out);
    out.extend_from_slice(body);
    out.push(0);
}

/// Splits the spawner's output back into records, the way qmail-send
/// does (a NUL ends a record only after the delnum bytes). For the
/// emulated qmail-send and tests. Sans-I/O, any read boundary.
#[derive(Debug)]
pub struct RecordDecoder {
    width: DelnumWidth,
    /// Delnum bytes of the current record seen so far (0, 1 or 2).
    have: usize,
    delnum: u16,
    body: Vec<u8>,
}

/// One decoded result record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The delnum it answers.
    pub delnum: u16,
    /// Status letter then text, without the NUL.
    pub body: Vec<u8>,
}

impl RecordDecoder {
    /// A decoder for `width`.
    pub fn new(width: DelnumWidth) -> RecordDecoder {
        RecordDecoder { width, have: 0, delnum: 0, body: Vec::new() }
    }
    /// Consumes input up to the end of one record, or all of it; like
    /// [`crate::command::CommandDecoder::decode`].
    pub fn decode(&mut self, input: &[u8]) -> (usize, Option<Record>) {
        let mut used = 0;
        // Delnum bytes by position, low first: a 0x00 here is no
        // terminator.
        while self.have < self.width.bytes() {
            let Some(&byte) = input.get(used) else {
                return (used, None);
            };
            self.delnum |= u16::from(byte) << (8 * self.have);
            self.have += 1;
            used += 1;
        }
        let rest = &input[used..];
        match rest.iter().position(|&b| b == 0) {
            Some(nul) => {
                self.body.extend_from_slice(&rest[..nul]);
                let record = Record {
                    delnum: std::mem::take(&mut self.delnum),
                    body: std::mem::take(&mut self.body),
                };
                self.have = 0;
                (used + nul + 1, Some(record))
            }
            None => {
                self.body.extend_from_slice(rest);
                (input.len(), None)
            }
        }
    }
    /// True between records.
    pub fn is_idle(&self) -> bool {
        self.have == 0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testutil::{cut_pairs, cuts_from, feed_cut};

    fn record(delnum: u16, body: &[u8]) -> Record {
        Record { delnum, body: body.to_vec() }
    }

    fn encoded(width: DelnumWidth, records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(width, r.delnum, &r.body, &mut out);
        }
        out
    }

    fn decode_cut(
        width: DelnumWidth,
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<Record> {
        let mut decoder = RecordDecoder::new(width);
        let out = feed_cut(|b| decoder.decode(b), bytes, cuts);
        assert!(decoder.is_idle(), "stream ended inside a record");
        out
    }

    /// Protocol §1.2: 120 -> 78, or 78 00; 509 -> FD 01; 1000 -> E8 03.
    #[test]
    fn announcement_bytes() {
        assert_eq!(announcement(DelnumWidth::One, 120), [0x78]);
        assert_eq!(announcement(DelnumWidth::One, 255), [0xff]);
        assert_eq!(announcement(DelnumWidth::Two, 120), [0x78, 0x00]);
        assert_eq!(announcement(DelnumWidth::Two, 509), [0xfd, 0x01]);
        assert_eq!(announcement(DelnumWidth::Two, 1000), [0xe8, 0x03]);
        assert_eq!(announcement(DelnumWidth::Two, 65535), [0xff, 0xff]);
    }

    /// Protocol §5.1's examples.
    #[test]
    fn encode_matches_the_protocol_examples() {
        let body = b"K1.2.3.4 accepted message.\nRemote host said: 250 ok\n";
        let mut one = Vec::new();
        encode(DelnumWidth::One, 5, body, &mut one);
        assert_eq!(one, [&[5][..], body, &[0]].concat());
        let mut two = Vec::new();
        encode(DelnumWidth::Two, 300, b"Zx", &mut two);
        assert_eq!(two, [0x2c, 0x01, b'Z', b'x', 0]);
    }

    #[test]
    fn every_pair_of_read_boundaries_gives_the_same_records() {
        for width in [DelnumWidth::One, DelnumWidth::Two] {
            // delnum 0 is a NUL delnum byte; 256 has a NUL low byte.
            let high = if width == DelnumWidth::Two { 256 } else { 255 };
            let records = [
                record(0, b"Kok\n"),
                record(high, b"DSorry, address must include host name.\n"),
                record(7, b""),
            ];
            let bytes = encoded(width, &records);
            assert_eq!(decode_cut(width, &bytes, &[]), records);
            for cuts in cut_pairs(bytes.len()) {
                assert_eq!(decode_cut(width, &bytes, &cuts), records);
            }
        }
    }

    #[test]
    fn is_idle_only_between_records() {
        let bytes = encoded(DelnumWidth::Two, &[record(0, b"Z")]);
        let mut decoder = RecordDecoder::new(DelnumWidth::Two);
        assert!(decoder.is_idle());
        for (i, &byte) in bytes.iter().enumerate() {
            let (used, item) = decoder.decode(&[byte]);
            assert_eq!(used, 1);
            assert_eq!(item.is_some(), i == bytes.len() - 1);
            assert_eq!(decoder.is_idle(), i == bytes.len() - 1, "at {i}");
        }
    }

    fn width() -> impl Strategy<Value = DelnumWidth> {
        prop_oneof![Just(DelnumWidth::One), Just(DelnumWidth::Two)]
    }

    fn records(width: DelnumWidth) -> impl Strategy<Value = Vec<Record>> {
        let max = match width {
            DelnumWidth::One => 255,
            DelnumWidth::Two => u16::MAX,
        };
        // 256 has a NUL low byte in two-byte framing.
        let awkward = if max > 255 { 256 } else { 0 };
        let delnum = prop_oneof![Just(0u16), Just(awkward), 0..=max];
        let body = prop::collection::vec(1u8..=255, 0..16);
        let record =
            (delnum, body).prop_map(|(delnum, body)| Record { delnum, body });
        prop::collection::vec(record, 0..6)
    }

    proptest! {
        #[test]
        fn any_split_of_random_records_round_trips(
            (width, records) in width().prop_flat_map(|w| (Just(w), records(w))),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let bytes = encoded(width, &records);
            let cuts = cuts_from(&raw_cuts, bytes.len());
            prop_assert_eq!(decode_cut(width, &bytes, &cuts), records);
        }
    }
}
