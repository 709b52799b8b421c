//! [`EdgeCache`]: the read path, the write path, invalidation and notification.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cache_core::{
    CacheKey, Clock, Codec, ConnectionState, Digest, Error, ErrorKind, Event, EventBus, EventType,
    Fence, JsonCodec, L1Entry, L1Store, L2Store, L2Write, NamespaceConfig, QueueGauge, Result,
    Routing, Scope, SharedValue, WriteAnnouncement,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;

use crate::builder::{default_node_id, EdgeCacheBuilder};
use crate::notify::Notification;
use crate::observer::Observer;
use crate::options::SetOptions;
use crate::stats::{Counters, Health, HealthStatus, NamespaceStats, Stats};

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
}

/// One in-progress load of a key, joined by every caller that misses the key while the
/// namespace's epoch is still the one the load started in.
struct Flight {
    epoch: u64,
    cell: OnceCell<Result<(SharedValue, Source)>>,
}

/// Where a flight found its value, so each caller it serves is counted as a hit or a miss.
#[derive(Debug, Clone, Copy)]
enum Source {
    L1,
    L2,
    Loaded,
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
        let announce_via_l2 =
            matches!((l2.announce_route(), bus.route()), (Some(a), Some(b)) if a == b);
        let namespaces = b
            .namespaces
            .iter()
            .map(|config| NsState {
                l1: config.critical.then(|| b.l1.build(config)),
                key_ns: Arc::from(config.key_namespace.as_str()),
                config: config.clone(),
                epoch: AtomicU64::new(0),
                gate: RwLock::new(()),
            })
            .collect();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
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
        CacheKey::derive_in(&ns.key_ns, params)
    }

    /// Reads `params` in `namespace`: L1, then L2, then `None`.
    ///
    /// A hit hands out the shared decoded value. An L2 failure or an L2 value that does not
    /// decode as `T` is counted, logged and served as a miss: it never fails the read.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`], [`ErrorKind::Encode`] (params), [`ErrorKind::Shutdown`].
    pub async fn get<T, P>(&self, namespace: &str, params: &P) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
    {
        let key = self.key(namespace, params)?;
        self.get_key(&key).await
    }

    /// [`EdgeCache::get`] with a key derived by [`EdgeCache::key`].
    ///
    /// # Errors
    /// As [`EdgeCache::get`].
    pub async fn get_key<T>(&self, key: &CacheKey) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        if let Some(hit) = self.inner.l1_hit::<T>(key) {
            return Ok(Some(hit));
        }
        self.get_key_past_l1(key).await
    }

    /// [`EdgeCache::get_key`] once [`Inner::l1_hit`] found nothing: the errors, keys not
    /// derived by this node, and L2.
    async fn get_key_past_l1<T>(&self, key: &CacheKey) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_key(key)?;
        if !Arc::ptr_eq(&ns.key_ns, key.key_namespace_shared()) {
            // Not derived by this node: `l1_hit` did not look this key up.
            if let Some(hit) = inner.l1_get::<T>(ns, key) {
                inner.counters.l1_hits.add(1);
                return Ok(Some(hit));
            }
        }
        let found = inner.l2_get::<T>(ns, key).await;
        let counter = if found.is_some() {
            &inner.counters.l2_hits
        } else {
            &inner.counters.misses
        };
        counter.add(1);
        Ok(found)
    }

    /// Reads many keys (of any configured namespaces) at once: L1 for each, then one batched L2
    /// read for all the L1 misses (one round trip per namespace on Redis). Results are in the
    /// order of `keys`; counters are bumped per key as for [`EdgeCache::get_key`].
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`] if any key's namespace is not configured (nothing is
    /// read), [`ErrorKind::Shutdown`]. An L2 failure makes the L1 misses misses.
    pub async fn get_many_keys<T>(&self, keys: &[CacheKey]) -> Result<Vec<Option<Arc<T>>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        inner.check_open()?;
        let namespaces = keys
            .iter()
            .map(|key| inner.ns_by_key(key).map(|(_, ns)| ns))
            .collect::<Result<Vec<_>>>()?;
        let mut found: Vec<Option<Arc<T>>> = vec![None; keys.len()];
        let mut missing = Vec::new();
        for (i, (key, ns)) in keys.iter().zip(&namespaces).enumerate() {
            match inner.l1_get::<T>(ns, key) {
                Some(hit) => {
                    inner.counters.l1_hits.add(1);
                    found[i] = Some(hit);
                }
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        // Epochs are read before L2 is, so back-fills that race an invalidation are dropped.
        let epochs: Vec<u64> = missing
            .iter()
            .map(|&i| namespaces[i].epoch.load(SeqCst))
            .collect();
        let missing_keys: Vec<CacheKey> = missing.iter().map(|&i| keys[i].clone()).collect();
        let entries = match inner.l2.get_many(&missing_keys).await {
            Ok(entries) => entries,
            Err(e) => {
                let _ = inner.l2_failed("get_many", e);
                vec![None; missing.len()]
            }
        };
        for ((&i, entry), epoch) in missing.iter().zip(entries).zip(epochs) {
            let value = entry.and_then(|entry| {
                inner.accept_l2_entry::<T>(namespaces[i], &keys[i], entry, epoch)
            });
            let counter = if value.is_some() {
                &inner.counters.l2_hits
            } else {
                &inner.counters.misses
            };
            counter.add(1);
            found[i] = value;
        }
        Ok(found)
    }

    /// [`EdgeCache::get_many_keys`] for several parameter sets of one namespace.
    ///
    /// # Errors
    /// As [`EdgeCache::get_many_keys`], and [`ErrorKind::Encode`] for parameters that cannot be
    /// serialised.
    pub async fn get_many<T, P>(&self, namespace: &str, params: &[P]) -> Result<Vec<Option<Arc<T>>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        P: Serialize,
    {
        let keys = params
            .iter()
            .map(|p| self.key(namespace, p))
            .collect::<Result<Vec<_>>>()?;
        self.get_many_keys(&keys).await
    }

    /// Writes `value` for `params` in `namespace` with the namespace's TTL and no tags.
    ///
    /// # Errors
    /// As [`EdgeCache::set_key`].
    pub async fn set<T, P>(&self, namespace: &str, params: &P, value: &T) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
    {
        let key = self.key(namespace, params)?;
        self.set_key(&key, value, SetOptions::new()).await
    }

    /// Writes `value` for `params` in `namespace` with per-call options (TTL, resource tags).
    ///
    /// # Errors
    /// As [`EdgeCache::set_key`].
    pub async fn set_with<T, P>(
        &self,
        namespace: &str,
        params: &P,
        value: &T,
        options: SetOptions,
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
    {
        let key = self.key(namespace, params)?;
        self.set_key(&key, value, options).await
    }

    /// Writes `value` under `key`: L2, then L1 (critical namespaces), then, for event-driven
    /// namespaces, an event that makes other nodes drop *this key* from their L1. Nothing else in
    /// the namespace is touched anywhere.
    ///
    /// This node's L1 keeps a copy decoded from the encoded bytes, the same value other nodes
    /// decode from L2: later changes to the caller's object do not reach the cache.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidTtl`] for a zero TTL, [`ErrorKind::ValueTooLarge`] over the configured
    /// limit (nothing written), [`ErrorKind::Encode`] when `value` cannot be encoded, or (on a
    /// node that keeps an L1 copy) when its encoding does not decode back as a `T` (nothing
    /// written); [`ErrorKind::L2`] when L2 refused the write (L1 and the fleet untouched);
    /// [`ErrorKind::Bus`] when the write landed but the announcement failed (other nodes may
    /// keep their old copy until its TTL).
    pub async fn set_key<T>(&self, key: &CacheKey, value: &T, options: SetOptions) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.write_key(key, value, options, |bytes| {
            // Decoded before anything is written, so a value whose encoding does not decode
            // back (a `Serialize` and `Deserialize` that disagree) is refused with nothing
            // written. (Decoding it while the write was on its way measured no faster.)
            let copy: T = self.inner.codec.decode(bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Encode,
                    format!(
                        "{key}: value does not decode back from its encoding ({e}); nothing was \
                         written"
                    ),
                )
            })?;
            Ok(Arc::new(copy))
        })
        .await
    }

    /// [`EdgeCache::set_key`] for a value the caller already holds in an `Arc`: this node's L1
    /// keeps that very `Arc` instead of a copy decoded from the encoding, so a write costs one
    /// decode less (on a critical namespace about 0.04x of a write's latency in
    /// `cargo xtask bench`, row 3). Readers on this node then get the caller's `Arc`, as readers
    /// elsewhere get the value decoded from L2.
    ///
    /// The caller's side of the bargain: `T`'s `Serialize` and `Deserialize` agree (decoding the
    /// encoding gives an equal value), and the value is not changed through interior mutability
    /// afterwards; otherwise this node would serve something other nodes do not. [`set_key`]
    /// checks the first and rules out the second.
    ///
    /// [`set_key`]: EdgeCache::set_key
    ///
    /// # Errors
    /// As [`EdgeCache::set_key`], except that the encoding is not decoded back.
    pub async fn set_key_shared<T>(
        &self,
        key: &CacheKey,
        value: Arc<T>,
        options: SetOptions,
    ) -> Result<()>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.write_key(key, &*value, options, |_| Ok(Arc::clone(&value)))
            .await
    }

    /// The write of [`EdgeCache::set_key`] and [`EdgeCache::set_key_shared`]: `l1_copy` makes
    /// the value this node's L1 keeps from the encoded bytes (called only when L1 is in use, and
    /// before anything is written: its error is returned with nothing written).
    async fn write_key<T>(
        &self,
        key: &CacheKey,
        value: &T,
        options: SetOptions,
        l1_copy: impl FnOnce(&[u8]) -> Result<Arc<T>>,
    ) -> Result<()>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_key(key)?;
        let ttl = inner.ttl_for(ns, &options)?;
        let bytes = inner.encode(key, value)?;
        let tags = options.resource_tags().to_vec();
        let l1_copy = match inner.usable_l1(ns) {
            Some(_) => Some(l1_copy(&bytes)?),
            None => None,
        };
        // The write's announcement, encoded straight away: the event itself is never needed.
        let mut id_buffer = uuid::Uuid::encode_buffer();
        let announcement = ns.config.event_driven.then(|| {
            let event_id = new_event_id(&mut id_buffer);
            let payload = WriteAnnouncement {
                namespace: &ns.config.name,
                cache_key: key.as_str(),
                region: &inner.region,
                source_node: &inner.node_id,
                event_id,
                timestamp: inner.clock.now().as_secs_f64(),
            }
            .encode();
            (event_id, payload)
        });
        let size_bytes = len64(&bytes);
        let mut write = L2Write::new(key.clone(), bytes, ttl).tags(tags.clone());
        // Where L2 can publish for the bus, the write and its announcement are one step;
        // otherwise the announcement is published once the write is made.
        let announced_by_l2 = announcement.is_some() && inner.announce_via_l2;
        let publish_after = match announcement {
            Some((_, payload)) if announced_by_l2 => {
                write = write.announce(payload);
                None
            }
            other => other,
        };
        let written = inner
            .l2
            .set(write)
            .await
            .map_err(|e| inner.l2_failed("set", e))?;
        if !written {
            // The `L2Store` contract rules this out for an unfenced write; an implementation
            // that breaks it must not make this call look like a landed write.
            return Err(inner.l2_failed(
                "set",
                Error::new(
                    ErrorKind::L2,
                    format!("{key}: L2 answered that it did not store the write; L1 untouched"),
                ),
            ));
        }
        if announced_by_l2 {
            inner.counters.events_published.add(1);
        }
        if ns.l1.is_some() {
            // Moving the epoch keeps any back-fill that started before this write from landing
            // on top of it. Without a copy (L1 was bypassed when the write began: the bus was
            // down) the key is dropped instead: the bus may be back by now, and a read since
            // may have found the previous value in L2.
            inner.change_l1(ns, |l1| match l1_copy {
                Some(copy) => l1.insert(
                    *key.digest(),
                    L1Entry::new(copy, inner.clock.now().saturating_add(ttl), size_bytes),
                    &tags,
                ),
                None => {
                    l1.remove(key.digest());
                }
            });
        }
        inner.counters.sets.add(1);
        match publish_after {
            Some((event_id, payload)) => inner.publish_encoded(payload, event_id).await,
            None => Ok(()),
        }
    }

    /// Returns the cached value for `params` in `namespace`, or calls `loader` once for every
    /// concurrent caller of the same key and caches its result.
    ///
    /// While a load for a key runs, other callers of that key wait for it (single flight); a
    /// loader error is handed to every waiter and nothing is cached. A loaded value is cached only
    /// if nothing invalidated or wrote its namespace while it was loading; otherwise it is
    /// returned to the waiters but not stored, so a stale load never outlives an invalidation.
    ///
    /// # Errors
    /// [`ErrorKind::Loader`] with the loader's error as source; [`ErrorKind::InvalidTtl`],
    /// [`ErrorKind::UnknownNamespace`], [`ErrorKind::Encode`], [`ErrorKind::Shutdown`].
    ///
    /// # Cancel safety
    /// Dropping the call that is running the loader lets another waiter run its own loader.
    pub async fn get_or_load<T, P, F, Fut, E>(
        &self,
        namespace: &str,
        params: &P,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let key = self.key(namespace, params)?;
        self.get_or_load_key(&key, options, loader).await
    }

    /// [`EdgeCache::get_or_load`] with a key derived by [`EdgeCache::key`].
    ///
    /// # Errors
    /// As [`EdgeCache::get_or_load`].
    pub async fn get_or_load_key<T, F, Fut, E>(
        &self,
        key: &CacheKey,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &*self.inner;
        inner.check_open()?;
        let (index, ns) = inner.ns_by_key(key)?;
        if let Some(hit) = inner.l1_get::<T>(ns, key) {
            inner.counters.l1_hits.add(1);
            return Ok(hit);
        }
        // L2 is read once, by the flight below, not by every caller that missed L1: a stampede of
        // a thousand callers costs one L2 read and one load.
        let ttl = inner.ttl_for(ns, &options)?;
        let flight_key = (index, *key.digest());
        // A load that began before an invalidation must not serve callers that arrive after
        // it: they start a new flight instead of joining the old one.
        let epoch = ns.epoch.load(SeqCst);
        let flight = {
            let mut flights = lock(&inner.flights);
            match flights.get(&flight_key) {
                Some(f) if f.epoch == epoch => Arc::clone(f),
                _ => {
                    let f = Arc::new(Flight {
                        epoch,
                        cell: OnceCell::new(),
                    });
                    flights.insert(flight_key, Arc::clone(&f));
                    f
                }
            }
        };
        let outcome = flight
            .cell
            .get_or_init(|| async {
                // Another flight may have filled the key between our miss and joining this one.
                if let Some(hit) = inner.l1_get::<T>(ns, key) {
                    return Ok((hit as SharedValue, Source::L1));
                }
                if let Some(hit) = inner.l2_get::<T>(ns, key).await {
                    return Ok((hit as SharedValue, Source::L2));
                }
                inner
                    .load_and_fill(ns, key, ttl, options.resource_tags(), flight.epoch, loader)
                    .await
                    .map(|value| (value, Source::Loaded))
            })
            .await
            .clone();
        {
            let mut flights = lock(&inner.flights);
            if flights
                .get(&flight_key)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                flights.remove(&flight_key);
            }
        }
        let (value, source) = outcome?;
        let counter = match source {
            Source::L1 => &inner.counters.l1_hits,
            Source::L2 => &inner.counters.l2_hits,
            Source::Loaded => &inner.counters.misses,
        };
        counter.add(1);
        value.downcast::<T>().map_err(|_| {
            Error::new(
                ErrorKind::Decode,
                format!("{key}: a concurrent load produced another type"),
            )
        })
    }

    /// Drops every entry of `namespace` from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`]; [`ErrorKind::L2`] when L2 could not be changed: this
    /// node's L1 is still dropped, but nothing is announced (other nodes would otherwise count
    /// an invalidation as done and read back what L2 still holds), so issue it again;
    /// [`ErrorKind::Bus`] when L2 changed but the announcement failed.
    pub async fn invalidate_namespace(&self, namespace: &str, reason: &str) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_name(namespace)?;
        let mut data = Map::new();
        data.insert("reason".into(), json!(reason));
        let mut event =
            inner.new_event(EventType::ManualInvalidation, ns.config.name.clone(), data);
        event.affected_namespaces = vec![ns.config.key_namespace.clone()];
        inner.counters.invalidations.add(1);
        inner.invalidate_namespaces_and_issue(&event).await
    }

    /// Drops exactly the entries of `namespace` written with the tag `resource` (see
    /// [`SetOptions::tag`]) from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`].
    pub async fn invalidate_resource(&self, namespace: &str, resource: &str) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_name(namespace)?;
        let mut data = Map::new();
        data.insert("reason".into(), json!("resource"));
        let mut event = inner.new_event(EventType::ManualInvalidation, resource.to_owned(), data);
        event.affected_namespaces = vec![ns.config.key_namespace.clone()];
        event.scope = Scope::Resource;
        inner.counters.invalidations.add(1);
        let l2 = &inner.l2;
        let key_namespace = ns.config.key_namespace.as_str();
        inner
            .change_l2_and_issue(&event, "invalidate_tag", |announce| async move {
                match announce {
                    Some(event) => {
                        l2.invalidate_tag_and_announce(key_namespace, resource, event)
                            .await
                    }
                    None => l2.invalidate_tag(key_namespace, resource).await,
                }
                .map(drop)
            })
            .await
    }

    /// Drops one key from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`].
    pub async fn invalidate_key(&self, key: &CacheKey) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_key(key)?;
        let mut event = inner.new_event(
            EventType::ManualInvalidation,
            ns.config.name.clone(),
            Map::new(),
        );
        event.scope = Scope::Keys(vec![key.as_str().to_owned()]);
        inner.counters.invalidations.add(1);
        let l2 = &inner.l2;
        inner
            .change_l2_and_issue(&event, "delete", |announce| async move {
                match announce {
                    Some(event) => l2.delete_and_announce(key, event).await,
                    None => l2.delete(key).await,
                }
                .map(drop)
            })
            .await
    }

    /// Announces a marketplace change: invalidates the namespaces the routing table names for its
    /// event type in L2 (once, here), applies it to this node's L1, then publishes it. Returns the
    /// event as published.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`]: on [`ErrorKind::L2`] nothing is announced (this
    /// node's L1 is still cleared); issue the notification again.
    pub async fn notify(&self, notification: Notification) -> Result<Event> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (event_type, resource_id, data) = notification.into_parts();
        let mut event = inner.new_event(event_type, resource_id, data);
        for name in inner.routing.namespaces(event_type) {
            let (_, ns) = inner.ns_by_name(name)?;
            event
                .affected_namespaces
                .push(ns.config.key_namespace.clone());
        }
        inner.counters.notifications.add(1);
        inner.invalidate_namespaces_and_issue(&event).await?;
        Ok(event)
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
                }
            })
            .collect();
        inner
            .counters
            .snapshot(&inner.node_id, &inner.region, namespaces)
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

    fn ttl_for(&self, ns: &NsState, options: &SetOptions) -> Result<Duration> {
        match options.ttl_override() {
            Some(ttl) if ttl.is_zero() => Err(Error::new(
                ErrorKind::InvalidTtl,
                format!(
                    "namespace {:?}: a per-call TTL must be greater than zero",
                    ns.config.name
                ),
            )),
            Some(ttl) => Ok(ttl),
            None => Ok(ns.config.ttl),
        }
    }

    fn encode<T: Serialize + ?Sized>(&self, key: &CacheKey, value: &T) -> Result<Vec<u8>> {
        let bytes = self.codec.encode(value).map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!(
                    "{key}: value cannot be encoded ({}): {}",
                    self.codec.name(),
                    e.message()
                ),
            )
            .with_source(e)
        })?;
        if bytes.len() > self.max_value_bytes {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "{key}: value of {} bytes exceeds the {}-byte limit; nothing was written",
                    bytes.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(bytes)
    }

    /// The hit path of [`EdgeCache::get_key`], kept to what a hit needs: the key's namespace
    /// by pointer (keys this node derived), L1, the counter. `None` sends the caller down the
    /// full path, which reports errors (shut down, unknown namespace) and reads L2.
    #[inline]
    fn l1_hit<T: Send + Sync + 'static>(&self, key: &CacheKey) -> Option<Arc<T>> {
        if self.closed.load(Relaxed) {
            return None;
        }
        let shared = key.key_namespace_shared();
        let ns = self
            .namespaces
            .iter()
            .find(|ns| Arc::ptr_eq(&ns.key_ns, shared))?;
        let hit = self.l1_get::<T>(ns, key)?;
        self.counters.l1_hits.add(1);
        Some(hit)
    }

    /// Whether L1 may be used for `ns` right now: it must exist, and for event-driven namespaces
    /// the bus must be up (otherwise invalidations could be missed).
    #[inline]
    fn usable_l1<'a>(&self, ns: &'a NsState) -> Option<&'a dyn L1Store> {
        let l1 = ns.l1.as_deref()?;
        if ns.config.event_driven && self.bus_down.load(Relaxed) {
            return None;
        }
        Some(l1)
    }

    /// The hit path: no allocation, no lock held across an await (there is no await).
    #[inline]
    fn l1_get<T: Send + Sync + 'static>(&self, ns: &NsState, key: &CacheKey) -> Option<Arc<T>> {
        let l1 = self.usable_l1(ns)?;
        let value = l1.get(key.digest(), self.clock.expiry_now())?;
        // A value of another type (a caller reading the namespace with a different type) is
        // not an error here: fall through to L2 and decode it as asked.
        value.downcast::<T>().ok()
    }

    /// Reads L2 and back-fills L1 for critical namespaces. Failures become misses.
    async fn l2_get<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ns: &NsState,
        key: &CacheKey,
    ) -> Option<Arc<T>> {
        let epoch = ns.epoch.load(SeqCst);
        match self.l2.get(key).await {
            Ok(Some(entry)) => self.accept_l2_entry(ns, key, entry, epoch),
            Ok(None) => None,
            Err(e) => {
                let _ = self.l2_failed("get", e);
                None
            }
        }
    }

    /// Decodes an entry read from L2 (a decode failure is a counted miss) and back-fills L1,
    /// fenced by the namespace epoch read before the L2 read.
    fn accept_l2_entry<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        entry: cache_core::L2Entry,
        epoch: u64,
    ) -> Option<Arc<T>> {
        let typed: Arc<T> = match self.codec.decode(&entry.bytes) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                self.counters.decode_errors.add(1);
                tracing::warn!(key = %key, error = %e, "L2 value does not decode as the requested type; served as a miss");
                return None;
            }
        };
        if let Some(l1) = self.usable_l1(ns) {
            let ttl = entry.ttl_remaining.min(self.backfill_ttl_cap);
            if !ttl.is_zero() {
                let l1_entry = L1Entry::new(
                    typed.clone(),
                    self.clock.now().saturating_add(ttl),
                    len64(&entry.bytes),
                );
                self.fenced_insert(ns, l1, key, l1_entry, &entry.tags, epoch);
            }
        }
        Some(typed)
    }

    /// Inserts only if the namespace's epoch is still `epoch` (read before the value was read)
    /// and L1 is trusted (the bus is up). The gate makes the check and the insert one step
    /// with respect to removals, so an entry removed by an invalidation is never put back.
    fn fenced_insert(
        &self,
        ns: &NsState,
        l1: &dyn L1Store,
        key: &CacheKey,
        entry: L1Entry,
        tags: &[String],
        epoch: u64,
    ) {
        let _gate = ns
            .gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ns.epoch.load(SeqCst) != epoch || (ns.config.event_driven && self.bus_down.load(SeqCst))
        {
            self.counters.fills_fenced.add(1);
            return;
        }
        l1.insert(*key.digest(), entry, tags);
    }

    async fn load_and_fill<T, F, Fut, E>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        ttl: Duration,
        tags: &[String],
        epoch: u64,
        loader: F,
    ) -> Result<SharedValue>
    where
        T: Serialize + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fence: Option<Fence> = match self.l2.fence(key).await {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = self.l2_failed("fence", e);
                None
            }
        };
        self.counters.loads.add(1);
        let value = match loader().await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                self.counters.load_errors.add(1);
                let source: Box<dyn std::error::Error + Send + Sync> = e.into();
                return Err(Error::new(
                    ErrorKind::Loader,
                    format!("loader for {key} failed: {source}"),
                )
                .with_source(source));
            }
        };
        let bytes = match self.encode(key, &*value) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "loaded value not cached");
                return Ok(value);
            }
        };
        let mut stale = false;
        if let Some(fence) = fence {
            let write = L2Write::new(key.clone(), bytes.clone(), ttl)
                .tags(tags.to_vec())
                .fence(Some(fence));
            match self.l2.set(write).await {
                Ok(true) => {}
                Ok(false) => stale = true,
                Err(e) => {
                    let _ = self.l2_failed("set", e);
                }
            }
        }
        if stale {
            self.counters.fills_fenced.add(1);
        } else if let Some(l1) = self.usable_l1(ns) {
            let entry = L1Entry::new(
                value.clone(),
                self.clock.now().saturating_add(ttl),
                len64(&bytes),
            );
            self.fenced_insert(ns, l1, key, entry, tags, epoch);
        }
        Ok(value)
    }

    fn l2_failed(&self, op: &str, e: Error) -> Error {
        self.counters.l2_errors.add(1);
        tracing::warn!(node_id = %self.node_id, op, error = %e, "L2 operation failed");
        e
    }

    fn new_event(
        &self,
        event_type: EventType,
        resource_id: String,
        mut data: Map<String, Value>,
    ) -> Event {
        data.entry("region").or_insert_with(|| json!(self.region));
        let mut event = Event::new(
            event_type,
            resource_id,
            self.node_id.clone(),
            new_event_id(&mut uuid::Uuid::encode_buffer()),
            self.clock.now().as_secs_f64(),
        );
        event.data = data;
        event
    }

    /// Invalidates the event's namespaces in L2 (once, here), applies the event to this node's
    /// L1 and publishes it.
    async fn invalidate_namespaces_and_issue(&self, event: &Event) -> Result<()> {
        let namespaces = &event.affected_namespaces;
        if namespaces.is_empty() {
            return self.issue(event, Ok(())).await;
        }
        self.change_l2_and_issue(event, "invalidate_namespaces", |announce| {
            self.l2.invalidate_namespaces(namespaces, announce)
        })
        .await
    }

    /// Makes an L2 change for `event` (once, here), applies the event to this node's L1 and
    /// publishes it, in that order: no receiver can see the event before L2 changed. Where L2
    /// publishes for the bus, `change` is given the encoded event and the change and the publish
    /// are one step (one round trip on Redis); otherwise it is given `None` and the event goes
    /// out on the bus afterwards. This node's L1 is cleared whatever happened; a failed change
    /// is neither announced (beyond what Redis's script did before failing to reply) nor
    /// counted as applied.
    async fn change_l2_and_issue<F, Fut>(&self, event: &Event, what: &str, change: F) -> Result<()>
    where
        F: FnOnce(Option<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        if !self.announce_via_l2 {
            let l2 = change(None).await.map_err(|e| self.l2_failed(what, e));
            return self.issue(event, l2).await;
        }
        let result = change(Some(event.encode())).await;
        match result {
            Ok(()) => {
                self.apply(event);
                self.counters.events_published.add(1);
                Ok(())
            }
            Err(e) => {
                self.apply_to_l1(event);
                Err(self.l2_failed(what, e))
            }
        }
    }

    /// Applies an event this node issued, then publishes it; reports the first failure.
    ///
    /// After a failed L2 change the event is applied to this node's L1 only (see
    /// [`Inner::apply_to_l1`]) and not published: L2 may still hold what the event says is
    /// gone, and a node that applied it would read that back while counting the invalidation
    /// as done. The caller has the error and can issue it again.
    async fn issue(&self, event: &Event, l2_result: Result<()>) -> Result<()> {
        if let Err(e) = l2_result {
            self.apply_to_l1(event);
            return Err(e);
        }
        self.apply(event);
        self.publish(event).await
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        self.publish_encoded(event.encode(), &event.event_id).await
    }

    /// Publishes an encoded event (`event_id` names it in the log).
    async fn publish_encoded(&self, payload: Vec<u8>, event_id: &str) -> Result<()> {
        match self.bus.publish(payload).await {
            Ok(()) => {
                self.counters.events_published.add(1);
                Ok(())
            }
            Err(e) => {
                self.counters.publish_errors.add(1);
                tracing::warn!(node_id = %self.node_id, event_id, error = %e, "publishing an event failed");
                Err(e)
            }
        }
    }

    /// Applies an event to L1 (never to L2: the issuer did that once).
    pub(crate) fn apply(&self, event: &Event) {
        self.apply_to_l1(event);
        let now = self.clock.now();
        self.counters.events_applied.add(1);
        self.counters
            .last_event_nanos
            .store(now.as_nanos().max(1), Relaxed);
        let lag = now.saturating_since(cache_core::Timestamp::from_secs_f64(event.timestamp));
        self.observer.on_event_applied(event, lag);
    }

    /// What [`Inner::apply`] does to this node's L1 and remembered generations, without
    /// counting the event as applied or telling the observer: for an event this node issued
    /// whose L2 change failed. The node still drops what the event names (it must not go on
    /// serving copies the failed invalidation meant to remove), but the invalidation is not in
    /// effect (L2 may still hold older values, and reads here may return them), so it is not
    /// reported as applied.
    fn apply_to_l1(&self, event: &Event) {
        // A newer format than ours may mean things we cannot interpret: drop whole namespaces.
        let conservative = event.version > cache_core::FORMAT_VERSION;
        for name in &event.affected_namespaces {
            let Some(ns) = self.ns_by_key_namespace(name) else {
                continue;
            };
            if conservative || event.scope == Scope::Namespace {
                // Before L1 is dropped: a read after this apply must not use a remembered
                // generation from before the invalidation.
                self.l2.namespace_invalidated(name);
            }
            match (&event.scope, conservative) {
                (Scope::Resource, false) => self.change_l1(ns, |l1| {
                    l1.invalidate_tag(&event.resource_id);
                }),
                _ => self.change_l1(ns, |l1| {
                    l1.clear();
                }),
            }
        }
        if let Scope::Keys(keys) = &event.scope {
            for key in keys.iter().filter_map(|k| CacheKey::parse(k)) {
                let Some(ns) = self.ns_by_key_namespace(key.key_namespace()) else {
                    continue;
                };
                if conservative {
                    self.change_l1(ns, |l1| {
                        l1.clear();
                    });
                } else {
                    self.change_l1(ns, |l1| {
                        l1.remove(key.digest());
                    });
                }
            }
        }
    }

    /// Changes `ns`'s L1 (if it has one) under the namespace's gate, moving its epoch first, so
    /// that no back-fill which started before the change lands after it.
    fn change_l1(&self, ns: &NsState, change: impl FnOnce(&dyn L1Store)) {
        let _gate = ns
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ns.epoch.fetch_add(1, SeqCst);
        if let Some(l1) = ns.l1.as_deref() {
            change(l1);
        }
    }

    /// Handles one raw message from the bus.
    pub(crate) async fn receive(&self, bytes: &[u8]) {
        self.counters.events_received.add(1);
        if bytes.starts_with(&self.own_prefix) {
            // One of this node's own events, heard back: nothing to decode or apply.
            self.counters.own_events_ignored.add(1);
            self.events_handled.fetch_add(1, Relaxed);
            return;
        }
        match Event::decode(bytes) {
            Ok(event) if event.source_node == self.node_id => {
                self.counters.own_events_ignored.add(1);
            }
            Ok(event) => {
                tracing::debug!(node_id = %self.node_id, event_id = %event.event_id, event_type = %event.event_type, "applying event");
                if event.version == 0 {
                    self.invalidate_l2_for_seed_event(&event).await;
                }
                self.apply(&event);
            }
            Err(e) => {
                self.counters.events_rejected.add(1);
                tracing::warn!(node_id = %self.node_id, error = %e, len = bytes.len(), "dropped a malformed event");
                self.observer.on_event_rejected(&e);
            }
        }
        self.events_handled.fetch_add(1, Relaxed);
    }

    /// A seed (Python) node publishes without touching L2 and relies on every receiver to
    /// clear it. In a mixed fleet this node does its share, before dropping L1, so a read after
    /// the event cannot back-fill from the stale L2 entry. A seed write event (one key, already
    /// rewritten in L2 by its writer) needs nothing here.
    async fn invalidate_l2_for_seed_event(&self, event: &Event) {
        if matches!(event.scope, Scope::Keys(_)) {
            return;
        }
        for name in &event.affected_namespaces {
            if self.ns_by_key_namespace(name).is_none() {
                continue;
            }
            if let Err(e) = self.l2.invalidate_namespace(name).await {
                let _ = self.l2_failed("invalidate_namespace", e);
            }
        }
    }

    /// Handles a change of the bus connection. Pub/sub loses what is published while a node is
    /// away, so L1 of event-driven namespaces is dropped on loss and again on resubscribe, and
    /// bypassed in between.
    pub(crate) fn connection_changed(&self, state: ConnectionState) {
        match state {
            ConnectionState::Connected => {
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
            }
            ConnectionState::Disconnected => {
                self.feed_complete(false);
                self.bus_down.store(true, SeqCst);
                self.drop_event_driven_l1();
                tracing::warn!(node_id = %self.node_id, "event bus disconnected; bypassing L1 of event-driven namespaces");
            }
            ConnectionState::Resubscribed => {
                self.drop_event_driven_l1();
                self.bus_down.store(false, SeqCst);
                self.feed_complete(true);
                tracing::info!(node_id = %self.node_id, "event bus resubscribed; L1 of event-driven namespaces dropped");
            }
            _ => {}
        }
        self.observer.on_connection_state(state);
    }

    fn drop_event_driven_l1(&self) {
        for ns in self.namespaces.iter().filter(|ns| ns.config.event_driven) {
            self.change_l1(ns, |l1| {
                l1.clear();
            });
        }
        self.counters.resyncs.add(1);
    }

    pub(crate) fn listener_stopped(&self) {
        self.listener_running.store(false, SeqCst);
        self.feed_complete(false);
    }

    /// Tells L2 whether this node now hears every invalidation of its namespaces: only when
    /// the subscription is up and invalidations travel on this node's bus (L2 shares its route).
    fn feed_complete(&self, hears: bool) {
        let complete = hears && self.announce_via_l2 && self.listener_running.load(SeqCst);
        if self.feed_complete.swap(complete, SeqCst) != complete {
            let delta = if complete { 1 } else { -1 };
            self.l2.invalidation_feed(delta, -delta);
        }
    }

    /// Withdraws this node's report from L2's count (at shutdown).
    fn leave_feed(&self) {
        if self.feed_complete.load(SeqCst) {
            self.l2.invalidation_feed(-1, 0);
        } else {
            self.l2.invalidation_feed(0, -1);
        }
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
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
