//! Decoder for the commands qmail-send writes to its spawner's fd 0.
//!
//! Sans-I/O: bytes in, commands out. It never touches a file descriptor,
//! it frames and does not judge (validation is [`crate::validate`]), and
//! it yields the same commands whatever the read boundaries were.
//!
//! A command is: delnum (one byte, or two bytes low-first in the
//! big-concurrency framing), then message id, sender and recipient, each
//! terminated by one NUL. Delnum bytes are taken by position, so a delnum
//! byte of 0x00 is never mistaken for a terminator.

/// How qmail-send writes delivery numbers. Fixed when qmail-send was
/// built; the protocol has no negotiation, so the admin tells us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelnumWidth {
    /// Stock qmail, netqmail, notqmail: one byte.
    One,
    /// The big-concurrency patch: two bytes, low byte first.
    Two,
}

impl DelnumWidth {
    /// How many bytes a delnum takes on the wire: 1 or 2.
    pub fn bytes(self) -> usize {
        match self {
            DelnumWidth::One => 1,
            DelnumWidth::Two => 2,
        }
    }
    /// Appends `delnum` in this framing. In [`DelnumWidth::One`] only the
    /// low byte is written (callers never pass more than 255 there).
    pub fn put(self, delnum: u16, out: &mut Vec<u8>) {
        let [low, high] = delnum.to_le_bytes();
        match self {
            DelnumWidth::One => {
                debug_assert_eq!(high, 0, "delnum {delnum} in one byte");
                out.push(low);
            }
            DelnumWidth::Two => out.extend_from_slice(&[low, high]),
        }
    }
}

/// One delivery request. Bytes, not text: addresses may be 8-bit, and
/// none of the three fields can contain a NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The slot qmail-send chose for this delivery.
    pub delnum: u16,
    /// Queue file name relative to `queue/mess`, e.g. `7/1234567`.
    pub messid: Vec<u8>,
    /// Envelope sender; may be empty (a bounce).
    pub sender: Vec<u8>,
    /// One recipient address.
    pub recipient: Vec<u8>,
}

impl Command {
    /// Appends this command in qmail-send's framing (for emulators and
    /// tests; the spawner only decodes).
    pub fn encode(&self, width: DelnumWidth, out: &mut Vec<u8>) {
        width.put(self.delnum, out);
        for field in [&self.messid, &self.sender, &self.recipient] {
            debug_assert!(!field.contains(&0), "NUL inside a field");
            out.extend_from_slice(field);
            out.push(0);
        }
    }
}

/// What one call to [`CommandDecoder::decode`] completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole command.
    Command(Command),
    /// A command with a field longer than the field limit. It was read to
    /// its final NUL, so the stream stays in step, but its bytes were
    /// dropped; the caller answers `delnum` with the out-of-memory
    /// deferral, as qmail does when it cannot store a command.
    Oversize {
        /// The delnum the oversize command carried.
        delnum: u16,
    },
}

/// Where in a command the next byte belongs.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Between commands: the next byte is a delnum's (low) byte.
    DelnumLow,
    /// Two-byte framing: the low byte is in, the high byte is next.
    DelnumHigh { low: u8 },
    /// Inside field 0 (messid), 1 (sender) or 2 (recipient).
    Field(usize),
}

/// The byte state machine. See the module docs.
#[derive(Debug)]
pub struct CommandDecoder {
    width: DelnumWidth,
    field_limit: usize,
    stage: Stage,
    delnum: u16,
    fields: [Vec<u8>; 3],
    /// A field of this command outgrew `field_limit`; its bytes past the
    /// limit were dropped and the command ends as [`Decoded::Oversize`].
    oversize: bool,
}

impl CommandDecoder {
    /// A decoder for `width`, which keeps at most `field_limit` bytes of
    /// any one field.
    pub fn new(width: DelnumWidth, field_limit: usize) -> CommandDecoder {
        CommandDecoder {
            width,
            field_limit,
            stage: Stage::DelnumLow,
            delnum: 0,
            fields: Default::default(),
            oversize: false,
        }
    }

