//! MemoryL1: expiry, sharing, the byte budget, tags and concurrency.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    Clock, Digest, L1Entry, L1Factory, L1Store, NamespaceConfig, SharedValue, Timestamp,
};
use cache_memory::{
    ManualClock, MemoryL1, MemoryL1Factory, ENTRY_OVERHEAD_BYTES, NEW_TAG_OVERHEAD_BYTES,
    TAG_OVERHEAD_BYTES,
};

const MIB: u64 = 1024 * 1024;

fn digest(i: u64) -> Digest {
    let mut d = [0; 32];
    d[..8].copy_from_slice(&i.to_le_bytes());
    Digest(d)
}

fn entry(value: impl std::any::Any + Send + Sync, expires_at: Timestamp, size: u64) -> L1Entry {
    L1Entry::new(Arc::new(value), expires_at, size)
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| (*t).to_owned()).collect()
}

fn read_u64(value: &SharedValue) -> u64 {
    *value.downcast_ref::<u64>().expect("a u64")
}

#[test]
fn entries_expire_at_their_deadline_and_are_removed_when_found_expired() {
    let clock = ManualClock::new(Timestamp::from_nanos(1_000));
    let l1 = MemoryL1::new(MIB);
    let expires = clock.now().saturating_add(Duration::from_secs(30));
    l1.insert(digest(1), entry(7_u64, expires, 8), &[]);

    clock.advance(Duration::from_secs(29));
    assert_eq!(
        l1.get(&digest(1), clock.now()).map(|v| read_u64(&v)),
        Some(7)
    );
    assert_eq!(l1.usage().entries, 1);

    clock.advance(Duration::from_secs(1));
    assert!(
        l1.get(&digest(1), clock.now()).is_none(),
        "not served at expires_at"
    );
    assert_eq!(l1.usage().entries, 0, "the expired entry was removed");
    assert_eq!(l1.usage().bytes, 0);
    // Removed, so an earlier `now` does not resurrect it.
    assert!(l1.get(&digest(1), Timestamp::ZERO).is_none());
}

#[test]
fn get_hands_out_the_stored_arc() {
    let l1 = MemoryL1::new(MIB);
    let value: SharedValue = Arc::new(String::from("shared"));
    l1.insert(
        digest(1),
        L1Entry::new(Arc::clone(&value), Timestamp::from_nanos(10), 6),
        &[],
    );
    let first = l1.get(&digest(1), Timestamp::ZERO).unwrap();
    let second = l1.get(&digest(1), Timestamp::ZERO).unwrap();
    assert!(Arc::ptr_eq(&first, &value));
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn insert_replaces_and_remove_reports_presence() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    l1.insert(digest(1), entry(1_u64, later, 8), &[]);
    l1.insert(digest(1), entry(2_u64, later, 100), &[]);
    assert_eq!(
        l1.get(&digest(1), Timestamp::ZERO).map(|v| read_u64(&v)),
        Some(2)
    );
    let usage = l1.usage();
    assert_eq!(
        (usage.entries, usage.bytes),
        (1, 100 + ENTRY_OVERHEAD_BYTES)
    );
    assert!(l1.remove(&digest(1)));
    assert!(!l1.remove(&digest(1)));
    assert!(l1.get(&digest(1), Timestamp::ZERO).is_none());
}

#[test]
fn byte_budget_holds_under_churn() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    for i in 0..10_000 {
        l1.insert(
            digest(i),
            entry(vec![0_u8; 1024], later, 1024),
            &tags(&["churn"]),
        );
        let usage = l1.usage();
        assert!(usage.bytes <= MIB, "{} bytes after insert {i}", usage.bytes);
    }
    // Each entry is charged its size, the entry overhead and its one tag ("churn"), and the
    // first, which brought the tag into the index, for the new tag as well.
    let charge = 1024 + ENTRY_OVERHEAD_BYTES + TAG_OVERHEAD_BYTES + 5;
    let usage = l1.usage();
    assert_eq!(usage.capacity_bytes, MIB);
    assert!(usage.entries > 0);
    assert!(usage.entries <= MIB / charge);
    assert!(
        (usage.entries * charge..=usage.entries * charge + NEW_TAG_OVERHEAD_BYTES)
            .contains(&usage.bytes),
        "{usage:?}"
    );
    // The most recent insert is resident: eviction made room for it.
    assert!(l1.get(&digest(9_999), Timestamp::ZERO).is_some());
}

