//! The receiving side of invalidation: events heard on the bus (and this node's own, once
//! issued) are applied to L1, moving each namespace's epoch before anything is removed.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use cache_core::{CacheKey, Codec, Event, L1Store, Scope};

use super::{Inner, NsState};

impl<C: Codec> Inner<C> {
    /// Handles one raw message from the bus.
    pub(crate) async fn receive(&self, bytes: &[u8]) {
        self.counters.events_received.add(1);
        // Bounds first (size, then nesting: one pass, nothing allocated), then the signature:
        // nothing in a message is trusted before it, not even the positions of what looks like
        // this node's own event (forged ones would hide a gap).
        if self.check_limits(bytes).is_err()
            || (self.keys.is_some() && self.check_signature(bytes).is_err())
        {
            self.events_handled.fetch_add(1, Relaxed);
            return;
        }
        if bytes.starts_with(&self.own_prefix) {
            // One of this node's own events, heard back: nothing to decode or apply, but its
            // positions in the logs count as heard.
            self.counters.own_events_ignored.add(1);
            if self.sequenced {
                if let Some(positions) = cache_core::log::positions_in_tail(bytes) {
                    self.observe_heard(&positions);
                }
            }
            self.events_handled.fetch_add(1, Relaxed);
            return;
        }
        match Event::decode(bytes) {
            Ok(event) if event.source_node == self.node_id => {
                self.counters.own_events_ignored.add(1);
            }
            Ok(event) if self.check_event_limits(&event).is_err() => {}
            Ok(event) if self.check_fresh(&event).is_err() => {}
            Ok(event) => {
                tracing::debug!(node_id = %self.node_id, event_id = %event.event_id, event_type = %event.event_type, "applying event");
                if event.version == 0 {
                    self.invalidate_l2_for_seed_event(&event).await;
                }
                // Applied to L1 first, then its positions recorded: a catch-up that finds them
                // recorded may vouch for L1. A duplicate (already replayed from the log) is
                // applied again, harmlessly, but counted once.
                self.apply_to_l1(&event);
                if self.observe_heard(&event.positions) {
                    self.counters.duplicates_ignored.add(1);
                } else {
                    self.record_applied(&event);
                }
            }
            Err(e) => self.reject_malformed(bytes, &e),
        }
        self.events_handled.fetch_add(1, Relaxed);
    }

    fn reject_malformed(&self, bytes: &[u8], e: &cache_core::Error) {
        self.counters.events_rejected.add(1);
        if self.may_log_refusal() {
            tracing::warn!(node_id = %self.node_id, error = %e, len = bytes.len(), "dropped a malformed event (further refusals within a second are counted, not logged)");
        }
        self.observer.on_event_rejected(e);
    }

    /// A seed (Python) node publishes without touching L2 and relies on every receiver to
    /// clear it. In a mixed fleet this node does its share, before dropping L1, so a read after
    /// the event cannot back-fill from the stale L2 entry. A seed write event (one key, already
    /// rewritten in L2 by its writer) needs nothing here.
    async fn invalidate_l2_for_seed_event(&self, event: &Event) {
        if matches!(event.scope, Scope::Keys(_)) {
            return;
        }
        for name in &event.affected_namespaces {
            if self.ns_by_key_namespace(name).is_none() {
                continue;
            }
            if let Err(e) = self.l2.invalidate_namespace(name).await {
                let _ = self.l2_failed("invalidate_namespace", e);
            }
        }
    }

    /// Applies an event to L1 (never to L2: the issuer did that once).
    pub(crate) fn apply(&self, event: &Event) {
        self.apply_to_l1(event);
        self.record_applied(event);
    }

    /// Counts an event applied and tells the observer, with its propagation lag.
    pub(super) fn record_applied(&self, event: &Event) {
        let now = self.clock.now();
        self.counters.events_applied.add(1);
        self.counters
            .last_event_nanos
            .store(now.as_nanos().max(1), Relaxed);
        let lag = now.saturating_since(cache_core::Timestamp::from_secs_f64(event.timestamp));
        self.counters.record_lag(lag);
        self.observer.on_event_applied(event, lag);
    }

    /// What [`Inner::apply`] does to this node's L1 and remembered generations, without
    /// counting the event as applied or telling the observer: for an event this node issued
    /// whose L2 change failed. The node still drops what the event names (it must not go on
    /// serving copies the failed invalidation meant to remove), but the invalidation is not in
    /// effect (L2 may still hold older values, and reads here may return them), so it is not
    /// reported as applied.
    pub(super) fn apply_to_l1(&self, event: &Event) {
        // A newer format than ours may mean things we cannot interpret: drop whole namespaces.
        let conservative = event.version > cache_core::FORMAT_VERSION;
        for name in &event.affected_namespaces {
            let Some(ns) = self.ns_by_key_namespace(name) else {
                continue;
            };
            if conservative || event.scope == Scope::Namespace {
                // Before L1 is dropped: a read after this apply must not use a remembered
                // generation from before the invalidation.
                self.l2.namespace_invalidated(name);
            }
            match (&event.scope, conservative) {
                (Scope::Resource, false) => self.change_l1(ns, |l1| {
                    l1.invalidate_tag(&event.resource_id);
                }),
                _ => self.change_l1(ns, |l1| {
                    l1.clear();
                }),
            }
        }
        if let Scope::Keys(keys) = &event.scope {
            for key in keys.iter().filter_map(|k| CacheKey::parse(k)) {
                let Some(ns) = self.ns_by_key_namespace(key.key_namespace()) else {
                    continue;
                };
                if conservative {
                    self.change_l1(ns, |l1| {
                        l1.clear();
                    });
                } else {
                    self.change_l1(ns, |l1| {
                        l1.remove(key.digest());
                    });
                }
            }
        }
    }

    /// Changes `ns`'s L1 (if it has one) under the namespace's gate, moving its epoch first, so
    /// that no back-fill which started before the change lands after it.
    pub(super) fn change_l1(&self, ns: &NsState, change: impl FnOnce(&dyn L1Store)) {
        let _gate = ns
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ns.epoch.fetch_add(1, SeqCst);
        if let Some(l1) = ns.l1.as_deref() {
            change(l1);
        }
    }
}
