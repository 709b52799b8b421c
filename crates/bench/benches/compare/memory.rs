//! Row 7: L1 memory. Bytes of overhead per entry, and whether the byte budget is honoured
//! within 10% under churn, measured as live heap bytes with the counting allocator.
//!
//! - **Overhead per entry**: each store is built with room for twice the 10,000 entries, then
//!   given the same 10,000 `Arc<Offer>` values, which already exist before the measurement, so
//!   the heap growth is the store's own: its tables, slots, keys and bookkeeping. Growth ÷
//!   10,000 is the overhead per entry (the payload, an `Arc<Offer>` with its strings, is shown
//!   beside it). edge-cache's `MemoryL1` is what a critical namespace's L1 is; amalgam-cache is
//!   memory-only here (its L1 alone).
//! - **Budget under churn**: a `MemoryL1` with a byte budget receives ten times the budget's
//!   worth of distinct entries, each charged as edge-cache charges it (the encoded JSON length
//!   plus `ENTRY_OVERHEAD_BYTES`, plus the tag charges where entries carry a tag), each value a
//!   fresh `Arc<Offer>` the store owns; the live heap the store then holds (tables, slots, the
//!   tag index and the values it kept) is compared with the budget. Entries carry no tag, one
//!   tag of their own (`gpu:<id>`), or one tag shared by 100 entries.
//!
//! Runs first, before any runtime or connection exists, so that nothing else allocates while it
//! measures.

use std::sync::Arc;

use anyhow::Context as _;
use cache_core::{Digest, L1Entry, L1Store, SharedValue, Timestamp};
use cache_memory::{MemoryL1, ENTRY_OVERHEAD_BYTES, TAG_OVERHEAD_BYTES};
use edge_cache_bench::{thousands, times, verdict};

use crate::alloc::live_bytes;
use crate::data::{self, Offer, Report, KEYS};

/// Never expires.
const FOREVER: Timestamp = Timestamp::from_nanos(u64::MAX);

/// A critical namespace's default budget in the seed's configuration (`gpu_availability`).
const DEFAULT_BUDGET: u64 = 100 << 20;

/// Runs `f` and returns what it returned and how much the live heap grew meanwhile.
fn grown<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let before = live_bytes();
    let out = f();
    (out, live_bytes() - before)
}

/// A digest of its own for entry `i`.
/// The tags the churn entries carry.
#[derive(Clone, Copy, Debug)]
enum Tagging {
    None,
    /// One tag per entry, naming it alone (`gpu:g-000042`).
    Unique,
    /// One tag per entry, shared by 100 entries (`provider:provider-0042`).
    Shared,
}

impl Tagging {
    fn tags(self, i: usize) -> Vec<String> {
        match self {
            Tagging::None => Vec::new(),
            Tagging::Unique => vec![format!("gpu:g-{i:06}")],
            Tagging::Shared => vec![format!("provider:provider-{:04}", i / 100)],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tagging::None => "no tags",
            Tagging::Unique => "one tag per entry, its own",
            Tagging::Shared => "one tag per entry, shared by 100",
        }
    }
}

fn digest(i: usize) -> Digest {
    let mut d = [0_u8; 32];
    d[..8].copy_from_slice(&(i as u64).to_le_bytes());
    d[8] = 0xEC;
    Digest(d)
}

