//! The contract of a sequenced L2 store (`L2Store::sequenced`, `L2Store::read_log`): every
//! announced change gets the next position of each namespace it touches, is logged and is
//! published with its positions; the log reads back exactly; trimming and a reset are visible.
//! Run against a real redis-server here, and against the in-process store where it sequences.

use std::sync::Arc;
use std::time::Duration;

use cache_core::event::WriteAnnouncement;
use cache_core::log::{positions_in_tail, LogPosition, NO_EPOCH};
use cache_core::{
    BusItem, CacheKey, ErrorKind, Event, EventBus, EventType, Fence, L2Store, L2Write,
    LoggedChange, Subscription,
};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use test_support::RedisServer;

const TTL: Duration = Duration::from_secs(60);

fn key(ns: &str, id: u32) -> CacheKey {
    CacheKey::derive(ns, &serde_json::json!({ "id": id })).unwrap()
}

fn write_event(k: &CacheKey) -> Vec<u8> {
    WriteAnnouncement {
        namespace: "availability",
        cache_key: k.as_str(),
        region: "test",
        source_node: "contract",
        event_id: "id",
        timestamp: 1.0,
    }
    .encode()
}

fn event(namespaces: &[&str]) -> Vec<u8> {
    let mut e = Event::new(
        EventType::BookingCreated,
        "booking_1",
        "contract",
        "id",
        1.0,
    );
    e.affected_namespaces = namespaces.iter().map(|n| (*n).to_owned()).collect();
    e.encode()
}

/// The next message on `sub`, skipping connection states; fails after 5 s.
async fn next_message(sub: &mut Box<dyn Subscription>) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(BusItem::Message(bytes))) => return bytes,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!("no message within 5 s"),
        }
    }
}

