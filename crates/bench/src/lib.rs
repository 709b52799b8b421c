//! What `cargo xtask bench` and its benchmark binary share: the report's lines, statistics over
//! samples, and the formatting of figures.
//!
//! The measurements themselves live in the `compare` bench target (`benches/compare/`), where the
//! peers edge-cache is compared with (amalgam-cache, moka, quick_cache, raw redis-rs) are
//! dev-dependencies: they never reach this library, so nothing that depends on it builds them.
//!
//! Every figure is compared with a baseline measured in the same process run; see
//! `docs/benchmarks.md` for a run and the method.
//!
//! ```
//! use std::time::Duration;
//! use edge_cache_bench::{duration, percentile, times};
//!
//! let mut samples = vec![Duration::from_micros(120), Duration::from_micros(80), Duration::from_micros(100)];
//! assert_eq!(percentile(&mut samples, 50), Some(Duration::from_micros(100)));
//! assert_eq!(duration(Duration::from_nanos(41_234)), "41.2 µs");
//! assert_eq!(times(1.234), "1.23×");
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One line of the results table: one implementation's figure for one benchmark row.
///
/// Every text is already formatted for reading, so a report can be assembled from lines produced
/// by different programs (the bench binary writes them as JSON; `cargo xtask bench` adds the
/// namespace-invalidation lines it measures itself).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The issue's row, with its number: `1. L1 hit, 1 thread`.
    pub row: String,
    /// What the figure is: `time per get`, `p50 / p99`.
    pub measure: String,
    /// Who was measured, with the call: `edge-cache get_key`.
    pub implementation: String,
    /// The figure(s): `31.2 ns, 0 allocations`.
    pub result: String,
    /// The figure relative to the row's baseline, `1.00×` on the baseline itself; `-` where no
    /// ratio applies.
    pub ratio: String,
    /// The issue's target for this line and whether this run met it, or empty.
    pub target: String,
}

impl Line {
    /// A line with every field given.
    pub fn new(
        row: impl Into<String>,
        measure: impl Into<String>,
        implementation: impl Into<String>,
        result: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            row: row.into(),
            measure: measure.into(),
            implementation: implementation.into(),
            result: result.into(),
            ratio: ratio.into(),
            target: target.into(),
        }
    }
}

/// What the bench binary hands to `cargo xtask bench` (as JSON with `--json PATH`).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// The table's lines, in order.
    pub lines: Vec<Line>,
    /// Findings drawn from the figures, one sentence or paragraph each.
    pub findings: Vec<String>,
    /// Checks that passed (for example: every timed L1 read was a hit), as sentences.
    pub checks: Vec<String>,
    /// How the run was set up: value size, key count, runtime, peer versions.
    pub setup: Vec<String>,
}

/// The `p`th percentile of `samples` by nearest rank (sorts them); `None` when empty.
pub fn percentile(samples: &mut [Duration], p: usize) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    Some(samples[rank.min(samples.len()) - 1])
}

/// The `p`th percentile of each implementation's samples (zero for one with none), in order.
pub fn percentiles(samples: &mut [Vec<Duration>], p: usize) -> Vec<Duration> {
    samples
        .iter_mut()
        .map(|s| percentile(s, p).unwrap_or_default())
        .collect()
}

/// `a` relative to the baseline `b`, guarded against a zero baseline.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// The median of `values` (sorts them); 0 when empty.
pub fn median_f64(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A duration for reading: `848 ns`, `41.2 µs`, `1.27 ms`, `3.41 s`, three significant digits.
pub fn duration(d: Duration) -> String {
    nanos(d.as_secs_f64() * 1e9)
}

/// A time in nanoseconds (fractions allowed) for reading, as [`duration`] writes it.
pub fn nanos(ns: f64) -> String {
    let (value, unit) = if ns < 1_000.0 {
        (ns, "ns")
    } else if ns < 1_000_000.0 {
        (ns / 1e3, "µs")
    } else if ns < 1_000_000_000.0 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
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

/// A ratio: `0.98×`, `34.0×`, `48,213×`; `-` when it is not a finite number.
pub fn times(ratio: f64) -> String {
    if !ratio.is_finite() {
        return "-".to_owned();
    }
    if ratio < 10.0 {
        format!("{ratio:.2}×")
    } else if ratio < 100.0 {
        format!("{ratio:.1}×")
    } else {
        // Rounded; far below u64::MAX for any pair of figures this benchmark produces.
        format!("{}×", thousands(ratio.round() as u64))
    }
}

/// `1000000` as `1,000,000`.
pub fn thousands(n: u64) -> String {
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

/// A rate for reading: `412k/s`, `1.20M/s`, `950/s`.
pub fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.0}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

/// `met` or `MISSED`, the word the target column uses.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The rows of a table as aligned plain text: the first column left-aligned, the others too
/// (they hold text), separated by two spaces.
pub fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|row| row.get(c).map_or(0, |cell| cell.chars().count()))
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (c, width) in widths.iter().enumerate() {
            let cell = row.get(c).map_or("", String::as_str);
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_formatted_for_reading() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_100_000), "1,100,000");
        assert_eq!(duration(Duration::from_nanos(848)), "848 ns");
        assert_eq!(duration(Duration::from_nanos(1_270_000)), "1.27 ms");
        assert_eq!(nanos(31.25), "31.2 ns");
        assert_eq!(times(48_213.4), "48,213×");
        assert_eq!(times(f64::NAN), "-");
        assert_eq!(rate(412_345.0), "412k/s");
        assert_eq!(rate(1_204_000.0), "1.20M/s");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(
            percentile(&mut samples, 99),
            Some(Duration::from_micros(99))
        );
        assert_eq!(
            percentile(&mut samples, 100),
            Some(Duration::from_micros(100))
        );
        assert_eq!(percentile(&mut [], 50), None);
        assert_eq!(median_f64(&mut [3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn tables_align() {
        let text = aligned(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(text, "a    bb\nxyz  1\n");
    }
}
