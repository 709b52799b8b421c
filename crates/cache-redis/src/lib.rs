//! Redis for edge-cache: [`RedisL2`], the shared second tier, and [`RedisBus`], invalidation
//! events on pub/sub. Both implement the `cache-core` traits, so an `EdgeCache` takes them in
//! place of the in-process defaults.
//!
//! ```no_run
//! # async fn example() -> cache_core::Result<()> {
//! use std::sync::Arc;
//! use cache_redis::{RedisBus, RedisConfig, RedisL2};
//!
//! let config = RedisConfig::new("redis://edge:s3cret@127.0.0.1:6379/0");
//! let l2 = Arc::new(RedisL2::connect(&config).await?);
//! let bus = Arc::new(RedisBus::connect(&config).await?);
//! // EdgeCache::builder().l2(l2).bus(bus).build().await?
//! # let _ = (l2, bus); Ok(()) }
//! ```
//!
//! Connection URLs are `redis://[user:password@]host:port[/db]` (ACL users included);
//! `rediss://` needs the `tls` feature. What a node does when Redis goes away and comes back is
//! described in `docs/operations.md`.

mod bus;
mod config;
mod l2;
mod lease;
mod topology;

pub use bus::RedisBus;
pub use config::{
    redact, RedisConfig, DEFAULT_CHANNEL, DEFAULT_KEY_PREFIX, DEFAULT_LOG_LENGTH,
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_VALUE_BYTES, MIN_QUEUED_BYTES,
};
pub use l2::{RedisL2, CLOCK_SKEW_MARGIN, SET_IF_CURRENT_SCRIPT};
