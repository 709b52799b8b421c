//! Row 6 of `cargo xtask bench`: namespace invalidation with `N` (1,000,000) keys present,
//! against the seed's SCAN+DEL, measured here on databases 0 and 1 (step 4 of the
//! [`bench`](super) module docs), and its lines and findings for the report.

use edge_cache_bench::{duration, thousands, times};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use cache_core::{CacheKey, L2Store, L2Write};
use cache_redis::{RedisConfig, RedisL2};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use test_support::RedisServer;

use super::{connect, Line};
use edge_cache_bench::percentile;

/// Entries of the unrelated namespace, in each layout.
pub(super) const UNRELATED_KEYS: u64 = 100_000;

/// Keys per pipelined batch while filling.
const BATCH: u64 = 10_000;

/// The key namespace that is invalidated (the seed's GPU availability).
pub(super) const TARGET_NS: &str = "gpu_avail";

/// The key namespace that must survive (the seed's historical data).
pub(super) const UNRELATED_NS: &str = "historical";

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
pub(super) const EDGE_DB: u8 = 0;

/// The database holding the seed's layout.
const SEED_DB: u8 = 1;

/// One row of row 6's measurements.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) operation: String,
    /// Entries the invalidated namespace held when the operation ran.
    pub(super) namespace_entries: u64,
    /// Keys in the whole database (`DBSIZE`) when the operation ran.
    pub(super) database_keys: u64,
    /// Entries carrying the invalidated tag; 0 for other operations.
    pub(super) tagged: u64,
    /// One duration per run.
    pub(super) samples: Vec<Duration>,
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
pub(super) struct Invalidation {
    pub(super) keys: u64,
    pub(super) fill: Duration,
    pub(super) ping: Row,
    pub(super) tags: Vec<Row>,
    /// The 1,000-entry tag in the unrelated namespace.
    pub(super) tag_elsewhere: Row,
    pub(super) incr: Row,
    pub(super) seed: Row,
    pub(super) seed_round_trips: (u64, u64),
    /// The seed's loop over the namespace once emptied: the cost of the walk alone.
    pub(super) seed_empty: Row,
    /// Correctness checks that passed, as sentences.
    pub(super) checks: Vec<String>,
}

/// The benchmark proper; see the module docs.
pub(super) async fn bench(keys: u64, server: &RedisServer) -> anyhow::Result<Invalidation> {
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

async fn dbsize(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    Ok(redis::cmd("DBSIZE").query_async(conn).await?)
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
    pub(super) fn lines(&self) -> Vec<Line> {
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
    pub(super) fn findings(&self) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
