//! What every command line of the binary shares: the one-line usage
//! error ([`Usage`], exit 100), a flag's value, `--help` and
//! `--version`, and [`Out`], a stdout that ends a command quietly when
//! its reader goes away. `cli` dispatches to the commands; each command
//! takes these from here, so no command depends on the dispatcher.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};

use lexopt::Parser;

/// A command line that does not parse, as one line: what is wrong and
/// the argument that is. Always exit 100.
#[derive(Debug)]
pub struct Usage(String);

impl Usage {
    /// A usage error that says `what`.
    pub fn new(what: impl Into<String>) -> Usage {
        Usage(what.into())
    }

    /// Says so on stderr as `shardspawn: COMMAND: what` (no command for
    /// the supervisor's own flags); returns the exit code, 100.
    pub fn report(&self, command: &str) -> i32 {
        if command.is_empty() {
            eprintln!("shardspawn: {self}");
        } else {
            eprintln!("shardspawn: {command}: {self}");
        }
        100
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Usage {
        use lexopt::Error as E;
        Usage(match e {
            E::UnexpectedOption(flag) => format!("unknown flag {flag}"),
            E::UnexpectedArgument(arg) => {
                format!("unexpected argument {}", arg.display())
            }
            E::MissingValue { option: Some(flag) } => {
                format!("{flag}: missing value")
            }
            E::MissingValue { option: None } => "missing value".to_owned(),
            E::UnexpectedValue { option, value } => {
                format!("{option}={}: takes no value", value.display())
            }
            E::ParsingFailed { value, error } => format!("{value}: {error}"),
            E::NonUnicodeValue(value) => {
                format!("{}: not UTF-8", value.display())
            }
            E::Custom(e) => e.to_string(),
        })
    }
}

/// The value of a flag that needs one, given as `--flag=VALUE` or as
/// the next argument. `--home --shards 4` is a forgotten value, not a
/// home called "--shards": a value that starts with "--" must be given
/// inline (`--home=--shards`).
pub fn flag_value(p: &mut Parser, flag: &str) -> Result<OsString, Usage> {
    if let Some(value) = p.optional_value() {
        return Ok(value);
    }
    p.raw_args()?
        .next_if(|next| !next.as_encoded_bytes().starts_with(b"--"))
        .ok_or_else(|| Usage(format!("{flag}: missing value")))
}

/// What a command prints, on a locked stdout. A reader that goes away
/// is not an error of ours: the `io::Error` is `BrokenPipe`, which
/// [`Out::finish`] turns into a quiet exit.
pub struct Out(io::StdoutLock<'static>);

impl Out {
    /// Locks stdout.
    pub fn new() -> Out {
        Out(io::stdout().lock())
    }

    /// The exit code of a command that printed through this: `code`
    /// when all went out; 0 with nothing said when the reader went away
    /// (ripgrep's habit: the reader has what it wanted); 111 when stdout
    /// failed otherwise.
    pub fn finish(mut self, r: io::Result<i32>) -> i32 {
        match r.and_then(|code| self.0.flush().map(|()| code)) {
            Ok(code) => code,
            Err(e) => quiet_if_closed(&e),
        }
    }
}

impl Default for Out {
    fn default() -> Out {
        Out::new()
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The exit code for a failed write to stdout: 0, quietly, when the
/// reader went away; else 111, said on stderr.
fn quiet_if_closed(e: &io::Error) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        0
    } else {
        eprintln!("shardspawn: unable to write to stdout: {e}");
        111
    }
}

/// Prints a usage text on stdout: what `--help` does, exit 0.
pub fn help(text: &str) -> i32 {
    let mut out = Out::new();
    let r = out.write_all(text.as_bytes()).map(|()| 0);
    out.finish(r)
}

/// What `--version` prints.
pub fn version() -> i32 {
    let mut out = Out::new();
    let r = writeln!(out, "shardspawn {}", env!("CARGO_PKG_VERSION"));
    out.finish(r.map(|()| 0))
}
