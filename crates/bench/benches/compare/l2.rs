//! Row 2: an L2 hit through Redis (the value is not in L1): one task's latency, and the
//! throughput of 32 concurrent tasks. edge-cache `get_key` on `provider_status` (event-driven,
//! not critical: it has no L1, so every read goes to Redis) against a raw redis-rs `GET` +
//! `serde_json` decode on a multiplexed connection, and amalgam-cache `try_get` with its Redis L2
//! and memory reads and writes skipped.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cache_core::CacheKey;
use cache_edge::{EdgeCache, SetOptions};
use edge_cache_bench::{duration, median_f64, nanos, percentiles, rate, ratio, times, verdict};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

use crate::data::{self, Offer, Report, Sizes, KEYS, TTL};
use crate::nodes::{self, Amalgam, ServerWork};

const NAMESPACE: &str = "provider_status";

/// Concurrent tasks of the throughput measure.
pub const TASKS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Raw,
    Edge,
    Amalgam,
}

impl Imp {
    const ALL: [Imp; 3] = [Imp::Raw, Imp::Edge, Imp::Amalgam];

    fn name(self) -> &'static str {
        match self {
            Imp::Raw => "raw redis-rs `GET` + `serde_json` decode (baseline)",
            Imp::Edge => "edge-cache `get_key` (`provider_status`: L2 only)",
            Imp::Amalgam => "amalgam-cache `try_get`, memory skipped (Redis L2)",
        }
    }
}

#[derive(Clone)]
struct Stores {
    node: EdgeCache,
    keys: Arc<Vec<CacheKey>>,
    raw: MultiplexedConnection,
    raw_keys: Arc<Vec<String>>,
    amalgam: Amalgam,
    names: Arc<Vec<String>>,
}

impl Stores {
    /// One read of key `i`; whether it found the offer.
    async fn read(&self, imp: Imp, i: usize) -> anyhow::Result<bool> {
        Ok(match imp {
            Imp::Raw => {
                let mut conn = self.raw.clone();
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&self.raw_keys[i])
                    .query_async(&mut conn)
                    .await?;
                match bytes {
                    Some(bytes) => serde_json::from_slice::<Offer>(&bytes)?.vcpus > 0,
                    None => false,
                }
            }
            Imp::Edge => self
                .node
                .get_key::<Offer>(&self.keys[i])
                .await?
                .is_some_and(|o| o.vcpus > 0),
            Imp::Amalgam => self
                .amalgam
                .try_get(self.names[i].as_str())
                .await?
                .is_some_and(|o| o.vcpus > 0),
        })
    }
}

