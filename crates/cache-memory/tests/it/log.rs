//! MemoryL2 built with `announce_on`: sequenced, logged and published changes, reading the log,
//! trimming, restarts, failures, and the bus's fault controls on the store's publishes.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cache_core::log::{positions_in_tail, NO_EPOCH};
use cache_core::{
    BusItem, CacheKey, ConnectionState, ErrorKind, Event, EventBus, EventType, L2Store, L2Write,
    LogPosition, LogRead, Subscription, Timestamp,
};
use cache_memory::{ManualClock, MemoryBus, MemoryL2, DEFAULT_LOG_CAPACITY};

const MIB: u64 = 1024 * 1024;
const TTL: Duration = Duration::from_secs(30);

type Sub = Box<dyn Subscription>;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Timestamp::from_nanos(1_000_000)))
}

/// A sequenced store and the bus it announces on.
fn sequenced() -> (MemoryL2, Arc<MemoryBus>) {
    let bus = Arc::new(MemoryBus::new());
    let l2 = MemoryL2::new(MIB, clock()).announce_on(Arc::clone(&bus));
    (l2, bus)
}

fn key(ns: &str, id: u64) -> CacheKey {
    CacheKey::derive(ns, &serde_json::json!({ "id": id })).unwrap()
}

/// An encoded event named `id`, invalidating `namespaces`.
fn event(id: &str, namespaces: &[&str]) -> Vec<u8> {
    let mut event = Event::new(EventType::ManualInvalidation, "r-1", "node-a", id, 1.5);
    event.affected_namespaces = namespaces.iter().map(|ns| (*ns).to_owned()).collect();
    event.encode()
}

fn announced_write(key: &CacheKey, bytes: &[u8], id: &str) -> L2Write {
    L2Write::new(key.clone(), bytes.to_vec(), TTL).announce(event(id, &[]))
}

fn names(namespaces: &[&str]) -> Vec<String> {
    namespaces.iter().map(|ns| (*ns).to_owned()).collect()
}

async fn read(l2: &MemoryL2, key: &CacheKey) -> Option<Vec<u8>> {
    l2.get(key).await.unwrap().map(|entry| entry.bytes)
}

async fn log(l2: &MemoryL2, ns: &str) -> LogRead {
    l2.read_log(ns, 0, usize::MAX).await.unwrap()
}

/// The sequence numbers a log read returned.
fn seqs(read: &LogRead) -> Vec<u64> {
    read.entries.iter().map(|(seq, _)| *seq).collect()
}

/// The event id of a logged or published message.
fn event_id(message: &[u8]) -> String {
    Event::decode(message).unwrap().event_id
}

async fn connected(bus: &MemoryBus) -> Sub {
    let mut sub = bus.subscribe().await.unwrap();
    assert_eq!(
        poll_now(&mut sub),
        Poll::Ready(Some(BusItem::State(ConnectionState::Connected)))
    );
    sub
}

/// What has already been delivered, without waiting: the store publishes before its call
/// returns, so anything it delivered is visible here.
fn poll_now(sub: &mut Sub) -> Poll<Option<BusItem>> {
    let mut cx = Context::from_waker(Waker::noop());
    // Dropping the pending future loses nothing: `next()` is cancel safe. Unconstrained, so
    // tokio's cooperative budget never makes a queued item look absent.
    std::pin::pin!(tokio::task::unconstrained(sub.next())).poll(&mut cx)
}

/// Runs a call of the store to completion on this thread: its futures never wait, so the first
/// poll finishes them.
fn at_once<F: Future>(call: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(call).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a MemoryL2 call waited"),
    }
}

