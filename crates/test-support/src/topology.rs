//! Multi-process Redis topologies for failover tests: a Redis Cluster ([`RedisCluster`]) and a
//! primary with a replica watched by three sentinels ([`RedisSentinel`]).
//!
//! Every process is a [`RedisServer`]: on a free loopback port, in its own temporary directory,
//! watched by the same `sh` watchdog, and killed by pid when the topology is dropped. The cluster
//! bus ports are free ports of their own too (`--cluster-port`), never the default port + 10000,
//! which may belong to someone else.
//!
//! Both constructors return only once the topology is ready for a failover: for Redis that
//! means every replica's link to its primary is up (a replica whose link never came up is never
//! promoted), and for Sentinel also that every sentinel has found the replica and the other
//! sentinels. Killing a node is `SIGKILL`, as a crash would be; the killed node stays dead.
//!
//! Replication is asynchronous in both topologies: a write acknowledged by a primary just before
//! it is killed can be missing on the replica that replaces it. Right after a topology starts the
//! window is up to a second wide, since Redis 7 streams writes to a freshly synced replica only
//! once the replica has acknowledged the sync (it does every second). A test that needs a write to
//! survive the failover sends `WAIT 1 <ms>` after it on the same connection: `WAIT` only counts
//! the writes of its own connection, and on a fresh one it returns at once.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use test_support::RedisCluster;
//!
//! let mut cluster = RedisCluster::start(3, 1);
//! let victim = cluster.primaries()[0];
//! let heir = cluster.replicas_of(victim)[0];
//! cluster.kill(victim);
//! let took = cluster.wait_until_healthy(Duration::from_secs(15));
//! assert!(cluster.primaries().contains(&heir));
//! println!("the cluster recovered in {took:?}");
//! ```

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{free_port, RedisServer, REDIS_SERVER};

/// The name the sentinels monitor the primary under, and the one a client asks them for.
pub const MASTER_NAME: &str = "edge-cache";

/// The command-line client that creates the cluster, looked up on `PATH`.
const REDIS_CLI: &str = "redis-cli";

/// What a test run without `redis-cli` prints: the one way to get it.
const MISSING_CLI: &str = "redis-cli was not found on PATH; RedisCluster needs it to create the \
                           cluster. Install it with: sudo apt-get install -y redis-tools";

/// How long a topology has to become ready after its processes answer `PING`. Forming takes
/// about a second on loopback; the margin is for a loaded CI machine.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

/// How often a topology's state is polled while waiting for it.
const POLL: Duration = Duration::from_millis(20);

/// How long one question to one node may take. A live node answers in microseconds on loopback;
/// the bound only keeps a stopped or wedged one from hanging the test.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// How long a cluster node may be unreachable before the others count it as failed, in ms. A
/// second keeps failovers to about three seconds on loopback, yet is far above a loopback ping.
const CLUSTER_NODE_TIMEOUT_MS: &str = "1000";

/// How long a sentinel waits without a valid reply before it considers an instance down, in ms.
const SENTINEL_DOWN_AFTER_MS: u32 = 1000;

/// How long a sentinel's failover may take before another sentinel may retry it, in ms.
const SENTINEL_FAILOVER_TIMEOUT_MS: u32 = 5000;

/// How many sentinels must agree the primary is down before a failover starts.
const SENTINEL_QUORUM: u32 = 2;

/// How many sentinels a [`RedisSentinel`] runs: a majority of three survives the loss of one.
const SENTINELS: usize = 3;

