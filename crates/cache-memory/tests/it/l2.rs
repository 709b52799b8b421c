//! MemoryL2: TTLs, namespace and tag invalidation, fences, the byte bound and outages.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, ErrorKind, Fence, L2Store, L2Write, Timestamp};
use cache_memory::{ManualClock, MemoryL2, L2_ENTRY_OVERHEAD_BYTES};

const MIB: u64 = 1024 * 1024;
const TTL: Duration = Duration::from_secs(30);

fn setup() -> (Arc<ManualClock>, MemoryL2) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(1_000_000)));
    let l2 = MemoryL2::new(MIB, clock.clone());
    (clock, l2)
}

fn key(ns: &str, id: u64) -> CacheKey {
    CacheKey::derive(ns, &serde_json::json!({ "id": id })).unwrap()
}

fn write(key: &CacheKey, bytes: &[u8]) -> L2Write {
    L2Write::new(key.clone(), bytes.to_vec(), TTL)
}

fn tagged(key: &CacheKey, bytes: &[u8], tags: &[&str]) -> L2Write {
    write(key, bytes).tags(tags.iter().map(|t| (*t).to_owned()).collect())
}

async fn read(l2: &MemoryL2, key: &CacheKey) -> Option<Vec<u8>> {
    l2.get(key).await.unwrap().map(|entry| entry.bytes)
}

#[tokio::test]
async fn entries_live_for_their_ttl_with_decreasing_ttl_remaining() {
    let (clock, l2) = setup();
    let k = key("gpu_avail", 1);
    assert!(l2.get(&k).await.unwrap().is_none());
    assert!(l2.set(write(&k, b"v1")).await.unwrap());

    let entry = l2.get(&k).await.unwrap().unwrap();
    assert_eq!(entry.bytes, b"v1");
    assert_eq!(entry.ttl_remaining, TTL);

    clock.advance(Duration::from_secs(12));
    assert_eq!(
        l2.get(&k).await.unwrap().unwrap().ttl_remaining,
        Duration::from_secs(18)
    );
    clock.advance(Duration::from_millis(17_999));
    assert_eq!(
        l2.get(&k).await.unwrap().unwrap().ttl_remaining,
        Duration::from_millis(1)
    );

    clock.advance(Duration::from_millis(1));
    assert!(
        l2.get(&k).await.unwrap().is_none(),
        "expired at its deadline"
    );
    assert_eq!(l2.len(), 0, "the expired entry was removed");
    assert!(!l2.delete(&k).await.unwrap());
}

#[tokio::test]
async fn overwrite_replaces_value_and_ttl_and_delete_removes() {
    let (clock, l2) = setup();
    let k = key("gpu_avail", 1);
    l2.set(write(&k, b"v1")).await.unwrap();
    clock.advance(Duration::from_secs(20));
    l2.set(write(&k, b"v2")).await.unwrap();
    let entry = l2.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (entry.bytes.as_slice(), entry.ttl_remaining),
        (&b"v2"[..], TTL)
    );
    assert_eq!(l2.len(), 1);

    assert!(l2.delete(&k).await.unwrap());
    assert!(!l2.delete(&k).await.unwrap());
    assert!(read(&l2, &k).await.is_none());
    assert!(l2.is_empty());
    assert_eq!(l2.bytes(), 0);
}

#[tokio::test]
async fn a_zero_ttl_write_stores_nothing_and_removes_the_old_entry() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    l2.set(write(&k, b"v1")).await.unwrap();
    assert!(l2
        .set(L2Write::new(k.clone(), b"v2".to_vec(), Duration::ZERO))
        .await
        .unwrap());
    assert!(read(&l2, &k).await.is_none());
}

#[tokio::test]
async fn namespace_invalidation_hides_old_entries_only_in_that_namespace() {
    let (_clock, l2) = setup();
    let old: Vec<_> = (0..100).map(|i| key("gpu_avail", i)).collect();
    for k in &old {
        l2.set(write(k, b"old")).await.unwrap();
    }
    let other = key("gpu_pricing", 1);
    l2.set(write(&other, b"other")).await.unwrap();

    l2.invalidate_namespace("gpu_avail").await.unwrap();
    for k in &old {
        assert!(read(&l2, k).await.is_none(), "{} survived", k.as_str());
    }
    assert_eq!(read(&l2, &other).await.as_deref(), Some(&b"other"[..]));

    // Writes after the invalidation are visible, including under an invalidated key.
    l2.set(write(&old[0], b"new")).await.unwrap();
    l2.set(write(&key("gpu_avail", 500), b"new")).await.unwrap();
    assert_eq!(read(&l2, &old[0]).await.as_deref(), Some(&b"new"[..]));
    assert_eq!(
        read(&l2, &key("gpu_avail", 500)).await.as_deref(),
        Some(&b"new"[..])
    );
    assert!(read(&l2, &old[1]).await.is_none());
    assert!(
        !l2.delete(&old[2]).await.unwrap(),
        "an invalidated entry does not count as there"
    );

    // Invalidating an unknown namespace is fine and touches nothing else.
    l2.invalidate_namespace("never_used").await.unwrap();
    assert!(read(&l2, &other).await.is_some());
}

