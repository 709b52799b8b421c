//! `cargo xtask bench`: edge-cache side by side with its peers and with what Redis itself
//! allows, every figure from one run on one private `redis-server`, printed as one table and
//! written to `docs/benchmarks.md` with `--write`.
//!
//! # What runs
//!
//! 1. Under a dev build of xtask (how the `cargo xtask` alias runs it), the command runs itself
//!    again as a release build, so every figure, the client's included, comes from optimised
//!    code.
//! 2. A private `redis-server` is started on a free loopback port, as the tests start theirs
//!    ([`test_support::RedisServer`]); it is killed when the benchmark ends, whatever happens.
//! 3. **Rows 1-5 and 7** (L1 hits, L2 hits, writes, propagation, stampede, L1 memory) are measured
//!    by the `compare` bench target of `crates/bench` (`cargo bench -p edge-cache-bench --bench
//!    compare`), where the peers (amalgam-cache, moka, quick_cache, raw redis-rs) are
//!    dev-dependencies: they never reach users or `cargo xtask test`. It runs on database 2 of the
//!    server and hands its lines back as JSON; see its module docs for each row's method.
//! 4. **Row 6**, namespace invalidation with `N` (1,000,000) keys present against the seed's
//!    SCAN+DEL, is measured here, on databases 0 and 1:
//!    - **Fill.** Database 0 gets `N` entries of the key namespace `gpu_avail` written exactly as
//!      [`RedisL2`] writes them at generation 0 (`ec:{gpu_avail}:0:<sha256 hex>`, an envelope
//!      without tags, a `PX` TTL; see the key layout at the top of `crates/cache-redis/src/l2.rs`;
//!      the key and the envelope are learnt by writing one entry through [`RedisL2::set`] and
//!      reading it back raw, so the fill follows `RedisL2`'s format as it changes), plus 100,000
//!      entries of the unrelated namespace `historical`. Database 1 gets the same keys
//!      the way the seed stores them (`gpu_avail:<sha256 hex>` and `historical:<sha256 hex>`, JSON
//!      written with `SETEX`). Both fills are pipelined raw `SET`s in batches of 10,000, and one
//!      key of each kind is read back through [`RedisL2::get`] before anything is timed, so the
//!      layout is proven to be the one edge-cache reads.
//!    - **Measure**, each operation through the same client and runtime: edge-cache tag
//!      invalidation ([`RedisL2::invalidate_tag`]) of tags with 10, 1,000 and 10,000 entries among
//!      the `N`, and of a 1,000-entry tag in the 100,000-entry namespace (the cases take turns);
//!      edge-cache namespace invalidation ([`RedisL2::invalidate_namespace`], one `INCR`), 1,000
//!      times, each followed by a `PING` round trip through [`RedisL2::ping`], the floor every
//!      command pays; the seed's namespace invalidation, ported as it is in
//!      `edge_cache_manager.py` (`SCAN MATCH gpu_avail:* COUNT 100`, a `DEL` of every non-empty
//!      batch, until the cursor is 0), once, then once more over the emptied namespace.
//!    - **Verify** that each invalidation did its job: entries read as absent through
//!      [`RedisL2::get`] afterwards, the unrelated namespace is intact, the seed deleted exactly
//!      the `N` keys. A failed check fails the command and nothing is written.
//! 5. **Report** one table (also as Markdown with `--write PATH`, a self-contained page with the
//!    machine, the redis-server version, the date and the command). Every figure comes from this
//!    run, and every ratio is against the baseline of its own row.

use edge_cache_bench::{duration, thousands, times};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context as _};
use cache_core::{CacheKey, L2Store, L2Write};
use cache_redis::{RedisConfig, RedisL2};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use test_support::RedisServer;

use crate::demo::percentile;

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cargo xtask bench [OPTIONS]

Measures edge-cache side by side with its peers on a private redis-server, in one run, and prints
one table; every figure is a ratio against a baseline measured in the same run:

  1. L1 hit, 1 and 2 threads: edge-cache vs quick_cache, moka, amalgam-cache
  2. L2 hit through Redis, 1 task and 32 tasks: vs raw redis-rs GET + decode, amalgam-cache
  3. write to an event-driven namespace: vs a raw pipelined SET + PUBLISH, amalgam-cache
  4. invalidation propagation node A -> node B, p50/p99: vs raw pub/sub, amalgam-cache
  5. hot-key stampede, 1,000 callers: loader calls and time to serve all
  6. namespace invalidation with N keys present: one INCR vs the seed's SCAN+DEL
  7. L1 memory: overhead per entry, byte budget under churn

Rows 1-5 and 7 run in the `compare` bench target of crates/bench (release build; the peers are
its dev-dependencies), row 6 here. Needs redis-server on PATH; takes a few minutes (the first
run also compiles the release builds).

Options:
      --keys N      entries in row 6's invalidated namespace (1_000_000 and 1,000,000 are
                    accepted) [default: 1000000; 100000 with --quick]
      --only ROWS   run only these rows, comma-separated (e.g. 1,4,6)
      --quick       fewer iterations and a smaller row 6: for trying changes out, noisier
      --write PATH  also write the results as a self-contained Markdown page to PATH
                    (docs/benchmarks.md is generated this way)
  -h, --help        print this help
