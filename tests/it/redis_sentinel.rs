//! A Sentinel-managed primary (`redis+sentinel://`): the L2, bus and log contracts run
//! unchanged on it, and a fleet follows a failover (`kill -9` of the primary) without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{ErrorKind, EventBus, L2Store};
use cache_edge::EdgeCache;
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisSentinel};

const DEADLINE: Duration = Duration::from_secs(20);

/// `redis+sentinel://` naming every Sentinel of `topology`.
fn sentinel_url(topology: &RedisSentinel) -> String {
    let hosts: Vec<String> = topology
        .sentinel_urls()
        .iter()
        .map(|url| {
            url.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        topology.master_name()
    )
}

fn config(topology: &RedisSentinel) -> RedisConfig {
    RedisConfig::new(sentinel_url(topology))
        .response_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_millis(250))
        .ping_interval(Duration::from_millis(100))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contracts_hold_on_a_sentinel_managed_primary() {
    let topology = tokio::task::block_in_place(RedisSentinel::start);
    let config = config(&topology);
    let l2 = RedisL2::connect(&config).await.unwrap();
    assert_eq!(
        l2.server(),
        format!("127.0.0.1:{}", topology.primary_port()),
        "the store talks to the primary the Sentinels name"
    );
    crate::contract_l2::contract(Arc::new(l2)).await;
    let bus_config = config.clone().channel("sentinel_contract");
    crate::contract_bus::contract(
        Arc::new(RedisBus::connect(&bus_config).await.unwrap()),
        Arc::new(RedisBus::connect(&bus_config).await.unwrap()),
    )
    .await;
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
    let primary =
        redis::Client::open(format!("redis://127.0.0.1:{}/", topology.primary_port())).unwrap();
    crate::contract_log::contract(l2, bus, || async move {
        let mut conn = primary.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sentinel_urls_are_checked_like_the_others() {
    for (url, why) in [
        ("redis+sentinel://127.0.0.1:26379", "master name"),
        ("redis+sentinel://10.1.2.3:26379/edge", "not loopback"),
    ] {
        let err = RedisL2::connect(&RedisConfig::new(url)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{url}");
        assert!(err.to_string().contains(why), "{url}: {err}");
    }
    // No Sentinel answers: the reason names each one tried.
    let err = RedisL2::connect(&RedisConfig::new("redis+sentinel://127.0.0.1:1/edge"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

async fn node(config: &RedisConfig, id: &str) -> (EdgeCache, Arc<RedisL2>) {
    let l2 = Arc::new(RedisL2::connect(config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
    let cache = EdgeCache::builder()
        .node_id(id)
        .l2(Arc::clone(&l2) as Arc<dyn L2Store>)
        .bus(bus)
        .staleness_bound(Duration::from_secs(2))
        .liveness_interval(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    (cache, l2)
}

/// `kill -9` of the primary under a fleet of three: every node moves to the promoted replica
/// by itself, writes land there and reach every node again, and no node is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_a_failover_without_a_restart() {
    let mut topology = tokio::task::block_in_place(RedisSentinel::start);
    let config = config(&topology);
    let (a, a_l2) = node(&config, "a").await;
    let (b, b_l2) = node(&config, "b").await;
    let (c, c_l2) = node(&config, "c").await;
    let p = json!({"gpu_id": "g-1"});
    a.set("gpu_availability", &p, &"before".to_owned())
        .await
        .unwrap();
    let old = topology.primary_port();
    let killed_at = Instant::now();
    assert_eq!(topology.kill_primary(), old);
    // The harness polls by sleeping its thread: let the runtime move this worker's tasks.
    let (new, promoted_in) = tokio::task::block_in_place(|| topology.wait_for_new_master(DEADLINE));
    assert_ne!(new, old);
    // Every node follows it: a write from each lands, and each node reads the others'.
    let mut writes = 0;
    for (i, (node, l2)) in [(&a, &a_l2), (&b, &b_l2), (&c, &c_l2)]
        .into_iter()
        .enumerate()
    {
        let key = json!({"gpu_id": format!("after-{i}")});
        eventually(
            &format!("{} writes to the new primary", node.node_id()),
            DEADLINE,
            || async {
                node.set("gpu_availability", &key, &format!("after {i}"))
                    .await
                    .is_ok()
            },
        )
        .await;
        assert_eq!(l2.server(), format!("127.0.0.1:{new}"));
        assert_eq!(l2.primaries_followed(), 1);
        writes += 1;
    }
    let recovered_in = killed_at.elapsed();
    for node in [&a, &b, &c] {
        for i in 0..writes {
            let key = json!({"gpu_id": format!("after-{i}")});
            eventually(
                &format!("{} reads write {i}", node.node_id()),
                DEADLINE,
                || async {
                    node.get::<String, _>("gpu_availability", &key)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|v| *v == format!("after {i}"))
                },
            )
            .await;
        }
        // And its subscription moved too: a booking reaches it.
        eventually(
            &format!(
                "{} is connected to the new primary's channel",
                node.node_id()
            ),
            DEADLINE,
            || async { node.health().await.bus_connected },
        )
        .await;
    }
    let before = c.stats().events_applied;
    a.invalidate_key(
        &a.key("gpu_availability", &json!({"gpu_id": "after-0"}))
            .unwrap(),
    )
    .await
    .unwrap();
    eventually("c applies a's invalidation", DEADLINE, || async {
        c.stats().events_applied > before
    })
    .await;
    println!(
        "sentinel failover: the Sentinels named the new primary {promoted_in:?} after kill -9; \
         every node was writing to it {recovered_in:?} after"
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
