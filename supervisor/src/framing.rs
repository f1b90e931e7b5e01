//! Noticing that qmail-send speaks the other framing (issue 15).
//!
//! The framing cannot be negotiated (protocol §1.2): the admin sets it
//! (`SHARDSPAWN_DELNUM_BYTES`), and when it is wrong every command is
//! misread, every answer is one qmail-send logs as "report mangled",
//! nothing is delivered, and nothing said why. This watch reads the
//! checks the core already made and, when the commands cannot be
//! qmail-send's in the configured framing, logs one line naming the
//! setting. It never changes an answer: qmail's checks, their order and
//! their texts stand.
//!
//! The signal. A qmail-send of the right framing never fails a check of
//! [`validate::check`]: its delnums are below the slots we announced and
//! not busy with us (it frees one only when it reads our answer), its
//! messids are `split/inode` in decimal, its remote recipients hold an
//! '@'. A misread stream fails them in a pattern:
//!
//! - **1 byte set, 2 on the wire**: each command is four NUL-terminated
//!   pieces where we expect three, so the decoder drifts by one piece a
//!   command. The piece read as a messid is empty (the delnum's high
//!   byte, 0 below 256, ends it), a recipient or sender without its
//!   first byte, or a messid without its first digit; all but the last
//!   fail, and that one fails when the split has one digit.
//! - **2 bytes set, 1 on the wire**: the messid's first digit is read as
//!   the delnum's high byte, so every delnum is 0x3000..=0x39FF (12288
//!   to 14847). With fewer slots than that, every command is "delnum too
//!   big"; with more, the messid lost its first digit, and the delnum's
//!   neighbour below is idle with us. A right-framing qmail-send reaches
//!   such a delnum only with every slot below it busy, as it takes the
//!   lowest free one: a delnum whose high byte is a digit and whose
//!   neighbour is idle is counted as suspect too.
//!
//! A suspect command adds a strike, a sound one takes one away, and at
//! [`STRIKES`] the line is logged, once for the life of the process:
//! both mismatches reach it within a few dozen commands, and a stream of
//! the right framing never makes a first strike.

use shardspawn_common::command::{Command, DelnumWidth};
use shardspawn_common::refusal::Refusal;

#[cfg(doc)]
use shardspawn_common::validate;

/// Suspect commands, net of sound ones, before the line is logged.
pub const STRIKES: u32 = 8;

/// The watch over one command stream.
#[derive(Debug)]
pub struct FramingWatch {
    width: DelnumWidth,
    strikes: u32,
    warned: bool,
}

impl FramingWatch {
    /// A watch for a stream configured as `width`.
    pub fn new(width: DelnumWidth) -> FramingWatch {
        FramingWatch { width, strikes: 0, warned: false }
    }

