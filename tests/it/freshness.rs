//! A node that follows its namespaces' event logs (an L2 that sequences what it announces):
//! what it missed is replayed exactly and the rest of its L1 is kept; only a log that cannot
//! replay drops a namespace; and without a confirmation from the log, L1 stops being served
//! once the staleness bound runs out. Deterministic: the in-process store and bus, whose fault
//! controls lose, hold or cut exactly the messages a test names, and a manual clock.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, EventBus, L2Store, NamespaceConfig, Namespaces, OutagePolicy, Timestamp};
use cache_edge::EdgeCache;
use cache_memory::{ManualClock, MemoryBus, MemoryL2};
use serde_json::json;
use test_support::eventually;

const BOUND: Duration = Duration::from_secs(3);
const LIVENESS: Duration = Duration::from_millis(50);
const DEADLINE: Duration = Duration::from_secs(5);
const WARM: u32 = 20;

struct Fleet {
    bus: Arc<MemoryBus>,
    l2: Arc<MemoryL2>,
    clock: Arc<ManualClock>,
    writer: EdgeCache,
    reader: EdgeCache,
}

impl Fleet {
    async fn new() -> Self {
        Self::with(Namespaces::defaults(), usize::MAX).await
    }

    async fn with(namespaces: Namespaces, log_capacity: usize) -> Self {
        Self::build(namespaces, log_capacity, None).await
    }

    /// Nodes whose bus is not on L2's route: L2 announces on `l2_bus`, the nodes publish and
    /// subscribe on another.
    async fn split(l2_bus: Arc<MemoryBus>) -> Self {
        Self::build(Namespaces::defaults(), usize::MAX, Some(l2_bus)).await
    }

    async fn build(
        namespaces: Namespaces,
        log_capacity: usize,
        l2_bus: Option<Arc<MemoryBus>>,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(
            1_750_000_000_000_000_000,
        )));
        let bus = Arc::new(MemoryBus::new());
        let l2 = Arc::new(
            MemoryL2::new(64 << 20, clock.clone() as Arc<dyn Clock>)
                .announce_on(l2_bus.unwrap_or_else(|| bus.clone()))
                .log_capacity(log_capacity.min(100_000)),
        );
        let node = |id: &str| {
            EdgeCache::builder()
                .node_id(id)
                .namespaces(namespaces.clone())
                .l2(l2.clone() as Arc<dyn L2Store>)
                .bus(bus.clone() as Arc<dyn EventBus>)
                .clock(clock.clone() as Arc<dyn Clock>)
                .staleness_bound(BOUND)
                .liveness_interval(LIVENESS)
                .build()
        };
        let writer = node("writer").await.unwrap();
        let reader = node("reader").await.unwrap();
        Self {
            bus,
            l2,
            clock,
            writer,
            reader,
        }
    }

    /// The writer writes `WARM` keys of `namespace`; the reader reads each twice, so each is in
    /// its L1 (checked: the second reads are L1 hits).
    async fn warm(&self, namespace: &str) {
        for id in 0..WARM {
            self.write(namespace, id, "v0").await;
        }
        self.settle().await;
        for id in 0..WARM {
            assert_eq!(self.read(namespace, id).await.as_deref(), Some("v0"));
        }
        let before = self.reader.stats().l1_hits;
        for id in 0..WARM {
            self.read(namespace, id).await;
        }
        assert_eq!(self.reader.stats().l1_hits - before, u64::from(WARM));
    }

    async fn write(&self, namespace: &str, id: u32, value: &str) {
        self.writer
            .set(namespace, &json!({ "id": id }), &value.to_owned())
            .await
            .unwrap();
    }

    async fn read(&self, namespace: &str, id: u32) -> Option<String> {
        self.reader
            .get::<String, _>(namespace, &json!({ "id": id }))
            .await
            .unwrap()
            .map(|v| (*v).clone())
    }

    /// Waits until the reader has taken every message the bus holds for it.
    async fn settle(&self) {
        eventually("the reader's queue is empty", DEADLINE, || async {
            self.reader.health().await.event_queue_size == 0
        })
        .await;
    }

    /// How many of the warm keys other than those in `changed` the reader still serves from L1.
    async fn surviving(&self, namespace: &str, changed: &[u32]) -> u64 {
        let before = self.reader.stats().l1_hits;
        for id in (0..WARM).filter(|id| !changed.contains(id)) {
            assert_eq!(self.read(namespace, id).await.as_deref(), Some("v0"));
        }
        self.reader.stats().l1_hits - before
    }

    /// Cuts every subscription and waits until the reader knows.
    async fn disconnect(&self) {
        self.bus.disconnect();
        eventually("the reader knows its bus is down", DEADLINE, || async {
            !self.reader.health().await.bus_connected
        })
        .await;
    }

    /// Restores the subscriptions and waits until the reader has replayed what it missed and
    /// reports its bus up again.
    async fn reconnect(&self) {
        self.bus.reconnect();
        eventually("the reader replays and is back", DEADLINE, || async {
            self.reader.health().await.bus_connected
        })
        .await;
    }

    async fn shutdown(self) {
        self.writer.shutdown().await;
        self.reader.shutdown().await;
    }
}

