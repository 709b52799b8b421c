//! `cargo xtask bench`: what invalidating a whole namespace costs on Redis, edge-cache against
//! the seed, measured in one run on one private `redis-server`.
//!
//! # What runs
//!
//! 1. A private `redis-server` is started on a free loopback port, as the tests start theirs
//!    ([`test_support::RedisServer`]); it is killed when the benchmark ends, whatever happens.
//! 2. **Fill.** Database 0 gets `N` entries of the key namespace `gpu_avail` written exactly as
//!    [`RedisL2`] writes them at generation 0 (`ec:{gpu_avail}:0:<sha256 hex>`, an envelope
//!    without tags, a `PX` TTL; see the key layout at the top of `crates/cache-redis/src/l2.rs`),
//!    plus 100,000 entries of the unrelated namespace `historical`. Database 1 gets the same keys
//!    the way the seed stores them (`gpu_avail:<sha256 hex>` and `historical:<sha256 hex>`, JSON
//!    written with `SETEX`). Both fills are pipelined raw `SET`s in batches of 10,000, and one key
//!    of each kind is read back through [`RedisL2::get`] before anything is timed, so the layout
//!    is proven to be the one edge-cache reads.
//! 3. **Measure**, each operation through the same client and runtime:
//!    - edge-cache tag invalidation ([`RedisL2::invalidate_tag`]) of tags with 10, 1,000 and
//!      10,000 entries written through [`RedisL2::set`] among the `N`, and of a 1,000-entry tag in
//!      the 100,000-entry namespace, to show its cost follows the tag, not the namespace. The
//!      cases take turns, so that load from elsewhere on the machine falls on all of them alike;
//!    - edge-cache namespace invalidation ([`RedisL2::invalidate_namespace`], one `INCR` of the
//!      namespace's generation), 1,000 times, each followed by a `PING` round trip through
//!      [`RedisL2::ping`], the floor every command pays;
//!    - the seed's namespace invalidation, ported as it is in `edge_cache_manager.py`: `SCAN`
//!      with `MATCH gpu_avail:*` and `COUNT 100`, a `DEL` of every non-empty batch, until the
//!      cursor is 0. It deletes what it finds, so it runs once; then once more over the emptied
//!      namespace, which is the cost of walking the database alone.
//! 4. **Verify** that each invalidation did its job: entries read as absent through
//!    [`RedisL2::get`] afterwards, the unrelated namespace is intact, the seed deleted exactly the
//!    `N` keys. A failed check fails the command and nothing is written.
//! 5. **Report** one table (also as Markdown with `--write PATH`, a self-contained page with
//!    the machine, the redis-server version, the date and the command). Every figure comes from
//!    this run.
//!
//! The two layouts live in different databases of the same server so that each approach sees a
//! keyspace of the same size (`N` + 100,000 keys): `SCAN` walks the whole database, and the seed
//! would look slower still if it also had to walk edge-cache's keys.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context as _};
use cache_core::{CacheKey, L2Store, L2Write};
use cache_redis::{RedisConfig, RedisL2};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use test_support::RedisServer;

use crate::demo::percentile;

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cargo xtask bench [OPTIONS]

Measures namespace invalidation on a private redis-server: edge-cache's single INCR of the
namespace generation against the seed's SCAN MATCH ns:* COUNT 100 + DEL loop, with N entries in
the namespace and 100,000 unrelated keys beside them; also edge-cache's tag invalidation. Every
invalidation is checked for correctness afterwards. Needs redis-server on PATH; takes a few
minutes at the default size.

Options:
      --keys N      entries in the invalidated namespace (1_000_000 and 1,000,000 are
                    accepted) [default: 1000000]
      --write PATH  also write the results as a self-contained Markdown page to PATH
                    (docs/benchmarks.md is generated this way)
  -h, --help        print this help
";

/// Entries in the invalidated namespace unless `--keys` says otherwise.
pub const DEFAULT_KEYS: u64 = 1_000_000;

/// Entries of the unrelated namespace, in each layout.
const UNRELATED_KEYS: u64 = 100_000;

/// Keys per pipelined batch while filling.
const BATCH: u64 = 10_000;

/// The key namespace that is invalidated (the seed's GPU availability).
const TARGET_NS: &str = "gpu_avail";

/// The key namespace that must survive (the seed's historical data).
const UNRELATED_NS: &str = "historical";

/// TTL of every entry: long enough that nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);

/// Timed namespace invalidations, each followed by a timed `PING`.
const INCR_RUNS: usize = 1_000;

/// Untimed `PING`s that warm the connection up before the namespace invalidations.
const PING_RUNS: usize = 1_000;

/// Runs a row needs before its p99 is shown.
const P99_MIN_RUNS: usize = 100;

/// Concurrent `RedisL2::set` calls while writing tagged entries.
const WRITE_CONCURRENCY: usize = 64;

/// The database holding edge-cache's layout.
const EDGE_DB: u8 = 0;

/// The database holding the seed's layout.
const SEED_DB: u8 = 1;

/// Options of `cargo xtask bench`, from [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// Entries in the invalidated namespace (at least 1).
    pub keys: u64,
    /// Where to write the Markdown report, if anywhere.
    pub write: Option<PathBuf>,
    /// `--help` was given: the usage was printed and [`run`] does nothing.
    pub help: bool,
    /// The command line as typed, for the report: `cargo xtask bench --keys 1000`.
    pub command: String,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            keys: DEFAULT_KEYS,
            write: None,
            help: false,
            command: "cargo xtask bench".to_owned(),
        }
    }
}

