//! Load timeouts: a loader that outlives the call's (or the namespace's) timeout fails the call
//! and every caller waiting on the same load with a loader error, counted; the next call loads
//! again. On tokio's paused clock: the time the loaders hang for passes at once.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{ErrorKind, NamespaceConfig, Namespaces};
use cache_edge::SetOptions;
use serde_json::json;

use crate::support::Fleet;

/// A loader that never answers.
async fn hangs() -> Result<String, std::io::Error> {
    std::future::pending().await
}

#[tokio::test(start_paused = true)]
async fn a_call_timeout_fails_every_waiter_and_the_next_call_loads_again() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "g-1"});
    let options = || SetOptions::new().load_timeout(Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    let (first, second) = tokio::join!(
        a.get_or_load("gpu_availability", &p, options(), hangs),
        a.get_or_load("gpu_availability", &p, options(), hangs),
    );
    for result in [first, second] {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader);
        assert!(
            err.to_string().contains("did not finish within 2s"),
            "{err}"
        );
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let s = a.stats();
    assert_eq!(
        (s.loads, s.load_timeouts, s.load_errors),
        (1, 1, 1),
        "one flight"
    );

    // The failed load left nothing behind: the next call loads, and a quick loader is in time.
    let value = a
        .get_or_load("gpu_availability", &p, options(), || async {
            Ok::<_, std::io::Error>("free".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*value, "free");
    assert_eq!(a.stats().load_timeouts, 1);
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_namespace_timeout_applies_unless_the_call_sets_its_own() {
    let fleet = Fleet::new();
    let mut namespaces = Namespaces::empty();
    namespaces
        .add(
            NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
                .critical(true)
                .load_timeout(Duration::from_millis(500)),
        )
        .unwrap();
    let a = fleet
        .builder("a")
        .namespaces(namespaces)
        .routing(cache_core::Routing::empty())
        .build()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = a
        .get_or_load("offers", &json!({"id": 1}), SetOptions::new(), hangs)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert_eq!(started.elapsed(), Duration::from_millis(500));

    // A call's own timeout wins: a loader taking 1 s succeeds under a 2 s call timeout.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let value = a
        .get_or_load(
            "offers",
            &json!({"id": 1}),
            SetOptions::new().load_timeout(Duration::from_secs(2)),
            || async move {
                counted.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::io::Error>("slow but in time".to_owned())
            },
        )
        .await
        .unwrap();
    assert_eq!(*value, "slow but in time");
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(a.stats().load_timeouts, 1);
    // Both loads are in the namespace's loader histogram: 0.5 s (timed out) and 1 s.
    let offers = &a.stats().namespaces[0];
    assert_eq!(offers.loader_latency.count(), 2);
    assert_eq!(offers.loader_latency.sum, Duration::from_millis(1_500));
    let le = |bound: Duration| {
        offers
            .loader_latency
            .buckets
            .iter()
            .take_while(|(b, _)| b.is_some_and(|b| b <= bound))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(
        (le(Duration::from_millis(500)), le(Duration::from_secs(1))),
        (1, 2)
    );
    a.shutdown().await;
}

#[test]
fn a_zero_load_timeout_is_refused() {
    let err = Namespaces::empty()
        .add(
            NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
                .load_timeout(Duration::ZERO),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("load timeout"), "{err}");
}
