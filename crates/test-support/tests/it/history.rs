//! The freshness history checker: `History`, `Report` and `Violation`.

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use test_support::history::{History, Report};

/// The staleness bound most tests check against.
const B: Duration = Duration::from_millis(500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The message `assert_fresh` panics with, or `None` when it passes.
fn assert_fresh_message(report: &Report) -> Option<String> {
    let payload = panic::catch_unwind(AssertUnwindSafe(|| report.assert_fresh())).err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .expect("assert_fresh panics with a formatted message"),
    )
}

#[test]
fn a_correct_history_passes_and_counts_its_exposure() {
    let history = History::new();
    history.ack("k", 1, ms(0));
    // A read overlapping the ack of v2 may return v1.
    history.ack("k", 2, ms(100));
    history.read("a", "k", Some(1), ms(99), ms(150));
    // Every later read returns v2 or misses.
    history.read("a", "k", Some(2), ms(101), ms(102));
    history.read("b", "k", Some(2), ms(200), ms(201));
    history.read("b", "k", None, ms(300), ms(301));
    // A key no one acked: reads of it are neither stale nor exposed.
    history.read("b", "other", Some(7), ms(300), ms(301));

    let report = history.check(B);
    assert_eq!(report.reads, 5);
    assert_eq!(report.acks, 2);
    assert_eq!(report.misses, 1);
    assert_eq!(report.exposed, 3, "the three hits of k after its first ack");
    assert_eq!(report.stale, 0);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.worst_staleness, Duration::ZERO);
    assert!(report.is_fresh());
    assert_eq!(assert_fresh_message(&report), None);
}

#[test]
fn reads_before_any_ack_are_not_exposed() {
    let history = History::new();
    history.read("a", "k", Some(0), ms(0), ms(1));
    history.read("a", "k", Some(0), ms(10), ms(11));
    // Started at the very moment of the ack: not after it.
    history.read("a", "k", Some(0), ms(20), ms(21));
    history.ack("k", 1, ms(20));
    let report = history.check(B);
    assert_eq!((report.reads, report.exposed, report.stale), (3, 0, 0));
}

#[test]
fn a_planted_violation_is_caught_with_its_staleness() {
    let history = History::new();
    history.ack("price:1", 1, ms(0));
    history.ack("price:1", 2, ms(1_000));
    // B + 1 ms after the ack of v2, node-c still returns v1.
    history.read("node-c", "price:1", Some(1), ms(1_501), ms(1_503));
    history.read("node-a", "price:1", Some(2), ms(1_600), ms(1_601));

    let report = history.check(B);
    assert_eq!(report.stale, 1);
    assert_eq!(report.violations.len(), 1);
    let violation = &report.violations[0];
    assert_eq!(violation.node, "node-c");
    assert_eq!(violation.key, "price:1");
    assert_eq!(violation.returned, 1);
    assert_eq!(violation.at_least, 2);
    assert_eq!(violation.acked_at, ms(1_000));
    assert_eq!(violation.started_at, ms(1_501));
    assert_eq!(violation.ended_at, ms(1_503));
    assert_eq!(violation.staleness, ms(501));
    assert_eq!(report.worst_staleness, ms(501));
    assert!(!report.is_fresh());

    let message = assert_fresh_message(&report).expect("a violation fails assert_fresh");
    assert!(
        message.contains("freshness violated: 1 of 2 reads"),
        "{message}"
    );
    assert!(
        message.contains(
            "node-c read \"price:1\" at 1.501s..1.503s and got v1, expected v2 or newer; a newer \
             version was acked at 1s, 501ms before the read started"
        ),
        "{message}"
    );
}

#[test]
fn a_read_within_the_bound_is_stale_but_not_a_violation() {
    let history = History::new();
    history.ack("price:1", 2, ms(1_000));
    // B - 1 ms after the ack.
    history.read("node-c", "price:1", Some(1), ms(1_499), ms(1_503));

    let report = history.check(B);
    assert_eq!(report.stale, 1);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.worst_staleness, ms(499));
    report.assert_fresh();
}

#[test]
fn staleness_exactly_at_the_bound_is_allowed() {
    let history = History::new();
    history.ack("k", 2, ms(1_000));
    history.read("n", "k", Some(1), ms(1_500), ms(1_500));
    let report = history.check(B);
    assert_eq!((report.stale, report.violations.len()), (1, 0));
    assert_eq!(report.worst_staleness, B);
}

#[test]
fn a_miss_is_never_stale() {
    let history = History::new();
    history.ack("k", 5, ms(0));
    history.read("n", "k", None, ms(10_000), ms(10_001));
    let report = history.check(B);
    assert_eq!((report.misses, report.exposed, report.stale), (1, 0, 0));
    assert!(report.is_fresh());
}

