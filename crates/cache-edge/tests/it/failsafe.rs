//! Fail-safe: an entry's last value is served past its expiry, within the namespace's window,
//! when its load fails or L2 is unreachable; never once an invalidation removed it; and the
//! failing source is not asked again for a second after each fail-safe answer. On the fleet's
//! manual clock.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{ErrorKind, NamespaceConfig, Namespaces, Routing};
use cache_edge::{EdgeCache, SetOptions};
use serde_json::json;

use crate::support::Fleet;

const TTL: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(30);

async fn node(fleet: &Fleet) -> EdgeCache {
    let mut namespaces = Namespaces::empty();
    namespaces
        .add(
            NamespaceConfig::new("offers", "offers", TTL)
                .critical(true)
                .fail_safe(WINDOW),
        )
        .unwrap();
    fleet
        .builder("a")
        .namespaces(namespaces)
        .routing(Routing::empty())
        .build()
        .await
        .unwrap()
}

/// `get_or_load` with a loader that fails, counting its calls.
async fn load_failing(node: &EdgeCache, calls: &Arc<AtomicUsize>) -> cache_core::Result<String> {
    let calls = Arc::clone(calls);
    node.get_or_load(
        "offers",
        &json!({"id": 1}),
        SetOptions::new(),
        || async move {
            calls.fetch_add(1, SeqCst);
            Err::<String, _>(std::io::Error::other("origin down"))
        },
    )
    .await
    .map(|v| (*v).clone())
}

#[tokio::test]
async fn a_failed_load_serves_the_last_value_within_the_window_and_not_after() {
    let fleet = Fleet::new();
    let a = node(&fleet).await;
    let first = a
        .get_or_load("offers", &json!({"id": 1}), SetOptions::new(), || async {
            Ok::<_, std::io::Error>("v1".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*first, "v1");
    let calls = Arc::new(AtomicUsize::new(0));

    fleet.clock.advance(TTL + Duration::from_secs(1));
    assert_eq!(load_failing(&a, &calls).await.unwrap(), "v1");
    assert_eq!((calls.load(SeqCst), a.stats().fail_safe_served), (1, 1));
    // Throttled: for a second the same answer comes without asking the origin.
    assert_eq!(load_failing(&a, &calls).await.unwrap(), "v1");
    assert_eq!((calls.load(SeqCst), a.stats().fail_safe_served), (1, 2));

    fleet.clock.advance(Duration::from_secs(2));
    assert_eq!(load_failing(&a, &calls).await.unwrap(), "v1");
    assert_eq!((calls.load(SeqCst), a.stats().fail_safe_served), (2, 3));

    // Past the window (the entry expired at TTL; the window ends TTL + WINDOW later).
    fleet.clock.advance(WINDOW);
    let err = load_failing(&a, &calls).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert_eq!((calls.load(SeqCst), a.stats().fail_safe_served), (3, 3));

    // A source that answers again is asked, and its value served as ever.
    let fresh = a
        .get_or_load("offers", &json!({"id": 1}), SetOptions::new(), || async {
            Ok::<_, std::io::Error>("v2".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*fresh, "v2");
    a.shutdown().await;
}

#[tokio::test]
async fn an_invalidated_value_is_never_a_fail_safe_candidate() {
    let fleet = Fleet::new();
    let a = node(&fleet).await;
    let key = a.key("offers", &json!({"id": 1})).unwrap();
    a.set_key(&key, &"v1".to_owned(), SetOptions::new())
        .await
        .unwrap();
    fleet.clock.advance(TTL + Duration::from_secs(1));
    a.invalidate_key(&key).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let err = load_failing(&a, &calls).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert_eq!(a.stats().fail_safe_served, 0);

    // Nor one dropped with its whole namespace.
    a.set_key(&key, &"v2".to_owned(), SetOptions::new())
        .await
        .unwrap();
    fleet.clock.advance(TTL + Duration::from_secs(1));
    a.invalidate_namespace("offers", "test").await.unwrap();
    assert!(load_failing(&a, &calls).await.is_err());
    assert_eq!(a.stats().fail_safe_served, 0);
    a.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_l2_serves_the_last_value_to_a_read() {
    let fleet = Fleet::new();
    let a = node(&fleet).await;
    let p = json!({"id": 7});
    a.set("offers", &p, &"kept".to_owned()).await.unwrap();
    fleet.clock.advance(TTL + Duration::from_secs(1));
    fleet.l2.set_unavailable(true);
    let read = a.get::<String, _>("offers", &p).await.unwrap();
    assert_eq!(read.as_deref().map(String::as_str), Some("kept"));
    assert_eq!(a.stats().fail_safe_served, 1);
    // With L2 back and holding nothing (the entry expired there too), a read misses.
    fleet.l2.set_unavailable(false);
    fleet.clock.advance(Duration::from_secs(2));
    assert_eq!(a.get::<String, _>("offers", &p).await.unwrap(), None);
    a.shutdown().await;
}

#[test]
fn fail_safe_needs_an_l1() {
    let err = Namespaces::empty()
        .add(NamespaceConfig::new("offers", "offers", TTL).fail_safe(WINDOW))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("critical"), "{err}");
}
