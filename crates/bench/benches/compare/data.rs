//! The data every row works on, the run's options and what the rows report into.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cache_core::{CacheKey, Digest};
use edge_cache_bench::Line;
use serde::{Deserialize, Serialize};

/// Keys each row works on, as the issue asks.
pub const KEYS: usize = 10_000;

/// Entries written for the benchmark live this long, so nothing expires during a run.
pub const TTL: Duration = Duration::from_secs(3600);

/// The typed value every implementation stores: a GPU offer of about 256 bytes of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The GPU.
    pub gpu_id: String,
    /// Who rents it out.
    pub provider: String,
    /// Where it is.
    pub region: String,
    /// What it is.
    pub gpu_model: String,
    /// `available`, `booked`, ...
    pub status: String,
    /// Price per hour in dollars.
    pub price_per_hour: f64,
    /// GPU memory.
    pub memory_gb: u32,
    /// Virtual CPUs that come with it.
    pub vcpus: u32,
    /// Uptime ratio.
    pub reliability: f64,
    /// The data centre's city.
    pub location: String,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}

impl Offer {
    /// Offer number `i`; every field depends on `i`, so values differ.
    pub fn new(i: usize) -> Offer {
        let n = u32::try_from(i % 100_000).unwrap_or(0);
        Offer {
            gpu_id: format!("g-{i:06}"),
            provider: format!("provider-{:04}", i % 1_000),
            region: ["eu-west-1", "us-east-2", "ap-south-1"][i % 3].to_owned(),
            gpu_model: "NVIDIA H100 80GB HBM3".to_owned(),
            status: "available".to_owned(),
            price_per_hour: 1.5 + f64::from(n % 400) / 100.0,
            memory_gb: 80,
            vcpus: 16 + n % 32,
            reliability: 0.99 + f64::from(n % 100) / 10_000.0,
            location: "Frankfurt, DE".to_owned(),
            updated_at: 1_767_225_600 + u64::from(n),
        }
    }
}

/// The JSON size of a typical offer, checked to be about 256 bytes.
pub fn offer_json_len() -> usize {
    serde_json::to_vec(&Offer::new(4_242)).map_or(0, |v| v.len())
}

/// The parameters of key `i` in the bench's namespaces.
pub fn params(i: usize) -> serde_json::Value {
    serde_json::json!({ "gpu_id": format!("g-{i:06}") })
}

/// The keys of `KEYS` entries of `key_namespace`, as edge-cache derives them.
///
/// # Errors
/// When a key cannot be derived (it always can for these parameters).
pub fn keys(key_namespace: &str) -> anyhow::Result<Vec<CacheKey>> {
    (0..KEYS)
        .map(|i| Ok(CacheKey::derive(key_namespace, &params(i))?))
        .collect()
}

/// The digests of `keys`: what quick_cache and moka are keyed by, the same 32 bytes edge-cache's
/// L1 is keyed by, so the baselines pay no more for hashing than edge-cache does.
pub fn digests(keys: &[CacheKey]) -> Vec<Digest> {
    keys.iter().map(|k| *k.digest()).collect()
}

/// `len` indexes into `0..n` in a fixed pseudo-random order (xorshift), so reads do not walk
/// memory in insertion order.
pub fn order(len: usize, n: usize) -> Vec<usize> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let n = u64::try_from(n.max(1)).unwrap_or(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            usize::try_from(x % n).unwrap_or(0)
        })
        .collect()
}

/// The order in which `len` implementations take turn `n`: a pseudo-random permutation, a
/// different one each turn.
///
/// Rotating a fixed order is not enough where an operation leaves work behind (a subscriber
/// woken by a publish, a node's listener decoding its own event): the implementation that
/// always comes next pays for it. Shuffling makes every implementation follow every other
/// about equally often.
pub fn turn_order(n: usize, len: usize) -> Vec<usize> {
    let mut slots: Vec<usize> = (0..len).collect();
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..len).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = usize::try_from(x % (i as u64 + 1)).unwrap_or(0);
        slots.swap(i, j);
    }
    slots
}

/// Offers shared as every peer hands them out: behind an `Arc`.
pub fn offers() -> Vec<Arc<Offer>> {
    (0..KEYS).map(|i| Arc::new(Offer::new(i))).collect()
}

/// The rows the issue lists that the bench binary measures (row 6 is `cargo xtask bench`'s).
pub const ROWS: [u8; 8] = [1, 2, 3, 4, 5, 7, 8, 9];

/// The options of the bench binary.
#[derive(Debug, Clone)]
pub struct Args {
    /// Redis to run on; a private redis-server is started when `None`.
    pub redis: Option<String>,
    /// Where to write the results as JSON.
    pub json: Option<PathBuf>,
    /// Which rows to run.
    pub only: BTreeSet<u8>,
    /// Fewer iterations, for trying changes out; figures are noisier.
    pub quick: bool,
}

