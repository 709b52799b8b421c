//! [`MemoryBus`]: an in-process event bus with deterministic fault controls.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use cache_core::{
    BusItem, ConnectionState, Error, ErrorKind, EventBus, QueueGauge, Result, Subscription,
};
use tokio::sync::mpsc::{
    unbounded_channel, UnboundedReceiver, UnboundedSender, WeakUnboundedSender,
};

/// Delivers every published payload to every subscriber in the process, in publish order, like
/// Redis pub/sub on a single channel (the publisher's own subscription included).
///
/// Each subscriber has its own queue, so a slow subscriber never holds up a publisher or the
/// other subscribers. A queue holds at most [`MemoryBus::with_max_queued_bytes`] bytes of
/// messages (default [`DEFAULT_MAX_QUEUED_BYTES`]), as a Redis subscription does: past that,
/// messages for that subscriber are dropped and it is told
/// [`ConnectionState::Disconnected`], then [`ConnectionState::Resubscribed`] once it has taken
/// half of what it held, so a node replays what it missed from its event log and memory stays
/// bounded however fast anyone publishes. Subscriptions whose receiving side was dropped are
/// pruned on the next publish.
///
/// # Fault controls
///
/// Tests steer delivery with the methods below; each takes effect for publishes that start after
/// it returns. State sits behind one `std::sync::Mutex`, never held across an `.await`.
///
/// - [`MemoryBus::drop_next`]: lose the next publishes.
/// - [`MemoryBus::duplicate_next`]: deliver the next publishes twice.
/// - [`MemoryBus::hold`], [`MemoryBus::release`], [`MemoryBus::release_reversed`]: delay, then
///   deliver in order or reordered.
/// - [`MemoryBus::disconnect`], [`MemoryBus::reconnect`]: lose the subscriptions for a while.
/// - [`MemoryBus::fail_publishes`]: make publishing fail.
///
/// They apply alike to publishes made with [`EventBus::publish`] and to those a
/// [`crate::MemoryL2`] makes on this bus (see [`crate::MemoryL2::announce_on`]).
///
/// # Route
///
/// [`EventBus::route`] is `memory-bus:<n>`, with `n` unique to this instance in the process: a
/// [`crate::MemoryL2`] that announces on this bus reports the same route, so a node whose L2
/// and bus are those two announces its changes through L2.
///
/// ```
/// use cache_core::{BusItem, ConnectionState, EventBus};
/// use cache_memory::MemoryBus;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_core::Result<()> {
/// let bus = MemoryBus::new();
/// let mut sub = bus.subscribe().await?;
/// assert_eq!(sub.next().await, Some(BusItem::State(ConnectionState::Connected)));
/// bus.publish(b"hello".to_vec()).await?;
/// assert_eq!(sub.next().await, Some(BusItem::Message(b"hello".to_vec())));
/// # Ok(())
/// # }
/// ```
pub struct MemoryBus {
    /// Unique among the buses of this process: what [`EventBus::route`] names.
    id: u64,
    state: Mutex<BusState>,
    /// Bytes of messages a subscription holds at most.
    max_queued_bytes: usize,
}

/// The default bound on the bytes of messages one subscription holds: 8 MiB, as a Redis
/// subscription's (`cache_redis::DEFAULT_MAX_QUEUED_BYTES`).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 << 20;

impl Default for MemoryBus {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::default(),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}

#[derive(Default)]
struct BusState {
    subscribers: Vec<Subscriber>,
    /// Publishes still to be lost.
    drop_next: u64,
    /// Publishes still to be delivered twice.
    duplicate_next: u64,
    /// Whether publishes are queued in `held` rather than delivered.
    holding: bool,
    /// Held payloads, in publish order, with how many copies of each to deliver.
    held: Vec<(Vec<u8>, u32)>,
    fail_publishes: bool,
    published: u64,
}

struct Subscriber {
    tx: UnboundedSender<BusItem>,
    connected: bool,
    gauge: QueueGauge,
    /// What its queue holds and whether it is dropping messages (shared with the
    /// subscription, which counts down and ends the overflow).
    queue: Arc<QueueBytes>,
}

/// The bytes of messages a subscription holds, against its bound.
struct QueueBytes {
    held: AtomicUsize,
    max: usize,
    /// [`FLOWING`], [`OVERFLOWING`] or [`TOLD`].
    state: AtomicU8,
}

/// Messages are queued.
const FLOWING: u8 = 0;
/// Messages are dropped; `Disconnected` is queued behind what the subscriber holds.
const OVERFLOWING: u8 = 1;
/// Messages are dropped, and the subscriber has taken `Disconnected`: it hears
/// `Resubscribed` once it has taken half of what it held.
const TOLD: u8 = 2;

