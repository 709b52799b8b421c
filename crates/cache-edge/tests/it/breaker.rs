//! The L2 circuit breaker: consecutive L2 failures open it; while open, reads go to L1 or the
//! loader and writes fail at once, none sent to L2; after the period one call probes, and a
//! success closes it. Timing on the fleet's manual clock.

use std::sync::Arc;
use std::time::Duration;

use cache_core::ErrorKind;
use cache_edge::{EdgeCache, SetOptions};
use serde_json::json;

use crate::support::Fleet;

const OPEN_FOR: Duration = Duration::from_secs(2);

async fn node(fleet: &Fleet) -> EdgeCache {
    fleet
        .builder("a")
        .l2_breaker(3, OPEN_FOR)
        .build()
        .await
        .unwrap()
}

async fn read(node: &EdgeCache, gpu: &str) -> Option<Arc<String>> {
    node.get::<String, _>("provider_status", &json!({"provider": gpu}))
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_open_the_breaker_a_probe_closes_it() {
    let fleet = Fleet::new();
    let a = node(&fleet).await;
    a.set(
        "provider_status",
        &json!({"provider": "p"}),
        &"up".to_owned(),
    )
    .await
    .unwrap();
    fleet.l2.set_unavailable(true);

    // Three failures in a row (provider_status has no L1: every read goes to L2).
    for _ in 0..3 {
        assert_eq!(read(&a, "p").await, None);
    }
    let s = a.stats();
    assert_eq!((s.l2_errors, s.l2_skipped, s.l2_breaker_opened), (3, 0, 1));
    assert!(a.health().await.l2_breaker_open);

    // Open: nothing is sent to L2.
    for _ in 0..10 {
        assert_eq!(read(&a, "p").await, None);
    }
    let err = a
        .set(
            "provider_status",
            &json!({"provider": "p"}),
            &"x".to_owned(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert!(err.to_string().contains("skipped"), "{err}");
    let s = a.stats();
    assert_eq!((s.l2_errors, s.l2_skipped), (3, 11));

    // After the period, one probe; it fails, so the breaker opens again at once.
    fleet.clock.advance(OPEN_FOR);
    assert_eq!(read(&a, "p").await, None);
    assert_eq!(read(&a, "p").await, None);
    let s = a.stats();
    assert_eq!((s.l2_errors, s.l2_skipped, s.l2_breaker_opened), (4, 12, 2));

    // L2 is back; the next probe succeeds and closes the breaker.
    fleet.l2.set_unavailable(false);
    assert_eq!(
        read(&a, "p").await,
        None,
        "still open until the period ends"
    );
    fleet.clock.advance(OPEN_FOR);
    assert_eq!(
        read(&a, "p").await.as_deref().map(String::as_str),
        Some("up")
    );
    assert_eq!(
        read(&a, "p").await.as_deref().map(String::as_str),
        Some("up")
    );
    assert!(!a.health().await.l2_breaker_open);
    let s = a.stats();
    assert_eq!((s.l2_skipped, s.l2_hits), (13, 2));
    a.shutdown().await;
}

#[tokio::test]
async fn while_open_reads_go_to_l1_or_the_loader() {
    let fleet = Fleet::new();
    let a = node(&fleet).await;
    let cached = json!({"gpu_id": "g-1"});
    a.set("gpu_availability", &cached, &"free".to_owned())
        .await
        .unwrap();
    fleet.l2.set_unavailable(true);
    for i in 0..3 {
        // Misses of keys never written: each goes to L2 and fails.
        let _ = a
            .get::<String, _>("gpu_availability", &json!({"gpu_id": format!("x{i}")}))
            .await
            .unwrap();
    }
    assert!(a.health().await.l2_breaker_open);
    let skipped = a.stats().l2_skipped;

    // An L1 entry is served as ever.
    assert_eq!(
        a.get::<String, _>("gpu_availability", &cached)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("free")
    );
    // A miss goes to the loader, whose value is served (and kept in L1, not sent to L2).
    let loaded = a
        .get_or_load(
            "gpu_availability",
            &json!({"gpu_id": "g-2"}),
            SetOptions::new(),
            || async { Ok::<_, std::io::Error>("loaded".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(*loaded, "loaded");
    let s = a.stats();
    assert_eq!(s.loads, 1);
    assert!(s.l2_skipped > skipped, "the load's L2 calls were skipped");
    assert_eq!(s.l2_errors, 3, "no L2 call was made while open");
    a.shutdown().await;
}

#[tokio::test]
async fn zero_failures_turns_the_breaker_off() {
    let fleet = Fleet::new();
    let a = fleet
        .builder("a")
        .l2_breaker(0, OPEN_FOR)
        .build()
        .await
        .unwrap();
    fleet.l2.set_unavailable(true);
    for _ in 0..10 {
        assert_eq!(read(&a, "p").await, None);
    }
    let s = a.stats();
    assert_eq!((s.l2_errors, s.l2_skipped, s.l2_breaker_opened), (10, 0, 0));
    a.shutdown().await;
}
