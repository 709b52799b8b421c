//! [`RedisBus`]: invalidation events on Redis pub/sub.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cache_core::{
    BusItem, ConnectionState, Error, ErrorKind, EventBus, QueueGauge, Result, Subscription,
};
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::{mpsc, Notify};

use crate::config::{redact, RedisConfig};
use crate::topology::{Conn, Connector};

/// The event bus on Redis pub/sub.
///
/// Publishing goes through one shared auto-reconnecting connection. Each subscription has a
/// dedicated connection and a task that reconnects and resubscribes with exponential backoff
/// whenever the connection is lost, reporting [`ConnectionState::Disconnected`] and then
/// [`ConnectionState::Resubscribed`]: pub/sub does not replay what was published in between, and
/// the node must know.
#[derive(Clone)]
pub struct RedisBus {
    /// Resolves the server to subscribe to (under Sentinel, the current primary).
    connector: Arc<Connector>,
    publisher: Arc<Conn>,
    config: Arc<RedisConfig>,
}

impl RedisBus {
    /// Connects the publisher (subscriptions connect when made).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a URL that does not parse; [`ErrorKind::Bus`] when Redis
    /// cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<RedisBus> {
        let connector = Arc::new(Connector::new(config)?);
        let publisher = Conn::connect(config, Arc::clone(&connector), ErrorKind::Bus).await?;
        Ok(RedisBus {
            connector,
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
        let mut conn = self.publisher.get();
        let _receivers: i64 = conn
            .publish(self.config.channel_name(), payload)
            .await
            .map_err(|e| {
                self.publisher.suspect();
                Error::new(
                    ErrorKind::Bus,
                    format!("PUBLISH to {} failed: {e}", self.config.channel_name()),
                )
                .with_source(e)
            })?;
        Ok(())
    }

    fn route(&self) -> Option<String> {
        Some(self.connector.route(&self.config))
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        // The first subscription is made here so a node that cannot subscribe fails to start,
        // with the reason, instead of starting deaf.
        let first = subscribe_once(&self.connector, &self.config).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(0));
        let feed = Feed {
            tx,
            gauge: QueueGauge::default(),
            bytes: Arc::clone(&bytes),
            max_bytes: self.config.queue_bytes(),
            overflowing: false,
        };
        let gauge = feed.gauge.clone();
        let _ = feed.send(BusItem::State(ConnectionState::Connected));
        let restart = Arc::new(Notify::new());
        tokio::spawn(run(
            Arc::clone(&self.connector),
            Arc::clone(&self.config),
            first,
            feed,
            Arc::clone(&restart),
        ));
        Ok(Box::new(RedisSubscription {
            rx,
            gauge,
            restart,
            bytes,
        }))
    }
}

