//! A Sentinel-managed primary (`redis+sentinel://`): the L2, bus and log contracts run
//! unchanged on it, and a fleet follows a failover (`kill -9` of the primary) without a restart.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{ErrorKind, EventBus, L2Store};
use cache_edge::EdgeCache;
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::history::History;
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
        .staleness_bound(BOUND)
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
    // Every node follows it and invalidates its event-driven namespaces there (the new primary
    // may lack acknowledged writes); writes made before the last node did so may be dropped by
    // it (misses, never stale values), so the checks below start after.
    for node in [&a, &b, &c] {
        eventually(
            &format!("{} makes the new primary safe to read", node.node_id()),
            DEADLINE,
            || async { node.stats().failovers_recovered == 1 },
        )
        .await;
    }
    // A write from each lands, and each node reads the others'.
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

/// Sends `signal` to `pid` with kill(1).
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The staleness bound of the checked fleet.
pub(crate) const BOUND: Duration = Duration::from_secs(2);

/// Writes versions 1, 2, 3... of `key` on `node` every few milliseconds until `stop`, each
/// retried until it is acknowledged, and records each acknowledgement.
pub(crate) async fn write_loop(
    node: EdgeCache,
    key: String,
    history: History,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> u64 {
    let params = json!({ "gpu_id": key });
    let mut version = 0;
    while !stop.load(SeqCst) {
        version += 1;
        while node
            .set("gpu_availability", &params, &version)
            .await
            .is_err()
        {
            if stop.load(SeqCst) {
                return version - 1;
            }
            // Pacing retries while the primary is down.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        history.ack(&key, version, origin.elapsed());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    version
}

/// Re-reads every key on `node` until `stop`, recording each read.
pub(crate) async fn read_loop(
    node: EdgeCache,
    keys: Vec<String>,
    history: History,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut reads = 0;
    while !stop.load(SeqCst) {
        for key in &keys {
            let started = origin.elapsed();
            let got = node
                .get::<u64, _>("gpu_availability", &json!({ "gpu_id": key }))
                .await;
            if let Ok(got) = got {
                history.read(
                    node.node_id(),
                    key,
                    got.map(|v| *v),
                    started,
                    origin.elapsed(),
                );
                reads += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    reads
}

/// `EDGE_CACHE_FAULT_SCALE` (`cargo xtask chaos --faults SCALE`): how many times longer each
/// workload runs than in `cargo xtask test`.
pub(crate) fn fault_scale() -> usize {
    std::env::var("EDGE_CACHE_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

/// A [`write_loop`] for each of `keys`, on the nodes in turn.
pub(crate) fn spawn_writers(
    nodes: &[EdgeCache],
    keys: &[String],
    history: &History,
    origin: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            tokio::spawn(write_loop(
                nodes[i % nodes.len()].clone(),
                key.clone(),
                history.clone(),
                origin,
                Arc::clone(stop),
            ))
        })
        .collect()
}

/// A [`read_loop`] of all `keys` on each node.
pub(crate) fn spawn_readers(
    nodes: &[EdgeCache],
    keys: &[String],
    history: &History,
    origin: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    nodes
        .iter()
        .map(|node| {
            tokio::spawn(read_loop(
                node.clone(),
                keys.to_vec(),
                history.clone(),
                origin,
                Arc::clone(stop),
            ))
        })
        .collect()
}

/// Freezes the replica (`SIGSTOP` of `replica_pid`, resumed by the caller) and cuts its link on
/// the primary at `primary_port`, then waits until the primary alone has acknowledged `writes`
/// more writes: what a failover to that replica loses.
pub(crate) async fn acknowledge_writes_the_replica_misses(
    replica_pid: u32,
    primary_port: u16,
    history: &History,
    writes: usize,
) {
    signal(replica_pid, "STOP");
    let primary = redis::Client::open(format!("redis://127.0.0.1:{primary_port}/")).unwrap();
    let mut admin = primary.get_multiplexed_async_connection().await.unwrap();
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(cut, 1, "the replica's link was cut");
    let acks_before_loss = history.check(BOUND).acks;
    eventually("writes only the primary has", DEADLINE, || async {
        history.check(BOUND).acks >= acks_before_loss + writes
    })
    .await;
}

/// Writers and readers on three nodes through `kill -9` of the primary, after the primary
/// alone acknowledged writes the replica never got: every read is judged by the history checker
/// against the bound. The promoted replica holds older values of those keys; each node
/// invalidates its event-driven namespaces on the new primary before reading it, so none of
/// them is ever served. (With that invalidation switched off, this test finds violations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_stale_past_the_bound_across_a_failover() {
    let mut topology = tokio::task::block_in_place(RedisSentinel::start);
    let config = config(&topology);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(&config, id).await.0);
    }
    let history = History::new();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let writers = spawn_writers(&nodes, &keys, &history, origin, &stop);
    let readers = spawn_readers(&nodes, &keys, &history, origin, &stop);
    let scale = fault_scale();
    eventually(
        "the fleet has written a while",
        DEADLINE * scale as u32,
        || async { history.check(BOUND).acks >= 200 * scale },
    )
    .await;
    // Make the loss certain: freeze the replica, cut its link on the primary, let writes be
    // acknowledged by the primary alone, then kill the primary and let the replica, which
    // never got those writes, be promoted.
    let replica_pid = topology.pids()[1];
    acknowledge_writes_the_replica_misses(
        replica_pid,
        topology.primary_port(),
        &history,
        60 * scale,
    )
    .await;
    topology.kill_primary();
    signal(replica_pid, "CONT");
    let (_, promoted_in) = tokio::task::block_in_place(|| topology.wait_for_new_master(DEADLINE));
    for node in &nodes {
        eventually(
            &format!("{} makes the new primary safe to read", node.node_id()),
            DEADLINE,
            || async { node.stats().failovers_recovered >= 1 },
        )
        .await;
    }
    let acks_at_recovery = history.check(BOUND).acks;
    eventually(
        "writes go on after the failover",
        DEADLINE * scale as u32,
        || async { history.check(BOUND).acks >= acks_at_recovery + 200 * scale },
    )
    .await;
    conclude_failover(
        &format!("sentinel failover under load (new primary named {promoted_in:?} after kill -9)"),
        nodes,
        &history,
        origin,
        &stop,
        writers,
        readers,
    )
    .await;
}

/// Past the bound (every read must then have caught up with every write acknowledged before
/// it), stops the workload, prints what the history checker found under `what`, and asserts
/// it: no violation, and some reads exposed. Then shuts the nodes down.
pub(crate) async fn conclude_failover(
    what: &str,
    nodes: Vec<EdgeCache>,
    history: &History,
    origin: Instant,
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<u64>>,
    readers: Vec<tokio::task::JoinHandle<u64>>,
) {
    let settle = origin.elapsed() + BOUND;
    eventually("the bound passes", DEADLINE, || async {
        origin.elapsed() > settle
    })
    .await;
    stop.store(true, SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let report = history.check(BOUND);
    let recovered: Vec<u64> = nodes
        .iter()
        .map(|n| n.stats().failovers_recovered)
        .collect();
    println!(
        "{what}: {reads} reads, {} acks, exposed {}, stale {}, violations {}, worst staleness \
         {:?} (bound {BOUND:?}); recoveries per node {recovered:?}",
        report.acks,
        report.exposed,
        report.stale,
        report.violations.len(),
        report.worst_staleness,
    );
    report.assert_fresh();
    assert!(
        report.exposed > 0,
        "no read could have been stale\n{report}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// Data nodes that want an ACL user's password and Sentinels that want theirs: the URL's
/// credentials reach the data nodes, its `sentinel_password` the Sentinels, and either one
/// wrong or missing is refused with the reason and without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_and_password_reach_the_data_nodes_and_the_sentinels() {
    let topology = tokio::task::block_in_place(|| RedisSentinel::start_with_user("edge", "s3cret"));
    let hosts = sentinel_url(&topology)
        .trim_start_matches("redis+sentinel://")
        .to_owned();
    let good = RedisConfig::new(format!(
        "redis+sentinel://edge:s3cret@{hosts}?sentinel_password=s3cret"
    ));
    let l2 = RedisL2::connect(&good).await.unwrap();
    crate::contract_l2::contract(Arc::new(l2)).await;
    let bus = good.clone().channel("sentinel_acl");
    crate::contract_bus::contract(
        Arc::new(RedisBus::connect(&bus).await.unwrap()),
        Arc::new(RedisBus::connect(&bus).await.unwrap()),
    )
    .await;

    for (url, why) in [
        (
            format!("redis+sentinel://edge:wrong@{hosts}?sentinel_password=s3cret"),
            "the primary it names",
        ),
        (
            format!("redis+sentinel://edge:s3cret@{hosts}?sentinel_password=wrong"),
            "authentication failed",
        ),
        (format!("redis+sentinel://edge:s3cret@{hosts}"), "noauth"),
    ] {
        let err = RedisL2::connect(&RedisConfig::new(url.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::L2, "{url}");
        let text = err.to_string();
        assert!(
            !text.contains("wrong") && !text.contains("s3cret"),
            "no password shows: {text}"
        );
        assert!(
            text.to_lowercase().contains(why),
            "{url}: the reason is given: {text}"
        );
    }
}
