//! What to measure: the command line, parsed into a [`Plan`].

use std::path::PathBuf;

use shardspawn_common::command::DelnumWidth;

pub(super) const USAGE: &str = "\
usage: shardspawn-bench [--deliveries N] [--rounds N] [--in-flight N,...]
                        [--shards N,N,...] [--framing N] [--domains N]
                        [--seed N] [--out DIR] [--quick] [--no-baselines]
                        [--live N] [--no-live] [--remote PATH]
                        [--shardspawn PATH]
       shardspawn-bench --sites [--deliveries N] [--rounds N]
                        [--in-flight N] [--shards N,...] [--domains N]
                        [--mx-sets N] [--cold N] [--out DIR]
       shardspawn-bench --fleet [--deliveries N] [--rounds N]
                        [--in-flight N] [--shards N] [--out DIR]

Measures shardspawn (supervisor and shards, driven by an emulated
qmail-send) and two baselines with no protocol (one spawn/waitpid loop
that starts the stand-in as a shard does; one such loop per core) on the
same stand-in qmail-remote, and writes DIR/BENCHMARKS.md (the block
between its markers) and DIR/benchmarks.svg.

  --deliveries N   deliveries per measurement point      (default 20000)
  --rounds N       split each point into up to N rounds, all points
                   once per round, and take the median rate (a
                   round keeps at least 2 x in flight)   (default 3)
  --in-flight L    deliveries in flight                  (default
                   100,1000,10000; up to 255 runs in both framings)
  --shards L       shard counts                          (default 1,2,4)
  --framing N      only N-byte delnums, 1 or 2           (default: both
                   where the in flight fits 1 byte, else 2)
  --domains N      destination domains, uniform          (default 1000)
  --seed N         workload seed                         (default 1)
  --out DIR        where to write                        (default .)
  --quick          2000 deliveries, 1 round, in flight 100,1000, shards 1,2,
                   out target/bench-quick (flags after it still count)
  --no-baselines   skip the baselines (ratios are then blank)
  --live N         also hold N stand-ins alive at once, each living
                   10 to 20 s as a qmail-remote waits on the network, with
                   each shard count, 2 x N deliveries (default 10000)
  --no-live        skip that
  --remote PATH    stand-in qmail-remote  (default: beside this program)
  --shardspawn PATH  shardspawn           (default: beside this program)
  --sites          instead of all that, MX grouping (issue 16) against
                   none, same binary and workload, in one sitting:
                   deliveries/s and CPU/delivery with SHARDSPAWN_SITES=1
                   and every lookup cached (one warm-up delivery per
                   domain first, TTL 3600 s) against SHARDSPAWN_SITES=0,
                   rounds alternating; then command -> stand-in start for
                   deliveries to fresh domains (each a cold lookup at a
                   DNS server on loopback in this process) with sites on
                   and off, at 1 and 100 in flight. Writes its own block
                   of DIR/BENCHMARKS.md. Defaults: 36000 deliveries, 9
                   rounds, 1000 in flight, 1 and 2 shards (the cold
                   runs: the last), 1000 domains
                   (flags after it still count)
  --mx-sets N      with --sites: the domains' MX sets   (default 100)
  --cold N         with --sites: fresh domains per cold run, each run
                   once per round                      (default 1000)
  --fleet          instead of all that, one key shared on Redis (issue
                   18) against the same key local, same binary and
                   workload, in one sitting: deliveries/s and Redis
                   commands per delivery, every delivery to one domain,
                   under three rules (a limit never reached, one reached,
                   a limit with a rate), a redis-server on loopback started
                   by the bench (needs redis-server in PATH), rounds
                   alternating. Writes its own block of DIR/BENCHMARKS.md.
                   Defaults: 30000 deliveries, 6 rounds, 100 in flight, 1
                   shard (flags after it still count)
";

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
    pub(super) deliveries: usize,
    pub(super) rounds: usize,
    /// Only this framing (1 or 2 bytes), if set.
    pub(super) framing: Option<usize>,
    pub(super) in_flight: Vec<usize>,
    pub(super) shards: Vec<u16>,
    pub(super) domains: usize,
    pub(super) seed: u64,
    pub(super) out: PathBuf,
    pub(super) quick: bool,
    pub(super) baselines: bool,
    /// Stand-ins alive at once in the live points, if any.
    pub(super) live: Option<usize>,
    pub(super) remote: Option<PathBuf>,
    pub(super) shardspawn: Option<PathBuf>,
    /// `--sites`: MX grouping on against off, nothing else.
    pub(super) sites: bool,
    pub(super) mx_sets: usize,
    pub(super) cold: usize,
    /// `--fleet`: a key shared on Redis against local, nothing else.
    pub(super) fleet: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            deliveries: 20_000,
            rounds: 3,
            framing: None,
            in_flight: vec![100, 1000, 10_000],
            shards: vec![1, 2, 4],
            domains: 1000,
            seed: 1,
            out: PathBuf::from("."),
            quick: false,
            baselines: true,
            live: Some(10_000),
            remote: None,
            shardspawn: None,
            sites: false,
            mx_sets: 100,
            cold: 1000,
            fleet: false,
        }
    }
}

