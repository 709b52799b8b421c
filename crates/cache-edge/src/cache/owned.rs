//! `get_or_load_owned`: `get_or_load` with a loader that owns what it uses (`Send + 'static`),
//! so its load can outlive the call. That is what a soft timeout needs (answer with the
//! fail-safe value, let the load finish and fill the cache) and what eager refresh needs (a hit
//! near the end of its entry's life starts a background load).

use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, Codec, Digest, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::options::SetOptions;

use super::load::{LoadPlan, Source};
use super::{trace, EdgeCache, NsState};

/// After an eager refresh of a key starts, how long before a hit may start another (one that
/// ended without a new value, because another node holds the key's fill lease or the loader
/// failed, is retried no sooner).
const REFRESH_RETRY: Duration = Duration::from_millis(250);

impl<C: Codec> EdgeCache<C> {
    /// [`EdgeCache::get_or_load`] with a loader that owns what it uses, so the cache can let it
    /// run past the call. Besides everything `get_or_load` does (single flight, the fill lease,
    /// fail-safe, the hard load timeout), this gives:
    ///
    /// - **Soft timeout** ([`NamespaceConfig::soft_timeout`], or [`SetOptions::soft_timeout`]
    ///   per call): when the load takes longer and the entry's last value is at hand under
    ///   fail-safe, the call answers with that value, and the load goes on and fills the cache
    ///   when it ends.
    /// - **Eager refresh** ([`NamespaceConfig::eager_refresh`]): a hit on an entry near the end
    ///   of its life starts one background load of the key, so it never expires under load.
    ///   The hit itself is answered at once.
    ///
    /// The load runs in a task of its own (spawned on the current tokio runtime), so dropping
    /// the call does not cancel it: its result is still cached.
    ///
    /// # Errors
    /// As [`EdgeCache::get_or_load`], and [`ErrorKind::Loader`] if the loader panicked;
    /// [`ErrorKind::InvalidConfig`] for a per-call soft timeout in a namespace without
    /// fail-safe.
    ///
    /// [`NamespaceConfig::soft_timeout`]: cache_core::NamespaceConfig::soft_timeout
    /// [`NamespaceConfig::eager_refresh`]: cache_core::NamespaceConfig::eager_refresh
    pub async fn get_or_load_owned<T, P, F, Fut, E>(
        &self,
        namespace: &str,
        params: &P,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let (_, ns) = self.inner.ns_by_name(namespace)?;
        let digest = Digest::of_params_within(params, self.inner.limits.max_params_bytes())?;
        let key = CacheKey::from_digest(&ns.key_ns, digest);
        self.get_or_load_owned_key(&key, options, loader).await
    }

    /// [`EdgeCache::get_or_load_owned`] with a key derived by [`EdgeCache::key`].
    ///
    /// # Errors
    /// As [`EdgeCache::get_or_load_owned`].
    pub async fn get_or_load_owned_key<T, F, Fut, E>(
        &self,
        key: &CacheKey,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = &*self.inner;
        inner.check_open()?;
        let (index, ns) = inner.ns_by_key(key)?;
        if options.soft_timeout_override().is_some() && ns.config.fail_safe.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{key}: a soft timeout answers with the fail-safe value, and namespace {:?} \
                     has no fail-safe",
                    ns.config.name
                ),
            ));
        }
        if let Some(hit) = inner.l1_get::<T>(ns, key.digest()) {
            inner.counters.l1_hits.add(1);
            if ns.config.eager_refresh.is_some() {
                self.refresh_if_due(index, ns, key, options, loader);
            }
            return Ok(hit);
        }
        trace::traced(
            "get_or_load",
            &ns.config.name,
            self.load_owned(index, ns, key, options, loader),
        )
        .await
    }

    /// The owned flight once L1 missed: run in its own task, waited for up to the soft timeout.
    async fn load_owned<T, F, Fut, E>(
        &self,
        index: usize,
        ns: &NsState,
        key: &CacheKey,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = &*self.inner;
        let ttl = inner.ttl_for(ns, &options)?;
        let soft = options.soft_timeout_override().or(ns.config.soft_timeout);
        let flight = inner.join_flight(index, key, ns.epoch.load(SeqCst));
        let mut task = {
            let inner = Arc::clone(&self.inner);
            let key = key.clone();
            tokio::spawn(async move {
                let ns = inner.ns_at(index);
                let plan = LoadPlan::new(ns, &options, ttl, flight.epoch);
                let outcome = flight
                    .cell
                    .get_or_init(|| inner.run_flight::<T, _, _, _>(ns, &key, plan, loader))
                    .await
                    .clone();
                inner.leave_flight(index, &key, &flight);
                outcome
            })
        };
        let joined = match soft {
            None => (&mut task).await,
            Some(soft) => match tokio::time::timeout(soft, &mut task).await {
                Ok(joined) => joined,
                Err(_) => match inner.stale_value(ns, key) {
                    Some(last) => {
                        inner.counters.soft_timeouts.add(1);
                        tracing::info!(key = %key, ?soft, "load past its soft timeout: answered with the last value, the load goes on");
                        return inner.finish(key, Ok((last, Source::FailSafe)));
                    }
                    None => (&mut task).await,
                },
            },
        };
        let outcome = joined.unwrap_or_else(|e| {
            Err(Error::new(
                ErrorKind::Loader,
                format!("the load of {key} ended abnormally: {e}"),
            ))
        });
        inner.finish(key, outcome)
    }

    /// Starts a background refresh of `key` (just hit in L1) if its entry is in the last part
    /// of its life that the namespace's `eager_refresh` names, and no load of it is running or
    /// started a moment ago.
    fn refresh_if_due<T, F, Fut, E>(
        &self,
        index: usize,
        ns: &NsState,
        key: &CacheKey,
        options: SetOptions,
        loader: F,
    ) where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = &*self.inner;
        let (Some(permille), Some(l1)) = (ns.config.eager_refresh, ns.l1.as_deref()) else {
            return;
        };
        let now = inner.clock.expiry_now();
        let Some(expires_at) = l1.expires_at(key.digest(), now) else {
            return;
        };
        let Ok(ttl) = inner.ttl_for(ns, &options) else {
            return;
        };
        let window = inner.l1_ttl(ns, ttl) * u32::from(1000 - permille) / 1000;
        let left = expires_at.saturating_since(now);
        if left > window
            || !ns.refresh_after.start(
                *key.digest(),
                now.saturating_add(REFRESH_RETRY).as_nanos(),
                now.as_nanos(),
            )
        {
            return;
        }
        let Some(flight) = inner.start_flight(index, key, ns.epoch.load(SeqCst)) else {
            return;
        };
        inner.counters.eager_refreshes.add(1);
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        tokio::spawn(async move {
            let ns = inner.ns_at(index);
            let mut plan = LoadPlan::new(ns, &options, ttl, flight.epoch);
            plan.refresh = Some(left);
            let outcome = flight
                .cell
                .get_or_init(|| inner.run_flight::<T, _, _, _>(ns, &key, plan, loader))
                .await;
            if let Err(e) = outcome {
                tracing::warn!(key = %key, error = %e, "eager refresh failed; the entry serves until it expires");
            }
            inner.leave_flight(index, &key, &flight);
        });
    }
}
