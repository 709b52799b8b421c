//! The event bus trait: how invalidation events travel between nodes.

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