impl Subscriber {
    /// Queues a message, or drops it while the queue is over its bound (telling the subscriber
    /// it was disconnected when the overflow starts); false once the subscription is gone.
    fn send_message(&self, payload: &[u8]) -> bool {
        let queue = &self.queue;
        if queue.state.load(Ordering::SeqCst) != FLOWING {
            return !self.tx.is_closed();
        }
        if queue.held.load(Ordering::SeqCst) + payload.len() > queue.max {
            queue.state.store(OVERFLOWING, Ordering::SeqCst);
            return self.send(BusItem::State(ConnectionState::Disconnected));
        }
        queue.held.fetch_add(payload.len(), Ordering::SeqCst);
        let sent = self.send(BusItem::Message(payload.to_vec()));
        if !sent {
            queue.held.fetch_sub(payload.len(), Ordering::SeqCst);
        }
        sent
    }

    /// Queues `item`; false once the subscription is gone.
    fn send(&self, item: BusItem) -> bool {
        self.gauge.queued();
        let sent = self.tx.send(item).is_ok();
        if !sent {
            self.gauge.taken();
        }
        sent
    }
}

impl BusState {
    /// Sends `copies` copies of `payload` to every connected subscriber, pruning closed ones.
    fn deliver(&mut self, payload: &[u8], copies: u32) {
        self.subscribers.retain(|sub| {
            if !sub.connected {
                // Like Redis pub/sub: what is published while a subscriber is away is lost.
                return !sub.tx.is_closed();
            }
            (0..copies).all(|_| sub.send_message(payload))
        });
    }

    /// Moves every subscriber whose connection flag differs from `connected` to `connected`
    /// and tells it so with `item`; pruning closed ones on the way.
    fn set_connected(&mut self, connected: bool, item: ConnectionState) {
        self.subscribers.retain_mut(|sub| {
            if sub.connected == connected {
                return !sub.tx.is_closed();
            }
            sub.connected = connected;
            sub.send(BusItem::State(item))
        });
    }

    fn release(&mut self, reversed: bool) {
        self.holding = false;
        let mut held = std::mem::take(&mut self.held);
        if reversed {
            held.reverse();
        }
        for (payload, copies) in held {
            self.deliver(&payload, copies);
        }
    }
}

impl MemoryBus {
    /// A bus with no subscribers and no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus whose subscriptions each hold at most `bytes` bytes of messages (at least the
    /// largest event, [`cache_core::MAX_EVENT_BYTES`]); see the type's docs.
    pub fn with_max_queued_bytes(bytes: usize) -> Self {
        Self {
            max_queued_bytes: bytes.max(cache_core::MAX_EVENT_BYTES),
            ..Self::default()
        }
    }

    /// The process-wide bus, created on first use: the embedded default shared by every cache in
    /// the process when no external bus is configured.
    pub fn global() -> Arc<MemoryBus> {
        static GLOBAL: OnceLock<Arc<MemoryBus>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(|| Arc::new(MemoryBus::new())))
    }

    /// The next `n` publishes succeed but are delivered to nobody (adds to any count already
    /// armed).
    pub fn drop_next(&self, n: u64) {
        let mut state = self.lock();
        state.drop_next = state.drop_next.saturating_add(n);
    }

    /// Each of the next `n` publishes is delivered twice in a row to every subscriber (adds to
    /// any count already armed). A publish armed to be dropped is dropped, not duplicated.
    pub fn duplicate_next(&self, n: u64) {
        let mut state = self.lock();
        state.duplicate_next = state.duplicate_next.saturating_add(n);
    }

    /// Queues publishes instead of delivering them, simulating delay, until
    /// [`MemoryBus::release`] or [`MemoryBus::release_reversed`].
    pub fn hold(&self) {
        self.lock().holding = true;
    }

    /// Stops holding and delivers the held publishes in publish order, to the subscribers
    /// current (and connected) now.
    pub fn release(&self) {
        self.lock().release(false);
    }

    /// Stops holding and delivers the held publishes in reverse publish order: every
    /// subscriber sees them reordered.
    pub fn release_reversed(&self) {
        self.lock().release(true);
    }

    /// Drops the connection of every current subscriber: each receives
    /// [`ConnectionState::Disconnected`], and nothing published until [`MemoryBus::reconnect`]
    /// reaches it (those messages are lost for it, as with Redis pub/sub). Subscriptions started
    /// afterwards are connected normally. Publishing still succeeds.
    pub fn disconnect(&self) {
        self.lock()
            .set_connected(false, ConnectionState::Disconnected);
    }

    /// Restores every disconnected subscriber, which receives [`ConnectionState::Resubscribed`]
    /// and then the messages published from now on.
    pub fn reconnect(&self) {
        self.lock()
            .set_connected(true, ConnectionState::Resubscribed);
    }

    /// While `fail` is true, [`EventBus::publish`] (and a publish by a [`crate::MemoryL2`]
    /// announcing on this bus) returns an [`ErrorKind::Bus`] error and delivers nothing.
    pub fn fail_publishes(&self, fail: bool) {
        self.lock().fail_publishes = fail;
    }

    /// How many publish calls have succeeded (dropped and held ones included).
    pub fn published(&self) -> u64 {
        self.lock().published
    }

    /// How many subscriptions are still open (connected or not).
    pub fn subscriber_count(&self) -> usize {
        let mut state = self.lock();
        state.subscribers.retain(|sub| !sub.tx.is_closed());
        state.subscribers.len()
    }

    /// Ends every subscription: each yields what it has queued, then `None`. Later
    /// subscriptions work normally.
    pub fn end_subscriptions(&self) {
        self.lock().subscribers.clear();
    }

    fn lock(&self) -> MutexGuard<'_, BusState> {
        // Every update keeps the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The route [`EventBus::route`] reports.
    pub(crate) fn route_id(&self) -> String {
        format!("memory-bus:{}", self.id)
    }

    /// Publishes `payload` at once, under the fault controls armed: [`EventBus::publish`]
    /// without the future, so that a [`crate::MemoryL2`] can publish while it holds its own
    /// lock (publishes then follow the order of the changes they announce). Delivery only
    /// queues on unbounded channels: nothing here blocks or waits.
    pub(crate) fn publish_now(&self, payload: Vec<u8>) -> Result<()> {
        let mut state = self.lock();
        if state.fail_publishes {
            return Err(Error::new(
                ErrorKind::Bus,
                "in-process bus is set to fail publishes",
            ));
        }
        state.published += 1;
        if state.drop_next > 0 {
            state.drop_next -= 1;
            return Ok(());
        }
        let copies = if state.duplicate_next > 0 {
            state.duplicate_next -= 1;
            2
        } else {
            1
        };
        if state.holding {
            state.held.push((payload, copies));
        } else {
            state.deliver(&payload, copies);
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, payload: Vec<u8>) -> Result<()> {
        self.publish_now(payload)
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        let (tx, rx) = unbounded_channel();
        let queue = Arc::new(QueueBytes {
            held: AtomicUsize::new(0),
            max: self.max_queued_bytes,
            state: AtomicU8::new(FLOWING),
        });
        let subscriber = Subscriber {
            tx,
            connected: true,
            gauge: QueueGauge::default(),
            queue: Arc::clone(&queue),
        };
        let gauge = subscriber.gauge.clone();
        let own = subscriber.tx.downgrade();
        // Queued before the subscriber is visible to publishers, so it always comes first.
        let sent = subscriber.send(BusItem::State(ConnectionState::Connected));
        debug_assert!(sent, "the receiver is alive");
        self.lock().subscribers.push(subscriber);
        Ok(Box::new(MemorySubscription {
            rx,
            gauge,
            own,
            queue,
            resumed: false,
        }))
    }

    fn route(&self) -> Option<String> {
        Some(self.route_id())
    }
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBus")
            .field("id", &self.id)
            .field("subscribers", &state.subscribers.len())
            .field("published", &state.published)
            .field("holding", &state.holding)
            .field("held", &state.held.len())
            .finish_non_exhaustive()
    }
}

