//! Test support for edge-cache: a real, throwaway `redis-server` per test, and waits that are
//! bound by a deadline instead of a guessed sleep.
//!
//! [`RedisServer::start`] launches `redis-server` on a free loopback port, in its own temporary
//! directory, without persistence, and returns once the server answers `PING`. Dropping the
//! handle kills the process and waits for it, then removes the directory, so tests never share a
//! server, never touch port 6379 and never leave one running. When `redis-server` is not
//! installed the harness panics with the command that installs it: Redis tests fail loudly, they
//! are never skipped.
//!
//! [`wait_until`] and [`eventually`] poll a condition every few milliseconds until it holds and
//! panic, naming what was awaited, when the deadline passes first.
//!
//! [`history`] checks a recorded run against the freshness promise: no read returns a value
//! older than a change acknowledged more than a staleness bound before it started.
//!
//! [`TcpProxy`] (in [`proxy`]) sits between a client and a server on loopback and can make the
//! link go silent without closing it, or cut every connection at once, to reproduce network faults.
//!
//! [`RedisCluster`] and [`RedisSentinel`] (in [`topology`]) start several such servers as a Redis
//! Cluster, or as a primary and a replica watched by three sentinels, ready for a test to kill a
//! primary and time the failover.
//!
//! This crate is for tests only (`publish = false`); like any test support it panics rather than
//! returning errors, so a broken environment shows up as a failed test with a clear message.
//!
//! # Example
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//!
//! use test_support::RedisServer;
//!
//! let server = RedisServer::start();
//! assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port()));
//!
//! // Speak RESP by hand: an inline command, one reply line.
//! let mut conn = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
//! conn.write_all(b"PING\r\n").unwrap();
//! let mut reply = String::new();
//! BufReader::new(conn).read_line(&mut reply).unwrap();
//! assert_eq!(reply, "+PONG\r\n");
//!
//! let pid = server.pid();
//! drop(server); // kills redis-server and waits for it
//! assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
//! ```

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod history;
pub mod proxy;
pub mod topology;

pub use proxy::TcpProxy;
pub use topology::{RedisCluster, RedisSentinel};

/// The binary the harness runs, looked up on `PATH`.
const REDIS_SERVER: &str = "redis-server";

/// What a test run without `redis-server` prints: the one way to get it.
const MISSING_BINARY: &str = "redis-server was not found on PATH. Run `cargo xtask test` (it \
                              installs it when run as root) or install it with: sudo apt-get \
                              install -y redis-server";

/// How long a freshly spawned server has to answer `PING`.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(5);

/// How many fresh ports `start` tries when the one it picked is taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// The file, inside the server's directory, that receives its stdout and stderr.
const LOG_FILE: &str = "redis-server.log";

/// The config file, inside the server's directory, of a server started with one.
const CONFIG_FILE: &str = "redis.conf";

/// How many lines of the log a panic message quotes.
const LOG_TAIL_LINES: usize = 20;