pub(super) fn parse(args: &[String]) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        match flag {
            "--quick" => {
                plan.quick = true;
                plan.deliveries = 2000;
                plan.rounds = 1;
                plan.in_flight = vec![100, 1000];
                plan.shards = vec![1, 2];
                plan.live = None;
                plan.out = PathBuf::from("target/bench-quick");
                continue;
            }
            "--sites" => {
                plan.sites = true;
                plan.deliveries = 36_000;
                plan.rounds = 9;
                plan.in_flight = vec![1000];
                plan.shards = vec![1, 2];
                plan.domains = 1000;
                plan.baselines = false;
                plan.live = None;
                continue;
            }
            "--fleet" => {
                plan.fleet = true;
                plan.deliveries = 30_000;
                plan.rounds = 6;
                plan.in_flight = vec![100];
                plan.shards = vec![1];
                plan.domains = 1;
                plan.baselines = false;
                plan.live = None;
                continue;
            }
            "--no-baselines" => {
                plan.baselines = false;
                continue;
            }
            "--no-live" => {
                plan.live = None;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or(format!("{flag}: missing value"))?.clone(),
        };
        let bad = |why: &str| format!("{flag}={value}: {why}");
        let num = |s: &str| -> Result<u64, String> {
            match s.trim().replace('_', "").parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad("not a number above 0")),
            }
        };
        let list = || -> Result<Vec<u64>, String> {
            value.split(',').map(num).collect()
        };
        match flag {
            "--deliveries" => plan.deliveries = num(&value)? as usize,
            "--live" => {
                let n = num(&value)?;
                if n > 32_767 {
                    return Err(bad("at most 32767"));
                }
                plan.live = Some(n as usize);
            }
            "--rounds" => plan.rounds = num(&value)? as usize,
            "--framing" => match num(&value)? {
                n @ (1 | 2) => plan.framing = Some(n as usize),
                _ => return Err(bad("1 or 2")),
            },
            "--in-flight" => {
                plan.in_flight =
                    list()?.into_iter().map(|n| n as usize).collect();
                if plan.in_flight.iter().any(|&n| n > 65_535) {
                    return Err(bad("at most 65535"));
                }
            }
            "--shards" => {
                plan.shards = list()?
                    .into_iter()
                    .map(|n| u16::try_from(n).map_err(|_| bad("too many")))
                    .collect::<Result<_, _>>()?;
            }
            "--domains" => plan.domains = num(&value)? as usize,
            "--seed" => plan.seed = num(&value)?,
            "--mx-sets" => plan.mx_sets = num(&value)? as usize,
            "--cold" => plan.cold = num(&value)? as usize,
            "--out" => plan.out = PathBuf::from(&value),
            "--remote" => plan.remote = Some(PathBuf::from(&value)),
            "--shardspawn" => plan.shardspawn = Some(PathBuf::from(&value)),
            _ => return Err(format!("{flag}: unknown flag")),
        }
    }
    Ok(plan)
}

/// 1-byte framing holds at most 255 slots: both framings up to there.
pub(super) fn framings(in_flight: usize) -> Vec<DelnumWidth> {
    if in_flight <= 255 {
        vec![DelnumWidth::One, DelnumWidth::Two]
    } else {
        vec![DelnumWidth::Two]
    }
}

#[cfg(test)]
mod tests {
    use super::super::baselines::Method;
    use super::*;
    use shardspawn_common::command::DelnumWidth;

    #[test]
    fn flags() {
        let p = |a: &[&str]| {
            parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(p(&[]).unwrap(), Plan::default());
        let q = p(&["--quick", "--out", "x"]).unwrap();
        assert_eq!((q.deliveries, q.out.clone()), (2000, PathBuf::from("x")));
        assert_eq!((q.in_flight.clone(), q.rounds), (vec![100, 1000], 1));
        assert_eq!(p(&["--rounds", "5"]).unwrap().rounds, 5);
        assert_eq!(p(&["--framing", "2"]).unwrap().framing, Some(2));
        assert!(p(&["--framing", "3"]).is_err());
        let q = p(&["--in-flight=10,20", "--shards", "3", "--no-baselines"])
            .unwrap();
        assert_eq!(
            (q.in_flight, q.shards, q.baselines),
            (vec![10, 20], vec![3], false)
        );
        assert_eq!(p(&["--deliveries", "20_000"]).unwrap().deliveries, 20_000);
        assert_eq!(Plan::default().live, Some(10_000));
        assert_eq!(p(&["--live", "500"]).unwrap().live, Some(500));
        assert_eq!(p(&["--no-live"]).unwrap().live, None);
        let q = p(&["--shards", "4", "--sites", "--cold", "50"]).unwrap();
        assert!(q.sites && !q.baselines);
        assert_eq!(
            (q.shards, q.in_flight, q.cold),
            (vec![1, 2], vec![1000], 50)
        );
        assert_eq!(p(&["--sites", "--mx-sets=7"]).unwrap().mx_sets, 7);
        let q = p(&["--fleet", "--rounds", "2"]).unwrap();
        assert!(q.fleet && !q.sites && !q.baselines && q.live.is_none());
        assert_eq!((q.rounds, q.in_flight.clone()), (2, vec![100]));
        assert_eq!(p(&["--quick"]).unwrap().live, None);
        for bad in [
            &["--deliveries"][..],
            &["--deliveries", "0"],
            &["--x", "1"],
            &["--in-flight", "70000"],
            &["--live", "40000"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert_eq!(framings(255).len(), 2);
        for m in [Method::Clone, Method::Overlap, Method::PosixSpawn] {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
        }
        assert!("fork".parse::<Method>().is_err());
        assert_eq!(framings(256), [DelnumWidth::Two]);
    }
}
