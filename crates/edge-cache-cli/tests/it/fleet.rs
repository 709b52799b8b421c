//! A fleet of three edge nodes, each its own OS process (`edge-cache serve`), sharing one real
//! Redis: what one node writes or announces reaches the others, and nothing more than that.

use serde_json::{json, Value};
use test_support::RedisServer;

use crate::support::{edge, ServeNode};

const AVAILABILITY: &str = "gpu_availability";
const PRICING: &str = "gpu_pricing";
const ORDER_BOOK: &str = "order_book";
const PROVIDER: &str = "provider_status";

/// The namespaces a booking drops, and one it leaves alone.
const DROPPED_BY_BOOKING: [&str; 3] = [AVAILABILITY, PRICING, ORDER_BOOK];

fn value_of(namespace: &str) -> Value {
    json!({"namespace": namespace, "gpu_id": "g-42", "seq": 1})
}

#[test]
fn three_processes_share_one_redis_and_see_each_others_changes() {
    let redis = RedisServer::start();
    // Started together, then awaited: three node start-ups overlap.
    let [mut a, mut b, mut c] =
        ["edge-a", "edge-b", "edge-c"].map(|id| ServeNode::spawn(&redis, id));
    for node in [&mut a, &mut b, &mut c] {
        node.wait_ready();
    }
    let pids = [a.pid(), b.pid(), c.pid()];
    assert!(pids[0] != pids[1] && pids[1] != pids[2] && pids[0] != pids[2]);

    let g42 = json!({"gpu_id": "g-42"});
    let mut published = 0;

    // A writes one entry in each of four namespaces; every write announces its key.
    for namespace in [AVAILABILITY, PRICING, ORDER_BOOK, PROVIDER] {
        a.set(namespace, &g42, &value_of(namespace));
        published += 1;
    }
    // Once B and C have applied A's announcements, nothing in flight can drop a back-fill.
    for node in [&mut b, &mut c] {
        node.wait_counter("events_applied", published);
    }

    // B and C read them from L2 ...
    for node in [&mut b, &mut c] {
        for namespace in [AVAILABILITY, PRICING, ORDER_BOOK, PROVIDER] {
            assert_eq!(
                node.get(namespace, &g42),
                Some(value_of(namespace)),
                "{namespace}"
            );
        }
        assert_eq!(node.counter("l2_hits"), 4);
        assert_eq!(node.counter("l1_hits"), 0);
    }
    // ... and back-filled their L1 for the critical namespaces (provider_status is not one).
    for namespace in [AVAILABILITY, PRICING, ORDER_BOOK, PROVIDER] {
        assert_eq!(
            b.get(namespace, &g42),
            Some(value_of(namespace)),
            "{namespace}"
        );
    }
    assert_eq!(b.counter("l1_hits"), 3, "{}", b.stats());
    assert_eq!(b.counter("l2_hits"), 5, "{}", b.stats());
    assert_eq!(b.l1_entries(AVAILABILITY), 1);
    assert_eq!(b.l1_entries(PROVIDER), 0);

    // A booking on A: availability, pricing and the order book go, fleet-wide.
    let reply = a.ok("notify booking-created booking=bk-1 gpu=g-42");
    let event = &reply["value"];
    assert_eq!(event["event_type"], "booking_created");
    assert_eq!(event["resource_id"], "booking_bk-1");
    assert_eq!(event["source_node"], "edge-a");
    assert_eq!(event["data"]["gpu_id"], "g-42");
    assert_eq!(
        event["affected_namespaces"],
        json!(["gpu_avail", "gpu_pricing", "order_book"])
    );
    published += 1;
    for node in [&mut b, &mut c] {
        node.wait_counter("events_applied", published);
    }
    for node in [&mut a, &mut b, &mut c] {
        for namespace in DROPPED_BY_BOOKING {
            assert_eq!(
                node.get(namespace, &g42),
                None,
                "{namespace} survived the booking"
            );
        }
        assert_eq!(node.get(PROVIDER, &g42), Some(value_of(PROVIDER)));
    }
    assert_eq!(b.l1_entries(AVAILABILITY), 0);

    // A writes two keys of one namespace; B and C read them and keep them in L1.
    let (g43, g44) = (json!({"gpu_id": "g-43"}), json!({"gpu_id": "g-44"}));
    a.set(AVAILABILITY, &g43, &json!("g-43 v1"));
    a.set(AVAILABILITY, &g44, &json!("g-44 v1"));
    published += 2;
    for node in [&mut b, &mut c] {
        node.wait_counter("events_applied", published);
        for _ in 0..2 {
            assert_eq!(node.get(AVAILABILITY, &g43), Some(json!("g-43 v1")));
            assert_eq!(node.get(AVAILABILITY, &g44), Some(json!("g-44 v1")));
        }
        assert_eq!(node.l1_entries(AVAILABILITY), 2);
    }

    // A rewrites one key: B and C read the new value, and the other key is untouched, in their
    // L1 (still an L1 hit) and in Redis (a fresh process, with an empty L1, still reads it).
    a.set(AVAILABILITY, &g43, &json!("g-43 v2"));
    published += 1;
    for node in [&mut b, &mut c] {
        node.wait_counter("events_applied", published);
        assert_eq!(node.get(AVAILABILITY, &g43), Some(json!("g-43 v2")));
        let l1_hits = node.counter("l1_hits");
        assert_eq!(node.get(AVAILABILITY, &g44), Some(json!("g-44 v1")));
        assert_eq!(node.counter("l1_hits"), l1_hits + 1, "g-44 left L1");
        assert_eq!(node.l1_entries(AVAILABILITY), 2);
    }
    let fresh = edge(&redis, &["get", AVAILABILITY, &g44.to_string()]);
    assert_eq!(fresh.code, Some(0), "{fresh:?}");
    assert_eq!(fresh.stdout.trim(), "\"g-44 v1\"");

    // The same for a namespace that lives in L2 only.
    let g45 = json!({"gpu_id": "g-45"});
    a.set(PROVIDER, &g45, &json!("p v1"));
    published += 1;
    for node in [&mut b, &mut c] {
        node.wait_counter("events_applied", published);
        assert_eq!(node.get(PROVIDER, &g45), Some(json!("p v1")));
        assert_eq!(node.get(PROVIDER, &g42), Some(value_of(PROVIDER)));
    }

    // Nobody rejected anything, and every node exits cleanly on quit.
    for node in [&mut a, &mut b, &mut c] {
        assert_eq!(node.counter("events_rejected"), 0);
        assert_eq!(node.counter("l2_errors"), 0);
    }
    assert_eq!(a.counter("events_published"), published);
    for node in [a, b, c] {
        assert!(node.quit().success());
    }
}