/// Redis waits 5 s by default before a diskless full sync, in case more replicas ask for one;
/// with no delay a replica's link comes up in milliseconds instead, and a topology starts fast.
const NO_SYNC_DELAY: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// A Redis Cluster of `redis-server` processes on loopback, created with `redis-cli --cluster
/// create` and owned by one test.
///
/// Every node runs with `--cluster-node-timeout 1000`, so after a primary is killed its replica
/// takes over in about three seconds. Nodes are addressed by their port; the roles reported by
/// [`primaries`](Self::primaries) and [`replicas`](Self::replicas) are asked of the nodes each
/// time, because a failover changes them.
///
/// Dropping the value kills every node by pid and waits for it.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, in the order they were started; killed ones stay, stopped.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries * (1 + replicas_per_primary)` nodes, joins them into a cluster that
    /// serves all 16384 slots, and returns once it is ready for a failover: every node reports
    /// `cluster_state:ok` with every slot assigned, knows every other node, and every replica's
    /// link to its primary is up.
    ///
    /// # Panics
    ///
    /// If `primaries` is less than 3 (Redis Cluster's minimum); if `redis-server` or `redis-cli`
    /// is missing (with the command that installs it); if a node does not start (see
    /// [`RedisServer::start`]); if `redis-cli --cluster create` fails (with its output); or if the
    /// cluster is not ready within 30 s (with what was still missing).
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        Self::start_with_cli(OsStr::new(REDIS_CLI), primaries, replicas_per_primary)
    }

    /// `start` with `redis-cli` as a parameter, so the missing-binary path is testable.
    fn start_with_cli(cli: &OsStr, primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        assert!(
            primaries >= 3,
            "a Redis Cluster needs at least 3 primaries, {primaries} were asked for"
        );
        let count = primaries * (1 + replicas_per_primary);
        let nodes = (0..count)
            .map(|_| {
                RedisServer::start_custom(OsStr::new(REDIS_SERVER), None, || {
                    let mut args: Vec<String> = [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        CLUSTER_NODE_TIMEOUT_MS,
                        "--cluster-port",
                    ]
                    .iter()
                    .map(|arg| (*arg).to_owned())
                    .collect();
                    // A fresh bus port per attempt: one that was taken makes the node exit with
                    // "Address already in use", and the next attempt must not reuse it.
                    args.push(free_port().to_string());
                    args.extend(NO_SYNC_DELAY.iter().map(|arg| (*arg).to_owned()));
                    args
                })
            })
            .collect();
        let cluster = RedisCluster { nodes };

        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        create.extend([
            "--cluster-replicas".into(),
            replicas_per_primary.to_string(),
            "--cluster-yes".into(),
        ]);
        let output = run_cli(cli, &create);
        if !output.status.success() {
            panic!(
                "`redis-cli {}` failed ({}):\n{}{}",
                create.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        poll_until(
            &format!(
                "the cluster of {count} nodes on ports {:?} formed ({primaries} primaries with \
                 {replicas_per_primary} replica(s) each, every replica's link up)",
                cluster.ports()
            ),
            FORM_DEADLINE,
            || cluster.formed(primaries, count - primaries),
        );
        cluster
    }

    /// The URL of every node, `redis://127.0.0.1:PORT/`, in start order: the seed list a cluster
    /// client is configured with. It keeps listing a node after [`kill`](Self::kill), as a
    /// client's static configuration would.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the live nodes that currently act as primaries, each asked with `ROLE`.
    ///
    /// # Panics
    ///
    /// If a live node does not answer.
    pub fn primaries(&self) -> Vec<u16> {
        self.live_roles()
            .into_iter()
            .filter_map(|(port, role)| matches!(role, Role::Primary).then_some(port))
            .collect()
    }

    /// The ports of the live nodes that currently act as replicas, each asked with `ROLE`.
    ///
    /// # Panics
    ///
    /// If a live node does not answer.
    pub fn replicas(&self) -> Vec<u16> {
        self.live_roles()
            .into_iter()
            .filter_map(|(port, role)| matches!(role, Role::Replica { .. }).then_some(port))
            .collect()
    }

    /// The ports of the live nodes that currently replicate the node on `primary`: the
    /// candidates to replace it when it is killed.
    ///
    /// # Panics
    ///
    /// If a live node does not answer.
    pub fn replicas_of(&self, primary: u16) -> Vec<u16> {
        self.live_roles()
            .into_iter()
            .filter_map(|(port, role)| {
                matches!(role, Role::Replica { primary: p } if p == primary).then_some(port)
            })
            .collect()
    }

    /// The pid of the node on `port` (of its last process, once killed).
    ///
    /// # Panics
    ///
    /// If no node of this cluster listens on `port`.
    pub fn pid_of(&self, port: u16) -> u32 {
        self.node(port).pid()
    }

    /// Kills the node on `port` with `SIGKILL`, by its pid, and waits for it to exit: a crash,
    /// with no shutdown and no handover. The node stays dead for the rest of the test; the other
    /// nodes find out through the cluster bus, after the node timeout.
    ///
    /// # Panics
    ///
    /// If no node of this cluster listens on `port`, or waiting for the process fails.
    pub fn kill(&mut self, port: u16) {
        let index = self.index_of(port);
        self.nodes[index].stop();
    }

    /// Polls every live node until the cluster serves every slot again and returns how long that
    /// took, measured from the call: every live node reports `cluster_state:ok` and, in its own
    /// view (`CLUSTER NODES`), every one of the 16384 slots belongs to a live primary.
    ///
    /// Right after a [`kill`](Self::kill) of a primary, this is the time the cluster takes to
    /// notice and promote a replica: about 2.7 s on loopback.
    ///
    /// # Panics
    ///
    /// If the cluster is not healthy when `deadline` has passed; the message says what was still
    /// wrong.
    pub fn wait_until_healthy(&self, deadline: Duration) -> Duration {
        poll_until(
            &format!(
                "the cluster's live nodes {:?} served every slot",
                self.live_ports()
            ),
            deadline,
            || self.healthy(),
        )
    }
}

impl RedisCluster {
    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::port)
            .collect()
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| {
                panic!(
                    "no node of this cluster listens on port {port}; its nodes are on {:?}",
                    self.ports()
                )
            })
    }

    fn node(&self, port: u16) -> &RedisServer {
        &self.nodes[self.index_of(port)]
    }

    /// Every live node's port and `ROLE`, in start order.
    fn live_roles(&self) -> Vec<(u16, Role)> {
        self.live_ports()
            .into_iter()
            .map(|port| {
                let role = role(port)
                    .unwrap_or_else(|e| panic!("cluster node 127.0.0.1:{port} ROLE: {e}"));
                (port, role)
            })
            .collect()
    }

    /// `Ok` once the freshly created cluster is whole; otherwise what is still missing.
    fn formed(&self, primaries: usize, replicas: usize) -> Result<(), String> {
        let count = self.nodes.len();
        let (mut seen_primaries, mut seen_replicas) = (0, 0);
        for port in self.ports() {
            let info = text(port, &["CLUSTER", "INFO"])
                .map_err(|e| format!("127.0.0.1:{port} CLUSTER INFO: {e}"))?;
            expect_field(port, &info, "cluster_state", "ok")?;
            expect_field(port, &info, "cluster_slots_assigned", &SLOTS.to_string())?;
            expect_field(port, &info, "cluster_known_nodes", &count.to_string())?;
            match role(port).map_err(|e| format!("127.0.0.1:{port} ROLE: {e}"))? {
                Role::Primary => seen_primaries += 1,
                Role::Replica { .. } => {
                    seen_replicas += 1;
                    link_up(port)?;
                }
                Role::Other(role) => return Err(format!("127.0.0.1:{port} has role {role}")),
            }
        }
        if (seen_primaries, seen_replicas) != (primaries, replicas) {
            return Err(format!(
                "{seen_primaries} primaries and {seen_replicas} replicas, not {primaries} and \
                 {replicas}"
            ));
        }
        Ok(())
    }

    /// `Ok` when every live node is `ok` and sees every slot served by a live primary.
    fn healthy(&self) -> Result<(), String> {
        let live = self.live_ports();
        for &port in &live {
            let info = text(port, &["CLUSTER", "INFO"])
                .map_err(|e| format!("127.0.0.1:{port} CLUSTER INFO: {e}"))?;
            expect_field(port, &info, "cluster_state", "ok")?;
            let nodes = text(port, &["CLUSTER", "NODES"])
                .map_err(|e| format!("127.0.0.1:{port} CLUSTER NODES: {e}"))?;
            let served = slots_served_by(&nodes, &live);
            if served != SLOTS {
                return Err(format!(
                    "127.0.0.1:{port} sees {served} of {SLOTS} slots served by a live primary"
                ));
            }
        }
        Ok(())
    }
}

