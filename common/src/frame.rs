//! The framing between the supervisor and its shards. As plain as
//! qmail's: a kind byte, a delnum (u16, little-endian), a payload length
//! (u32, little-endian), and the payload. No serde, no options.
//!
//! Supervisor → shard: a [`Job`] (kind [`JOB`]) payload is messid,
//! sender, recipient and limit key, each followed by one NUL; a limits
//! frame (kind [`LIMITS`], delnum 0) carries the text of the limits file
//! the supervisor loaded, so that supervisor and shards never disagree
//! on it (a responses frame, kind [`RESPONSES`], likewise). Shard →
//! supervisor: a [`Done`] (kind [`DONE`]) payload is the result body.
//!
//! A decoder caps each frame's length; a control text may be as long as
//! the longest control file the supervisor reads ([`MAX_TEXT`]), which
//! is far more than any job or result needs.

/// Kind byte of a [`Job`] frame.
pub const JOB: u8 = b'J';
/// Kind byte of a [`Done`] frame.
pub const DONE: u8 = b'D';
/// Kind byte of a limits frame: the limits file's text.
pub const LIMITS: u8 = b'L';
/// Kind byte of a responses frame: the response rules file's text.
pub const RESPONSES: u8 = b'R';

/// Most bytes of a control text's payload: the longest control file the
/// supervisor accepts, so a file it took never breaks a shard.
pub const MAX_TEXT: u32 = crate::control::MAX_FILE as u32;

// The cap is one number on both sides: it must survive the cast.
const _: () = assert!(crate::control::MAX_FILE as u64 <= u32::MAX as u64);

/// A delivery handed to a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// qmail-send's delnum; the shard echoes it in its [`Done`].
    pub delnum: u16,
    /// As the command.
    pub messid: Vec<u8>,
    /// As the command.
    pub sender: Vec<u8>,
    /// As the command.
    pub recipient: Vec<u8>,
    /// The limit key the supervisor routed on.
    pub key: Vec<u8>,
}

impl Job {
    /// Appends the frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let fields = [&self.messid, &self.sender, &self.recipient, &self.key];
        let len = fields.iter().map(|f| f.len() + 1).sum();
        put_header(JOB, self.delnum, len, out);
        for field in fields {
            debug_assert!(!field.contains(&0), "NUL inside a job field");
            out.extend_from_slice(field);
            out.push(0);
        }
    }
    /// Parses a payload; `None` if it is not four NUL-terminated fields.
    pub fn from_payload(delnum: u16, payload: &[u8]) -> Option<Job> {
        // Four terminators, the last of them the payload's last byte.
        let body = payload.strip_suffix(&[0])?;
        let mut fields = body.split(|&b| b == 0).map(<[u8]>::to_vec);
        let job = Job {
            delnum,
            messid: fields.next()?,
            sender: fields.next()?,
            recipient: fields.next()?,
            key: fields.next()?,
        };
        match fields.next() {
            None => Some(job),
            Some(_) => None,
        }
    }
}

/// A result from a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The delnum it answers.
    pub delnum: u16,
    /// Status letter and text.
    pub body: Vec<u8>,
}

impl Done {
    /// Appends the frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_header(DONE, self.delnum, self.body.len(), out);
        out.extend_from_slice(&self.body);
    }
}

/// Appends a frame of `kind` ([`LIMITS`] or [`RESPONSES`]) carrying a
/// control file's whole text.
pub fn encode_text(kind: u8, text: &[u8], out: &mut Vec<u8>) {
    put_header(kind, 0, text.len(), out);
    out.extend_from_slice(text);
}

/// The bytes [`encode_text`] puts before `text`, for a writer that sends
/// the text from where it is rather than from a copy.
pub fn text_header(kind: u8, text: &[u8]) -> [u8; HEADER] {
    let mut out = Vec::with_capacity(HEADER);
    put_header(kind, 0, text.len(), &mut out);
    let mut header = [0; HEADER];
    header.copy_from_slice(&out);
    header
}

/// Bytes before a payload: kind (1), delnum (2), payload length (4).
pub const HEADER: usize = 7;

