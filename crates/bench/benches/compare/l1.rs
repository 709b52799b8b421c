//! Row 1: an L1 hit of a typed value, on 1 and 2 threads: edge-cache `get_key` against
//! quick_cache and moka used directly and amalgam-cache `try_get` (with its Redis L2 and
//! backplane, and as a memory-only cache: the target is judged against the faster), and
//! edge-cache `get(namespace, params)`, which derives the key on every read, with the
//! parameters as a `serde_json::Value` and as a small `#[derive(Serialize)]` struct.
//!
//! Every implementation holds the same 10,000 offers as `Arc<Offer>` and hands out a clone of
//! the `Arc` (edge-cache and amalgam-cache through their async API, the two engines directly).
//! Two floors run beside them: quick_cache holding each offer in a slot with its expiry, checked
//! against the coarse clock edge-cache's L1 reads (the least a cache that never serves an entry
//! past its TTL does on this engine), and the same with the offer type-erased and downcast back
//! (the least an L1 that serves many value types from one store does: edge-cache's).
//! quick_cache and moka are keyed by the same 32-byte digest edge-cache's L1 is keyed by, and
//! edge-cache `get_key` reads with keys derived once outside the timed loop; `get` reads the
//! same keys in the same order, deriving each key inside the timed loop: from a JSON value per
//! key built beforehand (a map with its own heap nodes, as `serde_json::Value` is), and from a
//! struct made on each read that borrows the offer's id from one contiguous text of all ids
//! (parameters in hand, as a request handler has them, not scattered over the heap). A third
//! floor shows what any `get` keyed by SHA-256 pays: the hash of each key's canonical JSON
//! (padded beforehand, in one array), then `get_key` of a key that depends on it.
//! Reads follow one fixed pseudo-random order over the keys. Implementations take turns, batch
//! after batch, and the median batch of each is reported; allocations are counted in the timed
//! loop with the counting allocator.
//!
//! For profiling one implementation's hit path, `COMPARE_L1_ONLY=quick_cache|edge|moka|amalgam`
//! restricts the row to it (the baseline always runs, for the ratio); e.g. under
//! `perf record -g`.

use std::future::IntoFuture as _;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::ensure;
use cache_core::{CacheKey, Clock as _, Digest, SharedValue, Timestamp};
use cache_edge::{EdgeCache, SetOptions};
use cache_memory::SystemClock;
use edge_cache_bench::{median_f64, nanos, times, verdict};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::alloc::allocations;
use crate::data::{self, Offer, Report, Sizes, KEYS, TTL};
use crate::nodes::{self, Amalgam};

const NAMESPACE: &str = "gpu_availability";

/// The implementations, in the order they take turns; quick_cache is the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    QuickCache,
    FloorTtl,
    FloorErased,
    Edge,
    FloorDigest,
    EdgeGetJson,
    EdgeGetStruct,
    Moka,
    Amalgam,
    AmalgamMemory,
}

impl Imp {
    const ALL: [Imp; 10] = [
        Imp::QuickCache,
        Imp::FloorTtl,
        Imp::FloorErased,
        Imp::Edge,
        Imp::FloorDigest,
        Imp::EdgeGetJson,
        Imp::EdgeGetStruct,
        Imp::Moka,
        Imp::Amalgam,
        Imp::AmalgamMemory,
    ];