/// Parses the arguments that follow `bench`. Flags take their value as the next argument or
/// after `=`. `--help` prints [`USAGE`] and returns at once with [`BenchArgs::help`] set.
///
/// # Errors
/// An unknown argument, a flag without its value, or a `--keys` that is not a whole number of at
/// least 1.
pub fn parse(args: &[String]) -> anyhow::Result<BenchArgs> {
    let mut parsed = BenchArgs {
        command: command_line(args),
        ..BenchArgs::default()
    };
    let mut rest = args.iter();
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
        if !matches!(flag, "--keys" | "--write") {
            bail!(
                "unknown argument `{arg}` for `cargo xtask bench` (see `cargo xtask bench --help`)"
            );
        }
        let value = match inline {
            Some(value) => value,
            None => rest.next().map(String::as_str).ok_or_else(|| {
                anyhow!("`{flag}` needs a value (see `cargo xtask bench --help`)")
            })?,
        };
        if flag == "--keys" {
            parsed.keys = key_count(value)?;
        } else {
            ensure!(!value.is_empty(), "`--write` needs a path");
            parsed.write = Some(PathBuf::from(value));
        }
    }
    Ok(parsed)
}

/// A `--keys` value: a whole number of at least 1, digits optionally grouped with `_` or `,`.
fn key_count(text: &str) -> anyhow::Result<u64> {
    let digits: String = text.chars().filter(|c| !matches!(c, '_' | ',')).collect();
    let n: u64 = digits
        .parse()
        .with_context(|| format!("`--keys` expects a whole number, got `{text}`"))?;
    ensure!(n >= 1, "`--keys` must be at least 1, got {n}");
    Ok(n)
}

/// `cargo xtask bench` and `args`, each quoted for a POSIX shell where it needs to be.
fn command_line(args: &[String]) -> String {
    let mut line = "cargo xtask bench".to_owned();
    for arg in args {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            let _ = write!(line, " {arg}");
        } else {
            let _ = write!(line, " '{}'", arg.replace('\'', r"'\''"));
        }
    }
    line
}

/// Runs the benchmark on a private `redis-server`, prints progress and the table, and writes the
/// Markdown page when `args.write` is set. Returns at once when `args.help` is set.
///
/// # Errors
/// When `redis-server` is not installed, a Redis command fails, a correctness check fails, or
/// the page cannot be written.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.help {
        return Ok(());
    }
    let server = crate::demo::start_redis_server()
        .context("`cargo xtask bench` runs on a private redis-server")?;
    println!(
        "edge-cache bench: namespace invalidation with {} entries in `{TARGET_NS}` and {} in \
         `{UNRELATED_NS}`, on a private redis-server on 127.0.0.1:{} (pid {})",
        thousands(args.keys),
        thousands(UNRELATED_KEYS),
        server.port(),
        server.pid()
    );
    // One thread: every round trip is then the command and the client's own work, without
    // wake-ups handed between worker threads (which on this 2-core box also share the CPU with
    // redis-server). All operations run on it, so the ratios stay fair.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(bench(&args, &server));
    drop(runtime);
    drop(server);
    let report = report?;
    println!();
    print!("{}", report.text());
    if let Some(path) = &args.write {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One row of the results table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    operation: String,
    /// Entries the invalidated namespace held when the operation ran.
    namespace_entries: u64,
    /// Keys in the whole database (`DBSIZE`) when the operation ran.
    database_keys: u64,
    /// Entries carrying the invalidated tag; 0 for other operations.
    tagged: u64,
    /// One duration per run.
    samples: Vec<Duration>,
}

impl Row {
    fn median(&self) -> Duration {
        percentile(&mut self.samples.clone(), 50).unwrap_or_default()
    }

    /// The 99th percentile, from rows of at least [`P99_MIN_RUNS`] runs (below that it would
    /// only be the maximum).
    fn p99(&self) -> Option<Duration> {
        (self.samples.len() >= P99_MIN_RUNS)
            .then(|| percentile(&mut self.samples.clone(), 99))
            .flatten()
    }
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    command: String,
    keys: u64,
    cpu: String,
    cores: usize,
    redis_version: String,
    date: String,
    fill: Duration,
    ping: Row,
    tags: Vec<Row>,
    /// The 1,000-entry tag in the unrelated namespace.
    tag_elsewhere: Row,
    incr: Row,
    seed: Row,
    seed_round_trips: (u64, u64),
    /// The seed's loop over the namespace once emptied: the cost of the walk alone.
    seed_empty: Row,
    /// Correctness checks that passed, as sentences.
    checks: Vec<String>,
}

