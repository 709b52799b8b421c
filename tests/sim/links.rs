//! Each node's links to the shared L2 and bus: thin wrappers over the one [`MemoryL2`] and
//! [`MemoryBus`] that add what a real network does to one node and not the others: latency
//! before and after each L2 command, a cut link (commands fail), lost replies (the command ran,
//! the node sees an error), and a deaf subscription (messages vanish, the connection looks up).

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;

use async_trait::async_trait;
use cache_core::log::LogRead;
use cache_core::{
    BusItem, CacheKey, Error, ErrorKind, EventBus, Fence, L2Entry, L2Info, L2Store, L2Write, Lease,
    LeaseWait, Result, Subscription,
};
use cache_memory::{MemoryBus, MemoryL2};

use super::rng::{Rng, SharedRng};
use super::world::World;

/// The most latency, in milliseconds, before a command reaches L2 and after it ran (its reply
/// on the way back).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) before_ms: u64,
    pub(crate) after_ms: u64,
}

/// The faults of one node's links, switched by the fault injector.
#[derive(Debug)]
pub(crate) struct NodeLink {
    /// Messages reaching the node's subscription are dropped (the connection looks fine).
    pub(crate) deaf: AtomicBool,
    /// Every L2 command fails; one in flight loses its reply.
    pub(crate) cut: AtomicBool,
    /// The next this many commands run in L2 but the node gets an error back.
    lost_replies: AtomicU64,
    latency: Option<Latency>,
    rng: SharedRng,
    /// Messages a deaf subscription dropped.
    pub(crate) deafened: AtomicU64,
    /// Replies lost (by `lost_replies` or a cut in flight).
    pub(crate) replies_lost: AtomicU64,
    /// Resubscribes the node asked for (it found its subscription deaf).
    pub(crate) resubscribes: AtomicU64,
}

impl NodeLink {
    pub(crate) fn new(latency: Option<Latency>, rng: Rng) -> Self {
        Self {
            deaf: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            lost_replies: AtomicU64::new(0),
            latency,
            rng: SharedRng::new(rng),
            deafened: AtomicU64::new(0),
            replies_lost: AtomicU64::new(0),
            resubscribes: AtomicU64::new(0),
        }
    }

    pub(crate) fn lose_replies(&self, n: u64) {
        self.lost_replies.fetch_add(n, SeqCst);
    }

    /// Ends every fault of this link.
    pub(crate) fn heal(&self) {
        self.deaf.store(false, SeqCst);
        self.cut.store(false, SeqCst);
        self.lost_replies.store(0, SeqCst);
    }

    async fn delay(&self, most_ms: impl Fn(&Latency) -> u64) {
        let Some(latency) = &self.latency else {
            return;
        };
        let ms = self.rng.with(|rng| rng.range(0..=most_ms(latency)));
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    /// The way to L2: latency, then the command fails if the link is cut.
    async fn send(&self) -> Result<()> {
        self.delay(|l| l.before_ms).await;
        if self.cut.load(SeqCst) {
            return Err(Error::new(
                ErrorKind::L2,
                "sim: the node's link to L2 is cut",
            ));
        }
        Ok(())
    }

    /// The way back: latency, then the reply is lost if the link was cut meanwhile or a lost
    /// reply is armed.
    async fn reply<T>(&self, out: Result<T>) -> Result<T> {
        self.delay(|l| l.after_ms).await;
        let armed = self
            .lost_replies
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed || self.cut.load(SeqCst) {
            self.replies_lost.fetch_add(1, Relaxed);
            return Err(Error::new(
                ErrorKind::L2,
                "sim: the command ran but its reply was lost",
            ));
        }
        out
    }
}

/// A node's L2: the shared [`MemoryL2`] through the node's [`NodeLink`]. It also hands back the
/// writers' turns the moment a change is applied ([`super::world::Turns`]).
pub(crate) struct NodeL2 {
    pub(crate) store: Arc<MemoryL2>,
    pub(crate) link: Arc<NodeLink>,
    pub(crate) world: Arc<World>,
    /// Reports no event log (a planted bug: the node follows none).
    pub(crate) unsequenced: bool,
}

#[async_trait]
impl L2Store for NodeL2 {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        self.link.send().await?;
        let out = self.store.get(key).await;
        self.link.reply(out).await
    }

    async fn set(&self, write: L2Write) -> Result<bool> {
        self.link.send().await?;
        // A fill (fenced) is not a writer's change and holds no turn.
        let slot = write.fence.is_none().then(|| write.key.as_str().to_owned());
        let out = self.store.set(write).await;
        if let Some(slot) = slot {
            self.world
                .trace(|| format!("L2: write landed {out:?} (reply on its way)"));
            self.world.turns.landed(&slot);
        }
        self.link.reply(out).await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.link.send().await?;
        let out = self.store.delete(key).await;
        self.world.turns.landed(key.as_str());
        self.link.reply(out).await
    }