#[test]
fn oversize_entry_is_not_stored_and_removes_the_previous_one() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    l1.insert(digest(1), entry(1_u64, later, 8), &[]);
    l1.insert(digest(1), entry(2_u64, later, MIB), &[]);
    assert!(
        l1.get(&digest(1), Timestamp::ZERO).is_none(),
        "no stale value left behind"
    );
    assert_eq!(l1.usage().entries, 0);

    l1.insert(
        digest(2),
        entry(3_u64, later, l1.max_entry_bytes() + 1),
        &[],
    );
    assert!(l1.get(&digest(2), Timestamp::ZERO).is_none());
    l1.insert(digest(2), entry(3_u64, later, l1.max_entry_bytes()), &[]);
    assert!(l1.get(&digest(2), Timestamp::ZERO).is_some());
    assert!(l1.usage().bytes <= MIB);
}

#[test]
fn a_zero_budget_stores_nothing() {
    let l1 = MemoryL1::new(0);
    l1.insert(digest(1), entry(1_u64, Timestamp::from_nanos(10), 0), &[]);
    assert!(l1.get(&digest(1), Timestamp::ZERO).is_none());
    assert_eq!(l1.usage().bytes, 0);
}

#[test]
fn tag_invalidation_removes_exactly_the_tagged_entries() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    l1.insert(
        digest(1),
        entry(1_u64, later, 8),
        &tags(&["gpu:1", "provider:a"]),
    );
    l1.insert(
        digest(2),
        entry(2_u64, later, 8),
        &tags(&["gpu:2", "provider:a"]),
    );
    l1.insert(digest(3), entry(3_u64, later, 8), &tags(&["gpu:1"]));
    l1.insert(digest(4), entry(4_u64, later, 8), &[]);
    // Re-inserted without the tag: must survive an invalidation of that tag.
    l1.insert(digest(3), entry(33_u64, later, 8), &tags(&["gpu:3"]));

    assert_eq!(l1.invalidate_tag("gpu:1"), 1);
    assert!(l1.get(&digest(1), Timestamp::ZERO).is_none());
    assert_eq!(
        l1.get(&digest(3), Timestamp::ZERO).map(|v| read_u64(&v)),
        Some(33)
    );
    assert!(l1.get(&digest(2), Timestamp::ZERO).is_some());
    assert!(l1.get(&digest(4), Timestamp::ZERO).is_some());

    assert_eq!(l1.invalidate_tag("gpu:1"), 0, "nothing left under the tag");
    assert_eq!(
        l1.invalidate_tag("provider:a"),
        1,
        "entry 1 is already gone"
    );
    assert!(l1.get(&digest(2), Timestamp::ZERO).is_none());
    assert_eq!(l1.invalidate_tag("unknown"), 0);
    assert_eq!(l1.usage().entries, 2);

    // A removed entry re-inserted with the tag is found by the next invalidation.
    l1.insert(digest(1), entry(1_u64, later, 8), &tags(&["gpu:1"]));
    assert_eq!(l1.invalidate_tag("gpu:1"), 1);
}

#[test]
fn tag_invalidation_removes_the_insertion_made_with_the_tag() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    let now = Timestamp::ZERO;

    // Re-inserted without the tag: the tagged insertion is gone, the new one survives.
    l1.insert(digest(1), entry(1_u64, later, 8), &tags(&["t"]));
    l1.insert(digest(1), entry(11_u64, later, 8), &[]);
    assert_eq!(l1.invalidate_tag("t"), 0);
    assert_eq!(l1.get(&digest(1), now).map(|v| read_u64(&v)), Some(11));

    // Re-inserted with the tag: the latest insertion is the one removed.
    l1.insert(digest(2), entry(2_u64, later, 8), &tags(&["t"]));
    l1.insert(digest(2), entry(22_u64, later, 8), &tags(&["t"]));
    assert_eq!(l1.invalidate_tag("t"), 1);
    assert!(l1.get(&digest(2), now).is_none());

    // Tagged, untagged, tagged again: the last insertion carries the tag.
    l1.insert(digest(3), entry(3_u64, later, 8), &tags(&["t"]));
    l1.insert(digest(3), entry(33_u64, later, 8), &[]);
    l1.insert(digest(3), entry(333_u64, later, 8), &tags(&["t"]));
    assert_eq!(l1.invalidate_tag("t"), 1);
    assert!(l1.get(&digest(3), now).is_none());

    // Re-inserted with only one of its two tags: the dropped tag no longer reaches it.
    l1.insert(digest(4), entry(4_u64, later, 8), &tags(&["a", "b"]));
    l1.insert(digest(4), entry(44_u64, later, 8), &tags(&["b"]));
    assert_eq!(l1.invalidate_tag("a"), 0);
    assert_eq!(l1.get(&digest(4), now).map(|v| read_u64(&v)), Some(44));
    assert_eq!(l1.invalidate_tag("b"), 1);
    assert!(l1.get(&digest(4), now).is_none());

    // Removed and re-inserted untagged: nothing to invalidate, the entry stays.
    l1.insert(digest(5), entry(5_u64, later, 8), &tags(&["t"]));
    assert!(l1.remove(&digest(5)));
    l1.insert(digest(5), entry(55_u64, later, 8), &[]);
    assert_eq!(l1.invalidate_tag("t"), 0);
    assert_eq!(l1.get(&digest(5), now).map(|v| read_u64(&v)), Some(55));
    assert_eq!(l1.usage().entries, 2);
}

