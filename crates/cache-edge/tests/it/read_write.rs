//! The read path (L1 → L2 → miss, back-fill) and the write path.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, ErrorKind};
use cache_edge::SetOptions;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{applied, Fleet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Availability {
    gpu_id: String,
    available: bool,
}

fn avail(id: &str, available: bool) -> Availability {
    Availability {
        gpu_id: id.into(),
        available,
    }
}

#[tokio::test]
async fn reads_go_l1_then_l2_then_miss() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let p = json!({"gpu_id": "g-1"});

    assert!(b
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    a.set("gpu_availability", &p, &avail("g-1", true))
        .await
        .unwrap();

    let first = b
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .unwrap();
    let second = b
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*first, avail("g-1", true));
    assert!(
        Arc::ptr_eq(&first, &second),
        "an L1 hit hands out the shared decoded value"
    );
    let s = b.stats();
    assert_eq!((s.misses, s.l2_hits, s.l1_hits), (1, 1, 1));

    // A non-critical namespace is never kept in L1.
    a.set(
        "provider_status",
        &json!({"provider": "p"}),
        &"online".to_string(),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        b.get::<String, _>("provider_status", &json!({"provider": "p"}))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(b.stats().l2_hits, 3);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn backfilled_l1_never_outlives_l2_and_is_capped_at_60s() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let long = json!({"gpu_id": "long"});
    let short = json!({"gpu_id": "short"});
    let opts = |s| SetOptions::new().ttl(Duration::from_secs(s));
    a.set_with("gpu_availability", &long, &avail("long", true), opts(100))
        .await
        .unwrap();
    a.set_with("gpu_availability", &short, &avail("short", true), opts(10))
        .await
        .unwrap();
    b.get::<Availability, _>("gpu_availability", &long)
        .await
        .unwrap()
        .unwrap();
    b.get::<Availability, _>("gpu_availability", &short)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.stats().l2_hits, 2);

    // 11 s later the short entry is gone from L2, and B's L1 copy went with it.
    fleet.clock.advance(Duration::from_secs(11));
    assert!(b
        .get::<Availability, _>("gpu_availability", &short)
        .await
        .unwrap()
        .is_none());
    b.get::<Availability, _>("gpu_availability", &long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.stats().l1_hits,
        1,
        "the long entry is still in L1 at 11 s"
    );

    // At 61 s the L1 copy has expired (cap 60 s) although L2 keeps the entry until 100 s.
    fleet.clock.advance(Duration::from_secs(50));
    b.get::<Availability, _>("gpu_availability", &long)
        .await
        .unwrap()
        .unwrap();
    let s = b.stats();
    assert_eq!((s.l1_hits, s.l2_hits), (1, 3));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_set_replaces_only_its_key_on_other_nodes_and_in_l2() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let (k1, k2) = (json!({"gpu_id": "g-1"}), json!({"gpu_id": "g-2"}));
    a.set("gpu_availability", &k1, &avail("g-1", true))
        .await
        .unwrap();
    a.set("gpu_availability", &k2, &avail("g-2", true))
        .await
        .unwrap();
    applied(&b, 2).await;
    // B caches both in L1.
    b.get::<Availability, _>("gpu_availability", &k1)
        .await
        .unwrap()
        .unwrap();
    b.get::<Availability, _>("gpu_availability", &k2)
        .await
        .unwrap()
        .unwrap();

    a.set("gpu_availability", &k1, &avail("g-1", false))
        .await
        .unwrap();
    applied(&b, 3).await;

    let before = b.stats();
    assert_eq!(
        *b.get::<Availability, _>("gpu_availability", &k1)
            .await
            .unwrap()
            .unwrap(),
        avail("g-1", false)
    );
    assert_eq!(
        *b.get::<Availability, _>("gpu_availability", &k2)
            .await
            .unwrap()
            .unwrap(),
        avail("g-2", true)
    );
    let after = b.stats();
    assert_eq!(
        after.l2_hits - before.l2_hits,
        1,
        "only the written key left B's L1"
    );
    assert_eq!(
        after.l1_hits - before.l1_hits,
        1,
        "the other key stayed in B's L1"
    );
    assert_eq!(fleet.l2.len(), 2, "nothing was erased from L2");
    // The writer itself serves its new value from L1.
    assert_eq!(
        *a.get::<Availability, _>("gpu_availability", &k1)
            .await
            .unwrap()
            .unwrap(),
        avail("g-1", false)
    );
    assert_eq!(a.stats().l1_hits, 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn the_writer_keeps_a_decoded_copy_not_the_callers_object() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "g-1"});
    let mut value = avail("g-1", true);
    a.set("gpu_availability", &p, &value).await.unwrap();
    value.available = false;
    let cached = a
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cached.available,
        "mutating the caller's value does not reach the cache"
    );
    assert_eq!(a.stats().l1_hits, 1);
    a.shutdown().await;
}

