//! A loopback TCP proxy that can be told to go silent or to drop its connections, for fault tests.
//!
//! [`TcpProxy::start`] listens on a free `127.0.0.1` port and forwards every connection it accepts
//! to a target address, byte for byte, in both directions. A test points its client at the proxy
//! instead of at the server and then breaks the link on purpose:
//!
//! - [`stall`](TcpProxy::stall) makes every link silent without closing anything: a half-open
//!   connection, as when a peer or a middlebox stops answering. Nothing is forwarded either way
//!   until [`resume`](TcpProxy::resume); the bytes sent meanwhile are **held, not dropped**, and
//!   delivered in order on resume.
//! - [`cut`](TcpProxy::cut) closes every current connection on both sides at once; the proxy
//!   keeps accepting new ones, so a client that reconnects gets through.
//!
//! Why held: TCP never loses bytes on a connection that stays up, and dropping part of a stream
//! would hand the client a torn RESP frame rather than a silent gap. Messages are lost on the wire
//! the way they are in production: the silent connection dies. A test that wants a pub/sub
//! message lost calls `stall()`, publishes, then `cut()`s; what was held dies with the connection.
//!
//! Everything runs on plain std threads, no async runtime: one accepting thread per proxy and two
//! per connection (one per direction). Dropping the proxy closes the listener and every socket
//! and joins every thread before it returns.
//!
//! # Example
//!
//! ```
//! use std::io::{BufRead, BufReader, ErrorKind, Write};
//! use std::net::TcpStream;
//! use std::time::Duration;
//!
//! use test_support::{RedisServer, TcpProxy};
//!
//! let server = RedisServer::start();
//! let proxy = TcpProxy::for_redis(&server);
//! assert_eq!(proxy.redis_url(), format!("redis://127.0.0.1:{}/", proxy.port()));
//!
//! let conn = TcpStream::connect(proxy.addr()).unwrap();
//! conn.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
//! let mut reader = BufReader::new(conn.try_clone().unwrap());
//! let mut reply = String::new();
//!
//! (&conn).write_all(b"PING\r\n").unwrap();
//! reader.read_line(&mut reply).unwrap();
//! assert_eq!(reply, "+PONG\r\n");
//!
//! // A silent link: the PING goes nowhere and nothing comes back, yet nothing is closed.
//! proxy.stall();
//! (&conn).write_all(b"PING\r\n").unwrap();
//! let err = reader.read_line(&mut String::new()).unwrap_err();
//! assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
//!
//! // The held PING is delivered on resume, and its reply comes back.
//! proxy.resume();
//! conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
//! reply.clear();
//! reader.read_line(&mut reply).unwrap();
//! assert_eq!(reply, "+PONG\r\n");
//!
//! // A cut closes the connection: the client reads end-of-file.
//! proxy.cut();
//! reply.clear();
//! assert_eq!(reader.read_line(&mut reply).unwrap(), 0);
//! ```

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::RedisServer;

/// How long the proxy waits for the target to accept a connection before giving up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The read and write timeout of every forwarded socket.
///
/// Closing a socket already wakes a thread blocked on it, so this is a fallback that bounds how
/// late a forwarding thread notices a `cut` or a drop; it also bounds how long
/// [`TcpProxy::stall`] waits for a write that is under way.
const IO_TIMEOUT: Duration = Duration::from_millis(50);

/// The size of each direction's forwarding buffer.
const BUFFER_SIZE: usize = 16 * 1024;

