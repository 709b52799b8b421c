//! EdgeCache nodes on a real redis-server: the fleet behaviour over Redis, and a Redis restart
//! in the middle of a run.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{EventBus, L2Store};
use cache_edge::{EdgeCache, HealthStatus, Notification, SetOptions};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};

const DEADLINE: Duration = Duration::from_secs(10);

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::new(server.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .response_timeout(Duration::from_millis(300))
        .ping_interval(Duration::from_millis(200))
}

async fn node(config: &RedisConfig, id: &str) -> EdgeCache {
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(config).await.unwrap());
    EdgeCache::builder()
        .node_id(id)
        .l2(l2)
        .bus(bus)
        .build()
        .await
        .unwrap()
}

async fn applied(node: &EdgeCache, n: u64) {
    eventually(
        &format!("{} applies {n} events", node.node_id()),
        DEADLINE,
        || async { node.stats().events_applied >= n },
    )
    .await;
}

/// Waits until `node` has taken `n` events off its bus, its own included.
async fn received(node: &EdgeCache, n: u64) {
    eventually(
        &format!("{} receives {n} events", node.node_id()),
        DEADLINE,
        || async { node.stats().events_received >= n },
    )
    .await;
}

async fn avail(node: &EdgeCache, gpu: &str) -> Option<String> {
    node.get::<String, _>("gpu_availability", &json!({"gpu_id": gpu}))
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_over_redis_clears_every_node_and_writes_touch_only_their_key() {
    let server = RedisServer::start();
    let config = config(&server);
    let (a, b, c) = (
        node(&config, "a").await,
        node(&config, "b").await,
        node(&config, "c").await,
    );
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-1"}),
        &"free".to_string(),
    )
    .await
    .unwrap();
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-2"}),
        &"free".to_string(),
    )
    .await
    .unwrap();
    a.set(
        "provider_status",
        &json!({"provider": "p"}),
        &"online".to_string(),
    )
    .await
    .unwrap();
    for n in [&b, &c] {
        applied(n, 3).await;
        assert_eq!(avail(n, "g-1").await.as_deref(), Some("free"));
        assert_eq!(avail(n, "g-2").await.as_deref(), Some("free"));
    }
    // A write on A replaces one key on B and C and nothing else.
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-1"}),
        &"booked".to_string(),
    )
    .await
    .unwrap();
    for n in [&b, &c] {
        applied(n, 4).await;
        assert_eq!(avail(n, "g-1").await.as_deref(), Some("booked"));
        let l1_before = n.stats().l1_hits;
        assert_eq!(avail(n, "g-2").await.as_deref(), Some("free"));
        assert_eq!(
            n.stats().l1_hits,
            l1_before + 1,
            "g-2 stayed in {}'s L1",
            n.node_id()
        );
    }

    a.notify(Notification::booking_created("bk-1", "g-2"))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        if n.node_id() != "a" {
            applied(n, 5).await;
        }
        assert_eq!(avail(n, "g-1").await, None);
        assert_eq!(avail(n, "g-2").await, None);
        assert!(n
            .get::<String, _>("provider_status", &json!({"provider": "p"}))
            .await
            .unwrap()
            .is_some());
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_survive_a_redis_restart_and_never_serve_what_was_invalidated_meanwhile() {
    let mut server = RedisServer::start();
    let config = config(&server);
    let a = node(&config, "a").await;
    let b = node(&config, "b").await;
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-1"}),
        &"free".to_string(),
    )
    .await
    .unwrap();
    applied(&b, 1).await;
    assert_eq!(avail(&b, "g-1").await.as_deref(), Some("free"));
    assert_eq!(avail(&b, "g-1").await.as_deref(), Some("free"));
    assert!(b.stats().l1_hits >= 1, "B serves g-1 from L1");

    server.stop();
    for n in [&a, &b] {
        // Degraded as soon as L2 stops answering; the bus's loss may be noticed a moment later.
        eventually("the node reports its bus lost", DEADLINE, || async {
            let health = n.health().await;
            health.status == HealthStatus::Degraded && !health.bus_connected
        })
        .await;
    }
    // Reads keep working (as misses) while Redis is away; once the node knows it may miss
    // invalidations, nothing comes from L1.
    assert_eq!(avail(&b, "g-1").await, None);

    server.restart();
    // A comes back and books g-1 right away; B may or may not be resubscribed yet.
    eventually("A can notify again", DEADLINE, || async {
        a.notify(Notification::booking_created("bk-1", "g-1"))
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        avail(&b, "g-1").await,
        None,
        "B never serves the value cached before the restart"
    );
    for n in [&a, &b] {
        eventually("the node is healthy again", DEADLINE, || async {
            n.health().await.status == HealthStatus::Healthy
        })
        .await;
    }
    // The restarted Redis started its event logs again: B cannot replay what it missed from
    // them, so it dropped its availability L1 (and only then used it again).
    assert!(
        b.stats().drops_new_epoch >= 1,
        "B dropped its L1 when the log began a new epoch: {:?}",
        b.stats()
    );
    // The fleet works as before the restart. (The write's own announcement is waited for: if
    // it were still on its way, the wait for the notification below could be met by it.)
    let before_write = b.stats().events_applied;
    a.set(
        "gpu_availability",
        &json!({"gpu_id": "g-1"}),
        &"booked".to_string(),
    )
    .await
    .unwrap();
    applied(&b, before_write + 1).await;
    assert_eq!(avail(&b, "g-1").await.as_deref(), Some("booked"));
    let before = b.stats().events_applied;
    a.notify(Notification::gpu_availability_changed("g-1", "free"))
        .await
        .unwrap();
    applied(&b, before + 1).await;
    assert_eq!(avail(&b, "g-1").await, None);
    a.shutdown().await;
    b.shutdown().await;
}

