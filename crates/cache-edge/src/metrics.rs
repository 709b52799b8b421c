//! A node's statistics and health in Prometheus's text exposition format (version 0.0.4), for a
//! scrape endpoint (`edge-cache serve --metrics ADDR`) or any other exporter.
//!
//! Written by hand rather than through a metrics facade: every figure already lives in
//! [`Stats`] and [`Health`], read in one snapshot, so the exporter is one function with no
//! registry, no global state and no dependency. Every metric is labelled with `node_id` and
//! `region`; per-namespace ones with `namespace` too.

use std::fmt::Write as _;
use std::time::Duration;

use cache_core::Codec;

use crate::stats::{Health, HealthStatus, Stats};
use crate::EdgeCache;

impl<C: Codec> EdgeCache<C> {
    /// The node's counters, gauges and propagation-lag histogram in Prometheus's text format.
    /// Pings L2 (for the health gauges), like [`EdgeCache::health`].
    pub async fn prometheus(&self) -> String {
        render(&self.stats(), &self.health().await)
    }
}

/// Renders a snapshot; see the module docs for the names.
pub fn render(stats: &Stats, health: &Health) -> String {
    let node = format!(
        "node_id=\"{}\",region=\"{}\"",
        escape(&stats.node_id),
        escape(&stats.region)
    );
    let mut out = String::with_capacity(16 * 1024);
    for (name, help, value) in stats.counters() {
        metric(
            &mut out,
            &format!("edge_cache_{name}_total"),
            "counter",
            &help,
        );
        let _ = writeln!(out, "edge_cache_{name}_total{{{node}}} {value}");
    }

    let gauges: [(&str, &str, f64); 6] = [
        (
            "pending_publications",
            "Publications of logged changes that failed and wait to be republished.",
            stats.pending_publications as f64,
        ),
        (
            "loads_in_flight",
            "Loads running now, background ones included.",
            stats.loads_in_flight as f64,
        ),
        (
            "l2_connected",
            "1 if L2 answered a ping, else 0.",
            flag(health.l2_connected),
        ),
        (
            "bus_connected",
            "1 if the event subscription is up, else 0.",
            flag(health.bus_connected),
        ),
        (
            "l2_breaker_open",
            "1 if reads and writes skip L2 because its circuit breaker is open, else 0.",
            flag(health.l2_breaker_open),
        ),
        (
            "event_queue_size",
            "Events delivered to the node that its listener has not applied yet.",
            health.event_queue_size as f64,
        ),
    ];
    for (name, help, value) in gauges {
        metric(&mut out, &format!("edge_cache_{name}"), "gauge", help);
        let _ = writeln!(out, "edge_cache_{name}{{{node}}} {value}");
    }
    for (name, help, age) in [
        (
            "last_event_age_seconds",
            "Seconds since the node last applied an event (absent before the first).",
            health.last_event_age,
        ),
        (
            "log_confirmed_age_seconds",
            "Seconds since the event logs last confirmed that the node applied every change (absent before the first confirmation).",
            health.log_confirmed_age,
        ),
    ] {
        metric(&mut out, &format!("edge_cache_{name}"), "gauge", help);
        if let Some(age) = age {
            let _ = writeln!(out, "edge_cache_{name}{{{node}}} {}", age.as_secs_f64());
        }
    }
    metric(
        &mut out,
        "edge_cache_health_status",
        "gauge",
        "1 for the node's current health status, 0 for the others.",
    );
    for (status, label) in [
        (HealthStatus::Healthy, "healthy"),
        (HealthStatus::Degraded, "degraded"),
        (HealthStatus::Unhealthy, "unhealthy"),
    ] {
        let _ = writeln!(
            out,
            "edge_cache_health_status{{{node},status=\"{label}\"}} {}",
            flag(health.status == status)
        );
    }

    type PerNamespace = fn(&crate::stats::NamespaceStats) -> f64;
    let per_namespace: [(&str, &str, PerNamespace); 5] = [
        ("l1_entries", "Entries in the namespace's L1.", |ns| {
            ns.l1_entries as f64
        }),
        ("l1_bytes", "Bytes held by the namespace's L1.", |ns| {
            ns.l1_bytes as f64
        }),
        (
            "l1_capacity_bytes",
            "The byte budget of the namespace's L1.",
            |ns| ns.l1_capacity_bytes as f64,
        ),
        (
            "l1_in_use",
            "1 if the namespace's L1 is read and filled right now, else 0.",
            |ns| flag(ns.l1_in_use),
        ),
        (
            "l1_outage_seconds",
            "Seconds the namespace's L1 has been out of use because the node could not be sure it heard every change.",
            |ns| ns.l1_outage.as_secs_f64(),
        ),
    ];
    for (name, help, value) in per_namespace {
        metric(&mut out, &format!("edge_cache_{name}"), "gauge", help);
        for ns in &stats.namespaces {
            let _ = writeln!(
                out,
                "edge_cache_{name}{{{node},namespace=\"{}\"}} {}",
                escape(&ns.name),
                value(ns)
            );
        }
    }

    let name = "edge_cache_propagation_lag_seconds";
    metric(
        &mut out,
        name,
        "histogram",
        "How late applied events were, from their issue to their application on this node.",
    );
    histogram(&mut out, name, &node, &stats.propagation_lag);

    type Tier = fn(&crate::stats::NamespaceStats) -> &crate::LagHistogram;
    let tiers: [(&str, &str, Tier); 2] = [
        (
            "edge_cache_l2_read_seconds",
            "How long the namespace's L2 reads past L1 took, hit or miss.",
            |ns| &ns.l2_latency,
        ),
        (
            "edge_cache_loader_seconds",
            "How long the namespace's loaders ran, failures and timeouts included.",
            |ns| &ns.loader_latency,
        ),
    ];
    for (name, help, of) in tiers {
        metric(&mut out, name, "histogram", help);
        for ns in &stats.namespaces {
            let labels = format!("{node},namespace=\"{}\"", escape(&ns.name));
            histogram(&mut out, name, &labels, of(ns));
        }
    }
    out
}

