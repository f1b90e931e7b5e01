//! `shardspawn simulate`: the real supervisor and shards, driven by an
//! emulated qmail-send, running a stand-in qmail-remote. (Being written.)

use std::ffi::OsString;

/// Runs the demo; returns the exit code.
pub fn main(_args: &[OsString]) -> i32 {
    eprintln!("shardspawn simulate: not yet");
    100
}
