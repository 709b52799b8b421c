//! The workload: writers that change the source and tell the cache (a write of the new version,
//! or an invalidation or notification once the source moved), retrying what fails; and readers
//! on every node that keep re-reading the keys, so a missed change would be found.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use cache_core::namespace::{GPU_AVAILABILITY, GPU_PRICING};
use cache_core::CacheKey;
use cache_edge::{EdgeCache, Notification, SetOptions};

use super::rng::Rng;
use super::world::{Turn, World};

/// The nodes, and each node's keys as it derived them (a node's own keys take its L1 hit path).
pub(crate) struct Fleet {
    pub(crate) nodes: Vec<EdgeCache>,
    pub(crate) names: Vec<String>,
    /// `keys[node][k]`.
    pub(crate) keys: Vec<Vec<CacheKey>>,
    /// The nodes writers issue changes on.
    pub(crate) writers_on: Vec<usize>,
}

/// The key namespaces of the simulated namespaces, as events and L2 name them.
pub(crate) const AVAIL: &str = "gpu_avail";
pub(crate) const PRICING: &str = "gpu_pricing";

/// What a writer does in one step.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// `set_key` of the key's next version.
    Set,
    /// The source moves the key, then `invalidate_key`.
    InvalidateKey,
    /// The source moves some keys of the key's namespace, then `invalidate_namespace`.
    InvalidateNamespace,
    /// The source moves the key, then the notification routed to its namespace.
    NotifyOne,
    /// The source moves one key of each namespace, then a booking (routed to both).
    NotifyBooking,
    /// The source moves a few keys, then `invalidate_keys` drops them all (one announcement
    /// per namespace).
    InvalidateKeys,
}

/// One writer: a change every few milliseconds on a random node, until told to stop.
pub(crate) async fn writer(world: Arc<World>, fleet: Arc<Fleet>, mut rng: Rng) {
    while !world.writes_stopped.load(SeqCst) {
        tokio::time::sleep(rng.millis(10..=80)).await;
        if let Some(lull) = &world.lull {
            // Every writer goes quiet for longer than the bound: a change that a node failed
            // to take in is then not covered up by the next one.
            let now = world.now();
            if lull.contains(&now) {
                tokio::time::sleep(lull.end - now).await;
            }
        }
        if world.writes_stopped.load(SeqCst) {
            break;
        }
        let node = fleet.writers_on[rng.index(fleet.writers_on.len())];
        // A hot key takes a third of the changes, so changes of one key often follow each other
        // closely.
        let key = if rng.chance(35) {
            0
        } else {
            rng.index(world.keys.len())
        };
        let change = match rng.below(100) {
            0..=39 => Change::Set,
            40..=51 => Change::InvalidateKey,
            52..=59 => Change::InvalidateKeys,
            60..=69 => Change::InvalidateNamespace,
            70..=87 => Change::NotifyOne,
            _ => Change::NotifyBooking,
        };
        let w = Writer {
            world: &world,
            fleet: &fleet,
            node,
        };
        match change {
            Change::Set => w.set(key, &mut rng).await,
            Change::InvalidateKey => w.invalidate_key(key, &mut rng).await,
            Change::InvalidateKeys => w.invalidate_keys(key, &mut rng).await,
            Change::InvalidateNamespace | Change::NotifyOne | Change::NotifyBooking => {
                w.namespaces(change, key, &mut rng).await
            }
        }
    }
}

struct Writer<'a> {
    world: &'a World,
    fleet: &'a Fleet,
    node: usize,
}

