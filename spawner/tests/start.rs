//! A delivery's start, on its own: a start whose pipe cannot be watched
//! runs nothing, in both of the spawner's modes.
//!
//! One test function: `Spawner::new` takes fixed descriptor numbers,
//! which must not be another test's files, and the check that no child
//! was left looks at every child of this process.

use std::ffi::CString;

use nix::sys::wait::{WaitStatus, waitpid};
use shardspawn_os::spawn::{Mode, Spawner};
use shardspawn_spawner::start;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn a_start_whose_pipe_cannot_be_watched_runs_nothing() {
    let dir = std::env::temp_dir()
        .join(format!("shardspawn-start-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for mode in [Mode::Overlap, Mode::WaitForExec] {
        an_unwatched_pipe_starts_nothing(mode, &dir);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// If the shard cannot watch a child's pipe, it would never see the
/// child's end: no child is started, and the start is answered as a
/// pipe that cannot be made. With a watch that works, the descriptor
/// watched is the output handed back. (Every child of the parts before
/// is reaped by now, and this file has one test: any child would be
/// this start's.)
fn an_unwatched_pipe_starts_nothing(mode: Mode, dir: &std::path::Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    use nix::errno::Errno;
    use nix::sys::wait::WaitPidFlag;
    use shardspawn_common::refusal::Refusal;

    let mut spawner = Spawner::new(c("/bin/true"), mode).unwrap();
    let message = dir.join("message");
    std::fs::write(&message, b"x").unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let job =
        (message.as_os_str().as_bytes(), &b"a@b.test"[..], &b"c@d.test"[..]);
    let program = c("/bin/true");
    let refused = start::start(&mut spawner, &program, uid, job, |_| {
        Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC))
    });
    let e = refused.expect_err("started a child nobody watches");
    assert_eq!(e.body, Refusal::CreatePipe.body());
    assert_eq!(waitpid(None, Some(WaitPidFlag::WNOHANG)), Err(Errno::ECHILD));

    let mut watched = None;
    let started = start::start(&mut spawner, &program, uid, job, |fd| {
        watched = Some(fd.as_raw_fd());
        Ok(())
    })
    .unwrap();
    assert_eq!(watched, Some(started.output.as_raw_fd()));
    assert_eq!(
        waitpid(started.pid, None),
        Ok(WaitStatus::Exited(started.pid, 0))
    );
}
