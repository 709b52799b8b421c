//! A freshness history checker: records acknowledged changes and reads, then proves (or refutes)
//! that no read returned a value older than a change acknowledged more than a bound `B` before it.
//!
//! It checks the promise edge-cache makes to its callers: *once a write or an invalidation has
//! been acknowledged to its caller, no node returns a value older than it after a staleness
//! bound `B`.* Seeded simulations and real-Redis fault tests record what happened into a
//! [`History`]; [`History::check`] turns it into a [`Report`] and [`Report::assert_fresh`] fails
//! the test with the offending reads.
//!
//! The checker is pure logic: it does no I/O and never reads a clock. Every time is a
//! [`Duration`] since an origin the caller chooses (under tokio's paused clock,
//! `Instant::now() - origin` is deterministic), and every version is assigned by the test's
//! source of truth, increasing per key in the order the changes were made.
//!
//! # The rule
//!
//! - [`History::ack`]`(key, v, acked_at)`: from `acked_at` on, the acceptable versions of `key`
//!   are `>= v`. A write of `v` acknowledged to its caller, and an invalidation acknowledged
//!   after the source moved the key to `v`, both reduce to this.
//! - [`History::read`]`(node, key, returned, started_at, ended_at)`: `node` read `key` and got
//!   version `returned`, or `None` for a miss.
//! - A read's **staleness**: let `first` be the earliest `acked_at` among the acks of its key
//!   with a version greater than `returned`. If `first < started_at`, the staleness is
//!   `started_at - first`; otherwise (or when no such ack exists, or the read missed) it is zero.
//!   Only the start counts: a read that started before an ack may legitimately return the
//!   version that ack replaced. `ended_at` is kept for the messages.
//! - A read is **stale** when its staleness is greater than zero, and a **violation** when it is
//!   greater than `B`.
//! - A read is **exposed** when it returned a value and at least one ack of its key happened
//!   before it started: a node that missed that change could have served an older value. A
//!   history with many stale-free exposed reads shows that "no violation" was earned, not true
//!   by construction. Misses are never exposed, since they can never be stale.
//!
//! # Cost
//!
//! Recording is one short mutex-guarded push (keys and node names are interned, so repeated
//! names do not allocate). [`History::check`] sorts each key's acks by version, keeps the
//! suffix minimum of their `acked_at`, and answers each read with a binary search:
//! `O((A + R) log A)` for `A` acks and `R` reads, so fault runs of hundreds of thousands of
//! operations check in well under a second.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use test_support::history::History;
//!
//! let ms = Duration::from_millis;
//! let history = History::new();
//! // Version 2 of "price:42" is written and acknowledged to the writer at 100 ms.
//! history.ack("price:42", 2, ms(100));
//! // A read that started before the ack may still return version 1.
//! history.read("node-a", "price:42", Some(1), ms(90), ms(95));
//! // 30 ms after the ack node-b still serves version 1: stale.
//! history.read("node-b", "price:42", Some(1), ms(130), ms(131));
//! // node-c serves the new version, then misses; a miss is never stale.
//! history.read("node-c", "price:42", Some(2), ms(200), ms(201));
//! history.read("node-c", "price:42", None, ms(300), ms(301));
//!
//! // Within a 50 ms bound the history is fresh...
//! let report = history.check(ms(50));
//! assert_eq!((report.reads, report.exposed, report.stale), (4, 2, 1));
//! assert_eq!(report.worst_staleness, ms(30));
//! report.assert_fresh();
//!
//! // ...and with a 20 ms bound node-b's read is a violation.
//! let strict = history.check(ms(20));
//! assert_eq!(strict.violations.len(), 1);
//! let violation = &strict.violations[0];
//! assert_eq!((violation.node.as_str(), violation.returned, violation.at_least), ("node-b", 1, 2));
//! assert_eq!(violation.staleness, ms(30));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How many violations [`Report::assert_fresh`] quotes before summing up the rest.
const SHOWN_VIOLATIONS: usize = 10;

/// A recorder of acks and reads, shared by every task and thread of a test run.
///
/// Cloning is cheap: clones share one log behind a mutex, so each node, writer and reader task
/// can hold its own handle. Recording never fails; a thread that panicked while holding the lock
/// does not stop the others (the log is taken back from the poisoned mutex).
#[derive(Clone, Default)]
pub struct History {
    log: Arc<Mutex<Log>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a change of `key` to `version` was acknowledged at `acked_at`: from then on,
    /// every read of `key` that starts more than the bound later must return `version` or newer.
    ///
    /// Acks of one key may be recorded in any order, as concurrent writers produce them.
    pub fn ack(&self, key: &str, version: u64, acked_at: Duration) {
        let mut log = self.lock();
        let key = log.keys.id(key);
        log.acks.push(Ack {
            key,
            version,
            acked_at,
        });
    }

    /// Records several acks made at the same moment (a notification that moved many keys, each
    /// to its own version), under one lock.
    pub fn ack_many<'k>(
        &self,
        changes: impl IntoIterator<Item = (&'k str, u64)>,
        acked_at: Duration,
    ) {
        let mut log = self.lock();
        for (key, version) in changes {
            let key = log.keys.id(key);
            log.acks.push(Ack {
                key,
                version,
                acked_at,
            });
        }
    }

