//! A shard process, the OS side: starting one (fork and exec of our own
//! binary, so no state of the supervisor leaks into a shard except the
//! descriptors we wire) and our ends of its two pipes. When to start,
//! restart or give one up is decided in [`crate::core`], never here.
//!
//! A shard's wiring: fd 0 = read end of its job pipe, fd 1 = write end of
//! its result pipe, fd 2 = the supervisor's fd 2 (the log). Everything
//! else the supervisor holds is close-on-exec. A shard is killed by the
//! kernel when the supervisor dies ([`spawn::die_with_parent`]); in a
//! normal shutdown the supervisor reaps every shard before it exits, so
//! that never fires.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::rc::Rc;

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use shardspawn_common::frame::{FrameDecoder, HEADER, Job, text_header};
use shardspawn_common::settings::RedisUrl;
use shardspawn_common::shard_config::{REDIS_ENV, ShardConfig};
use shardspawn_os::spawn;
use shardspawn_os::sys::{self, io_err, set_nonblocking};

use crate::core::{Control, ShardId};

/// Longest result frame a shard may send (a body is at most 10000
/// bytes; anything longer means the shard is broken).
const MAX_DONE: u32 = 64 * 1024;

/// A running shard process and our ends of its pipes.
#[derive(Debug)]
pub struct Process {
    /// The incarnation it is.
    pub id: ShardId,
    /// Its pid.
    pub pid: Pid,
    /// Write end of its job pipe (non-blocking); `None` once closed for
    /// shutdown.
    pub jobs: Option<OwnedFd>,
    /// Read end of its result pipe (non-blocking).
    pub results: OwnedFd,
    /// Splits its result stream.
    pub decoder: FrameDecoder,
    /// Frames not yet written to its job pipe.
    pub outbox: Outbox,
    /// Is `jobs` watched for room?
    pub jobs_watched: bool,
    /// Close `jobs` once `outbox` is written.
    pub closing: bool,
}

/// Starts incarnation `id` of a shard: fork and exec of our own binary
/// with its pipes wired as the module docs say.
pub fn start(
    id: ShardId,
    cfg: &ShardConfig,
    redis: Option<&RedisUrl>,
) -> io::Result<Process> {
    let cfg = ShardConfig { index: id.index, ..cfg.clone() };
    let child = start_self("shard", cfg.to_args(), redis)?;
    Ok(Process {
        id,
        pid: child.pid,
        jobs: Some(child.input),
        results: child.output,
        decoder: FrameDecoder::new(MAX_DONE),
        outbox: Outbox::default(),
        jobs_watched: false,
        closing: false,
    })
}

/// A child that is our own binary, and our ends of its two pipes.
pub struct SelfChild {
    /// Its pid.
    pub pid: Pid,
    /// Write end of its fd 0 (non-blocking).
    pub input: OwnedFd,
    /// Read end of its fd 1 (non-blocking).
    pub output: OwnedFd,
}

/// Starts our own binary as `shardspawn ROLE ARGS` (a shard, or the
/// resolver) with fd 0 and fd 1 pipes to us, fd 2 ours (the log), and
/// nothing else of ours: everything the supervisor holds is
/// close-on-exec. Its environment is ours, but for the Redis address
/// ([`REDIS_ENV`]): exactly `redis`, as the settings checked it (the
/// variable's blanks trimmed, or `--redis`), or none.
pub fn start_self(
    role: &str,
    args: Vec<OsString>,
    redis: Option<&RedisUrl>,
) -> io::Result<SelfChild> {
    let (in_read, in_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    let (out_read, out_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    set_nonblocking(in_write.as_fd(), true)?;
    set_nonblocking(out_read.as_fd(), true)?;
    // /proc/self/exe is this very program even if the file was replaced
    // since (an upgrade in progress): children always match their
    // supervisor.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("shardspawn")
        .arg(role)
        .args(args)
        .stdin(Stdio::from(in_read))
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::inherit())
        .env_remove(REDIS_ENV);
    if let Some(url) = redis {
        cmd.env(REDIS_ENV, url.as_str());
    }
    // With us gone what it sends reaches no one: it dies with us, and a
    // shard's qmail-remotes with it (issue 15).
    spawn::die_with_parent(&mut cmd);
    let child = cmd.spawn()?;
    Ok(SelfChild {
        pid: Pid::from_raw(child.id() as i32),
        input: in_write,
        output: out_read,
    })
}

/// Frames on their way to a shard's job pipe, in order. A control text
/// stays the one text every shard shares (a limits file may be megabytes)
/// and, until its first byte is written, may be replaced in its place by
/// a newer one, as the core decides ([`crate::core::Effect::Replace`]).
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<Out>,
    /// Bytes of the front item already written.
    written: usize,
}

/// One run of bytes in an [`Outbox`].
#[derive(Debug)]
enum Out {
    /// Job frames, encoded.
    Jobs(Vec<u8>),
    /// A control text's frame: its header, then the text itself.
    Text { control: Control, header: [u8; HEADER], text: Rc<[u8]> },
}

impl Out {
    fn text(control: Control, text: Rc<[u8]>) -> Out {
        let header = text_header(control.kind(), &text);
        Out::Text { control, header, text }
    }