";

/// Entries in the invalidated namespace unless `--keys` says otherwise.
pub const DEFAULT_KEYS: u64 = 1_000_000;

/// Entries in the invalidated namespace with `--quick`, unless `--keys` says otherwise.
pub const QUICK_KEYS: u64 = 100_000;

/// Every row, numbered as in the issue.
pub const ROWS: [u8; 7] = [1, 2, 3, 4, 5, 6, 7];

/// Set in the environment of the release build that a dev build of xtask starts.
const RELEASE_ENV: &str = "EDGE_CACHE_BENCH_RELEASE";

/// The database the `compare` bench target runs on (row 6 uses 0 and 1).
const COMPARE_DB: u8 = 2;

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
    /// Entries in row 6's invalidated namespace (at least 1).
    pub keys: u64,
    /// The rows to run.
    pub rows: BTreeSet<u8>,
    /// Fewer iterations and, unless `--keys` is given, [`QUICK_KEYS`] in row 6.
    pub quick: bool,
    /// Where to write the Markdown report, if anywhere.
    pub write: Option<PathBuf>,
    /// `--help` was given: the usage was printed and [`run`] does nothing.
    pub help: bool,
    /// The arguments as given, to run again in a release build.
    pub args: Vec<String>,
    /// The command line as typed, for the report: `cargo xtask bench --keys 1000`.
    pub command: String,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            keys: DEFAULT_KEYS,
            rows: ROWS.into_iter().collect(),
            quick: false,
            write: None,
            help: false,
            args: Vec::new(),
            command: "cargo xtask bench".to_owned(),
        }
    }
}

/// Parses the arguments that follow `bench`. Flags take their value as the next argument or
/// after `=`. `--help` prints [`USAGE`] and returns at once with [`BenchArgs::help`] set.
///
/// # Errors
/// An unknown argument, a flag without its value, a `--keys` that is not a whole number of at
/// least 1, or an `--only` naming no row or a row that does not exist.
pub fn parse(args: &[String]) -> anyhow::Result<BenchArgs> {
    let mut parsed = BenchArgs {
        command: command_line(args),
        args: args.to_vec(),
        ..BenchArgs::default()
    };
    let mut keys = None;
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
        if flag == "--quick" && inline.is_none() {
            parsed.quick = true;
            continue;
        }
        if !matches!(flag, "--keys" | "--write" | "--only") {
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
        match flag {
            "--keys" => keys = Some(key_count(value)?),
            "--only" => parsed.rows = row_list(value)?,
            _ => {
                ensure!(!value.is_empty(), "`--write` needs a path");
                parsed.write = Some(PathBuf::from(value));
            }
        }
    }
    parsed.keys = keys.unwrap_or(if parsed.quick {
        QUICK_KEYS
    } else {
        DEFAULT_KEYS
    });
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

/// An `--only` value: row numbers separated by commas.
fn row_list(text: &str) -> anyhow::Result<BTreeSet<u8>> {
    let mut rows = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let row: u8 = part
            .parse()
            .ok()
            .filter(|r| ROWS.contains(r))
            .with_context(|| format!("`--only` expects row numbers 1 to 7, got `{part}`"))?;
        rows.insert(row);
    }
    ensure!(!rows.is_empty(), "`--only` needs at least one row");
    Ok(rows)
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
/// When `redis-server` is not installed, a build or the `compare` bench target fails, a Redis
/// command fails, a correctness check fails, or the page cannot be written.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.help {
        return Ok(());
    }
    if cfg!(debug_assertions) && std::env::var_os(RELEASE_ENV).is_none() {
        return run_in_release(&args);
    }
    let started = Instant::now();
    let server = crate::demo::start_redis_server()
        .context("`cargo xtask bench` runs on a private redis-server")?;
    println!(
        "edge-cache bench: rows {} on a private redis-server on 127.0.0.1:{} (pid {})",
        args.rows
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        server.port(),
        server.pid()
    );
    let report = measure(&args, &server);
    drop(server);
    let mut report = report?;
    report.took = started.elapsed();
    println!();
    print!("{}", report.text());
    if let Some(path) = &args.write {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs this command again as a release build of xtask (which then takes the other branch of
/// [`run`]), so that no figure comes from unoptimised code.
fn run_in_release(args: &BenchArgs) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: building and running the benchmark as a release build");
    let status = Command::new(&cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
        ])
        .args(&args.args)
        .env(RELEASE_ENV, "1")
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    ensure!(
        status.success(),
        "the release build of the benchmark failed ({status})"
    );
    Ok(())
}

