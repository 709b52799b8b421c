//! Building an [`EdgeCache`].

use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    Clock, Codec, Error, ErrorKind, EventBus, EventKeys, JsonCodec, L1Factory, L2Store, Limits,
    Namespaces, Result, Routing,
};
use cache_memory::{MemoryBus, MemoryL1Factory, MemoryL2, SystemClock};

use crate::cache::EdgeCache;
use crate::observer::{NoopObserver, Observer};

/// Default largest encoded value accepted by a write: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Consecutive L2 failures that open the circuit breaker, by default.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;

/// How long an open breaker skips L2 before it probes, by default.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(1);

/// Default cap on the lifetime of an L1 copy back-filled from L2 (the seed's 60 s).
pub const DEFAULT_BACKFILL_TTL_CAP: Duration = Duration::from_secs(60);

/// Default staleness bound: on a node whose L2 keeps an event log, no read returns a value older
/// than a change acknowledged more than this long before, whatever the faults (see
/// [`EdgeCacheBuilder::staleness_bound`]). About two liveness intervals plus a replay.
pub const DEFAULT_STALENESS_BOUND: Duration = Duration::from_secs(3);

/// Default interval of the liveness check: how often a node reads its event logs' heads to
/// confirm it heard every change (see [`EdgeCacheBuilder::liveness_interval`]).
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// How many failed publications a node keeps for republishing by default (see
/// [`EdgeCacheBuilder::max_pending_publications`]).
pub const DEFAULT_MAX_PENDING_PUBLICATIONS: usize = 10_000;

/// Builds an [`EdgeCache`]. Everything has a default: the seed's namespaces and routes, the
/// process-wide in-process L2 and event bus (so every `EdgeCache` in the process shares them,
/// as nodes share one Redis), the system clock and a node id `edge_node_<8 hex>`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_core::Result<()> {
/// use std::sync::Arc;
/// use cache_edge::EdgeCache;
/// use cache_memory::{MemoryBus, MemoryL2, SystemClock};
///
/// let bus = Arc::new(MemoryBus::new());
/// let l2 = Arc::new(MemoryL2::new(64 << 20, Arc::new(SystemClock)));
/// let node = EdgeCache::builder().node_id("edge-eu-1").region("eu-west").l2(l2).bus(bus).build().await?;
/// assert_eq!(node.node_id(), "edge-eu-1");
/// node.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use]
pub struct EdgeCacheBuilder<C: Codec = JsonCodec> {
    pub(crate) codec: C,
    pub(crate) node_id: Option<String>,
    pub(crate) region: String,
    pub(crate) namespaces: Namespaces,
    pub(crate) routing: Routing,
    pub(crate) l1: Arc<dyn L1Factory>,
    pub(crate) l2: Option<Arc<dyn L2Store>>,
    pub(crate) bus: Option<Arc<dyn EventBus>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) max_value_bytes: usize,
    pub(crate) backfill_ttl_cap: Duration,
    pub(crate) staleness_bound: Duration,
    pub(crate) liveness_interval: Duration,
    pub(crate) event_keys: Option<EventKeys>,
    pub(crate) limits: Limits,
    pub(crate) breaker: crate::cache::BreakerConfig,
    pub(crate) max_pending_publications: usize,
}

impl Default for EdgeCacheBuilder {
    fn default() -> Self {
        Self {
            codec: JsonCodec,
            node_id: None,
            region: "default".to_owned(),
            namespaces: Namespaces::defaults(),
            routing: Routing::defaults(),
            l1: Arc::new(MemoryL1Factory),
            l2: None,
            bus: None,
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoopObserver),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            backfill_ttl_cap: DEFAULT_BACKFILL_TTL_CAP,
            staleness_bound: DEFAULT_STALENESS_BOUND,
            liveness_interval: DEFAULT_LIVENESS_INTERVAL,
            event_keys: None,
            limits: Limits::default(),
            breaker: crate::cache::BreakerConfig {
                failures: DEFAULT_BREAKER_FAILURES,
                open_for: DEFAULT_BREAKER_OPEN_FOR,
            },
            max_pending_publications: DEFAULT_MAX_PENDING_PUBLICATIONS,
        }
    }
}

impl<C: Codec> EdgeCacheBuilder<C> {
    /// How values are encoded in L2; default [`JsonCodec`]. Every node of a fleet must use the
    /// same codec.
    pub fn codec<D: Codec>(self, codec: D) -> EdgeCacheBuilder<D> {
        EdgeCacheBuilder {
            codec,
            node_id: self.node_id,
            region: self.region,
            namespaces: self.namespaces,
            routing: self.routing,
            l1: self.l1,
            l2: self.l2,
            bus: self.bus,
            clock: self.clock,
            observer: self.observer,
            max_value_bytes: self.max_value_bytes,
            backfill_ttl_cap: self.backfill_ttl_cap,
            staleness_bound: self.staleness_bound,
            liveness_interval: self.liveness_interval,
            event_keys: self.event_keys,
            limits: self.limits,
            breaker: self.breaker,
            max_pending_publications: self.max_pending_publications,
        }
    }

    /// The node's id, written on every event it publishes; receivers ignore events carrying
    /// their own id, so ids must be unique in the fleet.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The node's region, reported in stats and health and written on events as `data.region`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The namespaces (cache types); default [`Namespaces::defaults`].
    pub fn namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// The event routing table; default [`Routing::defaults`].
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// How L1 stores are built; default in-process [`MemoryL1Factory`].
    pub fn l1(mut self, factory: impl L1Factory + 'static) -> Self {
        self.l1 = Arc::new(factory);
        self
    }