/// Every message delivered so far, in order.
fn delivered(sub: &mut Sub) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match poll_now(sub) {
            Poll::Ready(Some(BusItem::Message(bytes))) => out.push(bytes),
            Poll::Pending => return out,
            other => panic!("expected messages, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn positions_are_contiguous_per_namespace_across_every_kind_of_change() {
    let (l2, _bus) = sequenced();
    let (a1, a2, b1) = (key("gpu_avail", 1), key("gpu_avail", 2), key("pricing", 1));
    l2.set(announced_write(&a1, b"1", "w-a1").tags(vec!["t".into()]))
        .await
        .unwrap();
    l2.set(announced_write(&b1, b"1", "w-b1")).await.unwrap();
    l2.set(announced_write(&a2, b"2", "w-a2")).await.unwrap();
    assert!(l2
        .delete_and_announce(&a2, event("d-a2", &[]))
        .await
        .unwrap());
    assert_eq!(
        l2.invalidate_tag_and_announce("gpu_avail", "t", event("t-a", &[]))
            .await
            .unwrap(),
        1
    );
    l2.invalidate_namespaces(&names(&["pricing"]), Some(event("n-b", &["pricing"])))
        .await
        .unwrap();
    // A delete of a key that is not there still changes the key's fence: it is sequenced too.
    assert!(!l2
        .delete_and_announce(&a1, event("d-a1", &[]))
        .await
        .unwrap());

    let a = log(&l2, "gpu_avail").await;
    let b = log(&l2, "pricing").await;
    assert_eq!((a.head, a.first, seqs(&a)), (5, 1, vec![1, 2, 3, 4, 5]));
    assert_eq!((b.head, b.first, seqs(&b)), (2, 1, vec![1, 2]));
    assert_ne!(a.epoch, NO_EPOCH);
    assert_ne!(b.epoch, NO_EPOCH);
    assert_ne!(a.epoch, b.epoch, "each log starts in its own fresh epoch");
    let ids: Vec<String> = a.entries.iter().map(|(_, m)| event_id(m)).collect();
    assert_eq!(ids, ["w-a1", "w-a2", "d-a2", "t-a", "d-a1"]);
    for (seq, message) in &a.entries {
        assert_eq!(
            Event::decode(message).unwrap().positions,
            vec![LogPosition::new("gpu_avail", a.epoch, *seq)]
        );
    }
    assert_eq!(event_id(&b.entries[1].1), "n-b");
    assert!(
        read(&l2, &a1).await.is_none(),
        "the changes themselves were made"
    );
}

#[tokio::test]
async fn a_multi_namespace_invalidation_gets_one_position_per_namespace() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    let k = key("pricing", 1);
    l2.set(announced_write(&k, b"p", "w")).await.unwrap();
    let before = read(&l2, &k).await;
    assert!(before.is_some());

    let listed = names(&["gpu_avail", "pricing", "market_stats", "pricing"]);
    let sent = event("n", &["gpu_avail", "pricing", "market_stats"]);
    l2.invalidate_namespaces(&listed, Some(sent.clone()))
        .await
        .unwrap();

    assert!(read(&l2, &k).await.is_none(), "pricing was invalidated");
    let (gpu, pricing, stats) = (
        log(&l2, "gpu_avail").await,
        log(&l2, "pricing").await,
        log(&l2, "market_stats").await,
    );
    let expected = vec![
        LogPosition::new("gpu_avail", gpu.epoch, 1),
        LogPosition::new("pricing", pricing.epoch, 2),
        LogPosition::new("market_stats", stats.epoch, 1),
    ];
    let messages = delivered(&mut sub);
    assert_eq!(
        messages.len(),
        2,
        "the write's event, then the invalidation's"
    );
    let published = &messages[1];
    let decoded = Event::decode(published).unwrap();
    assert_eq!(
        decoded.positions, expected,
        "in listed order, a repeated namespace once"
    );
    assert_eq!(decoded.event_id, "n");
    assert_eq!(positions_in_tail(published), Some(expected));
    let mut unsequenced = decoded.clone();
    unsequenced.positions.clear();
    assert_eq!(
        unsequenced,
        Event::decode(&sent).unwrap(),
        "nothing else changed"
    );
    for read in [&gpu, &pricing, &stats] {
        assert_eq!(
            &read.entries.last().unwrap().1,
            published,
            "each log holds the message as it was published"
        );
    }
}