/// Every row asked for, on `server`, and the machine's context.
fn measure(args: &BenchArgs, server: &RedisServer) -> anyhow::Result<Report> {
    let load_before = load_average();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let url = |db: u8| format!("redis://127.0.0.1:{}/{db}", server.port());
    let redis_version = runtime.block_on(async {
        let mut conn = connect(&url(EDGE_DB)).await?;
        redis_version(&mut conn).await
    })?;
    let compare_rows: Vec<u8> = args.rows.iter().copied().filter(|r| *r != 6).collect();
    let compare = if compare_rows.is_empty() {
        None
    } else {
        Some(run_compare(&url(COMPARE_DB), &compare_rows, args.quick)?)
    };
    let invalidation = if args.rows.contains(&6) {
        println!(
            "row 6: namespace invalidation with {} entries in `{TARGET_NS}` and {} in \
             `{UNRELATED_NS}`",
            thousands(args.keys),
            thousands(UNRELATED_KEYS),
        );
        // One thread: every round trip is then the command and the client's own work, without
        // wake-ups handed between worker threads (which on a 2-core box also share the CPU with
        // redis-server). All of row 6's operations run on it, so its ratios stay fair.
        Some(runtime.block_on(bench(args.keys, server))?)
    } else {
        None
    };
    Ok(Report {
        command: args.command.clone(),
        load: (load_before, load_average()),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        redis_version,
        date: utc_date(SystemTime::now()),
        took: Duration::ZERO,
        compare,
        invalidation,
    })
}

/// What the `compare` bench target writes with `--json` (`edge_cache_bench::Results`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Compare {
    lines: Vec<Line>,
    findings: Vec<String>,
    checks: Vec<String>,
    setup: Vec<String>,
}

/// One line of the table (`edge_cache_bench::Line`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Line {
    row: String,
    measure: String,
    implementation: String,
    result: String,
    ratio: String,
    target: String,
}

/// Builds and runs the `compare` bench target (release) on `url` for `rows`, and reads back its
/// lines.
fn run_compare(url: &str, rows: &[u8], quick: bool) -> anyhow::Result<Compare> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let json = std::env::temp_dir().join(format!("edge-cache-bench-{}.json", std::process::id()));
    let only = rows.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let mut command = Command::new(&cargo);
    command
        .args([
            "bench",
            "--package",
            "edge-cache-bench",
            "--bench",
            "compare",
            "--",
        ])
        .args(["--redis", url, "--only", &only, "--json"])
        .arg(&json);
    if quick {
        command.arg("--quick");
    }
    eprintln!("xtask: $ {cargo} bench --package edge-cache-bench --bench compare -- --redis {url} --only {only} --json {}{}", json.display(), if quick { " --quick" } else { "" });
    let status = command
        .status()
        .with_context(|| format!("starting {cargo} bench"))?;
    ensure!(status.success(), "the compare benchmark failed ({status})");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("reading the compare benchmark's results {}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).context("the compare benchmark's JSON does not parse")
}

/// One row of row 6's measurements.
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

/// Row 6: namespace and tag invalidation against the seed's SCAN+DEL.
#[derive(Debug, Clone, PartialEq)]
struct Invalidation {
    keys: u64,
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

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    command: String,
    /// The 1-minute load average (`/proc/loadavg`) when the run started and when it ended.
    load: (String, String),
    cpu: String,
    cores: usize,
    redis_version: String,
    date: String,
    /// How long the whole command took, builds excluded.
    took: Duration,
    compare: Option<Compare>,
    invalidation: Option<Invalidation>,
}

