//! The market, the source of truth: GPUs, prices and the order book, with a version history
//! per resource and a log of the `set_key` writes known to have landed; the values the cache
//! holds; and the workload's random number generator.

use std::sync::{Mutex, MutexGuard, PoisonError};

use cache_edge::Notification;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// GPU types and their starting price in cents per hour.
const GPU_TYPES: [(&str, u64); 4] = [("A100", 189), ("H100", 299), ("L40S", 99), ("RTX4090", 44)];

/// Providers in the market: one per this many GPUs.
const GPUS_PER_PROVIDER: usize = 10;

/// The three kinds of cached resource, one per namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Availability = 0,
    Pricing = 1,
    OrderBook = 2,
}

impl Kind {
    pub(super) const ALL: [Kind; 3] = [Kind::Availability, Kind::Pricing, Kind::OrderBook];

    /// The namespace (cache type) holding this kind.
    pub(super) fn namespace(self) -> &'static str {
        match self {
            Kind::Availability => cache_core::namespace::GPU_AVAILABILITY,
            Kind::Pricing => cache_core::namespace::GPU_PRICING,
            Kind::OrderBook => cache_core::namespace::ORDER_BOOK,
        }
    }
}

/// One cached resource of the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resource {
    /// The availability of the GPU at this index.
    Gpu(usize),
    /// The price of the GPU type at this index of [`GPU_TYPES`].
    Price(usize),
    /// The order book of the whole market.
    OrderBook,
}

impl Resource {
    /// A random resource: mostly availability, then prices, then the order book.
    pub(super) fn random(rng: &mut Rng, gpus: usize) -> Self {
        match rng.below(100) {
            0..60 => Resource::Gpu(rng.below(gpus)),
            60..85 => Resource::Price(rng.below(GPU_TYPES.len())),
            _ => Resource::OrderBook,
        }
    }

    pub(super) fn kind(self) -> Kind {
        match self {
            Resource::Gpu(_) => Kind::Availability,
            Resource::Price(_) => Kind::Pricing,
            Resource::OrderBook => Kind::OrderBook,
        }
    }

    /// The `get_or_load` parameters naming this resource.
    pub(super) fn params(self) -> Value {
        match self {
            Resource::Gpu(i) => json!({"gpu_id": gpu_id(i)}),
            Resource::Price(t) => json!({"gpu_type": GPU_TYPES[t].0}),
            Resource::OrderBook => json!({"market": "all"}),
        }
    }

    /// A short human name: `g-17`, `H100`, `all`.
    pub(super) fn label(self) -> String {
        match self {
            Resource::Gpu(i) => gpu_id(i),
            Resource::Price(t) => GPU_TYPES[t].0.to_owned(),
            Resource::OrderBook => "all".to_owned(),
        }
    }
}

/// The id of the GPU at index `i`: `g-1` for index 0.
fn gpu_id(i: usize) -> String {
    format!("g-{}", i + 1)
}

/// A GPU's status in the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum GpuStatus {
    Available,
    Booked,
    /// Taken out by its provider for maintenance.
    Offline,
}

impl GpuStatus {
    fn as_str(self) -> &'static str {
        match self {
            GpuStatus::Available => "available",
            GpuStatus::Booked => "booked",
            GpuStatus::Offline => "offline",
        }
    }
}

/// One GPU in the market.
#[derive(Debug, Clone)]
pub(super) struct Gpu {
    provider: String,
    /// Index into [`GPU_TYPES`].
    gpu_type: usize,
    status: GpuStatus,
    /// The booking holding it, while booked.
    booking: Option<String>,
}

/// What the cache holds: a value and the stamp of the loader run or write that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Loaded<T> {
    pub(super) value: T,
    pub(super) load: LoadStamp,
}

/// Which node's loader call or `set_key` call produced a value, and when on the audit clock
/// ([`World::now_ns`]) it started and returned. Diagnostic only: a stale read served by a loader
/// call that returned after the read started shared a load in flight across an invalidation; one
/// served by a call that had returned before was handed a value already loaded (a finished
/// flight, or a fill that outlived the invalidation); one served by a write was handed what the
/// writer wrote (for a write, `finished` is `started`: the stamp is part of the value written).
///
/// [`World::now_ns`]: super::workload::World::now_ns
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LoadStamp {
    /// The node's index: 0 for `edge-1`.
    pub(super) node: usize,
    pub(super) started: u64,
    pub(super) finished: u64,
    pub(super) origin: Origin,
}

/// What produced a cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Origin {
    /// A loader call of `get_or_load`, reading the market.
    Load,
    /// The writer's `set_key`, writing the market's new value after a change.
    Set,
}

