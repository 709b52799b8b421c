//! Project automation, reached as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask test`: installs `redis-server` if it is missing, then runs the format check,
//!   clippy with warnings denied and every test of the workspace. CI runs exactly this.
//! - `cargo xtask demo [--duration SECS] [--nodes N] ...`: the simulated GPU marketplace on the
//!   embedded (in-process) backends, with a freshness audit that must find no stale read.
//! - `cargo xtask bench [--keys N] [--write PATH]`: namespace invalidation on a private
//!   `redis-server`, edge-cache's INCR against the seed's SCAN+DEL; writes `docs/benchmarks.md`.

mod bench;
mod demo;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    install redis-server if missing, then fmt check, clippy -D warnings, every test
  demo    run the simulated GPU marketplace on the embedded backends (demo --help for options)
  bench   time namespace invalidation on a private redis-server, edge-cache vs the seed
          (bench --help for options)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::parse(&args[1..]).and_then(demo::run),
        Some("bench") => bench::parse(&args[1..]).and_then(bench::run),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The full check a change must pass; `.ci/run` calls exactly this.
fn test(extra: &[String]) -> Result<()> {
    if !extra.is_empty() {
        bail!("`cargo xtask test` takes no arguments (got {extra:?})");
    }
    ensure_redis_server()?;
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
    run("cargo", &["test", "--workspace", "--all-targets"])?;
    run("cargo", &["test", "--workspace", "--doc"])?;
    Ok(())
}

/// The Redis suites start their own `redis-server`; make sure there is one to start.
fn ensure_redis_server() -> Result<()> {
    if redis_server_version().is_some() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        bail!(
            "redis-server is not installed and this user cannot install it.\n\
             Install it with:  sudo apt-get install -y redis-server\n\
             then run `cargo xtask test` again"
        );
    }
    eprintln!("xtask: redis-server is missing; installing it with apt-get");
    run("apt-get", &["update", "-q"])?;
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "redis-server",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install redis-server failed ({status})");
    }
    match redis_server_version() {
        Some(v) => {
            eprintln!("xtask: installed {v}");
            Ok(())
        }
        None => bail!("redis-server still not found on PATH after installing it"),
    }
}

fn redis_server_version() -> Option<String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