/// The benchmark proper; see the module docs.
async fn bench(keys: u64, server: &RedisServer) -> anyhow::Result<Invalidation> {
    let n = keys;
    let url = |db: u8| format!("redis://127.0.0.1:{}/{db}", server.port());
    let l2 = RedisL2::connect(&RedisConfig::new(url(EDGE_DB))).await?;
    let mut edge = connect(&url(EDGE_DB)).await?;
    let mut seed = connect(&url(SEED_DB)).await?;
    let mut checks = Vec::new();

    // Fill both layouts.
    let target = Layout::learn(&l2, &mut edge, TARGET_NS).await?;
    let unrelated_layout = Layout::learn(&l2, &mut edge, UNRELATED_NS).await?;
    let started = Instant::now();
    fill(&mut edge, &mut seed, &target, TARGET_NS, n).await?;
    fill(
        &mut edge,
        &mut seed,
        &unrelated_layout,
        UNRELATED_NS,
        UNRELATED_KEYS,
    )
    .await?;
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
        "the raw-filled entries (keys `{}<hex>`, the layout learnt from an entry written \
         through `RedisL2::set`) read back through `RedisL2::get`, so the fill is edge-cache's \
         layout; each database held {} keys",
        target.key_prefix,
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

    Ok(Invalidation {
        keys: n,
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
    layout: &Layout,
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
            // What RedisL2::set writes: the entry at generation 0, an envelope, a PX TTL.
            edge_pipe
                .cmd("SET")
                .arg(layout.entry_key(&key))
                .arg(layout.envelope(value.as_bytes()))
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

/// How [`RedisL2`] stores the entries of one namespace at its current generation, learnt by
/// writing one entry through [`RedisL2::set`] and reading back what Redis holds, so that the
/// raw fill writes exactly what `RedisL2` writes whatever its format of the day.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// The entry key up to the digest: `ec:{gpu_avail}:0:`.
    key_prefix: String,
    /// The envelope before the value (format, expiry, tags).
    header: Vec<u8>,
}

impl Layout {
    /// Learns the layout of `ns` on `conn`'s database, through `l2` on the same database. The
    /// probe entry is deleted again, so the database holds what it held before.
    async fn learn(
        l2: &RedisL2,
        conn: &mut MultiplexedConnection,
        ns: &str,
    ) -> anyhow::Result<Layout> {
        let key = CacheKey::derive(ns, &serde_json::json!({ "layout_probe": true }))?;
        let value = br#"{"probe":true}"#;
        ensure!(
            l2.set(L2Write::new(key.clone(), value.to_vec(), TTL))
                .await?,
            "RedisL2::set did not write the layout probe"
        );
        let hex = key.digest().to_hex();
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{hex}"))
            .query_async(conn)
            .await?;
        let [stored] = found.as_slice() else {
            bail!(
                "RedisL2::set left {} keys ending in the probe's digest",
                found.len()
            );
        };
        let raw: Vec<u8> = redis::cmd("GET").arg(stored).query_async(conn).await?;
        let _: u64 = redis::cmd("DEL").arg(stored).query_async(conn).await?;
        Layout::from_probe(stored, &hex, &raw, value)
    }

    /// The layout from a probe entry: its Redis key, its digest in hex, the bytes Redis holds and
    /// the value written.
    fn from_probe(stored: &str, hex: &str, raw: &[u8], value: &[u8]) -> anyhow::Result<Layout> {
        let key_prefix = stored.strip_suffix(hex).with_context(|| {
            format!("RedisL2 stored the probe under {stored:?}, which does not end in its digest")
        })?;
        let header = raw.strip_suffix(value).with_context(|| {
            "RedisL2's envelope does not end with the value: the raw fill cannot reproduce it"
        })?;
        Ok(Layout {
            key_prefix: key_prefix.to_owned(),
            header: header.to_vec(),
        })
    }

    /// The Redis key of `key`'s entry.
    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.key_prefix, key.digest().to_hex())
    }

    /// The stored bytes of `value`.
    fn envelope(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + value.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(value);
        out
    }
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

/// The 1-minute load average from `/proc/loadavg`, or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
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
impl Invalidation {
    /// The row label of every line of row 6.
    fn row_label(&self) -> String {
        format!(
            "6. namespace invalidation, {} keys in the namespace",
            thousands(self.keys)
        )
    }

    /// Row 6 as table lines, the PING round trip (the floor) first: it is the baseline.
    fn lines(&self) -> Vec<Line> {
        let base = self.ping.median().as_secs_f64();
        let ratio = |row: &Row| {
            if base <= 0.0 {
                "-".to_owned()
            } else {
                times(row.median().as_secs_f64() / base)
            }
        };
        let timed = |row: &Row| match row.p99() {
            Some(p99) => format!(
                "median {}, p99 {} ({} runs)",
                duration(row.median()),
                duration(p99),
                thousands(row.samples.len() as u64)
            ),
            None if row.samples.len() == 1 => format!("{} (one run)", duration(row.median())),
            None => format!(
                "median {} ({} runs)",
                duration(row.median()),
                thousands(row.samples.len() as u64)
            ),
        };
        let mut out = vec![Line {
            row: self.row_label(),
            measure: "round trip".to_owned(),
            implementation: "`PING` through `RedisL2::ping`, the floor (baseline)".to_owned(),
            result: timed(&self.ping),
            ratio: ratio(&self.ping),
            target: String::new(),
        }];
        out.push(Line {
            row: self.row_label(),
            measure: "round trip".to_owned(),
            implementation: "edge-cache `invalidate_namespace`: one `INCR`".to_owned(),
            result: timed(&self.incr),
            ratio: ratio(&self.incr),
            target: String::new(),
        });
        for (row, elsewhere) in self
            .tags
            .iter()
            .map(|row| (row, false))
            .chain([(&self.tag_elsewhere, true)])
        {
            out.push(Line {
                row: self.row_label(),
                measure: "round trip".to_owned(),
                implementation: if elsewhere {
                    format!(
                        "edge-cache `invalidate_tag`, {} tagged entries among {} in `{UNRELATED_NS}`",
                        thousands(row.tagged),
                        thousands(row.namespace_entries)
                    )
                } else {
                    format!(
                        "edge-cache `invalidate_tag`, {} tagged entries",
                        thousands(row.tagged)
                    )
                },
                result: timed(row),
                ratio: ratio(row),
                target: String::new(),
            });
        }
        out.push(Line {
            row: self.row_label(),
            measure: "round trips".to_owned(),
            implementation: format!(
                "the seed: `SCAN MATCH {TARGET_NS}:* COUNT 100` + `DEL` until cursor 0"
            ),
            result: format!(
                "{} ({} SCAN + {} DEL round trips)",
                timed(&self.seed),
                thousands(self.seed_round_trips.0),
                thousands(self.seed_round_trips.1)
            ),
            ratio: ratio(&self.seed),
            target: format!(
                "edge-cache's INCR is {} faster",
                times(
                    self.seed.median().as_secs_f64() / self.incr.median().as_secs_f64().max(1e-12)
                )
            ),
        });
        out.push(Line {
            row: self.row_label(),
            measure: "round trips".to_owned(),
            implementation: "the seed's loop again, the namespace now empty".to_owned(),
            result: format!(
                "{} (walks the {} other keys)",
                timed(&self.seed_empty),
                thousands(self.seed_empty.database_keys)
            ),
            ratio: ratio(&self.seed_empty),
            target: String::new(),
        });
        out
    }

    /// What row 6 shows, in sentences drawn from the figures.
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
        let incr = self.incr.median().as_secs_f64().max(f64::MIN_POSITIVE);
        let mut out = vec![
            format!(
                "Row 6: namespace invalidation on edge-cache is one INCR: median {} with {} \
                 entries in the namespace, {} a PING round trip ({}). The seed's SCAN+DEL loop \
                 took {} for the same namespace, {} the INCR median, in {} SCAN and {} DEL round \
                 trips.",
                duration(self.incr.median()),
                thousands(self.keys),
                times(incr / self.ping.median().as_secs_f64().max(f64::MIN_POSITIVE)),
                duration(self.ping.median()),
                duration(self.seed.median()),
                times(self.seed.median().as_secs_f64() / incr),
                thousands(self.seed_round_trips.0),
                thousands(self.seed_round_trips.1),
            ),
            format!(
                "Row 6: the seed's cost is the walk over the whole database, not the namespace: \
                 run again once the namespace was empty, the loop still took {} ({} the INCR \
                 median) to walk the {} other keys and delete nothing.",
                duration(self.seed_empty.median()),
                times(self.seed_empty.median().as_secs_f64() / incr),
                thousands(self.seed_empty.database_keys),
            ),
            format!(
                "Row 6: tag invalidation grows with the tagged entries: {}{}. It does not grow \
                 with the namespace: the 1,000-entry tag took {} among {} entries of \
                 `{TARGET_NS}` and {} among {} of `{UNRELATED_NS}`.",
                sizes.join(", "),
                per_entry.map_or_else(String::new, |secs| format!(
                    "; about {} per entry beyond the first {}",
                    duration(Duration::from_secs_f64(secs)),
                    self.tags.first().map_or(0, |row| row.tagged)
                )),
                self.tags
                    .iter()
                    .find(|row| row.tagged == 1_000)
                    .map_or_else(|| "-".to_owned(), |row| duration(row.median())),
                thousands(self.keys),
                duration(self.tag_elsewhere.median()),
                thousands(UNRELATED_KEYS),
            ),
            "Row 6: the price of the INCR is memory: invalidated entries stay in Redis until \
             their TTL runs out (the seed's loop frees them at once, at the cost above)."
                .to_owned(),
        ];
        out.retain(|s| !s.is_empty());
        out
    }
}