#[tokio::test]
async fn subscribers_receive_the_store_s_publishes_in_sequence_order() {
    let (l2, bus) = sequenced();
    let mut first = connected(&bus).await;
    let mut second = connected(&bus).await;
    for i in 0..20 {
        let k = key(if i % 3 == 0 { "pricing" } else { "gpu_avail" }, i);
        l2.set(announced_write(&k, b"v", &format!("e{i}")))
            .await
            .unwrap();
    }
    let logged = log(&l2, "gpu_avail").await;
    let published = delivered(&mut first);
    assert_eq!(published, delivered(&mut second));
    assert_eq!(published.len(), 20);
    let gpu_positions: Vec<u64> = published
        .iter()
        .flat_map(|m| positions_in_tail(m).unwrap())
        .filter(|p| p.key_namespace == "gpu_avail")
        .map(|p| p.seq)
        .collect();
    assert_eq!(gpu_positions, (1..=13).collect::<Vec<_>>());
    let ids: Vec<String> = published.iter().map(|m| event_id(m)).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected, "publish order is the order of the changes");
    assert_eq!(bus.published(), 20);
    assert_eq!(logged.head, 13);
}

#[tokio::test]
async fn changes_from_many_threads_publish_in_sequence_order() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let l2 = &l2;
            scope.spawn(move || {
                for i in 0..50 {
                    let ns = if i % 2 == 0 { "gpu_avail" } else { "pricing" };
                    let k = key(ns, t * 1000 + i);
                    at_once(l2.set(announced_write(&k, b"v", "e"))).unwrap();
                }
            });
        }
    });
    let mut gpu = Vec::new();
    let mut pricing = Vec::new();
    for message in delivered(&mut sub) {
        let position = positions_in_tail(&message).unwrap().remove(0);
        match position.key_namespace.as_str() {
            "gpu_avail" => gpu.push(position.seq),
            _ => pricing.push(position.seq),
        }
    }
    assert_eq!(gpu, (1..=200).collect::<Vec<_>>());
    assert_eq!(pricing, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn read_log_returns_the_range_after_a_position_up_to_a_limit() {
    let (l2, _bus) = sequenced();
    for i in 1..=10 {
        l2.set(announced_write(
            &key("gpu_avail", i),
            b"v",
            &format!("e{i}"),
        ))
        .await
        .unwrap();
    }
    let epoch = log(&l2, "gpu_avail").await.epoch;
    let part = l2.read_log("gpu_avail", 3, 4).await.unwrap();
    assert_eq!(
        (part.epoch, part.head, part.first, seqs(&part)),
        (epoch, 10, 1, vec![4, 5, 6, 7])
    );
    let ids: Vec<String> = part.entries.iter().map(|(_, m)| event_id(m)).collect();
    assert_eq!(ids, ["e4", "e5", "e6", "e7"]);
    assert_eq!(
        seqs(&l2.read_log("gpu_avail", 8, 100).await.unwrap()),
        [9, 10]
    );
    let none = l2.read_log("gpu_avail", 10, 100).await.unwrap();
    assert_eq!(
        (none.head, none.first, none.entries.len()),
        (10, 1, 0),
        "at the head"
    );
    assert!(l2
        .read_log("gpu_avail", 0, 0)
        .await
        .unwrap()
        .entries
        .is_empty());
    assert_eq!(
        seqs(&l2.read_log("gpu_avail", 99, 5).await.unwrap()),
        Vec::<u64>::new()
    );
    assert!(
        unused_log(&l2.read_log("pricing", 0, 10).await.unwrap()),
        "a namespace never sequenced"
    );
}

#[tokio::test]
async fn the_log_capacity_and_trim_log_move_first() {
    let bus = Arc::new(MemoryBus::new());
    let l2 = MemoryL2::new(MIB, clock())
        .announce_on(Arc::clone(&bus))
        .log_capacity(3);
    for i in 1..=5 {
        l2.set(announced_write(
            &key("gpu_avail", i),
            b"v",
            &format!("e{i}"),
        ))
        .await
        .unwrap();
    }
    let capped = log(&l2, "gpu_avail").await;
    assert_eq!(
        (capped.head, capped.first, seqs(&capped)),
        (5, 3, vec![3, 4, 5])
    );
    assert_eq!(
        seqs(&l2.read_log("gpu_avail", 1, 10).await.unwrap()),
        [3, 4, 5],
        "what was trimmed cannot be read back; first says so"
    );

    l2.trim_log("gpu_avail", 1);
    let trimmed = log(&l2, "gpu_avail").await;
    assert_eq!(
        (trimmed.epoch, trimmed.head, trimmed.first, seqs(&trimmed)),
        (capped.epoch, 5, 5, vec![5])
    );
    l2.trim_log("gpu_avail", 0);
    let emptied = log(&l2, "gpu_avail").await;
    assert_eq!(
        (
            emptied.epoch,
            emptied.head,
            emptied.first,
            emptied.entries.len()
        ),
        (capped.epoch, 5, 6, 0),
        "an emptied log's first is head + 1"
    );
    l2.set(announced_write(&key("gpu_avail", 6), b"v", "e6"))
        .await
        .unwrap();
    let resumed = log(&l2, "gpu_avail").await;
    assert_eq!(
        (resumed.epoch, resumed.head, resumed.first),
        (capped.epoch, 6, 6),
        "numbering goes on in the same epoch"
    );
    l2.trim_log("pricing", 0);
    assert!(unused_log(&log(&l2, "pricing").await));
}

#[tokio::test]
async fn the_default_log_capacity_keeps_ten_thousand_entries() {
    let (l2, _bus) = sequenced();
    let k = key("gpu_avail", 1);
    let total = DEFAULT_LOG_CAPACITY as u64 + 5;
    for _ in 0..total {
        l2.delete_and_announce(&k, event("d", &[])).await.unwrap();
    }
    let read = l2.read_log("gpu_avail", 0, 1).await.unwrap();
    assert_eq!(DEFAULT_LOG_CAPACITY, 10_000);
    assert_eq!((read.head, read.first, seqs(&read)), (total, 6, vec![6]));
}

#[tokio::test]
async fn restart_empty_loses_data_and_starts_a_new_epoch_at_one() {
    let (l2, _bus) = sequenced();
    let (k, tagged) = (key("gpu_avail", 1), key("gpu_avail", 2));
    l2.set(announced_write(&k, b"v", "e1")).await.unwrap();
    l2.set(L2Write::new(tagged.clone(), b"t".to_vec(), TTL).tags(vec!["provider_p-1".to_owned()]))
        .await
        .unwrap();
    l2.invalidate_namespaces(&names(&["pricing"]), Some(event("n", &["pricing"])))
        .await
        .unwrap();
    l2.invalidate_namespace("gpu_avail").await.unwrap();
    l2.set(announced_write(&k, b"v2", "e2")).await.unwrap();
    let old = log(&l2, "gpu_avail").await;
    assert_eq!(old.head, 2);

    l2.restart_empty();
    assert!(l2.is_empty());
    assert_eq!(l2.bytes(), 0);
    assert!(read(&l2, &k).await.is_none());
    assert!(unused_log(&log(&l2, "gpu_avail").await));
    let fresh = MemoryL2::new(MIB, clock());
    assert_eq!(
        l2.fence(&k).await.unwrap(),
        fresh.fence(&k).await.unwrap(),
        "fences start again as a new store's do"
    );
    assert!(unused_log(&log(&l2, "pricing").await));
    assert_eq!(
        l2.invalidate_tag("gpu_avail", "provider_p-1")
            .await
            .unwrap(),
        0,
        "the tag index is gone with the entries"
    );
    // Generations too: a write lands where a read looks, under a fill's fence.
    let fence = l2.fence(&k).await.unwrap();
    let fill = L2Write::new(k.clone(), b"filled".to_vec(), TTL).fence(Some(fence));
    assert!(l2.set(fill).await.unwrap());
    assert_eq!(read(&l2, &k).await.as_deref(), Some(&b"filled"[..]));

    l2.set(announced_write(&k, b"v3", "e3")).await.unwrap();
    let new = log(&l2, "gpu_avail").await;
    assert_eq!((new.head, new.first, seqs(&new)), (1, 1, vec![1]));
    assert_ne!(new.epoch, old.epoch, "a new epoch");
    assert_ne!(new.epoch, NO_EPOCH);
    assert_eq!(
        Event::decode(&new.entries[0].1).unwrap().positions,
        vec![LogPosition::new("gpu_avail", new.epoch, 1)]
    );
    assert!(l2.sequenced(), "the configuration survives the restart");
}

#[tokio::test]
async fn a_failed_change_assigns_no_number_and_publishes_nothing() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    let k = key("gpu_avail", 1);
    l2.set(announced_write(&k, b"v1", "e1")).await.unwrap();
    delivered(&mut sub);

    l2.set_unavailable(true);
    let failures = [
        l2.set(announced_write(&k, b"v2", "x")).await.unwrap_err(),
        l2.delete_and_announce(&k, event("x", &[]))
            .await
            .unwrap_err(),
        l2.invalidate_tag_and_announce("gpu_avail", "t", event("x", &[]))
            .await
            .unwrap_err(),
        l2.invalidate_namespaces(&names(&["gpu_avail"]), Some(event("x", &["gpu_avail"])))
            .await
            .unwrap_err(),
        l2.read_log("gpu_avail", 0, 10).await.unwrap_err(),
    ];
    assert!(failures.iter().all(|e| e.kind() == ErrorKind::L2));
    l2.set_unavailable(false);

    // A fill whose fence is stale, or that finds a live entry, writes nothing.
    let stale = l2.fence(&k).await.unwrap();
    l2.set(L2Write::new(k.clone(), b"v2".to_vec(), TTL))
        .await
        .unwrap();
    let stale_fill = L2Write::new(k.clone(), b"fill".to_vec(), TTL)
        .fence(Some(stale))
        .announce(event("x", &[]));
    assert!(!l2.set(stale_fill).await.unwrap());
    let fence = l2.fence(&k).await.unwrap();
    let over_live = L2Write::new(k.clone(), b"fill".to_vec(), TTL)
        .fence(Some(fence))
        .announce(event("x", &[]));
    assert!(!l2.set(over_live).await.unwrap());

    // An event that cannot carry positions is refused before anything changes.
    let malformed = L2Write::new(k.clone(), b"v3".to_vec(), TTL).announce(b"not json".to_vec());
    assert_eq!(
        l2.set(malformed).await.unwrap_err().kind(),
        ErrorKind::MalformedEvent
    );
    assert_eq!(read(&l2, &k).await.as_deref(), Some(&b"v2"[..]));

    let after = log(&l2, "gpu_avail").await;
    assert_eq!((after.head, seqs(&after)), (1, vec![1]));
    assert!(delivered(&mut sub).is_empty());
    assert_eq!(bus.published(), 1);

    l2.delete_and_announce(&k, event("e2", &[])).await.unwrap();
    assert_eq!(
        log(&l2, "gpu_avail").await.head,
        2,
        "the next change takes the next number"
    );
}

