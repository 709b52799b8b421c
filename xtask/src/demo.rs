//! `cargo xtask demo`: a simulated GPU marketplace served by a fleet of edge nodes, with an exact
//! freshness audit of every read.
//!
//! # What runs
//!
//! - A **market**, the source of truth: GPUs (`g-1` … `g-N`, each with a provider, a GPU type and
//!   a status), a price per GPU type, and the order book (every available GPU with its price).
//!   It sits behind a `std::sync::Mutex`; every change bumps a global version and is recorded in
//!   the history of each resource it touched, so the market can answer "what was resource R's
//!   version as of global version V".
//! - **N edge nodes** (`edge-1` …), each an [`EdgeCache`]. By default they are built with no L2
//!   and no bus configured, so all of them run on the process-wide embedded in-process L2 and
//!   event bus, the way a fleet shares one Redis. With `--redis [URL]` they run on real Redis instead:
//!   every node connects its own [`RedisL2`] and [`RedisBus`] with one shared [`RedisConfig`],
//!   either to a private `redis-server` started for the run ([`test_support::RedisServer`]) or to
//!   the server at `URL`, under a key prefix and an event channel unique to the run.
//! - **R reader tasks per node**: each picks a random resource, reads it through
//!   [`EdgeCache::get_or_load`] (the loader reads the market) and audits the value it got.
//! - **One writer task**: every ~2 ms it books, cancels, reprices or takes a GPU in or out of
//!   maintenance in the market, then announces the change through a random node with
//!   [`EdgeCache::notify`], carrying the market's new global version as `data.source_version`.
//!
//! # The freshness audit
//!
//! Each node's [`Observer`] records, per key namespace, the highest `source_version` the node has
//! applied. Before a read of resource R in namespace X a reader snapshots that number for its node
//! (`applied`); after the read it asks the market for R's version as of global version `applied`
//! (`required`). Every cached value carries the version of its resource when it was loaded, and
//! the read is **stale** if that version is below `required`.
//!
//! This is exact, without false positives: the writer changes the market *before* it notifies, and
//! the node that issues an event invalidates L2 before it publishes, so once a node has applied
//! event `v` for namespace X, no correct read of X may return a value loaded before change `v`.
//! Only reads that *started* after the node applied the invalidation are judged. Staleness the
//! routing table permits by design (a price change does not invalidate the order book) is not
//! counted either, because it is never announced to the order book's namespace.
//!
//! Each value also carries a [`LoadStamp`] (which node's loader call produced it, and when), so a
//! stale read is reported with where its value came from: a load still in flight when the read
//! started, or one already finished.
//!
//! The job fails if any read was stale, or if any read or notification returned an error.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cache_core::{Event, EventBus, L2Store, Namespaces};
use cache_edge::{EdgeCache, Notification, Observer, SetOptions, Stats};
use cache_redis::{redact, RedisBus, RedisConfig, RedisL2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use test_support::RedisServer;

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cargo xtask demo [OPTIONS]

Runs a simulated GPU marketplace (bookings, cancellations, price changes) against a fleet of
edge nodes, and audits every read: a read is stale if it returned a value older than an
invalidation its node had applied before the read started. Exits non-zero on any stale read or
any error. By default the nodes share the embedded in-process L2 and event bus; with --redis
they run on real Redis.

Options:
      --duration SECS  how long the workload runs [default: 5]
      --nodes N        edge nodes, edge-1 .. edge-N [default: 3]
      --gpus N         GPUs in the market [default: 200]
      --readers N      reader tasks per node [default: 4]
      --seed N         seed of the workload's random choices [default: 42]
      --redis [URL]    run on Redis: every node connects its own RedisL2 and RedisBus.
                       Without URL, starts a private redis-server on a free loopback port
                       for the run and stops it afterwards (needs redis-server on PATH).
                       With URL (redis://[user:password@]host:port[/db], or --redis=URL),
                       uses that server under a key prefix and channel unique to this run
                       (ec-demo-PID-TIME:, edge_cache_demo_PID_TIME), so a live fleet on the
                       same server is not disturbed; passwords are never printed
  -h, --help           print this help
";

/// Where the nodes' L2 and event bus live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// The process-wide embedded in-process L2 and bus (no server needed).
    #[default]
    Embedded,
    /// A private `redis-server` started for the run on a free loopback port.
    PrivateRedis,
    /// The Redis server at this URL, under a key prefix and channel unique to the run.
    Redis(String),
}

/// Options of `cargo xtask demo`, from [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoArgs {
    /// How long the readers and the writer run.
    pub duration: Duration,
    /// How many edge nodes to start (at least 1).
    pub nodes: usize,
    /// How many GPUs the market holds (at least 1).
    pub gpus: usize,
    /// Reader tasks per node (at least 1).
    pub readers: usize,
    /// Seed of every random choice the workload makes.
    pub seed: u64,
    /// Where L2 and the bus live: `--redis [URL]`, embedded without it.
    pub backend: Backend,
    /// `--help` was given: the usage was printed and [`run`] does nothing.
    pub help: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(5),
            nodes: 3,
            gpus: 200,
            readers: 4,
            seed: 42,
            backend: Backend::Embedded,
            help: false,
        }
    }
}

/// Parses the arguments that follow `demo` on the command line. Flags take their value as the
/// next argument or after `=` (`--nodes 5`, `--nodes=5`). `--redis` takes an optional URL: the
/// next argument when it does not start with `-`, or the text after `=`. `--help` prints
/// [`USAGE`] to stdout and returns at once with [`DemoArgs::help`] set.
///
/// # Errors
/// An unknown argument, a flag without its value, a value that is not a whole number, one
/// below the flag's minimum, or a `--redis` URL without a scheme (`redis://...`).
pub fn parse(args: &[String]) -> anyhow::Result<DemoArgs> {
    let mut parsed = DemoArgs::default();
    let mut rest = args.iter().peekable();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") && inline.is_none() {
            print!("{USAGE}");
            parsed.help = true;
            return Ok(parsed);
        }
        if flag == "--redis" {
            let url = match inline {
                Some(url) => Some(url),
                None => rest
                    .next_if(|next| !next.starts_with('-'))
                    .map(String::as_str),
            };
            parsed.backend = match url {
                None => Backend::PrivateRedis,
                Some(url) => Backend::Redis(redis_url(url)?),
            };
            continue;
        }
        if !matches!(
            flag,
            "--duration" | "--nodes" | "--gpus" | "--readers" | "--seed"
        ) {
            bail!(
                "unknown argument `{arg}` for `cargo xtask demo` (see `cargo xtask demo --help`)"
            );
        }
        let text = match inline {
            Some(value) => value,
            None => rest
                .next()
                .map(String::as_str)
                .ok_or_else(|| anyhow!("`{flag}` needs a value (see `cargo xtask demo --help`)"))?,
        };
        match flag {
            "--duration" => parsed.duration = Duration::from_secs(number(flag, text, 1)?),
            "--nodes" => parsed.nodes = count(flag, text)?,
            "--gpus" => parsed.gpus = count(flag, text)?,
            "--readers" => parsed.readers = count(flag, text)?,
            _ => parsed.seed = number(flag, text, 0)?,
        }
    }
    Ok(parsed)
}