/// A loopback TCP proxy to one target address, with switches to stall or cut its connections.
///
/// See the [module documentation](self) for what each fault looks like to a client.
///
/// Its threads are named `proxy<PORT>-acc` (accepting) and `proxy<PORT>-up` / `proxy<PORT>-dn`
/// (forwarding towards the target and back), `PORT` being [`port`](Self::port), so a test can
/// find them, for instance in `/proc/self/task/*/comm` on Linux.
///
/// Dropping it stops accepting, closes every connection on both sides (clients read end-of-file),
/// closes the listener, and joins every thread: once `drop` returns, connecting to the port is
/// refused and nothing of the proxy is left running.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` only while dropping.
    acceptor: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a proxy to `target` on a free `127.0.0.1` port and returns once it is listening, so
    /// a client may connect right away.
    ///
    /// The target is not contacted until a client connects: the proxy opens one connection to it
    /// per client connection. When that fails (nothing listens there, or no answer within 2 s) the
    /// client's connection is closed, as a proxy to a dead backend would.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound or the accepting thread cannot be spawned.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("tcp proxy: could not bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("tcp proxy: could not read its listener's address: {e}"));
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stalled: false,
                stopping: false,
                writes_in_flight: 0,
            }),
            changed: Condvar::new(),
            connections: Mutex::new(Vec::new()),
            to_target: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            target: Mutex::new(target),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy{}-acc", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .unwrap_or_else(|e| panic!("tcp proxy: could not spawn its accepting thread: {e}"))
        };
        TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Starts a proxy to `server`, on `127.0.0.1` and its port; see [`start`](Self::start).
    ///
    /// The proxy does not follow the server: after [`RedisServer::restart`] (same port) it
    /// forwards new connections to the new process, and after [`RedisServer::stop`] it closes
    /// them.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn for_redis(server: &RedisServer) -> TcpProxy {
        Self::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port())))
    }

    /// The address clients connect to: `127.0.0.1` and [`port`](Self::port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The loopback port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address every new connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forwards every connection accepted from now on to `target` instead; current connections
    /// keep their old target until [`cut`](Self::cut). With a cut, this is a failover behind one
    /// address (a virtual IP, a DNS name, a proxy that follows the primary): clients reconnect to
    /// the address they always used and reach another server.
    pub fn retarget(&self, target: SocketAddr) {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = target;
    }

    /// The proxy's address as a Redis connection URL, `redis://127.0.0.1:PORT/`, for a client
    /// that should reach the target's Redis through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port())
    }

    /// Makes every link silent, current and future, until [`resume`](Self::resume).
    ///
    /// Nothing is closed and nothing is forwarded in either direction: the proxy stops reading
    /// both sockets of every connection, so what the client sends waits in the proxy's kernel
    /// buffers (once they fill, the client's writes block, as with a peer that stopped reading),
    /// and so does what the target sends. Connections accepted while stalled are forwarded to the
    /// target too, and are just as silent. Bytes already read when the stall began are held with
    /// the rest. On resume everything held is delivered, in order.
    ///
    /// When it returns, no write to either side is under way: nothing reaches a client or the
    /// target after `stall` returns and before `resume` is called. That may take up to 50 ms, the
    /// time a write blocked on a full buffer needs to give up. Calling it again does nothing.
    pub fn stall(&self) {
        let mut control = self.shared.lock_control();
        control.stalled = true;
        while control.writes_in_flight > 0 {
            control = self.shared.wait(control);
        }
    }

    /// Forwards again, in both directions, on every connection, starting with what was held while
    /// stalled. Calling it when not stalled does nothing.
    pub fn resume(&self) {
        self.shared.lock_control().stalled = false;
        self.shared.changed.notify_all();
    }

    /// Whether the proxy is stalled: [`stall`](Self::stall) was called and
    /// [`resume`](Self::resume) was not, since.
    pub fn is_stalled(&self) -> bool {
        self.shared.lock_control().stalled
    }

    /// Closes every current connection on both sides at once and waits until their threads have
    /// exited; the proxy keeps listening and forwards new connections as before.
    ///
    /// Each socket is shut down in both directions and closed: the client reads end-of-file (or
    /// gets a reset, if it writes afterwards), and so does the target. Bytes held by a
    /// [`stall`](Self::stall) are discarded with their connection; the stall itself stays in force
    /// for new connections. (A true RST from the start would need `SO_LINGER`, which std cannot
    /// set without `unsafe` or a dependency.)
    ///
    /// A connection that the proxy has not accepted yet when `cut` is called may survive it: to cut
    /// a connection just made, first wait until [`connections`](Self::connections) counts it.
    pub fn cut(&self) {
        let cut = std::mem::take(&mut *self.shared.lock_connections());
        close_all(&self.shared, cut);
    }

    /// How many client connections are open now: accepted, forwarded to the target, and not yet
    /// closed by either side or by [`cut`](Self::cut).
    ///
    /// A client's `connect` returns as soon as the kernel has queued the connection, a moment
    /// before the proxy accepts it; wait until this counts it (for instance with
    /// [`wait_until`](crate::wait_until)) before relying on it being forwarded or cut. A connection
    /// counts until both its directions have ended.
    pub fn connections(&self) -> usize {
        let mut connections = self.shared.lock_connections();
        reap(&mut connections);
        connections.len()
    }

    /// Bytes forwarded so far from clients to the target, over all connections.
    ///
    /// Both counters are updated just after each write, so a peer may read the bytes a moment
    /// before they are counted; while stalled (once [`stall`](Self::stall) has returned) they are
    /// exact and do not move.
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.to_target.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far from the target to clients, over all connections.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("stalled", &self.is_stalled())
            .field("bytes_to_target", &self.bytes_to_target())
            .field("bytes_to_client", &self.bytes_to_client())
            .finish_non_exhaustive()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.lock_control().stopping = true;
        self.shared.changed.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            // The accepting thread blocks in `accept`; a connection of our own wakes it, it sees
            // `stopping` and returns, closing the listener.
            match TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT) {
                Ok(_) => {
                    let _ = acceptor.join();
                }
                // Never panic in drop. Without the wake-up the thread would block until the next
                // client connects, so it is left to exit then rather than hang this test.
                Err(e) => eprintln!(
                    "test-support: could not wake the accepting thread of the tcp proxy on {}: {e}",
                    self.addr
                ),
            }
        }
        // No connection can be added any more: the accepting thread is gone.
        let all = std::mem::take(&mut *self.shared.lock_connections());
        close_all(&self.shared, all);
    }
}