#[test]
fn a_version_newer_than_any_ack_is_fine() {
    let history = History::new();
    history.ack("k", 5, ms(0));
    // Version 9 was written but its ack is not in the history (the writer has not heard back).
    history.read("n", "k", Some(9), ms(10_000), ms(10_001));
    // The acked version itself is fine too.
    history.read("n", "k", Some(5), ms(10_000), ms(10_001));
    let report = history.check(B);
    assert_eq!((report.exposed, report.stale), (2, 0));
    assert_eq!(report.worst_staleness, Duration::ZERO);
}

#[test]
fn acks_out_of_time_order_count_from_the_earliest_greater_version() {
    let history = History::new();
    // Concurrent writers: v3's ack came back before v2's.
    history.ack("k", 3, ms(100));
    history.ack("k", 2, ms(900));
    history.ack("k", 4, ms(2_000));
    // v1 returned at 700 ms: v3 (> 1) was acked at 100 ms, so it is 600 ms stale, although
    // the ack of v2 came later.
    history.read("n", "k", Some(1), ms(700), ms(701));
    // v2 returned at 700 ms is older than v3 too: same staleness.
    history.read("n", "k", Some(2), ms(700), ms(701));
    // v3 returned at 2 400 ms: v4 acked at 2 000 ms, within the bound.
    history.read("n", "k", Some(3), ms(2_400), ms(2_401));

    let report = history.check(B);
    assert_eq!(report.stale, 3);
    let seen: Vec<(u64, u64, Duration)> = report
        .violations
        .iter()
        .map(|v| (v.returned, v.at_least, v.staleness))
        .collect();
    // At 700 ms - B = 200 ms, only v3 had been acked: it is the version required.
    assert_eq!(seen, [(1, 3, ms(600)), (2, 3, ms(600))]);
    assert_eq!(report.worst_staleness, ms(600));
}

#[test]
fn the_required_version_is_the_highest_acked_more_than_the_bound_before() {
    let history = History::new();
    history.ack("k", 2, ms(0));
    history.ack("k", 3, ms(100));
    history.ack("k", 4, ms(900));
    history.read("n", "k", Some(1), ms(1_000), ms(1_001));
    let report = history.check(B);
    let violation = &report.violations[0];
    // Staleness is measured from the earliest newer ack (v2 at 0 ms); the read must return at
    // least v3, the highest acked before 1000 - 500 ms; v4 is still within the bound.
    assert_eq!(
        (violation.acked_at, violation.staleness, violation.at_least),
        (ms(0), ms(1_000), 3)
    );
}

#[test]
fn worst_staleness_is_the_maximum_over_all_reads() {
    let history = History::new();
    history.ack("a", 2, ms(0));
    history.ack("b", 2, ms(0));
    history.ack("c", 2, ms(0));
    for (key, start) in [("a", 40), ("b", 350), ("c", 120), ("a", 200)] {
        history.read("n", key, Some(1), ms(start), ms(start + 1));
    }
    // A fresh read after all of them must not lower it.
    history.read("n", "b", Some(2), ms(5_000), ms(5_001));
    let report = history.check(B);
    assert_eq!(report.stale, 4);
    assert_eq!(report.worst_staleness, ms(350));
    assert!(report.is_fresh());
}

#[test]
fn ack_many_records_each_key_at_its_version() {
    let history = History::new();
    history.ack_many([("a", 2), ("b", 7)], ms(100));
    history.read("n", "a", Some(1), ms(1_000), ms(1_001));
    history.read("n", "b", Some(6), ms(1_000), ms(1_001));
    history.read("n", "b", Some(7), ms(1_000), ms(1_001));
    let report = history.check(B);
    assert_eq!(report.acks, 2);
    let keys: Vec<(&str, u64)> = report
        .violations
        .iter()
        .map(|v| (v.key.as_str(), v.at_least))
        .collect();
    assert_eq!(keys, [("a", 2), ("b", 7)]);
}

#[test]
fn violations_are_ordered_by_start_and_the_message_quotes_ten() {
    let history = History::new();
    history.ack("k", 2, ms(0));
    // Recorded latest first, as concurrent tasks may.
    for i in (0..15u64).rev() {
        history.read(
            &format!("node-{i}"),
            "k",
            Some(1),
            ms(1_000 + i),
            ms(1_100 + i),
        );
    }
    let report = history.check(B);
    let starts: Vec<Duration> = report.violations.iter().map(|v| v.started_at).collect();
    assert_eq!(starts, (0..15).map(|i| ms(1_000 + i)).collect::<Vec<_>>());

    let message = assert_fresh_message(&report).expect("15 violations fail assert_fresh");
    assert!(
        message.contains("freshness violated: 15 of 15 reads"),
        "{message}"
    );
    assert!(message.contains("first 10 violations:"), "{message}");
    assert!(message.contains("node-9 read"), "{message}");
    assert!(!message.contains("node-10 read"), "{message}");
    assert!(message.contains("... and 5 more"), "{message}");
    assert!(message.contains(&report.to_string()), "{message}");
}