/// A `--redis` URL, checked only for its shape here (`scheme://rest`); connecting tells the rest.
/// The message never repeats the URL, which may hold a password.
fn redis_url(url: &str) -> anyhow::Result<String> {
    match url.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && !rest.is_empty() => Ok(url.to_owned()),
        // The value is not echoed: without a scheme, `redact` cannot tell where a password is.
        _ => bail!(
            "`--redis` expects a URL such as redis://127.0.0.1:6379/0; \
             the value given has no scheme"
        ),
    }
}

/// A whole number of at least `min`.
fn number(flag: &str, text: &str, min: u64) -> anyhow::Result<u64> {
    let n: u64 = text
        .parse()
        .with_context(|| format!("`{flag}` expects a whole number, got `{text}`"))?;
    if n < min {
        bail!("`{flag}` must be at least {min}, got {n}");
    }
    Ok(n)
}

/// A count of at least 1.
fn count(flag: &str, text: &str) -> anyhow::Result<usize> {
    let n = number(flag, text, 1)?;
    usize::try_from(n).with_context(|| format!("`{flag}` is too large: {n}"))
}

/// Runs the demo on a new multi-thread tokio runtime with two worker threads, prints progress and
/// the per-node report, and shuts every node down. Returns at once when `args.help` is set.
///
/// With [`Backend::PrivateRedis`] it starts a `redis-server` first and stops it once every node
/// is shut down; with [`Backend::Redis`] it deletes the run's generation and fence counters at
/// the end (the run's entries expire on their TTL).
///
/// # Errors
/// When `redis-server` is needed but not installed, the runtime or a node cannot be started
/// (Redis unreachable included), a task panicked, a notification failed, a read failed, or the
/// freshness audit found a stale read (`freshness audit failed: N stale reads`).
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.help {
        return Ok(());
    }
    // Declared before the runtime so it is dropped (and the server killed) after it.
    let private = match args.backend {
        Backend::PrivateRedis => Some(start_redis_server().context(
            "cannot start a private redis-server for `--redis` \
                 (or pass the URL of a running server: --redis redis://HOST:PORT)",
        )?),
        Backend::Embedded | Backend::Redis(_) => None,
    };
    let redis = match (&args.backend, &private) {
        (Backend::PrivateRedis, Some(server)) => Some(RedisSetup {
            config: RedisConfig::new(server.url()),
            origin: format!(
                "started a private redis-server on 127.0.0.1:{} (pid {}); \
                 it is stopped when the demo ends",
                server.port(),
                server.pid()
            ),
            shared: false,
        }),
        (Backend::Redis(url), _) => {
            let run_id = run_id();
            let config = RedisConfig::new(url.clone())
                .key_prefix(format!("ec-demo-{run_id}:"))
                .channel(format!("edge_cache_demo_{}", run_id.replace('-', "_")));
            Some(RedisSetup {
                origin: format!(
                    "key prefix `{}` and channel `{}`, unique to this run",
                    config.prefix(),
                    config.channel_name()
                ),
                config,
                shared: true,
            })
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(demo(args, redis.as_ref()));
    drop(runtime);
    drop(private);
    result
}

/// How this run's nodes reach Redis, resolved from [`Backend`]; none for the embedded backends.
struct RedisSetup {
    /// What every node connects its own [`RedisL2`] and [`RedisBus`] with.
    config: RedisConfig,
    /// One line for the header: where the server came from.
    origin: String,
    /// The server is not ours: delete the run's counters at the end.
    shared: bool,
}

/// `PID-UNIXSECS`: unique to this run on one host (a pid repeats only after the process is
/// gone, and not within the same second in practice), so keys and channels of earlier runs are
/// never reused.
fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}-{secs}", std::process::id())
}

/// Starts a private `redis-server` on a free loopback port, as the tests do
/// ([`RedisServer::start`]); dropping the handle kills it.
///
/// # Errors
/// When `redis-server` is not on `PATH`, with the command that installs it (checked first:
/// [`RedisServer::start`] would panic instead).
pub(crate) fn start_redis_server() -> anyhow::Result<RedisServer> {
    if !on_path("redis-server") {
        bail!(
            "redis-server is not installed (not found on PATH).\n\
             Install it with:  sudo apt-get install -y redis-server"
        );
    }
    Ok(RedisServer::start())
}

/// Whether an executable file named `program` is in one of the `PATH` directories.
pub(crate) fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

#[cfg(unix)]
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &std::path::Path) -> bool {
    path.is_file()
}

/// How often the writer changes the market.
const WRITE_EVERY: Duration = Duration::from_millis(2);

/// How long to wait, after the workload stops, for every node to apply every event.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many stale reads and errors are printed in full.
const DETAILS_SHOWN: u64 = 5;

/// Regions given to the nodes in turn (reported in stats and written on events).
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// GPU types and their starting price in cents per hour.
const GPU_TYPES: [(&str, u64); 4] = [("A100", 189), ("H100", 299), ("L40S", 99), ("RTX4090", 44)];

/// Providers in the market: one per this many GPUs.
const GPUS_PER_PROVIDER: usize = 10;

