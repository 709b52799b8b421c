//! The storage traits: the in-process L1 store and the shared L2 store.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::{CacheKey, Digest};
use crate::log::LogRead;
use crate::namespace::NamespaceConfig;
use crate::time::Timestamp;

/// A decoded value as L1 holds it: shared, immutable, handed out without copying.
pub type SharedValue = Arc<dyn Any + Send + Sync>;

/// One L1 entry.
#[non_exhaustive]
#[derive(Clone)]
pub struct L1Entry {
    /// The decoded value.
    pub value: SharedValue,
    /// When the entry stops being served.
    pub expires_at: Timestamp,
    /// The value's size in bytes, as charged against the namespace's budget (edge-cache uses the
    /// length of its encoded form).
    pub size_bytes: u64,
}

impl L1Entry {
    /// An entry holding `value` until `expires_at`, charged `size_bytes`.
    pub fn new(value: SharedValue, expires_at: Timestamp, size_bytes: u64) -> Self {
        Self {
            value,
            expires_at,
            size_bytes,
        }
    }
}

impl fmt::Debug for L1Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L1Entry")
            .field("expires_at", &self.expires_at)
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

/// What an L1 store holds right now.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Usage {
    /// Entries held (expired ones not yet removed included).
    pub entries: u64,
    /// Bytes charged against the budget, overhead included.
    pub bytes: u64,
    /// The budget.
    pub capacity_bytes: u64,
}

impl L1Usage {
    /// Usage of `entries` entries weighing `bytes` out of `capacity_bytes`.
    pub fn new(entries: u64, bytes: u64, capacity_bytes: u64) -> Self {
        Self {
            entries,
            bytes,
            capacity_bytes,
        }
    }
}

/// The in-process store of one namespace.
///
/// Contract for implementors: every method is safe to call from many threads at once; `get` must
/// not block behind writers for long and must not return an entry whose `expires_at` is at or
/// before `now`; the bytes held stay within the budget the store was built with.
pub trait L1Store: Send + Sync {
    /// The live value under `digest`, if any.
    fn get(&self, digest: &Digest, now: Timestamp) -> Option<SharedValue>;

    /// The entry under `digest` if it has expired but is still kept for fail-safe (its
    /// namespace has [`crate::NamespaceConfig::fail_safe`]): its value, when it expired, and
    /// its size. Never one removed by [`L1Store::remove`], [`L1Store::invalidate_tag`] or
    /// [`L1Store::clear`]. Default: `None` (a store that keeps nothing past expiry).
    fn get_stale(&self, _digest: &Digest, _now: Timestamp) -> Option<L1Entry> {
        None
    }

    /// When the live entry under `digest` expires, if there is one: what eager refresh needs
    /// to tell a hit near its end. Default: `None` (a store that cannot tell; such a
    /// namespace is never refreshed early).
    fn expires_at(&self, _digest: &Digest, _now: Timestamp) -> Option<Timestamp> {
        None
    }

    /// Stores `entry` under `digest`, replacing any previous entry, and records `tags` so
    /// [`L1Store::invalidate_tag`] can find it. An entry larger than the budget is not stored.
    fn insert(&self, digest: Digest, entry: L1Entry, tags: &[String]);

    /// Removes the entry under `digest`; whether there was one.
    fn remove(&self, digest: &Digest) -> bool;

    /// Removes every entry recorded with `tag`; how many were removed.
    fn invalidate_tag(&self, tag: &str) -> u64;

    /// Removes everything; how many entries were removed.
    fn clear(&self) -> u64;

    /// Entries and bytes held.
    fn usage(&self) -> L1Usage;
}

/// Builds the L1 store of each namespace.
pub trait L1Factory: Send + Sync {
    /// A store for `config`, honouring `config.max_memory_bytes`.
    fn build(&self, config: &NamespaceConfig) -> Box<dyn L1Store>;
}

