//! One regression test per defect of the seed design (../shared/seed/NOTES.md) that
//! edge-cache fixes at the fleet level; the number in each name is the defect's.

use cache_core::{Event, EventBus, NamespaceConfig, Namespaces};
use cache_edge::{Notification, SetOptions};
use serde_json::json;

use crate::{all_applied, shutdown, Backends};

#[tokio::test]
async fn d1_events_are_written_in_the_value_form_seed_receivers_parse() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["a"]).await;
    let event = nodes[0]
        .notify(Notification::booking_created("1", "g"))
        .await
        .unwrap();
    let wire: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
    assert_eq!(wire["event_type"], "booking_created");
    assert_eq!(
        wire["affected_namespaces"],
        json!(["gpu_avail", "gpu_pricing", "order_book"])
    );
    shutdown(nodes).await;
}

#[tokio::test]
async fn d2_a_single_node_clears_its_own_cache_when_it_notifies() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["solo"]).await;
    let p = json!({"gpu_id": "g"});
    nodes[0]
        .set("gpu_availability", &p, &"free".to_string())
        .await
        .unwrap();
    nodes[0]
        .notify(Notification::gpu_availability_changed("g", "booked"))
        .await
        .unwrap();
    assert!(nodes[0]
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    shutdown(nodes).await;
}

#[tokio::test]
async fn d6_d10_resource_invalidation_matches_exactly_and_globs_are_literal() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["a"]).await;
    let a = &nodes[0];
    for gpu in ["g-1", "g-2"] {
        a.set_with(
            "gpu_availability",
            &json!({"gpu_id": gpu}),
            &gpu.to_string(),
            SetOptions::new().tag(gpu),
        )
        .await
        .unwrap();
    }
    a.invalidate_resource("gpu_availability", "*")
        .await
        .unwrap();
    a.invalidate_resource("gpu_availability", "g-[12]")
        .await
        .unwrap();
    for gpu in ["g-1", "g-2"] {
        assert!(a
            .get::<String, _>("gpu_availability", &json!({"gpu_id": gpu}))
            .await
            .unwrap()
            .is_some());
    }
    a.invalidate_resource("gpu_availability", "g-1")
        .await
        .unwrap();
    assert!(a
        .get::<String, _>("gpu_availability", &json!({"gpu_id": "g-1"}))
        .await
        .unwrap()
        .is_none());
    assert!(a
        .get::<String, _>("gpu_availability", &json!({"gpu_id": "g-2"}))
        .await
        .unwrap()
        .is_some());
    shutdown(nodes).await;
}

#[tokio::test]
async fn d7_a_set_on_one_node_does_not_wipe_the_namespace_on_others_or_in_l2() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["a", "b"]).await;
    for gpu in 0..20 {
        nodes[0]
            .set("gpu_pricing", &json!({"gpu": gpu}), &gpu)
            .await
            .unwrap();
    }
    all_applied(&nodes[1..], 20).await;
    for gpu in 0..20 {
        assert_eq!(
            *nodes[1]
                .get::<i32, _>("gpu_pricing", &json!({"gpu": gpu}))
                .await
                .unwrap()
                .unwrap(),
            gpu
        );
    }
    assert_eq!(backends.l2.len(), 20);
    shutdown(nodes).await;
}

#[tokio::test]
async fn d11_namespaces_that_share_a_prefix_do_not_collide() {
    let backends = Backends::new();
    let mut namespaces = Namespaces::defaults();
    namespaces
        .add(
            NamespaceConfig::new("gpu", "gpu", std::time::Duration::from_secs(30))
                .critical(true)
                .event_driven(true),
        )
        .unwrap();
    let a = backends
        .builder("a")
        .namespaces(namespaces)
        .build()
        .await
        .unwrap();
    a.set("gpu_availability", &json!({"id": 1}), &1)
        .await
        .unwrap();
    a.set("gpu", &json!({"id": 1}), &2).await.unwrap();
    a.invalidate_namespace("gpu", "test").await.unwrap();
    assert!(a
        .get::<i32, _>("gpu", &json!({"id": 1}))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        *a.get::<i32, _>("gpu_availability", &json!({"id": 1}))
            .await
            .unwrap()
            .unwrap(),
        1
    );
    a.shutdown().await;
}

#[tokio::test]
async fn d16_malformed_and_oversized_messages_are_counted_not_applied() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["a"]).await;
    let mut huge = Event::new(
        cache_core::EventType::BookingCreated,
        "x",
        "other",
        "e",
        1.0,
    );
    huge.data.insert(
        "blob".into(),
        json!("x".repeat(cache_core::MAX_EVENT_BYTES)),
    );
    backends.bus.publish(huge.encode()).await.unwrap();
    backends.bus.publish(b"{".to_vec()).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while nodes[0].stats().events_rejected + nodes[0].stats().rejected_oversized < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rejections not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let s = nodes[0].stats();
    assert_eq!((s.rejected_oversized, s.events_rejected), (1, 1));
    assert_eq!(s.events_applied, 0);
    shutdown(nodes).await;
}

#[tokio::test]
async fn d17_the_region_is_reported_and_carried_on_events() {
    let backends = Backends::new();
    let a = backends
        .builder("a")
        .region("ap-south")
        .build()
        .await
        .unwrap();
    let event = a
        .notify(Notification::order_book_updated("all"))
        .await
        .unwrap();
    assert_eq!(event.data["region"], "ap-south");
    assert_eq!(a.stats().region, "ap-south");
    a.shutdown().await;
}