    /// Records that `node` read `key` between `started_at` and `ended_at` and got version
    /// `returned`, or `None` for a miss.
    ///
    /// # Panics
    ///
    /// If `ended_at` is before `started_at`: the caller swapped its times.
    #[track_caller]
    pub fn read(
        &self,
        node: &str,
        key: &str,
        returned: Option<u64>,
        started_at: Duration,
        ended_at: Duration,
    ) {
        assert!(
            started_at <= ended_at,
            "a read of {key:?} on {node} ended at {ended_at:?}, before it started at {started_at:?}"
        );
        let mut log = self.lock();
        let node = log.nodes.id(node);
        let key = log.keys.id(key);
        log.reads.push(Read {
            node,
            key,
            returned,
            started_at,
            ended_at,
        });
    }

    /// Checks every read recorded so far against the acks recorded so far, with staleness bound
    /// `bound`. It may be called again, with other bounds or after more records.
    pub fn check(&self, bound: Duration) -> Report {
        let log = self.lock();
        let index = log.index();
        let mut report = Report {
            reads: log.reads.len(),
            misses: 0,
            exposed: 0,
            acks: log.acks.len(),
            stale: 0,
            violations: Vec::new(),
            worst_staleness: Duration::ZERO,
            bound,
        };
        for read in &log.reads {
            let Some(returned) = read.returned else {
                report.misses += 1;
                continue;
            };
            let acks = &index[read.key as usize];
            if acks.earliest().is_some_and(|at| at < read.started_at) {
                report.exposed += 1;
            }
            let Some(first) = acks.earliest_newer_than(returned) else {
                continue;
            };
            if first >= read.started_at {
                continue;
            }
            let staleness = read.started_at - first;
            report.stale += 1;
            report.worst_staleness = report.worst_staleness.max(staleness);
            if staleness > bound {
                // `first < started_at - bound`, so `first`'s ack is among those counted here,
                // and its version is greater than `returned`.
                let at_least = acks
                    .highest_acked_before(read.started_at - bound)
                    .expect("the ack that makes the read a violation precedes started_at - bound");
                report.violations.push(Violation {
                    node: log.nodes.name(read.node).to_owned(),
                    key: log.keys.name(read.key).to_owned(),
                    returned,
                    at_least,
                    acked_at: first,
                    started_at: read.started_at,
                    ended_at: read.ended_at,
                    staleness,
                });
            }
        }
        // Stable: reads that started together keep the order they were recorded in.
        report.violations.sort_by_key(|v| v.started_at);
        report
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for History {
    /// The counts only: a fault run's log is far too long to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = self.lock();
        f.debug_struct("History")
            .field("acks", &log.acks.len())
            .field("reads", &log.reads.len())
            .field("keys", &log.keys.names.len())
            .field("nodes", &log.nodes.names.len())
            .finish()
    }
}

/// The outcome of [`History::check`]: counts, the violations, and the worst staleness seen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Reads recorded, misses included.
    pub reads: usize,
    /// Reads that missed (returned `None`); never stale, never exposed.
    pub misses: usize,
    /// Reads that returned a value after at least one ack of their key: the reads that could
    /// have been stale.
    pub exposed: usize,
    /// Acks recorded.
    pub acks: usize,
    /// Reads with a staleness greater than zero, violations included.
    pub stale: usize,
    /// Reads whose staleness exceeds the bound, by `started_at` (ties in recording order).
    pub violations: Vec<Violation>,
    /// The greatest staleness of any read (zero when none was stale).
    pub worst_staleness: Duration,
    /// The bound the history was checked against.
    pub bound: Duration,
}

impl Report {
    /// Whether no read exceeded the bound.
    pub fn is_fresh(&self) -> bool {
        self.violations.is_empty()
    }

    /// Passes when no read exceeded the bound.
    ///
    /// # Panics
    ///
    /// When there are violations, with the summary and the first ten of them.
    #[track_caller]
    pub fn assert_fresh(&self) {
        if self.is_fresh() {
            return;
        }
        let mut message = format!(
            "freshness violated: {} of {} reads returned a version older than one acknowledged \
             more than {:?} before they started\n{self}\n",
            self.violations.len(),
            self.reads,
            self.bound,
        );
        let shown = self.violations.len().min(SHOWN_VIOLATIONS);
        message.push_str(&format!("first {shown} violations:"));
        for violation in &self.violations[..shown] {
            message.push_str(&format!("\n  {violation}"));
        }
        if self.violations.len() > shown {
            message.push_str(&format!(
                "\n  ... and {} more",
                self.violations.len() - shown
            ));
        }
        panic!("{message}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations ({} reads, {} of them misses; {} acks): {} reads exposed to an \
             earlier ack, {} stale, {} violations; worst staleness {:?} against a bound of {:?}",
            self.reads + self.acks,
            self.reads,
            self.misses,
            self.acks,
            self.exposed,
            self.stale,
            self.violations.len(),
            self.worst_staleness,
            self.bound,
        )
    }
}