/// An opaque token taken before a load and checked when the result is written back: the write is
/// refused if the key was written or deleted, or its namespace (or a tag) invalidated, in
/// between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence(pub u64);

/// One entry read from L2.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Entry {
    /// The encoded value.
    pub bytes: Vec<u8>,
    /// How much longer L2 keeps it; L1 copies never outlive this.
    pub ttl_remaining: Duration,
    /// The resource tags it was written with, so an L1 copy can be invalidated by tag too.
    pub tags: Vec<String>,
    /// Tells this write of the entry from any later one, for [`L2Write::replacing`]; `None`
    /// from a store that cannot tell (its entries are never replaced by a refresh).
    pub version: Option<u64>,
}

impl L2Entry {
    /// An entry of `bytes` that L2 keeps for `ttl_remaining` more, without tags.
    pub fn new(bytes: Vec<u8>, ttl_remaining: Duration) -> Self {
        Self {
            bytes,
            ttl_remaining,
            tags: Vec::new(),
            version: None,
        }
    }

    /// The same entry, recording the tags it was written with.
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The same entry, with its [`L2Entry::version`].
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }
}

/// One write to L2.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Write {
    /// Where to write.
    pub key: CacheKey,
    /// The encoded value.
    pub bytes: Vec<u8>,
    /// How long L2 keeps it.
    pub ttl: Duration,
    /// Resource tags, for [`L2Store::invalidate_tag`].
    pub tags: Vec<String>,
    /// When set, the write only happens if the namespace's fence still equals it.
    pub fence: Option<Fence>,
    /// For a fenced write: the [`L2Entry::version`] of a live entry it may replace (an eager
    /// refresh replaces the entry it refreshes; a plain fill replaces nothing). A live entry of
    /// any other version, written since, still refuses it, and so does the fence.
    pub replaces: Option<u64>,
    /// An encoded event to publish in the same step as the write, after it; only for stores
    /// whose [`L2Store::announce_route`] is the node's bus route (see there).
    pub announce: Option<Vec<u8>>,
}

impl L2Write {
    /// An unconditional write of `bytes` under `key` for `ttl`, without tags.
    pub fn new(key: CacheKey, bytes: Vec<u8>, ttl: Duration) -> Self {
        Self {
            key,
            bytes,
            ttl,
            tags: Vec::new(),
            fence: None,
            replaces: None,
            announce: None,
        }
    }

    /// Lets a fenced write replace the live entry of `version`, if that is what the key holds
    /// (see [`L2Write::replaces`]).
    pub fn replacing(mut self, version: Option<u64>) -> Self {
        self.replaces = version;
        self
    }

    /// Records `tags` with the entry.
    pub fn tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// Makes the write conditional on `fence`.
    pub fn fence(mut self, fence: Option<Fence>) -> Self {
        self.fence = fence;
        self
    }

    /// Publishes `event` (encoded) right after the write, in the same step.
    pub fn announce(mut self, event: Vec<u8>) -> Self {
        self.announce = Some(event);
        self
    }
}

/// A change for [`L2Store::change_and_log`]: what the store makes, sequences and logs in one
/// step.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedChange {
    /// [`L2Store::set`] of this write (its [`L2Write::announce`] is ignored).
    Set(L2Write),
    /// [`L2Store::delete`] of this key.
    Delete(CacheKey),
    /// [`L2Store::delete_many`] of these keys (all of one namespace).
    DeleteMany(Vec<CacheKey>),
    /// [`L2Store::invalidate_tag`] of `tag` in `key_namespace`.
    InvalidateTag {
        /// The namespace whose entries carry the tag.
        key_namespace: String,
        /// The tag.
        tag: String,
    },
    /// [`L2Store::invalidate_namespaces`] of these namespaces.
    InvalidateNamespaces(Vec<String>),
}