/// The log contract, for a store that announces on `bus`. `reset` empties the store as a
/// restart without persistence does.
pub(crate) async fn contract<F, Fut>(l2: Arc<dyn L2Store>, bus: Arc<dyn EventBus>, reset: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let l2 = &*l2;
    assert!(l2.sequenced());
    assert_eq!(l2.announce_route(), bus.route());
    let mut sub = bus.subscribe().await.unwrap();
    let empty = l2.read_log("avail", 0, 100).await.unwrap();
    assert_eq!((empty.head, empty.first, empty.entries.len()), (0, 1, 0));

    // A write: position 1 of a new epoch, published and logged alike.
    let (a, b) = (key("avail", 1), key("avail", 2));
    // (An announcement that is no JSON object cannot carry positions: refused, nothing done.)
    let refused = l2
        .set(L2Write::new(a.clone(), b"v0".to_vec(), TTL).announce(b"not an event".to_vec()))
        .await;
    assert_eq!(
        refused.unwrap_err().kind(),
        cache_core::ErrorKind::MalformedEvent
    );
    assert!(l2.get(&a).await.unwrap().is_none());
    assert_eq!(l2.read_log("avail", 0, 1).await.unwrap().head, 0);
    let written = l2
        .set(L2Write::new(a.clone(), b"v1".to_vec(), TTL).announce(write_event(&a)))
        .await
        .unwrap();
    assert!(written);
    let heard = next_message(&mut sub).await;
    let positions = positions_in_tail(&heard).expect("the write's event carries its position");
    assert_eq!(positions.len(), 1);
    let epoch = positions[0].epoch;
    assert_ne!(epoch, NO_EPOCH);
    assert_eq!(
        epoch, empty.epoch,
        "the first read gave the log its epoch; the first change keeps it"
    );
    assert_eq!(positions[0], LogPosition::new("avail", epoch, 1));
    let decoded = Event::decode(&heard).unwrap();
    assert_eq!(decoded.positions, positions);
    let log = l2.read_log("avail", 0, 100).await.unwrap();
    assert_eq!((log.epoch, log.head, log.first), (epoch, 1, 1));
    assert_eq!(log.entries, vec![(1, heard.clone())]);

    // A tagged write, a delete, a tag invalidation: 2, 3, 4.
    l2.set(
        L2Write::new(b.clone(), b"v2".to_vec(), TTL)
            .tags(vec!["gpu:1".into()])
            .announce(write_event(&b)),
    )
    .await
    .unwrap();
    l2.delete_and_announce(&a, write_event(&a)).await.unwrap();
    l2.invalidate_tag_and_announce("avail", "gpu:1", event(&["avail"]))
        .await
        .unwrap();
    for seq in 2..=4 {
        let heard = next_message(&mut sub).await;
        assert_eq!(
            positions_in_tail(&heard),
            Some(vec![LogPosition::new("avail", epoch, seq)]),
            "published in sequence order"
        );
    }

    // A notification touching two namespaces: one position in each.
    l2.invalidate_namespaces(
        &["avail".to_owned(), "pricing".to_owned()],
        Some(event(&["avail", "pricing"])),
    )
    .await
    .unwrap();
    let heard = Event::decode(&next_message(&mut sub).await).unwrap();
    assert_eq!(heard.positions.len(), 2);
    assert_eq!(heard.positions[0], LogPosition::new("avail", epoch, 5));
    assert_eq!(heard.positions[1].key_namespace, "pricing");
    assert_eq!(heard.positions[1].seq, 1);
    let pricing = l2.read_log("pricing", 0, 10).await.unwrap();
    assert_eq!((pricing.head, pricing.entries.len()), (1, 1));
    let logged = Event::decode(&pricing.entries[0].1).unwrap();
    assert_eq!(logged.event_id, heard.event_id, "each log holds the event");
    assert!(
        logged.positions.contains(&heard.positions[1]),
        "with its own position in that log ({:?})",
        logged.positions
    );

    // Exact ranges: after 2, at most 2 entries; after the head, none.
    let range = l2.read_log("avail", 2, 2).await.unwrap();
    let seqs: Vec<u64> = range.entries.iter().map(|(seq, _)| *seq).collect();
    assert_eq!((range.head, seqs), (5, vec![3, 4]));
    let none = l2.read_log("avail", 5, 10).await.unwrap();
    assert!(none.entries.is_empty());
    assert_eq!(none.head, 5);

    // A change with nothing to announce is not sequenced.
    l2.set(L2Write::new(a.clone(), b"quiet".to_vec(), TTL))
        .await
        .unwrap();
    l2.invalidate_namespace("avail").await.unwrap();
    assert_eq!(l2.read_log("avail", 0, 100).await.unwrap().head, 5);

    // A reset: a new epoch, from 1, and an empty store.
    reset().await;
    assert!(l2.get(&b).await.unwrap().is_none());
    let restarted = l2.read_log("avail", 0, 10).await.unwrap();
    assert_ne!(
        restarted.epoch, epoch,
        "the empty log a reset leaves is another epoch than the one read before"
    );
    assert_eq!((restarted.head, restarted.entries.len()), (0, 0));
    l2.set(L2Write::new(a.clone(), b"v3".to_vec(), TTL).announce(write_event(&a)))
        .await
        .unwrap();
    let after_reset = l2.read_log("avail", 0, 10).await.unwrap();
    assert_eq!(
        after_reset.epoch, restarted.epoch,
        "and the next change keeps it"
    );
    assert_eq!((after_reset.head, after_reset.first), (1, 1));
}

/// A long run of changes against a short log: the oldest entries are trimmed, and a reader
/// asking for them sees from `first` that it cannot replay them.
pub(crate) async fn trimming(l2: Arc<dyn L2Store>, length: u64) {
    let k = key("trim", 1);
    for _ in 0..1_000 {
        l2.set(L2Write::new(k.clone(), b"v".to_vec(), TTL).announce(write_event(&k)))
            .await
            .unwrap();
    }
    let log = l2.read_log("trim", 0, 5_000).await.unwrap();
    assert_eq!(log.head, 1_000);
    assert!(
        log.first > 1,
        "nothing was trimmed from a {length}-entry log"
    );
    let held = log.head - log.first + 1;
    assert!(
        held >= length && held <= length + 200,
        "{held} entries held for a length of {length}"
    );
    let seqs: Vec<u64> = log.entries.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (log.first..=log.head).collect::<Vec<_>>());
}

