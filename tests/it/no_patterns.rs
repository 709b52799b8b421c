//! ARCHITECTURE.md's invariant "no pattern from data": no Redis command that matches keys or
//! channels by pattern (`SCAN` and its kin, `KEYS`, `PSUBSCRIBE`) appears anywhere in the
//! product's source, in Rust or in the Lua it sends, so no glob can ever be built from a
//! parameter, a namespace or an event.

use std::path::{Path, PathBuf};

/// The crates a node runs (the benchmark and the test tools reproduce the seed's `SCAN` loop
/// on purpose and are not shipped).
const PRODUCT: [&str; 5] = [
    "crates/cache-core/src",
    "crates/cache-memory/src",
    "crates/cache-redis/src",
    "crates/cache-edge/src",
    "crates/edge-cache-cli/src",
];

/// Pattern-matching commands, as Redis spells them (matched case-insensitively as whole words
/// inside a string literal: `cmd("SCAN")`, `redis.call('KEYS', ...)`).
const COMMANDS: [&str; 7] = [
    "SCAN",
    "SSCAN",
    "HSCAN",
    "ZSCAN",
    "KEYS",
    "PSUBSCRIBE",
    "PUNSUBSCRIBE",
];

/// redis-rs methods that send them.
const METHODS: [&str; 6] = [
    ".scan(",
    ".scan_match(",
    ".hscan(",
    ".sscan(",
    ".zscan(",
    ".psubscribe(",
];

/// Every place in `text` that sends a pattern command, as `line: text`: a command name given
/// to `cmd(` (redis-rs) or `call(` / `pcall(` (Lua), or a redis-rs method that sends one.
fn pattern_uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let command = ["cmd(", "call(", "pcall("].iter().any(|opener| {
            code.match_indices(opener).any(|(at, _)| {
                let rest = code[at + opener.len()..].trim_start();
                let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                    return false;
                };
                let name = rest[1..].split(quote).next().unwrap_or_default();
                COMMANDS.iter().any(|c| name.eq_ignore_ascii_case(c))
            })
        });
        let method = METHODS.iter().any(|m| code.contains(m));
        if command || method {
            found.push(format!("{}: {}", number + 1, line.trim()));
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "lua") {
            out.push(path);
        }
    }
}

#[test]
fn the_detector_finds_each_form_of_pattern_command() {
    for planted in [
        r#"redis::cmd("SCAN").arg(0)"#,
        r#"redis::cmd("keys").arg(pattern)"#,
        "local k = redis.call('KEYS', ARGV[1])",
        r#"redis.pcall("SSCAN", KEYS[1], 0)"#,
        "conn.psubscribe(channel).await",
        "conn.scan_match(glob).await",
    ] {
        assert_eq!(pattern_uses(planted).len(), 1, "{planted}");
    }
    for innocent in [
        "for i = 1, #KEYS do",
        "redis.call('GET', KEYS[1])",
        "map.keys()",
        "// the seed's SCAN loop, replaced by one INCR",
        r#"redis::cmd("SUBSCRIBE").arg(channel)"#,
        r#"Scope::Keys(keys) => ("keys", WireKeys::Slice(keys)),"#,
    ] {
        assert!(pattern_uses(innocent).is_empty(), "{innocent}");
    }
}

#[test]
fn no_product_source_sends_a_pattern_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in PRODUCT {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut uses = Vec::new();
    let mut lua_calls = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        lua_calls += text.matches("redis.call(").count();
        uses.extend(
            pattern_uses(&text)
                .into_iter()
                .map(|u| format!("{}:{u}", file.display())),
        );
    }
    assert!(
        lua_calls > 10,
        "the scan must cover the Lua scripts too ({lua_calls} calls)"
    );
    assert!(
        uses.is_empty(),
        "pattern commands in the product:\n{}",
        uses.join("\n")
    );
}
