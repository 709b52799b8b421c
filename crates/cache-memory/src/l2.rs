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
//!
//! # Sequenced events
//!
//! A store built with [`MemoryL2::announce_on`] does in process what the Redis store's scripts
//! do (`INCR` a namespace's sequence, `XADD` the event to its stream, `PUBLISH` it): each change
//! made with an announcement is given the next sequence number of every key namespace it
//! touches, its event is appended to those namespaces' bounded logs with the positions spliced
//! in ([`cache_core::log::splice_positions`]) and published on the bus, all under the one
//! lock. Publishes therefore leave in sequence order, and no reader of the store or the log can
//! see the change without its log entry or the reverse.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cache_core::log::{splice_positions, LogPosition, LogRead};
use cache_core::{
    CacheKey, Clock, Error, ErrorKind, Fence, L2Entry, L2Store, L2Write, Lease, LeaseWait, Logged,
    LoggedChange, Result, Timestamp,
};
use quick_cache::unsync::Cache;
use quick_cache::Weighter;

use crate::bus::MemoryBus;
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

/// Entries each namespace's event log keeps unless [`MemoryL2::log_capacity`] says otherwise.
pub const DEFAULT_LOG_CAPACITY: usize = 10_000;

/// A log epoch never handed out before in this process: every store, and every restart of one,
/// starts its namespaces' logs in epochs no receiver has seen. Starts at 1, so never
/// [`cache_core::log::NO_EPOCH`].
fn fresh_epoch() -> u64 {
    static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

/// One namespace's event log: the events announced with its changes, by sequence number.
#[derive(Clone)]
struct Log {
    epoch: u64,
    /// The last sequence number given out in `epoch`.
    head: u64,
    /// The newest entries, oldest first, their numbers contiguous and ending at `head`. One
    /// event touching several namespaces shares its bytes between their logs.
    entries: VecDeque<(u64, Arc<[u8]>)>,
}

impl Log {
    fn start() -> Self {
        Self {
            epoch: fresh_epoch(),
            head: 0,
            entries: VecDeque::new(),
        }
    }

    /// The oldest number held, or `head + 1` when none is.
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.head + 1, |(seq, _)| *seq)
    }

    /// Drops the oldest entries until at most `keep` remain.
    fn trim(&mut self, keep: usize) {
        let excess = self.entries.len().saturating_sub(keep);
        self.entries.drain(..excess);
    }

    fn read(&self, after: u64, limit: usize) -> LogRead {
        let start = self.entries.partition_point(|(seq, _)| *seq <= after);
        let entries = self
            .entries
            .range(start..)
            .take(limit)
            .map(|(seq, bytes)| (*seq, bytes.to_vec()))
            .collect();
        LogRead::new(self.epoch, self.head, self.first(), entries)
    }
}

/// One stored entry.
#[derive(Clone)]
struct Stored {
    bytes: Vec<u8>,
    expires_at: Timestamp,
    /// The namespace generation current when the entry was written.
    generation: u64,
    tags: Box<[String]>,
    weight: u64,
    /// This write's number in the store (see [`L2Entry::version`]).
    version: u64,
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
#[derive(Default, Clone)]
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
    /// The event log, from the namespace's first sequenced change on.
    log: Option<Log>,
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
    /// Writes made, numbering each entry's version.
    writes: u64,
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

