//! `serve --metrics`: the node's metrics over HTTP, in a format Prometheus's own checker
//! (`promtool check metrics`, from Debian's prometheus package) accepts, with figures that follow
//! what the node did.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use serde_json::json;
use test_support::RedisServer;

use crate::support::ServeNode;

/// `GET path` on `addr`; the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// `promtool check metrics` on `text`: its verdict and what it printed.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed to check the metrics format ({e}); `cargo xtask test` \
                 installs it, or: sudo apt-get install -y prometheus"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn metrics_are_scraped_over_http_and_pass_promtool() {
    let redis = RedisServer::start();
    let mut node = ServeNode::spawn_full(&redis, "scraped", &[], &["--metrics", "127.0.0.1:0"]);
    let ready = node.ready_line();
    let url = ready["metrics"]
        .as_str()
        .expect("the ready line names the endpoint");
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap()
        .to_owned();

    let (status, before) = get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (ok, said) = promtool(&before);
    assert!(ok, "promtool refused the metrics: {said}\n{before}");
    let labels = r#"{node_id="scraped",region="default"}"#;
    assert_eq!(
        sample(&before, &format!("edge_cache_sets_total{labels}")),
        0.0
    );

    let g42 = json!({"gpu_id": "g-42"});
    node.set("gpu_availability", &g42, &json!("free"));
    node.get("gpu_availability", &g42);
    let (_, after) = get(&addr, "/metrics");
    assert!(promtool(&after).0);
    assert_eq!(
        sample(&after, &format!("edge_cache_sets_total{labels}")),
        1.0
    );
    assert_eq!(
        sample(&after, &format!("edge_cache_l1_hits_total{labels}")),
        1.0
    );
    assert_eq!(
        sample(&after, &format!("edge_cache_bus_connected{labels}")),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"edge_cache_l1_entries{node_id="scraped",region="default",namespace="gpu_availability"}"#
        ),
        1.0
    );
    assert!(after.contains("# TYPE edge_cache_propagation_lag_seconds histogram"));
    // One L2 read so far (the set's key was read from L1): a read of another key adds one.
    let l2_reads = r#"edge_cache_l2_read_seconds_count{node_id="scraped",region="default",namespace="gpu_availability"}"#;
    let reads_before = sample(&after, l2_reads);
    node.get("gpu_availability", &json!({"gpu_id": "g-7"}));
    let (_, later) = get(&addr, "/metrics");
    assert_eq!(sample(&later, l2_reads), reads_before + 1.0);
    assert!(after.contains(
        r#"edge_cache_propagation_lag_seconds_bucket{node_id="scraped",region="default",le="+Inf"}"#
    ));

    // Anything else is a 404.
    assert_eq!(get(&addr, "/").0, "HTTP/1.1 404 Not Found");
    node.quit();
}

#[test]
fn promtool_refuses_what_is_not_the_format() {
    // The checker the test above relies on can fail.
    let (ok, _) = promtool("# TYPE broken counter\nbroken{unclosed=\"x} 1\n");
    assert!(!ok);
}
