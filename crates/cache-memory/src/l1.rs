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

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cache_core::{
    Digest, L1Entry, L1Factory, L1Store, L1Usage, NamespaceConfig, SharedValue, Timestamp,
};
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

/// Bytes charged for each entry on top of its `size_bytes`.
///
/// What an entry really costs besides its value, on a 64-bit target, once the store is full and
/// evicting: quick_cache's slab entry holding the 32-byte digest, the 32-byte slot and the list
/// links (80 bytes) and its hash-table bucket (5 bytes, 6 to 11 at the table's load); a share of
/// the ghosts (remembered evicted keys), which take slab entries and buckets of their own (one
/// per KiB of budget: about 45 bytes per entry of a few hundred bytes); the slack of a slab and
/// a table that grow by doubling; and the value's own `Arc` header (16 bytes). Measured
/// with a counting allocator under churn (ten budgets' worth of distinct entries of ~250 bytes,
/// charged their encoded length), that came to 190 to 240 bytes per entry, the spread being
/// where the entry count falls between two powers of two, and the heap held stayed within
/// 0.92 to 1.02 times budgets of 8 and 100 MiB. Charging it keeps a namespace of many tiny
/// values from exceeding its budget in real memory.
///
/// Tags are charged apart: [`TAG_OVERHEAD_BYTES`] plus the tag's length for each, and
/// [`NEW_TAG_OVERHEAD_BYTES`] more for a tag not indexed yet.
pub const ENTRY_OVERHEAD_BYTES: u64 = 224;

/// Bytes charged for each tag of an entry, on top of the tag's length.
///
/// What a (tag, entry) record costs in the tag index: 40 bytes in its tag's vector, with the
/// vector's growth slack and the stale records kept until the next prune (which runs once
/// records outnumber live entries three to two). Measured with a counting allocator under
/// churn, one tag per entry shared by 100 entries: about 65 bytes per entry, tag text included;
/// with this charge the heap held was 8% under an 8 MiB budget (`cargo xtask bench`, row 7).
pub const TAG_OVERHEAD_BYTES: u64 = 48;

/// Bytes charged on top of [`TAG_OVERHEAD_BYTES`] for a tag the index does not hold yet: its
/// map bucket, its own vector and its text, and the stale ones kept until the next prune. A
/// tag naming a single entry (`gpu:g-42`), the common case, costs 190 to 250 bytes per entry
/// in all, depending on where the map's growth stands; with this charge the heap held was 0%
/// and 8% under budgets of 8 and 100 MiB (`cargo xtask bench`, row 7, one tag per entry, its
/// own).
pub const NEW_TAG_OVERHEAD_BYTES: u64 = 150;

/// A shard is never given less than this share of the budget (unless the whole budget is
/// smaller), so a single large entry still fits in its shard.
const MIN_SHARD_BYTES: u64 = 4 * 1024 * 1024;

/// Ghosts (hashes of recently evicted keys, so that a key coming back is admitted as hot) that
/// quick_cache keeps per shard, as a fraction of the item count it is told to expect.
///
/// A ghost is not charged against the budget, yet takes a whole slab entry and a table bucket
/// (~90 bytes). The expected count is [`ITEM_ESTIMATE_BYTES`] per item, far more items than fit
/// once values have any size, so quick_cache's default of 0.5 kept about a ghost per resident
/// entry of ~500 bytes, which at 8 MiB pushed each shard's slab and table past the next power of
/// two once evictions started: the heap held reached 1.32 times the budget. 0.25 keeps one ghost
/// per KiB of budget (~9% of it in real memory, which [`ENTRY_OVERHEAD_BYTES`] accounts for at
/// typical sizes): about one per two resident entries of ~500 bytes, quick_cache's default ratio
/// if its estimate were exact. Stores of large values (several KiB), whose overhead charge is too
/// small to cover the ghosts, still hold 5% to 15% more than their budget.
const GHOST_ALLOCATION: f64 = 0.25;

/// The budget per item quick_cache is told to expect: about the least an entry is charged, so
/// roughly the most entries a budget can hold. quick_cache reserves nothing up front; the
/// estimate only sizes the ghost list ([`GHOST_ALLOCATION`] of it).
const ITEM_ESTIMATE_BYTES: u64 = 256;

