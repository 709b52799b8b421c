//! `watch`: one line per message on the channel, decoded or not, with each event's lag.

use std::process::Stdio;

use serde_json::json;
use test_support::RedisServer;

use crate::support::{edge, edge_cache, now_secs, publish_raw, ChildGuard, Lines};

const CHANNEL: &str = "cache_invalidation_events";

/// The lag a line reports, in ms.
fn lag_ms(line: &str) -> f64 {
    let lag = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("lag_ms="))
        .unwrap_or_else(|| panic!("no lag in {line:?}"));
    lag.parse()
        .unwrap_or_else(|e| panic!("lag {lag:?} in {line:?}: {e}"))
}

#[test]
fn watch_prints_events_with_their_lag_and_malformed_messages() {
    let redis = RedisServer::start();
    let mut child = edge_cache(&redis.url())
        .args(["watch", "--count", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning edge-cache watch");
    let lines = Lines::spawn(child.stdout.take().expect("piped stdout"), "watch");
    let mut watcher = ChildGuard::from(child);

    // Subscribed once the first line is out: everything published from now on is printed.
    assert_eq!(
        lines.next(),
        format!("watching {CHANNEL} on {}", redis.url())
    );

    // 1. An event from another CLI invocation.
    let notify = edge(
        &redis,
        &[
            "--node-id",
            "ops-1",
            "notify",
            "booking-created",
            "--booking",
            "bk-1",
            "--gpu",
            "g-42",
        ],
    );
    assert_eq!(notify.code, Some(0), "{notify:?}");
    // 2. Garbage, published straight to Redis.
    let garbage = b"{\"event_type\": \"booking_created\", \"truncated";
    assert_eq!(
        publish_raw(&redis, CHANNEL, garbage),
        1,
        "the watcher is subscribed"
    );
    // 3. An event as a seed (Python) node writes it: enum repr, no version, no scope.
    let seed = json!({
        "event_type": "CacheEventType.PRICING_UPDATED",
        "resource_id": "price_A100",
        "data": {"gpu_type": "A100", "price": 2.5},
        "timestamp": now_secs(),
        "source_node": "edge_node_py000001",
        "event_id": "0b1e3a52-3c55-4c5e-a1d5-0f3f4f2b8f11",
        "affected_namespaces": ["gpu_pricing"],
    });
    publish_raw(&redis, CHANNEL, seed.to_string().as_bytes());

    let event = lines.next();
    assert!(
        event.starts_with(
            "booking_created resource=booking_bk-1 source=ops-1 \
             namespaces=gpu_avail,gpu_pricing,order_book scope=namespace v=1 lag_ms="
        ),
        "{event}"
    );
    assert!(event.contains(r#""gpu_id":"g-42""#), "{event}");
    let lag = lag_ms(&event);
    assert!((0.0..20_000.0).contains(&lag), "lag {lag} in {event}");

    let malformed = lines.next();
    assert!(
        malformed.starts_with("malformed: malformed event: "),
        "{malformed}"
    );
    assert!(
        malformed.ends_with(&format!("({} bytes)", garbage.len())),
        "{malformed}"
    );

    let python = lines.next();
    assert!(
        python.starts_with(
            "pricing_updated resource=price_A100 source=edge_node_py000001 \
             namespaces=gpu_pricing scope=namespace v=0 lag_ms="
        ),
        "{python}"
    );
    // The seed's timestamp is the test's clock, on the same host: the lag is real and small
    // (a little negative would be float rounding at worst).
    let lag = lag_ms(&python);
    assert!((-1.0..20_000.0).contains(&lag), "lag {lag} in {python}");

    // After three messages it exits by itself, having printed nothing more.
    assert_eq!(lines.rest(), Vec::<String>::new());
    assert!(watcher.wait().success());
}
