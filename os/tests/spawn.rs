//! The spawner's start, on its own: many children through few pads,
//! each with its own argv, stdin and output, every staged descriptor let
//! go once the children are reaped, and a failed exec told apart from
//! an exit, in both modes.
//!
//! One test function: `Spawner::new` takes fixed descriptor numbers,
//! which must not be another test's files.

use std::ffi::CString;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;

use nix::sys::wait::{WaitStatus, waitpid};
use shardspawn_os::spawn::{Mode, PADS, Spawner};
use shardspawn_os::sys;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn the_spawner_starts_many_through_few_pads_and_tells_a_failed_exec() {
    let dir = std::env::temp_dir()
        .join(format!("shardspawn-spawner-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for mode in [Mode::Overlap, Mode::WaitForExec] {
        many_children(mode, &dir);
        a_missing_program(mode);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// More children than pads, each reading its own stdin and echoing its
/// own argument: after each is reaped, its pipe is at EOF at once (no
/// staged copy of the write end is left behind) and holds exactly its
/// own output.
fn many_children(mode: Mode, dir: &std::path::Path) {
    let mut spawner = Spawner::new(c("/bin/sh"), mode).unwrap();
    let n = 6 * PADS + 1;
    let mut children = Vec::new();
    for i in 0..n {
        let input = dir.join(format!("in{i}"));
        std::fs::File::create(&input)
            .and_then(|mut f| f.write_all(format!("stdin {i}\n").as_bytes()))
            .unwrap();
        let stdin = std::fs::File::open(&input).unwrap();
        let (read, write) = sys::child_pipe().unwrap();
        let argv = [
            c("/bin/sh"),
            c("-c"),
            c("cat; echo \"$0\"; echo err >&2"),
            c(&format!("arg {i}")),
        ];
        let argv: Vec<&std::ffi::CStr> =
            argv.iter().map(CString::as_c_str).collect();
        let pid = spawner.spawn(&argv, stdin.as_fd(), write.as_fd()).unwrap();
        // Our copies go now, as a shard's do.
        drop((stdin, write));
        spawner.collect();
        children.push((i, pid, std::fs::File::from(read)));
    }
    for (i, pid, mut out) in children {
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Exited(pid, 0),
            "{mode:?} child {i}"
        );
        assert!(spawner.exec_failure(pid).is_none(), "{mode:?} child {i}");
        let mut got = Vec::new();
        match out.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => panic!(
                "{mode:?} child {i}: no EOF after its reap: a staged copy \
                 of its pipe is still open"
            ),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("stdin {i}\narg {i}\nerr\n"),
            "{mode:?} child {i}"
        );
    }
}

/// A program that is not there: with `WaitForExec` the start says so;
/// with `Overlap` the child exits 127 and the reap says so.
fn a_missing_program(mode: Mode) {
    let mut spawner = Spawner::new(c("/no/such/remote"), mode).unwrap();
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let argv = [c("/no/such/remote")];
    let argv: Vec<&std::ffi::CStr> =
        argv.iter().map(CString::as_c_str).collect();
    let started = spawner.spawn(&argv, null.as_fd(), null.as_fd());
    match mode {
        Mode::WaitForExec => {
            let e = started.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc_enoent()), "{e}");
        }
        Mode::Overlap => {
            let pid = started.unwrap();
            assert_eq!(
                waitpid(pid, None).unwrap(),
                WaitStatus::Exited(pid, 127)
            );
            let e = spawner.exec_failure(pid).expect("an exec failure");
            assert_eq!(e.raw_os_error(), Some(libc_enoent()), "{e}");
            // Asked once, answered once.
            assert!(spawner.exec_failure(pid).is_none());
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}