/// `L2Store::change_and_log`: each change is made, sequenced and logged exactly as an
/// announced one, the message as logged is returned, and nothing is published on `bus` (the
/// store's own route).
pub(crate) async fn logging_without_publishing(l2: Arc<dyn L2Store>, bus: Arc<dyn EventBus>) {
    let l2 = &*l2;
    let mut sub = bus.subscribe().await.unwrap();
    let ns = "split";
    let start = l2.read_log(ns, 0, 100).await.unwrap();
    let epoch = start.epoch;
    let positions = |msg: &[u8]| {
        positions_in_tail(msg)
            .unwrap()
            .into_iter()
            .map(|p| (p.key_namespace, p.epoch, p.seq))
            .collect::<Vec<_>>()
    };

    let (a, b) = (key(ns, 1), key(ns, 2));
    let set = l2
        .change_and_log(
            LoggedChange::Set(
                L2Write::new(a.clone(), b"v1".to_vec(), TTL).tags(vec!["t".to_owned()]),
            ),
            write_event(&a),
        )
        .await
        .unwrap();
    assert_eq!(set.count, 1);
    let first = set.message.unwrap();
    assert_eq!(positions(&first), vec![(ns.to_owned(), epoch, 1)]);
    assert_eq!(l2.get(&a).await.unwrap().unwrap().bytes, b"v1");

    let deleted = l2
        .change_and_log(LoggedChange::Delete(b.clone()), write_event(&b))
        .await
        .unwrap();
    assert_eq!(deleted.count, 0, "b was never written");
    assert_eq!(
        positions(&deleted.message.unwrap()),
        vec![(ns.to_owned(), epoch, 2)]
    );

    let tagged = l2
        .change_and_log(
            LoggedChange::InvalidateTag {
                key_namespace: ns.to_owned(),
                tag: "t".to_owned(),
            },
            event(&[ns]),
        )
        .await
        .unwrap();
    assert_eq!(tagged.count, 1);
    assert!(l2.get(&a).await.unwrap().is_none());

    let other = l2.read_log("split_other", 0, 1).await.unwrap();
    let both = l2
        .change_and_log(
            LoggedChange::InvalidateNamespaces(vec![ns.to_owned(), "split_other".to_owned()]),
            event(&[ns, "split_other"]),
        )
        .await
        .unwrap();
    assert_eq!(both.count, 2);
    let both = both.message.unwrap();
    assert_eq!(
        positions(&both),
        vec![
            (ns.to_owned(), epoch, 4),
            ("split_other".to_owned(), other.epoch, 1)
        ]
    );

    // A fill that writes nothing is not logged.
    let fence = l2.fence(&a).await.unwrap();
    l2.set(L2Write::new(a.clone(), b"v2".to_vec(), TTL))
        .await
        .unwrap();
    let fill = l2
        .change_and_log(
            LoggedChange::Set(
                L2Write::new(a.clone(), b"old".to_vec(), TTL).fence(Some(Fence(fence.0))),
            ),
            write_event(&a),
        )
        .await
        .unwrap();
    assert_eq!((fill.count, fill.message), (0, None));
    assert_eq!(
        l2.change_and_log(LoggedChange::Delete(a.clone()), b"not an event".to_vec())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::MalformedEvent
    );

    let log = l2.read_log(ns, 0, 100).await.unwrap();
    assert_eq!((log.epoch, log.head), (epoch, 4), "nothing else was logged");
    assert_eq!(log.entries[0], (1, first));
    assert_eq!(log.entries[3].0, 4);
    assert!(
        positions(&log.entries[3].1).contains(&(ns.to_owned(), epoch, 4)),
        "the two-namespace change is logged with its position in this log"
    );
    assert_eq!(
        Event::decode(&log.entries[3].1).unwrap().event_id,
        Event::decode(&both).unwrap().event_id
    );
    // Nothing was published: the first message the subscription gets is this one.
    bus.publish(b"{\"marker\":1}".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut sub).await, b"{\"marker\":1}");
}

fn redis_config(server: &RedisServer) -> RedisConfig {
    RedisConfig::new(server.url()).log_length(10)
}

