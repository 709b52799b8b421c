//! `get_or_load`: a read that, on a miss, runs the caller's loader once per key (single flight)
//! and caches its result unless an invalidation or a write of the namespace raced it.

use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    CacheKey, Codec, Digest, Error, ErrorKind, Fence, L1Entry, L2Write, Result, SharedValue,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::options::SetOptions;

use super::breaker::Call;
use super::trace;
use super::{len64, lock, EdgeCache, Inner, NsState};

/// One in-progress load of a key, joined by every caller that misses the key while the
/// namespace's epoch is still the one the load started in.
pub(super) struct Flight {
    pub(super) epoch: u64,
    pub(super) cell: OnceCell<Result<(SharedValue, Source)>>,
}

impl Flight {
    fn new(epoch: u64) -> Arc<Flight> {
        Arc::new(Flight {
            epoch,
            cell: OnceCell::new(),
        })
    }
}

/// Where a flight found its value, so each caller it serves is counted as a hit or a miss.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    L1,
    L2,
    Loaded,
    /// The entry's last value, past its expiry: the load failed (see `failsafe.rs`).
    FailSafe,
}

impl<C: Codec> EdgeCache<C> {
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
        let (index, _) = self.inner.ns_by_name(namespace)?;
        self.get_or_load_in(index, params, options, loader).await
    }

    /// [`EdgeCache::get_or_load`] in the namespace at `index` (of the configuration).
    pub(crate) async fn get_or_load_in<T, P, F, Fut, E>(
        &self,
        index: usize,
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
        let inner = &*self.inner;
        let ns = inner.ns_at(index);
        // As `get`: an L1 hit needs only the digest.
        let digest = Digest::of_params_within(params, inner.limits.max_params_bytes())?;
        if let Some(hit) = inner.l1_hit_in::<T>(ns, &digest) {
            return Ok(hit);
        }
        let key = CacheKey::from_digest(&ns.key_ns, digest);
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
        if let Some(hit) = inner.l1_get::<T>(ns, key.digest()) {
            inner.counters.l1_hits.add(1);
            return Ok(hit);
        }
        trace::traced(
            "get_or_load",
            &ns.config.name,
            self.load_past_l1(index, ns, key, options, loader),
        )
        .await
    }

    /// [`EdgeCache::get_or_load_key`] once L1 missed: the flight, in its span.
    async fn load_past_l1<T, F, Fut, E>(
        &self,
        index: usize,
        ns: &NsState,
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
        if let Some(soft) = options.soft_timeout_override() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{key}: a soft timeout ({soft:?}) lets the load outlive the call, which \
                     get_or_load's borrowing loader cannot: use get_or_load_owned"
                ),
            ));
        }
        // L2 is read once, by the flight below, not by every caller that missed L1: a stampede of
        // a thousand callers costs one L2 read and one load.
        let ttl = inner.ttl_for(ns, &options)?;
        let flight = inner.join_flight(index, key, ns.epoch.load(SeqCst));
        let plan = LoadPlan::new(ns, &options, ttl, flight.epoch);
        let outcome = flight
            .cell
            .get_or_init(|| inner.run_flight::<T, _, _, _>(ns, key, plan, loader))
            .await
            .clone();
        inner.leave_flight(index, key, &flight);
        inner.finish(key, outcome)
    }
}

impl<C: Codec> Inner<C> {
    /// The flight of `key` to join: the one in progress if it began in the namespace's current
    /// `epoch`, else a new one. A load that began before an invalidation must not serve callers
    /// that arrive after it: they start a new flight instead of joining the old one.
    pub(super) fn join_flight(&self, index: usize, key: &CacheKey, epoch: u64) -> Arc<Flight> {
        let mut flights = lock(&self.flights);
        match flights.get(&(index, *key.digest())) {
            Some(f) if f.epoch == epoch => Arc::clone(f),
            _ => {
                let f = Flight::new(epoch);
                flights.insert((index, *key.digest()), Arc::clone(&f));
                f
            }
        }
    }

    /// A new flight of `key` unless one is in progress (of any epoch).
    pub(super) fn start_flight(
        &self,
        index: usize,
        key: &CacheKey,
        epoch: u64,
    ) -> Option<Arc<Flight>> {
        let mut flights = lock(&self.flights);
        if flights.contains_key(&(index, *key.digest())) {
            return None;
        }
        let f = Flight::new(epoch);
        flights.insert((index, *key.digest()), Arc::clone(&f));
        Some(f)
    }

    /// Removes `flight` from the map once it has its outcome, unless a newer one took its place.
    pub(super) fn leave_flight(&self, index: usize, key: &CacheKey, flight: &Arc<Flight>) {
        let mut flights = lock(&self.flights);
        let flight_key = (index, *key.digest());
        if flights
            .get(&flight_key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            flights.remove(&flight_key);
        }
    }