/// The benchmark proper; see the module docs.
async fn bench(args: &BenchArgs, server: &RedisServer) -> anyhow::Result<Report> {
    let n = args.keys;
    let url = |db: u8| format!("redis://127.0.0.1:{}/{db}", server.port());
    let l2 = RedisL2::connect(&RedisConfig::new(url(EDGE_DB))).await?;
    let mut edge = connect(&url(EDGE_DB)).await?;
    let mut seed = connect(&url(SEED_DB)).await?;
    let redis_version = redis_version(&mut edge).await?;
    let mut checks = Vec::new();

    // Fill both layouts.
    let started = Instant::now();
    fill(&mut edge, &mut seed, TARGET_NS, n).await?;
    fill(&mut edge, &mut seed, UNRELATED_NS, UNRELATED_KEYS).await?;
    let fill_time = started.elapsed();
    let expected = n + UNRELATED_KEYS;
    let (edge_keys, seed_keys) = (dbsize(&mut edge).await?, dbsize(&mut seed).await?);
    ensure!(
        edge_keys == expected && seed_keys == expected,
        "after the fill the databases hold {edge_keys} and {seed_keys} keys, expected {expected}"
    );
    let first = entry_key(TARGET_NS, 0)?;
    let last = entry_key(TARGET_NS, n - 1)?;
    let unrelated = entry_key(UNRELATED_NS, 0)?;
    for (key, i) in [(&first, 0), (&last, n - 1)] {
        ensure!(
            read(&l2, key).await?.as_deref() == Some(value(TARGET_NS, i).as_bytes()),
            "RedisL2::get does not read back the raw-filled entry {key}: \
             the fill's layout is not edge-cache's"
        );
    }
    ensure!(
        read(&l2, &unrelated).await?.is_some(),
        "RedisL2::get does not read back {unrelated}"
    );
    println!(
        "filled {} keys into each database in {}",
        thousands(expected),
        duration(fill_time)
    );
    checks.push(format!(
        "the raw-filled entries read back through `RedisL2::get` \
         (keys `ec:{{{TARGET_NS}}}:0:<hex>`), \
         so the fill is edge-cache's layout; each database held {} keys",
        thousands(expected)
    ));

    // Tag invalidation, at generation 0 among the N entries and in the unrelated namespace. The
    // cases take turns, each spread over the whole phase, so that load from elsewhere on the
    // machine falls on all of them alike.
    let mut cases = vec![
        TagCase::new(TARGET_NS, n, 10, 100)?,
        TagCase::new(TARGET_NS, n, 1_000, 20)?,
        TagCase::new(TARGET_NS, n, 10_000, 5)?,
        TagCase::new(UNRELATED_NS, UNRELATED_KEYS, 1_000, 20)?,
    ];
    let rounds = cases.iter().map(|c| c.runs).max().unwrap_or(0);
    println!(
        "timing tag invalidation: {} rounds, \
         tagged entries written through RedisL2::set before each",
        rounds
    );
    for round in 0..rounds {
        for case in &mut cases {
            if round % (rounds / case.runs) == 0 && case.samples.len() < case.runs {
                case.round(&l2, &mut edge).await?;
            }
        }
    }
    for case in &cases {
        ensure!(
            read(&l2, &case.keys[0]).await?.is_none(),
            "a tagged entry still reads after its tag was invalidated"
        );
    }
    ensure!(
        read(&l2, &first).await?.is_some() && read(&l2, &unrelated).await?.is_some(),
        "an untagged entry disappeared during tag invalidation"
    );
    checks.push(format!(
        "after each tag invalidation, `invalidate_tag` reported exactly the tagged entries \
         removed, a tagged entry read as absent and untagged entries of `{TARGET_NS}` and \
         `{UNRELATED_NS}` still read"
    ));
    let tag_elsewhere = cases.pop().map(TagCase::row).context("no tag case")?;
    let tags: Vec<Row> = cases.into_iter().map(TagCase::row).collect();
    for row in tags.iter().chain([&tag_elsewhere]) {
        println!("{}: median {}", row.operation, duration(row.median()));
    }

    // Namespace invalidation (one INCR each), in turn with PING, the round-trip floor.
    for _ in 0..PING_RUNS {
        l2.ping().await?;
    }
    let database_keys = dbsize(&mut edge).await?;
    let mut pings = Vec::with_capacity(INCR_RUNS);
    let mut incrs = Vec::with_capacity(INCR_RUNS);
    for _ in 0..INCR_RUNS {
        let t = Instant::now();
        l2.ping().await?;
        pings.push(t.elapsed());
        let t = Instant::now();
        l2.invalidate_namespace(TARGET_NS).await?;
        incrs.push(t.elapsed());
    }
    let ping = Row {
        operation: "PING round trip (`RedisL2::ping`), the floor".to_owned(),
        namespace_entries: n,
        database_keys,
        tagged: 0,
        samples: pings,
    };
    let incr = Row {
        operation: "edge-cache namespace invalidation (`invalidate_namespace`: one INCR)"
            .to_owned(),
        namespace_entries: n,
        database_keys,
        tagged: 0,
        samples: incrs,
    };
    println!(
        "namespace invalidation (INCR): median {}; PING: median {}",
        duration(incr.median()),
        duration(ping.median())
    );
    ensure!(
        read(&l2, &first).await?.is_none() && read(&l2, &last).await?.is_none(),
        "an entry of `{TARGET_NS}` still reads after its namespace was invalidated"
    );
    ensure!(
        read(&l2, &unrelated).await?.as_deref() == Some(value(UNRELATED_NS, 0).as_bytes()),
        "an entry of `{UNRELATED_NS}` no longer reads after `{TARGET_NS}` was invalidated"
    );
    let generation: u64 = redis::cmd("GET")
        .arg(format!("ec:{{{TARGET_NS}}}:g"))
        .query_async(&mut edge)
        .await?;
    ensure!(
        generation == INCR_RUNS as u64,
        "the generation of `{TARGET_NS}` is {generation} after {INCR_RUNS} invalidations"
    );
    checks.push(format!(
        "after the namespace invalidations, entries of `{TARGET_NS}` read as absent through \
         `RedisL2::get`, an entry of `{UNRELATED_NS}` still read with its value, and the \
         generation was {INCR_RUNS}; the {} invalidated entries were not deleted ({} keys in the \
         database): they are unreachable and leave on their TTL",
        thousands(n),
        thousands(dbsize(&mut edge).await?)
    ));

    // The seed's way, once: it deletes what it finds. Then once more over the emptied
    // namespace: what the walk alone costs.
    let database_keys = dbsize(&mut seed).await?;
    println!(
        "running the seed's SCAN MATCH {TARGET_NS}:* COUNT 100 + DEL over {} keys (one run)",
        thousands(database_keys)
    );
    let full = seed_invalidate(&mut seed, TARGET_NS).await?;
    println!("seed SCAN+DEL: {}", duration(full.time));
    let left = dbsize(&mut seed).await?;
    let unrelated_seed: bool = redis::cmd("EXISTS")
        .arg(unrelated.as_str())
        .query_async(&mut seed)
        .await?;
    ensure!(
        full.deleted == n && left == UNRELATED_KEYS && unrelated_seed,
        "the seed's SCAN+DEL deleted {} keys (expected {n}) \
         and left {left} (expected {UNRELATED_KEYS})",
        full.deleted
    );
    let empty = seed_invalidate(&mut seed, TARGET_NS).await?;
    println!(
        "seed SCAN+DEL of the emptied namespace: {}",
        duration(empty.time)
    );
    ensure!(
        empty.deleted == 0 && dbsize(&mut seed).await? == UNRELATED_KEYS,
        "the seed's SCAN+DEL of an empty namespace deleted {} keys",
        empty.deleted
    );
    checks.push(format!(
        "the seed's loop deleted exactly the {} `{TARGET_NS}:*` keys in {} SCAN and {} DEL round \
         trips and left the {} `{UNRELATED_NS}:*` keys; run again, it deleted nothing in {} SCAN \
         round trips",
        thousands(n),
        thousands(full.scans),
        thousands(full.dels),
        thousands(left),
        thousands(empty.scans),
    ));
    let seed_row = Row {
        operation: format!("seed: `SCAN MATCH {TARGET_NS}:* COUNT 100` + `DEL` until cursor 0"),
        namespace_entries: n,
        database_keys,
        tagged: 0,
        samples: vec![full.time],
    };
    let seed_empty_row = Row {
        operation: "seed: the same loop again, the namespace now empty".to_owned(),
        namespace_entries: 0,
        database_keys: left,
        tagged: 0,
        samples: vec![empty.time],
    };

    Ok(Report {
        command: args.command.clone(),
        keys: n,
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        redis_version,
        date: utc_date(SystemTime::now()),
        fill: fill_time,
        ping,
        tags,
        tag_elsewhere,
        incr,
        seed: seed_row,
        seed_round_trips: (full.scans, full.dels),
        seed_empty: seed_empty_row,
        checks,
    })
}