/// The table's column headings.
const HEADER: [&str; 6] = [
    "row",
    "measure",
    "implementation",
    "result",
    "vs baseline",
    "target",
];

impl Report {
    /// Every line of the table, in row order (row 6 between 5 and 7).
    fn lines(&self) -> Vec<Line> {
        let compare: &[Line] = self.compare.as_ref().map_or(&[], |c| &c.lines);
        let row_of = |line: &Line| {
            line.row
                .split('.')
                .next()
                .and_then(|n| n.trim().parse::<u8>().ok())
                .unwrap_or(0)
        };
        let mut lines: Vec<Line> = compare.to_vec();
        if let Some(invalidation) = &self.invalidation {
            lines.extend(invalidation.lines());
        }
        // Stable: lines keep their order within a row.
        lines.sort_by_key(row_of);
        lines
    }

    /// The table's cells, with the row and measure shown only where they change.
    fn cells(&self) -> Vec<Vec<String>> {
        let mut previous = (String::new(), String::new());
        self.lines()
            .into_iter()
            .map(|line| {
                let row = if line.row == previous.0 {
                    String::new()
                } else {
                    line.row.clone()
                };
                let measure = if line.row == previous.0 && line.measure == previous.1 {
                    String::new()
                } else {
                    line.measure.clone()
                };
                previous = (line.row.clone(), line.measure.clone());
                vec![
                    row,
                    measure,
                    line.implementation,
                    line.result,
                    line.ratio,
                    line.target,
                ]
            })
            .collect()
    }

