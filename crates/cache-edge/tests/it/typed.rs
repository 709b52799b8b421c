//! `TypedNamespace`: one namespace resolved once, read and written as one type, through the
//! same keys, counters and events as the string-named methods.

use std::sync::Arc;

use cache_core::ErrorKind;
use cache_edge::SetOptions;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{applied, Fleet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Availability {
    gpu_id: String,
    available: bool,
}

#[derive(Serialize)]
struct Gpu<'a> {
    gpu_id: &'a str,
}

#[tokio::test]
async fn a_handle_reads_and_writes_what_the_named_methods_do() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let on_a = a.typed::<Availability>("gpu_availability").unwrap();
    let on_b = b.typed::<Availability>("gpu_availability").unwrap();
    assert_eq!(on_a.config().name, "gpu_availability");
    assert_eq!(
        format!("{on_a:?}"),
        format!(
            "TypedNamespace {{ namespace: \"gpu_availability\", value: \"{}\" }}",
            std::any::type_name::<Availability>()
        )
    );
    let gpu = Gpu { gpu_id: "g-1" };
    assert_eq!(
        on_a.key(&gpu).unwrap(),
        a.key("gpu_availability", &json!({"gpu_id": "g-1"}))
            .unwrap()
    );

    let up = Availability {
        gpu_id: "g-1".into(),
        available: true,
    };
    let events = b.stats().events_applied;
    on_a.set(&gpu, &up).await.unwrap();
    // Its announcement reaches b before anything below counts b's applied events.
    applied(&b, events + 1).await;
    // The named method on another node finds it under the same key.
    let named = b
        .get::<Availability, _>("gpu_availability", &json!({"gpu_id": "g-1"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*named, up);
    let through_handle = on_b.get(&gpu).await.unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&named, &through_handle),
        "the second read is an L1 hit"
    );
    assert_eq!((b.stats().l2_hits, b.stats().l1_hits), (1, 1));

    // A write through the handle reaches the other node's L1 as an event.
    let events = b.stats().events_applied;
    let down = Availability {
        available: false,
        ..up.clone()
    };
    on_a.set_with(&gpu, &down, SetOptions::new()).await.unwrap();
    applied(&b, events + 1).await;
    assert_eq!(*on_b.get(&gpu).await.unwrap().unwrap(), down);

    // And so does an invalidation.
    let events = b.stats().events_applied;
    on_a.invalidate(&gpu).await.unwrap();
    applied(&b, events + 1).await;
    assert_eq!(on_b.get(&gpu).await.unwrap(), None);

    let loaded = on_b
        .clone()
        .get_or_load(&gpu, SetOptions::new(), || async {
            Ok::<_, std::io::Error>(up.clone())
        })
        .await
        .unwrap();
    assert_eq!(*loaded, up);
    assert_eq!(b.stats().loads, 1);

    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_handle_on_an_unknown_namespace_is_refused() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let err = a.typed::<Availability>("gpu_availabilty").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownNamespace);
    assert!(err.to_string().contains("gpu_availability"), "{err}");
    a.shutdown().await;
}