/// A primary with one replica, watched by three sentinels, each its own `redis-server` process on
/// loopback and owned by one test. The sentinels monitor the primary as [`MASTER_NAME`] with a
/// quorum of 2 and `down-after-milliseconds 1000`, so after the primary is killed they report the
/// replica as the master in about 1.5 s.
///
/// Dropping the value kills all five processes by pid and waits for them.
#[derive(Debug)]
pub struct RedisSentinel {
    /// Declared first so they are stopped first, before they could react to the data nodes'
    /// end.
    sentinels: Vec<RedisServer>,
    /// The initial primary, then the initial replica.
    data: [RedisServer; 2],
    /// The port of the last primary [`kill_primary`](Self::kill_primary) killed.
    killed: Option<u16>,
}

impl RedisSentinel {
    /// Starts the primary, the replica and three sentinels, and returns once the replica's link
    /// is up and every sentinel reports the primary as [`MASTER_NAME`]'s master, has found the
    /// replica and knows the two other sentinels.
    ///
    /// The replica's link comes up before the sentinels start: a sentinel learns about replicas
    /// from the primary's `INFO`, which it asks for at once and then only every 10 s.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing (with the command that installs it), a process does not start
    /// (see [`RedisServer::start`]), or the topology is not ready within 30 s (with what was still
    /// missing).
    pub fn start() -> RedisSentinel {
        Self::start_inner(None)
    }

