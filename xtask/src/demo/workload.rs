//! The workload tasks: the readers, which read and audit, and the writer, which changes the
//! market and announces each change, by a notification or by writing the new values.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cache_core::Clock as _;
use cache_edge::{EdgeCache, SetOptions};
use cache_memory::SystemClock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::audit::NodeAudit;
use super::market::{
    lock, BeforeRead, LandedSet, LoadStamp, Loaded, Market, Origin, Required, Resource, Rng,
    Snapshot, Step, Versioned,
};

/// How often the writer wakes up to change the market.
pub(super) const WRITE_EVERY: Duration = Duration::from_millis(2);

/// Changes the writer makes each time it wakes up, back to back, each announced at random by a
/// notification or by `set_key` writes: so a write often follows a notification that some
/// nodes have not applied yet.
pub(super) const CHANGES_PER_TICK: usize = 2;

/// How many stale reads and errors are printed in full.
const DETAILS_SHOWN: u64 = 5;

/// How many times the writer issues a failed notification or write again before it gives up,
/// as a caller should (both calls say so in their errors).
const RETRIES: u32 = 6;

/// The wait before the first retry, doubled before each next one: 10 + 20 + ... + 320 ms in
/// all, enough to ride out the chaos's outages and a Redis that restarts within half a second.
const FIRST_RETRY_AFTER: Duration = Duration::from_millis(10);

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
    /// Stale reads served by a value the writer wrote with `set_key`.
    pub(super) stale_written: AtomicU64,
    /// The origin of the audit clock, which times read starts and loader calls so a stale read
    /// can be told apart by where its value came from (see [`LoadStamp`]). A monotonic clock, not
    /// a shared counter, so timing adds no contended state between readers.
    epoch: Instant,
    /// The `get_or_load` parameters of each resource, by [`Market::slot`].
    pub(super) params: Vec<Value>,
    /// Every resource, by [`Market::slot`].
    pub(super) resources: Vec<Resource>,
}

impl World {
    pub(super) fn new(market: Market) -> Self {
        let resources: Vec<Resource> = market.resources().collect();
        let params = resources.iter().map(|r| r.params()).collect();
        Self {
            market: Mutex::new(market),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            stale_shown: AtomicU64::new(0),
            errors_shown: AtomicU64::new(0),
            stale_in_flight: AtomicU64::new(0),
            stale_finished: AtomicU64::new(0),
            stale_written: AtomicU64::new(0),
            epoch: Instant::now(),
            params,
            resources,
        }
    }

