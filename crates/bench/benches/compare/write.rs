//! Row 3: a write to an event-driven namespace (the L2 write and the event announcing it), one
//! task's latency. edge-cache `set_key` on `gpu_availability` (critical: the node also keeps an
//! L1 copy, decoded from the encoding), `set_key_shared` there (the L1 keeps the caller's `Arc`,
//! as amalgam-cache's does) and `set_key` on `provider_status` (L2 only), against a raw pipelined `SET` + `PUBLISH` (one
//! round trip, the value serialised in the timed call) and amalgam-cache `set` with its Redis L2
//! and backplane, the backplane publish awaited rather than left to the background (its default)
//! so that the call covers the same work.
//!
//! A second raw line, the floor, sends the write as the script edge-cache's writes need: `SET`
//! and `PUBLISH` only if the namespace's generation is still the one written under (see
//! `docs/performance.md`, "Writes"), the value serialised in the timed call. What that check
//! costs shows as the floor's ratio; what edge-cache adds to it, as the distance from the floor
//! to edge-cache.
//!
//! What sequencing costs (every announced change numbered, logged in a stream and published in
//! the same script; see `crates/cache-redis/src/l2.rs`, "Event log"): the three edge-cache
//! writes and the floor run again on a node whose `RedisL2` and `RedisBus` keep no event log
//! (`RedisConfig::without_event_log`, on a channel and key prefix of its own), in the same turns.
//! The target is at most 1.10x: each sequenced write's p50 divided by the same write's p50
//! without the log.
//!
//! Each implementation has one subscriber on its channel, as a fleet would: each edge-cache node
//! hears its own events back, amalgam-cache's backplane its own, and the raw channel has a
//! subscriber that drains it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cache_core::CacheKey;
use cache_edge::{EdgeCache, SetOptions};
use edge_cache_bench::{duration, percentiles, ratio, times, verdict};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

use crate::alloc::counting_all_threads;
use crate::data::{self, Offer, Report, Sizes, KEYS, TTL};
use crate::nodes::{self, Amalgam, ServerWork};

/// The channel the raw writer publishes on.
const RAW_CHANNEL: &str = "bench:raw:writes";

/// The generation key the floor's script reads; never set, so it reads as generation 0.
const RAW_GENERATION: &str = "bench:raw:g";
/// The floor's log epoch and event log, as a namespace's `epoch` and `log` keys.
const RAW_SEQUENCE: &str = "bench:raw:epoch";
const RAW_LOG: &str = "bench:raw:log";

/// The most a sequenced write may cost relative to the same write without the event log.
const SEQUENCING_TARGET: f64 = 1.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Raw,
    RawChecked,
    RawCheckedUnlogged,
    Edge,
    EdgeShared,
    EdgeL2Only,
    EdgeUnlogged,
    EdgeSharedUnlogged,
    EdgeL2OnlyUnlogged,
    Amalgam,
}

impl Imp {
    const ALL: [Imp; 10] = [
        Imp::Raw,
        Imp::RawChecked,
        Imp::RawCheckedUnlogged,
        Imp::Edge,
        Imp::EdgeShared,
        Imp::EdgeL2Only,
        Imp::EdgeUnlogged,
        Imp::EdgeSharedUnlogged,
        Imp::EdgeL2OnlyUnlogged,
        Imp::Amalgam,
    ];

    /// The same write without the event log, for a sequenced one.
    fn unlogged(self) -> Option<Imp> {
        match self {
            Imp::RawChecked => Some(Imp::RawCheckedUnlogged),
            Imp::Edge => Some(Imp::EdgeUnlogged),
            Imp::EdgeShared => Some(Imp::EdgeSharedUnlogged),
            Imp::EdgeL2Only => Some(Imp::EdgeL2OnlyUnlogged),
            _ => None,
        }
    }

    fn slot(self) -> usize {
        Imp::ALL.iter().position(|&i| i == self).unwrap_or(0)
    }

