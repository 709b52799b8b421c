//! Starts a `redis-server` through [`test_support::RedisServer`], prints `<pid> <port>` and holds
//! it until its standard input closes.
//!
//! A helper for the test that kills this process with `SIGKILL` (so no destructor runs) and checks
//! that the server does not outlive it.

use std::io::{BufRead, Write};

fn main() {
    let server = test_support::RedisServer::start();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {}", server.pid(), server.port()).expect("stdout is open");
    out.flush().expect("stdout is open");
    drop(out);
    // Blocks until the test closes our stdin (or kills us, which is the point).
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(server);
}
