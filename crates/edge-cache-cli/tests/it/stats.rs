//! `stats`: the node's counters, Redis's own figures and health.

use serde_json::Value;
use test_support::RedisServer;

use crate::support::edge;

#[test]
fn stats_reports_redis_memory_clients_and_health() {
    let redis = RedisServer::start();
    let run = edge(&redis, &["--node-id", "ops-stats", "stats"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("stats prints JSON");

    let used = report["redis"]["used_memory_bytes"]
        .as_u64()
        .expect("used memory");
    assert!(used > 0, "{report}");
    let clients = report["redis"]["connected_clients"]
        .as_u64()
        .expect("clients");
    assert!(clients >= 1, "{report}");
    assert_eq!(report["redis"]["evicts_keys"], false, "{report}");
    assert_eq!(report["redis"]["url"], redis.url());
    assert_eq!(report["redis"]["channel"], "cache_invalidation_events");

    assert_eq!(report["health"]["status"], "healthy", "{report}");
    assert_eq!(report["health"]["l2_connected"], true);
    assert_eq!(report["health"]["bus_connected"], true);

    assert_eq!(report["node"]["node_id"], "ops-stats");
    assert_eq!(
        report["node"]["namespaces"].as_array().map(Vec::len),
        Some(6)
    );
}
