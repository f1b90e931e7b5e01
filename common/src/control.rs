//! What qmail-style control files have in common: the limits file
//! (`control/concurrencydomains`, [`crate::limits`]) and the response
//! rules (`control/responserules`, [`crate::response`]) are both one rule
//! a line, blank lines and lines whose first non-blank byte is `#`
//! ignored, blanks (spaces, tabs, carriage returns) around the line and
//! its fields trimmed; and both name the line of the first error the
//! same way.
//!
//! The file's name is not known here (this crate reads no file): the
//! caller adds it, as `FILE: line N: TEXT: why`.

use std::fmt;

/// Most bytes of a control file shardspawn reads, and so of the text it
/// sends every shard in one frame ([`crate::frame::MAX_TEXT`] is this):
/// whatever the supervisor accepts, every shard can take.
///
/// 8 MiB: the largest file seen in use, 60,000 rules in 1.7 MB, fits
/// four times over, and a text this size is parsed in a fraction of a
/// second; the supervisor holds at most two per shard on their way (one
/// being written, one queued), shared between the shards. A file past it
/// is refused by name, so `/dev/zero` or a runaway generator cannot eat
/// the memory of the process that carries everyone's mail.
pub const MAX_FILE: usize = 8 << 20;

/// A line of a control file that did not parse, or (in the limits file)
/// a group used and never defined. Displays as `line N: TEXT: why`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// 1-based line number.
    pub line: usize,
    /// The line as written, trimmed (lossy UTF-8).
    pub text: String,
    /// What is wrong.
    pub why: String,
}

impl ControlError {
    /// The error of line `line`, whose trimmed bytes are `text`.
    pub fn new(line: usize, text: &[u8], why: impl Into<String>) -> Self {
        ControlError {
            line,
            text: String::from_utf8_lossy(text).into_owned(),
            why: why.into(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.text, self.why)
    }
}

impl std::error::Error for ControlError {}

/// Blanks around a line, a key or a value: a file written on another
/// system may end its lines in "\r\n".
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

/// `bytes` without the blanks around it.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_blank(b)).unwrap_or(0);
    let end = bytes.iter().rposition(|&b| !is_blank(b)).map_or(0, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// The rule lines of a file's contents, trimmed, each with its 1-based
/// line number; blank lines and comments are skipped.
pub fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, trim(raw)))
        .filter(|(_, line)| line.first().is_some_and(|&b| b != b'#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blanks_and_comments_and_keep_their_numbers() {
        let text = b"# head\n\n  a:1 \r\n\t# indented comment\nb:2\n \t\r\n";
        let got: Vec<(usize, &[u8])> = lines(text).collect();
        assert_eq!(got, [(3, b"a:1".as_slice()), (5, b"b:2".as_slice())]);
        assert_eq!(lines(b"").count(), 0);
    }

    #[test]
    fn trim_takes_spaces_tabs_and_carriage_returns() {
        assert_eq!(trim(b" \t a b\r"), b"a b");
        assert_eq!(trim(b" \t\r"), b"");
        assert_eq!(trim(b"x\n"), b"x\n");
    }

    #[test]
    fn an_error_names_its_line() {
        let e = ControlError::new(12, b"d:x", "not a number");
        assert_eq!(e.to_string(), "line 12: d:x: not a number");
    }
}
