//! `tracing` spans on a node's operations (its own test binary: it installs the process's log
//! subscriber): each read past L1, load, write, invalidation and notification closes one
//! `edge_cache` span carrying the operation, the namespace, the tier that answered and the
//! outcome; an L1 hit records none.

use std::io::Write;
use std::sync::{Arc, Mutex};

use cache_core::{EventBus, L2Store};
use cache_edge::{EdgeCache, Notification, SetOptions};
use cache_memory::{MemoryBus, MemoryL2, SystemClock};
use serde_json::json;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The span closes captured so far (and forgets them).
    fn closes(&self) -> Vec<String> {
        let text = String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap();
        text.lines()
            .filter(|line| line.contains("edge_cache{") && line.contains("close"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_closes_one_span_with_its_tier_and_outcome() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let l2 = Arc::new(MemoryL2::new(64 << 20, Arc::new(SystemClock)));
    let node = EdgeCache::builder()
        .node_id("traced")
        .l2(l2 as Arc<dyn L2Store>)
        .bus(Arc::new(MemoryBus::new()) as Arc<dyn EventBus>)
        .build()
        .await
        .unwrap();
    let p = json!({"gpu_id": "g-1"});
    captured.closes();

    let expect = |what: &str, fields: &[&str]| {
        let closes = captured.closes();
        assert_eq!(closes.len(), 1, "{what}: {closes:#?}");
        for field in fields {
            assert!(
                closes[0].contains(field),
                "{what}: {field} not in {}",
                closes[0]
            );
        }
    };

    assert!(node
        .get::<String, _>("gpu_availability", &p)
        .await
        .unwrap()
        .is_none());
    expect(
        "a miss",
        &[
            r#"op="get""#,
            r#"namespace="gpu_avail""#,
            r#"tier="miss""#,
            r#"outcome="ok""#,
        ],
    );
    node.set("gpu_availability", &p, &"free".to_owned())
        .await
        .unwrap();
    expect("a write", &[r#"op="set""#, r#"outcome="ok""#]);
    node.get::<String, _>("gpu_availability", &p).await.unwrap();
    assert!(captured.closes().is_empty(), "an L1 hit records no span");
    let q = json!({"gpu_id": "g-2"});
    node.get_or_load("gpu_availability", &q, SetOptions::new(), || async {
        Ok::<_, std::io::Error>("loaded".to_owned())
    })
    .await
    .unwrap();
    expect(
        "a load",
        &[
            r#"op="get_or_load""#,
            r#"namespace="gpu_availability""#,
            r#"tier="loaded""#,
        ],
    );
    let failed = node
        .get_or_load(
            "gpu_availability",
            &json!({"gpu_id": "g-3"}),
            SetOptions::new(),
            || async { Err::<String, _>(std::io::Error::other("origin down")) },
        )
        .await;
    assert!(failed.is_err());
    expect("a failed load", &[r#"op="get_or_load""#, "outcome=Loader"]);
    node.invalidate_namespace("gpu_availability", "test")
        .await
        .unwrap();
    expect(
        "an invalidation",
        &[r#"op="invalidate_namespace""#, r#"outcome="ok""#],
    );
    node.notify(Notification::booking_created("b-1", "g-1"))
        .await
        .unwrap();
    expect(
        "a notification",
        &[r#"op="notify""#, r#"namespace="booking_created""#],
    );
    node.shutdown().await;
}
