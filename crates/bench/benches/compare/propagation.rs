//! Row 4: invalidation propagation, node A → node B applied, p50 and p99.
//!
//! Each event is timed from just before node A's call to the moment node B has applied it, read
//! on one monotonic clock (`Instant`) in one process: B's hook takes the time and hands it over
//! a channel, and the harness waits for it before the next event, so events never overlap.
//!
//! - raw pub/sub (the baseline): `PUBLISH` on a multiplexed connection → a redis-rs subscriber
//!   receives the message;
//! - raw `DEL` + `PUBLISH` pipelined → received: the floor for "change L2, then tell the fleet"
//!   in one round trip;
//! - edge-cache `invalidate_key` on A (L2 delete, then the event) → B's
//!   `Observer::on_event_applied`;
//! - edge-cache `notify(gpu_availability_changed)` on A (the routed namespaces invalidated in L2,
//!   then the event) → B's `Observer::on_event_applied`;
//! - amalgam-cache `remove` on A (L2 remove, then the backplane message) → B's memory `Remove`,
//!   seen by a plugin's `on_layer_event`.
//!
//! What sequencing costs: both edge-cache flows run again between two nodes whose `RedisL2` and
//! `RedisBus` keep no event log (`RedisConfig::without_event_log`, on a channel and key prefix
//! of their own), in the same turns. The target is at most 1.10x: each sequenced flow's p50
//! divided by the same flow's p50 without the log (p50 rather than p99, the row's own target:
//! over 2,000 events a p99 is the 20th slowest, and moves by more than 10% between runs alone).
//!
//! The implementations take turns event by event, so that load from elsewhere on the machine
//! falls on all of them alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amalgam::advanced::PluginObservations;
use amalgam::events::{LayerEvent, MemoryEvent};
use amalgam::{CacheEvent, Plugin};
use anyhow::{bail, ensure, Context as _};
use cache_core::{CacheKey, Event};
use cache_edge::{EdgeCache, Notification, Observer};
use edge_cache_bench::{duration, percentiles, ratio, times, verdict};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::data::{self, Report, Sizes, KEYS};
use crate::nodes::{self, Amalgam};

/// The channel of the raw flows.
const RAW_CHANNEL: &str = "bench:raw:propagation";

/// How long one event may take before the row fails.
const DEADLINE: Duration = Duration::from_secs(5);

/// The most a sequenced flow may take relative to the same flow without the event log.
const SEQUENCING_TARGET: f64 = 1.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Raw,
    RawDel,
    Edge,
    EdgeNotify,
    EdgeUnlogged,
    EdgeNotifyUnlogged,
    Amalgam,
}

impl Imp {
    const ALL: [Imp; 7] = [
        Imp::Raw,
        Imp::RawDel,
        Imp::Edge,
        Imp::EdgeNotify,
        Imp::EdgeUnlogged,
        Imp::EdgeNotifyUnlogged,
        Imp::Amalgam,
    ];

    /// The same flow without the event log, for a sequenced one.
    fn unlogged(self) -> Option<Imp> {
        match self {
            Imp::Edge => Some(Imp::EdgeUnlogged),
            Imp::EdgeNotify => Some(Imp::EdgeNotifyUnlogged),
            _ => None,
        }
    }

    fn slot(self) -> usize {
        Imp::ALL.iter().position(|&i| i == self).unwrap_or(0)
    }

    fn name(self) -> &'static str {
        match self {
            Imp::Raw => "raw `PUBLISH` → subscriber receives (baseline)",
            Imp::RawDel => "raw pipelined `DEL` + `PUBLISH` → subscriber receives",
            Imp::Edge => "edge-cache `invalidate_key` on A → B `on_event_applied`",
            Imp::EdgeNotify => {
                "edge-cache `notify(gpu_availability_changed)` on A → B `on_event_applied`"
            }
            Imp::EdgeUnlogged => "edge-cache `invalidate_key`, no event log",
            Imp::EdgeNotifyUnlogged => {
                "edge-cache `notify(gpu_availability_changed)`, no event log"
            }
            Imp::Amalgam => "amalgam-cache `remove` on A → B's L1 entry removed (backplane)",
        }
    }
}

/// B's hook for edge-cache: the time each event was applied.
struct Applied(UnboundedSender<Instant>);

impl Observer for Applied {
    fn on_event_applied(&self, _event: &Event, _lag: Duration) {
        let _ = self.0.send(Instant::now());
    }
}

/// B's hook for amalgam-cache: the time each key was removed from its memory level.
struct Removed(UnboundedSender<(Arc<str>, Instant)>);

impl Plugin for Removed {
    fn name(&self) -> &str {
        "edge-cache-bench propagation"
    }

    fn on_event(&self, _event: &CacheEvent) {}

    fn observations(&self) -> PluginObservations {
        PluginObservations::All
    }

