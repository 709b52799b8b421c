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
//! 3. **Rows 1-5 and 7-9** (L1 hits, L2 hits, writes, propagation, stampede, L1 memory,
//!    recovery after a lost subscription, fan-out to 1 to 1,000 subscribed nodes on one server)
//!    are measured by the `compare` bench target of `crates/bench` (`cargo bench -p
//!    edge-cache-bench --bench compare`), where the peers (amalgam-cache, moka, quick_cache, raw
//!    redis-rs) are dev-dependencies: they never reach users or `cargo xtask test`. It runs once
//!    per row (row 7 first), each run a process of its own, on database 2 of the server, and
//!    hands its lines back as JSON; see its module docs for each row's method. Row 9 holds up
//!    to 2,000 pub/sub connections at once (200 with `--quick`), so its process needs that many
//!    open files (`ulimit -n`) and the server as many clients (`maxclients`); it checks both
//!    before it connects, and closes every connection at the end.
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

use edge_cache_bench::thousands;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context as _};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use test_support::RedisServer;

// For the links in the module docs; the code that uses these is in `invalidation`.
#[cfg(doc)]
use cache_core::L2Store;
#[cfg(doc)]
use cache_redis::RedisL2;

mod invalidation;
mod report;

use invalidation::{bench, EDGE_DB, TARGET_NS, UNRELATED_KEYS, UNRELATED_NS};
use report::{utc_date, Report};

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cargo xtask bench [OPTIONS]

Measures edge-cache side by side with its peers on a private redis-server, in one run, and prints
one table; every figure is a ratio against a baseline measured in the same run:

  1. L1 hit, 1 and 2 threads: edge-cache vs quick_cache, moka, amalgam-cache
  2. L2 hit through Redis, 1 task and 32 tasks: vs raw redis-rs GET + decode, amalgam-cache
  3. write to an event-driven namespace: vs a raw pipelined SET + PUBLISH, amalgam-cache;
     and the same writes on a node without the event log (what sequencing costs)
  4. invalidation propagation node A -> node B, p50/p99: vs raw pub/sub, amalgam-cache;
     and the same flows between nodes without the event log
  5. hot-key stampede, 1,000 callers: loader calls and time to serve all
  6. namespace invalidation with N keys present: one INCR vs the seed's SCAN+DEL
  7. L1 memory: overhead per entry, byte budget under churn
  8. recovery after a lost subscription, 1,000 and 10,000 missed changes: resubscribe to
     caught up and entries replayed per second vs a raw XRANGE of the log; warm L1 kept
  9. fan-out on one server to 1, 10, 100 and 1,000 subscribed nodes (100 at most with
     --quick): last-node propagation p50/p99, events/s sustained, Redis CPU per event, vs raw
     pub/sub; and 16 invalidations per event vs one at the largest fleet

Rows 1-5 and 7-9 run in the `compare` bench target of crates/bench (release build; the peers
are its dev-dependencies), row 6 here. Needs redis-server on PATH; takes a few minutes (the
first run also compiles the release builds).

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
pub const ROWS: [u8; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

/// Set in the environment of the release build that a dev build of xtask starts.
const RELEASE_ENV: &str = "EDGE_CACHE_BENCH_RELEASE";

/// The database the `compare` bench target runs on (row 6 uses 0 and 1).
const COMPARE_DB: u8 = 2;

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
            .with_context(|| format!("`--only` expects row numbers 1 to 9, got `{part}`"))?;
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
        // One process per row (row 7 first, as it measures the live heap): a row run after
        // others in the same process measured differently (see `Compare::merge`).
        let mut merged = Compare::default();
        for row in compare_rows_in_order(&compare_rows) {
            merged.merge(run_compare(&url(COMPARE_DB), row, args.quick)?);
        }
        Some(merged)
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

impl Compare {
    /// Adds one row's results, run in a process of its own. Rows used to share one process,
    /// and a row run after others measured differently: with rows 1 and 2 run first, row 3
    /// put edge-cache's `set_key` at 1.18-1.23x raw (median 1.21x, eight runs) against
    /// 1.13-1.19x alone (median 1.18x, five runs), and amalgam-cache at 2.32-2.71x against
    /// 1.94-2.44x, while the raw floor stayed at 1.08-1.09x. No task of the earlier rows was
    /// left alive; the cause is some state of the process (the heap those rows grew and freed
    /// is the likeliest; `malloc_trim` between the rows did not settle it), which no row should
    /// inherit from another. Setup lines that every row's process prints alike are kept once.
    fn merge(&mut self, row: Compare) {
        self.lines.extend(row.lines);
        self.findings.extend(row.findings);
        self.checks.extend(row.checks);
        for line in row.setup {
            if !self.setup.contains(&line) {
                self.setup.push(line);
            }
        }
    }
}

/// `rows` in the order they run: row 7 first (it measures the live heap of a fresh process),
/// then ascending.
fn compare_rows_in_order(rows: &[u8]) -> Vec<u8> {
    let mut ordered = rows.to_vec();
    ordered.sort_unstable_by_key(|&row| (row != 7, row));
    ordered.dedup();
    ordered
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

/// Builds and runs the `compare` bench target (release) on `url` for `row`, and reads back its
/// lines.
fn run_compare(url: &str, row: u8, quick: bool) -> anyhow::Result<Compare> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let json = std::env::temp_dir().join(format!("edge-cache-bench-{}.json", std::process::id()));
    let only = row.to_string();
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

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
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
        assert_eq!(parse(&[]).unwrap().rows.len(), 9);
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
        assert!(err(&["--only", "10"]).contains("row numbers 1 to 9"));
        assert!(err(&["--only", "0"]).contains("row numbers 1 to 9"));
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
    fn rows_run_row_7_first_then_in_order_once_each() {
        assert_eq!(compare_rows_in_order(&[3, 7, 1, 5, 3]), vec![7, 1, 3, 5]);
        assert_eq!(compare_rows_in_order(&[2]), vec![2]);
        assert_eq!(compare_rows_in_order(&[9, 8, 7]), vec![7, 8, 9]);
    }

    #[test]
    fn merged_rows_keep_every_line_and_each_setup_line_once() {
        let line = |row: &str| Line {
            row: row.to_owned(),
            ..Line::default()
        };
        let mut merged = Compare::default();
        merged.merge(Compare {
            lines: vec![line("1"), line("1")],
            findings: vec!["f1".into()],
            checks: vec!["c1".into()],
            setup: vec!["machine".into(), "row 1 runtime".into()],
        });
        merged.merge(Compare {
            lines: vec![line("3")],
            findings: vec![],
            checks: vec!["c3".into()],
            setup: vec!["machine".into(), "row 3 runtime".into()],
        });
        let rows: Vec<&str> = merged.lines.iter().map(|l| l.row.as_str()).collect();
        assert_eq!(rows, ["1", "1", "3"]);
        assert_eq!(merged.findings, ["f1"]);
        assert_eq!(merged.checks, ["c1", "c3"]);
        assert_eq!(merged.setup, ["machine", "row 1 runtime", "row 3 runtime"]);
    }
}