/// What [`L2Store::change_and_log`] did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// What the change reports: 1 or 0 for a write (0 only for a fenced write that wrote
    /// nothing) and for a delete (whether the key was there), the entries removed for a tag
    /// invalidation, the namespaces invalidated for a namespaces invalidation.
    pub count: u64,
    /// The event as logged, its positions spliced in: what the caller publishes on its bus.
    /// `None` when nothing changed (a fenced write that wrote nothing), so nothing was logged.
    pub message: Option<Vec<u8>>,
}

impl Logged {
    /// A change reporting `count`, logged as `message`.
    pub fn new(count: u64, message: Option<Vec<u8>>) -> Self {
        Self { count, message }
    }
}

/// The answer to [`L2Store::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This caller holds the key's fill lease: it loads and fills, then releases it.
    Acquired,
    /// Another caller holds it: wait for its release with [`L2Store::wait_lease`].
    Held(LeaseWait),
}

/// What a caller that found a fill lease taken needs to wait for its release.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWait {
    /// How long the lease has left: no wait lasts longer.
    pub remaining: Duration,
    /// Where the store's record of releases stood when the lease was found taken (opaque to
    /// callers), so a release that lands before the wait starts still ends it.
    pub cursor: String,
}

impl LeaseWait {
    /// A wait of at most `remaining` for a release after `cursor`.
    pub fn new(remaining: Duration, cursor: impl Into<String>) -> Self {
        Self {
            remaining,
            cursor: cursor.into(),
        }
    }
}