    /// Makes the write; whether it was made (false only for a fill that must write nothing).
    fn set(&mut self, write: L2Write, now: Timestamp, max_entry_weight: u64) -> bool {
        let key_namespace = write.key.key_namespace();
        let ns = self.namespace_mut(key_namespace);
        if write
            .fence
            .is_some_and(|fence| fence != ns.key_fence(&write.key))
        {
            return false;
        }
        let generation = ns.generation;
        let live = |stored: &Stored| stored.is_live(now, generation);
        if write.fence.is_some()
            && self
                .entries
                .peek(write.key.as_str())
                .is_some_and(|stored| live(stored) && write.replaces != Some(stored.version))
        {
            // A fill never replaces a live entry (that entry is at least as fresh), save the
            // one a refresh refreshes.
            return false;
        }
        let ns = self.namespace_mut(key_namespace);
        ns.bump_key(&write.key);
        self.remove(key_namespace, write.key.as_str());

        let tag_bytes: usize = write.tags.iter().map(String::len).sum();
        let weight = [write.key.as_str().len(), write.bytes.len(), tag_bytes]
            .into_iter()
            .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
            .fold(L2_ENTRY_OVERHEAD_BYTES, u64::saturating_add);
        if write.ttl.is_zero() || weight > max_entry_weight {
            return true;
        }
        let key = write.key.as_str().to_owned();
        if !write.tags.is_empty() {
            let ns = self.namespace_mut(key_namespace);
            let mut added = 0;
            for tag in &write.tags {
                if ns.tags.entry(tag.clone()).or_default().insert(key.clone()) {
                    added += 1;
                }
            }
            self.tag_records += added;
        }
        let stored = Stored {
            bytes: write.bytes,
            expires_at: now.saturating_add(write.ttl),
            generation,
            tags: write.tags.into_boxed_slice(),
            weight,
            version: self.writes,
        };
        self.writes += 1;
        self.entries.insert(key, stored);
        self.prune_tags_if_large();
        true
    }

    /// Deletes `key`; whether a live entry was there.
    fn delete(&mut self, key: &CacheKey, now: Timestamp) -> bool {
        self.namespace_mut(key.key_namespace()).bump_key(key);
        let generation = self.generation(key.key_namespace());
        let removed = self.remove(key.key_namespace(), key.as_str());
        removed.is_some_and(|stored| stored.is_live(now, generation))
    }

    fn invalidate_namespace(&mut self, key_namespace: &str) {
        let ns = self.namespace_mut(key_namespace);
        ns.generation += 1;
        ns.fence += 1;
    }

