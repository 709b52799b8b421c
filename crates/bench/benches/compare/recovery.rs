//! Row 8: recovery after a lost subscription. A reader node with a warm L1 loses its
//! subscription while a writer makes `K` announced changes (keys-scope `set_key` writes to the
//! critical `gpu_availability`, each numbered and logged); once back, the reader replays exactly
//! those `K` events from the namespace's log instead of dropping L1. Timed: from the reader's
//! resubscribe (its `Observer::on_connection_state(Resubscribed)`) to caught up (`K` events
//! replayed and L1 in use again, which is when `Health::bus_connected` turns true), and the
//! entries replayed per second; against a raw `XRANGE` of the same `K` entries in pages of
//! 1,000 (the baseline) and `RedisL2::read_log` over them in pages of 1,000 (the floor: the
//! catch-up's own reads, without decoding or applying anything), both timed right after each
//! recovery.
//!
//! How the reader is held away: it connects as a Redis user of its own, which is switched off
//! (`ACL SETUSER ... off`: connections already made keep working, new ones are refused) before
//! its subscription is killed (`CLIENT KILL USER ... TYPE pubsub`, nothing else of it), so it
//! tries to resubscribe every 10 to 50 ms and fails until the user is switched on again, once
//! the writer is done. Its liveness check is set to 10 minutes so that no periodic check replays
//! part of what was missed while it is away: the one catch-up is the one its resubscribe starts.
//!
//! How much of the warm L1 survived: the reader holds 20,000 entries; after a recovery every
//! entry not written is still there (read back as L1 hits) and every written one is gone (read
//! back from L2 with its new value, which also warms L1 again for the next round).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use cache_core::{CacheKey, ConnectionState, Event, L2Store as _};
use cache_edge::{EdgeCache, Observer, SetOptions};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use edge_cache_bench::{duration, percentile, rate, ratio, thousands, times, verdict};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::runtime::Runtime;

use crate::data::{Offer, Report, Sizes, TTL};
use crate::nodes;

/// The namespace written and replayed: critical (the reader keeps L1) and event-driven.
const NAMESPACE: &str = "gpu_availability";

/// Its key namespace, as the log is named.
const KEY_NAMESPACE: &str = "gpu_avail";

/// The namespace's log stream in `RedisL2`'s key layout (`ec:{ns}:log`, default prefix).
const LOG_KEY: &str = "ec:{gpu_avail}:log";

/// The Redis user the reader connects as, so that it alone can be held away.
const READER_USER: &str = "bench-recovery-reader";
const READER_PASSWORD: &str = "bench-recovery-reader-password";

/// Entries in the reader's warm L1.
const WARM: usize = 20_000;

/// Changes missed per recovery.
const CHANGES: [usize; 2] = [1_000, 10_000];

/// Entries per read, for the baseline and the floor (the catch-up reads pages of 1,000 too).
const PAGE: usize = 1_000;

/// Writes (and reads, when warming L1) in flight at once.
const IN_FLIGHT: usize = 32;