/// Written as a string, read as a number: a `Serialize` and `Deserialize` that disagree.
#[derive(Debug)]
struct Lopsided;

impl Serialize for Lopsided {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("lopsided")
    }
}

impl<'de> Deserialize<'de> for Lopsided {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|_| Lopsided)
    }
}

#[tokio::test]
async fn a_value_that_does_not_decode_back_is_refused_with_nothing_written() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let p = json!({"gpu_id": "g-1"});
    a.set("gpu_availability", &p, &avail("g-1", true))
        .await
        .unwrap();
    applied(&b, 1).await;
    let published = fleet.bus.published();

    let err = a.set("gpu_availability", &p, &Lopsided).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode);
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert_eq!(fleet.bus.published(), published, "nothing announced");
    assert_eq!(a.stats().sets, 1);
    // Every node still reads the value written before, from L2 too.
    for node in [&a, &b] {
        assert_eq!(
            node.get::<Availability, _>("gpu_availability", &p)
                .await
                .unwrap()
                .as_deref(),
            Some(&avail("g-1", true))
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_shared_write_keeps_the_callers_arc_and_reaches_other_nodes() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let key = a
        .key("gpu_availability", &json!({"gpu_id": "g-1"}))
        .unwrap();
    a.set_key(&key, &avail("g-1", true), SetOptions::new())
        .await
        .unwrap();
    applied(&b, 1).await;
    // B keeps the first value in its L1.
    b.get_key::<Availability>(&key).await.unwrap().unwrap();

    let shared = Arc::new(avail("g-1", false));
    a.set_key_shared(&key, Arc::clone(&shared), SetOptions::new())
        .await
        .unwrap();
    let on_a = a.get_key::<Availability>(&key).await.unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&on_a, &shared),
        "the writer's L1 holds the caller's Arc"
    );
    assert_eq!(a.stats().l1_hits, 1);
    // Written to L2 and announced like any write: B drops its copy and reads the new value.
    applied(&b, 2).await;
    let before = b.stats();
    let on_b = b.get_key::<Availability>(&key).await.unwrap().unwrap();
    assert_eq!(*on_b, avail("g-1", false));
    assert_eq!(
        b.stats().l2_hits - before.l2_hits,
        1,
        "read from L2, not B's old copy"
    );
    assert_eq!(a.stats().sets, 2);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_cached_none_is_not_a_miss() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "ghost"});
    a.set("gpu_availability", &p, &None::<Availability>)
        .await
        .unwrap();
    let got = a
        .get::<Option<Availability>, _>("gpu_availability", &p)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&None));
    a.shutdown().await;
}

#[tokio::test]
async fn bad_writes_are_clear_errors_and_write_nothing() {
    let fleet = Fleet::new();
    let a = fleet
        .builder("a")
        .max_value_bytes(64)
        .build()
        .await
        .unwrap();
    let p = json!({"gpu_id": "g"});

    let zero = SetOptions::new().ttl(Duration::ZERO);
    let err = a
        .set_with("gpu_availability", &p, &avail("g", true), zero)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTtl);

    let big = "x".repeat(100);
    let err = a.set("gpu_availability", &p, &big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert!(
        err.to_string()
            .contains("102 bytes exceeds the 64-byte limit"),
        "{err}"
    );

    let err = a.set("no_such_namespace", &p, &1u32).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownNamespace);
    assert!(
        err.to_string().contains("gpu_availability, gpu_pricing"),
        "lists what exists: {err}"
    );
    let err = a.get::<u32, _>("no_such_namespace", &p).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownNamespace);

    assert_eq!(fleet.l2.len(), 0);
    assert_eq!(fleet.bus.published(), 0);
    assert_eq!(a.stats().sets, 0);
    a.shutdown().await;
}

