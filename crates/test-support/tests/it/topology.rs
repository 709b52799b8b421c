//! `RedisCluster` and `RedisSentinel`: they start ready, survive the kill of a primary, and leave
//! no process behind.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use test_support::{RedisCluster, RedisSentinel};

use crate::command;

/// How long a failover may take here; Redis needs about 3 s (cluster) and 1.5 s (Sentinel).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends a command to the cluster node on `port`, following `-MOVED` redirections the way a
/// cluster client does; returns the reply, how many redirections it took and the port of the
/// node that answered.
fn cluster_command(port: u16, args: &[&str]) -> (String, usize, u16) {
    let mut port = port;
    for redirects in 0..5 {
        let reply = command(port, args);
        let Some(moved) = reply.strip_prefix("-MOVED ") else {
            return (reply, redirects, port);
        };
        // `-MOVED <slot> <host>:<port>`
        let target = moved.rsplit(':').next().expect("a MOVED target");
        port = target
            .parse()
            .unwrap_or_else(|_| panic!("a MOVED reply with a port: {reply}"));
    }
    panic!("{args:?} was still redirected after 5 hops");
}

/// Sends `commands` in order on one connection to `port` and returns their one-line replies
/// (`+OK`, `:1`, `-ERR ...`) without the CRLF. One connection matters for `WAIT`, which waits for
/// the writes of its own connection only.
fn pipeline(port: u16, commands: &[&[&str]]) -> Vec<String> {
    let mut request = String::new();
    for args in commands {
        request.push_str(&format!("*{}\r\n", args.len()));
        for arg in *args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to a cluster node");
    stream
        .write_all(request.as_bytes())
        .expect("send the commands");
    let mut reader = BufReader::new(stream);
    commands
        .iter()
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read a reply");
            line.trim_end_matches("\r\n").to_owned()
        })
        .collect()
}

#[test]
fn a_cluster_starts_healthy_routes_keys_and_leaves_no_process() {
    let cluster = RedisCluster::start(3, 1);

    let (primaries, replicas) = (cluster.primaries(), cluster.replicas());
    assert_eq!(primaries.len(), 3, "primaries {primaries:?}");
    assert_eq!(replicas.len(), 3, "replicas {replicas:?}");
    for primary in &primaries {
        assert_eq!(
            cluster.replicas_of(*primary).len(),
            1,
            "the primary on {primary} has one replica"
        );
    }
    let ports: Vec<u16> = primaries.iter().chain(&replicas).copied().collect();
    let mut urls = cluster.seed_urls();
    let mut expected: Vec<String> = ports
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}/"))
        .collect();
    urls.sort();
    expected.sort();
    assert_eq!(urls, expected, "a seed URL per node");
    assert!(!ports.contains(&6379), "never the default port");

    // Written through one node and read through every node: all but the owner redirect.
    let (reply, _, _) = cluster_command(ports[0], &["SET", "edge-cache:topology", "v1"]);
    assert_eq!(reply, "+OK");
    let mut redirects = 0;
    for port in &ports {
        let (value, hops, _) = cluster_command(*port, &["GET", "edge-cache:topology"]);
        assert_eq!(value, "v1", "read through the node on {port}");
        redirects += hops;
    }
    assert_eq!(redirects, 5, "every node but the key's primary redirects");

    let pids: Vec<u32> = ports.iter().map(|port| cluster.pid_of(*port)).collect();
    assert!(pids.iter().all(|pid| process_exists(*pid)));
    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} outlived the cluster");
    }
}

#[test]
fn a_cluster_promotes_the_replica_of_a_killed_primary() {
    let mut cluster = RedisCluster::start(3, 1);
    let key = "edge-cache:failover";
    // The primary that owns the key is the one to kill, so the read below needs its slots.
    let (reply, _, victim) = cluster_command(cluster.primaries()[0], &["GET", key]);
    assert_eq!(reply, "(nil)");
    // Replication is asynchronous (and Redis 7 streams to a new replica only after its first
    // acknowledgement): `WAIT` on the write's own connection makes sure the replica has it.
    assert_eq!(
        pipeline(victim, &[&["SET", key, "kept"], &["WAIT", "1", "5000"]]),
        ["+OK", ":1"],
        "the write reached the replica before the kill"
    );
    let heir = cluster.replicas_of(victim);
    assert_eq!(heir.len(), 1, "the victim on {victim} has one replica");
    let heir = heir[0];

    let pid = cluster.pid_of(victim);
    cluster.kill(victim);
    assert!(!process_exists(pid), "the killed primary is gone");
    let took = cluster.wait_until_healthy(FAILOVER_DEADLINE);
    println!("cluster failover: healthy again {took:?} after kill -9 of a primary");

    let primaries = cluster.primaries();
    assert!(
        primaries.contains(&heir),
        "the replica on {heir} is a primary now: {primaries:?}"
    );
    assert!(!primaries.contains(&victim));
    assert_eq!(primaries.len(), 3);
    assert!(cluster.replicas_of(heir).is_empty());
    assert_eq!(
        cluster_command(cluster.replicas()[0], &["GET", key]).0,
        "kept",
        "the killed primary's slots are served, with its replicated data"
    );
}

#[test]
fn sentinels_report_the_replica_after_the_primary_is_killed() {
    let mut topology = RedisSentinel::start();
    assert_eq!(topology.master_name(), "edge-cache");
    assert_eq!(topology.sentinel_urls().len(), 3);
    for url in topology.sentinel_urls() {
        let port: u16 = url
            .strip_prefix("redis://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("a loopback sentinel URL: {url}"));
        assert_eq!(command(port, &["PING"]), "+PONG");
        assert!(command(port, &["INFO", "server"]).contains("redis_mode:sentinel"));
    }
    let (primary, replica) = (topology.primary_port(), topology.replica_port());
    assert_eq!(topology.master_port_reported(), primary);
    assert!(command(replica, &["INFO", "replication"]).contains("role:slave"));

    assert_eq!(topology.kill_primary(), primary);
    let (master, took) = topology.wait_for_new_master(FAILOVER_DEADLINE);
    println!("sentinel failover: new master reported {took:?} after kill -9 of the primary");
    assert_eq!(master, replica, "the replica is promoted");
    assert_eq!(topology.master_port_reported(), replica);
    assert!(command(replica, &["INFO", "replication"]).contains("role:master"));
    assert_eq!(
        command(replica, &["SET", "k", "v"]),
        "+OK",
        "it takes writes"
    );

    let pids = topology.pids();
    assert_eq!(pids.len(), 5);
    drop(topology);
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} outlived the topology");
    }
}