#[tokio::test]
async fn tag_invalidation_removes_and_counts_the_tagged_entries_of_the_namespace() {
    let (_clock, l2) = setup();
    let (a, b, c, d) = (
        key("gpu_avail", 1),
        key("gpu_avail", 2),
        key("gpu_avail", 3),
        key("gpu_avail", 4),
    );
    let elsewhere = key("gpu_pricing", 1);
    l2.set(tagged(&a, b"a", &["gpu:1", "provider:x"]))
        .await
        .unwrap();
    l2.set(tagged(&b, b"b", &["gpu:1"])).await.unwrap();
    l2.set(tagged(&c, b"c", &["gpu:2"])).await.unwrap();
    l2.set(tagged(&d, b"d", &["gpu:1"])).await.unwrap();
    l2.set(tagged(&d, b"d2", &["gpu:9"])).await.unwrap(); // rewritten without the tag
    l2.set(tagged(&elsewhere, b"e", &["gpu:1"])).await.unwrap();

    assert_eq!(l2.invalidate_tag("gpu_avail", "gpu:1").await.unwrap(), 2);
    assert!(read(&l2, &a).await.is_none());
    assert!(read(&l2, &b).await.is_none());
    assert!(read(&l2, &c).await.is_some());
    assert_eq!(read(&l2, &d).await.as_deref(), Some(&b"d2"[..]));
    assert!(
        read(&l2, &elsewhere).await.is_some(),
        "other namespaces keep their tag"
    );

    assert_eq!(l2.invalidate_tag("gpu_avail", "gpu:1").await.unwrap(), 0);
    assert_eq!(
        l2.invalidate_tag("gpu_avail", "provider:x").await.unwrap(),
        0,
        "a is gone"
    );
    assert_eq!(l2.invalidate_tag("gpu_pricing", "gpu:1").await.unwrap(), 1);
    assert_eq!(l2.invalidate_tag("nowhere", "gpu:1").await.unwrap(), 0);

    // Entries hidden by a namespace invalidation are not counted.
    l2.set(tagged(&a, b"a", &["gpu:1"])).await.unwrap();
    l2.invalidate_namespace("gpu_avail").await.unwrap();
    assert_eq!(l2.invalidate_tag("gpu_avail", "gpu:1").await.unwrap(), 0);
}

#[tokio::test]
async fn fenced_writes_land_only_on_a_fresh_fence() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    let fence = l2.fence(&k).await.unwrap();
    assert_eq!(
        l2.fence(&k).await.unwrap(),
        fence,
        "reading a fence changes nothing"
    );
    assert!(l2
        .set(write(&k, b"fresh").fence(Some(fence)))
        .await
        .unwrap());
    assert_eq!(read(&l2, &k).await.as_deref(), Some(&b"fresh"[..]));

    // The fenced write itself moved the fence: reusing it is stale.
    assert!(!l2
        .set(write(&k, b"stale").fence(Some(fence)))
        .await
        .unwrap());
    assert_eq!(
        read(&l2, &k).await.as_deref(),
        Some(&b"fresh"[..]),
        "nothing written"
    );

    let other = key("gpu_avail", 2);
    let before = l2.fence(&other).await.unwrap();
    assert!(!l2
        .set(write(&other, b"x").fence(Some(Fence(before.0 + 1))))
        .await
        .unwrap());
    assert!(read(&l2, &other).await.is_none());
    assert_eq!(
        l2.fence(&other).await.unwrap(),
        before,
        "a refused write moves nothing"
    );
}

#[tokio::test]
async fn every_kind_of_mutation_moves_the_fence_of_its_key_only() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    let ns = "gpu_avail";
    let other_ns = key("gpu_pricing", 1);
    let other_before = l2.fence(&other_ns).await.unwrap();

    let mut seen = vec![l2.fence(&k).await.unwrap()];
    l2.set(write(&k, b"v")).await.unwrap();
    seen.push(l2.fence(&k).await.unwrap());
    l2.delete(&k).await.unwrap();
    seen.push(l2.fence(&k).await.unwrap());
    l2.delete(&k).await.unwrap(); // even when there was nothing to delete
    seen.push(l2.fence(&k).await.unwrap());
    l2.invalidate_namespace(ns).await.unwrap();
    seen.push(l2.fence(&k).await.unwrap());
    l2.invalidate_tag(ns, "no-such-tag").await.unwrap();
    seen.push(l2.fence(&k).await.unwrap());

    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "fences seen: {seen:?}");
    }
    assert_eq!(l2.fence(&other_ns).await.unwrap(), other_before);

    // A fence taken before any of those mutations is stale after each of them.
    for stale in &seen[..seen.len() - 1] {
        assert!(!l2
            .set(write(&k, b"late").fence(Some(*stale)))
            .await
            .unwrap());
    }
    assert!(read(&l2, &k).await.is_none());
    assert!(l2
        .set(write(&k, b"ok").fence(seen.last().copied()))
        .await
        .unwrap());
}

