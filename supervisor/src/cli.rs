//! The command line: no arguments (as qmail-start runs it) or settings
//! flags run the supervisor; `simulate` runs the demo; `limits` and
//! `status` are the admin's tools; `shard` is how the supervisor starts
//! its shards.
//!
//! Every command line is split by `lexopt` (the shared pieces are
//! [`crate::cmdline`]), so all of them behave alike:
//! `--help` prints the usage on stdout and exits 0, `--version` (or `-V`)
//! prints `shardspawn VERSION`, and a flag or argument that is not
//! understood is named on one line of stderr (`shardspawn: status:
//! unknown flag --nope`) with exit 100, qmail's code for "retrying will
//! not help". What a command prints goes through
//! [`Out`](crate::cmdline::Out), so a reader
//! that goes away (`| head -1`) ends the command quietly, as ripgrep does,
//! rather than in a panic: Rust ignores SIGPIPE, so a write to a closed
//! pipe returns `BrokenPipe` instead of killing the process.
//!
//! The hidden `shard` command keeps its own argv contract
//! ([`ShardConfig::from_args`]): only the supervisor writes it.

use std::ffi::OsString;

use lexopt::Arg::{Long, Short};
use lexopt::Parser;
use shardspawn_common::settings::Settings;
use shardspawn_common::shard_config::ShardConfig;
use shardspawn_os::log::Log;

use crate::cmdline::{Usage, flag_value, help, version};
use crate::{control_cmd, limits_cmd, mux, startup, status_cmd, top};

const USAGE: &str = "\
usage: shardspawn [--home DIR] [--shards N] [--delnum-bytes 1|2] [--slots N]
                  [--remote PROG] [--queue-owner USER|UID] [--limits FILE]
                  [--state-dir DIR] [--hold-seconds N] [--hold-max N]
                  [--max-running N] [--log-dir DIR] [--logger PROG]
                  [--initial-limit N] [--suspend-after N]
                  [--suspend-seconds N] [--responses FILE]
                  [--redis URL] [--redis-prefix PREFIX] [--fleet-relays N]
                  [--fleet-batch N] [--lease-seconds N] [--fleet-name NAME]
                  [--redis-ca FILE]
       shardspawn simulate [--help] [options]
       shardspawn limits check [FILE]
       shardspawn limits explain [--limits FILE] DOMAIN...
       shardspawn limits rules [FILE]
       shardspawn status [--json] [--keys N] [--state-dir DIR]
       shardspawn control suspend|resume|pin|list KEY [options]
       shardspawn top [--state-dir DIR] [--sort COLUMN] [--once] [--keys N]
       shardspawn --version

Run with no arguments as qmail-rspawn under qmail-start: settings come
from the SHARDSPAWN_* environment variables (and QMAILREMOTE); a flag
beats its variable. Each command takes --help.

SHARDSPAWN_REDIS (redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]) makes this
relay one of a fleet whose `shared` limits are kept in Redis; it needs
SHARDSPAWN_FLEET_RELAYS, the number of relays, as each takes 1/N of a
shared limit while Redis is away. Prefer the variable to --redis: anyone
can read a command line, password and all. rediss:// is Redis over TLS
(if built with it), the server verified against the Mozilla roots, or
against the CA certificates of the PEM file SHARDSPAWN_REDIS_CA names.
";

/// Runs the program; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default().to_vec();
    match args.first().and_then(|a| a.to_str()) {
        Some("shard") => shard(&rest),
        Some("resolver") => resolver(&rest),
        Some("simulate") => simulate(&rest),
        Some("limits") => limits_cmd::main(Parser::from_args(rest)),
        Some("status") => status_cmd::main(Parser::from_args(rest)),
        Some("control") => control_cmd::main(Parser::from_args(rest)),
        Some("top") => top::main(Parser::from_args(rest)),
        Some("help") => help(USAGE),
        _ => supervise(Parser::from_args(args)),
    }
}

/// `shardspawn simulate` is the workshop's: the emulated qmail-send and
/// the stand-in qmail-remote are test code, which the installed binary
/// does not carry. Run `shardspawn-simulate` from beside this binary, as
/// `cargo build --release` leaves it; it reads its own flags.
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

