//! [`MemoryL1`]: the in-process L1 store of one namespace, and [`MemoryL1Factory`].
//!
//! # Engine
//!
//! Entries live in a [`quick_cache::sync::Cache`]. It was chosen over moka because its hit path
//! is what L1 needs: a lookup takes one shard's `RwLock` for reading (readers never serialise
//! behind each other), bumps an atomic reference counter and clones the value, with no
//! allocation and no queue of pending bookkeeping. Its policy is S3-FIFO-like (hot, cold and
//! ghost queues) with O(1) amortised eviction, and it takes a weigher, so the namespace's byte
//! budget is enforced directly. moka's `get` records every access in buffers drained later and
//! its per-entry overhead is larger; its features beyond that (per-entry expiry, async loaders,
//! eviction listeners) are not needed here because expiry is checked against the caller's
//! clock and loading is done a layer up.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cache_core::{
    Digest, L1Entry, L1Factory, L1Store, L1Usage, NamespaceConfig, SharedValue, Timestamp,
};
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

/// Bytes charged for each entry on top of its `size_bytes`.
///
/// An estimate, on a 64-bit target, of what an entry costs besides its value: the 32-byte
/// digest key and the cache's slot and hash-table bucket (~80 bytes), the shared slot holding
/// the value pointer, expiry, weight and tag list (~64 bytes), the value's own `Arc` header
/// (16 bytes), and one or two short tags with their tag-index records (~96 bytes). Charging it
/// keeps a namespace of many tiny values from exceeding its budget in real memory.
pub const ENTRY_OVERHEAD_BYTES: u64 = 256;

/// A shard is never given less than this share of the budget (unless the whole budget is
/// smaller), so a single large entry still fits in its shard.
const MIN_SHARD_BYTES: u64 = 4 * 1024 * 1024;

/// The largest entry admitted, as a fraction of one shard's share of the budget. quick_cache
/// declines entries heavier than its hot-queue target (97% of a shard by default); checking a
/// lower bound here makes admission predictable and independent of that detail.
const MAX_ENTRY_SHARE_PERCENT: u64 = 90;

/// What the cache holds per digest. quick_cache clones the value on every hit, so it is kept
/// to one reference count to bump: the value's own `Arc`, plus plain words, plus the tag list
/// only for the (rarer) tagged entries.
#[derive(Clone)]
struct Slot {
    value: SharedValue,
    expires_at: Timestamp,
    /// What the entry is charged against the budget; fixed at insertion.
    weight: u64,
    /// The tags the entry was inserted with, so a tag invalidation removes this entry only if it
    /// still carries the tag (a later insert under the same digest may not).
    tags: Option<Arc<[String]>>,
}

impl Slot {
    fn has_tag(&self, tag: &str) -> bool {
        self.tags
            .as_deref()
            .is_some_and(|tags| tags.iter().any(|t| t == tag))
    }

    /// Whether `other` is this very entry (same value allocation and expiry), not one
    /// inserted since under the same digest.
    fn same_entry(&self, other: &Slot) -> bool {
        Arc::ptr_eq(&self.value, &other.value) && self.expires_at == other.expires_at
    }
}

#[derive(Clone, Copy)]
struct SlotWeighter;

impl Weighter<Digest, Slot> for SlotWeighter {
    fn weight(&self, _digest: &Digest, slot: &Slot) -> u64 {
        slot.weight
    }
}

type Entries =
    Cache<Digest, Slot, SlotWeighter, DefaultHashBuilder, DefaultLifecycle<Digest, Slot>>;

/// Which digests were inserted with which tag. Touched on the write path only.
///
/// It may name digests that have since been removed, evicted or re-inserted without the tag;
/// [`MemoryL1::invalidate_tag`] checks the slot's own tags, and [`TagIndex::prune`] drops such
/// records once they outnumber live ones, so the index stays proportional to the cache.
#[derive(Default)]
struct TagIndex {
    by_tag: HashMap<String, HashSet<Digest>>,
    /// Number of (tag, digest) records in `by_tag`.
    records: usize,
    /// No pruning below this many records; doubled from the live count after each prune, so
    /// pruning costs O(1) amortised per insert.
    prune_floor: usize,
}

/// Records below which the tag index is never pruned.
const MIN_PRUNE_FLOOR: usize = 1024;

impl TagIndex {
    fn add(&mut self, digest: Digest, tags: &[String]) {
        for tag in tags {
            let added = match self.by_tag.get_mut(tag.as_str()) {
                Some(digests) => digests.insert(digest),
                None => {
                    self.by_tag.insert(tag.clone(), HashSet::from([digest]));
                    true
                }
            };
            if added {
                self.records += 1;
            }
        }
    }

