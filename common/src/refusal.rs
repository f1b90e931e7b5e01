//! Why a command never got a qmail-remote (or lost it): one variant, one
//! text. The stock texts are qmail's byte for byte; they are the
//! contract (protocol §2.3), and each appears in the code of this file
//! exactly once (the golden test at the bottom repeats them, letter first,
//! as qmail-send receives them).
//!
//! Our own texts (hold expired, hold full, rate, suspended, shard lost)
//! say "shardspawn", name the key and what stopped it, and end with a
//! `(#x.y.z)` code as qmail's do: `#4.4.5` ("mail system congestion")
//! for a delivery held or refused for its key, `#4.3.0` ("other or
//! undefined mail system status") for a lost shard.

use std::time::Duration;

/// The first byte of every result body; the whole of qmail-send's
/// decision about the recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Letter {
    /// `D`: give up; the sender gets a bounce. (Ordered lowest, as qmail
    /// orders permanent < temporary < success.)
    Failure,
    /// `Z`: try later; qmail-send's next attempt is minutes away.
    Deferral,
    /// `K`: delivered; the recipient is done.
    Success,
}

impl Letter {
    /// `b'K'`, `b'Z'` or `b'D'`.
    pub fn byte(self) -> u8 {
        match self {
            Letter::Success => b'K',
            Letter::Deferral => b'Z',
            Letter::Failure => b'D',
        }
    }
    /// The letter for `K`, `Z` or `D`; `None` for any other byte.
    pub fn from_byte(b: u8) -> Option<Letter> {
        match b {
            b'K' => Some(Letter::Success),
            b'Z' => Some(Letter::Deferral),
            b'D' => Some(Letter::Failure),
            _ => None,
        }
    }
}

