//! Row 9: fan-out at fleet scale on one Redis server. One publisher and N subscribed nodes
//! (N = 1, 10, 100 and 1,000; 1 to 100 with `--quick`), each node a subscription with a
//! connection of its own, all hosted in this process: events per second sustained, Redis CPU per
//! event, and propagation to the last node.
//!
//! - raw (the baseline: what Redis itself allows): `PUBLISH` on a multiplexed redis-rs
//!   connection → N redis-rs pub/sub connections, each read by a task of its own;
//! - edge-cache: [`RedisBus::publish`] → N [`RedisBus`] subscriptions (what a node's listener
//!   reads: each its own connection and forwarding task, the messages handed over its queue);
//! - at the largest N, edge-cache again with each event naming 16 keys instead of one
//!   (coalescing, as memcache's mcsqueal batched its deletes): invalidations delivered per
//!   second, against one-key events in the same run.
//!
//! Every message is a real edge-cache event, built with [`Event`] and [`Event::encode`] as
//! `EdgeCache::invalidate_key` builds its event (a `manual_invalidation` of the namespace, key
//! scope), with the log position a sequenced store splices in ([`splice_positions`]): the
//! position's epoch names the phase and its sequence number the event. Raw and edge-cache
//! publish the same bytes, on channels of their own. Every subscriber, raw or edge-cache, does
//! the same with each message: reads the position from its tail ([`positions_in_tail`], what a
//! node reads of its own events), compares the rest byte for byte with the event published,
//! checks it has not had that event before, and counts it; the last of the N to count an event
//! stamps it. No subscriber decodes the whole event: in a fleet each node decodes on cores of
//! its own, while here all N share this process's two workers, so a decode per delivery would
//! measure this process more than the server.
//!
//! Per N, with the implementations taking turns (a shuffled order each round):
//!
//! 1. **Propagation to the last node**: an event every 1 ms (each `PUBLISH` awaited), timed
//!    from just before the publish to the moment the last of the N subscribers counted it, on
//!    one monotonic clock; p50 and p99.
//! 2. **Sustained**: as fast as the subscribers keep up, for a fixed time: 64 publishes in
//!    flight, and at most 256 events published that have not reached every subscriber yet
//!    (every 64 fully delivered let 64 more go, in a burst: see [`BURST`]); events per second
//!    from the first publish to the last delivery, deliveries per second (events × N), and
//!    Redis's CPU per event (`INFO cpu`, main thread, over the phase; the subscriptions' own
//!    1 s `PING`s included).
//!
//! Every phase ends only once every subscriber has counted every event published in it, each
//! exactly once; a missing, duplicated or altered event, or an edge-cache subscription
//! reporting a lost connection or a full queue, fails the row. Subscriptions are added as N
//! grows and all closed at the end, which Redis confirms (no subscriber left on either
//! channel, its client count back to where the row found it).

use std::cmp::Ordering as Order;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use cache_core::log::{positions_in_tail, splice_positions, tail_start};
use cache_core::{
    BusItem, CacheKey, ConnectionState, Event, EventBus, EventType, Limits, LogPosition, Scope,
    Subscription,
};
use cache_redis::{RedisBus, RedisConfig};
use edge_cache_bench::{duration, nanos, percentile, thousands, times};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::data::{self, Report};
use crate::nodes::{self, ServerWork};

mod delivery;

use delivery::*;

/// The raw subscribers' channel.
const RAW_CHANNEL: &str = "bench:fanout:raw";

/// The edge-cache subscribers' channel.
const EDGE_CHANNEL: &str = "bench:fanout:events";

/// The key namespace the events invalidate keys of, and whose log position they carry.
const KEY_NAMESPACE: &str = "gpu_avail";

/// The node the events come from.
const PUBLISHER: &str = "bench-fanout-publisher";

/// Invalidations one coalesced event carries.
const COALESCED: usize = 16;

