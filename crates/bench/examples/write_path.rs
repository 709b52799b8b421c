//! Row 3's write paths one at a time, for profiling: `N` writes of 10,000 offers through one of
//! them against a Redis you started, on the benchmark's runtime (two tokio workers).
//!
//! ```sh
//! cargo build --release -p edge-cache-bench --example write_path
//! target/release/examples/write_path redis://127.0.0.1:PORT/2 edge 20000
//! # Instructions per write, all threads (the node's listener and the connection drivers
//! # included): the difference between a run of N writes and a run of 0, divided by N.
//! valgrind --tool=callgrind target/release/examples/write_path URL edge 3000
//! valgrind --tool=callgrind target/release/examples/write_path URL edge 0
//! ```
//!
//! Paths: `raw` (row 3's baseline: a pipelined `SET` + `PUBLISH`), `floor` (the same write sent
//! as `RedisL2`'s set-if-current script), `edge` (`set_key` on the critical `gpu_availability`),
//! `shared` (`set_key_shared` there) and `l2only` (`set_key` on `provider_status`). Each run
//! prints the median and p99 latency; compare paths in runs made back to back, as timings on a
//! shared machine move between runs.
//!
//! With `--no-event-log` after the other arguments, the node's `RedisL2` and `RedisBus` keep no
//! event log (`RedisConfig::without_event_log`) and the floor sends the script with a log length
//! of 0, as such a node does: the difference from a run without the flag is what sequencing
//! (numbering, logging and trimming each announced change) costs that path (row 3 measures the
//! same in its `no event log` lines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::CacheKey;
use cache_edge::{EdgeCache, SetOptions};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde::{Deserialize, Serialize};

const KEYS: usize = 10_000;
const TTL: Duration = Duration::from_secs(600);
const CHANNEL: &str = "bench:example:writes";

/// An offer of about 250 bytes of JSON, as the benchmark writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offer {
    offer_id: String,
    provider: String,
    gpu_model: String,
    region: String,
    vcpus: u32,
    memory_gb: u32,
    price_per_hour: f64,
    available: bool,
    tags: Vec<String>,
}

impl Offer {
    fn new(i: usize) -> Self {
        Self {
            offer_id: format!("offer-{i:08}"),
            provider: format!("provider-{}", i % 97),
            gpu_model: "NVIDIA H100 80GB HBM3".to_owned(),
            region: "eu-central-1".to_owned(),
            vcpus: 32,
            memory_gb: 256,
            price_per_hour: 2.5 + (i % 100) as f64 / 100.0,
            available: !i.is_multiple_of(3),
            tags: vec!["sxm5".to_owned(), "nvlink".to_owned(), "spot".to_owned()],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Raw,
    Floor,
    Edge,
    Shared,
    L2Only,
}

struct Writer {
    path: Path,
    /// The log length the floor sends: the default, or 0 without an event log.
    log_length: u64,
    node: EdgeCache,
    raw: redis::aio::MultiplexedConnection,
    script: redis::Script,
    critical: Vec<CacheKey>,
    l2_only: Vec<CacheKey>,
    offers: Vec<Offer>,
    shared: Vec<Arc<Offer>>,
}

impl Writer {
    async fn write(&self, i: usize) -> anyhow::Result<()> {
        let ttl_ms = u64::try_from(TTL.as_millis())?;
        let key = self.critical[i].as_str();
        match self.path {
            Path::Raw => {
                redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(serde_json::to_vec(&self.offers[i])?)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(key)
                    .ignore()
                    .query_async::<()>(&mut self.raw.clone())
                    .await?;
            }
            Path::Floor => {
                // One `EVALSHA`, as `RedisL2` sends it (the script is loaded at start).
                let _: Option<u64> = redis::cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(4)
                    .arg("bench:example:g")
                    .arg(key)
                    .arg("bench:example:epoch")
                    .arg("bench:example:log")
                    .arg(0)
                    .arg(serde_json::to_vec(&self.offers[i])?)
                    .arg(ttl_ms)
                    .arg(CHANNEL)
                    // The event without its closing brace, as `RedisL2` sends it.
                    .arg(format!("{{\"k\":\"{key}\""))
                    .arg("\"example\"")
                    .arg(self.log_length)
                    .query_async(&mut self.raw.clone())
                    .await?;
            }
            Path::Edge => {
                let options = SetOptions::new().ttl(TTL);
                self.node
                    .set_key(&self.critical[i], &self.offers[i], options)
                    .await?;
            }
            Path::Shared => {
                let options = SetOptions::new().ttl(TTL);
                self.node
                    .set_key_shared(&self.critical[i], Arc::clone(&self.shared[i]), options)
                    .await?;
            }
            Path::L2Only => {
                let options = SetOptions::new().ttl(TTL);
                self.node
                    .set_key(&self.l2_only[i], &self.offers[i], options)
                    .await?;
            }
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let unlogged = args.iter().any(|a| a == "--no-event-log");
    args.retain(|a| a != "--no-event-log");
    let mut args = args.into_iter();
    let usage =
        "usage: write_path <redis-url> <raw|floor|edge|shared|l2only> [writes] [--no-event-log]";
    let url = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let path = match args.next().as_deref() {
        Some("raw") => Path::Raw,
        Some("floor") => Path::Floor,
        Some("edge") => Path::Edge,
        Some("shared") => Path::Shared,
        Some("l2only") => Path::L2Only,
        _ => anyhow::bail!(usage),
    };
    let writes: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = if unlogged {
            RedisConfig::new(&url).without_event_log()
        } else {
            RedisConfig::new(&url)
        };
        let node = EdgeCache::builder()
            .node_id("write-path")
            .l2(Arc::new(RedisL2::connect(&config).await?))
            .bus(Arc::new(RedisBus::connect(&config).await?))
            .build()
            .await?;
        let derive = |ns: &str| -> anyhow::Result<Vec<CacheKey>> {
            (0..KEYS)
                .map(|i| Ok(node.key(ns, &serde_json::json!({ "write": i }))?))
                .collect()
        };
        let critical = derive("gpu_availability")?;
        let l2_only = derive("provider_status")?;
        let client = redis::Client::open(url.as_str())?;
        let raw = client.get_multiplexed_async_connection().await?;
        // A subscriber on the raw channel, as row 3 has: every path publishes to one listener.
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let drain = tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                std::hint::black_box(message.get_payload_bytes());
            }
        });
        let script = redis::Script::new(cache_redis::SET_IF_CURRENT_SCRIPT);
        script.load_async(&mut raw.clone()).await?;
        let offers: Vec<Offer> = (0..KEYS).map(Offer::new).collect();
        let writer = Writer {
            path,
            log_length: if unlogged {
                0
            } else {
                cache_redis::DEFAULT_LOG_LENGTH
            },
            node,
            raw,
            script,
            critical,
            l2_only,
            shared: offers.iter().cloned().map(Arc::new).collect(),
            offers,
        };
        for i in 0..200 {
            writer.write(i % KEYS).await?;
        }
        let mut samples = Vec::with_capacity(writes);
        for n in 0..writes {
            let t = Instant::now();
            writer.write((n * 7_919) % KEYS).await?;
            samples.push(t.elapsed());
        }
        samples.sort_unstable();
        if !samples.is_empty() {
            println!(
                "{writes} writes: median {:?}, p99 {:?}",
                samples[samples.len() / 2],
                samples[samples.len() * 99 / 100]
            );
        }
        drain.abort();
        writer.node.shutdown().await;
        anyhow::Ok(())
    })
}
