//! Publications that failed after their change was logged (a node whose bus is not on L2's
//! route publishes what [`cache_core::L2Store::change_and_log`] logged): kept in a pending
//! set, one per key for writes (a later write of the key replaces it: newest wins) and one per
//! event otherwise, and republished by a background task with backoff until the bus takes
//! them. Receivers do not wait for it: the change is in the log, and their liveness checks
//! replay it within the staleness bound; the republication is for those that only hear the
//! bus (seed nodes, nodes without a log).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{CacheKey, Codec, Error, ErrorKind, Result};
use tokio::sync::{watch, Notify};

use super::{lock, Inner};

/// What a pending publication is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum PendingKey {
    /// A write's announcement: a later write of the key supersedes it.
    Key(String),
    /// Any other change's event, by event id.
    Event(String),
}

impl PendingKey {
    pub(super) fn key(key: &CacheKey) -> Self {
        Self::Key(key.as_str().to_owned())
    }
}

/// The pending set.
pub(super) struct Pending {
    entries: Mutex<HashMap<PendingKey, Vec<u8>>>,
    /// Entries kept at most.
    max: usize,
    /// `entries.len()`, kept under its lock, read without it.
    len: AtomicUsize,
    /// Wakes the republishing task when an entry is added.
    wake: Notify,
}

impl Pending {
    /// An empty set keeping at most `max` entries.
    pub(super) fn new(max: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max,
            len: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    /// Keeps `message` under `key` (replacing what the key held); whether it was kept (not when
    /// the set is full and `key` is new to it).
    fn insert(&self, key: PendingKey, message: Vec<u8>) -> bool {
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max && !entries.contains_key(&key) {
            return false;
        }
        entries.insert(key, message);
        self.len.store(entries.len(), SeqCst);
        drop(entries);
        self.wake.notify_one();
        true
    }

    /// Removes `key`'s entry if it is still `message` (or any message, with `None`).
    fn remove(&self, key: &PendingKey, message: Option<&[u8]>) {
        let mut entries = lock(&self.entries);
        if message.is_none_or(|m| entries.get(key).is_some_and(|held| held == m)) {
            entries.remove(key);
            self.len.store(entries.len(), SeqCst);
        }
    }

    fn snapshot(&self) -> Vec<(PendingKey, Vec<u8>)> {
        lock(&self.entries)
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect()
    }
}

impl<C: Codec> Inner<C> {
    /// Publishes `message`, a change's event as L2 logged it. If the bus fails, the message is
    /// kept under `pending_key` and republished in the background, and the caller gets an
    /// [`ErrorKind::Bus`] error saying so.
    pub(super) async fn publish_logged(
        &self,
        message: Vec<u8>,
        pending_key: impl FnOnce() -> PendingKey,
        event_id: &str,
    ) -> Result<()> {
        match self.bus.publish(message.clone()).await {
            Ok(()) => {
                self.counters.events_published.add(1);
                if self.pending.len() > 0 {
                    // An older publication of the same key is superseded: receivers replay it
                    // from the log if they missed it.
                    let key = pending_key();
                    if matches!(key, PendingKey::Key(_)) {
                        self.pending.remove(&key, None);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.counters.publish_errors.add(1);
                if self.pending.insert(pending_key(), message) {
                    tracing::warn!(node_id = %self.node_id, event_id, error = %e, "publishing a logged change failed; it is pending and retried, and nodes replay it from the log");
                    return Err(Error::new(
                        ErrorKind::Bus,
                        format!(
                            "the change was made and logged, but publishing its event \
                             {event_id} failed ({e}); the publication is pending and retried, \
                             and nodes replay the change from the log within the staleness \
                             bound"
                        ),
                    )
                    .with_source(e));
                }
                self.counters.publications_dropped.add(1);
                tracing::warn!(node_id = %self.node_id, event_id, error = %e, max = self.pending.max, "publishing a logged change failed and the pending set is full; not kept: nodes that follow the log replay it, others never hear it");
                Err(Error::new(
                    ErrorKind::Bus,
                    format!(
                        "the change was made and logged, but publishing its event {event_id} \
                         failed ({e}), and the pending set is full ({} publications), so it is \
                         not retried; nodes that follow the log replay the change within the \
                         staleness bound",
                        self.pending.max
                    ),
                )
                .with_source(e))
            }
        }
    }

    /// Publishes every pending message once; whether all went out.
    async fn republish(&self) -> bool {
        for (key, message) in self.pending.snapshot() {
            self.counters.publish_retries.add(1);
            match self.bus.publish(message.clone()).await {
                Ok(()) => {
                    self.counters.events_published.add(1);
                    self.pending.remove(&key, Some(&message));
                }
                Err(e) => {
                    tracing::debug!(node_id = %self.node_id, error = %e, "republishing a pending publication failed; retrying later");
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn pending_publications(&self) -> usize {
        self.pending.len()
    }
}

/// The republishing task of a node that publishes what L2 logged: while the pending set holds
/// anything, republishes it after a backoff that starts at a tenth of the liveness interval and
/// doubles after each failed round, up to the interval. Stops at shutdown; what is still
/// pending then is left to the log.
pub(crate) async fn run<C: Codec>(inner: Arc<Inner<C>>, mut shutdown: watch::Receiver<bool>) {
    let max = inner.freshness.liveness.max(Duration::from_millis(1));
    let min = (max / 10).max(Duration::from_millis(1));
    let mut backoff = min;
    loop {
        let idle = inner.pending.len() == 0;
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            () = inner.pending.wake.notified(), if idle => {
                backoff = min;
                continue;
            }
            () = tokio::time::sleep(backoff), if !idle => {}
        }
        backoff = if inner.republish().await {
            min
        } else {
            (backoff * 2).min(max)
        };
    }
    let left = inner.pending.len();
    if left > 0 {
        tracing::warn!(node_id = %inner.node_id, left, "shut down with publications pending; nodes replay those changes from the log");
    }
}