/// The usage text.
pub const USAGE: &str = "\
Usage: cargo bench -p edge-cache-bench --bench compare -- [OPTIONS]

Measures edge-cache side by side with amalgam-cache, moka, quick_cache and raw redis-rs (rows
1-5 and 7-9 of `cargo xtask bench`; row 6 is run by the xtask itself).

Options:
      --redis URL   run on this Redis (a database of its own is best) instead of starting a
                    private redis-server
      --json PATH   write the results as JSON to PATH instead of printing the table (how
                    `cargo xtask bench` reads them)
      --only ROWS   run only these rows, comma-separated (e.g. 1,4)
      --quick       fewer iterations: a quick look, noisier figures
  -h, --help        print this help
";

impl Args {
    /// Parses the command line (`cargo bench` adds `--bench`, which is ignored).
    ///
    /// # Errors
    /// An unknown argument or a flag without its value.
    pub fn parse(args: &[String]) -> anyhow::Result<Option<Args>> {
        let mut parsed = Args {
            redis: None,
            json: None,
            only: ROWS.into_iter().collect(),
            quick: false,
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => rest
                        .next()
                        .cloned()
                        .with_context(|| format!("`{flag}` needs a value")),
                }
            };
            match flag {
                "-h" | "--help" => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                "--bench" => {}
                "--quick" => parsed.quick = true,
                "--redis" => parsed.redis = Some(value()?),
                "--json" => parsed.json = Some(PathBuf::from(value()?)),
                "--only" => {
                    let list = value()?;
                    parsed.only = BTreeSet::new();
                    for row in list.split(',').filter(|r| !r.trim().is_empty()) {
                        let row: u8 = row.trim().parse().with_context(|| {
                            format!("`--only` expects row numbers, got `{row}`")
                        })?;
                        if !ROWS.contains(&row) {
                            bail!(
                                "row {row} is not measured by the bench binary (rows: 1-5, \
                                 7-9; row 6 is run by `cargo xtask bench`)"
                            );
                        }
                        parsed.only.insert(row);
                    }
                }
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        Ok(Some(parsed))
    }
}

/// Iteration counts, full or quick.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// L1 reads per timed batch.
    pub l1_ops: usize,
    /// Timed batches per implementation (taking turns); the median batch is reported.
    pub l1_rounds: usize,
    /// Sequential L2 reads per implementation per round (and in the batch that measures what
    /// Redis spends).
    pub l2_latency_ops: usize,
    /// L2 reads per throughput round (spread over the concurrent tasks).
    pub l2_throughput_ops: usize,
    /// Throughput rounds: each implementation once per round, in an order that rotates; the
    /// ratio reported is the median of the rounds' ratios.
    pub l2_throughput_rounds: usize,
    /// Rounds of the L2 and write rows (implementations take turns).
    pub rounds: usize,
    /// Sequential writes per implementation per round (and in the batch that measures what Redis
    /// spends).
    pub set_ops: usize,
    /// Events per implementation in the propagation row.
    pub events: usize,
    /// Stampedes per implementation.
    pub stampedes: usize,
    /// Recoveries per number of missed changes (row 8).
    pub recoveries: usize,
}

impl Sizes {
    /// The counts for a full or a quick run.
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                l1_ops: 200_000,
                l1_rounds: 3,
                l2_latency_ops: 500,
                l2_throughput_ops: 4_000,
                l2_throughput_rounds: 4,
                rounds: 2,
                set_ops: 300,
                events: 300,
                stampedes: 2,
                recoveries: 2,
            }
        } else {
            Sizes {
                l1_ops: 500_000,
                l1_rounds: 7,
                l2_latency_ops: 2_000,
                l2_throughput_ops: 16_000,
                l2_throughput_rounds: 15,
                rounds: 5,
                set_ops: 1_500,
                events: 2_000,
                stampedes: 5,
                recoveries: 5,
            }
        }
    }
}

/// What the rows report into.
#[derive(Debug, Default)]
pub struct Report {
    /// Table lines.
    pub lines: Vec<Line>,
    /// Findings, as sentences.
    pub findings: Vec<String>,
    /// Checks that passed.
    pub checks: Vec<String>,
    /// How the run was set up.
    pub setup: Vec<String>,
}

impl Report {
    /// Adds a table line.
    pub fn line(
        &mut self,
        row: &str,
        measure: &str,
        implementation: &str,
        result: String,
        ratio: String,
        target: String,
    ) {
        println!("  {implementation}: {result} ({ratio}) {target}");
        self.lines.push(Line::new(
            row,
            measure,
            implementation,
            result,
            ratio,
            target,
        ));
    }
}