/// Distinct events published in turn (each with its own position).
const DISTINCT_EVENTS: usize = 512;

/// Publishes in flight in a sustained phase.
const IN_FLIGHT: usize = 64;

/// Events published in a sustained phase that have not reached every subscriber yet: at most,
/// at 1,000 subscribers, about 110 MB of Redis's output buffers with one-key events (385 bytes
/// each) and 400 MB with 16-key ones (1,540 bytes).
const WINDOW: usize = 256;

/// Once the window is full, events fully delivered let as many more go in bursts of this
/// many, so that publishes reach Redis together and it writes to each subscriber once per
/// burst. One at a time (each delivery letting one publish go), Redis wrote to every
/// subscriber once per event: at 1,000 subscribers it spent about 1.6× the CPU per event
/// (1.18 ms against 0.75 ms) and raw delivered about 0.75× as much.
const BURST: u64 = IN_FLIGHT as u64;

/// The most events one sustained phase publishes.
const MAX_EVENTS: usize = 1 << 19;

/// Publishes in a propagation phase are this far apart.
const GAP: Duration = Duration::from_millis(1);

/// How long an event may take to reach every subscriber, and the subscriptions to close,
/// before the row fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Subscriptions made at once while a fleet grows.
const CONNECT_AT_ONCE: usize = 50;

/// How much of each there is, full or quick.
#[derive(Debug, Clone, Copy)]
struct Plan {
    fleets: &'static [usize],
    /// Events of the unmeasured propagation phase each implementation runs first at each N.
    warmup: usize,
    /// Rounds; in each, every implementation runs one propagation and one sustained phase.
    rounds: usize,
    /// Events of one propagation phase.
    events: usize,
    /// How long one sustained phase publishes.
    sustain: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                fleets: &[1, 10, 100],
                warmup: 20,
                rounds: 2,
                events: 100,
                sustain: Duration::from_millis(250),
            }
        } else {
            Plan {
                fleets: &[1, 10, 100, 1_000],
                warmup: 50,
                rounds: 3,
                events: 200,
                sustain: Duration::from_millis(500),
            }
        }
    }

    fn largest(&self) -> usize {
        self.fleets.iter().copied().max().unwrap_or(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Raw,
    Edge,
    /// edge-cache with 16 invalidations per event.
    Coalesced,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Raw => "raw `PUBLISH` → redis-rs pub/sub connections (baseline)",
            Imp::Edge => "edge-cache `RedisBus::publish` → `RedisBus` subscriptions",
            Imp::Coalesced => "edge-cache `RedisBus`, 16 invalidations per event",
        }
    }

    fn slot(self) -> usize {
        match self {
            Imp::Raw => 0,
            Imp::Edge => 1,
            Imp::Coalesced => 2,
        }
    }
}

/// What one fleet size measured, per implementation slot.
#[derive(Default)]
struct Fleet {
    n: usize,
    latency: Vec<Vec<Duration>>,
    sustained: Vec<Sustained>,
}

/// A rate to three significant figures: `7.18k/s`, `893k/s`, `1.23M/s`, `950/s` (the
/// shared `rate` rounds to whole thousands, too coarse for a thousand events a second).
fn rate(per_second: f64) -> String {
    let (value, unit) = if per_second >= 1e6 {
        (per_second / 1e6, "M")
    } else if per_second >= 1e3 {
        (per_second / 1e3, "k")
    } else {
        (per_second, "")
    };
    let decimals = if unit.is_empty() || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}{unit}/s")
}

/// The soft limit on this process's open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// A field of `INFO` text.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

async fn connected_clients(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("clients").query_async(conn).await?;
    info_field(&info, "connected_clients").context("INFO clients has no connected_clients")
}

async fn subscribers(conn: &mut MultiplexedConnection, channel: &str) -> anyhow::Result<u64> {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await?;
    Ok(reply.1)
}