/// A `redis-server` process owned by one test, listening on `127.0.0.1` on a port of its own.
///
/// The server runs with `--save "" --appendonly no` (nothing survives a restart),
/// `--protected-mode yes`, `--loglevel warning`, and a temporary `--dir` that lives as long as
/// this value. Its stdout and stderr go to `redis-server.log` in that directory; panic messages
/// quote the log's tail.
///
/// Dropping the value kills the process (`SIGKILL`) and waits for it, so no server outlives its
/// test. Should the test process be killed before `Drop` runs (a timeout, `SIGKILL`), a small
/// `sh` watchdog, reading a pipe from this process, sees the pipe close and kills the server.
#[derive(Debug)]
pub struct RedisServer {
    /// The running process; `None` once stopped.
    child: Option<Child>,
    /// Kills the server should this process die without dropping it (see [`watchdog`]);
    /// `None` once stopped, or where `sh` could not be started.
    watchdog: Option<Child>,
    /// The pid of the current process, or of the last one once stopped.
    pid: u32,
    port: u16,
    /// Arguments given to `start_with_args`, passed again on `restart`.
    extra_args: Vec<String>,
    /// The config file given as the first argument (sentinels need one), passed again on
    /// `restart`; `None` for a plain server.
    config: Option<PathBuf>,
    /// Declared last so it is removed only after `Drop::drop` has killed the process.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port and returns once it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH` (with the command that installs it), if the server exits
    /// or does not answer within 10 s, or if another process takes the chosen port 5 times in a
    /// row. The message includes the tail of the server's log.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with `extra` appended to the server's command line, for
    /// instance `&["--requirepass", "s3cret"]` or ACL options.
    ///
    /// Later options win in Redis, so `extra` can also override a default such as
    /// `--protected-mode`. Readiness accepts `-NOAUTH` as well as `+PONG`, so a password does not
    /// need to be known to the harness.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start); an argument Redis rejects makes the server exit, which panics
    /// with its log.
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_program(OsStr::new(REDIS_SERVER), extra)
    }

    /// `start_with_args` with the binary as a parameter, so the missing-binary path is testable.
    fn start_program(program: &OsStr, extra: &[&str]) -> RedisServer {
        let extra_args: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        Self::start_custom(program, None, || extra_args.clone())
    }

    /// The general form of [`start_with_args`](Self::start_with_args), for the topologies.
    ///
    /// `config`, when given, is written to `redis.conf` in the server's directory and passed as
    /// the first argument, where `redis-server --sentinel` requires its (writable) config file.
    /// `extra` is called once per attempt, so arguments that name a port of their own (such as
    /// `--cluster-port`) get a fresh one when an attempt loses its ports to another process.
    pub(crate) fn start_custom(
        program: &OsStr,
        config: Option<&str>,
        mut extra: impl FnMut() -> Vec<String>,
    ) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("edge-cache-redis-")
            .tempdir()
            .unwrap_or_else(|e| {
                panic!("could not create a temporary directory for redis-server: {e}")
            });
        let config = config.map(|text| {
            let path = dir.path().join(CONFIG_FILE);
            fs::write(&path, text)
                .unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
            path
        });
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let extra_args = extra();
            // Between dropping the probe listener and the server's bind, another test may take
            // the port; the server then exits with "Address already in use" and we pick again.
            if let Launch::Ready(child) =
                launch(program, config.as_deref(), port, dir.path(), &extra_args)
            {
                return RedisServer {
                    pid: child.id(),
                    watchdog: watchdog(child.id()),
                    child: Some(child),
                    port,
                    extra_args,
                    config,
                    dir,
                };
            }
        }
        panic!(
            "redis-server could not bind a free port: {PORT_ATTEMPTS} ports in a row were taken \
             before it started\n{}",
            log_tail(dir.path())
        );
    }

    /// The loopback port the server listens on; it stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address as a connection URL, `redis://127.0.0.1:PORT/`.
    ///
    /// It carries no credentials, even when `--requirepass` was given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The pid of the running server; after [`stop`](Self::stop), of the last one.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit. Calling it again does nothing.
    ///
    /// # Panics
    ///
    /// If waiting for the process fails.
    pub fn stop(&mut self) {
        self.stop_watchdog();
        if let Some(child) = self.child.take() {
            if let Err(e) = kill_and_wait(child) {
                panic!("could not stop redis-server (pid {}): {e}", self.pid);
            }
        }
    }

    /// Stops the server, then starts a new one on the same port, in the same directory and with
    /// the same arguments, and returns once it answers `PING`.
    ///
    /// Nothing is persisted, so the new server starts empty: this is how tests simulate a Redis
    /// restart that loses its data, and a client's reconnection to the same address.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start); and if another process holds the port for the whole 10 s
    /// deadline.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Launch::Ready(child) = launch(
                OsStr::new(REDIS_SERVER),
                self.config.as_deref(),
                self.port,
                self.dir.path(),
                &self.extra_args,
            ) {
                self.pid = child.id();
                self.watchdog = watchdog(child.id());
                self.child = Some(child);
                return;
            }
            // The port can only be ours again once whoever grabbed it lets go: keep trying until
            // the deadline.
            if Instant::now() >= deadline {
                panic!(
                    "redis-server could not restart on port {}: another process held it for {:?}\n{}",
                    self.port,
                    READY_DEADLINE,
                    log_tail(self.dir.path())
                );
            }
            thread::sleep(READY_POLL);
        }
    }
}

