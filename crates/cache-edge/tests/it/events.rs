//! Receiving events: own ones ignored, malformed ones counted, seed nodes understood, and the
//! bus's faults (duplicates, reordering, loss, disconnects) never leave a stale L1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{ConnectionState, Error, ErrorKind, Event, EventBus};
use cache_edge::{EdgeCache, HealthStatus, Notification, Observer};
use serde_json::json;

use crate::support::{applied, eventually, Fleet};

async fn cached(node: &EdgeCache, id: &str) -> bool {
    node.get::<String, _>("gpu_availability", &json!({"id": id}))
        .await
        .unwrap()
        .is_some()
}

/// Writes `id` through `writer`, waits for `reader` to apply the write's event, then reads it
/// into `reader`'s L1.
async fn warm(writer: &EdgeCache, reader: &EdgeCache, id: &str) {
    let seen = reader.stats().events_applied;
    writer
        .set("gpu_availability", &json!({"id": id}), &id.to_string())
        .await
        .unwrap();
    applied(reader, seen + 1).await;
    reader
        .get::<String, _>("gpu_availability", &json!({"id": id}))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn own_events_are_ignored_and_others_applied() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    a.notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    eventually("a sees its own event come back", || {
        a.stats().own_events_ignored == 1
    })
    .await;
    applied(&b, 1).await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        sa.events_applied, 1,
        "applied once, locally, before publishing"
    );
    assert_eq!(sa.events_published, 1);
    assert_eq!(
        (sb.events_received, sb.events_applied, sb.own_events_ignored),
        (1, 1, 0)
    );
    assert!(sb.last_event_time.is_some());
    a.shutdown().await;
    b.shutdown().await;
}

/// A node skips its own events by their first bytes; an event from a node whose id merely
/// starts like this one's, or that names this node inside its data, is still applied.
#[tokio::test]
async fn only_events_this_node_wrote_are_skipped_unread() {
    let fleet = Fleet::new();
    let b = fleet.node("b").await;
    let mut lookalike = Event::new(
        cache_core::EventType::GpuAvailabilityChanged,
        "gpu_g-1",
        "b-2",
        "id-1",
        0.0,
    );
    lookalike.affected_namespaces = vec!["gpu_avail".into()];
    lookalike.data.insert("source_node".into(), json!("b"));
    let mut naming_b = lookalike.clone();
    naming_b.source_node = "c".into();
    naming_b.event_id = "id-2".into();
    for event in [&lookalike, &naming_b] {
        // b's own write keeps a copy in its L1.
        b.set(
            "gpu_availability",
            &json!({"id": "g-1"}),
            &"g-1".to_string(),
        )
        .await
        .unwrap();
        assert!(cached(&b, "g-1").await);
        let applied_before = b.stats().events_applied;
        fleet.bus.publish(event.encode()).await.unwrap();
        applied(&b, applied_before + 1).await;
        let l1_hits = b.stats().l1_hits;
        assert!(cached(&b, "g-1").await, "still in L2");
        assert_eq!(
            b.stats().l1_hits,
            l1_hits,
            "{}'s event dropped b's L1 copy",
            event.source_node
        );
    }
    let own = Event::new(
        cache_core::EventType::PricingUpdated,
        "gpu_g-1",
        "b",
        "id-3",
        0.0,
    );
    let ignored_before = b.stats().own_events_ignored;
    fleet.bus.publish(own.encode()).await.unwrap();
    eventually("b skips its own event", || {
        b.stats().own_events_ignored == ignored_before + 1
    })
    .await;
    b.shutdown().await;
}

#[derive(Default)]
struct Rejections(Mutex<Vec<ErrorKind>>);

impl Observer for Rejections {
    fn on_event_rejected(&self, error: &Error) {
        self.0.lock().unwrap().push(error.kind());
    }
}