#[tokio::test]
async fn keys_match_the_seed_and_work_with_the_key_api() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let key = a.key("gpu_pricing", &json!({"gpu_type": "A100"})).unwrap();
    assert_eq!(
        key,
        CacheKey::derive("gpu_pricing", &json!({"gpu_type": "A100"})).unwrap()
    );
    a.set_key(&key, &2.5f64, SetOptions::new()).await.unwrap();
    assert_eq!(*a.get_key::<f64>(&key).await.unwrap().unwrap(), 2.5);
    a.shutdown().await;
}

/// A key the node did not derive itself (parsed, or derived elsewhere) does not share the
/// namespace's string, so it misses the pointer-compare fast path: it must still be served
/// from L1, not sent to L2.
#[tokio::test]
async fn a_key_derived_elsewhere_is_still_an_l1_hit() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "g-7"});
    a.set("gpu_availability", &p, &3_u32).await.unwrap();
    let foreign = CacheKey::derive("gpu_avail", &p).unwrap();
    assert_eq!(foreign, a.key("gpu_availability", &p).unwrap());
    let before = a.stats();
    assert_eq!(*a.get_key::<u32>(&foreign).await.unwrap().unwrap(), 3);
    let after = a.stats();
    assert_eq!(
        (
            after.l1_hits - before.l1_hits,
            after.l2_hits - before.l2_hits
        ),
        (1, 0)
    );
    a.shutdown().await;
}

#[tokio::test]
async fn l2_value_of_another_type_is_a_counted_miss() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let p = json!({"gpu_id": "g"});
    a.set("gpu_availability", &p, &"text".to_string())
        .await
        .unwrap();
    assert!(b
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    let s = b.stats();
    assert_eq!((s.decode_errors, s.misses), (1, 1));
    b.shutdown().await;
    a.shutdown().await;
}

/// JSON behind a two-byte marker: a stand-in for a binary codec a fleet might choose.
#[derive(Debug, Clone, Copy)]
struct Marked;

impl cache_core::Codec for Marked {
    fn name(&self) -> &'static str {
        "marked"
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> cache_core::Result<Vec<u8>> {
        let mut out = b"M1".to_vec();
        out.extend(cache_core::JsonCodec.encode(value)?);
        Ok(out)
    }
    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> cache_core::Result<T> {
        match bytes.strip_prefix(b"M1") {
            Some(json) => cache_core::JsonCodec.decode(json),
            None => Err(cache_core::Error::new(ErrorKind::Decode, "no M1 marker")),
        }
    }
}

