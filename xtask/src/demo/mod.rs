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
//! - **One writer task**: every ~2 ms it makes two changes back to back, each a booking, a
//!   cancellation, a price change or a GPU taken in or out of maintenance, and announces each
//!   through a random node in one of two ways, at random:
//!   - a notification, [`EdgeCache::notify`], carrying the market's new global version as
//!     `data.source_version`;
//!   - writes: the new value of every resource the change touched (the GPU's availability or
//!     the type's price, and the order book), each with [`EdgeCache::set_key`], one after the
//!     other.
//!
//!   A notification or write that fails is issued again, as a caller should, after 10 ms, then
//!   20, 40, ... up to six times; the writer moves on to the next change only once the call got
//!   through or it gave up.
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
//! Writes are judged by the same rule, "never older than what was already applied", where a
//! write is applied once the writer knows it landed: when a `set_key` call returned `Ok` (a write
//! given up on is never required, whatever its calls did). The writer records each such write of
//! resource R (its version, its node, the wall-clock time just before its first call, and the
//! audit-clock time it was recorded). Every call of one write writes the same value, and the
//! next write of R begins only after this one is recorded or given up. A read of R that started after that record requires at least its version if
//! - the read's node issued the write (`set_key` put the value in its L1 before returning), or
//! - the node had applied, before the read started, an event naming R's key whose timestamp is
//!   at or after the write began: the write's own announcement, or one of a later write (the
//!   writer writes one value at a time, so that one began after this one landed). Either way
//!   the node dropped its copy of the key after the write reached L2, and L2 holds it or
//!   something newer (fills of older loads are refused by their fence).
//!
//! The observer records, per resource, the newest timestamp of an applied event naming its key.
//! Event timestamps are the issuing node's wall clock; the writer reads the same clock the same
//! way just before the call, so the write's own event is never before it (on a host whose clock
//! is not stepped back during the run).
//!
//! Each value also carries a [`LoadStamp`] (which node's loader call or write produced it, and
//! when), so a stale read is reported with where its value came from: a load still in flight when
//! the read started, one already finished, or a write.
//!
//! The job fails if any read was stale, or if any read returned an error or the writer gave up
//! on a notification or write (with `--chaos`, errors other than stale reads are expected).
//!
//! [`LoadStamp`]: market::LoadStamp

mod audit;
mod chaos;
mod lagging;
mod market;
mod workload;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cache_core::{CacheKey, EventBus, L2Store, Namespaces};
use cache_edge::{EdgeCache, Observer, Stats};
use cache_memory::MemoryBus;
use cache_redis::{redact, RedisBus, RedisConfig, RedisL2};
use edge_cache_bench::percentile;
use test_support::RedisServer;

use audit::NodeAudit;
use lagging::LaggingBus;
use market::{lock, Kind, Market, Rng};
use workload::{read_loop, write_loop, World, Writes, CHANGES_PER_TICK, WRITE_EVERY};

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cargo xtask demo [OPTIONS]

Runs a simulated GPU marketplace (bookings, cancellations, price changes) against a fleet of
edge nodes, announcing each change by a notification or by writing the new values with set_key,
and audits every read: a read is stale if it returned a value older than an invalidation its
node had applied, or than a write that had landed and that its node had issued or seen
announced, before the read started. Exits non-zero on any stale read or any error. By default
the nodes share the embedded in-process L2 and event bus; with --redis they run on real Redis.