/// Builds the fleet, runs the workload, shuts every node down and judges the outcome.
async fn demo(args: DemoArgs, redis: Option<&RedisSetup>) -> anyhow::Result<()> {
    let mut rng = Rng::stream(args.seed, 0);
    let world = Arc::new(World::new(Market::new(args.gpus, &mut rng)));
    let on = match redis {
        None => "on the embedded in-process L2 and event bus \
             (shared by all nodes, as a fleet shares Redis)"
            .to_owned(),
        Some(RedisSetup { config, .. }) => format!(
            "on Redis at {} (every node with its own RedisL2 and RedisBus connections)",
            redact(config.url())
        ),
    };
    println!(
        "edge-cache demo: {} (edge-1..edge-{}) x {}, {}, {} s, seed {}, {on}",
        plural(args.nodes, "node"),
        args.nodes,
        plural(args.readers, "reader"),
        plural(args.gpus, "GPU"),
        args.duration.as_secs(),
        args.seed,
    );
    if let Some(RedisSetup { origin, .. }) = redis {
        println!("redis: {origin}");
    }
    println!(
        "writer: a booking, cancellation, price change or maintenance change every {} ms, \
         announced through a random node",
        WRITE_EVERY.as_millis()
    );

    let nodes = start_nodes(args.nodes, redis.map(|r| &r.config)).await?;
    let outcome = workload(&world, &nodes, &args).await;
    for node in &nodes {
        node.cache.shutdown().await;
    }
    let cleaned = match redis {
        Some(RedisSetup {
            config,
            shared: true,
            ..
        }) => Some(clean_up(config).await),
        _ => None,
    };
    let result = outcome.and_then(|outcome| report(&nodes, &outcome));
    if let Some(cleaned) = cleaned {
        println!("{cleaned}");
    }
    result
}

/// Deletes the run's per-namespace generation and fence counters from a shared server: they are
/// the only keys edge-cache writes without a TTL. The run's entries and tag sets expire on their
/// own TTL. Returns what it did, for the end of the output; a failure is only reported: the
/// prefix is unique to the run, so leftovers disturb nobody.
async fn clean_up(config: &RedisConfig) -> String {
    let namespaces = Namespaces::defaults();
    let keys: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            let prefix = format!("{}{{{}}}:", config.prefix(), ns.key_namespace);
            [format!("{prefix}g"), format!("{prefix}f")]
        })
        .collect();
    let longest_ttl = Kind::ALL
        .iter()
        .filter_map(|kind| namespaces.get(kind.namespace()))
        .map(|ns| ns.ttl.as_secs())
        .max()
        .unwrap_or(0);
    let deleted = async {
        let client = redis::Client::open(config.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<u64>(&mut conn)
            .await
    };
    match deleted.await {
        Ok(n) => format!(
            "redis: deleted this run's {n} generation/fence counters under `{}`; its entries \
             expire on their TTL (at most {longest_ttl} s)",
            config.prefix()
        ),
        Err(e) => format!(
            "redis: could not delete this run's counters under `{}` ({e}); they are harmless",
            config.prefix()
        ),
    }
}

/// Starts `count` nodes, on Redis with `redis` and on the embedded backends without; on failure
/// shuts down those already started.
async fn start_nodes(count: usize, redis: Option<&RedisConfig>) -> anyhow::Result<Vec<Node>> {
    let namespaces = Namespaces::defaults();
    let mut key_namespaces = Vec::with_capacity(Kind::ALL.len());
    for kind in Kind::ALL {
        let config = namespaces
            .get(kind.namespace())
            .with_context(|| format!("the default namespaces lack {:?}", kind.namespace()))?;
        key_namespaces.push(config.key_namespace.clone());
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    for i in 0..count {
        let audit = Arc::new(NodeAudit::new(i, key_namespaces.clone()));
        let node_id = audit.node_id.clone();
        let observer: Arc<dyn Observer> = audit.clone();
        let builder = EdgeCache::builder()
            .node_id(node_id.clone())
            .region(REGIONS[i % REGIONS.len()])
            .observer(observer);
        let built = async {
            let builder = match redis {
                None => builder,
                Some(config) => {
                    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await?);
                    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await?);
                    builder.l2(l2).bus(bus)
                }
            };
            builder.build().await
        };
        match built.await {
            Ok(cache) => nodes.push(Node { cache, audit }),
            Err(e) => {
                for node in &nodes {
                    node.cache.shutdown().await;
                }
                return Err(anyhow::Error::new(e).context(format!("cannot start node {node_id}")));
            }
        }
    }
    Ok(nodes)
}

/// One edge node and its audit.
struct Node {
    cache: EdgeCache,
    audit: Arc<NodeAudit>,
}

/// What the workload left behind for the report.
struct Outcome {
    writes: u64,
    notify_errors: u64,
    /// Nodes that had not applied every event when the settle timeout passed.
    unsettled: Vec<String>,
    elapsed: Duration,
    /// Stale reads served by a loader call still running when the read started.
    stale_in_flight: u64,
    /// Stale reads served by a loader call that had returned before the read started.
    stale_finished: u64,
}

/// Runs the readers and the writer for `args.duration`, printing progress once per second, then
/// waits (bounded) for every node to apply every event.
async fn workload(world: &Arc<World>, nodes: &[Node], args: &DemoArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut readers = Vec::with_capacity(nodes.len() * args.readers);
    for (n, node) in nodes.iter().enumerate() {
        for r in 0..args.readers {
            let stream = 1 + (n * args.readers + r) as u64;
            let task = read_loop(
                Arc::clone(world),
                node.cache.clone(),
                Arc::clone(&node.audit),
                Rng::stream(args.seed, stream),
            );
            readers.push(tokio::spawn(task));
        }
    }
    let caches: Vec<EdgeCache> = nodes.iter().map(|n| n.cache.clone()).collect();
    let writer = tokio::spawn(write_loop(
        Arc::clone(world),
        caches,
        Rng::stream(args.seed, u64::MAX),
    ));

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await; // The first tick is immediate.
    for second in 1..=args.duration.as_secs() {
        ticker.tick().await;
        let (reads, stale, errors) = totals(nodes);
        println!(
            "[{second:>3}s] reads {reads:>9}   writes {:>6}   stale {stale}   errors {errors}",
            world.writes.load(Ordering::Relaxed)
        );
    }
    world.stop.store(true, Ordering::SeqCst);

    for reader in readers {
        reader.await.context("a reader task panicked")?;
    }
    let notify_errors = writer.await.context("the writer task panicked")?;
    let elapsed = started.elapsed();
    let writes = world.writes.load(Ordering::SeqCst);
    let delivered = writes - notify_errors;
    let unsettled = settle(nodes, delivered).await;
    Ok(Outcome {
        writes,
        notify_errors,
        unsettled,
        elapsed,
        stale_in_flight: world.stale_in_flight.load(Ordering::SeqCst),
        stale_finished: world.stale_finished.load(Ordering::SeqCst),
    })
}

