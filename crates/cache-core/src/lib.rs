//! The core of edge-cache: namespaces, key derivation, invalidation events, the traits the stores
//! and the event bus implement, and the one error type. This crate performs no I/O: no runtime,
//! no sockets, no clock reads.
//!
//! ```
//! use cache_core::{CacheKey, Event, EventType, Namespaces};
//!
//! let namespaces = Namespaces::defaults();
//! let availability = namespaces.get("gpu_availability").unwrap();
//! // The same key a Python seed node derives for these parameters.
//! let key = CacheKey::derive(&availability.key_namespace, &serde_json::json!({"gpu_id": "g-42"})).unwrap();
//! assert!(key.as_str().starts_with("gpu_avail:"));
//!
//! let wire = br#"{"event_type": "CacheEventType.BOOKING_CREATED", "resource_id": "booking_1",
//!     "data": {}, "timestamp": 1.0, "source_node": "py-node", "event_id": "e1",
//!     "affected_namespaces": ["gpu_avail"]}"#;
//! assert_eq!(Event::decode(wire).unwrap().event_type, EventType::BookingCreated);
//! ```

pub mod bus;
pub mod codec;
pub mod error;
pub mod event;
pub mod key;
pub mod limits;
pub mod log;
pub mod namespace;
pub mod routing;
pub mod signing;
pub mod store;
pub mod time;

pub use bus::{BusItem, ConnectionState, EventBus, QueueGauge, Subscription};
pub use codec::{Codec, JsonCodec};
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, EventType, Scope, WriteAnnouncement, FORMAT_VERSION, MAX_EVENT_BYTES};
pub use key::{canonical_json, CacheKey, Digest};
pub use limits::Limits;
pub use log::{HeadCheck, LogCursor, LogPosition, LogRead, Observed};
pub use namespace::{NamespaceConfig, Namespaces, OutagePolicy};
pub use routing::Routing;
pub use signing::{EventKeys, SignatureMode, SigningKey};
pub use store::{
    Fence, L1Entry, L1Factory, L1Store, L1Usage, L2Entry, L2Info, L2Store, L2Write, Lease,
    LeaseWait, Logged, LoggedChange, SharedValue,
};
pub use time::{Clock, Timestamp};

/// mockall doubles of the traits, for tests that must force a fault (feature `mock`).
#[cfg(any(test, feature = "mock"))]
pub mod mock {
    pub use crate::bus::MockEventBus;
    pub use crate::store::MockL2Store;
}
