//! How a shard starts one delivery, by qmail-rspawn's rules: open the
//! message and check it (protocol §2.3 rows 10-13), make the output
//! pipe, watch it, and run qmail-remote with the message on fd 0 and the
//! pipe on fds 1 and 2. Every way this can fail is a [`StartError`]
//! carrying the body qmail-send gets; the syscalls are `shardspawn_os`'s.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use shardspawn_common::errno;
use shardspawn_common::refusal::Refusal;
use shardspawn_os::spawn;
use shardspawn_os::sys::child_pipe;

/// A failure to start a delivery, with what to log.
#[derive(Debug)]
pub struct StartError {
    /// The body qmail-send gets.
    pub body: Vec<u8>,
    /// What failed, for the log.
    pub what: &'static str,
    /// The errno behind it, if any.
    pub error: Option<io::Error>,
}

impl StartError {
    /// What its body tells qmail-send, for the log line that explains
    /// it: a failed exec is a `D` (stock's exit 100), and calling that
    /// "deferred" hid that every remote delivery bounced (issue 15).
    pub fn outcome(&self) -> &'static str {
        match self.body.first() {
            Some(b'K') => "K: delivered",
            Some(b'Z') => "Z: deferred",
            Some(b'D') => "D: failed (bounced)",
            _ => "answered",
        }
    }

    fn refusal(
        refusal: Refusal,
        what: &'static str,
        e: Option<io::Error>,
    ) -> Self {
        StartError { body: refusal.body(), what, error: e }
    }
}

/// A started qmail-remote: its pid and the read end of its output pipe
/// (non-blocking; the parent's copy of the write end is already closed).
#[derive(Debug)]
pub struct Started {
    /// The child.
    pub pid: Pid,
    /// Its output: stdout and stderr.
    pub output: OwnedFd,
}

/// Opens the message, checks it as qmail-rspawn does (protocol §2.3 rows
/// 10–13), makes the output pipe, has `watch` register its read end (a
/// child whose pipe nobody watches would never be answered, so if that
/// fails no child is started: `Z` as for a pipe that cannot be made) and
/// runs `program host sender recipient` with the message on fd 0 and the
/// pipe on fds 1 and 2.
pub fn start(
    spawner: &mut spawn::Spawner,
    program: &CStr,
    owner_uid: u32,
    job: (&[u8], &[u8], &[u8]),
    watch: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
) -> Result<Started, StartError> {
    let (messid, sender, recipient) = job;
    let host = match shardspawn_common::domain::host(recipient) {
        Some(host) => host,
        None => return Err(StartError::refusal(Refusal::NoHost, "", None)),
    };
    // O_NONBLOCK as qmail's open_read: a FIFO in the queue must not hang
    // the shard. The flag stays on the description qmail-remote gets,
    // as with stock, and means nothing for a regular file.
    let message = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(OsStr::from_bytes(messid))
        .map_err(|e| {
            StartError::refusal(Refusal::OpenMessage, "open message", Some(e))
        })?;
    let meta = message.metadata().map_err(|e| {
        StartError::refusal(Refusal::StatMessage, "fstat message", Some(e))
    })?;
    if !meta.file_type().is_file() {
        return Err(StartError::refusal(Refusal::WrongType, "", None));
    }
    if meta.uid() != owner_uid {
        return Err(StartError::refusal(Refusal::WrongOwner, "", None));
    }
    let (read, write) = child_pipe().map_err(|e| {
        StartError::refusal(Refusal::CreatePipe, "create pipe", Some(e))
    })?;
    watch(read.as_fd()).map_err(|e| {
        StartError::refusal(
            Refusal::CreatePipe,
            "watch a child's output",
            Some(e),
        )
    })?;
    // The fields come from NUL-terminated frames: they hold no NUL.
    let arg = |b: &[u8]| CString::new(b).expect("a command field has no NUL");
    let (host, sender, recipient) = (arg(host), arg(sender), arg(recipient));
    let argv =
        [program, host.as_c_str(), sender.as_c_str(), recipient.as_c_str()];
    match spawner.spawn(&argv, message.as_fd(), write.as_fd()) {
        // Our copies of the message and the write end close here, the
        // spawner's staged ones once the child has exec'd; EOF on `read`
        // then means the child and anything it started are done writing.
        Ok(pid) => Ok(Started { pid, output: read }),
        Err(e) => Err(spawn_failure(e)),
    }
}

/// A failed spawn, as qmail-send must hear of it
/// ([`shardspawn_common::errno::start_failure_body`]).
pub fn spawn_failure(e: io::Error) -> StartError {
    let errno = e.raw_os_error().unwrap_or(0);
    let what = if errno::is_fork_failure(errno) {
        "fork"
    } else {
        "run qmail-remote"
    };
    StartError { body: errno::start_failure_body(errno), what, error: Some(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_names_the_letter_qmail_send_gets() {
        use nix::errno::Errno;
        let of =
            |e: Errno| spawn_failure(io::Error::from_raw_os_error(e as i32));
        assert_eq!(of(Errno::ENOENT).outcome(), "D: failed (bounced)");
        assert_eq!(of(Errno::EACCES).outcome(), "D: failed (bounced)");
        assert_eq!(of(Errno::ETXTBSY).outcome(), "Z: deferred");
        assert_eq!(of(Errno::EAGAIN).outcome(), "Z: deferred");
        let open = StartError::refusal(Refusal::OpenMessage, "open", None);
        assert_eq!(open.outcome(), "Z: deferred");
    }
}