    /// The targets the issue sets, each with this run's verdict, one line each.
    fn targets(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.target.contains("met") || l.target.contains("MISSED"))
            .map(|l| format!("{} — {}: {}", l.row, l.implementation, l.target))
            .collect()
    }

    fn findings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .compare
            .as_ref()
            .map_or_else(Vec::new, |c| c.findings.clone());
        if let Some(invalidation) = &self.invalidation {
            out.extend(invalidation.findings());
        }
        out
    }

    fn checks(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .compare
            .as_ref()
            .map_or_else(Vec::new, |c| c.checks.clone());
        if let Some(invalidation) = &self.invalidation {
            out.extend(invalidation.checks.iter().map(|c| format!("row 6: {c}")));
        }
        out
    }

    /// The machine, server, run and command, one line each.
    fn context(&self) -> Vec<String> {
        let mut out = vec![
            format!("machine: {}, {} cores (nproc)", self.cpu, self.cores),
            format!(
                "redis-server {} (private, loopback, no persistence), started by the benchmark",
                self.redis_version
            ),
            format!(
                "build: {}",
                if cfg!(debug_assertions) {
                    "dev (unoptimized) — figures not comparable"
                } else {
                    "release, the benchmark and xtask alike"
                }
            ),
        ];
        if let Some(compare) = &self.compare {
            out.extend(compare.setup.iter().cloned());
        }
        if let Some(invalidation) = &self.invalidation {
            out.push(format!(
                "row 6: redis-rs through cache-redis on a single-threaded tokio runtime; filling \
                 {} keys into each of two databases took {}",
                thousands(invalidation.keys + UNRELATED_KEYS),
                duration(invalidation.fill)
            ));
        }
        out.push(format!(
            "date: {}; the run took {} (builds excluded); 1-minute load average {} at the \
             start, {} at the end (other work on the machine shows here, and in the figures)",
            self.date,
            duration(self.took),
            self.load.0,
            self.load.1
        ));
        out.push(format!("command: {}", self.command));
        out
    }

    /// The report for the terminal: context, an aligned table, targets, findings and checks.
    fn text(&self) -> String {
        let mut out = String::new();
        for line in self.context() {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
        let cells = self.cells();
        let widths: Vec<usize> = (0..HEADER.len())
            .map(|c| {
                cells
                    .iter()
                    .map(|row| row[c].chars().count())
                    .chain([HEADER[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&cells) {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count()));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out.push('\n');
        for target in self.targets() {
            let _ = writeln!(out, "target: {target}");
        }
        for finding in self.findings() {
            let _ = writeln!(out, "finding: {finding}");
        }
        for check in self.checks() {
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
             <!-- Generated by `{command}`. Do not edit: change xtask/src/bench.rs or \
             crates/bench and run the command again; it replaces this file. -->\n\n\
             A cache exists to be fast. This page compares edge-cache with what a user would \
             otherwise pick — amalgam-cache (a FusionCache-style hybrid cache with a Redis L2 and \
             backplane), moka and quick_cache used directly, raw redis-rs — and with what Redis \
             itself allows, on the same machine, in the same run. Absolute times on a shared \
             machine mean little: every figure below comes from one run of the command, and \
             every ratio is against the baseline of its own row, measured in the same process \
             (row 6 in the xtask, the other rows in one run of the `compare` bench target) on \
             the same private `redis-server`, with the implementations taking turns so that \
             load from elsewhere falls on all of them alike. On the 2-core virtual machines \
             this has been run on, a loopback round trip has measured anywhere from about 10 µs \
             to 100 µs from one run to the next (idle virtual CPUs are slow to wake): compare \
             ratios, not times across runs. Each row's method is described \
             [below](#how-each-row-is-measured); [performance.md](performance.md) explains \
             where the time goes and how to profile it.\n\n\
             Regenerate with:\n\n```sh\n{command}\n```\n\n",
            command = self.command,
        );
        out.push_str("## Results\n\n");
        for line in self.context() {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "| --- | --- | --- | ---: | ---: | --- |");
        for row in self.cells() {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push_str(
            "\nRatios are times relative to the row's baseline (`1.00×`), so above 1 is slower; \
             for throughput, the baseline's rate divided by the implementation's. Where a \
             result shows two figures (p50 / p99), so does the ratio.\n\n",
        );
        let targets = self.targets();
        if !targets.is_empty() {
            out.push_str("## Targets in this run\n\n");
            for target in targets {
                let _ = writeln!(out, "- {target}");
            }
            out.push('\n');
        }
        let findings = self.findings();
        if !findings.is_empty() {
            out.push_str("## Findings\n\n");
            for finding in findings {
                let _ = writeln!(out, "- {finding}");
            }
            out.push('\n');
        }
        out.push_str(METHOD);
        out.push_str("\n### Checks (all passed in this run)\n\n");
        for check in self.checks() {
            let _ = writeln!(out, "- {check}");
        }
        out
    }
}

/// How each row is measured, for the Markdown page.
const METHOD: &str = "## How each row is measured

Every implementation works on the same data: 10,000 keys derived as edge-cache derives them,
and typed `Offer` values of about 256 bytes of JSON, handed out behind an `Arc` by every cache.
edge-cache runs as production runs it: `RedisL2` and `RedisBus`, the default namespaces, keys
derived once outside the timed loops (`EdgeCache::key`, then the `*_key` methods).

1. **L1 hit.** The 10,000 offers in each store; reads in one fixed pseudo-random order, batches
   of reads timed on 1 and on 2 threads, implementations taking turns, the median batch
   reported; allocations counted by a counting global allocator during the timed loop.
   quick_cache and moka are keyed by the same 32-byte digest as edge-cache's L1; amalgam-cache
   by the key string, both with its Redis L2 and backplane and as a memory-only cache (the
   target is judged against the faster of the two).
2. **L2 hit.** edge-cache reads `provider_status` (event-driven, not critical: no L1, so every
   read goes to Redis); the baseline is a redis-rs `GET` on a multiplexed connection plus
   `serde_json` decoding; amalgam-cache reads with its memory level skipped. One task reading
   sequentially, the implementations taking turns read by read in a shuffled order (latency), then 32 tasks at
   once (reads per second): 15 rounds of 16,000 reads, each round running every implementation
   once with the first rotating; the ratio is the median of the rounds' own ratios (runs made
   moments apart), the rate the median round. Redis's own CPU time per read (`INFO cpu`, main
   thread) and commands per read (`total_commands_processed`) are shown beside them.
3. **Write to an event-driven namespace.** edge-cache `set_key` on `gpu_availability`
   (critical: L2, an L1 copy and the event) and on `provider_status` (L2 and the event); the
   baseline is a pipelined `SET` + `PUBLISH` with the value serialised in the timed call;
   amalgam-cache `set` with its backplane publish awaited (not its default, the background) so
   that the call covers the same work. One task, the implementations taking turns write by
   write in an order shuffled each turn (a write leaves work behind, a subscriber woken by its
   publish, and with a fixed rotation the same implementation would always pay for it); every
   channel has a subscriber.
4. **Propagation.** Node A and node B in one process on one monotonic clock: each event is
   timed from just before A's call to B's hook (edge-cache: `Observer::on_event_applied`;
   amalgam-cache: a plugin's memory `Remove`; raw: the subscriber's receipt), one event at a
   time, implementations taking turns event by event.
5. **Stampede.** 1,000 tasks call `get_or_load` on one key no run has used; the loader counts
   its calls, sleeps 5 ms (a slow origin) and builds the offer. Time from the first spawn to the
   last caller served, against the loader alone.
6. **Namespace invalidation.** The invalidated namespace `gpu_avail` is filled with the keys in
   edge-cache's layout (database 0, written exactly as `RedisL2` writes them) and in the seed's
   (database 1), with 100,000 keys of the unrelated namespace `historical` beside them, so each
   approach faces a keyspace of the same size. Timed: edge-cache's namespace invalidation
   (1,000 INCRs, each followed by a PING), its tag invalidation (tags of 10, 1,000 and 10,000
   entries, and one of 1,000 in `historical`, the cases taking turns), and the seed's loop as
   `edge_cache_manager.py` runs it (`SCAN MATCH ns:* COUNT 100` + `DEL` of each batch until the
   cursor is 0; once, as it deletes what it finds, then again over the emptied namespace). Every
   invalidation is checked afterwards through `RedisL2::get`.
7. **L1 memory.** Live heap bytes from the counting allocator. Overhead per entry: each store
   built with room for 20,000 entries receives the same 10,000 existing `Arc<Offer>` values; the
   heap growth divided by 10,000 is the store's own cost per entry (the payload is shown beside
   it). Budget under churn: a `MemoryL1` receives ten times its byte budget's worth of distinct
   entries, charged as edge-cache charges them, each value a fresh `Arc<Offer>`, with no tag, one
   tag of its own (`gpu:<id>`) or one tag shared by 100 entries; the live heap it then holds
   (tag index included) is compared with the budget.
";

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
        assert_eq!(parse(&[]).unwrap().rows.len(), 7);
        let parsed = parse(&args(&["--keys", "5000", "--write", "docs/benchmarks.md"])).unwrap();
        assert_eq!(
            parsed,
            BenchArgs {
                keys: 5_000,
                write: Some(PathBuf::from("docs/benchmarks.md")),
                args: args(&["--keys", "5000", "--write", "docs/benchmarks.md"]),
                command: "cargo xtask bench --keys 5000 --write docs/benchmarks.md".to_owned(),
                ..BenchArgs::default()
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
    fn quick_and_only_select_what_runs() {
        let quick = parse(&args(&["--quick"])).unwrap();
        assert!(quick.quick);
        assert_eq!(quick.keys, QUICK_KEYS);
        assert_eq!(
            parse(&args(&["--quick", "--keys", "7"])).unwrap().keys,
            7,
            "--keys wins over --quick's default"
        );
        let only = parse(&args(&["--only", "1, 6,4"])).unwrap();
        assert_eq!(only.rows.into_iter().collect::<Vec<_>>(), vec![1, 4, 6]);
        assert_eq!(
            parse(&args(&["--only=7"]))
                .unwrap()
                .rows
                .into_iter()
                .collect::<Vec<_>>(),
            vec![7]
        );
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
        assert!(err(&["--only", "8"]).contains("row numbers 1 to 7"));
        assert!(err(&["--only", ","]).contains("at least one row"));
        assert!(err(&["--quick=yes"]).contains("unknown argument"));
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
    fn the_fill_writes_the_layout_learnt_from_redis_l2() {
        let key = entry_key(TARGET_NS, 7).unwrap();
        assert_eq!(key.key_namespace(), TARGET_NS);
        // The seed's key is the derived key itself: `namespace:sha256`.
        assert_eq!(key.as_str(), format!("gpu_avail:{}", key.digest().to_hex()));
        let layout = Layout::from_probe(
            "ec:{gpu_avail}:0:ab12",
            "ab12",
            b"\x02HDR[]{\"p\":1}",
            b"{\"p\":1}",
        )
        .unwrap();
        assert_eq!(layout.key_prefix, "ec:{gpu_avail}:0:");
        assert_eq!(
            layout.entry_key(&key),
            format!("ec:{{gpu_avail}}:0:{}", key.digest().to_hex())
        );
        assert_eq!(layout.envelope(b"{}"), b"\x02HDR[]{}");
        assert!(Layout::from_probe("ec:x:cd34", "ab12", b"v", b"v").is_err());
        assert!(Layout::from_probe("ec:ab12", "ab12", b"v-compressed", b"v").is_err());
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

    fn line(row: &str, implementation: &str, target: &str) -> Line {
        Line {
            row: row.to_owned(),
            measure: "time per read".to_owned(),
            implementation: implementation.to_owned(),
            result: "1 ns".to_owned(),
            ratio: "1.00×".to_owned(),
            target: target.to_owned(),
        }
    }

    fn report() -> Report {
        let many = |us: u64| vec![us; 100];
        Report {
            command: "cargo xtask bench --keys 1000 --write x.md".to_owned(),
            load: ("0.12".to_owned(), "1.50".to_owned()),
            cpu: "Test CPU".to_owned(),
            cores: 2,
            redis_version: "7.0.15".to_owned(),
            date: "2025-01-02 03:04 UTC".to_owned(),
            took: Duration::from_secs(90),
            compare: Some(Compare {
                lines: vec![
                    line("1. L1 hit, 1 thread", "quick_cache (baseline)", ""),
                    line("1. L1 hit, 1 thread", "edge-cache", "≤ 1.5×: met (1.2×)"),
                    line("7. L1 memory", "edge-cache", "within ±10%: MISSED (+32%)"),
                ],
                findings: vec!["the weigher undercharges".to_owned()],
                checks: vec!["row 1: all hits".to_owned()],
                setup: vec!["values: offers".to_owned()],
            }),
            invalidation: Some(Invalidation {
                keys: 1_000,
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
            }),
        }
    }

    #[test]
    fn the_report_merges_both_sources_into_one_table_in_row_order() {
        let report = report();
        let rows: Vec<String> = report.lines().into_iter().map(|l| l.row).collect();
        let six = rows.iter().position(|r| r.starts_with("6.")).unwrap();
        let seven = rows.iter().position(|r| r.starts_with("7.")).unwrap();
        assert!(rows[..six].iter().all(|r| r.starts_with("1.")));
        assert!(six < seven);
        // Row 6's baseline is the PING round trip, and every ratio is against it.
        let six: Vec<Line> = report
            .lines()
            .into_iter()
            .filter(|l| l.row.starts_with("6."))
            .collect();
        assert!(six[0].implementation.contains("PING"));
        assert_eq!(six[0].ratio, "1.00×");
        assert_eq!(six[1].ratio, "1.25×", "INCR 50 µs against PING 40 µs");
        let seed = six
            .iter()
            .find(|l| l.implementation.contains("SCAN"))
            .unwrap();
        assert_eq!(seed.ratio, "62,500×");
        assert_eq!(seed.target, "edge-cache's INCR is 50,000× faster");
        assert!(seed.result.contains("11,000 SCAN + 10,000 DEL"));
    }

    #[test]
    fn the_report_shows_every_figure_targets_and_context() {
        let report = report();
        let md = report.markdown();
        assert!(md.starts_with("# Benchmarks\n"));
        assert!(md.contains("```sh\ncargo xtask bench --keys 1000 --write x.md\n```"));
        assert!(md.contains("Test CPU, 2 cores"));
        assert!(md.contains("redis-server 7.0.15"));
        assert!(md.contains("2025-01-02 03:04 UTC"));
        assert!(md.contains("load average 0.12 at the start, 1.50 at the end"));
        assert!(md.contains("- values: offers"));
        assert!(md.contains("| row | measure | implementation | result | vs baseline | target |"));
        // The row name is printed once per group.
        assert_eq!(md.matches("| 1. L1 hit, 1 thread |").count(), 1);
        assert!(md.contains("## Targets in this run"));
        assert!(md.contains("- 1. L1 hit, 1 thread — edge-cache: ≤ 1.5×: met (1.2×)"));
        assert!(md.contains("- 7. L1 memory — edge-cache: within ±10%: MISSED (+32%)"));
        assert!(md.contains("- the weigher undercharges"));
        assert!(md.contains("- row 1: all hits"));
        assert!(md.contains("- row 6: it worked"));
        assert!(md.contains("## How each row is measured"));
        assert!(
            md.contains("10 entries 60.0 µs, 1,000 entries 900 µs; about 848 ns per entry"),
            "{md}"
        );
        assert!(md.contains("still took 200 ms (4,000× the INCR median) to walk the 100,000"));
        let text = report.text();
        assert!(text.contains("check passed: row 6: it worked"));
        assert!(text.contains("target: 7. L1 memory — edge-cache: within ±10%: MISSED"));
    }

    #[test]
    fn a_partial_run_reports_only_what_ran() {
        let report = Report {
            invalidation: None,
            ..report()
        };
        assert!(report.lines().iter().all(|l| !l.row.starts_with("6.")));
        assert!(!report.markdown().contains("INCR median"));
    }
}