    /// [`start`](Self::start) with the data nodes protected: the ACL user `user` with
    /// `password` may do everything, the `default` user needs `password` too, the replica
    /// replicates as `user`, and the sentinels monitor the primary as `user`. The sentinels
    /// want `password` too (as `default`, and among themselves).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with_user(user: &str, password: &str) -> RedisSentinel {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(auth: Option<(String, String)>) -> RedisSentinel {
        let mut primary_args: Vec<String> = NO_SYNC_DELAY.iter().map(|a| (*a).to_owned()).collect();
        if let Some((user, password)) = &auth {
            primary_args.extend([
                "--requirepass".to_owned(),
                password.clone(),
                "--user".to_owned(),
                user.clone(),
                "on".to_owned(),
                format!(">{password}"),
                "~*".to_owned(),
                "&*".to_owned(),
                "+@all".to_owned(),
            ]);
        }
        let primary_refs: Vec<&str> = primary_args.iter().map(String::as_str).collect();
        let primary = RedisServer::start_with_args(&primary_refs);
        let primary_port = primary.port().to_string();
        let mut replica_args = primary_args.clone();
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary_port.clone(),
        ]);
        if let Some((user, password)) = &auth {
            replica_args.extend([
                "--masteruser".to_owned(),
                user.clone(),
                "--masterauth".to_owned(),
                password.clone(),
            ]);
            remember_credentials(primary.port(), user, password);
        }
        let replica_refs: Vec<&str> = replica_args.iter().map(String::as_str).collect();
        let replica = RedisServer::start_with_args(&replica_refs);
        if let Some((user, password)) = &auth {
            remember_credentials(replica.port(), user, password);
        }
        poll_until(
            &format!(
                "the replica on port {} linked to the primary on port {primary_port}",
                replica.port()
            ),
            FORM_DEADLINE,
            || link_up(replica.port()),
        );

        let mut config = sentinel_config(primary.port());
        if let Some((user, password)) = &auth {
            // The sentinels want the password too (as `default`), among themselves as well.
            let _ = write!(
                config,
                "sentinel auth-user {MASTER_NAME} {user}\nsentinel auth-pass {MASTER_NAME} {password}\n\
                 requirepass {password}\nsentinel sentinel-pass {password}\n"
            );
        }
        let sentinels: Vec<RedisServer> = (0..SENTINELS)
            .map(|_| {
                let sentinel =
                    RedisServer::start_custom(OsStr::new(REDIS_SERVER), Some(&config), || {
                        vec!["--sentinel".to_owned()]
                    });
                if let Some((_, password)) = &auth {
                    remember_credentials(sentinel.port(), "default", password);
                }
                sentinel
            })
            .collect();
        let topology = RedisSentinel {
            sentinels,
            data: [primary, replica],
            killed: None,
        };
        poll_until(
            &format!(
                "the sentinels on ports {:?} agreed on the primary on port {primary_port}, its \
                 replica and each other",
                topology.sentinel_ports()
            ),
            FORM_DEADLINE,
            || topology.formed(),
        );
        topology
    }

    /// The URL of every sentinel, `redis://127.0.0.1:PORT/`: what a Sentinel client is
    /// configured with, along with [`master_name`](Self::master_name).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The name the sentinels monitor the primary under: [`MASTER_NAME`].
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The port of the initial primary; a failover does not change it.
    pub fn primary_port(&self) -> u16 {
        self.data[0].port()
    }

    /// The port of the initial replica; a failover does not change it.
    pub fn replica_port(&self) -> u16 {
        self.data[1].port()
    }

    /// The pids of all five processes: the primary, the replica, then the sentinels (of their
    /// last process, for one that was killed).
    pub fn pids(&self) -> Vec<u32> {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(RedisServer::pid)
            .collect()
    }

    /// The master's port as the first sentinel that answers reports it, through `SENTINEL
    /// get-master-addr-by-name`.
    ///
    /// # Panics
    ///
    /// If no sentinel reports an address.
    pub fn master_port_reported(&self) -> u16 {
        let mut errors = String::new();
        for port in self.sentinel_ports() {
            match reported_master(port) {
                Ok(master) => return master,
                Err(e) => {
                    let _ = write!(errors, "\n  sentinel 127.0.0.1:{port}: {e}");
                }
            }
        }
        panic!("no sentinel reported the master of {MASTER_NAME}:{errors}");
    }

    /// Kills the server the sentinels currently report as the master with `SIGKILL`, by its pid,
    /// waits for it to exit, and returns its port. It stays dead for the rest of the test.
    ///
    /// # Panics
    ///
    /// If no sentinel reports a master, the reported one is not a live server of this topology,
    /// or waiting for the process fails.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.master_port_reported();
        let node = self
            .data
            .iter_mut()
            .find(|n| n.port() == port && n.is_running())
            .unwrap_or_else(|| {
                panic!("the sentinels report port {port} as the master, which is no live server of this topology")
            });
        node.stop();
        self.killed = Some(port);
        port
    }

    /// Polls the sentinels until every one reports the same master, other than the one
    /// [`kill_primary`](Self::kill_primary) killed, and that server answers `ROLE` as a master;
    /// returns its port and how long that took, measured from the call.
    ///
    /// Right after `kill_primary`, this is the failover time a Sentinel client sees: about 1.5 s
    /// on loopback.
    ///
    /// # Panics
    ///
    /// If no primary was killed, or the sentinels do not agree on a new master before `deadline`
    /// (the message says what they reported last).
    pub fn wait_for_new_master(&self, deadline: Duration) -> (u16, Duration) {
        let Some(killed) = self.killed else {
            panic!("wait_for_new_master waits for the replacement of a killed primary: call kill_primary first");
        };
        let mut master = 0;
        let took = poll_until(
            &format!(
                "the sentinels {:?} agreed on a master other than the killed one on port \
                 {killed}",
                self.sentinel_ports()
            ),
            deadline,
            || {
                master = self.new_master(killed)?;
                Ok(())
            },
        );
        (master, took)
    }
}

