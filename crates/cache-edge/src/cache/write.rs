//! The write path: L2, then this node's L1, then the write's announcement to the fleet.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    CacheKey, Codec, Error, ErrorKind, L1Entry, L2Write, LoggedChange, Result, WriteAnnouncement,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::options::SetOptions;

use super::breaker::Call;
use super::pending::PendingKey;
use super::trace;
use super::{len64, new_event_id, EdgeCache, Inner, NsState};

impl<C: Codec> EdgeCache<C> {
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
    /// [`ErrorKind::Bus`] when the write landed but the announcement failed. Where L2 keeps an
    /// event log ([`cache_core::L2Store::sequenced`]) the write was logged with it: nodes
    /// replay it from the log within the staleness bound, and a node whose bus is not on L2's
    /// route keeps the publication pending and retries it in the background (a later write of
    /// the key replaces it; see [`crate::Stats::pending_publications`]). Without a log, other
    /// nodes may keep their old copy until its TTL.
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
        trace::traced(
            "set",
            key.key_namespace(),
            self.write_key_traced(key, value, options, l1_copy),
        )
        .await
    }

    /// [`EdgeCache::write_key`] in its span.
    async fn write_key_traced<T>(
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
        inner.limits.check_tags(options.resource_tags())?;
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
            (event_id, inner.seal(payload))
        });
        let size_bytes = len64(&bytes);
        let mut write = L2Write::new(key.clone(), bytes, ttl).tags(tags.clone());
        // Where L2 can publish for the bus, the write and its announcement are one step. Where
        // it logs for a bus on another route, the write and its log entry are one step and the
        // message as logged is published once the write is made; otherwise the announcement
        // is published once the write is made.
        let announced_by_l2 = announcement.is_some() && inner.announce_via_l2;
        let (publish_after, logged_by_l2) = match announcement {
            Some((_, payload)) if announced_by_l2 => {
                write = write.announce(payload);
                (None, None)
            }
            Some(announcement) if inner.publish_logged => (None, Some(announcement)),
            other => (other, None),
        };
        // Read before the write is sent: a change of this namespace's L1 while the write is on
        // its way (an event applied, an invalidation issued here) may be newer than the write,
        // and the write's copy must not be cached over it.
        let epoch = ns.epoch.load(std::sync::atomic::Ordering::SeqCst);
        let mut publish_logged = None;
        let sent = inner
            .l2_call(|| async {
                match logged_by_l2 {
                    Some((event_id, payload)) => inner
                        .l2
                        .change_and_log(LoggedChange::Set(write), payload)
                        .await
                        .map(|logged| {
                            publish_logged = logged.message.map(|message| (event_id, message));
                            logged.count > 0
                        }),
                    None => inner.l2.set(write).await,
                }
            })
            .await;
        let result = match sent {
            Call::Done(result) => result,
            // Nothing was sent: L2, the fleet and this node's L1 are as they were.
            Call::Skipped => return Err(inner.l2_skipped_error("set")),
        };
        let written = match result {
            Err(e) if announced_by_l2 && inner.published_late(&e) => true,
            Ok(written) => written,
            Err(e) => {
                // The write may have landed all the same (a reply lost to a timeout): this
                // node's copy of the key may be the older value, so it goes, as an issuer's
                // failed invalidation drops what it names.
                if ns.l1.is_some() {
                    inner.change_l1(ns, |l1| {
                        l1.remove(key.digest());
                    });
                }
                return Err(inner.l2_failed("set", e));
            }
        };
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
            // Under the gate, as `change_l1` does, and only if nothing changed L1 since the
            // write was sent; otherwise the key is dropped (a miss, never a stale hit).
            let _gate = ns
                .gate
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let unchanged = ns.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == epoch;
            if let Some(l1) = ns.l1.as_deref() {
                match l1_copy {
                    Some(copy) if unchanged => l1.insert(
                        *key.digest(),
                        L1Entry::new(
                            copy,
                            inner.clock.now().saturating_add(inner.l1_ttl(ns, ttl)),
                            size_bytes,
                        ),
                        &tags,
                    ),
                    _ => {
                        l1.remove(key.digest());
                    }
                }
            }
        }
        inner.counters.sets.add(1);
        match (publish_after, publish_logged) {
            (Some((event_id, payload)), _) => inner.publish_encoded(payload, event_id).await,
            (None, Some((event_id, message))) => {
                inner
                    .publish_logged(message, || PendingKey::key(key), event_id)
                    .await
            }
            (None, None) => Ok(()),
        }
    }
}

impl<C: Codec> Inner<C> {
    pub(super) fn ttl_for(&self, ns: &NsState, options: &SetOptions) -> Result<Duration> {
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

    pub(super) fn encode<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
    ) -> Result<Vec<u8>> {
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
}
