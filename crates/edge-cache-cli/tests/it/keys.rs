//! Event keys from the command line: `keygen`, `verify`, and nodes that sign with a key file.

use std::process::Command;

use cache_core::signing::{EventKeys, SigningKey};
use serde_json::json;
use test_support::RedisServer;

use crate::support::{edge, run, ServeNode, BIN};

fn keygen(id: &str) -> String {
    let out = run(keygen_command(id));
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.trim().to_owned()
}

fn keygen_command(id: &str) -> Command {
    let mut command = Command::new(BIN);
    command.args(["keygen", "--id", id]);
    command
}

/// The ring a key line makes (the way the CLI reads it).
fn ring_of(line: &str) -> EventKeys {
    let (id, secret) = line.split_once(':').unwrap();
    EventKeys::new(SigningKey::from_hex(id, secret).unwrap())
}

fn key_file(dir: &tempfile::TempDir, name: &str, lines: &[&str]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("# fleet keys\n{}\n", lines.join("\n"))).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn keygen_prints_a_fresh_key_line_and_refuses_a_bad_id() {
    let (one, two) = (keygen("2026-12"), keygen("2026-12"));
    for line in [&one, &two] {
        let (id, hex) = line.split_once(':').unwrap();
        assert_eq!(id, "2026-12");
        assert_eq!(hex.len(), 64, "{line}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    }
    assert_ne!(one, two, "each key is new");
    let bad = run(keygen_command("no spaces"));
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("key id"), "{}", bad.stderr);
}

#[test]
fn verify_names_the_signing_key_or_the_reason_for_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, theirs) = (keygen("mine"), keygen("theirs"));
    let file = key_file(&dir, "keys", &[&mine]);
    let event = br#"{"source_node":"a","event_id":"e-1"}"#;
    let verify = |message: Vec<u8>| {
        let mut command = Command::new(BIN);
        command.args(["--keys-file", &file, "verify"]);
        run_with_stdin(command, &message)
    };
    let ok = verify(ring_of(&mine).sign(event));
    assert_eq!((ok.code, ok.stdout.trim()), (Some(0), "signed by mine"));
    let unknown = verify(ring_of(&theirs).sign(event));
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("refused: unknown key id"),
        "{}",
        unknown.stderr
    );
    let unsigned = verify(event.to_vec());
    assert!(
        unsigned.stderr.contains("refused: unsigned"),
        "{}",
        unsigned.stderr
    );
    // The secret appears in no output.
    let secret = mine.split_once(':').unwrap().1;
    for out in [&ok, &unknown, &unsigned] {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
    // A key file that is not key lines: the line number, never the line.
    let broken = key_file(&dir, "broken", &["mine:notahexsecret"]);
    let mut command = Command::new(BIN);
    command.args(["--keys-file", &broken, "verify"]);
    let out = run_with_stdin(command, event);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    assert!(!out.stderr.contains("notahexsecret"), "{}", out.stderr);
}

#[test]
fn a_cli_notification_signed_with_the_fleet_key_is_applied_and_refused_elsewhere() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fleet_key = keygen("fleet");
    let fleet = key_file(&dir, "fleet", &[&fleet_key]);
    let other = key_file(&dir, "other", &[&keygen("other")]);
    let mut member = ServeNode::spawn_with(&redis, "member", &["--keys-file", &fleet]);
    let mut outsider = ServeNode::spawn_with(&redis, "outsider", &["--keys-file", &other]);
    member.wait_ready();
    outsider.wait_ready();
    let g42 = json!({"gpu_id": "g-42"});
    for node in [&mut member, &mut outsider] {
        node.set("gpu_availability", &g42, &json!("free"));
    }
    let sent = edge(
        &redis,
        &[
            "--keys-file",
            &fleet,
            "notify",
            "booking-created",
            "--booking",
            "b-1",
            "--gpu",
            "g-42",
        ],
    );
    assert_eq!(sent.code, Some(0), "{sent:?}");
    member.wait_counter("events_applied", 1);
    outsider.wait_counter("rejected_unknown_key", 1);
    assert_eq!(member.get("gpu_availability", &g42), None, "applied");
    assert_eq!(
        outsider.get("gpu_availability", &g42),
        Some(json!("free")),
        "refused: the outsider's L1 is untouched"
    );
    assert_eq!(outsider.counter("events_applied"), 0);
    member.quit();
    outsider.quit();
}

/// Runs `command` with `input` on stdin.
fn run_with_stdin(mut command: Command, input: &[u8]) -> crate::support::Run {
    use std::io::Write as _;
    let mut child = command
        .env_remove("EDGE_CACHE_KEYS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input (a broken key file) closes the pipe: the
    // write may then fail, and the exit status says what happened.
    let written = child.stdin.take().unwrap().write_all(input);
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    crate::support::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: std::time::Duration::ZERO,
    }
}