/// One section of `INFO`, on a connection of its own.
async fn info(server: &RedisServer, section: &str) -> String {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// How many times `INFO commandstats` text says Redis ran `command`.
fn calls_in(commandstats: &str, command: &str) -> u64 {
    commandstats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// How many times Redis ran `command`, from `INFO commandstats`.
async fn calls(server: &RedisServer, command: &str) -> u64 {
    calls_in(&info(server, "commandstats").await, command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_reads_writes_and_notifications_take_one_command_each() {
    let server = RedisServer::start();
    let config = config(&server);
    let a = node(&config, "a").await;
    let params: Vec<_> = (0..50)
        .map(|i| json!({"gpu_id": format!("g-{i}")}))
        .collect();
    for p in &params[..40] {
        a.set("provider_status", p, &"online".to_string())
            .await
            .unwrap();
    }
    // The first read learns the namespace's generation (script); later ones read it along with
    // the entries in a single MGET, no script.
    a.get::<String, _>("provider_status", &params[49])
        .await
        .unwrap();
    let (scripts, mgets) = (
        calls(&server, "evalsha").await,
        calls(&server, "mget").await,
    );
    let got = a
        .get_many::<String, _>("provider_status", &params)
        .await
        .unwrap();
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 40);
    assert_eq!(
        calls(&server, "mget").await - mgets,
        1,
        "50 keys, one command"
    );
    assert_eq!(calls(&server, "evalsha").await - scripts, 0);

    // L2 and the bus share a route (same server, same channel): the three generation bumps
    // and the event are one script call; warm the script up first.
    a.notify(Notification::booking_created("warm-up", "g-0"))
        .await
        .unwrap();
    let (scripts, incrs, publishes) = (
        calls(&server, "evalsha").await,
        calls(&server, "incr").await,
        calls(&server, "publish").await,
    );
    a.notify(Notification::booking_created("bk", "g-1"))
        .await
        .unwrap();
    assert_eq!(
        calls(&server, "evalsha").await - scripts,
        1,
        "one round trip"
    );
    assert_eq!(calls(&server, "incr").await - incrs, 3, "three namespaces");
    assert_eq!(
        calls(&server, "publish").await - publishes,
        1,
        "and the event"
    );

    // A write and its announcement are one round trip too: the first after the notification
    // (which made the node forget the namespace's generation) is a script, which tells the
    // node the generation; the next is a smaller script that writes and publishes only if that
    // generation is still current.
    let key = a
        .key("gpu_availability", &json!({"gpu_id": "g-9"}))
        .unwrap();
    let (scripts, sets, publishes) = (
        calls(&server, "evalsha").await,
        calls(&server, "set").await,
        calls(&server, "publish").await,
    );
    a.set_key(&key, &"free".to_string(), SetOptions::new())
        .await
        .unwrap();
    assert_eq!(calls(&server, "evalsha").await - scripts, 1);
    assert_eq!(calls(&server, "set").await - sets, 1, "the script's SET");
    assert_eq!(calls(&server, "publish").await - publishes, 1);
    let (scripts, sets, publishes) = (
        calls(&server, "evalsha").await,
        calls(&server, "set").await,
        calls(&server, "publish").await,
    );
    a.set_key(&key, &"booked".to_string(), SetOptions::new())
        .await
        .unwrap();
    assert_eq!(
        calls(&server, "evalsha").await - scripts,
        1,
        "set if current"
    );
    assert_eq!(calls(&server, "set").await - sets, 1, "its SET");
    assert_eq!(calls(&server, "publish").await - publishes, 1);
    let b = node(&config, "b").await;
    assert_eq!(
        b.get_key::<String>(&key)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("booked"),
        "another node reads the write"
    );
    b.shutdown().await;
    assert_eq!(
        a.stats().events_published,
        44,
        "40 + 2 writes and 2 notifications, each announced once"
    );

    // Deleting a key and invalidating a resource too: one script that also publishes (each
    // script is warmed up first, since its first use loads it).
    let tagged = a
        .key("gpu_availability", &json!({"gpu_id": "g-10"}))
        .unwrap();
    a.set_key(
        &tagged,
        &"free".to_string(),
        SetOptions::new().tag("gpu:g-10"),
    )
    .await
    .unwrap();
    a.invalidate_key(&key).await.unwrap();
    a.invalidate_resource("gpu_availability", "gpu:warm-up")
        .await
        .unwrap();
    for (what, call) in [("invalidate_key", 0), ("invalidate_resource", 1)] {
        let (scripts, publishes) = (
            calls(&server, "evalsha").await,
            calls(&server, "publish").await,
        );
        if call == 0 {
            a.invalidate_key(&key).await.unwrap();
        } else {
            a.invalidate_resource("gpu_availability", "gpu:g-10")
                .await
                .unwrap();
        }
        assert_eq!(
            calls(&server, "evalsha").await - scripts,
            1,
            "{what}: one round trip"
        );
        assert_eq!(
            calls(&server, "publish").await - publishes,
            1,
            "{what}: with its event"
        );
    }
    assert!(a.get_key::<String>(&tagged).await.unwrap().is_none());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_over_redis_reads_l2_once_and_loads_once() {
    let server = RedisServer::start();
    let a = node(&config(&server), "a").await;
    // Learn the namespace's generation first, so the stampede's one read is a plain MGET.
    a.get::<String, _>("gpu_pricing", &json!({"gpu_type": "warm-up"}))
        .await
        .unwrap();
    let loads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (reads, scripts) = (
        calls(&server, "mget").await,
        calls(&server, "evalsha").await,
    );
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let mut callers = Vec::new();
    for _ in 0..1000 {
        let (a, loads, mut open) = (a.clone(), loads.clone(), open_rx.clone());
        callers.push(tokio::spawn(async move {
            let p = json!({"gpu_type": "H100"});
            a.get_or_load("gpu_pricing", &p, SetOptions::new(), || async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.wait_for(|o| *o).await.map_err(|e| e.to_string())?;
                Ok::<_, String>("2.50".to_string())
            })
            .await
        }));
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    open_tx.send(true).unwrap();
    for caller in callers {
        assert_eq!(*caller.await.unwrap().unwrap(), "2.50");
    }
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The flight's read of L2, its fence read and its fill, whatever the 1,000 callers: no
    // per-caller Redis traffic (reads are MGETs, or the read script until the node has learned
    // the namespace's generation; the fill is a script, whose first use here costs a refused
    // EVALSHA and a retry).
    let commands = calls(&server, "mget").await - reads + calls(&server, "evalsha").await - scripts;
    assert!(commands <= 4, "{commands} Redis commands for 1,000 callers");
    a.shutdown().await;
}

/// `keyspace_hits` from `INFO stats`: how many key lookups found their key.
async fn keyspace_hits(server: &RedisServer) -> u64 {
    info(server, "stats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("keyspace_hits:")?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generation_is_trusted_only_when_invalidations_reach_the_node() {
    let server = RedisServer::start();
    let config = config(&server);
    // On Redis pub/sub, invalidations reach the node: a read looks up the entry alone.
    let trusting = node(&config, "trusting").await;
    // The same L2 with an in-process bus: invalidations from other processes would not reach
    // this node, so every read also checks the generation.
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
    let checking = EdgeCache::builder()
        .node_id("checking")
        .l2(l2)
        .bus(Arc::new(cache_memory::MemoryBus::new()) as Arc<dyn EventBus>)
        .build()
        .await
        .unwrap();
    let p = json!({"provider": "p-1"});
    trusting
        .set("provider_status", &p, &"online".to_string())
        .await
        .unwrap();
    trusting
        .notify(Notification::provider_status_changed("p-0", "offline"))
        .await
        .unwrap();
    trusting
        .set("provider_status", &p, &"online".to_string())
        .await
        .unwrap();
    for (node, lookups) in [(&trusting, 1), (&checking, 2)] {
        // The first read learns the generation (and may race the subscription's start).
        eventually("the generation is learned", DEADLINE, || async {
            node.get::<String, _>("provider_status", &p).await.unwrap();
            let before = keyspace_hits(&server).await;
            node.get::<String, _>("provider_status", &p).await.unwrap();
            keyspace_hits(&server).await - before == lookups
        })
        .await;
    }
    // A namespace invalidation makes the trusting node forget the generation it knew.
    checking.shutdown().await;
    trusting
        .notify(Notification::provider_status_changed("p-1", "offline"))
        .await
        .unwrap();
    assert_eq!(
        trusting
            .get::<String, _>("provider_status", &p)
            .await
            .unwrap(),
        None
    );
    trusting.shutdown().await;
}

/// A write that races an invalidation of its namespace: the writer still knows the old
/// generation (the invalidation's event has not reached it), so its plain SET lands under the
/// dead generation. The set-if-current script finds the generation moved, so it writes and
/// announces nothing; the invalidation came first, so the write must land after it: the
/// generation is forgotten and the write made again under the current generation, where
/// readers see it. It is announced once, after its value landed.
#[tokio::test]
async fn a_write_racing_a_namespace_invalidation_lands_after_it() {
    use cache_core::{CacheKey, L2Write};
    let server = RedisServer::start();
    let config = config(&server);
    let writer = RedisL2::connect(&config).await.unwrap();
    let other = RedisL2::connect(&config).await.unwrap();
    // The writer hears every invalidation (so it trusts the generation it remembers)...
    writer.invalidation_feed(1, 0);
    let key = CacheKey::derive("gpu_avail", &json!({"gpu_id": "g-1"})).unwrap();
    // Every write is announced, as a node's are when its bus shares L2's route.
    let write = |value: &str| {
        L2Write::new(key.clone(), value.as_bytes().to_vec(), DEADLINE)
            .announce(format!("{{\"wrote\":\"{value}\"}}").into_bytes())
    };
    // ...and learns it from its first write (a script).
    assert!(writer.set(write("old")).await.unwrap());
    // Another node invalidates the namespace, then writes the key under the new generation; the
    // invalidation's event is still on its way to the writer.
    other.invalidate_namespace("gpu_avail").await.unwrap();
    assert!(other
        .set(write("older than the racing write"))
        .await
        .unwrap());
    let before = commands(&server).await;
    assert!(
        writer.set(write("racing")).await.unwrap(),
        "the write lands"
    );
    assert_eq!(
        commands(&server).await.since(&before),
        Commands {
            set: 1,
            evalsha: 2,
            del: 0,
            publish: 1
        },
        "the set-if-current script under the generation the writer remembered (which finds the \
         generation moved and writes nothing), then the write again by the SET script under the \
         current generation (its SET and PUBLISH counted): one write, one announcement"
    );
    assert_eq!(
        other.get(&key).await.unwrap().map(|e| e.bytes),
        Some(b"racing".to_vec()),
        "the later write is served, not the one it raced"
    );
    // The script told the writer the current generation: its next write is plain again.
    let before = commands(&server).await;
    assert!(writer.set(write("after")).await.unwrap());
    assert_eq!(
        commands(&server).await.since(&before),
        Commands {
            set: 1,
            evalsha: 1,
            del: 0,
            publish: 1
        },
        "the set-if-current script, writing and publishing"
    );
    assert_eq!(
        other.get(&key).await.unwrap().map(|e| e.bytes),
        Some(b"after".to_vec())
    );
}

/// A Redis that has lost its scripts (restarted, or `SCRIPT FLUSH`) answers the set-if-current
/// script with `NOSCRIPT`: the write loads it and goes through, announced.
#[tokio::test]
async fn a_plain_write_reloads_its_script_when_redis_lost_it() {
    use cache_core::{CacheKey, L2Write};
    let server = RedisServer::start();
    let config = config(&server);
    let writer = RedisL2::connect(&config).await.unwrap();
    writer.invalidation_feed(1, 0);
    let key = CacheKey::derive("gpu_avail", &json!({"gpu_id": "g-1"})).unwrap();
    let write = |value: &str| {
        L2Write::new(key.clone(), value.as_bytes().to_vec(), DEADLINE)
            .announce(format!("{{\"wrote\":\"{value}\"}}").into_bytes())
    };
    assert!(writer.set(write("first")).await.unwrap());
    assert!(
        writer.set(write("second")).await.unwrap(),
        "plain, script loaded"
    );
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    let before = commands(&server).await;
    assert!(writer.set(write("third")).await.unwrap());
    let done = commands(&server).await.since(&before);
    assert_eq!(
        (done.evalsha, done.set, done.publish),
        (2, 1, 1),
        "the script sent again once loaded (NOSCRIPT ran nothing): written once, announced once"
    );
    assert_eq!(
        writer.get(&key).await.unwrap().map(|e| e.bytes),
        Some(b"third".to_vec())
    );
}

/// Calls of the commands a write makes, from `INFO commandstats`.
#[derive(Debug, PartialEq, Eq)]
struct Commands {
    set: u64,
    evalsha: u64,
    del: u64,
    publish: u64,
}

impl Commands {
    fn since(&self, before: &Commands) -> Commands {
        Commands {
            set: self.set - before.set,
            evalsha: self.evalsha - before.evalsha,
            del: self.del - before.del,
            publish: self.publish - before.publish,
        }
    }
}

async fn commands(server: &RedisServer) -> Commands {
    let stats = info(server, "commandstats").await;
    Commands {
        set: calls_in(&stats, "set"),
        evalsha: calls_in(&stats, "evalsha"),
        del: calls_in(&stats, "del"),
        publish: calls_in(&stats, "publish"),
    }
}

/// A Redis that restarts empty starts every generation again from 0. A node that has not yet
/// noticed (its bus has not reported the loss) still trusts the generation it remembers; a
/// plain write under it must not linger there, or the namespace's generation would one day
/// climb back to it and serve a value written before all those invalidations. The write is
/// made again under the generation Redis has now.
#[tokio::test]
async fn a_write_into_a_restarted_redis_never_resurfaces_under_a_later_generation() {
    let done = write_across_a_restart(false).await;
    assert_eq!(
        (done.set, done.del, done.publish),
        (2, 1, 0),
        "the plain SET under generation 3, deleted; then the SET script's own SET under 0"
    );
}

/// The same with an announced write: the set-if-current script finds generation 0, not the 3
/// the writer remembers, and writes and announces nothing; the SET script then writes under 0
/// and announces once.
#[tokio::test]
async fn an_announced_write_into_a_restarted_redis_is_made_and_announced_once() {
    let done = write_across_a_restart(true).await;
    assert_eq!(
        (done.set, done.del, done.publish),
        (1, 0, 1),
        "nothing written under generation 3; one write and one announcement under 0"
    );
}

/// A writer trusting generation 3 writes before and after Redis restarts empty; returns the
/// commands the write after the restart made (its `EVALSHA` calls include those the restarted
/// Redis refused with `NOSCRIPT`).
async fn write_across_a_restart(announce: bool) -> Commands {
    use cache_core::{CacheKey, L2Write};
    let mut server = RedisServer::start();
    let config = config(&server);
    let writer = RedisL2::connect(&config).await.unwrap();
    writer.invalidation_feed(1, 0);
    let key = CacheKey::derive("gpu_avail", &json!({"gpu_id": "g-1"})).unwrap();
    let write = |value: &str| {
        let write = L2Write::new(key.clone(), value.as_bytes().to_vec(), DEADLINE);
        if announce {
            write.announce(format!("{{\"wrote\":\"{value}\"}}").into_bytes())
        } else {
            write
        }
    };
    // The writer learns generation 3.
    for _ in 0..3 {
        writer.invalidate_namespace("gpu_avail").await.unwrap();
    }
    assert!(writer.set(write("before the restart")).await.unwrap());
    assert_eq!(writer.generation("gpu_avail").await.unwrap(), 3);

    server.restart();
    let other = RedisL2::connect(&config).await.unwrap();
    // The writer's connection comes back on its own.
    eventually("the writer reconnects", DEADLINE, || async {
        writer.ping().await.is_ok()
    })
    .await;
    let before = commands(&server).await;
    assert!(writer.set(write("after the restart")).await.unwrap());
    let after_restart = commands(&server).await.since(&before);
    assert_eq!(
        other.get(&key).await.unwrap().map(|e| e.bytes),
        Some(b"after the restart".to_vec()),
        "written again under the generation Redis has now"
    );
    // Three invalidations bring the generation back to 3: nothing was left there.
    for _ in 0..3 {
        other.invalidate_namespace("gpu_avail").await.unwrap();
    }
    assert_eq!(other.generation("gpu_avail").await.unwrap(), 3);
    assert_eq!(other.get(&key).await.unwrap(), None);
    after_restart
}

/// A bus whose subscription hands on nothing while the gate is closed: its node falls behind
/// the fleet. Publishing and the route are the inner bus's, so the node still announces through
/// L2 and trusts the generations it learns.
struct HeldBus {
    inner: Arc<dyn EventBus>,
    open: tokio::sync::watch::Receiver<bool>,
}

/// The subscription of a [`HeldBus`]. An item taken while held waits in `pending`, so dropping
/// `next` loses nothing.
struct HeldSubscription {
    inner: Box<dyn cache_core::Subscription>,
    open: tokio::sync::watch::Receiver<bool>,
    pending: Option<cache_core::BusItem>,
}

#[async_trait::async_trait]
impl EventBus for HeldBus {
    async fn publish(&self, payload: Vec<u8>) -> cache_core::Result<()> {
        self.inner.publish(payload).await
    }

    async fn subscribe(&self) -> cache_core::Result<Box<dyn cache_core::Subscription>> {
        Ok(Box::new(HeldSubscription {
            inner: self.inner.subscribe().await?,
            open: self.open.clone(),
            pending: None,
        }))
    }

    fn route(&self) -> Option<String> {
        self.inner.route()
    }
}

#[async_trait::async_trait]
impl cache_core::Subscription for HeldSubscription {
    async fn next(&mut self) -> Option<cache_core::BusItem> {
        if self.pending.is_none() {
            self.pending = Some(self.inner.next().await?);
        }
        // A dropped sender opens the gate for good.
        let _ = self.open.wait_for(|open| *open).await;
        self.pending.take()
    }

    /// The inner subscription's: while the gate is closed, messages wait there (all but the
    /// one taken into `pending`).
    fn queue_gauge(&self) -> Option<cache_core::QueueGauge> {
        self.inner.queue_gauge()
    }
}

/// Found by the demo's freshness audit once it wrote through `set_key`. The writer still trusts
/// the namespace's old generation when another node invalidates it and fills the key from its
/// source ("old", the value of that time). The source changes and the writer writes "new" under
/// the dead generation. That write must not be dropped (it came
/// after the invalidation and the fill): every node serves "new" once it has applied the
/// write's announcements, the writer too once it catches up with the invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_node_behind_an_invalidation_is_not_lost() {
    let server = RedisServer::start();
    let config = config(&server);
    let (gate, open) = tokio::sync::watch::channel(true);
    let writer = {
        let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
        let bus: Arc<dyn EventBus> = Arc::new(HeldBus {
            inner: Arc::new(RedisBus::connect(&config).await.unwrap()),
            open,
        });
        EdgeCache::builder()
            .node_id("writer")
            .l2(l2)
            .bus(bus)
            .build()
            .await
            .unwrap()
    };
    let reader = node(&config, "reader").await;
    let params = json!({"gpu_id": "g-1"});
    let key = writer.key("gpu_availability", &params).unwrap();
    // The writer learns generation 0 from its first write (a script), and hears its own
    // announcement: its subscription is up, so it trusts the generation from now on.
    writer
        .set_key(&key, &"first".to_owned(), SetOptions::new())
        .await
        .unwrap();
    received(&writer, 1).await;
    applied(&reader, 1).await;

    // The writer falls behind: the reader's invalidation does not reach it yet.
    gate.send_replace(false);
    reader
        .notify(Notification::gpu_availability_changed("g-1", "booked"))
        .await
        .unwrap();
    applied(&reader, 2).await;
    // A read after the invalidation fills L2 with the source's value of that time.
    let loaded: Arc<String> = reader
        .get_or_load("gpu_availability", &params, SetOptions::new(), || async {
            Ok::<_, std::convert::Infallible>("old".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*loaded, "old");

    // The source changes again, and the writer writes the new value: the set-if-current script
    // under the dead generation finds it moved (nothing written or announced), then the write
    // again under the current one, announced.
    writer
        .set_key(&key, &"new".to_owned(), SetOptions::new())
        .await
        .unwrap();
    applied(&reader, 3).await;
    let on_reader = avail(&reader, "g-1").await;

    // The writer catches up with the invalidation, which drops its own copy of "new", and with
    // its own announcement.
    gate.send_replace(true);
    received(&writer, 3).await;
    assert_eq!(
        writer.stats().events_applied,
        1,
        "the reader's invalidation"
    );
    let on_writer = avail(&writer, "g-1").await;
    writer.shutdown().await;
    reader.shutdown().await;
    assert_eq!(
        (on_reader.as_deref(), on_writer.as_deref()),
        (Some("new"), Some("new")),
        "both nodes applied everything since set_key of \"new\" returned Ok"
    );
}

/// A node whose L2 is on one redis-server and whose bus is on another follows the logs all the
/// same: L2 logs each change without publishing it (no PUBLISH ever runs on L2's server) and
/// the node publishes the message as logged. A write whose publication fails (the bus's server
/// is down) is acknowledged as made and logged with `ErrorKind::Bus`, kept pending, and
/// published once the bus is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_bus_is_on_another_server_follow_the_log_and_retry_failed_publications() {
    let l2_server = RedisServer::start();
    let mut bus_server = RedisServer::start();
    let split_node = |id: &'static str| {
        let (l2_config, bus_config) = (config(&l2_server), config(&bus_server));
        async move {
            let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&l2_config).await.unwrap());
            let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&bus_config).await.unwrap());
            assert_ne!(l2.announce_route(), bus.route());
            EdgeCache::builder()
                .node_id(id)
                .l2(l2)
                .bus(bus)
                .staleness_bound(Duration::from_millis(1_500))
                .liveness_interval(Duration::from_millis(100))
                .build()
                .await
                .unwrap()
        }
    };
    let writer = split_node("writer").await;
    let reader = split_node("reader").await;
    let gpu = json!({"gpu_id": "g-1"});
    writer
        .set("gpu_availability", &gpu, &"v1".to_owned())
        .await
        .unwrap();
    assert_eq!(avail(&reader, "g-1").await.as_deref(), Some("v1"));
    writer
        .set("gpu_availability", &gpu, &"v2".to_owned())
        .await
        .unwrap();
    eventually("the reader hears the write", DEADLINE, || async {
        avail(&reader, "g-1").await.as_deref() == Some("v2")
    })
    .await;
    // The value can come from L2 before the event arrives: wait for the position itself.
    eventually(
        "the reader follows the log past both writes",
        DEADLINE,
        || async {
            reader.stats().namespaces[0]
                .log_applied
                .is_some_and(|(_, seq)| seq >= 2)
        },
    )
    .await;

    bus_server.stop();
    let err = writer
        .set("gpu_availability", &gpu, &"v3".to_owned())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::Bus, "{err}");
    assert!(err.to_string().contains("pending"), "{err}");
    assert_eq!(writer.stats().pending_publications, 1);
    // Within the bound: L2 has it, and the reader's L1 is bypassed once it notices its bus is
    // gone, or told by the log.
    eventually("the reader reads the write", DEADLINE, || async {
        avail(&reader, "g-1").await.as_deref() == Some("v3")
    })
    .await;

    bus_server.restart();
    eventually("the pending publication goes out", DEADLINE, || async {
        writer.stats().pending_publications == 0
    })
    .await;
    assert!(writer.stats().publish_retries >= 1);
    eventually("the reader is back on its L1", DEADLINE, || async {
        reader.health().await.bus_connected
            && reader.stats().namespaces[0].l1_in_use
            && avail(&reader, "g-1").await.as_deref() == Some("v3")
    })
    .await;
    assert_eq!(
        calls(&l2_server, "publish").await,
        0,
        "L2 published nothing"
    );
    writer.shutdown().await;
    reader.shutdown().await;
}