/// Waits until every node has applied `events` events or [`SETTLE_TIMEOUT`] passes; returns the
/// ids of the nodes still behind.
async fn settle(nodes: &[Node], events: u64) -> Vec<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let behind: Vec<String> = nodes
            .iter()
            .filter(|n| n.cache.stats().events_applied < events)
            .map(|n| n.cache.node_id().to_owned())
            .collect();
        if behind.is_empty() || Instant::now() >= deadline {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads, stale reads and errors over all nodes so far.
fn totals(nodes: &[Node]) -> (u64, u64, u64) {
    nodes.iter().fold((0, 0, 0), |(reads, stale, errors), n| {
        let a = &n.audit;
        (
            reads + a.reads.load(Ordering::Relaxed),
            stale + a.stale.load(Ordering::Relaxed),
            errors + a.errors.load(Ordering::Relaxed),
        )
    })
}

/// Prints the per-node table and the summary line, and turns failures into an error.
fn report(nodes: &[Node], outcome: &Outcome) -> anyhow::Result<()> {
    println!();
    println!(
        "{:<8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6}",
        "node",
        "reads",
        "L1 hits",
        "L2 hits",
        "loads",
        "fenced",
        "events",
        "resyncs",
        "lag p50",
        "lag p99",
        "stale",
        "errors"
    );
    let mut stats: Vec<Stats> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let s = node.cache.stats();
        let a = &node.audit;
        let mut lags = lock(&a.lags).clone();
        println!(
            "{:<8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6}",
            s.node_id,
            a.reads.load(Ordering::Relaxed),
            s.l1_hits,
            s.l2_hits,
            s.loads,
            s.fills_fenced,
            s.events_applied,
            s.resyncs,
            micros(percentile(&mut lags, 50)),
            micros(percentile(&mut lags, 99)),
            a.stale.load(Ordering::Relaxed),
            a.errors.load(Ordering::Relaxed),
        );
        stats.push(s);
    }
    println!(
        "(resyncs: times L1 was dropped because the bus lost the subscription or got it back; \
         lag: µs from an event's timestamp until another node applied it)"
    );
    println!();

    let (reads, stale, errors) = totals(nodes);
    let secs = outcome.elapsed.as_secs_f64().max(f64::EPSILON);
    let l1: u64 = stats.iter().map(|s| s.l1_hits).sum();
    println!(
        "{reads} reads ({:.0}/s, {:.1}% from L1), {} writes, {} events applied fleet-wide in {:.1} s",
        reads as f64 / secs,
        100.0 * l1 as f64 / reads.max(1) as f64,
        outcome.writes,
        stats.iter().map(|s| s.events_applied).sum::<u64>(),
        secs,
    );
    if !outcome.unsettled.is_empty() {
        println!(
            "warning: {} had not applied every event {} ms after the workload stopped",
            outcome.unsettled.join(", "),
            SETTLE_TIMEOUT.as_millis()
        );
    }
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} reads failed"));
    }
    if outcome.notify_errors > 0 {
        problems.push(format!("{} notifications failed", outcome.notify_errors));
    }
    if stale > 0 {
        let also = if problems.is_empty() {
            String::new()
        } else {
            format!("; also {}", problems.join(", "))
        };
        println!(
            "freshness audit FAILED: {stale} of {reads} reads were stale ({} served by a loader \
             call still running when the read started, {} by one that had returned){also}",
            outcome.stale_in_flight, outcome.stale_finished
        );
        bail!("freshness audit failed: {stale} stale reads{also}");
    }
    if !problems.is_empty() {
        let problems = problems.join(", ");
        println!("demo FAILED: {problems} (0 stale reads)");
        bail!("demo failed: {problems}");
    }
    println!(
        "freshness audit passed: 0 stale reads in {reads} reads across {}",
        plural(nodes.len(), "node")
    );
    Ok(())
}

/// `1 node`, `3 nodes`.
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The `p`th percentile (nearest rank) of `samples`; sorts them.
pub(crate) fn percentile(samples: &mut [Duration], p: usize) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    Some(samples[rank - 1])
}

/// A duration in whole microseconds, or `-` when there is none.
fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_micros().to_string())
}

// ---------------------------------------------------------------------------------------------
// Workload tasks
// ---------------------------------------------------------------------------------------------

/// State shared by every task.
struct World {
    market: Mutex<Market>,
    /// Set when the workload must stop.
    stop: AtomicBool,
    /// Market changes made by the writer.
    writes: AtomicU64,
    /// Stale reads printed so far (the first [`DETAILS_SHOWN`] are).
    stale_shown: AtomicU64,
    /// Errors printed so far (the first [`DETAILS_SHOWN`] are).
    errors_shown: AtomicU64,
    /// Stale reads served by a loader call still running when the read started.
    stale_in_flight: AtomicU64,
    /// Stale reads served by a loader call that had returned before the read started.
    stale_finished: AtomicU64,
    /// The origin of the audit clock, which times read starts and loader calls so a stale read
    /// can be told apart by where its value came from (see [`LoadStamp`]). A monotonic clock, not
    /// a shared counter, so timing adds no contended state between readers.
    epoch: Instant,
    /// The `get_or_load` parameters of each resource, by [`Market::slot`].
    params: Vec<Value>,
}

impl World {
    fn new(market: Market) -> Self {
        let params = market.resources().map(|r| r.params()).collect();
        Self {
            market: Mutex::new(market),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            stale_shown: AtomicU64::new(0),
            errors_shown: AtomicU64::new(0),
            stale_in_flight: AtomicU64::new(0),
            stale_finished: AtomicU64::new(0),
            epoch: Instant::now(),
            params,
        }
    }

