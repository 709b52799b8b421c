//! A three-node fleet: a booking on one node removes availability, pricing and order book from
//! the others, and nothing else.

use cache_edge::{EdgeCache, Notification};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{all_applied, shutdown, Backends};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    version: u64,
}

const BOOKED: [&str; 3] = ["gpu_availability", "gpu_pricing", "order_book"];
const UNRELATED: [&str; 3] = ["provider_status", "market_stats", "historical_data"];

async fn read(node: &EdgeCache, ns: &str) -> Option<u64> {
    node.get::<Snapshot, _>(ns, &json!({"gpu_id": "g-42"}))
        .await
        .unwrap()
        .map(|s| s.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_on_a_clears_b_and_c_and_spares_unrelated_namespaces() {
    let backends = Backends::new();
    let nodes = backends.nodes(&["edge-a", "edge-b", "edge-c"]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for ns in BOOKED.iter().chain(&UNRELATED) {
        a.set(ns, &json!({"gpu_id": "g-42"}), &Snapshot { version: 1 })
            .await
            .unwrap();
    }
    all_applied(&nodes[1..], 5).await;
    // B and C now hold version 1 (the booked namespaces in L1, the others in L2).
    for node in [b, c] {
        for ns in BOOKED.iter().chain(&UNRELATED) {
            assert_eq!(read(node, ns).await, Some(1), "{} {ns}", node.node_id());
        }
    }
    let l1_hits_before = b.stats().l1_hits;
    for ns in BOOKED {
        read(b, ns).await;
    }
    assert_eq!(
        b.stats().l1_hits - l1_hits_before,
        3,
        "B serves the booked namespaces from L1"
    );

    a.notify(Notification::booking_created("bk-1", "g-42"))
        .await
        .unwrap();
    all_applied(&nodes[1..], 6).await;

    for node in [a, b, c] {
        for ns in BOOKED {
            assert_eq!(
                read(node, ns).await,
                None,
                "{} still serves the previous {ns}",
                node.node_id()
            );
        }
        for ns in UNRELATED {
            assert_eq!(
                read(node, ns).await,
                Some(1),
                "{} lost unrelated {ns}",
                node.node_id()
            );
        }
    }
    // The next load on C is fresh and reaches B through L2.
    c.set(
        "gpu_availability",
        &json!({"gpu_id": "g-42"}),
        &Snapshot { version: 2 },
    )
    .await
    .unwrap();
    assert_eq!(read(b, "gpu_availability").await, Some(2));
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_is_seen_by_every_node_of_a_larger_fleet() {
    let backends = Backends::new();
    let ids: Vec<String> = (0..8).map(|i| format!("edge-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let nodes = backends.nodes(&ids).await;
    nodes[0]
        .set(
            "order_book",
            &json!({"market": "all"}),
            &Snapshot { version: 1 },
        )
        .await
        .unwrap();
    all_applied(&nodes[1..], 1).await;
    for node in &nodes {
        assert!(node
            .get::<Snapshot, _>("order_book", &json!({"market": "all"}))
            .await
            .unwrap()
            .is_some());
    }
    nodes[5]
        .notify(Notification::booking_cancelled("bk-1", "g-1"))
        .await
        .unwrap();
    all_applied(&nodes[..1], 1).await; // the writer applied only the cancellation
    all_applied(&nodes[1..], 2).await; // the others its write, then the cancellation
    for node in &nodes {
        assert!(node
            .get::<Snapshot, _>("order_book", &json!({"market": "all"}))
            .await
            .unwrap()
            .is_none());
    }
    shutdown(nodes).await;
}

/// The only test that uses the process-wide embedded backends; every other test has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_built_with_defaults_share_the_embedded_l2_and_bus() {
    let a = EdgeCache::builder().build().await.unwrap();
    let b = EdgeCache::builder().build().await.unwrap();
    assert_ne!(a.node_id(), b.node_id());
    let p = json!({"gpu_id": format!("embedded-{}", a.node_id())});
    a.set("gpu_availability", &p, &Snapshot { version: 7 })
        .await
        .unwrap();
    // Wait for the write's event to reach B first, or it could drop B's copy after the read.
    all_applied(std::slice::from_ref(&b), 1).await;
    assert_eq!(
        read_p(&b, &p).await,
        Some(7),
        "B reads A's write from the shared L2"
    );
    assert_eq!(read_p(&b, &p).await, Some(7));
    assert!(b.stats().l1_hits >= 1);
    let before = b.stats().events_applied;
    a.invalidate_namespace("gpu_availability", "embedded test")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.stats().events_applied == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never received A's event on the shared bus"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(read_p(&b, &p).await, None);
    a.shutdown().await;
    b.shutdown().await;
}

async fn read_p(node: &EdgeCache, p: &serde_json::Value) -> Option<u64> {
    node.get::<Snapshot, _>("gpu_availability", p)
        .await
        .unwrap()
        .map(|s| s.version)
}