#[tokio::test]
async fn redis_sequences_logs_and_publishes_every_announced_change() {
    let server = RedisServer::start();
    let config = redis_config(&server);
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
    let client = redis::Client::open(server.url()).unwrap();
    contract(l2, bus, || async move {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn redis_trims_its_log_and_says_so() {
    let server = RedisServer::start();
    let l2 = Arc::new(RedisL2::connect(&redis_config(&server)).await.unwrap());
    trimming(l2, 10).await;
}

/// Redis numbers a log's entries itself (the stream id `<epoch>-*`), so a stream lost on its own
/// (evicted, or deleted by hand) would number the next change 0 again under the same epoch: a
/// receiver at 5 would take it for a duplicate and miss it. The next change starts a new epoch
/// instead, which every receiver treats as a reset; so does a lost epoch with its stream kept.
#[tokio::test]
async fn redis_starts_a_new_epoch_when_a_log_loses_its_stream_or_its_epoch() {
    let server = RedisServer::start();
    let l2 = RedisL2::connect(&redis_config(&server)).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let k = key("lost", 1);
    let write = || L2Write::new(k.clone(), b"v".to_vec(), TTL).announce(write_event(&k));
    for _ in 0..5 {
        assert!(l2.set(write()).await.unwrap());
    }
    let before = l2.read_log("lost", 0, 10).await.unwrap();
    assert_eq!((before.head, before.entries.len()), (5, 5));

    for lost in ["ec:{lost}:log", "ec:{lost}:epoch"] {
        let epoch = l2.read_log("lost", 0, 1).await.unwrap().epoch;
        let () = redis::cmd("DEL")
            .arg(lost)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(l2.set(write()).await.unwrap());
        let after = l2.read_log("lost", 0, 10).await.unwrap();
        assert_ne!(
            after.epoch, epoch,
            "{lost} lost: the next change starts a new epoch"
        );
        assert_eq!(
            (after.head, after.first, after.entries.len()),
            (1, 1, 1),
            "{lost} lost: numbered 1 in it"
        );
        assert_eq!(
            positions_in_tail(&after.entries[0].1),
            Some(vec![LogPosition::new("lost", after.epoch, 1)])
        );
    }

    // A read finds the loss as well: a new, empty epoch.
    let epoch = l2.read_log("lost", 0, 1).await.unwrap().epoch;
    let () = redis::cmd("DEL")
        .arg("ec:{lost}:log")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read = l2.read_log("lost", 0, 10).await.unwrap();
    assert_ne!(read.epoch, epoch);
    assert_eq!((read.head, read.first, read.entries.len()), (0, 1, 0));
}

#[tokio::test]
async fn the_in_process_store_sequences_logs_and_publishes_like_redis() {
    let bus = Arc::new(cache_memory::MemoryBus::new());
    let l2 = Arc::new(
        cache_memory::MemoryL2::new(64 << 20, Arc::new(cache_memory::SystemClock))
            .announce_on(bus.clone()),
    );
    let store = l2.clone();
    contract(l2, bus, || async move { store.restart_empty() }).await;
}

#[tokio::test]
async fn the_in_process_store_trims_its_log_and_says_so() {
    let bus = Arc::new(cache_memory::MemoryBus::new());
    let l2 = cache_memory::MemoryL2::new(64 << 20, Arc::new(cache_memory::SystemClock))
        .announce_on(bus)
        .log_capacity(10);
    trimming(Arc::new(l2), 10).await;
}

#[tokio::test]
async fn redis_without_an_event_log_publishes_events_as_they_are() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url()).without_event_log();
    let l2 = RedisL2::connect(&config).await.unwrap();
    let bus = RedisBus::connect(&config).await.unwrap();
    assert!(!l2.sequenced());
    let mut sub = bus.subscribe().await.unwrap();
    let k = key("avail", 1);
    let event = write_event(&k);
    l2.set(L2Write::new(k.clone(), b"v".to_vec(), TTL).announce(event.clone()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut sub).await,
        event,
        "no positions spliced in"
    );
    assert_eq!(
        l2.read_log("avail", 0, 10).await.unwrap_err().kind(),
        cache_core::ErrorKind::InvalidConfig
    );
}

#[tokio::test]
async fn redis_logs_a_change_without_publishing_it() {
    let server = RedisServer::start();
    let config = redis_config(&server);
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
    logging_without_publishing(l2, bus).await;
    let unlogged = RedisL2::connect(&RedisConfig::new(server.url()).without_event_log())
        .await
        .unwrap();
    let k = key("split", 1);
    assert_eq!(
        unlogged
            .change_and_log(LoggedChange::Delete(k.clone()), write_event(&k))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
}

#[tokio::test]
async fn the_in_process_store_logs_a_change_without_publishing_it() {
    let bus = Arc::new(cache_memory::MemoryBus::new());
    let l2 = cache_memory::MemoryL2::new(64 << 20, Arc::new(cache_memory::SystemClock))
        .announce_on(bus.clone());
    logging_without_publishing(Arc::new(l2), bus).await;
    let unlogged = cache_memory::MemoryL2::new(1 << 20, Arc::new(cache_memory::SystemClock));
    let k = key("split", 1);
    assert_eq!(
        unlogged
            .change_and_log(LoggedChange::Delete(k.clone()), write_event(&k))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
}