    /// The audit clock: nanoseconds since the world was created.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn market(&self) -> MutexGuard<'_, Market> {
        lock(&self.market)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One reader: read a random resource through `cache`, audit it, repeat until stopped.
async fn read_loop(world: Arc<World>, cache: EdgeCache, audit: Arc<NodeAudit>, mut rng: Rng) {
    let gpus = world.market().gpus.len();
    while !world.stopped() {
        let resource = Resource::random(&mut rng, gpus);
        // Snapshot BEFORE the read: only invalidations applied before it started are judged.
        let applied = audit.applied(resource.kind());
        let started = world.now_ns();
        let outcome = read(&world, &cache, audit.index, resource).await;
        audit.reads.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(served) => {
                let required = world.market().version_of(resource, applied);
                if served.version < required {
                    audit.stale.fetch_add(1, Ordering::Relaxed);
                    report_stale(
                        &world, &cache, resource, &served, applied, required, started,
                    );
                }
            }
            Err(e) => {
                audit.errors.fetch_add(1, Ordering::Relaxed);
                if world.errors_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
                    println!(
                        "ERROR on {}: reading {} {}: {e}",
                        cache.node_id(),
                        resource.kind().namespace(),
                        resource.label()
                    );
                }
            }
        }
        // L1 hits never await: yield so listeners and the writer get the worker threads too.
        tokio::task::yield_now().await;
    }
}

/// Counts a stale read by where its value came from, and prints the first few in full.
fn report_stale(
    world: &World,
    cache: &EdgeCache,
    resource: Resource,
    served: &Served,
    applied: u64,
    required: u64,
    started: u64,
) {
    let load = served.load;
    let (counter, how) = if load.finished > started {
        (
            &world.stale_in_flight,
            "the loader was still running when the read started",
        )
    } else {
        (
            &world.stale_finished,
            "the loader had returned before the read started",
        )
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if world.stale_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "STALE on {}: {} {} served version {}, but the node had applied source_version \
             {applied} (when it was at version {required}) before the read started at {:.1} µs; \
             the value was loaded on edge-{} from {:.1} to {:.1} µs: {how}",
            cache.node_id(),
            resource.kind().namespace(),
            resource.label(),
            served.version,
            us(started),
            load.node + 1,
            us(load.started),
            us(load.finished),
        );
    }
}

/// What a read returned: the version of the value and how it was loaded.
struct Served {
    version: u64,
    load: LoadStamp,
}

/// Reads `resource` through `cache` on node number `node`, loading it from the market on a miss.
async fn read(
    world: &Arc<World>,
    cache: &EdgeCache,
    node: usize,
    resource: Resource,
) -> cache_edge::Result<Served> {
    let namespace = resource.kind().namespace();
    let params = &world.params[world.market().slot(resource)];
    let load = LoadContext {
        world,
        cache,
        node,
        namespace,
        params,
    };
    match resource {
        Resource::Gpu(i) => load.read(move |m| m.availability(i)).await,
        Resource::Price(t) => load.read(move |m| m.price(t)).await,
        Resource::OrderBook => load.read(Market::order_book).await,
    }
}

/// What one read needs to load its value.
struct LoadContext<'a> {
    world: &'a Arc<World>,
    cache: &'a EdgeCache,
    node: usize,
    namespace: &'a str,
    params: &'a Value,
}

impl LoadContext<'_> {
    /// `get_or_load` of one value whose loader takes a snapshot of the market with `snapshot`.
    async fn read<T, F>(self, snapshot: F) -> cache_edge::Result<Served>
    where
        T: Versioned + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(&Market) -> T,
    {
        let world = Arc::clone(self.world);
        let node = self.node;
        let loader = || async move {
            let started = world.now_ns();
            let value = snapshot(&world.market());
            // A loader has latency in real life; this await lets invalidations race the load.
            tokio::task::yield_now().await;
            let load = LoadStamp {
                node,
                started,
                finished: world.now_ns(),
            };
            Ok::<_, Infallible>(Loaded { value, load })
        };
        let loaded: Arc<Loaded<T>> = self
            .cache
            .get_or_load(self.namespace, self.params, SetOptions::new(), loader)
            .await?;
        Ok(Served {
            version: loaded.value.version(),
            load: loaded.load,
        })
    }
}