#[test]
fn the_summary_states_every_count_and_the_bound() {
    let history = History::new();
    history.ack("k", 2, ms(0));
    history.read("n", "k", Some(1), ms(100), ms(101));
    history.read("n", "k", Some(1), ms(800), ms(801));
    history.read("n", "k", None, ms(900), ms(901));
    assert_eq!(
        history.check(B).to_string(),
        "4 operations (3 reads, 1 of them misses; 1 acks): 2 reads exposed to an earlier ack, \
         2 stale, 1 violations; worst staleness 800ms against a bound of 500ms"
    );
}

#[test]
#[should_panic(expected = "ended at 1ms, before it started at 2ms")]
fn a_read_that_ends_before_it_starts_is_refused() {
    History::new().read("n", "k", None, ms(2), ms(1));
}

#[test]
fn records_from_many_threads_are_all_counted() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 2_000;
    let history = History::new();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let history = history.clone();
            thread::spawn(move || {
                let node = format!("node-{t}");
                let key = format!("key-{t}");
                for v in 1..=PER_THREAD {
                    history.ack(&key, v, ms(v * 10));
                    // Read right after each ack, returning the acked version: fresh.
                    history.read(&node, &key, Some(v), ms(v * 10 + 1), ms(v * 10 + 2));
                }
                // One planted violation per thread: the first version, long after.
                history.read(
                    &node,
                    &key,
                    Some(0),
                    ms(PER_THREAD * 10 + 1_000),
                    ms(1_000_000),
                );
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a recording thread panicked");
    }

    let report = history.check(B);
    assert_eq!(report.acks as u64, THREADS * PER_THREAD);
    assert_eq!(report.reads as u64, THREADS * (PER_THREAD + 1));
    assert_eq!(report.exposed, report.reads);
    assert_eq!(report.stale as u64, THREADS);
    let mut nodes: Vec<&str> = report.violations.iter().map(|v| v.node.as_str()).collect();
    nodes.sort_unstable();
    let expected: Vec<String> = (0..THREADS).map(|t| format!("node-{t}")).collect();
    assert_eq!(nodes, expected);
    for violation in &report.violations {
        assert_eq!(violation.at_least, PER_THREAD);
        // Measured from the ack of v1 at 10 ms.
        assert_eq!(violation.staleness, ms(PER_THREAD * 10 + 1_000 - 10));
    }
}

/// A small deterministic generator (64-bit LCG), so the cross-check below needs no crate.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn the_indexed_check_agrees_with_the_rule_read_by_read() {
    let bound = ms(40);
    for seed in 0..20 {
        let mut rng = Lcg(seed);
        let history = History::new();
        let mut acks: Vec<(u64, u64, Duration)> = Vec::new();
        let mut reads: Vec<(u64, u64, Option<u64>, Duration)> = Vec::new();
        for _ in 0..600 {
            let key = rng.below(5);
            let at = ms(rng.below(1_000));
            if rng.below(3) == 0 {
                let version = rng.below(30);
                history.ack(&format!("k{key}"), version, at);
                acks.push((key, version, at));
            } else {
                let node = rng.below(4);
                let returned = (rng.below(8) != 0).then(|| rng.below(32));
                history.read(
                    &format!("n{node}"),
                    &format!("k{key}"),
                    returned,
                    at,
                    at + ms(3),
                );
                reads.push((node, key, returned, at));
            }
        }

        // The rule, applied literally to every read against every ack.
        let (mut exposed, mut stale, mut worst) = (0, 0, Duration::ZERO);
        let mut violations = Vec::new();
        for &(node, key, returned, started_at) in &reads {
            let Some(returned) = returned else { continue };
            let of_key = || acks.iter().filter(|&&(k, _, _)| k == key);
            if of_key().any(|&(_, _, at)| at < started_at) {
                exposed += 1;
            }
            let first = of_key()
                .filter(|&&(_, v, _)| v > returned)
                .map(|&(_, _, at)| at)
                .min();
            let staleness = match first {
                Some(first) if first < started_at => started_at - first,
                _ => Duration::ZERO,
            };
            if staleness > Duration::ZERO {
                stale += 1;
                worst = worst.max(staleness);
            }
            if staleness > bound {
                let at_least = of_key()
                    .filter(|&&(_, _, at)| at + bound < started_at)
                    .map(|&(_, v, _)| v)
                    .max()
                    .expect("a violation has an ack older than the bound");
                violations.push((
                    format!("n{node}"),
                    returned,
                    at_least,
                    started_at,
                    staleness,
                ));
            }
        }
        violations.sort_by_key(|v| v.3);

        let report = history.check(bound);
        let found: Vec<_> = report
            .violations
            .iter()
            .map(|v| {
                (
                    v.node.clone(),
                    v.returned,
                    v.at_least,
                    v.started_at,
                    v.staleness,
                )
            })
            .collect();
        assert_eq!(report.exposed, exposed, "seed {seed}");
        assert_eq!(report.stale, stale, "seed {seed}");
        assert_eq!(report.worst_staleness, worst, "seed {seed}");
        assert_eq!(found, violations, "seed {seed}");
        assert!(
            stale > 0 && !violations.is_empty(),
            "seed {seed} exercises nothing"
        );
    }
}
