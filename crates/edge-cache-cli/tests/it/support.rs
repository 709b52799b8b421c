//! Running the `edge-cache` binary from tests: one-shot commands bounded by a deadline, and
//! `serve` children driven line by line. Every child is killed and reaped on drop, so a failing
//! test leaves no process behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::RedisServer;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_edge-cache");

/// How long any one wait may take: generous, because CI machines are small and busy; a passing
/// run never waits for it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A child process that is killed (SIGKILL, by its pid) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit, which the caller knows is imminent (its stdout closed).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for a child")
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        ChildGuard { child }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already exited is fine; never panic in drop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of a child's stream, read by a thread so a test can wait for the next one with a
/// deadline instead of blocking forever.
pub struct Lines {
    rx: Receiver<String>,
    what: String,
}

impl Lines {
    /// Starts reading `stream` line by line.
    pub fn spawn(stream: impl Read + Send + 'static, what: impl Into<String>) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            what: what.into(),
        }
    }

    /// The next line.
    ///
    /// # Panics
    /// When none comes within [`DEADLINE`] or the stream ends first.
    pub fn next(&self) -> String {
        match self.rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no line within {DEADLINE:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{}: the stream ended (the process exited)", self.what)
            }
        }
    }

    /// Every remaining line, until the stream ends.
    ///
    /// # Panics
    /// When the stream is still open after [`DEADLINE`].
    pub fn rest(&self) -> Vec<String> {
        let until = Instant::now() + DEADLINE;
        let mut lines = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: still open after {DEADLINE:?}; got {lines:?}",
                        self.what
                    )
                }
            }
        }
    }
}

/// `edge-cache --redis <url>`, ignoring any `EDGE_CACHE_REDIS` in the test's environment.
pub fn edge_cache(url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("EDGE_CACHE_REDIS")
        .arg("--redis")
        .arg(url);
    command
}

/// What a one-shot command did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Run {
    /// Stderr's lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