/// The writer: change the market, then announce the change through a random node; repeat every
/// [`WRITE_EVERY`] until stopped. Returns how many notifications failed.
async fn write_loop(world: Arc<World>, nodes: Vec<EdgeCache>, mut rng: Rng) -> u64 {
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    while !world.stopped() {
        ticker.tick().await;
        // The market changes first; `version` is the global version after the change.
        let (change, version) = world.market().step(&mut rng);
        world.writes.fetch_add(1, Ordering::Relaxed);
        let node = &nodes[rng.below(nodes.len())];
        if let Err(e) = node.notify(change.notification(version)).await {
            failures += 1;
            if world.errors_shown.fetch_add(1, Ordering::Relaxed) < DETAILS_SHOWN {
                println!(
                    "ERROR on {}: notifying change {version}: {e}",
                    node.node_id()
                );
            }
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// The per-node audit (the observer)
// ---------------------------------------------------------------------------------------------

/// A node's observer and audit counters.
struct NodeAudit {
    /// The node's index: 0 for `edge-1`.
    index: usize,
    node_id: String,
    /// The key namespace of each [`Kind`], by `Kind as usize`.
    key_namespaces: Vec<String>,
    /// Highest `source_version` applied per [`Kind`].
    applied: [AtomicU64; 3],
    /// Lag of every event applied here that another node issued.
    lags: Mutex<Vec<Duration>>,
    reads: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
}

impl NodeAudit {
    fn new(index: usize, key_namespaces: Vec<String>) -> Self {
        Self {
            index,
            node_id: format!("edge-{}", index + 1),
            key_namespaces,
            applied: Default::default(),
            lags: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The highest `source_version` applied to `kind`'s namespace. SeqCst pairs with the
    /// `fetch_max` in [`Observer::on_event_applied`], which runs after the node dropped its L1
    /// copies: a read that starts after seeing the number also sees the drop.
    fn applied(&self, kind: Kind) -> u64 {
        self.applied[kind as usize].load(Ordering::SeqCst)
    }
}

impl Observer for NodeAudit {
    fn on_event_applied(&self, event: &Event, lag: Duration) {
        if event.source_node != self.node_id {
            lock(&self.lags).push(lag);
        }
        let Some(version) = event.data.get("source_version").and_then(Value::as_u64) else {
            return;
        };
        for key_namespace in &event.affected_namespaces {
            if let Some(kind) = self.key_namespaces.iter().position(|k| k == key_namespace) {
                self.applied[kind].fetch_max(version, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The market: the source of truth
// ---------------------------------------------------------------------------------------------

/// The three kinds of cached resource, one per namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Availability = 0,
    Pricing = 1,
    OrderBook = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Availability, Kind::Pricing, Kind::OrderBook];

    /// The namespace (cache type) holding this kind.
    fn namespace(self) -> &'static str {
        match self {
            Kind::Availability => cache_core::namespace::GPU_AVAILABILITY,
            Kind::Pricing => cache_core::namespace::GPU_PRICING,
            Kind::OrderBook => cache_core::namespace::ORDER_BOOK,
        }
    }
}

/// One cached resource of the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// The availability of the GPU at this index.
    Gpu(usize),
    /// The price of the GPU type at this index of [`GPU_TYPES`].
    Price(usize),
    /// The order book of the whole market.
    OrderBook,
}

impl Resource {
    /// A random resource: mostly availability, then prices, then the order book.
    fn random(rng: &mut Rng, gpus: usize) -> Self {
        match rng.below(100) {
            0..60 => Resource::Gpu(rng.below(gpus)),
            60..85 => Resource::Price(rng.below(GPU_TYPES.len())),
            _ => Resource::OrderBook,
        }
    }

    fn kind(self) -> Kind {
        match self {
            Resource::Gpu(_) => Kind::Availability,
            Resource::Price(_) => Kind::Pricing,
            Resource::OrderBook => Kind::OrderBook,
        }
    }

    /// The `get_or_load` parameters naming this resource.
    fn params(self) -> Value {
        match self {
            Resource::Gpu(i) => json!({"gpu_id": gpu_id(i)}),
            Resource::Price(t) => json!({"gpu_type": GPU_TYPES[t].0}),
            Resource::OrderBook => json!({"market": "all"}),
        }
    }

    /// A short human name: `g-17`, `H100`, `all`.
    fn label(self) -> String {
        match self {
            Resource::Gpu(i) => gpu_id(i),
            Resource::Price(t) => GPU_TYPES[t].0.to_owned(),
            Resource::OrderBook => "all".to_owned(),
        }
    }
}

/// The id of the GPU at index `i`: `g-1` for index 0.
fn gpu_id(i: usize) -> String {
    format!("g-{}", i + 1)
}

/// A GPU's status in the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum GpuStatus {
    Available,
    Booked,
    /// Taken out by its provider for maintenance.
    Offline,
}

impl GpuStatus {
    fn as_str(self) -> &'static str {
        match self {
            GpuStatus::Available => "available",
            GpuStatus::Booked => "booked",
            GpuStatus::Offline => "offline",
        }
    }
}

/// One GPU in the market.
#[derive(Debug, Clone)]
struct Gpu {
    provider: String,
    /// Index into [`GPU_TYPES`].
    gpu_type: usize,
    status: GpuStatus,
    /// The booking holding it, while booked.
    booking: Option<String>,
}

/// What the cache holds: a value and the stamp of the loader run that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Loaded<T> {
    value: T,
    load: LoadStamp,
}

/// Which node's loader call produced a value, and when on the audit clock ([`World::now_ns`]) it
/// started and returned. Diagnostic only: a stale read served by a call that returned after the
/// read started shared a load in flight across an invalidation; one served by a call that had
/// returned before was handed a value already loaded (a finished flight, or a fill that
/// outlived the invalidation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LoadStamp {
    /// The node's index: 0 for `edge-1`.
    node: usize,
    started: u64,
    finished: u64,
}

/// A value that carries the version of its resource at load time.
trait Versioned {
    fn version(&self) -> u64;
}

/// The cached value of a GPU's availability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Availability {
    gpu_id: String,
    status: GpuStatus,
    version: u64,
}

/// The cached price of a GPU type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    gpu_type: String,
    cents_per_hour: u64,
    version: u64,
}

/// The cached order book: every available GPU with its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderBook {
    offers: Vec<Offer>,
    version: u64,
}

/// One available GPU in the order book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Offer {
    gpu_id: String,
    gpu_type: String,
    provider: String,
    cents_per_hour: u64,
}

impl Versioned for Availability {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for Price {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Versioned for OrderBook {
    fn version(&self) -> u64 {
        self.version
    }
}

/// One change the writer made, with what the fleet is told about it.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Booked {
        booking_id: String,
        gpu_id: String,
    },
    Cancelled {
        booking_id: String,
        gpu_id: String,
    },
    Repriced {
        gpu_type: &'static str,
        cents_per_hour: u64,
    },
    Maintenance {
        gpu_id: String,
        status: GpuStatus,
    },
}

impl Change {
    /// The notification announcing this change, carrying the market's global version after it.
    fn notification(&self, source_version: u64) -> Notification {
        let notification = match self {
            Change::Booked { booking_id, gpu_id } => {
                Notification::booking_created(booking_id, gpu_id)
            }
            Change::Cancelled { booking_id, gpu_id } => {
                Notification::booking_cancelled(booking_id, gpu_id)
            }
            Change::Repriced {
                gpu_type,
                cents_per_hour,
            } => Notification::pricing_updated(gpu_type, *cents_per_hour as f64 / 100.0),
            Change::Maintenance { gpu_id, status } => {
                Notification::gpu_availability_changed(gpu_id, status.as_str())
            }
        };
        notification.with_data("source_version", source_version)
    }
}

/// The source of truth, with a version history per resource.
///
/// Invariant: `version` is the number of changes made; `history[slot(r)]` lists, ascending, the
/// global versions of the changes that touched resource `r` (version 0, the initial state, is
/// implied).
#[derive(Debug)]
struct Market {
    version: u64,
    gpus: Vec<Gpu>,
    /// Cents per hour, by index into [`GPU_TYPES`].
    prices: Vec<u64>,
    history: Vec<Vec<u64>>,
    next_booking: u64,
}

impl Market {
    /// A market of `gpus` GPUs of random types, about a quarter of them booked.
    fn new(gpus: usize, rng: &mut Rng) -> Self {
        let mut next_booking = 1;
        let gpus = (0..gpus)
            .map(|i| {
                let booked = rng.below(4) == 0;
                let booking = booked.then(|| {
                    next_booking += 1;
                    format!("b-{}", next_booking - 1)
                });
                Gpu {
                    provider: format!("p-{}", i / GPUS_PER_PROVIDER + 1),
                    gpu_type: rng.below(GPU_TYPES.len()),
                    status: if booked {
                        GpuStatus::Booked
                    } else {
                        GpuStatus::Available
                    },
                    booking,
                }
            })
            .collect::<Vec<_>>();
        let resources = gpus.len() + GPU_TYPES.len() + 1;
        Self {
            version: 0,
            gpus,
            prices: GPU_TYPES.iter().map(|(_, cents)| *cents).collect(),
            history: vec![Vec::new(); resources],
            next_booking,
        }
    }

