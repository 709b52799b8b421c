//! `get_or_load_owned`: a soft timeout answers with the fail-safe value and lets the load fill
//! the cache afterwards; eager refresh reloads a hot key before it expires, so it never misses;
//! neither ever brings back a value an invalidation removed. On the fleet's manual clock (entry
//! lifetimes) and tokio's paused clock (how long loaders take).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{ErrorKind, NamespaceConfig, Namespaces, Routing};
use cache_edge::{EdgeCache, SetOptions};
use serde_json::json;
use tokio::sync::Notify;

use crate::support::{eventually, Fleet};

const TTL: Duration = Duration::from_secs(10);

async fn node(fleet: &Fleet, config: NamespaceConfig) -> EdgeCache {
    let mut namespaces = Namespaces::empty();
    namespaces.add(config).unwrap();
    fleet
        .builder("a")
        .namespaces(namespaces)
        .routing(Routing::empty())
        .build()
        .await
        .unwrap()
}

/// A loader answering `value` once `gate` is opened, counting its calls.
fn gated(
    gate: &Arc<Notify>,
    calls: &Arc<AtomicUsize>,
    value: &str,
) -> impl FnOnce() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<String, std::io::Error>> + Send>,
> + Send
       + 'static {
    let (gate, calls, value) = (Arc::clone(gate), Arc::clone(calls), value.to_owned());
    move || {
        Box::pin(async move {
            calls.fetch_add(1, SeqCst);
            gate.notified().await;
            Ok(value)
        })
    }
}

/// A loader answering `value` at once, counting its calls.
fn ready(
    calls: &Arc<AtomicUsize>,
    value: String,
) -> impl FnOnce() -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, SeqCst);
        std::future::ready(Ok(value))
    }
}

fn soft_config() -> NamespaceConfig {
    NamespaceConfig::new("offers", "offers", TTL)
        .critical(true)
        .fail_safe(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100))
        .load_timeout(Duration::from_secs(5))
}