    /// Removes the entries of `key_namespace` tagged `tag`; how many were live.
    fn invalidate_tag(&mut self, key_namespace: &str, tag: &str, now: Timestamp) -> u64 {
        let ns = self.namespace_mut(key_namespace);
        ns.fence += 1;
        let generation = ns.generation;
        let keys = ns.tags.remove(tag).unwrap_or_default();
        self.tag_records -= keys.len();
        let mut removed = 0;
        for key in keys {
            let tagged = self
                .entries
                .peek(key.as_str())
                .is_some_and(|stored| stored.tags.iter().any(|t| t == tag));
            if !tagged {
                continue;
            }
            if let Some(stored) = self.remove(key_namespace, &key) {
                // Entries already expired or invalidated were invisible; they are not counted.
                if stored.is_live(now, generation) {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Gives the change just made the next position in each of `key_namespaces`' logs
    /// (starting a log, in a fresh epoch, where there is none) and appends `event` with those
    /// positions spliced in to each, keeping the newest `capacity` entries. Returns the
    /// spliced event, to publish.
    fn sequence(&mut self, key_namespaces: &[&str], event: &[u8], capacity: usize) -> Vec<u8> {
        let positions: Vec<LogPosition> = key_namespaces
            .iter()
            .map(|key_namespace| {
                let log = self
                    .namespace_mut(key_namespace)
                    .log
                    .get_or_insert_with(Log::start);
                log.head += 1;
                LogPosition::new(*key_namespace, log.epoch, log.head)
            })
            .collect();
        let payload = splice_positions(event, &positions);
        let logged: Arc<[u8]> = Arc::from(payload.as_slice());
        for position in &positions {
            // Every log was started above.
            if let Some(log) = self
                .namespaces
                .get_mut(&position.key_namespace)
                .and_then(|ns| ns.log.as_mut())
            {
                log.entries.push_back((position.seq, Arc::clone(&logged)));
                log.trim(capacity);
            }
        }
        payload
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
/// [`ErrorKind::L2`]. [`MemoryL2::restart_empty`] and [`MemoryL2::trim_log`] simulate a Redis
/// that restarted without persistence and a log trimmed past what a receiver missed.
///
/// Built with [`MemoryL2::announce_on`], it also publishes and sequences events the way the
/// Redis store does (see the module docs and [`L2Store::sequenced`]).
pub struct MemoryL2 {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    capacity_bytes: u64,
    max_entry_weight: u64,
    unavailable: AtomicBool,
    /// Where announced changes are published; `None`: announcements are refused.
    bus: Option<Arc<MemoryBus>>,
    /// Entries kept per namespace log.
    log_capacity: usize,
    /// Fill leases, by key.
    leases: crate::lease::Leases,
    /// Failovers to a [`Replica`] so far: [`L2Store::server_epoch`].
    failovers: AtomicU64,
}

/// What a replica of a [`MemoryL2`] holds: a copy of every entry, generation, fence, tag index
/// and event log as of [`MemoryL2::replica`], as a replica that stopped receiving changes then
/// would. [`MemoryL2::fail_over_to`] makes the store that replica.
pub struct Replica {
    entries: Vec<(String, Stored)>,
    namespaces: HashMap<String, Namespace>,
    tag_records: usize,
    prune_floor: usize,
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
                writes: 0,
            }),
            clock,
            capacity_bytes,
            max_entry_weight: capacity_bytes / 100 * MAX_ENTRY_SHARE_PERCENT
                + capacity_bytes % 100 * MAX_ENTRY_SHARE_PERCENT / 100,
            unavailable: AtomicBool::new(false),
            bus: None,
            log_capacity: DEFAULT_LOG_CAPACITY,
            leases: crate::lease::Leases::default(),
            failovers: AtomicU64::new(0),
        }
    }

    /// The same store, publishing on `bus` and sequencing what it publishes: a change made with
    /// an announcement ([`L2Write::announce`], [`L2Store::delete_and_announce`],
    /// [`L2Store::invalidate_tag_and_announce`], [`L2Store::invalidate_namespaces`] with an
    /// event) is made, given the next position in the log of each key namespace it touches (a
    /// write or delete: its key's namespace; a tag invalidation: its namespace; a namespaces
    /// invalidation: each one listed, once, in order), logged with its positions, and published
    /// on `bus`, all in one step. [`L2Store::announce_route`] is then `bus`'s
    /// [`cache_core::EventBus::route`], so a node whose L2 and bus are this store and `bus`
    /// announces through L2, and [`L2Store::sequenced`] is true.
    ///
    /// A namespace's log starts, at sequence number 1 of an epoch never used before in this
    /// process, with its first sequenced change, and keeps the newest
    /// [`MemoryL2::log_capacity`] entries ([`DEFAULT_LOG_CAPACITY`] by default).
    ///
    /// A change that fails (the store is unavailable) or a fill that writes nothing is given
    /// no number and publishes nothing. If the publish fails (see
    /// [`MemoryBus::fail_publishes`]), the change and its log entries stay, since the log is
    /// the durable record that receivers replay, and the call returns the [`ErrorKind::Bus`]
    /// error. The bus's other fault controls apply to these publishes as to any other.
    /// [`L2Store::change_and_log`] makes, sequences and logs a change the same way without
    /// publishing it, for a node whose bus is another one.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// use cache_core::{CacheKey, EventBus, L2Store, L2Write};
    /// use cache_memory::{ManualClock, MemoryBus, MemoryL2};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_core::Result<()> {
    /// let bus = Arc::new(MemoryBus::new());
    /// let l2 = MemoryL2::new(1 << 20, Arc::new(ManualClock::default())).announce_on(bus.clone());
    /// assert_eq!(l2.announce_route(), bus.route());
    ///
    /// let key = CacheKey::derive("gpu_avail", &serde_json::json!({"gpu_id": "g-42"}))?;
    /// let write = L2Write::new(key, b"3".to_vec(), Duration::from_secs(30));
    /// l2.set(write.announce(br#"{"source_node":"a"}"#.to_vec())).await?;
    ///
    /// let log = l2.read_log("gpu_avail", 0, 10).await?;
    /// assert_eq!((log.head, log.first), (1, 1));
    /// let expected = format!(r#"{{"source_node":"a","pos":[["gpu_avail",{},1]]}}"#, log.epoch);
    /// assert_eq!(log.entries, vec![(1, expected.into_bytes())]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn announce_on(mut self, bus: Arc<MemoryBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The same store, keeping the newest `entries` entries of each namespace's event log
    /// (older ones are trimmed as new ones are appended). Zero keeps none: every receiver that
    /// misses an event must then drop its L1 rather than replay. Only matters with
    /// [`MemoryL2::announce_on`].
    pub fn log_capacity(mut self, entries: usize) -> Self {
        self.log_capacity = entries;
        self
    }

    /// A copy of what the store holds now: a replica whose link breaks at this moment (see
    /// [`MemoryL2::fail_over_to`]).
    pub fn replica(&self) -> Replica {
        let state = self.lock();
        Replica {
            entries: state
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            namespaces: state.namespaces.clone(),
            tag_records: state.tag_records,
            prune_floor: state.prune_floor,
        }
    }

    /// Fails over to `replica`, as a promoted replica whose link broke when the copy was taken:
    /// every change made since is lost (entries, generations, fences, tag indexes and the end
    /// of each event log, whose next numbers then repeat ones already given out), and
    /// [`L2Store::server_epoch`] moves, as `RedisL2`'s does when it follows a new primary.
    /// Write numbers ([`L2Entry::version`]) keep counting up, and the configuration is kept.
    pub fn fail_over_to(&self, replica: Replica) {
        let mut state = self.lock();
        state.entries.clear();
        for (key, stored) in replica.entries {
            state.entries.insert(key, stored);
        }
        state.namespaces = replica.namespaces;
        state.tag_records = replica.tag_records;
        state.prune_floor = replica.prune_floor;
        drop(state);
        self.failovers.fetch_add(1, Ordering::SeqCst);
    }

    /// Loses everything, as a Redis restarted without persistence does: every entry, and every
    /// namespace's generation, fence, tag index and event log. The store then behaves as a
    /// fresh one: generations and fences start again from where a new store's do (so a fence
    /// taken before the restart may match again, as it may against a restarted Redis), and the
    /// next sequenced change of each namespace starts a new epoch at sequence number 1. The
    /// configuration (capacity, bus, log capacity, availability) is kept.
    pub fn restart_empty(&self) {
        let mut state = self.lock();
        state.entries.clear();
        state.namespaces.clear();
        state.tag_records = 0;
        state.prune_floor = 0;
    }

    /// Drops all but the newest `keep` entries of `key_namespace`'s event log, as a log trimmed
    /// past what a receiver missed during a long outage would be: [`LogRead::first`] moves up,
    /// the head and epoch stay. Nothing happens to a namespace without a log.
    pub fn trim_log(&self, key_namespace: &str, keep: usize) {
        if let Some(log) = self
            .lock()
            .namespaces
            .get_mut(key_namespace)
            .and_then(|ns| ns.log.as_mut())
        {
            log.trim(keep);
        }
    }

    /// The process-wide shared instance: 256 MiB on the [`SystemClock`], created on first use.
    ///
    /// It is the embedded default "Redis" that every cache in the process shares when none is
    /// configured, so that two caches in one process see each other's writes. Like Redis, it
    /// announces on the process-wide bus ([`MemoryBus::global`]) and keeps event logs
    /// ([`MemoryL2::announce_on`]), so nodes on the embedded defaults replay what they miss.
    pub fn global() -> Arc<MemoryL2> {
        static GLOBAL: OnceLock<Arc<MemoryL2>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(|| {
            Arc::new(
                MemoryL2::new(GLOBAL_CAPACITY_BYTES, Arc::new(SystemClock))
                    .announce_on(MemoryBus::global()),
            )
        }))
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

    /// The bus to publish `event` on, once it is checked that the change may be announced:
    /// called before anything is changed.
    fn announcer(&self, event: &[u8]) -> Result<&MemoryBus> {
        let Some(bus) = self.bus.as_deref() else {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the in-process L2 cannot publish events; publish them on the bus \
                 (or build it with MemoryL2::announce_on)",
            ));
        };
        if !event.ends_with(b"}") {
            // Positions go before the closing brace; an event without one cannot be sequenced.
            return Err(Error::new(
                ErrorKind::MalformedEvent,
                "an event to announce must be an encoded event ending in '}'",
            ));
        }
        Ok(bus)
    }

