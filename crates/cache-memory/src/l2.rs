//! [`MemoryL2`]: an in-process stand-in for the shared L2 store.
//!
//! # Design
//!
//! All state sits behind one `Mutex`, the way Redis runs every command on one thread: a fenced
//! write checks the fence and writes under the same lock, so it is atomic, and a namespace's
//! generation, fence and tag index never disagree. The entries themselves are kept in a
//! [`quick_cache::unsync::Cache`] with a weigher, which supplies the byte bound and O(1)
//! amortised S3-FIFO-like eviction without a hand-written LRU; a single-threaded cache is enough
//! because the mutex already serialises access.
//!
//! Namespace invalidation is O(1): each namespace has a generation counter, each entry records
//! the generation it was written in, and bumping the counter makes every older entry read as
//! absent. Stale entries are removed when a read finds them, or evicted under pressure.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use cache_core::{
    CacheKey, Clock, Error, ErrorKind, Fence, L2Entry, L2Store, L2Write, Result, Timestamp,
};
use quick_cache::unsync::Cache;
use quick_cache::Weighter;

use crate::clock::SystemClock;

/// Bytes charged for each L2 entry on top of its key, value and tag lengths: the cache slot and
/// hash bucket, the entry's fields, and its tag-index records (an estimate for a 64-bit target).
pub const L2_ENTRY_OVERHEAD_BYTES: u64 = 192;

/// Capacity of [`MemoryL2::global`].
const GLOBAL_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// The largest entry stored, as a share of the capacity (quick_cache declines entries above its
/// 97% hot-queue target; a lower bound here keeps admission predictable).
const MAX_ENTRY_SHARE_PERCENT: u64 = 90;

/// Tag-index records below which the index is never pruned.
const MIN_PRUNE_FLOOR: usize = 1024;

/// One stored entry.
struct Stored {
    bytes: Vec<u8>,
    expires_at: Timestamp,
    /// The namespace generation current when the entry was written.
    generation: u64,
    tags: Box<[String]>,
    weight: u64,
}

impl Stored {
    fn is_live(&self, now: Timestamp, generation: u64) -> bool {
        self.expires_at > now && self.generation == generation
    }
}

#[derive(Clone, Copy)]
struct StoredWeighter;

impl Weighter<String, Stored> for StoredWeighter {
    fn weight(&self, _key: &String, stored: &Stored) -> u64 {
        stored.weight
    }
}

/// Per key-namespace bookkeeping.
#[derive(Default)]
struct Namespace {
    /// Bumped by `invalidate_namespace`; entries from older generations are absent.
    generation: u64,
    /// Bumped by every invalidation of the namespace or of one of its tags.
    fence: u64,
    /// Bumped by every set and delete of a key, striped by the key's first digest byte so
    /// concurrent fills of different keys do not fence each other out.
    write_stripes: Vec<u32>,
    /// Keys written with each tag. May name keys since evicted, overwritten without the tag or
    /// left in an old generation; those are checked against the entry and pruned.
    tags: HashMap<String, HashSet<String>>,
}

const WRITE_STRIPES: usize = 256;

impl Namespace {
    fn stripe(key: &CacheKey) -> usize {
        usize::from(key.digest().0[0]) % WRITE_STRIPES
    }

    /// The namespace's invalidation count in the high half, the key's stripe in the low half.
    fn key_fence(&self, key: &CacheKey) -> Fence {
        let stripe = self
            .write_stripes
            .get(Self::stripe(key))
            .copied()
            .unwrap_or(0);
        Fence((self.fence << 32) ^ u64::from(stripe))
    }

    fn bump_key(&mut self, key: &CacheKey) {
        if self.write_stripes.is_empty() {
            self.write_stripes = vec![0; WRITE_STRIPES];
        }
        let stripe = &mut self.write_stripes[Self::stripe(key)];
        *stripe = stripe.wrapping_add(1);
    }
}

struct State {
    entries: Cache<String, Stored, StoredWeighter>,
    namespaces: HashMap<String, Namespace>,
    /// (tag, key) records across all namespaces' tag indexes.
    tag_records: usize,
    /// No pruning below this many records; twice the live count after each prune.
    prune_floor: usize,
}

impl State {
    fn namespace_mut(&mut self, key_namespace: &str) -> &mut Namespace {
        if !self.namespaces.contains_key(key_namespace) {
            self.namespaces
                .insert(key_namespace.to_owned(), Namespace::default());
        }
        self.namespaces
            .get_mut(key_namespace)
            .expect("inserted above")
    }

