//! Bus connection states: L1 of event-driven namespaces is dropped and bypassed while the
//! subscription is lost, and L2 is told whether this node hears every invalidation.

use std::sync::atomic::Ordering::SeqCst;

use cache_core::{Codec, ConnectionState};

use super::{lock, Inner};

impl<C: Codec> Inner<C> {
    /// Handles a change of the bus connection. Pub/sub loses what is published while a node is
    /// away. A sequenced node keeps its L1 (bypassed, for `Bypass` namespaces, while the
    /// subscription is down) and, once resubscribed, replays exactly what it missed from the
    /// log before using L1 again. Without a log, L1 of event-driven namespaces is dropped on
    /// loss and again on resubscribe, and bypassed in between.
    pub(crate) fn connection_changed(&self, state: ConnectionState) {
        let freshness = &self.freshness;
        let transition = lock(&freshness.transitions);
        match state {
            ConnectionState::Connected => {
                freshness.subscribed.store(true, SeqCst);
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
            }
            ConnectionState::Disconnected => {
                freshness.subscribed.store(false, SeqCst);
                self.feed_complete(false);
                self.bus_down.store(true, SeqCst);
                if self.sequenced {
                    tracing::warn!(node_id = %self.node_id, "event bus disconnected; L1 of event-driven namespaces kept, and bypassed where their policy says so, until the log is replayed");
                } else {
                    self.drop_event_driven_l1();
                    tracing::warn!(node_id = %self.node_id, "event bus disconnected; bypassing L1 of event-driven namespaces");
                }
            }
            ConnectionState::Resubscribed if self.sequenced => {
                freshness.subscribed.store(true, SeqCst);
                freshness.resubscribes.fetch_add(1, SeqCst);
                drop(transition);
                freshness.wake.notify_one();
                tracing::info!(node_id = %self.node_id, "event bus resubscribed; replaying what was missed from the log");
                self.observer.on_connection_state(state);
                return;
            }
            ConnectionState::Resubscribed => {
                freshness.subscribed.store(true, SeqCst);
                self.drop_event_driven_l1();
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
                tracing::info!(node_id = %self.node_id, "event bus resubscribed; L1 of event-driven namespaces dropped");
            }
            _ => {}
        }
        drop(transition);
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
    pub(super) fn feed_complete(&self, hears: bool) {
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