#[tokio::test]
async fn a_store_without_announce_on_is_unchanged() {
    let bus = MemoryBus::new();
    let l2 = MemoryL2::new(MIB, clock());
    let k = key("gpu_avail", 1);
    assert!(!l2.sequenced());
    assert_eq!(l2.announce_route(), None);
    assert!(
        bus.route().is_some(),
        "the bus has a route; the store does not"
    );
    assert_eq!(
        l2.read_log("gpu_avail", 0, 10).await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    let refused = [
        l2.set(announced_write(&k, b"v", "e")).await.unwrap_err(),
        l2.delete_and_announce(&k, event("e", &[]))
            .await
            .unwrap_err(),
        l2.invalidate_tag_and_announce("gpu_avail", "t", event("e", &[]))
            .await
            .unwrap_err(),
        l2.invalidate_namespaces(&names(&["gpu_avail"]), Some(event("e", &["gpu_avail"])))
            .await
            .unwrap_err(),
    ];
    assert!(refused.iter().all(|e| e.kind() == ErrorKind::InvalidConfig));
    assert!(l2.is_empty(), "a refused write writes nothing");

    // Unannounced changes work as before.
    assert!(l2
        .set(L2Write::new(k.clone(), b"v".to_vec(), TTL))
        .await
        .unwrap());
    l2.invalidate_namespaces(&names(&["gpu_avail"]), None)
        .await
        .unwrap();
    assert!(read(&l2, &k).await.is_none());
    assert_eq!(bus.published(), 0);
}

#[tokio::test]
async fn unannounced_changes_of_a_sequenced_store_are_not_sequenced() {
    let (l2, bus) = sequenced();
    let k = key("gpu_avail", 1);
    l2.set(L2Write::new(k.clone(), b"v".to_vec(), TTL))
        .await
        .unwrap();
    l2.delete(&k).await.unwrap();
    l2.invalidate_tag("gpu_avail", "t").await.unwrap();
    l2.invalidate_namespaces(&names(&["gpu_avail"]), None)
        .await
        .unwrap();
    assert!(unused_log(&log(&l2, "gpu_avail").await));
    assert_eq!(bus.published(), 0);
}

#[tokio::test]
async fn routes_are_unique_per_bus_and_shared_with_the_store_announcing_on_it() {
    let (l2, bus) = sequenced();
    let other = MemoryBus::new();
    let route = bus.route().unwrap();
    assert!(route.starts_with("memory-bus:"), "{route}");
    assert_ne!(other.route(), bus.route());
    assert_ne!(MemoryBus::default().route(), bus.route());
    assert_eq!(l2.announce_route(), Some(route));
    assert!(l2.sequenced());
    let shared: Arc<dyn L2Store> = Arc::new(l2);
    assert!(shared.sequenced(), "through the forwarding impl too");
}

#[tokio::test]
async fn a_dropped_publish_is_still_logged() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    let k = key("gpu_avail", 1);
    bus.drop_next(1);
    l2.set(announced_write(&k, b"v1", "lost")).await.unwrap();
    l2.delete_and_announce(&k, event("heard", &[]))
        .await
        .unwrap();

    let messages = delivered(&mut sub);
    assert_eq!(messages.len(), 1, "the first publish was dropped");
    assert_eq!(event_id(&messages[0]), "heard");
    assert_eq!(positions_in_tail(&messages[0]).unwrap()[0].seq, 2);
    let read = l2.read_log("gpu_avail", 0, 10).await.unwrap();
    assert_eq!(seqs(&read), [1, 2]);
    assert_eq!(
        event_id(&read.entries[0].1),
        "lost",
        "the log can replay it"
    );
    assert_eq!(bus.published(), 2);
}

