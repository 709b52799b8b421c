//! The hostile publisher: a fleet of three signed nodes on a real redis-server, and someone who
//! can PUBLISH on its channel but holds no key. Every kind of bad message, and a sustained flood
//! of them, is refused and counted; every node keeps serving while it lasts; the entries no
//! valid event names are still L1 hits afterwards; and the process's memory stays bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cache_core::signing::{EventKeys, SigningKey};
use cache_core::{Event, EventBus, EventType, L2Store, Scope};
use cache_edge::{EdgeCache, Notification, Stats};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use futures_util::StreamExt as _;
use serde_json::json;
use test_support::{eventually, RedisServer};

const DEADLINE: Duration = Duration::from_secs(20);
const GPUS: usize = 50;
const FLOOD: usize = 5_000;
/// The flood that overruns a subscription's queue (second test).
const OVERFLOW_FLOOD: usize = 40_000;
/// What the test process may grow by over the whole attack (three nodes, their queues, the
/// attacker's buffers).
const MEMORY_BOUND_BYTES: u64 = 64 << 20;

fn ring() -> EventKeys {
    EventKeys::new(SigningKey::new("fleet", vec![5; 32]).unwrap())
}

async fn node(config: &RedisConfig, id: &str) -> EdgeCache {
    node_with(config, id, ring()).await
}

async fn node_with(config: &RedisConfig, id: &str, keys: EventKeys) -> EdgeCache {
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
    EdgeCache::builder()
        .node_id(id)
        .l2(l2)
        .bus(bus)
        .event_keys(keys)
        .build()
        .await
        .unwrap()
}