/// Runs row 7.
///
/// # Errors
/// When amalgam-cache's memory-only cache cannot be built.
pub fn run(quick: bool, report: &mut Report) -> anyhow::Result<()> {
    println!("row 7: L1 memory");
    let n = KEYS;
    let json_len = data::offer_json_len() as u64;
    let (offers, payload) = grown(data::offers);
    let payload_per = payload as f64 / n as f64;
    let keys = data::keys("gpu_avail")?;
    let digests = data::digests(&keys);
    let names: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
    let sizes: Vec<u64> = offers
        .iter()
        .map(|o| serde_json::to_vec(&**o).map_or(json_len, |v| v.len() as u64))
        .collect();

    // quick_cache directly: the engine under edge-cache's L1, keyed by the same digest.
    let (quick_store, quick_bytes) = grown(|| {
        let cache = quick_cache::sync::Cache::<Digest, Arc<Offer>>::new(2 * n);
        for (d, o) in digests.iter().zip(&offers) {
            cache.insert(*d, Arc::clone(o));
        }
        cache
    });
    anyhow::ensure!(
        quick_store.len() == n,
        "quick_cache kept {} of {n}",
        quick_store.len()
    );

    // edge-cache's MemoryL1 with a budget of twice the entries' charge.
    let charge = json_len + ENTRY_OVERHEAD_BYTES;
    let budget = 2 * n as u64 * charge;
    let (l1, l1_bytes) = grown(|| {
        let l1 = MemoryL1::new(budget);
        for ((d, o), size) in digests.iter().zip(&offers).zip(&sizes) {
            let value: SharedValue = Arc::clone(o) as SharedValue;
            l1.insert(*d, L1Entry::new(value, FOREVER, *size), &[]);
        }
        l1
    });
    let usage = l1.usage();
    anyhow::ensure!(
        usage.entries == n as u64,
        "MemoryL1 kept {} of {n}",
        usage.entries
    );

    let (moka, moka_bytes) = grown(|| {
        let cache = moka::sync::Cache::<Digest, Arc<Offer>>::new(2 * n as u64);
        for (d, o) in digests.iter().zip(&offers) {
            cache.insert(*d, Arc::clone(o));
        }
        cache.run_pending_tasks();
        cache
    });
    anyhow::ensure!(
        moka.entry_count() == n as u64,
        "moka kept {} of {n}",
        moka.entry_count()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (amalgam, amalgam_bytes) = rt.block_on(async {
        let before = live_bytes();
        let cache: amalgam::Cache<Arc<Offer>> = amalgam::Cache::builder()
            .default_options(amalgam::EntryOptions::new(data::TTL))
            .max_capacity(2 * n as u64)
            .try_build()
            .context("building a memory-only amalgam-cache")?;
        for (name, o) in names.iter().zip(&offers) {
            cache.set(name.as_str(), Arc::clone(o)).await?;
        }
        anyhow::Ok((cache, live_bytes() - before))
    })?;

    let per = |bytes: i64| bytes as f64 / n as f64;
    let base = per(quick_bytes);
    let rows = [
        (
            "quick_cache `sync::Cache` (baseline)",
            quick_bytes,
            "keyed by the 32-byte digest",
        ),
        (
            "edge-cache `MemoryL1` (a critical namespace's L1)",
            l1_bytes,
            "keyed by the 32-byte digest",
        ),
        (
            "moka `sync::Cache`",
            moka_bytes,
            "keyed by the 32-byte digest",
        ),
        (
            "amalgam-cache, memory only",
            amalgam_bytes,
            "keyed by the 72-character key string",
        ),
    ];
    for (name, bytes, keyed) in rows {
        report.line(
            "7. L1 memory, 10,000 entries",
            "heap overhead per entry (payload excluded)",
            name,
            format!(
                "{:.0} B ({keyed}; payload {:.0} B more)",
                per(bytes),
                payload_per
            ),
            times(per(bytes) / base),
            String::new(),
        );
    }
    let real_per = per(l1_bytes) + payload_per;
    let charged_per = usage.bytes as f64 / n as f64;
    report.findings.push(format!(
        "Row 7, no churn: `MemoryL1` charges each entry its encoded length plus \
         {ENTRY_OVERHEAD_BYTES} B, {charged_per:.0} B for these offers ({json_len} B of JSON), \
         while an entry really costs {:.0} B of overhead plus {payload_per:.0} B of decoded \
         payload = {real_per:.0} B: the charge is {} the real cost with the store sized for \
         {} entries (budget {} B) and nothing evicted yet.",
        per(l1_bytes),
        times(charged_per / real_per),
        thousands(2 * n as u64),
        thousands(budget),
    ));
    drop((quick_store, l1, moka));
    rt.block_on(async {
        let _ = amalgam.shutdown().await;
    });
    drop(offers);

    // An empty L1 at the default budget of a critical namespace.
    let (empty, empty_bytes) = grown(|| MemoryL1::new(DEFAULT_BUDGET));
    drop(empty);
    report.line(
        "7. L1 memory, empty store",
        "heap of an empty `MemoryL1`",
        "edge-cache `MemoryL1::new(100 MiB)` (`gpu_availability`'s budget)",
        format!("{} B", thousands(empty_bytes.max(0) as u64)),
        "-".to_owned(),
        String::new(),
    );

    // Churn: ten budgets' worth of distinct entries, untagged and with one tag each (unique to
    // the entry, as `gpu:<id>` is, or shared by 100 entries), since the tag index costs memory
    // too and is charged for.
    let cases: &[(u64, Tagging)] = if quick {
        &[(8 << 20, Tagging::None), (8 << 20, Tagging::Unique)]
    } else {
        &[
            (8 << 20, Tagging::None),
            (8 << 20, Tagging::Unique),
            (8 << 20, Tagging::Shared),
            (DEFAULT_BUDGET, Tagging::None),
            (DEFAULT_BUDGET, Tagging::Unique),
        ]
    };
    for &(budget, tagging) in cases {
        let before = live_bytes();
        let l1 = MemoryL1::new(budget);
        let mut count = 0_u64;
        // Until ten budgets' worth have been charged.
        let mut charged = 0_u64;
        while charged < 10 * budget {
            let i = usize::try_from(count).unwrap_or(usize::MAX);
            let offer = Offer::new(i);
            let size = serde_json::to_vec(&offer).map_or(json_len, |v| v.len() as u64);
            let tags = tagging.tags(i);
            // What the entry is charged (a new tag's extra charge counted as for a unique one:
            // the total only decides when ten budgets' worth have gone in).
            charged += size
                + ENTRY_OVERHEAD_BYTES
                + tags
                    .iter()
                    .map(|t| TAG_OVERHEAD_BYTES + t.len() as u64)
                    .sum::<u64>();
            l1.insert(
                digest(i),
                L1Entry::new(Arc::new(offer) as SharedValue, FOREVER, size),
                &tags,
            );
            count += 1;
        }
        let held = live_bytes() - before;
        let usage = l1.usage();
        drop(l1);
        let ratio = held as f64 / budget as f64;
        let entries = usage.entries.max(1) as f64;
        report.findings.push(format!(
            "Row 7, budget {} MiB under churn, {}: each entry held really cost {:.0} B of heap \
             (store, tag index and decoded payload, {} B ÷ {} entries) against {:.0} B charged, \
             so the budget was {} in real memory.",
            budget >> 20,
            tagging.describe(),
            held as f64 / entries,
            thousands(held.max(0) as u64),
            thousands(usage.entries),
            usage.bytes as f64 / entries,
            if ratio > 1.0 {
                format!("exceeded by {:.0}%", (ratio - 1.0) * 100.0)
            } else {
                format!("{:.0}% under", (1.0 - ratio) * 100.0)
            }
        ));
        report.line(
            "7. L1 byte budget under churn",
            "live heap held ÷ budget (10× the budget inserted)",
            &format!(
                "edge-cache `MemoryL1`, budget {} MiB, {}",
                budget >> 20,
                tagging.describe()
            ),
            format!(
                "{} B held for {} entries, {} B charged",
                thousands(held.max(0) as u64),
                thousands(usage.entries),
                thousands(usage.bytes)
            ),
            times(ratio),
            format!(
                "within ±10%: {} ({:+.0}%)",
                verdict((0.9..=1.1).contains(&ratio)),
                (ratio - 1.0) * 100.0
            ),
        );
    }
    report.setup.push(format!(
        "values: `Offer` structs of {json_len} B of JSON ({payload_per:.0} B on the heap when \
         decoded, behind an `Arc`), {} keys",
        thousands(n as u64)
    ));
    Ok(())
}