/// A value that carries the version of its resource at load time.
pub(super) trait Versioned {
    fn version(&self) -> u64;
}

/// The cached value of a GPU's availability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Availability {
    gpu_id: String,
    status: GpuStatus,
    version: u64,
}

/// The cached price of a GPU type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Price {
    gpu_type: String,
    cents_per_hour: u64,
    version: u64,
}

/// The cached order book: every available GPU with its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct OrderBook {
    offers: Vec<Offer>,
    version: u64,
}

/// One available GPU in the order book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Offer {
    gpu_id: String,
    gpu_type: String,
    provider: String,
    cents_per_hour: u64,
}

impl Versioned for Availability {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for Price {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for OrderBook {
    fn version(&self) -> u64 {
        self.version
    }
}

/// The current value of one resource, as the writer writes it with `set_key`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Snapshot {
    Availability(Availability),
    Price(Price),
    OrderBook(OrderBook),
}

/// One change the writer made, with what the fleet is told about it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    Booked {
        booking_id: String,
        gpu_id: String,
    },
    Cancelled {
        booking_id: String,
        gpu_id: String,
    },
    Repriced {
        gpu_type: &'static str,
        cents_per_hour: u64,
    },
    Maintenance {
        gpu_id: String,
        status: GpuStatus,
    },
}

impl Change {
    /// The notification announcing this change, carrying the market's global version after it.
    pub(super) fn notification(&self, source_version: u64) -> Notification {
        let notification = match self {
            Change::Booked { booking_id, gpu_id } => {
                Notification::booking_created(booking_id, gpu_id)
            }
            Change::Cancelled { booking_id, gpu_id } => {
                Notification::booking_cancelled(booking_id, gpu_id)
            }
            Change::Repriced {
                gpu_type,
                cents_per_hour,
            } => Notification::pricing_updated(gpu_type, *cents_per_hour as f64 / 100.0),
            Change::Maintenance { gpu_id, status } => {
                Notification::gpu_availability_changed(gpu_id, status.as_str())
            }
        };
        notification.with_data("source_version", source_version)
    }
}

/// One change made by [`Market::step`]: what it was, the global version after it, and every
/// resource it touched.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Step {
    pub(super) change: Change,
    pub(super) version: u64,
    pub(super) touched: Vec<Resource>,
}

/// A `set_key` of a resource's value that the writer knows landed: the call returned `Ok`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LandedSet {
    /// The version of the value written.
    pub(super) version: u64,
    /// The index of the node it was written through.
    pub(super) node: usize,
    /// The nodes' wall clock (seconds, as event timestamps are written) just before the call:
    /// the event the write published carries a timestamp at or after it, and every event of a
    /// later write one after the call returned.
    pub(super) issued_at: f64,
    /// The audit clock when the writer recorded that the call returned `Ok`.
    pub(super) landed: u64,
}

/// What a reader knew before its read started: the input of [`Market::required`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BeforeRead {
    /// The reading node's index.
    pub(super) node: usize,
    /// The highest `source_version` the node had applied to the resource's namespace.
    pub(super) applied: u64,
    /// The newest timestamp of an event naming the resource's key that the node had applied
    /// (0 for none).
    pub(super) key_event: f64,
    /// The audit clock when the read started.
    pub(super) started: u64,
}

/// The lowest version a read may serve, and the write that set it, when a write did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Required {
    pub(super) version: u64,
    pub(super) by_set: Option<LandedSet>,
}

/// The source of truth, with a version history per resource.
///
/// Invariant: `version` is the number of changes made; `history[slot(r)]` lists, ascending, the
/// global versions of the changes that touched resource `r` (version 0, the initial state, is
/// implied); `landed[slot(r)]` lists, in the order they returned, the writes of `r` known to
/// have landed (their versions ascend too: the writer writes one value at a time).
#[derive(Debug)]
pub(super) struct Market {
    version: u64,
    pub(super) gpus: Vec<Gpu>,
    /// Cents per hour, by index into [`GPU_TYPES`].
    prices: Vec<u64>,
    history: Vec<Vec<u64>>,
    landed: Vec<Vec<LandedSet>>,
    /// The resources the last change touched, taken by [`Market::step`].
    touched: Vec<Resource>,
    next_booking: u64,
}

