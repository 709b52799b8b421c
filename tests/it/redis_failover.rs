//! A failover behind one address: the fleet's URL names a virtual IP, a DNS name or a proxy
//! that follows the primary, so when a replica is promoted the nodes reconnect to the address
//! they always used and meet another server. Nothing tells them, as a Sentinel switch would;
//! the promoted replica may lack writes the old primary acknowledged, and its logs end where
//! its copy ends, so the numbers it gives out next repeat ones the nodes applied.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{EventBus, L2Store};
use cache_edge::EdgeCache;
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::history::History;
use test_support::{eventually, RedisServer, TcpProxy};

use crate::redis_sentinel::{
    acknowledge_writes_the_replica_misses, conclude_failover, fault_scale, signal, spawn_readers,
    spawn_writers, BOUND,
};

const DEADLINE: Duration = Duration::from_secs(20);

async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap()
}

/// Writers and readers on three nodes that reach Redis through one address (a proxy). The
/// replica is frozen and its link cut, so the primary alone acknowledges the last writes; then
/// the primary is killed, the replica promoted, and the address moved to it. Every read is
/// judged by the history checker against the bound: each node must notice, at its next liveness
/// check, that another server answers (`INFO server`'s `run_id`), invalidate its event-driven
/// namespaces there, and follow the logs from their heads on the new server. (With the check
/// switched off, this test finds stale reads past the bound.)
async fn failover_behind_one_address(bus_elsewhere: bool) {
    let mut primary = RedisServer::start();
    let bus_server = RedisServer::start();
    let replica = RedisServer::start();
    let mut replica_admin = admin(&replica).await;
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut replica_admin)
        .await
        .unwrap();
    eventually("the replica's link is up", DEADLINE, || {
        let mut conn = replica_admin.clone();
        async move {
            info(&mut conn, "replication")
                .await
                .contains("master_link_status:up")
        }
    })
    .await;
    let proxy = TcpProxy::for_redis(&primary);
    let config = RedisConfig::new(proxy.redis_url())
        .response_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_millis(250))
        .ping_interval(Duration::from_millis(100))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let bus_config = if bus_elsewhere {
        RedisConfig::new(bus_server.url())
    } else {
        config.clone()
    };
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(&config, &bus_config, id).await);
    }
    let history = History::new();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writers = Arc::new(AtomicBool::new(false));
    // Hot keys, written all along until the failover; cold keys, written once before it and
    // once after: a change whose event a node ignores stays in its L1 until something else
    // removes it.
    let hot: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let cold: Vec<String> = (0..12).map(|i| format!("cold{i}")).collect();
    for key in &cold {
        write_once(&nodes[0], key, 1, &history, origin).await;
    }
    let writers = spawn_writers(&nodes, &hot, &history, origin, &stop_writers);
    let keys: Vec<String> = hot.iter().chain(&cold).cloned().collect();
    let readers = spawn_readers(&nodes, &keys, &history, origin, &stop);
    let scale = fault_scale();
    eventually(
        "the fleet has written a while",
        DEADLINE * scale as u32,
        || async { history.check(BOUND).acks >= 200 * scale },
    )
    .await;

    // The loss: the replica frozen and its link cut, writes the primary alone acknowledges.
    let acks_before_loss = history.check(BOUND).acks;
    acknowledge_writes_the_replica_misses(replica.pid(), primary.port(), &history, 60 * scale)
        .await;
    stop_writers.store(true, SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let lost = history.check(BOUND).acks - acks_before_loss;
    let failed_over_at = origin.elapsed();
    primary.stop();
    signal(replica.pid(), "CONT");
    let () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut replica_admin)
        .await
        .unwrap();
    proxy.retarget(SocketAddr::from((Ipv4Addr::LOCALHOST, replica.port())));
    proxy.cut();

    // Right away, faster than a liveness check: the cold keys once more, then more changes
    // than were lost, so the promoted replica's log is past the numbers the nodes applied by
    // the time any of them reads it: only the numbers repeated, and nobody sees a head go back.
    for key in &cold {
        write_once(&nodes[0], key, 2, &history, origin).await;
    }
    for version in 1..=(lost + 20) {
        write_once(&nodes[0], "filler", version as u64, &history, origin).await;
    }

    for node in &nodes {
        eventually(
            &format!(
                "{} makes the server behind the address safe to read",
                node.node_id()
            ),
            DEADLINE,
            || async { node.stats().failovers_recovered >= 1 },
        )
        .await;
    }
    let recovered_in = origin.elapsed() - failed_over_at;
    let bus = if bus_elsewhere {
        "on another server"
    } else {
        "behind the same address"
    };
    conclude_failover(
        &format!(
            "failover behind one address (bus {bus}; every node recovered within \
             {recovered_in:?} of the kill)"
        ),
        nodes,
        &history,
        origin,
        &stop,
        Vec::new(),
        readers,
    )
    .await;
}

/// L2 and the bus behind the address: the subscription drops with the old primary too, and the
/// catch-up after the resubscribe also sees the logs' heads go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_behind_one_address_that_lost_writes_is_never_served_stale() {
    failover_behind_one_address(false).await;
}

/// The bus on a server of its own, which does not fail over: the subscription never drops,
/// and by the next liveness check the new primary has numbered more changes than it lost, so
/// no log head is seen to go back. Only asking which server answers tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_l2_alone_behind_one_address_is_never_served_stale() {
    failover_behind_one_address(true).await;
}

/// Writes `version` of `key` on `node`, retried until acknowledged, and records the ack.
async fn write_once(node: &EdgeCache, key: &str, version: u64, history: &History, origin: Instant) {
    let params = json!({ "gpu_id": key });
    let deadline = Instant::now() + DEADLINE;
    while let Err(e) = node.set("gpu_availability", &params, &version).await {
        assert!(
            Instant::now() < deadline,
            "{key} v{version} not written: {e}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    history.ack(key, version, origin.elapsed());
}

/// A checked node whose L2 is reached with `l2` and whose bus with `bus`.
async fn node(l2: &RedisConfig, bus: &RedisConfig, id: &str) -> EdgeCache {
    let store: Arc<dyn L2Store> = Arc::new(RedisL2::connect(l2).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(bus).await.unwrap());
    EdgeCache::builder()
        .node_id(id)
        .l2(store)
        .bus(bus)
        .staleness_bound(BOUND)
        .liveness_interval(Duration::from_millis(250))
        .build()
        .await
        .unwrap()
}
