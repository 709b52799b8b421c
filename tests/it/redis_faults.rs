//! Real-Redis faults against a fleet of nodes that follow their namespaces' event logs: a
//! killed subscription, a server killed and restarted empty, a frozen server, paused clients, a
//! silent subscriber link, a subscriber cut off by its output-buffer limit, and an invalidation
//! racing a fill. Each test runs its own `redis-server`, writes versioned values from many
//! tasks, re-reads them on every node, records everything in a [`History`] and checks it
//! against the staleness bound: no read may return a version older than one acknowledged more
//! than the bound before it started. Each also counts how much of a reader's warm L1 (keys the
//! fault did not change) the node still serves afterwards: replaying the log instead of
//! flushing is what keeps it.
//!
//! Every wait is on a condition with a deadline; only the fault itself (a freeze, a pause) has a
//! fixed length.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_core::{
    CacheKey, ConnectionState, Event, EventBus, Fence, L2Entry, L2Info, L2Store, L2Write, LogRead,
    Scope, Subscription,
};
use cache_edge::{EdgeCache, NamespaceStats, Notification, Observer, SetOptions, Stats};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::{json, Value};
use test_support::history::{History, Report};
use test_support::{eventually, RedisServer, TcpProxy};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The staleness bound every node is built with and every history is checked against.
const BOUND: Duration = Duration::from_millis(1_500);
/// How often each node reads its logs to confirm it heard everything.
const LIVENESS: Duration = Duration::from_millis(250);
/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// Keys each node holds in L1 before the fault, never written during it.
const WARM: usize = 200;
/// Keys each node holds in L1 before the fault and that change exactly once, around it: a node
/// that missed such a change and did not replay it would serve the old version for good, which
/// the history reports once the bound has passed (the workload's other keys change every few
/// milliseconds, so a missed event of theirs is soon repaired by the next one).
const ONCE: usize = 32;
/// The share of them that must still be served from L1 after a fault the log covers.
const MIN_SURVIVAL: f64 = 0.9;
const AVAIL: &str = "gpu_availability";
const PRICING: &str = "gpu_pricing";
/// Keys of `PRICING` written (and invalidated by notifications) by one task.
const PRICES: usize = 4;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Short timeouts, so every fault is noticed within a few hundred milliseconds.
fn config(url: String) -> RedisConfig {
    RedisConfig::new(url)
        .response_timeout(ms(250))
        .connect_timeout(ms(250))
        .ping_interval(ms(100))
        .reconnect_backoff(ms(10), ms(100))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a node went through: its connection states and the keys whose events it applied.
#[derive(Default)]
struct Watch {
    disconnects: AtomicU64,
    resubscribes: AtomicU64,
    /// Key text -> events naming it that the node applied.
    applied: Mutex<HashMap<String, u64>>,
}

impl Watch {
    fn applied(&self, key: &CacheKey) -> u64 {
        lock(&self.applied).get(key.as_str()).copied().unwrap_or(0)
    }
}

impl Observer for Watch {
    fn on_event_applied(&self, event: &Event, _lag: Duration) {
        if let Scope::Keys(keys) = &event.scope {
            let mut applied = lock(&self.applied);
            for key in keys {
                *applied.entry(key.clone()).or_default() += 1;
            }
        }
    }

    fn on_connection_state(&self, state: ConnectionState) {
        match state {
            ConnectionState::Disconnected => self.disconnects.fetch_add(1, SeqCst),
            ConnectionState::Resubscribed => self.resubscribes.fetch_add(1, SeqCst),
            _ => 0,
        };
    }
}

#[derive(Clone)]
struct Node {
    cache: EdgeCache,
    watch: Arc<Watch>,
}

impl Node {
    async fn build(id: &str, l2: Arc<dyn L2Store>, bus: Arc<dyn EventBus>) -> Node {
        let watch = Arc::new(Watch::default());
        let cache = EdgeCache::builder()
            .node_id(id)
            .l2(l2)
            .bus(bus)
            .observer(watch.clone() as Arc<dyn Observer>)
            .staleness_bound(BOUND)
            .liveness_interval(LIVENESS)
            .build()
            .await
            .unwrap();
        Node { cache, watch }
    }

    async fn direct(id: &str, config: &RedisConfig) -> Node {
        let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await.unwrap());
        let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
        Node::build(id, l2, bus).await
    }

    fn id(&self) -> &str {
        self.cache.node_id()
    }

    fn stats(&self) -> Stats {
        self.cache.stats()
    }

    fn disconnects(&self) -> u64 {
        self.watch.disconnects.load(SeqCst)
    }

    fn resubscribes(&self) -> u64 {
        self.watch.resubscribes.load(SeqCst)
    }

    /// Waits until the node uses its availability L1 again and its subscription is up.
    async fn in_service(&self) {
        eventually(
            &format!("{} serves its availability L1 again", self.id()),
            DEADLINE,
            || async {
                namespace(&self.stats(), AVAIL).l1_in_use && self.cache.health().await.bus_connected
            },
        )
        .await;
    }
}

fn namespace<'a>(stats: &'a Stats, name: &str) -> &'a NamespaceStats {
    stats
        .namespaces
        .iter()
        .find(|ns| ns.name == name)
        .expect("a default namespace")
}

/// A key the workload writes and reads: its name in the history and its parameters.
#[derive(Clone)]
struct Hot {
    name: String,
    namespace: &'static str,
    params: Value,
}

fn avail_key(i: usize) -> Hot {
    Hot {
        name: format!("hot-{i}"),
        namespace: AVAIL,
        params: json!({ "gpu_id": format!("hot-{i}") }),
    }
}