/// Appends kind, delnum and payload length, numbers little-endian.
fn put_header(kind: u8, delnum: u16, len: usize, out: &mut Vec<u8>) {
    // A payload is a command's fields or a capped report body: far below
    // 4 GiB, or something upstream is badly broken.
    let len = u32::try_from(len).expect("frame payload over 4 GiB");
    out.push(kind);
    out.extend_from_slice(&delnum.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Splits a byte stream into `(kind, delnum, payload)` frames, any read
/// boundary. Sans-I/O; it does not judge kinds.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: u32,
    /// The cap of [`LIMITS`] and [`RESPONSES`] frames.
    max_text: u32,
    stage: FrameStage,
}

/// Where in a frame the next byte belongs.
#[derive(Debug)]
enum FrameStage {
    /// Collecting the header; `have` of its bytes are in.
    Header { bytes: [u8; HEADER], have: usize },
    /// Collecting `len` payload bytes for `delnum`.
    Payload { kind: u8, delnum: u16, len: usize, payload: Vec<u8> },
    /// A length over the maximum was seen; nothing after it is trusted.
    Broken { len: u32 },
}

impl FrameStage {
    fn idle() -> FrameStage {
        FrameStage::Header { bytes: [0; HEADER], have: 0 }
    }
}

/// One decoded frame: kind, delnum and payload. (An alias, so
/// [`FrameDecoder::decode`]'s type reads at a glance.)
pub type Frame = (u8, u16, Vec<u8>);

/// A frame whose length exceeds the decoder's maximum: the peer is broken
/// and the stream cannot be trusted any further.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameTooLong {
    /// The length it announced.
    pub len: u32,
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: u32) -> FrameDecoder {
        let max_text = max_payload;
        FrameDecoder { max_payload, max_text, stage: FrameStage::idle() }
    }

    /// The same, but taking control texts ([`LIMITS`], [`RESPONSES`]) of
    /// up to `max_text` bytes: a shard's decoder, whose jobs are small
    /// and whose texts are as long as the files they came from.
    pub fn texts_up_to(self, max_text: u32) -> FrameDecoder {
        FrameDecoder { max_text, ..self }
    }
    /// Consumes input up to the end of one frame, or all of it.
    ///
    /// Once a frame was too long, every later call consumes all its
    /// input and answers the same error: the stream is out of step for
    /// good.
    pub fn decode(
        &mut self,
        input: &[u8],
    ) -> (usize, Option<Result<Frame, FrameTooLong>>) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.stage {
                FrameStage::Header { bytes, have } => {
                    let take = rest.len().min(HEADER - *have);
                    bytes[*have..*have + take].copy_from_slice(&rest[..take]);
                    *have += take;
                    used += take;
                    if *have < HEADER {
                        return (used, None);
                    }
                    let kind = bytes[0];
                    let delnum = u16::from_le_bytes([bytes[1], bytes[2]]);
                    let len = u32::from_le_bytes([
                        bytes[3], bytes[4], bytes[5], bytes[6],
                    ]);
                    let max = match kind {
                        LIMITS | RESPONSES => self.max_text,
                        _ => self.max_payload,
                    };
                    if len > max {
                        self.stage = FrameStage::Broken { len };
                        return (used, Some(Err(FrameTooLong { len })));
                    }
                    // Within max_payload, which fits memory by the
                    // caller's choice. Reserve only what a short frame
                    // needs; a long one grows as its bytes arrive.
                    let len = len as usize;
                    let payload = Vec::with_capacity(len.min(64 * 1024));
                    self.stage =
                        FrameStage::Payload { kind, delnum, len, payload };
                }
                FrameStage::Payload { kind, delnum, len, payload } => {
                    let take = rest.len().min(*len - payload.len());
                    payload.extend_from_slice(&rest[..take]);
                    used += take;
                    if payload.len() < *len {
                        return (used, None);
                    }
                    let frame = (*kind, *delnum, std::mem::take(payload));
                    self.stage = FrameStage::idle();
                    return (used, Some(Ok(frame)));
                }
                FrameStage::Broken { len } => {
                    let len = *len;
                    return (input.len(), Some(Err(FrameTooLong { len })));
                }
            }
        }
    }
    /// True between frames.
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, FrameStage::Header { have: 0, .. })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testutil::{cut_pairs, cuts_from, feed_cut};

    fn job(delnum: u16, fields: [&[u8]; 4]) -> Job {
        let [messid, sender, recipient, key] = fields.map(<[u8]>::to_vec);
        Job { delnum, messid, sender, recipient, key }
    }

    fn decode_cut(max: u32, bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new(max);
        let out = feed_cut(|b| decoder.decode(b), bytes, cuts);
        assert!(decoder.is_idle(), "stream ended inside a frame");
        out.into_iter().map(|f| f.expect("frame too long")).collect()
    }

    #[test]
    fn layout_is_kind_delnum_length_payload() {
        let mut out = Vec::new();
        Done { delnum: 0x0102, body: b"Kok".to_vec() }.encode(&mut out);
        assert_eq!(out, [b'D', 2, 1, 3, 0, 0, 0, b'K', b'o', b'k']);
        out.clear();
        job(300, [b"7/1", b"", b"u@d", b"d"]).encode(&mut out);
        assert_eq!(out, b"J\x2c\x01\x0b\0\0\x007/1\0\0u@d\0d\0");
        out.clear();
        encode_text(LIMITS, b":5\n", &mut out);
        assert_eq!(out, b"L\0\0\x03\0\0\0:5\n");
        assert_eq!(text_header(LIMITS, b":5\n"), out[..HEADER]);
    }

    #[test]
    fn job_payloads() {
        let j = job(9, [b"7/1", b"a@b", b"u@d", b"d"]);
        let mut out = Vec::new();
        j.encode(&mut out);
        assert_eq!(Job::from_payload(9, &out[HEADER..]), Some(j));
        let empty = job(0, [b"", b"", b"", b""]);
        assert_eq!(Job::from_payload(0, b"\0\0\0\0"), Some(empty));
        for bad in [
            &b""[..],
            b"\0",
            b"\0\0\0",
            b"a\0b\0c\0d",
            b"a\0b\0c\0d\0\0",
            b"a\0b\0c\0d\0e",
            b"a\0b\0c\0d\0e\0",
        ] {
            assert_eq!(Job::from_payload(1, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_pair_of_read_boundaries_gives_the_same_frames() {
        let mut bytes = Vec::new();
        job(0, [b"7/1234567", b"", b"u@d1.test", b"d1.test"])
            .encode(&mut bytes);
        Done { delnum: 0, body: Vec::new() }.encode(&mut bytes);
        Done { delnum: 0xffff, body: b"Z\0\0".to_vec() }.encode(&mut bytes);
        encode_text(LIMITS, b"", &mut bytes);
        let want: Vec<Frame> = vec![
            (JOB, 0, b"7/1234567\0\0u@d1.test\0d1.test\0".to_vec()),
            (DONE, 0, Vec::new()),
            (DONE, 0xffff, b"Z\0\0".to_vec()),
            (LIMITS, 0, Vec::new()),
        ];
        assert_eq!(decode_cut(64, &bytes, &[]), want);
        for cuts in cut_pairs(bytes.len()) {
            assert_eq!(decode_cut(64, &bytes, &cuts), want);
        }
    }

    #[test]
    fn a_length_over_the_maximum_breaks_the_stream() {
        let mut bytes = Vec::new();
        Done { delnum: 1, body: vec![b'x'; 10] }.encode(&mut bytes);
        Done { delnum: 2, body: vec![b'y'; 11] }.encode(&mut bytes);
        Done { delnum: 3, body: vec![b'z'; 1] }.encode(&mut bytes);
        let mut decoder = FrameDecoder::new(10);
        let (used, first) = decoder.decode(&bytes);
        assert_eq!(used, HEADER + 10);
        assert_eq!(first, Some(Ok((DONE, 1, vec![b'x'; 10]))));
        let (used2, second) = decoder.decode(&bytes[used..]);
        assert_eq!(used2, HEADER);
        assert_eq!(second, Some(Err(FrameTooLong { len: 11 })));
        assert!(!decoder.is_idle());
        let rest = &bytes[used + used2..];
        let again = decoder.decode(rest);
        assert_eq!(again, (rest.len(), Some(Err(FrameTooLong { len: 11 }))));
    }

    #[test]
    fn control_texts_have_their_own_cap_and_jobs_keep_theirs() {
        let mut bytes = Vec::new();
        encode_text(LIMITS, &[b'#'; 100], &mut bytes);
        encode_text(RESPONSES, &[b'#'; 100], &mut bytes);
        job(1, [b"7/1", b"", b"u@d", &[b'k'; 20]]).encode(&mut bytes);
        let mut decoder = FrameDecoder::new(16).texts_up_to(100);
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (used, frame) = decoder.decode(&bytes[at..]);
            at += used;
            match frame {
                Some(Ok((kind, _, _))) => kinds.push(Ok(kind)),
                Some(Err(e)) => {
                    kinds.push(Err(e));
                    break;
                }
                None => {}
            }
        }
        // The job is 30 bytes: over the job cap, though under the texts'.
        let too_long = FrameTooLong { len: 30 };
        assert_eq!(kinds, [Ok(LIMITS), Ok(RESPONSES), Err(too_long)]);
        let mut one_more = Vec::new();
        encode_text(LIMITS, &[b'#'; 101], &mut one_more);
        let (_, frame) =
            FrameDecoder::new(16).texts_up_to(100).decode(&one_more);
        assert_eq!(frame, Some(Err(FrameTooLong { len: 101 })));
    }

    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(1u8..=255, 0..10)
    }

    /// Decodes `bytes` cut at `cuts`, whatever they hold. A broken
    /// stream repeats its error on every read; it is kept once, so that
    /// the items do not depend on the cuts.
    fn decode_any(
        max: u32,
        bytes: &[u8],
        cuts: &[usize],
    ) -> (Vec<Result<Frame, FrameTooLong>>, bool) {
        let mut decoder = FrameDecoder::new(max);
        let mut items = feed_cut(|b| decoder.decode(b), bytes, cuts);
        items.dedup_by(|a, b| a.is_err() && b.is_err());
        (items, decoder.is_idle())
    }

    /// Found by the proptest twin: a frame of another kind whose payload
    /// happens to read as a job is still that other kind.
    #[test]
    fn a_job_shaped_payload_under_another_kind_is_not_a_job_frame() {
        let bytes = [0, 0, 0, 6, 0, 0, 0, 74, 0, 74, 0, 0, 0];
        let mut decoder = FrameDecoder::new(7);
        let (used, frame) = decoder.decode(&bytes);
        assert_eq!(used, bytes.len());
        let (kind, delnum, payload) = frame.unwrap().unwrap();
        assert_eq!((kind, delnum), (0, 0));
        assert!(Job::from_payload(delnum, &payload).is_some());
        assert_ne!(kind, JOB);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The twin of the `frame_decoder` fuzz target (`fuzz/`):
        /// hostile bytes. Any split decodes as the whole; an error is
        /// only ever last; the frames re-encode to the bytes they came
        /// from, and a job that parses re-encodes to its frame.
        #[test]
        fn twin_of_the_frame_decoder_fuzz_target(
            max in crate::testutil::one_of(vec![0, 1, 7, 64, u32::MAX]),
            bytes in prop::collection::vec(
                prop_oneof![3 => Just(0u8), 1 => Just(JOB), 2 => any::<u8>()],
                0..160,
            ),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = decode_any(max, &bytes, &[]);
            let cuts = cuts_from(&raw_cuts, bytes.len());
            prop_assert_eq!(&decode_any(max, &bytes, &cuts), &whole);
            let mut again = Vec::new();
            for (i, item) in whole.0.iter().enumerate() {
                let Ok((kind, delnum, payload)) = item else {
                    prop_assert_eq!(i, whole.0.len() - 1);
                    continue;
                };
                let at = again.len();
                put_header(*kind, *delnum, payload.len(), &mut again);
                again.extend_from_slice(payload);
                // Only a job frame is a job: the same payload under
                // another kind byte is not re-encoded as one.
                if *kind == JOB
                    && let Some(job) = Job::from_payload(*delnum, payload)
                {
                    let mut frame = Vec::new();
                    job.encode(&mut frame);
                    prop_assert_eq!(&frame[..], &again[at..]);
                }
            }
            prop_assert_eq!(&again[..], &bytes[..again.len()]);
        }

        #[test]
        fn any_split_of_random_frames_round_trips(
            jobs in prop::collection::vec(
                (any::<u16>(), field(), field(), field(), field()), 0..4),
            dones in prop::collection::vec(
                (any::<u16>(), prop::collection::vec(any::<u8>(), 0..20)),
                0..4),
            raw_cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let jobs: Vec<Job> = jobs
                .into_iter()
                .map(|(delnum, messid, sender, recipient, key)| Job {
                    delnum, messid, sender, recipient, key,
                })
                .collect();
            let dones: Vec<Done> = dones
                .into_iter()
                .map(|(delnum, body)| Done { delnum, body })
                .collect();
            let mut bytes = Vec::new();
            for j in &jobs {
                j.encode(&mut bytes);
            }
            for d in &dones {
                d.encode(&mut bytes);
            }
            let cuts = cuts_from(&raw_cuts, bytes.len());
            let frames = decode_cut(u32::MAX, &bytes, &cuts);
            prop_assert_eq!(frames.len(), jobs.len() + dones.len());
            let (job_frames, done_frames) = frames.split_at(jobs.len());
            for (j, (kind, delnum, payload)) in jobs.iter().zip(job_frames) {
                prop_assert_eq!(*kind, JOB);
                let parsed = Job::from_payload(*delnum, payload);
                prop_assert_eq!(parsed.as_ref(), Some(j));
            }
            for (d, (kind, delnum, payload)) in dones.iter().zip(done_frames) {
                prop_assert_eq!(*kind, DONE);
                prop_assert_eq!(*delnum, d.delnum);
                prop_assert_eq!(payload, &d.body);
            }
        }
    }
}