/// State shared by a proxy and its threads.
struct Shared {
    control: Mutex<Control>,
    /// Notified whenever `control` changes, and when a connection is cut.
    changed: Condvar,
    /// The connections accepted and not yet reaped, in order.
    connections: Mutex<Vec<Connection>>,
    to_target: AtomicU64,
    to_client: AtomicU64,
    /// Where new connections go.
    target: Mutex<SocketAddr>,
}

/// What every forwarding thread obeys; guarded by `Shared::control`.
struct Control {
    stalled: bool,
    /// Set once, by `Drop`.
    stopping: bool,
    /// Writes under way, so `stall` can wait until none is.
    writes_in_flight: usize,
}

impl Shared {
    fn lock_control(&self) -> MutexGuard<'_, Control> {
        // Nothing panics while holding these locks; should it, the state is still consistent.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_connections(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Control>) -> MutexGuard<'a, Control> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks while stalled; `None` once the connection must end (cut, or the proxy is dropped).
    /// `cut` is checked under the `control` lock, which is where it is set.
    fn forwarding<'a>(&'a self, cut: &AtomicBool) -> Option<MutexGuard<'a, Control>> {
        let mut control = self.lock_control();
        loop {
            if control.stopping || cut.load(Ordering::SeqCst) {
                return None;
            }
            if !control.stalled {
                return Some(control);
            }
            control = self.wait(control);
        }
    }

    /// Whether a read may start now, after waiting out a stall.
    fn may_read(&self, cut: &AtomicBool) -> bool {
        self.forwarding(cut).is_some()
    }

    /// Whether a write may start now, after waiting out a stall; if so it is counted in flight
    /// until [`end_write`](Self::end_write).
    fn begin_write(&self, cut: &AtomicBool) -> bool {
        match self.forwarding(cut) {
            Some(mut control) => {
                control.writes_in_flight += 1;
                true
            }
            None => false,
        }
    }

    fn end_write(&self) {
        let mut control = self.lock_control();
        control.writes_in_flight -= 1;
        if control.writes_in_flight == 0 {
            drop(control);
            self.changed.notify_all();
        }
    }
}

/// One client connection and its connection to the target.
struct Connection {
    client: Arc<TcpStream>,
    upstream: Arc<TcpStream>,
    /// Set, under `Shared::control`, when the connection is cut or the proxy dropped.
    cut: Arc<AtomicBool>,
    /// The forwarding threads: towards the target, and back.
    pumps: Vec<JoinHandle<()>>,
}

impl Connection {
    fn is_finished(&self) -> bool {
        self.pumps.iter().all(JoinHandle::is_finished)
    }
}

/// Joins and forgets the connections whose threads have both exited, closing their sockets.
fn reap(connections: &mut Vec<Connection>) {
    let (finished, open): (Vec<_>, Vec<_>) = std::mem::take(connections)
        .into_iter()
        .partition(Connection::is_finished);
    *connections = open;
    for connection in finished {
        join_pumps(connection);
    }
}