/// What one run of the seed's invalidation loop did.
struct SeedRun {
    time: Duration,
    scans: u64,
    dels: u64,
    deleted: u64,
}

/// The seed's L2 namespace invalidation, as `edge_cache_manager.py` runs it (in
/// `invalidate_cache` and again on every receiving node): `SCAN cursor MATCH ns:* COUNT 100`,
/// `DEL` of every non-empty batch, until the cursor is 0. Timed from the first `SCAN` to the last
/// reply.
async fn seed_invalidate(conn: &mut MultiplexedConnection, ns: &str) -> anyhow::Result<SeedRun> {
    let pattern = format!("{ns}:*");
    let (mut scans, mut dels, mut deleted) = (0_u64, 0_u64, 0_u64);
    let mut cursor: u64 = 0;
    let t = Instant::now();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await?;
        scans += 1;
        if !keys.is_empty() {
            let removed: u64 = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
            dels += 1;
            deleted += removed;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(SeedRun {
        time: t.elapsed(),
        scans,
        dels,
        deleted,
    })
}

/// One tag invalidation case: `size` entries of `ns` tagged `gpu:bench-SIZE`, written and
/// invalidated `runs` times.
struct TagCase {
    ns: &'static str,
    /// Untagged entries of `ns` beside the tagged ones.
    others: u64,
    tag: String,
    keys: Vec<CacheKey>,
    runs: usize,
    database_keys: u64,
    samples: Vec<Duration>,
}

impl TagCase {
    fn new(ns: &'static str, others: u64, size: u64, runs: usize) -> anyhow::Result<Self> {
        let tag = format!("gpu:bench-{size}");
        let keys = (0..size)
            .map(|j| CacheKey::derive(ns, &serde_json::json!({"tagged": &tag, "n": j})))
            .collect::<cache_core::Result<Vec<_>>>()?;
        Ok(Self {
            ns,
            others,
            tag,
            keys,
            runs,
            database_keys: 0,
            samples: Vec::with_capacity(runs),
        })
    }

    /// Writes the tagged entries through [`RedisL2::set`], then times their
    /// [`RedisL2::invalidate_tag`] and checks it removed exactly them.
    async fn round(
        &mut self,
        l2: &RedisL2,
        edge: &mut MultiplexedConnection,
    ) -> anyhow::Result<()> {
        let written: Vec<cache_core::Result<bool>> =
            futures_util::stream::iter(self.keys.iter().map(|key| {
                let write = L2Write::new(key.clone(), b"{\"tagged\":true}".to_vec(), TTL)
                    .tags(vec![self.tag.clone()]);
                l2.set(write)
            }))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for result in written {
            ensure!(
                result?,
                "an unfenced RedisL2::set reported that it wrote nothing"
            );
        }
        self.database_keys = dbsize(edge).await?;
        let t = Instant::now();
        let removed = l2.invalidate_tag(self.ns, &self.tag).await?;
        self.samples.push(t.elapsed());
        let size = self.keys.len() as u64;
        ensure!(
            removed == size,
            "invalidate_tag({}, {}) removed {removed} entries, expected {size}",
            self.ns,
            self.tag
        );
        Ok(())
    }

    fn row(self) -> Row {
        let size = self.keys.len() as u64;
        Row {
            operation: format!(
                "edge-cache tag invalidation (`invalidate_tag`), {} tagged entries{}",
                thousands(size),
                if self.ns == TARGET_NS {
                    String::new()
                } else {
                    format!(", in `{}`", self.ns)
                }
            ),
            namespace_entries: self.others + size,
            database_keys: self.database_keys,
            tagged: size,
            samples: self.samples,
        }
    }
}

/// Writes `count` entries of `ns` in both layouts with pipelined raw commands, printing progress
/// about every tenth.
async fn fill(
    edge: &mut MultiplexedConnection,
    seed: &mut MultiplexedConnection,
    ns: &str,
    count: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let step = (count / 10).max(BATCH);
    let mut next_report = step;
    let ttl_ms = TTL.as_millis().to_string();
    let ttl_s = TTL.as_secs().to_string();
    let mut from = 0;
    while from < count {
        let to = (from + BATCH).min(count);
        let mut edge_pipe = redis::pipe();
        let mut seed_pipe = redis::pipe();
        for i in from..to {
            let key = entry_key(ns, i)?;
            let value = value(ns, i);
            // RedisL2's SET script: the entry at generation 0, an envelope, a PX TTL.
            edge_pipe
                .cmd("SET")
                .arg(edge_entry_key(&key))
                .arg(envelope(value.as_bytes()))
                .arg("PX")
                .arg(&ttl_ms)
                .ignore();
            // The seed: `setex(namespace:sha256, ttl, json)`.
            seed_pipe
                .cmd("SETEX")
                .arg(key.as_str())
                .arg(&ttl_s)
                .arg(value)
                .ignore();
        }
        tokio::try_join!(
            edge_pipe.query_async::<()>(&mut *edge),
            seed_pipe.query_async::<()>(&mut *seed)
        )
        .with_context(|| format!("filling `{ns}`"))?;
        from = to;
        if from >= next_report || from == count {
            println!(
                "fill `{ns}`: {:>9} / {} keys in each database ({:>3}%), {}",
                thousands(from),
                thousands(count),
                from * 100 / count,
                duration(started.elapsed())
            );
            next_report = from + step;
        }
    }
    Ok(())
}

/// The key of entry `i` of `ns`, derived as edge-cache and the seed derive keys.
fn entry_key(ns: &str, i: u64) -> anyhow::Result<CacheKey> {
    let key = if ns == TARGET_NS {
        CacheKey::derive(ns, &serde_json::json!({"gpu_id": format!("g-{i}")}))
    } else {
        CacheKey::derive(ns, &serde_json::json!({"day": i}))
    };
    Ok(key?)
}

/// The JSON value stored for entry `i` of `ns`.
fn value(ns: &str, i: u64) -> String {
    if ns == TARGET_NS {
        format!(r#"{{"gpu_id":"g-{i}","status":"available","version":0}}"#)
    } else {
        format!(r#"{{"day":{i},"bookings":{}}}"#, i % 97)
    }
}

/// Where [`RedisL2`] stores `key` at generation 0 with the default prefix:
/// `ec:{<key namespace>}:0:<sha256 hex>`.
fn edge_entry_key(key: &CacheKey) -> String {
    format!("ec:{{{}}}:0:{}", key.key_namespace(), key.digest().to_hex())
}

/// [`RedisL2`]'s stored form of an untagged value: format byte 1, the tags' JSON (`[]`) with its
/// 4-byte big-endian length, then the value.
fn envelope(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + value.len());
    out.push(1);
    out.extend_from_slice(&2_u32.to_be_bytes());
    out.extend_from_slice(b"[]");
    out.extend_from_slice(value);
    out
}

/// The value under `key` read through [`RedisL2::get`].
async fn read(l2: &RedisL2, key: &CacheKey) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(l2.get(key).await?.map(|entry| entry.bytes))
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn dbsize(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    Ok(redis::cmd("DBSIZE").query_async(conn).await?)
}

/// `redis_version` from `INFO server`.
async fn redis_version(conn: &mut MultiplexedConnection) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .context("INFO server has no redis_version")
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

impl Report {
    /// Rows in table order, the INCR row first: it is what the others are compared with.
    fn rows(&self) -> Vec<&Row> {
        let mut rows = vec![&self.incr];
        rows.extend(&self.tags);
        rows.push(&self.tag_elsewhere);
        rows.push(&self.seed);
        rows.push(&self.seed_empty);
        rows.push(&self.ping);
        rows
    }

    /// `x` times the INCR median.
    fn ratio(&self, row: &Row) -> String {
        let base = self.incr.median().as_secs_f64();
        if base <= 0.0 {
            return "-".to_owned();
        }
        times(row.median().as_secs_f64() / base)
    }

    /// The table cells of every row: operation, entries, keys, runs, median, p99, ratio.
    fn cells(&self) -> Vec<[String; 7]> {
        self.rows()
            .into_iter()
            .map(|row| {
                [
                    row.operation.clone(),
                    thousands(row.namespace_entries),
                    thousands(row.database_keys),
                    thousands(row.samples.len() as u64),
                    duration(row.median()),
                    row.p99().map_or_else(|| "-".to_owned(), duration),
                    self.ratio(row),
                ]
            })
            .collect()
    }

    /// What the table shows, in sentences drawn from the figures.
    fn findings(&self) -> Vec<String> {
        let sizes: Vec<String> = self
            .tags
            .iter()
            .map(|row| {
                format!(
                    "{} entries {}",
                    thousands(row.tagged),
                    duration(row.median())
                )
            })
            .collect();
        // The cost of each entry beyond the smallest tag's, which is mostly the round trip.
        let per_entry = match (self.tags.first(), self.tags.last()) {
            (Some(small), Some(large)) if large.tagged > small.tagged => large
                .median()
                .checked_sub(small.median())
                .map(|extra| extra.as_secs_f64() / (large.tagged - small.tagged) as f64),
            _ => None,
        };
        let same_tag = self.tags.iter().find(|row| row.tagged == 1_000);
        let mut out = vec![
            format!(
                "Namespace invalidation on edge-cache is one INCR: median {} with {} entries in \
                 the namespace, {} a PING round trip ({}). The seed's SCAN+DEL loop took {} \
                 for the same namespace, {} the INCR median, in {} SCAN and {} DEL round trips.",
                duration(self.incr.median()),
                thousands(self.keys),
                times(
                    self.incr.median().as_secs_f64()
                        / self.ping.median().as_secs_f64().max(f64::MIN_POSITIVE)
                ),
                duration(self.ping.median()),
                duration(self.seed.median()),
                self.ratio(&self.seed),
                thousands(self.seed_round_trips.0),
                thousands(self.seed_round_trips.1),
            ),
            format!(
                "The seed's cost is the walk over the whole database, not the namespace: run \
                 again once the namespace was empty, the loop still took {} ({} the INCR median) \
                 to walk the {} other keys and delete nothing.",
                duration(self.seed_empty.median()),
                self.ratio(&self.seed_empty),
                thousands(self.seed_empty.database_keys),
            ),
            format!(
                "Tag invalidation grows with the tagged entries: {}{}.",
                sizes.join(", "),
                per_entry.map_or_else(String::new, |secs| format!(
                    "; about {} per entry beyond the first {}",
                    duration(Duration::from_secs_f64(secs)),
                    self.tags.first().map_or(0, |row| row.tagged)
                ))
            ),
        ];
        if let Some(same) = same_tag {
            out.push(format!(
                "It does not grow with the namespace: a 1,000-entry tag took {} among {} other \
                 entries of `{TARGET_NS}` and {} among {} other entries of `{UNRELATED_NS}`.",
                duration(same.median()),
                thousands(self.keys),
                duration(self.tag_elsewhere.median()),
                thousands(UNRELATED_KEYS),
            ));
        }
        out
    }

    /// The machine, server and command, one line each.
    fn context(&self) -> [String; 4] {
        [
            format!("machine: {}, {} cores (nproc)", self.cpu, self.cores),
            format!(
                "redis-server {} (private, loopback, no persistence); client: redis-rs through \
                 cache-redis on a single-threaded tokio runtime, {} build",
                self.redis_version,
                if cfg!(debug_assertions) {
                    "dev (unoptimized)"
                } else {
                    "release"
                }
            ),
            format!(
                "date: {}; filling {} keys into each database took {}",
                self.date,
                thousands(self.keys + UNRELATED_KEYS),
                duration(self.fill)
            ),
            format!("command: {}", self.command),
        ]
    }

    /// The report for the terminal: context, an aligned table, findings and checks.
    fn text(&self) -> String {
        let mut out = String::new();
        for line in self.context() {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
        let header = HEADER.map(str::to_owned);
        let cells = self.cells();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                std::iter::once(&header)
                    .chain(&cells)
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&cells) {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    let _ = write!(line, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(line, "  {}{cell}", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out.push('\n');
        for finding in self.findings() {
            let _ = writeln!(out, "{finding}");
        }
        out.push('\n');
        for check in &self.checks {
            let _ = writeln!(out, "check passed: {check}");
        }
        out
    }

    /// The self-contained Markdown page written by `--write`.
    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "# Benchmarks\n\n\
             <!-- Generated by `{command}`. Do not edit: change xtask/src/bench.rs and run the \
             command again; it replaces this file. -->\n\n\
             ## Namespace invalidation on Redis: edge-cache against the seed\n\n\
             When a GPU is booked, availability, pricing and order-book entries must disappear \
             from the shared Redis L2. The seed did that by walking the keyspace: `SCAN` with \
             `MATCH namespace:*` and `COUNT 100`, a `DEL` of every batch found, until the cursor \
             came back to 0, so an invalidation cost a round trip per 100 keys of the whole \
             database, and every receiving node ran it again. edge-cache keeps a generation per \
             namespace in the entry keys (`ec:{{ns}}:<generation>:<sha256>`): invalidating a \
             namespace is one `INCR`, after which the old entries are unreachable and expire on \
             their TTL, and it is done once, by the node that issues the invalidation.\n\n\
             `cargo xtask bench` measures both on one private `redis-server`, in one process: it \
             fills the invalidated namespace `{TARGET_NS}` with {keys} entries, and the unrelated \
             namespace `{UNRELATED_NS}` with {unrelated}, in edge-cache's layout (database 0, \
             written exactly as `RedisL2` writes them) and in the seed's (database 1), so each \
             approach faces a keyspace of the same size. It then times edge-cache's namespace \
             invalidation ({incr_runs} INCRs), its tag invalidation (tags of 10, 1,000 and 10,000 \
             entries among the {keys}, and one of 1,000 among the {unrelated} of \
             `{UNRELATED_NS}`), the seed's \
             SCAN+DEL loop (once, as it deletes what it finds, then again over the emptied \
             namespace) and a PING round trip, and checks \
             after each invalidation that the entries are gone for `RedisL2::get` and the \
             unrelated ones are not.\n\n\
             Absolute times depend on the machine, its load and the client build; every figure \
             below is a client-side round trip (redis-rs on a single-threaded tokio runtime, \
             over loopback) from this one run. Compare the ratios, which come from the same \
             process, server and keyspace a few seconds apart; the tag cases take turns, and \
             each INCR is followed by a PING, so that load from elsewhere on the machine falls \
             on the figures compared alike. Ratios are taken on medians; p99 is shown for rows \
             of at least 100 runs; the seed's loop runs once.\n\n\
             Regenerate with:\n\n```sh\n{command}\n```\n\n",
            command = self.command,
            keys = thousands(self.keys),
            unrelated = thousands(UNRELATED_KEYS),
            incr_runs = thousands(INCR_RUNS as u64),
        );
        out.push_str("## Results\n\n");
        for line in self.context() {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for row in self.cells() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
        for finding in self.findings() {
            let _ = writeln!(out, "{finding}\n");
        }
        out.push_str(
            "The price of the INCR is memory: invalidated entries stay in Redis until their TTL \
             runs out (the seed's loop frees them at once, at the cost above). Tag \
             invalidation's cost per entry is Redis deleting the entry; it depends on the server \
             and on the size of the whole database (runs with fewer keys in it measured less per \
             entry), so the per-entry figure holds for this database. Within one run it is the \
             same whichever namespace holds the tag.\n\n",
        );
        out.push_str("### Checks (all passed in this run)\n\n");
        for check in &self.checks {
            let _ = writeln!(out, "- {check}");
        }
        out
    }
}

/// The table's column headings.
const HEADER: [&str; 7] = [
    "operation",
    "entries in namespace",
    "keys in database",
    "runs",
    "median (or single run)",
    "p99",
    "vs INCR median",
];

/// A duration with three significant figures: `848 ns`, `41.2 µs`, `1.27 ms`, `3.41 s`.
fn duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    let (value, unit) = if us < 1.0 {
        (us * 1e3, "ns")
    } else if us < 1_000.0 {
        (us, "µs")
    } else if us < 1_000_000.0 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

/// A ratio: `0.98×`, `3.4×`, `48,213×`.
fn times(ratio: f64) -> String {
    if !ratio.is_finite() {
        return "-".to_owned();
    }
    if ratio < 10.0 {
        format!("{ratio:.2}×")
    } else if ratio < 100.0 {
        format!("{ratio:.1}×")
    } else {
        // Rounded, and far below u64::MAX for any realistic pair of durations.
        format!("{}×", thousands(ratio.round() as u64))
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The UTC date and time of `now`, `YYYY-MM-DD HH:MM UTC`.
fn utc_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parse_defaults_flags_and_help() {
        assert_eq!(parse(&[]).unwrap(), BenchArgs::default());
        assert_eq!(parse(&[]).unwrap().keys, 1_000_000);
        let parsed = parse(&args(&["--keys", "5000", "--write", "docs/benchmarks.md"])).unwrap();
        assert_eq!(
            parsed,
            BenchArgs {
                keys: 5_000,
                write: Some(PathBuf::from("docs/benchmarks.md")),
                help: false,
                command: "cargo xtask bench --keys 5000 --write docs/benchmarks.md".to_owned(),
            }
        );
        assert_eq!(parse(&args(&["--keys=1_000_000"])).unwrap().keys, 1_000_000);
        assert_eq!(parse(&args(&["--keys", "2,500"])).unwrap().keys, 2_500);
        assert_eq!(
            parse(&args(&["--write=out.md"])).unwrap().write,
            Some(PathBuf::from("out.md"))
        );
        assert!(parse(&args(&["--help"])).unwrap().help);
        assert!(parse(&args(&["--keys", "3", "-h"])).unwrap().help);
    }

    #[test]
    fn parse_rejects_bad_input_clearly() {
        let err = |list: &[&str]| parse(&args(list)).unwrap_err().to_string();
        assert!(err(&["--bogus"]).contains("unknown argument `--bogus`"));
        assert!(err(&["1000"]).contains("unknown argument `1000`"));
        assert!(err(&["--keys"]).contains("`--keys` needs a value"));
        assert!(err(&["--write"]).contains("`--write` needs a value"));
        assert!(err(&["--write="]).contains("`--write` needs a path"));
        assert!(err(&["--keys", "0"]).contains("at least 1"));
        assert!(err(&["--keys", "1M"]).contains("expects a whole number"));
        assert!(err(&["--keys", "-5"]).contains("expects a whole number"));
    }

    #[test]
    fn the_command_line_is_recorded_quoted() {
        assert_eq!(command_line(&[]), "cargo xtask bench");
        assert_eq!(
            command_line(&args(&["--write", "my docs/it's.md"])),
            r"cargo xtask bench --write 'my docs/it'\''s.md'"
        );
    }

    #[test]
    fn the_fill_writes_redis_l2_layout() {
        let key = entry_key(TARGET_NS, 7).unwrap();
        assert_eq!(key.key_namespace(), TARGET_NS);
        assert_eq!(
            edge_entry_key(&key),
            format!("ec:{{gpu_avail}}:0:{}", key.digest().to_hex())
        );
        // The seed's key is the derived key itself: `namespace:sha256`.
        assert_eq!(key.as_str(), format!("gpu_avail:{}", key.digest().to_hex()));
        assert_eq!(envelope(b"{}"), b"\x01\x00\x00\x00\x02[]{}");
    }

    #[test]
    fn figures_are_formatted_for_reading() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_100_000), "1,100,000");
        assert_eq!(duration(Duration::from_nanos(41_234)), "41.2 µs");
        assert_eq!(duration(Duration::from_nanos(1_270_000)), "1.27 ms");
        assert_eq!(duration(Duration::from_millis(3_410)), "3.41 s");
        assert_eq!(duration(Duration::from_micros(250)), "250 µs");
        assert_eq!(duration(Duration::from_nanos(848)), "848 ns");
        assert_eq!(duration(Duration::ZERO), "0.00 ns");
        assert_eq!(times(0.98), "0.98×");
        assert_eq!(times(34.04), "34.0×");
        assert_eq!(times(48_213.4), "48,213×");
        assert_eq!(times(f64::INFINITY), "-");
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(utc_date(leap_day), "2000-02-29 01:02 UTC");
        let new_year = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(utc_date(new_year), "2024-12-31 23:59 UTC");
    }

    fn row(operation: &str, entries: u64, micros: &[u64]) -> Row {
        Row {
            operation: operation.to_owned(),
            namespace_entries: entries,
            database_keys: entries + UNRELATED_KEYS,
            tagged: 0,
            samples: micros.iter().copied().map(Duration::from_micros).collect(),
        }
    }

    #[test]
    fn the_report_shows_every_figure_of_the_run() {
        let many = |us: u64| vec![us; 100];
        let report = Report {
            command: "cargo xtask bench --keys 1000 --write x.md".to_owned(),
            keys: 1_000,
            cpu: "Test CPU".to_owned(),
            cores: 2,
            redis_version: "7.0.15".to_owned(),
            date: "2025-01-02 03:04 UTC".to_owned(),
            fill: Duration::from_millis(120),
            ping: row("ping", 1_000, &many(40)),
            tags: vec![
                Row {
                    tagged: 10,
                    ..row("tag 10", 1_010, &many(60))
                },
                Row {
                    tagged: 1_000,
                    ..row("tag 1000", 2_000, &many(900))
                },
            ],
            tag_elsewhere: Row {
                tagged: 1_000,
                ..row("tag elsewhere", 101_000, &many(880))
            },
            incr: row("incr", 1_000, &many(50)),
            seed: row("seed", 1_000, &[2_500_000]),
            seed_round_trips: (11_000, 10_000),
            seed_empty: Row {
                namespace_entries: 0,
                database_keys: 100_000,
                ..row("seed empty", 0, &[200_000])
            },
            checks: vec!["it worked".to_owned()],
        };
        let md = report.markdown();
        assert!(md.starts_with("# Benchmarks\n"));
        assert!(md.contains("```sh\ncargo xtask bench --keys 1000 --write x.md\n```"));
        assert!(md.contains("| seed | 1,000 | 101,000 | 1 | 2.50 s | - | 50,000× |"));
        assert!(md.contains("| seed empty | 0 | 100,000 | 1 | 200 ms | - | 4,000× |"));
        assert!(md.contains(
            "still took 200 ms (4,000× the INCR median) \
             to walk the 100,000 other keys"
        ));
        assert!(md.contains("| incr | 1,000 | 101,000 | 100 | 50.0 µs | 50.0 µs | 1.00× |"));
        assert!(md.contains("| ping | 1,000 | 101,000 | 100 | 40.0 µs | 40.0 µs | 0.80× |"));
        assert!(md.contains("Test CPU, 2 cores"));
        assert!(md.contains("redis-server 7.0.15"));
        assert!(md.contains("2025-01-02 03:04 UTC"));
        assert!(md.contains("- it worked"));
        assert!(
            md.contains(
                "10 entries 60.0 µs, 1,000 entries 900 µs; \
                 about 848 ns per entry beyond the first 10"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "a 1,000-entry tag took 900 µs among 1,000 other entries of `gpu_avail` \
                 and 880 µs among 100,000"
            ),
            "{md}"
        );
        let text = report.text();
        assert!(text.contains("check passed: it worked"));
        assert!(text
            .lines()
            .any(|l| l.starts_with("seed ") && l.ends_with("50,000×")));
    }
}