/// How long any one step may take before the row fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// How often the end of a catch-up is polled for.
const POLL: Duration = Duration::from_micros(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reader's hooks: events applied (counted, and the time the armed count was reached),
/// disconnects, and the time of the last resubscribe.
#[derive(Default)]
struct Watch {
    applied: AtomicU64,
    /// When `applied` reaches this, `reached` records the time; 0 when unarmed.
    target: AtomicU64,
    reached: Mutex<Option<Instant>>,
    disconnects: AtomicU64,
    resubscribed: Mutex<Option<Instant>>,
}

impl Observer for Watch {
    fn on_event_applied(&self, _event: &Event, _lag: Duration) {
        let now = Instant::now();
        let n = self.applied.fetch_add(1, SeqCst) + 1;
        if n == self.target.load(SeqCst) {
            *lock(&self.reached) = Some(now);
        }
    }

    fn on_connection_state(&self, state: ConnectionState) {
        let now = Instant::now();
        match state {
            ConnectionState::Disconnected => {
                self.disconnects.fetch_add(1, SeqCst);
            }
            ConnectionState::Resubscribed => *lock(&self.resubscribed) = Some(now),
            _ => {}
        }
    }
}

/// One recovery's figures.
struct Recovery {
    /// Resubscribed → caught up.
    caught_up: Duration,
    /// Resubscribed → the `K`th missed event applied.
    last_applied: Duration,
    /// The raw `XRANGE` of the same entries.
    xrange: Duration,
    /// `RedisL2::read_log` over the same entries.
    read_log: Duration,
    /// L1 entries before the subscription was cut, and after the recovery.
    l1_before: u64,
    l1_after: u64,
    /// Unwritten keys read back from L1.
    kept_hits: u64,
}

struct Setup {
    writer: EdgeCache,
    reader: EdgeCache,
    watch: Arc<Watch>,
    keys: Vec<CacheKey>,
    admin: MultiplexedConnection,
    /// A `RedisL2` of its own for the floor (not the reader's: its generations stay untouched).
    l2: RedisL2,
}

/// Runs row 8.
///
/// # Errors
/// When the nodes cannot be set up, a recovery does not complete within 30 s, or a check fails
/// (an event replayed twice or missed, an unwritten entry lost, a written one stale).
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    let rounds = sizes.recoveries;
    println!(
        "row 8: recovery after a lost subscription, {} rounds of {} missed changes",
        rounds,
        CHANGES.map(|k| thousands(k as u64)).join(" and ")
    );
    let setup = rt.block_on(setup(url))?;
    let result = rt.block_on(measure(&setup, rounds));
    // The reader's user goes whatever happened, so a rerun on the same server starts clean.
    rt.block_on(async {
        let mut admin = setup.admin.clone();
        let _: redis::RedisResult<()> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(READER_USER)
            .query_async(&mut admin)
            .await;
        setup.writer.shutdown().await;
        setup.reader.shutdown().await;
    });
    let measured = result?;
    for (k, runs) in CHANGES.into_iter().zip(measured) {
        lines(report, k, &runs, rounds);
    }
    report.checks.push(format!(
        "row 8: in each of the {} recoveries the reader heard nothing while away, replayed \
         exactly the missed events after resubscribing (0 gaps, no namespace dropped), reported `bus_connected` again, was at the writer's position in the log, \
         read every written key's new value from L2 and every other key of its warm L1 as an \
         L1 hit",
        rounds * CHANGES.len()
    ));
    Ok(())
}

/// The row's lines for `k` missed changes: medians over the rounds.
fn lines(report: &mut Report, k: usize, runs: &[Recovery], rounds: usize) {
    let median = |f: fn(&Recovery) -> Duration| -> Duration {
        let mut values: Vec<Duration> = runs.iter().map(f).collect();
        percentile(&mut values, 50).unwrap_or_default()
    };
    let xrange = median(|r| r.xrange);
    let read_log = median(|r| r.read_log);
    let caught_up = median(|r| r.caught_up);
    let last_applied = median(|r| r.last_applied);
    let per_second = |d: Duration| k as f64 / d.as_secs_f64().max(1e-9);
    let row = format!(
        "8. recovery, {} changes missed while unsubscribed",
        thousands(k as u64)
    );
    let measure =
        format!("time to read or replay them (entries per second); median of {rounds} recoveries");
    report.line(
        &row,
        &measure,
        "raw `XRANGE` of the log, pages of 1,000 (baseline)",
        format!("{} ({})", duration(xrange), rate(per_second(xrange))),
        times(1.0),
        String::new(),
    );
    report.line(
        &row,
        &measure,
        "floor: `RedisL2::read_log`, pages of 1,000 (the catch-up's reads: its script, nothing decoded or applied)",
        format!("{} ({})", duration(read_log), rate(per_second(read_log))),
        times(ratio(read_log, xrange)),
        String::new(),
    );
    // Every round must keep every unwritten entry; the figure shown is the worst round.
    let worst = runs
        .iter()
        .min_by_key(|r| r.kept_hits)
        .map_or((0, 0, 0), |r| (r.l1_before, r.l1_after, r.kept_hits));
    let unwritten = WARM as u64 - k as u64;
    report.line(
        &row,
        &measure,
        "edge-cache reader, resubscribed → caught up (missed events replayed, `bus_connected`)",
        format!(
            "{} ({}); the last missed event applied at {}; warm L1 kept {} of {} entries",
            duration(caught_up),
            rate(per_second(caught_up)),
            duration(last_applied),
            thousands(worst.1),
            thousands(worst.0),
        ),
        times(ratio(caught_up, xrange)),
        format!(
            "every unwritten L1 entry kept: {} ({} of {} read back from L1)",
            verdict(runs.iter().all(|r| r.kept_hits == unwritten)),
            thousands(worst.2),
            thousands(unwritten)
        ),
    );
    report.findings.push(format!(
        "Row 8, {k} missed changes: the reader was caught up {caught} after resubscribing \
         (replaying at {rate_edge}, {vs_raw} the time of a raw `XRANGE` of the same entries, \
         which read at {rate_raw}, and {vs_floor} that of `RedisL2::read_log` alone); the last missed event was applied \
         at {last}, the rest is the catch-up confirming every followed namespace's log is at its \
         head. Of its {warm} warm L1 entries it kept the {unwritten} not written, where a node \
         without an event log drops them all on resubscribe.",
        k = thousands(k as u64),
        caught = duration(caught_up),
        rate_edge = rate(per_second(caught_up)),
        vs_raw = times(ratio(caught_up, xrange)),
        rate_raw = rate(per_second(xrange)),
        vs_floor = times(ratio(caught_up, read_log)),
        last = duration(last_applied),
        warm = thousands(WARM as u64),
        unwritten = thousands(unwritten),
    ));
}

