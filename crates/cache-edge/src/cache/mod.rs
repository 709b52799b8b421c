//! [`EdgeCache`], one node's two-tier cache, split by flow: [`read`], [`write`](mod@write),
//! [`load`] (`get_or_load`), [`invalidate`] (issuing), [`apply`] (receiving) and [`connection`].
//! This module holds the node's state, its start and shutdown, stats and health, and the lookups
//! every flow shares.

mod apply;
mod auth;
mod breaker;
mod connection;
mod failover;
mod failsafe;
mod freshness;
mod invalidate;
mod lease;
mod load;
mod owned;
mod pending;
mod read;
mod trace;
mod typed;
mod write;

pub(crate) use breaker::BreakerConfig;
pub use typed::TypedNamespace;

use std::collections::HashMap;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cache_core::{
    CacheKey, Clock, Codec, Digest, Error, ErrorKind, Event, EventBus, JsonCodec, L1Store, L2Store,
    NamespaceConfig, QueueGauge, Result, Routing,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builder::{default_node_id, EdgeCacheBuilder};
use crate::observer::Observer;
use crate::stats::{Counters, Health, HealthStatus, NamespaceStats, Stats};

use self::freshness::{Freshness, NsFreshness};
use self::load::Flight;
use self::pending::Pending;

/// One node's two-tier cache. Cheap to clone: clones share the node.
///
/// Reads go L1 (in-process, critical namespaces only), then L2 (shared), then miss. Writes go
/// to L2, to L1 for critical namespaces, and, for event-driven namespaces, announce the key so
/// other nodes drop their L1 copy. Invalidations and notifications are applied here and
/// published; L2 is invalidated once, by the node that issues the invalidation.
///
/// Invariant: no read that starts after this node applied an invalidation returns a value
/// cached before it. Fills (back-fills from L2, loader results) are fenced: a fill that raced an
/// invalidation or a write of its namespace is dropped rather than stored.
pub struct EdgeCache<C: Codec = JsonCodec> {
    inner: Arc<Inner<C>>,
}

impl<C: Codec> Clone for EdgeCache<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<C> {
    codec: C,
    node_id: String,
    /// [`Event::own_prefix`] of `node_id`: how the listener tells this node's own events (which
    /// it hears back and ignores) without decoding them.
    own_prefix: Box<[u8]>,
    region: String,
    namespaces: Vec<NsState>,
    routing: Routing,
    l2: Arc<dyn L2Store>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
    max_value_bytes: usize,
    backfill_ttl_cap: Duration,
    counters: Counters,
    flights: Mutex<HashMap<(usize, Digest), Arc<Flight>>>,
    /// True while the bus reports a lost subscription: L1 of event-driven namespaces is bypassed.
    bus_down: AtomicBool,
    /// What the subscription holds that the listener has not taken yet, if the bus can tell.
    queued_events: Option<QueueGauge>,
    /// Whether L2 publishes on the bus's route, so writes and invalidations carry their event.
    announce_via_l2: bool,
    /// Whether this node last told L2 it hears every invalidation (see `feed_complete`).
    feed_complete: AtomicBool,
    closed: AtomicBool,
    listener_running: AtomicBool,
    events_handled: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Whether this node follows its event-driven namespaces' logs (L2 sequences and logs what
    /// is announced): see [`freshness`].
    sequenced: bool,
    /// Whether this node has L2 log its announced changes without publishing them and
    /// publishes them on its own bus (sequenced, but the bus is not on L2's route).
    publish_logged: bool,
    /// Publications of logged changes that failed, retried by `republisher`.
    pending: Pending,
    /// The republishing task of a node that publishes what L2 logged.
    republisher: Mutex<Option<JoinHandle<()>>>,
    freshness: Freshness,
    /// The liveness task of a sequenced node.
    liveness: Mutex<Option<JoinHandle<()>>>,
    /// The key ring this node signs and verifies events with, if any.
    keys: auth::Keys,
    /// Bounds on messages, parameters and tags.
    limits: cache_core::Limits,
    /// Skips L2 after consecutive failures, until a probe succeeds.
    breaker: breaker::Breaker,
    /// Event ids heard within the replay window.
    replay_guard: auth::ReplayGuard,
    /// When a refused event was last logged (nanoseconds since the epoch), to log at most one
    /// a second.
    refusal_logged_at: AtomicU64,
    /// The [`L2Store::server_epoch`] this node last made safe to read (see `failover.rs`).
    server_seen: AtomicU64,
}

struct NsState {
    config: NamespaceConfig,
    /// `config.key_namespace`, shared with every key this node derives (see
    /// [`CacheKey::derive_in`]), so matching a key to its namespace is a pointer comparison.
    key_ns: Arc<str>,
    l1: Option<Box<dyn L1Store>>,
    /// Bumped (under `gate`, written) with every removal from this namespace's L1. A fill reads
    /// it before reading its value and inserts (under `gate`, read) only if it has not moved.
    epoch: AtomicU64,
    /// Makes "check the epoch, then insert" atomic with respect to "bump, then remove": without
    /// it a fill could land just after a removal and be served until it noticed the bump.
    /// Never held across an await, and never taken on the hit path.
    gate: RwLock<()>,
    /// How this namespace follows its log, on a sequenced node, if it is event-driven.
    fresh: Option<NsFreshness>,
    /// How long its L2 reads took.
    l2_latency: crate::stats::Latency,
    /// How long its loaders ran.
    loader_latency: crate::stats::Latency,
    /// Keys whose loads failed recently and are answered by fail-safe for a while.
    fail_safe_throttle: failsafe::KeyDeadlines,
    /// Keys refreshed early a moment ago, not refreshed again until then.
    refresh_after: failsafe::KeyDeadlines,
}

impl EdgeCache {
    /// A builder with every default (see [`EdgeCacheBuilder`]); values are JSON unless
    /// [`EdgeCacheBuilder::codec`] says otherwise.
    pub fn builder() -> EdgeCacheBuilder {
        EdgeCacheBuilder::default()
    }
}

impl<C: Codec> EdgeCache<C> {
    pub(crate) async fn start(b: EdgeCacheBuilder<C>) -> Result<EdgeCache<C>> {
        let (l2, bus) = match (b.l2, b.bus) {
            (Some(l2), Some(bus)) => (l2, bus),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "builder must resolve L2 and bus",
                ))
            }
        };
        let subscription = bus.subscribe().await?;
        let queued_events = subscription.queue_gauge();
        let l2_route = l2.announce_route();
        let announce_via_l2 = matches!((&l2_route, bus.route()), (Some(a), Some(b)) if *a == b);
        let sequenced = l2.sequenced();
        // Only a node that follows logs acts on a move (see `failover.rs`).
        let l2_server_epoch = if sequenced { l2.server_epoch() } else { 0 };
        // A bus on another route than L2's: L2 logs each announced change without publishing
        // it, and this node publishes what was logged (retrying failures from a pending set).
        let publish_logged = sequenced && !announce_via_l2;
        if publish_logged {
            tracing::info!(
                l2_route = ?l2_route,
                bus_route = ?bus.route(),
                "this node's bus is not on L2's route: L2 logs each announced change and the \
                 node publishes it on its bus, retrying failed publications; nodes follow the \
                 logs either way"
            );
        }
        let namespaces = b
            .namespaces
            .iter()
            .map(|config| NsState {
                l1: config.critical.then(|| b.l1.build(config)),
                key_ns: Arc::from(config.key_namespace.as_str()),
                config: config.clone(),
                epoch: AtomicU64::new(0),
                gate: RwLock::new(()),
                fresh: (sequenced && config.event_driven)
                    .then(|| NsFreshness::new(config.outage, b.staleness_bound)),
                l2_latency: crate::stats::Latency::default(),
                loader_latency: crate::stats::Latency::default(),
                fail_safe_throttle: failsafe::KeyDeadlines::default(),
                refresh_after: failsafe::KeyDeadlines::default(),
            })
            .collect();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shutdown_rx_liveness = shutdown_rx.clone();
        let shutdown_rx_republisher = shutdown_rx.clone();
        let node_id = b.node_id.unwrap_or_else(default_node_id);
        let inner = Arc::new(Inner {
            codec: b.codec,
            own_prefix: Event::own_prefix(&node_id).into(),
            node_id,
            region: b.region,
            namespaces,
            routing: b.routing,
            l2,
            bus,
            clock: b.clock,
            observer: b.observer,
            max_value_bytes: b.max_value_bytes,
            backfill_ttl_cap: b.backfill_ttl_cap,
            counters: Counters::default(),
            flights: Mutex::new(HashMap::new()),
            announce_via_l2,
            feed_complete: AtomicBool::new(false),
            bus_down: AtomicBool::new(false),
            queued_events,
            closed: AtomicBool::new(false),
            listener_running: AtomicBool::new(true),
            events_handled: AtomicU64::new(0),
            shutdown_tx,
            listener: Mutex::new(None),
            sequenced,
            publish_logged,
            pending: Pending::new(b.max_pending_publications),
            republisher: Mutex::new(None),
            freshness: Freshness::new(b.staleness_bound, b.liveness_interval),
            liveness: Mutex::new(None),
            keys: b.event_keys,
            limits: b.limits,
            breaker: breaker::Breaker::new(b.breaker),
            replay_guard: auth::ReplayGuard::default(),
            refusal_logged_at: AtomicU64::new(0),
            server_seen: AtomicU64::new(l2_server_epoch),
        });
        // Start counted as a node that may miss invalidations; the subscription's first
        // `Connected` makes it complete where it can be.
        inner.l2.invalidation_feed(0, 1);
        let handle = tokio::spawn(crate::listener::run(
            Arc::clone(&inner),
            subscription,
            shutdown_rx,
        ));
        *lock(&inner.listener) = Some(handle);
        if sequenced {
            // Where each log stands now: everything before is covered by an empty L1. Read
            // after subscribing, so nothing published in between is missed.
            if let Err(e) = inner.start_following().await {
                tracing::warn!(node_id = %inner.node_id, error = %e, "could not read the event log at start; L1 of event-driven namespaces waits for the first successful read");
                inner.freshness.wake.notify_one();
            }
            let task = tokio::spawn(freshness::run(Arc::clone(&inner), shutdown_rx_liveness));
            *lock(&inner.liveness) = Some(task);
        }
        if publish_logged {
            let task = tokio::spawn(pending::run(Arc::clone(&inner), shutdown_rx_republisher));
            *lock(&inner.republisher) = Some(task);
        }
        tracing::info!(node_id = %inner.node_id, region = %inner.region, "edge cache started");
        Ok(EdgeCache { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The configuration of the namespace named `namespace`.
    pub fn namespace(&self, namespace: &str) -> Option<&NamespaceConfig> {
        self.inner
            .namespaces
            .iter()
            .map(|ns| &ns.config)
            .find(|c| c.name == namespace)
    }

    /// Derives the key of `params` in `namespace`, for the `*_key` methods. Derive once and
    /// reuse it on hot paths: hashing the parameters is most of the cost of a hit.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`], or [`ErrorKind::Encode`] when `params` cannot be
    /// serialised.
    pub fn key<P: Serialize + ?Sized>(&self, namespace: &str, params: &P) -> Result<CacheKey> {
        let (_, ns) = self.inner.ns_by_name(namespace)?;
        let digest = Digest::of_params_within(params, self.inner.limits.max_params_bytes())?;
        Ok(CacheKey::from_digest(&ns.key_ns, digest))
    }

    /// A snapshot of the counters and of L1 use per namespace.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let namespaces = inner
            .namespaces
            .iter()
            .map(|ns| {
                let usage = ns.l1.as_ref().map(|l1| l1.usage()).unwrap_or_default();
                NamespaceStats {
                    name: ns.config.name.clone(),
                    l1_entries: usage.entries,
                    l1_bytes: usage.bytes,
                    l1_capacity_bytes: usage.capacity_bytes,
                    log_applied: ns.fresh.as_ref().and_then(NsFreshness::applied),
                    log_confirmed_at: ns.fresh.as_ref().and_then(NsFreshness::sure_at),
                    l1_in_use: ns.l1.is_some() && inner.l1_trusted(ns, inner.clock.expiry_now()),
                    l1_outage: ns
                        .fresh
                        .as_ref()
                        .map_or(Duration::ZERO, NsFreshness::outage),
                    l2_latency: ns.l2_latency.snapshot(),
                    loader_latency: ns.loader_latency.snapshot(),
                }
            })
            .collect();
        let mut stats = inner
            .counters
            .snapshot(&inner.node_id, &inner.region, namespaces);
        stats.pending_publications =
            u64::try_from(inner.pending_publications()).unwrap_or(u64::MAX);
        stats.loads_in_flight = u64::try_from(lock(&inner.flights).len()).unwrap_or(u64::MAX);
        stats
    }

    /// L2's own figures (for Redis: `used_memory` and `connected_clients`, as the seed
    /// reported).
    ///
    /// # Errors
    /// [`ErrorKind::L2`] when L2 cannot be reached.
    pub async fn l2_info(&self) -> Result<cache_core::L2Info> {
        self.inner.l2.info().await
    }

    /// Checks L2 and the event subscription and reports healthy, degraded or unhealthy.
    pub async fn health(&self) -> Health {
        let inner = &*self.inner;
        let l2 = inner.l2.ping().await;
        let listener = inner.listener_running.load(SeqCst);
        let bus_connected = listener && !inner.bus_down.load(SeqCst);
        let now = inner.clock.now();
        let log_confirmed_age = inner
            .namespaces
            .iter()
            .filter_map(|ns| ns.fresh.as_ref())
            .map(|fresh| fresh.sure_at().map(|at| now.saturating_since(at)))
            .reduce(|a, b| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            })
            .flatten();
        let (status, reason) = if inner.closed.load(SeqCst) {
            (
                HealthStatus::Unhealthy,
                Some("the cache was shut down".to_owned()),
            )
        } else if !listener {
            (
                HealthStatus::Unhealthy,
                Some("the event listener stopped: invalidations are not received".to_owned()),
            )
        } else if !bus_connected {
            (
                HealthStatus::Degraded,
                Some(
                    "the event bus is disconnected: L1 of event-driven namespaces is bypassed"
                        .to_owned(),
                ),
            )
        } else if let Some(age) = log_confirmed_age.filter(|age| *age >= inner.freshness.bound) {
            (
                HealthStatus::Degraded,
                Some(format!(
                    "the event log has not confirmed this node is up to date for {age:?} (bound \
                     {:?}): L1 of event-driven namespaces follows its outage policy",
                    inner.freshness.bound
                )),
            )
        } else if let Err(e) = &l2 {
            (
                HealthStatus::Degraded,
                Some(format!("L2 is unreachable: {e}")),
            )
        } else {
            (HealthStatus::Healthy, None)
        };
        let received = inner.counters.events_received.get();
        let last = inner.counters.last_event_nanos.load(Relaxed);
        Health {
            status,
            l2_connected: l2.is_ok(),
            l2_breaker_open: inner.breaker.is_open(),
            bus_connected,
            // Taken by the listener and not handled yet (at most the one in hand), plus what
            // the subscription still holds.
            event_queue_size: received
                .saturating_sub(inner.events_handled.load(Relaxed))
                .saturating_add(inner.queued_events.as_ref().map_or(0, QueueGauge::len)),
            last_event_age: (last != 0).then(|| {
                inner
                    .clock
                    .now()
                    .saturating_since(cache_core::Timestamp::from_nanos(last))
            }),
            log_confirmed_age,
            reason,
        }
    }

    /// Stops the event listener and waits for it to end. Later calls on any clone fail with
    /// [`ErrorKind::Shutdown`]. Calling it again does nothing.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        if inner.closed.swap(true, SeqCst) {
            return;
        }
        let _ = inner.shutdown_tx.send(true);
        let handle = lock(&inner.listener).take();
        if let Some(handle) = handle {
            if let Err(e) = handle.await {
                tracing::warn!(node_id = %inner.node_id, error = %e, "event listener ended abnormally");
            }
        }
        let liveness = lock(&inner.liveness).take();
        if let Some(liveness) = liveness {
            if let Err(e) = liveness.await {
                tracing::warn!(node_id = %inner.node_id, error = %e, "liveness task ended abnormally");
            }
        }
        let republisher = lock(&inner.republisher).take();
        if let Some(republisher) = republisher {
            if let Err(e) = republisher.await {
                tracing::warn!(node_id = %inner.node_id, error = %e, "republishing task ended abnormally");
            }
        }
        inner.leave_feed();
        tracing::info!(node_id = %inner.node_id, "edge cache shut down");
    }
}