impl Writer<'_> {
    fn cache(&self) -> &EdgeCache {
        &self.fleet.nodes[self.node]
    }

    fn key(&self, k: usize) -> &CacheKey {
        &self.fleet.keys[self.node][k]
    }

    fn name(&self) -> &str {
        &self.fleet.names[self.node]
    }

    fn outcome(&self, what: &str, result: &cache_edge::Result<()>) -> String {
        match result {
            Ok(()) => format!("{} {what} acked", self.name()),
            Err(e) => format!("{} {what} failed: {e}", self.name()),
        }
    }

    /// After a failed attempt: whether to give up (the change stays unacknowledged) or wait
    /// and issue it again.
    async fn again(&self, attempt: u32, rng: &mut Rng) -> bool {
        World::count(&self.world.counters.write_errors);
        if attempt >= 3 || rng.chance(30) || self.world.writes_stopped.load(SeqCst) {
            World::count(&self.world.counters.writes_given_up);
            return false;
        }
        tokio::time::sleep(rng.millis(5..=40)).await;
        true
    }

    /// A write of the key's next version, acknowledged when `set_key` returns `Ok`. A write
    /// issued again is the same version, unless another writer changed the key meanwhile
    /// (then the retry would write an older value over a newer one: the caller's bug, not the
    /// cache's, so it is dropped).
    async fn set(&self, k: usize, rng: &mut Rng) {
        let world = self.world;
        let mut turns = world.turns.take(&[k]).await;
        let version = world.bump(k);
        for attempt in 1.. {
            let op = world.turns.park(vec![(world.keys[k].slot.clone(), turns)]);
            world.trace(|| format!("{} set {} v{version}", self.name(), world.keys[k].label));
            let result = self
                .cache()
                .set_key(self.key(k), &version, SetOptions::new())
                .await;
            world.turns.unpark(op);
            world.trace(|| self.outcome("set", &result));
            if result.is_ok() {
                world
                    .history
                    .ack(&world.keys[k].label, version, world.now());
                return;
            }
            if !self.again(attempt, rng).await {
                return;
            }
            turns = world.turns.take(&[k]).await;
            if world.version(k) != version {
                World::count(&world.counters.writes_superseded);
                return;
            }
        }
    }

    /// The source moves the key; `invalidate_key` then drops it everywhere. Acknowledged with
    /// the key's version when the invalidation landed (it holds the key's turn until then).
    async fn invalidate_key(&self, k: usize, rng: &mut Rng) {
        let world = self.world;
        let mut turns = world.turns.take(&[k]).await;
        world.bump(k);
        for attempt in 1.. {
            let version = world.version(k);
            let op = world.turns.park(vec![(world.keys[k].slot.clone(), turns)]);
            world.trace(|| {
                let label = &world.keys[k].label;
                format!("{} invalidate_key {label} (source v{version})", self.name())
            });
            let result = self.cache().invalidate_key(self.key(k)).await;
            world.turns.unpark(op);
            world.trace(|| self.outcome("invalidate_key", &result));
            if result.is_ok() {
                world
                    .history
                    .ack(&world.keys[k].label, version, world.now());
                return;
            }
            if !self.again(attempt, rng).await {
                return;
            }
            turns = world.turns.take(&[k]).await;
        }
    }

    /// The source moves `k` and up to three other keys (of either namespace); `invalidate_keys`
    /// then drops them all. Each is acknowledged with its version when the call returns `Ok`
    /// (each key's turn is held until its delete landed).
    async fn invalidate_keys(&self, k: usize, rng: &mut Rng) {
        let world = self.world;
        let mut ks = vec![k];
        for _ in 0..rng.below(4) {
            ks.push(rng.index(world.keys.len()));
        }
        ks.sort_unstable();
        ks.dedup();
        let take = || async {
            let mut turns = Vec::with_capacity(ks.len());
            for &k in &ks {
                turns.push(world.turns.take(&[k]).await);
            }
            turns
        };
        let mut turns = take().await;
        for &k in &ks {
            world.bump(k);
        }
        for attempt in 1.. {
            let acked: Vec<(usize, u64)> = ks.iter().map(|&k| (k, world.version(k))).collect();
            let op = world.turns.park(
                ks.iter()
                    .map(|&k| world.keys[k].slot.clone())
                    .zip(turns)
                    .collect(),
            );
            world.trace(|| format!("{} invalidate_keys acking {acked:?}", self.name()));
            let keys: Vec<CacheKey> = ks.iter().map(|&k| self.key(k).clone()).collect();
            let result = self.cache().invalidate_keys(&keys).await;
            world.turns.unpark(op);
            world.trace(|| self.outcome("invalidate_keys", &result));
            if result.is_ok() {
                world.ack_versions(&acked);
                return;
            }
            if !self.again(attempt, rng).await {
                return;
            }
            turns = take().await;
        }
    }

    /// The source moves keys, then a namespace-wide change: `invalidate_namespace`, a
    /// notification routed to the key's namespace, or a booking routed to both. Acknowledged
    /// for every key of the namespaces touched, each with its version when the change landed.
    async fn namespaces(&self, change: Change, k: usize, rng: &mut Rng) {
        let world = self.world;
        let own = world.keys[k].key_namespace;
        let touched: Vec<&'static str> = match change {
            Change::NotifyBooking => vec![AVAIL, PRICING],
            _ => vec![own],
        };
        let moved: Vec<usize> = match change {
            Change::NotifyBooking => touched
                .iter()
                .map(|ns| {
                    let keys = world.keys_of(ns);
                    keys[rng.index(keys.len())]
                })
                .collect(),
            Change::InvalidateNamespace => world
                .keys_of(own)
                .into_iter()
                .filter(|_| rng.chance(50))
                .collect(),
            _ => vec![k],
        };
        let gpu = &world.keys[k].param;
        let notification = match change {
            Change::NotifyBooking => Some(Notification::booking_created(
                &format!("b-{}", rng.below(1_000)),
                gpu,
            )),
            Change::NotifyOne if own == AVAIL => {
                Some(Notification::gpu_availability_changed(gpu, "busy"))
            }
            Change::NotifyOne => Some(Notification::pricing_updated(gpu, 2.5)),
            _ => None,
        };
        let mut turns = self.take_namespaces(&touched).await;
        for &m in &moved {
            world.bump(m);
        }
        for attempt in 1.. {
            let acked: Vec<(usize, u64)> = touched
                .iter()
                .flat_map(|ns| world.keys_of(ns))
                .map(|key| (key, world.version(key)))
                .collect();
            let op = world
                .turns
                .park(touched.iter().map(|ns| ns.to_string()).zip(turns).collect());
            world.trace(|| {
                let what = notification
                    .as_ref()
                    .map_or("invalidate_namespace".to_owned(), |n| {
                        format!("notify {}", n.event_type())
                    });
                format!("{} {what} {touched:?} acking {acked:?}", self.name())
            });
            let result = match &notification {
                Some(n) => self.cache().notify(n.clone()).await.map(drop),
                None => {
                    let name = world.keys[k].namespace;
                    self.cache().invalidate_namespace(name, "sim").await
                }
            };
            world.turns.unpark(op);
            world.trace(|| self.outcome("namespace change", &result));
            if result.is_ok() {
                world.ack_versions(&acked);
                return;
            }
            if !self.again(attempt, rng).await {
                return;
            }
            turns = self.take_namespaces(&touched).await;
        }
    }

    /// The turns of every key of each namespace, one group per namespace (in namespace order,
    /// so keys are taken in ascending order overall).
    async fn take_namespaces(&self, touched: &[&str]) -> Vec<Vec<Turn>> {
        let mut groups = Vec::with_capacity(touched.len());
        for ns in touched {
            groups.push(self.world.turns.take(&self.world.keys_of(ns)).await);
        }
        groups
    }
}

