//! Faults forced with mockall doubles or gated fakes: an L2 that errors, a bus that cannot
//! publish, and a back-fill that races an invalidation.

use std::sync::Arc;

use async_trait::async_trait;
use cache_core::mock::{MockEventBus, MockL2Store};
use cache_core::{
    BusItem, CacheKey, ConnectionState, Error, ErrorKind, Fence, L2Entry, L2Store, L2Write, Result,
    Subscription,
};
use cache_edge::{EdgeCache, Notification};
use cache_memory::MemoryL2;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

use crate::support::{applied, within, Fleet};

fn l2_down() -> Error {
    Error::new(ErrorKind::L2, "connection reset")
}

#[tokio::test]
async fn an_l2_that_errors_degrades_reads_to_misses_and_fails_writes_loudly() {
    let fleet = Fleet::new();
    let mut l2 = MockL2Store::new();
    l2.expect_get().times(1).returning(|_| Err(l2_down()));
    l2.expect_set().times(1).returning(|_| Err(l2_down()));
    l2.expect_announce_route().return_const(None);
    l2.expect_sequenced().return_const(false);
    l2.expect_invalidation_feed().return_const(());
    let node = fleet.builder("a").l2(Arc::new(l2)).build().await.unwrap();
    let p = json!({"gpu_id": "g"});

    assert!(node
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    let err = node
        .set("gpu_availability", &p, &"v".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert!(err.is_transient());
    let s = node.stats();
    assert_eq!(
        (s.l2_errors, s.misses, s.sets, s.events_published),
        (2, 1, 0, 0)
    );
    // The failed write did not reach L1 either.
    let l1 = s
        .namespaces
        .iter()
        .find(|n| n.name == "gpu_availability")
        .unwrap();
    assert_eq!(l1.l1_entries, 0);
    node.shutdown().await;
}

/// An unfenced write that L2 answers with "not stored" (which the `L2Store` contract rules out)
/// is reported, not taken for a landed write: no L1 copy, no event, not counted as a set.
#[tokio::test]
async fn an_unfenced_write_that_l2_did_not_store_is_an_error() {
    let fleet = Fleet::new();
    let mut l2 = MockL2Store::new();
    l2.expect_set()
        .times(1)
        .withf(|write| write.fence.is_none())
        .returning(|_| Ok(false));
    l2.expect_announce_route().return_const(None);
    l2.expect_sequenced().return_const(false);
    l2.expect_invalidation_feed().return_const(());
    let node = fleet.builder("a").l2(Arc::new(l2)).build().await.unwrap();
    let p = json!({"gpu_id": "g"});

    let err = node
        .set("gpu_availability", &p, &"v".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert!(err.to_string().contains("did not store"), "{err}");
    let s = node.stats();
    assert_eq!((s.l2_errors, s.sets, s.events_published), (1, 0, 0));
    let l1 = s
        .namespaces
        .iter()
        .find(|n| n.name == "gpu_availability")
        .unwrap();
    assert_eq!(l1.l1_entries, 0, "nothing reached L1");
    node.shutdown().await;
}

/// Records every event reported as applied.
#[derive(Default)]
struct Applied(std::sync::Mutex<Vec<String>>);

impl cache_edge::Observer for Applied {
    fn on_event_applied(&self, event: &cache_core::Event, _lag: std::time::Duration) {
        self.0.lock().unwrap().push(event.event_id.clone());
    }
}

/// A notification whose L2 invalidation fails: the call reports it, the node drops the copies
/// the invalidation meant to remove (it must not go on serving them), but neither counts nor
/// reports the event as applied, nor announces it, since the invalidation is not in effect (L2
/// still holds what it held).
#[tokio::test]
async fn a_notification_whose_l2_invalidation_fails_drops_l1_but_is_not_applied() {
    let fleet = Fleet::new();
    let mut l2 = MockL2Store::new();
    l2.expect_set().returning(|_| Ok(true));
    l2.expect_invalidate_namespaces()
        .times(1)
        .returning(|_, _| Err(l2_down()));
    l2.expect_get().times(1).returning(|_| Ok(None));
    l2.expect_namespace_invalidated().return_const(());
    l2.expect_announce_route().return_const(None);
    l2.expect_sequenced().return_const(false);
    l2.expect_invalidation_feed().return_const(());
    let applied = Arc::new(Applied::default());
    let observer: Arc<dyn cache_edge::Observer> = applied.clone();
    let node = fleet
        .builder("a")
        .l2(Arc::new(l2))
        .observer(observer)
        .build()
        .await
        .unwrap();
    let key = node
        .key("gpu_availability", &json!({"gpu_id": "g"}))
        .unwrap();
    node.set_key(&key, &"held".to_string(), cache_edge::SetOptions::new())
        .await
        .unwrap();
    assert_eq!(
        node.get_key::<String>(&key).await.unwrap().as_deref(),
        Some(&"held".to_string()),
        "from L1"
    );

    let published = fleet.bus.published();
    let err = node
        .notify(Notification::gpu_availability_changed("g", "booked"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert_eq!(
        fleet.bus.published(),
        published,
        "not announced: other nodes would count it as done and read back what L2 still holds"
    );
    assert_eq!(
        node.get_key::<String>(&key).await.unwrap(),
        None,
        "L1 dropped its copy: the read went to L2"
    );
    assert_eq!(node.stats().events_applied, 0);
    assert!(applied.0.lock().unwrap().is_empty(), "nothing reported");
    node.shutdown().await;
}

/// A subscription that yields `Connected` and then whatever the test sends.
struct Scripted(mpsc::UnboundedReceiver<BusItem>);

#[async_trait]
impl Subscription for Scripted {
    async fn next(&mut self) -> Option<BusItem> {
        self.0.recv().await
    }
}

#[tokio::test]
async fn a_bus_that_cannot_publish_is_reported_and_the_write_still_lands() {
    let fleet = Fleet::new();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(BusItem::State(ConnectionState::Connected)).unwrap();
    let rx = std::sync::Mutex::new(Some(rx));
    let mut bus = MockEventBus::new();
    bus.expect_subscribe().times(1).returning(move || {
        Ok(Box::new(Scripted(rx.lock().unwrap().take().unwrap())) as Box<dyn Subscription>)
    });
    bus.expect_route().return_const(None);
    bus.expect_publish()
        .times(2)
        .returning(|_| Err(Error::new(ErrorKind::Bus, "publisher connection lost")));
    let node = fleet.builder("a").bus(Arc::new(bus)).build().await.unwrap();
    let p = json!({"gpu_id": "g"});

    let err = node
        .set("gpu_availability", &p, &"v".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bus);
    assert_eq!(fleet.l2.len(), 1, "the L2 write landed");
    assert_eq!(
        *node
            .get::<String, _>("gpu_availability", &p)
            .await
            .unwrap()
            .unwrap(),
        "v"
    );

    let err = node
        .notify(Notification::booking_created("b", "g"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Bus);
    assert!(
        node.get::<String, _>("gpu_availability", &p)
            .await
            .unwrap()
            .is_none(),
        "applied locally anyway"
    );
    assert_eq!(node.stats().publish_errors, 2);
    drop(tx);
    node.shutdown().await;
}

/// An L2 whose first `get` or `set` waits until the test opens the gate, to force an
/// interleaving.
struct GatedL2 {
    inner: Arc<MemoryL2>,
    /// Which call waits at the gate: the first `get` (after reading), or the first `set`
    /// (before writing).
    gated: Gated,
    reached: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

#[derive(PartialEq, Eq)]
enum Gated {
    Get,
    Set,
}

impl GatedL2 {
    /// The store over `inner` whose first `gated` call signals `reached` and waits for `gate`.
    fn new(
        inner: Arc<MemoryL2>,
        gated: Gated,
        reached: tokio::sync::oneshot::Sender<()>,
        gate: tokio::sync::oneshot::Receiver<()>,
    ) -> Self {
        Self {
            inner,
            gated,
            reached: Mutex::new(Some(reached)),
            gate: Mutex::new(Some(gate)),
        }
    }

    async fn wait_at_gate(&self, call: Gated) {
        if call != self.gated {
            return;
        }
        if let Some(reached) = self.reached.lock().await.take() {
            let _ = reached.send(());
            if let Some(gate) = self.gate.lock().await.take() {
                let _ = gate.await;
            }
        }
    }
}

#[async_trait]
impl L2Store for GatedL2 {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        let read = self.inner.get(key).await;
        self.wait_at_gate(Gated::Get).await;
        read
    }
    async fn set(&self, write: L2Write) -> Result<bool> {
        self.wait_at_gate(Gated::Set).await;
        self.inner.set(write).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.inner.invalidate_namespace(key_namespace).await
    }
    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.inner.invalidate_tag(key_namespace, tag).await
    }
    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        self.inner.fence(key).await
    }
}

/// Node `a`, which wrote "old" under `p`, and node `b`, whose L2 (the same store) holds its first
/// `gated` call at a gate: `reached` fires when the call gets there, sending on `open` lets it on.
struct GatedPair {
    a: EdgeCache,
    b: EdgeCache,
    reached: tokio::sync::oneshot::Receiver<()>,
    open: tokio::sync::oneshot::Sender<()>,
}

async fn gated_pair(fleet: &Fleet, p: &serde_json::Value, gated: Gated) -> GatedPair {
    let a = fleet.node("a").await;
    a.set("gpu_availability", p, &"old".to_string())
        .await
        .unwrap();
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (open, gate_rx) = tokio::sync::oneshot::channel();
    let l2 = Arc::new(GatedL2::new(fleet.l2.clone(), gated, reached_tx, gate_rx));
    let b = fleet.builder("b").l2(l2).build().await.unwrap();
    GatedPair {
        a,
        b,
        reached,
        open,
    }
}

#[tokio::test]
async fn a_backfill_that_raced_an_invalidation_is_not_kept() {
    let fleet = Fleet::new();
    let p = json!({"gpu_id": "g-1"});
    let GatedPair {
        a,
        b,
        reached: reached_rx,
        open: gate_tx,
    } = gated_pair(&fleet, &p, Gated::Get).await;
    let read = b.get::<String, _>("gpu_availability", &p);
    let booking = async {
        reached_rx.await.unwrap(); // B has read "old" from L2 and not yet back-filled it
        a.notify(Notification::booking_created("b-1", "g-1"))
            .await
            .unwrap();
        applied(&b, 1).await;
        gate_tx.send(()).unwrap();
    };
    let (old, ()) = within(async { tokio::join!(read, booking) }).await;
    assert_eq!(
        *old.unwrap().unwrap(),
        "old",
        "the racing read itself may return the old value"
    );
    assert_eq!(b.stats().fills_fenced, 1);
    // Every read that starts after B applied the booking misses.
    assert!(b
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    assert_eq!(b.stats().l1_hits, 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A write made while the bus is down keeps no L1 copy (L1 is bypassed then). If the bus comes
/// back while the write is on its way to L2, a read that starts then may still find the old
/// value in L2 and back-fill it; the write must fence that fill as a write with a copy does, or
/// the node would go on serving the old value from L1 after its own write returned.
#[tokio::test]
async fn a_write_made_while_the_bus_was_down_fences_fills_racing_it() {
    let fleet = Fleet::new();
    let p = json!({"gpu_id": "g-1"});
    let GatedPair {
        a,
        b,
        reached: reached_rx,
        open: gate_tx,
    } = gated_pair(&fleet, &p, Gated::Set).await;
    crate::support::eventually("b is subscribed", || {
        b.stats().resyncs == 0 && fleet.bus.subscriber_count() == 2
    })
    .await;
    fleet.bus.disconnect();
    crate::support::eventually("b sees the disconnect", || b.stats().resyncs == 1).await;

    let new = "new".to_string();
    let write = b.set("gpu_availability", &p, &new);
    let race = async {
        reached_rx.await.unwrap(); // b's write is on its way to L2
        fleet.bus.reconnect();
        crate::support::eventually("b resubscribes", || b.stats().resyncs == 2).await;
        let read = b.get::<String, _>("gpu_availability", &p).await.unwrap();
        gate_tx.send(()).unwrap();
        read
    };
    let (written, raced) = within(async { tokio::join!(write, race) }).await;
    written.unwrap();
    assert_eq!(
        raced.as_deref().map(String::as_str),
        Some("old"),
        "the racing read itself may return the old value"
    );
    assert_eq!(
        b.get::<String, _>("gpu_availability", &p)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("new"),
        "a read after the write returned sees it"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_l2_outage_on_the_in_process_store_is_survived() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let p = json!({"gpu_id": "g"});
    fleet.l2.set_unavailable(true);
    assert!(a
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    let v = a
        .get_or_load("gpu_availability", &p, Default::default(), || async {
            Ok::<_, std::io::Error>("loaded".to_string())
        })
        .await
        .unwrap();
    assert_eq!(
        *v, "loaded",
        "a load still serves the caller while L2 is down"
    );
    fleet.l2.set_unavailable(false);
    assert!(a.stats().l2_errors >= 2);
    a.shutdown().await;
}