    /// How the findings name a sequenced write.
    fn short(self) -> &'static str {
        match self {
            Imp::RawChecked => "the raw floor",
            Imp::Edge => "`set_key` (`gpu_availability`)",
            Imp::EdgeShared => "`set_key_shared`",
            Imp::EdgeL2Only => "`set_key` (`provider_status`)",
            _ => "",
        }
    }

    /// One of edge-cache's writes, logged or not.
    fn is_edge(self) -> bool {
        matches!(
            self,
            Imp::Edge
                | Imp::EdgeShared
                | Imp::EdgeL2Only
                | Imp::EdgeUnlogged
                | Imp::EdgeSharedUnlogged
                | Imp::EdgeL2OnlyUnlogged
        )
    }

    fn name(self) -> &'static str {
        match self {
            Imp::Raw => "raw pipelined `SET` + `PUBLISH`, value serialised (baseline)",
            Imp::RawChecked => {
                "floor: raw set-if-current script (`SET` + `PUBLISH` if the generation is current)"
            }
            Imp::RawCheckedUnlogged => {
                "floor, no event log: the same script told to keep no log (`SET` + `PUBLISH`)"
            }
            Imp::Edge => "edge-cache `set_key` (`gpu_availability`: L2 + L1 copy + event)",
            Imp::EdgeShared => {
                "edge-cache `set_key_shared` (`gpu_availability`: L2 + the caller's `Arc` in L1 + event)"
            }
            Imp::EdgeL2Only => "edge-cache `set_key` (`provider_status`: L2 + event)",
            Imp::EdgeUnlogged => "edge-cache `set_key` (`gpu_availability`), no event log",
            Imp::EdgeSharedUnlogged => {
                "edge-cache `set_key_shared` (`gpu_availability`), no event log"
            }
            Imp::EdgeL2OnlyUnlogged => "edge-cache `set_key` (`provider_status`), no event log",
            Imp::Amalgam => "amalgam-cache `set`, backplane publish awaited (L1 + L2 + backplane)",
        }
    }
}

struct Stores {
    node: EdgeCache,
    /// A node that keeps no event log (`nodes::unlogged_config`).
    unlogged: EdgeCache,
    critical: Vec<CacheKey>,
    l2_only: Vec<CacheKey>,
    raw: MultiplexedConnection,
    set_if_current: redis::Script,
    raw_keys: Vec<String>,
    amalgam: Amalgam,
    names: Vec<String>,
    offers: Vec<Offer>,
    shared: Vec<Arc<Offer>>,
}

impl Stores {
    /// Waits until both nodes have heard back every event they published.
    async fn settle(&self) -> anyhow::Result<()> {
        nodes::settle(&self.node).await?;
        nodes::settle(&self.unlogged).await
    }

