//! A bus that hands its node every message a fixed delay after it arrived, as a node in a
//! distant region hears the fleet: the writer's next change often reaches the others before
//! this node has applied the last one, which is where races between a write and an
//! invalidation show (the freshness audit found a lost write this way).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{BusItem, EventBus, QueueGauge, Result, Subscription};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// `inner`, with every message it delivers held back by `delay`. Publishing, connection states
/// and the route are the inner bus's, so the node takes the same paths as without the delay.
pub(super) struct LaggingBus {
    inner: Arc<dyn EventBus>,
    delay: Duration,
}

impl LaggingBus {
    pub(super) fn new(inner: Arc<dyn EventBus>, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

#[async_trait]
impl EventBus for LaggingBus {
    async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        self.inner.publish(payload).await
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        let mut inner = self.inner.subscribe().await?;
        let delay = self.delay;
        let (tx, rx) = mpsc::unbounded_channel();
        // The messages held back, for the node's health: the inner subscription hands each on
        // as soon as it arrives, so its own gauge would read 0 however far behind this is.
        let gauge = QueueGauge::default();
        let held = gauge.clone();
        // Stamps each item as it arrives, so items keep their order and spacing; the task ends
        // with the inner subscription or when the node drops its own.
        tokio::spawn(async move {
            while let Some(item) = inner.next().await {
                let due = match item {
                    BusItem::Message(_) => {
                        held.queued();
                        Instant::now() + delay
                    }
                    // Connection states are not traffic: the node learns of a loss at once.
                    _ => Instant::now(),
                };
                if tx.send((due, item)).is_err() {
                    break;
                }
            }
        });
        Ok(Box::new(Lagging {
            items: rx,
            next: None,
            gauge,
        }))
    }

    fn route(&self) -> Option<String> {
        self.inner.route()
    }
}

/// The subscription of a [`LaggingBus`]. The item being waited for is kept in `next`, so
/// dropping a call of [`Subscription::next`] loses nothing.
struct Lagging {
    items: mpsc::UnboundedReceiver<(Instant, BusItem)>,
    next: Option<(Instant, BusItem)>,
    /// Messages received and not handed on yet.
    gauge: QueueGauge,
}

#[async_trait]
impl Subscription for Lagging {
    async fn next(&mut self) -> Option<BusItem> {
        if self.next.is_none() {
            self.next = Some(self.items.recv().await?);
        }
        let due = self.next.as_ref().map(|(due, _)| *due)?;
        tokio::time::sleep_until(due).await;
        let item = self.next.take().map(|(_, item)| item);
        if let Some(BusItem::Message(_)) = &item {
            self.gauge.taken();
        }
        item
    }

    fn queue_gauge(&self) -> Option<QueueGauge> {
        Some(self.gauge.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_memory::MemoryBus;

    #[tokio::test(start_paused = true)]
    async fn messages_arrive_the_delay_late_and_in_order() {
        let shared: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
        let lagging = LaggingBus::new(Arc::clone(&shared), Duration::from_millis(3));
        let mut subscription = lagging.subscribe().await.unwrap();
        let gauge = subscription.queue_gauge().unwrap();
        let start = Instant::now();
        lagging.publish(b"one".to_vec()).await.unwrap();
        shared.publish(b"two".to_vec()).await.unwrap();
        let mut got = Vec::new();
        let mut waiting = Vec::new();
        while got.len() < 2 {
            if let BusItem::Message(payload) = subscription.next().await.unwrap() {
                got.push((payload, start.elapsed()));
                waiting.push(gauge.len());
            }
        }
        // Both arrived at once; each handed on 3 ms later: one held back, then none.
        assert_eq!(waiting, vec![1, 0]);
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), Duration::from_millis(3)),
                (b"two".to_vec(), Duration::from_millis(3)),
            ]
        );
    }
}