    fn take(&mut self, tag: &str) -> HashSet<Digest> {
        let digests = self.by_tag.remove(tag).unwrap_or_default();
        self.records -= digests.len();
        digests
    }

    fn prune_if_large(&mut self, entries: &Entries) {
        let limit = self
            .prune_floor
            .max(MIN_PRUNE_FLOOR)
            .max(entries.len().saturating_mul(2));
        if self.records > limit {
            self.prune(entries);
        }
    }

    /// Drops every record whose digest no longer holds an entry carrying the tag.
    fn prune(&mut self, entries: &Entries) {
        self.by_tag.retain(|tag, digests| {
            // `peek` leaves the entries' hotness alone: pruning is not an access.
            digests.retain(|d| entries.peek(d).is_some_and(|slot| slot.has_tag(tag)));
            !digests.is_empty()
        });
        self.records = self.by_tag.values().map(HashSet::len).sum();
        self.prune_floor = self.records.saturating_mul(2);
    }
}

/// A concurrent, byte-bounded L1 store on [`quick_cache`] (see the module docs for why).
///
/// Each entry is charged `size_bytes + ENTRY_OVERHEAD_BYTES`; the sum stays within the capacity.
/// An entry heavier than [`MemoryL1::max_entry_bytes`] (plus the overhead) is not stored, and
/// inserting one removes whatever the digest held before, so a stale value is never left behind.
///
/// ```
/// use std::sync::Arc;
/// use cache_core::{Digest, L1Entry, L1Store, Timestamp};
/// use cache_memory::MemoryL1;
///
/// let l1 = MemoryL1::new(1 << 20);
/// let value = Arc::new(42_u32);
/// let expires = Timestamp::from_nanos(2_000);
/// l1.insert(Digest([7; 32]), L1Entry::new(value, expires, 4), &["gpu:g-42".to_owned()]);
/// let hit = l1.get(&Digest([7; 32]), Timestamp::from_nanos(1_000)).unwrap();
/// assert_eq!(hit.downcast_ref::<u32>(), Some(&42));
/// assert!(l1.get(&Digest([7; 32]), expires).is_none(), "expired at its deadline");
/// ```
pub struct MemoryL1 {
    entries: Entries,
    tags: Mutex<TagIndex>,
    capacity_bytes: u64,
    max_entry_weight: u64,
}

impl MemoryL1 {
    /// An empty store holding at most `capacity_bytes`, overhead included.
    pub fn new(capacity_bytes: u64) -> Self {
        let shards = shard_count(capacity_bytes);
        let shard_bytes = capacity_bytes / shards;
        let estimated_items = usize::try_from(capacity_bytes / 256)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 24)
            // quick_cache halves the shard count while shards would hold < 32 items; keep ours.
            .max(32 * usize::try_from(shards).unwrap_or(1));
        let options = OptionsBuilder::new()
            .shards(usize::try_from(shards).unwrap_or(1))
            .estimated_items_capacity(estimated_items)
            // A whole multiple of the shard count, so the shards' capacities sum to at most the
            // budget (quick_cache rounds each shard's share up).
            .weight_capacity(shard_bytes * shards)
            .build()
            .expect("both required options are set");
        let entries = Cache::with_options(
            options,
            SlotWeighter,
            DefaultHashBuilder::default(),
            DefaultLifecycle::default(),
        );
        Self {
            entries,
            tags: Mutex::new(TagIndex::default()),
            capacity_bytes,
            max_entry_weight: shard_bytes / 100 * MAX_ENTRY_SHARE_PERCENT
                + shard_bytes % 100 * MAX_ENTRY_SHARE_PERCENT / 100,
        }
    }

    /// The budget this store was built with.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The largest `size_bytes` an entry may have and still be stored.
    ///
    /// The budget is split across shards (one per 4 MiB of budget, at most four per core), and
    /// an entry must fit in 90% of its shard; with a budget of 4 MiB or less there is one shard.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_weight.saturating_sub(ENTRY_OVERHEAD_BYTES)
    }

    fn tag_index(&self) -> MutexGuard<'_, TagIndex> {
        // The index is only a hint checked against the slots, so one left by a panicking thread
        // is still safe to use.
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A power of two: up to four shards per core (quick_cache's default), but no more than leave
/// each shard [`MIN_SHARD_BYTES`].
fn shard_count(capacity_bytes: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let by_cores = u64::try_from(cores.saturating_mul(4))
        .unwrap_or(u64::MAX)
        .next_power_of_two();
    let by_size = (capacity_bytes / MIN_SHARD_BYTES).max(1);
    let by_size = 1_u64 << (63 - by_size.leading_zeros());
    by_cores.min(by_size).max(1)
}

impl L1Store for MemoryL1 {
    fn get(&self, digest: &Digest, now: Timestamp) -> Option<SharedValue> {
        let slot = self.entries.get(digest)?;
        if slot.expires_at > now {
            return Some(slot.value);
        }
        // Remove only the slot found expired, not one inserted since by another thread.
        self.entries
            .remove_if(digest, |current| current.same_entry(&slot));
        None
    }

    fn insert(&self, digest: Digest, entry: L1Entry, tags: &[String]) {
        let weight = entry.size_bytes.saturating_add(ENTRY_OVERHEAD_BYTES);
        if weight > self.max_entry_weight {
            self.entries.remove(&digest);
            return;
        }
        let slot = Slot {
            value: entry.value,
            expires_at: entry.expires_at,
            weight,
            tags: (!tags.is_empty()).then(|| tags.into()),
        };
        self.entries.insert(digest, slot);
        if !tags.is_empty() {
            let mut index = self.tag_index();
            index.add(digest, tags);
            index.prune_if_large(&self.entries);
        }
    }

    fn remove(&self, digest: &Digest) -> bool {
        // The tag index may keep naming the digest until it is pruned; that is harmless.
        self.entries.remove(digest).is_some()
    }

    fn invalidate_tag(&self, tag: &str) -> u64 {
        let digests = self.tag_index().take(tag);
        let mut removed = 0;
        for digest in digests {
            if self
                .entries
                .remove_if(&digest, |slot| slot.has_tag(tag))
                .is_some()
            {
                removed += 1;
            }
        }
        removed
    }

    fn clear(&self) -> u64 {
        let removed = self.entries.drain().count();
        *self.tag_index() = TagIndex::default();
        u64::try_from(removed).unwrap_or(u64::MAX)
    }

    fn usage(&self) -> L1Usage {
        L1Usage::new(
            u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
            self.entries.weight(),
            self.capacity_bytes,
        )
    }
}

impl fmt::Debug for MemoryL1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryL1")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .field("shards", &self.entries.num_shards())
            .finish_non_exhaustive()
    }
}