fn price_key(i: usize) -> Hot {
    Hot {
        name: format!("price-{i}"),
        namespace: PRICING,
        params: json!({ "gpu_type": format!("price-{i}") }),
    }
}

fn once_key(i: usize) -> Hot {
    Hot {
        name: format!("once-{i}"),
        namespace: AVAIL,
        params: json!({ "gpu_id": format!("once-{i}") }),
    }
}

fn warm_params(i: usize) -> Value {
    json!({ "gpu_id": format!("warm-{i}") })
}

/// One server and three nodes: `writer` (which reads too), `peer`, and `reader`, the node
/// whose links the single-node faults target and whose warm L1 is counted.
struct Fleet {
    server: RedisServer,
    writer: Node,
    peer: Node,
    reader: Node,
    /// The id Redis gave the reader's subscriber connection.
    reader_subscriber: u64,
    history: History,
    origin: Instant,
}

impl Fleet {
    async fn start(server: RedisServer) -> Fleet {
        let config = config(server.url());
        Fleet::with_reader(server, config.clone(), |config| async move {
            let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
            let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
            (l2, bus)
        })
        .await
    }

    /// A fleet whose reader gets the L2 and bus `reader_links` makes from the config.
    async fn with_reader<F, Fut>(server: RedisServer, config: RedisConfig, reader_links: F) -> Fleet
    where
        F: FnOnce(RedisConfig) -> Fut,
        Fut: std::future::Future<Output = (Arc<dyn L2Store>, Arc<dyn EventBus>)>,
    {
        let writer = Node::direct("writer", &config).await;
        let peer = Node::direct("peer", &config).await;
        let before = pubsub_clients(&server).await;
        let (l2, bus) = reader_links(config.clone()).await;
        let reader = Node::build("reader", l2, bus).await;
        let after = pubsub_clients(&server).await;
        let new: Vec<u64> = after
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "the reader subscribed once");
        Fleet {
            server,
            writer,
            peer,
            reader,
            reader_subscriber: new[0],
            history: History::new(),
            origin: Instant::now(),
        }
    }

    fn nodes(&self) -> [&Node; 3] {
        [&self.writer, &self.peer, &self.reader]
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Writes version 1 of every key the workload uses, of the `ONCE` keys and of `WARM` keys
    /// nobody writes again, then has every node read the warm and once keys until all of them
    /// are L1 hits.
    async fn prepare(&self, hot: &[Hot]) {
        for key in hot.iter().cloned().chain((0..ONCE).map(once_key)) {
            self.writer
                .cache
                .set(key.namespace, &key.params, &1_u64)
                .await
                .unwrap();
            self.history.ack(&key.name, 1, self.now());
        }
        for i in 0..WARM {
            self.writer
                .cache
                .set(AVAIL, &warm_params(i), &1_u64)
                .await
                .unwrap();
        }
        for node in self.nodes() {
            node.in_service().await;
            // A first pass back-fills L1; an event still on its way drops a copy, and the next
            // pass fills it again.
            eventually(
                &format!("{} serves every warm key from L1", node.id()),
                DEADLINE,
                || async { self.warm_hits(node).await == WARM as u64 },
            )
            .await;
            eventually(
                &format!("{} serves every once key from L1", node.id()),
                DEADLINE,
                || async { self.once_hits(node).await == ONCE as u64 },
            )
            .await;
        }
    }

    /// Reads every once key on `node` (each must still be at version 1) and returns how many
    /// were L1 hits.
    async fn once_hits(&self, node: &Node) -> u64 {
        let before = node.stats().l1_hits;
        for key in (0..ONCE).map(once_key) {
            let got = node
                .cache
                .get::<u64, _>(key.namespace, &key.params)
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(&1), "{} read {}", node.id(), key.name);
        }
        node.stats().l1_hits - before
    }

    /// Changes each once key on the writer, 10 ms apart: even ones are written (version 2),
    /// odd ones invalidated (the source moved to 2). Each change is tried until acknowledged.
    /// Returns the task and the count of acknowledged changes.
    fn change_once(&self) -> (JoinHandle<()>, Arc<AtomicU64>) {
        let done = Arc::new(AtomicU64::new(0));
        let (node, history, origin, counter) = (
            self.writer.cache.clone(),
            self.history.clone(),
            self.origin,
            done.clone(),
        );
        let task = tokio::spawn(async move {
            for (i, key) in (0..ONCE).map(once_key).enumerate() {
                let cache_key = node.key(key.namespace, &key.params).unwrap();
                loop {
                    let changed = if i % 2 == 0 {
                        node.set_key(&cache_key, &2_u64, SetOptions::new()).await
                    } else {
                        node.invalidate_key(&cache_key).await
                    };
                    if changed.is_ok() {
                        break;
                    }
                    tokio::time::sleep(ms(5)).await;
                }
                history.ack(&key.name, 2, origin.elapsed());
                counter.fetch_add(1, SeqCst);
                tokio::time::sleep(ms(10)).await;
            }
        });
        (task, done)
    }

    /// Starts changing the once keys and returns once a quarter of them are changed, so the
    /// fault injected next falls in the middle of the changes.
    async fn start_once_changes(&self) -> JoinHandle<()> {
        let (task, done) = self.change_once();
        eventually("the first once keys change", DEADLINE, || async {
            done.load(SeqCst) >= ONCE as u64 / 4
        })
        .await;
        task
    }

    /// Waits for the once changes to end, then lets the workload run for longer than the
    /// bound, so a node still serving a version it should have replaced is a violation.
    async fn past_the_bound(&self, once: JoinHandle<()>) {
        tokio::time::timeout(DEADLINE, once)
            .await
            .expect("every once key changes")
            .unwrap();
        tokio::time::sleep(BOUND + ms(500)).await;
    }

    /// Asserts every node now serves each once key's change: version 2, or nothing for an
    /// invalidated key (or for any of them after a restart that lost L2's data).
    async fn assert_once_changed(&self, lost_l2: bool) {
        for node in self.nodes() {
            for (i, key) in (0..ONCE).map(once_key).enumerate() {
                let got = node
                    .cache
                    .get::<u64, _>(key.namespace, &key.params)
                    .await
                    .unwrap()
                    .map(|v| *v);
                let ok = match got {
                    Some(2) => i % 2 == 0,
                    None => i % 2 == 1 || lost_l2,
                    _ => false,
                };
                assert!(
                    ok,
                    "{} reads {} as {got:?} after its change",
                    node.id(),
                    key.name
                );
            }
        }
    }

    /// Reads every warm key once on `node` (nothing else may read there meanwhile) and returns
    /// how many were L1 hits. Each read returns version 1, or nothing if `lost_l2` (a Redis that
    /// restarted empty).
    async fn warm_reads(&self, node: &Node, lost_l2: bool) -> u64 {
        let before = node.stats().l1_hits;
        for i in 0..WARM {
            let got = node
                .cache
                .get::<u64, _>(AVAIL, &warm_params(i))
                .await
                .unwrap()
                .map(|v| *v);
            match got {
                Some(1) => {}
                None if lost_l2 => {}
                other => panic!("{} read warm-{i} as {other:?}", node.id()),
            }
        }
        node.stats().l1_hits - before
    }

    async fn warm_hits(&self, node: &Node) -> u64 {
        self.warm_reads(node, false).await
    }

    /// How many warm keys each node still serves from L1, once it is back in service.
    async fn survival(&self, lost_l2: bool) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for node in self.nodes() {
            node.in_service().await;
            out.push((node.id().to_owned(), self.warm_reads(node, lost_l2).await));
        }
        out
    }

    async fn shutdown(self) {
        for node in self.nodes() {
            node.cache.shutdown().await;
        }
        drop(self.server);
    }
}