    /// Takes one command and the outcome of its checks; `below_busy`
    /// says whether delnum - 1 is in flight with us. Returns the line to
    /// log, the one time the strikes reach [`STRIKES`].
    pub fn observe(
        &mut self,
        cmd: &Command,
        checked: Result<(), &Refusal>,
        below_busy: bool,
    ) -> Option<String> {
        if self.warned {
            return None;
        }
        let [_, high] = cmd.delnum.to_le_bytes();
        let suspect = checked.is_err()
            || (self.width == DelnumWidth::Two
                && high.is_ascii_digit()
                && !below_busy);
        if !suspect {
            self.strikes = self.strikes.saturating_sub(1);
            return None;
        }
        self.strikes += 1;
        if self.strikes < STRIKES {
            return None;
        }
        self.warned = true;
        let (now, other, who) = match self.width {
            DelnumWidth::One => (1, 2, "a big-concurrency qmail-send"),
            DelnumWidth::Two => (2, 1, "a stock qmail-send"),
        };
        Some(format!(
            "qmail-send's commands do not read as {now}-byte delnums \
             (SHARDSPAWN_DELNUM_BYTES={now}): {STRIKES} more fail checks \
             that no qmail-send of that framing fails than pass them; if it \
             is {who}, set SHARDSPAWN_DELNUM_BYTES={other} and restart \
             qmail-send (until then every answer is mangled for it)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardspawn_common::command::CommandDecoder;
    use shardspawn_common::validate;

    fn command(delnum: u16, messid: &str, recipient: &str) -> Command {
        Command {
            delnum,
            messid: messid.as_bytes().to_vec(),
            sender: b"s@b.test".to_vec(),
            recipient: recipient.as_bytes().to_vec(),
        }
    }

    /// What qmail-send of framing `sent` writes for `n` deliveries in a
    /// row (delnums 0.., messids as qmail names them), read as `read`
    /// with `slots` announced, each command checked with nothing else
    /// in flight: the lines the watch logs.
    fn lines(sent: DelnumWidth, read: DelnumWidth, slots: u32) -> usize {
        let mut wire = Vec::new();
        for i in 0..40u16 {
            let number = 1000 + u32::from(i);
            let messid = format!("{}/{number}", number % 23);
            let rcpt = format!("u{i}@d{i}.test");
            command(i, &messid, &rcpt).encode(sent, &mut wire);
        }
        let mut decoder = CommandDecoder::new(read, 1 << 14);
        let mut watch = FramingWatch::new(read);
        let mut busy = vec![false; slots as usize];
        let mut logged = 0;
        let mut at = 0;
        while at < wire.len() {
            let (used, decoded) = decoder.decode(&wire[at..]);
            at += used;
            let Some(shardspawn_common::command::Decoded::Command(cmd)) =
                decoded
            else {
                continue;
            };
            let d = usize::from(cmd.delnum);
            let checked = validate::check(&cmd, slots, |d| busy[d as usize]);
            let below = d.checked_sub(1).and_then(|b| busy.get(b).copied());
            if let Some(line) = watch.observe(
                &cmd,
                checked.as_ref().map(|_| ()),
                below == Some(true),
            ) {
                let n = read.bytes();
                assert!(
                    line.contains(&format!("SHARDSPAWN_DELNUM_BYTES={n}")),
                    "{line}"
                );
                logged += 1;
            }
            if checked.is_ok() {
                busy[d] = true;
            }
        }
        logged
    }

    #[test]
    fn the_right_framing_never_strikes() {
        assert_eq!(lines(DelnumWidth::One, DelnumWidth::One, 255), 0);
        assert_eq!(lines(DelnumWidth::Two, DelnumWidth::Two, 32767), 0);
        assert_eq!(lines(DelnumWidth::Two, DelnumWidth::Two, 120), 0);
    }

    #[test]
    fn two_bytes_read_as_one_are_named_once() {
        assert_eq!(lines(DelnumWidth::Two, DelnumWidth::One, 255), 1);
        assert_eq!(lines(DelnumWidth::Two, DelnumWidth::One, 120), 1);
    }

    #[test]
    fn one_byte_read_as_two_is_named_once() {
        // Few slots: every delnum is too big; many: the messid lost its
        // first digit and the neighbour below is idle.
        assert_eq!(lines(DelnumWidth::One, DelnumWidth::Two, 509), 1);
        assert_eq!(lines(DelnumWidth::One, DelnumWidth::Two, 32767), 1);
    }

    #[test]
    fn sound_commands_take_strikes_away() {
        let mut watch = FramingWatch::new(DelnumWidth::One);
        let good = command(1, "7/1000", "u@d.test");
        let bad = Refusal::MessidTooShort;
        for _ in 0..100 {
            for _ in 0..STRIKES - 1 {
                assert_eq!(watch.observe(&good, Err(&bad), false), None);
            }
            for _ in 0..STRIKES - 1 {
                assert_eq!(watch.observe(&good, Ok(()), false), None);
            }
        }
        // Even, so far; then a run of strikes, named once.
        for _ in 0..STRIKES - 1 {
            assert_eq!(watch.observe(&good, Err(&bad), false), None);
        }
        assert!(watch.observe(&good, Err(&bad), false).is_some());
        for _ in 0..3 * STRIKES {
            assert_eq!(watch.observe(&good, Err(&bad), false), None);
        }
    }

    /// Through the core: one warning, and every other effect exactly as
    /// without the watch.
    #[test]
    fn the_core_logs_once_and_answers_as_without_the_watch() {
        use crate::core::{Core, Effect, Event, Level};
        use shardspawn_common::limits::Limits;
        use std::rc::Rc;
        let core = || {
            let limits = (Rc::from(&b""[..]), Limits::parse(b"").unwrap());
            Core::new(255, 2, limits, Rc::from(&b""[..]), &mut Vec::new())
        };
        let (mut plain, mut watched) = (core(), core());
        watched.watch_framing(DelnumWidth::One);
        let mut warnings = Vec::new();
        let now = std::time::Instant::now();
        for i in 0..60u16 {
            // Mostly what a 2-byte stream read as 1 looks like, now and
            // then a sound command.
            let c = match i % 4 {
                0 => command(i, "", "x"),
                1 => command(i, "12/1000", "u@d.test"),
                _ => command(i, "@d.test", "s@b.test"),
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            plain.handle(Event::Command(c.clone(), now), &mut a);
            watched.handle(Event::Command(c, now), &mut b);
            b.retain(|e| match e {
                Effect::Log(Level::Warn, line)
                    if line.contains("SHARDSPAWN_DELNUM_BYTES") =>
                {
                    warnings.push(line.clone());
                    false
                }
                _ => true,
            });
            assert_eq!(a, b, "command {i}");
        }
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
    }

    #[test]
    fn a_high_delnum_with_its_neighbour_busy_is_sound() {
        // A big-concurrency qmail-send past 12288 in flight.
        let mut watch = FramingWatch::new(DelnumWidth::Two);
        let cmd = command(0x3105, "7/1000", "u@d.test");
        for _ in 0..3 * STRIKES {
            assert_eq!(watch.observe(&cmd, Ok(()), true), None);
        }
    }
}
