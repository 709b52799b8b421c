//! Project automation, reached as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask test`: installs `redis-server`, `openssl`, `python3` and `promtool` where missing, then runs
//!   the format check, clippy with warnings denied, every test of the workspace, the API docs with
//!   warnings denied, and the demo's freshness audit under `--chaos` for 3 s on each backend. CI
//!   runs exactly this.
//! - `cargo xtask demo [--duration SECS] [--nodes N] ...`: the simulated GPU marketplace on the
//!   embedded (in-process) backends, with a freshness audit that must find no stale read.
//! - `cargo xtask bench [--quick] [--only ROWS] [--keys N] [--write PATH]`: edge-cache side by
//!   side with its peers (amalgam-cache, moka, quick_cache, raw redis-rs) and with the seed's
//!   SCAN+DEL, on a private `redis-server`, release builds, one table; writes
//!   `docs/benchmarks.md`.

mod bench;
mod chaos;
mod demo;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    install redis-server, openssl, python3 and promtool if missing, then fmt check, clippy -D warnings,
          every test, docs with warnings denied, and the demo's chaos audit
  demo    run the simulated GPU marketplace on the embedded backends (demo --help for options)
  bench   edge-cache vs amalgam-cache, moka, quick_cache, raw redis-rs and the seed, on a
          private redis-server, in release builds; one table (bench --help for options)
  chaos   the deterministic fleet simulation: --seeds N [--first S], each seed a fleet under
          faults judged against the staleness bound (chaos --help for options)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::parse(&args[1..]).and_then(demo::run),
        // Like `test`, `bench` installs redis-server where it is missing, so it runs on a fresh
        // machine; `--help` installs nothing.
        Some("bench") => bench::parse(&args[1..]).and_then(|bench| {
            if !bench.help {
                ensure_tools()?;
            }
            bench::run(bench)
        }),
        Some("chaos") => chaos::parse(&args[1..]).and_then(chaos::run),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, joined by `: `, each said once: edge-cache's errors quote their
/// source in their message already, so `{:#}` would print it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The full check a change must pass; `.ci/run` calls exactly this.
fn test(extra: &[String]) -> Result<()> {
    if !extra.is_empty() {
        bail!("`cargo xtask test` takes no arguments (got {extra:?})");
    }
    ensure_tools()?;
    run("cargo", &["fmt", "--all", "--", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The benchmark crate is left out: its bench target and the peers it compares with
    // (dev-dependencies) are for `cargo xtask bench` only and would slow every test run. Clippy
    // above still checks it.
    run(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "edge-cache-bench",
            "--all-targets",
        ],
    )?;
    run(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "edge-cache-bench",
            "--doc",
        ],
    )?;
    // The API docs build without a warning: a broken intra-doc link is a broken promise.
    run_with_env(
        "cargo",
        &[
            "doc",
            "--workspace",
            "--exclude",
            "edge-cache-bench",
            "--no-deps",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The freshness audit under injected faults, a short run on each backend: the demo's
    // workload against lost subscriptions and failed commands, judged read by read.
    for backend in [&[][..], &["--redis"][..]] {
        let mut args: Vec<String> = ["--chaos", "--duration", "3"]
            .iter()
            .chain(backend)
            .map(|a| (*a).to_owned())
            .collect();
        args.extend(["--seed".to_owned(), std::process::id().to_string()]);
        println!("xtask: $ cargo xtask demo {}", args.join(" "));
        demo::run(demo::parse(&args)?)
            .with_context(|| format!("the freshness audit under `demo {}`", args.join(" ")))?;
    }
    Ok(())
}

/// Programs the test suites run, with the Debian package that provides each: the Redis suites
/// start their own `redis-server`, the TLS suite makes its certificates with `openssl`, and
/// cache-core's `python_keys` test checks key derivation against the Python seed's own code in
/// `python3`, and the CLI's metrics test checks the scrape format with Prometheus's `promtool`.
const TOOLS: [(&str, &str); 4] = [
    ("redis-server", "redis-server"),
    ("openssl", "openssl"),
    ("python3", "python3"),
    ("promtool", "prometheus"),
];

/// Installs whatever of [`TOOLS`] is missing (apt-get, as root), or stops with the one command
/// that does.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| !demo::on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = missing.join(" ");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        bail!(
            "{packages} missing and this user cannot install it.\n\
             Install it with:  sudo apt-get install -y {packages}\n\
             then run `cargo xtask test` again"
        );
    }
    eprintln!("xtask: {packages} missing; installing with apt-get");
    run("apt-get", &["update", "-q"])?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {packages} failed ({status})");
    }
    for (program, _) in TOOLS {
        if !demo::on_path(program) {
            bail!("{program} still not found on PATH after installing {packages}");
        }
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_env(program, args, &[])
}

/// [`run`] with `env` set for the program.
fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    eprintln!("xtask: $ {}{program} {}", shown.concat(), args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let quoted = cache_core::Error::new(
            cache_core::ErrorKind::L2,
            format!("Redis PING failed: {io}"),
        )
        .with_source(io);
        let e = anyhow::Error::new(quoted).context("starting the demo");
        assert_eq!(
            describe(&e),
            "starting the demo: L2 store error: Redis PING failed: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }
}