/// The largest entry admitted, as a fraction of one shard's share of the budget. quick_cache
/// declines entries heavier than its hot-queue target (97% of a shard by default); checking a
/// lower bound here makes admission predictable and independent of that detail.
const MAX_ENTRY_SHARE_PERCENT: u64 = 90;

/// What the cache holds per digest: 32 bytes, so that quick_cache's per-hit clone is one
/// reference count bump plus three plain words, and its slab entries stay small (which matters
/// under random access over many keys). Tag membership lives in the [`TagIndex`], keyed by
/// [`Slot::seq`], not here.
#[derive(Clone)]
struct Slot {
    value: SharedValue,
    expires_at: Timestamp,
    /// What the entry is charged against the budget; fixed at insertion. A `u32` because no
    /// admitted entry is heavier (see [`MemoryL1::new`]).
    weight: u32,
    /// Which insertion this is, from [`MemoryL1::seq`]: tells this entry apart from one
    /// inserted since under the same digest.
    seq: u32,
}

// quick_cache clones the slot on every hit and keeps one per slab entry (ghosts included):
// keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Slot>() <= 32);

impl Slot {
    /// Whether `other` is this very entry, not one inserted since under the same digest. The
    /// value pointer backs up the sequence number, which wraps after 2^32 inserts.
    fn same_entry(&self, other: &Slot) -> bool {
        self.seq == other.seq && Arc::ptr_eq(&self.value, &other.value)
    }
}

#[derive(Clone, Copy)]
struct SlotWeighter;

impl Weighter<Digest, Slot> for SlotWeighter {
    fn weight(&self, _digest: &Digest, slot: &Slot) -> u64 {
        u64::from(slot.weight)
    }
}

type Entries =
    Cache<Digest, Slot, SlotWeighter, DefaultHashBuilder, DefaultLifecycle<Digest, Slot>>;

/// Which digests were inserted with which tag, and by which insertion (the slot's
/// [`Slot::seq`]). Touched on the write path only, under [`MemoryL1::tags`].
///
/// Each tag holds a plain vector of records (40 bytes each): most tags name one resource, so
/// most vectors hold one or a few records, where a map per tag cost about 200 bytes even when
/// it held a single one. A vector may name digests that have since been removed, evicted or
/// re-inserted (with or without the tag), and may name a digest twice; [`MemoryL1::invalidate_tag`]
/// removes a digest's entry only if it is still the insertion recorded, and [`TagIndex::prune`]
/// drops records that no longer match once they outnumber live entries, so the index stays
/// proportional to the cache.
#[derive(Default)]
struct TagIndex {
    by_tag: HashMap<Box<str>, Vec<(Digest, u32)>>,
    /// Number of (tag, digest) records in `by_tag`.
    records: usize,
    /// No pruning below this many records; set to 1.5 times the live count after each prune,
    /// so pruning costs O(1) amortised per insert.
    prune_floor: usize,
}

/// Records below which the tag index is never pruned.
const MIN_PRUNE_FLOOR: usize = 1024;

impl TagIndex {
    /// What recording `tags` will cost, charged to the entry: [`TAG_OVERHEAD_BYTES`] and the
    /// tag's length for each, and [`NEW_TAG_OVERHEAD_BYTES`] more for a tag not indexed yet.
    fn charge(&self, tags: &[String]) -> u64 {
        tags.iter().fold(0_u64, |sum, tag| {
            let new = if self.by_tag.contains_key(tag.as_str()) {
                0
            } else {
                NEW_TAG_OVERHEAD_BYTES
            };
            sum.saturating_add(TAG_OVERHEAD_BYTES + new)
                .saturating_add(u64::try_from(tag.len()).unwrap_or(u64::MAX))
        })
    }

    /// Records that insertion `seq` stored `digest` with `tags`.
    fn add(&mut self, digest: Digest, seq: u32, tags: &[String]) {
        for tag in tags {
            match self.by_tag.get_mut(tag.as_str()) {
                Some(records) => records.push((digest, seq)),
                None => {
                    self.by_tag.insert(tag.as_str().into(), vec![(digest, seq)]);
                }
            }
            self.records += 1;
        }
    }

    fn take(&mut self, tag: &str) -> Vec<(Digest, u32)> {
        let records = self.by_tag.remove(tag).unwrap_or_default();
        self.records -= records.len();
        records
    }

    fn prune_if_large(&mut self, entries: &Entries) {
        let limit = self
            .prune_floor
            .max(MIN_PRUNE_FLOOR)
            .max(entries.len().saturating_add(entries.len() / 2));
        if self.records > limit {
            self.prune(entries);
        }
    }