/// A read that returned a version older than one acknowledged more than the bound before it
/// started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// The node that served the read.
    pub node: String,
    /// The key read.
    pub key: String,
    /// The version it returned.
    pub returned: u64,
    /// The version it should have returned at least: the highest one acknowledged more than
    /// the bound before the read started.
    pub at_least: u64,
    /// When the first version newer than `returned` was acknowledged (the ack the staleness is
    /// measured from).
    pub acked_at: Duration,
    /// When the read started.
    pub started_at: Duration,
    /// When the read ended.
    pub ended_at: Duration,
    /// `started_at - acked_at`, greater than the bound.
    pub staleness: Duration,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} read {:?} at {:?}..{:?} and got v{}, expected v{} or newer; a newer version was \
             acked at {:?}, {:?} before the read started",
            self.node,
            self.key,
            self.started_at,
            self.ended_at,
            self.returned,
            self.at_least,
            self.acked_at,
            self.staleness,
        )
    }
}

/// Everything recorded, in recording order.
#[derive(Default)]
struct Log {
    keys: Interner,
    nodes: Interner,
    acks: Vec<Ack>,
    reads: Vec<Read>,
}

impl Log {
    /// Each key's acks, indexed by key id, ready for the per-read searches.
    fn index(&self) -> Vec<KeyAcks> {
        let mut grouped: Vec<Vec<(u64, Duration)>> = vec![Vec::new(); self.keys.names.len()];
        for ack in &self.acks {
            grouped[ack.key as usize].push((ack.version, ack.acked_at));
        }
        grouped.into_iter().map(KeyAcks::new).collect()
    }
}

/// One key's acks sorted by version, with the earliest `acked_at` of each suffix.
struct KeyAcks {
    /// Versions in ascending order (repeats allowed: a version may be acked more than once).
    versions: Vec<u64>,
    /// `earliest_from[i]` = the minimum `acked_at` of the acks at `i..`. Non-decreasing in `i`,
    /// which is what lets [`KeyAcks::highest_acked_before`] search it.
    earliest_from: Vec<Duration>,
}

impl KeyAcks {
    fn new(mut acks: Vec<(u64, Duration)>) -> Self {
        acks.sort_unstable();
        let mut earliest_from: Vec<Duration> = acks.iter().map(|&(_, at)| at).collect();
        for i in (0..earliest_from.len().saturating_sub(1)).rev() {
            earliest_from[i] = earliest_from[i].min(earliest_from[i + 1]);
        }
        Self {
            versions: acks.into_iter().map(|(version, _)| version).collect(),
            earliest_from,
        }
    }

    /// The earliest ack of the key, of any version.
    fn earliest(&self) -> Option<Duration> {
        self.earliest_from.first().copied()
    }

    /// The earliest ack of a version greater than `returned`.
    fn earliest_newer_than(&self, returned: u64) -> Option<Duration> {
        let newer = self.versions.partition_point(|&v| v <= returned);
        self.earliest_from.get(newer).copied()
    }

    /// The highest version acked strictly before `at`.
    ///
    /// The last suffix whose earliest ack precedes `at` starts at an ack that itself precedes
    /// `at` (the next suffix's earliest does not), and every later ack is at or after `at`.
    fn highest_acked_before(&self, at: Duration) -> Option<u64> {
        let suffixes = self
            .earliest_from
            .partition_point(|&earliest| earliest < at);
        suffixes.checked_sub(1).map(|i| self.versions[i])
    }
}

/// Names mapped to dense ids, so the log stores numbers and repeated names never allocate.
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

struct Ack {
    key: u32,
    version: u64,
    acked_at: Duration,
}

struct Read {
    node: u32,
    key: u32,
    returned: Option<u64>,
    started_at: Duration,
    ended_at: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn suffix_minimum_answers_the_three_questions() {
        // Version 3 was acked first, version 1 last: concurrent writers.
        let acks = KeyAcks::new(vec![(2, ms(50)), (1, ms(90)), (3, ms(10)), (4, ms(70))]);
        assert_eq!(acks.versions, [1, 2, 3, 4]);
        assert_eq!(acks.earliest_from, [ms(10), ms(10), ms(10), ms(70)]);
        assert_eq!(acks.earliest(), Some(ms(10)));
        assert_eq!(acks.earliest_newer_than(0), Some(ms(10)));
        assert_eq!(acks.earliest_newer_than(3), Some(ms(70)));
        assert_eq!(acks.earliest_newer_than(4), None);
        assert_eq!(acks.highest_acked_before(ms(10)), None);
        assert_eq!(acks.highest_acked_before(ms(11)), Some(3));
        assert_eq!(acks.highest_acked_before(ms(71)), Some(4));
    }

    #[test]
    fn a_key_without_acks_answers_nothing() {
        let acks = KeyAcks::new(Vec::new());
        assert_eq!(acks.earliest(), None);
        assert_eq!(acks.earliest_newer_than(0), None);
        assert_eq!(acks.highest_acked_before(ms(1_000)), None);
    }
}