impl RedisSentinel {
    fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// `Ok` once every sentinel reports the primary, one replica and two other sentinels.
    fn formed(&self) -> Result<(), String> {
        let primary = self.primary_port();
        for port in self.sentinel_ports() {
            let master = reported_master(port).map_err(|e| format!("sentinel {port}: {e}"))?;
            if master != primary {
                return Err(format!(
                    "sentinel {port} reports port {master} as the master, not {primary}"
                ));
            }
            let fields = match query(port, &["SENTINEL", "MASTER", MASTER_NAME]) {
                Ok(Reply::Array(Some(fields))) => fields,
                other => return Err(format!("sentinel {port} SENTINEL MASTER: {other:?}")),
            };
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| matches!(&pair[0], Reply::Bulk(Some(key)) if key == name))
                    .and_then(|pair| pair.get(1))
            };
            for (name, want) in [("num-other-sentinels", SENTINELS - 1), ("num-slaves", 1)] {
                let want = Reply::Bulk(Some(want.to_string()));
                if field(name) != Some(&want) {
                    return Err(format!(
                        "sentinel {port} has {name} {:?}, not {want:?}",
                        field(name)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The master every live sentinel reports, once they agree on one other than `killed` and it
    /// answers `ROLE` as a master; otherwise what is still wrong.
    fn new_master(&self, killed: u16) -> Result<u16, String> {
        let mut reported = BTreeSet::new();
        for sentinel in self.sentinels.iter().filter(|s| s.is_running()) {
            let port = sentinel.port();
            reported.insert(reported_master(port).map_err(|e| format!("sentinel {port}: {e}"))?);
        }
        let master = match reported.iter().collect::<Vec<_>>()[..] {
            [&master] if master != killed => master,
            _ => return Err(format!("the sentinels report masters {reported:?}")),
        };
        match role(master) {
            Ok(Role::Primary) => Ok(master),
            other => Err(format!(
                "the sentinels report port {master}, whose ROLE is {other:?}"
            )),
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for node in self.data.iter().chain(&self.sentinels) {
            forget_credentials(node.port());
        }
    }
}

/// A sentinel's configuration. It goes in the sentinel's own directory, where the sentinel
/// rewrites it with what it learns (its id, the replicas, the other sentinels, a failover).
fn sentinel_config(primary: u16) -> String {
    format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} {SENTINEL_QUORUM}\n\
         sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n\
         sentinel failover-timeout {MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
         sentinel resolve-hostnames no\n\
         bind 127.0.0.1\n"
    )
}

/// Calls `check` every [`POLL`] until it returns `Ok` and returns how long that took.
///
/// # Panics
///
/// If `check` still fails when `deadline` has passed; the message names `what` and quotes the
/// last failure.
fn poll_until(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return start.elapsed(),
            Err(why) => why,
        };
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting until {what}; last check: {last}");
        }
        thread::sleep(POLL);
    }
}

/// Runs `redis-cli` with `args` and collects its output.
///
/// # Panics
///
/// If the binary is missing, with the command that installs it.
fn run_cli(program: &OsStr, args: &[String]) -> Output {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{MISSING_CLI}"),
        Err(e) => panic!("could not run {}: {e}", Path::new(program).display()),
    }
}