/// Runs `command` to completion, with stdin closed.
///
/// # Panics
/// When it has not finished within [`DEADLINE`] (it is killed first).
pub fn run(mut command: Command) -> Run {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning edge-cache");
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let mut guard = ChildGuard { child };
    // Both streams close when the process exits: wait for that, with a deadline.
    let until = started + DEADLINE;
    let take = |rx: Receiver<String>, name: &str| {
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("{command:?} did not finish within {DEADLINE:?} ({name} still open)")
            })
    };
    let stdout = take(stdout, "stdout");
    let stderr = take(stderr, "stderr");
    let status = guard.wait();
    Run {
        code: status.code(),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Runs `edge-cache --redis <server> args...`.
pub fn edge(redis: &RedisServer, args: &[&str]) -> Run {
    let mut command = edge_cache(&redis.url());
    command.args(args);
    run(command)
}

/// Reads all of `stream` on a thread; the text arrives on the channel at end of stream.
fn collect(mut stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// An `edge-cache serve` child: a separate OS process running one edge node.
pub struct ServeNode {
    name: String,
    stdin: ChildStdin,
    lines: Lines,
    guard: ChildGuard,
}

impl ServeNode {
    /// Starts `edge-cache serve --node-id <name>` on `redis` without waiting for it to be ready,
    /// so several can start at once.
    pub fn spawn(redis: &RedisServer, name: &str) -> ServeNode {
        Self::spawn_with(redis, name, &[])
    }

    /// [`ServeNode::spawn`] with global options before `serve` (`--keys-file PATH`, say).
    pub fn spawn_with(redis: &RedisServer, name: &str, options: &[&str]) -> ServeNode {
        Self::spawn_full(redis, name, options, &[])
    }

    /// [`ServeNode::spawn`] with global options before `serve` and `serve`'s own after it.
    pub fn spawn_full(
        redis: &RedisServer,
        name: &str,
        options: &[&str],
        serve_options: &[&str],
    ) -> ServeNode {
        let mut child = edge_cache(&redis.url())
            .env_remove("EDGE_CACHE_KEYS")
            .env_remove("EDGE_CACHE_KEYS_FILE")
            .args(options)
            .args(["serve", "--node-id", name])
            .args(serve_options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning edge-cache serve");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = Lines::spawn(child.stdout.take().expect("piped stdout"), name);
        ServeNode {
            name: name.to_owned(),
            stdin,
            lines,
            guard: ChildGuard { child },
        }
    }

    /// Waits for the `ready` line and returns it as it is.
    pub fn ready_line(&mut self) -> Value {
        let ready: Value = serde_json::from_str(&self.lines.next()).expect("a JSON ready line");
        assert_eq!(ready["ready"], true, "{}: {ready}", self.name);
        ready
    }

    /// Waits for the `ready` line.
    ///
    /// # Panics
    /// When it does not come, or says something else.
    pub fn wait_ready(&mut self) {
        let ready: Value = serde_json::from_str(&self.lines.next()).expect("a JSON ready line");
        assert_eq!(
            ready,
            json!({"ready": true, "node_id": self.name, "channel": "cache_invalidation_events",
                   "redis": ready["redis"]}),
            "{}: unexpected first line",
            self.name
        );
    }

    /// The pid of the node's process.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Sends one command line and returns the one JSON reply.
    pub fn send(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send {line:?}: {e}", self.name));
        let reply = self.lines.next();
        serde_json::from_str(&reply).unwrap_or_else(|e| {
            panic!(
                "{}: reply to {line:?} is not JSON ({e}): {reply}",
                self.name
            )
        })
    }

    /// Sends a command that must succeed; returns the reply.
    pub fn ok(&mut self, line: &str) -> Value {
        let reply = self.send(line);
        assert_eq!(reply["ok"], true, "{}: {line:?} failed: {reply}", self.name);
        reply
    }

    /// `set` with a 60 s TTL, so short namespace TTLs (the order book's 5 s) cannot expire an
    /// entry in the middle of a slow run.
    pub fn set(&mut self, namespace: &str, params: &Value, value: &Value) {
        self.ok(&format!("set {namespace} {params} {value} ttl=60"));
    }

    /// `get`: the value on a hit, `None` on a miss.
    pub fn get(&mut self, namespace: &str, params: &Value) -> Option<Value> {
        let reply = self.ok(&format!("get {namespace} {params}"));
        match reply["hit"].as_bool() {
            Some(true) => Some(reply["value"].clone()),
            Some(false) => None,
            None => panic!("{}: get reply without hit: {reply}", self.name),
        }
    }

    /// The node's counters.
    pub fn stats(&mut self) -> Value {
        self.ok("stats")["value"].clone()
    }

    /// One counter.
    pub fn counter(&mut self, name: &str) -> u64 {
        let stats = self.stats();
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no counter {name} in {stats}", self.name))
    }

    /// Waits until counter `name` reaches `at_least`.
    pub fn wait_counter(&mut self, name: &str, at_least: u64) {
        let what = format!("{}'s {name} reaches {at_least}", self.name);
        test_support::wait_until(&what, DEADLINE, || self.counter(name) >= at_least);
    }

    /// L1 entries of one namespace.
    pub fn l1_entries(&mut self, namespace: &str) -> u64 {
        let stats = self.stats();
        stats["namespaces"]
            .as_array()
            .and_then(|all| all.iter().find(|ns| ns["name"] == namespace))
            .and_then(|ns| ns["l1_entries"].as_u64())
            .unwrap_or_else(|| panic!("{}: no namespace {namespace} in {stats}", self.name))
    }

    /// Sends `quit` and waits for the process to exit.
    pub fn quit(mut self) -> ExitStatus {
        self.ok("quit");
        let rest = self.lines.rest();
        assert!(
            rest.is_empty(),
            "{}: output after quit: {rest:?}",
            self.name
        );
        self.guard.wait()
    }
}

/// PUBLISHes raw bytes on `channel`, as no edge-cache node would; returns the receiver count.
pub fn publish_raw(redis: &RedisServer, channel: &str, payload: &[u8]) -> i64 {
    let client = redis::Client::open(redis.url()).expect("a valid URL");
    let mut conn = client
        .get_connection()
        .expect("connecting to the test Redis");
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(&mut conn)
        .expect("PUBLISH")
}

/// Seconds since the Unix epoch, as event timestamps count them.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}