Options:
      --duration SECS  how long the workload runs [default: 5]
      --nodes N        edge nodes, edge-1 .. edge-N [default: 3]
      --gpus N         GPUs in the market [default: 200]
      --readers N      reader tasks per node [default: 4]
      --seed N         seed of the workload's random choices [default: 42]
      --lag MS         the last node hears every event MS milliseconds late, as a node in a
                       distant region does; 0 for none [default: 3]
      --chaos          inject faults every 250 ms: on the private redis-server, kill its
                       subscriber and command connections by turns (CLIENT KILL); embedded,
                       take the bus and L2 away for 20 ms by turns. Failed calls are then
                       expected: the writer issues them again and reports them; only
                       stale reads fail the run. Not with
                       --redis URL (it would kill other clients of that server)
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
    /// How late the last node hears events (with more than one node); zero for not at all.
    pub lag: Duration,
    /// Inject faults while the workload runs (see [`chaos`]).
    pub chaos: bool,
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
            lag: Duration::from_millis(3),
            chaos: false,
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
        if flag == "--chaos" && inline.is_none() {
            parsed.chaos = true;
            continue;
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
            "--duration" | "--nodes" | "--gpus" | "--readers" | "--seed" | "--lag"
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
            "--lag" => parsed.lag = Duration::from_millis(number(flag, text, 0)?),
            _ => parsed.seed = number(flag, text, 0)?,
        }
    }
    if parsed.chaos && matches!(parsed.backend, Backend::Redis(_)) {
        bail!(
            "`--chaos` kills the server's client connections: use it with the private server \
             (`--redis` without a URL) or the embedded backends, not with `--redis URL`"
        );
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
/// (Redis unreachable included), a task panicked, a notification, write or read failed, or the
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

/// How long to wait, after the workload stops, for every node to apply every event: the
/// staleness bound, within which a node replays from the event log whatever it missed.
const SETTLE_TIMEOUT: Duration = cache_edge::DEFAULT_STALENESS_BOUND;

/// Regions given to the nodes in turn (reported in stats and written on events).
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

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
    if args.chaos {
        println!(
            "chaos: a fault every {} ms ({})",
            chaos::EVERY.as_millis(),
            if redis.is_some() {
                "CLIENT KILL of the subscribers, then of the command connections"
            } else {
                "the bus, then L2, away for 20 ms"
            }
        );
    }
    if let Some(lagging) = lagging_node(&args) {
        println!(
            "edge-{} hears every event {} ms late, as a node in a distant region does",
            lagging + 1,
            args.lag.as_millis()
        );
    }
    println!(
        "writer: {CHANGES_PER_TICK} changes (bookings, cancellations, price or maintenance \
         changes) every {} ms, each announced through a random node by a notification or by \
         set_key writes of the new values",
        WRITE_EVERY.as_millis()
    );

    let nodes = start_nodes(
        args.nodes,
        redis.map(|r| &r.config),
        lagging_node(&args).map(|i| (i, args.lag)),
        &world,
    )
    .await?;
    let chaos = match (args.chaos, redis) {
        (false, _) => None,
        (true, None) => Some(chaos::Target::Embedded),
        (true, Some(setup)) => {
            let client =
                redis::Client::open(setup.config.url()).context("the chaos task's connection")?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .context("the chaos task cannot connect to Redis")?;
            Some(chaos::Target::Redis(conn))
        }
    };
    let outcome = workload(&world, &nodes, &args, chaos).await;
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

/// Starts `count` nodes, on Redis with `redis` and on the embedded backends without, each
/// observed by a [`NodeAudit`] that knows the keys of `world`'s resources; on failure shuts down
/// those already started.
async fn start_nodes(
    count: usize,
    redis: Option<&RedisConfig>,
    lagging: Option<(usize, Duration)>,
    world: &World,
) -> anyhow::Result<Vec<Node>> {
    let namespaces = Namespaces::defaults();
    let mut key_namespaces = Vec::with_capacity(Kind::ALL.len());
    for kind in Kind::ALL {
        let config = namespaces
            .get(kind.namespace())
            .with_context(|| format!("the default namespaces lack {:?}", kind.namespace()))?;
        key_namespaces.push(config.key_namespace.clone());
    }
    let mut slots = HashMap::with_capacity(world.resources.len());
    for (slot, resource) in world.resources.iter().enumerate() {
        let key = CacheKey::derive(
            &key_namespaces[resource.kind() as usize],
            &world.params[slot],
        )
        .with_context(|| format!("cannot derive the key of {}", resource.label()))?;
        slots.insert(key.as_str().to_owned(), slot);
    }
    let slots = Arc::new(slots);
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    for i in 0..count {
        let audit = Arc::new(NodeAudit::new(
            i,
            key_namespaces.clone(),
            Arc::clone(&slots),
        ));
        let node_id = audit.node_id.clone();
        let observer: Arc<dyn Observer> = audit.clone();
        let builder = EdgeCache::builder()
            .node_id(node_id.clone())
            .region(REGIONS[i % REGIONS.len()])
            .observer(observer);
        let built = async {
            let (builder, bus) = match redis {
                None => (builder, MemoryBus::global() as Arc<dyn EventBus>),
                Some(config) => {
                    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await?);
                    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await?);
                    (builder.l2(l2), bus)
                }
            };
            let bus = match lagging {
                Some((node, delay)) if node == i => Arc::new(LaggingBus::new(bus, delay)),
                _ => bus,
            };
            builder.bus(bus).build().await
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

/// The node that hears events late (the last one), if `--lag` is set and there is more than one
/// node.
fn lagging_node(args: &DemoArgs) -> Option<usize> {
    (args.nodes > 1 && !args.lag.is_zero()).then(|| args.nodes - 1)
}

/// One edge node and its audit.
struct Node {
    cache: EdgeCache,
    audit: Arc<NodeAudit>,
}

/// What the workload left behind for the report.
struct Outcome {
    /// Market changes made.
    writes: u64,
    /// How the writer announced them.
    writer: Writes,
    /// Nodes that had not applied every event when the settle timeout passed.
    unsettled: Vec<String>,
    elapsed: Duration,
    /// Stale reads served by a loader call still running when the read started.
    stale_in_flight: u64,
    /// Stale reads served by a loader call that had returned before the read started.
    stale_finished: u64,
    /// Stale reads served by a value the writer wrote.
    stale_written: u64,
    /// What `--chaos` injected, and whether on Redis.
    chaos: Option<(chaos::Injected, bool)>,
}

/// Runs the readers and the writer for `args.duration`, printing progress once per second, then
/// waits (bounded) for every node to apply every event.
async fn workload(
    world: &Arc<World>,
    nodes: &[Node],
    args: &DemoArgs,
    chaos: Option<chaos::Target>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let chaos = chaos.map(|target| {
        let on_redis = matches!(target, chaos::Target::Redis(_));
        (
            on_redis,
            tokio::spawn(chaos::chaos_loop(Arc::clone(world), target)),
        )
    });
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
    let writer = writer.await.context("the writer task panicked")?;
    let chaos = match chaos {
        Some((on_redis, task)) => Some((task.await.context("the chaos task panicked")?, on_redis)),
        None => None,
    };
    let elapsed = started.elapsed();
    let writes = world.writes.load(Ordering::SeqCst);
    // Every node applies every notification (its issuer included) and the announcement of
    // every write another node made (a write's issuer ignores its own).
    let sets_ok: u64 = writer.sets_ok_by_node.iter().sum();
    let expected: Vec<u64> = writer
        .sets_ok_by_node
        .iter()
        .map(|own| writer.notified + sets_ok - own)
        .collect();
    let unsettled = settle(nodes, &expected).await;
    Ok(Outcome {
        writes,
        writer,
        unsettled,
        elapsed,
        stale_in_flight: world.stale_in_flight.load(Ordering::SeqCst),
        stale_finished: world.stale_finished.load(Ordering::SeqCst),
        stale_written: world.stale_written.load(Ordering::SeqCst),
        chaos,
    })
}

/// Waits until every node has applied at least its `expected` number of events (by node) or
/// [`SETTLE_TIMEOUT`] passes; returns the ids of the nodes still behind.
async fn settle(nodes: &[Node], expected: &[u64]) -> Vec<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let behind: Vec<String> = nodes
            .iter()
            .zip(expected)
            .filter(|(n, &events)| n.cache.stats().events_applied < events)
            .map(|(n, _)| n.cache.node_id().to_owned())
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
        "{:<8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>6} {:>6}",
        "node",
        "reads",
        "L1 hits",
        "L2 hits",
        "loads",
        "fenced",
        "events",
        "replayed",
        "drops",
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
            "{:<8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>6} {:>6}",
            s.node_id,
            a.reads.load(Ordering::Relaxed),
            s.l1_hits,
            s.l2_hits,
            s.loads,
            s.fills_fenced,
            s.events_applied,
            s.events_replayed,
            s.resyncs + s.drops_trimmed + s.drops_new_epoch + s.drops_regressed,
            micros(percentile(&mut lags, 50)),
            micros(percentile(&mut lags, 99)),
            a.stale.load(Ordering::Relaxed),
            a.errors.load(Ordering::Relaxed),
        );
        stats.push(s);
    }
    println!(
        "(replayed: events read back from the event log, which pub/sub did not deliver in time; \
         drops: times a namespace's L1 was dropped because its log could not replay what was \
         missed, or the bus lost events with no log; lag: µs from an event's timestamp until \
         another node applied it)"
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
    let w = &outcome.writer;
    println!(
        "{} set writes (set_key, across {}){}; {} changes announced by notification{}",
        w.sets,
        plural(nodes.len(), "node"),
        retries(w.set_failures, w.set_errors),
        w.notified + w.notify_errors,
        retries(w.notify_failures, w.notify_errors),
    );
    if let Some((injected, on_redis)) = &outcome.chaos {
        println!("{}", injected.describe(*on_redis));
    }
    let mut problems = Vec::new();
    if outcome.unsettled.is_empty() {
        println!(
            "every node applied every event ({} read back from the event log)",
            stats.iter().map(|s| s.events_replayed).sum::<u64>()
        );
    } else {
        problems.push(format!(
            "{} had not applied every event {} ms after the workload stopped",
            outcome.unsettled.join(", "),
            SETTLE_TIMEOUT.as_millis()
        ));
    }
    if errors > 0 {
        problems.push(format!("{errors} reads failed"));
    }
    if w.notify_errors > 0 {
        problems.push(format!(
            "{} notifications still failed when the writer gave up",
            w.notify_errors
        ));
    }
    if w.set_errors > 0 {
        problems.push(format!(
            "{} set_key writes still failed when the writer gave up",
            w.set_errors
        ));
    }
    if stale > 0 {
        let also = if problems.is_empty() {
            String::new()
        } else {
            format!("; also {}", problems.join(", "))
        };
        let written = if outcome.stale_written > 0 {
            format!(", {} by a set_key write", outcome.stale_written)
        } else {
            String::new()
        };
        println!(
            "freshness audit FAILED: {stale} of {reads} reads were stale ({} served by a loader \
             call still running when the read started, {} by one that had returned{written}){also}",
            outcome.stale_in_flight, outcome.stale_finished
        );
        bail!("freshness audit failed: {stale} stale reads{also}");
    }
    if !problems.is_empty() && outcome.chaos.is_none() {
        let problems = problems.join(", ");
        println!("demo FAILED: {problems} (0 stale reads)");
        bail!("demo failed: {problems}");
    }
    if !problems.is_empty() {
        println!("under --chaos, as expected: {}", problems.join(", "));
    }
    println!(
        "freshness audit passed: 0 stale reads in {reads} reads across {}",
        plural(nodes.len(), "node")
    );
    Ok(())
}

