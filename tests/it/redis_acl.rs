//! Tenant isolation on one real redis-server: each tenant's nodes hold their own key prefix and
//! channel, an ACL user per tenant (the line docs/security.md gives) lets a node do everything
//! it does inside them and nothing outside (`NOPERM`), and two tenants' caches never meet.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{ErrorKind, EventBus, L2Store};
use cache_edge::{EdgeCache, Notification};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};

const DEADLINE: Duration = Duration::from_secs(10);

/// The ACL line of docs/security.md for tenant `name`.
fn acl_setuser(name: &str) -> Vec<String> {
    format!(
        "ACL SETUSER {name} on >pw-{name} resetkeys ~{name}:* resetchannels &{name}:events \
         -@all +@read +@write +@scripting +@pubsub +@connection +ping +info +time -@dangerous"
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn tenant(server: &RedisServer, name: &str) -> RedisConfig {
    let url = server
        .url()
        .replacen("redis://", &format!("redis://{name}:pw-{name}@"), 1);
    RedisConfig::new(url)
        .key_prefix(format!("{name}:"))
        .channel(format!("{name}:events"))
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

async fn noperm(conn: &mut redis::aio::MultiplexedConnection, cmd: &mut redis::Cmd) -> bool {
    match cmd.query_async::<redis::Value>(conn).await {
        Err(e) => {
            // redis-rs spells Redis's NOPERM as `NoPerm`.
            let text = e.to_string();
            text.contains("NOPERM") || text.contains("NoPerm")
        }
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_works_inside_its_prefix_and_gets_noperm_outside() {
    let server = RedisServer::start();
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    for name in ["tenant-a", "tenant-b"] {
        let words = acl_setuser(name);
        let mut cmd = redis::cmd(&words[0]);
        for word in &words[1..] {
            cmd.arg(word);
        }
        let () = cmd.query_async(&mut admin).await.unwrap();
    }
    let (a_config, b_config) = (tenant(&server, "tenant-a"), tenant(&server, "tenant-b"));
    let (a1, a2) = (node(&a_config, "a1").await, node(&a_config, "a2").await);
    let b1 = node(&b_config, "b1").await;
    let g = json!({"gpu_id": "g-1"});

    // Everything a node does works inside its tenant: writes, reads, events, the log.
    let a2_events = a2.stats().events_applied;
    a1.set("gpu_availability", &g, &"a-free".to_owned())
        .await
        .unwrap();
    // The write's announcement reaches a2 before a2's applied events are counted below.
    eventually("a2 applies a1's write", DEADLINE, || async {
        a2.stats().events_applied > a2_events
    })
    .await;
    b1.set("gpu_availability", &g, &"b-free".to_owned())
        .await
        .unwrap();
    assert_eq!(
        *a2.get::<String, _>("gpu_availability", &g)
            .await
            .unwrap()
            .unwrap(),
        "a-free",
        "the same parameters, another tenant's value: never seen"
    );
    let applied = a2.stats().events_applied;
    a1.notify(Notification::booking_created("bk-1", "g-1"))
        .await
        .unwrap();
    eventually("a2 applies a1's booking", DEADLINE, || async {
        a2.stats().events_applied > applied
    })
    .await;
    assert_eq!(
        a2.get::<String, _>("gpu_availability", &g).await.unwrap(),
        None
    );
    assert_eq!(
        *b1.get::<String, _>("gpu_availability", &g)
            .await
            .unwrap()
            .unwrap(),
        "b-free",
        "tenant a's booking does not reach tenant b"
    );
    for node in [&a1, &a2, &b1] {
        let s = node.stats();
        assert_eq!(
            (s.l2_errors, s.log_check_failures),
            (0, 0),
            "{}",
            node.node_id()
        );
    }

    // Outside its prefix and channel, tenant a's user is refused.
    let client = redis::Client::open(server.url().replacen(
        "redis://",
        "redis://tenant-a:pw-tenant-a@",
        1,
    ))
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    assert!(noperm(&mut conn, redis::cmd("GET").arg("tenant-b:{gpu_avail}:g")).await);
    assert!(noperm(&mut conn, redis::cmd("INCR").arg("tenant-b:{gpu_avail}:g")).await);
    assert!(noperm(&mut conn, redis::cmd("GET").arg("ec:{gpu_avail}:g")).await);
    assert!(
        noperm(
            &mut conn,
            redis::cmd("PUBLISH").arg("tenant-b:events").arg("{}")
        )
        .await
    );
    assert!(noperm(&mut conn, &mut redis::cmd("FLUSHALL")).await);
    assert!(noperm(&mut conn, redis::cmd("KEYS").arg("*")).await);
    // Inside, the same commands pass.
    assert!(!noperm(&mut conn, redis::cmd("GET").arg("tenant-a:{gpu_avail}:g")).await);

    // A node of tenant a pointed at another prefix fails with a clear L2 error.
    let strayed = RedisL2::connect(&a_config.clone().key_prefix("tenant-b:"))
        .await
        .unwrap();
    let key = cache_core::CacheKey::derive("gpu_avail", &g).unwrap();
    let err = strayed.get(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::L2);
    assert!(err.to_string().contains("NoPerm"), "{err}");
    // And no password appears in it.
    assert!(!err.to_string().contains("pw-tenant-a"), "{err}");

    for node in [a1, a2, b1] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_prefix_with_a_brace_is_refused() {
    for prefix in ["a{b}:", "x}", "{"] {
        let config = RedisConfig::new("redis://127.0.0.1:1/").key_prefix(prefix);
        let Err(err) = RedisL2::connect(&config).await else {
            panic!("{prefix}: a prefix with a brace was accepted");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{prefix}: {err}");
    }
}
