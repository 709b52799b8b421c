//! Signed events on a fleet: nodes of one key ring hear each other; unsigned, forged, replayed
//! and stale messages are refused, counted per reason, and change nothing in L1.

use std::sync::Arc;

use cache_core::signing::{EventKeys, SignatureMode, SigningKey};
use cache_core::{Clock, Event, EventType, Scope};
use cache_edge::EdgeCache;
use serde_json::json;

use crate::support::{applied, eventually, publish_raw, Fleet};

fn key(id: &str, byte: u8) -> SigningKey {
    SigningKey::new(id, vec![byte; 32]).unwrap()
}

fn ring() -> EventKeys {
    EventKeys::new(key("fleet-1", 7))
}

/// A namespace-wide invalidation of `gpu_avail`, as another node would issue it.
fn wipe(fleet: &Fleet, event_id: &str, seconds_from_now: f64) -> Vec<u8> {
    let mut event = Event::new(
        EventType::BookingCreated,
        "booking_b-9",
        "intruder",
        event_id,
        fleet.clock.now().as_secs_f64() + seconds_from_now,
    );
    event.affected_namespaces = vec!["gpu_avail".to_owned()];
    event.scope = Scope::Namespace;
    event.encode()
}

/// Whether `node` still serves g-1 from L1 (a hit, not an L2 read).
async fn still_in_l1(node: &EdgeCache) -> bool {
    let before = node.stats();
    let value = node
        .get::<u32, _>("gpu_availability", &json!({"gpu_id": "g-1"}))
        .await
        .unwrap();
    let after = node.stats();
    value == Some(Arc::new(1)) && after.l1_hits == before.l1_hits + 1
}

