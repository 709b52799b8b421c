//! Which namespaces each event type invalidates: data, not code spread over methods.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind, Result};
use crate::event::EventType;
use crate::namespace::{
    Namespaces, GPU_AVAILABILITY, GPU_PRICING, MARKET_STATS, ORDER_BOOK, PROVIDER_STATUS,
};

/// A table from event type to the namespace names (cache types) it invalidates.
///
/// `ManualInvalidation` routes nowhere by default: an explicit invalidation names its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    table: BTreeMap<EventType, Vec<String>>,
}

impl Routing {
    /// A table that routes nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The routes for the seed's cache types: bookings touch availability, pricing and the order
    /// book; every other domain event touches its own namespace.
    pub fn defaults() -> Self {
        let mut r = Self::empty();
        let booking = [GPU_AVAILABILITY, GPU_PRICING, ORDER_BOOK];
        r.set(EventType::BookingCreated, booking);
        r.set(EventType::BookingCancelled, booking);
        r.set(EventType::GpuAvailabilityChanged, [GPU_AVAILABILITY]);
        r.set(EventType::PricingUpdated, [GPU_PRICING]);
        r.set(EventType::ProviderStatusChanged, [PROVIDER_STATUS]);
        r.set(EventType::MarketStatsUpdated, [MARKET_STATS]);
        r.set(EventType::OrderBookUpdated, [ORDER_BOOK]);
        r
    }

    /// Replaces the namespaces `event_type` invalidates.
    pub fn set<I, S>(&mut self, event_type: EventType, namespaces: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.table
            .insert(event_type, namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// Adds one namespace to what `event_type` invalidates (no duplicate is added).
    pub fn add(&mut self, event_type: EventType, namespace: impl Into<String>) -> &mut Self {
        let namespace = namespace.into();
        let list = self.table.entry(event_type).or_default();
        if !list.contains(&namespace) {
            list.push(namespace);
        }
        self
    }

    /// The namespace names `event_type` invalidates (empty when it routes nowhere).
    pub fn namespaces(&self, event_type: EventType) -> &[String] {
        self.table.get(&event_type).map_or(&[], Vec::as_slice)
    }

    /// Checks that every routed namespace is configured.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`] naming the first route to a namespace that does not exist.
    pub fn validate(&self, namespaces: &Namespaces) -> Result<()> {
        for (event_type, names) in &self.table {
            for name in names {
                if namespaces.get(name).is_none() {
                    return Err(Error::new(
                        ErrorKind::UnknownNamespace,
                        format!("{event_type} is routed to {name:?}, which is not a configured namespace"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_the_issue() {
        let r = Routing::defaults();
        assert_eq!(
            r.namespaces(EventType::BookingCreated),
            ["gpu_availability", "gpu_pricing", "order_book"]
        );
        assert_eq!(
            r.namespaces(EventType::BookingCancelled),
            ["gpu_availability", "gpu_pricing", "order_book"]
        );
        assert_eq!(
            r.namespaces(EventType::GpuAvailabilityChanged),
            ["gpu_availability"]
        );
        assert_eq!(r.namespaces(EventType::PricingUpdated), ["gpu_pricing"]);
        assert_eq!(
            r.namespaces(EventType::ProviderStatusChanged),
            ["provider_status"]
        );
        assert_eq!(
            r.namespaces(EventType::MarketStatsUpdated),
            ["market_stats"]
        );
        assert_eq!(r.namespaces(EventType::OrderBookUpdated), ["order_book"]);
        assert!(r.namespaces(EventType::ManualInvalidation).is_empty());
        r.validate(&Namespaces::defaults()).unwrap();
    }

    #[test]
    fn users_extend_routes_and_unknown_targets_are_caught() {
        let mut r = Routing::defaults();
        r.add(EventType::BookingCreated, "market_stats")
            .add(EventType::BookingCreated, "market_stats");
        assert_eq!(r.namespaces(EventType::BookingCreated).len(), 4);
        r.validate(&Namespaces::defaults()).unwrap();
        r.add(EventType::PricingUpdated, "nope");
        assert_eq!(
            r.validate(&Namespaces::defaults()).unwrap_err().kind(),
            ErrorKind::UnknownNamespace
        );
    }
}