#[tokio::test]
async fn values_go_through_the_configured_codec() {
    use cache_core::{Codec, L2Store};
    let fleet = Fleet::new();
    let a = fleet.builder("a").codec(Marked).build().await.unwrap();
    let b = fleet.builder("b").codec(Marked).build().await.unwrap();
    let json_node = fleet.node("json").await;
    let p = json!({"gpu_id": "g-1"});
    a.set("gpu_availability", &p, &avail("g-1", true))
        .await
        .unwrap();

    let key = a.key("gpu_availability", &p).unwrap();
    let raw = fleet.l2.get(&key).await.unwrap().unwrap().bytes;
    assert!(
        raw.starts_with(b"M1{"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(
        *b.get::<Availability, _>("gpu_availability", &p)
            .await
            .unwrap()
            .unwrap(),
        avail("g-1", true)
    );
    assert_eq!(
        Marked.decode::<Availability>(&raw).unwrap(),
        avail("g-1", true)
    );

    // A node with another codec cannot read it: a counted miss, not an error or a wrong value.
    assert!(json_node
        .get::<Availability, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    assert_eq!(json_node.stats().decode_errors, 1);
    for n in [a, b] {
        n.shutdown().await;
    }
    json_node.shutdown().await;
}

#[tokio::test]
async fn many_keys_are_read_in_order_from_l1_then_one_batch_from_l2() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let ids = ["g-1", "g-2", "g-3"];
    for id in ids {
        a.set("gpu_availability", &json!({"gpu_id": id}), &avail(id, true))
            .await
            .unwrap();
    }
    applied(&b, 3).await;
    b.get::<Availability, _>("gpu_availability", &json!({"gpu_id": "g-2"}))
        .await
        .unwrap()
        .unwrap();
    let params = [
        json!({"gpu_id": "g-1"}),
        json!({"gpu_id": "nope"}),
        json!({"gpu_id": "g-2"}),
        json!({"gpu_id": "g-3"}),
    ];
    let got = b
        .get_many::<Availability, _>("gpu_availability", &params)
        .await
        .unwrap();
    let got: Vec<Option<String>> = got
        .iter()
        .map(|v| v.as_ref().map(|v| v.gpu_id.clone()))
        .collect();
    assert_eq!(
        got,
        [
            Some("g-1".into()),
            None,
            Some("g-2".into()),
            Some("g-3".into())
        ]
    );
    let s = b.stats();
    assert_eq!(
        (s.l1_hits, s.l2_hits, s.misses),
        (1, 3, 1),
        "g-2 from L1, the rest from L2 (the first single get included)"
    );
    // The batch back-filled L1.
    let again = b
        .get_many::<Availability, _>("gpu_availability", &params)
        .await
        .unwrap();
    assert_eq!(again.iter().filter(|v| v.is_some()).count(), 3);
    assert_eq!(b.stats().l1_hits, 4);

    let err = b
        .get_many::<Availability, _>("nope", &params)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownNamespace);
    a.shutdown().await;
    b.shutdown().await;
}

/// `get` and `get_or_load` find L1 entries by the digest of the parameters alone: a struct, a
/// JSON value with its keys in another order and a derived key all reach the same entry, and
/// the errors are the ones the key API reports.
#[tokio::test]
async fn get_by_params_reaches_the_same_entry_from_any_spelling() {
    #[derive(Serialize)]
    struct Params<'a> {
        zone: &'a str,
        gpu_id: &'a str,
    }
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let as_struct = Params {
        zone: "eu-1",
        gpu_id: "g-9",
    };
    let as_json = json!({"gpu_id": "g-9", "zone": "eu-1"});
    a.set("gpu_availability", &as_struct, &avail("g-9", true))
        .await
        .unwrap();
    let key = a.key("gpu_availability", &as_json).unwrap();

    let before = a.stats();
    let by_struct = a
        .get::<Availability, _>("gpu_availability", &as_struct)
        .await
        .unwrap()
        .unwrap();
    let by_json = a
        .get::<Availability, _>("gpu_availability", &as_json)
        .await
        .unwrap()
        .unwrap();
    let by_key = a.get_key::<Availability>(&key).await.unwrap().unwrap();
    let loaded = a
        .get_or_load("gpu_availability", &as_json, SetOptions::new(), || async {
            Err::<Availability, _>("the loader must not run on an L1 hit")
        })
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&by_struct, &by_json));
    assert!(Arc::ptr_eq(&by_struct, &by_key));
    assert!(Arc::ptr_eq(&by_struct, &loaded));
    let after = a.stats();
    assert_eq!(
        (
            after.l1_hits - before.l1_hits,
            after.l2_hits - before.l2_hits,
            after.misses - before.misses
        ),
        (4, 0, 0)
    );

    // A miss through `get` still reads L2 under the derived key, then fills L1.
    let b = fleet.node("b").await;
    let from_l2 = b
        .get::<Availability, _>("gpu_availability", &as_struct)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*from_l2, avail("g-9", true));
    assert_eq!(b.stats().l2_hits, 1);

    let unknown = a
        .get::<Availability, _>("no_such_namespace", &as_json)
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::UnknownNamespace);
    let nan = a
        .get::<Availability, _>("gpu_availability", &[f64::NAN])
        .await
        .unwrap_err();
    assert_eq!(nan.kind(), ErrorKind::Encode);
    a.shutdown().await;
    let closed = a
        .get::<Availability, _>("gpu_availability", &as_json)
        .await
        .unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::Shutdown);
    b.shutdown().await;
}
