//! `RedisServer`: ports, restart, stop and drop, extra arguments.

use std::net::TcpListener;
use std::path::Path;
use std::thread;
use std::time::Duration;

use test_support::{wait_until, RedisServer};

use crate::command;

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_answers_ping_on_the_reported_port() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 6379, "never the default port");
    assert_eq!(command(server.port(), &["PING"]), "+PONG");
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert!(process_exists(server.pid()));
}

#[test]
fn two_servers_get_different_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());
    // Each answers on its own port, with its own data.
    assert_eq!(command(a.port(), &["SET", "k", "a"]), "+OK");
    assert_eq!(command(b.port(), &["GET", "k"]), "(nil)");
}

#[test]
fn restart_keeps_the_port_answers_again_and_loses_the_data() {
    let mut server = RedisServer::start();
    let (port, old_pid) = (server.port(), server.pid());
    assert_eq!(command(port, &["SET", "k", "v"]), "+OK");
    assert_eq!(command(port, &["GET", "k"]), "v");

    server.restart();

    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    assert!(!process_exists(old_pid), "the old server is gone");
    assert_eq!(command(port, &["PING"]), "+PONG");
    assert_eq!(
        command(port, &["GET", "k"]),
        "(nil)",
        "nothing is persisted"
    );
}

#[test]
fn drop_kills_the_process() {
    let server = RedisServer::start();
    let pid = server.pid();
    assert!(process_exists(pid));
    drop(server);
    wait_until(
        "the dropped server's process is gone",
        Duration::from_secs(10),
        || !process_exists(pid),
    );
}

#[test]
fn stop_is_idempotent_and_restart_revives() {
    let mut server = RedisServer::start();
    let pid = server.pid();
    server.stop();
    server.stop();
    assert!(!process_exists(pid));
    assert_eq!(
        server.pid(),
        pid,
        "pid() reports the last process once stopped"
    );

    server.restart();
    assert!(process_exists(server.pid()));
    assert_eq!(command(server.port(), &["PING"]), "+PONG");
}

#[test]
fn start_with_args_passes_a_password() {
    let server = RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    let reply = command(server.port(), &["GET", "k"]);
    assert!(
        reply.starts_with("-NOAUTH"),
        "unauthenticated GET answered {reply:?}"
    );
}

#[test]
fn restart_keeps_the_extra_args() {
    let mut server = RedisServer::start_with_args(&["--requirepass", "s3cret"]);
    server.restart();
    let reply = command(server.port(), &["GET", "k"]);
    assert!(
        reply.starts_with("-NOAUTH"),
        "unauthenticated GET answered {reply:?}"
    );
}

#[test]
fn restart_waits_for_a_port_someone_else_holds() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.stop();
    // Another socket listens on the port while the server restarts: each attempt fails with
    // "Address already in use" until the holder lets go, a fault injected for a fixed time.
    let holder = TcpListener::bind(("127.0.0.1", port)).expect("take the stopped server's port");
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        drop(holder);
    });
    server.restart();
    release.join().unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(command(port, &["PING"]), "+PONG");
}

/// Whether `pid` names a live process (a zombie, dead but not yet reaped, does not count).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// A test binary killed outright (a timeout, `SIGKILL`) runs no destructor; its servers must
/// not live on. The owner here is a separate process (`hold-redis`), killed with `SIGKILL`.
#[test]
fn a_server_does_not_outlive_an_owner_killed_outright() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut owner = Command::new(env!("CARGO_BIN_EXE_hold-redis"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the hold-redis helper starts");
    let mut line = String::new();
    BufReader::new(owner.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("hold-redis prints the server's pid and port");
    let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().unwrap());
    let (pid, port) = (fields.next().unwrap(), fields.next().unwrap());
    let port = u16::try_from(port).unwrap();
    assert_eq!(command(port, &["PING"]), "+PONG");
    assert!(process_alive(pid));

    owner.kill().unwrap(); // SIGKILL: no destructor runs in the owner.
    owner.wait().unwrap();
    wait_until(
        "the server dies with its owner",
        Duration::from_secs(10),
        || !process_alive(pid),
    );
}