/// Why a command never got (or lost) its qmail-remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A field exceeded what we store (qmail: allocation failed).
    OutOfMemory,
    /// Big-concurrency qmail-send reads a high byte >= 0x80 as a negative
    /// delnum; we answer such a delnum as its spawner would.
    DelnumNegative,
    /// delnum >= the slots we announced.
    DelnumTooBig,
    /// delnum already has a delivery in flight.
    DelnumInUse,
    /// messid holds a byte that is not a digit (or a '/' after the first).
    MessidNonNumeric,
    /// messid longer than 99 bytes.
    MessidTooLong,
    /// messid empty.
    MessidTooShort,
    /// recipient has no '@'.
    NoHost,
    /// open(messid) failed.
    OpenMessage,
    /// fstat on the message failed.
    StatMessage,
    /// The message is not a regular file.
    WrongType,
    /// The message is not owned by the queue owner.
    WrongOwner,
    /// pipe() failed (EMFILE, ENFILE).
    CreatePipe,
    /// fork (or spawn) failed.
    Fork,
    /// Ours: held for the key's limit longer than the hold bound.
    HoldExpired {
        /// The limit key, as bytes (may be 8-bit).
        key: Vec<u8>,
        /// Its limit.
        limit: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// Ours: too many deliveries already wait for this key.
    HoldFull {
        /// The limit key.
        key: Vec<u8>,
        /// Its limit.
        limit: u32,
        /// How many were waiting.
        waiting: u32,
    },
    /// Ours: held for the key's rate longer than the hold bound.
    RateExpired {
        /// The limit key.
        key: Vec<u8>,
        /// Its rate in force, as written (`30/m`).
        rate: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Ours: too many deliveries already wait for this key's rate.
    RateFull {
        /// The limit key.
        key: Vec<u8>,
        /// Its rate in force, as written.
        rate: String,
        /// How many were waiting.
        waiting: u32,
    },
    /// Ours: the key is suspended; nothing starts for it until then.
    Suspended {
        /// The limit key.
        key: Vec<u8>,
        /// When it ends, as `2026-11-28 16:05:12 UTC`.
        until: String,
        /// Why, printable, one line.
        why: String,
    },
    /// Ours: held longer than the hold bound because every delivery
    /// process the shard may run was busy (its key was under its limit).
    BusyExpired {
        /// The shard's cap on running processes.
        cap: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// Ours: the spawner shard that owned this delivery died.
    ShardLost {
        /// Which shard.
        shard: u16,
    },
}

impl Refusal {
    /// `D` only for malformed commands (qmail's table); every other
    /// refusal is a deferral.
    pub fn letter(&self) -> Letter {
        use Refusal::*;
        match self {
            MessidNonNumeric | MessidTooLong | MessidTooShort | NoHost => {
                Letter::Failure
            }
            OutOfMemory
            | DelnumNegative
            | DelnumTooBig
            | DelnumInUse
            | OpenMessage
            | StatMessage
            | WrongType
            | WrongOwner
            | CreatePipe
            | Fork
            | HoldExpired { .. }
            | HoldFull { .. }
            | RateExpired { .. }
            | RateFull { .. }
            | Suspended { .. }
            | BusyExpired { .. }
            | ShardLost { .. } => Letter::Deferral,
        }
    }

    /// Appends letter and text (text ends in `\n`, has no NUL).
    pub fn write_body(&self, out: &mut Vec<u8>) {
        use Refusal::*;
        out.push(self.letter().byte());
        let stock = match self {
            OutOfMemory => "qmail-spawn out of memory. (#4.3.0)\n",
            DelnumNegative => "Internal error: delnum negative. (#4.3.5)\n",
            DelnumTooBig => "Internal error: delnum too big. (#4.3.5)\n",
            DelnumInUse => "Internal error: delnum in use. (#4.3.5)\n",
            MessidNonNumeric => {
                "Internal error: messid has nonnumerics. (#5.3.5)\n"
            }
            MessidTooLong => "Internal error: messid too long. (#5.3.5)\n",
            MessidTooShort => "Internal error: messid too short. (#5.3.5)\n",
            NoHost => "Sorry, address must include host name. (#5.1.3)\n",
            OpenMessage => "qmail-spawn unable to open message. (#4.3.0)\n",
            StatMessage => "qmail-spawn unable to fstat message. (#4.3.0)\n",
            WrongType => "Sorry, message has wrong type. (#4.3.5)\n",
            WrongOwner => "Sorry, message has wrong owner. (#4.3.5)\n",
            CreatePipe => "qmail-spawn unable to create pipe. (#4.3.0)\n",
            Fork => "qmail-spawn unable to fork. (#4.3.0)\n",
            HoldExpired { key, limit, waited } => {
                let held = format!("limit of {limit}");
                return held_text(key, &held, Some(*waited), 0, out);
            }
            HoldFull { key, limit, waiting } => {
                let held = format!("limit of {limit}");
                return held_text(key, &held, None, *waiting, out);
            }
            RateExpired { key, rate, waited } => {
                let held = format!("rate of {rate}");
                return held_text(key, &held, Some(*waited), 0, out);
            }
            RateFull { key, rate, waiting } => {
                let held = format!("rate of {rate}");
                return held_text(key, &held, None, *waiting, out);
            }
            Suspended { key, until, why } => {
                out.extend_from_slice(b"shardspawn: ");
                put_key(key, out);
                out.extend_from_slice(b" is suspended until ");
                put_line(until, out);
                out.extend_from_slice(b": ");
                put_line(why, out);
                out.extend_from_slice(b". (#4.4.5)\n");
                return;
            }
            BusyExpired { cap, waited } => {
                let text = format!(
                    "shardspawn: all {cap} delivery processes were busy; \
                     held {}s, longer than the hold limit. (#4.3.0)\n",
                    waited.as_secs()
                );
                out.extend_from_slice(text.as_bytes());
                return;
            }
            ShardLost { shard } => {
                let text = format!(
                    "shardspawn: spawner shard {shard} died; will try \
                     again. (#4.3.0)\n"
                );
                out.extend_from_slice(text.as_bytes());
                return;
            }
        };
        out.extend_from_slice(stock.as_bytes());
    }

    /// Letter and text as a new vector.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_body(&mut out);
        out
    }
}

/// Appends a limit key for a body as [`crate::domain::printable`] writes
/// it: anything outside printable ASCII (`0x21..=0x7e`) as `\DDD`. A body
/// must never hold a NUL (it would end the record early and shift every
/// record after it), a newline would split qmail-send's log line, and
/// two keys must never read the same there.
fn put_key(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(crate::domain::printable(key).as_bytes());
}

/// Appends the text of a delivery refused for what its key is at (`limit
/// of 5`, `rate of 30/m`): it waited `waited`, or found `waiting` others
/// waiting.
fn held_text(
    key: &[u8],
    held: &str,
    waited: Option<Duration>,
    waiting: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"shardspawn: ");
    put_key(key, out);
    let why = match waited {
        Some(waited) => {
            format!("held {}s, longer than the hold limit", waited.as_secs())
        }
        None => format!("{waiting} deliveries already wait for it"),
    };
    out.extend_from_slice(
        format!(" is at its {held}; {why}. (#4.4.5)\n").as_bytes(),
    );
}