/// The L2 circuit breaker against a real redis-server stopped and restarted: once L2 has
/// failed a few times in a row, reads stop waiting on it; once Redis is back, a probe closes
/// the breaker and reads and writes go to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_while_redis_is_down_and_closes_when_it_is_back() {
    let mut server = RedisServer::start();
    let config = config(&server);
    let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
    let a = EdgeCache::builder()
        .node_id("a")
        .l2(l2)
        .bus(bus)
        .l2_breaker(3, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let p = json!({"provider": "p-1"});
    let status = || async {
        a.get::<String, _>("provider_status", &p)
            .await
            .unwrap()
            .map(|v| (*v).clone())
    };
    a.set("provider_status", &p, &"online".to_owned())
        .await
        .unwrap();
    assert_eq!(status().await.as_deref(), Some("online"));

    server.stop();
    eventually("the breaker opens", DEADLINE, || async {
        let _ = status().await;
        a.health().await.l2_breaker_open
    })
    .await;
    let opened = a.stats();
    for _ in 0..20 {
        assert_eq!(status().await, None);
    }
    let s = a.stats();
    assert!(
        s.l2_skipped >= opened.l2_skipped + 15,
        "reads skip L2 while it is open: {s:?}"
    );
    assert!(
        s.l2_errors <= opened.l2_errors + 5,
        "at most a probe or two reached L2 meanwhile: {s:?}"
    );

    server.restart();
    // Redis came back empty: the first write that gets through closes the breaker.
    eventually("a write gets through again", DEADLINE, || async {
        a.set("provider_status", &p, &"back".to_owned())
            .await
            .is_ok()
    })
    .await;
    assert!(!a.health().await.l2_breaker_open);
    assert_eq!(status().await.as_deref(), Some("back"));
    assert!(a.stats().l2_breaker_opened >= 1);
    a.shutdown().await;
}