#[tokio::test]
async fn the_bus_s_other_fault_controls_apply_to_the_store_s_publishes() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    bus.duplicate_next(1);
    l2.delete_and_announce(&key("gpu_avail", 1), event("twice", &[]))
        .await
        .unwrap();
    let twice = delivered(&mut sub);
    assert_eq!(twice.len(), 2);
    assert_eq!(twice[0], twice[1]);

    bus.hold();
    for id in ["h1", "h2"] {
        l2.delete_and_announce(&key("gpu_avail", 1), event(id, &[]))
            .await
            .unwrap();
    }
    assert!(delivered(&mut sub).is_empty(), "held");
    bus.release_reversed();
    let ids: Vec<String> = delivered(&mut sub).iter().map(|m| event_id(m)).collect();
    assert_eq!(ids, ["h2", "h1"]);

    bus.disconnect();
    l2.delete_and_announce(&key("gpu_avail", 1), event("away", &[]))
        .await
        .unwrap();
    bus.reconnect();
    assert_eq!(
        poll_now(&mut sub),
        Poll::Ready(Some(BusItem::State(ConnectionState::Disconnected)))
    );
    assert_eq!(
        poll_now(&mut sub),
        Poll::Ready(Some(BusItem::State(ConnectionState::Resubscribed)))
    );
    assert!(delivered(&mut sub).is_empty(), "lost while away");
    assert_eq!(log(&l2, "gpu_avail").await.head, 4);
}