/// `Err` naming the node, unless the `INFO`-style `text` has `field:want`.
fn expect_field(port: u16, text: &str, field: &str, want: &str) -> Result<(), String> {
    let got = text
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'));
    match got {
        Some(got) if got == want => Ok(()),
        got => Err(format!("127.0.0.1:{port} has {field}:{got:?}, not {want}")),
    }
}

/// `Ok` when the replica on `port` reports `master_link_status:up`.
fn link_up(port: u16) -> Result<(), String> {
    let info = text(port, &["INFO", "replication"])
        .map_err(|e| format!("127.0.0.1:{port} INFO replication: {e}"))?;
    expect_field(port, &info, "master_link_status", "up")
}

/// How many of the slots in the `CLUSTER NODES` listing `nodes` belong to a primary that is
/// listening on one of `live` and not flagged as failing.
fn slots_served_by(nodes: &str, live: &[u16]) -> usize {
    let mut served = vec![false; SLOTS];
    for line in nodes.lines() {
        // `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let port = addr
            .split(['@', ','])
            .next()
            .and_then(|host_port| host_port.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok());
        let flags: Vec<&str> = flags.split(',').collect();
        let serving = port.is_some_and(|port| live.contains(&port))
            && flags.contains(&"master")
            && !flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr"));
        if !serving {
            continue;
        }
        // Slots being imported or migrated are listed in brackets; they are not served yet.
        for range in fields.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(first), Ok(last)) = (first.parse::<usize>(), last.parse::<usize>()) {
                for slot in served.iter_mut().take(last + 1).skip(first) {
                    *slot = true;
                }
            }
        }
    }
    served.iter().filter(|slot| **slot).count()
}