    fn on_layer_event(&self, event: &LayerEvent) {
        if let LayerEvent::Memory(MemoryEvent::Remove { key }) = event {
            let _ = self.0.send((Arc::clone(key), Instant::now()));
        }
    }
}

struct Flows {
    raw: MultiplexedConnection,
    raw_rx: UnboundedReceiver<Instant>,
    edge_a: EdgeCache,
    edge_b: EdgeCache,
    edge_rx: UnboundedReceiver<Instant>,
    /// Nodes A and B without an event log, and B's receipts.
    unlogged_a: EdgeCache,
    unlogged_b: EdgeCache,
    unlogged_rx: UnboundedReceiver<Instant>,
    keys: Vec<CacheKey>,
    amalgam_a: Amalgam,
    amalgam_b: Amalgam,
    amalgam_rx: UnboundedReceiver<(Arc<str>, Instant)>,
    names: Vec<String>,
}

impl Flows {
    /// Runs one event of `imp` on key `i` and returns how long until it was applied.
    async fn event(&mut self, imp: Imp, i: usize) -> anyhow::Result<Duration> {
        // Nothing may be pending from an earlier event: no receipt, and no edge-cache node A
        // still decoding its own event heard back (work the next flow would pay for).
        while self.raw_rx.try_recv().is_ok() {}
        while self.edge_rx.try_recv().is_ok() {}
        while self.unlogged_rx.try_recv().is_ok() {}
        while self.amalgam_rx.try_recv().is_ok() {}
        for node in [&self.edge_a, &self.unlogged_a] {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let stats = node.stats();
                if stats.own_events_ignored >= stats.events_published {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{} did not hear back its own events",
                    node.node_id()
                );
                tokio::task::yield_now().await;
            }
        }
        let started = Instant::now();
        let applied = match imp {
            Imp::Raw | Imp::RawDel => {
                let key = &self.names[i];
                let mut pipe = redis::pipe();
                if imp == Imp::RawDel {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                pipe.cmd("PUBLISH").arg(RAW_CHANNEL).arg(key).ignore();
                pipe.query_async::<()>(&mut self.raw).await?;
                recv(&mut self.raw_rx).await?
            }
            Imp::Edge | Imp::EdgeUnlogged => {
                let (a, rx) = if imp == Imp::Edge {
                    (&self.edge_a, &mut self.edge_rx)
                } else {
                    (&self.unlogged_a, &mut self.unlogged_rx)
                };
                a.invalidate_key(&self.keys[i]).await?;
                recv(rx).await?
            }
            Imp::EdgeNotify | Imp::EdgeNotifyUnlogged => {
                let (a, rx) = if imp == Imp::EdgeNotify {
                    (&self.edge_a, &mut self.edge_rx)
                } else {
                    (&self.unlogged_a, &mut self.unlogged_rx)
                };
                let gpu = format!("g-{i:06}");
                a.notify(Notification::gpu_availability_changed(&gpu, "booked"))
                    .await?;
                recv(rx).await?
            }
            Imp::Amalgam => {
                let key = self.names[i].as_str();
                self.amalgam_a.remove(key).await?;
                loop {
                    let (removed, at) = recv(&mut self.amalgam_rx).await?;
                    if &*removed == key {
                        break at;
                    }
                }
            }
        };
        Ok(applied.saturating_duration_since(started))
    }
}

async fn recv<T>(rx: &mut UnboundedReceiver<T>) -> anyhow::Result<T> {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => bail!("the receiving side stopped"),
        Err(_) => bail!("no receipt within {DEADLINE:?}"),
    }
}

