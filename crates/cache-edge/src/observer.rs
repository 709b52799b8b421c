//! Observer hooks: how a caller watches what a node does, without patching it.

use std::time::Duration;

use cache_core::{ConnectionState, Error, Event};

/// Callbacks a node makes as it works. Every method defaults to doing nothing.
///
/// Contract for implementors: callbacks run inline on the node's tasks, so they must be quick
/// and must not block (record and return; hand heavy work to a channel).
pub trait Observer: Send + Sync {
    /// An event was applied to this node's L1: either one received from another node, or one
    /// this node issued (applied before it is published). `lag` is how long after the event's
    /// timestamp it was applied.
    ///
    /// An event this node issued whose L2 change failed (the call returned an error) is not
    /// reported: the node still drops what it names from its L1, but the invalidation is not in
    /// effect, and reads here may return what L2 still holds.
    fn on_event_applied(&self, event: &Event, lag: Duration) {
        let _ = (event, lag);
    }

    /// A message on the bus could not be decoded and was dropped.
    fn on_event_rejected(&self, error: &Error) {
        let _ = error;
    }

    /// The event transport changed state.
    fn on_connection_state(&self, state: ConnectionState) {
        let _ = state;
    }
}

/// The observer used when none is set: it does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