#[tokio::test]
async fn a_failed_publish_keeps_the_change_and_its_log_entry_and_reports_a_bus_error() {
    let (l2, bus) = sequenced();
    let mut sub = connected(&bus).await;
    let k = key("gpu_avail", 1);
    bus.fail_publishes(true);
    let err = l2
        .set(announced_write(&k, b"v1", "unsent"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bus);
    let err = l2
        .invalidate_namespaces(&names(&["pricing"]), Some(event("n", &["pricing"])))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bus);
    bus.fail_publishes(false);

    assert_eq!(
        read(&l2, &k).await.as_deref(),
        Some(&b"v1"[..]),
        "the write stays"
    );
    let read = log(&l2, "gpu_avail").await;
    assert_eq!(seqs(&read), [1]);
    assert_eq!(event_id(&read.entries[0].1), "unsent");
    assert_eq!(log(&l2, "pricing").await.head, 1);
    assert!(delivered(&mut sub).is_empty());
    assert_eq!(bus.published(), 0);
}

/// What reading a log that has had no change in its epoch gives: an epoch of its own (reading
/// starts one), nothing held.
fn unused_log(read: &LogRead) -> bool {
    read.epoch != NO_EPOCH && read.head == 0 && read.first == 1 && read.entries.is_empty()
}

