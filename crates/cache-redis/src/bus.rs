//! [`RedisBus`]: invalidation events on Redis pub/sub.

use std::sync::Arc;

use async_trait::async_trait;
use cache_core::{
    BusItem, ConnectionState, Error, ErrorKind, EventBus, QueueGauge, Result, Subscription,
};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::{mpsc, Notify};

use crate::config::{redact, RedisConfig};

/// The event bus on Redis pub/sub.
///
/// Publishing goes through one shared auto-reconnecting connection. Each subscription has a
/// dedicated connection and a task that reconnects and resubscribes with exponential backoff
/// whenever the connection is lost, reporting [`ConnectionState::Disconnected`] and then
/// [`ConnectionState::Resubscribed`]: pub/sub does not replay what was published in between, and
/// the node must know.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    config: Arc<RedisConfig>,
}

impl RedisBus {
    /// Connects the publisher (subscriptions connect when made).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a URL that does not parse; [`ErrorKind::Bus`] when Redis
    /// cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<RedisBus> {
        let client = config.client()?;
        let publisher = config.connection_manager(&client, ErrorKind::Bus).await?;
        Ok(RedisBus {
            client,
            publisher,
            config: Arc::new(config.clone()),
        })
    }

    /// The channel events travel on.
    pub fn channel(&self) -> &str {
        self.config.channel_name()
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("url", &redact(self.config.url()))
            .field("channel", &self.config.channel_name())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        let mut conn = self.publisher.clone();
        let _receivers: i64 = conn
            .publish(self.config.channel_name(), payload)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Bus,
                    format!("PUBLISH to {} failed: {e}", self.config.channel_name()),
                )
                .with_source(e)
            })?;
        Ok(())
    }

    fn route(&self) -> Option<String> {
        Some(self.config.route(&self.client))
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        // The first subscription is made here so a node that cannot subscribe fails to start,
        // with the reason, instead of starting deaf.
        let first = subscribe_once(&self.client, &self.config)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Bus,
                    format!("cannot subscribe to {}: {e}", self.config.channel_name()),
                )
                .with_source(e)
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Feed {
            tx,
            gauge: QueueGauge::default(),
        };
        let gauge = feed.gauge.clone();
        let _ = feed.send(BusItem::State(ConnectionState::Connected));
        let restart = Arc::new(Notify::new());
        tokio::spawn(run(
            self.client.clone(),
            Arc::clone(&self.config),
            first,
            feed,
            Arc::clone(&restart),
        ));
        Ok(Box::new(RedisSubscription { rx, gauge, restart }))
    }
}

struct RedisSubscription {
    rx: mpsc::UnboundedReceiver<BusItem>,
    gauge: QueueGauge,
    /// Tells the forwarding task to drop its connection and subscribe again.
    restart: Arc<Notify>,
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<BusItem> {
        self.gauge.pass(self.rx.recv().await)
    }

    fn queue_gauge(&self) -> Option<QueueGauge> {
        Some(self.gauge.clone())
    }

    /// The forwarding task drops its connection (reporting `Disconnected`) and subscribes again
    /// after the shortest backoff (then `Resubscribed`).
    fn resubscribe(&mut self) -> bool {
        self.restart.notify_one();
        true
    }
}

/// The forwarding task's end of a subscription: its channel, and the count of what it queued
/// that the subscriber has not taken yet.
struct Feed {
    tx: mpsc::UnboundedSender<BusItem>,
    gauge: QueueGauge,
}

impl Feed {
    /// Queues `item`; an error once the subscriber is gone.
    fn send(&self, item: BusItem) -> std::result::Result<(), ()> {
        self.gauge.queued();
        self.tx.send(item).map_err(|_| self.gauge.taken())
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

async fn subscribe_once(
    client: &redis::Client,
    config: &RedisConfig,
) -> redis::RedisResult<redis::aio::PubSub> {
    let connect = client.get_async_pubsub();
    let mut pubsub = tokio::time::timeout(config.connect(), connect)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connection timed out")))??;
    pubsub.subscribe(config.channel_name()).await?;
    Ok(pubsub)
}

/// Forwards messages until the connection is lost, then reconnects with backoff; ends when the
/// subscriber is dropped.
async fn run(
    client: redis::Client,
    config: Arc<RedisConfig>,
    first: redis::aio::PubSub,
    tx: Feed,
    restart: Arc<Notify>,
) {
    let mut pubsub = Some(first);
    let (min, max) = config.backoff();
    let mut delay = min;
    loop {
        if let Some(connected) = pubsub.take() {
            delay = min;
            forward(connected, &config, &tx, &restart).await;
            if tx.is_closed() {
                return;
            }
            tracing::warn!(
                channel = config.channel_name(),
                "lost the Redis subscription; reconnecting"
            );
            if tx
                .send(BusItem::State(ConnectionState::Disconnected))
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        match subscribe_once(&client, &config).await {
            Ok(connected) => {
                tracing::info!(channel = config.channel_name(), "resubscribed to Redis");
                if tx
                    .send(BusItem::State(ConnectionState::Resubscribed))
                    .is_err()
                {
                    return;
                }
                pubsub = Some(connected);
            }
            Err(e) => {
                tracing::debug!(error = %e, ?delay, "resubscribe failed");
                delay = (delay * 2).min(max);
            }
        }
    }
}

/// Forwards one connection's messages; returns when it is lost or the subscriber is gone.
async fn forward(pubsub: redis::aio::PubSub, config: &RedisConfig, tx: &Feed, restart: &Notify) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(config.ping_every());
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = restart.notified() => {
                tracing::warn!(channel = config.channel_name(), "subscription looks deaf; subscribing again");
                return;
            }
            message = stream.next() => match message {
                Some(message) => {
                    if tx.send(BusItem::Message(message.get_payload_bytes().to_vec())).is_err() {
                        return;
                    }
                }
                None => return,
            },
            _ = ping.tick() => {
                // A connection can die without closing (a host gone, a network cut): a ping
                // that does not come back in time ends it.
                let alive = tokio::time::timeout(config.response(), sink.ping::<redis::Value>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
