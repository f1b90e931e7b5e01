//! One log line per event, in the supervision suites' style:
//! `shardspawn: shard 3: warning: unable to create pipe: Too many open
//! files`. Program and role, severity, what happened, the errno text.
//! Each line is written with one `write`, so lines from the supervisor
//! and every shard sharing a log pipe never interleave.

use std::fmt;
use std::io::Write;

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Routine: start, stop, settings, a restart.
    Info,
    /// Something failed, and a delivery got a `Z` or waits.
    Warning,
    /// The process cannot go on.
    Fatal,
}

/// A logger for one role (`supervisor`, `shard 3`).
#[derive(Clone, Debug)]
pub struct Log {
    role: String,
}

impl Log {
    /// A logger whose lines say `shardspawn: ROLE: ...`.
    pub fn new(role: impl Into<String>) -> Log {
        Log { role: role.into() }
    }

    /// Writes one line. Failures to log are ignored: a log must never
    /// stop a delivery.
    pub fn line(&self, severity: Severity, what: fmt::Arguments<'_>) {
        let sev = match severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Fatal => "fatal",
        };
        let mut line = format!("shardspawn: {}: {sev}: {what}", self.role);
        line.retain(|c| c != '\n');
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// An info line.
    pub fn info(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Info, what)
    }

    /// A warning line.
    pub fn warn(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Warning, what)
    }

    /// A fatal line.
    pub fn fatal(&self, what: fmt::Arguments<'_>) {
        self.line(Severity::Fatal, what)
    }
}
