//! edge-cache's node: [`EdgeCache`], a two-tier cache (in-process L1, shared L2) that every edge
//! node of the marketplace holds, kept fresh fleet-wide by invalidation events.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cache_core::Result<()> {
//! use std::sync::Arc;
//! use cache_edge::{EdgeCache, Notification, SetOptions};
//! use cache_memory::{MemoryBus, MemoryL2, SystemClock};
//! use serde_json::json;
//!
//! // Two nodes sharing one L2 and one bus (in-process here; Redis in production).
//! let bus = Arc::new(MemoryBus::new());
//! let l2 = Arc::new(MemoryL2::new(64 << 20, Arc::new(SystemClock)));
//! let a = EdgeCache::builder().l2(l2.clone()).bus(bus.clone()).build().await?;
//! let b = EdgeCache::builder().l2(l2).bus(bus).build().await?;
//!
//! let params = json!({"gpu_id": "g-42"});
//! let loaded = b
//!     .get_or_load("gpu_availability", &params, SetOptions::new(), || async {
//!         Ok::<_, std::io::Error>("available".to_string())
//!     })
//!     .await?;
//! assert_eq!(*loaded, "available");
//!
//! // A booking on node A: A's and B's copies are dropped.
//! a.notify(Notification::booking_created("b-1", "g-42")).await?;
//! # for _ in 0..1000 { if b.stats().events_applied > 0 { break } tokio::task::yield_now().await; }
//! assert!(b.get::<String, _>("gpu_availability", &params).await?.is_none());
//! # a.shutdown().await; b.shutdown().await;
//! # Ok(()) }
//! ```

mod builder;
mod cache;
mod listener;
pub mod metrics;
mod notify;
mod observer;
mod options;
mod stats;

pub use builder::{
    EdgeCacheBuilder, DEFAULT_BACKFILL_TTL_CAP, DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_OPEN_FOR,
    DEFAULT_LIVENESS_INTERVAL, DEFAULT_MAX_PENDING_PUBLICATIONS, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_STALENESS_BOUND,
};
pub use cache::{EdgeCache, TypedNamespace};
pub use notify::Notification;
pub use observer::{NoopObserver, Observer};
pub use options::SetOptions;
pub use stats::{
    Health, HealthStatus, LagHistogram, NamespaceStats, Stats, LAG_BUCKETS, LATENCY_BUCKETS,
};

pub use cache_core::{self as core, CacheKey, Error, ErrorKind, Result};

/// The README's example, compiled and run as a doctest so it cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
