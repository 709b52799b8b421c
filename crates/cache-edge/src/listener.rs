//! The background task that applies other nodes' events.

use std::sync::Arc;

use cache_core::{BusItem, Codec, Subscription};
use tokio::sync::watch;

use crate::cache::Inner;

/// Receives until the subscription ends or shutdown is signalled. Messages are handled one at a
/// time in arrival order. Handling awaits L2 only for events from seed nodes, which leave L2 to
/// their receivers.
pub(crate) async fn run<C: Codec>(
    inner: Arc<Inner<C>>,
    mut subscription: Box<dyn Subscription>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            () = inner.resubscribe_requested() => {
                if !subscription.resubscribe() {
                    tracing::warn!(node_id = %inner.node_id(), "the subscription looks deaf and its transport cannot resubscribe; the event log's liveness check keeps the node fresh meanwhile");
                }
            }
            item = subscription.next() => match item {
                Some(BusItem::Message(bytes)) => inner.receive(&bytes).await,
                Some(BusItem::State(state)) => inner.connection_changed(state),
                Some(_) => {}
                None => {
                    tracing::error!(node_id = %inner.node_id(), "event subscription ended; invalidations are no longer received");
                    break;
                }
            },
        }
    }
    inner.listener_stopped();
}