/// One reader on `node`: reads a random key every few milliseconds, by `get` or by
/// `get_or_load` (whose loader reads the source, then sometimes takes a while to answer, as a
/// slow query would), and records each read. With `plant_stale`, it records every version one
/// older than it got: the planted bug that shows the checker can fail.
pub(crate) async fn reader(
    world: Arc<World>,
    fleet: Arc<Fleet>,
    node: usize,
    mut rng: Rng,
    plant_stale: bool,
) {
    let cache = &fleet.nodes[node];
    let name = &fleet.names[node];
    while !world.reads_stopped.load(SeqCst) {
        tokio::time::sleep(rng.millis(3..=17)).await;
        let k = rng.index(world.keys.len());
        let key = &fleet.keys[node][k];
        let started = world.now();
        let got = if rng.chance(50) {
            cache.get_key::<u64>(key).await.map(|v| v.map(|v| *v))
        } else {
            let slow = if rng.chance(30) {
                rng.millis(1..=6)
            } else {
                Duration::ZERO
            };
            let source = Arc::clone(&world);
            let loader = move || async move {
                World::count(&source.counters.loads);
                let version = source.version(k);
                if !slow.is_zero() {
                    tokio::time::sleep(slow).await;
                }
                Ok::<u64, std::io::Error>(version)
            };
            // Half the loads through the owned loader, which eager refresh needs.
            let loaded = if rng.chance(50) {
                cache.get_or_load_key(key, SetOptions::new(), loader).await
            } else {
                cache
                    .get_or_load_owned_key(key, SetOptions::new(), loader)
                    .await
            };
            loaded.map(|v| Some(*v))
        };
        let ended = world.now();
        match got {
            Ok(returned) => {
                let recorded = match returned {
                    Some(v) if plant_stale && v > 1 => Some(v - 1),
                    other => other,
                };
                world.trace(|| format!("{name} read {} -> {returned:?}", world.keys[k].label));
                world
                    .history
                    .read(name, &world.keys[k].label, recorded, started, ended);
            }
            Err(_) => World::count(&world.counters.read_errors),
        }
    }
}

/// The namespace (cache type) names of the simulated key namespaces.
pub(crate) fn namespace_of(key_namespace: &str) -> &'static str {
    if key_namespace == AVAIL {
        GPU_AVAILABILITY
    } else {
        GPU_PRICING
    }
}