/// One histogram's series (cumulative buckets, sum, count) under `labels`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &crate::LagHistogram) {
    let mut cumulative = 0;
    for (bound, count) in &h.buckets {
        cumulative += count;
        let le = bound.map_or_else(|| "+Inf".to_owned(), seconds);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', " ")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// A bucket bound in seconds, without float noise (`0.0025`, not `0.0025000000000000001`).
fn seconds(d: Duration) -> String {
    let nanos = d.as_nanos();
    let whole = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_doc_as_help() {
        let counters = Stats::default().counters();
        assert!(counters.len() > 40, "{}", counters.len());
        for (name, help, _) in counters {
            assert!(
                help.len() > 10 && !help.contains("doc") && !help.contains('\u{1}'),
                "{name}: {help:?}"
            );
        }
    }

    #[test]
    fn the_lag_histogram_is_cumulative_with_its_sum_and_count() {
        let stats = Stats {
            propagation_lag: crate::LagHistogram {
                buckets: vec![
                    (Some(Duration::from_millis(1)), 2),
                    (Some(Duration::from_millis(5)), 3),
                    (None, 1),
                ],
                sum: Duration::from_millis(20),
            },
            ..Stats::default()
        };
        let health = Health {
            status: HealthStatus::Healthy,
            l2_connected: true,
            l2_breaker_open: false,
            bus_connected: true,
            event_queue_size: 0,
            last_event_age: None,
            log_confirmed_age: None,
            reason: None,
        };
        let text = render(&stats, &health);
        for line in [
            r#"edge_cache_propagation_lag_seconds_bucket{node_id="",region="",le="0.001"} 2"#,
            r#"edge_cache_propagation_lag_seconds_bucket{node_id="",region="",le="0.005"} 5"#,
            r#"edge_cache_propagation_lag_seconds_bucket{node_id="",region="",le="+Inf"} 6"#,
            r#"edge_cache_propagation_lag_seconds_sum{node_id="",region=""} 0.02"#,
            r#"edge_cache_propagation_lag_seconds_count{node_id="",region=""} 6"#,
            r#"edge_cache_health_status{node_id="",region="",status="healthy"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn bucket_bounds_print_without_float_noise() {
        assert_eq!(seconds(Duration::from_micros(100)), "0.0001");
        assert_eq!(seconds(Duration::from_micros(2_500)), "0.0025");
        assert_eq!(seconds(Duration::from_secs(3)), "3");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