impl RedisServer {
    /// Whether the process is running, that is neither stopped nor dropped: a topology skips the
    /// nodes a test killed when it asks the others about their state.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stopped before the server, so it never fires at a pid the system may hand out again.
    fn stop_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            // Best effort: a watchdog that is already gone has nothing left to do.
            let _ = kill_and_wait(watchdog);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop_watchdog();
        if let Some(child) = self.child.take() {
            // Never panic in drop: a test that is already unwinding would abort.
            if let Err(e) = kill_and_wait(child) {
                eprintln!(
                    "test-support: could not stop redis-server (pid {}): {e}",
                    self.pid
                );
            }
        }
    }
}

/// Polls `check` every 2 ms until it returns `true`.
///
/// The deadline is wall-clock time, measured from the call.
///
/// # Panics
///
/// If `check` is still `false` when `deadline` has passed; the message names `what`.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use test_support::wait_until;
///
/// let ready_at = Instant::now() + Duration::from_millis(20);
/// wait_until("the clock passes ready_at", Duration::from_secs(5), || Instant::now() >= ready_at);
/// ```
pub fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    loop {
        if check() {
            return;
        }
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Awaits `check()` every 1 ms (with `tokio::time::sleep` in between) until it yields `true`.
///
/// The deadline is wall-clock time, measured from the call, so a test that pauses tokio's clock
/// still gets the real time it asked for to let I/O happen.
///
/// # Panics
///
/// If the last check is still `false` when `deadline` has passed; the message names `what`.
/// Like `tokio::time::sleep`, it must run inside a tokio runtime with the time driver enabled.
///
/// # Example
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use test_support::eventually;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = Arc::clone(&done);
/// tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
/// eventually("the task ran", Duration::from_secs(5), || {
///     let done = Arc::clone(&done);
///     async move { done.load(Ordering::SeqCst) }
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How one attempt to launch the server ended, short of a panic.
enum Launch {
    /// It is ours, it listens on the port and it answers.
    Ready(Child),
    /// It exited because something else holds the port.
    PortTaken,
}

/// Spawns the server on `port` and waits until it answers, or until it exits because the port
/// is taken. `config`, when given, comes first on the command line, where Redis expects a config
/// file; the options that follow override it.
///
/// # Panics
///
/// If the binary is missing, the server exits for any other reason, or it does not answer within
/// [`READY_DEADLINE`]. The process is killed and reaped before panicking.
fn launch(
    program: &OsStr,
    config: Option<&Path>,
    port: u16,
    dir: &Path,
    extra: &[String],
) -> Launch {
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|e| panic!("could not open {}: {e}", log_path.display()));
    // Earlier attempts append to the same log; only this attempt's lines say why it exited.
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("could not open {}: {e}", log_path.display()));

    let mut command = Command::new(program);
    command.args(config);
    command
        .arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .args([
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--daemonize",
            "no",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{MISSING_BINARY}"),
        Err(e) => panic!("could not run redis-server: {e}"),
    };

    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if log_since(dir, log_start).contains("Address already in use") {
                    return Launch::PortTaken;
                }
                panic!(
                    "redis-server exited during startup on port {port} ({status}); arguments: {extra:?}\n{}",
                    log_tail(dir)
                );
            }
            Ok(None) => {}
            Err(e) => {
                let _ = kill_and_wait(child);
                panic!("could not check on redis-server: {e}");
            }
        }
        // Ownership first: if another test's server took the port, it would answer PING too.
        if listens_on(child.id(), port) && answers_ping(port) {
            return Launch::Ready(child);
        }
        if Instant::now() >= deadline {
            let _ = kill_and_wait(child);
            panic!(
                "redis-server did not answer PING on port {port} within {READY_DEADLINE:?}\n{}",
                log_tail(dir)
            );
        }
        thread::sleep(READY_POLL);
    }
}

/// A loopback port that was free a moment ago: the kernel's pick for a listener bound to port 0.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("could not bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("could not read the probe listener's address: {e}"))
        .port()
}