    async fn write(&self, imp: Imp, i: usize) -> anyhow::Result<()> {
        let options = || SetOptions::new().ttl(TTL);
        match imp {
            Imp::Raw => {
                let mut conn = self.raw.clone();
                let ttl_ms = u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX);
                let key = &self.raw_keys[i];
                redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(serde_json::to_vec(&self.offers[i])?)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(RAW_CHANNEL)
                    .arg(key)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            Imp::RawChecked | Imp::RawCheckedUnlogged => {
                let mut conn = self.raw.clone();
                let ttl_ms = u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX);
                let key = &self.raw_keys[i];
                // A log length of 0 is what a `RedisL2` without an event log sends: the script
                // then publishes the event as it is, with no number and no log entry.
                let log_length = if imp == Imp::RawChecked {
                    cache_redis::DEFAULT_LOG_LENGTH
                } else {
                    0
                };
                // Built as `RedisL2` builds it: one `EVALSHA` command (the script was loaded
                // at setup).
                let _generation: Option<u64> = redis::cmd("EVALSHA")
                    .arg(self.set_if_current.get_hash())
                    .arg(4)
                    .arg(RAW_GENERATION)
                    .arg(key.as_str())
                    .arg(RAW_SEQUENCE)
                    .arg(RAW_LOG)
                    .arg(0)
                    .arg(serde_json::to_vec(&self.offers[i])?)
                    .arg(ttl_ms)
                    .arg(RAW_CHANNEL)
                    // The event without its closing brace, as `RedisL2` sends it.
                    .arg(format!("{{\"k\":\"{}\"", key.as_str()))
                    .arg("\"raw\"")
                    .arg(log_length)
                    .query_async(&mut conn)
                    .await?;
            }
            Imp::Edge => {
                self.node
                    .set_key(&self.critical[i], &self.offers[i], options())
                    .await?;
            }
            Imp::EdgeShared => {
                self.node
                    .set_key_shared(&self.critical[i], Arc::clone(&self.shared[i]), options())
                    .await?;
            }
            Imp::EdgeL2Only => {
                self.node
                    .set_key(&self.l2_only[i], &self.offers[i], options())
                    .await?;
            }
            Imp::EdgeUnlogged => {
                self.unlogged
                    .set_key(&self.critical[i], &self.offers[i], options())
                    .await?;
            }
            Imp::EdgeSharedUnlogged => {
                self.unlogged
                    .set_key_shared(&self.critical[i], Arc::clone(&self.shared[i]), options())
                    .await?;
            }
            Imp::EdgeL2OnlyUnlogged => {
                self.unlogged
                    .set_key(&self.l2_only[i], &self.offers[i], options())
                    .await?;
            }
            Imp::Amalgam => {
                self.amalgam
                    .set(self.names[i].as_str(), Arc::clone(&self.shared[i]))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Runs row 3.
///
/// # Errors
/// When a store cannot be set up or a write fails.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!("row 3: write to an event-driven namespace (L2 write + event)");
    let stores = rt.block_on(setup(url))?;
    let mut info = rt.block_on(nodes::raw(url))?;
    let drain = rt.spawn(drain_raw_channel(url.to_owned()));
    let order = data::order(sizes.set_ops, KEYS);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); Imp::ALL.len()];
    let mut work = vec![ServerWork::default(); Imp::ALL.len()];
    let mut allocations = vec![0_u64; Imp::ALL.len()];
    rt.block_on(async {
        // Warm up every path (script loading, connections) outside the timed writes.
        for imp in Imp::ALL {
            for &i in order.iter().take(50) {
                stores.write(imp, i).await?;
            }
        }
        stores.settle().await?;
        // The implementations take turns write by write, in an order shuffled each turn (see
        // `data::turn_order`), so that load from elsewhere falls on all of them alike.
        let writes = sizes.rounds * order.len();
        for (n, &i) in order.iter().cycle().take(writes).enumerate() {
            for slot in data::turn_order(n, Imp::ALL.len()) {
                let t = Instant::now();
                stores.write(Imp::ALL[slot], i).await?;
                samples[slot].push(t.elapsed());
            }
            if n % 100 == 99 {
                // The nodes' listeners hear their own events back; keep them from falling
                // behind.
                stores.settle().await?;
            }
        }
        stores.settle().await?;
        // What Redis spends per write: one batch per implementation between two `INFO` calls;
        // and what the process allocates for it, on every thread (the subscribers' handling of
        // the batch's messages included: the node's is waited for), counted in the same batch.
        for (slot, imp) in Imp::ALL.into_iter().enumerate() {
            let before = ServerWork::read(&mut info).await?;
            let (written, allocated) = counting_all_threads(async {
                for &i in &order {
                    stores.write(imp, i).await?;
                }
                stores.settle().await
            })
            .await;
            written?;
            let after = ServerWork::read(&mut info).await?;
            work[slot] = before.until(after);
            allocations[slot] = allocated;
        }
        anyhow::Ok(())
    })?;
    drain.abort();
    let writes = order.len();
    let p50 = percentiles(&mut samples, 50);
    let p99 = percentiles(&mut samples, 99);
    let mut sequencing = Vec::new();
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        let mut target = if matches!(imp, Imp::Edge | Imp::EdgeShared | Imp::EdgeL2Only) {
            let r = ratio(p50[slot], p50[0]);
            format!("≤ 1.2× raw: {} ({})", verdict(r <= 1.2), times(r))
        } else {
            String::new()
        };
        if let Some(unlogged) = imp.unlogged() {
            let u = unlogged.slot();
            let r50 = ratio(p50[slot], p50[u]);
            let r99 = ratio(p99[slot], p99[u]);
            sequencing.push(format!(
                "{} {} (p99 {})",
                imp.short(),
                times(r50),
                times(r99)
            ));
            if imp.is_edge() {
                if !target.is_empty() {
                    target.push_str("; ");
                }
                let _ = write!(
                    target,
                    "event log p50 ≤ {SEQUENCING_TARGET:.2}× without: {} ({})",
                    verdict(r50 <= SEQUENCING_TARGET),
                    times(r50)
                );
            }
        }
        report.line(
            "3. write to an event-driven namespace",
            "latency p50 / p99 (Redis CPU, commands per write; allocations per write, all threads)",
            imp.name(),
            format!(
                "{} / {} ({:.1} µs, {:.1} cmds; {:.0} allocations)",
                duration(p50[slot]),
                duration(p99[slot]),
                work[slot].micros_per(writes),
                work[slot].commands_per(writes),
                allocations[slot] as f64 / writes as f64
            ),
            format!(
                "{} / {}",
                times(ratio(p50[slot], p50[0])),
                times(ratio(p99[slot], p99[0]))
            ),
            target,
        );
    }
    report.findings.push(format!(
        "Row 3, what sequencing costs a write (its p50 with the event log ÷ the same write's p50 \
         on a node without it, same run, the writes taking turns): {}.",
        sequencing.join(", ")
    ));
    let stats = stores.node.stats();
    let unlogged = stores.unlogged.stats();
    anyhow::ensure!(
        unlogged.events_published == unlogged.sets && unlogged.publish_errors == 0,
        "the node without an event log published {} events for {} writes ({} errors)",
        unlogged.events_published,
        unlogged.sets,
        unlogged.publish_errors
    );
    report.checks.push(format!(
        "row 3: edge-cache completed {} writes and published {} events, with {} publish errors, \
         on the node with the event log; {} writes and {} events, with 0 publish errors, on the \
         node without",
        edge_cache_bench::thousands(stats.sets),
        edge_cache_bench::thousands(stats.events_published),
        stats.publish_errors,
        edge_cache_bench::thousands(unlogged.sets),
        edge_cache_bench::thousands(unlogged.events_published),
    ));
    rt.block_on(async {
        stores.node.shutdown().await;
        stores.unlogged.shutdown().await;
        let _ = stores.amalgam.shutdown().await;
    });
    Ok(())
}

