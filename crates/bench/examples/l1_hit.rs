//! The L1 hit path alone, for profiling with valgrind's callgrind, whose instruction counts are
//! stable where timings on a shared machine are not:
//!
//! ```sh
//! cargo build --release -p edge-cache-bench --example l1_hit
//! valgrind --tool=callgrind --toggle-collect='l1_hit::reads_*' target/release/examples/l1_hit
//! callgrind_annotate callgrind.out.<pid>
//! ```
//!
//! It fills an embedded-default node (no Redis) and a quick_cache keyed by the same digests with
//! the same 10,000 values, then reads every key of one pseudo-random order from each: the
//! instructions of `reads_edge` over those of `reads_quick_cache` are what edge-cache's hit path
//! adds to the engine it is built on. Row 1 of `cargo xtask bench` times the same two loops.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheKey, Digest};
use cache_edge::{EdgeCache, SetOptions};
use serde::{Deserialize, Serialize};

const KEYS: usize = 10_000;
const READS: usize = 200_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Value {
    id: String,
    vcpus: u32,
    price: f64,
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
        hits += usize::from(value.as_ref().is_some_and(|v| v.vcpus > 0));
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

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let node = rt.block_on(EdgeCache::builder().node_id("l1-hit").build())?;
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|i| {
            node.key(
                "gpu_availability",
                &serde_json::json!({ "gpu_id": format!("g-{i:06}") }),
            )
        })
        .collect::<cache_core::Result<_>>()?;
    let quick = quick_cache::sync::Cache::new(KEYS * 2);
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
            quick.insert(*key.digest(), stored);
        }
        anyhow::Ok(())
    })?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let order: Vec<usize> = (0..READS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % KEYS as u64) as usize
        })
        .collect();
    for round in 0..3 {
        let started = Instant::now();
        let quick_hits = reads_quick_cache(&quick, &keys, &order);
        let quick_time = started.elapsed();
        let started = Instant::now();
        let edge_hits = reads_edge(&rt, &node, &keys, &order);
        let edge_time = started.elapsed();
        anyhow::ensure!(
            quick_hits == READS && edge_hits == READS,
            "not every read was a hit"
        );
        println!(
            "round {round}: quick_cache {:.1} ns/read, edge-cache {:.1} ns/read ({:.2}x)",
            quick_time.as_nanos() as f64 / READS as f64,
            edge_time.as_nanos() as f64 / READS as f64,
            edge_time.as_secs_f64() / quick_time.as_secs_f64()
        );
    }
    rt.block_on(node.shutdown());
    Ok(())
}
