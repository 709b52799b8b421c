//! MemoryBus: delivery and every fault control.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cache_core::{BusItem, ConnectionState, ErrorKind, EventBus, Subscription};
use cache_memory::MemoryBus;

/// A deadline for items that must arrive; never reached when the code is right.
const DEADLINE: Duration = Duration::from_secs(5);

type Sub = Box<dyn Subscription>;

async fn next(sub: &mut Sub) -> BusItem {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("an item within the deadline")
        .expect("the subscription is open")
}

async fn next_message(sub: &mut Sub) -> Vec<u8> {
    match next(sub).await {
        BusItem::Message(bytes) => bytes,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Polls `next()` once: what has already been delivered, without waiting. Delivery happens
/// inside `publish`, so after a publish has returned anything it delivered is visible here.
fn poll_now(sub: &mut Sub) -> Poll<Option<BusItem>> {
    let mut cx = Context::from_waker(Waker::noop());
    // Dropping the pending future loses nothing: `next()` is cancel safe.
    sub.next().as_mut().poll(&mut cx)
}

fn assert_nothing_queued(sub: &mut Sub) {
    let polled = poll_now(sub);
    assert!(polled.is_pending(), "expected nothing, got {polled:?}");
}

async fn connected(bus: &MemoryBus) -> Sub {
    let mut sub = bus.subscribe().await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Connected)
    );
    sub
}

async fn publish(bus: &MemoryBus, payload: &str) {
    bus.publish(payload.as_bytes().to_vec()).await.unwrap();
}

#[tokio::test]
async fn a_subscription_reports_connected_first() {
    let bus = MemoryBus::new();
    let mut sub = bus.subscribe().await.unwrap();
    publish(&bus, "m").await;
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Connected)
    );
    assert_eq!(next_message(&mut sub).await, b"m");
    assert_nothing_queued(&mut sub);
}

#[tokio::test]
async fn every_subscriber_gets_every_message_in_publish_order() {
    let bus = MemoryBus::new();
    let mut subs = vec![
        connected(&bus).await,
        connected(&bus).await,
        connected(&bus).await,
    ];
    assert_eq!(bus.subscriber_count(), 3);
    for i in 0..20 {
        publish(&bus, &format!("m{i}")).await;
    }
    for sub in &mut subs {
        for i in 0..20 {
            assert_eq!(next_message(sub).await, format!("m{i}").as_bytes());
        }
        assert_nothing_queued(sub);
    }
    assert_eq!(bus.published(), 20);
}

#[tokio::test]
async fn the_publisher_receives_its_own_message() {
    // One node: the same handle publishes and subscribes, as EdgeCache does.
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    let mut own = bus.subscribe().await.unwrap();
    assert_eq!(
        next(&mut own).await,
        BusItem::State(ConnectionState::Connected)
    );
    bus.publish(b"mine".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut own).await, b"mine");
}

#[tokio::test]
async fn next_waits_for_a_later_publish() {
    let bus = Arc::new(MemoryBus::new());
    let mut sub = connected(&bus).await;
    let publisher = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move { bus.publish(b"later".to_vec()).await })
    };
    assert_eq!(next_message(&mut sub).await, b"later");
    publisher.await.unwrap().unwrap();
}

#[tokio::test]
async fn drop_next_loses_exactly_that_many_publishes() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    bus.drop_next(2);
    for m in ["a", "b", "c", "d"] {
        publish(&bus, m).await;
    }
    assert_eq!(next_message(&mut sub).await, b"c");
    assert_eq!(next_message(&mut sub).await, b"d");
    assert_nothing_queued(&mut sub);
    assert_eq!(bus.published(), 4, "dropped publishes still succeeded");
}

#[tokio::test]
async fn duplicate_next_delivers_twice_to_every_subscriber() {
    let bus = MemoryBus::new();
    let mut subs = vec![connected(&bus).await, connected(&bus).await];
    bus.duplicate_next(1);
    publish(&bus, "a").await;
    publish(&bus, "b").await;
    for sub in &mut subs {
        assert_eq!(next_message(sub).await, b"a");
        assert_eq!(next_message(sub).await, b"a");
        assert_eq!(next_message(sub).await, b"b");
        assert_nothing_queued(sub);
    }
}

#[tokio::test]
async fn hold_delays_until_release_in_order() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    bus.hold();
    publish(&bus, "a").await;
    publish(&bus, "b").await;
    assert_nothing_queued(&mut sub);
    // Subscribed while messages are held: the delayed messages reach it too.
    let mut late = connected(&bus).await;

    bus.release();
    for s in [&mut sub, &mut late] {
        assert_eq!(next_message(s).await, b"a");
        assert_eq!(next_message(s).await, b"b");
    }
    // Released: no longer holding.
    publish(&bus, "c").await;
    assert_eq!(next_message(&mut sub).await, b"c");
    assert_eq!(bus.published(), 3);
}

