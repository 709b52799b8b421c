//! The fleet-wide fill lease (see [`cache_core::NamespaceConfig::fill_lease`]): of the nodes
//! that miss a key in L2 at about the same time, the one that takes the key's lease in L2 loads
//! it; the others wait for the lease's release (woken by it, not polling) and read the value it
//! filled. A holder that dies frees the key when its lease runs out. Combined with each node's
//! single flight, a fleet-wide herd on one key costs one load.
//!
//! Freshness is untouched: a waiter reads the holder's value through the ordinary fenced L2
//! read, and the holder's fill is fenced like any other, so a value loaded across an
//! invalidation is never stored and its waiters find nothing and try again.

use std::future::Future;

use cache_core::{CacheKey, Codec, Lease, Result, SharedValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::breaker::Call;
use super::load::{LoadPlan, Source};
use super::{new_event_id, Inner, NsState};

/// Times a waiter tries for the lease (waiting each time it finds it held) before it loads
/// without one: a dead holder's key is taken over by one waiter, whose fill the others wait for.
const LEASE_ROUNDS: usize = 3;

impl<C: Codec> Inner<C> {
    /// Loads `key` and fills it, under the namespace's fill lease if it has one.
    pub(super) async fn load_under_lease<T, F, Fut, E>(
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
        let Some(hold) = ns.config.fill_lease else {
            return self.load_and_fill(ns, key, plan, loader).await;
        };
        let mut buffer = uuid::Uuid::encode_buffer();
        let token = new_event_id(&mut buffer).to_owned();
        for _ in 0..LEASE_ROUNDS {
            let wait = match self.l2_call(|| self.l2.lease(key, &token, hold)).await {
                Call::Done(Ok(Lease::Acquired)) => {
                    self.counters.leases_taken.add(1);
                    // This node missed L2 before it asked for the lease: a holder may have
                    // filled the key and released it in between. Read again before loading.
                    let loaded = match self.filled::<T>(ns, key, plan).await {
                        Some(value) => Ok((value, Source::L2)),
                        None => self.load_and_fill(ns, key, plan, loader).await,
                    };
                    // Released whatever the load's outcome: after a failure the waiters try
                    // for the lease at once rather than wait it out.
                    if let Call::Done(Err(e)) =
                        self.l2_call(|| self.l2.release_lease(key, &token)).await
                    {
                        let _ = self.l2_failed("release lease", e);
                    }
                    return loaded;
                }
                Call::Done(Ok(Lease::Held(wait))) => wait,
                Call::Done(Err(e)) => {
                    let _ = self.l2_failed("lease", e);
                    break;
                }
                Call::Skipped => break,
            };
            if plan.refresh.is_some() {
                // A refresh of a live entry need not wait: another node is loading the key,
                // and the entry serves until its fill, which a later hit takes from L2.
                if let Some(live) = self.l1_get::<T>(ns, key.digest()) {
                    return Ok((live as SharedValue, Source::L1));
                }
            }
            self.counters.lease_waits.add(1);
            if let Call::Done(Err(e)) = self.l2_call(|| self.l2.wait_lease(key, &wait)).await {
                let _ = self.l2_failed("wait for lease", e);
                break;
            }
            if let Some(value) = self.filled::<T>(ns, key, plan).await {
                self.counters.lease_fills.add(1);
                return Ok((value, Source::L2));
            }
        }
        self.load_and_fill(ns, key, plan, loader).await
    }

    /// The value another node's load filled into L2, if any (for a refresh, only one that
    /// outlives the refresh window).
    async fn filled<T>(
        &self,
        ns: &NsState,
        key: &CacheKey,
        plan: LoadPlan<'_>,
    ) -> Option<SharedValue>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let value = match plan.refresh {
            None => self.l2_get::<T>(ns, key).await?,
            Some(window) => self.l2_get_lasting::<T>(ns, key, window).await.ok()?,
        };
        Some(value as SharedValue)
    }
}