/// Whether the server on `port` answers an inline `PING` with `+PONG`, or with `-NOAUTH` when it
/// requires a password; either way it is up and serving commands.
fn answers_ping(port: u16) -> bool {
    fn ping(port: u16) -> io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply)
    }
    matches!(ping(port), Ok(reply) if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
}

/// Whether process `pid` holds the listening socket on `127.0.0.1:port`.
///
/// Reads `/proc/net/tcp` for the socket's inode and looks for it among the process's descriptors.
/// Where that cannot be read, it answers `true` and readiness rests on `PING` alone.
#[cfg(target_os = "linux")]
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let (Ok(table), Ok(fds)) = (
        fs::read_to_string("/proc/net/tcp"),
        fs::read_dir(format!("/proc/{pid}/fd")),
    ) else {
        return true;
    };
    // Each row: `sl local_address rem_address st ... uid timeout inode ...`, addresses as
    // `ADDR:PORT` in hex, ADDR being the in-memory bytes of the IPv4 address read as a u32.
    let loopback = u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets());
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (addr, row_port) = fields.get(1)?.split_once(':')?;
            let ours = u32::from_str_radix(addr, 16).ok()? == loopback
                && u16::from_str_radix(row_port, 16).ok()? == port
                && *fields.get(3)? == LISTEN;
            let inode = fields.get(9)?;
            ours.then(|| format!("socket:[{inode}]"))
        })
        .collect();
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            sockets
                .iter()
                .any(|socket| target.as_os_str() == socket.as_str())
        })
    })
}

/// Without `/proc`, readiness rests on `PING` alone.
#[cfg(not(target_os = "linux"))]
fn listens_on(_pid: u32, _port: u16) -> bool {
    true
}

/// A `sh` that kills the server `pid` once its standard input closes, which happens when this
/// process exits however it exits: a test binary killed by `SIGKILL` or a timeout cannot run
/// `Drop`, and its servers would otherwise live on. The pipe's write end is only in this process
/// (the standard library opens it close-on-exec), so no other child keeps it open.
///
/// `None` if `sh` cannot be started: the server still works, it just is not watched.
fn watchdog(pid: u32) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("read _ignored; kill -9 {pid} 2>/dev/null"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Sends `SIGKILL` (a no-op if the process already exited) and reaps the process.
fn kill_and_wait(mut child: Child) -> io::Result<ExitStatus> {
    child.kill()?;
    child.wait()
}

/// The log written since byte `start`, for telling why this attempt's server exited.
fn log_since(dir: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(dir.join(LOG_FILE)) {
        if file.seek(SeekFrom::Start(start)).is_ok() {
            // A partial read still says something; the log is only evidence.
            let _ = file.read_to_string(&mut text);
        }
    }
    text
}

/// The last lines of the server's log, formatted for a panic message.
fn log_tail(dir: &Path) -> String {
    let path = dir.join(LOG_FILE);
    let log = match fs::read_to_string(&path) {
        Ok(log) => log,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    let mut message = format!("last {} lines of {}:", tail.len(), path.display());
    for line in tail {
        let _ = write!(message, "\n  {line}");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(
        expected = "redis-server was not found on PATH. Run `cargo xtask test` (it installs it when run as root) or install it with: sudo apt-get install -y redis-server"
    )]
    fn a_missing_binary_panics_with_the_install_command() {
        RedisServer::start_program(OsStr::new("edge-cache-no-such-redis-server"), &[]);
    }

    #[test]
    fn the_missing_binary_message_is_exactly_the_guidance() {
        assert_eq!(
            MISSING_BINARY,
            "redis-server was not found on PATH. Run `cargo xtask test` (it installs it when run \
             as root) or install it with: sudo apt-get install -y redis-server"
        );
    }

    #[test]
    fn a_server_that_cannot_start_panics_with_its_log() {
        let result = std::panic::catch_unwind(|| {
            RedisServer::start_with_args(&["--no-such-option", "1"]);
        });
        let payload = result.expect_err("a bad option must make start panic");
        let message = payload
            .downcast_ref::<String>()
            .expect("the panic carries a formatted message");
        assert!(message.contains("exited during startup"), "{message}");
        assert!(message.contains("redis-server.log"), "{message}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn listens_on_tells_the_owner_of_a_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }
}
