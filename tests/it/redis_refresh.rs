//! Protecting the origin on a real redis-server: eager refresh keeps a hot key read by two
//! nodes from ever missing; a soft timeout answers with the last value while the slow load goes
//! on and then fills L1 and Redis; fail-safe serves a failed load's last value within its window,
//! never after it, and never one an invalidation removed.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cache_core::{Clock, EventBus, L2Store, NamespaceConfig, Namespaces, Routing, Timestamp};
use cache_edge::{EdgeCache, SetOptions};
use cache_memory::ManualClock;
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};
use tokio::sync::Notify;

const DEADLINE: Duration = Duration::from_secs(10);

async fn node(
    config: &RedisConfig,
    id: &str,
    namespace: NamespaceConfig,
    clock: Option<Arc<dyn Clock>>,
) -> EdgeCache {
    let mut namespaces = Namespaces::empty();
    namespaces.add(namespace).unwrap();
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
    let mut builder = EdgeCache::builder()
        .node_id(id)
        .namespaces(namespaces)
        .routing(Routing::empty())
        .l2(l2)
        .bus(bus);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    builder.build().await.unwrap()
}

/// A manual clock for the node's L1, starting at the wall clock's now (Redis keeps real time).
fn clock_at_now() -> Arc<ManualClock> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    Arc::new(ManualClock::new(Timestamp::from_nanos(
        u64::try_from(now.as_nanos()).unwrap(),
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_keeps_a_hot_key_on_two_nodes_from_ever_missing() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    // Entries live 3 s (readers see 2 s of it in Redis: the clock-skew margin), refreshed in
    // the second half of their life.
    let hot = NamespaceConfig::new("hot", "hot", Duration::from_secs(3))
        .critical(true)
        .eager_refresh(0.5);
    let (a, b) = (
        node(&config, "a", hot.clone(), None).await,
        node(&config, "b", hot, None).await,
    );
    let version = Arc::new(AtomicU64::new(0));
    let read = |node: &EdgeCache| {
        let (node, version) = (node.clone(), Arc::clone(&version));
        async move {
            node.get_or_load_owned(
                "hot",
                &json!({"id": 1}),
                SetOptions::new(),
                move || async move { Ok::<_, std::io::Error>(version.fetch_add(1, SeqCst)) },
            )
            .await
            .unwrap()
        }
    };
    read(&a).await;
    // Five seconds of reads every 20 ms on both nodes: well past the first entry's life.
    let mut last = 0;
    for _ in 0..250 {
        let (from_a, from_b) = tokio::join!(read(&a), read(&b));
        last = last.max(*from_a).max(*from_b);
        // Pacing the workload, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "a: {} L1 hits, {} L2 hits, {} misses, {} refreshes; b: {} L1 hits, {} L2 hits, {} \
         misses, {} refreshes; {} loads",
        sa.l1_hits,
        sa.l2_hits,
        sa.misses,
        sa.eager_refreshes,
        sb.l1_hits,
        sb.l2_hits,
        sb.misses,
        sb.eager_refreshes,
        version.load(SeqCst)
    );
    assert_eq!(
        sa.misses + sb.misses,
        1,
        "only the very first read loaded inline"
    );
    assert!(sa.eager_refreshes + sb.eager_refreshes >= 2);
    assert!(
        last >= 2,
        "the key was reloaded in the background (last version {last})"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_answers_with_the_last_value_and_the_load_then_fills_redis() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let clock = clock_at_now();
    let offers = NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
        .critical(true)
        .fail_safe(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100))
        .load_timeout(Duration::from_secs(5));
    let a = node(&config, "a", offers, Some(clock.clone() as Arc<dyn Clock>)).await;
    let l2 = RedisL2::connect(&config).await.unwrap();
    let p = json!({"id": 1});
    let key = a.key("offers", &p).unwrap();
    // An entry Redis keeps 1.1 s (readers count 0.1 s of it, the rest is the skew margin).
    let short = SetOptions::new().ttl(Duration::from_millis(1_100));
    let v1 = a
        .get_or_load_owned("offers", &p, short.clone(), || async {
            Ok::<_, std::io::Error>("v1".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*v1, "v1");
    eventually("Redis lets the entry go", DEADLINE, || async {
        l2.get(&key).await.unwrap().is_none()
    })
    .await;
    // And the node's L1 copy expires (kept for fail-safe).
    clock.advance(Duration::from_secs(2));

    let gate = Arc::new(Notify::new());
    let opened = Arc::clone(&gate);
    let started = std::time::Instant::now();
    let answer = a
        .get_or_load_owned("offers", &p, SetOptions::new(), move || async move {
            opened.notified().await;
            Ok::<_, std::io::Error>("v2".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*answer, "v1", "the last value, at the soft timeout");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!((a.stats().soft_timeouts, a.stats().loads_in_flight), (1, 1));

    gate.notify_one();
    eventually("the background load ends", DEADLINE, || async {
        a.stats().loads_in_flight == 0
    })
    .await;
    let in_redis = l2.get(&key).await.unwrap().expect("the load filled Redis");
    assert_eq!(in_redis.bytes, br#""v2""#);
    let hits = a.stats().l1_hits;
    assert_eq!(
        a.get::<String, _>("offers", &p)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("v2")
    );
    assert_eq!(a.stats().l1_hits, hits + 1, "and L1");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_on_redis_serves_within_its_window_never_after_and_never_an_invalidated_value() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let clock = clock_at_now();
    let window = Duration::from_secs(30);
    let offers = NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
        .critical(true)
        .fail_safe(window);
    let a = node(&config, "a", offers, Some(clock.clone() as Arc<dyn Clock>)).await;
    let l2 = RedisL2::connect(&config).await.unwrap();
    let short = SetOptions::new().ttl(Duration::from_millis(1_100));
    let failing = || async { Err::<String, _>(std::io::Error::other("origin down")) };
    for id in [1, 2] {
        let p = json!({ "id": id });
        a.get_or_load("offers", &p, short.clone(), || async {
            Ok::<_, std::io::Error>(format!("v{id}"))
        })
        .await
        .unwrap();
        let key = a.key("offers", &p).unwrap();
        eventually("Redis lets the entry go", DEADLINE, || async {
            l2.get(&key).await.unwrap().is_none()
        })
        .await;
    }
    // Key 2 is invalidated after its expiry: it is no fail-safe candidate.
    a.invalidate_key(&a.key("offers", &json!({"id": 2})).unwrap())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));

    let served = a
        .get_or_load("offers", &json!({"id": 1}), SetOptions::new(), failing)
        .await
        .unwrap();
    assert_eq!(*served, "v1", "within the window: the last value");
    assert_eq!(a.stats().fail_safe_served, 1);
    let err = a
        .get_or_load("offers", &json!({"id": 2}), SetOptions::new(), failing)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        cache_core::ErrorKind::Loader,
        "invalidated: no fail-safe"
    );

    // Past the window (and the one-second throttle), the failure is the caller's.
    clock.advance(window);
    let err = a
        .get_or_load("offers", &json!({"id": 1}), SetOptions::new(), failing)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::Loader);
    assert_eq!(a.stats().fail_safe_served, 1);
    a.shutdown().await;
}