/// Builds a [`MemoryL1`] per namespace, with the namespace's `max_memory_bytes` as its budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryL1Factory;

impl L1Factory for MemoryL1Factory {
    fn build(&self, config: &NamespaceConfig) -> Box<dyn L1Store> {
        Box::new(MemoryL1::new(config.max_memory_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_leave_room_for_large_entries() {
        assert_eq!(shard_count(0), 1);
        assert_eq!(shard_count(MIN_SHARD_BYTES - 1), 1);
        assert!(shard_count(1 << 30) <= (1 << 30) / MIN_SHARD_BYTES);
        let l1 = MemoryL1::new(1 << 20);
        assert_eq!(l1.entries.num_shards(), 1);
        assert_eq!(
            l1.max_entry_bytes(),
            (1 << 20) * 9 / 10 - ENTRY_OVERHEAD_BYTES
        );
    }

    #[test]
    fn an_entry_of_the_maximum_size_is_admitted_by_quick_cache() {
        for capacity in [1 << 20, 64 << 20, 500 << 20] {
            let l1 = MemoryL1::new(capacity);
            let max = l1.max_entry_bytes();
            let now = Timestamp::ZERO;
            let later = Timestamp::from_nanos(1);
            l1.insert(Digest([1; 32]), L1Entry::new(Arc::new(()), later, max), &[]);
            assert!(
                l1.get(&Digest([1; 32]), now).is_some(),
                "capacity {capacity}"
            );
            l1.insert(
                Digest([2; 32]),
                L1Entry::new(Arc::new(()), later, max + 1),
                &[],
            );
            assert!(
                l1.get(&Digest([2; 32]), now).is_none(),
                "capacity {capacity}"
            );
        }
    }

    #[test]
    fn tag_index_is_pruned_to_live_records() {
        let l1 = MemoryL1::new(64 * 1024);
        let later = Timestamp::from_nanos(1);
        // Far more tagged inserts than fit: most entries are evicted, their records go stale.
        for i in 0..10_000_u32 {
            let mut d = [0; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            l1.insert(
                Digest(d),
                L1Entry::new(Arc::new(()), later, 100),
                &[format!("t{i}")],
            );
        }
        let index = l1.tag_index();
        assert!(
            index.records <= MIN_PRUNE_FLOOR.max(2 * l1.entries.len()) + 1,
            "{} records for {} entries",
            index.records,
            l1.entries.len()
        );
    }
}
