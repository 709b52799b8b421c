//! The workload tasks: the readers, which read and audit, and the writer, which changes the
//! market and announces each change.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cache_edge::{EdgeCache, SetOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::audit::NodeAudit;
use super::market::{lock, LoadStamp, Loaded, Market, Resource, Rng, Versioned};

/// How often the writer changes the market.
pub(super) const WRITE_EVERY: Duration = Duration::from_millis(2);

/// How many stale reads and errors are printed in full.
const DETAILS_SHOWN: u64 = 5;

/// State shared by every task.
pub(super) struct World {
    market: Mutex<Market>,
    /// Set when the workload must stop.
    pub(super) stop: AtomicBool,
    /// Market changes made by the writer.
    pub(super) writes: AtomicU64,
    /// Stale reads printed so far (the first [`DETAILS_SHOWN`] are).
    stale_shown: AtomicU64,
    /// Errors printed so far (the first [`DETAILS_SHOWN`] are).
    errors_shown: AtomicU64,
    /// Stale reads served by a loader call still running when the read started.
    pub(super) stale_in_flight: AtomicU64,
    /// Stale reads served by a loader call that had returned before the read started.
    pub(super) stale_finished: AtomicU64,
    /// The origin of the audit clock, which times read starts and loader calls so a stale read
    /// can be told apart by where its value came from (see [`LoadStamp`]). A monotonic clock, not
    /// a shared counter, so timing adds no contended state between readers.
    epoch: Instant,
    /// The `get_or_load` parameters of each resource, by [`Market::slot`].
    params: Vec<Value>,
}

impl World {
    pub(super) fn new(market: Market) -> Self {
        let params = market.resources().map(|r| r.params()).collect();
        Self {
            market: Mutex::new(market),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            stale_shown: AtomicU64::new(0),
            errors_shown: AtomicU64::new(0),
            stale_in_flight: AtomicU64::new(0),
            stale_finished: AtomicU64::new(0),
            epoch: Instant::now(),
            params,
        }
    }

    /// The audit clock: nanoseconds since the world was created.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn market(&self) -> MutexGuard<'_, Market> {
        lock(&self.market)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One reader: read a random resource through `cache`, audit it, repeat until stopped.
pub(super) async fn read_loop(
    world: Arc<World>,
    cache: EdgeCache,
    audit: Arc<NodeAudit>,
    mut rng: Rng,
) {
    let gpus = world.market().gpus.len();
    while !world.stopped() {
        let resource = Resource::random(&mut rng, gpus);
        // Snapshot BEFORE the read: only invalidations applied before it started are judged.
        let applied = audit.applied(resource.kind());
        let started = world.now_ns();
        let outcome = read(&world, &cache, audit.index, resource).await;
        audit.reads.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(served) => {
                let required = world.market().version_of(resource, applied);
                if served.version < required {
                    audit.stale.fetch_add(1, Ordering::Relaxed);
                    report_stale(
                        &world, &cache, resource, &served, applied, required, started,
                    );
                }
            }
            Err(e) => {
                audit.errors.fetch_add(1, Ordering::Relaxed);
                if world.errors_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
                    println!(
                        "ERROR on {}: reading {} {}: {e}",
                        cache.node_id(),
                        resource.kind().namespace(),
                        resource.label()
                    );
                }
            }
        }
        // L1 hits never await: yield so listeners and the writer get the worker threads too.
        tokio::task::yield_now().await;
    }
}

/// Counts a stale read by where its value came from, and prints the first few in full.
fn report_stale(
    world: &World,
    cache: &EdgeCache,
    resource: Resource,
    served: &Served,
    applied: u64,
    required: u64,
    started: u64,
) {
    let load = served.load;
    let (counter, how) = if load.finished > started {
        (
            &world.stale_in_flight,
            "the loader was still running when the read started",
        )
    } else {
        (
            &world.stale_finished,
            "the loader had returned before the read started",
        )
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if world.stale_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "STALE on {}: {} {} served version {}, but the node had applied source_version \
             {applied} (when it was at version {required}) before the read started at {:.1} µs; \
             the value was loaded on edge-{} from {:.1} to {:.1} µs: {how}",
            cache.node_id(),
            resource.kind().namespace(),
            resource.label(),
            served.version,
            us(started),
            load.node + 1,
            us(load.started),
            us(load.finished),
        );
    }
}

/// What a read returned: the version of the value and how it was loaded.
struct Served {
    version: u64,
    load: LoadStamp,
}

/// Reads `resource` through `cache` on node number `node`, loading it from the market on a miss.
async fn read(
    world: &Arc<World>,
    cache: &EdgeCache,
    node: usize,
    resource: Resource,
) -> cache_edge::Result<Served> {
    let namespace = resource.kind().namespace();
    let params = &world.params[world.market().slot(resource)];
    let load = LoadContext {
        world,
        cache,
        node,
        namespace,
        params,
    };
    match resource {
        Resource::Gpu(i) => load.read(move |m| m.availability(i)).await,
        Resource::Price(t) => load.read(move |m| m.price(t)).await,
        Resource::OrderBook => load.read(Market::order_book).await,
    }
}

/// What one read needs to load its value.
struct LoadContext<'a> {
    world: &'a Arc<World>,
    cache: &'a EdgeCache,
    node: usize,
    namespace: &'a str,
    params: &'a Value,
}

impl LoadContext<'_> {
    /// `get_or_load` of one value whose loader takes a snapshot of the market with `snapshot`.
    async fn read<T, F>(self, snapshot: F) -> cache_edge::Result<Served>
    where
        T: Versioned + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(&Market) -> T,
    {
        let world = Arc::clone(self.world);
        let node = self.node;
        let loader = || async move {
            let started = world.now_ns();
            let value = snapshot(&world.market());
            // A loader has latency in real life; this await lets invalidations race the load.
            tokio::task::yield_now().await;
            let load = LoadStamp {
                node,
                started,
                finished: world.now_ns(),
            };
            Ok::<_, Infallible>(Loaded { value, load })
        };
        let loaded: Arc<Loaded<T>> = self
            .cache
            .get_or_load(self.namespace, self.params, SetOptions::new(), loader)
            .await?;
        Ok(Served {
            version: loaded.value.version(),
            load: loaded.load,
        })
    }
}

/// The writer: change the market, then announce the change through a random node; repeat every
/// [`WRITE_EVERY`] until stopped. Returns how many notifications failed.
pub(super) async fn write_loop(world: Arc<World>, nodes: Vec<EdgeCache>, mut rng: Rng) -> u64 {
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    while !world.stopped() {
        ticker.tick().await;
        // The market changes first; `version` is the global version after the change.
        let (change, version) = world.market().step(&mut rng);
        world.writes.fetch_add(1, Ordering::Relaxed);
        let node = &nodes[rng.below(nodes.len())];
        if let Err(e) = node.notify(change.notification(version)).await {
            failures += 1;
            if world.errors_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
                println!(
                    "ERROR on {}: notifying change {version}: {e}",
                    node.node_id()
                );
            }
        }
    }
    failures
}
