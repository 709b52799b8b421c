//! Shared set-up: nodes on a private in-process bus and L2, a manual clock, and waiting on a
//! condition with a deadline (never a bare sleep).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, EventBus, L2Store, Timestamp};
use cache_edge::EdgeCache;
use cache_memory::{ManualClock, MemoryBus, MemoryL2};

/// A private fleet: its own bus, L2 and clock, so tests never share state.
pub struct Fleet {
    pub bus: Arc<MemoryBus>,
    pub l2: Arc<MemoryL2>,
    pub clock: Arc<ManualClock>,
}

impl Fleet {
    pub fn new() -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(
            1_700_000_000_000_000_000,
        )));
        let l2 = Arc::new(MemoryL2::new(64 << 20, clock.clone() as Arc<dyn Clock>));
        Self {
            bus: Arc::new(MemoryBus::new()),
            l2,
            clock,
        }
    }

    pub async fn node(&self, id: &str) -> EdgeCache {
        self.builder(id).build().await.expect("node builds")
    }

    pub fn builder(&self, id: &str) -> cache_edge::EdgeCacheBuilder {
        EdgeCache::builder()
            .node_id(id)
            .l2(self.l2.clone() as Arc<dyn L2Store>)
            .bus(self.bus.clone() as Arc<dyn EventBus>)
            .clock(self.clock.clone() as Arc<dyn Clock>)
    }
}

/// Publishes `message` raw on the fleet's bus (as no node would) and waits until `node` has
/// taken it off the bus, whatever it then made of it.
pub async fn publish_raw(fleet: &Fleet, node: &EdgeCache, message: Vec<u8>) {
    let before = node.stats().events_received;
    fleet.bus.publish(message).await.unwrap();
    eventually("the node hears the message", || {
        node.stats().events_received > before
    })
    .await;
}

/// Waits until `check` holds, yielding to the runtime between checks; fails after 5 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `node` has applied at least `n` events.
pub async fn applied(node: &EdgeCache, n: u64) {
    eventually(&format!("{} applies {n} events", node.node_id()), || {
        node.stats().events_applied >= n
    })
    .await;
}

/// Runs `f` with a deadline, failing the test if it does not finish.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("finished within 5 s")
}