/// Appends text for a body with every control byte (NUL and newline
/// among them) as a space.
fn put_line(text: &str, out: &mut Vec<u8>) {
    out.extend(
        text.bytes().map(|b| if b.is_ascii_control() { b' ' } else { b }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden table: these bytes are what qmail-send has always logged
    /// (protocol §2.3), and what we promise for our own refusals.
    #[test]
    fn every_refusal_is_its_text_byte_for_byte() {
        let table: Vec<(Refusal, &[u8])> = vec![
            (Refusal::OutOfMemory, b"Zqmail-spawn out of memory. (#4.3.0)\n"),
            (
                Refusal::DelnumNegative,
                b"ZInternal error: delnum negative. (#4.3.5)\n",
            ),
            (
                Refusal::DelnumTooBig,
                b"ZInternal error: delnum too big. (#4.3.5)\n",
            ),
            (
                Refusal::DelnumInUse,
                b"ZInternal error: delnum in use. (#4.3.5)\n",
            ),
            (
                Refusal::MessidNonNumeric,
                b"DInternal error: messid has nonnumerics. (#5.3.5)\n",
            ),
            (
                Refusal::MessidTooLong,
                b"DInternal error: messid too long. (#5.3.5)\n",
            ),
            (
                Refusal::MessidTooShort,
                b"DInternal error: messid too short. (#5.3.5)\n",
            ),
            (
                Refusal::NoHost,
                b"DSorry, address must include host name. (#5.1.3)\n",
            ),
            (
                Refusal::OpenMessage,
                b"Zqmail-spawn unable to open message. (#4.3.0)\n",
            ),
            (
                Refusal::StatMessage,
                b"Zqmail-spawn unable to fstat message. (#4.3.0)\n",
            ),
            (
                Refusal::WrongType,
                b"ZSorry, message has wrong type. (#4.3.5)\n",
            ),
            (
                Refusal::WrongOwner,
                b"ZSorry, message has wrong owner. (#4.3.5)\n",
            ),
            (
                Refusal::CreatePipe,
                b"Zqmail-spawn unable to create pipe. (#4.3.0)\n",
            ),
            (Refusal::Fork, b"Zqmail-spawn unable to fork. (#4.3.0)\n"),
            (
                Refusal::HoldExpired {
                    key: b"d1.test".to_vec(),
                    limit: 5,
                    waited: Duration::from_millis(120_999),
                },
                b"Zshardspawn: d1.test is at its limit of 5; held 120s, \
                  longer than the hold limit. (#4.4.5)\n",
            ),
            (
                Refusal::HoldFull {
                    key: b"[10.0.0.1]".to_vec(),
                    limit: 1,
                    waiting: 4,
                },
                b"Zshardspawn: [10.0.0.1] is at its limit of 1; 4 \
                  deliveries already wait for it. (#4.4.5)\n",
            ),
            (
                Refusal::RateExpired {
                    key: b"d1.test".to_vec(),
                    rate: "30/m".into(),
                    waited: Duration::from_millis(120_999),
                },
                b"Zshardspawn: d1.test is at its rate of 30/m; held 120s, \
                  longer than the hold limit. (#4.4.5)\n",
            ),
            (
                Refusal::RateFull {
                    key: b"=google".to_vec(),
                    rate: "10/s".into(),
                    waiting: 80,
                },
                b"Zshardspawn: =google is at its rate of 10/s; 80 \
                  deliveries already wait for it. (#4.4.5)\n",
            ),
            (
                Refusal::Suspended {
                    key: b"d1.test".to_vec(),
                    until: "2026-11-28 16:05:12 UTC".into(),
                    why: "10 site-level failures in a row".into(),
                },
                b"Zshardspawn: d1.test is suspended until 2026-11-28 \
                  16:05:12 UTC: 10 site-level failures in a row. (#4.4.5)\n",
            ),
            (
                Refusal::BusyExpired {
                    cap: 250,
                    waited: Duration::from_millis(120_999),
                },
                b"Zshardspawn: all 250 delivery processes were busy; held \
                  120s, longer than the hold limit. (#4.3.0)\n",
            ),
            (
                Refusal::ShardLost { shard: 3 },
                b"Zshardspawn: spawner shard 3 died; will try again. \
                  (#4.3.0)\n",
            ),
        ];
        let mut seen: Vec<usize> =
            table.iter().map(|(r, _)| ordinal(r)).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..VARIANTS).collect::<Vec<_>>(),
            "a variant is missing"
        );
        for (refusal, want) in table {
            assert_eq!(
                refusal.body(),
                want,
                "{refusal:?}: got {:?}",
                String::from_utf8_lossy(&refusal.body())
            );
            assert_eq!(Some(refusal.letter()), Letter::from_byte(want[0]));
        }
    }

    /// How many variants there are. Adding one breaks `ordinal` below
    /// until it has a number, and the golden table until it has a row.
    const VARIANTS: usize = 21;

    fn ordinal(refusal: &Refusal) -> usize {
        use Refusal::*;
        match refusal {
            OutOfMemory => 0,
            DelnumNegative => 1,
            DelnumTooBig => 2,
            DelnumInUse => 3,
            MessidNonNumeric => 4,
            MessidTooLong => 5,
            MessidTooShort => 6,
            NoHost => 7,
            OpenMessage => 8,
            StatMessage => 9,
            WrongType => 10,
            WrongOwner => 11,
            CreatePipe => 12,
            Fork => 13,
            HoldExpired { .. } => 14,
            HoldFull { .. } => 15,
            BusyExpired { .. } => 16,
            ShardLost { .. } => 17,
            RateExpired { .. } => 18,
            RateFull { .. } => 19,
            Suspended { .. } => 20,
        }
    }

    #[test]
    fn a_key_cannot_break_the_record_or_the_log_line() {
        let refusal = Refusal::HoldFull {
            key: b"a\0b\nc d\xffe\x7f~!".to_vec(),
            limit: 2,
            waiting: 8,
        };
        assert_eq!(
            refusal.body(),
            b"Zshardspawn: a\\000b\\010c\\032d\\255e\\127~! is at its limit of \
              2; 8 deliveries already wait for it. (#4.4.5)\n"
        );
        let refusal = Refusal::HoldExpired {
            key: vec![0, b'\n'],
            limit: 1,
            waited: Duration::ZERO,
        };
        let body = refusal.body();
        assert!(body.starts_with(b"Zshardspawn: \\000\\010 is at"));
        assert!(!body.contains(&0));
        assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 1);
        let refusal = Refusal::Suspended {
            key: b"a.test".to_vec(),
            until: "x\0".into(),
            why: "said \"no\nway\"\r".into(),
        };
        assert_eq!(
            refusal.body(),
            b"Zshardspawn: a.test is suspended until x : said \"no way\" . \
              (#4.4.5)\n"
        );
    }

    #[test]
    fn letters_round_trip_and_order_as_qmail() {
        for letter in [Letter::Success, Letter::Deferral, Letter::Failure] {
            assert_eq!(Letter::from_byte(letter.byte()), Some(letter));
        }
        for b in [0, b'k', b'r', b's', b'h', b'X'] {
            assert_eq!(Letter::from_byte(b), None);
        }
        assert!(Letter::Failure < Letter::Deferral);
        assert!(Letter::Deferral < Letter::Success);
    }
}
