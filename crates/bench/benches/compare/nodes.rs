//! Building the implementations on Redis, the same way for every row: an edge-cache node on
//! `RedisL2` + `RedisBus`, an amalgam-cache with its Redis L2 and backplane, raw redis-rs
//! connections; and reading what Redis itself spent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amalgam::provider::{
    Backplane, DistributedCache, DistributedSerializer, JsonSerializer, RedisBackplane,
    RedisDistributedCache,
};
use amalgam::{EntryOptions, Plugin};
use anyhow::{ensure, Context as _};
use cache_edge::{EdgeCache, Observer};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use redis::aio::MultiplexedConnection;

use crate::data::{Offer, TTL};

/// The amalgam-cache every row uses: typed `Arc<Offer>` values (a hit clones the `Arc`, as
/// edge-cache hands out `Arc<T>`), JSON in L2.
pub type Amalgam = amalgam::Cache<Arc<Offer>>;

/// An edge-cache node on Redis, as production runs it: its own `RedisL2` and `RedisBus`
/// connections, the default namespaces and routes.
///
/// # Errors
/// When Redis cannot be reached or the node does not start.
pub async fn edge_node(
    url: &str,
    id: &str,
    observer: Option<Arc<dyn Observer>>,
) -> anyhow::Result<EdgeCache> {
    edge_node_with(&RedisConfig::new(url), id, observer).await
}

/// An edge-cache node on `RedisL2` + `RedisBus` built from `config`, otherwise as
/// [`edge_node`].
///
/// # Errors
/// When Redis cannot be reached or the node does not start.
pub async fn edge_node_with(
    config: &RedisConfig,
    id: &str,
    observer: Option<Arc<dyn Observer>>,
) -> anyhow::Result<EdgeCache> {
    let mut builder = EdgeCache::builder()
        .node_id(id)
        .l2(Arc::new(RedisL2::connect(config).await?))
        .bus(Arc::new(RedisBus::connect(config).await?));
    if let Some(observer) = observer {
        builder = builder.observer(observer);
    }
    Ok(builder.build().await?)
}

/// The channel of the nodes that keep no event log.
const UNLOGGED_CHANNEL: &str = "bench:unlogged:events";

/// The key prefix of the nodes that keep no event log.
const UNLOGGED_PREFIX: &str = "ecu:";

/// The settings of a node that keeps no event log ([`RedisConfig::without_event_log`]: its
/// writes and invalidations are published, not sequenced or logged, as before edge-cache had
/// logs), for measuring what the log costs beside a node that keeps one. Its channel and key
/// prefix are its own, so the two nodes of a row share no subscriber and no key: each hears only
/// its own events, as a lone sequenced node does.
pub fn unlogged_config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .without_event_log()
        .channel(UNLOGGED_CHANNEL)
        .key_prefix(UNLOGGED_PREFIX)
}

/// Waits until `node` has received back every event it published (its own, ignored), so no
/// background work of a fill overlaps a measurement.
///
/// # Errors
/// When that takes more than 30 s.
pub async fn settle(node: &EdgeCache) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = node.stats();
        if stats.own_events_ignored >= stats.events_published {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "node {} received back {} of its {} events within 30 s",
            node.node_id(),
            stats.own_events_ignored,
            stats.events_published
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An amalgam-cache on Redis as its README's Redis example builds it (Redis L2, Redis
/// backplane), with entries living [`TTL`] and the options `adjust` makes.
///
/// # Errors
/// When Redis cannot be reached or the builder refuses the configuration.
pub async fn amalgam(
    url: &str,
    id: &str,
    adjust: impl FnOnce(EntryOptions) -> EntryOptions,
    plugin: Option<Arc<dyn Plugin>>,
) -> anyhow::Result<Amalgam> {
    let l2 = RedisDistributedCache::connect(url.to_owned())
        .await
        .context("amalgam-cache: RedisDistributedCache::connect")?;
    let backplane = RedisBackplane::connect(url.to_owned())
        .await
        .context("amalgam-cache: RedisBackplane::connect")?;
    let mut builder = amalgam::Cache::builder()
        .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
        .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<Arc<Offer>>>)
        .backplane(Arc::new(backplane) as Arc<dyn Backplane>)
        .instance_id(id)
        .wait_for_initial_backplane_subscribe(true)
        .default_options(adjust(EntryOptions::new(TTL)));
    if let Some(plugin) = plugin {
        builder = builder.plugin(plugin);
    }
    builder
        .try_build()
        .context("amalgam-cache: building the cache")
}

/// A multiplexed redis-rs connection, what a hand-rolled two-tier cache would use.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn raw(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// What Redis had done so far: CPU seconds of its main thread and commands processed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerWork {
    cpu_seconds: f64,
    commands: u64,
}

impl ServerWork {
    /// Reads `INFO cpu` and `INFO stats`.
    ///
    /// # Errors
    /// When the INFO command fails.
    pub async fn read(conn: &mut MultiplexedConnection) -> anyhow::Result<ServerWork> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("stats")
            .query_async(conn)
            .await?;
        let field = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
        };
        // The main thread's figures where Redis has them (7.0+), the whole process's otherwise.
        let cpu = match (
            field("used_cpu_user_main_thread"),
            field("used_cpu_sys_main_thread"),
        ) {
            (Some(user), Some(sys)) => user + sys,
            _ => field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0),
        };
        Ok(ServerWork {
            cpu_seconds: cpu,
            commands: field("total_commands_processed").map_or(0, |c| c as u64),
        })
    }

    /// The work done between `self` (earlier) and `later`, less the INFO call that read it.
    pub fn until(self, later: ServerWork) -> ServerWork {
        ServerWork {
            cpu_seconds: (later.cpu_seconds - self.cpu_seconds).max(0.0),
            commands: later.commands.saturating_sub(self.commands + 1),
        }
    }

    /// Accumulates `other` into `self`.
    pub fn add(&mut self, other: ServerWork) {
        self.cpu_seconds += other.cpu_seconds;
        self.commands += other.commands;
    }

    /// Redis CPU microseconds per operation, over `ops` operations.
    pub fn micros_per(&self, ops: usize) -> f64 {
        self.cpu_seconds * 1e6 / ops.max(1) as f64
    }

    /// Commands Redis processed per operation, over `ops` operations.
    pub fn commands_per(&self, ops: usize) -> f64 {
        self.commands as f64 / ops.max(1) as f64
    }
}
