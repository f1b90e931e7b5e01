//! The command line: no arguments (as qmail-start runs it) or settings
//! flags run the supervisor; `simulate` runs the demo; `limits` and
//! `status` are the admin's tools; `shard` is how the supervisor starts
//! its shards.

use std::ffi::OsString;

use shardspawn_common::settings::Settings;
use shardspawn_common::shard_config::ShardConfig;
use shardspawn_os::log::Log;

use crate::{limits_cmd, mux, startup, status_cmd};

const USAGE: &str = "\
usage: shardspawn [--home DIR] [--shards N] [--delnum-bytes 1|2] [--slots N]
                  [--remote PROG] [--queue-owner USER|UID] [--limits FILE]
                  [--state-dir DIR] [--hold-seconds N] [--hold-max N]
                  [--max-running N] [--log-dir DIR]
       shardspawn simulate [--help] [options]
       shardspawn limits check [FILE]
       shardspawn limits explain DOMAIN...
       shardspawn status [--json] [--keys N] [--state-dir DIR]

Run with no arguments as qmail-rspawn under qmail-start: settings come
from the SHARDSPAWN_* environment variables (and QMAILREMOTE).
";

/// Runs the program; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("shard") => shard(&args[1..]),
        Some("simulate") => simulate(&args[1..]),
        Some("limits") => limits_cmd::main(&args[1..]),
        Some("status") => status_cmd::main(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            0
        }
        _ => supervise(&args),
    }
}

/// `shardspawn simulate` is the workshop's: the emulated qmail-send and
/// the stand-in qmail-remote are test code, which the installed binary
/// does not carry. Run `shardspawn-simulate` from beside this binary, as
/// `cargo build --release` leaves it.
fn simulate(args: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("shardspawn simulate: unable to find this program: {e}");
            return 111;
        }
    };
    let sim = me.with_file_name("shardspawn-simulate");
    let e = std::process::Command::new(&sim).args(args).exec();
    eprintln!(
        "shardspawn simulate: unable to run {}: {e} (it is built beside \
         shardspawn by `cargo build --release`, not installed)",
        sim.display()
    );
    111
}

fn supervise(args: &[OsString]) -> i32 {
    let log = Log::new("supervisor");
    let settings =
        match Settings::from_env_and_args(&|k| std::env::var_os(k), args) {
            Ok(s) => s,
            Err(e) => {
                last_words_logger();
                log.fatal(format_args!("bad setting: {e}"));
                return 100;
            }
        };
    let logs = match startup::start_logging(&settings) {
        Ok(logs) => logs,
        Err(fatal) => {
            log.fatal(format_args!("{}", fatal.text()));
            return fatal.code();
        }
    };
    let rt = match startup::prepare(&settings, &logs, &log) {
        Ok(rt) => rt,
        Err(fatal) => {
            log.fatal(format_args!("{}", fatal.text()));
            return fatal.code();
        }
    };
    mux::run(rt, log)
}

/// The settings did not parse, so the logger was not started; under
/// qmail-start fd 2 is closed and the fatal line would vanish. Try the
/// log directory and logger as the environment spells them, so the
/// admin sees why shardspawn will not start.
fn last_words_logger() {
    let Some(dir) = std::env::var_os("SHARDSPAWN_LOG_DIR") else { return };
    let named: Option<Vec<OsString>> = std::env::var("SHARDSPAWN_LOGGER")
        .ok()
        .map(|l| l.split_whitespace().map(OsString::from).collect());
    let named = named.filter(|argv| !argv.is_empty());
    let Some(logger) = shardspawn_os::log::choose_logger(named.as_deref())
    else {
        return;
    };
    let dir = std::path::PathBuf::from(dir).join("supervisor");
    let _ = shardspawn_os::log::start_logger(&dir, &logger);
}

fn shard(args: &[OsString]) -> i32 {
    // Started through /proc/self/exe, a shard would be called "exe" where
    // ps -e, top and pgrep look (the name of the file exec'd, not argv[0]).
    let _ = nix::sys::prctl::set_name(c"shardspawn");
    let cfg = match ShardConfig::from_args(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            Log::new("shard").fatal(format_args!("bad shard arguments: {e}"));
            return 100;
        }
    };
    if let Some(dir) = &cfg.log_dir {
        let dir = dir.join(format!("shard{}", cfg.index));
        if let Err(e) = shardspawn_os::log::start_logger(&dir, &cfg.logger) {
            // Logging into the supervisor's log instead is better than
            // not delivering.
            Log::new(format!("shard {}", cfg.index)).warn(format_args!(
                "unable to start the logger in {}: {e}",
                dir.display()
            ));
        }
    }
    // Until the supervisor's limits frame, which comes before any job.
    shardspawn_spawner::driver::run(cfg, Box::new(|_| u32::MAX.into()))
}
