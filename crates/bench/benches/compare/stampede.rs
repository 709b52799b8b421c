//! Row 5: a hot-key stampede. 1,000 concurrent `get_or_load` calls on one missing key: how many
//! times the loader ran (the target is once) and how long until every caller had its value.
//!
//! The loader stands for a slow origin: it sleeps 5 ms, then builds the offer. The time to serve
//! all is compared with the loader alone, measured in the same run. edge-cache (on Redis) is
//! shown beside amalgam-cache `get_or_set` (Redis L2 and backplane) and moka's
//! `future::Cache::get_with` (in-process only). Each stampede uses a key no run has used.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context as _};
use cache_edge::{EdgeCache, SetOptions};
use edge_cache_bench::{duration, percentile, times, verdict};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::data::{Offer, Report, Sizes, TTL};
use crate::nodes::{self, Amalgam, ServerWork};

/// Concurrent callers of one stampede.
pub const CALLERS: usize = 1_000;

/// How long the loader takes.
pub const LOADER_DELAY: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Loader,
    Edge,
    Amalgam,
    Moka,
}

impl Imp {
    const ALL: [Imp; 4] = [Imp::Loader, Imp::Edge, Imp::Amalgam, Imp::Moka];

    fn name(self) -> &'static str {
        match self {
            Imp::Loader => "the loader alone, one call (baseline)",
            Imp::Edge => "edge-cache `get_or_load_key` (Redis L2)",
            Imp::Amalgam => "amalgam-cache `get_or_set` (Redis L2 + backplane)",
            Imp::Moka => "moka `future::Cache::get_with` (in-process only)",
        }
    }
}

/// The loader every implementation calls: counts itself, waits, builds the offer.
async fn load(calls: &AtomicUsize, n: usize) -> Offer {
    calls.fetch_add(1, SeqCst);
    tokio::time::sleep(LOADER_DELAY).await;
    Offer::new(n)
}

/// Runs row 5.
///
/// # Errors
/// When a store cannot be set up or a caller fails.
pub fn run(rt: &Runtime, url: &str, sizes: Sizes, report: &mut Report) -> anyhow::Result<()> {
    println!("row 5: hot-key stampede, {CALLERS} concurrent callers on one missing key");
    let (node, amalgam) = rt.block_on(async {
        let node = nodes::edge_node(url, "bench-stampede", None).await?;
        let amalgam = nodes::amalgam(url, "bench-stampede-amalgam", |o| o, None).await?;
        anyhow::Ok((node, amalgam))
    })?;
    let moka: moka::future::Cache<String, Arc<Offer>> = moka::future::Cache::new(10_000);
    let mut info = rt.block_on(nodes::raw(url))?;
    // Keys no earlier run of the benchmark can have left in Redis.
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut times_taken: Vec<Vec<Duration>> = vec![Vec::new(); Imp::ALL.len()];
    let mut loader_calls = vec![0_usize; Imp::ALL.len()];
    let mut work = vec![ServerWork::default(); Imp::ALL.len()];
    for round in 0..sizes.stampedes {
        for (slot, imp) in Imp::ALL.into_iter().enumerate() {
            let calls = Arc::new(AtomicUsize::new(0));
            let name = format!("stampede-{nonce}-{round}");
            let (took, used) = rt.block_on(async {
                let before = ServerWork::read(&mut info).await?;
                let started = Instant::now();
                match imp {
                    Imp::Loader => {
                        std::hint::black_box(load(&calls, round).await);
                    }
                    Imp::Edge => stampede_edge(&node, &name, &calls, round).await?,
                    Imp::Amalgam => stampede_amalgam(&amalgam, &name, &calls, round).await?,
                    Imp::Moka => stampede_moka(&moka, &name, &calls, round).await?,
                }
                let took = started.elapsed();
                let after = ServerWork::read(&mut info).await?;
                anyhow::Ok((took, before.until(after)))
            })?;
            times_taken[slot].push(took);
            loader_calls[slot] += calls.load(SeqCst);
            work[slot].add(used);
        }
    }
    let medians: Vec<Duration> = times_taken
        .iter_mut()
        .map(|t| percentile(t, 50).unwrap_or_default())
        .collect();
    for (slot, imp) in Imp::ALL.into_iter().enumerate() {
        let per_stampede = loader_calls[slot] as f64 / sizes.stampedes as f64;
        let result = if imp == Imp::Loader {
            format!("{} (1 call)", duration(medians[slot]))
        } else {
            format!(
                "{} loader call{} per stampede; all {} served in {} ({:.0} Redis commands)",
                fmt_calls(per_stampede),
                if per_stampede == 1.0 { "" } else { "s" },
                edge_cache_bench::thousands(CALLERS as u64),
                duration(medians[slot]),
                work[slot].commands_per(sizes.stampedes)
            )
        };
        let target = if imp == Imp::Edge {
            format!(
                "1 loader call: {} ({} in {} stampedes)",
                verdict(loader_calls[slot] == sizes.stampedes),
                loader_calls[slot],
                sizes.stampedes
            )
        } else {
            String::new()
        };
        report.line(
            "5. hot-key stampede, 1,000 callers",
            "loader calls; time to serve all (median)",
            imp.name(),
            result,
            times(medians[slot].as_secs_f64() / medians[0].as_secs_f64().max(1e-12)),
            target,
        );
    }
    report.checks.push(format!(
        "row 5: in every stampede all {} callers of every implementation got the offer the \
         loader built",
        edge_cache_bench::thousands(CALLERS as u64)
    ));
    rt.block_on(async {
        node.shutdown().await;
        let _ = amalgam.shutdown().await;
    });
    Ok(())
}

