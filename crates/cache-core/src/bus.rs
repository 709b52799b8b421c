//! The event bus trait: how invalidation events travel between nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;

/// The state of a node's subscription, as its transport reports it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Subscribed for the first time.
    Connected,
    /// The subscription is lost: events published now will not arrive.
    Disconnected,
    /// Subscribed again after a loss: whatever was published in between is gone.
    Resubscribed,
}

/// What a subscription yields.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusItem {
    /// One message as published (bytes, not yet decoded: a malformed one is the receiver's to
    /// count and drop).
    Message(Vec<u8>),
    /// A change of connection state.
    State(ConnectionState),
}

/// A stream of [`BusItem`]s for one subscriber.
#[async_trait]
pub trait Subscription: Send {
    /// The next item; `None` once the subscription has ended for good.
    ///
    /// # Cancel safety
    /// Implementations must be cancel safe: dropping the future loses no item.
    async fn next(&mut self) -> Option<BusItem>;

    /// How many items this subscription holds that [`Subscription::next`] has not returned yet,
    /// readable from anywhere while the subscription is read elsewhere (a node reports it in its
    /// health as the events waiting to be applied). Default: `None`, for a transport that keeps
    /// no queue of its own or cannot tell.
    fn queue_gauge(&self) -> Option<QueueGauge> {
        None
    }

    /// Asks the transport to drop this subscription's connection and make a new one, as if it
    /// had been lost: it then reports [`ConnectionState::Disconnected`] and, once subscribed
    /// again, [`ConnectionState::Resubscribed`]. A node calls it when the subscription looks
    /// deaf (the event log moved for a whole liveness interval and nothing arrived). Returns
    /// whether the transport will; default `false`, for one that cannot.
    fn resubscribe(&mut self) -> bool {
        false
    }
}

/// A count of items queued for a subscriber and not yet taken, shared between the side that
/// queues them and the [`Subscription`] that hands them out (see
/// [`Subscription::queue_gauge`]). Clones share the count.
///
/// ```
/// use cache_core::bus::QueueGauge;
///
/// let gauge = QueueGauge::default();
/// gauge.queued();
/// gauge.queued();
/// gauge.taken();
/// assert_eq!(gauge.clone().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct QueueGauge(Arc<AtomicU64>);

impl QueueGauge {
    /// Counts one item queued. Call it before handing the item over, so that the gauge never
    /// reads less than what is queued (a receiver may take the item at once).
    pub fn queued(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one item taken, or one counted by [`QueueGauge::queued`] that could not be handed
    /// over after all. Never goes below zero.
    pub fn taken(&self) {
        // A closure that always returns `Some` cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Passes on what a subscription's queue returned, counting it taken if it is an item: the
    /// body of a [`Subscription::next`] is `gauge.pass(queue.recv().await)`.
    pub fn pass(&self, item: Option<BusItem>) -> Option<BusItem> {
        if item.is_some() {
            self.taken();
        }
        item
    }

    /// Items queued and not taken.
    pub fn len(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Carries encoded events to every subscriber, the publisher's own subscription included.
///
/// # Errors
/// [`crate::ErrorKind::Bus`] when publishing or subscribing fails.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Sends `payload` to every current subscriber.
    async fn publish(&self, payload: Vec<u8>) -> Result<()>;

    /// Starts a subscription; it reports [`ConnectionState::Connected`] first.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>>;

    /// Identifies where publishes go: two buses with equal routes reach the same subscribers.
    /// See [`crate::L2Store::announce_route`]. Default: none.
    fn route(&self) -> Option<String> {
        None
    }
}

#[async_trait]
impl<T: EventBus + ?Sized> EventBus for Arc<T> {
    async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        (**self).publish(payload).await
    }
    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        (**self).subscribe().await
    }
    fn route(&self) -> Option<String> {
        (**self).route()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_gauge_counts_what_is_queued_and_never_goes_below_zero() {
        let gauge = QueueGauge::default();
        let shared = gauge.clone();
        assert!(gauge.is_empty());
        gauge.queued();
        gauge.queued();
        assert_eq!(shared.len(), 2, "clones share the count");
        let item = BusItem::Message(b"e".to_vec());
        assert_eq!(shared.pass(Some(item.clone())), Some(item));
        assert_eq!(gauge.len(), 1);
        assert_eq!(
            shared.pass(None),
            None,
            "an ended subscription takes nothing"
        );
        assert_eq!(gauge.len(), 1);
        gauge.taken();
        gauge.taken();
        assert_eq!(gauge.len(), 0, "an extra count-down is absorbed");
        gauge.queued();
        assert_eq!(gauge.len(), 1);
    }
}