    /// Sequences the change just made under `state` in `key_namespaces`' logs and publishes
    /// `event` with its positions, still under the lock, so publishes follow sequence order.
    fn announce(
        &self,
        state: &mut State,
        bus: &MemoryBus,
        key_namespaces: &[&str],
        event: &[u8],
    ) -> Result<()> {
        let payload = state.sequence(key_namespaces, event, self.log_capacity);
        bus.publish_now(payload)
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
                        .with_tags(stored.tags.to_vec())
                        .with_version(stored.version),
                ));
            }
            Some(_) => {}
        }
        // Expired or from an older generation: gone for good, so free its bytes now.
        state.remove(key.key_namespace(), key.as_str());
        Ok(None)
    }

    async fn set(&self, mut write: L2Write) -> Result<bool> {
        self.check_available()?;
        let announce = write.announce.take();
        let bus = announce.as_deref().map(|e| self.announcer(e)).transpose()?;
        let now = self.clock.now();
        let mut state = self.lock();
        let key_namespace = write.key.key_namespace().to_owned();
        if !state.set(write, now, self.max_entry_weight) {
            return Ok(false);
        }
        if let (Some(bus), Some(event)) = (bus, announce) {
            self.announce(&mut state, bus, &[&key_namespace], &event)?;
        }
        Ok(true)
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.check_available()?;
        let now = self.clock.now();
        Ok(self.lock().delete(key, now))
    }

    /// # Errors
    /// [`ErrorKind::InvalidConfig`] without [`MemoryL2::announce_on`]; otherwise as
    /// [`L2Store::delete`], and [`ErrorKind::Bus`] when the delete was made and logged but
    /// publishing failed.
    async fn delete_and_announce(&self, key: &CacheKey, announce: Vec<u8>) -> Result<bool> {
        self.check_available()?;
        let bus = self.announcer(&announce)?;
        let now = self.clock.now();
        let mut state = self.lock();
        let removed = state.delete(key, now);
        self.announce(&mut state, bus, &[key.key_namespace()], &announce)?;
        Ok(removed)
    }

    /// # Errors
    /// As [`L2Store::delete_and_announce`].
    async fn delete_many(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        self.check_available()?;
        if keys
            .iter()
            .any(|k| Some(k.key_namespace()) != keys.first().map(CacheKey::key_namespace))
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "keys removed in one step must share a namespace",
            ));
        }
        let bus = announce.as_deref().map(|e| self.announcer(e)).transpose()?;
        let now = self.clock.now();
        let mut state = self.lock();
        let removed = keys
            .iter()
            .map(|key| u64::from(state.delete(key, now)))
            .sum();
        if let (Some(bus), Some(announce), Some(first)) = (bus, &announce, keys.first()) {
            self.announce(&mut state, bus, &[first.key_namespace()], announce)?;
        }
        Ok(removed)
    }

    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.check_available()?;
        self.lock().invalidate_namespace(key_namespace);
        Ok(())
    }

    /// All of `key_namespaces` in one step. With `announce`, a namespace listed twice is
    /// invalidated and sequenced once, and an event that names no namespace is published as
    /// given, without positions.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] if `announce` is given without [`MemoryL2::announce_on`];
    /// otherwise as [`L2Store::invalidate_namespace`], and [`ErrorKind::Bus`] when the
    /// namespaces were invalidated and the event logged but publishing failed.
    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> Result<()> {
        self.check_available()?;
        let bus = announce.as_deref().map(|e| self.announcer(e)).transpose()?;
        let mut touched: Vec<&str> = Vec::with_capacity(key_namespaces.len());
        for key_namespace in key_namespaces {
            if !touched.contains(&key_namespace.as_str()) {
                touched.push(key_namespace);
            }
        }
        let mut state = self.lock();
        for key_namespace in &touched {
            state.invalidate_namespace(key_namespace);
        }
        if let (Some(bus), Some(event)) = (bus, announce) {
            self.announce(&mut state, bus, &touched, &event)?;
        }
        Ok(())
    }

    /// # Errors
    /// [`ErrorKind::InvalidConfig`] without [`MemoryL2::announce_on`]; otherwise as
    /// [`L2Store::invalidate_tag`], and [`ErrorKind::Bus`] when the tag was invalidated and
    /// the event logged but publishing failed.
    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> Result<u64> {
        self.check_available()?;
        let bus = self.announcer(&announce)?;
        let now = self.clock.now();
        let mut state = self.lock();
        let removed = state.invalidate_tag(key_namespace, tag, now);
        self.announce(&mut state, bus, &[key_namespace], &announce)?;
        Ok(removed)
    }

    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.check_available()?;
        let now = self.clock.now();
        Ok(self.lock().invalidate_tag(key_namespace, tag, now))
    }

    fn announce_route(&self) -> Option<String> {
        self.bus.as_ref().map(|bus| bus.route_id())
    }

    fn server_epoch(&self) -> u64 {
        self.failovers.load(Ordering::SeqCst)
    }

    fn sequenced(&self) -> bool {
        self.bus.is_some()
    }

    /// # Errors
    /// [`ErrorKind::InvalidConfig`] without [`MemoryL2::announce_on`]; [`ErrorKind::L2`] while
    /// the store is unavailable.
    async fn read_log(&self, key_namespace: &str, after: u64, limit: usize) -> Result<LogRead> {
        if self.bus.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "this L2 store keeps no event log (build it with MemoryL2::announce_on)",
            ));
        }
        self.check_available()?;
        // Reading a log gives it an epoch even before its first change, so the empty log a
        // restart leaves is another epoch than the empty log a node read before it.
        let mut state = self.lock();
        Ok(state
            .namespace_mut(key_namespace)
            .log
            .get_or_insert_with(Log::start)
            .read(after, limit))
    }

    /// The change, its positions and its log entries under the one lock, as an announced
    /// change of [`MemoryL2::announce_on`] makes them, without the publish.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] without [`MemoryL2::announce_on`];
    /// [`ErrorKind::MalformedEvent`] for an event not ending in `}`; [`ErrorKind::L2`] while
    /// the store is unavailable.
    async fn change_and_log(&self, change: LoggedChange, event: Vec<u8>) -> Result<Logged> {
        self.check_available()?;
        self.announcer(&event)?;
        let now = self.clock.now();
        let mut state = self.lock();
        let capacity = self.log_capacity;
        let logged = match change {
            LoggedChange::Set(mut write) => {
                write.announce = None;
                let key_namespace = write.key.key_namespace().to_owned();
                if !state.set(write, now, self.max_entry_weight) {
                    return Ok(Logged::new(0, None));
                }
                Logged::new(1, Some(state.sequence(&[&key_namespace], &event, capacity)))
            }
            LoggedChange::Delete(key) => {
                let removed = state.delete(&key, now);
                let message = state.sequence(&[key.key_namespace()], &event, capacity);
                Logged::new(u64::from(removed), Some(message))
            }
            LoggedChange::DeleteMany(keys) => {
                let removed = keys
                    .iter()
                    .map(|key| u64::from(state.delete(key, now)))
                    .sum();
                let namespaces: Vec<&str> = keys
                    .first()
                    .map(CacheKey::key_namespace)
                    .into_iter()
                    .collect();
                let message = state.sequence(&namespaces, &event, capacity);
                Logged::new(removed, Some(message))
            }
            LoggedChange::InvalidateTag { key_namespace, tag } => {
                let removed = state.invalidate_tag(&key_namespace, &tag, now);
                let message = state.sequence(&[&key_namespace], &event, capacity);
                Logged::new(removed, Some(message))
            }
            LoggedChange::InvalidateNamespaces(key_namespaces) => {
                let mut touched: Vec<&str> = Vec::with_capacity(key_namespaces.len());
                for key_namespace in &key_namespaces {
                    if !touched.contains(&key_namespace.as_str()) {
                        touched.push(key_namespace);
                    }
                }
                for key_namespace in &touched {
                    state.invalidate_namespace(key_namespace);
                }
                let message = state.sequence(&touched, &event, capacity);
                Logged::new(
                    u64::try_from(touched.len()).unwrap_or(u64::MAX),
                    Some(message),
                )
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("the in-process L2 cannot log {other:?}"),
                ))
            }
        };
        Ok(logged)
    }

    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        self.check_available()?;
        let state = self.lock();
        Ok(state
            .namespaces
            .get(key.key_namespace())
            .map_or(Fence(0), |ns| ns.key_fence(key)))
    }

    async fn lease(&self, key: &CacheKey, token: &str, hold: Duration) -> Result<Lease> {
        self.check_available()?;
        Ok(self.leases.lease(key.as_str(), token, hold))
    }

    async fn wait_lease(&self, key: &CacheKey, wait: &LeaseWait) -> Result<bool> {
        self.check_available()?;
        Ok(self.leases.wait(key.as_str(), wait).await)
    }

    async fn release_lease(&self, key: &CacheKey, token: &str) -> Result<()> {
        self.check_available()?;
        self.leases.release(key.as_str(), token);
        Ok(())
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
            .field("announce_route", &self.announce_route())
            .field("log_capacity", &self.log_capacity)
            .finish_non_exhaustive()
    }
}
