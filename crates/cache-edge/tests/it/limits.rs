//! Bounded input: messages over a bound are refused before they are decoded and counted per
//! reason, with L1 kept; calls over one fail with `LimitExceeded` and write nothing.

use std::sync::Arc;

use cache_core::{Clock, ErrorKind, Event, EventType, Limits, Scope};
use cache_edge::{EdgeCache, SetOptions};
use serde_json::json;

use crate::support::{publish_raw, Fleet};

fn event(fleet: &Fleet, id: &str, namespaces: usize, scope: Scope) -> Event {
    let mut event = Event::new(
        EventType::BookingCreated,
        "booking_b-1",
        "elsewhere",
        id,
        fleet.clock.now().as_secs_f64(),
    );
    event.affected_namespaces = (0..namespaces)
        .map(|i| {
            if i == 0 {
                "gpu_avail".to_owned()
            } else {
                format!("ns{i}")
            }
        })
        .collect();
    event.scope = scope;
    event
}

async fn in_l1(node: &EdgeCache) -> bool {
    let hits = node.stats().l1_hits;
    let value = node
        .get::<u32, _>("gpu_availability", &json!({"gpu_id": "g-1"}))
        .await
        .unwrap();
    value == Some(Arc::new(1)) && node.stats().l1_hits == hits + 1
}

#[tokio::test]
async fn messages_over_a_bound_are_refused_before_decoding_and_l1_is_kept() {
    let fleet = Fleet::new();
    let limits = Limits::default().keys_per_event(2);
    let b = fleet.builder("b").limits(limits).build().await.unwrap();
    b.set("gpu_availability", &json!({"gpu_id": "g-1"}), &1_u32)
        .await
        .unwrap();
    assert!(in_l1(&b).await);

    // Nested 17 deep: refused by the scan, before serde_json sees it.
    let mut deep = event(&fleet, "e-deep", 1, Scope::Namespace).encode();
    deep.pop();
    deep.extend_from_slice(br#","data2":"#);
    deep.extend_from_slice(&[b'['; 17]);
    deep.extend_from_slice(&[b']'; 17]);
    deep.push(b'}');
    publish_raw(&fleet, &b, deep).await;
    publish_raw(&fleet, &b, vec![b' '; cache_core::MAX_EVENT_BYTES + 1]).await;
    let wide = event(&fleet, "e-wide", 65, Scope::Namespace).encode();
    publish_raw(&fleet, &b, wide).await;
    let keys = Scope::Keys(vec![
        "gpu_avail:0".into(),
        "gpu_avail:1".into(),
        "gpu_avail:2".into(),
    ]);
    publish_raw(&fleet, &b, event(&fleet, "e-keys", 0, keys).encode()).await;

    let s = b.stats();
    assert_eq!(
        (
            s.rejected_too_deep,
            s.rejected_oversized,
            s.rejected_too_many_namespaces,
            s.rejected_too_many_keys
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(s.events_applied, 0);
    assert!(in_l1(&b).await, "no refused message touched L1");

    // The exposure: within the bounds, the same invalidation applies.
    publish_raw(
        &fleet,
        &b,
        event(&fleet, "e-ok", 64, Scope::Namespace).encode(),
    )
    .await;
    assert_eq!(b.stats().events_applied, 1);
    assert!(!in_l1(&b).await);
    b.shutdown().await;
}

#[tokio::test]
async fn calls_over_a_bound_fail_and_write_nothing() {
    let fleet = Fleet::new();
    let limits = Limits::default()
        .params_bytes(64)
        .tags_per_entry(2)
        .tag_bytes(8);
    let a = fleet.builder("a").limits(limits).build().await.unwrap();
    let long = json!({"gpu_id": "g".repeat(100)});
    let kinds = [
        a.key("gpu_availability", &long).unwrap_err().kind(),
        a.get::<u32, _>("gpu_availability", &long)
            .await
            .unwrap_err()
            .kind(),
        a.set("gpu_availability", &long, &1_u32)
            .await
            .unwrap_err()
            .kind(),
        a.get_or_load("gpu_availability", &long, SetOptions::new(), || async {
            Ok::<u32, std::io::Error>(1)
        })
        .await
        .unwrap_err()
        .kind(),
        a.typed::<u32>("gpu_availability")
            .unwrap()
            .get(&long)
            .await
            .unwrap_err()
            .kind(),
    ];
    assert!(
        kinds.iter().all(|k| *k == ErrorKind::LimitExceeded),
        "{kinds:?}"
    );

    let p = json!({"gpu_id": "g-1"});
    for options in [
        SetOptions::new().tags(["a", "b", "c"]),
        SetOptions::new().tag("much-too-long"),
    ] {
        let err = a
            .set_with("gpu_availability", &p, &1_u32, options)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    }
    assert_eq!(a.stats().sets, 0);
    assert_eq!(a.stats().events_published, 0);
    let fresh = fleet.node("fresh").await;
    assert_eq!(
        fresh.get::<u32, _>("gpu_availability", &p).await.unwrap(),
        None,
        "nothing reached L2"
    );
    // Within the bounds, the same calls work.
    a.set_with(
        "gpu_availability",
        &p,
        &1_u32,
        SetOptions::new().tags(["a", "b"]),
    )
    .await
    .unwrap();
    assert_eq!(
        fresh.get::<u32, _>("gpu_availability", &p).await.unwrap(),
        Some(Arc::new(1))
    );
    a.shutdown().await;
    fresh.shutdown().await;
}

#[tokio::test]
async fn an_l2_value_over_the_readers_bound_is_a_counted_miss_and_never_in_l1() {
    let fleet = Fleet::new();
    let writer = fleet.node("writer").await;
    let reader = fleet
        .builder("reader")
        .max_value_bytes(1_000)
        .build()
        .await
        .unwrap();
    let p = json!({"gpu_id": "g-big"});
    writer
        .set("gpu_availability", &p, &"x".repeat(2_000))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            reader
                .get::<String, _>("gpu_availability", &p)
                .await
                .unwrap(),
            None
        );
    }
    let s = reader.stats();
    assert_eq!((s.decode_errors, s.l1_hits, s.l2_hits), (2, 0, 0));
    // A value within the bound reads as usual.
    writer
        .set("gpu_availability", &p, &"x".repeat(500))
        .await
        .unwrap();
    assert!(reader
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_some());
    writer.shutdown().await;
    reader.shutdown().await;
}
