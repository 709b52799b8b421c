//! Cross-crate integration suites: whole fleets of `EdgeCache` nodes on shared backends.

mod alloc;
mod contract_bus;
mod contract_l2;
mod contract_log;
mod fleet;
mod freshness;
mod hostile;
mod no_patterns;
mod redis_acl;
mod redis_failover;
mod redis_faults;
mod redis_fleet;
mod redis_lease;
mod redis_refresh;
mod redis_sentinel;
mod redis_signed;
mod redis_tls;
mod seed_defects;
mod simulation;

use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, EventBus, L2Store, Timestamp};
use cache_edge::EdgeCache;
use cache_memory::{ManualClock, MemoryBus, MemoryL2};

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

/// Nodes sharing a private bus, L2 and manual clock.
pub(crate) struct Backends {
    pub(crate) bus: Arc<MemoryBus>,
    pub(crate) l2: Arc<MemoryL2>,
    pub(crate) clock: Arc<ManualClock>,
}

impl Backends {
    pub(crate) fn new() -> Self {
        let clock = Arc::new(ManualClock::new(Timestamp::from_nanos(
            1_750_000_000_000_000_000,
        )));
        let l2 = Arc::new(MemoryL2::new(64 << 20, clock.clone() as Arc<dyn Clock>));
        Self {
            bus: Arc::new(MemoryBus::new()),
            l2,
            clock,
        }
    }

    pub(crate) fn builder(&self, id: &str) -> cache_edge::EdgeCacheBuilder {
        EdgeCache::builder()
            .node_id(id)
            .l2(self.l2.clone() as Arc<dyn L2Store>)
            .bus(self.bus.clone() as Arc<dyn EventBus>)
            .clock(self.clock.clone() as Arc<dyn Clock>)
    }

    pub(crate) async fn nodes(&self, ids: &[&str]) -> Vec<EdgeCache> {
        let mut nodes = Vec::new();
        for id in ids {
            nodes.push(self.builder(id).build().await.expect("node builds"));
        }
        nodes
    }
}

/// Waits until every node has applied at least `n` events; fails after 5 s.
pub(crate) async fn all_applied(nodes: &[EdgeCache], n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while nodes.iter().any(|node| node.stats().events_applied < n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} applied events on every node"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(crate) async fn shutdown(nodes: Vec<EdgeCache>) {
    for node in nodes {
        node.shutdown().await;
    }
}
