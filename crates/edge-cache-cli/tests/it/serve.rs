//! `serve`'s line protocol: one JSON line per command, errors included, and a clean exit.

use serde_json::json;
use test_support::RedisServer;

use crate::support::ServeNode;

#[test]
fn every_command_gets_exactly_one_json_reply_and_errors_do_not_stop_the_node() {
    let redis = RedisServer::start();
    let mut node = ServeNode::spawn(&redis, "edge-proto");
    node.wait_ready();

    for (line, error) in [
        ("frobnicate", "unknown command \"frobnicate\""),
        ("get gpu_avail {}", "unknown namespace \"gpu_avail\""),
        ("get gpu_pricing", "missing PARAMS_JSON"),
        ("get gpu_pricing {gpu}", "PARAMS_JSON is not valid JSON"),
        ("set gpu_pricing {} nope", "VALUE_JSON is not valid JSON"),
        ("set gpu_pricing {} 1 ttl=0", "ttl=0 is not a whole number"),
        ("set gpu_pricing {} 1 colour=red", "unknown option colour="),
        (
            "notify booking-created booking=b-1",
            "booking_created needs gpu=",
        ),
        (
            "notify pricing-updated gpu-type=A100 price=cheap",
            "price \"cheap\" is not a number",
        ),
        (
            "invalidate gpu_pricing resource=r reason=x",
            "reason= applies to namespace",
        ),
    ] {
        let reply = node.send(line);
        assert_eq!(reply["ok"], false, "{line:?}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.starts_with(error), "{line:?}: {reply}");
    }

    // Blank lines and comments get no reply; the next command's reply is its own.
    let reply =
        node.send("\n# a comment\nset market_stats {\"m\": \"A100\"} {\"depth\": 3} tag=m:A100");
    assert_eq!(reply, json!({"ok": true}));
    assert_eq!(
        node.get("market_stats", &json!({"m": "A100"})),
        Some(json!({"depth": 3}))
    );
    node.ok("invalidate market_stats resource=m:A100");
    assert_eq!(node.get("market_stats", &json!({"m": "A100"})), None);

    let health = node.ok("health");
    assert_eq!(health["value"]["status"], "healthy", "{health}");
    assert_eq!(node.counter("sets"), 1);
    assert!(node.quit().success());
}
