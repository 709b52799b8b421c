//! One contract suite for every event bus, run against the in-process bus and Redis pub/sub.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{BusItem, ConnectionState, EventBus, Subscription};
use cache_memory::MemoryBus;
use cache_redis::{RedisBus, RedisConfig};
use test_support::RedisServer;

async fn next(sub: &mut Box<dyn Subscription>) -> BusItem {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an item within 5 s")
        .expect("subscription open")
}

/// The contract of `cache_core::EventBus`: `a` and `b` are two handles on one bus (two nodes).
pub(crate) async fn contract(a: Arc<dyn EventBus>, b: Arc<dyn EventBus>) {
    let mut sub_a = a.subscribe().await.unwrap();
    let mut sub_b = b.subscribe().await.unwrap();
    assert_eq!(
        next(&mut sub_a).await,
        BusItem::State(ConnectionState::Connected)
    );
    assert_eq!(
        next(&mut sub_b).await,
        BusItem::State(ConnectionState::Connected)
    );

    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("event-{i}").into_bytes())
        .collect();
    for p in &payloads {
        a.publish(p.clone()).await.unwrap();
    }
    // Bytes are carried as they are, malformed or not: decoding is the receiver's job.
    b.publish(vec![0xff, 0x00, b'{']).await.unwrap();
    // Nothing taken yet: each subscription's gauge counts all 101 once they have arrived (a
    // node's health reports it as the events waiting to be applied).
    for sub in [&sub_a, &sub_b] {
        let gauge = sub.queue_gauge().expect("both buses count what they hold");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while gauge.len() < 101 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queued: {}",
                gauge.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(gauge.len(), 101, "no more than what was published");
    }
    for sub in [&mut sub_a, &mut sub_b] {
        for p in &payloads {
            assert_eq!(
                next(sub).await,
                BusItem::Message(p.clone()),
                "in publish order, own messages included"
            );
        }
        assert_eq!(next(sub).await, BusItem::Message(vec![0xff, 0x00, b'{']));
        assert_eq!(sub.queue_gauge().map(|g| g.len()), Some(0), "all taken");
    }
}

/// A requested resubscribe: `Disconnected`, then `Resubscribed`, then messages flow again.
async fn resubscribe_on_request(bus: Arc<dyn EventBus>) {
    let mut sub = bus.subscribe().await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Connected)
    );
    assert!(sub.resubscribe(), "the transport can resubscribe");
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Disconnected)
    );
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Resubscribed)
    );
    bus.publish(b"after".to_vec()).await.unwrap();
    assert_eq!(next(&mut sub).await, BusItem::Message(b"after".to_vec()));
}

#[tokio::test]
async fn both_buses_resubscribe_on_request() {
    resubscribe_on_request(Arc::new(MemoryBus::new())).await;
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    resubscribe_on_request(Arc::new(RedisBus::connect(&config).await.unwrap())).await;
}

#[tokio::test]
async fn the_in_process_bus_meets_the_contract() {
    let bus = Arc::new(MemoryBus::new());
    contract(bus.clone(), bus).await;
}

#[tokio::test]
async fn the_redis_bus_meets_the_contract() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url()).channel("contract_test");
    let a = RedisBus::connect(&config).await.unwrap();
    let b = RedisBus::connect(&config).await.unwrap();
    contract(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn the_redis_bus_uses_the_seed_channel_by_default() {
    let server = RedisServer::start();
    let bus = RedisBus::connect(&RedisConfig::new(server.url()))
        .await
        .unwrap();
    assert_eq!(bus.channel(), "cache_invalidation_events");
}

#[tokio::test]
async fn a_redis_subscription_reports_loss_and_resubscribes_after_a_restart() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let bus = RedisBus::connect(&config).await.unwrap();
    let mut sub = bus.subscribe().await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Connected)
    );
    server.stop();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Disconnected)
    );
    server.restart();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Resubscribed)
    );
    // Publishing works again through the reconnecting publisher, and is received.
    test_support::eventually(
        "publishing works after the restart",
        Duration::from_secs(5),
        || async { bus.publish(b"after".to_vec()).await.is_ok() },
    )
    .await;
    assert_eq!(next(&mut sub).await, BusItem::Message(b"after".to_vec()));
}

#[tokio::test]
async fn subscribing_to_an_unreachable_redis_fails_with_the_reason() {
    let server = RedisServer::start();
    let bus = RedisBus::connect(&RedisConfig::new(server.url()))
        .await
        .unwrap();
    drop(server);
    let err = bus
        .subscribe()
        .await
        .err()
        .expect("no subscription without a server");
    assert_eq!(err.kind(), cache_core::ErrorKind::Bus);
    assert!(
        err.to_string().contains("cache_invalidation_events"),
        "{err}"
    );
}

#[tokio::test]
async fn an_idle_redis_subscription_stays_connected_across_many_pings() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url()).ping_interval(Duration::from_millis(20));
    let bus = RedisBus::connect(&config).await.unwrap();
    let mut sub = bus.subscribe().await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Connected)
    );
    // Twenty-five ping intervals of silence: a healthy connection reports nothing at all.
    let quiet = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(
        quiet.is_err(),
        "an idle, healthy subscription reported {quiet:?}"
    );
    bus.publish(b"still here".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BusItem::Message(b"still here".to_vec())
    );
}