    /// Drops every record whose digest no longer holds the insertion recorded (which also drops
    /// all but the latest of a digest's records under one tag).
    fn prune(&mut self, entries: &Entries) {
        self.by_tag.retain(|_, records| {
            // `peek` leaves the entries' hotness alone: pruning is not an access.
            records.retain(|(d, seq)| entries.peek(d).is_some_and(|slot| slot.seq == *seq));
            records.shrink_to_fit();
            !records.is_empty()
        });
        self.records = self.by_tag.values().map(Vec::len).sum();
        self.prune_floor = self.records.saturating_add(self.records / 2);
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
    /// Held across a tagged insert (the slot and its records), so the records of two inserts
    /// under one digest are made in the order their slots were stored.
    tags: Mutex<TagIndex>,
    /// The next insertion's [`Slot::seq`]; wraps.
    seq: AtomicU32,
    capacity_bytes: u64,
    /// At most `u32::MAX`, so an admitted weight always fits [`Slot::weight`].
    max_entry_weight: u64,
    /// How long past its expiry an entry is kept for fail-safe (0: not at all).
    keep_expired_nanos: u64,
}

impl MemoryL1 {
    /// An empty store holding at most `capacity_bytes`, overhead included.
    pub fn new(capacity_bytes: u64) -> Self {
        let shards = shard_count(capacity_bytes);
        let shard_bytes = capacity_bytes / shards;
        let estimated_items = usize::try_from(capacity_bytes / ITEM_ESTIMATE_BYTES)
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
            .ghost_allocation(GHOST_ALLOCATION)
            .build()
            .expect("both required options are set");
        let entries = Cache::with_options(
            options,
            SlotWeighter,
            DefaultHashBuilder::default(),
            DefaultLifecycle::default(),
        );
        let max_entry_weight = shard_bytes / 100 * MAX_ENTRY_SHARE_PERCENT
            + shard_bytes % 100 * MAX_ENTRY_SHARE_PERCENT / 100;
        Self {
            entries,
            tags: Mutex::new(TagIndex::default()),
            seq: AtomicU32::new(0),
            capacity_bytes,
            max_entry_weight: max_entry_weight.min(u64::from(u32::MAX)),
            keep_expired_nanos: 0,
        }
    }

    /// Keeps each entry for `window` past its expiry, for [`L1Store::get_stale`] (fail-safe);
    /// `get` still treats it as gone at its expiry. Kept entries count against the budget
    /// until they are evicted or the window ends.
    #[must_use]
    pub fn keep_expired_for(mut self, window: std::time::Duration) -> Self {
        self.keep_expired_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The budget this store was built with.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The largest `size_bytes` an entry may have and still be stored.
    ///
    /// The budget is split across shards (one per 4 MiB of budget, at most four per core), and
    /// an entry must fit in 90% of its shard; with a budget of 4 MiB or less there is one shard.
    /// Whatever the budget, an entry's charge (its size plus [`ENTRY_OVERHEAD_BYTES`]) is at most
    /// `u32::MAX` bytes.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_weight.saturating_sub(ENTRY_OVERHEAD_BYTES)
    }

    /// The slot for `entry`, charged its size, [`ENTRY_OVERHEAD_BYTES`] and `tag_bytes`; `None`
    /// if that is more than one entry may weigh.
    fn slot(&self, entry: L1Entry, tag_bytes: u64) -> Option<Slot> {
        let weight = entry
            .size_bytes
            .checked_add(ENTRY_OVERHEAD_BYTES)
            .and_then(|weight| weight.checked_add(tag_bytes))
            .filter(|&weight| weight <= self.max_entry_weight)
            .and_then(|weight| u32::try_from(weight).ok())?;
        Some(Slot {
            value: entry.value,
            expires_at: entry.expires_at,
            weight,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        })
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
        if self.keep_expired_nanos == 0
            || slot
                .expires_at
                .as_nanos()
                .saturating_add(self.keep_expired_nanos)
                <= now.as_nanos()
        {
            // Remove only the slot found expired, not one inserted since by another thread.
            self.entries
                .remove_if(digest, |current| current.same_entry(&slot));
        }
        None
    }

    fn expires_at(&self, digest: &Digest, now: Timestamp) -> Option<Timestamp> {
        let slot = self.entries.get(digest)?;
        (slot.expires_at > now).then_some(slot.expires_at)
    }

