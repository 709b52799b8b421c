//! The L1 hit path alone, as a ladder of steps from the bare engine to `EdgeCache::get_key`, for
//! timing and for profiling with valgrind's callgrind, whose instruction counts are stable where
//! timings on a shared machine are not:
//!
//! ```sh
//! cargo run --release -p edge-cache-bench --example l1_hit
//! cargo build --release -p edge-cache-bench --example l1_hit
//! L1_HIT_ROUNDS=1 valgrind --tool=callgrind --toggle-collect='l1_hit::reads_*' \
//!     target/release/examples/l1_hit
//! callgrind_annotate callgrind.out.<pid>
//! ```
//!
//! Every step holds the same 10,000 values under the same digests and reads every key of one
//! pseudo-random order. Each step adds one thing an L1 hit of edge-cache cannot do without:
//!
//! 1. `reads_quick_cache`: quick_cache's `get` of an `Arc<Value>`, the baseline of row 1 of
//!    `cargo xtask bench`.
//! 2. `reads_typed`: the value in a slot with its expiry (the shape of `MemoryL1`'s own 32-byte
//!    slot), the expiry compared against a fixed time.
//! 3. `reads_typed_clock`: the expiry compared against the shipped [`SystemClock::expiry_now`]
//!    (the coarse monotonic clock), so that no entry is served past its TTL. The least any
//!    cache that honours a TTL on every hit can do on this engine.
//! 4. `reads_erased_clock`: the value type-erased (`Arc<dyn Any>`, since one node serves many
//!    value types) and checked back to `Value` with `downcast`. The least edge-cache's L1 can do.
//! 5. `reads_memory_l1`: the shipped [`MemoryL1`] (through `dyn L1Store`), clock and downcast.
//! 6. `reads_edge`: `EdgeCache::get_key` on an embedded-default node.
//! 7. `reads_get_json`: `EdgeCache::get(namespace, &params)` with the parameters as a
//!    `serde_json::Value` built beforehand, so the key is derived on every read.
//! 8. `reads_get_struct`: the same with a small `#[derive(Serialize)]` struct.
//!
//! Rounds time every step once, in an order shuffled each round; each step's figure is the
//! median over rounds of its time divided by the baseline's in the same round, so a burst of load
//! from elsewhere lands on all of them alike.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheKey, Clock, Digest, L1Entry, L1Store, SharedValue, Timestamp};
use cache_edge::{EdgeCache, SetOptions};
use cache_memory::{MemoryL1, SystemClock};
use serde::{Deserialize, Serialize};

const KEYS: usize = 10_000;
const NAMESPACE: &str = "gpu_availability";
const READS: usize = 200_000;
/// Timed rounds unless `L1_HIT_ROUNDS` says otherwise (under callgrind, 1 is enough).
const ROUNDS: usize = 15;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Value {
    id: String,
    vcpus: u32,
    price: f64,
}

/// What the middle steps keep per digest: the shape of `MemoryL1`'s own 32-byte slot, with the
/// value typed (`Arc<Value>`, steps 2 and 3) or erased (`SharedValue`, step 4).
#[derive(Clone)]
struct Slot<V> {
    value: V,
    expires_at: Timestamp,
    #[allow(dead_code)] // Kept for the slot's size: MemoryL1 charges each entry its weight.
    weight: u32,
    #[allow(dead_code)] // Kept for the slot's size: MemoryL1 tells insertions apart by it.
    seq: u32,
}

impl<V> Slot<V> {
    fn new(value: V, expires_at: Timestamp) -> Self {
        Self {
            value,
            expires_at,
            weight: 1,
            seq: 0,
        }
    }
}

/// Everything the steps read from.
struct Stores {
    keys: Vec<CacheKey>,
    json_params: Vec<serde_json::Value>,
    ids: Vec<String>,
    quick: quick_cache::sync::Cache<Digest, Arc<Value>>,
    typed: quick_cache::sync::Cache<Digest, Slot<Arc<Value>>>,
    erased: quick_cache::sync::Cache<Digest, Slot<SharedValue>>,
    memory_l1: Box<dyn L1Store>,
    node: EdgeCache,
    rt: tokio::runtime::Runtime,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    QuickCache,
    Typed,
    TypedClock,
    ErasedClock,
    MemoryL1,
    Edge,
    GetJson,
    GetStruct,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::QuickCache,
        Step::Typed,
        Step::TypedClock,
        Step::ErasedClock,
        Step::MemoryL1,
        Step::Edge,
        Step::GetJson,
        Step::GetStruct,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::QuickCache => "1. quick_cache get (baseline)",
            Step::Typed => "2. + slot with an expiry",
            Step::TypedClock => "3. + expiry against the coarse clock",
            Step::ErasedClock => "4. + type erasure, downcast",
            Step::MemoryL1 => "5. MemoryL1::get, clock, downcast",
            Step::Edge => "6. EdgeCache::get_key",
            Step::GetJson => "7. EdgeCache::get, JSON value params",
            Step::GetStruct => "8. EdgeCache::get, struct params",
        }
    }

    /// Reads every key of `order` once; how many reads were hits.
    fn run(self, stores: &Stores, order: &[usize]) -> usize {
        match self {
            Step::QuickCache => reads_quick_cache(&stores.quick, &stores.keys, order),
            Step::Typed => reads_typed(&stores.typed, &stores.keys, order),
            Step::TypedClock => reads_typed_clock(&stores.typed, &stores.keys, order),
            Step::ErasedClock => reads_erased_clock(&stores.erased, &stores.keys, order),
            Step::MemoryL1 => reads_memory_l1(&*stores.memory_l1, &stores.keys, order),
            Step::Edge => reads_edge(&stores.rt, &stores.node, &stores.keys, order),
            Step::GetJson => reads_get_json(&stores.rt, &stores.node, &stores.json_params, order),
            Step::GetStruct => reads_get_struct(&stores.rt, &stores.node, &stores.ids, order),
        }
    }
}