impl Market {
    /// A market of `gpus` GPUs of random types, about a quarter of them booked.
    pub(super) fn new(gpus: usize, rng: &mut Rng) -> Self {
        let mut next_booking = 1;
        let gpus = (0..gpus)
            .map(|i| {
                let booked = rng.below(4) == 0;
                let booking = booked.then(|| {
                    next_booking += 1;
                    format!("b-{}", next_booking - 1)
                });
                Gpu {
                    provider: format!("p-{}", i / GPUS_PER_PROVIDER + 1),
                    gpu_type: rng.below(GPU_TYPES.len()),
                    status: if booked {
                        GpuStatus::Booked
                    } else {
                        GpuStatus::Available
                    },
                    booking,
                }
            })
            .collect::<Vec<_>>();
        let resources = gpus.len() + GPU_TYPES.len() + 1;
        Self {
            version: 0,
            gpus,
            prices: GPU_TYPES.iter().map(|(_, cents)| *cents).collect(),
            history: vec![Vec::new(); resources],
            landed: vec![Vec::new(); resources],
            touched: Vec::new(),
            next_booking,
        }
    }

    /// Every resource, in [`Market::slot`] order.
    pub(super) fn resources(&self) -> impl Iterator<Item = Resource> {
        (0..self.gpus.len())
            .map(Resource::Gpu)
            .chain((0..GPU_TYPES.len()).map(Resource::Price))
            .chain(std::iter::once(Resource::OrderBook))
    }

    /// The index of `resource` in `history` (and in [`World::params`]).
    ///
    /// [`World::params`]: super::workload::World::params
    pub(super) fn slot(&self, resource: Resource) -> usize {
        match resource {
            Resource::Gpu(i) => i,
            Resource::Price(t) => self.gpus.len() + t,
            Resource::OrderBook => self.gpus.len() + GPU_TYPES.len(),
        }
    }

    /// The version of `resource` as of global version `as_of`: the last change to it at or before
    /// `as_of`, or 0 if none.
    pub(super) fn version_of(&self, resource: Resource, as_of: u64) -> u64 {
        let history = &self.history[self.slot(resource)];
        let changes = history.partition_point(|&v| v <= as_of);
        changes.checked_sub(1).map_or(0, |last| history[last])
    }

    /// Records a write of `resource` that returned `Ok`. Call it with the market locked from
    /// before `set.landed` is read, so a reader that started after that instant finds it.
    pub(super) fn record_set(&mut self, resource: Resource, set: LandedSet) {
        let slot = self.slot(resource);
        self.landed[slot].push(set);
    }

    /// The lowest version a read of `resource` may serve, given what its node knew before the
    /// read started (see the module docs of `demo` for why each rule is exact):
    ///
    /// - the version of `resource` as of the highest `source_version` the node had applied to
    ///   the resource's namespace (a notification invalidated it);
    /// - the version of the newest write of `resource` known to have landed before the read
    ///   started, if the node issued it, or applied an event naming the key issued at or after
    ///   the write began (that event, or one of a later write, made the node drop its copy
    ///   after the write reached L2).
    pub(super) fn required(&self, resource: Resource, before: &BeforeRead) -> Required {
        let by_notification = self.version_of(resource, before.applied);
        let by_set = self.landed[self.slot(resource)]
            .iter()
            .rev()
            .find(|set| {
                set.landed < before.started
                    && (set.node == before.node || set.issued_at <= before.key_event)
            })
            .filter(|set| set.version > by_notification)
            .copied();
        Required {
            version: by_set.map_or(by_notification, |set| set.version),
            by_set,
        }
    }

    /// The current value of `resource`.
    pub(super) fn snapshot(&self, resource: Resource) -> Snapshot {
        match resource {
            Resource::Gpu(i) => Snapshot::Availability(self.availability(i)),
            Resource::Price(t) => Snapshot::Price(self.price(t)),
            Resource::OrderBook => Snapshot::OrderBook(self.order_book()),
        }
    }