    async fn delete_many(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        self.link.send().await?;
        let out = self.store.delete_many(keys, announce).await;
        for key in keys {
            self.world.turns.landed(key.as_str());
        }
        self.link.reply(out).await
    }

    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.link.send().await?;
        let out = self.store.invalidate_namespace(key_namespace).await;
        self.world.turns.landed(key_namespace);
        self.link.reply(out).await
    }

    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> Result<()> {
        self.link.send().await?;
        let out = self
            .store
            .invalidate_namespaces(key_namespaces, announce)
            .await;
        for key_namespace in key_namespaces {
            self.world.turns.landed(key_namespace);
        }
        self.link.reply(out).await
    }

    async fn delete_and_announce(&self, key: &CacheKey, announce: Vec<u8>) -> Result<bool> {
        self.link.send().await?;
        let out = self.store.delete_and_announce(key, announce).await;
        self.world.turns.landed(key.as_str());
        self.link.reply(out).await
    }

    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> Result<u64> {
        self.link.send().await?;
        let out = self
            .store
            .invalidate_tag_and_announce(key_namespace, tag, announce)
            .await;
        self.link.reply(out).await
    }

    fn namespace_invalidated(&self, key_namespace: &str) {
        self.store.namespace_invalidated(key_namespace);
    }

    fn invalidation_feed(&self, complete: i64, incomplete: i64) {
        self.store.invalidation_feed(complete, incomplete);
    }

    fn announce_route(&self) -> Option<String> {
        self.store.announce_route()
    }

    fn sequenced(&self) -> bool {
        !self.unsequenced && self.store.sequenced()
    }

    fn server_epoch(&self) -> u64 {
        self.store.server_epoch()
    }

    async fn check_server(&self) -> Result<()> {
        self.link.send().await?;
        let out = self.store.check_server().await;
        self.link.reply(out).await
    }

    async fn read_log(&self, key_namespace: &str, after: u64, limit: usize) -> Result<LogRead> {
        self.link.send().await?;
        let out = self.store.read_log(key_namespace, after, limit).await;
        self.link.reply(out).await
    }

    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.link.send().await?;
        let out = self.store.invalidate_tag(key_namespace, tag).await;
        self.link.reply(out).await
    }

    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        self.link.send().await?;
        let out = self.store.fence(key).await;
        self.link.reply(out).await
    }

    async fn lease(&self, key: &CacheKey, token: &str, hold: std::time::Duration) -> Result<Lease> {
        self.link.send().await?;
        let out = self.store.lease(key, token, hold).await;
        self.link.reply(out).await
    }

    async fn wait_lease(&self, key: &CacheKey, wait: &LeaseWait) -> Result<bool> {
        self.link.send().await?;
        let out = self.store.wait_lease(key, wait).await;
        self.link.reply(out).await
    }

    async fn release_lease(&self, key: &CacheKey, token: &str) -> Result<()> {
        self.link.send().await?;
        let out = self.store.release_lease(key, token).await;
        self.link.reply(out).await
    }

    async fn ping(&self) -> Result<()> {
        self.link.send().await?;
        let out = self.store.ping().await;
        self.link.reply(out).await
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<L2Entry>>> {
        self.link.send().await?;
        let out = self.store.get_many(keys).await;
        self.link.reply(out).await
    }

    async fn info(&self) -> Result<L2Info> {
        self.store.info().await
    }
}

/// A node's bus: the shared [`MemoryBus`], whose subscription goes deaf on the node's
/// [`NodeLink`]. `route` overrides the bus's route (the planted bug of a node that does not
/// follow the logs: its bus no longer matches L2's announce route, so it is not sequenced).
pub(crate) struct NodeBus {
    pub(crate) bus: Arc<MemoryBus>,
    pub(crate) link: Arc<NodeLink>,
    pub(crate) route: Option<String>,
}

#[async_trait]
impl EventBus for NodeBus {
    async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        self.bus.publish(payload).await
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        let inner = self.bus.subscribe().await?;
        Ok(Box::new(NodeSubscription {
            inner,
            link: Arc::clone(&self.link),
        }))
    }

    fn route(&self) -> Option<String> {
        self.route.clone().or_else(|| self.bus.route())
    }
}

struct NodeSubscription {
    inner: Box<dyn Subscription>,
    link: Arc<NodeLink>,
}

#[async_trait]
impl Subscription for NodeSubscription {
    /// # Cancel safety
    /// As the inner subscription's: an item is either dropped on purpose or returned in the
    /// same poll that took it.
    async fn next(&mut self) -> Option<BusItem> {
        loop {
            let item = self.inner.next().await?;
            if matches!(item, BusItem::Message(_)) && self.link.deaf.load(SeqCst) {
                self.link.deafened.fetch_add(1, Relaxed);
                continue;
            }
            return Some(item);
        }
    }

    fn queue_gauge(&self) -> Option<cache_core::QueueGauge> {
        self.inner.queue_gauge()
    }

    /// A new connection cures a deaf one; it cannot get through a partition (the link to L2
    /// cut too), so the node is told the transport cannot resubscribe.
    fn resubscribe(&mut self) -> bool {
        if self.link.cut.load(SeqCst) {
            return false;
        }
        let resubscribed = self.inner.resubscribe();
        if resubscribed {
            self.link.deaf.store(false, SeqCst);
            self.link.resubscribes.fetch_add(1, Relaxed);
        }
        resubscribed
    }
}