    /// The implementations to run: all, or the baseline and the one `COMPARE_L1_ONLY` names.
    fn selected() -> Vec<Imp> {
        let only = std::env::var("COMPARE_L1_ONLY").unwrap_or_default();
        Imp::ALL
            .into_iter()
            .filter(|imp| {
                only.is_empty() || *imp == Imp::QuickCache || imp.name().contains(only.as_str())
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Imp::QuickCache => "quick_cache `sync::Cache::get` (baseline)",
            Imp::FloorTtl => "floor: quick_cache, expiry checked against the coarse clock",
            Imp::FloorErased => "floor: the same, value type-erased and downcast",
            Imp::Edge => "edge-cache `get_key`",
            Imp::FloorDigest => {
                "floor for `get`: SHA-256 of the key's canonical JSON (one block, padded \
                 beforehand), then `get_key` of the key it names"
            }
            Imp::EdgeGetJson => "edge-cache `get(namespace, params)`, `serde_json::Value` params",
            Imp::EdgeGetStruct => "edge-cache `get(namespace, params)`, struct params",
            Imp::Moka => "moka `sync::Cache::get`",
            Imp::Amalgam => "amalgam-cache `try_get` (with its Redis L2 and backplane)",
            Imp::AmalgamMemory => "amalgam-cache `try_get` (memory-only cache)",
        }
    }
}

/// Everything the readers read from.
struct Stores {
    node: EdgeCache,
    keys: Vec<CacheKey>,
    /// The parameters of each key, as `get` takes them.
    json_params: Vec<serde_json::Value>,
    /// Every offer's id, back to back, `ID_LEN` bytes each.
    ids: String,
    /// Each key's canonical JSON, padded as SHA-256's one block.
    blocks: Vec<[u8; 64]>,
    digests: Vec<Digest>,
    names: Vec<String>,
    quick: quick_cache::sync::Cache<Digest, Arc<Offer>>,
    floor_ttl: quick_cache::sync::Cache<Digest, Slot<Arc<Offer>>>,
    floor_erased: quick_cache::sync::Cache<Digest, Slot<SharedValue>>,
    moka: moka::sync::Cache<Digest, Arc<Offer>>,
    amalgam: Amalgam,
    amalgam_memory: Amalgam,
}

/// What the floors keep per digest: the shape of edge-cache's own 32-byte L1 slot, the value
/// typed or erased.
#[derive(Clone)]
struct Slot<V> {
    value: V,
    expires_at: Timestamp,
    /// Kept for the slot's size: edge-cache's slot holds the entry's weight and insertion number.
    _weight_and_seq: u64,
}

impl<V> Slot<V> {
    /// A slot that does not expire within the run (the check still reads the clock).
    fn new(value: V) -> Self {
        Self {
            value,
            expires_at: Timestamp::from_nanos(u64::MAX),
            _weight_and_seq: 0,
        }
    }
}

/// The parameters of one offer as a user would declare them; they derive the same key as
/// [`data::params`].
#[derive(Serialize)]
struct GpuParams<'a> {
    gpu_id: &'a str,
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The length of every id [`data::params`] makes (`g-000042`).
const ID_LEN: usize = 8;

/// The `i`th id of the contiguous text of ids.
fn id(ids: &str, i: usize) -> &str {
    &ids[i * ID_LEN..(i + 1) * ID_LEN]
}

/// One timed batch on one thread.
struct Batch {
    elapsed: Duration,
    allocations: u64,
    hits: usize,
}

/// Runs row 1.
///
/// # Errors
/// When a store cannot be set up, or a timed read was not a hit.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!("row 1: L1 hit, {KEYS} keys, 1 and 2 threads");
    let stores = rt.block_on(setup(url))?;
    let order = data::order(sizes.l1_ops, KEYS);
    let selected = Imp::selected();
    for threads in [1, 2] {
        let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); Imp::ALL.len()];
        let mut allocs = vec![0_u64; Imp::ALL.len()];
        for _ in 0..sizes.l1_rounds {
            for (slot, imp) in Imp::ALL.into_iter().enumerate() {
                if !selected.contains(&imp) {
                    continue;
                }
                let batches = measure(&stores, imp, threads, &order);
                for batch in &batches {
                    ensure!(
                        batch.hits == order.len(),
                        "{}: {} of {} timed reads were hits",
                        imp.name(),
                        batch.hits,
                        order.len()
                    );
                    per_op[slot].push(batch.elapsed.as_secs_f64() * 1e9 / order.len() as f64);
                    allocs[slot] += batch.allocations;
                }
            }
        }
        let medians: Vec<f64> = per_op.iter_mut().map(|v| median_f64(v)).collect();
        let total_reads = (sizes.l1_rounds * threads * order.len()) as f64;
        let row = format!(
            "1. L1 hit, typed value, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        let measure = if threads == 1 {
            "time per read"
        } else {
            "time per read, each thread"
        };
        let median = |imp: Imp| {
            Imp::ALL
                .iter()
                .position(|i| *i == imp)
                .filter(|_| selected.contains(&imp))
                .map(|slot| medians[slot])
        };
        let base = medians[0];
        let edge = medians[3];
        // The faster of amalgam-cache's two configurations, whichever ran.
        let amalgam = [Imp::Amalgam, Imp::AmalgamMemory]
            .into_iter()
            .filter_map(median)
            .reduce(f64::min);
        let faster_than_amalgam = |time: f64| {
            amalgam.map_or_else(
                || "not run".to_owned(),
                |a| {
                    format!(
                        "{} ({} its faster time)",
                        verdict(time < a),
                        times(time / a)
                    )
                },
            )
        };
        for (slot, imp) in Imp::ALL.into_iter().enumerate() {
            if !selected.contains(&imp) {
                continue;
            }
            let per = allocs[slot] as f64 / total_reads;
            let result = format!(
                "{}, {} allocations/read",
                nanos(medians[slot]),
                alloc_text(per)
            );
            let target = match imp {
                Imp::Edge if threads == 1 => format!(
                    "≤ 1.2× the type-erased floor: {}; faster than amalgam-cache: {}; 0 \
                     allocations: {}",
                    median(Imp::FloorErased).map_or_else(
                        || "not run".to_owned(),
                        |floor| format!(
                            "{} ({})",
                            verdict(edge <= 1.2 * floor),
                            times(edge / floor)
                        )
                    ),
                    faster_than_amalgam(edge),
                    verdict(allocs[slot] == 0),
                ),
                Imp::Edge => format!(
                    "≤ 1.5× quick_cache: {} ({}); faster than amalgam-cache: {}; 0 allocations: {}",
                    verdict(edge <= 1.5 * base),
                    times(edge / base),
                    faster_than_amalgam(edge),
                    verdict(allocs[slot] == 0),
                ),
                Imp::EdgeGetJson | Imp::EdgeGetStruct => {
                    let time = medians[slot];
                    format!(
                        "≤ 2× `get_key`: {} ({}; the floor for `get` alone: {}); ≤ 1 \
                         allocation/read: {} (goal 0); faster than amalgam-cache: {}",
                        verdict(time <= 2.0 * edge),
                        times(time / edge),
                        median(Imp::FloorDigest)
                            .map_or_else(|| "not run".to_owned(), |floor| times(floor / edge)),
                        verdict(per <= 1.0),
                        faster_than_amalgam(time),
                    )
                }
                _ => String::new(),
            };
            report.line(
                &row,
                measure,
                imp.name(),
                result,
                times(medians[slot] / base),
                target,
            );
        }
    }
    report.checks.push(format!(
        "row 1: every timed read of every implementation was a hit ({} reads per batch, {} \
         batches per implementation and thread count)",
        edge_cache_bench::thousands(order.len() as u64),
        sizes.l1_rounds
    ));
    let stats = stores.node.stats();
    report.checks.push(format!(
        "row 1: edge-cache counted {} L1 hits, {} L2 hits and {} misses over the row",
        edge_cache_bench::thousands(stats.l1_hits),
        stats.l2_hits,
        stats.misses
    ));
    rt.block_on(async {
        stores.node.shutdown().await;
        let _ = stores.amalgam.shutdown().await;
        let _ = stores.amalgam_memory.shutdown().await;
    });
    Ok(())
}