#[tokio::test(start_paused = true)]
async fn a_soft_timeout_answers_with_the_last_value_and_the_load_then_fills_the_cache() {
    let fleet = Fleet::new();
    let a = node(&fleet, soft_config()).await;
    let p = json!({"id": 1});
    let calls = Arc::new(AtomicUsize::new(0));
    let v1 = a
        .get_or_load_owned("offers", &p, SetOptions::new(), ready(&calls, "v1".into()))
        .await
        .unwrap();
    assert_eq!(*v1, "v1");

    fleet.clock.advance(TTL + Duration::from_secs(1));
    let gate = Arc::new(Notify::new());
    let started = tokio::time::Instant::now();
    let answer = a
        .get_or_load_owned("offers", &p, SetOptions::new(), gated(&gate, &calls, "v2"))
        .await
        .unwrap();
    assert_eq!(*answer, "v1", "the last value, at the soft timeout");
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let s = a.stats();
    assert_eq!(
        (s.soft_timeouts, s.fail_safe_served, calls.load(SeqCst)),
        (1, 1, 2)
    );

    // The load goes on and fills the cache: the next read is v2, from L1, with no new load.
    assert_eq!(a.stats().loads_in_flight, 1);
    gate.notify_one();
    eventually("the background load ends", || {
        a.stats().loads_in_flight == 0
    })
    .await;
    let hits = a.stats().l1_hits;
    let next = a.get::<String, _>("offers", &p).await.unwrap().unwrap();
    assert_eq!(*next, "v2");
    assert_eq!((calls.load(SeqCst), a.stats().l1_hits), (2, hits + 1));
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_last_value_a_soft_timeout_waits_for_the_load() {
    let fleet = Fleet::new();
    let a = node(&fleet, soft_config()).await;
    let started = tokio::time::Instant::now();
    let value = a
        .get_or_load_owned("offers", &json!({"id": 2}), SetOptions::new(), || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>("slow".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*value, "slow");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(a.stats().soft_timeouts, 0);
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_soft_timeout_never_answers_with_an_invalidated_value() {
    let fleet = Fleet::new();
    let a = node(&fleet, soft_config()).await;
    let p = json!({"id": 3});
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_load_owned("offers", &p, SetOptions::new(), ready(&calls, "v1".into()))
        .await
        .unwrap();
    fleet.clock.advance(TTL + Duration::from_secs(1));
    a.invalidate_key(&a.key("offers", &p).unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let value = a
        .get_or_load_owned("offers", &p, SetOptions::new(), || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>("v2".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        *value, "v2",
        "nothing to answer with: the call waits for the load"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(
        (a.stats().soft_timeouts, a.stats().fail_safe_served),
        (0, 0)
    );
    a.shutdown().await;
}

#[tokio::test]
async fn soft_timeouts_are_refused_where_they_cannot_work() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "g-1"});
    // A borrowing loader cannot outlive its call.
    let err = a
        .get_or_load(
            "gpu_availability",
            &p,
            SetOptions::new().soft_timeout(Duration::from_millis(10)),
            || async { Ok::<_, std::io::Error>(1) },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("get_or_load_owned"), "{err}");
    // A namespace without fail-safe has no value to answer with.
    let err = a
        .get_or_load_owned(
            "gpu_availability",
            &p,
            SetOptions::new().soft_timeout(Duration::from_millis(10)),
            || async { Ok::<_, std::io::Error>(1) },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("fail-safe"), "{err}");
    a.shutdown().await;

    let refused = |config: NamespaceConfig, needle: &str| {
        let err = Namespaces::empty().add(config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains(needle), "{err}");
    };
    let base = || NamespaceConfig::new("offers", "offers", TTL).critical(true);
    refused(base().soft_timeout(Duration::from_millis(100)), "fail-safe");
    refused(
        base()
            .fail_safe(TTL)
            .soft_timeout(Duration::from_secs(2))
            .load_timeout(Duration::from_secs(1)),
        "below the load timeout",
    );
    refused(base().eager_refresh(1.0), "strictly between 0 and 1");
    refused(base().eager_refresh(f64::NAN), "strictly between 0 and 1");
    refused(
        NamespaceConfig::new("offers", "offers", TTL).eager_refresh(0.8),
        "critical",
    );
    refused(base().fill_lease(Duration::ZERO), "zero");
}

fn hot_config() -> NamespaceConfig {
    NamespaceConfig::new("hot", "hot", TTL)
        .critical(true)
        .eager_refresh(0.8)
}

#[tokio::test]
async fn eager_refresh_keeps_a_hot_key_from_ever_missing() {
    let fleet = Fleet::new();
    let a = node(&fleet, hot_config()).await;
    let p = json!({"id": 1});
    let calls = Arc::new(AtomicUsize::new(0));
    let mut last = String::new();
    // Two minutes of reads every half second: twelve lifetimes of the entry.
    for step in 0..240 {
        let value = a
            .get_or_load_owned(
                "hot",
                &p,
                SetOptions::new(),
                ready(&calls, format!("v{step}")),
            )
            .await
            .unwrap();
        let version = |v: &str| v[1..].parse::<u32>().unwrap();
        assert!(
            last.is_empty() || version(&value) >= version(&last),
            "values move forward"
        );
        last = (*value).clone();
        // A refresh this read started ends (its fill in L1) before the clock moves on.
        eventually("the refresh ends", || a.stats().loads_in_flight == 0).await;
        fleet.clock.advance(Duration::from_millis(500));
    }
    let s = a.stats();
    assert_eq!(s.misses, 1, "only the very first read missed");
    assert_eq!(s.l1_hits, 239);
    // One refresh per lifetime, in its last fifth: 8 s into each 10 s.
    assert!(
        (14..=16).contains(&s.eager_refreshes),
        "{} refreshes",
        s.eager_refreshes
    );
    assert_eq!(calls.load(SeqCst) as u64, 1 + s.eager_refreshes);
    a.shutdown().await;
}

#[tokio::test]
async fn a_refresh_that_races_an_invalidation_is_not_stored() {
    let fleet = Fleet::new();
    let a = node(&fleet, hot_config()).await;
    let p = json!({"id": 2});
    let key = a.key("hot", &p).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_load_owned("hot", &p, SetOptions::new(), ready(&calls, "v1".into()))
        .await
        .unwrap();
    fleet.clock.advance(Duration::from_secs(9));
    let gate = Arc::new(Notify::new());
    let hit = a
        .get_or_load_owned("hot", &p, SetOptions::new(), gated(&gate, &calls, "old"))
        .await
        .unwrap();
    assert_eq!(*hit, "v1", "the hit is answered at once");
    eventually("the refresh starts loading", || calls.load(SeqCst) == 2).await;
    a.set_key(&key, &"new".to_owned(), SetOptions::new())
        .await
        .unwrap();
    let fenced = a.stats().fills_fenced;
    gate.notify_one();
    eventually("the refresh ends", || a.stats().loads_in_flight == 0).await;
    assert!(
        a.stats().fills_fenced > fenced,
        "the refresh's fill was refused"
    );
    let read = a.get_key::<String>(&key).await.unwrap().unwrap();
    assert_eq!(*read, "new");
    a.shutdown().await;
}
