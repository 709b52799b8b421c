//! Domain notifications: the marketplace changes a node announces to the fleet.

use cache_core::EventType;
use serde_json::{json, Map, Value};

/// A change in the marketplace that makes cached data stale.
///
/// Which namespaces it invalidates comes from the node's [`cache_core::Routing`] table, keyed by
/// [`Notification::event_type`]. Build one with a constructor per event type, then
/// add details with [`Notification::with_data`]:
///
/// ```
/// use cache_edge::Notification;
/// use cache_core::EventType;
///
/// let n = Notification::booking_created("b-17", "g-42").with_data("region", "eu-west");
/// assert_eq!(n.event_type(), EventType::BookingCreated);
/// assert_eq!(n.resource_id(), "booking_b-17");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    event_type: EventType,
    resource_id: String,
    data: Map<String, Value>,
}

impl Notification {
    /// A notification of any type, for routes the user added.
    pub fn new(event_type: EventType, resource_id: impl Into<String>) -> Self {
        Self {
            event_type,
            resource_id: resource_id.into(),
            data: Map::new(),
        }
    }

    fn with(event_type: EventType, resource_id: String, data: Value) -> Self {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self {
            event_type,
            resource_id,
            data,
        }
    }

    /// A GPU's availability changed (seed: `notify_gpu_availability_change`).
    pub fn gpu_availability_changed(gpu_id: &str, new_status: &str) -> Self {
        let data = json!({"gpu_id": gpu_id, "status": new_status});
        Self::with(
            EventType::GpuAvailabilityChanged,
            format!("gpu_{gpu_id}"),
            data,
        )
    }

    /// A GPU type's price changed (seed: `notify_pricing_update`).
    pub fn pricing_updated(gpu_type: &str, new_price: f64) -> Self {
        let data = json!({"gpu_type": gpu_type, "price": new_price});
        Self::with(EventType::PricingUpdated, format!("price_{gpu_type}"), data)
    }

    /// A booking was made (seed: `notify_booking_created`).
    pub fn booking_created(booking_id: &str, gpu_id: &str) -> Self {
        let data = json!({"booking_id": booking_id, "gpu_id": gpu_id});
        Self::with(
            EventType::BookingCreated,
            format!("booking_{booking_id}"),
            data,
        )
    }

    /// A booking was cancelled (seed: `notify_booking_cancelled`).
    pub fn booking_cancelled(booking_id: &str, gpu_id: &str) -> Self {
        let data = json!({"booking_id": booking_id, "gpu_id": gpu_id});
        Self::with(
            EventType::BookingCancelled,
            format!("booking_{booking_id}"),
            data,
        )
    }

    /// A provider's status changed.
    pub fn provider_status_changed(provider_id: &str, new_status: &str) -> Self {
        let data = json!({"provider_id": provider_id, "status": new_status});
        Self::with(
            EventType::ProviderStatusChanged,
            format!("provider_{provider_id}"),
            data,
        )
    }

    /// Market statistics were recomputed for a market (e.g. a GPU type or region).
    pub fn market_stats_updated(market: &str) -> Self {
        Self::with(
            EventType::MarketStatsUpdated,
            format!("market_{market}"),
            json!({"market": market}),
        )
    }

    /// The order book of a market changed.
    pub fn order_book_updated(market: &str) -> Self {
        Self::with(
            EventType::OrderBookUpdated,
            format!("order_book_{market}"),
            json!({"market": market}),
        )
    }

    /// Adds a detail carried in the event's `data`.
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    /// The event type, which selects the namespaces invalidated.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// The resource id written on the event.
    pub fn resource_id(&self) -> &str {
        &self.resource_id
    }

    /// The event's data.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    pub(crate) fn into_parts(self) -> (EventType, String, Map<String, Value>) {
        (self.event_type, self.resource_id, self.data)
    }
}
