//! One contract suite for every L2 store, run against the in-process store and against a real
//! redis-server.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheKey, L2Store, L2Write, Lease};
use cache_memory::{MemoryL2, SystemClock};
use cache_redis::{RedisConfig, RedisL2};
use test_support::{eventually, RedisServer};

const TTL: Duration = Duration::from_secs(60);

fn key(ns: &str, id: u32) -> CacheKey {
    CacheKey::derive(ns, &serde_json::json!({ "id": id })).unwrap()
}

fn write(k: &CacheKey, bytes: &[u8]) -> L2Write {
    L2Write::new(k.clone(), bytes.to_vec(), TTL)
}

async fn bytes(l2: &dyn L2Store, k: &CacheKey) -> Option<Vec<u8>> {
    l2.get(k).await.unwrap().map(|e| e.bytes)
}

/// The contract of `cache_core::L2Store`, for any implementation.
pub(crate) async fn contract(l2: Arc<dyn L2Store>) {
    let l2 = &*l2;
    l2.ping().await.unwrap();
    let (a, b, other) = (key("avail", 1), key("avail", 2), key("pricing", 1));

    // Round trip with tags and the remaining lifetime.
    assert!(bytes(l2, &a).await.is_none());
    assert!(l2
        .set(write(&a, b"one").tags(vec!["gpu:1".into(), "p".into()]))
        .await
        .unwrap());
    let entry = l2.get(&a).await.unwrap().unwrap();
    assert_eq!(entry.bytes, b"one");
    assert_eq!(entry.tags, ["gpu:1", "p"]);
    assert!(
        entry.ttl_remaining <= TTL && entry.ttl_remaining > TTL - Duration::from_secs(5),
        "{:?}",
        entry.ttl_remaining
    );

    // Batched reads keep the order and report misses.
    l2.set(write(&other, b"price")).await.unwrap();
    let many = l2
        .get_many(&[a.clone(), b.clone(), other.clone()])
        .await
        .unwrap();
    let many: Vec<_> = many.into_iter().map(|e| e.map(|e| e.bytes)).collect();
    assert_eq!(many, [Some(b"one".to_vec()), None, Some(b"price".to_vec())]);

    // Delete.
    l2.set(write(&b, b"two")).await.unwrap();
    assert!(l2.delete(&b).await.unwrap());
    assert!(!l2.delete(&b).await.unwrap());
    assert!(bytes(l2, &b).await.is_none());

    // Namespace invalidation hides every entry of the namespace, only of that namespace, and
    // later writes are visible again.
    l2.invalidate_namespace("avail").await.unwrap();
    assert!(bytes(l2, &a).await.is_none());
    assert_eq!(bytes(l2, &other).await.as_deref(), Some(&b"price"[..]));
    l2.set(write(&a, b"after")).await.unwrap();
    assert_eq!(bytes(l2, &a).await.as_deref(), Some(&b"after"[..]));

    // Tag invalidation removes exactly the tagged entries and counts them.
    for id in 10..15 {
        l2.set(write(&key("avail", id), b"t").tags(vec!["gpu:9".into()]))
            .await
            .unwrap();
    }
    assert_eq!(l2.invalidate_tag("avail", "gpu:9").await.unwrap(), 5);
    assert_eq!(l2.invalidate_tag("avail", "gpu:9").await.unwrap(), 0);
    assert!(bytes(l2, &key("avail", 10)).await.is_none());
    assert_eq!(bytes(l2, &a).await.as_deref(), Some(&b"after"[..]));

    // Fences: a fill lands on a fresh fence, and is refused after each kind of change.
    let c = key("avail", 3);
    let fence = l2.fence(&c).await.unwrap();
    assert!(l2.set(write(&c, b"fill").fence(Some(fence))).await.unwrap());
    let fence = l2.fence(&c).await.unwrap();
    assert!(
        !l2.set(write(&c, b"second fill").fence(Some(fence)))
            .await
            .unwrap(),
        "a fill never replaces a live entry"
    );
    assert_eq!(bytes(l2, &c).await.as_deref(), Some(&b"fill"[..]));
    // A refresh replaces the live entry it read, on a current fence; not one written since.
    let version = l2.get(&c).await.unwrap().unwrap().version;
    assert!(version.is_some(), "entries carry a version");
    assert!(l2
        .set(
            write(&c, b"refreshed")
                .fence(Some(l2.fence(&c).await.unwrap()))
                .replacing(version)
        )
        .await
        .unwrap());
    assert_eq!(bytes(l2, &c).await.as_deref(), Some(&b"refreshed"[..]));
    let version = l2.get(&c).await.unwrap().unwrap().version;
    let fence = l2.fence(&c).await.unwrap();
    // A millisecond apart, so even a store that versions entries by their expiry tells them
    // apart.
    tokio::time::sleep(Duration::from_millis(2)).await;
    l2.set(write(&c, b"written")).await.unwrap();
    assert!(
        !l2.set(
            write(&c, b"late refresh")
                .fence(Some(fence))
                .replacing(version)
        )
        .await
        .unwrap(),
        "a refresh replaced an entry written after it read its own"
    );
    assert_eq!(bytes(l2, &c).await.as_deref(), Some(&b"written"[..]));
    type Change =
        for<'a> fn(&'a dyn L2Store, &'a CacheKey) -> futures_util::future::BoxFuture<'a, ()>;
    let changes: [(&str, Change); 3] = [
        ("delete", |l2, k| {
            Box::pin(async move { l2.delete(k).await.map(drop).unwrap() })
        }),
        ("namespace invalidation", |l2, _| {
            Box::pin(async move { l2.invalidate_namespace("avail").await.unwrap() })
        }),
        ("tag invalidation", |l2, _| {
            Box::pin(async move { l2.invalidate_tag("avail", "any").await.map(drop).unwrap() })
        }),
    ];
    for (what, change) in changes {
        l2.delete(&c).await.unwrap();
        let fence = l2.fence(&c).await.unwrap();
        change(l2, &c).await;
        assert!(
            !l2.set(write(&c, b"stale").fence(Some(fence)))
                .await
                .unwrap(),
            "fence survived a {what}"
        );
        assert!(
            bytes(l2, &c).await.is_none(),
            "a refused fill wrote after a {what}"
        );
    }
    // Fills of different keys do not fence each other out.
    let (d, e) = (key("avail", 4), key("avail", 5));
    let (fd, fe) = (l2.fence(&d).await.unwrap(), l2.fence(&e).await.unwrap());
    assert!(l2.set(write(&d, b"d").fence(Some(fd))).await.unwrap());
    assert!(l2.set(write(&e, b"e").fence(Some(fe))).await.unwrap());

    // Many keys of one namespace in one step; keys of two namespaces are refused.
    let many: Vec<CacheKey> = (20..26).map(|id| key("avail", id)).collect();
    for k in &many[..4] {
        l2.set(write(k, b"m")).await.unwrap();
    }
    assert_eq!(l2.delete_many(&many, None).await.unwrap(), 4);
    for k in &many {
        assert!(bytes(l2, k).await.is_none());
    }
    let mixed = [key("avail", 30), key("pricing", 30)];
    assert!(l2.delete_many(&mixed, None).await.is_err());

    leases(l2).await;

    // Expiry.
    let short = key("avail", 6);
    l2.set(L2Write::new(
        short.clone(),
        b"brief".to_vec(),
        Duration::from_millis(30),
    ))
    .await
    .unwrap();
    eventually(
        "the 30 ms entry expires",
        Duration::from_secs(5),
        || async { l2.get(&short).await.unwrap().is_none() },
    )
    .await;
}

