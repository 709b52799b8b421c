//! Integration tests of the `edge-cache` binary, run as separate OS processes against a real,
//! throwaway `redis-server` per test.

mod cli;
mod fleet;
mod keys;
mod metrics;
mod serve;
mod stats;
mod support;
mod watch;
