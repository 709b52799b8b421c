//! In-process implementations of edge-cache's traits: the L1 store every node uses, an embedded
//! L2 store and event bus for single-process deployments and tests, and clocks.
//!
//! - [`MemoryL1`] / [`MemoryL1Factory`]: the concurrent, byte-bounded L1 store of a namespace.
//! - [`MemoryL2`]: a byte-bounded L2 with TTLs, O(1) namespace invalidation, tag invalidation
//!   and fences; [`MemoryL2::global`] is the process-wide default. Built with
//!   [`MemoryL2::announce_on`] a bus, it publishes announced changes itself and sequences them
//!   in per-namespace event logs, as the Redis store does, so embedded nodes and simulations
//!   see the same sequenced events; [`MemoryL2::restart_empty`] and [`MemoryL2::trim_log`]
//!   simulate a data loss and a log trimmed past a receiver.
//! - [`MemoryBus`]: pub/sub to every subscriber in the process, with deterministic fault
//!   controls (drop, duplicate, delay, reorder, disconnect, failure) that also apply to what a
//!   [`MemoryL2`] publishes on it; [`MemoryBus::global`] is the process-wide default.
//! - [`SystemClock`] and [`ManualClock`]: the wall clock, and a clock tests move by hand.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use cache_core::{CacheKey, L2Store, L2Write};
//! use cache_memory::{ManualClock, MemoryL2};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cache_core::Result<()> {
//! let clock = Arc::new(ManualClock::default());
//! let l2 = MemoryL2::new(1 << 20, clock.clone());
//! let key = CacheKey::derive("gpu_avail", &serde_json::json!({"gpu_id": "g-42"}))?;
//!
//! // A fenced write lands only if neither the key nor its namespace changed since the fence.
//! let fence = l2.fence(&key).await?;
//! let write = L2Write::new(key.clone(), b"{\"free\": 3}".to_vec(), Duration::from_secs(30));
//! assert!(l2.set(write.fence(Some(fence))).await?);
//!
//! clock.advance(Duration::from_secs(10));
//! let entry = l2.get(&key).await?.expect("still live");
//! assert_eq!(entry.ttl_remaining, Duration::from_secs(20));
//!
//! // Invalidating the namespace hides every entry in it at once.
//! l2.invalidate_namespace("gpu_avail").await?;
//! assert!(l2.get(&key).await?.is_none());
//! # Ok(())
//! # }
//! ```

mod bus;
mod clock;
mod l1;
mod l2;
mod lease;

pub use bus::{MemoryBus, DEFAULT_MAX_QUEUED_BYTES};
pub use clock::{ManualClock, SystemClock, EXPIRY_SLACK};
pub use l1::{
    MemoryL1, MemoryL1Factory, ENTRY_OVERHEAD_BYTES, NEW_TAG_OVERHEAD_BYTES, TAG_OVERHEAD_BYTES,
};
pub use l2::{MemoryL2, Replica, DEFAULT_LOG_CAPACITY, L2_ENTRY_OVERHEAD_BYTES};