async fn setup(url: &str) -> anyhow::Result<Setup> {
    let mut admin = nodes::raw(url).await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(READER_USER)
        .arg("reset")
        .arg("on")
        .arg(format!(">{READER_PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .context("creating the reader's Redis user (ACL SETUSER)")?;
    let writer = nodes::edge_node(url, "bench-recovery-writer", None).await?;
    let watch = Arc::new(Watch::default());
    let config = RedisConfig::new(with_user(url)?)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let reader = EdgeCache::builder()
        .node_id("bench-recovery-reader")
        .l2(Arc::new(RedisL2::connect(&config).await?))
        .bus(Arc::new(RedisBus::connect(&config).await?))
        .observer(Arc::clone(&watch) as Arc<dyn Observer>)
        // No periodic catch-up while the reader is away: the one measured is its resubscribe's.
        .liveness_interval(Duration::from_secs(600))
        .staleness_bound(Duration::from_secs(1_200))
        // L1 copies live as long as the entries (the default caps them at 60 s).
        .backfill_ttl_cap(TTL)
        .build()
        .await?;
    let keys = (0..WARM)
        .map(|i| writer.key(NAMESPACE, &serde_json::json!({ "recovery": i })))
        .collect::<cache_core::Result<Vec<_>>>()?;
    let l2 = RedisL2::connect(&RedisConfig::new(url)).await?;
    Ok(Setup {
        writer,
        reader,
        watch,
        keys,
        admin,
        l2,
    })
}

/// `url` with the reader's user and password.
fn with_user(url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("row 8 needs a redis:// URL, got {url}"))?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!("{scheme}://{READER_USER}:{READER_PASSWORD}@{host}"))
}

/// The offer written for key `i` in change `version`.
fn offer(i: usize, version: u64) -> Offer {
    let mut offer = Offer::new(i);
    offer.updated_at += version;
    offer
}