/// Runs row 2.
///
/// # Errors
/// When a store cannot be set up, or a timed read missed.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!("row 2: L2 hit through Redis, {KEYS} keys");
    let stores = rt.block_on(setup(url))?;
    let mut info = rt.block_on(nodes::raw(url))?;
    let order = data::order(sizes.l2_latency_ops.max(sizes.l2_throughput_ops), KEYS);

    // One task: the latency of each read. The implementations take turns read by read (the
    // order of each turn shuffled; see `data::turn_order`), so that load from elsewhere falls on
    // all of them alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); Imp::ALL.len()];
    let reads = sizes.rounds * sizes.l2_latency_ops;
    rt.block_on(async {
        for (n, &i) in order.iter().cycle().take(reads).enumerate() {
            for slot in data::turn_order(n, Imp::ALL.len()) {
                let imp = Imp::ALL[slot];
                let t = Instant::now();
                let found = stores.read(imp, i).await?;
                samples[slot].push(t.elapsed());
                ensure!(found, "{}: key {i} missed", imp.name());
            }
        }
        anyhow::Ok(())
    })?;
    // What Redis spends per read: one batch per implementation between two `INFO` calls.
    let mut work = vec![ServerWork::default(); Imp::ALL.len()];
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        work[slot] = rt.block_on(async {
            let before = ServerWork::read(&mut info).await?;
            for &i in &order[..sizes.l2_latency_ops] {
                stores.read(imp, i).await?;
            }
            let after = ServerWork::read(&mut info).await?;
            anyhow::Ok(before.until(after))
        })?;
    }
    let p50 = percentiles(&mut samples, 50);
    let p99 = percentiles(&mut samples, 99);
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        let target = if imp == Imp::Edge {
            format!(
                "≤ 1.15× raw: {} ({}); faster than amalgam-cache: {} ({} its time)",
                verdict(ratio(p50[1], p50[0]) <= 1.15),
                times(ratio(p50[1], p50[0])),
                verdict(p50[1] < p50[2]),
                times(ratio(p50[1], p50[2])),
            )
        } else {
            String::new()
        };
        report.line(
            "2. L2 hit through Redis, 1 task",
            "latency p50 / p99 (Redis CPU, commands per read)",
            imp.name(),
            format!(
                "{} / {} ({} µs, {:.1} cmds)",
                duration(p50[slot]),
                duration(p99[slot]),
                round1(work[slot].micros_per(sizes.l2_latency_ops)),
                work[slot].commands_per(sizes.l2_latency_ops)
            ),
            format!(
                "{} / {}",
                times(ratio(p50[slot], p50[0])),
                times(ratio(p99[slot], p99[0]))
            ),
            target,
        );
    }

    // 32 tasks: reads per second. Each round runs every implementation once, the first of
    // each round rotating; a round's ratio compares runs made moments apart, so the median of
    // the rounds' ratios is steadier on a shared machine than a ratio of medians.
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); Imp::ALL.len()];
    let mut slower: Vec<Vec<f64>> = vec![Vec::new(); Imp::ALL.len()];
    let mut work = vec![ServerWork::default(); Imp::ALL.len()];
    let order = Arc::new(order[..sizes.l2_throughput_ops].to_vec());
    for round in 0..sizes.l2_throughput_rounds {
        let mut rates = [0.0; Imp::ALL.len()];
        for turn in 0..Imp::ALL.len() {
            let slot = (round + turn) % Imp::ALL.len();
            let imp = Imp::ALL[slot];
            let (elapsed, used) = rt.block_on(async {
                let before = ServerWork::read(&mut info).await?;
                let started = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for t in 0..TASKS {
                    let stores = stores.clone();
                    let order = Arc::clone(&order);
                    tasks.spawn(async move {
                        for &i in order.iter().skip(t).step_by(TASKS) {
                            ensure!(stores.read(imp, i).await?, "{}: key {i} missed", imp.name());
                        }
                        anyhow::Ok(())
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.context("a reader task panicked")??;
                }
                let elapsed = started.elapsed();
                let after = ServerWork::read(&mut info).await?;
                anyhow::Ok((elapsed, before.until(after)))
            })?;
            rates[slot] = order.len() as f64 / elapsed.as_secs_f64();
            per_second[slot].push(rates[slot]);
            work[slot].add(used);
        }
        for slot in 0..Imp::ALL.len() {
            slower[slot].push(rates[0] / rates[slot]);
        }
    }
    let medians: Vec<f64> = per_second.iter_mut().map(|v| median_f64(v)).collect();
    let slower: Vec<f64> = slower.iter_mut().map(|v| median_f64(v)).collect();
    let reads = sizes.l2_throughput_rounds * order.len();
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        let target = if imp == Imp::Edge {
            format!(
                "≤ 1.15× raw: {} ({}); faster than amalgam-cache: {} ({} its time)",
                verdict(slower[1] <= 1.15),
                times(slower[1]),
                verdict(slower[1] < slower[2]),
                times(slower[1] / slower[2]),
            )
        } else {
            String::new()
        };
        report.line(
            &format!("2. L2 hit through Redis, {TASKS} tasks"),
            "reads per second (time per read; Redis CPU per read)",
            imp.name(),
            format!(
                "{} ({}; {} µs)",
                rate(medians[slot]),
                nanos(1e9 / medians[slot]),
                round1(work[slot].micros_per(reads))
            ),
            times(slower[slot]),
            target,
        );
    }
    report.checks.push(format!(
        "row 2: every timed read of every implementation found its offer; edge-cache counted {} \
         L1 hits on `{NAMESPACE}` (it has no L1)",
        stores.node.stats().l1_hits
    ));
    rt.block_on(async {
        stores.node.shutdown().await;
        let _ = stores.amalgam.shutdown().await;
    });
    Ok(())
}

fn round1(x: f64) -> String {
    format!("{x:.1}")
}

async fn setup(url: &str) -> anyhow::Result<Stores> {
    let node = nodes::edge_node(url, "bench-l2", None).await?;
    ensure!(
        node.namespace(NAMESPACE).is_some_and(|ns| !ns.critical),
        "`{NAMESPACE}` must have no L1 for this row"
    );
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|i| node.key(NAMESPACE, &data::params(i)))
        .collect::<cache_core::Result<_>>()?;
    let offers: Vec<Offer> = (0..KEYS).map(Offer::new).collect();
    stream::iter(keys.iter().zip(&offers).map(Ok))
        .try_for_each_concurrent(32, |(key, offer)| {
            let node = &node;
            async move { node.set_key(key, offer, SetOptions::new().ttl(TTL)).await }
        })
        .await?;
    nodes::settle(&node).await?;

    let mut raw = nodes::raw(url).await?;
    let raw_keys: Vec<String> = keys.iter().map(|k| format!("raw:{}", k.as_str())).collect();
    let ttl_ms = u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX);
    for chunk in raw_keys.chunks(1_000).zip(offers.chunks(1_000)) {
        let mut pipe = redis::pipe();
        for (key, offer) in chunk.0.iter().zip(chunk.1) {
            pipe.cmd("SET")
                .arg(key)
                .arg(serde_json::to_vec(offer)?)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        pipe.query_async::<()>(&mut raw).await?;
    }

    // Reads and writes skip amalgam-cache's memory level, so every read goes to its Redis L2.
    let amalgam = nodes::amalgam(
        url,
        "bench-l2-amalgam",
        |o| o.with_skip_memory(true, true),
        None,
    )
    .await?;
    let names: Vec<String> = keys.iter().map(|k| format!("am:{}", k.as_str())).collect();
    let sets: Vec<_> = names
        .iter()
        .zip(&offers)
        .map(|(name, offer)| {
            amalgam
                .set(name.as_str(), Arc::new(offer.clone()))
                .into_future()
        })
        .collect();
    let written: Vec<amalgam::Result<()>> = stream::iter(sets).buffer_unordered(32).collect().await;
    for result in written {
        result?;
    }
    Ok(Stores {
        node,
        keys: Arc::new(keys),
        raw,
        raw_keys: Arc::new(raw_keys),
        amalgam,
        names: Arc::new(names),
    })
}
