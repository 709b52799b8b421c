//! The fleet-wide fill lease on the in-process L2: a herd across nodes costs one load; a
//! holder that dies frees the key when its lease runs out; a waiter never takes a value that
//! raced a write. On tokio's paused clock: loaders and leases take virtual time.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_core::{NamespaceConfig, Namespaces, Routing};
use cache_edge::{EdgeCache, SetOptions};
use serde_json::json;
use tokio::sync::Notify;

use crate::support::{eventually, Fleet};

const HOLD: Duration = Duration::from_secs(2);

async fn node(fleet: &Fleet, id: &str) -> EdgeCache {
    let mut namespaces = Namespaces::empty();
    namespaces
        .add(
            NamespaceConfig::new("offers", "offers", Duration::from_secs(60))
                .critical(true)
                .event_driven(true)
                .fill_lease(HOLD),
        )
        .unwrap();
    fleet
        .builder(id)
        .namespaces(namespaces)
        .routing(Routing::empty())
        .build()
        .await
        .unwrap()
}

async fn fleet_of(fleet: &Fleet, n: usize) -> Vec<EdgeCache> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(node(fleet, &format!("n{i}")).await);
    }
    nodes
}

#[tokio::test(start_paused = true)]
async fn a_herd_across_five_nodes_costs_one_load() {
    let fleet = Fleet::new();
    let nodes = fleet_of(&fleet, 5).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let p = json!({"id": 1});
    let mut reads = Vec::new();
    for node in &nodes {
        for _ in 0..200 {
            let (node, calls, p) = (node.clone(), Arc::clone(&calls), p.clone());
            reads.push(tokio::spawn(async move {
                node.get_or_load("offers", &p, SetOptions::new(), || async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>("loaded".to_owned())
                })
                .await
            }));
        }
    }
    for read in reads {
        assert_eq!(*read.await.unwrap().unwrap(), "loaded");
    }
    assert_eq!(calls.load(SeqCst), 1, "one load for the whole fleet");
    let sum = |f: fn(&cache_edge::Stats) -> u64| nodes.iter().map(|n| f(&n.stats())).sum::<u64>();
    assert_eq!(sum(|s| s.leases_taken), 1);
    assert_eq!(sum(|s| s.lease_waits), 4, "one wait per other node");
    assert_eq!(sum(|s| s.lease_fills), 4, "each took the holder's fill");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_dies_frees_the_key_when_its_lease_runs_out() {
    let fleet = Fleet::new();
    let nodes = fleet_of(&fleet, 2).await;
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let p = json!({"id": 2});
    let holder = {
        let (a, p) = (a.clone(), p.clone());
        tokio::spawn(async move {
            a.get_or_load("offers", &p, SetOptions::new(), || async {
                std::future::pending::<Result<String, std::io::Error>>().await
            })
            .await
        })
    };
    eventually("a takes the lease", || a.stats().leases_taken == 1).await;
    // Killed mid-load: the lease is never released.
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());

    let started = tokio::time::Instant::now();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let value = b
        .get_or_load("offers", &p, SetOptions::new(), || async move {
            counted.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>("b loaded".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*value, "b loaded");
    let waited = started.elapsed();
    assert!(
        waited <= HOLD && waited > HOLD - Duration::from_millis(100),
        "b waited out the dead holder's lease, and no longer: {waited:?}"
    );
    let s = b.stats();
    assert_eq!(
        (calls.load(SeqCst), s.lease_waits, s.leases_taken),
        (1, 1, 1)
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_takes_a_load_that_raced_a_write() {
    let fleet = Fleet::new();
    let nodes = fleet_of(&fleet, 3).await;
    let (a, b, c) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    let p = json!({"id": 3});
    let gate = Arc::new(Notify::new());
    let holder = {
        let (a, p, gate) = (a.clone(), p.clone(), Arc::clone(&gate));
        tokio::spawn(async move {
            a.get_or_load("offers", &p, SetOptions::new(), || async move {
                gate.notified().await;
                Ok::<_, std::io::Error>("old".to_owned())
            })
            .await
        })
    };
    eventually("a takes the lease", || a.stats().leases_taken == 1).await;
    let waiter = {
        let (b, p) = (b.clone(), p.clone());
        tokio::spawn(async move {
            b.get_or_load("offers", &p, SetOptions::new(), || async {
                Ok::<_, std::io::Error>("b loaded".to_owned())
            })
            .await
        })
    };
    eventually("b waits on the lease", || b.stats().lease_waits == 1).await;
    // While a loads, c books: its write lands in L2, and a's load is now older than it.
    c.set("offers", &p, &"new".to_owned()).await.unwrap();
    gate.notify_one();
    assert_eq!(
        *holder.await.unwrap().unwrap(),
        "old",
        "a's caller overlapped the write"
    );
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(
        *got, "new",
        "b reads what L2 holds after the release: the write"
    );
    assert_eq!(a.stats().fills_fenced, 1, "a's stale fill was refused");
    for node in [&a, &b, &c] {
        assert_eq!(
            node.get::<String, _>("offers", &p)
                .await
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("new")
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