/// Runs row 9.
///
/// # Errors
/// When the process or the server cannot hold the connections, a connection fails, or any
/// subscriber misses, repeats or receives an altered event.
pub fn run(rt: &Runtime, url: &str, quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let plan = Plan::new(quick);
    println!(
        "row 9: fan-out on one server, {} subscribers per implementation",
        plan.fleets
            .iter()
            .map(|&n| thousands(n as u64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let keys = data::keys(KEY_NAMESPACE)?;
    let one = Arc::new(Events::new(&keys, 1)?);
    let coalesced = Arc::new(Events::new(&keys, COALESCED)?);
    let (fleets, closed) = rt.block_on(measure(url, plan, &one, &coalesced, report))?;
    let largest = plan.largest();
    let mut capacity = Vec::new();
    for fleet in &fleets {
        let n = fleet.n;
        let row = format!(
            "9. fan-out, {} subscriber{}",
            thousands(n as u64),
            if n == 1 { "" } else { "s" }
        );
        let mut latency = fleet.latency.clone();
        let p50: Vec<Duration> = latency
            .iter_mut()
            .map(|s| percentile(s, 50).unwrap_or_default())
            .collect();
        let p99: Vec<Duration> = latency
            .iter_mut()
            .map(|s| percentile(s, 99).unwrap_or_default())
            .collect();
        let raw = fleet.sustained[Imp::Raw.slot()];
        for imp in [Imp::Raw, Imp::Edge] {
            let s = imp.slot();
            report.line(
                &row,
                "last subscriber received, p50 / p99 (an event every 1 ms)",
                imp.name(),
                format!("{} / {}", duration(p50[s]), duration(p99[s])),
                format!(
                    "{} / {}",
                    times(edge_cache_bench::ratio(p50[s], p50[0])),
                    times(edge_cache_bench::ratio(p99[s], p99[0]))
                ),
                String::new(),
            );
        }
        for imp in [Imp::Raw, Imp::Edge] {
            let got = fleet.sustained[imp.slot()];
            report.line(
                &row,
                "sustained: events/s, deliveries/s (events × N); Redis CPU per event",
                imp.name(),
                format!(
                    "events {}, deliveries {}; Redis CPU {} per event",
                    rate(got.per_second()),
                    rate(got.per_second() * n as f64),
                    nanos(got.cpu_nanos())
                ),
                format!(
                    "{} / {}",
                    times(raw.per_second() / got.per_second().max(1e-9)),
                    times(got.cpu_nanos() / raw.cpu_nanos().max(1e-9))
                ),
                String::new(),
            );
        }
        let edge = fleet.sustained[Imp::Edge.slot()];
        capacity.push(format!(
            "{} subscriber{}: {} raw, {} edge-cache ({} Redis CPU per event)",
            thousands(n as u64),
            if n == 1 { "" } else { "s" },
            rate(raw.per_second() * n as f64),
            rate(edge.per_second() * n as f64),
            nanos(edge.cpu_nanos())
        ));
        if n == largest {
            let batched = fleet.sustained[Imp::Coalesced.slot()];
            let per = coalesced.keys_per_event as f64;
            let invalidations = batched.per_second() * per;
            let gain = invalidations / edge.per_second().max(1e-9);
            let cpu_per_invalidation = batched.cpu_nanos() / per;
            let cpu_ratio = cpu_per_invalidation / edge.cpu_nanos().max(1e-9);
            report.line(
                &row,
                "16 invalidations per event: invalidations/s delivered; Redis CPU per \
                 invalidation (ratios vs one-key events)",
                Imp::Coalesced.name(),
                format!(
                    "invalidations {} ({:.1}× one-key events; events {}, deliveries {}); \
                     Redis CPU {} per invalidation",
                    rate(invalidations),
                    gain,
                    rate(batched.per_second()),
                    rate(batched.per_second() * n as f64),
                    nanos(cpu_per_invalidation)
                ),
                format!("{} / {}", times(1.0 / gain.max(1e-9)), times(cpu_ratio)),
                String::new(),
            );
            report.findings.push(format!(
                "Row 9, coalescing at {} subscribers: events naming 16 keys each delivered \
                 {:.1}× the invalidations per second of one-key events ({} against {}), at \
                 {} the Redis CPU per invalidation.",
                thousands(n as u64),
                gain,
                rate(invalidations),
                rate(edge.per_second()),
                times(cpu_ratio)
            ));
        }
    }
    report.findings.push(format!(
        "Row 9, what one redis-server delivers (deliveries per second, sustained, all \
         subscribers in one process): {}. N nodes on one server can each take about that \
         figure ÷ N events per second, and Redis's CPU per event grows with N.",
        capacity.join("; ")
    ));
    let (phases, events, deliveries, clients) = closed;
    report.checks.push(format!(
        "row 9: every subscriber received every event published to it exactly once and byte \
         for byte, raw and edge-cache alike ({} phases, {} events, {} deliveries, at {} \
         subscribers); no edge-cache subscription reported a lost connection or a full \
         queue; all subscriptions and connections were closed at the end (Redis back to {} \
         client{}, no subscriber on either channel)",
        phases,
        thousands(events),
        thousands(deliveries),
        plan.fleets
            .iter()
            .map(|&n| thousands(n as u64))
            .collect::<Vec<_>>()
            .join(", "),
        clients,
        if clients == 1 { "" } else { "s" }
    ));
    report.setup.push(format!(
        "row 9: all N subscribers of each implementation in this process, on its 2 tokio \
         workers, sharing the machine's cores with redis-server (at 1,000 the figures are this \
         process reading 1,000 sockets as much as the server); {} publishes in flight and at \
         most {} events not yet delivered everywhere in the sustained phases; {} rounds, \
         propagation {} events per implementation per round, sustained {} per phase",
        IN_FLIGHT,
        WINDOW,
        plan.rounds,
        plan.events,
        duration(plan.sustain)
    ));
    Ok(())
}

/// The phases of every fleet size; then closes every connection. Returns the fleets and, for
/// the check, (phases, events, deliveries, Redis's clients after closing).
async fn measure(
    url: &str,
    plan: Plan,
    one: &Arc<Events>,
    coalesced: &Arc<Events>,
    report: &mut Report,
) -> anyhow::Result<(Vec<Fleet>, (usize, u64, u64, u64))> {
    let largest = plan.largest();
    // Two connections per node (raw and edge-cache), the publishers, INFO, and room for the
    // process's own files.
    let needed = 2 * largest as u64 + 64;
    if let Some(limit) = open_files_limit() {
        ensure!(
            limit >= needed,
            "row 9 holds {} subscriber connections at once ({} per implementation) and this \
             process may open only {limit} files (`ulimit -n`); raise the soft limit to at \
             least {needed} (`ulimit -n {needed}`) and run again, or run with --quick (100 \
             subscribers)",
            2 * largest,
            thousands(largest as u64)
        );
    }
    let mut info = nodes::raw(url).await?;
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query_async(&mut info)
        .await?;
    let maxclients: u64 = config
        .get(1)
        .and_then(|v| v.parse().ok())
        .context("CONFIG GET maxclients gave no number")?;
    let clients_before = connected_clients(&mut info).await?;
    ensure!(
        maxclients >= clients_before + needed,
        "row 9 needs about {needed} more connections to Redis, and the server takes {maxclients} \
         clients (`maxclients`) with {clients_before} connected"
    );
    report.setup.push(format!(
        "row 9: open files limit {} (needs {needed}), Redis maxclients {maxclients}",
        open_files_limit().map_or_else(|| "unknown".to_owned(), |l| l.to_string())
    ));

    let mut raw = Group::new(
        RAW_CHANNEL,
        url,
        Publisher::Raw(nodes::raw(url).await?),
        one,
    );
    let bus = RedisBus::connect(&RedisConfig::new(url).channel(EDGE_CHANNEL)).await?;
    let mut edge = Group::new(EDGE_CHANNEL, url, Publisher::Edge(bus), one);
    let mut epoch = 0_u64;
    let mut totals = (0_usize, 0_u64, 0_u64);
    let mut fleets = Vec::new();
    let result = async {
        for &n in plan.fleets {
            let started = Instant::now();
            raw.grow(n).await?;
            edge.grow(n).await?;
            for group in [&raw, &edge] {
                let subscribed = subscribers(&mut info, group.channel).await?;
                ensure!(
                    subscribed == n as u64,
                    "{subscribed} subscribers on {}, {n} expected",
                    group.channel
                );
            }
            let connected = started.elapsed();
            let mut fleet = Fleet {
                n,
                latency: vec![Vec::new(); 2],
                sustained: vec![Sustained::default(); 3],
            };
            let mut phase = |events: &Arc<Events>, capacity: usize, timed: bool| {
                epoch += 1;
                Arc::new(Phase::new(epoch, n, events, capacity, timed))
            };
            let mut count = |events: u64| {
                totals.0 += 1;
                totals.1 += events;
                totals.2 += events * n as u64;
            };
            // Unmeasured: the first events after connecting wake everything up.
            for group in [&raw, &edge] {
                group
                    .propagation(phase(one, plan.warmup, true), plan.warmup)
                    .await?;
                count(plan.warmup as u64);
            }
            let pair = [Imp::Raw, Imp::Edge];
            for round in 0..plan.rounds {
                for i in data::turn_order(round, pair.len()) {
                    let imp = pair[i];
                    let group = if imp == Imp::Raw { &raw } else { &edge };
                    let took = group
                        .propagation(phase(one, plan.events, true), plan.events)
                        .await
                        .with_context(|| format!("{} subscribers, {}", n, imp.name()))?;
                    fleet.latency[imp.slot()].extend(took);
                    count(plan.events as u64);
                }
            }
            let imps: &[Imp] = if n == largest {
                &[Imp::Raw, Imp::Edge, Imp::Coalesced]
            } else {
                &pair
            };
            for round in 0..plan.rounds {
                for i in data::turn_order(round + 7, imps.len()) {
                    let imp = imps[i];
                    let (group, events) = match imp {
                        Imp::Raw => (&raw, one),
                        Imp::Edge => (&edge, one),
                        Imp::Coalesced => (&edge, coalesced),
                    };
                    let got = group
                        .sustained(phase(events, MAX_EVENTS, false), plan.sustain, &mut info)
                        .await
                        .with_context(|| format!("{} subscribers, {}", n, imp.name()))?;
                    fleet.sustained[imp.slot()].add(got);
                    count(got.events);
                }
            }
            println!(
                "  {} subscriber{}: connected in {}, measured in {}",
                thousands(n as u64),
                if n == 1 { "" } else { "s" },
                duration(connected),
                duration(started.elapsed() - connected)
            );
            fleets.push(fleet);
        }
        anyhow::Ok(())
    }
    .await;
    // Close everything, whatever happened, and see that Redis saw it closed.
    drop(raw);
    drop(edge);
    let closed = closed(&mut info, clients_before).await;
    result?;
    let clients = closed?;
    Ok((fleets, (totals.0, totals.1, totals.2, clients)))
}

/// Waits until no subscriber is left on either channel and Redis has no more clients than
/// `before`; returns its client count.
async fn closed(info: &mut MultiplexedConnection, before: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let raw = subscribers(info, RAW_CHANNEL).await?;
        let edge = subscribers(info, EDGE_CHANNEL).await?;
        let clients = connected_clients(info).await?;
        if raw == 0 && edge == 0 && clients <= before {
            return Ok(clients);
        }
        ensure!(
            Instant::now() < deadline,
            "{DEADLINE:?} after closing, Redis still had {raw} raw and {edge} edge-cache \
             subscribers and {clients} clients ({before} before the row)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