/// Runs row 4.
///
/// # Errors
/// When a flow cannot be set up, or an event is not applied within 5 s.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!(
        "row 4: invalidation propagation A → B, {} events per implementation",
        sizes.events
    );
    let mut flows = rt.block_on(setup(rt, url))?;
    let order = data::order(sizes.events, KEYS);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); Imp::ALL.len()];
    rt.block_on(async {
        for &i in order.iter().take(50) {
            for imp in Imp::ALL {
                flows
                    .event(imp, i)
                    .await
                    .with_context(|| format!("warming up {}", imp.name()))?;
            }
        }
        // In a shuffled order, different each turn: an event leaves work behind (A decoding its
        // own event heard back), and a fixed order would charge it to whichever flow comes next.
        for (n, &i) in order.iter().enumerate() {
            for slot in data::turn_order(n, Imp::ALL.len()) {
                let imp = Imp::ALL[slot];
                let took = flows
                    .event(imp, i)
                    .await
                    .with_context(|| imp.name().to_owned())?;
                samples[slot].push(took);
            }
        }
        anyhow::Ok(())
    })?;
    let p50 = percentiles(&mut samples, 50);
    let p99 = percentiles(&mut samples, 99);
    let mut sequencing = Vec::new();
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        let mut target = if matches!(imp, Imp::Edge | Imp::EdgeNotify) {
            let r = ratio(p99[slot], p99[0]);
            format!(
                "p99 ≤ 1.5× raw: {} ({}); p99 < 1 ms: {} ({})",
                verdict(r <= 1.5),
                times(r),
                verdict(p99[slot] < Duration::from_millis(1)),
                duration(p99[slot])
            )
        } else {
            String::new()
        };
        if let Some(unlogged) = imp.unlogged() {
            let u = unlogged.slot();
            let r50 = ratio(p50[slot], p50[u]);
            sequencing.push(format!(
                "{} {} (p99 {})",
                if imp == Imp::Edge {
                    "`invalidate_key`"
                } else {
                    "`notify`"
                },
                times(r50),
                times(ratio(p99[slot], p99[u]))
            ));
            target.push_str(&format!(
                "; event log p50 ≤ {SEQUENCING_TARGET:.2}× without: {} ({})",
                verdict(r50 <= SEQUENCING_TARGET),
                times(r50)
            ));
        }
        report.line(
            "4. invalidation propagation, A → B applied",
            "p50 / p99",
            imp.name(),
            format!("{} / {}", duration(p50[slot]), duration(p99[slot])),
            format!(
                "{} / {}",
                times(ratio(p50[slot], p50[0])),
                times(ratio(p99[slot], p99[0]))
            ),
            target,
        );
    }
    report.findings.push(format!(
        "Row 4, what sequencing costs propagation (p50 A → B applied with the event log ÷ the \
         same flow's p50 between two nodes without it, same run, the flows taking turns): {}.",
        sequencing.join(", ")
    ));
    let b = flows.edge_b.stats();
    let unlogged_b = flows.unlogged_b.stats();
    report.checks.push(format!(
        "row 4: every one of the {} events per implementation reached B within {DEADLINE:?}; \
         edge-cache's B applied {} events and rejected {} ({} gaps detected, {} replayed from \
         the log); B without an event log applied {} and rejected {}",
        edge_cache_bench::thousands(sizes.events as u64),
        edge_cache_bench::thousands(b.events_applied),
        b.events_rejected,
        b.gaps_detected,
        b.events_replayed,
        edge_cache_bench::thousands(unlogged_b.events_applied),
        unlogged_b.events_rejected
    ));
    rt.block_on(async {
        flows.edge_a.shutdown().await;
        flows.edge_b.shutdown().await;
        flows.unlogged_a.shutdown().await;
        flows.unlogged_b.shutdown().await;
        let _ = flows.amalgam_a.shutdown().await;
        let _ = flows.amalgam_b.shutdown().await;
    });
    Ok(())
}

async fn setup(rt: &Runtime, url: &str) -> anyhow::Result<Flows> {
    // The raw subscriber: stamps each message as it arrives.
    let (raw_tx, raw_rx) = unbounded_channel();
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(RAW_CHANNEL).await?;
    rt.spawn(async move {
        let mut messages = pubsub.on_message();
        while messages.next().await.is_some() {
            if raw_tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });

    let (edge_tx, edge_rx) = unbounded_channel();
    let edge_a = nodes::edge_node(url, "bench-propagation-a", None).await?;
    let edge_b = nodes::edge_node(
        url,
        "bench-propagation-b",
        Some(Arc::new(Applied(edge_tx)) as Arc<dyn Observer>),
    )
    .await?;
    let (unlogged_tx, unlogged_rx) = unbounded_channel();
    let unlogged = nodes::unlogged_config(url);
    let unlogged_a = nodes::edge_node_with(&unlogged, "bench-propagation-unlogged-a", None).await?;
    let unlogged_b = nodes::edge_node_with(
        &unlogged,
        "bench-propagation-unlogged-b",
        Some(Arc::new(Applied(unlogged_tx)) as Arc<dyn Observer>),
    )
    .await?;
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|i| edge_a.key("gpu_availability", &data::params(i)))
        .collect::<cache_core::Result<_>>()?;

    let (amalgam_tx, amalgam_rx) = unbounded_channel();
    // The backplane publish is awaited by `remove` (not its default, the background), so A's
    // call covers the same work as edge-cache's.
    let background_off =
        |o: amalgam::EntryOptions| o.with_allow_background_backplane_operations(false);
    let amalgam_a = nodes::amalgam(url, "bench-propagation-a", background_off, None).await?;
    let amalgam_b = nodes::amalgam(
        url,
        "bench-propagation-b",
        background_off,
        Some(Arc::new(Removed(amalgam_tx)) as Arc<dyn Plugin>),
    )
    .await?;
    let names = keys
        .iter()
        .map(|k| format!("prop:{}", k.as_str()))
        .collect();
    Ok(Flows {
        raw: nodes::raw(url).await?,
        raw_rx,
        edge_a,
        edge_b,
        edge_rx,
        unlogged_a,
        unlogged_b,
        unlogged_rx,
        keys,
        amalgam_a,
        amalgam_b,
        amalgam_rx,
        names,
    })
}
