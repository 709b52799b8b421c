//! The fleet-wide fill lease on a real redis-server: five nodes, each with its own
//! connections, send a herd of 1,000 callers each at one missing key, and the origin sees one
//! load; a holder killed mid-load frees the key when its lease runs out, and the next node
//! loads it then, not before.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{EventBus, L2Store, NamespaceConfig, Namespaces, Routing};
use cache_edge::{EdgeCache, SetOptions};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};

const HOLD: Duration = Duration::from_millis(600);

async fn node(config: &RedisConfig, id: &str) -> EdgeCache {
    let mut namespaces = Namespaces::empty();
    namespaces
        .add(
            NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
                .critical(true)
                .event_driven(true)
                .fill_lease(HOLD),
        )
        .unwrap();
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
    EdgeCache::builder()
        .node_id(id)
        .namespaces(namespaces)
        .routing(Routing::empty())
        .l2(l2)
        .bus(bus)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_of_a_thousand_callers_each_cost_the_origin_one_load() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(node(&config, &format!("n{i}")).await);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let mut herd = tokio::task::JoinSet::new();
    for node in &nodes {
        for _ in 0..1_000 {
            let (node, calls) = (node.clone(), Arc::clone(&calls));
            herd.spawn(async move {
                node.get_or_load(
                    "offers",
                    &json!({"id": 1}),
                    SetOptions::new(),
                    || async move {
                        calls.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, std::io::Error>("loaded".to_owned())
                    },
                )
                .await
            });
        }
    }
    let mut served = 0;
    while let Some(read) = herd.join_next().await {
        assert_eq!(*read.unwrap().unwrap(), "loaded");
        served += 1;
    }
    assert_eq!(served, 5_000);
    assert_eq!(calls.load(SeqCst), 1, "one load for the whole fleet");
    let total = |f: fn(&cache_edge::Stats) -> u64| nodes.iter().map(|n| f(&n.stats())).sum::<u64>();
    let (taken, waits, fills) = (
        total(|s| s.leases_taken),
        total(|s| s.lease_waits),
        total(|s| s.lease_fills),
    );
    // A node whose herd reached L2 after the fill reads it there and needs no lease; one
    // that missed just before the release takes the lease and finds the fill before loading.
    assert!(
        taken >= 1 && waits == fills && taken + waits <= 5,
        "{taken} leases taken, {waits} waits, {fills} fills"
    );
    println!("fleet herd: 1 load; {taken} leases taken, {waits} waits, each ended by the fill");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_load_frees_the_key_when_its_lease_runs_out() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let (a, b) = (node(&config, "a").await, node(&config, "b").await);
    let p = json!({"id": 2});
    let holder = {
        let (a, p) = (a.clone(), p.clone());
        tokio::spawn(async move {
            a.get_or_load("offers", &p, SetOptions::new(), || async {
                std::future::pending::<Result<String, std::io::Error>>().await
            })
            .await
        })
    };
    eventually("a takes the lease", Duration::from_secs(10), || async {
        a.stats().leases_taken == 1
    })
    .await;
    let killed_at = Instant::now();
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let value = b
        .get_or_load("offers", &p, SetOptions::new(), || async move {
            counted.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>("b loaded".to_owned())
        })
        .await
        .unwrap();
    let waited = killed_at.elapsed();
    assert_eq!(*value, "b loaded");
    assert_eq!(calls.load(SeqCst), 1);
    let s = b.stats();
    assert_eq!((s.lease_waits, s.leases_taken), (1, 1));
    // b waited for the dead holder's lease to run out (it was taken before the kill), and
    // was woken by its end rather than by a later poll.
    assert!(waited < HOLD + Duration::from_millis(500), "{waited:?}");
    println!("the key was loaded again {waited:?} after its holder was killed (hold {HOLD:?})");
    a.shutdown().await;
    b.shutdown().await;
}
