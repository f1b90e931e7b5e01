//! What qmail makes of a failed start: which errnos are temporary (its
//! `error_temp` list), and so which letter a qmail-remote that could not
//! be run earns. Numbers in, a refusal or an exit code out: the errno
//! values are Linux's, taken from `libc` so that no number is written
//! here by hand.

use crate::refusal::Refusal;
use crate::report::{ChildEnd, body_for};

/// qmail's list of temporary errnos (`error_temp`): a child that cannot
/// exec for one of these exits 111 (try again), for any other 100.
pub fn is_temporary(errno: i32) -> bool {
    use libc::*;
    matches!(
        errno,
        EINTR
            | ENOMEM
            | ETXTBSY
            | EIO
            | ETIMEDOUT
            | EAGAIN
            | EDEADLK
            | EBUSY
            | ENFILE
            | EMFILE
            | EFBIG
            | ENOSPC
            | ENETDOWN
            | ENETUNREACH
            | ENETRESET
            | ECONNABORTED
            | ECONNRESET
            | ENOBUFS
            | ETOOMANYREFS
            | ECONNREFUSED
            | EHOSTDOWN
            | EHOSTUNREACH
            | EUSERS
            | EDQUOT
            | ESTALE
            | ENOLCK
    )
}

/// What qmail-send is told when qmail-remote could not be started for
/// `errno` (0 when there was none).
///
/// The spawner reports a failed exec to the parent instead of running a
/// child that exits, so this gives what stock would have: EAGAIN and
/// ENOMEM are the fork's own failures (`Z`, "unable to fork"); any other
/// temporary errno is the child's exit 111 (`Z`), and the rest its exit
/// 100 (`D`, so a missing program bounces, as with stock).
pub fn start_failure_body(errno: i32) -> Vec<u8> {
    if errno == libc::EAGAIN || errno == libc::ENOMEM {
        return Refusal::Fork.body();
    }
    let code = if is_temporary(errno) { 111 } else { 100 };
    body_for(ChildEnd::Exited(code), b"")
}

/// Whether [`start_failure_body`] calls `errno` a failed fork, for the
/// log's "unable to fork" against "unable to run qmail-remote".
pub fn is_fork_failure(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::ENOMEM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_gets_the_letter_stock_would() {
        // The fork's own failures.
        assert_eq!(
            start_failure_body(libc::EAGAIN),
            b"Zqmail-spawn unable to fork. (#4.3.0)\n"
        );
        assert_eq!(start_failure_body(libc::ENOMEM)[0], b'Z');
        // A temporary exec failure is exit 111, a permanent one exit 100.
        assert_eq!(start_failure_body(libc::ETXTBSY)[0], b'Z');
        assert_eq!(start_failure_body(libc::ENOENT)[0], b'D');
        assert_eq!(start_failure_body(libc::EACCES)[0], b'D');
        assert_eq!(start_failure_body(0)[0], b'D');
    }

    #[test]
    fn the_temporary_list_is_qmails() {
        for e in [libc::EINTR, libc::EMFILE, libc::ENFILE, libc::ESTALE] {
            assert!(is_temporary(e), "{e}");
        }
        for e in [libc::ENOENT, libc::EACCES, libc::ENOEXEC, libc::EPERM] {
            assert!(!is_temporary(e), "{e}");
        }
    }
}
