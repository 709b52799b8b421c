//! Row 4's batch lines: 1,024 key invalidations issued by node A, until node B has applied
//! every one, as 1,024 `invalidate_key` calls (the baseline) and as 64 `invalidate_keys` calls of
//! 16 keys (one announcement each), in the same run, on the same two nodes, taking turns. An
//! event's cost is per event at every node of a fleet (row 9 measures what that means at 1,000
//! subscribers); here it is what one issuer and one receiver see.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cache_core::{CacheKey, Event, Scope};
use cache_edge::{EdgeCache, Observer};
use edge_cache_bench::{duration, percentile, times};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::data::{Report, Sizes};
use crate::nodes;

/// Invalidations per round.
const KEYS: usize = 1_024;

/// Keys per `invalidate_keys` call.
const BATCH: usize = 16;

/// How long one round may take before the row fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// B's hook: counts the keys named by the events it applied.
#[derive(Default)]
struct Counted {
    keys: AtomicU64,
    changed: Notify,
}

impl Observer for Counted {
    fn on_event_applied(&self, event: &Event, _lag: Duration) {
        if let Scope::Keys(keys) = &event.scope {
            self.keys.fetch_add(keys.len() as u64, SeqCst);
            self.changed.notify_one();
        }
    }
}

/// Runs the batch lines of row 4.
///
/// # Errors
/// When a node cannot start, a call fails, or B does not apply every invalidation in time.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!("row 4, batches: {KEYS} key invalidations A -> B, one by one and {BATCH} per call");
    let counted = Arc::new(Counted::default());
    let (a, b) = rt.block_on(async {
        let a = nodes::edge_node(url, "bench-batch-a", None).await?;
        let b = nodes::edge_node(
            url,
            "bench-batch-b",
            Some(Arc::clone(&counted) as Arc<dyn Observer>),
        )
        .await?;
        anyhow::Ok((a, b))
    })?;
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|i| a.key("gpu_availability", &json!({ "batch": i })))
        .collect::<cache_core::Result<_>>()?;
    let rounds = sizes.stampedes.max(3);
    let mut single = Vec::new();
    let mut batched = Vec::new();
    for _ in 0..rounds {
        single.push(rt.block_on(round(&a, &counted, &keys, 1))?);
        batched.push(rt.block_on(round(&a, &counted, &keys, BATCH))?);
    }
    let (single, batched) = (
        percentile(&mut single, 50).unwrap_or_default(),
        percentile(&mut batched, 50).unwrap_or_default(),
    );
    let per_second = |took: Duration| KEYS as f64 / took.as_secs_f64().max(1e-9);
    let label = format!("4. batched invalidation, {KEYS} keys A → B applied");
    let measure = format!("time until B applied all (median of {rounds}); invalidations/s");
    report.line(
        &label,
        &measure,
        "edge-cache `invalidate_key`, one call per key (baseline)",
        format!("{} ({:.0}/s)", duration(single), per_second(single)),
        times(1.0),
        String::new(),
    );
    report.line(
        &label,
        &measure,
        &format!("edge-cache `invalidate_keys`, {BATCH} keys per call (one announcement)"),
        format!("{} ({:.0}/s)", duration(batched), per_second(batched)),
        times(batched.as_secs_f64() / single.as_secs_f64().max(1e-12)),
        String::new(),
    );
    report.checks.push(format!(
        "row 4, batches: in every round B applied all {KEYS} invalidations, one by one and \
         {BATCH} per call"
    ));
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    Ok(())
}

/// Invalidates every key on `a`, `per_call` at a time, and waits until B counted them all.
async fn round(
    a: &EdgeCache,
    counted: &Counted,
    keys: &[CacheKey],
    per_call: usize,
) -> anyhow::Result<Duration> {
    let before = counted.keys.load(SeqCst);
    let started = Instant::now();
    for chunk in keys.chunks(per_call) {
        if per_call == 1 {
            a.invalidate_key(&chunk[0]).await?;
        } else {
            a.invalidate_keys(chunk).await?;
        }
    }
    let want = before + keys.len() as u64;
    tokio::time::timeout(DEADLINE, async {
        loop {
            let changed = counted.changed.notified();
            if counted.keys.load(SeqCst) >= want {
                return;
            }
            changed.await;
        }
    })
    .await
    .context("B did not apply every invalidation in time")?;
    let took = started.elapsed();
    ensure!(
        counted.keys.load(SeqCst) == want,
        "B applied more invalidations than A issued"
    );
    Ok(took)
}