/// What the supervisor's command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Supervise {
    /// Run, with these settings flags (`--name`, value), in order.
    Run(Vec<(String, OsString)>),
    Help,
    Version,
}

/// Splits the supervisor's command line: settings flags only.
fn supervise_args(mut p: Parser) -> Result<Supervise, Usage> {
    let mut flags = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            Long("help") | Short('h') => return Ok(Supervise::Help),
            Long("version") | Short('V') => return Ok(Supervise::Version),
            Long(name) if Settings::is_flag(&format!("--{name}")) => {
                let flag = format!("--{name}");
                let value = flag_value(&mut p, &flag)?;
                flags.push((flag, value));
            }
            arg => return Err(arg.unexpected().into()),
        }
    }
    Ok(Supervise::Run(flags))
}

fn supervise(p: Parser) -> i32 {
    let flags = match supervise_args(p) {
        Ok(Supervise::Run(flags)) => flags,
        Ok(Supervise::Help) => return help(USAGE),
        Ok(Supervise::Version) => return version(),
        Err(e) => return e.report(""),
    };
    let log = Log::new("supervisor");
    let env = |k: &str| std::env::var_os(k);
    let settings = match Settings::from_env_and_flags(&env, &flags) {
        Ok(s) => s,
        Err(e) => {
            last_words_logger();
            let fatal = startup::Fatal::Setting(e);
            log.fatal(format_args!("{fatal}"));
            return fatal.code();
        }
    };
    let logs = match startup::start_logging(&settings) {
        Ok(logs) => logs,
        Err(fatal) => {
            log.fatal(format_args!("{fatal}"));
            return fatal.code();
        }
    };
    let rt = match startup::prepare(&settings, &logs, &log) {
        Ok(rt) => rt,
        Err(fatal) => {
            log.fatal(format_args!("{fatal}"));
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

/// The hidden `resolver` command: the supervisor's DNS process (issue
/// 16), with its own argv contract (`ResolverConfig`).
fn resolver(args: &[OsString]) -> i32 {
    let _ = nix::sys::prctl::set_name(c"shardspawn");
    shardspawn_resolver::main_args(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(args: &[&str]) -> Result<Supervise, String> {
        supervise_args(Parser::from_args(args)).map_err(|e| e.to_string())
    }

    fn run(flags: &[(&str, &str)]) -> Result<Supervise, String> {
        Ok(Supervise::Run(
            flags.iter().map(|(f, v)| (f.to_string(), v.into())).collect(),
        ))
    }

    #[test]
    fn settings_flags_take_a_value_inline_or_next() {
        assert_eq!(split(&[]), run(&[]));
        assert_eq!(
            split(&["--shards", "5", "--home=/q", "--shards=6"]),
            run(&[("--shards", "5"), ("--home", "/q"), ("--shards", "6")])
        );
        // Blanks are the value's; an empty value is the settings' to
        // refuse ("must not be empty").
        assert_eq!(
            split(&["--home", " /a b ", "--slots=", "--limits", ""]),
            run(&[("--home", " /a b "), ("--slots", ""), ("--limits", "")])
        );
        // A value starting with "--" can still be given inline.
        assert_eq!(split(&["--remote=--odd"]), run(&[("--remote", "--odd")]));
        assert_eq!(split(&["-h"]), Ok(Supervise::Help));
        assert_eq!(split(&["--shards", "2", "--help"]), Ok(Supervise::Help));
        assert_eq!(split(&["-V"]), Ok(Supervise::Version));
        assert_eq!(split(&["--version"]), Ok(Supervise::Version));
    }

    #[test]
    fn a_bad_command_line_is_named_in_one_line() {
        let table: &[(&[&str], &str)] = &[
            (&["--frobnicate"], "unknown flag --frobnicate"),
            (&["--nope=1"], "unknown flag --nope"),
            (&["--slot=5"], "unknown flag --slot"),
            (&["-s", "4"], "unknown flag -s"),
            (&["--slots"], "--slots: missing value"),
            (&["--home", "--shards", "4"], "--home: missing value"),
            (&["home=/q"], "unexpected argument home=/q"),
            (&["--", "--shards"], "unexpected argument --shards"),
        ];
        for (args, want) in table {
            assert_eq!(split(args), Err(want.to_string()), "{args:?}");
        }
    }
}