    /// What a flight does: the L1 and L2 checks, then the load (under the fleet's fill lease
    /// where the namespace has one). An eager refresh (`plan.refresh`) skips L1, which holds the
    /// value being refreshed, and takes from L2 only a value that outlives the refresh window.
    pub(super) async fn run_flight<T, F, Fut, E>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        plan: LoadPlan<'_>,
        loader: F,
    ) -> Result<(SharedValue, Source)>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut plan = plan;
        match plan.refresh {
            None => {
                // Another flight may have filled the key between our miss and joining this one.
                if let Some(hit) = self.l1_get::<T>(ns, key.digest()) {
                    return Ok((hit as SharedValue, Source::L1));
                }
                if let Some(hit) = self.l2_get::<T>(ns, key).await {
                    return Ok((hit as SharedValue, Source::L2));
                }
            }
            Some(window) => match self.l2_get_lasting::<T>(ns, key, window).await {
                Ok(hit) => return Ok((hit as SharedValue, Source::L2)),
                Err(version) => plan.replaces = version,
            },
        }
        self.load_under_lease(ns, key, plan, loader).await
    }

    /// Counts a flight's outcome for one of its callers (a hit or a miss, by where the value
    /// came from) and hands it out as `T`.
    pub(super) fn finish<T: Send + Sync + 'static>(
        &self,
        key: &CacheKey,
        outcome: Result<(SharedValue, Source)>,
    ) -> Result<Arc<T>> {
        let (value, source) = outcome?;
        let (counter, tier) = match source {
            Source::L1 => (&self.counters.l1_hits, "l1"),
            Source::L2 => (&self.counters.l2_hits, "l2"),
            Source::Loaded => (&self.counters.misses, "loaded"),
            // Counted in `fail_safe_served` when it was found.
            Source::FailSafe => (&self.counters.misses, "fail_safe"),
        };
        counter.add(1);
        trace::tier(tier);
        value.downcast::<T>().map_err(|_| {
            Error::new(
                ErrorKind::Decode,
                format!("{key}: a concurrent load produced another type"),
            )
        })
    }
}

/// What a load needs besides its key and loader.
#[derive(Clone, Copy)]
pub(super) struct LoadPlan<'a> {
    pub(super) ttl: Duration,
    pub(super) tags: &'a [String],
    /// The namespace's epoch when the flight began (fills are fenced by it).
    pub(super) epoch: u64,
    /// How long the loader may run.
    pub(super) timeout: Option<Duration>,
    /// For an eager refresh: how long the entry had left when it was found due, the least an L2
    /// value must have to stand for a refresh another node made.
    pub(super) refresh: Option<Duration>,
    /// For an eager refresh: the version of the L2 entry it refreshes, which its fill may
    /// replace (see [`cache_core::L2Write::replaces`]).
    pub(super) replaces: Option<u64>,
}

impl<'a> LoadPlan<'a> {
    /// A plain load (not a refresh) of an entry of `ns` with `options`' timeout and tags.
    pub(super) fn new(ns: &NsState, options: &'a SetOptions, ttl: Duration, epoch: u64) -> Self {
        LoadPlan {
            ttl,
            tags: options.resource_tags(),
            epoch,
            timeout: options.load_timeout_override().or(ns.config.load_timeout),
            refresh: None,
            replaces: None,
        }
    }
}

impl<C: Codec> Inner<C> {
    pub(super) async fn load_and_fill<T, F, Fut, E>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        plan: LoadPlan<'_>,
        loader: F,
    ) -> Result<(SharedValue, Source)>
    where
        T: Serialize + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let LoadPlan {
            ttl,
            tags,
            epoch,
            timeout,
            refresh: _,
            replaces,
        } = plan;
        // With the breaker open, L2 is skipped: the loaded value goes to L1 only.
        let fence: Option<Fence> = match self.l2_call(|| self.l2.fence(key)).await {
            Call::Done(Ok(f)) => Some(f),
            Call::Done(Err(e)) => {
                let _ = self.l2_failed("fence", e);
                None
            }
            Call::Skipped => None,
        };
        // The source failed a moment ago: answer with the last value instead of asking again.
        if let Some(last) = self.throttled(ns, key) {
            return Ok((last, Source::FailSafe));
        }
        self.counters.loads.add(1);
        let started = tokio::time::Instant::now();
        let loaded = match timeout {
            None => loader().await,
            Some(limit) => match tokio::time::timeout(limit, loader()).await {
                Ok(loaded) => loaded,
                Err(_) => {
                    ns.loader_latency.record(started.elapsed());
                    self.counters.load_errors.add(1);
                    self.counters.load_timeouts.add(1);
                    if let Some(last) = self.fail_safe(ns, key) {
                        return Ok((last, Source::FailSafe));
                    }
                    return Err(Error::new(
                        ErrorKind::Loader,
                        format!("loader for {key} did not finish within {limit:?}"),
                    ));
                }
            },
        };
        ns.loader_latency.record(started.elapsed());
        let value = match loaded {
            Ok(v) => Arc::new(v),
            Err(e) => {
                self.counters.load_errors.add(1);
                if let Some(last) = self.fail_safe(ns, key) {
                    return Ok((last, Source::FailSafe));
                }
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
                return Ok((value, Source::Loaded));
            }
        };
        let mut stale = false;
        if let Some(fence) = fence {
            let write = L2Write::new(key.clone(), bytes.clone(), ttl)
                .tags(tags.to_vec())
                .fence(Some(fence))
                .replacing(replaces);
            match self.l2_call(|| self.l2.set(write)).await {
                Call::Done(Ok(true)) | Call::Skipped => {}
                Call::Done(Ok(false)) => stale = true,
                Call::Done(Err(e)) => {
                    let _ = self.l2_failed("set", e);
                }
            }
        }
        if stale {
            self.counters.fills_fenced.add(1);
        } else if let Some(l1) = self.usable_l1(ns) {
            let entry = L1Entry::new(
                value.clone(),
                self.clock.now().saturating_add(self.l1_ttl(ns, ttl)),
                len64(&bytes),
            );
            self.fenced_insert(ns, l1, key, entry, tags, epoch);
        }
        Ok((value, Source::Loaded))
    }
}