/// Fill leases: one holder at a time, a waiter woken by the release (even one that landed
/// before its wait began), only the holder's token releases, and an abandoned lease ends by
/// itself.
async fn leases(l2: &dyn L2Store) {
    let k = key("avail", 7);
    let hold = Duration::from_secs(5);
    assert_eq!(l2.lease(&k, "a", hold).await.unwrap(), Lease::Acquired);
    let Lease::Held(wait) = l2.lease(&k, "b", hold).await.unwrap() else {
        panic!("a second caller must find the lease held");
    };
    assert!(
        wait.remaining <= hold && wait.remaining > hold - Duration::from_secs(1),
        "{:?}",
        wait.remaining
    );
    // Another key's lease is its own.
    assert_eq!(
        l2.lease(&key("avail", 8), "b", hold).await.unwrap(),
        Lease::Acquired
    );
    let started = std::time::Instant::now();
    let (woken, ()) = tokio::join!(l2.wait_lease(&k, &wait), async {
        // A release by another token does nothing; the holder's ends the wait.
        l2.release_lease(&k, "b").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        l2.release_lease(&k, "a").await.unwrap();
    });
    assert!(woken.unwrap(), "the release ends the wait");
    assert!(
        started.elapsed() < hold,
        "woken by the release, not the end of the lease"
    );
    assert!(
        l2.wait_lease(&k, &wait).await.unwrap(),
        "a wait that starts after the release ends at once"
    );
    assert_eq!(l2.lease(&k, "b", hold).await.unwrap(), Lease::Acquired);
    l2.release_lease(&k, "b").await.unwrap();

    // Abandoned: the wait runs out with the lease, after which the key can be taken again.
    let short = Duration::from_millis(200);
    assert_eq!(l2.lease(&k, "dead", short).await.unwrap(), Lease::Acquired);
    let Lease::Held(wait) = l2.lease(&k, "c", short).await.unwrap() else {
        panic!("held");
    };
    assert!(
        !l2.wait_lease(&k, &wait).await.unwrap(),
        "nobody released it"
    );
    assert_eq!(l2.lease(&k, "c", short).await.unwrap(), Lease::Acquired);
    l2.release_lease(&k, "c").await.unwrap();
}

