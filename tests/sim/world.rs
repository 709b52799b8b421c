//! What the simulated fleet serves: the keys, the source of truth behind them (a version per
//! key), the turns that keep each key's changes landing in version order, and the history
//! every write and read is recorded in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use test_support::history::History;
use tokio::sync::{Mutex as TurnLock, OwnedMutexGuard};
use tokio::time::Instant;

use super::clock::since;

/// One key every node reads and every writer changes.
#[derive(Debug)]
pub(crate) struct KeySpec {
    /// The namespace (cache type) name, as callers pass it.
    pub(crate) namespace: &'static str,
    /// Its key namespace, as L2 and events name it.
    pub(crate) key_namespace: &'static str,
    /// The key's parameters.
    pub(crate) param: String,
    /// How the history and the reports name it: `gpu_avail/g-1`.
    pub(crate) label: String,
    /// The key's text in L2 (the same on every node): the turn slot of its changes.
    pub(crate) slot: String,
}

/// Counts of what the writers and readers did, beyond what the history holds.
#[derive(Debug, Default)]
pub(crate) struct WorkCounters {
    pub(crate) write_errors: AtomicU64,
    pub(crate) writes_given_up: AtomicU64,
    pub(crate) writes_superseded: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) loads: AtomicU64,
}

/// The state the writers, readers and checks share.
pub(crate) struct World {
    pub(crate) keys: Vec<KeySpec>,
    /// The source of truth: each key's current version (the database the cache fronts).
    source: Mutex<Vec<u64>>,
    pub(crate) turns: Turns,
    pub(crate) history: History,
    pub(crate) counters: WorkCounters,
    origin: Instant,
    /// Writers stop starting changes once set.
    pub(crate) writes_stopped: AtomicBool,
    /// Readers stop once set.
    pub(crate) reads_stopped: AtomicBool,
    /// When every writer stays quiet, if ever.
    pub(crate) lull: Option<std::ops::Range<Duration>>,
    /// Whether to print what happens, as it happens (`EDGE_CACHE_SIM_TRACE=1`).
    tracing: bool,
}

impl World {
    pub(crate) fn new(
        keys: Vec<KeySpec>,
        origin: Instant,
        overlapping_writes: bool,
        lull: Option<std::ops::Range<Duration>>,
    ) -> Self {
        let n = keys.len();
        Self {
            keys,
            // Every key exists in the source from the start, at version 1, never acknowledged.
            source: Mutex::new(vec![1; n]),
            turns: Turns::new(n, overlapping_writes),
            history: History::new(),
            counters: WorkCounters::default(),
            origin,
            writes_stopped: AtomicBool::new(false),
            reads_stopped: AtomicBool::new(false),
            lull,
            tracing: std::env::var_os("EDGE_CACHE_SIM_TRACE").is_some_and(|v| v == "1"),
        }
    }

    /// Prints `what` with the simulated time when tracing (`EDGE_CACHE_SIM_TRACE=1`): the
    /// narrative of a failing seed. Printing changes nothing in the run.
    pub(crate) fn trace(&self, what: impl FnOnce() -> String) {
        if self.tracing {
            eprintln!("{:>12.6?}  {}", self.now(), what());
        }
    }

    /// Records, now, the acknowledgement of each `(key index, version)` of one call.
    pub(crate) fn ack_versions(&self, acked: &[(usize, u64)]) {
        self.history.ack_many(
            acked
                .iter()
                .map(|&(key, version)| (self.keys[key].label.as_str(), version)),
            self.now(),
        );
    }

    /// True simulated time since the run began.
    pub(crate) fn now(&self) -> Duration {
        since(self.origin)
    }

    /// When the run began.
    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    pub(crate) fn version(&self, key: usize) -> u64 {
        self.source()[key]
    }

    /// Moves `key` to its next version in the source; returns it. Only under the key's turn.
    pub(crate) fn bump(&self, key: usize) -> u64 {
        let mut source = self.source();
        source[key] += 1;
        source[key]
    }

    /// The keys of the namespace `key_namespace`, in order.
    pub(crate) fn keys_of(&self, key_namespace: &str) -> Vec<usize> {
        (0..self.keys.len())
            .filter(|&k| self.keys[k].key_namespace == key_namespace)
            .collect()
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    fn source(&self) -> MutexGuard<'_, Vec<u64>> {
        self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Makes each key's changes land in L2 in the order their versions were given out, so that the
/// history's versions are the order L2 saw (a caller that let an older write land after a
/// newer one would break the promise itself).
///
/// A writer takes the turns of the keys it changes, moves the source, and *parks* the turns
/// under the slot the L2 operation names (the key's text, or a key namespace), then calls the
/// node. By default it hands them back when the call returns ([`Turns::unpark`]): one change of
/// a key at a time, as callers that serialise their writes per key see it. With overlapping
/// writes, the node's L2 link hands them back the moment the operation has been applied to L2
/// ([`Turns::landed`]), before its reply travels back: the next change of the key may land
/// while the previous call is still returning, the interleaving in which a node hears (or
/// makes) a newer change before its own write returns.
pub(crate) struct Turns {
    locks: Vec<Arc<TurnLock<()>>>,
    /// By slot: the operation that parked turns there, and the turns.
    parked: Mutex<HashMap<String, Parked>>,
    next_op: AtomicU64,
    overlapping: bool,
}

/// The turn of one key.
pub(crate) type Turn = OwnedMutexGuard<()>;

/// Turns parked under one slot, with the id of the operation that parked them.
type Parked = (u64, Vec<Turn>);

impl Turns {
    fn new(keys: usize, overlapping: bool) -> Self {
        Self {
            locks: (0..keys).map(|_| Arc::new(TurnLock::new(()))).collect(),
            parked: Mutex::new(HashMap::new()),
            next_op: AtomicU64::new(1),
            overlapping,
        }
    }

    /// Waits for the turns of `keys`, taken in ascending order so that no two writers can
    /// deadlock.
    pub(crate) async fn take(&self, keys: &[usize]) -> Vec<Turn> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut turns = Vec::with_capacity(sorted.len());
        for k in sorted {
            turns.push(Arc::clone(&self.locks[k]).lock_owned().await);
        }
        turns
    }

    /// Parks turns under the slots of one operation; returns the operation's id for
    /// [`Turns::unpark`].
    pub(crate) fn park(&self, slots: Vec<(String, Vec<Turn>)>) -> u64 {
        let op = self.next_op.fetch_add(1, Relaxed);
        let mut parked = self.lock();
        for (slot, turns) in slots {
            let previous = parked.insert(slot, (op, turns));
            debug_assert!(
                previous.is_none(),
                "a slot's turns are held by one operation"
            );
        }
        op
    }

    /// The L2 operation on `slot` was applied: with overlapping writes, the next change of its
    /// keys may land.
    pub(crate) fn landed(&self, slot: &str) {
        if self.overlapping {
            let released = self.lock().remove(slot);
            drop(released);
        }
    }

    /// Hands back the turns operation `op` still has parked (its L2 operation failed before
    /// landing), leaving any other operation's alone.
    pub(crate) fn unpark(&self, op: u64) {
        let mut parked = self.lock();
        parked.retain(|_, (owner, _)| *owner != op);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Parked>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