#[tokio::test]
async fn writes_of_other_keys_leave_a_fence_alone_so_concurrent_fills_both_land() {
    let (_clock, l2) = setup();
    let (a, b) = (key("gpu_avail", 1), key("gpu_avail", 2));
    assert_ne!(
        a.digest().0[0],
        b.digest().0[0],
        "the two keys must fall in different stripes"
    );
    let (fa, fb) = (l2.fence(&a).await.unwrap(), l2.fence(&b).await.unwrap());
    assert!(l2.set(write(&a, b"a").fence(Some(fa))).await.unwrap());
    assert!(l2.set(write(&b, b"b").fence(Some(fb))).await.unwrap());
    l2.invalidate_namespace("gpu_avail").await.unwrap();
    assert_ne!(
        l2.fence(&b).await.unwrap(),
        fb,
        "a namespace invalidation moves every key's fence"
    );
}

#[tokio::test]
async fn the_byte_bound_holds_under_churn() {
    let (_clock, l2) = setup();
    for i in 0..5_000 {
        let k = key("historical", i);
        assert!(l2.set(tagged(&k, &[7; 1024], &["bulk"])).await.unwrap());
        assert!(l2.bytes() <= MIB, "{} bytes after write {i}", l2.bytes());
    }
    assert!(!l2.is_empty());
    let per_entry = 1024 + 4 + key("historical", 0).as_str().len() as u64 + L2_ENTRY_OVERHEAD_BYTES;
    assert!(l2.len() as u64 <= MIB / per_entry);
    assert!(read(&l2, &key("historical", 4_999)).await.is_some());

    // Larger than the store: not kept, and the previous value is not left behind.
    let k = key("historical", 4_999);
    assert!(l2.set(write(&k, &vec![0; MIB as usize])).await.unwrap());
    assert!(read(&l2, &k).await.is_none());
    assert!(l2.bytes() <= MIB);
}

#[tokio::test]
async fn an_unavailable_store_fails_every_call_with_kind_l2() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    l2.set(write(&k, b"kept")).await.unwrap();
    l2.set_unavailable(true);

    let errors = [
        l2.get(&k).await.err(),
        l2.set(write(&k, b"x")).await.err(),
        l2.delete(&k).await.err(),
        l2.invalidate_namespace("gpu_avail").await.err(),
        l2.invalidate_tag("gpu_avail", "t").await.err(),
        l2.fence(&k).await.err(),
        l2.ping().await.err(),
    ];
    for (i, error) in errors.into_iter().enumerate() {
        let error = error.unwrap_or_else(|| panic!("call {i} succeeded"));
        assert_eq!(error.kind(), ErrorKind::L2, "call {i}");
        assert!(error.is_transient());
    }

    l2.set_unavailable(false);
    l2.ping().await.unwrap();
    assert_eq!(
        read(&l2, &k).await.as_deref(),
        Some(&b"kept"[..]),
        "the outage wrote nothing"
    );
}

#[tokio::test]
async fn the_global_store_is_shared() {
    let a = MemoryL2::global();
    let b = MemoryL2::global();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.capacity_bytes(), 256 * MIB);
    // A namespace no other test uses, since the instance is process-wide.
    let k = key("cache_memory_it_global", 1);
    a.set(write(&k, b"shared")).await.unwrap();
    assert_eq!(read(&b, &k).await.as_deref(), Some(&b"shared"[..]));
}

#[tokio::test]
async fn a_read_returns_the_tags_the_entry_was_written_with() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    l2.set(tagged(&k, b"v", &["gpu:g-1", "provider:p"]))
        .await
        .unwrap();
    assert_eq!(
        l2.get(&k).await.unwrap().unwrap().tags,
        ["gpu:g-1", "provider:p"]
    );
}

#[tokio::test]
async fn the_in_process_l2_cannot_publish_and_says_so() {
    let (_clock, l2) = setup();
    let k = key("gpu_avail", 1);
    assert_eq!(l2.announce_route(), None);
    let err = l2
        .set(write(&k, b"v").announce(b"event".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(l2.get(&k).await.unwrap().is_none(), "nothing written");
    let err = l2
        .invalidate_namespaces(&["gpu_avail".to_owned()], Some(b"event".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}