/// What a node says it is, from `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Primary,
    /// A replica, with the port of the primary it replicates.
    Replica {
        primary: u16,
    },
    /// Anything else, such as `sentinel`.
    Other(String),
}

/// Asks the server on `port` for its `ROLE`.
fn role(port: u16) -> io::Result<Role> {
    let reply = query(port, &["ROLE"])?;
    let Reply::Array(Some(items)) = &reply else {
        return Err(invalid(format!("ROLE replied {reply:?}")));
    };
    match items.as_slice() {
        [Reply::Bulk(Some(role)), ..] if role == "master" => Ok(Role::Primary),
        [Reply::Bulk(Some(role)), _, Reply::Integer(port), ..] if role == "slave" => {
            let primary =
                u16::try_from(*port).map_err(|_| invalid(format!("ROLE names port {port}")))?;
            Ok(Role::Replica { primary })
        }
        [Reply::Bulk(Some(role)), ..] => Ok(Role::Other(role.clone())),
        _ => Err(invalid(format!("ROLE replied {reply:?}"))),
    }
}

/// The master's port a sentinel reports for [`MASTER_NAME`].
fn reported_master(sentinel: u16) -> io::Result<u16> {
    let reply = query(
        sentinel,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
    )?;
    match &reply {
        Reply::Array(Some(addr)) => match addr.as_slice() {
            [Reply::Bulk(Some(_)), Reply::Bulk(Some(port))] => port
                .parse()
                .map_err(|_| invalid(format!("a master on port {port:?}"))),
            _ => Err(invalid(format!("an address of {reply:?}"))),
        },
        _ => Err(invalid(format!(
            "get-master-addr-by-name replied {reply:?}"
        ))),
    }
}

/// A RESP2 reply, as far as the topologies need to read one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// A bulk string; `None` for the nil reply.
    Bulk(Option<String>),
    /// An array; `None` for the nil array.
    Array(Option<Vec<Reply>>),
}

/// Sends one command to the server on `127.0.0.1:port` on a fresh connection and reads its reply.
///
/// A fresh connection per command keeps the topologies free of connection state: a node that
/// was killed, or one that a failover changed, is asked afresh each time.
fn query(port: u16, args: &[&str]) -> io::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let encode = |request: &mut String, args: &[&str]| {
        let _ = write!(request, "*{}\r\n", args.len());
        for arg in args {
            let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
        }
    };
    let mut request = String::new();
    let credentials = credentials_for(port);
    if let Some((user, password)) = &credentials {
        encode(&mut request, &["AUTH", user, password]);
    }
    encode(&mut request, args);
    (&stream).write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    if credentials.is_some() {
        match read_reply(&mut reader)? {
            Reply::Simple(ok) if ok == "OK" => {}
            other => return Err(invalid(format!("AUTH replied {other:?}"))),
        }
    }
    read_reply(&mut reader)
}

/// The ACL user and password the data nodes on some ports want (see
/// [`RedisSentinel::start_with_user`]), by port: [`query`] authenticates with them.
fn credentials() -> &'static std::sync::Mutex<std::collections::HashMap<u16, (String, String)>> {
    static CREDENTIALS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<u16, (String, String)>>,
    > = std::sync::OnceLock::new();
    CREDENTIALS.get_or_init(Default::default)
}

/// Forgets what [`remember_credentials`] kept for `port`: its server is gone, and another may
/// take the port.
fn forget_credentials(port: u16) {
    credentials()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&port);
}

fn remember_credentials(port: u16, user: &str, password: &str) {
    credentials()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(port, (user.to_owned(), password.to_owned()));
}