#[tokio::test]
async fn malformed_messages_are_counted_and_dropped_and_the_listener_goes_on() {
    let fleet = Fleet::new();
    let seen = Arc::new(Rejections::default());
    let b = fleet
        .builder("b")
        .observer(seen.clone())
        .build()
        .await
        .unwrap();
    let a = fleet.node("a").await;
    warm(&a, &b, "g-1").await;
    applied(&b, 1).await;
    for junk in [
        &b"not json"[..],
        br#"{"event_type": "gpu_exploded", "source_node": "x", "affected_namespaces": []}"#,
        &[0xff; 3],
    ] {
        fleet.bus.publish(junk.to_vec()).await.unwrap();
    }
    a.notify(Notification::gpu_availability_changed("g-1", "offline"))
        .await
        .unwrap();
    applied(&b, 2).await;
    assert!(
        !cached(&b, "g-1").await,
        "a valid event after the junk is still applied"
    );
    let s = b.stats();
    assert_eq!(s.events_rejected, 3);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            ErrorKind::MalformedEvent,
            ErrorKind::UnknownEventType,
            ErrorKind::MalformedEvent
        ]
    );
    assert_eq!(b.health().await.status, HealthStatus::Healthy);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn events_from_seed_python_nodes_are_applied() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    warm(&a, &b, "g-1").await;
    applied(&b, 1).await;
    // Exactly what a shipped seed node publishes for notify_booking_created.
    let python = json!({
        "event_type": "CacheEventType.BOOKING_CREATED", "resource_id": "booking_9",
        "data": {"booking_id": "9", "gpu_id": "g-1"}, "timestamp": 1700000000.5,
        "source_node": "edge_node_py000001", "event_id": "6f1c",
        "affected_namespaces": ["gpu_avail", "gpu_pricing", "order_book"]
    });
    fleet
        .bus
        .publish(serde_json::to_vec(&python).unwrap())
        .await
        .unwrap();
    applied(&b, 2).await;
    assert!(!cached(&b, "g-1").await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn duplicated_and_reordered_events_are_harmless() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    warm(&a, &b, "g-1").await;
    warm(&a, &b, "g-2").await;
    applied(&b, 2).await;
    fleet.bus.hold();
    fleet.bus.duplicate_next(2);
    a.notify(Notification::pricing_updated("A100", 1.0))
        .await
        .unwrap();
    a.notify(Notification::gpu_availability_changed("g-1", "offline"))
        .await
        .unwrap();
    fleet.bus.release_reversed();
    applied(&b, 6).await;
    assert!(!cached(&b, "g-1").await && !cached(&b, "g-2").await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_bypasses_and_drops_l1_until_resubscribed() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    warm(&a, &b, "g-1").await;
    applied(&b, 1).await;
    assert!(cached(&b, "g-1").await);

    fleet.bus.disconnect();
    eventually("b sees the disconnect", || b.stats().resyncs == 1).await;
    let health = b.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(!health.bus_connected && health.reason.is_some());
    // This booking's event is lost for B, but B no longer trusts its L1.
    a.notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    assert!(!cached(&b, "g-1").await);
    let s = b.stats();
    assert_eq!(s.l1_hits, 1, "no L1 hit while the bus is down");

    a.set(
        "gpu_availability",
        &json!({"id": "g-2"}),
        &"g-2".to_string(),
    )
    .await
    .unwrap();
    assert!(cached(&b, "g-2").await);
    assert!(cached(&b, "g-2").await);
    assert_eq!(
        b.stats().l1_hits,
        1,
        "nothing is back-filled while the bus is down"
    );

    fleet.bus.reconnect();
    eventually("b resubscribes", || b.stats().resyncs == 2).await;
    assert_eq!(b.health().await.status, HealthStatus::Healthy);
    assert!(cached(&b, "g-2").await);
    assert!(cached(&b, "g-2").await);
    assert_eq!(b.stats().l1_hits, 2, "L1 is used again after resubscribing");
    a.shutdown().await;
    b.shutdown().await;
}

#[derive(Default)]
struct Lags(Mutex<Vec<(String, Duration)>>);

impl Observer for Lags {
    fn on_event_applied(&self, event: &Event, lag: Duration) {
        self.0.lock().unwrap().push((event.event_id.clone(), lag));
    }
    fn on_connection_state(&self, _state: ConnectionState) {}
}

#[tokio::test]
async fn observers_see_every_applied_event_with_its_lag() {
    let fleet = Fleet::new();
    let lags = Arc::new(Lags::default());
    let a = fleet.node("a").await;
    let b = fleet
        .builder("b")
        .observer(lags.clone())
        .build()
        .await
        .unwrap();
    fleet.bus.hold();
    let event = a
        .notify(Notification::order_book_updated("all"))
        .await
        .unwrap();
    fleet.clock.advance(Duration::from_millis(3));
    fleet.bus.release();
    applied(&b, 1).await;
    let seen = lags.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, event.event_id);
    let lag = seen[0].1;
    assert!(
        lag >= Duration::from_millis(2) && lag <= Duration::from_millis(4),
        "{lag:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