fn gpu(i: usize) -> serde_json::Value {
    json!({"gpu_id": format!("g-{i}")})
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An event wiping `namespaces`, from `source`.
fn wipe(source: &str, id: &str, namespaces: &[&str]) -> Vec<u8> {
    let mut event = Event::new(EventType::BookingCreated, "booking_x", source, id, now());
    event.affected_namespaces = namespaces.iter().map(|s| (*s).to_owned()).collect();
    event.scope = Scope::Namespace;
    event.encode()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn refused(s: &Stats) -> u64 {
    s.rejected_unsigned
        + s.rejected_malformed_signature
        + s.rejected_unknown_key
        + s.rejected_bad_mac
        + s.rejected_replayed
        + s.rejected_stale
        + s.rejected_oversized
        + s.rejected_too_deep
        + s.rejected_too_many_namespaces
        + s.rejected_too_many_keys
        + s.events_rejected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_without_the_key_changes_nothing_and_stops_no_node() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let nodes = [
        node(&config, "a").await,
        node(&config, "b").await,
        node(&config, "c").await,
    ];
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let channel = config.channel_name().to_owned();

    // A real event, captured off the channel for replaying (before anything is cached: a
    // booking drops its namespaces whole).
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    nodes[0]
        .notify(Notification::booking_created("b-0", "g-999"))
        .await
        .unwrap();
    let captured: Vec<u8> = pubsub
        .on_message()
        .next()
        .await
        .unwrap()
        .get_payload_bytes()
        .to_vec();
    drop(pubsub);

    let applied_before: Vec<u64> = nodes.iter().map(|n| n.stats().events_applied).collect();
    for i in 0..GPUS {
        nodes[0]
            .set("gpu_availability", &gpu(i), &format!("free-{i}"))
            .await
            .unwrap();
    }
    // Every write's announcement is applied before the attack's counts begin.
    for (node, before) in nodes[1..].iter().zip(&applied_before[1..]) {
        eventually(
            "the writes' announcements are applied",
            DEADLINE,
            || async { node.stats().events_applied >= before + GPUS as u64 },
        )
        .await;
    }
    for node in &nodes[1..] {
        for i in 0..GPUS {
            assert!(node
                .get::<String, _>("gpu_availability", &gpu(i))
                .await
                .unwrap()
                .is_some());
        }
    }
    let other_key = EventKeys::new(SigningKey::new("fleet", vec![6; 32]).unwrap());
    let stranger = EventKeys::new(SigningKey::new("stranger", vec![7; 32]).unwrap());
    let all = ["gpu_avail", "gpu_price", "order_book"];
    let mut truncated = ring().sign(&wipe("a", "e-trunc", &all));
    truncated.truncate(truncated.len() - 20);
    let nested = format!("{{\"a\":{}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let many_namespaces: Vec<String> = (0..100_000).map(|i| format!("n{i}")).collect();
    let many: Vec<&str> = many_namespaces.iter().map(String::as_str).collect();
    // (message, what it is)
    let hostile: Vec<(Vec<u8>, &str)> =
        vec![
        (b"{not json".to_vec(), "malformed"),
        (truncated, "truncated"),
        ((0..512).map(|i| (i * 37 % 256) as u8).collect(), "binary"),
        (vec![b'x'; 4 << 20], "4 MiB"),
        (nested.into_bytes(), "nested 5,000 deep"),
        (wipe("a", "e-nomac", &all), "no MAC"),
        (other_key.sign(&wipe("a", "e-badmac", &all)), "bad MAC"),
        (stranger.sign(&wipe("a", "e-stranger", &all)), "unknown key id"),
        (other_key.sign(&wipe("c", "e-as-c", &all)), "another node's id"),
        (wipe("b", "e-as-b", &all), "the receiver's own id, unsigned"),
        (other_key.sign(&wipe("b", "e-as-b2", &all)), "the receiver's own id, bad MAC"),
        (captured, "replayed"),
        (
            br#"{"source_node":"x","event_type":"gpu_melted","event_id":"e-u","timestamp":1.0}"#
                .to_vec(),
            "unknown type",
        ),
        (
            other_key.sign(&wipe("a", "e-glob", &["*", "gpu_*", "?", "[a-z]*"])),
            "glob-laden",
        ),
        (wipe("a", "e-many", &many), "100,000 namespaces"),
    ];
    let kinds = hostile.len() as u64;
    let before: Vec<Stats> = nodes.iter().map(EdgeCache::stats).collect();
    let flood_started = std::time::Instant::now();
    let resident_before = resident_bytes();
    for (message, what) in &hostile {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message.as_slice())
            .query_async(&mut raw)
            .await
            .unwrap_or_else(|e| panic!("publishing {what}: {e}"));
    }

    // The flood, while readers keep reading the entries every one of its messages would wipe.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = nodes[1..]
        .iter()
        .cloned()
        .map(|node| {
            let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Relaxed) {
                    let value = node
                        .get::<String, _>("gpu_availability", &gpu(i % GPUS))
                        .await
                        .unwrap();
                    assert_eq!(
                        value.as_deref().map(String::as_str),
                        Some(format!("free-{}", i % GPUS)).as_deref()
                    );
                    reads.fetch_add(1, Relaxed);
                    i += 1;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let flood_kinds = [
        wipe("a", "e-flood", &all),
        other_key.sign(&wipe("a", "e-flood", &all)),
        b"\x00\x01garbage".to_vec(),
    ];
    let mut pipe = redis::pipe();
    for n in 0..FLOOD {
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(flood_kinds[n % flood_kinds.len()].as_slice())
            .ignore();
        if n % 1_000 == 999 {
            let () = pipe.query_async(&mut raw).await.unwrap();
            pipe = redis::pipe();
        }
    }
    let expected = kinds + FLOOD as u64;
    for (node, before) in nodes.iter().zip(&before) {
        eventually(
            &format!("{} handles every message", node.node_id()),
            DEADLINE,
            || async { node.stats().events_received >= before.events_received + expected },
        )
        .await;
    }
    stop.store(true, Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    let resident_after = resident_bytes();

    for (node, before) in nodes.iter().zip(&before) {
        let s = node.stats();
        let id = node.node_id();
        // The captured event is a's own: a ignores it as its own (harmlessly), the others
        // refuse it as a replay.
        let own = u64::from(id == "a");
        assert_eq!(s.events_applied, before.events_applied, "{id} applied none");
        assert_eq!(
            refused(&s) - refused(before),
            expected - own,
            "{id}: every message refused and counted"
        );
        assert_eq!(
            s.own_events_ignored - before.own_events_ignored,
            own,
            "{id}"
        );
        assert_eq!(
            s.rejected_replayed - before.rejected_replayed,
            1 - own,
            "{id}: the captured event"
        );
        assert_eq!(
            s.rejected_oversized - before.rejected_oversized,
            2,
            "{id}: 4 MiB and 100,000 namespaces"
        );
        assert_eq!(s.rejected_too_deep - before.rejected_too_deep, 1, "{id}");
        assert_eq!(
            s.rejected_unknown_key - before.rejected_unknown_key,
            1,
            "{id}"
        );
        assert!(s.rejected_bad_mac - before.rejected_bad_mac >= 4, "{id}");
    }
    assert!(
        reads.load(Relaxed) > 100,
        "readers kept reading: {}",
        reads.load(Relaxed)
    );
    // Every entry is still an L1 hit on every node that cached it.
    for node in &nodes[1..] {
        let hits = node.stats().l1_hits;
        let l2_hits = node.stats().l2_hits;
        for i in 0..GPUS {
            let value = node
                .get::<String, _>("gpu_availability", &gpu(i))
                .await
                .unwrap();
            assert_eq!(
                value.as_deref().map(String::as_str),
                Some(format!("free-{i}")).as_deref()
            );
        }
        assert_eq!(
            node.stats().l1_hits,
            hits + GPUS as u64,
            "{}",
            node.node_id()
        );
        assert_eq!(node.stats().l2_hits, l2_hits, "{}", node.node_id());
    }
    let grown = resident_after.saturating_sub(resident_before);
    eprintln!(
        "hostile: {expected} messages refused by each node in {:.2?}, {} reads served meanwhile, \
         resident memory grew by {:.1} MiB",
        flood_started.elapsed(),
        reads.load(Relaxed),
        grown as f64 / f64::from(1 << 20)
    );
    assert!(
        grown < MEMORY_BOUND_BYTES,
        "the process grew by {grown} bytes over the attack (bound {MEMORY_BOUND_BYTES})"
    );

    // The exposure: the fleet's own booking of g-1 still reaches both nodes.
    let applied: Vec<u64> = nodes.iter().map(|n| n.stats().events_applied).collect();
    nodes[0]
        .notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    for (node, applied) in nodes[1..].iter().zip(&applied[1..]) {
        eventually("the real booking applies", DEADLINE, || async {
            node.stats().events_applied > *applied
        })
        .await;
        assert_eq!(
            node.get::<String, _>("gpu_availability", &gpu(1))
                .await
                .unwrap(),
            None
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// A flood faster than a node can refuse it overruns its subscription's queue: the queue stays
/// within its byte bound by dropping messages, the node hears that as a lost connection, and a
/// real change made in the middle of the flood (its message perhaps among those dropped) still
/// reaches the node, through the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_queue_bound_is_dropped_and_the_node_catches_up() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let a = node(&config, "a").await;
    let small = config
        .clone()
        .max_queued_bytes(cache_redis::MIN_QUEUED_BYTES);
    let b = node(&small, "b").await;
    a.set("gpu_availability", &gpu(1), &"v1".to_owned())
        .await
        .unwrap();
    assert_eq!(
        b.get::<String, _>("gpu_availability", &gpu(1))
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("v1")
    );
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let garbage = wipe("a", "e-flood", &["gpu_avail"]);
    let received = b.stats().events_received;
    for round in 0..OVERFLOW_FLOOD / 2_000 {
        let mut pipe = redis::pipe();
        for _ in 0..2_000 {
            pipe.cmd("PUBLISH")
                .arg(config.channel_name())
                .arg(garbage.as_slice())
                .ignore();
        }
        let () = pipe.query_async(&mut raw).await.unwrap();
        if round == OVERFLOW_FLOOD / 4_000 {
            a.set("gpu_availability", &gpu(1), &"v2".to_owned())
                .await
                .unwrap();
        }
    }
    eventually(
        "b serves the change made during the flood",
        DEADLINE,
        || async {
            b.get::<String, _>("gpu_availability", &gpu(1))
                .await
                .unwrap()
                .is_some_and(|v| *v == "v2")
        },
    )
    .await;
    eventually("b's queue drains and its bus is up", DEADLINE, || async {
        let health = b.health().await;
        health.event_queue_size == 0 && health.bus_connected
    })
    .await;
    let s = b.stats();
    let heard = s.events_received - received;
    assert!(
        heard < OVERFLOW_FLOOD as u64,
        "the queue must have dropped part of the flood (heard {heard})"
    );
    assert!(s.events_applied + s.events_replayed > 0);
    eprintln!(
        "overflow: b heard {heard} of {OVERFLOW_FLOOD} flooded messages within a {} KiB queue, \
         replayed {} events, and served the change made mid-flood",
        cache_redis::MIN_QUEUED_BYTES / 1024,
        s.events_replayed
    );
    a.shutdown().await;
    b.shutdown().await;
}
