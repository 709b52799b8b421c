//! The read path: L1, then L2 (back-filling L1, fenced by the namespace epoch), then a miss.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, Codec, Digest, L1Entry, L1Store, Result, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::breaker::Call;
use super::trace;
use super::{len64, EdgeCache, Inner, NsState};

// For the links in the docs of the errors a read reports.
#[cfg(doc)]
use cache_core::ErrorKind;

impl<C: Codec> EdgeCache<C> {
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
        let (index, _) = self.inner.ns_by_name(namespace)?;
        self.get_in(index, params).await
    }

    /// [`EdgeCache::get`] in the namespace at `index` (of the configuration).
    pub(crate) async fn get_in<T, P>(&self, index: usize, params: &P) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        P: Serialize + ?Sized,
    {
        let inner = &*self.inner;
        let ns = inner.ns_at(index);
        // The L1 is keyed by the digest: a hit needs neither the key's text nor an allocation.
        let digest = Digest::of_params_within(params, inner.limits.max_params_bytes())?;
        if let Some(hit) = inner.l1_hit_in::<T>(ns, &digest) {
            return Ok(Some(hit));
        }
        self.get_key_past_l1(&CacheKey::from_digest(&ns.key_ns, digest))
            .await
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
        trace::traced("get", key.key_namespace(), async {
            let inner = &*self.inner;
            inner.check_open()?;
            let (_, ns) = inner.ns_by_key(key)?;
            if !Arc::ptr_eq(&ns.key_ns, key.key_namespace_shared()) {
                // Not derived by this node: `l1_hit` did not look this key up.
                if let Some(hit) = inner.l1_get::<T>(ns, key.digest()) {
                    inner.counters.l1_hits.add(1);
                    trace::tier("l1");
                    return Ok(Some(hit));
                }
            }
            let (found, counter, tier) = match inner.l2_read::<T>(ns, key).await {
                L2Read::Hit(value) => (Some(value), &inner.counters.l2_hits, "l2"),
                L2Read::Miss => (None, &inner.counters.misses, "miss"),
                // L2 could not be read: a fail-safe namespace serves the last value it keeps.
                L2Read::Unreachable => match inner
                    .fail_safe(ns, key)
                    .and_then(|value| value.downcast::<T>().ok())
                {
                    Some(value) => (Some(value), &inner.counters.misses, "fail_safe"),
                    None => (None, &inner.counters.misses, "miss"),
                },
            };
            counter.add(1);
            trace::tier(tier);
            Ok(found)
        })
        .await
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
            match inner.l1_get::<T>(ns, key.digest()) {
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
        let entries = match inner.l2_call(|| inner.l2.get_many(&missing_keys)).await {
            Call::Done(Ok(entries)) => entries,
            Call::Done(Err(e)) => {
                let _ = inner.l2_failed("get_many", e);
                vec![None; missing.len()]
            }
            Call::Skipped => vec![None; missing.len()],
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
}

/// What a read of L2 came to.
pub(super) enum L2Read<T> {
    Hit(Arc<T>),
    Miss,
    /// L2 failed or was skipped (its breaker open).
    Unreachable,
}

impl<C: Codec> Inner<C> {
    /// The hit path of [`EdgeCache::get_key`], kept to what a hit needs: the key's namespace
    /// by pointer (keys this node derived), L1, the counter. `None` sends the caller down the
    /// full path, which reports errors (shut down, unknown namespace) and reads L2.
    #[inline]
    fn l1_hit<T: Send + Sync + 'static>(&self, key: &CacheKey) -> Option<Arc<T>> {
        let shared = key.key_namespace_shared();
        let ns = self
            .namespaces
            .iter()
            .find(|ns| Arc::ptr_eq(&ns.key_ns, shared))?;
        self.l1_hit_in(ns, key.digest())
    }

    /// [`Inner::l1_hit`] once the namespace is known.
    #[inline]
    pub(super) fn l1_hit_in<T: Send + Sync + 'static>(
        &self,
        ns: &NsState,
        digest: &Digest,
    ) -> Option<Arc<T>> {
        if self.closed.load(Relaxed) {
            return None;
        }
        let hit = self.l1_get::<T>(ns, digest)?;
        self.counters.l1_hits.add(1);
        Some(hit)
    }

    /// Whether L1 may be used for `ns` right now: it must exist, and for event-driven namespaces
    /// the node must be sure it heard every change (otherwise invalidations could be missed).
    #[inline]
    pub(super) fn usable_l1<'a>(&self, ns: &'a NsState) -> Option<&'a dyn L1Store> {
        let l1 = ns.l1.as_deref()?;
        self.l1_trusted(ns, self.clock.expiry_now()).then_some(l1)
    }

    /// How long an L1 entry of `ns` filled now may live, given the TTL it would have (shortened
    /// in a namespace's shortened-TTL mode).
    pub(super) fn l1_ttl(&self, ns: &NsState, ttl: Duration) -> Duration {
        ns.fresh.as_ref().map_or(ttl, |fresh| fresh.l1_ttl(ttl))
    }

    /// Whether an event-driven namespace's L1 may be trusted at `now` (the coarse clock, never
    /// behind the wall clock): without a log, while the bus is up; with one, while the last
    /// confirmation from the log is recent enough (`serve_until`) and, under the `Bypass`
    /// policy, the bus is up (see [`super::freshness`]).
    #[inline]
    pub(super) fn l1_trusted(&self, ns: &NsState, now: Timestamp) -> bool {
        if !ns.config.event_driven {
            return true;
        }
        match &ns.fresh {
            None => !self.bus_down.load(Relaxed),
            Some(fresh) => {
                !(fresh.bypass_when_down && self.bus_down.load(Relaxed))
                    && (now.as_nanos() < fresh.serve_until.load(Relaxed)
                        || fresh.short_mode.load(Relaxed))
            }
        }
    }

    /// The hit path: no allocation, no lock held across an await (there is no await).
    #[inline]
    pub(super) fn l1_get<T: Send + Sync + 'static>(
        &self,
        ns: &NsState,
        digest: &Digest,
    ) -> Option<Arc<T>> {
        let l1 = ns.l1.as_deref()?;
        let now = self.clock.expiry_now();
        if !self.l1_trusted(ns, now) {
            return None;
        }
        let value = l1.get(digest, now)?;
        // A value of another type (a caller reading the namespace with a different type) is
        // not an error here: fall through to L2 and decode it as asked.
        value.downcast::<T>().ok()
    }

    /// Reads L2 and back-fills L1 for critical namespaces. Failures become misses.
    pub(super) async fn l2_get<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ns: &NsState,
        key: &CacheKey,
    ) -> Option<Arc<T>> {
        match self.l2_read::<T>(ns, key).await {
            L2Read::Hit(value) => Some(value),
            L2Read::Miss | L2Read::Unreachable => None,
        }
    }

    /// Reads L2 (back-filling L1), telling a miss from an L2 that could not be read.
    pub(super) async fn l2_read<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ns: &NsState,
        key: &CacheKey,
    ) -> L2Read<T> {
        let epoch = ns.epoch.load(SeqCst);
        match self.l2_entry(ns, key).await {
            Call::Done(Ok(Some(entry))) => match self.accept_l2_entry(ns, key, entry, epoch) {
                Some(value) => L2Read::Hit(value),
                None => L2Read::Miss,
            },
            Call::Done(Ok(None)) => L2Read::Miss,
            Call::Skipped | Call::Done(Err(_)) => L2Read::Unreachable,
        }
    }

    /// What an eager refresh asks of L2: the entry if it has more than `min_left` to live
    /// (another node refreshed it; back-filled as any read), else the version of the entry it
    /// would replace, if L2 holds one.
    pub(super) async fn l2_get_lasting<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        min_left: Duration,
    ) -> std::result::Result<Arc<T>, Option<u64>> {
        let epoch = ns.epoch.load(SeqCst);
        match self.l2_entry(ns, key).await {
            Call::Done(Ok(Some(entry))) if entry.ttl_remaining <= min_left => Err(entry.version),
            Call::Done(Ok(Some(entry))) => self.accept_l2_entry(ns, key, entry, epoch).ok_or(None),
            _ => Err(None),
        }
    }

    /// One timed L2 read through the breaker; a failure is counted and logged here.
    async fn l2_entry(&self, ns: &NsState, key: &CacheKey) -> Call<Option<cache_core::L2Entry>> {
        let started = tokio::time::Instant::now();
        let read = self.l2_call(|| self.l2.get(key)).await;
        if !matches!(read, Call::Skipped) {
            ns.l2_latency.record(started.elapsed());
        }
        if let Call::Done(Err(e)) = read {
            return Call::Done(Err(self.l2_failed("get", e)));
        }
        read
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
        if entry.bytes.len() > self.max_value_bytes {
            // Written by something that does not hold this node's bound (a seed node, a hand
            // edit): not decoded, not kept in L1.
            self.counters.decode_errors.add(1);
            tracing::warn!(key = %key, len = entry.bytes.len(), max = self.max_value_bytes, "L2 value over the node's value bound; served as a miss");
            return None;
        }
        let typed: Arc<T> = match self.codec.decode(&entry.bytes) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                self.counters.decode_errors.add(1);
                tracing::warn!(key = %key, error = %e, "L2 value does not decode as the requested type; served as a miss");
                return None;
            }
        };
        if let Some(l1) = self.usable_l1(ns) {
            let ttl = self.l1_ttl(ns, entry.ttl_remaining.min(self.backfill_ttl_cap));
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
    pub(super) fn fenced_insert(
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
        if ns.epoch.load(SeqCst) != epoch || !self.l1_trusted(ns, self.clock.expiry_now()) {
            self.counters.fills_fenced.add(1);
            return;
        }
        l1.insert(*key.digest(), entry, tags);
    }
}