    /// Consumes `input` up to the end of one command, or all of it.
    ///
    /// Returns how many bytes were used and the command that ended inside
    /// them, if one did. The caller loops on the unused rest.
    pub fn decode(&mut self, input: &[u8]) -> (usize, Option<Decoded>) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.stage {
                // Delnum bytes are positional: 0x00 here is a delnum.
                Stage::DelnumLow => {
                    used += 1;
                    match self.width {
                        DelnumWidth::One => {
                            self.delnum = u16::from(rest[0]);
                            self.stage = Stage::Field(0);
                        }
                        DelnumWidth::Two => {
                            self.stage = Stage::DelnumHigh { low: rest[0] }
                        }
                    }
                }
                Stage::DelnumHigh { low } => {
                    used += 1;
                    self.delnum = u16::from_le_bytes([low, rest[0]]);
                    self.stage = Stage::Field(0);
                }
                Stage::Field(n) => {
                    // Take the field's bytes a run at a time, not one by
                    // one: a recipient is one `extend`.
                    let nul = rest.iter().position(|&b| b == 0);
                    let run = &rest[..nul.unwrap_or(rest.len())];
                    self.keep(n, run);
                    used += run.len();
                    if nul.is_some() {
                        used += 1;
                        if n == 2 {
                            return (used, Some(self.finish()));
                        }
                        self.stage = Stage::Field(n + 1);
                    }
                }
            }
        }
        (used, None)
    }

    /// True between commands: an EOF seen now cuts no command in half.
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::DelnumLow)
    }

    /// Stores what fits of `run` in field `n`; the rest only marks the
    /// command oversize.
    fn keep(&mut self, n: usize, run: &[u8]) {
        let field = &mut self.fields[n];
        let room = self.field_limit.saturating_sub(field.len());
        if run.len() > room {
            self.oversize = true;
        }
        if !self.oversize {
            field.extend_from_slice(run);
        }
    }

    fn finish(&mut self) -> Decoded {
        self.stage = Stage::DelnumLow;
        let [messid, sender, recipient] = std::mem::take(&mut self.fields);
        if std::mem::take(&mut self.oversize) {
            return Decoded::Oversize { delnum: self.delnum };
        }
        Decoded::Command(Command {
            delnum: self.delnum,
            messid,
            sender,
            recipient,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testutil::{cut_pairs, cuts_from, feed_cut};

    fn command(delnum: u16, fields: [&str; 3]) -> Command {
        let [messid, sender, recipient] =
            fields.map(|f| f.as_bytes().to_vec());
        Command { delnum, messid, sender, recipient }
    }

    fn encoded(width: DelnumWidth, commands: &[Command]) -> Vec<u8> {
        let mut out = Vec::new();
        for cmd in commands {
            cmd.encode(width, &mut out);
        }
        out
    }

    /// Decodes `bytes` cut at `cuts`; the stream must end between
    /// commands.
    fn decode_cut(
        width: DelnumWidth,
        limit: usize,
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<Decoded> {
        let mut decoder = CommandDecoder::new(width, limit);
        let out = feed_cut(|b| decoder.decode(b), bytes, cuts);
        assert!(decoder.is_idle(), "stream ended inside a command");
        out
    }

    #[test]
    fn delnum_width_bytes_and_put() {
        assert_eq!(DelnumWidth::One.bytes(), 1);
        assert_eq!(DelnumWidth::Two.bytes(), 2);
        let mut out = Vec::new();
        DelnumWidth::One.put(0x78, &mut out);
        DelnumWidth::Two.put(120, &mut out);
        DelnumWidth::Two.put(509, &mut out);
        DelnumWidth::Two.put(1000, &mut out);
        assert_eq!(out, [0x78, 0x78, 0x00, 0xfd, 0x01, 0xe8, 0x03]);
    }

    /// The examples of protocol §2.1, byte for byte.
    #[test]
    fn encode_matches_the_protocol_examples() {
        let cmd = command(5, ["7/1234567", "a@b.test", "u@d1.test"]);
        let mut one = Vec::new();
        cmd.encode(DelnumWidth::One, &mut one);
        assert_eq!(one, b"\x057/1234567\0a@b.test\0u@d1.test\0");
        let mut two = Vec::new();
        cmd.encode(DelnumWidth::Two, &mut two);
        assert_eq!(two, b"\x05\x007/1234567\0a@b.test\0u@d1.test\0");
    }

    #[test]
    fn every_pair_of_read_boundaries_gives_the_same_commands() {
        for (width, high) in [(DelnumWidth::One, 5), (DelnumWidth::Two, 300)] {
            // delnum 0 and an empty sender (a bounce) are the awkward
            // cases; 0x0100 has a NUL low byte in two-byte framing.
            let commands = [
                command(0, ["7/1234567", "", "u@d1.test"]),
                command(high, ["23/99", "a@b.test", "v@d2.test"]),
                command(high & 0xff00, ["1/2", "#@[]", "w@[10.0.0.1]"]),
            ];
            let bytes = encoded(width, &commands);
            let whole = decode_cut(width, 1024, &bytes, &[]);
            let want: Vec<Decoded> =
                commands.iter().cloned().map(Decoded::Command).collect();
            assert_eq!(whole, want);
            for cuts in cut_pairs(bytes.len()) {
                assert_eq!(decode_cut(width, 1024, &bytes, &cuts), whole);
            }
        }
    }

    #[test]
    fn decode_stops_after_one_command() {
        let bytes = encoded(
            DelnumWidth::One,
            &[command(1, ["1/1", "", "a@b"]), command(2, ["2/2", "", "c@d"])],
        );
        let mut decoder = CommandDecoder::new(DelnumWidth::One, 64);
        let (used, first) = decoder.decode(&bytes);
        assert_eq!(used, 1 + 4 + 1 + 4);
        assert_eq!(
            first,
            Some(Decoded::Command(command(1, ["1/1", "", "a@b"])))
        );
        assert!(decoder.is_idle());
    }

    #[test]
    fn is_idle_only_between_commands() {
        let bytes = encoded(DelnumWidth::Two, &[command(0, ["1", "", "a@b"])]);
        let mut decoder = CommandDecoder::new(DelnumWidth::Two, 64);
        assert!(decoder.is_idle());
        for (i, &byte) in bytes.iter().enumerate() {
            let (used, item) = decoder.decode(&[byte]);
            assert_eq!(used, 1);
            assert_eq!(item.is_some(), i == bytes.len() - 1);
            assert_eq!(decoder.is_idle(), i == bytes.len() - 1, "at {i}");
        }
    }

    #[test]
    fn oversize_is_read_through_and_the_next_command_survives() {
        let long = "x".repeat(10);
        for (limit, oversize) in [(10, false), (9, true)] {
            for field in 0..3 {
                let mut fields = ["1/2", "a@b", "c@d"];
                fields[field] = &long;
                let commands =
                    [command(7, fields), command(8, ["3/4", "e@f", "g@h"])];
                let bytes = encoded(DelnumWidth::Two, &commands);
                let first = if oversize {
                    Decoded::Oversize { delnum: 7 }
                } else {
                    Decoded::Command(commands[0].clone())
                };
                let want = vec![first, Decoded::Command(commands[1].clone())];
                for cuts in cut_pairs(bytes.len()) {
                    let got =
                        decode_cut(DelnumWidth::Two, limit, &bytes, &cuts);
                    assert_eq!(got, want, "limit {limit} field {field}");
                }
            }
        }
    }

    #[test]
    fn a_cut_command_leaves_the_decoder_busy() {
        let bytes = encoded(DelnumWidth::One, &[command(3, ["1", "", "a@b"])]);
        for end in 1..bytes.len() {
            let mut decoder = CommandDecoder::new(DelnumWidth::One, 64);
            let (used, item) = decoder.decode(&bytes[..end]);
            assert_eq!((used, item), (end, None));
            assert!(!decoder.is_idle());
        }
    }

    fn field() -> impl Strategy<Value = Vec<u8>> {
        // Biased toward the bytes that matter: '@', '/', digits, 0xff.
        let byte = prop_oneof![
            1u8..=255,
            Just(b'@'),
            Just(b'/'),
            Just(b'7'),
            Just(0xff),
        ];
        prop::collection::vec(byte, 0..12)
    }

    fn commands(width: DelnumWidth) -> impl Strategy<Value = Vec<Command>> {
        let max = match width {
            DelnumWidth::One => 255,
            DelnumWidth::Two => u16::MAX,
        };
        let delnum = prop_oneof![Just(0u16), Just(max), 0..=max];
        let cmd = (delnum, field(), field(), field()).prop_map(
            |(delnum, messid, sender, recipient)| Command {
                delnum,
                messid,
                sender,
                recipient,
            },
        );
        prop::collection::vec(cmd, 0..6)
    }

    fn width() -> impl Strategy<Value = DelnumWidth> {
        prop_oneof![Just(DelnumWidth::One), Just(DelnumWidth::Two)]
    }

    /// Decodes `bytes` cut at `cuts`, whatever they hold: the items, the
    /// bytes up to the end of the last one, and whether it ended idle.
    fn decode_any(
        width: DelnumWidth,
        limit: usize,
        bytes: &[u8],
        cuts: &[usize],
    ) -> (Vec<Decoded>, usize, bool) {
        let mut decoder = CommandDecoder::new(width, limit);
        let (mut used, mut end) = (0, 0);
        let items = feed_cut(
            |b| {
                let (n, item) = decoder.decode(b);
                used += n;
                if item.is_some() {
                    end = used;
                }
                (n, item)
            },
            bytes,
            cuts,
        );
        (items, end, decoder.is_idle())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The twin of the `command_decoder` fuzz target (`fuzz/`):
        /// hostile bytes, not encoded commands. Any split decodes as the
        /// whole; fields keep to the limit; each command re-encodes to
        /// itself; and without an oversize one, the commands re-encode
        /// to the very bytes they came from.
        #[test]
        fn twin_of_the_command_decoder_fuzz_target(
            width in width(),
            limit in crate::testutil::one_of(vec![0, 1, 2, 3, 8, 64, usize::MAX]),
            bytes in prop::collection::vec(
                prop_oneof![3 => Just(0u8), 1 => Just(b'@'), 2 => any::<u8>()],
                0..160,
            ),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = decode_any(width, limit, &bytes, &[]);
            let cuts = cuts_from(&raw_cuts, bytes.len());
            prop_assert_eq!(&decode_any(width, limit, &bytes, &cuts), &whole);
            let (items, end, _) = whole;
            let mut again = Vec::new();
            for item in &items {
                let Decoded::Command(cmd) = item else { continue };
                for field in [&cmd.messid, &cmd.sender, &cmd.recipient] {
                    prop_assert!(field.len() <= limit && !field.contains(&0));
                }
                let mut one = Vec::new();
                cmd.encode(width, &mut one);
                let back = decode_any(width, limit, &one, &[]);
                prop_assert_eq!(back, (vec![item.clone()], one.len(), true));
                again.extend(one);
            }
            if items.iter().all(|i| matches!(i, Decoded::Command(_))) {
                prop_assert_eq!(&again[..], &bytes[..end]);
            }
        }

        #[test]
        fn any_split_of_random_commands_round_trips(
            (width, commands) in width().prop_flat_map(|w| (Just(w), commands(w))),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let bytes = encoded(width, &commands);
            let cuts = cuts_from(&raw_cuts, bytes.len());
            let got = decode_cut(width, 64, &bytes, &cuts);
            let want: Vec<Decoded> =
                commands.into_iter().map(Decoded::Command).collect();
            prop_assert_eq!(got, want);
        }
    }
}