/// One subscriber's queue of [`BusItem`]s.
struct MemorySubscription {
    rx: UnboundedReceiver<BusItem>,
    gauge: QueueGauge,
    /// The bytes its queue holds, shared with the bus.
    queue: Arc<QueueBytes>,
    /// An overflow just ended: `Resubscribed` is the next item.
    resumed: bool,
    /// This subscription's own sender, to report the states of a requested resubscribe; weak,
    /// so the subscription still ends when the bus lets go of it.
    own: WeakUnboundedSender<BusItem>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    /// # Cancel safety
    /// Cancel safe: `UnboundedReceiver::recv` loses nothing when its future is dropped, and the
    /// gauge is counted down in the same poll that returns the item.
    async fn next(&mut self) -> Option<BusItem> {
        if std::mem::take(&mut self.resumed) {
            return Some(BusItem::State(ConnectionState::Resubscribed));
        }
        let item = self.gauge.pass(self.rx.recv().await);
        let queue = &self.queue;
        match &item {
            Some(BusItem::Message(payload)) => {
                queue.held.fetch_sub(payload.len(), Ordering::SeqCst);
            }
            Some(BusItem::State(ConnectionState::Disconnected)) => {
                let _ = queue.state.compare_exchange(
                    OVERFLOWING,
                    TOLD,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            _ => {}
        }
        // Told, and half the room free again: messages are queued from now on, and the
        // subscriber hears it was resubscribed right after this item (and catches up from its
        // log on what was dropped).
        if queue.held.load(Ordering::SeqCst) <= queue.max / 2
            && queue
                .state
                .compare_exchange(TOLD, FLOWING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.resumed = true;
        }
        item
    }

    fn queue_gauge(&self) -> Option<QueueGauge> {
        Some(self.gauge.clone())
    }

    /// There is no connection in process: the subscription reports `Disconnected`, then
    /// `Resubscribed`, as a transport that reconnected at once would (nothing is lost in
    /// between, and the bus's fault controls stay as they are).
    fn resubscribe(&mut self) -> bool {
        let Some(own) = self.own.upgrade() else {
            return false;
        };
        [ConnectionState::Disconnected, ConnectionState::Resubscribed]
            .into_iter()
            .all(|state| {
                self.gauge.queued();
                let sent = own.send(BusItem::State(state)).is_ok();
                if !sent {
                    self.gauge.taken();
                }
                sent
            })
    }
}