fn credentials_for(port: u16) -> Option<(String, String)> {
    credentials()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&port)
        .cloned()
}

/// Sends one command and returns its bulk-string reply, such as the text of `INFO`; an error
/// reply becomes an `Err` carrying it.
fn text(port: u16, args: &[&str]) -> io::Result<String> {
    match query(port, args)? {
        Reply::Bulk(Some(text)) => Ok(text),
        other => Err(invalid(format!("a reply of {other:?}"))),
    }
}

/// Reads one RESP2 reply.
fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before a reply",
        ));
    }
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| invalid(format!("a reply line without CRLF: {line:?}")))?;
    let Some(kind) = line.chars().next() else {
        return Err(invalid("an empty reply line".into()));
    };
    let rest = &line[kind.len_utf8()..];
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("a reply of {line:?}")))
    };
    match kind {
        '+' => Ok(Reply::Simple(rest.to_owned())),
        '-' => Ok(Reply::Error(rest.to_owned())),
        ':' => Ok(Reply::Integer(number()?)),
        '$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut payload = vec![0; len + 2];
            reader.read_exact(&mut payload)?;
            payload.truncate(len);
            String::from_utf8(payload)
                .map(|text| Reply::Bulk(Some(text)))
                .map_err(|_| invalid("a bulk string that is not UTF-8".into()))
        }
        '*' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Array(None));
            };
            let items = (0..len)
                .map(|_| read_reply(reader))
                .collect::<io::Result<_>>()?;
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(invalid(format!("a reply of {line:?}"))),
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(
        expected = "redis-cli was not found on PATH; RedisCluster needs it to create the cluster. Install it with: sudo apt-get install -y redis-tools"
    )]
    fn a_missing_cli_panics_with_the_install_command() {
        RedisCluster::start_with_cli(OsStr::new("edge-cache-no-such-redis-cli"), 3, 0);
    }

    #[test]
    fn replies_of_every_kind_are_read() {
        let input = b"*6\r\n+OK\r\n-ERR no\r\n:-7\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n".to_vec();
        let reply = read_reply(&mut io::Cursor::new(input)).unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(-7),
                Reply::Bulk(Some("he\r\nl".into())),
                Reply::Bulk(None),
                Reply::Array(None),
            ]))
        );
    }

    #[test]
    fn a_truncated_reply_is_an_error() {
        assert!(read_reply(&mut io::Cursor::new(b"$5\r\nhe".to_vec())).is_err());
        assert!(read_reply(&mut io::Cursor::new(b"".to_vec())).is_err());
        assert!(read_reply(&mut io::Cursor::new(b"?x\r\n".to_vec())).is_err());
    }

    #[test]
    fn slots_count_only_live_healthy_primaries() {
        let nodes = "\
a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7002@17002 master,fail - 0 0 2 connected 5461-10922
c 127.0.0.1:7003@17003,host master - 0 0 3 connected 10923-16382 16383 [16383->-x]
d 127.0.0.1:7004@17004 slave a 0 0 1 connected
e 127.0.0.1:7005@17005 master - 0 0 4 connected 5461-10922
";
        assert_eq!(slots_served_by(nodes, &[7001, 7003, 7004]), SLOTS - 5462);
        // A primary flagged `fail` serves nothing, even if it still answers.
        assert_eq!(slots_served_by(nodes, &[7001, 7002, 7003]), SLOTS - 5462);
        assert_eq!(slots_served_by(nodes, &[7001, 7003, 7005]), SLOTS);
        assert_eq!(slots_served_by(nodes, &[]), 0);
    }

    #[test]
    fn fields_are_matched_whole() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        assert!(expect_field(1, info, "cluster_state", "ok").is_ok());
        assert!(expect_field(1, info, "cluster_slots_assigned", "16384").is_ok());
        let err = expect_field(1, info, "cluster_slots", "16384").unwrap_err();
        assert!(err.contains("cluster_slots:None"), "{err}");
        assert!(expect_field(1, info, "cluster_state", "fail").is_err());
    }
}
