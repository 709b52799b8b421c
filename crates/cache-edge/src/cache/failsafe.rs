//! Fail-safe: when a load fails or times out, or L2 is unreachable, a namespace that opts in
//! serves the last value of the entry for up to its `fail_safe` window past the entry's expiry.
//!
//! Only expired values are candidates, and only from an L1 the node may trust: a value removed
//! by an invalidation or a write is gone from L1, and while the node cannot be sure it heard
//! every change its L1 is not read at all, so fail-safe never serves what the fleet was told
//! to drop, and the staleness bound holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cache_core::{CacheKey, Codec, Digest, SharedValue};

use super::{lock, Inner, NsState};

/// After a fail-safe answer, how long further loads of the key are answered the same way
/// without asking the failing source again (within the fail-safe window).
const THROTTLE: Duration = Duration::from_secs(1);

/// Per key, a moment (nanoseconds on the expiry clock) until which something is held off:
/// new loads of a key whose source just failed (fail-safe), new eager refreshes of a key
/// refreshed a moment ago.
#[derive(Default)]
pub(crate) struct KeyDeadlines(Mutex<HashMap<Digest, u64>>);

/// Entries kept before past deadlines are swept.
const SWEEP_AT: usize = 4_096;

impl KeyDeadlines {
    /// Holds `digest` off until `until`.
    pub(crate) fn set(&self, digest: Digest, until: u64, now: u64) {
        let mut held = lock(&self.0);
        if held.len() >= SWEEP_AT {
            held.retain(|_, until| *until > now);
        }
        held.insert(digest, until);
    }

    /// Whether `digest` is held off at `now`.
    pub(crate) fn pending(&self, digest: &Digest, now: u64) -> bool {
        lock(&self.0).get(digest).is_some_and(|until| *until > now)
    }

    /// Holds `digest` off until `until` unless it already is; whether it was not.
    pub(crate) fn start(&self, digest: Digest, until: u64, now: u64) -> bool {
        let mut held = lock(&self.0);
        if held
            .get(&digest)
            .is_some_and(|held_until| *held_until > now)
        {
            return false;
        }
        if held.len() >= SWEEP_AT {
            held.retain(|_, until| *until > now);
        }
        held.insert(digest, until);
        true
    }
}

impl<C: Codec> Inner<C> {
    /// The fail-safe value of `key`, if its namespace has fail-safe, its L1 may be trusted and
    /// still keeps an expired value within the window; loads of the key then wait
    /// [`THROTTLE`] before asking the source again.
    pub(super) fn fail_safe(&self, ns: &NsState, key: &CacheKey) -> Option<SharedValue> {
        let value = self.stale_value(ns, key)?;
        let now = self.clock.expiry_now();
        ns.fail_safe_throttle.set(
            *key.digest(),
            now.saturating_add(THROTTLE).as_nanos(),
            now.as_nanos(),
        );
        tracing::warn!(key = %key, "serving the last value past its expiry (fail-safe)");
        Some(value)
    }

    /// The fail-safe value of `key` while a recent failure of its source throttles new loads;
    /// `None` when the source may be asked.
    pub(super) fn throttled(&self, ns: &NsState, key: &CacheKey) -> Option<SharedValue> {
        ns.config.fail_safe?;
        if !ns
            .fail_safe_throttle
            .pending(key.digest(), self.clock.expiry_now().as_nanos())
        {
            return None;
        }
        self.stale_value(ns, key)
    }

    /// The entry's last value past its expiry, within the fail-safe window, from an L1 the node
    /// may trust (counted as served).
    pub(super) fn stale_value(&self, ns: &NsState, key: &CacheKey) -> Option<SharedValue> {
        ns.config.fail_safe?;
        let l1 = self.usable_l1(ns)?;
        let stale = l1.get_stale(key.digest(), self.clock.expiry_now())?;
        self.counters.fail_safe_served.add(1);
        Some(stale.value)
    }
}