fn alloc_text(per_read: f64) -> String {
    if per_read == 0.0 {
        "0".to_owned()
    } else {
        format!("{per_read:.2}")
    }
}

/// Fills every store with the same 10,000 offers.
async fn setup(url: &str) -> anyhow::Result<Stores> {
    let node = nodes::edge_node(url, "bench-l1", None).await?;
    let json_params: Vec<serde_json::Value> = (0..KEYS).map(data::params).collect();
    let keys: Vec<CacheKey> = json_params
        .iter()
        .map(|params| node.key(NAMESPACE, params))
        .collect::<cache_core::Result<_>>()?;
    let ids: String = json_params
        .iter()
        .map(|params| params["gpu_id"].as_str().unwrap_or_default())
        .collect();
    ensure!(ids.len() == KEYS * ID_LEN, "every id is {ID_LEN} bytes");
    for (i, key) in keys.iter().enumerate() {
        let id = id(&ids, i);
        ensure!(
            node.key(NAMESPACE, &GpuParams { gpu_id: id })? == *key,
            "the struct parameters of {id} derive another key than its JSON parameters"
        );
    }
    let offers = data::offers();
    stream::iter(keys.iter().zip(&offers).map(Ok))
        .try_for_each_concurrent(32, |(key, offer)| {
            let node = &node;
            async move {
                node.set_key(key, &**offer, SetOptions::new().ttl(TTL))
                    .await
            }
        })
        .await?;
    nodes::settle(&node).await?;
    // Every engine read directly holds the very values the node decoded (the same `Arc`s), so
    // all of them touch the same value memory in the same places: the offers made above were
    // allocated back to back, the node's copies among its other allocations, and reading
    // values laid out so differently would time the heap's layout, not the hit path.
    let mut offers = Vec::with_capacity(keys.len());
    for key in &keys {
        let offer = node
            .get_key::<Offer>(key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{key} is not in the node's L1 after its write"))?;
        offers.push(offer);
    }
    let digests = data::digests(&keys);
    let quick = quick_cache::sync::Cache::new(KEYS * 2);
    let floor_ttl = quick_cache::sync::Cache::new(KEYS * 2);
    let floor_erased = quick_cache::sync::Cache::new(KEYS * 2);
    let moka = moka::sync::Cache::new((KEYS * 2) as u64);
    for (digest, offer) in digests.iter().zip(&offers) {
        quick.insert(*digest, Arc::clone(offer));
        floor_ttl.insert(*digest, Slot::new(Arc::clone(offer)));
        let erased: SharedValue = offer.clone();
        floor_erased.insert(*digest, Slot::new(erased));
        moka.insert(*digest, Arc::clone(offer));
    }
    moka.run_pending_tasks();
    let amalgam = nodes::amalgam(url, "bench-l1-amalgam", |o| o, None).await?;
    let names: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
    let sets: Vec<_> = names
        .iter()
        .zip(&offers)
        .map(|(name, offer)| amalgam.set(name.as_str(), Arc::clone(offer)).into_future())
        .collect();
    let written: Vec<amalgam::Result<()>> = stream::iter(sets).buffer_unordered(32).collect().await;
    for result in written {
        result?;
    }
    let amalgam_memory: Amalgam = amalgam::Cache::builder()
        .default_options(amalgam::EntryOptions::new(TTL))
        .try_build()?;
    for (name, offer) in names.iter().zip(&offers) {
        amalgam_memory.set(name.as_str(), Arc::clone(offer)).await?;
    }
    let blocks = json_params
        .iter()
        .map(|params| {
            let json = cache_core::canonical_json(params)?;
            let mut block = [0u8; 64];
            ensure!(json.len() < 56, "{json} does not fit one SHA-256 block");
            block[..json.len()].copy_from_slice(json.as_bytes());
            block[json.len()] = 0x80;
            block[56..].copy_from_slice(&(json.len() as u64 * 8).to_be_bytes());
            Ok(block)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Stores {
        node,
        keys,
        json_params,
        ids,
        blocks,
        digests,
        names,
        quick,
        floor_ttl,
        floor_erased,
        moka,
        amalgam,
        amalgam_memory,
    })
}

/// One batch of `order.len()` reads on each of `threads` threads, started together.
fn measure(stores: &Stores, imp: Imp, threads: usize, order: &[usize]) -> Vec<Batch> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    // Each thread starts at a different point of the same order.
                    let start = t * order.len() / threads.max(1);
                    let order: Vec<usize> = order[start..]
                        .iter()
                        .chain(&order[..start])
                        .copied()
                        .collect();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("a current-thread runtime builds");
                    // Warm up (caches, thread-locals) outside the timed loop.
                    rt.block_on(read_batch(stores, imp, &order[..order.len().min(10_000)]));
                    barrier.wait();
                    rt.block_on(read_batch(stores, imp, &order))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a reader thread panicked"))
            .collect()
    })
}

