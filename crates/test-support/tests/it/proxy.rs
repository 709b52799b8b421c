//! `TcpProxy`: forwarding, stall and resume, cut, and drop, in front of a real `redis-server`.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use test_support::{wait_until, RedisServer, TcpProxy};

use crate::command;

/// How long a silent link is given to prove it is silent.
const SILENCE: Duration = Duration::from_millis(300);

/// How long anything that should happen is given to happen.
const DEADLINE: Duration = Duration::from_secs(10);

/// A client connection through the proxy, reading with a timeout.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(proxy: &TcpProxy) -> Client {
        let stream = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends one command as a RESP array.
    fn send(&mut self, args: &[&str]) {
        self.stream.write_all(&resp(args)).expect("send a command");
    }

    /// The next `expected.len()` bytes, which must be `expected`.
    fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        self.reader
            .read_exact(&mut got)
            .expect("read the expected reply");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Asserts that nothing arrives for [`SILENCE`] and that the connection is still open: the
    /// read times out, it neither sees end-of-file nor a reset.
    fn expect_silence(&mut self) {
        self.stream.set_read_timeout(Some(SILENCE)).unwrap();
        let mut byte = [0; 1];
        match self.reader.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("the connection was closed (end-of-file) instead of going silent"),
            Ok(_) => panic!("received {:?} on a silent link", byte[0] as char),
            Err(e) => panic!("the connection failed instead of going silent: {e}"),
        }
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    }

    /// Asserts that the proxy closed the connection: end-of-file or a reset, with no byte first.
    fn expect_closed(&mut self) {
        let mut byte = [0; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(_) => panic!(
                "received {:?} on a connection that should be closed",
                byte[0] as char
            ),
            Err(e) => panic!("expected end-of-file or a reset, got: {e}"),
        }
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    request.into_bytes()
}

/// Redis's count of its clients, including the connection that asks.
fn connected_clients(server: &RedisServer) -> usize {
    let info = command(server.port(), &["INFO", "clients"]);
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .expect("INFO clients has connected_clients")
        .trim()
        .parse()
        .expect("a count")
}

/// How many threads of this process belong to the proxy on `port`, by their documented names.
#[cfg(target_os = "linux")]
fn proxy_threads(port: u16) -> usize {
    let prefix = format!("proxy{port}-");
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(&prefix))
        })
        .count()
}

const PONG: &[u8] = b"+PONG\r\n";

#[test]
fn forwards_resp_both_ways() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    assert_eq!(
        proxy.target(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))
    );
    assert_eq!(proxy.addr().ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(proxy.port(), server.port());
    assert_eq!(
        proxy.redis_url(),
        format!("redis://127.0.0.1:{}/", proxy.port())
    );

    let mut client = Client::connect(&proxy);
    client.send(&["PING"]);
    client.expect(PONG);
    // The reply can be read a moment before the proxy counts it.
    let (up, down) = (resp(&["PING"]).len() as u64, PONG.len() as u64);
    wait_until("the proxy counts the PING and the PONG", DEADLINE, || {
        proxy.bytes_to_target() == up && proxy.bytes_to_client() == down
    });

    assert_eq!(command(proxy.port(), &["SET", "k", "through"]), "+OK");
    assert_eq!(command(proxy.port(), &["GET", "k"]), "through");
    assert_eq!(
        command(server.port(), &["GET", "k"]),
        "through",
        "the write reached the real server"
    );
}

#[test]
fn serves_several_connections_and_counts_them_until_they_close() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(&proxy)).collect();
    wait_until("the proxy counts 3 connections", DEADLINE, || {
        proxy.connections() == 3
    });
    for (i, client) in clients.iter_mut().enumerate() {
        let value = format!("v{i}");
        client.send(&["SET", &format!("k{i}"), &value]);
        client.expect(b"+OK\r\n");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&["GET", &format!("k{i}")]);
        client.expect(format!("$2\r\nv{i}\r\n").as_bytes());
    }
    drop(clients);
    wait_until(
        "the closed connections are no longer counted",
        DEADLINE,
        || proxy.connections() == 0,
    );
    wait_until("redis-server saw its side close", DEADLINE, || {
        connected_clients(&server) == 1
    });
}

#[test]
fn a_half_close_is_passed_on_and_the_reply_still_arrives() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut client = Client::connect(&proxy);
    client.send(&["PING"]);
    client.stream.shutdown(Shutdown::Write).unwrap();
    client.expect(PONG);
    // Redis closes once it reads end-of-file; the proxy passes that back.
    client.expect_closed();
    wait_until(
        "the finished connection is no longer counted",
        DEADLINE,
        || proxy.connections() == 0,
    );
}