#[test]
fn racing_tagged_inserts_under_one_digest_are_all_invalidated() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    for round in 0..500_u64 {
        std::thread::scope(|scope| {
            for writer in 0..3_u64 {
                let l1 = &l1;
                scope.spawn(move || {
                    for i in 0..20 {
                        let value = round * 1_000 + writer * 100 + i;
                        l1.insert(digest(1), entry(value, later, 8), &tags(&["t"]));
                    }
                });
            }
        });
        // Whichever insert was stored last, the tag's record names it.
        assert_eq!(l1.invalidate_tag("t"), 1, "round {round}");
        assert!(
            l1.get(&digest(1), Timestamp::ZERO).is_none(),
            "round {round}"
        );
    }
}

#[test]
fn entry_charges_beyond_u32_are_refused_whatever_the_budget() {
    // A budget so large that 90% of a shard exceeds u32::MAX on any number of cores.
    let l1 = MemoryL1::new(1 << 50);
    let max = l1.max_entry_bytes();
    assert_eq!(max, u64::from(u32::MAX) - ENTRY_OVERHEAD_BYTES);
    let later = Timestamp::from_nanos(10);

    l1.insert(digest(1), entry(1_u64, later, max), &[]);
    assert!(l1.get(&digest(1), Timestamp::ZERO).is_some());
    assert_eq!(l1.usage().bytes, u64::from(u32::MAX));

    for size in [max + 1, u64::from(u32::MAX), u64::MAX] {
        l1.insert(digest(1), entry(1_u64, later, 8), &[]);
        l1.insert(digest(1), entry(2_u64, later, size), &[]);
        assert!(
            l1.get(&digest(1), Timestamp::ZERO).is_none(),
            "size {size}: refused, and the previous value removed"
        );
    }
    assert_eq!(l1.usage().bytes, 0);
}

#[test]
fn clear_removes_everything_and_counts_it() {
    let l1 = MemoryL1::new(MIB);
    let later = Timestamp::from_nanos(10);
    for i in 0..5 {
        l1.insert(digest(i), entry(i, later, 8), &tags(&["t"]));
    }
    assert_eq!(l1.clear(), 5);
    assert_eq!(l1.usage().entries, 0);
    assert_eq!(l1.usage().bytes, 0);
    assert_eq!(l1.invalidate_tag("t"), 0);
    assert_eq!(l1.clear(), 0);
}

#[test]
fn concurrent_readers_see_consistent_values() {
    let l1 = MemoryL1::new(16 * MIB);
    let later = Timestamp::from_nanos(10);
    for i in 0..1_000 {
        l1.insert(digest(i), entry(i * 3, later, 8), &[]);
    }
    std::thread::scope(|scope| {
        for reader in 0..4_u64 {
            let l1 = &l1;
            scope.spawn(move || {
                for round in 0..20 {
                    for i in 0..1_000 {
                        let value = l1.get(&digest(i), Timestamp::ZERO).unwrap_or_else(|| {
                            panic!("reader {reader} round {round}: {i} missing")
                        });
                        assert_eq!(read_u64(&value), i * 3);
                    }
                }
            });
        }
        // A writer churning other digests alongside the readers.
        let l1 = &l1;
        scope.spawn(move || {
            for i in 1_000..3_000 {
                l1.insert(digest(i), entry(i * 3, later, 8), &tags(&["w"]));
                assert!(l1.remove(&digest(i)));
            }
        });
    });
    assert_eq!(l1.usage().entries, 1_000);
}

#[test]
fn factory_uses_the_namespace_budget() {
    let config = NamespaceConfig::new("gpu_pricing", "gpu_pricing", Duration::from_secs(60))
        .max_memory_bytes(3 * MIB);
    let store = MemoryL1Factory.build(&config);
    assert_eq!(store.usage().capacity_bytes, 3 * MIB);
    store.insert(digest(1), entry(1_u64, Timestamp::from_nanos(10), 8), &[]);
    assert_eq!(store.usage().entries, 1);
}