/// Cuts `connections`: wakes their threads, shuts every socket down, and joins the threads.
fn close_all(shared: &Shared, connections: Vec<Connection>) {
    {
        let _control = shared.lock_control();
        for connection in &connections {
            connection.cut.store(true, Ordering::SeqCst);
        }
    }
    shared.changed.notify_all();
    for connection in &connections {
        shut_down(&connection.client, &connection.upstream);
    }
    for connection in connections {
        join_pumps(connection);
    }
}

fn join_pumps(connection: Connection) {
    for pump in connection.pumps {
        // A forwarding thread does not panic; if one did, the test it serves has its own checks.
        let _ = pump.join();
    }
}

/// Shuts both sockets down in both directions: blocked reads and writes on them return at once,
/// and both peers read end-of-file. Errors mean the socket is already closed.
fn shut_down(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Accepts clients until the proxy is dropped, connecting each to the target of the moment.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let port = listener.local_addr().map(|addr| addr.port()).unwrap_or(0);
    loop {
        let accepted = listener.accept();
        if shared.lock_control().stopping {
            return;
        }
        let Ok((client, _)) = accepted else {
            // A connection aborted before it was accepted, or descriptors ran out for a moment;
            // the listener itself is still fine.
            continue;
        };
        // A target that refuses or does not answer: dropping `client` closes it.
        let target = *shared
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
            continue;
        };
        if let Some(connection) = forward(client, upstream, port, shared) {
            let mut connections = shared.lock_connections();
            reap(&mut connections);
            connections.push(connection);
        }
    }
}

/// Starts the two forwarding threads of one connection; `None`, with both sockets closed, if
/// that fails.
fn forward(
    client: TcpStream,
    upstream: TcpStream,
    port: u16,
    shared: &Arc<Shared>,
) -> Option<Connection> {
    for stream in [&client, &upstream] {
        // Requests and replies are small; Nagle would only delay them.
        let configured = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
        if configured.is_err() {
            return None;
        }
    }
    let client = Arc::new(client);
    let upstream = Arc::new(upstream);
    let cut = Arc::new(AtomicBool::new(false));
    let mut connection = Connection {
        client: Arc::clone(&client),
        upstream: Arc::clone(&upstream),
        cut: Arc::clone(&cut),
        pumps: Vec::with_capacity(2),
    };
    let directions = [
        (
            "up",
            Arc::clone(&client),
            Arc::clone(&upstream),
            Direction::ToTarget,
        ),
        ("dn", upstream, client, Direction::ToClient),
    ];
    for (name, from, to, direction) in directions {
        let pump_shared = Arc::clone(shared);
        let cut = Arc::clone(&cut);
        let spawned = thread::Builder::new()
            .name(format!("proxy{port}-{name}"))
            .spawn(move || pump(&from, &to, &cut, &pump_shared, direction));
        match spawned {
            Ok(handle) => connection.pumps.push(handle),
            Err(_) => {
                // Stops the direction already started, if any, and closes both sockets.
                close_all(shared, vec![connection]);
                return None;
            }
        }
    }
    Some(connection)
}

/// Which way a forwarding thread copies, and so which counter it adds to.
#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

/// Copies `from` to `to` until either ends or the connection is cut.
///
/// Before each read and each write it waits out a stall: a stalled connection is neither read nor
/// written, and what was read before the stall stays in `buffer` until it is resumed. End-of-file
/// from `from` is passed on as a half-close of `to`; any error closes the whole connection.
fn pump(from: &TcpStream, to: &TcpStream, cut: &AtomicBool, shared: &Shared, direction: Direction) {
    let counter = match direction {
        Direction::ToTarget => &shared.to_target,
        Direction::ToClient => &shared.to_client,
    };
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        if !shared.may_read(cut) {
            return;
        }
        let len = match (&*from).read(&mut buffer) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(len) => len,
            Err(e) if is_retry(&e) => continue,
            Err(_) => return shut_down(from, to),
        };
        let mut sent = 0;
        while sent < len {
            if !shared.begin_write(cut) {
                return;
            }
            let written = (&*to).write(&buffer[sent..len]);
            if let Ok(n) = written {
                // Counted before the write ends, so `stall` returns with exact counters.
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            shared.end_write();
            match written {
                Ok(0) => return shut_down(from, to),
                Ok(n) => sent += n,
                Err(e) if is_retry(&e) => {}
                Err(_) => return shut_down(from, to),
            }
        }
    }
}

/// A timeout (std reports `SO_RCVTIMEO` as `WouldBlock` on Unix) or an interrupted call: nothing
/// is wrong, try again after looking at the controls.
fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
