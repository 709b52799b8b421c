//! Health, stats and shutdown.

use cache_core::{ErrorKind, Event, EventBus, EventType};
use cache_edge::{HealthStatus, Notification};
use serde_json::json;

use crate::support::{applied, Fleet};

#[tokio::test]
async fn health_follows_l2_and_shutdown() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let h = a.health().await;
    assert_eq!(
        (h.status, h.l2_connected, h.bus_connected),
        (HealthStatus::Healthy, true, true)
    );
    assert_eq!(h.reason, None);
    assert_eq!(h.status.as_str(), "healthy");

    fleet.l2.set_unavailable(true);
    let h = a.health().await;
    assert_eq!((h.status, h.l2_connected), (HealthStatus::Degraded, false));
    assert!(h.reason.unwrap().contains("L2"));
    fleet.l2.set_unavailable(false);
    assert_eq!(a.health().await.status, HealthStatus::Healthy);

    a.shutdown().await;
    let h = a.health().await;
    assert_eq!(h.status, HealthStatus::Unhealthy);
    assert_eq!(
        fleet.bus.subscriber_count(),
        0,
        "the listener's subscription was dropped"
    );
    let err = a
        .get::<String, _>("gpu_availability", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shutdown);
    let err = a
        .notify(Notification::booking_created("b", "g"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shutdown);
    a.shutdown().await; // a second call is harmless
}

#[tokio::test]
async fn a_listener_whose_subscription_ends_is_unhealthy() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    fleet.bus.end_subscriptions();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.health().await.status != HealthStatus::Unhealthy {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never reported stopping"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let h = a.health().await;
    assert_eq!(h.status, HealthStatus::Unhealthy);
    assert!(h.reason.unwrap().contains("listener"));
    a.shutdown().await;
}

#[tokio::test]
async fn stats_report_l1_use_per_namespace_and_node_identity() {
    let fleet = Fleet::new();
    let a = fleet
        .builder("edge-eu-1")
        .region("eu-west")
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        a.set("gpu_availability", &json!({"gpu_id": i}), &"x".repeat(100))
            .await
            .unwrap();
    }
    let s = a.stats();
    assert_eq!(
        (s.node_id.as_str(), s.region.as_str()),
        ("edge-eu-1", "eu-west")
    );
    assert_eq!(s.sets, 10);
    assert_eq!(s.events_published, 10);
    let avail = s
        .namespaces
        .iter()
        .find(|n| n.name == "gpu_availability")
        .unwrap();
    assert_eq!(avail.l1_entries, 10);
    assert!(
        avail.l1_bytes >= 10 * 102,
        "charged at least the encoded bytes: {}",
        avail.l1_bytes
    );
    assert_eq!(avail.l1_capacity_bytes, 100 << 20);
    let provider = s
        .namespaces
        .iter()
        .find(|n| n.name == "provider_status")
        .unwrap();
    assert_eq!(
        (provider.l1_entries, provider.l1_capacity_bytes),
        (0, 0),
        "not critical: no L1"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn the_default_node_id_has_the_seed_form() {
    let fleet = Fleet::new();
    let node = cache_edge::EdgeCache::builder()
        .l2(fleet.l2.clone())
        .bus(fleet.bus.clone())
        .build()
        .await
        .unwrap();
    let id = node.node_id();
    assert!(id.starts_with("edge_node_") && id.len() == 18, "{id}");
    assert!(id[10..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    node.shutdown().await;
}

/// The seed reports its event queue's length; so does a node: the events the bus has delivered
/// that its listener has not applied yet. On a current-thread runtime the listener only runs
/// when the test yields, so the events published here wait in the node's subscription.
#[tokio::test]
async fn health_counts_the_events_waiting_to_be_applied() {
    let fleet = Fleet::new();
    let b = fleet.node("b").await;
    // The subscription's first item (connected) is taken once the listener has run.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.health().await.event_queue_size != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    for i in 0..3 {
        let event = Event::new(
            EventType::PricingUpdated,
            format!("gpu_{i}"),
            "a",
            format!("id-{i}"),
            0.0,
        );
        fleet.bus.publish(event.encode()).await.unwrap();
    }
    assert_eq!(
        b.health().await.event_queue_size,
        3,
        "three events wait in the subscription"
    );
    applied(&b, 3).await;
    assert_eq!(b.health().await.event_queue_size, 0, "all applied");
    b.shutdown().await;
}
