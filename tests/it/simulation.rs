//! The deterministic fleet simulation ([`edge_cache_tests::sim`]): a thousand seeds of faults,
//! each judged read by read against the staleness bound; the same seed twice gives the same
//! run; and bugs planted on purpose are caught, so a pass means something.

use std::ops::Range;

use edge_cache_tests::sim::{self, Plant, SimConfig};

/// Runs `seeds`, failing with the first failing seed's report and replay command.
fn assert_seeds(seeds: Range<u64>) {
    match sim::run_seeds(seeds) {
        Ok(summary) => println!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}

// A thousand seeds in four tests, so the harness spreads them over the cores.

#[test]
fn seeds_0_to_249_keep_every_read_within_the_bound() {
    assert_seeds(0..250);
}

#[test]
fn seeds_250_to_499_keep_every_read_within_the_bound() {
    assert_seeds(250..500);
}

#[test]
fn seeds_500_to_749_keep_every_read_within_the_bound() {
    assert_seeds(500..750);
}

#[test]
fn seeds_750_to_999_keep_every_read_within_the_bound() {
    assert_seeds(750..1_000);
}

/// Replays one seed, `EDGE_CACHE_SIM_SEED` (default 0) with the flags in `EDGE_CACHE_SIM_FLAGS`
/// (e.g. `--no-overlapping-writes`), printing its stats: what a failure's report tells you to run.
#[test]
fn replay_one_seed() {
    let seed = std::env::var("EDGE_CACHE_SIM_SEED")
        .ok()
        .map(|s| s.parse().expect("EDGE_CACHE_SIM_SEED is a number"))
        .unwrap_or(0);
    let flags = std::env::var("EDGE_CACHE_SIM_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let config = SimConfig::from_flags(seed, &flags).expect("EDGE_CACHE_SIM_FLAGS are known");
    match sim::run(config).into_result() {
        Ok(stats) => println!("seed {seed}:\n{stats}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [3, 1_234, u64::MAX] {
        let first = sim::run_seed(seed);
        let second = sim::run_seed(seed);
        assert!(first.is_ok(), "{}", first.problems.join("; "));
        assert_eq!(first.stats, second.stats, "seed {seed}");
        assert_eq!(first.schedule, second.schedule, "seed {seed}");
        assert!(first.stats.reads > 0 && first.stats.acks > 0);
    }
    assert_ne!(
        sim::run_seed(1).stats,
        sim::run_seed(2).stats,
        "different seeds, different runs"
    );
}

/// Runs `plant` on a few seeds and requires every one of them to be reported with violations.
fn assert_caught(plant: Plant) {
    for seed in 0..4 {
        let outcome = sim::run(SimConfig::new(seed).plant(plant));
        let report = outcome.report.as_ref().expect("the run completed");
        assert!(
            !report.violations.is_empty() && !outcome.is_ok(),
            "{plant:?} on seed {seed} went unnoticed: {}",
            outcome.stats
        );
        let failure = outcome
            .into_result()
            .expect_err("a violation fails the run");
        assert!(failure.to_string().contains("planted bug"), "{failure}");
    }
}

#[test]
fn a_planted_stale_read_is_caught() {
    assert_caught(Plant::StaleReads);
}

#[test]
fn a_node_that_follows_no_log_and_misses_events_is_caught() {
    assert_caught(Plant::UnsequencedNode);
}

#[test]
fn a_node_bound_looser_than_the_promise_is_caught() {
    assert_caught(Plant::LooseBound);
}

#[test]
fn a_failure_names_the_command_that_replays_it() {
    let outcome = sim::run(SimConfig::new(5).plant(Plant::StaleReads));
    let mut failure = outcome.into_result().expect_err("planted");
    failure.0.config = SimConfig::new(5).overlapping_writes(false);
    let text = failure.to_string();
    assert!(
        text.contains("cargo xtask chaos --seeds 1 --first 5 --no-overlapping-writes"),
        "{text}"
    );
    assert!(
        text.contains(r#"EDGE_CACHE_SIM_SEED=5 EDGE_CACHE_SIM_FLAGS="--no-overlapping-writes""#),
        "{text}"
    );
}

#[test]
fn flags_round_trip_and_unknown_ones_are_refused() {
    let neither =
        SimConfig::from_flags(9, &["--no-overlapping-writes", "--no-repeated-restarts"]).unwrap();
    assert!(!neither.overlapping_writes && !neither.repeated_restarts);
    assert_eq!(SimConfig::from_flags(9, &neither.flags()).unwrap(), neither);
    assert_eq!(
        sim::replay_command(&neither),
        "cargo xtask chaos --seeds 1 --first 9 --no-overlapping-writes --no-repeated-restarts"
    );
    assert_eq!(
        sim::replay_command(&SimConfig::new(9)),
        "cargo xtask chaos --seeds 1 --first 9"
    );
    assert_eq!(
        SimConfig::from_flags::<&str>(9, &[]).unwrap(),
        SimConfig::new(9)
    );
    assert!(SimConfig::from_flags(9, &["--faster"]).is_err());
}