    /// The L2 store; default the process-wide [`MemoryL2::global`].
    pub fn l2(mut self, l2: Arc<dyn L2Store>) -> Self {
        self.l2 = Some(l2);
        self
    }

    /// The event bus; default the process-wide [`MemoryBus::global`].
    pub fn bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The clock; default the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Hooks called as the node works; default none.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The largest encoded value a write accepts; default [`DEFAULT_MAX_VALUE_BYTES`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The cap on the lifetime of L1 copies back-filled from L2; default
    /// [`DEFAULT_BACKFILL_TTL_CAP`]. A copy never outlives the L2 entry either way.
    pub fn backfill_ttl_cap(mut self, cap: Duration) -> Self {
        self.backfill_ttl_cap = cap;
        self
    }

    /// The staleness bound B; default [`DEFAULT_STALENESS_BOUND`]. On a node whose L2 keeps
    /// an event log ([`L2Store::sequenced`]: Redis, or [`MemoryL2::announce_on`], whatever
    /// route this node's bus is on), L1 of an event-driven namespace is served only while the
    /// log confirmed, less than B ago, that the node had applied every change; so no read
    /// returns a value older than a change acknowledged more than B before it, whatever happens
    /// to connections or delivery. While the transport is healthy, staleness is the propagation
    /// lag. Must be longer than the liveness interval (twice as long keeps L1 in use through
    /// one failed check).
    pub fn staleness_bound(mut self, bound: Duration) -> Self {
        self.staleness_bound = bound;
        self
    }

    /// How many failed publications the node keeps for republishing, at most (a node whose bus
    /// is not on L2's route: see [`crate::Stats::pending_publications`]); default
    /// [`DEFAULT_MAX_PENDING_PUBLICATIONS`]. One is kept per key written (the newest) and one
    /// per other change, so a bus that stays down under many distinct changes would otherwise
    /// grow the set without end. Past the bound a failed publication is not kept
    /// (`publications_dropped`): nodes that follow the log still replay the change within the
    /// staleness bound; nodes that only hear the bus (seed nodes) never get it, as with any
    /// lost message.
    pub fn max_pending_publications(mut self, max: usize) -> Self {
        self.max_pending_publications = max;
        self
    }

    /// How often the node reads its event logs to confirm it heard every change, and replays
    /// what it did not; default [`DEFAULT_LIVENESS_INTERVAL`]. A gap or a resubscribe triggers
    /// a read at once. Each check costs one small script per event-driven namespace.
    pub fn liveness_interval(mut self, interval: Duration) -> Self {
        self.liveness_interval = interval;
        self
    }

    /// Signs every event this node publishes with `keys`' signing key and refuses events that
    /// do not verify against the ring (unsigned ones too, unless the ring accepts them), whose
    /// event id was heard before within the replay window, or whose timestamp is outside it.
    /// Every node of a fleet needs a key the others verify. Refusals are counted per reason in
    /// [`crate::Stats`]; see `docs/security.md` for rotation and the threat model. Default: no
    /// keys, every well-formed event accepted.
    pub fn event_keys(mut self, keys: EventKeys) -> Self {
        self.event_keys = Some(keys);
        self
    }

    /// Bounds on what the node takes from outside (see [`Limits`] for each and its default):
    /// messages over one are refused before they are decoded and counted per reason in
    /// [`crate::Stats`]; calls whose parameters or tags are over one fail with
    /// [`ErrorKind::LimitExceeded`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The L2 circuit breaker: after `failures` consecutive L2 failures, reads and writes skip
    /// L2 for `open_for` (reads go to L1 or the loader, writes fail at once with
    /// [`ErrorKind::L2`]), then one call probes L2 and a success closes the breaker; a failed
    /// probe opens it again. Skipped calls are counted in [`crate::Stats::l2_skipped`]. Default
    /// [`DEFAULT_BREAKER_FAILURES`] failures, [`DEFAULT_BREAKER_OPEN_FOR`]; 0 failures turns
    /// it off (every call then waits out L2's own timeout while it is down).
    pub fn l2_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker = crate::cache::BreakerConfig { failures, open_for };
        self
    }

    /// Validates the configuration, subscribes to the bus and starts the event listener.
    ///
    /// Must be called inside a tokio runtime (the listener is a spawned task).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] or [`ErrorKind::UnknownNamespace`] for a configuration that
    /// does not validate (duplicate namespaces, a route to a missing namespace, a zero value
    /// limit); [`ErrorKind::Bus`] when the subscription cannot be made.
    pub async fn build(mut self) -> Result<EdgeCache<C>> {
        for config in &self.namespaces {
            config.validate()?;
        }
        // Re-adding checks that no two namespaces share a name or key space.
        let mut checked = Namespaces::empty();
        for config in &self.namespaces {
            checked.add(config.clone())?;
        }
        self.routing.validate(&checked)?;
        if self.max_value_bytes == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_value_bytes must be greater than zero",
            ));
        }
        if self.liveness_interval.is_zero() || self.liveness_interval >= self.staleness_bound {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the liveness interval ({:?}) must be greater than zero and shorter than the \
                     staleness bound ({:?})",
                    self.liveness_interval, self.staleness_bound
                ),
            ));
        }
        if self.bus.is_none() {
            self.bus = Some(MemoryBus::global());
        }
        if self.l2.is_none() {
            self.l2 = Some(MemoryL2::global());
        }
        EdgeCache::start(self).await
    }
}

/// A node id of the seed's form, `edge_node_<8 hex>`.
pub(crate) fn default_node_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("edge_node_{}", &hex[..8])
}