/// What became of the calls that failed: `""` if none did, else how many failures there were
/// and whether issuing the calls again got every change through.
fn retries(failures: u64, gave_up: u64) -> String {
    match (failures, gave_up) {
        (0, _) => String::new(),
        (1, 0) => ", 1 call failed (it got through when issued again)".to_owned(),
        (f, 0) => format!(", {} (all got through when issued again)", plural_failed(f)),
        (f, g) => format!(
            ", {} ({g} still failing when the writer gave up)",
            plural_failed(f)
        ),
    }
}

/// `1 call failed`, `3 calls failed`.
fn plural_failed(n: u64) -> String {
    format!("{n} call{} failed", if n == 1 { "" } else { "s" })
}

/// `1 node`, `3 nodes`.
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A duration in whole microseconds, or `-` when there is none.
fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_micros().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_report_says_what_became_of_failed_calls() {
        assert_eq!(retries(0, 0), "");
        assert_eq!(
            retries(1, 0),
            ", 1 call failed (it got through when issued again)"
        );
        assert_eq!(
            retries(6, 0),
            ", 6 calls failed (all got through when issued again)"
        );
        assert_eq!(
            retries(9, 1),
            ", 9 calls failed (1 still failing when the writer gave up)"
        );
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
            "--lag=0",
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
                lag: Duration::ZERO,
                chaos: false,
                backend: Backend::Embedded,
                help: false
            }
        );
        assert_eq!(lagging_node(&parsed), None, "one node cannot lag the fleet");
        let lagging = |list: &[&str]| lagging_node(&parse(&args(list)).unwrap());
        assert_eq!(lagging(&[]), Some(2), "the last of the default three");
        assert_eq!(lagging(&["--nodes", "5", "--lag", "10"]), Some(4));
        assert_eq!(lagging(&["--lag", "0"]), None);
        assert!(parse(&args(&["--help"])).unwrap().help);
        assert!(parse(&args(&["--nodes", "2", "-h"])).unwrap().help);
    }

    #[test]
    fn parse_chaos_only_where_it_harms_no_one_else() {
        assert!(parse(&args(&["--chaos"])).unwrap().chaos);
        assert!(parse(&args(&["--redis", "--chaos"])).unwrap().chaos);
        let err = parse(&args(&["--chaos", "--redis", "redis://10.0.0.5:6379"])).unwrap_err();
        assert!(err.to_string().contains("--redis URL"), "{err}");
        assert!(parse(&args(&["--chaos=1"])).is_err(), "takes no value");
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
