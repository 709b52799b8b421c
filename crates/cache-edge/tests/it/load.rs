//! `get_or_load`: single flight, errors, TTL, and fenced fills.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_core::ErrorKind;
use cache_edge::{Notification, SetOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::support::{within, Fleet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    gpu_type: String,
    cents: u64,
}

#[derive(Serialize)]
struct PriceQuery<'a> {
    gpu_type: &'a str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_call_the_loader_once() {
    let fleet = Fleet::new();
    let node = fleet.node("a").await;
    let calls = Arc::new(AtomicU64::new(0));
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (node, calls, mut open) = (node.clone(), calls.clone(), open_rx.clone());
        tasks.push(tokio::spawn(async move {
            node.get_or_load(
                "gpu_pricing",
                &PriceQuery { gpu_type: "H100" },
                SetOptions::new(),
                || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Hold the load open until every caller has had the chance to join it.
                    open.wait_for(|o| *o).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(Price {
                        gpu_type: "H100".into(),
                        cents: 250,
                    })
                },
            )
            .await
        }));
    }
    // Let every task reach the flight, then open it.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    open_tx.send(true).unwrap();
    for t in tasks {
        assert_eq!(within(t).await.unwrap().unwrap().cents, 250);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(node.stats().loads, 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    let fleet = Fleet::new();
    let node = fleet.node("a").await;
    let calls = Arc::new(AtomicU64::new(0));
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let q = PriceQuery { gpu_type: "L40S" };
    let leader = {
        let calls = calls.clone();
        node.get_or_load("gpu_pricing", &q, SetOptions::new(), move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = release_rx.await;
            Err::<Price, _>(std::io::Error::other("pricing service down"))
        })
    };
    let follower = node.get_or_load("gpu_pricing", &q, SetOptions::new(), || async {
        panic!("the follower must wait for the leader's load, not run its own");
        #[allow(unreachable_code)]
        Ok::<Price, std::io::Error>(Price {
            gpu_type: String::new(),
            cents: 0,
        })
    });
    let release = async {
        tokio::task::yield_now().await;
        release_tx.send(()).unwrap();
    };
    let (a, b, ()) = within(async { tokio::join!(leader, follower, release) }).await;
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(err.kind(), ErrorKind::Loader);
        assert!(err.to_string().contains("pricing service down"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Not cached: the next call loads again.
    let ok = node
        .get_or_load("gpu_pricing", &q, SetOptions::new(), || async {
            Ok::<_, std::io::Error>(Price {
                gpu_type: "L40S".into(),
                cents: 90,
            })
        })
        .await
        .unwrap();
    assert_eq!(ok.cents, 90);
    assert_eq!(node.stats().load_errors, 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_load_that_raced_an_invalidation_is_returned_but_not_cached() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let b = fleet.node("b").await;
    let q = PriceQuery { gpu_type: "A100" };
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let load = a.get_or_load("gpu_pricing", &q, SetOptions::new(), || async {
        started_tx.send(()).unwrap();
        finish_rx.await.unwrap();
        Ok::<_, std::io::Error>(Price {
            gpu_type: "A100".into(),
            cents: 100,
        }) // read before the change
    });
    let change = async {
        started_rx.await.unwrap();
        // The price changes while A's loader is running; B announces it.
        b.notify(Notification::pricing_updated("A100", 1.2))
            .await
            .unwrap();
        crate::support::applied(&a, 1).await;
        finish_tx.send(()).unwrap();
    };
    let (loaded, ()) = within(async { tokio::join!(load, change) }).await;
    assert_eq!(
        loaded.unwrap().cents,
        100,
        "the caller still gets what it loaded"
    );
    assert_eq!(a.stats().fills_fenced, 1);
    assert!(
        a.get::<Price, _>("gpu_pricing", &q)
            .await
            .unwrap()
            .is_none(),
        "the stale load was not cached in L1"
    );
    assert!(
        b.get::<Price, _>("gpu_pricing", &q)
            .await
            .unwrap()
            .is_none(),
        "nor in L2"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn loads_use_the_per_call_ttl_and_then_hit() {
    let fleet = Fleet::new();
    let node = fleet.node("a").await;
    let q = PriceQuery {
        gpu_type: "RTX4090",
    };
    let opts = SetOptions::new().ttl(Duration::from_secs(5));
    let load = |cents| {
        let opts = opts.clone();
        let node = node.clone();
        async move {
            node.get_or_load(
                "gpu_pricing",
                &PriceQuery {
                    gpu_type: "RTX4090",
                },
                opts,
                move || async move {
                    Ok::<_, std::io::Error>(Price {
                        gpu_type: "RTX4090".into(),
                        cents,
                    })
                },
            )
            .await
            .unwrap()
            .cents
        }
    };
    assert_eq!(load(1).await, 1);
    assert_eq!(load(2).await, 1, "cached");
    fleet.clock.advance(Duration::from_secs(6));
    assert_eq!(
        load(3).await,
        3,
        "expired after the 5 s per-call TTL (namespace TTL is 60 s)"
    );
    assert_eq!(node.stats().loads, 2);
    let _ = q;
    let err = node
        .get_or_load(
            "gpu_pricing",
            &PriceQuery { gpu_type: "x" },
            SetOptions::new().ttl(Duration::ZERO),
            || async {
                Ok::<_, std::io::Error>(Price {
                    gpu_type: "x".into(),
                    cents: 0,
                })
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTtl);
    node.shutdown().await;
}

#[tokio::test]
async fn a_caller_arriving_after_an_invalidation_does_not_join_the_older_load() {
    let fleet = Fleet::new();
    let a = fleet.node("a").await;
    let q = PriceQuery { gpu_type: "H200" };
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let price = |cents| Price {
        gpu_type: "H200".into(),
        cents,
    };
    let old_load = a.get_or_load("gpu_pricing", &q, SetOptions::new(), || async {
        started_tx.send(()).unwrap();
        finish_rx.await.unwrap();
        Ok::<_, std::io::Error>(price(100))
    });
    let late_caller = async {
        started_rx.await.unwrap();
        a.notify(Notification::pricing_updated("H200", 1.5))
            .await
            .unwrap();
        // Starts after the node applied the change: it must load anew, not wait for 100.
        let fresh = a
            .get_or_load("gpu_pricing", &q, SetOptions::new(), || async {
                Ok::<_, std::io::Error>(price(150))
            })
            .await;
        finish_tx.send(()).unwrap();
        fresh
    };
    let (old, fresh) = within(async { tokio::join!(old_load, late_caller) }).await;
    assert_eq!(old.unwrap().cents, 100);
    assert_eq!(fresh.unwrap().cents, 150);
    assert_eq!(a.stats().loads, 2);
    assert_eq!(
        a.get::<Price, _>("gpu_pricing", &q)
            .await
            .unwrap()
            .unwrap()
            .cents,
        150,
        "the fresh load is cached"
    );
    a.shutdown().await;
}
