//! The per-node audit: each node's observer, which records the highest `source_version` the
//! node has applied per namespace and the newest event naming each resource's key, and the
//! node's audit counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{Event, Scope};
use cache_edge::Observer;
use serde_json::Value;

use super::market::{lock, Kind};

/// A node's observer and audit counters.
pub(super) struct NodeAudit {
    /// The node's index: 0 for `edge-1`.
    pub(super) index: usize,
    pub(super) node_id: String,
    /// The key namespace of each [`Kind`], by `Kind as usize`.
    key_namespaces: Vec<String>,
    /// Highest `source_version` applied per [`Kind`].
    applied: [AtomicU64; 3],
    /// The slot ([`Market::slot`]) of each resource, by its cache key.
    ///
    /// [`Market::slot`]: super::market::Market::slot
    slots: Arc<HashMap<String, usize>>,
    /// Per slot, the bits of the newest timestamp (an `f64`, positive, so the bits order as the
    /// numbers do) of an applied event naming the resource's key: a write's announcement, or a
    /// key invalidation.
    key_events: Vec<AtomicU64>,
    /// Lag of every event applied here that another node issued.
    pub(super) lags: Mutex<Vec<Duration>>,
    pub(super) reads: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl NodeAudit {
    pub(super) fn new(
        index: usize,
        key_namespaces: Vec<String>,
        slots: Arc<HashMap<String, usize>>,
    ) -> Self {
        let resources = slots.len();
        Self {
            index,
            node_id: format!("edge-{}", index + 1),
            key_namespaces,
            applied: Default::default(),
            slots,
            key_events: (0..resources).map(|_| AtomicU64::new(0)).collect(),
            lags: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The highest `source_version` applied to `kind`'s namespace. SeqCst pairs with the
    /// `fetch_max` in [`Observer::on_event_applied`], which runs after the node dropped its L1
    /// copies: a read that starts after seeing the number also sees the drop.
    pub(super) fn applied(&self, kind: Kind) -> u64 {
        self.applied[kind as usize].load(Ordering::SeqCst)
    }

    /// The newest timestamp of an applied event naming the key of the resource in `slot`, 0.0 for
    /// none. SeqCst as for [`NodeAudit::applied`]: the node dropped its copy of the key first.
    pub(super) fn key_event(&self, slot: usize) -> f64 {
        f64::from_bits(self.key_events[slot].load(Ordering::SeqCst))
    }
}

impl Observer for NodeAudit {
    fn on_event_applied(&self, event: &Event, lag: Duration) {
        if event.source_node != self.node_id {
            lock(&self.lags).push(lag);
        }
        if let Scope::Keys(keys) = &event.scope {
            if event.timestamp.is_finite() && event.timestamp > 0.0 {
                for key in keys {
                    if let Some(&slot) = self.slots.get(key.as_str()) {
                        self.key_events[slot]
                            .fetch_max(event.timestamp.to_bits(), Ordering::SeqCst);
                    }
                }
            }
        }
        let Some(version) = event.data.get("source_version").and_then(Value::as_u64) else {
            return;
        };
        for key_namespace in &event.affected_namespaces {
            if let Some(kind) = self.key_namespaces.iter().position(|k| k == key_namespace) {
                self.applied[kind].fetch_max(version, Ordering::SeqCst);
            }
        }
    }
}