fn hit(value: Option<&Arc<Value>>) -> usize {
    usize::from(value.is_some_and(|v| v.vcpus > 0))
}

#[inline(never)]
fn reads_quick_cache(
    cache: &quick_cache::sync::Cache<Digest, Arc<Value>>,
    keys: &[CacheKey],
    order: &[usize],
) -> usize {
    let mut hits = 0;
    for &i in order {
        let value = cache.get(keys[i].digest());
        hits += hit(value.as_ref());
        black_box(value);
    }
    hits
}

#[inline(never)]
fn reads_typed(
    cache: &quick_cache::sync::Cache<Digest, Slot<Arc<Value>>>,
    keys: &[CacheKey],
    order: &[usize],
) -> usize {
    let now = black_box(Timestamp::from_nanos(1));
    let mut hits = 0;
    for &i in order {
        let value = cache
            .get(keys[i].digest())
            .filter(|slot| slot.expires_at > now)
            .map(|slot| slot.value);
        hits += hit(value.as_ref());
        black_box(value);
    }
    hits
}

#[inline(never)]
fn reads_typed_clock(
    cache: &quick_cache::sync::Cache<Digest, Slot<Arc<Value>>>,
    keys: &[CacheKey],
    order: &[usize],
) -> usize {
    let mut hits = 0;
    for &i in order {
        let value = cache
            .get(keys[i].digest())
            .filter(|slot| slot.expires_at > SystemClock.expiry_now())
            .map(|slot| slot.value);
        hits += hit(value.as_ref());
        black_box(value);
    }
    hits
}

#[inline(never)]
fn reads_erased_clock(
    cache: &quick_cache::sync::Cache<Digest, Slot<SharedValue>>,
    keys: &[CacheKey],
    order: &[usize],
) -> usize {
    let mut hits = 0;
    for &i in order {
        let value = cache
            .get(keys[i].digest())
            .filter(|slot| slot.expires_at > SystemClock.expiry_now())
            .and_then(|slot| slot.value.downcast::<Value>().ok());
        hits += hit(value.as_ref());
        black_box(value);
    }
    hits
}

#[inline(never)]
fn reads_memory_l1(l1: &dyn L1Store, keys: &[CacheKey], order: &[usize]) -> usize {
    let mut hits = 0;
    for &i in order {
        let value = l1
            .get(keys[i].digest(), SystemClock.expiry_now())
            .and_then(|value| value.downcast::<Value>().ok());
        hits += hit(value.as_ref());
        black_box(value);
    }
    hits
}

#[inline(never)]
fn reads_edge(
    rt: &tokio::runtime::Runtime,
    node: &EdgeCache,
    keys: &[CacheKey],
    order: &[usize],
) -> usize {
    rt.block_on(async {
        let mut hits = 0;
        for &i in order {
            let value = node.get_key::<Value>(&keys[i]).await;
            hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
            black_box(value.ok());
        }
        hits
    })
}

/// The parameters of one offer, as a user would declare them.
#[derive(Serialize)]
struct GpuParams<'a> {
    gpu_id: &'a str,
}

#[inline(never)]
fn reads_get_json(
    rt: &tokio::runtime::Runtime,
    node: &EdgeCache,
    params: &[serde_json::Value],
    order: &[usize],
) -> usize {
    rt.block_on(async {
        let mut hits = 0;
        for &i in order {
            let value = node.get::<Value, _>(NAMESPACE, &params[i]).await;
            hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
            black_box(value.ok());
        }
        hits
    })
}