    /// The current version of `resource`.
    fn current_version(&self, resource: Resource) -> u64 {
        self.history[self.slot(resource)]
            .last()
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn availability(&self, i: usize) -> Availability {
        Availability {
            gpu_id: gpu_id(i),
            status: self.gpus[i].status,
            version: self.current_version(Resource::Gpu(i)),
        }
    }

    pub(super) fn price(&self, t: usize) -> Price {
        Price {
            gpu_type: GPU_TYPES[t].0.to_owned(),
            cents_per_hour: self.prices[t],
            version: self.current_version(Resource::Price(t)),
        }
    }

    pub(super) fn order_book(&self) -> OrderBook {
        let offers = self
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, gpu)| gpu.status == GpuStatus::Available)
            .map(|(i, gpu)| Offer {
                gpu_id: gpu_id(i),
                gpu_type: GPU_TYPES[gpu.gpu_type].0.to_owned(),
                provider: gpu.provider.clone(),
                cents_per_hour: self.prices[gpu.gpu_type],
            })
            .collect();
        OrderBook {
            offers,
            version: self.current_version(Resource::OrderBook),
        }
    }

    /// Makes one random change.
    pub(super) fn step(&mut self, rng: &mut Rng) -> Step {
        let roll = rng.below(100);
        let change = match roll {
            0..35 => self.book(rng).or_else(|| self.cancel(rng)),
            35..70 => self.cancel(rng).or_else(|| self.book(rng)),
            70..90 => None,
            _ => self.maintenance(rng),
        };
        let change = change.unwrap_or_else(|| self.reprice(rng));
        Step {
            change,
            version: self.version,
            touched: std::mem::take(&mut self.touched),
        }
    }

    /// Records a change touching `resources`; the new global version.
    fn commit(&mut self, resources: &[Resource]) -> u64 {
        self.version += 1;
        for &resource in resources {
            let slot = self.slot(resource);
            self.history[slot].push(self.version);
        }
        self.touched = resources.to_vec();
        self.version
    }

    /// A random GPU in `status`, if any.
    fn find(&self, rng: &mut Rng, status: GpuStatus) -> Option<usize> {
        let n = self.gpus.len();
        let start = rng.below(n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.gpus[i].status == status)
    }

    fn book(&mut self, rng: &mut Rng) -> Option<Change> {
        let i = self.find(rng, GpuStatus::Available)?;
        let booking_id = format!("b-{}", self.next_booking);
        self.next_booking += 1;
        self.gpus[i].status = GpuStatus::Booked;
        self.gpus[i].booking = Some(booking_id.clone());
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Booked {
            booking_id,
            gpu_id: gpu_id(i),
        })
    }

    fn cancel(&mut self, rng: &mut Rng) -> Option<Change> {
        let i = self.find(rng, GpuStatus::Booked)?;
        let booking_id = self.gpus[i].booking.take().unwrap_or_default();
        self.gpus[i].status = GpuStatus::Available;
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Cancelled {
            booking_id,
            gpu_id: gpu_id(i),
        })
    }

    /// Takes an available GPU offline or brings an offline one back (half the time each way,
    /// falling back to the other).
    fn maintenance(&mut self, rng: &mut Rng) -> Option<Change> {
        let (from, to) = if rng.below(2) == 0 {
            (GpuStatus::Available, GpuStatus::Offline)
        } else {
            (GpuStatus::Offline, GpuStatus::Available)
        };
        let (i, to) = match self.find(rng, from) {
            Some(i) => (i, to),
            None => (self.find(rng, to)?, from),
        };
        self.gpus[i].status = to;
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Maintenance {
            gpu_id: gpu_id(i),
            status: to,
        })
    }

    /// Moves a random GPU type's price by 1 to 20 cents, never below 10 cents.
    fn reprice(&mut self, rng: &mut Rng) -> Change {
        let t = rng.below(GPU_TYPES.len());
        let delta = 1 + rng.below(20) as u64;
        let old = self.prices[t];
        let new = if rng.below(2) == 0 || old < 10 + delta {
            old + delta
        } else {
            old - delta
        };
        self.prices[t] = new;
        // The order book lists prices, so it changes too (though pricing_updated does not route
        // to its namespace).
        self.commit(&[Resource::Price(t), Resource::OrderBook]);
        Change::Repriced {
            gpu_type: GPU_TYPES[t].0,
            cents_per_hour: new,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, well-mixed PRNG; plenty for picking
/// workload actions. Deterministic for a given seed.
#[derive(Debug, Clone)]
pub(super) struct Rng {
    state: u64,
}

impl Rng {
    /// The golden-ratio increment of SplitMix64.
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for task number `stream` of a run seeded with `seed`.
    pub(super) fn stream(seed: u64, stream: u64) -> Self {
        Self::new(mix(seed ^ mix(stream.wrapping_add(Self::GAMMA))))
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix(self.state)
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is negligible for small `n`).
    ///
    /// # Panics
    /// If `n` is 0.
    pub(super) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0) has no values to pick from");
        let scaled = (u128::from(self.next_u64()) * n as u128) >> 64;
        // `scaled < n`, so it fits.
        scaled as usize
    }
}

