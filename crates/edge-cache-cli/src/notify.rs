//! Turning an event type and its fields, from flags or `key=value` pairs, into a
//! [`Notification`], with a clear error for a missing or misplaced field.

use cache_core::EventType;
use cache_edge::Notification;
use clap::Args;

use crate::fail::CliError;

/// The details a notification can carry; which ones an event type needs is [`needs`].
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct NotifyFields {
    /// Booking id (booking-created, booking-cancelled).
    #[arg(long, value_name = "ID")]
    pub booking: Option<String>,
    /// GPU id (booking-*, gpu-availability-changed).
    #[arg(long, value_name = "ID")]
    pub gpu: Option<String>,
    /// GPU type (pricing-updated).
    #[arg(long = "gpu-type", value_name = "T")]
    pub gpu_type: Option<String>,
    /// New price (pricing-updated).
    #[arg(long, value_name = "P")]
    pub price: Option<f64>,
    /// Provider id (provider-status-changed).
    #[arg(long, value_name = "ID")]
    pub provider: Option<String>,
    /// New status (gpu-availability-changed, provider-status-changed).
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Market (market-stats-updated, order-book-updated).
    #[arg(long, value_name = "M")]
    pub market: Option<String>,
}

/// One field of [`NotifyFields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Booking,
    Gpu,
    GpuType,
    Price,
    Provider,
    Status,
    Market,
}

impl Field {
    const ALL: [Field; 7] = [
        Field::Booking,
        Field::Gpu,
        Field::GpuType,
        Field::Price,
        Field::Provider,
        Field::Status,
        Field::Market,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Booking => "booking",
            Field::Gpu => "gpu",
            Field::GpuType => "gpu-type",
            Field::Price => "price",
            Field::Provider => "provider",
            Field::Status => "status",
            Field::Market => "market",
        }
    }
}

/// How fields are spelled where they came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Command-line flags: `--gpu`.
    Flags,
    /// `serve` pairs: `gpu=`.
    Pairs,
}

impl Style {
    fn show(self, field: Field) -> String {
        match self {
            Style::Flags => format!("--{}", field.name()),
            Style::Pairs => format!("{}=", field.name()),
        }
    }
}

impl NotifyFields {
    fn has(&self, field: Field) -> bool {
        match field {
            Field::Booking => self.booking.is_some(),
            Field::Gpu => self.gpu.is_some(),
            Field::GpuType => self.gpu_type.is_some(),
            Field::Price => self.price.is_some(),
            Field::Provider => self.provider.is_some(),
            Field::Status => self.status.is_some(),
            Field::Market => self.market.is_some(),
        }
    }

    /// Sets a field from a `serve` pair such as `gpu=g-42` (`gpu_type` works for `gpu-type`).
    ///
    /// # Errors
    /// An unknown key, a key given twice, or a price that is not a finite number.
    pub fn set_pair(&mut self, key: &str, value: &str) -> Result<(), CliError> {
        let field = Field::ALL
            .into_iter()
            .find(|f| f.name() == key.replace('_', "-"))
            .ok_or_else(|| {
                let known: Vec<String> = Field::ALL.iter().map(|f| Style::Pairs.show(*f)).collect();
                CliError::new(format!(
                    "unknown field {key:?}; fields: {}",
                    known.join(" ")
                ))
            })?;
        if self.has(field) {
            return Err(CliError::new(format!("{key}= given twice")));
        }
        let text = Some(value.to_owned());
        match field {
            Field::Booking => self.booking = text,
            Field::Gpu => self.gpu = text,
            Field::GpuType => self.gpu_type = text,
            Field::Price => self.price = Some(parse_price(value)?),
            Field::Provider => self.provider = text,
            Field::Status => self.status = text,
            Field::Market => self.market = text,
        }
        Ok(())
    }
}

fn parse_price(text: &str) -> Result<f64, CliError> {
    match text.parse::<f64>() {
        Ok(price) if price.is_finite() => Ok(price),
        _ => Err(CliError::new(format!("price {text:?} is not a number"))),
    }
}