/// The shared second-tier store (Redis in production, in-process when embedded).
///
/// Contract for implementors: entries expire after their TTL; an entry written before an
/// [`L2Store::invalidate_namespace`] of its namespace, or before an
/// [`L2Store::invalidate_tag`] of one of its tags, is never returned afterwards. A key's
/// [`Fence`] changes whenever that key is written or deleted and whenever its namespace is
/// invalidated or one of the namespace's tags is (it may also change spuriously, e.g. when
/// another key shares a stripe: that only costs a skipped write). A fenced write is a fill: it
/// writes nothing and returns `Ok(false)` when its fence is stale or when the key already holds
/// a live entry (which is at least as fresh as the fill), unless that entry is the version the
/// write [`L2Write::replaces`] (a refresh of it).
///
/// # Errors
/// Every method returns [`crate::ErrorKind::L2`] when the store cannot be reached or fails.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait L2Store: Send + Sync {
    /// The entry under `key`, if it is live.
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>>;

    /// Writes an entry. `Ok(false)` only for a fenced write (a fill) that wrote nothing: its
    /// fence was stale or the key held a live entry. An unfenced write lands, readable under the
    /// namespace's current generation, and returns `Ok(true)`, or fails with an error: one that
    /// races an invalidation of its namespace must land after it, never vanish with it.
    async fn set(&self, write: L2Write) -> Result<bool>;

    /// Removes `key`; whether it was there.
    async fn delete(&self, key: &CacheKey) -> Result<bool>;

    /// Makes every entry of `key_namespace` unreachable.
    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()>;

    /// Invalidates several namespaces at once, as a notification does, then publishes
    /// `announce` if given (only for stores with an [`L2Store::announce_route`]). Stores that
    /// can batch (Redis: one round trip) override this.
    ///
    /// # Errors
    /// As the single invalidation; [`crate::ErrorKind::InvalidConfig`] if `announce` is given to
    /// a store that cannot publish.
    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> Result<()> {
        if announce.is_some() {
            return Err(cannot_publish());
        }
        for key_namespace in key_namespaces {
            self.invalidate_namespace(key_namespace).await?;
        }
        Ok(())
    }

    /// [`L2Store::delete`], then publishes `announce` (an encoded event) in the same step. Only
    /// for stores with an [`L2Store::announce_route`]; the default refuses.
    ///
    /// # Errors
    /// As [`L2Store::delete`]; [`crate::ErrorKind::InvalidConfig`] from stores that cannot
    /// publish.
    async fn delete_and_announce(&self, key: &CacheKey, announce: Vec<u8>) -> Result<bool> {
        let _ = (key, announce);
        Err(cannot_publish())
    }

    /// Removes `keys`, all of one key namespace, in one step, then publishes `announce` (an
    /// encoded event naming them) if given, only for stores with an
    /// [`L2Store::announce_route`]; how many were there. One announcement for many keys is
    /// what lets a large fleet absorb many invalidations: the cost of an event is per event,
    /// not per key. The default deletes one key at a time and refuses an announcement for more
    /// than one key.
    ///
    /// # Errors
    /// As [`L2Store::delete`]; [`crate::ErrorKind::InvalidConfig`] from stores that cannot
    /// publish.
    async fn delete_many(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        match (keys, announce) {
            ([key], Some(event)) => Ok(u64::from(self.delete_and_announce(key, event).await?)),
            (_, Some(_)) => Err(cannot_publish()),
            (_, None) => {
                let mut removed = 0;
                for key in keys {
                    removed += u64::from(self.delete(key).await?);
                }
                Ok(removed)
            }
        }
    }

    /// [`L2Store::invalidate_tag`], then publishes `announce` in the same step. Only for stores
    /// with an [`L2Store::announce_route`]; the default refuses.
    ///
    /// # Errors
    /// As [`L2Store::invalidate_tag`]; [`crate::ErrorKind::InvalidConfig`] from stores that
    /// cannot publish.
    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> Result<u64> {
        let _ = (key_namespace, tag, announce);
        Err(cannot_publish())
    }

    /// A node applied an event that invalidated `key_namespace` (issued by any node). Stores
    /// that remember namespace state between calls (the Redis store remembers each namespace's
    /// generation) must forget it before the call returns. Default: nothing to forget.
    fn namespace_invalidated(&self, key_namespace: &str) {
        let _ = key_namespace;
    }

    /// Nodes using this store report whether they hear every invalidation of its namespaces:
    /// `complete` and `incomplete` are changes to the number of nodes that do and that may
    /// miss some (a lost subscription, or a bus that is not the one invalidations travel on).
    /// A store may rely on events for its remembered state only while at least one node hears
    /// everything and none may miss anything. Default: relies on nothing.
    fn invalidation_feed(&self, complete: i64, incomplete: i64) {
        let _ = (complete, incomplete);
    }

    /// Where this store can publish events in the same step as a write, if anywhere: an id
    /// equal to [`crate::EventBus::route`] of the bus that reaches the same subscribers. A node
    /// whose L2 and bus share a route announces writes and notifications through L2 (one round
    /// trip, and the event can never be seen before the write it announces). Default: none.
    fn announce_route(&self) -> Option<String> {
        None
    }

    /// Whether this store sequences and logs what it announces (see [`crate::log`]): every
    /// change made with an announcement is given the next position in the log of each
    /// namespace it touches, in the same atomic step as the change; the event is appended to
    /// those logs (bounded: the oldest entries are trimmed) and published with its positions as
    /// its last field. Receivers then detect what they missed and replay it with
    /// [`L2Store::read_log`]. Default: false.
    fn sequenced(&self) -> bool {
        false
    }

    /// Makes `change`, gives it the next position in the log of each namespace it touches
    /// and appends `event` (an encoded event ending in `}`) with those positions spliced in to
    /// those logs, in one atomic step, exactly as an announcing change of a
    /// [`L2Store::sequenced`] store does, but publishes nothing: the event *as logged* is
    /// returned for the caller to publish on its own bus. For a node whose bus is not on this
    /// store's [`L2Store::announce_route`]: receivers that miss the publication (or that the
    /// caller fails to publish) replay it from the log. A fenced write that writes nothing is
    /// neither sequenced nor logged.
    ///
    /// # Errors
    /// As the change itself; [`crate::ErrorKind::MalformedEvent`] for an `event` that does not
    /// end in `}` (nothing changed); [`crate::ErrorKind::InvalidConfig`] from a store that is
    /// not sequenced (the default).
    async fn change_and_log(&self, change: LoggedChange, event: Vec<u8>) -> Result<Logged> {
        let _ = (change, event);
        Err(crate::Error::new(
            crate::ErrorKind::InvalidConfig,
            "this L2 store keeps no event log",
        ))
    }

    /// Reads `key_namespace`'s log in one atomic step: its epoch, its head, the first number
    /// it still holds, and the entries after `after`, at most `limit` of them (see
    /// [`LogRead`]). A namespace with no log yet is given one, in the same step: a new epoch
    /// with nothing in it, which the next change continues. (Were an empty log reported
    /// without an epoch, the empty log a restart leaves behind would look like the one a reader
    /// saw before a change it missed.)
    ///
    /// # Errors
    /// [`crate::ErrorKind::L2`] when the store cannot be reached;
    /// [`crate::ErrorKind::InvalidConfig`] from a store that is not
    /// [`L2Store::sequenced`] (the default).
    async fn read_log(&self, key_namespace: &str, after: u64, limit: usize) -> Result<LogRead> {
        let _ = (key_namespace, after, limit);
        Err(crate::Error::new(
            crate::ErrorKind::InvalidConfig,
            "this L2 store keeps no event log",
        ))
    }

    /// Removes the entries of `key_namespace` written with `tag`; how many.
    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64>;

    /// The current fence of `key`, to pass to a later [`L2Write::fence`] of the same key.
    async fn fence(&self, key: &CacheKey) -> Result<Fence>;

    /// Takes the fill lease of `key` for `hold` under `token` if no one holds it, so one node
    /// of the fleet loads a missing key and the others wait for its fill (see
    /// [`crate::NamespaceConfig::fill_lease`]). A lease whose holder never releases it ends by
    /// itself after `hold`. Default: always [`Lease::Acquired`] (a store that cannot share
    /// leases: every node loads for itself, as without one).
    async fn lease(&self, key: &CacheKey, token: &str, hold: Duration) -> Result<Lease> {
        let _ = (key, token, hold);
        Ok(Lease::Acquired)
    }

    /// Waits until the lease `wait` was found in is released (or was already, since it was
    /// found), or at most [`LeaseWait::remaining`]. Returns whether it saw the release
    /// (`false`: the wait ran out). Default: returns `Ok(true)` at once.
    async fn wait_lease(&self, key: &CacheKey, wait: &LeaseWait) -> Result<bool> {
        let _ = (key, wait);
        Ok(true)
    }

    /// Releases the fill lease of `key` if `token` still holds it, and wakes every caller
    /// waiting on it (whether or not it was still held: a holder whose lease ran out still
    /// wakes the waiters of the next one, who then find the key filled or try again).
    /// Default: nothing to release.
    async fn release_lease(&self, key: &CacheKey, token: &str) -> Result<()> {
        let _ = (key, token);
        Ok(())
    }

    /// Counts the times this store moved to another server that may lack changes the one
    /// before acknowledged (a replica promoted by a failover: replication is asynchronous). A
    /// node seeing it move reads nothing of its event-driven namespaces from the store until it
    /// has invalidated them there, announced, so no value a lost write had replaced is served.
    /// Default: 0 (a store that never moves).
    fn server_epoch(&self) -> u64 {
        0
    }

    /// Asks the store which server answers it now, so that [`L2Store::server_epoch`] also
    /// moves when another server took over behind the same address (a virtual IP, a DNS name
    /// or a proxy that follows the primary) or the server restarted: either may have lost
    /// changes it acknowledged. A sequenced node calls it at every liveness check. Default:
    /// nothing to ask.
    ///
    /// # Errors
    /// [`crate::ErrorKind::L2`] when the store cannot be reached.
    async fn check_server(&self) -> Result<()> {
        Ok(())
    }

    /// Checks the store is reachable.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// The entries under `keys`, in order; stores that can batch (Redis: one round trip)
    /// override this.
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<L2Entry>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Server figures (memory, clients) where the store has them, as the seed reported.
    async fn info(&self) -> Result<L2Info> {
        Ok(L2Info::default())
    }
}