impl<C: Codec> std::fmt::Debug for EdgeCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCache")
            .field("node_id", &self.inner.node_id)
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

impl<C: Codec> Inner<C> {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Relaxed) {
            return Err(Error::new(
                ErrorKind::Shutdown,
                format!("node {} was shut down", self.node_id),
            ));
        }
        Ok(())
    }

    fn ns_by_name(&self, name: &str) -> Result<(usize, &NsState)> {
        self.namespaces
            .iter()
            .enumerate()
            .find(|(_, ns)| ns.config.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .namespaces
                    .iter()
                    .map(|ns| ns.config.name.as_str())
                    .collect();
                Error::new(
                    ErrorKind::UnknownNamespace,
                    format!(
                        "no namespace named {name:?} is configured (configured: {})",
                        known.join(", ")
                    ),
                )
            })
    }

    /// The namespace at `index` of the configuration (an index [`Inner::ns_by_name`] gave).
    fn ns_at(&self, index: usize) -> &NsState {
        &self.namespaces[index]
    }

    fn ns_by_key_namespace(&self, key_namespace: &str) -> Option<&NsState> {
        self.namespaces
            .iter()
            .find(|ns| ns.config.key_namespace == key_namespace)
    }

    fn ns_by_key(&self, key: &CacheKey) -> Result<(usize, &NsState)> {
        let shared = key.key_namespace_shared();
        // Keys derived by this node share the namespace's string: a pointer comparison, with no
        // read of the key's own text. Other keys fall back to comparing the names.
        let found = self
            .namespaces
            .iter()
            .position(|ns| Arc::ptr_eq(&ns.key_ns, shared));
        found
            .or_else(|| self.namespaces.iter().position(|ns| *ns.key_ns == **shared))
            .map(|i| (i, &self.namespaces[i]))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownNamespace,
                    format!("no namespace has the key space {:?}", key.key_namespace()),
                )
            })
    }

    fn l2_failed(&self, op: &str, e: Error) -> Error {
        self.counters.l2_errors.add(1);
        tracing::warn!(node_id = %self.node_id, op, error = %e, "L2 operation failed");
        e
    }
}

/// A new event id (UUID v4 text), written into `buffer` (a [`uuid::Uuid::encode_buffer`]).
fn new_event_id(buffer: &mut [u8]) -> &str {
    uuid::Uuid::new_v4().hyphenated().encode_lower(buffer)
}

fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