    fn len(&self) -> usize {
        match self {
            Out::Jobs(bytes) => bytes.len(),
            Out::Text { text, .. } => HEADER + text.len(),
        }
    }

    /// What is left to write, `written` bytes in: the rest of the part
    /// of the frame those end in.
    fn rest(&self, written: usize) -> &[u8] {
        match self {
            Out::Jobs(bytes) => &bytes[written..],
            Out::Text { header, .. } if written < HEADER => &header[written..],
            Out::Text { text, .. } => &text[written - HEADER..],
        }
    }
}

impl Outbox {
    /// Queues a job frame.
    pub fn push_job(&mut self, job: &Job) {
        if let Some(Out::Jobs(bytes)) = self.items.back_mut() {
            job.encode(bytes);
        } else {
            let mut bytes = Vec::new();
            job.encode(&mut bytes);
            self.items.push_back(Out::Jobs(bytes));
        }
    }

    /// Queues a control text.
    pub fn push_text(&mut self, control: Control, text: Rc<[u8]>) {
        self.items.push_back(Out::text(control, text));
    }

    /// Puts `text` in the place of the last queued text of `control` not
    /// yet begun; false if there is none.
    pub fn replace_text(&mut self, control: Control, text: Rc<[u8]>) -> bool {
        let begun = usize::from(self.written > 0);
        let queued = self.items.iter_mut().skip(begun).rev().find(
            |item| matches!(item, Out::Text { control: c, .. } if *c == control),
        );
        match queued {
            Some(item) => {
                *item = Out::text(control, text);
                true
            }
            None => false,
        }
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Writes what `fd` (non-blocking) takes, and appends to `begun` each
    /// control text whose first byte went. Stops at a full pipe or an
    /// error (EPIPE: the shard is dying; its result pipe will say so).
    pub fn write(&mut self, fd: BorrowedFd<'_>, begun: &mut Vec<Control>) {
        while let Some(front) = self.items.front() {
            match sys::write(fd, front.rest(self.written)) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.written == 0
                        && let Out::Text { control, .. } = front
                    {
                        begun.push(*control);
                    }
                    self.written += n;
                    if self.written == front.len() {
                        self.items.pop_front();
                        self.written = 0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use nix::fcntl::OFlag;
    use shardspawn_common::frame::encode_text;

    use super::*;

    fn job(delnum: u16) -> Job {
        let key = b"d.test".to_vec();
        let recipient = b"u@d.test".to_vec();
        Job { delnum, messid: b"1/2".to_vec(), sender: vec![], recipient, key }
    }

    /// Writes `outbox` into a pipe whose reader reads along; returns
    /// the bytes and the texts begun.
    fn drain(outbox: &mut Outbox) -> (Vec<u8>, Vec<Control>) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(w.as_fd(), true).unwrap();
        let mut reader = std::fs::File::from(r);
        let (mut bytes, mut begun) = (Vec::new(), Vec::new());
        while !outbox.is_empty() {
            outbox.write(w.as_fd(), &mut begun);
            let mut buf = vec![0; 1 << 16];
            let n = reader.read(&mut buf).unwrap();
            bytes.extend_from_slice(&buf[..n]);
        }
        drop(w);
        reader.read_to_end(&mut bytes).unwrap();
        (bytes, begun)
    }

    #[test]
    fn frames_go_in_order_and_a_queued_text_is_replaced_in_place() {
        let limits: Rc<[u8]> = Rc::from(&b":5\n"[..]);
        let newer: Rc<[u8]> = Rc::from(&b":6\n"[..]);
        let rules: Rc<[u8]> = Rc::from(&b"adapt::x\n"[..]);
        let mut outbox = Outbox::default();
        outbox.push_text(Control::Limits, limits);
        outbox.push_text(Control::Responses, rules.clone());
        outbox.push_job(&job(1));
        outbox.push_job(&job(2));
        assert!(outbox.replace_text(Control::Limits, newer.clone()));
        let mut want = Vec::new();
        encode_text(Control::Limits.kind(), &newer, &mut want);
        encode_text(Control::Responses.kind(), &rules, &mut want);
        job(1).encode(&mut want);
        job(2).encode(&mut want);
        let (bytes, begun) = drain(&mut outbox);
        assert_eq!(bytes, want);
        assert_eq!(begun, [Control::Limits, Control::Responses]);
        assert!(!outbox.replace_text(Control::Limits, newer));
    }

    #[test]
    fn a_text_begun_is_never_replaced() {
        // Longer than a pipe holds, so it is still being written.
        let big: Rc<[u8]> = Rc::from(vec![b'#'; 1 << 20]);
        let newer: Rc<[u8]> = Rc::from(&b":6\n"[..]);
        let (_r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(w.as_fd(), true).unwrap();
        let mut outbox = Outbox::default();
        outbox.push_text(Control::Limits, big);
        let mut begun = Vec::new();
        outbox.write(w.as_fd(), &mut begun);
        assert_eq!(begun, [Control::Limits]);
        assert!(!outbox.replace_text(Control::Limits, newer.clone()));
        outbox.push_text(Control::Limits, newer.clone());
        assert!(outbox.replace_text(Control::Limits, newer));
        assert_eq!(outbox.items.len(), 2);
    }
}
