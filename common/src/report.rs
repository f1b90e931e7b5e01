//! How a finished qmail-remote becomes one result body, byte for byte as
//! qmail-rspawn's `report()` (protocol §4.2).
//!
//! [`Translator`] consumes the child's output as it arrives and keeps only
//! what the result can depend on, so a child that writes megabytes costs
//! bounded memory; the body it produces is identical to translating the
//! whole output at once, except that the text is cut at [`BODY_MAX`]
//! bytes, which is what qmail-send keeps of a record anyway.
//!
//! What the result can depend on, and so all that is kept:
//!
//! - the first byte (`s` or `h` overrides the letter);
//! - the search for the message report: the first byte of the segment
//!   being scanned, until a terminated segment starting with `K`, `Z` or
//!   `D` ends the search;
//! - the text of the first segment (from byte 1 to the first NUL at
//!   index >= 1) and of the segment after it (if that starts with `K`,
//!   `Z` or `D`), together at most `BODY_MAX - 1` bytes. Whether the
//!   second text is used depends on the final result, which may still be
//!   unknown while it streams in, so it is kept and judged at the end.

use crate::refusal::Letter;

/// Most bytes of a body (letter + text) we keep. qmail-send keeps at most
/// 10000 bytes of a record (REPORTMAX), so nothing it would log is lost.
pub const BODY_MAX: usize = 10_000;

/// Most text bytes kept: the body's letter takes one byte of `BODY_MAX`.
const TEXT_MAX: usize = BODY_MAX - 1;

/// Texts of qmail-rspawn's verdicts. Stock bytes; the contract.
const CRASHED: &str = "qmail-remote crashed.\n";
const CANNOT_RUN: &str = "Unable to run qmail-remote.\n";
const NO_OUTPUT: &str = "qmail-remote produced no output.\n";

/// How a qmail-remote ended, as waitpid told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildEnd {
    /// Exited with this code.
    Exited(u8),
    /// Killed by this signal.
    Signaled(i32),
}

impl ChildEnd {
    /// The body when the exit status alone decides it; `None` means exit
    /// 0, and the child's output decides.
    pub fn verdict(self) -> Option<(Letter, &'static str)> {
        match self {
            ChildEnd::Signaled(_) => Some((Letter::Deferral, CRASHED)),
            ChildEnd::Exited(0) => None,
            // qmail's "temporary" exit code: exec hit a temporary errno.
            ChildEnd::Exited(111) => Some((Letter::Deferral, CANNOT_RUN)),
            // XXX: any other code bounces the recipient, even a wrapper's
            // exit 1. That is qmail's rule; a drop-in keeps it.
            ChildEnd::Exited(_) => Some((Letter::Failure, CANNOT_RUN)),
        }
    }
}

/// The incremental form of `report()`. Feed output with [`push`], then
/// call [`finish`] with the exit status.
///
/// [`push`]: Translator::push
/// [`finish`]: Translator::finish
#[derive(Debug, Default)]
pub struct Translator {
    /// Output bytes seen.
    len: u64,
    /// The output's byte 0.
    first: Option<u8>,
    scan: Scan,
    text: Text,
}

/// The search for the message report: the first NUL-terminated segment
/// that starts with `K`, `Z` or `D`.
#[derive(Debug, Default)]
struct Scan {
    /// First byte of the segment being scanned; `None` at its start.
    segment: Option<u8>,
    /// Set when the search ended. Never set means no report was found,
    /// which qmail reads as permanent failure, as it reads `D`.
    found: Option<Letter>,
}

impl Scan {
    fn push(&mut self, mut bytes: &[u8]) {
        while self.found.is_none() && !bytes.is_empty() {
            let first = *self.segment.get_or_insert(bytes[0]);
            // Only a terminated segment counts.
            let Some(nul) = bytes.iter().position(|&b| b == 0) else {
                return;
            };
            bytes = &bytes[nul + 1..];
            self.segment = None;
            self.found = Letter::from_byte(first);
        }
    }