    /// The audit clock: nanoseconds since the world was created.
    pub(super) fn now_ns(&self) -> u64 {
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
        let slot = world.market().slot(resource);
        // Snapshot BEFORE the read: only invalidations and writes the node had seen before it
        // started are judged.
        let before = BeforeRead {
            node: audit.index,
            applied: audit.applied(resource.kind()),
            key_event: audit.key_event(slot),
            started: world.now_ns(),
        };
        let outcome = read(&world, &cache, audit.index, resource, slot).await;
        audit.reads.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(served) => {
                let required = world.market().required(resource, &before);
                if served.version < required.version {
                    audit.stale.fetch_add(1, Ordering::Relaxed);
                    report_stale(&world, &cache, resource, &served, &before, &required);
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
    before: &BeforeRead,
    required: &Required,
) {
    let load = served.load;
    let (counter, how) = match load.origin {
        Origin::Set => (&world.stale_written, "it was written by set_key"),
        Origin::Load if load.finished > before.started => (
            &world.stale_in_flight,
            "the loader was still running when the read started",
        ),
        Origin::Load => (
            &world.stale_finished,
            "the loader had returned before the read started",
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if world.stale_shown.fetch_add(1, Ordering::Relaxed) >= DETAILS_SHOWN {
        return;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    let why = match required.by_set {
        None => format!(
            "the node had applied source_version {} (when it was at version {})",
            before.applied, required.version
        ),
        Some(set) => format!(
            "set_key of version {} through edge-{} had returned Ok at {:.1} µs and the node {}",
            set.version,
            set.node + 1,
            us(set.landed),
            if set.node == before.node {
                "had issued it"
            } else {
                "had applied an event naming the key issued after that write began"
            },
        ),
    };
    let made = match load.origin {
        Origin::Set => format!(
            "written on edge-{} at {:.1} µs",
            load.node + 1,
            us(load.started)
        ),
        Origin::Load => format!(
            "loaded on edge-{} from {:.1} to {:.1} µs",
            load.node + 1,
            us(load.started),
            us(load.finished)
        ),
    };
    println!(
        "STALE on {}: {} {} served version {}, but {why} before the read started at {:.1} µs; \
         the value was {made}: {how}",
        cache.node_id(),
        resource.kind().namespace(),
        resource.label(),
        served.version,
        us(before.started),
    );
}

/// What a read returned: the version of the value and how it was loaded.
struct Served {
    version: u64,
    load: LoadStamp,
}

/// Reads `resource` (at `slot`) through `cache` on node number `node`, loading it from the
/// market on a miss.
async fn read(
    world: &Arc<World>,
    cache: &EdgeCache,
    node: usize,
    resource: Resource,
    slot: usize,
) -> cache_edge::Result<Served> {
    let namespace = resource.kind().namespace();
    let params = &world.params[slot];
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
                origin: Origin::Load,
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

/// What the writer did, for the report.
pub(super) struct Writes {
    /// Changes announced by a notification that returned `Ok` (at the first call or a retry).
    pub(super) notified: u64,
    /// Notification calls that failed, each then issued again unless the writer gave up.
    pub(super) notify_failures: u64,
    /// Changes whose notification still failed when the writer gave up on it.
    pub(super) notify_errors: u64,
    /// Values written with `set_key`.
    pub(super) sets: u64,
    /// `set_key` calls that failed, each then issued again unless the writer gave up.
    pub(super) set_failures: u64,
    /// Values whose `set_key` still failed when the writer gave up on it.
    pub(super) set_errors: u64,
    /// `set_key` writes that returned `Ok`, by the node they went through: each published one
    /// event, which every other node applies.
    pub(super) sets_ok_by_node: Vec<u64>,
}

/// Calls `attempt` until it returns `Ok`, waiting [`FIRST_RETRY_AFTER`] before the first retry
/// and twice as long before each next one; gives up after [`RETRIES`] retries. `failed` hears
/// of every failed call, and whether it will be made again. The end of the workload does not
/// cut it short: a caller does not abandon a change because a timer fired.
async fn retrying<T, Fut>(
    mut attempt: impl FnMut() -> Fut,
    mut failed: impl FnMut(&cache_edge::Error, bool),
) -> Result<T, cache_edge::Error>
where
    Fut: Future<Output = Result<T, cache_edge::Error>>,
{
    let mut wait = FIRST_RETRY_AFTER;
    let mut retries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                let again = retries < RETRIES;
                failed(&e, again);
                if !again {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
                retries += 1;
            }
        }
    }
}

/// Prints one of the first [`DETAILS_SHOWN`] errors; `what` names the call, built only then.
fn show_error(
    world: &World,
    node: &EdgeCache,
    what: impl Fn() -> String,
    e: &cache_edge::Error,
    again: bool,
) {
    if world.errors_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
        let then = if again {
            "issuing it again"
        } else {
            "giving up"
        };
        println!("ERROR on {}: {}: {e} ({then})", node.node_id(), what());
    }
}

/// [`retrying`] the writer's call through `node`, every failure counted and the first few
/// shown: the call's result, and how many of its calls failed.
async fn issue_again<T, Fut>(
    world: &World,
    node: &EdgeCache,
    what: impl Fn() -> String,
    attempt: impl FnMut() -> Fut,
) -> (Result<T, cache_edge::Error>, u64)
where
    Fut: Future<Output = Result<T, cache_edge::Error>>,
{
    let mut failures = 0;
    let result = retrying(attempt, |e, again| {
        failures += 1;
        show_error(world, node, &what, e, again);
    })
    .await;
    (result, failures)
}

/// The writer: every [`WRITE_EVERY`], make [`CHANGES_PER_TICK`] changes to the market, each
/// announced through a random node, either by a notification or by writing the new value of
/// every resource it touched with `set_key`; repeat until stopped.
pub(super) async fn write_loop(world: Arc<World>, nodes: Vec<EdgeCache>, mut rng: Rng) -> Writes {
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writes = Writes {
        notified: 0,
        notify_failures: 0,
        notify_errors: 0,
        sets: 0,
        set_failures: 0,
        set_errors: 0,
        sets_ok_by_node: vec![0; nodes.len()],
    };
    while !world.stopped() {
        ticker.tick().await;
        for _ in 0..CHANGES_PER_TICK {
            let index = rng.below(nodes.len());
            let node = &nodes[index];
            let by_set = rng.below(2) == 0;
            // The market changes first, and the values to write are taken with the change, so
            // they carry its version.
            let (step, values) = {
                let mut market = world.market();
                let step = market.step(&mut rng);
                let mut values: Vec<(Resource, Snapshot)> = if by_set {
                    step.touched
                        .iter()
                        .map(|&r| (r, market.snapshot(r)))
                        .collect()
                } else {
                    Vec::new()
                };
                // In no particular order: the order book (the hottest key) is written first as
                // often as last.
                if values.len() > 1 && rng.below(2) == 0 {
                    values.reverse();
                }
                (step, values)
            };
            world.writes.fetch_add(1, Ordering::Relaxed);
            if by_set {
                for (resource, value) in values {
                    write(
                        &world,
                        node,
                        index,
                        resource,
                        value,
                        step.version,
                        &mut writes,
                    )
                    .await;
                }
            } else {
                notify(&world, node, &step, &mut writes).await;
            }
        }
    }
    writes
}

/// Announces `step` through `node` with a notification carrying its version, issuing it again
/// while it fails (see [`retrying`]).
async fn notify(world: &World, node: &EdgeCache, step: &Step, writes: &mut Writes) {
    let version = step.version;
    let (result, failures) = issue_again(
        world,
        node,
        || format!("notifying change {version}"),
        || node.notify(step.change.notification(version)),
    )
    .await;
    writes.notify_failures += failures;
    match result {
        Ok(_) => writes.notified += 1,
        Err(_) => writes.notify_errors += 1,
    }
}

/// Writes `value`, the value of `resource` at `version`, with `set_key` through `node` (number
/// `index`), issuing it again while it fails (see [`retrying`]), and records it in the market's
/// log once a call returned `Ok`: only then does the writer know it landed. A write given up on
/// is not recorded, whatever its calls did.
async fn write(
    world: &World,
    node: &EdgeCache,
    index: usize,
    resource: Resource,
    value: Snapshot,
    version: u64,
    writes: &mut Writes,
) {
    writes.sets += 1;
    let what = || {
        format!(
            "writing {} {} at version {version}",
            resource.kind().namespace(),
            resource.label()
        )
    };
    let slot = world.market().slot(resource);
    let key = match node.key(resource.kind().namespace(), &world.params[slot]) {
        Ok(key) => key,
        Err(e) => {
            writes.set_failures += 1;
            writes.set_errors += 1;
            return show_error(world, node, what, &e, false);
        }
    };
    // The event of every call made below is stamped after this instant (same clock, same
    // rounding): each call writes the same value, so an event of any of them that a node
    // applied makes the node drop what it held before this write.
    let issued_at = SystemClock.now().as_secs_f64();
    let started = world.now_ns();
    let load = LoadStamp {
        node: index,
        started,
        finished: started,
        origin: Origin::Set,
    };
    let (result, failures) = issue_again(world, node, what, || {
        let (key, value) = (&key, value.clone());
        async move {
            let options = SetOptions::new();
            match value {
                Snapshot::Availability(value) => {
                    node.set_key(key, &Loaded { value, load }, options).await
                }
                Snapshot::Price(value) => node.set_key(key, &Loaded { value, load }, options).await,
                Snapshot::OrderBook(value) => {
                    node.set_key(key, &Loaded { value, load }, options).await
                }
            }
        }
    })
    .await;
    writes.set_failures += failures;
    match result {
        Ok(()) => {
            writes.sets_ok_by_node[index] += 1;
            // The market stays locked from reading the clock to recording: a reader that
            // started after `landed` computes its requirement after this and finds it.
            let mut market = world.market();
            let landed = world.now_ns();
            market.record_set(
                resource,
                LandedSet {
                    version,
                    node: index,
                    issued_at,
                    landed,
                },
            );
        }
        Err(_) => writes.set_errors += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_edge::ErrorKind;
    use std::cell::Cell;

    fn l2_down() -> cache_edge::Error {
        cache_edge::Error::new(ErrorKind::L2, "L2 is down")
    }

    /// Calls `retrying` with an attempt that fails `failing` times before it succeeds; what it
    /// returned, the `again` of each failure reported, and the time it took (paused clock).
    async fn run(failing: u32) -> (Result<u32, cache_edge::Error>, Vec<bool>, Duration) {
        let calls = Cell::new(0);
        let mut reported = Vec::new();
        let started = tokio::time::Instant::now();
        let result = retrying(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= failing {
                        Err(l2_down())
                    } else {
                        Ok(n)
                    }
                }
            },
            |_, again| reported.push(again),
        )
        .await;
        (result, reported, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_is_made_again_after_a_doubling_wait() {
        let (result, reported, took) = run(2).await;
        assert_eq!(result.unwrap(), 3, "the third call got through");
        assert_eq!(reported, vec![true, true]);
        assert_eq!(took, Duration::from_millis(10 + 20));
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_gives_up_after_its_retries() {
        let (result, reported, took) = run(u32::MAX).await;
        assert_eq!(result.unwrap_err().kind(), ErrorKind::L2);
        let mut expected = vec![true; RETRIES as usize];
        expected.push(false);
        assert_eq!(
            reported, expected,
            "{RETRIES} retries, then the last failure gives up"
        );
        assert_eq!(took, Duration::from_millis(10 + 20 + 40 + 80 + 160 + 320));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_succeeds_is_made_once() {
        let (result, reported, took) = run(0).await;
        assert_eq!(result.unwrap(), 1);
        assert!(reported.is_empty());
        assert_eq!(took, Duration::ZERO);
    }
}
