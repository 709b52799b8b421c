//! Invalidation of namespaces, resources and keys, and domain notifications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cache_core::{CacheKey, EventType, Fence, L2Entry, L2Store, L2Write, Result};
use cache_edge::{EdgeCache, Notification, SetOptions};
use cache_memory::MemoryL2;
use serde_json::json;

use crate::support::{applied, Fleet};

/// Fills every default namespace with one entry for `id`, through `node`.
async fn fill(node: &EdgeCache, id: &str) {
    for ns in [
        "gpu_availability",
        "gpu_pricing",
        "order_book",
        "provider_status",
        "market_stats",
        "historical_data",
    ] {
        node.set(ns, &json!({"id": id}), &format!("{ns}-{id}"))
            .await
            .unwrap();
    }
}

async fn present(node: &EdgeCache, ns: &str, id: &str) -> bool {
    node.get::<String, _>(ns, &json!({"id": id}))
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn every_notification_clears_its_routed_namespaces_on_the_notifier_and_receivers() {
    let cases = [
        (
            Notification::gpu_availability_changed("g-1", "offline"),
            vec!["gpu_availability"],
        ),
        (
            Notification::pricing_updated("A100", 2.5),
            vec!["gpu_pricing"],
        ),
        (
            Notification::booking_created("b-1", "g-1"),
            vec!["gpu_availability", "gpu_pricing", "order_book"],
        ),
        (
            Notification::booking_cancelled("b-1", "g-1"),
            vec!["gpu_availability", "gpu_pricing", "order_book"],
        ),
        (
            Notification::provider_status_changed("p-1", "offline"),
            vec!["provider_status"],
        ),
        (
            Notification::market_stats_updated("A100"),
            vec!["market_stats"],
        ),
        (Notification::order_book_updated("all"), vec!["order_book"]),
    ];
    let all = [
        "gpu_availability",
        "gpu_pricing",
        "order_book",
        "provider_status",
        "market_stats",
        "historical_data",
    ];
    for (notification, cleared) in cases {
        let fleet = Fleet::new();
        let a = fleet.node("a").await;
        let b = fleet.node("b").await;
        let event_type = notification.event_type();
        fill(&a, "x").await;
        applied(&b, 5).await; // five event-driven namespaces announced their writes
        for ns in all {
            assert!(present(&b, ns, "x").await, "{ns} filled");
        }
        let event = a.notify(notification).await.unwrap();
        assert_eq!(event.event_type, event_type);
        applied(&b, 6).await;
        for ns in all {
            let expect = !cleared.contains(&ns);
            assert_eq!(
                present(&a, ns, "x").await,
                expect,
                "{event_type}: {ns} on the notifier"
            );
            assert_eq!(
                present(&b, ns, "x").await,
                expect,
                "{event_type}: {ns} on a receiver"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn invalidating_a_namespace_spares_the_others() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    fill(&a, "x").await;
    fill(&a, "y").await;
    applied(&b, 10).await;
    // Warm B's L1.
    assert!(present(&b, "gpu_pricing", "x").await && present(&b, "order_book", "x").await);

    a.invalidate_namespace("gpu_pricing", "price feed reset")
        .await
        .unwrap();
    applied(&b, 11).await;
    for node in [&a, &b] {
        assert!(!present(node, "gpu_pricing", "x").await);
        assert!(!present(node, "gpu_pricing", "y").await);
        assert!(present(node, "order_book", "x").await);
        assert!(present(node, "gpu_availability", "y").await);
    }
    assert_eq!(a.stats().invalidations, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn invalidating_a_resource_removes_exactly_its_tagged_entries_everywhere() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let tagged = |gpu: &str| SetOptions::new().tag(format!("gpu:{gpu}"));
    // A list that mentions two GPUs carries both tags.
    a.set_with(
        "gpu_availability",
        &json!({"id": "g-42"}),
        &"g-42".to_string(),
        tagged("g-42"),
    )
    .await
    .unwrap();
    a.set_with(
        "gpu_availability",
        &json!({"id": "g-7"}),
        &"g-7".to_string(),
        tagged("g-7"),
    )
    .await
    .unwrap();
    let both = tagged("g-42").tag("gpu:g-7");
    a.set_with(
        "gpu_availability",
        &json!({"id": "list"}),
        &"list".to_string(),
        both,
    )
    .await
    .unwrap();
    applied(&b, 3).await;
    for id in ["g-42", "g-7", "list"] {
        assert!(present(&b, "gpu_availability", id).await); // back-filled into B's L1 with its tags
    }

    a.invalidate_resource("gpu_availability", "gpu:g-42")
        .await
        .unwrap();
    applied(&b, 4).await;
    let l1_before = b.stats().l1_hits;
    for node in [&a, &b] {
        assert!(!present(node, "gpu_availability", "g-42").await);
        assert!(!present(node, "gpu_availability", "list").await);
        assert!(present(node, "gpu_availability", "g-7").await);
    }
    assert_eq!(b.stats().l1_hits - l1_before, 1, "g-7 stayed in B's L1");
    assert_eq!(fleet.l2.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn invalidating_a_key_drops_it_on_every_node() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    fill(&a, "x").await;
    applied(&b, 5).await;
    assert!(present(&b, "gpu_availability", "x").await);
    let key = a.key("gpu_availability", &json!({"id": "x"})).unwrap();
    a.invalidate_key(&key).await.unwrap();
    applied(&b, 6).await;
    assert!(!present(&a, "gpu_availability", "x").await);
    assert!(!present(&b, "gpu_availability", "x").await);
    assert!(present(&b, "gpu_pricing", "x").await);
    a.shutdown().await;
    b.shutdown().await;
}

/// An L2 that counts the invalidations it is asked to do.
struct CountingL2 {
    inner: Arc<MemoryL2>,
    namespace_invalidations: AtomicU64,
}

#[async_trait]
impl L2Store for CountingL2 {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        self.inner.get(key).await
    }
    async fn set(&self, write: L2Write) -> Result<bool> {
        self.inner.set(write).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.namespace_invalidations.fetch_add(1, Ordering::SeqCst);
        self.inner.invalidate_namespace(key_namespace).await
    }
    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.inner.invalidate_tag(key_namespace, tag).await
    }
    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        self.inner.fence(key).await
    }
}

#[tokio::test]
async fn l2_is_invalidated_once_by_the_issuer_not_by_every_receiver() {
    let fleet = Fleet::new();
    let l2 = Arc::new(CountingL2 {
        inner: fleet.l2.clone(),
        namespace_invalidations: AtomicU64::new(0),
    });
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(fleet.builder(id).l2(l2.clone()).build().await.unwrap());
    }
    nodes[0]
        .notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    applied(&nodes[1], 1).await;
    applied(&nodes[2], 1).await;
    assert_eq!(
        l2.namespace_invalidations.load(Ordering::SeqCst),
        3,
        "one per routed namespace, from the issuer only"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn user_routes_extend_what_an_event_invalidates() {
    let fleet = Fleet::new();
    let mut routing = cache_core::Routing::defaults();
    routing.add(EventType::BookingCreated, "market_stats");
    let a = fleet.builder("a").routing(routing).build().await.unwrap();
    fill(&a, "x").await;
    let event = a
        .notify(Notification::booking_created("b", "g"))
        .await
        .unwrap();
    assert!(event
        .affected_namespaces
        .contains(&"market_stats".to_string()));
    assert!(!present(&a, "market_stats", "x").await);
    assert!(present(&a, "provider_status", "x").await);
    a.shutdown().await;
}

/// `invalidate_keys`: one announcement per namespace (split at the event bound) drops exactly
/// the keys named, on every node and in L2.
#[tokio::test]
async fn a_batch_of_keys_is_one_announcement_per_namespace_and_drops_exactly_those_keys() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet
        .builder("b")
        .limits(cache_core::Limits::default().keys_per_event(8))
        .build()
        .await
        .unwrap();
    let ids: Vec<String> = (0..24).map(|i| format!("g-{i}")).collect();
    for id in &ids {
        fill(&a, id).await;
    }
    // b holds every availability and pricing entry in L1.
    for id in &ids {
        assert!(present(&b, "gpu_availability", id).await);
        assert!(present(&b, "gpu_pricing", id).await);
    }
    let key = |ns: &str, id: &str| b.key(ns, &json!({ "id": id })).unwrap();
    // 20 availability keys and 2 pricing keys, interleaved; b's bound splits 20 into 8+8+4.
    let mut batch: Vec<CacheKey> = ids[..20]
        .iter()
        .map(|id| key("gpu_availability", id))
        .collect();
    batch.insert(5, key("gpu_pricing", "g-0"));
    batch.push(key("gpu_pricing", "g-1"));
    let published = b.stats().events_published;
    let applied_on_a = a.stats().events_applied;
    b.invalidate_keys(&batch).await.unwrap();
    assert_eq!(
        b.stats().events_published - published,
        4,
        "three announcements for availability (8+8+4 keys) and one for pricing"
    );
    applied(&a, applied_on_a + 4).await;
    for node in [&a, &b] {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                present(node, "gpu_availability", id).await,
                i >= 20,
                "{} availability {id}",
                node.node_id()
            );
            assert_eq!(
                present(node, "gpu_pricing", id).await,
                i >= 2,
                "{} pricing {id}",
                node.node_id()
            );
        }
    }
    // Nothing to do for no keys; an unknown namespace is refused before anything is sent.
    b.invalidate_keys(&[]).await.unwrap();
    let stranger = CacheKey::derive("nobody", &json!({"id": 1})).unwrap();
    let err = b.invalidate_keys(&[stranger]).await.unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::UnknownNamespace);
    a.shutdown().await;
    b.shutdown().await;
}