/// The SplitMix64 output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Locks `m`, ignoring poisoning: a panicking task is reported through its join handle, and the
/// data behind these locks stays consistent between statements.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_and_is_deterministic() {
        // Reference outputs of SplitMix64 seeded with 0.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);

        let draw = |seed, stream| {
            let mut rng = Rng::stream(seed, stream);
            (0..64).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, 3), draw(42, 3));
        assert_ne!(draw(42, 3), draw(42, 4));
        assert_ne!(draw(42, 3), draw(43, 3));
        assert!(draw(7, 0).iter().all(|&n| n < 1000));
    }

    #[test]
    fn version_of_answers_from_the_history() {
        let mut market = Market::new(3, &mut Rng::new(1));
        let gpu = Resource::Gpu(1);
        assert_eq!(market.commit(&[gpu, Resource::OrderBook]), 1);
        assert_eq!(market.commit(&[Resource::Price(0)]), 2);
        assert_eq!(market.commit(&[Resource::Gpu(0)]), 3);
        assert_eq!(market.commit(&[gpu]), 4);
        assert_eq!(market.version_of(gpu, 0), 0);
        assert_eq!(market.version_of(gpu, 1), 1);
        assert_eq!(market.version_of(gpu, 3), 1);
        assert_eq!(market.version_of(gpu, 4), 4);
        assert_eq!(market.version_of(gpu, u64::MAX), 4);
        assert_eq!(market.version_of(Resource::Price(0), 1), 0);
        assert_eq!(market.version_of(Resource::Price(0), 2), 2);
        assert_eq!(market.version_of(Resource::Price(3), 4), 0);
        assert_eq!(market.current_version(Resource::OrderBook), 1);
    }

    #[test]
    fn every_step_bumps_the_version_and_the_values_carry_it() {
        let mut rng = Rng::new(9);
        let mut market = Market::new(5, &mut rng);
        for expected in 1..=200 {
            let Step {
                change,
                version,
                touched,
            } = market.step(&mut rng);
            assert_eq!(version, expected);
            assert!(touched.contains(&Resource::OrderBook), "{change:?}");
            for &resource in &touched {
                assert_eq!(
                    market.current_version(resource),
                    version,
                    "{resource:?} was touched"
                );
                let written = match market.snapshot(resource) {
                    Snapshot::Availability(v) => v.version(),
                    Snapshot::Price(v) => v.version(),
                    Snapshot::OrderBook(v) => v.version(),
                };
                assert_eq!(written, version, "{resource:?}");
            }
            let data = change.notification(version).data().clone();
            assert_eq!(
                data.get("source_version").and_then(Value::as_u64),
                Some(version)
            );
            assert_eq!(
                market.order_book().version,
                version,
                "every change touches the order book"
            );
            if let Change::Booked { gpu_id, .. } | Change::Cancelled { gpu_id, .. } = &change {
                let i: usize = gpu_id.trim_start_matches("g-").parse::<usize>().unwrap() - 1;
                assert_eq!(market.availability(i).version, version);
            }
        }
    }

    #[test]
    fn required_takes_the_newest_landed_write_the_node_had_seen() {
        let mut market = Market::new(3, &mut Rng::new(1));
        let gpu = Resource::Gpu(1);
        market.commit(&[gpu]); // 1: announced by a notification
        market.commit(&[gpu]); // 2: written through node 0
        let set = |version, node, issued_at, landed| LandedSet {
            version,
            node,
            issued_at,
            landed,
        };
        market.record_set(gpu, set(2, 0, 10.0, 100));
        market.commit(&[gpu]); // 3: written through node 1
        market.record_set(gpu, set(3, 1, 20.0, 200));
        let before = |node, applied, key_event, started| BeforeRead {
            node,
            applied,
            key_event,
            started,
        };
        let required = |b: BeforeRead| market.required(gpu, &b).version;
        // Only the notification: no write had landed when the read started.
        assert_eq!(required(before(2, 1, 99.0, 50)), 1);
        // Node 0 issued write 2; node 2 had not applied any event naming the key.
        assert_eq!(required(before(0, 1, 0.0, 150)), 2);
        assert_eq!(required(before(2, 1, 0.0, 150)), 1);
        // Node 2 applied an event issued after write 2 began, but write 3 had not landed yet.
        assert_eq!(required(before(2, 1, 10.0, 150)), 2);
        assert_eq!(required(before(2, 1, 25.0, 150)), 2);
        // Write 3 landed: node 1 issued it; node 2 saw its event; node 0 only saw write 2's.
        assert_eq!(required(before(1, 0, 0.0, 250)), 3);
        assert_eq!(required(before(2, 0, 20.0, 250)), 3);
        assert_eq!(required(before(0, 0, 15.0, 250)), 2);
        // A notification at or above the writes needs no write to explain it.
        let by_notification = market.required(gpu, &before(2, 3, 20.0, 250));
        assert_eq!((by_notification.version, by_notification.by_set), (3, None));
        assert_eq!(
            market.required(gpu, &before(2, 1, 20.0, 250)).by_set,
            Some(set(3, 1, 20.0, 200))
        );
    }
}