/// The event types this CLI can announce, in their command-line spelling.
fn event_names() -> String {
    EventType::ALL
        .iter()
        .filter(|t| needs(**t).is_some())
        .map(|t| t.as_str().replace('_', "-"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields an event type needs, or `None` for a type that cannot be announced this way.
fn needs(event_type: EventType) -> Option<&'static [Field]> {
    use Field::*;
    Some(match event_type {
        EventType::BookingCreated | EventType::BookingCancelled => &[Booking, Gpu],
        EventType::GpuAvailabilityChanged => &[Gpu, Status],
        EventType::PricingUpdated => &[GpuType, Price],
        EventType::ProviderStatusChanged => &[Provider, Status],
        EventType::MarketStatsUpdated | EventType::OrderBookUpdated => &[Market],
        _ => return None,
    })
}

/// The notification for `event` (any accepted spelling) with `fields`.
///
/// # Errors
/// An unknown event type (listing the known ones), `manual_invalidation` (which names no
/// namespace: `invalidate` is the command for it), a missing field, or a field the type does not
/// take (so nothing the operator typed is silently dropped).
pub fn notification(
    event: &str,
    fields: &NotifyFields,
    style: Style,
) -> Result<Notification, CliError> {
    let event_type: EventType = event.parse().map_err(|_| {
        CliError::new(format!(
            "unknown event type {event:?}; event types: {}",
            event_names()
        ))
    })?;
    let Some(needed) = needs(event_type) else {
        return Err(CliError::new(match event_type {
            EventType::ManualInvalidation => {
                "manual_invalidation names no namespace; use `invalidate <namespace>` instead"
                    .to_owned()
            }
            other => format!("{other} cannot be announced from the command line"),
        }));
    };
    let missing: Vec<String> = needed
        .iter()
        .filter(|f| !fields.has(**f))
        .map(|f| style.show(*f))
        .collect();
    if !missing.is_empty() {
        return Err(CliError::new(format!(
            "{event_type} needs {}",
            missing.join(" and ")
        )));
    }
    let extra: Vec<String> = Field::ALL
        .into_iter()
        .filter(|f| fields.has(*f) && !needed.contains(f))
        .map(|f| style.show(f))
        .collect();
    if !extra.is_empty() {
        let takes: Vec<String> = needed.iter().map(|f| style.show(*f)).collect();
        return Err(CliError::new(format!(
            "{} does not apply to {event_type}, which takes {}",
            extra.join(" and "),
            takes.join(" and ")
        )));
    }
    // Every needed field is present: the defaults below are never used.
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let (booking, gpu, status) = (
        text(&fields.booking),
        text(&fields.gpu),
        text(&fields.status),
    );
    let (provider, market, gpu_type) = (
        text(&fields.provider),
        text(&fields.market),
        text(&fields.gpu_type),
    );
    let price = fields.price.unwrap_or_default();
    if !price.is_finite() {
        return Err(CliError::new(format!("price {price} is not a number")));
    }
    let built = match event_type {
        EventType::BookingCreated => Notification::booking_created(&booking, &gpu),
        EventType::BookingCancelled => Notification::booking_cancelled(&booking, &gpu),
        EventType::GpuAvailabilityChanged => Notification::gpu_availability_changed(&gpu, &status),
        EventType::PricingUpdated => Notification::pricing_updated(&gpu_type, price),
        EventType::ProviderStatusChanged => {
            Notification::provider_status_changed(&provider, &status)
        }
        EventType::MarketStatsUpdated => Notification::market_stats_updated(&market),
        EventType::OrderBookUpdated => Notification::order_book_updated(&market),
        // `needs` answered for this type, so it has a constructor above; a type added to
        // `needs` without one lands here rather than being announced half-built.
        other => {
            return Err(CliError::new(format!(
                "{other} cannot be announced from the command line"
            )))
        }
    };
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> NotifyFields {
        let mut fields = NotifyFields::default();
        for (k, v) in list {
            fields.set_pair(k, v).unwrap();
        }
        fields
    }

    #[test]
    fn every_spelling_builds_the_notification() {
        let fields = pairs(&[("booking", "bk-1"), ("gpu", "g-42")]);
        for spelling in [
            "booking-created",
            "booking_created",
            "CacheEventType.BOOKING_CREATED",
        ] {
            let n = notification(spelling, &fields, Style::Pairs).unwrap();
            assert_eq!(n.event_type(), EventType::BookingCreated);
            assert_eq!(n.resource_id(), "booking_bk-1");
            assert_eq!(n.data()["gpu_id"], "g-42");
        }
        let n = notification(
            "pricing-updated",
            &pairs(&[("gpu_type", "A100"), ("price", "2.5")]),
            Style::Pairs,
        )
        .unwrap();
        assert_eq!(n.data()["price"], 2.5);
    }

    #[test]
    fn missing_and_misplaced_fields_are_named() {
        let only_booking = pairs(&[("booking", "bk-1")]);
        let err = notification("booking-created", &only_booking, Style::Flags).unwrap_err();
        assert_eq!(err.to_string(), "booking_created needs --gpu");
        let err = notification("booking-created", &only_booking, Style::Pairs).unwrap_err();
        assert_eq!(err.to_string(), "booking_created needs gpu=");

        let too_many = pairs(&[("market", "A100"), ("price", "3")]);
        let err = notification("order-book-updated", &too_many, Style::Flags).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--price does not apply to order_book_updated, which takes --market"
        );
    }

    #[test]
    fn unknown_types_fields_and_prices_are_errors() {
        let err = notification("gpu-exploded", &NotifyFields::default(), Style::Flags).unwrap_err();
        assert!(err.to_string().contains("booking-created"), "{err}");
        assert!(!err.to_string().contains("manual-invalidation"), "{err}");
        let err = notification(
            "manual_invalidation",
            &NotifyFields::default(),
            Style::Flags,
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalidate <namespace>"), "{err}");
        let mut fields = NotifyFields::default();
        assert!(fields.set_pair("colour", "red").is_err());
        assert!(fields.set_pair("price", "NaN").is_err());
        assert!(fields.set_pair("price", "cheap").is_err());
        fields.set_pair("gpu", "g").unwrap();
        assert!(fields.set_pair("gpu", "h").is_err());
    }
}