struct RedisSubscription {
    rx: mpsc::UnboundedReceiver<BusItem>,
    gauge: QueueGauge,
    /// Tells the forwarding task to drop its connection and subscribe again.
    restart: Arc<Notify>,
    /// Bytes of messages queued and not taken.
    bytes: Arc<AtomicUsize>,
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<BusItem> {
        let item = self.gauge.pass(self.rx.recv().await);
        if let Some(BusItem::Message(message)) = &item {
            self.bytes.fetch_sub(message.len(), Ordering::Relaxed);
        }
        item
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

/// The forwarding task's end of a subscription: its channel, the count of what it queued that
/// the subscriber has not taken yet, and the bound on the bytes of that.
struct Feed {
    tx: mpsc::UnboundedSender<BusItem>,
    gauge: QueueGauge,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Messages are being dropped: the subscriber was told `Disconnected` and has not been
    /// told `Resubscribed` yet.
    overflowing: bool,
}

impl Feed {
    /// Queues `item`; an error once the subscriber is gone.
    fn send(&self, item: BusItem) -> std::result::Result<(), ()> {
        self.gauge.queued();
        self.tx.send(item).map_err(|_| self.gauge.taken())
    }

    /// Queues a message within the byte bound. Over it, the message is dropped and the
    /// subscriber is told the connection was lost; once half the room is free again, that it
    /// was resubscribed (so it catches up on what it missed). A message over the largest event
    /// is cut to one byte more than that: the node refuses it as oversized without this queue
    /// holding its bulk.
    fn send_message(&mut self, payload: &[u8]) -> std::result::Result<(), ()> {
        let message = payload[..payload.len().min(cache_core::MAX_EVENT_BYTES + 1)].to_vec();
        self.catch_up_if_room()?;
        if self.overflowing {
            return Ok(());
        }
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued + message.len() > self.max_bytes {
            self.overflowing = true;
            tracing::warn!(
                queued,
                max = self.max_bytes,
                "the subscription's queue is full: dropping messages until the node catches up"
            );
            return self.send(BusItem::State(ConnectionState::Disconnected));
        }
        self.bytes.fetch_add(message.len(), Ordering::Relaxed);
        self.send(BusItem::Message(message))
    }

    /// Ends an overflow once half the room is free: the subscriber hears `Resubscribed` and
    /// catches up on what was dropped.
    fn catch_up_if_room(&mut self) -> std::result::Result<(), ()> {
        if !self.overflowing {
            return Ok(());
        }
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued > self.max_bytes / 2 {
            return Ok(());
        }
        self.overflowing = false;
        tracing::warn!(
            queued,
            "the subscription's queue has room again; catching up"
        );
        self.send(BusItem::State(ConnectionState::Resubscribed))
    }

    /// Reports a connection state from the forwarding task, unless an overflow already told
    /// the subscriber it is disconnected (its own `Resubscribed` comes when there is room).
    fn state(&self, state: ConnectionState) -> std::result::Result<(), ()> {
        if self.overflowing {
            return if self.tx.is_closed() { Err(()) } else { Ok(()) };
        }
        self.send(BusItem::State(state))
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

async fn subscribe_once(connector: &Connector, config: &RedisConfig) -> Result<redis::aio::PubSub> {
    let fail = |e: redis::RedisError| {
        Error::new(
            ErrorKind::Bus,
            format!("cannot subscribe to {}: {e}", config.channel_name()),
        )
        .with_source(e)
    };
    let (client, _) = connector.resolve(ErrorKind::Bus).await?;
    let connect = client.get_async_pubsub();
    let mut pubsub = tokio::time::timeout(config.connect(), connect)
        .await
        .map_err(|_| {
            fail(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connection timed out",
            )))
        })?
        .map_err(fail)?;
    pubsub
        .subscribe(config.channel_name())
        .await
        .map_err(fail)?;
    Ok(pubsub)
}

/// Forwards messages until the connection is lost, then reconnects with backoff; ends when the
/// subscriber is dropped.
async fn run(
    connector: Arc<Connector>,
    config: Arc<RedisConfig>,
    first: redis::aio::PubSub,
    mut tx: Feed,
    restart: Arc<Notify>,
) {
    let mut pubsub = Some(first);
    let (min, max) = config.backoff();
    let mut delay = min;
    loop {
        if let Some(connected) = pubsub.take() {
            delay = min;
            forward(connected, &config, &mut tx, &restart).await;
            if tx.is_closed() {
                return;
            }
            tracing::warn!(
                channel = config.channel_name(),
                "lost the Redis subscription; reconnecting"
            );
            if tx.state(ConnectionState::Disconnected).is_err() {
                return;
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        match subscribe_once(&connector, &config).await {
            Ok(connected) => {
                tracing::info!(channel = config.channel_name(), "resubscribed to Redis");
                if tx.state(ConnectionState::Resubscribed).is_err() {
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
async fn forward(
    pubsub: redis::aio::PubSub,
    config: &RedisConfig,
    tx: &mut Feed,
    restart: &Notify,
) {
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
                    if tx.send_message(message.get_payload_bytes()).is_err() {
                        return;
                    }
                }
                None => return,
            },
            _ = ping.tick() => {
                // A flood that stopped sends no message to notice the room it left.
                if tx.catch_up_if_room().is_err() {
                    return;
                }
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
