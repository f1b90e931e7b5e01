//! `shardspawn-bench`: how fast shardspawn starts and reaps qmail-remote,
//! against what one process and the whole machine can do with no
//! protocol at all.
//!
//! In one run, on the same stand-in qmail-remote
//! (`shardspawn-fake-remote`, zero latency, answering with its pid):
//!
//! - **baselines**, per number in flight: one minimal loop that starts the
//!   stand-in the way a shard does
//!   ([`Spawner`](shardspawn_os::spawn::Spawner): clone, shared
//!   descriptor table unshared down to fds 0-4 by the child) and reaps it
//!   with `waitpid`, keeping that many in flight (what one process can
//!   do); and one such loop per core, in parallel, sharing the same number
//!   in flight (what the machine can do). Each loop is a process of its
//!   own (this binary, re-run with [`LOOP_FLAG`]), so its `waitpid(-1)`
//!   reaps only its own children. The same loop, holding 0, 1,000 and
//!   10,000 descriptors open, compares that start with glibc's
//!   `posix_spawn` ([`spawn`](shardspawn_os::spawn::spawn)), which copies
//!   the whole table.
//! - **shardspawn** through the emulated qmail-send, per number in flight,
//!   framing and shard count: deliveries per second, the ratio to both
//!   baselines, the CPU time of the supervisor and the shards per delivery
//!   (utime + stime from /proc/PID/stat, read after the run while they
//!   still live, minus a reading before it; children excluded), their
//!   summed peak memory (VmHWM) per delivery in flight, and the time from
//!   a child's exit to the arrival of its result at the emulator
//!   (p50/p99), matched through the pid the stand-in puts in its result
//!   (the `pid` directive). The exit is the kernel's report of it
//!   ([`crate::exits`]), when the child can first be reaped; the time
//!   from the stand-in's own last record (`E`, just before it calls
//!   `exit`) is shown beside it, and is what counts without root.
//!
//! It writes a block of tables into `BENCHMARKS.md` (between markers, so
//! the hand-written analysis around it stays) and a plot,
//! `benchmarks.svg`, drawn with `plotters`' SVG backend: its text is
//! set by whatever shows the file, so drawing it needs no font files on
//! the machine that runs the bench.
//!
//! Targets are reported, never asserted: this machine is shared and noisy.
//!
//! The rooms, in the order a run goes through them: `plan` (the command line),
//! `run` (every measurement in turn, then the files), `baselines` (the bare
//! loops), `points` (shardspawn under the emulated qmail-send), `latency`
//! (results matched back to exits), `machine` (/proc and getrusage),
//! `measures` (what each measurement holds and how rounds merge), `report`
//! (the tables of `BENCHMARKS.md`) and `plot` (`benchmarks.svg`).
//! `--sites` runs only `sites`: MX grouping (issue 16) on against off;
//! `--fleet` only `fleet`: a key shared on Redis (issue 18) against local.

mod baselines;
mod fleet;
mod latency;
mod machine;
mod measures;
mod plan;
mod plot;
mod points;
mod report;
mod run;
mod sites;

pub use plot::PLOT_FILE;

use baselines::loop_main;
use plan::{USAGE, parse};
use run::run;

/// The first argument that makes this binary a baseline loop.
pub const LOOP_FLAG: &str = "--baseline-loop";

/// The stand-in's directives: answer at once, with its pid.
const LOCAL_PART: &str = "pid";

/// The bench's whole life: `fn main() { std::process::exit(
/// shardspawn_workshop::bench::main()) }`. Exit 0 when every delivery got
/// its result (whatever the targets say), 1 when one did not, 100 for a
/// usage error, 111 when the bench itself could not run.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(LOOP_FLAG) {
        return loop_main(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    let plan = match parse(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("shardspawn-bench: {e}\n\n{USAGE}");
            return 100;
        }
    };
    let outcome = if plan.sites {
        sites::run(&plan, &args)
    } else if plan.fleet {
        fleet::run(&plan, &args)
    } else {
        run(&plan, &args)
    };
    match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("shardspawn-bench: fatal: {e}");
            111
        }
    }
}