    fn generation(&self, key_namespace: &str) -> u64 {
        self.namespaces
            .get(key_namespace)
            .map_or(0, |ns| ns.generation)
    }

    /// Removes the entry under `key` and its tag-index records.
    fn remove(&mut self, key_namespace: &str, key: &str) -> Option<Stored> {
        let (_, stored) = self.entries.remove(key)?;
        if let Some(ns) = self.namespaces.get_mut(key_namespace) {
            for tag in &*stored.tags {
                if let Some(keys) = ns.tags.get_mut(tag.as_str()) {
                    if keys.remove(key) {
                        self.tag_records -= 1;
                    }
                    if keys.is_empty() {
                        ns.tags.remove(tag.as_str());
                    }
                }
            }
        }
        Some(stored)
    }

    fn prune_tags_if_large(&mut self) {
        let limit = self
            .prune_floor
            .max(MIN_PRUNE_FLOOR)
            .max(self.entries.len().saturating_mul(2));
        if self.tag_records <= limit {
            return;
        }
        let entries = &self.entries;
        for ns in self.namespaces.values_mut() {
            let generation = ns.generation;
            ns.tags.retain(|tag, keys| {
                keys.retain(|key| {
                    entries.peek(key.as_str()).is_some_and(|stored| {
                        stored.generation == generation && stored.tags.iter().any(|t| t == tag)
                    })
                });
                !keys.is_empty()
            });
        }
        self.tag_records = self
            .namespaces
            .values()
            .flat_map(|ns| ns.tags.values())
            .map(HashSet::len)
            .sum();
        self.prune_floor = self.tag_records.saturating_mul(2);
    }
}

/// An in-process, byte-bounded L2 store with TTLs read from an injected clock.
///
/// It honours the whole [`L2Store`] contract (see the module docs for how), so it serves as the
/// embedded default when no Redis is configured, and as the L2 of tests. Each entry is charged
/// its key, value and tag lengths plus [`L2_ENTRY_OVERHEAD_BYTES`]. A write heavier than 90% of
/// the capacity, or with a zero TTL, succeeds but stores nothing (and removes the previous
/// entry under its key), as if it had been evicted at once.
///
/// [`MemoryL2::set_unavailable`] simulates an outage: every method then fails with
/// [`ErrorKind::L2`].
pub struct MemoryL2 {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    capacity_bytes: u64,
    max_entry_weight: u64,
    unavailable: AtomicBool,
}