/// `invalidate_keys` over Redis: sixteen keys leave in one announcement (one script: the
/// deletes, the log entry and the publish), and every node drops exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_keys_are_invalidated_fleet_wide_in_one_announcement() {
    let server = RedisServer::start();
    let config = config(&server);
    let (a, b) = (node(&config, "a").await, node(&config, "b").await);
    let ids: Vec<String> = (0..20).map(|i| format!("g-{i}")).collect();
    for id in &ids {
        a.set(
            "gpu_availability",
            &json!({ "gpu_id": id }),
            &"free".to_owned(),
        )
        .await
        .unwrap();
    }
    // b reads each until it is an L1 hit (an event still on its way may drop a copy).
    for id in &ids {
        eventually("b holds the entry in L1", DEADLINE, || async {
            let before = b.stats().l1_hits;
            avail(&b, id).await.is_some() && b.stats().l1_hits > before
        })
        .await;
    }
    let keys: Vec<_> = ids[..16]
        .iter()
        .map(|id| a.key("gpu_availability", &json!({ "gpu_id": id })).unwrap())
        .collect();
    let (published, heard) = (a.stats().events_published, b.stats().events_applied);
    a.invalidate_keys(&keys).await.unwrap();
    assert_eq!(
        a.stats().events_published - published,
        1,
        "one announcement"
    );
    applied(&b, heard + 1).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(avail(&b, id).await.is_some(), i >= 16, "b {id}");
        assert_eq!(avail(&a, id).await.is_some(), i >= 16, "a {id}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
