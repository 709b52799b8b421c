//! `compare`: edge-cache side by side with the caches a user would otherwise pick, in one process
//! run on one Redis, every figure a ratio against a baseline measured in the same run.
//!
//! Rows (numbered as in the issue; row 6, namespace invalidation with 1,000,000 keys against the
//! seed's SCAN+DEL, is measured by `cargo xtask bench` itself):
//!
//! 1. L1 hit, typed value, 1 and 2 threads ([`l1`]);
//! 2. L2 hit through Redis, 1 task latency and 32 tasks throughput ([`l2`]);
//! 3. a write to an event-driven namespace ([`write`]);
//! 4. invalidation propagation node A → node B ([`propagation`]);
//! 5. a hot-key stampede ([`stampede`]);
//! 7. L1 memory per entry and the byte budget under churn ([`memory`]);
//! 8. recovery after a lost subscription: replaying the missed events from the log
//!    ([`recovery`]);
//! 9. fan-out at fleet scale on one server: 1 to 1,000 subscribed nodes, events per second,
//!    Redis CPU per event, propagation to the last node, and coalescing ([`fanout`]).
//!
//! Run it through `cargo xtask bench` (which also runs row 6, runs this target once per row so
//! that no row inherits another's process state, and writes `docs/benchmarks.md`), or alone:
//! `cargo bench -p edge-cache-bench --bench compare -- [--redis URL] [--json PATH] [--only 1,4]
//! [--quick]`. Without `--redis` it starts a private `redis-server`. Rows run together in one
//! process measure a little differently: after rows 1 and 2, row 3 put edge-cache's `set_key`
//! about 0.03x and amalgam-cache about 0.2x further from raw than alone (medians of eight and
//! five runs).

mod alloc;
mod batch;
mod data;
mod fanout;
mod l1;
mod l2;
mod memory;
mod nodes;
mod propagation;
mod recovery;
mod stampede;
mod write;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use edge_cache_bench::{aligned, Results};

use crate::data::{Args, Report, Sizes};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Args::parse(&args).and_then(|args| args.map_or(Ok(()), run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let sizes = Sizes::new(args.quick);
    let mut report = Report::default();
    let json_len = data::offer_json_len();
    anyhow::ensure!(
        (224..=288).contains(&json_len),
        "the benchmark's offer should be about 256 bytes of JSON, it is {json_len}"
    );

    // Row 7 first: it measures the live heap, before any runtime or connection allocates.
    if args.only.contains(&7) {
        memory::run(args.quick, &mut report)?;
    }

    // A private server unless one was given; dropped (killed) when the run ends.
    let (_server, url) = match &args.redis {
        Some(url) => (None, url.clone()),
        None => {
            let server = test_support::RedisServer::start();
            let url = server.url();
            println!(
                "started a private redis-server on {url} (pid {})",
                server.pid()
            );
            (Some(server), url)
        }
    };
    // Two workers, as many as the machine's cores (redis-server shares them).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if args.only.contains(&1) {
        l1::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&2) {
        l2::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&3) {
        write::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&4) {
        propagation::run(&rt, &url, sizes, &mut report)?;
        batch::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&5) {
        stampede::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&8) {
        recovery::run(&rt, &url, sizes, &mut report)?;
    }
    if args.only.contains(&9) {
        fanout::run(&rt, &url, args.quick, &mut report)?;
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));

    report.setup.push(format!(
        "client: release build; rows 2-5, 8 and 9 on a multi-thread tokio runtime with 2 workers, row 1 \
         on one current-thread runtime per reading thread; {} mode",
        if args.quick {
            "quick (fewer iterations)"
        } else {
            "full"
        }
    ));
    report.setup.push(
        "peers: amalgam-cache 0.4 (feature `redis`: RedisDistributedCache + RedisBackplane, \
         JSON), moka 0.12, quick_cache 0.7, redis-rs 1.x; all in this process"
            .to_owned(),
    );
    let mut results = Results::default();
    results.lines = report.lines;
    results.findings = report.findings;
    results.checks = report.checks;
    results.setup = report.setup;
    println!(
        "bench binary finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // With `--json` the caller (`cargo xtask bench`) prints the one table; alone, print it here.
    match &args.json {
        Some(path) => {
            let json = serde_json::to_vec_pretty(&results)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            println!();
            print_table(&results);
        }
    }
    Ok(())
}

fn print_table(results: &Results) {
    let rows: Vec<Vec<String>> = results
        .lines
        .iter()
        .map(|l| {
            vec![
                l.row.clone(),
                l.implementation.clone(),
                l.result.clone(),
                l.ratio.clone(),
                l.target.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        aligned(
            &["row", "implementation", "result", "vs baseline", "target"],
            &rows
        )
    );
    for finding in &results.findings {
        println!("finding: {finding}");
    }
    for check in &results.checks {
        println!("check passed: {check}");
    }
}