async fn read_batch(stores: &Stores, imp: Imp, order: &[usize]) -> Batch {
    let mut hits = 0_usize;
    let before = allocations();
    let started = Instant::now();
    match imp {
        Imp::QuickCache => {
            for &i in order {
                let value = stores.quick.get(&stores.digests[i]);
                hits += usize::from(value.as_ref().is_some_and(|v| v.vcpus > 0));
                black_box(value);
            }
        }
        Imp::FloorTtl => {
            for &i in order {
                let value = stores
                    .floor_ttl
                    .get(&stores.digests[i])
                    .filter(|slot| slot.expires_at > SystemClock.expiry_now())
                    .map(|slot| slot.value);
                hits += usize::from(value.as_ref().is_some_and(|v| v.vcpus > 0));
                black_box(value);
            }
        }
        Imp::FloorErased => {
            for &i in order {
                let value = stores
                    .floor_erased
                    .get(&stores.digests[i])
                    .filter(|slot| slot.expires_at > SystemClock.expiry_now())
                    .and_then(|slot| slot.value.downcast::<Offer>().ok());
                hits += usize::from(value.as_ref().is_some_and(|v| v.vcpus > 0));
                black_box(value);
            }
        }
        Imp::Moka => {
            for &i in order {
                let value = stores.moka.get(&stores.digests[i]);
                hits += usize::from(value.as_ref().is_some_and(|v| v.vcpus > 0));
                black_box(value);
            }
        }
        Imp::Edge => {
            for &i in order {
                let value = stores.node.get_key::<Offer>(&stores.keys[i]).await;
                hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
                black_box(value.ok());
            }
        }
        Imp::FloorDigest => {
            // The key read depends on the hash (through an opaque zero), so the lookup waits
            // for it as `get`'s does.
            let zero = black_box(0_usize);
            for &i in order {
                let mut state = SHA256_INITIAL;
                sha2::block_api::compress256(&mut state, std::slice::from_ref(&stores.blocks[i]));
                let at = i + zero * state[0] as usize;
                let value = stores.node.get_key::<Offer>(&stores.keys[at]).await;
                hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
                black_box(value.ok());
            }
        }
        Imp::EdgeGetJson => {
            for &i in order {
                let value = stores
                    .node
                    .get::<Offer, _>(NAMESPACE, &stores.json_params[i])
                    .await;
                hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
                black_box(value.ok());
            }
        }
        Imp::EdgeGetStruct => {
            for &i in order {
                let params = GpuParams {
                    gpu_id: id(&stores.ids, i),
                };
                let value = stores.node.get::<Offer, _>(NAMESPACE, &params).await;
                hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
                black_box(value.ok());
            }
        }
        Imp::Amalgam | Imp::AmalgamMemory => {
            let cache = if imp == Imp::Amalgam {
                &stores.amalgam
            } else {
                &stores.amalgam_memory
            };
            for &i in order {
                let value = cache.try_get(stores.names[i].as_str()).await;
                hits += usize::from(matches!(&value, Ok(Some(v)) if v.vcpus > 0));
                black_box(value.ok());
            }
        }
    }
    let elapsed = started.elapsed();
    Batch {
        elapsed,
        allocations: allocations() - before,
        hits,
    }
}
