//! The report of `cargo xtask bench`: one table for the terminal and the self-contained
//! Markdown page written by `--write`, with the machine, the server, the date and the method.

use edge_cache_bench::{duration, thousands};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::invalidation::{Invalidation, UNRELATED_KEYS};
use super::{Compare, Line};

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Report {
    pub(super) command: String,
    /// The 1-minute load average (`/proc/loadavg`) when the run started and when it ended.
    pub(super) load: (String, String),
    pub(super) cpu: String,
    pub(super) cores: usize,
    pub(super) redis_version: String,
    pub(super) date: String,
    /// How long the whole command took, builds excluded.
    pub(super) took: Duration,
    pub(super) compare: Option<Compare>,
    pub(super) invalidation: Option<Invalidation>,
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
    pub(super) fn text(&self) -> String {
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
    pub(super) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "# Benchmarks\n\n\
             <!-- Generated by `{command}`. Do not edit: change xtask/src/bench/ or \
             crates/bench and run the command again; it replaces this file. -->\n\n\
             A cache exists to be fast. This page compares edge-cache with what a user would \
             otherwise pick — amalgam-cache (a FusionCache-style hybrid cache with a Redis L2 and \
             backplane), moka and quick_cache used directly, raw redis-rs — and with what Redis \
             itself allows, on the same machine, in the same run. Absolute times on a shared \
             machine mean little: every figure below comes from one run of the command, and \
             every ratio is against the baseline of its own row, measured in the same process \
             (row 6 in the xtask, each other row in a run of the `compare` bench target of its \
             own, so that no row inherits what another left in the process) on the same \
             private `redis-server`, with the implementations taking turns so that \
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
   quick_cache and moka are keyed by the same 32-byte digest as edge-cache's L1 and hold the
   very values the edge node decoded (the same `Arc`s); amalgam-cache by the key string, both
   with its Redis L2 and backplane and as a memory-only cache (the target is judged against the
   faster of the two). Two floors run beside them, on quick_cache: each offer in a 32-byte slot
   whose expiry is checked against the coarse clock on every read (what a cache that never
   serves an entry past its TTL must add), and the same with the value type-erased and
   downcast (what an L1 serving many value types from one store must add);
   [performance.md](performance.md#the-floor-what-any-l1-with-edge-caches-guarantees-pays)
   explains them.
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
   the floor is the same write sent as edge-cache's set-if-current script (`SET` and `PUBLISH`
   only if the namespace's generation is the one written under), to show what that check costs;
   amalgam-cache `set` with its backplane publish awaited (not its default, the background) so
   that the call covers the same work. One task, the implementations taking turns write by
   write in an order shuffled each turn (a write leaves work behind, a subscriber woken by its
   publish, and with a fixed rotation the same implementation would always pay for it); every
   channel has a subscriber. After the timed writes, each implementation writes every key once
   more in a batch of its own, untimed, for Redis's CPU and commands per write (`INFO`) and the
   allocations the process makes per write on all its threads (the writer's, the connection
   drivers', the subscribers' handling of the messages). What sequencing costs: the three
   edge-cache writes and the floor also run on a node whose `RedisL2` and `RedisBus` keep no
   event log (`RedisConfig::without_event_log`: the change is published, not numbered, logged
   in a stream or trimmed), on a channel and key prefix of its own, in the same turns; the
   floor without the log is the same script sent with a log length of 0, as such a node sends
   it. Target: each sequenced write's p50 at most 1.10× the same write's without the log.
4. **Propagation.** Node A and node B in one process on one monotonic clock: each event is
   timed from just before A's call to B's hook (edge-cache: `Observer::on_event_applied`;
   amalgam-cache: a plugin's memory `Remove`; raw: the subscriber's receipt), one event at a
   time, implementations taking turns event by event. Both edge-cache flows also run between
   two nodes without the event log (as in row 3), in the same turns. Target: each sequenced
   flow's p50 at most 1.10× the same flow's without the log (p50: over 2,000 events the p99 is
   the 20th slowest and moves by more than that between runs alone). Batch lines: A
   invalidates 1,024 keys, one `invalidate_key` call each against 64 `invalidate_keys` calls of
   16 (one announcement each), taking turns, timed until B's hook has counted all 1,024.
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
8. **Recovery.** A reader node whose L1 holds 20,000 entries of `gpu_availability`, and a
   writer, on the same server. The reader connects as a Redis user of its own: the user is
   switched off (connections made keep working, new ones are refused) and the reader's
   subscription killed (`CLIENT KILL USER ... TYPE pubsub`), then the writer makes K `set_key`
   writes (1,000 or 10,000 distinct keys of the reader's L1; 32 in flight), each numbered and
   logged, and waits until it heard them back; then the user is switched on, and the reader,
   retrying every 10 to 50 ms, resubscribes. Timed from its `on_connection_state(Resubscribed)`
   to caught up: its namespace L1 in use again (polled every 100 µs; it turns with
   `Health::bus_connected`), which is once every missed event was replayed and every followed
   log confirmed at its head. Its liveness check is set to 10 minutes, so no periodic check
   replays part of the changes while it is away. Right after each recovery, the same K entries
   are read with raw `XRANGE`s of 1,000 entries on one connection (the baseline) and with
   `RedisL2::read_log`, pages of 1,000 (the floor: the catch-up's reads, nothing decoded or
   applied). Then every unwritten key is read on the reader (each must be an L1 hit) and every
   written one (each must be its new value, from L2). Five recoveries of each size (two with
   `--quick`), the sizes alternating; medians reported.
9. **Fan-out.** One publisher and N = 1, 10, 100 and 1,000 subscribers (1 to 100 with
   `--quick`), all in the bench's process, each with a connection of its own: N `RedisBus`
   subscriptions fed by `RedisBus::publish`, and the baseline, N raw redis-rs pub/sub
   connections fed by a raw `PUBLISH` of the same bytes on a channel of their own. Every
   message is an edge-cache invalidation of one key (`Event::encode`, as `invalidate_key`
   builds it) with a log position spliced in as a sequenced store publishes it; each
   subscriber, raw or edge-cache alike, reads the position from the message's tail, compares
   the rest with the event published and counts it (no full decode: here all N share the
   process's two workers). Propagation: an event every 1 ms, timed to the last of the N
   subscribers to count it; p50 and p99. Sustained: 64 publishes in flight and at most 256
   events not yet delivered everywhere (every 64 delivered let 64 more go) for a fixed time;
   events and deliveries (events × N) per second, and Redis's CPU per event (`INFO cpu`, main
   thread). At the largest N, events naming 16 keys run in the same turns, and their
   invalidations per second are compared with one-key events'. The implementations take
   turns, three rounds (two with `--quick`). Every subscriber must count every event exactly
   once, byte for byte, and no subscription may report a lost connection or a full queue;
   every connection is closed at the end, which Redis confirms.
";

/// The UTC date and time of `now`, `YYYY-MM-DD HH:MM UTC`.
pub(super) fn utc_date(now: SystemTime) -> String {
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
    use super::super::invalidation::Row;
    use super::*;

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