#[inline(never)]
fn reads_get_struct(
    rt: &tokio::runtime::Runtime,
    node: &EdgeCache,
    ids: &[String],
    order: &[usize],
) -> usize {
    rt.block_on(async {
        let mut hits = 0;
        for &i in order {
            let params = GpuParams { gpu_id: &ids[i] };
            let value = node.get::<Value, _>(NAMESPACE, &params).await;
            hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
            black_box(value.ok());
        }
        hits
    })
}

/// A xorshift generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Fills every store with the same values; the node's copy is what every step hands out.
fn setup() -> anyhow::Result<Stores> {
    // One worker runs the node's background tasks (its liveness checks among them) while the
    // reads, which never yield, run on this thread: on a current-thread runtime those checks
    // would wait for the reads, the node's confirmation would age past its staleness bound and
    // reads would go to L2.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // A bound far beyond the run, so that under valgrind, where the worker is starved, the
    // node still trusts its L1.
    let node = rt.block_on(
        EdgeCache::builder()
            .node_id("l1-hit")
            .staleness_bound(Duration::from_secs(3600))
            .build(),
    )?;
    let ids: Vec<String> = (0..KEYS).map(|i| format!("g-{i:06}")).collect();
    let json_params: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({ "gpu_id": id }))
        .collect();
    let keys: Vec<CacheKey> = json_params
        .iter()
        .map(|params| node.key(NAMESPACE, params))
        .collect::<cache_core::Result<_>>()?;
    let quick = quick_cache::sync::Cache::new(KEYS * 2);
    let typed = quick_cache::sync::Cache::new(KEYS * 2);
    let erased = quick_cache::sync::Cache::new(KEYS * 2);
    let memory_l1 = MemoryL1::new(256 << 20);
    let expires_at = Timestamp::from_nanos(u64::MAX);
    rt.block_on(async {
        for (i, key) in keys.iter().enumerate() {
            let value = Value {
                id: format!("g-{i:06}"),
                vcpus: 16 + (i % 32) as u32,
                price: 1.5,
            };
            node.set_key(
                key,
                &value,
                SetOptions::new().ttl(Duration::from_secs(3600)),
            )
            .await?;
            let stored = node
                .get_key::<Value>(key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{key} was not stored"))?;
            let erased_value: SharedValue = stored.clone();
            typed.insert(*key.digest(), Slot::new(stored.clone(), expires_at));
            erased.insert(*key.digest(), Slot::new(erased_value.clone(), expires_at));
            quick.insert(*key.digest(), stored);
            memory_l1.insert(
                *key.digest(),
                L1Entry::new(erased_value, expires_at, 64),
                &[],
            );
        }
        anyhow::Ok(())
    })?;
    Ok(Stores {
        keys,
        json_params,
        ids,
        quick,
        typed,
        erased,
        memory_l1: Box::new(memory_l1),
        node,
        rt,
    })
}

fn main() -> anyhow::Result<()> {
    let stores = setup()?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // `L1_HIT_SPAN` reads only the first keys (all of them by default): a small span keeps the
    // parameters and entries read in the CPU cache, so the derivation alone shows.
    let span = std::env::var("L1_HIT_SPAN")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(KEYS)
        .clamp(1, KEYS);
    let order: Vec<usize> = (0..READS).map(|_| rng.below(span)).collect();
    let l2_before = stores.node.stats().l2_hits;
    let rounds = std::env::var("L1_HIT_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let mut nanos: Vec<Vec<f64>> = vec![Vec::new(); Step::ALL.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); Step::ALL.len()];
    for _ in 0..rounds {
        let mut turn: Vec<usize> = (0..Step::ALL.len()).collect();
        for i in (1..turn.len()).rev() {
            turn.swap(i, rng.below(i + 1));
        }
        let mut elapsed = vec![0.0; Step::ALL.len()];
        for &slot in &turn {
            let step = Step::ALL[slot];
            let started = Instant::now();
            let hits = step.run(&stores, &order);
            elapsed[slot] = started.elapsed().as_secs_f64() * 1e9 / READS as f64;
            anyhow::ensure!(
                hits == READS,
                "{}: {hits} of {READS} reads hit",
                step.name()
            );
        }
        for slot in 0..Step::ALL.len() {
            nanos[slot].push(elapsed[slot]);
            ratios[slot].push(elapsed[slot] / elapsed[0]);
        }
    }
    let l2_reads = stores.node.stats().l2_hits - l2_before;
    anyhow::ensure!(
        l2_reads == 0,
        "{l2_reads} timed reads of the node went to L2: the steps would not compare L1 hits"
    );
    println!("{READS} reads of {KEYS} keys, {rounds} rounds; medians:");
    for (slot, step) in Step::ALL.into_iter().enumerate() {
        println!(
            "  {:<40} {:>6.1} ns/read  {:>5.2}x",
            step.name(),
            median(&mut nanos[slot]),
            median(&mut ratios[slot])
        );
    }
    stores.rt.block_on(stores.node.shutdown());
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