/// Subscribes to the raw writer's channel and reads everything published on it, as a node of a
/// hand-rolled fleet would.
async fn drain_raw_channel(url: String) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(RAW_CHANNEL).await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        std::hint::black_box(message.get_payload_bytes());
    }
    Ok(())
}

async fn setup(url: &str) -> anyhow::Result<Stores> {
    let node = nodes::edge_node(url, "bench-write", None).await?;
    let unlogged =
        nodes::edge_node_with(&nodes::unlogged_config(url), "bench-write-unlogged", None).await?;
    let derive = |ns: &str| -> anyhow::Result<Vec<CacheKey>> {
        (0..KEYS)
            .map(|i| {
                node.key(ns, &serde_json::json!({ "write": i }))
                    .context("deriving a key")
            })
            .collect()
    };
    let critical = derive("gpu_availability")?;
    let l2_only = derive("provider_status")?;
    let raw_keys = critical
        .iter()
        .map(|k| format!("raw:{}", k.as_str()))
        .collect();
    let names = critical
        .iter()
        .map(|k| format!("am:{}", k.as_str()))
        .collect();
    let amalgam = nodes::amalgam(
        url,
        "bench-write-amalgam",
        |o| o.with_allow_background_backplane_operations(false),
        None,
    )
    .await?;
    let offers: Vec<Offer> = (0..KEYS).map(Offer::new).collect();
    let shared = offers.iter().cloned().map(Arc::new).collect();
    let mut raw = nodes::raw(url).await?;
    let set_if_current = redis::Script::new(cache_redis::SET_IF_CURRENT_SCRIPT);
    set_if_current.load_async(&mut raw).await?;
    Ok(Stores {
        node,
        unlogged,
        critical,
        l2_only,
        raw,
        set_if_current,
        raw_keys,
        amalgam,
        names,
        offers,
        shared,
    })
}