/// Writes `version` of the keys `indexes` through the writer, `IN_FLIGHT` at a time, and waits
/// until the writer heard them back.
async fn write(setup: &Setup, indexes: &[usize], version: u64) -> anyhow::Result<()> {
    let options = SetOptions::new().ttl(TTL);
    stream::iter(indexes)
        .map(|&i| {
            let options = options.clone();
            async move {
                setup
                    .writer
                    .set_key(&setup.keys[i], &offer(i, version), options)
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    nodes::settle(&setup.writer).await
}

/// Reads the keys `indexes` on the reader, `IN_FLIGHT` at a time; each must hold `version`.
async fn read(setup: &Setup, indexes: &[usize], version: u64) -> anyhow::Result<()> {
    stream::iter(indexes)
        .map(|&i| async move {
            let got = setup.reader.get_key::<Offer>(&setup.keys[i]).await?;
            match got {
                Some(o) if o.updated_at == offer(i, version).updated_at => Ok(()),
                Some(o) => bail!(
                    "the reader read key {i} updated at {} instead of {} (version {version})",
                    o.updated_at,
                    offer(i, version).updated_at
                ),
                None => bail!("the reader found no value for key {i}"),
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// The reader's L1 entries in the namespace, its place in the namespace's log and whether L1
/// is in use.
fn reader_state(node: &EdgeCache) -> (u64, Option<(u64, u64)>, bool) {
    node.stats()
        .namespaces
        .into_iter()
        .find(|ns| ns.name == NAMESPACE)
        .map_or((0, None, false), |ns| {
            (ns.l1_entries, ns.log_applied, ns.l1_in_use)
        })
}

/// Waits until `check` holds, polling every millisecond.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        ensure!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn measure(setup: &Setup, rounds: usize) -> anyhow::Result<Vec<Vec<Recovery>>> {
    // Warm: the writer writes every key, the reader hears it all, then reads every key into L1.
    let all: Vec<usize> = (0..WARM).collect();
    write(setup, &all, 0).await?;
    let head = reader_state(&setup.writer).1;
    wait_for("the reader heard the writer's warm-up writes", || {
        reader_state(&setup.reader).1 == head
    })
    .await?;
    read(setup, &all, 0).await?;
    let l1 = reader_state(&setup.reader).0;
    ensure!(
        l1 == WARM as u64,
        "the reader's L1 holds {l1} entries after reading {WARM} keys"
    );

    let mut measured: Vec<Vec<Recovery>> = CHANGES.iter().map(|_| Vec::new()).collect();
    let mut version = 0;
    for round in 0..rounds {
        for (slot, &k) in CHANGES.iter().enumerate() {
            version += 1;
            // A different run of keys each time, all of them in the warm L1.
            let start = (round * 7_919 + slot * 3_331) % WARM;
            let written: Vec<usize> = (0..k).map(|j| (start + j) % WARM).collect();
            let recovery = recover(setup, &written, version, round % 2 == 1)
                .await
                .with_context(|| format!("recovery from {k} missed changes, round {round}"))?;
            measured[slot].push(recovery);
        }
    }
    Ok(measured)
}

/// One recovery: cut the reader, write `written` at `version`, let the reader back and time its
/// catch-up; then the baseline and the floor over the same entries (in the order `floor_first`
/// says), and what survived of L1.
async fn recover(
    setup: &Setup,
    written: &[usize],
    version: u64,
    floor_first: bool,
) -> anyhow::Result<Recovery> {
    let k = written.len();
    let reader = &setup.reader;
    let watch = &setup.watch;
    let mut admin = setup.admin.clone();
    let (l1_before, position, in_use) = reader_state(reader);
    let (epoch, from) = position.context("the reader follows no log")?;
    ensure!(in_use, "the reader's L1 is not in use before the cut");
    ensure!(
        l1_before == WARM as u64,
        "the reader's L1 holds {l1_before} entries, not {WARM}"
    );
    let before = reader.stats();

    // Cut: the user off first, so the subscription cannot come back until it is switched on.
    let disconnects = watch.disconnects.load(SeqCst);
    acl_user(&mut admin, "off").await?;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(READER_USER)
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await?;
    ensure!(
        killed == 1,
        "CLIENT KILL found {killed} subscriptions of the reader"
    );
    wait_for("the reader noticed its subscription was lost", || {
        watch.disconnects.load(SeqCst) > disconnects
    })
    .await?;
    ensure!(
        !reader_state(reader).2,
        "the reader kept using L1 with its subscription down"
    );

    // The changes it misses.
    write(setup, written, version).await?;
    let head = reader_state(&setup.writer).1;
    ensure!(
        head == Some((epoch, from + k as u64)),
        "the writer is at {head:?} in the log, expected ({epoch}, {})",
        from + k as u64
    );
    let away = reader.stats();
    ensure!(
        away.events_received == before.events_received
            && away.events_replayed == before.events_replayed,
        "the reader heard or replayed events while away"
    );

    // Back: time from the resubscribe to caught up.
    *lock(&watch.resubscribed) = None;
    *lock(&watch.reached) = None;
    watch
        .target
        .store(watch.applied.load(SeqCst) + k as u64, SeqCst);
    let polled = reader.clone();
    let poller = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if reader_state(&polled).2 {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    });
    acl_user(&mut admin, "on").await?;
    let up = poller
        .await?
        .with_context(|| format!("the reader was not caught up within {DEADLINE:?}"))?;
    let resubscribed = (*lock(&watch.resubscribed)).context("no resubscribe was reported")?;
    wait_for("the reader applied every missed event", || {
        lock(&watch.reached).is_some()
    })
    .await?;
    let reached = (*lock(&watch.reached)).unwrap_or(up);
    watch.target.store(0, SeqCst);

    let after = reader.stats();
    let (l1_after, position, _) = reader_state(reader);
    ensure!(
        after.events_replayed - before.events_replayed == k as u64,
        "the reader replayed {} events, not {k}",
        after.events_replayed - before.events_replayed
    );
    ensure!(
        after.events_received == before.events_received,
        "the reader heard events live after resubscribing"
    );
    ensure!(
        after.gaps_detected == before.gaps_detected
            && after.drops_trimmed == before.drops_trimmed
            && after.drops_new_epoch == before.drops_new_epoch
            && after.drops_regressed == before.drops_regressed
            && after.resyncs == before.resyncs,
        "the reader found a gap or dropped a namespace: {after:?}"
    );
    ensure!(
        after.log_checks > before.log_checks,
        "the reader ran no log check after resubscribing"
    );
    ensure!(
        position == head,
        "the reader is at {position:?}, not {head:?}"
    );
    ensure!(
        reader.health().await.bus_connected,
        "the reader's health does not report the bus connected after the catch-up"
    );

    // The same entries read raw and through `RedisL2::read_log`.
    let mut raw = setup.admin.clone();
    let (xrange, read_log) = if floor_first {
        let floor = read_log_pages(&setup.l2, from, k).await?;
        (xrange_pages(&mut raw, epoch, from, k).await?, floor)
    } else {
        let raw_time = xrange_pages(&mut raw, epoch, from, k).await?;
        (raw_time, read_log_pages(&setup.l2, from, k).await?)
    };

    // What survived: every unwritten key is an L1 hit; every written one reads its new value
    // from L2 (and is in L1 again for the next round).
    let mut unwritten = vec![true; WARM];
    for &i in written {
        unwritten[i] = false;
    }
    let unwritten: Vec<usize> = (0..WARM).filter(|&i| unwritten[i]).collect();
    let hits = reader.stats().l1_hits;
    for &i in &unwritten {
        let got = reader.get_key::<Offer>(&setup.keys[i]).await?;
        ensure!(
            got.is_some(),
            "the reader lost key {i}, which was not written"
        );
    }
    let kept_hits = reader.stats().l1_hits - hits;
    read(setup, written, version).await?;
    Ok(Recovery {
        caught_up: up.saturating_duration_since(resubscribed),
        last_applied: reached.saturating_duration_since(resubscribed),
        xrange,
        read_log,
        l1_before,
        l1_after,
        kept_hits,
    })
}

async fn acl_user(admin: &mut MultiplexedConnection, state: &str) -> anyhow::Result<()> {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(READER_USER)
        .arg(state)
        .query_async(admin)
        .await?;
    Ok(())
}

/// Reads the `k` log entries after number `after` of `epoch` with raw `XRANGE`s of [`PAGE`] entries, each
/// page starting after the last id of the one before; returns how long that took.
async fn xrange_pages(
    conn: &mut MultiplexedConnection,
    epoch: u64,
    after: u64,
    k: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut start = format!("({epoch}-{after}");
    let mut read = 0;
    while read < k {
        let reply: Value = redis::cmd("XRANGE")
            .arg(LOG_KEY)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Value::Array(entries) = reply else {
            bail!("XRANGE replied {reply:?}");
        };
        let Some(Value::Array(last)) = entries.last() else {
            bail!("XRANGE found {read} of the {k} entries");
        };
        let Some(Value::BulkString(id)) = last.first() else {
            bail!("an XRANGE entry without an id");
        };
        start = format!("({}", String::from_utf8_lossy(id));
        read += entries.len();
    }
    let took = started.elapsed();
    ensure!(read == k, "XRANGE read {read} entries, not {k}");
    Ok(took)
}

/// Reads the `k` log entries after number `after` through `RedisL2::read_log`, [`PAGE`] at a
/// time; returns how long that took.
async fn read_log_pages(l2: &RedisL2, after: u64, k: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut next = after;
    let mut read = 0;
    while read < k {
        let page = l2.read_log(KEY_NAMESPACE, next, PAGE).await?;
        let Some(&(last, _)) = page.entries.last() else {
            bail!("read_log found {read} of the {k} entries");
        };
        next = last;
        read += page.entries.len();
    }
    let took = started.elapsed();
    ensure!(read == k, "read_log read {read} entries, not {k}");
    Ok(took)
}