#[tokio::test]
async fn a_lost_event_is_replayed_when_the_next_one_shows_the_gap() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    fleet.bus.drop_next(1);
    fleet.write("gpu_availability", 0, "v1").await;
    fleet.write("gpu_availability", 1, "v1").await;
    eventually("the lost write's event is replayed", DEADLINE, || async {
        fleet.read("gpu_availability", 0).await.as_deref() == Some("v1")
    })
    .await;
    assert_eq!(
        fleet.read("gpu_availability", 1).await.as_deref(),
        Some("v1")
    );
    let stats = fleet.reader.stats();
    assert!(stats.gaps_detected >= 1, "{stats:?}");
    assert!(stats.events_replayed >= 1, "{stats:?}");
    assert_eq!(
        stats.resyncs + stats.drops_trimmed + stats.drops_new_epoch,
        0
    );
    assert_eq!(
        stats.propagation_lag.count(),
        stats.events_applied,
        "every applied event's lag is counted"
    );
    assert_eq!(
        fleet.surviving("gpu_availability", &[0, 1]).await,
        u64::from(WARM) - 2,
        "every other warm entry is still served from L1"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_deaf_subscription_is_caught_by_the_liveness_check() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    // Every message from now on is lost, with no disconnect to tell anyone: a deaf link.
    fleet.bus.drop_next(u64::MAX / 2);
    fleet.write("gpu_availability", 3, "v1").await;
    let checks = fleet.reader.stats().log_checks;
    eventually("the liveness check replays the write", DEADLINE, || async {
        fleet.read("gpu_availability", 3).await.as_deref() == Some("v1")
    })
    .await;
    let stats = fleet.reader.stats();
    assert!(stats.log_checks > checks);
    assert_eq!(stats.events_replayed, 1, "{stats:?}");
    assert_eq!(stats.gaps_detected, 0, "nothing on the bus showed a gap");
    assert_eq!(
        fleet.surviving("gpu_availability", &[3]).await,
        u64::from(WARM) - 1
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_subscription_deaf_while_the_log_moves_is_made_to_resubscribe() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    fleet.bus.drop_next(u64::MAX / 2);
    let mut version = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while fleet.reader.stats().deaf_subscriptions == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never found deaf: {:?}",
            fleet.reader.stats()
        );
        version += 1;
        fleet
            .write("gpu_availability", 0, &format!("v{version}"))
            .await;
        tokio::time::sleep(LIVENESS / 5).await;
    }
    // It resubscribed (a Disconnected, then a Resubscribed and a replay), and it is still fresh
    // within the bound: the writes keep reaching it from the log.
    let last = format!("v{version}");
    eventually("the reader has the last write", DEADLINE, || async {
        fleet.read("gpu_availability", 0).await.as_deref() == Some(last.as_str())
    })
    .await;
    assert!(fleet.reader.stats().events_replayed >= 2);
    assert_eq!(
        fleet.writer.stats().deaf_subscriptions,
        0,
        "the writer is deaf too, but its checks find only its own events, which it skips: \
         nothing it lacked"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_lost_subscription_keeps_l1_bypassed_then_replays_exactly_what_was_missed() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    fleet.disconnect().await;
    fleet.write("gpu_availability", 5, "v1").await;
    fleet.write("gpu_availability", 6, "v1").await;
    // Bypassed meanwhile (the default policy): reads go to L2, which has the new value.
    let hits = fleet.reader.stats().l1_hits;
    assert_eq!(
        fleet.read("gpu_availability", 5).await.as_deref(),
        Some("v1")
    );
    assert_eq!(
        fleet.read("gpu_availability", 7).await.as_deref(),
        Some("v0")
    );
    assert_eq!(
        fleet.reader.stats().l1_hits,
        hits,
        "L1 is not read while unsure"
    );
    assert!(!fleet.reader.stats().namespaces[0].l1_in_use);
    fleet.reconnect().await;
    let stats = fleet.reader.stats();
    assert_eq!(stats.events_replayed, 2, "{stats:?}");
    assert_eq!(stats.resyncs, 0, "nothing was flushed");
    assert_eq!(
        fleet.read("gpu_availability", 6).await.as_deref(),
        Some("v1")
    );
    assert_eq!(
        fleet.surviving("gpu_availability", &[5, 6]).await,
        u64::from(WARM) - 2
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_log_trimmed_past_the_gap_drops_that_namespace_only() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    fleet.warm("gpu_pricing").await;
    fleet.disconnect().await;
    for round in 0..10 {
        fleet
            .write("gpu_availability", 0, &format!("r{round}"))
            .await;
    }
    fleet.l2.trim_log("gpu_avail", 3);
    fleet.reconnect().await;
    let stats = fleet.reader.stats();
    assert_eq!(stats.drops_trimmed, 1, "{stats:?}");
    assert_eq!(
        fleet.read("gpu_availability", 0).await.as_deref(),
        Some("r9")
    );
    let availability = &stats.namespaces[0];
    assert_eq!(availability.name, "gpu_availability");
    assert_eq!(
        availability.l1_entries, 0,
        "the trimmed namespace was dropped"
    );
    assert_eq!(
        fleet.surviving("gpu_pricing", &[]).await,
        u64::from(WARM),
        "the other namespace kept its L1"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn an_l2_that_restarts_empty_starts_a_new_epoch_and_the_namespace_is_dropped() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    let before = fleet.reader.stats().namespaces[0].log_applied.unwrap();
    fleet.l2.restart_empty();
    fleet.write("gpu_availability", 0, "after").await;
    eventually("the reader drops the namespace", DEADLINE, || async {
        fleet.reader.stats().drops_new_epoch >= 1
    })
    .await;
    let stats = fleet.reader.stats();
    let after = stats.namespaces[0].log_applied.unwrap();
    assert_ne!(after.0, before.0, "the reader follows the new epoch");
    assert_eq!(after.1, 1);
    // What L2 lost is not served from L1 either.
    assert_eq!(fleet.read("gpu_availability", 4).await, None);
    assert_eq!(
        fleet.read("gpu_availability", 0).await.as_deref(),
        Some("after")
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn without_a_confirmation_from_the_log_l1_is_not_served_past_the_bound() {
    let fleet = Fleet::new().await;
    fleet.warm("gpu_availability").await;
    fleet.l2.set_unavailable(true);
    let failures = fleet.reader.stats().log_check_failures;
    eventually("a liveness check fails", DEADLINE, || async {
        fleet.reader.stats().log_check_failures > failures
    })
    .await;
    // Within the bound L1 still serves (the last confirmation is recent).
    let hits = fleet.reader.stats().l1_hits;
    assert_eq!(
        fleet.read("gpu_availability", 1).await.as_deref(),
        Some("v0")
    );
    assert_eq!(fleet.reader.stats().l1_hits, hits + 1);
    // Past it, not: the node cannot know what it missed.
    fleet.clock.advance(BOUND + Duration::from_millis(1));
    assert_eq!(
        fleet.read("gpu_availability", 1).await,
        None,
        "L2 is down too"
    );
    assert_eq!(fleet.reader.stats().l1_hits, hits + 1);
    assert!(!fleet.reader.stats().namespaces[0].l1_in_use);
    assert!(fleet.reader.health().await.log_confirmed_age.unwrap() > BOUND);
    eventually("the liveness task counts the outage", DEADLINE, || async {
        fleet.reader.stats().namespaces[0].l1_outage >= BOUND
    })
    .await;
    // Back: the next check confirms, and the kept entries are served again.
    fleet.l2.set_unavailable(false);
    eventually("L1 is in use again", DEADLINE, || async {
        fleet.reader.stats().namespaces[0].l1_in_use
    })
    .await;
    assert_eq!(
        fleet.surviving("gpu_availability", &[]).await,
        u64::from(WARM)
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn serve_stale_keeps_l1_through_a_lost_subscription_until_its_max_age() {
    let mut namespaces = Namespaces::defaults();
    let stats = namespaces.get("market_stats").unwrap().clone();
    namespaces
        .replace(
            NamespaceConfig::new(&stats.name, &stats.key_namespace, stats.ttl)
                .event_driven(true)
                .critical(true)
                .outage_policy(OutagePolicy::ServeStale {
                    max_age: Duration::from_secs(10),
                }),
        )
        .unwrap();
    let fleet = Fleet::with(namespaces, usize::MAX).await;
    fleet.warm("market_stats").await;
    fleet.disconnect().await;
    assert_eq!(fleet.surviving("market_stats", &[]).await, u64::from(WARM));
    // Its changes still reach the reader within the liveness interval, from the log.
    fleet.write("market_stats", 2, "v1").await;
    eventually(
        "the change is replayed while the bus is down",
        DEADLINE,
        || async { fleet.read("market_stats", 2).await.as_deref() == Some("v1") },
    )
    .await;
    // With no confirmation for longer than max_age, it is bypassed too.
    fleet.l2.set_unavailable(true);
    fleet.clock.advance(Duration::from_secs(11));
    let hits = fleet.reader.stats().l1_hits;
    assert_eq!(fleet.read("market_stats", 3).await, None);
    assert_eq!(fleet.reader.stats().l1_hits, hits);
    fleet.l2.set_unavailable(false);
    fleet.bus.reconnect();
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_write_that_fails_drops_the_writers_own_copy() {
    let fleet = Fleet::new().await;
    fleet.write("gpu_availability", 1, "v0").await;
    let key = json!({ "id": 1 });
    let read = || async {
        fleet
            .writer
            .get::<String, _>("gpu_availability", &key)
            .await
            .unwrap()
    };
    let before = fleet.writer.stats();
    assert_eq!(read().await.as_deref().map(String::as_str), Some("v0"));
    assert_eq!(fleet.writer.stats().l1_hits, before.l1_hits + 1);
    // The write fails; it may have landed all the same (a lost reply), so the writer must not
    // go on serving its own, possibly older, copy.
    fleet.l2.set_unavailable(true);
    let failed = fleet
        .writer
        .set("gpu_availability", &key, &"v1".to_owned())
        .await;
    assert_eq!(failed.unwrap_err().kind(), cache_core::ErrorKind::L2);
    fleet.l2.set_unavailable(false);
    let before = fleet.writer.stats();
    assert_eq!(read().await.as_deref().map(String::as_str), Some("v0"));
    let after = fleet.writer.stats();
    assert_eq!(after.l1_hits, before.l1_hits, "not from L1");
    assert_eq!(
        after.l2_hits,
        before.l2_hits + 1,
        "from L2, which has the truth"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_liveness_interval_not_shorter_than_the_bound_is_refused() {
    let err = EdgeCache::builder()
        .l2(Arc::new(MemoryL2::new(
            1 << 20,
            Arc::new(cache_memory::SystemClock),
        )))
        .bus(Arc::new(MemoryBus::new()))
        .staleness_bound(Duration::from_secs(1))
        .liveness_interval(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("liveness interval"), "{err}");
}

// Regressions found by the simulation (`tests/sim`), each reduced to one interleaving.

/// Focused reproduction of what overlapping writes find (no faults at all): node A's write of
/// v1 lands in L2; before its reply reaches A, node B writes v2 and A applies B's event; then
/// A's reply arrives and A caches v1, which it serves until the entry's TTL.
mod write_reply_overtaken {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use cache_core::log::LogRead;
    use cache_core::{
        CacheKey, Clock, EventBus, Fence, L2Entry, L2Store, L2Write, Result, Timestamp,
    };
    use cache_edge::{EdgeCache, SetOptions};
    use cache_memory::{ManualClock, MemoryBus, MemoryL2};

    /// The shared L2, with every write's reply 10 ms on its way back.
    struct SlowReplies(Arc<MemoryL2>);

    #[async_trait]
    impl L2Store for SlowReplies {
        async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
            self.0.get(key).await
        }
        async fn set(&self, write: L2Write) -> Result<bool> {
            let out = self.0.set(write).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            out
        }
        async fn delete(&self, key: &CacheKey) -> Result<bool> {
            self.0.delete(key).await
        }
        async fn invalidate_namespace(&self, ns: &str) -> Result<()> {
            self.0.invalidate_namespace(ns).await
        }
        async fn invalidate_namespaces(&self, ns: &[String], e: Option<Vec<u8>>) -> Result<()> {
            self.0.invalidate_namespaces(ns, e).await
        }
        async fn delete_and_announce(&self, key: &CacheKey, e: Vec<u8>) -> Result<bool> {
            self.0.delete_and_announce(key, e).await
        }
        fn announce_route(&self) -> Option<String> {
            self.0.announce_route()
        }
        fn sequenced(&self) -> bool {
            self.0.sequenced()
        }
        async fn read_log(&self, ns: &str, after: u64, limit: usize) -> Result<LogRead> {
            self.0.read_log(ns, after, limit).await
        }
        async fn invalidate_tag(&self, ns: &str, tag: &str) -> Result<u64> {
            self.0.invalidate_tag(ns, tag).await
        }
        async fn fence(&self, key: &CacheKey) -> Result<Fence> {
            self.0.fence(key).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_reply_is_overtaken_by_a_newer_change_is_not_cached() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(1 << 60)));
        let bus = Arc::new(MemoryBus::new());
        let l2 = Arc::new(
            MemoryL2::new(1 << 20, clock.clone() as Arc<dyn Clock>).announce_on(bus.clone()),
        );
        let node = |id: &str, l2: Arc<dyn L2Store>| {
            EdgeCache::builder()
                .node_id(id)
                .l2(l2)
                .bus(bus.clone() as Arc<dyn EventBus>)
                .clock(clock.clone() as Arc<dyn Clock>)
                .staleness_bound(Duration::from_secs(1))
                .liveness_interval(Duration::from_millis(250))
                .build()
        };
        let a = node("a", Arc::new(SlowReplies(l2.clone()))).await.unwrap();
        let b = node("b", l2.clone()).await.unwrap();
        let key = a.key("gpu_availability", "g-1").unwrap();

        let writer = {
            let (a, key) = (a.clone(), key.clone());
            tokio::spawn(async move { a.set_key(&key, &1_u64, SetOptions::new()).await })
        };
        tokio::time::sleep(Duration::from_millis(2)).await; // A's v1 is in L2, its reply not back
        b.set("gpu_availability", "g-1", &2_u64).await.unwrap(); // acknowledged to B's caller
        tokio::time::sleep(Duration::from_millis(2)).await; // A applied B's event
        writer.await.unwrap().unwrap(); // A's reply arrives: A caches v1

        // Long past the bound, with the liveness checks confirming A is up to date all along.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            clock.advance(Duration::from_millis(250));
        }
        let read = a.get_key::<u64>(&key).await.unwrap().map(|v| *v);
        assert_eq!(read, Some(2), "A serves v1 5 s after v2 was acknowledged");
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// Focused reproduction of seed 494: an empty log (no epoch) after an L2 restart looks the
/// same as the empty log after a second restart, so changes made in the epoch between the two
/// and missed on the bus are never replayed.
mod epoch_lost_between_two_empty_logs {
    use std::sync::Arc;
    use std::time::Duration;

    use cache_core::{Clock, EventBus, L2Store, Timestamp};
    use cache_edge::{EdgeCache, SetOptions};
    use cache_memory::{ManualClock, MemoryBus, MemoryL2};

    #[tokio::test(start_paused = true)]
    async fn a_change_in_an_epoch_lost_between_two_empty_logs_is_not_served_stale() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(1 << 60)));
        let bus = Arc::new(MemoryBus::new());
        let l2 = Arc::new(
            MemoryL2::new(1 << 20, clock.clone() as Arc<dyn Clock>).announce_on(bus.clone()),
        );
        let node = |id: &str| {
            EdgeCache::builder()
                .node_id(id)
                .l2(l2.clone() as Arc<dyn L2Store>)
                .bus(bus.clone() as Arc<dyn EventBus>)
                .clock(clock.clone() as Arc<dyn Clock>)
                .staleness_bound(Duration::from_secs(1))
                .liveness_interval(Duration::from_millis(250))
                .build()
        };
        let (writer, reader) = (node("w").await.unwrap(), node("r").await.unwrap());
        let key = reader.key("gpu_availability", "g-1").unwrap();
        // The log of gpu_avail has no epoch yet; the reader loads v1 into its L1.
        let loaded = reader
            .get_or_load_key(&key, SetOptions::new(), || async {
                Ok::<_, std::io::Error>(1_u64)
            })
            .await
            .unwrap();
        assert_eq!(*loaded, 1);
        // Within one liveness interval: v2 is written and acknowledged (its event lost on the
        // way to the reader), then L2 restarts empty, taking the epoch of v2's log entry along.
        bus.drop_next(1);
        writer.set("gpu_availability", "g-1", &2_u64).await.unwrap();
        l2.restart_empty();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            clock.advance(Duration::from_millis(250));
        }
        let read = reader.get_key::<u64>(&key).await.unwrap().map(|v| *v);
        assert_ne!(
            read,
            Some(1),
            "the reader serves v1 5 s after v2 was acknowledged"
        );
        writer.shutdown().await;
        reader.shutdown().await;
    }
}

/// The next message on `sub`, skipping connection states.
async fn next_message(sub: &mut Box<dyn cache_core::Subscription>) -> Vec<u8> {
    loop {
        match tokio::time::timeout(DEADLINE, sub.next()).await {
            Ok(Some(cache_core::BusItem::Message(bytes))) => return bytes,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!("no message within {DEADLINE:?}"),
        }
    }
}

#[tokio::test]
async fn nodes_whose_bus_is_not_on_l2s_route_follow_the_log() {
    let l2_bus = Arc::new(MemoryBus::new());
    let fleet = Fleet::split(l2_bus.clone()).await;
    assert_ne!(fleet.l2.announce_route(), fleet.bus.route());
    fleet.warm("gpu_availability").await;
    let applied = fleet.reader.stats().namespaces[0].log_applied;
    assert!(
        applied.is_some_and(|(_, seq)| seq >= u64::from(WARM)),
        "the writes' positions reached the reader: {applied:?}"
    );
    fleet.bus.drop_next(1);
    fleet.write("gpu_availability", 0, "v1").await;
    fleet.write("gpu_availability", 1, "v1").await;
    eventually("the lost write's event is replayed", DEADLINE, || async {
        fleet.read("gpu_availability", 0).await.as_deref() == Some("v1")
    })
    .await;
    let stats = fleet.reader.stats();
    assert!(stats.gaps_detected >= 1, "{stats:?}");
    assert!(stats.events_replayed >= 1, "{stats:?}");
    assert_eq!(
        stats.resyncs + stats.drops_trimmed + stats.drops_new_epoch,
        0
    );
    assert_eq!(
        fleet.surviving("gpu_availability", &[0, 1]).await,
        u64::from(WARM) - 2,
        "every other warm entry is still served from L1"
    );
    // Invalidations go the same way: logged by L2, published by the node.
    fleet
        .writer
        .invalidate_namespace("gpu_availability", "test")
        .await
        .unwrap();
    eventually("the reader applies the invalidation", DEADLINE, || async {
        fleet.reader.stats().namespaces[0].l1_entries == 0
    })
    .await;
    assert_eq!(
        l2_bus.published(),
        0,
        "L2 published nothing on its own route"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_failed_publication_is_pending_retried_and_the_reader_converges_from_the_log() {
    let fleet = Fleet::split(Arc::new(MemoryBus::new())).await;
    fleet.warm("gpu_availability").await;
    // A receiver that only hears the bus (no log): it gets what the republishing sends.
    let mut listener = fleet.bus.subscribe().await.unwrap();
    fleet.bus.fail_publishes(true);
    let key = json!({ "id": 3 });
    for value in ["v1", "v2"] {
        let err = fleet
            .writer
            .set("gpu_availability", &key, &value.to_owned())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), cache_core::ErrorKind::Bus);
        assert!(err.to_string().contains("pending"), "{err}");
    }
    assert_eq!(
        fleet.writer.stats().pending_publications,
        1,
        "two failed writes of one key leave one pending publication: the newest"
    );
    // The change is in the log: the reader's liveness check replays it within the bound.
    eventually("the reader converges from the log", DEADLINE, || async {
        fleet.read("gpu_availability", 3).await.as_deref() == Some("v2")
    })
    .await;
    assert!(fleet.reader.stats().events_replayed >= 2);
    eventually(
        "the writer retries while publishes fail",
        DEADLINE,
        || async { fleet.writer.stats().publish_retries >= 1 },
    )
    .await;
    assert_eq!(fleet.writer.stats().pending_publications, 1);
    fleet.bus.fail_publishes(false);
    eventually("the pending set empties", DEADLINE, || async {
        fleet.writer.stats().pending_publications == 0
    })
    .await;
    let key_namespace = &fleet
        .writer
        .namespace("gpu_availability")
        .unwrap()
        .key_namespace;
    let head = fleet.l2.read_log(key_namespace, 0, 100_000).await.unwrap();
    let newest = head.entries.last().unwrap().1.clone();
    assert_eq!(
        next_message(&mut listener).await,
        newest,
        "the newest write's message, as logged, is republished (the older one is superseded)"
    );
    fleet.shutdown().await;
}

/// The pending set is bounded: past `max_pending_publications` a failed publication is not
/// kept (counted), and the reader still converges from the log.
#[tokio::test]
async fn a_full_pending_set_keeps_no_more_and_the_log_still_carries_every_change() {
    let fleet = Fleet::split(Arc::new(MemoryBus::new())).await;
    let small = EdgeCache::builder()
        .node_id("small")
        .l2(fleet.l2.clone() as Arc<dyn L2Store>)
        .bus(fleet.bus.clone() as Arc<dyn EventBus>)
        .clock(fleet.clock.clone() as Arc<dyn Clock>)
        .staleness_bound(BOUND)
        .liveness_interval(LIVENESS)
        .max_pending_publications(2)
        .build()
        .await
        .unwrap();
    fleet.warm("gpu_availability").await;
    fleet.bus.fail_publishes(true);
    let mut errors = Vec::new();
    for id in 0..4 {
        let err = small
            .set(
                "gpu_availability",
                &json!({ "id": id }),
                &format!("new {id}"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), cache_core::ErrorKind::Bus);
        errors.push(err.to_string());
    }
    assert!(
        errors[..2]
            .iter()
            .all(|e| e.contains("pending and retried")),
        "{errors:?}"
    );
    assert!(
        errors[2..]
            .iter()
            .all(|e| e.contains("pending set is full")),
        "{errors:?}"
    );
    let s = small.stats();
    assert_eq!((s.pending_publications, s.publications_dropped), (2, 2));
    for id in 0..4 {
        eventually("the reader converges from the log", DEADLINE, || async {
            fleet.read("gpu_availability", id).await == Some(format!("new {id}"))
        })
        .await;
    }
    fleet.bus.fail_publishes(false);
    eventually("the pending set empties", DEADLINE, || async {
        small.stats().pending_publications == 0
    })
    .await;
    small.shutdown().await;
    fleet.shutdown().await;
}

/// `OutagePolicy::ShortenedTtl`: with the log unreadable past the bound, the namespace's L1 is
/// emptied and refilled with short-lived entries; once the log confirms again, fills live as
/// long as usual.
mod shortened_ttl {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use cache_core::log::LogRead;
    use cache_core::{
        CacheKey, Clock, Error, ErrorKind, EventBus, Fence, L2Entry, L2Store, L2Write,
        NamespaceConfig, Namespaces, OutagePolicy, Result, Timestamp,
    };
    use cache_edge::EdgeCache;
    use cache_memory::{ManualClock, MemoryBus, MemoryL2};
    use serde_json::json;
    use test_support::eventually;

    /// The shared L2, whose log cannot be read while `down` (everything else works).
    struct LogOutage {
        l2: Arc<MemoryL2>,
        down: AtomicBool,
    }

    #[async_trait]
    impl L2Store for LogOutage {
        async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
            self.l2.get(key).await
        }
        async fn set(&self, write: L2Write) -> Result<bool> {
            self.l2.set(write).await
        }
        async fn delete(&self, key: &CacheKey) -> Result<bool> {
            self.l2.delete(key).await
        }
        async fn invalidate_namespace(&self, ns: &str) -> Result<()> {
            self.l2.invalidate_namespace(ns).await
        }
        fn announce_route(&self) -> Option<String> {
            self.l2.announce_route()
        }
        fn sequenced(&self) -> bool {
            self.l2.sequenced()
        }
        async fn read_log(&self, ns: &str, after: u64, limit: usize) -> Result<LogRead> {
            if self.down.load(SeqCst) {
                return Err(Error::new(ErrorKind::L2, "the log is unreachable (test)"));
            }
            self.l2.read_log(ns, after, limit).await
        }
        async fn invalidate_tag(&self, ns: &str, tag: &str) -> Result<u64> {
            self.l2.invalidate_tag(ns, tag).await
        }
        async fn fence(&self, key: &CacheKey) -> Result<Fence> {
            self.l2.fence(key).await
        }
    }

    const BOUND: Duration = Duration::from_secs(3);
    const SHORT: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn past_the_bound_l1_is_emptied_and_refilled_with_short_lived_entries() {
        let mut namespaces = Namespaces::defaults();
        let stats = namespaces.get("market_stats").unwrap().clone();
        namespaces
            .replace(
                NamespaceConfig::new(&stats.name, &stats.key_namespace, Duration::from_secs(600))
                    .event_driven(true)
                    .critical(true)
                    .outage_policy(OutagePolicy::ShortenedTtl { ttl: SHORT }),
            )
            .unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(
            1_750_000_000_000_000_000,
        )));
        let bus = Arc::new(MemoryBus::new());
        let shared = Arc::new(
            MemoryL2::new(64 << 20, clock.clone() as Arc<dyn Clock>).announce_on(bus.clone()),
        );
        let outage = Arc::new(LogOutage {
            l2: shared.clone(),
            down: AtomicBool::new(false),
        });
        let node = |id: &str, l2: Arc<dyn L2Store>| {
            EdgeCache::builder()
                .node_id(id)
                .namespaces(namespaces.clone())
                .l2(l2)
                .bus(bus.clone() as Arc<dyn EventBus>)
                .clock(clock.clone() as Arc<dyn Clock>)
                .staleness_bound(BOUND)
                .liveness_interval(Duration::from_millis(50))
                .build()
        };
        let writer = node("writer", shared.clone()).await.unwrap();
        let reader = node("reader", outage.clone()).await.unwrap();
        let read = |id: u32| {
            let reader = reader.clone();
            async move {
                reader
                    .get::<String, _>("market_stats", &json!({ "id": id }))
                    .await
                    .unwrap()
                    .map(|v| (*v).clone())
            }
        };
        let ns = |reader: &EdgeCache| {
            reader
                .stats()
                .namespaces
                .into_iter()
                .find(|n| n.name == "market_stats")
                .unwrap()
        };
        for id in 0..3 {
            writer
                .set("market_stats", &json!({ "id": id }), &"v0".to_owned())
                .await
                .unwrap();
        }
        for id in 0..3 {
            assert_eq!(read(id).await.as_deref(), Some("v0"));
        }
        assert_eq!(ns(&reader).l1_entries, 3);

        // The log goes away; within the bound nothing changes.
        outage.down.store(true, SeqCst);
        let hits = reader.stats().l1_hits;
        assert_eq!(read(0).await.as_deref(), Some("v0"));
        assert_eq!(reader.stats().l1_hits, hits + 1);
        // Past it, L1 is emptied and used again, with short-lived fills.
        clock.advance(BOUND + Duration::from_millis(1));
        eventually(
            "the namespace enters its shortened-TTL mode",
            DEADLINE,
            || async { reader.stats().shortened_ttl_modes >= 1 },
        )
        .await;
        assert_eq!(
            ns(&reader).l1_entries,
            0,
            "what it held may be stale: dropped"
        );
        assert!(ns(&reader).l1_in_use);
        let before = reader.stats();
        assert_eq!(read(1).await.as_deref(), Some("v0"));
        assert_eq!(read(1).await.as_deref(), Some("v0"));
        let after = reader.stats();
        assert_eq!(
            (
                after.l2_hits - before.l2_hits,
                after.l1_hits - before.l1_hits
            ),
            (1, 1),
            "filled from L2, then served from L1"
        );
        clock.advance(SHORT + Duration::from_millis(1));
        let before = reader.stats();
        assert_eq!(read(1).await.as_deref(), Some("v0"));
        assert_eq!(
            reader.stats().l1_hits,
            before.l1_hits,
            "the short-lived entry expired"
        );

        // The log is back: the next confirmation ends the mode, and fills live long again.
        outage.down.store(false, SeqCst);
        let confirmed = ns(&reader).log_confirmed_at;
        eventually("the log confirms the reader again", DEADLINE, || async {
            ns(&reader).log_confirmed_at > confirmed
        })
        .await;
        assert_eq!(read(2).await.as_deref(), Some("v0"));
        clock.advance(SHORT + Duration::from_millis(1));
        let before = reader.stats();
        assert_eq!(read(2).await.as_deref(), Some("v0"));
        assert_eq!(
            reader.stats().l1_hits,
            before.l1_hits + 1,
            "a full-length entry"
        );
        writer.shutdown().await;
        reader.shutdown().await;
    }
}