/// The ids of the pub/sub connections the server has.
async fn pubsub_clients(server: &RedisServer) -> Vec<u64> {
    let list: String = admin(server, &["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    list.lines()
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// Sends one command on a connection of its own.
async fn admin<T: redis::FromRedisValue>(server: &RedisServer, args: &[&str]) -> T {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// What the workload writes: `writers` tasks, each owning `keys_per_writer` availability keys
/// (so each key's versions land in order), one pricing task, and two readers per node.
#[derive(Clone, Copy)]
struct Spec {
    writers: usize,
    keys_per_writer: usize,
    /// Between two changes of one task; zero writes back to back.
    pace: Duration,
    /// Every n-th change of an availability key is an `invalidate_key` (the source moved on and
    /// the cached copy is dropped) instead of a write.
    invalidate_every: u64,
    /// Every n-th round of the pricing task is a notification that invalidates the namespace.
    notify_every: u64,
}

impl Spec {
    fn hot(&self) -> Vec<Hot> {
        (0..self.writers * self.keys_per_writer)
            .map(avail_key)
            .chain((0..PRICES).map(price_key))
            .collect()
    }
}

/// The running workload.
struct Workload {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    fn start(fleet: &Fleet, spec: Spec) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let hot = spec.hot();
        for t in 0..spec.writers {
            let keys: Vec<Hot> =
                hot[t * spec.keys_per_writer..(t + 1) * spec.keys_per_writer].to_vec();
            let writer = Changer {
                node: fleet.writer.cache.clone(),
                history: fleet.history.clone(),
                origin: fleet.origin,
                stop: stop.clone(),
                acks: acks.clone(),
                failed: failed.clone(),
            };
            tasks.push(tokio::spawn(async move {
                writer.availability(t, keys, spec).await;
            }));
        }
        let pricer = Changer {
            node: fleet.writer.cache.clone(),
            history: fleet.history.clone(),
            origin: fleet.origin,
            stop: stop.clone(),
            acks: acks.clone(),
            failed: failed.clone(),
        };
        let prices: Vec<Hot> = (0..PRICES).map(price_key).collect();
        tasks.push(tokio::spawn(async move {
            pricer.pricing(prices, spec).await;
        }));
        for node in fleet.nodes() {
            for _ in 0..2 {
                let (node, history, origin, stop) = (
                    node.cache.clone(),
                    fleet.history.clone(),
                    fleet.origin,
                    stop.clone(),
                );
                let keys: Vec<(String, CacheKey)> = hot
                    .iter()
                    .cloned()
                    .chain((0..ONCE).map(once_key))
                    .map(|h| {
                        let key = node.key(h.namespace, &h.params).unwrap();
                        (h.name, key)
                    })
                    .collect();
                tasks.push(tokio::spawn(async move {
                    read_loop(node, keys, history, origin, stop).await;
                }));
            }
        }
        Workload {
            stop,
            acks,
            failed,
            tasks,
        }
    }

    fn acks(&self) -> u64 {
        self.acks.load(SeqCst)
    }

    /// Waits until `n` more changes are acknowledged (times the scale `cargo xtask chaos
    /// --faults SCALE` sets, for the long versions).
    async fn progress(&self, n: u64) {
        let scale = scale();
        let target = self.acks() + n * scale;
        eventually(
            &format!("{target} changes acknowledged"),
            DEADLINE * u32::try_from(scale).unwrap_or(u32::MAX),
            || async { self.acks() >= target },
        )
        .await;
    }

    /// Stops every task and waits for them; returns the acks and the failed attempts.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.acks.load(SeqCst), self.failed.load(SeqCst))
    }
}

/// A task that changes keys on the writer node and records each acknowledged change.
struct Changer {
    node: EdgeCache,
    history: History,
    origin: Instant,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Changer {
    /// Tries `change` until it is acknowledged (a failed attempt may still have landed, so the
    /// same version is tried again, never a later one first); false once stopped.
    async fn until_ok<F, Fut>(&self, mut change: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = cache_edge::Result<()>>,
    {
        loop {
            if self.stop.load(SeqCst) {
                return false;
            }
            if change().await.is_ok() {
                self.acks.fetch_add(1, SeqCst);
                return true;
            }
            self.failed.fetch_add(1, SeqCst);
            tokio::time::sleep(ms(5)).await;
        }
    }

    async fn pause(&self, pace: Duration) {
        if pace.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pace).await;
        }
    }

    /// Writes (with `set` or `set_key`) and invalidates its own availability keys.
    async fn availability(&self, task: usize, keys: Vec<Hot>, spec: Spec) {
        let cache_keys: Vec<CacheKey> = keys
            .iter()
            .map(|k| self.node.key(k.namespace, &k.params).unwrap())
            .collect();
        let mut versions = vec![1_u64; keys.len()];
        while !self.stop.load(SeqCst) {
            for (i, key) in keys.iter().enumerate() {
                versions[i] += 1;
                let version = versions[i];
                let done = self
                    .until_ok(|| async {
                        if version.is_multiple_of(spec.invalidate_every) {
                            self.node.invalidate_key(&cache_keys[i]).await
                        } else if task.is_multiple_of(2) {
                            self.node.set(key.namespace, &key.params, &version).await
                        } else {
                            let options = SetOptions::new();
                            self.node.set_key(&cache_keys[i], &version, options).await
                        }
                    })
                    .await;
                if !done {
                    return;
                }
                self.history.ack(&key.name, version, self.origin.elapsed());
                self.pause(spec.pace).await;
            }
        }
    }

    /// Writes the pricing keys one by one, and every `notify_every` rounds moves them all on
    /// and announces it with a notification that invalidates the whole namespace.
    async fn pricing(&self, keys: Vec<Hot>, spec: Spec) {
        let mut versions = vec![1_u64; keys.len()];
        let mut round = 0_u64;
        while !self.stop.load(SeqCst) {
            round += 1;
            if round.is_multiple_of(spec.notify_every) {
                for v in &mut versions {
                    *v += 1;
                }
                let notified = self
                    .until_ok(|| async {
                        let notification = Notification::pricing_updated("price-all", 2.5);
                        self.node.notify(notification).await.map(drop)
                    })
                    .await;
                if !notified {
                    return;
                }
                let acked_at = self.origin.elapsed();
                self.history.ack_many(
                    keys.iter()
                        .map(|k| k.name.as_str())
                        .zip(versions.iter().copied()),
                    acked_at,
                );
            } else {
                for (i, key) in keys.iter().enumerate() {
                    versions[i] += 1;
                    let version = versions[i];
                    let done = self
                        .until_ok(|| self.node.set(key.namespace, &key.params, &version))
                        .await;
                    if !done {
                        return;
                    }
                    self.history.ack(&key.name, version, self.origin.elapsed());
                }
            }
            self.pause(spec.pace.max(ms(2))).await;
        }
    }
}

/// Re-reads `keys` on `node` until stopped, recording every read.
async fn read_loop(
    node: EdgeCache,
    keys: Vec<(String, CacheKey)>,
    history: History,
    origin: Instant,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(SeqCst) {
        for (name, key) in &keys {
            let started = origin.elapsed();
            let got = node.get_key::<u64>(key).await.unwrap().map(|v| *v);
            history.read(node.node_id(), name, got, started, origin.elapsed());
        }
        // L1 hits never yield: pace the passes so writers and the listener get their turn and
        // the history stays small.
        tokio::time::sleep(ms(2)).await;
    }
}

/// Checks the history, prints the test's one-line figures and asserts freshness and exposure.
fn conclude(
    fault: &str,
    fleet: &Fleet,
    faults: u64,
    (acks, failed): (u64, u64),
    survival: &[(String, u64)],
) -> Report {
    let report = fleet.history.check(BOUND);
    let s = fleet.reader.stats();
    let surviving: Vec<String> = survival
        .iter()
        .map(|(node, n)| format!("{node} {n}/{WARM}"))
        .collect();
    println!(
        "redis_faults {fault}: {} operations ({} reads, {} acks; {failed} failed attempts \
         retried), faults injected {faults}, violations {}, exposed {}, stale {}, worst \
         staleness {:?} (bound {BOUND:?}); warm L1 served after: {}; reader: gaps {}, replayed \
         {}, duplicates {}, log checks {} ({} failed), drops trimmed/new epoch/regressed \
         {}/{}/{}, resyncs {}, deaf {}, disconnects {}, resubscribes {}",
        report.reads + report.acks,
        report.reads,
        acks,
        report.violations.len(),
        report.exposed,
        report.stale,
        report.worst_staleness,
        surviving.join(", "),
        s.gaps_detected,
        s.events_replayed,
        s.duplicates_ignored,
        s.log_checks,
        s.log_check_failures,
        s.drops_trimmed,
        s.drops_new_epoch,
        s.drops_regressed,
        s.resyncs,
        s.deaf_subscriptions,
        fleet.reader.disconnects(),
        fleet.reader.resubscribes(),
    );
    report.assert_fresh();
    assert!(
        report.exposed > 0,
        "no read could have been stale: the test proves nothing\n{report}"
    );
    report
}

/// Asserts that every listed node still serves at least `MIN_SURVIVAL` of its warm L1.
fn assert_survived(survival: &[(String, u64)]) {
    for (node, n) in survival {
        assert!(
            *n as f64 >= MIN_SURVIVAL * WARM as f64,
            "{node} serves only {n} of its {WARM} warm keys from L1 after the fault"
        );
    }
}

/// Asserts no node dropped a namespace or flushed its L1.
fn assert_no_drop(fleet: &Fleet) {
    for node in fleet.nodes() {
        let s = node.stats();
        assert_eq!(
            (
                s.drops_trimmed,
                s.drops_new_epoch,
                s.drops_regressed,
                s.resyncs
            ),
            (0, 0, 0, 0),
            "{} dropped L1 although the log covered the fault: {s:?}",
            node.id()
        );
    }
}

/// Dozens of tasks write thousands of values back to back; in the middle Redis kills every
/// pub/sub connection. Each node resubscribes and replays from the log what was published while
/// it was away, and keeps its L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_pubsub_mid_burst_is_replayed_not_flushed() {
    let fleet = Fleet::start(RedisServer::start()).await;
    let spec = Spec {
        writers: 32,
        keys_per_writer: 2,
        pace: Duration::ZERO,
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(1_500).await;
    let once = fleet.start_once_changes().await;
    let killed: u64 = admin(&fleet.server, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 3, "one subscriber per node");
    for node in fleet.nodes() {
        eventually(&format!("{} resubscribes", node.id()), DEADLINE, || async {
            node.resubscribes() >= 1
        })
        .await;
    }
    workload.progress(1_500).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    conclude("CLIENT KILL TYPE pubsub", &fleet, killed, tally, &survival);
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.assert_once_changed(false).await;
    fleet.shutdown().await;
}

/// The server is killed with SIGKILL and restarted empty on the same port: its logs start a new
/// epoch, so no node can tell what it missed; each must drop its availability L1 (never serve
/// what it held) and then work on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_empty_drops_the_namespace_and_never_serves_stale() {
    let mut fleet = Fleet::start(RedisServer::start()).await;
    let spec = Spec {
        writers: 8,
        keys_per_writer: 2,
        pace: ms(2),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(300).await;
    let once = fleet.start_once_changes().await;
    fleet.server.stop();
    for node in fleet.nodes() {
        eventually(
            &format!("{} sees its subscription lost", node.id()),
            DEADLINE,
            || async { node.disconnects() >= 1 },
        )
        .await;
    }
    tokio::task::block_in_place(|| fleet.server.restart());
    for node in fleet.nodes() {
        eventually(
            &format!("{} drops the namespace whose log restarted", node.id()),
            DEADLINE,
            || async { node.stats().drops_new_epoch >= 1 },
        )
        .await;
    }
    // Writes after the restart reach every node as before.
    workload.progress(300).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(true).await;
    conclude("kill -9 + restart empty", &fleet, 1, tally, &survival);
    for node in fleet.nodes() {
        let s = node.stats();
        assert!(s.drops_new_epoch >= 1, "{s:?}");
        assert_eq!(s.resyncs, 0, "the old flush path is not taken: {s:?}");
        assert_eq!(
            s.drops_regressed, 0,
            "a log read from before the reset is not taken for a regression: {s:?}"
        );
    }
    for (node, n) in &survival {
        // The server lost them too: each must come from the source again.
        assert_eq!(
            *n, 0,
            "{node} kept warm L1 across a log it could not follow"
        );
    }
    fleet.assert_once_changed(true).await;
    fleet.shutdown().await;
}

/// Sends `signal` to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A process stopped with SIGSTOP; continued when dropped, even by a failing test, so the
/// server's own drop can kill it.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// The server freezes (SIGSTOP) for 700 ms during writes: commands time out, subscribers stop
/// answering pings and reconnect, log checks fail. Once it runs again, every node replays what
/// it missed and keeps its L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_sigcont_is_replayed_not_flushed() {
    let fleet = Fleet::start(RedisServer::start()).await;
    let spec = Spec {
        writers: 16,
        keys_per_writer: 2,
        pace: ms(1),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(300).await;
    let once = fleet.start_once_changes().await;
    {
        let _frozen = Frozen::new(fleet.server.pid());
        // The fault's length: long enough for every subscriber's ping to time out.
        tokio::time::sleep(ms(700)).await;
    }
    for node in fleet.nodes() {
        eventually(
            &format!("{} resubscribes after the freeze", node.id()),
            DEADLINE,
            || async { node.resubscribes() >= 1 },
        )
        .await;
    }
    workload.progress(300).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    conclude("SIGSTOP/SIGCONT 700 ms", &fleet, 1, tally, &survival);
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.assert_once_changed(false).await;
    fleet.shutdown().await;
}

/// `CLIENT PAUSE 600 WRITE` (writes, scripts and log checks wait; reads and subscriptions go
/// on), then `CLIENT PAUSE 700 ALL` (subscribers stop answering pings and reconnect). Nothing
/// is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_write_then_all_is_replayed_not_flushed() {
    let fleet = Fleet::start(RedisServer::start()).await;
    let spec = Spec {
        writers: 16,
        keys_per_writer: 2,
        pace: ms(1),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(300).await;
    let once = fleet.start_once_changes().await;
    let _: () = admin(&fleet.server, &["CLIENT", "PAUSE", "600", "WRITE"]).await;
    // At most one change per task was past the pause when it began: any more were made after.
    workload.progress(spec.writers as u64 + 2 + 100).await;
    let _: () = admin(&fleet.server, &["CLIENT", "PAUSE", "700", "ALL"]).await;
    for node in fleet.nodes() {
        eventually(
            &format!("{} resubscribes after the pause", node.id()),
            DEADLINE,
            || async { node.resubscribes() >= 1 },
        )
        .await;
    }
    workload.progress(300).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    conclude("CLIENT PAUSE WRITE + ALL", &fleet, 2, tally, &survival);
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.assert_once_changed(false).await;
    fleet.shutdown().await;
}

/// A bus that publishes on one `RedisBus` and subscribes through another: the reader's
/// subscription goes through a proxy while its route stays the server's. (A node follows its
/// logs only if its L2 and bus share a route, and a route names the address connected to; a
/// bus built directly on the proxy's URL would make the reader an unsequenced node.)
struct ProxiedSubscription {
    direct: RedisBus,
    proxied: RedisBus,
}

#[async_trait::async_trait]
impl EventBus for ProxiedSubscription {
    async fn publish(&self, payload: Vec<u8>) -> cache_core::Result<()> {
        self.direct.publish(payload).await
    }

    async fn subscribe(&self) -> cache_core::Result<Box<dyn Subscription>> {
        self.proxied.subscribe().await
    }

    fn route(&self) -> Option<String> {
        self.direct.route()
    }
}

/// A fleet whose reader subscribes through `proxy` with pings far apart, so a silent link goes
/// unnoticed by the bus; its L2 connects directly.
async fn fleet_behind_proxy(server: RedisServer, proxy: &TcpProxy) -> Fleet {
    let proxied = config(proxy.redis_url()).ping_interval(Duration::from_secs(60));
    let direct = config(server.url());
    Fleet::with_reader(server, direct, |config| async move {
        let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
        let bus: Arc<dyn EventBus> = Arc::new(ProxiedSubscription {
            direct: RedisBus::connect(&config).await.unwrap(),
            proxied: RedisBus::connect(&proxied).await.unwrap(),
        });
        (l2, bus)
    })
    .await
}

/// The reader's subscriber link goes silent (the proxy forwards nothing, the connection stays
/// open, and its pings are too far apart to notice) while writes go on. Pub/sub delivers
/// nothing, so the reader learns every change from its liveness checks and keeps serving L1;
/// after two checks that replayed while the bus delivered nothing it calls the subscription
/// deaf and resubscribes, which the silent proxy does not let through (L1 is bypassed
/// meanwhile). Then the link resumes (a resubscribe and a replay) and is cut (another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_link_is_caught_up_by_the_liveness_check() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let fleet = fleet_behind_proxy(server, &proxy).await;
    let spec = Spec {
        writers: 8,
        keys_per_writer: 2,
        pace: ms(2),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(200).await;
    let once = fleet.start_once_changes().await;

    proxy.stall();
    let deaf = fleet.reader.stats();
    eventually(
        "the deaf reader replays changes from the log and serves L1 meanwhile",
        DEADLINE,
        || async {
            let s = fleet.reader.stats();
            s.events_replayed >= deaf.events_replayed + 20 && s.l1_hits > deaf.l1_hits + 100
        },
    )
    .await;
    eventually(
        "the reader finds its subscription deaf and drops it",
        DEADLINE,
        || async {
            fleet.reader.stats().deaf_subscriptions >= 1 && fleet.reader.disconnects() >= 1
        },
    )
    .await;
    let s = fleet.reader.stats();
    // At most what was already on its way when the stall began reached the listener.
    assert!(s.events_received - deaf.events_received < 50, "{s:?}");
    // Its new subscription cannot get through the silent proxy: still down.
    assert_eq!(fleet.reader.resubscribes(), 0);
    workload.progress(100).await;

    proxy.resume();
    eventually(
        "the reader resubscribes once the link resumes",
        DEADLINE,
        || async { fleet.reader.resubscribes() >= 1 },
    )
    .await;
    // The new subscription went through the proxy, which has therefore accepted it: the cut
    // closes it.
    fleet.reader.in_service().await;
    proxy.cut();
    eventually(
        "the reader resubscribes after the cut",
        DEADLINE,
        || async { fleet.reader.resubscribes() >= 2 },
    )
    .await;
    workload.progress(200).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    conclude("proxy stall + resume + cut", &fleet, 2, tally, &survival);
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.assert_once_changed(false).await;
    fleet.shutdown().await;
    drop(proxy);
}

/// The reader's subscriber falls behind (its link stalls) while large notifications are
/// published fast, against a tiny `client-output-buffer-limit pubsub`: Redis closes the
/// connection. The reader does not know until the link resumes; meanwhile its liveness checks
/// keep it fresh, and afterwards it resubscribes and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_over_its_output_buffer_limit_is_disconnected_and_replays() {
    let server = RedisServer::start();
    let proxy = TcpProxy::for_redis(&server);
    let fleet = fleet_behind_proxy(server, &proxy).await;
    let _: () = admin(
        &fleet.server,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 64kb 32kb 1",
        ],
    )
    .await;
    let spec = Spec {
        writers: 16,
        keys_per_writer: 2,
        pace: ms(1),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    workload.progress(200).await;
    let once = fleet.start_once_changes().await;

    proxy.stall();
    // Large notifications (16 KB of data each) of a namespace nobody reads, from four tasks.
    let blasting = Arc::new(AtomicBool::new(true));
    let blasted = Arc::new(AtomicU64::new(0));
    let detail = "x".repeat(16 << 10);
    let blasters: Vec<JoinHandle<()>> = (0..4)
        .map(|t| {
            let (node, blasting, blasted, detail) = (
                fleet.writer.cache.clone(),
                blasting.clone(),
                blasted.clone(),
                detail.clone(),
            );
            tokio::spawn(async move {
                while blasting.load(SeqCst) {
                    let n = Notification::market_stats_updated(&format!("m-{t}"))
                        .with_data("detail", detail.as_str());
                    if node.notify(n).await.is_ok() {
                        blasted.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    let subscriber = fleet.reader_subscriber;
    eventually(
        "Redis closes the stalled subscriber over its output buffer limit",
        DEADLINE,
        || async { !pubsub_clients(&fleet.server).await.contains(&subscriber) },
    )
    .await;
    blasting.store(false, SeqCst);
    for blaster in blasters {
        blaster.await.unwrap();
    }
    let cut_off = fleet.reader.stats();
    eventually(
        "the cut-off reader keeps up through its liveness checks",
        DEADLINE,
        || async { fleet.reader.stats().events_replayed >= cut_off.events_replayed + 50 },
    )
    .await;
    proxy.resume();
    eventually(
        "the reader learns it was cut off and resubscribes",
        DEADLINE,
        || async { fleet.reader.resubscribes() >= 1 },
    )
    .await;
    workload.progress(200).await;
    fleet.past_the_bound(once).await;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    let others: u64 = [&fleet.writer, &fleet.peer]
        .iter()
        .map(|n| n.disconnects())
        .sum();
    println!(
        "redis_faults output buffer: {} notifications of 16 KB until the reader's subscriber \
         was closed; other subscribers closed too: {others}",
        blasted.load(SeqCst)
    );
    conclude(
        "client-output-buffer-limit pubsub",
        &fleet,
        1 + others,
        tally,
        &survival,
    );
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.assert_once_changed(false).await;
    fleet.shutdown().await;
    drop(proxy);
}

/// The reader's L2: Redis itself, except that a `get` of the key named by [`HeldL2::hold`]
/// keeps Redis's reply in hand until released, as a reply still on the wire would be.
struct HeldL2 {
    inner: RedisL2,
    hold: Mutex<Option<Hold>>,
}

struct Hold {
    key: String,
    in_hand: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

impl HeldL2 {
    /// Holds the reply of the next `get` of `key`: the first receiver fires once the reply is
    /// in hand, and the sender releases it.
    fn hold(&self, key: &CacheKey) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (in_hand, in_hand_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        *lock(&self.hold) = Some(Hold {
            key: key.as_str().to_owned(),
            in_hand,
            release,
        });
        (in_hand_rx, release_tx)
    }
}

#[async_trait::async_trait]
impl L2Store for HeldL2 {
    async fn get(&self, key: &CacheKey) -> cache_core::Result<Option<L2Entry>> {
        let reply = self.inner.get(key).await;
        let held = {
            let mut hold = lock(&self.hold);
            match &*hold {
                Some(h) if h.key == key.as_str() => hold.take(),
                _ => None,
            }
        };
        if let Some(held) = held {
            let _ = held.in_hand.send(());
            let _ = held.release.await;
        }
        reply
    }

    async fn set(&self, write: L2Write) -> cache_core::Result<bool> {
        self.inner.set(write).await
    }

    async fn delete(&self, key: &CacheKey) -> cache_core::Result<bool> {
        self.inner.delete(key).await
    }

    async fn invalidate_namespace(&self, key_namespace: &str) -> cache_core::Result<()> {
        self.inner.invalidate_namespace(key_namespace).await
    }

    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> cache_core::Result<()> {
        self.inner
            .invalidate_namespaces(key_namespaces, announce)
            .await
    }

    async fn delete_and_announce(
        &self,
        key: &CacheKey,
        announce: Vec<u8>,
    ) -> cache_core::Result<bool> {
        self.inner.delete_and_announce(key, announce).await
    }

    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> cache_core::Result<u64> {
        self.inner
            .invalidate_tag_and_announce(key_namespace, tag, announce)
            .await
    }

    fn namespace_invalidated(&self, key_namespace: &str) {
        self.inner.namespace_invalidated(key_namespace);
    }

    fn invalidation_feed(&self, complete: i64, incomplete: i64) {
        self.inner.invalidation_feed(complete, incomplete);
    }

    fn announce_route(&self) -> Option<String> {
        self.inner.announce_route()
    }

    fn sequenced(&self) -> bool {
        self.inner.sequenced()
    }

    async fn read_log(
        &self,
        key_namespace: &str,
        after: u64,
        limit: usize,
    ) -> cache_core::Result<LogRead> {
        self.inner.read_log(key_namespace, after, limit).await
    }

    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> cache_core::Result<u64> {
        self.inner.invalidate_tag(key_namespace, tag).await
    }

    async fn fence(&self, key: &CacheKey) -> cache_core::Result<Fence> {
        self.inner.fence(key).await
    }

    async fn ping(&self) -> cache_core::Result<()> {
        self.inner.ping().await
    }

    async fn get_many(&self, keys: &[CacheKey]) -> cache_core::Result<Vec<Option<L2Entry>>> {
        self.inner.get_many(keys).await
    }

    async fn info(&self) -> cache_core::Result<L2Info> {
        self.inner.info().await
    }
}

/// How a race round fills, and what lands while the fill is in flight.
#[derive(Debug, Clone, Copy)]
struct Race {
    /// A `get_or_load` whose loader waits (else a `get` whose L2 reply is held).
    loader: bool,
    /// The writer invalidates the key (else it writes a newer version).
    invalidate: bool,
    /// The fill is released only once the reader applied the change's event (else at once).
    after_apply: bool,
}

/// An invalidation or a write lands on another node while the reader's fill of the same key is
/// in flight (an L2 reply held on its way, or a loader still running): the filled value is
/// returned to the read that started before the change, and never served after the reader
/// applied the change. Every combination, many rounds, under a background workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_landing_while_a_fill_is_in_flight_is_never_undone() {
    let server = RedisServer::start();
    let direct = config(server.url());
    let held = Arc::new(HeldL2 {
        inner: RedisL2::connect(&direct).await.unwrap(),
        hold: Mutex::new(None),
    });
    let reader_l2 = held.clone();
    let fleet = Fleet::with_reader(server, direct, |config| async move {
        let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
        (reader_l2 as Arc<dyn L2Store>, bus)
    })
    .await;
    let spec = Spec {
        writers: 8,
        keys_per_writer: 2,
        pace: ms(2),
        invalidate_every: 7,
        notify_every: 5,
    };
    fleet.prepare(&spec.hot()).await;
    let workload = Workload::start(&fleet, spec);
    let fenced_before = fleet.reader.stats().fills_fenced;
    let mut rounds = 0_u64;
    let mut loader_rounds = 0_u64;
    for round in 0..48_usize {
        let race = Race {
            loader: round % 2 == 0,
            invalidate: round / 2 % 2 == 0,
            after_apply: round / 4 % 2 == 0,
        };
        race_round(&fleet, &held, round, race).await;
        rounds += 1;
        loader_rounds += u64::from(race.loader);
    }
    let fenced = fleet.reader.stats().fills_fenced - fenced_before;
    let tally = workload.stop().await;
    let survival = fleet.survival(false).await;
    println!(
        "redis_faults fill race: {rounds} rounds, {fenced} fills fenced on the reader (L2 \
         refused every held loader's fill: {loader_rounds})"
    );
    conclude(
        "change during an in-flight fill",
        &fleet,
        rounds,
        tally,
        &survival,
    );
    // A held loader's fill carries a fence taken before the change: L2 refuses it.
    assert!(fenced >= loader_rounds, "{fenced} fills fenced");
    assert_no_drop(&fleet);
    assert_survived(&survival);
    fleet.shutdown().await;
}

async fn race_round(fleet: &Fleet, held: &HeldL2, round: usize, race: Race) {
    let name = format!("race-{round}");
    let params = json!({ "gpu_id": name });
    let key = fleet.reader.cache.key(AVAIL, &params).unwrap();
    let writer_key = fleet.writer.cache.key(AVAIL, &params).unwrap();
    let applied = fleet.reader.watch.applied(&key);
    if !race.loader {
        // Version 1 is in L2, and the reader has applied its event (so that event cannot be
        // what removes the fill).
        fleet
            .writer
            .cache
            .set_key(&writer_key, &1_u64, SetOptions::new())
            .await
            .unwrap();
        fleet.history.ack(&name, 1, fleet.now());
        eventually("the reader applies version 1", DEADLINE, || async {
            fleet.reader.watch.applied(&key) > applied
        })
        .await;
    }
    let applied = fleet.reader.watch.applied(&key);

    // The fill: version 1, from L2 (reply held) or from the source (loader held).
    let (in_hand, release) = if race.loader {
        let (in_hand_tx, in_hand) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let (node, key, history, origin, name) = (
            fleet.reader.cache.clone(),
            key.clone(),
            fleet.history.clone(),
            fleet.origin,
            name.clone(),
        );
        let fill = tokio::spawn(async move {
            let started = origin.elapsed();
            let got = node
                .get_or_load_key(&key, SetOptions::new(), || async move {
                    let _ = in_hand_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::convert::Infallible>(1_u64)
                })
                .await
                .unwrap();
            history.read("reader", &name, Some(*got), started, origin.elapsed());
            *got
        });
        (in_hand, (release, fill))
    } else {
        let (in_hand, release) = held.hold(&key);
        let (node, key, history, origin, name) = (
            fleet.reader.cache.clone(),
            key.clone(),
            fleet.history.clone(),
            fleet.origin,
            name.clone(),
        );
        let fill = tokio::spawn(async move {
            let started = origin.elapsed();
            let got = node.get_key::<u64>(&key).await.unwrap().map(|v| *v);
            history.read("reader", &name, got, started, origin.elapsed());
            got.expect("version 1 is in L2")
        });
        (in_hand, (release, fill))
    };
    let (release, fill) = release;
    tokio::time::timeout(DEADLINE, in_hand)
        .await
        .expect("the fill starts")
        .unwrap();

    // Another node changes the key while the fill is in flight.
    if race.invalidate {
        fleet
            .writer
            .cache
            .invalidate_key(&writer_key)
            .await
            .unwrap();
    } else {
        fleet
            .writer
            .cache
            .set_key(&writer_key, &2_u64, SetOptions::new())
            .await
            .unwrap();
    }
    fleet.history.ack(&name, 2, fleet.now());
    let applied_change = || async { fleet.reader.watch.applied(&key) > applied };
    if race.after_apply {
        eventually("the reader applies the change", DEADLINE, applied_change).await;
    }
    let _ = release.send(());
    let filled = tokio::time::timeout(DEADLINE, fill)
        .await
        .expect("the fill ends")
        .unwrap();
    assert_eq!(
        filled, 1,
        "{race:?}: the read that started first gets version 1"
    );
    eventually("the reader applies the change", DEADLINE, applied_change).await;

    // From now on the reader must never serve version 1.
    for _ in 0..3 {
        let started = fleet.now();
        let got = fleet
            .reader
            .cache
            .get_key::<u64>(&key)
            .await
            .unwrap()
            .map(|v| *v);
        fleet
            .history
            .read("reader", &name, got, started, fleet.now());
        let expected = if race.invalidate { None } else { Some(2) };
        assert_eq!(
            got, expected,
            "{race:?}: round {round} served what the fill brought after the change was applied"
        );
    }
}

/// How many times longer each workload phase runs: `EDGE_CACHE_FAULT_SCALE` (at least 1; 1, the
/// short versions, by default). `cargo xtask chaos --faults SCALE` sets it.
fn scale() -> u64 {
    std::env::var("EDGE_CACHE_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}
