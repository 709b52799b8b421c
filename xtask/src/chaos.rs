//! `cargo xtask chaos --seeds N [--first S] [flags] [--faults SCALE]`: the deterministic fleet
//! simulation (`edge_cache_tests::sim`) over `N` seeds from `S`, on every core; a failing seed
//! prints its report and the one command that replays it. With `--faults`, then the real-Redis
//! fault suite (`tests/it/redis_faults.rs`), the Sentinel failover under load
//! (`tests/it/redis_sentinel.rs`) and the failovers behind one address
//! (`tests/it/redis_failover.rs`) in a release build, each workload `SCALE` times as long as in
//! `cargo xtask test`.
//!
//! Without `--first`, the seeds start at the current Unix time in seconds, so each run explores
//! seeds the test suite (0..1000) does not; the range is printed first.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use edge_cache_tests::sim::{self, SimConfig};

const HELP: &str = "usage: cargo xtask chaos [--seeds N] [--first S] [--no-overlapping-writes] \
[--no-repeated-restarts] [--faults SCALE]

Runs the deterministic fleet simulation on N seeds (from S; default: the Unix time in seconds),
each a fleet of 3 to 5 nodes under faults drawn from the seed, judged read by read against the
staleness bound. A failing seed prints its report and the command that replays it.

  --no-overlapping-writes  never let a key's next change land while the call that made the
                           previous one is still returning
  --no-repeated-restarts   never let L2 lose its logs twice while nodes follow them
(both patterns are in by default; leaving one out tells whether a failure needs it)
  --faults SCALE           then run the real-Redis fault suite and the Sentinel failover
                           (each test starts its own servers) with every workload SCALE
                           times as long as in
                           `cargo xtask test`; at least one of --seeds and --faults is needed";

/// What `chaos` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Chaos {
    seeds: u64,
    first: Option<u64>,
    flags: Vec<String>,
    faults: Option<u64>,
    help: bool,
}

pub(crate) fn parse(args: &[String]) -> Result<Chaos> {
    let mut chaos = Chaos {
        seeds: 0,
        first: None,
        flags: Vec::new(),
        faults: None,
        help: false,
    };
    let mut seeds = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64> {
            let value = args
                .next()
                .with_context(|| format!("{name} needs a number"))?;
            value
                .parse()
                .with_context(|| format!("{name} {value:?} is not a number"))
        };
        match arg.as_str() {
            "--seeds" => seeds = Some(number("--seeds")?),
            "--first" => chaos.first = Some(number("--first")?),
            "--faults" => chaos.faults = Some(number("--faults")?.max(1)),
            "--help" | "-h" => chaos.help = true,
            flag => {
                SimConfig::from_flags(0, &[flag]).map_err(|e| anyhow::anyhow!("{e}\n\n{HELP}"))?;
                chaos.flags.push(flag.to_owned());
            }
        }
    }
    match seeds {
        Some(n) if n > 0 => chaos.seeds = n,
        Some(_) => bail!("--seeds must be at least 1"),
        None if chaos.help || chaos.faults.is_some() => {}
        None => bail!("--seeds N or --faults SCALE is required\n\n{HELP}"),
    }
    Ok(chaos)
}

pub(crate) fn run(chaos: Chaos) -> Result<()> {
    if chaos.help {
        println!("{HELP}");
        return Ok(());
    }
    if chaos.seeds > 0 {
        simulate(&chaos)?;
    }
    if let Some(scale) = chaos.faults {
        let scale = scale.to_string();
        // The fault suite, then the failovers judged by the history checker, each workload
        // `scale` times as long.
        for suite in [
            "redis_faults",
            "redis_sentinel::no_read_is_stale",
            "redis_failover",
        ] {
            crate::run_with_env(
                "cargo",
                &[
                    "test",
                    "--release",
                    "--package",
                    "edge-cache-tests",
                    "--test",
                    "it",
                    suite,
                    "--",
                    "--nocapture",
                ],
                &[("EDGE_CACHE_FAULT_SCALE", &scale)],
            )
            .with_context(|| format!("the real-Redis suite {suite} failed"))?;
        }
    }
    Ok(())
}

/// The simulation over the seeds `chaos` names.
fn simulate(chaos: &Chaos) -> Result<()> {
    let first = chaos.first.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    });
    let seeds = first..first.saturating_add(chaos.seeds);
    let flags = &chaos.flags;
    println!(
        "xtask: chaos: seeds {}..{}{}{}",
        seeds.start,
        seeds.end,
        if flags.is_empty() { "" } else { " " },
        flags.join(" ")
    );
    let started = Instant::now();
    let result = sim::run_seeds_with(seeds, |seed| {
        SimConfig::from_flags(seed, flags).expect("the flags were checked when parsed")
    });
    let elapsed = started.elapsed();
    match result {
        Ok(summary) => {
            println!("{summary}");
            println!("in {elapsed:.1?}");
            Ok(())
        }
        Err(failure) => {
            eprintln!("{failure}");
            bail!(
                "seed {} broke the freshness promise; replay it with `{}`",
                failure.seed(),
                sim::replay_command(&failure.0.config)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn seeds_first_and_flags_parse_and_nonsense_does_not() {
        let chaos = parse(&args(&[
            "--seeds",
            "200",
            "--first",
            "7",
            "--no-repeated-restarts",
        ]))
        .unwrap();
        assert_eq!(
            chaos,
            Chaos {
                seeds: 200,
                first: Some(7),
                flags: vec!["--no-repeated-restarts".to_owned()],
                faults: None,
                help: false,
            }
        );
        assert!(parse(&args(&["--help"])).unwrap().help);
        assert!(
            parse(&args(&[])).is_err(),
            "--seeds or --faults is required"
        );
        assert_eq!(parse(&args(&["--faults", "20"])).unwrap().faults, Some(20));
        assert!(parse(&args(&["--seeds", "0"])).is_err());
        assert!(parse(&args(&["--seeds", "x"])).is_err());
        assert!(parse(&args(&["--seeds", "1", "--fast"])).is_err());
    }
}