    /// Every resource, in [`Market::slot`] order.
    fn resources(&self) -> impl Iterator<Item = Resource> {
        (0..self.gpus.len())
            .map(Resource::Gpu)
            .chain((0..GPU_TYPES.len()).map(Resource::Price))
            .chain(std::iter::once(Resource::OrderBook))
    }

    /// The index of `resource` in `history` (and in [`World::params`]).
    fn slot(&self, resource: Resource) -> usize {
        match resource {
            Resource::Gpu(i) => i,
            Resource::Price(t) => self.gpus.len() + t,
            Resource::OrderBook => self.gpus.len() + GPU_TYPES.len(),
        }
    }

    /// The version of `resource` as of global version `as_of`: the last change to it at or before
    /// `as_of`, or 0 if none.
    fn version_of(&self, resource: Resource, as_of: u64) -> u64 {
        let history = &self.history[self.slot(resource)];
        let changes = history.partition_point(|&v| v <= as_of);
        changes.checked_sub(1).map_or(0, |last| history[last])
    }

    /// The current version of `resource`.
    fn current_version(&self, resource: Resource) -> u64 {
        self.history[self.slot(resource)]
            .last()
            .copied()
            .unwrap_or(0)
    }

    fn availability(&self, i: usize) -> Availability {
        Availability {
            gpu_id: gpu_id(i),
            status: self.gpus[i].status,
            version: self.current_version(Resource::Gpu(i)),
        }
    }

    fn price(&self, t: usize) -> Price {
        Price {
            gpu_type: GPU_TYPES[t].0.to_owned(),
            cents_per_hour: self.prices[t],
            version: self.current_version(Resource::Price(t)),
        }
    }

    fn order_book(&self) -> OrderBook {
        let offers = self
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, gpu)| gpu.status == GpuStatus::Available)
            .map(|(i, gpu)| Offer {
                gpu_id: gpu_id(i),
                gpu_type: GPU_TYPES[gpu.gpu_type].0.to_owned(),
                provider: gpu.provider.clone(),
                cents_per_hour: self.prices[gpu.gpu_type],
            })
            .collect();
        OrderBook {
            offers,
            version: self.current_version(Resource::OrderBook),
        }
    }

    /// Makes one random change and returns it with the new global version.
    fn step(&mut self, rng: &mut Rng) -> (Change, u64) {
        let roll = rng.below(100);
        let change = match roll {
            0..35 => self.book(rng).or_else(|| self.cancel(rng)),
            35..70 => self.cancel(rng).or_else(|| self.book(rng)),
            70..90 => None,
            _ => self.maintenance(rng),
        };
        let change = change.unwrap_or_else(|| self.reprice(rng));
        (change, self.version)
    }

    /// Records a change touching `resources`; the new global version.
    fn commit(&mut self, resources: &[Resource]) -> u64 {
        self.version += 1;
        for &resource in resources {
            let slot = self.slot(resource);
            self.history[slot].push(self.version);
        }
        self.version
    }

    /// A random GPU in `status`, if any.
    fn find(&self, rng: &mut Rng, status: GpuStatus) -> Option<usize> {
        let n = self.gpus.len();
        let start = rng.below(n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.gpus[i].status == status)
    }

    fn book(&mut self, rng: &mut Rng) -> Option<Change> {
        let i = self.find(rng, GpuStatus::Available)?;
        let booking_id = format!("b-{}", self.next_booking);
        self.next_booking += 1;
        self.gpus[i].status = GpuStatus::Booked;
        self.gpus[i].booking = Some(booking_id.clone());
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Booked {
            booking_id,
            gpu_id: gpu_id(i),
        })
    }

    fn cancel(&mut self, rng: &mut Rng) -> Option<Change> {
        let i = self.find(rng, GpuStatus::Booked)?;
        let booking_id = self.gpus[i].booking.take().unwrap_or_default();
        self.gpus[i].status = GpuStatus::Available;
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Cancelled {
            booking_id,
            gpu_id: gpu_id(i),
        })
    }

    /// Takes an available GPU offline or brings an offline one back (half the time each way,
    /// falling back to the other).
    fn maintenance(&mut self, rng: &mut Rng) -> Option<Change> {
        let (from, to) = if rng.below(2) == 0 {
            (GpuStatus::Available, GpuStatus::Offline)
        } else {
            (GpuStatus::Offline, GpuStatus::Available)
        };
        let (i, to) = match self.find(rng, from) {
            Some(i) => (i, to),
            None => (self.find(rng, to)?, from),
        };
        self.gpus[i].status = to;
        self.commit(&[Resource::Gpu(i), Resource::OrderBook]);
        Some(Change::Maintenance {
            gpu_id: gpu_id(i),
            status: to,
        })
    }

    /// Moves a random GPU type's price by 1 to 20 cents, never below 10 cents.
    fn reprice(&mut self, rng: &mut Rng) -> Change {
        let t = rng.below(GPU_TYPES.len());
        let delta = 1 + rng.below(20) as u64;
        let old = self.prices[t];
        let new = if rng.below(2) == 0 || old < 10 + delta {
            old + delta
        } else {
            old - delta
        };
        self.prices[t] = new;
        // The order book lists prices, so it changes too (though pricing_updated does not route
        // to its namespace).
        self.commit(&[Resource::Price(t), Resource::OrderBook]);
        Change::Repriced {
            gpu_type: GPU_TYPES[t].0,
            cents_per_hour: new,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, well-mixed PRNG; plenty for picking
/// workload actions. Deterministic for a given seed.
#[derive(Debug, Clone)]
struct Rng {
    state: u64,
}

impl Rng {
    /// The golden-ratio increment of SplitMix64.
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for task number `stream` of a run seeded with `seed`.
    fn stream(seed: u64, stream: u64) -> Self {
        Self::new(mix(seed ^ mix(stream.wrapping_add(Self::GAMMA))))
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix(self.state)
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is negligible for small `n`).
    ///
    /// # Panics
    /// If `n` is 0.
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0) has no values to pick from");
        let scaled = (u128::from(self.next_u64()) * n as u128) >> 64;
        // `scaled < n`, so it fits.
        scaled as usize
    }
}