/// `fail_over_to` a replica taken earlier: what changed since is lost (the entry, the
/// generation bump, the end of the log, whose next number repeats one given out), the epoch is
/// the same, and `server_epoch` moves so a node can tell.
#[tokio::test]
async fn a_failover_to_a_lagging_replica_loses_what_changed_since_and_moves_the_server_epoch() {
    let (l2, _bus) = sequenced();
    let (kept, lost) = (key("gpu_avail", 1), key("gpu_avail", 2));
    l2.set(announced_write(&kept, b"kept", "e1")).await.unwrap();
    assert_eq!(l2.server_epoch(), 0);
    let before = log(&l2, "gpu_avail").await;
    let replica = l2.replica();

    l2.set(announced_write(&lost, b"lost", "e2")).await.unwrap();
    l2.set(announced_write(&kept, b"kept, then changed", "e3"))
        .await
        .unwrap();
    l2.invalidate_namespace("gpu_avail").await.unwrap();
    assert_eq!(log(&l2, "gpu_avail").await.head, before.head + 2);

    l2.fail_over_to(replica);
    assert_eq!(l2.server_epoch(), 1, "a node sees the store moved");
    assert_eq!(read(&l2, &kept).await.as_deref(), Some(&b"kept"[..]));
    assert!(read(&l2, &lost).await.is_none());
    let after = log(&l2, "gpu_avail").await;
    assert_eq!((after.epoch, after.head), (before.epoch, before.head));
    l2.set(announced_write(&lost, b"again", "e4"))
        .await
        .unwrap();
    let again = log(&l2, "gpu_avail").await;
    assert_eq!(
        (again.head, event_id(&again.entries.last().unwrap().1)),
        (before.head + 1, "e4".to_owned()),
        "the next change takes a number already given out, to another event"
    );
}