    /// The result: the report's letter, or `D` when there is none.
    fn result(&self) -> Letter {
        self.found.unwrap_or(Letter::Failure)
    }
}

/// Where the text collection stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Byte 0 is next; it is a letter, never text.
    #[default]
    Start,
    /// In the first text: from byte 1 up to the first NUL at index >= 1.
    /// If that NUL never comes, the text is empty.
    First,
    /// Just after that NUL: the next byte says if a second text follows.
    Between,
    /// In the second text, after its `K`, `Z` or `D`, up to a NUL or the
    /// end of the output.
    Second,
    /// Nothing later can change the text.
    Done,
}

/// The text of the first segment and, after it, of the second.
#[derive(Debug, Default)]
struct Text {
    stage: Stage,
    /// Both texts, at most `TEXT_MAX` bytes in all.
    bytes: Vec<u8>,
    /// Where the first text ends in `bytes`.
    first_end: usize,
}

impl Text {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(&byte) = bytes.first() {
            match self.stage {
                Stage::Start => {
                    bytes = &bytes[1..];
                    self.stage = Stage::First;
                }
                Stage::Between => {
                    bytes = &bytes[1..];
                    self.stage = match Letter::from_byte(byte) {
                        Some(_) => Stage::Second,
                        None => Stage::Done,
                    };
                }
                Stage::First | Stage::Second => {
                    let nul = bytes.iter().position(|&b| b == 0);
                    let Some(nul) = nul else {
                        self.keep(bytes);
                        return;
                    };
                    self.keep(&bytes[..nul]);
                    bytes = &bytes[nul + 1..];
                    if self.stage == Stage::First {
                        self.first_end = self.bytes.len();
                        self.stage = Stage::Between;
                    } else {
                        self.stage = Stage::Done;
                    }
                }
                Stage::Done => return,
            }
        }
    }

    /// Appends what still fits under `TEXT_MAX`. Grows the buffer by
    /// doubling, but never past `TEXT_MAX`: a slot's memory is bounded
    /// however much its child writes.
    fn keep(&mut self, run: &[u8]) {
        let run = &run[..run.len().min(TEXT_MAX - self.bytes.len())];
        let (len, cap) = (self.bytes.len(), self.bytes.capacity());
        if run.len() > cap - len {
            let want = (2 * cap).max(len + run.len()).clamp(64, TEXT_MAX);
            self.bytes.reserve_exact(want - len);
        }
        self.bytes.extend_from_slice(run);
    }

    /// The text `report()` prints when the second segment is `wanted`.
    fn into_text(mut self, wanted: bool) -> Vec<u8> {
        match self.stage {
            // No NUL after byte 0: no text at all.
            Stage::Start | Stage::First => self.bytes.clear(),
            Stage::Between | Stage::Second | Stage::Done => {
                if !wanted {
                    self.bytes.truncate(self.first_end);
                }
            }
        }
        self.bytes
    }
}

impl Translator {
    /// A translator that has seen no output.
    pub fn new() -> Translator {
        Translator::default()
    }
    /// Takes more of the child's output.
    pub fn push(&mut self, bytes: &[u8]) {
        let Some(&byte) = bytes.first() else { return };
        self.first.get_or_insert(byte);
        self.len += bytes.len() as u64;
        self.scan.push(bytes);
        self.text.push(bytes);
    }
    /// How many output bytes were pushed in all.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True if no output was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The result body (letter then text, no NUL), at most [`BODY_MAX`]
    /// bytes.
    pub fn finish(self, end: ChildEnd) -> Vec<u8> {
        if let Some((letter, text)) = end.verdict() {
            return body(letter, text.as_bytes());
        }
        if self.is_empty() {
            return body(Letter::Deferral, NO_OUTPUT.as_bytes());
        }
        let result = self.scan.result();
        // The first recipient report overrides the message report: a 4xx
        // to RCPT defers, a 5xx bounces, whatever came after.
        let letter = match self.first {
            Some(b's') => Letter::Deferral,
            Some(b'h') => Letter::Failure,
            _ => result,
        };
        // The message report's text is added only when its result is not
        // better than the letter (D < Z < K).
        let text = self.text.into_text(result <= letter);
        body(letter, &text)
    }