    fn get_stale(&self, digest: &Digest, now: Timestamp) -> Option<L1Entry> {
        let slot = self.entries.get(digest)?;
        let kept_until = slot
            .expires_at
            .as_nanos()
            .saturating_add(self.keep_expired_nanos);
        (slot.expires_at <= now && now.as_nanos() < kept_until).then(|| {
            // The weight less the fixed overhead: what it was inserted with (tags aside).
            let size = u64::from(slot.weight).saturating_sub(ENTRY_OVERHEAD_BYTES);
            L1Entry::new(slot.value, slot.expires_at, size)
        })
    }

    fn insert(&self, digest: Digest, entry: L1Entry, tags: &[String]) {
        if tags.is_empty() {
            match self.slot(entry, 0) {
                Some(slot) => self.entries.insert(digest, slot),
                None => {
                    self.entries.remove(&digest);
                }
            }
            return;
        }
        // Of two tagged inserts under one digest, the later slot must also leave the later
        // record, or an invalidation of the tag would look for the wrong insertion and miss the
        // entry: the lock is held across both. It also makes the tags' charge (which depends on
        // whether each tag is already indexed) match what `add` does.
        let mut index = self.tag_index();
        let Some(slot) = self.slot(entry, index.charge(tags)) else {
            self.entries.remove(&digest);
            return;
        };
        let seq = slot.seq;
        self.entries.insert(digest, slot);
        index.add(digest, seq, tags);
        index.prune_if_large(&self.entries);
    }
    fn remove(&self, digest: &Digest) -> bool {
        // The tag index may keep naming the digest until it is pruned; that is harmless.
        self.entries.remove(digest).is_some()
    }

    fn invalidate_tag(&self, tag: &str) -> u64 {
        let records = self.tag_index().take(tag);
        let mut removed = 0;
        for (digest, seq) in records {
            // Only if the digest still holds the insertion recorded: one made since without the
            // tag has another seq and must survive; one made since with the tag has a record of
            // its own here, or comes after this invalidation.
            if self
                .entries
                .remove_if(&digest, |slot| slot.seq == seq)
                .is_some()
            {
                removed += 1;
            }
        }
        removed
    }

    fn clear(&self) -> u64 {
        // Locked first, so a tagged insert lands either before the drain (and goes with it) or
        // after the reset (and keeps its records).
        let mut index = self.tag_index();
        let removed = self.entries.drain().count();
        *index = TagIndex::default();
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
        let mut l1 = MemoryL1::new(config.max_memory_bytes);
        if let Some(max_stale) = config.fail_safe {
            l1 = l1.keep_expired_for(max_stale);
        }
        Box::new(l1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_kept_for_the_fail_safe_window_only_if_asked() {
        let at = Timestamp::from_nanos;
        let secs = 1_000_000_000;
        let value: SharedValue = std::sync::Arc::new(7_u32);
        let digest = Digest([1; 32]);
        for keep in [0, 5] {
            let l1 = MemoryL1::new(1 << 20).keep_expired_for(std::time::Duration::from_secs(keep));
            l1.insert(digest, L1Entry::new(value.clone(), at(10 * secs), 8), &[]);
            assert!(l1.get(&digest, at(9 * secs)).is_some());
            assert!(l1.get(&digest, at(11 * secs)).is_none(), "expired for get");
            assert!(
                l1.get_stale(&digest, at(9 * secs)).is_none(),
                "not expired yet"
            );
            let stale = l1.get_stale(&digest, at(11 * secs));
            if keep == 0 {
                assert!(stale.is_none(), "nothing kept without a window");
                continue;
            }
            let stale = stale.expect("kept within the window");
            assert_eq!((stale.expires_at, stale.size_bytes), (at(10 * secs), 8));
            assert!(
                l1.get_stale(&digest, at(15 * secs)).is_none(),
                "past the window"
            );
            // Removal takes a kept entry away at once.
            l1.insert(digest, L1Entry::new(value.clone(), at(10 * secs), 8), &[]);
            assert!(l1.remove(&digest));
            assert!(l1.get_stale(&digest, at(11 * secs)).is_none());
        }
    }

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
            index.records <= MIN_PRUNE_FLOOR.max(l1.entries.len() * 3 / 2) + 1,
            "{} records for {} entries",
            index.records,
            l1.entries.len()
        );
    }
}
