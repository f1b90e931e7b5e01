//! The checks of a command that need no file, in qmail's order
//! (protocol §2.3 rows 2–9). The file checks (open, fstat, type, owner)
//! and the pipe and fork happen in the shard, in the same order after
//! these.

use crate::command::Command;
use crate::refusal::Refusal;

/// Checks `cmd` against the announced `slots`; `in_use(delnum)` says
/// whether that delnum already has a delivery in flight (asked only once
/// the delnum is known to be in range).
///
/// Order: delnum negative (a 2-byte delnum >= 32768 while `slots` <=
/// 32768, as big-concurrency qmail-send reads it), delnum too big, delnum
/// in use, messid nonnumeric, messid too long (more than 99 bytes),
/// messid too short, no '@' anywhere in the recipient.
pub fn check(
    cmd: &Command,
    slots: u32,
    in_use: impl FnOnce(u16) -> bool,
) -> Result<(), Refusal> {
    let delnum = cmd.delnum;
    // Big-concurrency qmail-send widens the high byte as a signed char,
    // so it calls these delnums negative; above 32768 slots we announced
    // more than it can address anyway and answer "too big" instead.
    if delnum >= 0x8000 && slots <= 0x8000 {
        return Err(Refusal::DelnumNegative);
    }
    if u32::from(delnum) >= slots {
        return Err(Refusal::DelnumTooBig);
    }
    if in_use(delnum) {
        return Err(Refusal::DelnumInUse);
    }
    let messid = &cmd.messid;
    let numeric =
        |(i, &b): (usize, &u8)| b.is_ascii_digit() || (b == b'/' && i > 0);
    if !messid.iter().enumerate().all(numeric) {
        return Err(Refusal::MessidNonNumeric);
    }
    // qmail's limit is 100 bytes counting the NUL we do not store.
    if messid.len() > 99 {
        return Err(Refusal::MessidTooLong);
    }
    if messid.is_empty() {
        return Err(Refusal::MessidTooShort);
    }
    if !cmd.recipient.contains(&b'@') {
        return Err(Refusal::NoHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(delnum: u16, messid: &[u8], recipient: &[u8]) -> Command {
        Command {
            delnum,
            messid: messid.to_vec(),
            sender: b"a@b.test".to_vec(),
            recipient: recipient.to_vec(),
        }
    }

    fn free(_: u16) -> bool {
        false
    }

    #[test]
    fn a_good_command_passes() {
        let ok = [
            cmd(0, b"7/1234567", b"u@d1.test"),
            cmd(119, b"1", b"@"),
            cmd(5, b"1//2/", b"u@"),
            cmd(5, &[b'9'; 99], b"a@b@c"),
        ];
        for c in ok {
            assert_eq!(check(&c, 120, free), Ok(()), "{c:?}");
        }
        // The sender is never looked at.
        let mut c = cmd(1, b"1", b"u@d");
        c.sender = b"\xff no at sign".to_vec();
        assert_eq!(check(&c, 120, free), Ok(()));
    }

    #[test]
    fn delnum_checks() {
        let table: &[(u16, u32, Refusal)] = &[
            (0x8000, 32768, Refusal::DelnumNegative),
            (0xffff, 120, Refusal::DelnumNegative),
            (0xbeef, 509, Refusal::DelnumNegative),
            // More than 32768 slots announced: qmail-send reads the high
            // byte unsigned, so the delnum is only too big.
            (0xbeef, 40000, Refusal::DelnumTooBig),
            (0xffff, 65535, Refusal::DelnumTooBig),
            (120, 120, Refusal::DelnumTooBig),
            (255, 1, Refusal::DelnumTooBig),
            (0x7fff, 32767, Refusal::DelnumTooBig),
        ];
        for (delnum, slots, want) in table {
            let c = cmd(*delnum, b"1", b"u@d");
            assert_eq!(check(&c, *slots, free).as_ref(), Err(want));
        }
        assert_eq!(check(&cmd(0x8000, b"1", b"u@d"), 40000, free), Ok(()));
        assert_eq!(check(&cmd(119, b"1", b"u@d"), 120, free), Ok(()));
    }

    #[test]
    fn in_use_is_asked_only_for_a_delnum_in_range() {
        let mut asked = None;
        let c = cmd(7, b"1", b"u@d");
        let got = check(&c, 120, |d| {
            asked = Some(d);
            true
        });
        assert_eq!(got, Err(Refusal::DelnumInUse));
        assert_eq!(asked, Some(7));
        let c = cmd(120, b"1", b"u@d");
        let got = check(&c, 120, |_| panic!("asked for an invalid delnum"));
        assert_eq!(got, Err(Refusal::DelnumTooBig));
    }

    #[test]
    fn messid_and_recipient_checks() {
        let long = [b'1'; 100];
        let table: &[(&[u8], &[u8], Refusal)] = &[
            (b"/1", b"u@d", Refusal::MessidNonNumeric),
            (b"/", b"u@d", Refusal::MessidNonNumeric),
            (b"7/12a", b"u@d", Refusal::MessidNonNumeric),
            (b"-1", b"u@d", Refusal::MessidNonNumeric),
            (b"1 ", b"u@d", Refusal::MessidNonNumeric),
            (b"\xd9", b"u@d", Refusal::MessidNonNumeric),
            (&long, b"u@d", Refusal::MessidTooLong),
            (b"", b"u@d", Refusal::MessidTooShort),
            (b"1", b"u", Refusal::NoHost),
            (b"1", b"", Refusal::NoHost),
        ];
        for (messid, recipient, want) in table {
            let c = cmd(1, messid, recipient);
            assert_eq!(check(&c, 120, free).as_ref(), Err(want), "{c:?}");
        }
    }

    /// qmail's order: each check wins over every later one.
    #[test]
    fn the_first_failing_check_wins() {
        let mut long_bad = vec![b'1'; 120];
        long_bad.push(b'x');
        // Every command here also has a busy delnum (where it is asked)
        // and a recipient without '@'.
        let table: &[(u16, &[u8], Refusal)] = &[
            (0x8001, b"", Refusal::DelnumNegative),
            (200, b"", Refusal::DelnumTooBig),
            (1, b"", Refusal::DelnumInUse),
        ];
        for (delnum, messid, want) in table {
            let c = cmd(*delnum, messid, b"");
            let got = check(&c, 120, |_| true);
            assert_eq!(got.as_ref(), Err(want), "{c:?}");
        }
        // From here the delnum is free; the recipient still has no '@'.
        // Nonnumerics are looked for over the whole messid before its
        // length is.
        let table: &[(&[u8], Refusal)] = &[
            (&long_bad, Refusal::MessidNonNumeric),
            (&[b'2'; 100], Refusal::MessidTooLong),
            (b"", Refusal::MessidTooShort),
        ];
        for (messid, want) in table {
            let c = cmd(1, messid, b"");
            let got = check(&c, 120, free);
            assert_eq!(got.as_ref(), Err(want), "{c:?}");
        }
    }
}
