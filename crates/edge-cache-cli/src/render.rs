//! What the CLI prints: stats, health and Redis figures as JSON, events as `watch` lines.

use std::time::{SystemTime, UNIX_EPOCH};

use cache_core::{Event, L2Info, Scope};
use cache_edge::{EdgeCache, Health, Stats};
use serde_json::{json, Map, Value};

use crate::node::Target;

/// A node's counters and L1 use per namespace.
pub fn stats_json(s: &Stats) -> Value {
    let counters = [
        ("l1_hits", s.l1_hits),
        ("l2_hits", s.l2_hits),
        ("misses", s.misses),
        ("sets", s.sets),
        ("invalidations", s.invalidations),
        ("notifications", s.notifications),
        ("events_published", s.events_published),
        ("publish_errors", s.publish_errors),
        ("events_received", s.events_received),
        ("events_applied", s.events_applied),
        ("events_rejected", s.events_rejected),
        ("rejected_unsigned", s.rejected_unsigned),
        (
            "rejected_malformed_signature",
            s.rejected_malformed_signature,
        ),
        ("rejected_unknown_key", s.rejected_unknown_key),
        ("rejected_bad_mac", s.rejected_bad_mac),
        ("rejected_replayed", s.rejected_replayed),
        ("rejected_stale", s.rejected_stale),
        ("own_events_ignored", s.own_events_ignored),
        ("l2_errors", s.l2_errors),
        ("decode_errors", s.decode_errors),
        ("loads", s.loads),
        ("load_errors", s.load_errors),
        ("fills_fenced", s.fills_fenced),
        ("resyncs", s.resyncs),
    ];
    let mut out = Map::new();
    out.insert("node_id".into(), json!(s.node_id));
    out.insert("region".into(), json!(s.region));
    for (name, value) in counters {
        out.insert(name.into(), json!(value));
    }
    out.insert(
        "last_event_time".into(),
        json!(s.last_event_time.map(|t| t.as_secs_f64())),
    );
    let namespaces: Vec<Value> = s
        .namespaces
        .iter()
        .map(|ns| {
            json!({
                "name": ns.name,
                "l1_entries": ns.l1_entries,
                "l1_bytes": ns.l1_bytes,
                "l1_capacity_bytes": ns.l1_capacity_bytes,
            })
        })
        .collect();
    out.insert("namespaces".into(), Value::Array(namespaces));
    Value::Object(out)
}

/// A node's health, with the seed's field names where it had them.
pub fn health_json(h: &Health) -> Value {
    json!({
        "status": h.status.as_str(),
        "l2_connected": h.l2_connected,
        "bus_connected": h.bus_connected,
        "event_queue_size": h.event_queue_size,
        "last_event_age_ms": h.last_event_age.map(|age| age.as_secs_f64() * 1000.0),
        "reason": h.reason,
    })
}

/// Redis's own figures, or why they could not be read.
fn l2_json(target: &Target, info: cache_core::Result<L2Info>) -> Value {
    let mut out = Map::new();
    out.insert("url".into(), json!(cache_redis::redact(&target.url)));
    out.insert("channel".into(), json!(target.channel));
    match info {
        Ok(info) => {
            out.insert("used_memory_bytes".into(), json!(info.used_memory_bytes));
            out.insert("connected_clients".into(), json!(info.connected_clients));
            out.insert("evicts_keys".into(), json!(info.evicts_keys));
        }
        Err(e) => {
            let error = crate::fail::scrub(&e.to_string(), &target.url);
            out.insert("error".into(), json!(error));
        }
    }
    Value::Object(out)
}

/// The `stats` report: `{"node": ..., "redis": ..., "health": ...}`.
pub async fn stats_report(target: &Target, node: &EdgeCache) -> Value {
    let info = node.l2_info().await;
    let health = node.health().await;
    json!({
        "node": stats_json(&node.stats()),
        "redis": l2_json(target, info),
        "health": health_json(&health),
    })
}

/// Seconds since the Unix epoch, as event timestamps count them.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One `watch` line for one message received at `now` (seconds since the epoch).
///
/// A decoded event: `<type> resource=<id> source=<node> namespaces=<a,b> scope=<scope> v=<n>
/// lag_ms=<ms> data=<json>`; otherwise `malformed: <error> (<n> bytes)`.
pub fn watch_line(bytes: &[u8], now: f64) -> String {
    match Event::decode(bytes) {
        Ok(event) => describe(&event, now),
        Err(e) => format!("malformed: {e} ({} bytes)", bytes.len()),
    }
}

fn describe(event: &Event, now: f64) -> String {
    let or_dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let scope = match &event.scope {
        Scope::Namespace => "namespace".to_owned(),
        Scope::Resource => "resource".to_owned(),
        Scope::Keys(keys) => format!("keys:{}", keys.join(",")),
        _ => "other".to_owned(),
    };
    // An event without a timestamp (0) has no lag to speak of.
    let lag = if event.timestamp > 0.0 {
        format!("{:.1}", (now - event.timestamp) * 1000.0)
    } else {
        "?".to_owned()
    };
    format!(
        "{} resource={} source={} namespaces={} scope={} v={} lag_ms={} data={}",
        event.event_type,
        or_dash(event.resource_id.clone()),
        or_dash(event.source_node.clone()),
        or_dash(event.affected_namespaces.join(",")),
        scope,
        event.version,
        lag,
        Value::Object(event.data.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::EventType;

    #[test]
    fn an_event_line_names_everything_and_its_lag() {
        let mut event = Event::new(
            EventType::BookingCreated,
            "booking_b-1",
            "edge-a",
            "id",
            100.0,
        );
        event.affected_namespaces = vec!["gpu_avail".into(), "order_book".into()];
        event.data.insert("gpu_id".into(), json!("g-42"));
        let line = watch_line(&event.encode(), 100.25);
        assert_eq!(
            line,
            "booking_created resource=booking_b-1 source=edge-a namespaces=gpu_avail,order_book \
             scope=namespace v=1 lag_ms=250.0 data={\"gpu_id\":\"g-42\"}"
        );
    }

    #[test]
    fn a_key_event_lists_its_keys_and_garbage_is_malformed() {
        let mut event = Event::new(EventType::ManualInvalidation, "gpu_pricing", "a", "id", 0.0);
        event.scope = Scope::Keys(vec!["gpu_pricing:00".into()]);
        let line = watch_line(&event.encode(), 5.0);
        assert!(
            line.contains("namespaces=- scope=keys:gpu_pricing:00"),
            "{line}"
        );
        assert!(line.contains("lag_ms=?"), "{line}");
        let line = watch_line(b"\x00garbage", 5.0);
        assert!(line.starts_with("malformed: malformed event: "), "{line}");
        assert!(line.ends_with("(8 bytes)"), "{line}");
    }
}