#[tokio::test]
async fn release_reversed_reorders_the_held_publishes() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    bus.hold();
    bus.duplicate_next(1);
    for m in ["a", "b", "c"] {
        publish(&bus, m).await;
    }
    assert_nothing_queued(&mut sub);
    bus.release_reversed();
    for expected in ["c", "b", "a", "a"] {
        assert_eq!(next_message(&mut sub).await, expected.as_bytes());
    }
    assert_nothing_queued(&mut sub);
}

#[tokio::test]
async fn disconnect_loses_messages_until_reconnect_reports_resubscribed() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    bus.disconnect();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Disconnected)
    );
    bus.disconnect(); // already disconnected: not reported twice
    publish(&bus, "lost").await;
    assert_nothing_queued(&mut sub);

    // A subscription started during the outage is a new, working connection.
    let mut fresh = connected(&bus).await;
    publish(&bus, "to-fresh").await;
    assert_eq!(next_message(&mut fresh).await, b"to-fresh");
    assert_nothing_queued(&mut sub);

    bus.reconnect();
    assert_eq!(
        next(&mut sub).await,
        BusItem::State(ConnectionState::Resubscribed)
    );
    assert_nothing_queued(&mut fresh);
    publish(&bus, "after").await;
    assert_eq!(
        next_message(&mut sub).await,
        b"after",
        "the lost message never arrives"
    );
    assert_eq!(next_message(&mut fresh).await, b"after");
    assert_eq!(bus.published(), 3);
}

#[tokio::test]
async fn fail_publishes_returns_a_bus_error_and_delivers_nothing() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    bus.fail_publishes(true);
    let error = bus.publish(b"x".to_vec()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Bus);
    assert!(error.is_transient());
    assert_nothing_queued(&mut sub);
    assert_eq!(bus.published(), 0);

    bus.fail_publishes(false);
    publish(&bus, "y").await;
    assert_eq!(next_message(&mut sub).await, b"y");
    assert_eq!(bus.published(), 1);
}

#[tokio::test]
async fn dropped_subscriptions_are_pruned() {
    let bus = MemoryBus::new();
    let mut kept = connected(&bus).await;
    let gone = connected(&bus).await;
    assert_eq!(bus.subscriber_count(), 2);
    drop(gone);
    publish(&bus, "m").await;
    assert_eq!(bus.subscriber_count(), 1);
    assert_eq!(next_message(&mut kept).await, b"m");
}

#[tokio::test]
async fn end_subscriptions_drains_then_ends() {
    let bus = MemoryBus::new();
    let mut sub = connected(&bus).await;
    publish(&bus, "last").await;
    bus.end_subscriptions();
    assert_eq!(next_message(&mut sub).await, b"last");
    assert_eq!(
        tokio::time::timeout(DEADLINE, sub.next()).await.unwrap(),
        None
    );
    assert_eq!(bus.subscriber_count(), 0);
}

#[tokio::test]
async fn the_global_bus_is_shared() {
    let a = MemoryBus::global();
    let b = MemoryBus::global();
    assert!(Arc::ptr_eq(&a, &b));
    let mut sub = connected(&b).await;
    // Other tests may publish on the global bus too; look for ours.
    a.publish(b"cache-memory-it-global".to_vec()).await.unwrap();
    loop {
        if let BusItem::Message(bytes) = next(&mut sub).await {
            if bytes == b"cache-memory-it-global" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_subscriber_over_its_bound_is_disconnected_and_resubscribed_once_it_drains() {
    // 64 KiB (the least a bus takes): four 16 KiB messages fit, the rest overflow.
    let bus = MemoryBus::with_max_queued_bytes(0);
    let mut slow = connected(&bus).await;
    let mut quick = connected(&bus).await;
    let message = |i: u8| vec![i; 16 * 1024];
    for i in 0..10 {
        bus.publish(message(i)).await.unwrap();
        // The quick subscriber takes each at once and never overflows.
        assert_eq!(next_message(&mut quick).await, message(i));
    }
    for i in 0..4 {
        assert_eq!(next_message(&mut slow).await, message(i));
    }
    assert_eq!(
        next(&mut slow).await,
        BusItem::State(ConnectionState::Disconnected),
        "the overflow is reported after what was queued"
    );
    assert_eq!(
        next(&mut slow).await,
        BusItem::State(ConnectionState::Resubscribed),
        "and, drained, the subscription is back"
    );
    assert_nothing_queued(&mut slow);
    bus.publish(message(10)).await.unwrap();
    assert_eq!(next_message(&mut slow).await, message(10));
    assert_eq!(next_message(&mut quick).await, message(10));
}
