//! Bus connection states: L1 of event-driven namespaces is dropped and bypassed while the
//! subscription is lost, and L2 is told whether this node hears every invalidation.

use std::sync::atomic::Ordering::SeqCst;

use cache_core::{Codec, ConnectionState};

use super::Inner;

impl<C: Codec> Inner<C> {
    /// Handles a change of the bus connection. Pub/sub loses what is published while a node is
    /// away, so L1 of event-driven namespaces is dropped on loss and again on resubscribe, and
    /// bypassed in between.
    pub(crate) fn connection_changed(&self, state: ConnectionState) {
        match state {
            ConnectionState::Connected => {
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
            }
            ConnectionState::Disconnected => {
                self.feed_complete(false);
                self.bus_down.store(true, SeqCst);
                self.drop_event_driven_l1();
                tracing::warn!(node_id = %self.node_id, "event bus disconnected; bypassing L1 of event-driven namespaces");
            }
            ConnectionState::Resubscribed => {
                self.drop_event_driven_l1();
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
                tracing::info!(node_id = %self.node_id, "event bus resubscribed; L1 of event-driven namespaces dropped");
            }
            _ => {}
        }
        self.observer.on_connection_state(state);
    }

    fn drop_event_driven_l1(&self) {
        for ns in self.namespaces.iter().filter(|ns| ns.config.event_driven) {
            self.change_l1(ns, |l1| {
                l1.clear();
            });
        }
        self.counters.resyncs.add(1);
    }

    pub(crate) fn listener_stopped(&self) {
        self.listener_running.store(false, SeqCst);
        self.feed_complete(false);
    }

    /// Tells L2 whether this node now hears every invalidation of its namespaces: only when
    /// the subscription is up and invalidations travel on this node's bus (L2 shares its route).
    fn feed_complete(&self, hears: bool) {
        let complete = hears && self.announce_via_l2 && self.listener_running.load(SeqCst);
        if self.feed_complete.swap(complete, SeqCst) != complete {
            let delta = if complete { 1 } else { -1 };
            self.l2.invalidation_feed(delta, -delta);
        }
    }

    /// Withdraws this node's report from L2's count (at shutdown).
    pub(super) fn leave_feed(&self) {
        if self.feed_complete.load(SeqCst) {
            self.l2.invalidation_feed(-1, 0);
        } else {
            self.l2.invalidation_feed(0, -1);
        }
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }
}