/// What an L2 store reports about itself; fields it cannot tell are `None`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Info {
    /// Bytes of memory the store uses (Redis `INFO memory` `used_memory`).
    pub used_memory_bytes: Option<u64>,
    /// Clients connected to the store (Redis `INFO clients` `connected_clients`).
    pub connected_clients: Option<u64>,
    /// Whether the store may evict keys when full (Redis: a `maxmemory` with any policy but
    /// `noeviction`). Eviction is unsafe for edge-cache's bookkeeping: an evicted generation
    /// counter starts again from 0 and can expose entries written before later invalidations,
    /// and an evicted tag set makes an invalidation of that tag miss its entries.
    pub evicts_keys: Option<bool>,
}

impl L2Info {
    /// Figures as reported; [`L2Info::evicts_keys`] unknown.
    pub fn new(used_memory_bytes: Option<u64>, connected_clients: Option<u64>) -> Self {
        Self {
            used_memory_bytes,
            connected_clients,
            evicts_keys: None,
        }
    }

    /// The same figures, with whether the store may evict keys.
    pub fn with_evicts_keys(mut self, evicts_keys: Option<bool>) -> Self {
        self.evicts_keys = evicts_keys;
        self
    }
}

#[async_trait]
impl<T: L2Store + ?Sized> L2Store for Arc<T> {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        (**self).get(key).await
    }
    async fn set(&self, write: L2Write) -> Result<bool> {
        (**self).set(write).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        (**self).invalidate_namespace(key_namespace).await
    }
    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> Result<()> {
        (**self)
            .invalidate_namespaces(key_namespaces, announce)
            .await
    }
    fn announce_route(&self) -> Option<String> {
        (**self).announce_route()
    }
    fn namespace_invalidated(&self, key_namespace: &str) {
        (**self).namespace_invalidated(key_namespace);
    }
    fn invalidation_feed(&self, complete: i64, incomplete: i64) {
        (**self).invalidation_feed(complete, incomplete);
    }
    async fn delete_and_announce(&self, key: &CacheKey, announce: Vec<u8>) -> Result<bool> {
        (**self).delete_and_announce(key, announce).await
    }
    async fn delete_many(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        (**self).delete_many(keys, announce).await
    }
    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> Result<u64> {
        (**self)
            .invalidate_tag_and_announce(key_namespace, tag, announce)
            .await
    }
    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        (**self).invalidate_tag(key_namespace, tag).await
    }
    fn sequenced(&self) -> bool {
        (**self).sequenced()
    }
    async fn read_log(&self, key_namespace: &str, after: u64, limit: usize) -> Result<LogRead> {
        (**self).read_log(key_namespace, after, limit).await
    }
    async fn change_and_log(&self, change: LoggedChange, event: Vec<u8>) -> Result<Logged> {
        (**self).change_and_log(change, event).await
    }
    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        (**self).fence(key).await
    }
    async fn lease(&self, key: &CacheKey, token: &str, hold: Duration) -> Result<Lease> {
        (**self).lease(key, token, hold).await
    }
    async fn wait_lease(&self, key: &CacheKey, wait: &LeaseWait) -> Result<bool> {
        (**self).wait_lease(key, wait).await
    }
    async fn release_lease(&self, key: &CacheKey, token: &str) -> Result<()> {
        (**self).release_lease(key, token).await
    }
    fn server_epoch(&self) -> u64 {
        (**self).server_epoch()
    }
    async fn check_server(&self) -> Result<()> {
        (**self).check_server().await
    }
    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<L2Entry>>> {
        (**self).get_many(keys).await
    }
    async fn info(&self) -> Result<L2Info> {
        (**self).info().await
    }
}

fn cannot_publish() -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::InvalidConfig,
        "this L2 store cannot publish events; publish them on the bus",
    )
}