fn fmt_calls(per: f64) -> String {
    if per.fract() == 0.0 {
        format!("{per:.0}")
    } else {
        format!("{per:.1}")
    }
}

async fn stampede_edge(
    node: &EdgeCache,
    name: &str,
    calls: &Arc<AtomicUsize>,
    n: usize,
) -> anyhow::Result<()> {
    let key = node.key("gpu_availability", &serde_json::json!({ "stampede": name }))?;
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (node, key, calls) = (node.clone(), key.clone(), Arc::clone(calls));
        callers.spawn(async move {
            node.get_or_load_key(&key, SetOptions::new().ttl(TTL), || async move {
                Ok::<_, std::convert::Infallible>(load(&calls, n).await)
            })
            .await
        });
    }
    join_all(callers, n).await
}

async fn stampede_amalgam(
    cache: &Amalgam,
    name: &str,
    calls: &Arc<AtomicUsize>,
    n: usize,
) -> anyhow::Result<()> {
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (cache, key, calls) = (cache.clone(), name.to_owned(), Arc::clone(calls));
        callers.spawn(async move {
            cache
                .get_or_set(
                    key.as_str(),
                    amalgam::source::factory(move |ctx| async move {
                        Ok::<_, amalgam::FactoryError>(ctx.value(Arc::new(load(&calls, n).await)))
                    }),
                )
                .await
        });
    }
    join_all(callers, n).await
}

async fn stampede_moka(
    cache: &moka::future::Cache<String, Arc<Offer>>,
    name: &str,
    calls: &Arc<AtomicUsize>,
    n: usize,
) -> anyhow::Result<()> {
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (cache, key, calls) = (cache.clone(), name.to_owned(), Arc::clone(calls));
        callers.spawn(async move {
            let value = cache
                .get_with(key, async move { Arc::new(load(&calls, n).await) })
                .await;
            Ok::<_, std::convert::Infallible>(value)
        });
    }
    join_all(callers, n).await
}

/// Waits for every caller and checks each got offer `n`.
async fn join_all<E>(mut callers: JoinSet<Result<Arc<Offer>, E>>, n: usize) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let expected = Offer::new(n);
    while let Some(done) = callers.join_next().await {
        let offer = done.context("a caller panicked")??;
        ensure!(*offer == expected, "a caller got another offer");
    }
    Ok(())
}
