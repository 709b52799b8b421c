//! One-shot commands: what they print, their exit codes, and their errors.

use std::time::Duration;

use serde_json::{json, Value};
use test_support::RedisServer;

use crate::support::{edge, edge_cache, run, Run, BIN};

const PARAMS: &str = r#"{"gpu_id": "g-42"}"#;

/// Asserts a failed run printed exactly one `edge-cache: error:` line and exited 1.
fn assert_one_error_line(run: &Run) -> &str {
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(lines[0].starts_with("edge-cache: error: "), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    lines[0]
}

#[test]
fn set_then_get_returns_the_value() {
    let redis = RedisServer::start();
    let value = json!({"available": true, "slots": [1, 2], "note": "é"});
    let set = edge(
        &redis,
        &["set", "gpu_availability", PARAMS, &value.to_string()],
    );
    assert_eq!(set.code, Some(0), "{set:?}");
    assert!(set.stdout.is_empty() && set.stderr.is_empty(), "{set:?}");

    let get = edge(&redis, &["get", "gpu_availability", PARAMS]);
    assert_eq!(get.code, Some(0), "{get:?}");
    assert_eq!(get.stdout.lines().count(), 1, "{get:?}");
    let read: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(read, value);

    // The same parameters written differently are the same key (canonical JSON).
    let get = edge(
        &redis,
        &["get", "gpu_availability", r#"{ "gpu_id":"g-42" }"#],
    );
    assert_eq!(get.code, Some(0), "{get:?}");
}

#[test]
fn get_of_a_missing_key_exits_2() {
    let redis = RedisServer::start();
    let get = edge(&redis, &["get", "gpu_pricing", r#"{"gpu_type": "H100"}"#]);
    assert_eq!(get.code, Some(2), "{get:?}");
    assert_eq!(get.stderr, "miss\n");
    assert!(get.stdout.is_empty());
}

#[test]
fn invalidate_then_get_misses() {
    let redis = RedisServer::start();
    for params in [PARAMS, r#"{"gpu_id": "g-43"}"#] {
        assert_eq!(
            edge(&redis, &["set", "gpu_pricing", params, "2.5"]).code,
            Some(0)
        );
    }
    let invalidate = edge(&redis, &["invalidate", "gpu_pricing", "--reason", "test"]);
    assert_eq!(invalidate.code, Some(0), "{invalidate:?}");
    for params in [PARAMS, r#"{"gpu_id": "g-43"}"#] {
        assert_eq!(edge(&redis, &["get", "gpu_pricing", params]).code, Some(2));
    }
}

#[test]
fn invalidate_resource_drops_only_the_tagged_entries() {
    let redis = RedisServer::start();
    let tagged = r#"{"gpu_id": "g-1"}"#;
    let other = r#"{"gpu_id": "g-2"}"#;
    let set = edge(
        &redis,
        &[
            "set",
            "order_book",
            tagged,
            "[1]",
            "--tag",
            "gpu:g-1",
            "--ttl",
            "60",
        ],
    );
    assert_eq!(set.code, Some(0), "{set:?}");
    assert_eq!(
        edge(&redis, &["set", "order_book", other, "[2]"]).code,
        Some(0)
    );

    let invalidate = edge(
        &redis,
        &["invalidate", "order_book", "--resource", "gpu:g-1"],
    );
    assert_eq!(invalidate.code, Some(0), "{invalidate:?}");
    assert_eq!(edge(&redis, &["get", "order_book", tagged]).code, Some(2));
    let kept = edge(&redis, &["get", "order_book", other]);
    assert_eq!((kept.code, kept.stdout.as_str()), (Some(0), "[2]\n"));
}

#[test]
fn notify_without_a_required_field_names_it() {
    let redis = RedisServer::start();
    let run = edge(&redis, &["notify", "booking-created", "--booking", "b-1"]);
    let line = assert_one_error_line(&run);
    assert_eq!(line, "edge-cache: error: booking_created needs --gpu");

    let run = edge(&redis, &["notify", "gpu-exploded", "--gpu", "g"]);
    let line = assert_one_error_line(&run);
    assert!(
        line.contains("unknown event type \"gpu-exploded\""),
        "{line}"
    );
    assert!(line.contains("booking-created"), "{line}");

    let ok = edge(
        &redis,
        &[
            "notify",
            "booking-created",
            "--booking",
            "b-1",
            "--gpu",
            "g-42",
        ],
    );
    assert_eq!(ok.code, Some(0), "{ok:?}");
}

#[test]
fn an_unknown_namespace_lists_the_configured_ones() {
    let redis = RedisServer::start();
    let run = edge(&redis, &["get", "gpu_availabilty", PARAMS]);
    let line = assert_one_error_line(&run);
    assert!(
        line.contains("unknown namespace \"gpu_availabilty\""),
        "{line}"
    );
    for name in [
        "gpu_availability",
        "gpu_pricing",
        "order_book",
        "provider_status",
        "market_stats",
        "historical_data",
    ] {
        assert!(line.contains(name), "{name} missing: {line}");
    }
}

#[test]
fn bad_json_says_which_argument() {
    let redis = RedisServer::start();
    let run = edge(&redis, &["set", "gpu_pricing", PARAMS, "{price: 3}"]);
    let line = assert_one_error_line(&run);
    assert!(
        line.starts_with("edge-cache: error: VALUE_JSON is not valid JSON"),
        "{line}"
    );
    let run = edge(&redis, &["get", "gpu_pricing", "g-42"]);
    let line = assert_one_error_line(&run);
    assert!(
        line.starts_with("edge-cache: error: PARAMS_JSON is not valid JSON"),
        "{line}"
    );
}

#[test]
fn an_unreachable_redis_fails_fast_in_one_line_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    for args in [
        &["get", "gpu_pricing", PARAMS][..],
        &["set", "gpu_pricing", PARAMS, "1"],
        &["watch", "--count", "1"],
        &["stats"],
        &["serve"],
    ] {
        let mut command = edge_cache("redis://u:secret@127.0.0.1:1");
        command.args(args);
        let failed = run(command);
        let line = assert_one_error_line(&failed);
        assert!(!failed.stderr.contains("secret"), "{failed:?}");
        assert!(line.contains("redis://u:***@127.0.0.1:1"), "{line}");
        assert!(
            failed.elapsed < Duration::from_secs(10),
            "{args:?} took {:?}",
            failed.elapsed
        );
    }
}

#[test]
fn a_wrong_password_is_reported_without_it() {
    let redis = RedisServer::start_with_args(&["--requirepass", "right-password"]);
    let url = format!("redis://:wrong-password@127.0.0.1:{}/", redis.port());
    let mut command = edge_cache(&url);
    command.args(["get", "gpu_pricing", PARAMS]);
    let wrong = run(command);
    assert_one_error_line(&wrong);
    assert!(!wrong.stderr.contains("wrong-password"), "{wrong:?}");

    // And the right one works, from the environment.
    let url = format!("redis://:right-password@127.0.0.1:{}/", redis.port());
    let mut command = std::process::Command::new(BIN);
    command
        .env("EDGE_CACHE_REDIS", &url)
        .args(["get", "gpu_pricing", PARAMS]);
    let right = run(command);
    assert_eq!(right.code, Some(2), "{right:?}");
}

#[test]
fn help_documents_the_exit_codes_and_hides_the_url_from_the_environment() {
    let mut command = std::process::Command::new(BIN);
    command
        .env("EDGE_CACHE_REDIS", "redis://u:hunter2-pw@127.0.0.1:1")
        .arg("--help");
    let help = run(command);
    assert_eq!(help.code, Some(0), "{help:?}");
    assert!(
        help.stdout.contains("2  `get` found nothing"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains("hunter2-pw"), "{}", help.stdout);
    for subcommand in [
        "get",
        "set",
        "invalidate",
        "notify",
        "watch",
        "stats",
        "serve",
        "keygen",
        "verify",
    ] {
        assert!(
            help.stdout.contains(&format!("  {subcommand} ")),
            "{subcommand}"
        );
    }

    let usage = run({
        let mut command = std::process::Command::new(BIN);
        command.arg("frobnicate");
        command
    });
    assert_eq!(usage.code, Some(1), "{usage:?}");
}

/// The operator CLI on a Sentinel-managed primary: `--redis redis+sentinel://…` names only the
/// Sentinels, so the write and the read went through the primary they name.
#[test]
fn set_then_get_through_sentinel() {
    let topology = test_support::RedisSentinel::start();
    let hosts: Vec<String> = topology
        .sentinel_urls()
        .iter()
        .map(|url| {
            url.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let url = format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        topology.master_name()
    );
    let value = json!({"available": true});
    let mut set = edge_cache(&url);
    set.args(["set", "gpu_availability", PARAMS, &value.to_string()]);
    let set = run(set);
    assert_eq!(set.code, Some(0), "{set:?}");
    let mut get = edge_cache(&url);
    get.args(["get", "gpu_availability", PARAMS]);
    let get = run(get);
    assert_eq!(get.code, Some(0), "{get:?}");
    let read: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(read, value);
}