/// The SplitMix64 output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Locks `m`, ignoring poisoning: a panicking task is reported through its join handle, and the
/// data behind these locks stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn splitmix_matches_the_reference_and_is_deterministic() {
        // Reference outputs of SplitMix64 seeded with 0.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);

        let draw = |seed, stream| {
            let mut rng = Rng::stream(seed, stream);
            (0..64).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, 3), draw(42, 3));
        assert_ne!(draw(42, 3), draw(42, 4));
        assert_ne!(draw(42, 3), draw(43, 3));
        assert!(draw(7, 0).iter().all(|&n| n < 1000));
    }

    #[test]
    fn parse_defaults_flags_and_help() {
        assert_eq!(parse(&[]).unwrap(), DemoArgs::default());
        let parsed = parse(&args(&[
            "--duration",
            "3",
            "--nodes=1",
            "--gpus",
            "10",
            "--readers",
            "2",
            "--seed",
            "0",
        ]))
        .unwrap();
        assert_eq!(
            parsed,
            DemoArgs {
                duration: Duration::from_secs(3),
                nodes: 1,
                gpus: 10,
                readers: 2,
                seed: 0,
                backend: Backend::Embedded,
                help: false
            }
        );
        assert!(parse(&args(&["--help"])).unwrap().help);
        assert!(parse(&args(&["--nodes", "2", "-h"])).unwrap().help);
    }

    #[test]
    fn parse_redis_with_and_without_a_url() {
        let backend = |list: &[&str]| parse(&args(list)).unwrap().backend;
        assert_eq!(backend(&[]), Backend::Embedded);
        assert_eq!(backend(&["--redis"]), Backend::PrivateRedis);
        // A flag after `--redis` is the next flag, not its URL.
        let parsed = parse(&args(&["--redis", "--duration", "5"])).unwrap();
        assert_eq!(parsed.backend, Backend::PrivateRedis);
        assert_eq!(parsed.duration, Duration::from_secs(5));
        assert_eq!(
            backend(&[
                "--redis",
                "redis://edge:s3cret@10.0.0.5:6380/2",
                "--nodes",
                "2"
            ]),
            Backend::Redis("redis://edge:s3cret@10.0.0.5:6380/2".to_owned())
        );
        assert_eq!(
            backend(&["--redis=rediss://h:6380"]),
            Backend::Redis("rediss://h:6380".to_owned())
        );
        assert_eq!(
            backend(&["--duration", "2", "--redis"]),
            Backend::PrivateRedis
        );
    }

    #[test]
    fn parse_rejects_a_redis_url_without_scheme_and_without_echoing_it() {
        let err = parse(&args(&["--redis", "edge:s3cret@10.0.0.5:6380"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`--redis` expects a URL such as redis://"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        assert!(parse(&args(&["--redis="])).is_err());
        assert!(parse(&args(&["--redis", "redis://"])).is_err());
    }

    #[test]
    fn the_usage_documents_redis() {
        assert!(USAGE.contains("--redis [URL]"));
        assert!(USAGE.contains("private redis-server"));
    }

    #[test]
    fn on_path_finds_executables_only() {
        assert!(on_path("sh"));
        assert!(!on_path("edge-cache-no-such-program"));
    }

    #[test]
    fn parse_rejects_bad_input_clearly() {
        let err = |list: &[&str]| parse(&args(list)).unwrap_err().to_string();
        assert!(err(&["--bogus"]).contains("unknown argument `--bogus`"));
        assert!(err(&["extra"]).contains("unknown argument `extra`"));
        assert!(err(&["--nodes"]).contains("`--nodes` needs a value"));
        assert!(err(&["--nodes", "0"]).contains("at least 1"));
        assert!(err(&["--duration", "0"]).contains("at least 1"));
        assert!(err(&["--gpus", "many"]).contains("expects a whole number"));
        assert!(err(&["--help=yes"]).contains("unknown argument"));
    }

    #[test]
    fn version_of_answers_from_the_history() {
        let mut market = Market::new(3, &mut Rng::new(1));
        let gpu = Resource::Gpu(1);
        assert_eq!(market.commit(&[gpu, Resource::OrderBook]), 1);
        assert_eq!(market.commit(&[Resource::Price(0)]), 2);
        assert_eq!(market.commit(&[Resource::Gpu(0)]), 3);
        assert_eq!(market.commit(&[gpu]), 4);
        assert_eq!(market.version_of(gpu, 0), 0);
        assert_eq!(market.version_of(gpu, 1), 1);
        assert_eq!(market.version_of(gpu, 3), 1);
        assert_eq!(market.version_of(gpu, 4), 4);
        assert_eq!(market.version_of(gpu, u64::MAX), 4);
        assert_eq!(market.version_of(Resource::Price(0), 1), 0);
        assert_eq!(market.version_of(Resource::Price(0), 2), 2);
        assert_eq!(market.version_of(Resource::Price(3), 4), 0);
        assert_eq!(market.current_version(Resource::OrderBook), 1);
    }

    #[test]
    fn every_step_bumps_the_version_and_the_values_carry_it() {
        let mut rng = Rng::new(9);
        let mut market = Market::new(5, &mut rng);
        for expected in 1..=200 {
            let (change, version) = market.step(&mut rng);
            assert_eq!(version, expected);
            let data = change.notification(version).data().clone();
            assert_eq!(
                data.get("source_version").and_then(Value::as_u64),
                Some(version)
            );
            assert_eq!(
                market.order_book().version,
                version,
                "every change touches the order book"
            );
            if let Change::Booked { gpu_id, .. } | Change::Cancelled { gpu_id, .. } = &change {
                let i: usize = gpu_id.trim_start_matches("g-").parse::<usize>().unwrap() - 1;
                assert_eq!(market.availability(i).version, version);
            }
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(
            percentile(&mut samples, 50),
            Some(Duration::from_micros(50))
        );
        assert_eq!(
            percentile(&mut samples, 99),
            Some(Duration::from_micros(99))
        );
        assert_eq!(percentile(&mut [], 50), None);
        assert_eq!(micros(None), "-");
    }
}