    /// Bytes held for the text: what a slot costs however much its child
    /// writes.
    #[cfg(test)]
    fn retained(&self) -> usize {
        self.text.bytes.capacity()
    }
}

/// Letter then text.
fn body(letter: Letter, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + text.len());
    out.push(letter.byte());
    out.extend_from_slice(text);
    out
}

/// The whole translation at once: `Translator` fed `output` in one piece.
pub fn body_for(end: ChildEnd, output: &[u8]) -> Vec<u8> {
    let mut t = Translator::new();
    t.push(output);
    t.finish(end)
}

#[cfg(any(test, feature = "reference"))]
/// A straight transcription of qmail-rspawn's `report()` as described
/// in protocol §4.2, over the whole output at once: result -1/0/1 for
/// D/Z/K, `j` the start of the segment being scanned. The oracle the
/// [`Translator`] is tested and fuzzed against: no state, no cap. Built
/// for tests and for the `reference` feature (the fuzz targets) only.
pub fn reference(end: ChildEnd, s: &[u8]) -> Vec<u8> {
    match end {
        ChildEnd::Signaled(_) => {
            return b"Zqmail-remote crashed.\n".to_vec();
        }
        ChildEnd::Exited(111) => {
            return b"ZUnable to run qmail-remote.\n".to_vec();
        }
        ChildEnd::Exited(0) => {}
        ChildEnd::Exited(_) => {
            return b"DUnable to run qmail-remote.\n".to_vec();
        }
    }
    if s.is_empty() {
        return b"Zqmail-remote produced no output.\n".to_vec();
    }
    let mut result = -1;
    let mut j = 0;
    for (k, &b) in s.iter().enumerate() {
        if b == 0 {
            if s[j] == b'K' {
                result = 1;
                break;
            }
            if s[j] == b'Z' {
                result = 0;
                break;
            }
            if s[j] == b'D' {
                break;
            }
            j = k + 1;
        }
    }
    let mut orr = result;
    if s[0] == b's' {
        orr = 0;
    }
    if s[0] == b'h' {
        orr = -1;
    }
    let mut out = vec![match orr {
        1 => b'K',
        0 => b'Z',
        _ => b'D',
    }];
    let Some(n) = (1..s.len()).find(|&i| s[i] == 0) else {
        return out;
    };
    out.extend_from_slice(&s[1..n]);
    let k = n + 1;
    if result <= orr && k < s.len() && matches!(s[k], b'K' | b'Z' | b'D') {
        let end = (k + 1..s.len()).find(|&i| s[i] == 0).unwrap_or(s.len());
        out.extend_from_slice(&s[k + 1..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const OK: ChildEnd = ChildEnd::Exited(0);

    /// Streams `output` in the given pieces.
    fn streamed(end: ChildEnd, output: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut t = Translator::new();
        let mut start = 0;
        for cut in cuts.iter().copied().chain([output.len()]) {
            t.push(&output[start..cut]);
            start = cut;
        }
        assert_eq!(t.len(), output.len() as u64);
        t.finish(end)
    }

    fn capped(mut body: Vec<u8>) -> Vec<u8> {
        body.truncate(BODY_MAX);
        body
    }

    /// Protocol §4.2, "Worked outcomes", row by row (the "…" of the
    /// table filled in with concrete text).
    #[test]
    fn worked_outcomes() {
        let table: &[(&[u8], &[u8])] = &[
            (
                b"r\0K1.2.3.4 accepted message.\nRemote host said: 250 ok\n\0",
                b"K1.2.3.4 accepted message.\nRemote host said: 250 ok\n",
            ),
            (
                b"h1.2.3.4 does not like recipient.\nRemote host said: 550 \
                  no\n\0DGiving up on 1.2.3.4.\n\0",
                b"D1.2.3.4 does not like recipient.\nRemote host said: 550 \
                  no\nGiving up on 1.2.3.4.\n",
            ),
            (
                b"s1.2.3.4 does not like recipient.\nRemote host said: 450 \
                  later\n\0DGiving up on 1.2.3.4.\n\0",
                b"Z1.2.3.4 does not like recipient.\nRemote host said: 450 \
                  later\nGiving up on 1.2.3.4.\n",
            ),
            (
                b"r\0Z1.2.3.4 failed after I sent the message.\nRemote host \
                  said: 451 busy\n\0",
                b"Z1.2.3.4 failed after I sent the message.\nRemote host \
                  said: 451 busy\n",
            ),
            (
                b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0",
                b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n",
            ),
            (b"r\0", b"D"),
            (b"Zno terminator\n", b"D"),
            (b"garbage\0more\0", b"Darbage"),
            (b"r\0Kok\0trailing\0", b"Kok"),
        ];
        for (output, want) in table {
            let got = body_for(OK, output);
            assert_eq!(
                got,
                *want,
                "{:?} gave {:?}",
                String::from_utf8_lossy(output),
                String::from_utf8_lossy(&got)
            );
            assert_eq!(reference(OK, output), *want);
        }
    }

    /// The corners of the rules that the worked outcomes do not reach.
    #[test]
    fn degenerate_outputs() {
        let table: &[(&[u8], &[u8])] = &[
            // Starts with NUL: the "first" text is the second segment,
            // letter and all.
            (b"\0Kok\0", b"KKok"),
            (b"\0", b"D"),
            (b"\0\0", b"D"),
            (b"\0\0Kok\0", b"Kok"),
            (b"K\0", b"K"),
            (b"K", b"D"),
            (b"Kok", b"D"),
            // The second segment is unterminated: the result is D, and
            // its text runs to the end of the output.
            (b"r\0Kok", b"Dok"),
            (b"r\0K", b"D"),
            // A message report better than the letter is not appended.
            (b"hxx\0Kyy\0", b"Dxx"),
            (b"sxx\0Kyy\0", b"Zxx"),
            (b"sxx\0Zyy\0", b"Zxxyy"),
            (b"sxx\0", b"Zxx"),
            (b"s", b"Z"),
            (b"h", b"D"),
            // The second segment is no report: nothing appended.
            (b"r\0r\0Kok\0", b"K"),
            // The second segment's own letter is never compared, only
            // the result (which the first segment already decided).
            (b"Kok\0Zno\0", b"Kokno"),
            (b"Dbad\0Kgood\0", b"Dbadgood"),
            (b"xx\0Dyy", b"Dxyy"),
        ];
        for (output, want) in table {
            assert_eq!(reference(OK, output), *want, "{output:?}");
            assert_eq!(body_for(OK, output), *want, "{output:?}");
        }
    }

    #[test]
    fn exit_status_verdicts() {
        let outputs: [&[u8]; 3] = [b"", b"r\0Kok\0", b"garbage"];
        let table: &[(ChildEnd, &[u8])] = &[
            (ChildEnd::Signaled(9), b"Zqmail-remote crashed.\n"),
            (ChildEnd::Signaled(11), b"Zqmail-remote crashed.\n"),
            (ChildEnd::Exited(111), b"ZUnable to run qmail-remote.\n"),
            (ChildEnd::Exited(100), b"DUnable to run qmail-remote.\n"),
            (ChildEnd::Exited(1), b"DUnable to run qmail-remote.\n"),
            (ChildEnd::Exited(255), b"DUnable to run qmail-remote.\n"),
        ];
        for (end, want) in table {
            for output in outputs {
                assert_eq!(body_for(*end, output), *want, "{end:?}");
                assert_eq!(reference(*end, output), *want, "{end:?}");
            }
        }
        assert_eq!(OK.verdict(), None);
        assert_eq!(body_for(OK, b""), b"Zqmail-remote produced no output.\n");
    }

    #[test]
    fn a_megabyte_of_output_stays_small() {
        const MEG: usize = 1 << 20;
        let mut first = vec![b'a'; MEG];
        first[0] = b'h';
        let outputs: [Vec<u8>; 4] = [
            [&first[..], b"\0D", &[b'b'; MEG][..], b"\0"].concat(),
            [b"r\0Z", &[b'b'; MEG][..], b"\0"].concat(),
            vec![0; MEG],
            vec![b'x'; MEG],
        ];
        for output in outputs {
            let mut t = Translator::new();
            for chunk in output.chunks(4096) {
                t.push(chunk);
                assert!(t.retained() <= TEXT_MAX, "{}", t.retained());
            }
            let got = t.finish(OK);
            assert!(got.len() <= BODY_MAX);
            assert_eq!(got, capped(reference(OK, &output)));
        }
    }

    #[test]
    fn the_cap_cuts_the_text_and_keeps_the_letter() {
        // A first text one byte short of the cap; the second is cut to 1.
        let mut output = vec![b's'];
        output.extend(vec![b'a'; TEXT_MAX - 1]);
        output.extend(b"\0Dxyz\0");
        let got = body_for(OK, &output);
        assert_eq!(got.len(), BODY_MAX);
        assert_eq!(got[0], b'Z');
        assert_eq!(&got[BODY_MAX - 2..], b"ax");
    }

    fn output_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => Just(0u8),
            2 => Just(b'r'),
            2 => Just(b'K'),
            2 => Just(b'Z'),
            2 => Just(b'D'),
            1 => Just(b's'),
            1 => Just(b'h'),
            2 => any::<u8>(),
        ]
    }

    fn child_end() -> impl Strategy<Value = ChildEnd> {
        prop_oneof![
            8 => Just(OK),
            1 => any::<u8>().prop_map(ChildEnd::Exited),
            1 => any::<i32>().prop_map(ChildEnd::Signaled),
        ]
    }

    /// Cut points into `len` bytes, ascending.
    fn cuts(raw: &[usize], len: usize) -> Vec<usize> {
        crate::testutil::cuts_from(raw, len)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn streaming_equals_the_reference(
            output in prop::collection::vec(output_byte(), 0..48),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
            end in child_end(),
        ) {
            let want = reference(end, &output);
            prop_assume!(want.len() <= BODY_MAX);
            let got = streamed(end, &output, &cuts(&raw_cuts, output.len()));
            prop_assert_eq!(got, want);
        }

        /// Long segments: the streamed body is the reference's, cut at
        /// `BODY_MAX`.
        #[test]
        fn streaming_equals_the_capped_reference(
            segments in prop::collection::vec(
                (output_byte(), 0usize..6000, any::<bool>()), 1..5),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut output = Vec::new();
            for (lead, fill, terminated) in segments {
                output.push(lead);
                output.extend(std::iter::repeat_n(b'.', fill));
                if terminated {
                    output.push(0);
                }
            }
            let want = capped(reference(OK, &output));
            let got = streamed(OK, &output, &cuts(&raw_cuts, output.len()));
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The twin of the `report_translation` fuzz target (`fuzz/`):
        /// any bytes, any cuts, any end. The streamed body is
        /// `body_for`'s, at most `BODY_MAX` bytes, without a NUL, led by
        /// K, Z or D, and protocol §4.2's body cut at `BODY_MAX`.
        #[test]
        fn twin_of_the_report_translation_fuzz_target(
            output in prop_oneof![
                3 => prop::collection::vec(output_byte(), 0..64),
                1 => (output_byte(), prop::collection::vec(
                    output_byte(), 0..16), 9990usize..10010)
                    .prop_map(|(lead, tail, fill)| {
                        let mut output = vec![lead];
                        output.extend(std::iter::repeat_n(b'.', fill));
                        output.extend(tail);
                        output
                    }),
            ],
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
            end in child_end(),
        ) {
            let whole = body_for(end, &output);
            let cuts = cuts(&raw_cuts, output.len());
            prop_assert_eq!(&streamed(end, &output, &cuts), &whole);
            prop_assert!(whole.len() <= BODY_MAX);
            prop_assert!(!whole.contains(&0));
            prop_assert!(matches!(whole[0], b'K' | b'Z' | b'D'));
            prop_assert_eq!(whole, capped(reference(end, &output)));
        }
    }
}
