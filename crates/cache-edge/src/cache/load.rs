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
    epoch: u64,
    cell: OnceCell<Result<(SharedValue, Source)>>,
}

/// Where a flight found its value, so each caller it serves is counted as a hit or a miss.
#[derive(Debug, Clone, Copy)]
enum Source {
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
                if let Some(hit) = inner.l1_get::<T>(ns, key.digest()) {
                    return Ok((hit as SharedValue, Source::L1));
                }
                if let Some(hit) = inner.l2_get::<T>(ns, key).await {
                    return Ok((hit as SharedValue, Source::L2));
                }
                let timeout = options.load_timeout_override().or(ns.config.load_timeout);
                let plan = LoadPlan {
                    ttl,
                    tags: options.resource_tags(),
                    epoch: flight.epoch,
                    timeout,
                };
                inner.load_and_fill(ns, key, plan, loader).await
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
        let (counter, tier) = match source {
            Source::L1 => (&inner.counters.l1_hits, "l1"),
            Source::L2 => (&inner.counters.l2_hits, "l2"),
            Source::Loaded => (&inner.counters.misses, "loaded"),
            // Counted in `fail_safe_served` when it was found.
            Source::FailSafe => (&inner.counters.misses, "fail_safe"),
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
struct LoadPlan<'a> {
    ttl: Duration,
    tags: &'a [String],
    /// The namespace's epoch when the flight began (fills are fenced by it).
    epoch: u64,
    /// How long the loader may run.
    timeout: Option<Duration>,
}

impl<C: Codec> Inner<C> {
    async fn load_and_fill<T, F, Fut, E>(
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
                .fence(Some(fence));
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