impl MemoryL2 {
    /// An empty store of at most `capacity_bytes`, reading time from `clock`.
    pub fn new(capacity_bytes: u64, clock: Arc<dyn Clock>) -> Self {
        let estimated_items = usize::try_from(capacity_bytes / 512)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 24);
        let entries = Cache::with_weighter(estimated_items, capacity_bytes, StoredWeighter);
        Self {
            state: Mutex::new(State {
                entries,
                namespaces: HashMap::new(),
                tag_records: 0,
                prune_floor: 0,
            }),
            clock,
            capacity_bytes,
            max_entry_weight: capacity_bytes / 100 * MAX_ENTRY_SHARE_PERCENT
                + capacity_bytes % 100 * MAX_ENTRY_SHARE_PERCENT / 100,
            unavailable: AtomicBool::new(false),
        }
    }

    /// The process-wide shared instance: 256 MiB on the [`SystemClock`], created on first use.
    ///
    /// It is the embedded default "Redis" that every cache in the process shares when none is
    /// configured, so that two caches in one process see each other's writes.
    pub fn global() -> Arc<MemoryL2> {
        static GLOBAL: OnceLock<Arc<MemoryL2>> = OnceLock::new();
        Arc::clone(
            GLOBAL.get_or_init(|| {
                Arc::new(MemoryL2::new(GLOBAL_CAPACITY_BYTES, Arc::new(SystemClock)))
            }),
        )
    }

    /// Makes every method fail with [`ErrorKind::L2`] while `unavailable` is true, to simulate
    /// an outage. Entries are kept and reappear (unless expired) when it is set back to false.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Entries held, including expired or invalidated ones not yet removed.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged for the entries held; at most [`MemoryL2::capacity_bytes`].
    pub fn bytes(&self) -> u64 {
        self.lock().entries.weight()
    }

    /// The capacity this store was built with.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No method panics between two related updates of the state, so a poisoned lock still
        // guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_available(&self) -> Result<()> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(Error::new(
                ErrorKind::L2,
                "in-process L2 is marked unavailable",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl L2Store for MemoryL2 {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        self.check_available()?;
        let now = self.clock.now();
        let mut state = self.lock();
        let generation = state.generation(key.key_namespace());
        match state.entries.get(key.as_str()) {
            None => return Ok(None),
            Some(stored) if stored.is_live(now, generation) => {
                let ttl_remaining = stored.expires_at.saturating_since(now);
                return Ok(Some(
                    L2Entry::new(stored.bytes.clone(), ttl_remaining)
                        .with_tags(stored.tags.to_vec()),
                ));
            }
            Some(_) => {}
        }
        // Expired or from an older generation: gone for good, so free its bytes now.
        state.remove(key.key_namespace(), key.as_str());
        Ok(None)
    }

    async fn set(&self, write: L2Write) -> Result<bool> {
        self.check_available()?;
        if write.announce.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the in-process L2 cannot publish events; publish them on the bus",
            ));
        }
        let now = self.clock.now();
        let key_namespace = write.key.key_namespace();
        let mut state = self.lock();
        let ns = state.namespace_mut(key_namespace);
        if write
            .fence
            .is_some_and(|fence| fence != ns.key_fence(&write.key))
        {
            return Ok(false);
        }
        let generation = ns.generation;
        let live = |stored: &Stored| stored.is_live(now, generation);
        if write.fence.is_some() && state.entries.peek(write.key.as_str()).is_some_and(live) {
            // A fill never replaces a live entry: that entry is at least as fresh.
            return Ok(false);
        }
        let ns = state.namespace_mut(key_namespace);
        ns.bump_key(&write.key);
        state.remove(key_namespace, write.key.as_str());

        let tag_bytes: usize = write.tags.iter().map(String::len).sum();
        let weight = [write.key.as_str().len(), write.bytes.len(), tag_bytes]
            .into_iter()
            .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
            .fold(L2_ENTRY_OVERHEAD_BYTES, u64::saturating_add);
        if write.ttl.is_zero() || weight > self.max_entry_weight {
            return Ok(true);
        }
        let key = write.key.as_str().to_owned();
        if !write.tags.is_empty() {
            let ns = state.namespace_mut(key_namespace);
            let mut added = 0;
            for tag in &write.tags {
                if ns.tags.entry(tag.clone()).or_default().insert(key.clone()) {
                    added += 1;
                }
            }
            state.tag_records += added;
        }
        let stored = Stored {
            bytes: write.bytes,
            expires_at: now.saturating_add(write.ttl),
            generation,
            tags: write.tags.into_boxed_slice(),
            weight,
        };
        state.entries.insert(key, stored);
        state.prune_tags_if_large();
        Ok(true)
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.check_available()?;
        let now = self.clock.now();
        let mut state = self.lock();
        state.namespace_mut(key.key_namespace()).bump_key(key);
        let generation = state.generation(key.key_namespace());
        let removed = state.remove(key.key_namespace(), key.as_str());
        Ok(removed.is_some_and(|stored| stored.is_live(now, generation)))
    }

    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.check_available()?;
        let mut state = self.lock();
        let ns = state.namespace_mut(key_namespace);
        ns.generation += 1;
        ns.fence += 1;
        Ok(())
    }

    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.check_available()?;
        let now = self.clock.now();
        let mut state = self.lock();
        let ns = state.namespace_mut(key_namespace);
        ns.fence += 1;
        let generation = ns.generation;
        let keys = ns.tags.remove(tag).unwrap_or_default();
        state.tag_records -= keys.len();
        let mut removed = 0;
        for key in keys {
            let tagged = state
                .entries
                .peek(key.as_str())
                .is_some_and(|stored| stored.tags.iter().any(|t| t == tag));
            if !tagged {
                continue;
            }
            if let Some(stored) = state.remove(key_namespace, &key) {
                // Entries already expired or invalidated were invisible; they are not counted.
                if stored.is_live(now, generation) {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        self.check_available()?;
        let state = self.lock();
        Ok(state
            .namespaces
            .get(key.key_namespace())
            .map_or(Fence(0), |ns| ns.key_fence(key)))
    }

    async fn ping(&self) -> Result<()> {
        self.check_available()
    }
}

impl fmt::Debug for MemoryL2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryL2")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("clock", &self.clock)
            .field("unavailable", &self.unavailable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
