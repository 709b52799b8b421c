//! Row 5: a hot-key stampede. 1,000 concurrent `get_or_load` calls on one missing key: how many
//! times the loader ran (the target is once) and how long until every caller had its value.
//!
//! The loader stands for a slow origin: it sleeps 5 ms, then builds the offer. The time to serve
//! all is compared with the loader alone, measured in the same run. edge-cache (on Redis) is
//! shown beside amalgam-cache `get_or_set` (Redis L2 and backplane) and moka's
//! `future::Cache::get_with` (in-process only). Each stampede uses a key no run has used.
//!
//! The fleet rows run the same herd on [`FLEET`] edge-cache nodes at once, each with its own
//! Redis connections, [`CALLERS`] callers on each: first with each node's single flight alone
//! (one load per node, the baseline), then with the namespace's fleet-wide fill lease
//! ([`cache_core::NamespaceConfig::fill_lease`]: one node loads, the others wait for its fill).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context as _};
use cache_core::{NamespaceConfig, Namespaces, Routing};
use cache_edge::{EdgeCache, SetOptions};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use edge_cache_bench::{duration, percentile, times, verdict};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::data::{Offer, Report, Sizes, TTL};
use crate::nodes::{self, Amalgam, ServerWork};

/// Concurrent callers of one stampede.
pub const CALLERS: usize = 1_000;

/// How long the loader takes.
pub const LOADER_DELAY: Duration = Duration::from_millis(5);

/// Nodes of the fleet rows.
pub const FLEET: usize = 5;

/// How long a fleet node holds a fill lease: well above the loader's 5 ms.
const LEASE_HOLD: Duration = Duration::from_millis(500);

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
    fleet(rt, url, sizes, nonce, report)
}

/// The fleet rows: [`FLEET`] nodes x [`CALLERS`] callers on one missing key, without and with
/// the fill lease.
fn fleet(
    rt: &Runtime,
    url: &str,
    sizes: Sizes,
    nonce: u128,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "row 5, fleet: {FLEET} nodes x {CALLERS} concurrent callers on one missing key, \
         without and with the fill lease"
    );
    let label = format!(
        "5. hot-key stampede, {FLEET} nodes x {} callers",
        edge_cache_bench::thousands(CALLERS as u64)
    );
    let mut baseline = Duration::ZERO;
    for leased in [false, true] {
        let nodes = rt.block_on(fleet_nodes(url, leased))?;
        let mut taken = Vec::new();
        let mut calls_total = 0;
        for round in 0..sizes.stampedes {
            let calls = Arc::new(AtomicUsize::new(0));
            let name = format!("fleet-{nonce}-{leased}-{round}");
            let took = rt.block_on(async {
                let started = Instant::now();
                let mut herds = JoinSet::new();
                for node in &nodes {
                    let (node, name, calls) = (node.clone(), name.clone(), Arc::clone(&calls));
                    herds.spawn(
                        async move { stampede_in(&node, FLEET_NS, &name, &calls, round).await },
                    );
                }
                while let Some(herd) = herds.join_next().await {
                    herd.context("a node's herd panicked")??;
                }
                anyhow::Ok(started.elapsed())
            })?;
            taken.push(took);
            calls_total += calls.load(SeqCst);
        }
        let median = percentile(&mut taken, 50).unwrap_or_default();
        if !leased {
            baseline = median;
        }
        let per_stampede = calls_total as f64 / sizes.stampedes as f64;
        let (name, target) = if leased {
            (
                "edge-cache `get_or_load_key` with the fill lease",
                format!(
                    "1 loader call fleet-wide: {} ({calls_total} in {} stampedes)",
                    verdict(calls_total == sizes.stampedes),
                    sizes.stampedes
                ),
            )
        } else {
            (
                "edge-cache `get_or_load_key`, single flight per node (baseline)",
                String::new(),
            )
        };
        report.line(
            &label,
            "loader calls fleet-wide; time to serve all (median)",
            name,
            format!(
                "{} loader call{} per stampede; all {} served in {}",
                fmt_calls(per_stampede),
                if per_stampede == 1.0 { "" } else { "s" },
                edge_cache_bench::thousands((FLEET * CALLERS) as u64),
                duration(median)
            ),
            times(median.as_secs_f64() / baseline.as_secs_f64().max(1e-12)),
            target,
        );
        rt.block_on(async {
            for node in nodes {
                node.shutdown().await;
            }
        });
    }
    report.checks.push(format!(
        "row 5, fleet: in every stampede all {} callers on the {FLEET} nodes got the offer the \
         loader built",
        edge_cache_bench::thousands((FLEET * CALLERS) as u64)
    ));
    Ok(())
}

/// The namespace of the fleet rows.
const FLEET_NS: &str = "fleet_offers";

/// [`FLEET`] nodes on `url` whose one namespace has the fill lease if `leased`.
async fn fleet_nodes(url: &str, leased: bool) -> anyhow::Result<Vec<EdgeCache>> {
    let mut config = NamespaceConfig::new(FLEET_NS, "fleet", TTL)
        .critical(true)
        .event_driven(true);
    if leased {
        config = config.fill_lease(LEASE_HOLD);
    }
    let mut namespaces = Namespaces::empty();
    namespaces.add(config)?;
    let redis = RedisConfig::new(url);
    let mut nodes = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        nodes.push(
            EdgeCache::builder()
                .node_id(format!("bench-fleet-{leased}-{i}"))
                .namespaces(namespaces.clone())
                .routing(Routing::empty())
                .l2(Arc::new(RedisL2::connect(&redis).await?))
                .bus(Arc::new(RedisBus::connect(&redis).await?))
                .build()
                .await?,
        );
    }
    Ok(nodes)
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
    stampede_in(node, "gpu_availability", name, calls, n).await
}

/// [`CALLERS`] concurrent `get_or_load_key` calls on `node` for key `name` of `namespace`.
async fn stampede_in(
    node: &EdgeCache,
    namespace: &str,
    name: &str,
    calls: &Arc<AtomicUsize>,
    n: usize,
) -> anyhow::Result<()> {
    let key = node.key(namespace, &serde_json::json!({ "stampede": name }))?;
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