#[tokio::test]
async fn nodes_of_one_ring_hear_each_other() {
    let fleet = Fleet::new();
    let a = fleet.builder("a").event_keys(ring()).build().await.unwrap();
    let b = fleet.builder("b").event_keys(ring()).build().await.unwrap();
    let p = json!({"gpu_id": "g-1"});
    b.set("gpu_availability", &p, &1_u32).await.unwrap();
    let events = b.stats().events_applied;
    a.set("gpu_availability", &p, &2_u32).await.unwrap();
    applied(&b, events + 1).await;
    assert_eq!(
        *b.get::<u32, _>("gpu_availability", &p)
            .await
            .unwrap()
            .unwrap(),
        2
    );
    let s = b.stats();
    assert_eq!(
        (
            s.rejected_unsigned,
            s.rejected_bad_mac,
            s.rejected_unknown_key,
            s.rejected_replayed
        ),
        (0, 0, 0, 0)
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unsigned_forged_and_malformed_messages_are_refused_and_l1_is_kept() {
    let fleet = Fleet::new();
    let b = fleet.builder("b").event_keys(ring()).build().await.unwrap();
    b.set("gpu_availability", &json!({"gpu_id": "g-1"}), &1_u32)
        .await
        .unwrap();
    assert!(still_in_l1(&b).await);

    publish_raw(&fleet, &b, wipe(&fleet, "e-unsigned", 0.0)).await;
    let unknown = EventKeys::new(key("other", 7)).sign(&wipe(&fleet, "e-unknown", 0.0));
    publish_raw(&fleet, &b, unknown).await;
    let impostor = EventKeys::new(key("fleet-1", 8)).sign(&wipe(&fleet, "e-impostor", 0.0));
    publish_raw(&fleet, &b, impostor).await;
    let mut tampered = ring().sign(&wipe(&fleet, "e-tampered", 0.0));
    let at = tampered.iter().position(|&b| b == b'9').unwrap();
    tampered[at] = b'8';
    publish_raw(&fleet, &b, tampered).await;
    let mut malformed = wipe(&fleet, "e-malformed", 0.0);
    malformed.pop();
    malformed.extend_from_slice(br#","sig":"fleet-1:abc"}"#);
    publish_raw(&fleet, &b, malformed).await;
    publish_raw(&fleet, &b, b"\x00\xffnot json at all".to_vec()).await;
    publish_raw(&fleet, &b, vec![b'{'; cache_core::MAX_EVENT_BYTES + 1]).await;

    let s = b.stats();
    assert_eq!(s.rejected_unsigned, 2, "the unsigned event and the garbage");
    assert_eq!(s.rejected_unknown_key, 1);
    assert_eq!(s.rejected_bad_mac, 2, "another secret, and a changed byte");
    assert_eq!(s.rejected_malformed_signature, 1);
    assert_eq!(s.rejected_oversized, 1, "the oversized message");
    assert_eq!(s.events_rejected, 0);
    assert_eq!(s.events_applied, 0);
    assert!(still_in_l1(&b).await, "no refused message touched L1");

    // The exposure: the same message, signed with the ring's key, does wipe the namespace.
    publish_raw(&fleet, &b, ring().sign(&wipe(&fleet, "e-valid", 0.0))).await;
    assert_eq!(b.stats().events_applied, 1);
    assert!(!still_in_l1(&b).await, "a valid event invalidates");
    b.shutdown().await;
}

#[tokio::test]
async fn a_replayed_or_stale_event_is_refused() {
    let fleet = Fleet::new();
    let b = fleet.builder("b").event_keys(ring()).build().await.unwrap();
    let valid = ring().sign(&wipe(&fleet, "e-1", 0.0));
    publish_raw(&fleet, &b, valid.clone()).await;
    assert_eq!(b.stats().events_applied, 1);
    b.set("gpu_availability", &json!({"gpu_id": "g-1"}), &1_u32)
        .await
        .unwrap();

    publish_raw(&fleet, &b, valid).await;
    let old = ring().sign(&wipe(&fleet, "e-2", -61.0));
    publish_raw(&fleet, &b, old).await;
    let future = ring().sign(&wipe(&fleet, "e-3", 61.0));
    publish_raw(&fleet, &b, future).await;
    let s = b.stats();
    assert_eq!((s.rejected_replayed, s.rejected_stale), (1, 2));
    assert_eq!(s.events_applied, 1);
    assert!(still_in_l1(&b).await);

    // Within the window, a new id is applied.
    publish_raw(&fleet, &b, ring().sign(&wipe(&fleet, "e-4", -59.0))).await;
    assert_eq!(b.stats().events_applied, 2);
    b.shutdown().await;
}

#[tokio::test]
async fn accept_unsigned_takes_seed_events_but_still_refuses_forgeries() {
    let fleet = Fleet::new();
    let keys = ring().mode(SignatureMode::AcceptUnsigned);
    let b = fleet.builder("b").event_keys(keys).build().await.unwrap();
    publish_raw(&fleet, &b, wipe(&fleet, "e-seed", 0.0)).await;
    assert_eq!(b.stats().events_applied, 1);
    let forged = EventKeys::new(key("fleet-1", 9)).sign(&wipe(&fleet, "e-forged", 0.0));
    publish_raw(&fleet, &b, forged).await;
    let s = b.stats();
    assert_eq!((s.events_applied, s.rejected_bad_mac), (1, 1));
    b.shutdown().await;
}

#[tokio::test]
async fn keys_rotate_without_a_refused_event() {
    let fleet = Fleet::new();
    let (old, new) = (key("2026-11", 1), key("2026-12", 2));
    // Mid-rotation: every node verifies both keys; one already signs with the new one.
    let a = fleet
        .builder("a")
        .event_keys(EventKeys::new(new.clone()).verify_with(old.clone()))
        .build()
        .await
        .unwrap();
    let b = fleet
        .builder("b")
        .event_keys(EventKeys::new(old.clone()).verify_with(new.clone()))
        .build()
        .await
        .unwrap();
    let p = json!({"gpu_id": "g-1"});
    let (a_events, b_events) = (a.stats().events_applied, b.stats().events_applied);
    a.set("gpu_availability", &p, &1_u32).await.unwrap();
    b.set("gpu_availability", &p, &2_u32).await.unwrap();
    applied(&b, b_events + 1).await;
    applied(&a, a_events + 1).await;
    for node in [&a, &b] {
        let s = node.stats();
        assert_eq!(
            s.rejected_unknown_key + s.rejected_bad_mac + s.rejected_unsigned,
            0
        );
    }
    // After it: a node that dropped the old key refuses what is still signed with it.
    let done = fleet
        .builder("c")
        .event_keys(EventKeys::new(new))
        .build()
        .await
        .unwrap();
    let c_received = done.stats().events_received;
    b.set("gpu_availability", &p, &3_u32).await.unwrap();
    eventually("c hears b's write", || {
        done.stats().events_received > c_received
    })
    .await;
    assert_eq!(done.stats().rejected_unknown_key, 1);
    for node in [a, b, done] {
        node.shutdown().await;
    }
}