#[test]
fn stall_silences_every_connection_without_closing_and_resume_delivers_what_was_held() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut old = Client::connect(&proxy);
    old.send(&["PING"]);
    old.expect(PONG);

    proxy.stall();
    assert!(proxy.is_stalled());
    let (to_target, to_client) = (proxy.bytes_to_target(), proxy.bytes_to_client());
    old.send(&["PING"]);
    old.expect_silence();

    // A connection made while stalled is accepted, and just as silent.
    let mut during = Client::connect(&proxy);
    wait_until("the proxy counts both connections", DEADLINE, || {
        proxy.connections() == 2
    });
    during.send(&["PING"]);
    during.expect_silence();

    assert_eq!(proxy.bytes_to_target(), to_target, "nothing reached Redis");
    assert_eq!(proxy.bytes_to_client(), to_client, "nothing came back");
    assert_eq!(proxy.connections(), 2, "nothing was closed");
    // Still open from the client's side too: writing works, no reset.
    old.send(&["ECHO", "after-the-silence"]);

    proxy.resume();
    assert!(!proxy.is_stalled());
    // Held, not dropped: the old connection's PING and ECHO get their replies, in order.
    old.expect(PONG);
    old.expect(b"$17\r\nafter-the-silence\r\n");
    during.expect(PONG);
    let mut fresh = Client::connect(&proxy);
    fresh.send(&["PING"]);
    fresh.expect(PONG);
}

#[test]
fn a_message_published_while_stalled_is_held_until_resume() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut subscriber = Client::connect(&proxy);
    subscriber.send(&["SUBSCRIBE", "ch"]);
    subscriber.expect(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");

    proxy.stall();
    // Redis still sees the subscriber and sends it the message; the proxy holds it.
    assert_eq!(command(server.port(), &["PUBLISH", "ch", "hello"]), ":1");
    subscriber.expect_silence();

    proxy.resume();
    subscriber.expect(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n");
}

#[test]
fn a_message_held_by_a_stall_is_lost_when_the_connection_is_cut() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut subscriber = Client::connect(&proxy);
    subscriber.send(&["SUBSCRIBE", "ch"]);
    subscriber.expect(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");

    proxy.stall();
    assert_eq!(command(server.port(), &["PUBLISH", "ch", "lost"]), ":1");
    subscriber.expect_silence();
    proxy.cut();
    // End-of-file and nothing before it: the message died with the connection.
    subscriber.expect_closed();

    // The stall outlives the cut: a reconnection is accepted but silent until resumed.
    assert!(proxy.is_stalled());
    let mut again = Client::connect(&proxy);
    again.send(&["PING"]);
    again.expect_silence();
    proxy.resume();
    again.expect(PONG);
}

#[test]
fn cut_closes_both_sides_at_once_and_new_connections_still_work() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let mut clients: Vec<Client> = (0..2).map(|_| Client::connect(&proxy)).collect();
    for client in &mut clients {
        client.send(&["PING"]);
        client.expect(PONG);
    }
    assert_eq!(proxy.connections(), 2);
    assert_eq!(connected_clients(&server), 3, "two proxied and the asker");

    proxy.cut();
    assert_eq!(proxy.connections(), 0, "cut returns once they are closed");
    for client in &mut clients {
        client.expect_closed();
    }
    wait_until(
        "redis-server saw the proxied connections close",
        DEADLINE,
        || connected_clients(&server) == 1,
    );

    let mut fresh = Client::connect(&proxy);
    fresh.send(&["PING"]);
    fresh.expect(PONG);
}

/// `retarget` moves new connections to another server; current ones stay until cut: a
/// failover behind one address.
#[test]
fn retarget_sends_new_connections_to_another_server_and_cut_moves_the_old_ones() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let proxy = TcpProxy::for_redis(&first);
    let mut old = Client::connect(&proxy);
    old.send(&["SET", "where", "first"]);
    old.expect(b"+OK\r\n");

    let second_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, second.port()));
    proxy.retarget(second_addr);
    assert_eq!(proxy.target(), second_addr);
    old.send(&["GET", "where"]);
    old.expect(b"$5\r\nfirst\r\n");
    let mut new = Client::connect(&proxy);
    new.send(&["GET", "where"]);
    new.expect(b"$-1\r\n");

    proxy.cut();
    old.expect_closed();
    let mut again = Client::connect(&proxy);
    again.send(&["GET", "where"]);
    again.expect(b"$-1\r\n");
}

#[test]
fn a_target_that_refuses_closes_the_client_connection() {
    // A port that was free a moment ago, with nothing listening on it now.
    let dead = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TcpProxy::start(dead);
    let mut client = Client::connect(&proxy);
    client.expect_closed();
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn drop_closes_everything_and_leaves_no_thread_running() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let port = proxy.port();
    let mut client = Client::connect(&proxy);
    client.send(&["PING"]);
    client.expect(PONG);
    // Stalled connections must not keep their threads alive either.
    let mut stalled = Client::connect(&proxy);
    wait_until("the proxy counts both connections", DEADLINE, || {
        proxy.connections() == 2
    });
    proxy.stall();
    #[cfg(target_os = "linux")]
    assert_eq!(proxy_threads(port), 5, "one accepting, two per connection");

    drop(proxy);

    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .expect_err("nothing listens on a dropped proxy's port");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    client.expect_closed();
    stalled.expect_closed();
    wait_until(
        "redis-server saw the proxied connections close",
        DEADLINE,
        || connected_clients(&server) == 1,
    );
    // Joined threads leave /proc a moment after `join` returns.
    #[cfg(target_os = "linux")]
    wait_until("no thread of the proxy is left", DEADLINE, || {
        proxy_threads(port) == 0
    });
}
