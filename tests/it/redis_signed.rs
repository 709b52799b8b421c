//! Signed events over a real redis-server: what the scripts append (`"pos"`) does not break a
//! signature, log replays are verified too, and a publisher without the key changes nothing.

use std::sync::Arc;
use std::time::Duration;

use cache_core::signing::{EventKeys, SigningKey};
use cache_core::{Event, EventBus, EventType, L2Store, Scope};
use cache_edge::{EdgeCache, Notification};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};

const DEADLINE: Duration = Duration::from_secs(10);

fn ring() -> EventKeys {
    EventKeys::new(SigningKey::new("fleet-1", vec![3; 32]).unwrap())
}

async fn node(l2_config: &RedisConfig, bus_config: &RedisConfig, id: &str) -> EdgeCache {
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(l2_config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(bus_config).await.unwrap());
    EdgeCache::builder()
        .node_id(id)
        .l2(l2)
        .bus(bus)
        .event_keys(ring())
        .staleness_bound(Duration::from_millis(600))
        .liveness_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

async fn cached(node: &EdgeCache, gpu: &str) -> Option<String> {
    node.get::<String, _>("gpu_availability", &json!({"gpu_id": gpu}))
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

/// A namespace-wide wipe of `gpu_avail`, as a publisher without the fleet's key makes it.
fn forged_wipe(event_id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut event = Event::new(EventType::BookingCreated, "booking_x", "a", event_id, now);
    event.affected_namespaces = vec!["gpu_avail".to_owned()];
    event.scope = Scope::Namespace;
    EventKeys::new(SigningKey::new("fleet-1", vec![4; 32]).unwrap()).sign(&event.encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_flow_through_the_scripts_and_the_log_and_forgeries_do_not() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let a = node(&config, &config, "a").await;
    let b = node(&config, &config, "b").await;
    // c listens on a channel nobody publishes on: it learns every change from the log alone.
    let c = node(&config, &config.clone().channel("silence"), "c").await;
    let b_events = b.stats().events_applied;
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-1"}),
        &"free".to_owned(),
    )
    .await
    .unwrap();
    // The write's announcement reaches b before b's counters are compared below.
    eventually("b applies a's write", DEADLINE, || async {
        b.stats().events_applied > b_events
    })
    .await;
    for node in [&b, &c] {
        assert_eq!(cached(node, "g-1").await.as_deref(), Some("free"));
        assert_eq!(cached(node, "g-1").await.as_deref(), Some("free"));
    }

    // A publisher with another secret under the fleet's key id, and one with no key at all.
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let received = b.stats().events_received;
    let mut unsigned = Event::new(EventType::BookingCreated, "booking_y", "a", "e-2", 1.0);
    unsigned.affected_namespaces = vec!["gpu_avail".to_owned()];
    for message in [forged_wipe("e-1"), unsigned.encode()] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(config.channel_name())
            .arg(message)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    eventually("b hears both forgeries", DEADLINE, || async {
        b.stats().events_received >= received + 2
    })
    .await;
    let s = b.stats();
    assert_eq!((s.rejected_bad_mac, s.rejected_unsigned), (1, 1));
    let l1_hits = s.l1_hits;
    assert_eq!(cached(&b, "g-1").await.as_deref(), Some("free"));
    assert_eq!(b.stats().l1_hits, l1_hits + 1, "still served from L1");

    // A real booking: signed by a, sequenced and logged by the script, verified by b on the
    // bus and by c from the log.
    let (b_applied, c_replayed) = (b.stats().events_applied, c.stats().events_replayed);
    a.notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    eventually("b applies the booking", DEADLINE, || async {
        b.stats().events_applied > b_applied
    })
    .await;
    eventually("c replays the booking from the log", DEADLINE, || async {
        c.stats().events_replayed > c_replayed
    })
    .await;
    for node in [&b, &c] {
        assert_eq!(cached(node, "g-1").await, None, "{}", node.node_id());
        let s = node.stats();
        assert_eq!(
            s.rejected_bad_mac + s.rejected_unknown_key + s.rejected_malformed_signature,
            if node.node_id() == "b" { 1 } else { 0 },
            "{}: only the forgery was refused",
            node.node_id()
        );
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