#[tokio::test]
async fn the_in_process_l2_meets_the_contract() {
    contract(Arc::new(MemoryL2::new(16 << 20, Arc::new(SystemClock)))).await;
}

#[tokio::test]
async fn the_redis_l2_meets_the_contract() {
    let server = RedisServer::start();
    let l2 = RedisL2::connect(&RedisConfig::new(server.url()))
        .await
        .unwrap();
    contract(Arc::new(l2)).await;
}

#[tokio::test]
async fn redis_rejects_oversized_values_before_sending_and_keeps_prefixes_apart() {
    let server = RedisServer::start();
    let small = RedisL2::connect(&RedisConfig::new(server.url()).max_value_bytes(16))
        .await
        .unwrap();
    let k = key("avail", 1);
    let err = small.set(write(&k, &[b'x'; 17])).await.unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::ValueTooLarge);
    assert!(small.get(&k).await.unwrap().is_none());

    let other_fleet = RedisL2::connect(&RedisConfig::new(server.url()).key_prefix("other:"))
        .await
        .unwrap();
    small.set(write(&k, b"mine")).await.unwrap();
    assert!(
        other_fleet.get(&k).await.unwrap().is_none(),
        "another prefix is another keyspace"
    );
    let info = small.info().await.unwrap();
    assert!(info.used_memory_bytes.unwrap() > 0);
    assert!(info.connected_clients.unwrap() >= 2);
    assert_eq!(
        info.evicts_keys,
        Some(false),
        "no maxmemory: nothing is evicted"
    );
}

/// A Redis that may evict keys when full is reported: eviction of a generation counter or a tag
/// set would make invalidations miss entries. Only a `maxmemory` with `noeviction` is safe.
#[tokio::test]
async fn redis_reports_whether_it_may_evict_keys() {
    let server =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let l2 = RedisL2::connect(&RedisConfig::new(server.url()))
        .await
        .unwrap();
    assert_eq!(l2.info().await.unwrap().evicts_keys, Some(true));
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (policy, evicts) in [("volatile-lru", true), ("noeviction", false)] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            l2.info().await.unwrap().evicts_keys,
            Some(evicts),
            "{policy}"
        );
    }
}

#[tokio::test]
async fn redis_connects_with_a_password_and_an_acl_user_and_says_why_when_it_cannot() {
    let server = RedisServer::start_with_args(&[
        "--requirepass",
        "s3cret",
        "--user",
        "edge",
        "on",
        ">edgepw",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    for url in [
        format!("redis://:s3cret@127.0.0.1:{port}/0"),
        format!("redis://edge:edgepw@127.0.0.1:{port}/1"),
    ] {
        let l2 = RedisL2::connect(&RedisConfig::new(&url)).await.unwrap();
        l2.ping().await.unwrap();
        l2.set(write(&key("avail", 1), b"v")).await.unwrap();
    }
    let err = RedisL2::connect(&RedisConfig::new(format!(
        "redis://edge:wrong@127.0.0.1:{port}/0"
    )))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::L2);
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked: {err}"
    );
    for url in [
        format!("redis://127.0.0.1:{port}/0"),
        format!("redis://edge:wrong@127.0.0.1:{port}/0"),
    ] {
        let err = RedisL2::connect(&RedisConfig::new(&url)).await.unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
        let err = cache_redis::RedisBus::connect(&RedisConfig::new(&url))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), cache_core::ErrorKind::Bus);
    }
    let err = RedisL2::connect(&RedisConfig::new(format!("redis://127.0.0.1:{port}/0")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NOAUTH"),
        "a missing password is named at connect: {err}"
    );
    let err = RedisL2::connect(&RedisConfig::new("redis://127.0.0.1:1/0"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cache_core::ErrorKind::L2);
}
