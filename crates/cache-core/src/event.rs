//! Invalidation events: the seed's eight types, its record and its JSON wire format.
//!
//! The wire format is documented in `docs/events.md`. Encoding always writes the enum's value
//! form (`"booking_created"`); decoding also accepts the spelling shipped Python nodes emit
//! (`"CacheEventType.BOOKING_CREATED"`). Unknown fields are ignored, so later versions can add
//! optional fields without breaking older nodes.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::log::{push_positions, LogPosition, WirePosition};

/// The wire format version this crate writes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest encoded event accepted by [`Event::decode`], in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The kind of change an event announces.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A GPU became available or unavailable.
    GpuAvailabilityChanged,
    /// A price changed.
    PricingUpdated,
    /// A booking was made.
    BookingCreated,
    /// A booking was cancelled.
    BookingCancelled,
    /// A provider went online, offline or changed state.
    ProviderStatusChanged,
    /// Market statistics were recomputed.
    MarketStatsUpdated,
    /// The order book changed.
    OrderBookUpdated,
    /// An explicit invalidation or a write.
    ManualInvalidation,
}

impl EventType {
    /// All types, in the seed's order.
    pub const ALL: [EventType; 8] = [
        EventType::GpuAvailabilityChanged,
        EventType::PricingUpdated,
        EventType::BookingCreated,
        EventType::BookingCancelled,
        EventType::ProviderStatusChanged,
        EventType::MarketStatsUpdated,
        EventType::OrderBookUpdated,
        EventType::ManualInvalidation,
    ];

    /// The wire string (the seed enum's value), e.g. `"booking_created"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::GpuAvailabilityChanged => "gpu_availability_changed",
            EventType::PricingUpdated => "pricing_updated",
            EventType::BookingCreated => "booking_created",
            EventType::BookingCancelled => "booking_cancelled",
            EventType::ProviderStatusChanged => "provider_status_changed",
            EventType::MarketStatsUpdated => "market_stats_updated",
            EventType::OrderBookUpdated => "order_book_updated",
            EventType::ManualInvalidation => "manual_invalidation",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = Error;

    /// Accepts the value form (`booking_created`), the Python enum form
    /// (`CacheEventType.BOOKING_CREATED`), and the kebab form (`booking-created`) used on
    /// command lines.
    fn from_str(s: &str) -> Result<Self> {
        let value = match s.strip_prefix("CacheEventType.") {
            Some(upper) => upper.to_ascii_lowercase(),
            None => s.replace('-', "_"),
        };
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnknownEventType,
                    format!("unknown event type {s:?}"),
                )
            })
    }
}

/// What an event asks receivers to drop from the namespaces it names.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every entry of each affected namespace (the seed's only behaviour).
    #[default]
    Namespace,
    /// Only the entries tagged with the event's `resource_id`, in each affected namespace.
    Resource,
    /// Exactly these keys (`key_namespace:hex`), e.g. the key a write replaced.
    Keys(Vec<String>),
}

/// One invalidation event, with the seed's fields and edge-cache's optional extensions.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What changed.
    pub event_type: EventType,
    /// The resource the change concerns (`booking_b-1`, `gpu_g-42`, or a tag for
    /// [`Scope::Resource`]).
    pub resource_id: String,
    /// Free-form details, as in the seed.
    pub data: Map<String, Value>,
    /// When the event was issued, in seconds since the Unix epoch.
    pub timestamp: f64,
    /// The node that issued it; receivers ignore their own.
    pub source_node: String,
    /// A unique id (UUID v4 text).
    pub event_id: String,
    /// The key namespaces (`gpu_avail`, …) the event invalidates.
    pub affected_namespaces: Vec<String>,
    /// What to drop inside those namespaces.
    pub scope: Scope,
    /// The format version the sender wrote; 0 for the seed's Python nodes.
    pub version: u32,
    /// Where a sequenced store logged the event, one position per namespace it touched (the
    /// wire's last field, `pos`, written by the store, not by the issuing node; see
    /// [`crate::log`]). Empty for unsequenced events.
    pub positions: Vec<LogPosition>,
}

impl Event {
    /// A namespace-wide event of `event_type` with no data; the caller fills in the rest.
    pub fn new(
        event_type: EventType,
        resource_id: impl Into<String>,
        source_node: impl Into<String>,
        event_id: impl Into<String>,
        timestamp: f64,
    ) -> Self {
        Self {
            event_type,
            resource_id: resource_id.into(),
            data: Map::new(),
            timestamp,
            source_node: source_node.into(),
            event_id: event_id.into(),
            affected_namespaces: Vec::new(),
            scope: Scope::Namespace,
            version: FORMAT_VERSION,
            positions: Vec::new(),
        }
    }

    /// Encodes the event as its JSON wire form.
    ///
    /// Written field by field rather than through a serde struct: every write announces itself
    /// with an event, and most of an event's strings (keys, digests, ids) need no escaping, which
    /// serde_json checks byte by byte. The output is byte for byte what serde_json writes for the
    /// same fields (a test holds it to that), with `source_node` first ([`Event::own_prefix`]).
    pub fn encode(&self) -> Vec<u8> {
        let (scope, keys) = match &self.scope {
            Scope::Namespace => ("namespace", WireKeys::None),
            Scope::Resource => ("resource", WireKeys::None),
            Scope::Keys(keys) => ("keys", WireKeys::Slice(keys)),
        };
        Wire {
            source_node: &self.source_node,
            event_type: self.event_type,
            resource_id: &self.resource_id,
            data: WireData::Map(&self.data),
            timestamp: self.timestamp,
            event_id: &self.event_id,
            affected_namespaces: &self.affected_namespaces,
            version: self.version,
            scope,
            keys,
            positions: &self.positions,
        }
        .encode()
    }

    /// The first bytes of every event [`Event::encode`] writes for `source_node`.
    ///
    /// Receivers ignore their own events, and a node hears back every event it publishes: a
    /// message that starts with its own prefix can be counted as its own without being decoded.
    /// The prefix ends the top-level `source_node` field (the first one written), so a field of
    /// that name nested in `data` never matches; an event written by another encoder (the seed's
    /// Python nodes, with spaces) does not match either and is decoded as usual.
    ///
    /// ```
    /// use cache_core::{Event, EventType};
    ///
    /// let event = Event::new(EventType::BookingCreated, "booking_1", "node-a", "id-1", 0.0);
    /// let prefix = Event::own_prefix("node-a");
    /// assert!(event.encode().starts_with(&prefix));
    /// assert!(!event.encode().starts_with(&Event::own_prefix("node")));
    /// ```
    pub fn own_prefix(source_node: &str) -> Vec<u8> {
        let mut prefix = b"{\"source_node\":".to_vec();
        // Writing a string to a Vec cannot fail.
        serde_json::to_writer(&mut prefix, source_node).unwrap_or_default();
        prefix.push(b',');
        prefix
    }

    /// Decodes an event from its JSON wire form.
    ///
    /// # Errors
    /// [`ErrorKind::MalformedEvent`] for input over [`MAX_EVENT_BYTES`], invalid JSON, a missing or
    /// mistyped field, or an unknown scope; [`ErrorKind::UnknownEventType`] for an `event_type`
    /// naming no known type.
    pub fn decode(bytes: &[u8]) -> Result<Event> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(Error::new(
                ErrorKind::MalformedEvent,
                format!(
                    "event of {} bytes exceeds the {MAX_EVENT_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let wire: WireIn = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(ErrorKind::MalformedEvent, format!("not a valid event: {e}")).with_source(e)
        })?;
        let event_type: EventType = wire.event_type.parse()?;
        let scope = match wire.scope.as_deref() {
            None => legacy_scope(event_type, &wire.data, &wire.affected_namespaces),
            Some("namespace") => Scope::Namespace,
            Some("resource") => Scope::Resource,
            Some("keys") => Scope::Keys(wire.keys.unwrap_or_default()),
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::MalformedEvent,
                    format!("unknown scope {other:?}"),
                ));
            }
        };
        Ok(Event {
            event_type,
            resource_id: wire.resource_id.unwrap_or_default(),
            data: wire.data.unwrap_or_default(),
            timestamp: wire.timestamp.unwrap_or(0.0),
            source_node: wire.source_node,
            event_id: wire.event_id.unwrap_or_default(),
            affected_namespaces: wire.affected_namespaces,
            scope,
            version: wire.version.unwrap_or(0),
            positions: wire
                .pos
                .unwrap_or_default()
                .into_iter()
                .map(WirePosition::into_position)
                .collect(),
        })
    }
}

/// A seed node's write announces `{"cache_key": …, "action": "updated"}`: only that key changed.
/// Everything else from a seed node is namespace-wide, which is what it meant.
fn legacy_scope(
    event_type: EventType,
    data: &Option<Map<String, Value>>,
    namespaces: &[String],
) -> Scope {
    let key = data.as_ref().and_then(|d| {
        let updated = d.get("action").and_then(Value::as_str) == Some("updated");
        updated
            .then(|| d.get("cache_key").and_then(Value::as_str))
            .flatten()
    });
    match key {
        Some(key) if event_type == EventType::ManualInvalidation && !namespaces.is_empty() => {
            Scope::Keys(vec![key.to_owned()])
        }
        _ => Scope::Namespace,
    }
}

/// The event a node announces each write with, as the seed's `set` does: a
/// `manual_invalidation` whose `resource_id` is the namespace's name and whose data is
/// `{"action": "updated", "cache_key": …, "region": …}`, scoped to the written key alone.
/// `affected_namespaces` stays empty: seed nodes wipe whatever it lists and would erase the
/// value just written; edge-cache nodes read the key from the scope.
///
/// [`WriteAnnouncement::encode`] writes the event straight from these borrowed fields, byte for
/// byte what [`Event::encode`] writes for [`WriteAnnouncement::to_event`]: every write sends
/// one, and building the owned event (a dozen strings, a map and a vector) only to encode and
/// drop it cost about 0.03× of a write's time against Redis (`cargo xtask bench --only 3`).
///
/// ```
/// use cache_core::event::WriteAnnouncement;
///
/// let write = WriteAnnouncement {
///     namespace: "gpu_availability",
///     cache_key: "gpu_avail:00ff",
///     region: "eu-west",
///     source_node: "node-a",
///     event_id: "5b0c8f5e-7e3a-4d2b-9a51-0f6d2c1e8b7a",
///     timestamp: 1_767_225_600.5,
/// };
/// assert_eq!(write.encode(), write.to_event().encode());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteAnnouncement<'a> {
    /// The namespace's name (`gpu_availability`), the event's `resource_id`.
    pub namespace: &'a str,
    /// The key written (`gpu_avail:<hex>`).
    pub cache_key: &'a str,
    /// The writing node's region, as every event of a node carries it in its data.
    pub region: &'a str,
    /// The writing node.
    pub source_node: &'a str,
    /// A unique id (UUID v4 text).
    pub event_id: &'a str,
    /// When the write was made, in seconds since the Unix epoch.
    pub timestamp: f64,
}

impl WriteAnnouncement<'_> {
    /// The announcement as an owned [`Event`].
    pub fn to_event(&self) -> Event {
        let mut event = Event::new(
            EventType::ManualInvalidation,
            self.namespace,
            self.source_node,
            self.event_id,
            self.timestamp,
        );
        // In key order, so the map iterates alike whether serde_json sorts it or keeps the
        // insertion order (its `preserve_order` feature).
        event.data.insert("action".into(), Value::from("updated"));
        event
            .data
            .insert("cache_key".into(), Value::from(self.cache_key));
        event.data.insert("region".into(), Value::from(self.region));
        event.scope = Scope::Keys(vec![self.cache_key.to_owned()]);
        event
    }

    /// The announcement's JSON wire form: `self.to_event().encode()`, without the event.
    pub fn encode(&self) -> Vec<u8> {
        Wire {
            source_node: self.source_node,
            event_type: EventType::ManualInvalidation,
            resource_id: self.namespace,
            data: WireData::Write {
                cache_key: self.cache_key,
                region: self.region,
            },
            timestamp: self.timestamp,
            event_id: self.event_id,
            affected_namespaces: &[],
            version: FORMAT_VERSION,
            scope: "keys",
            keys: WireKeys::One(self.cache_key),
            positions: &[],
        }
        .encode()
    }
}

/// An event's fields as [`Event::encode`] and [`WriteAnnouncement::encode`] write them, in
/// wire order.
struct Wire<'a> {
    source_node: &'a str,
    event_type: EventType,
    resource_id: &'a str,
    data: WireData<'a>,
    timestamp: f64,
    event_id: &'a str,
    affected_namespaces: &'a [String],
    version: u32,
    scope: &'a str,
    keys: WireKeys<'a>,
    positions: &'a [LogPosition],
}

/// The `data` object: an event's map, or a write's three fields (written in the map's order).
enum WireData<'a> {
    Map(&'a Map<String, Value>),
    Write { cache_key: &'a str, region: &'a str },
}

/// The `keys` array, written only for the `keys` scope.
enum WireKeys<'a> {
    None,
    Slice(&'a [String]),
    One(&'a str),
}

impl Wire<'_> {
    fn encode(&self) -> Vec<u8> {
        let (data_len, data_entries) = match self.data {
            WireData::Map(map) => (0, map.len()),
            WireData::Write { cache_key, region } => (cache_key.len() + region.len(), 3),
        };
        let keys_len = match self.keys {
            WireKeys::None => 0,
            WireKeys::Slice(keys) => keys.iter().map(String::len).sum(),
            WireKeys::One(key) => key.len(),
        };
        let strings = self.resource_id.len()
            + self.source_node.len()
            + self.event_id.len()
            + self
                .affected_namespaces
                .iter()
                .map(String::len)
                .sum::<usize>()
            + data_len
            + keys_len;
        let mut out = Vec::with_capacity(strings + 64 * data_entries + 256);
        out.extend_from_slice(b"{\"source_node\":");
        push_json_str(&mut out, self.source_node);
        out.extend_from_slice(b",\"event_type\":");
        push_json_str(&mut out, self.event_type.as_str());
        out.extend_from_slice(b",\"resource_id\":");
        push_json_str(&mut out, self.resource_id);
        out.extend_from_slice(b",\"data\":");
        match self.data {
            WireData::Map(map) => push_json_map(&mut out, map),
            WireData::Write { cache_key, region } => {
                out.extend_from_slice(b"{\"action\":\"updated\",\"cache_key\":");
                push_json_str(&mut out, cache_key);
                out.extend_from_slice(b",\"region\":");
                push_json_str(&mut out, region);
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"timestamp\":");
        // A non-finite timestamp is written as null, as serde_json does.
        serde_json::to_writer(&mut out, &self.timestamp).unwrap_or_default();
        out.extend_from_slice(b",\"event_id\":");
        push_json_str(&mut out, self.event_id);
        out.extend_from_slice(b",\"affected_namespaces\":");
        push_json_strs(&mut out, self.affected_namespaces);
        out.extend_from_slice(b",\"version\":");
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}", self.version);
        out.extend_from_slice(b",\"scope\":");
        push_json_str(&mut out, self.scope);
        match self.keys {
            WireKeys::None => {}
            WireKeys::Slice(keys) => {
                out.extend_from_slice(b",\"keys\":");
                push_json_strs(&mut out, keys);
            }
            WireKeys::One(key) => {
                out.extend_from_slice(b",\"keys\":[");
                push_json_str(&mut out, key);
                out.push(b']');
            }
        }
        push_positions(&mut out, self.positions);
        out.push(b'}');
        out
    }
}

/// Appends `s` as a JSON string, as serde_json writes it: only control characters, `"` and `\\`
/// are escaped, which most strings of an event (keys, hex digests, ids) do not contain.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // A fold rather than `any`, so the check has no early exit and compiles to vector code.
    let needs_escape = s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string to a Vec cannot fail.
        serde_json::to_writer(&mut *out, s).unwrap_or_default();
    }
}

/// Appends `map` as serde_json writes it (in the map's order), string values written by
/// [`push_json_str`]: a write's event carries its key there, which serde_json checks for escapes
/// a byte at a time.
fn push_json_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, key);
        out.push(b':');
        match value {
            Value::String(s) => push_json_str(out, s),
            // Writing a JSON value to a Vec cannot fail.
            other => serde_json::to_writer(&mut *out, other).unwrap_or_default(),
        }
    }
    out.push(b'}');
}

/// Appends `strings` as a JSON array of strings.
fn push_json_strs(out: &mut Vec<u8>, strings: &[String]) {
    out.push(b'[');
    for (i, s) in strings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, s);
    }
    out.push(b']');
}

/// What [`Event::encode`] writes, as serde_json would write it: the reference its output is
/// checked against. `source_node` comes first, so that a node can recognise its own events by
/// their first bytes ([`Event::own_prefix`]) without decoding them.
#[cfg(test)]
#[derive(serde::Serialize)]
struct WireOut<'a> {
    source_node: &'a str,
    event_type: &'a str,
    resource_id: &'a str,
    data: &'a Map<String, Value>,
    timestamp: f64,
    event_id: &'a str,
    affected_namespaces: &'a [String],
    version: u32,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<&'a [String]>,
}

#[derive(Deserialize)]
struct WireIn {
    event_type: String,
    #[serde(default, deserialize_with = "string_or_null")]
    resource_id: Option<String>,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    timestamp: Option<f64>,
    source_node: String,
    #[serde(default)]
    event_id: Option<String>,
    affected_namespaces: Vec<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    pos: Option<Vec<WirePosition>>,
}

/// The seed sends `resource_id: null` in some paths; treat it as absent rather than malformed.
fn string_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        let mut e = Event::new(
            EventType::BookingCreated,
            "booking_b-1",
            "edge_node_1",
            "id-1",
            1_700_000_000.25,
        );
        e.data.insert("gpu_id".into(), json!("g-42"));
        e.affected_namespaces = vec!["gpu_avail".into(), "order_book".into()];
        e
    }

    #[test]
    fn positions_written_by_a_store_decode_and_encode_last() {
        let mut event = sample();
        event.positions = vec![
            crate::LogPosition::new("gpu_avail", 17, 3),
            crate::LogPosition::new("order_book", 17, 9),
        ];
        let wire = event.encode();
        assert!(wire.ends_with(br#","pos":[["gpu_avail",17,3],["order_book",17,9]]}"#));
        assert_eq!(Event::decode(&wire).unwrap(), event);
        assert_eq!(
            crate::log::positions_in_tail(&wire),
            Some(event.positions.clone())
        );
        // What a store does: the event without positions, its closing brace replaced.
        let mut plain = sample();
        plain.positions.clear();
        let mut spliced = plain.encode();
        spliced.pop();
        spliced.extend_from_slice(br#","pos":[["gpu_avail",17,3],["order_book",17,9]]}"#);
        assert_eq!(spliced, wire);
        let bad = br#"{"source_node":"a","event_type":"booking_created","affected_namespaces":[],"pos":[["a",1]]}"#;
        assert_eq!(
            Event::decode(bad).unwrap_err().kind(),
            ErrorKind::MalformedEvent
        );
    }

    #[test]
    fn round_trips_every_scope() {
        for scope in [
            Scope::Namespace,
            Scope::Resource,
            Scope::Keys(vec!["gpu_avail:ab".into()]),
        ] {
            let mut e = sample();
            e.scope = scope;
            assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn writes_the_seed_field_names_and_the_value_form() {
        let v: Value = serde_json::from_slice(&sample().encode()).unwrap();
        assert_eq!(v["event_type"], "booking_created");
        for field in [
            "resource_id",
            "data",
            "timestamp",
            "source_node",
            "event_id",
            "affected_namespaces",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert_eq!(v["version"], FORMAT_VERSION);
    }

    #[test]
    fn accepts_the_python_enum_spelling_and_ignores_unknown_fields() {
        let raw =
            br#"{"event_type": "CacheEventType.BOOKING_CANCELLED", "resource_id": "booking_7",
            "data": {"booking_id": "7", "gpu_id": "g"}, "timestamp": 1.5, "source_node": "py",
            "event_id": "e", "affected_namespaces": ["gpu_avail"], "future_field": [1, 2]}"#;
        let e = Event::decode(raw).unwrap();
        assert_eq!(e.event_type, EventType::BookingCancelled);
        assert_eq!(e.version, 0);
        assert_eq!(e.scope, Scope::Namespace);
    }

    #[test]
    fn a_seed_write_event_is_scoped_to_its_key() {
        let raw = br#"{"event_type": "manual_invalidation", "resource_id": "gpu_pricing",
            "data": {"cache_key": "gpu_pricing:00", "action": "updated"}, "timestamp": 1.0,
            "source_node": "py", "event_id": "e", "affected_namespaces": ["gpu_pricing"]}"#;
        assert_eq!(
            Event::decode(raw).unwrap().scope,
            Scope::Keys(vec!["gpu_pricing:00".into()])
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let cases: [(&[u8], ErrorKind); 6] = [
            (b"not json", ErrorKind::MalformedEvent),
            (b"{}", ErrorKind::MalformedEvent),
            (br#"{"event_type": 5, "source_node": "a", "affected_namespaces": []}"#, ErrorKind::MalformedEvent),
            (br#"{"event_type": "gpu_exploded", "source_node": "a", "affected_namespaces": []}"#, ErrorKind::UnknownEventType),
            (br#"{"event_type": "pricing_updated", "source_node": "a", "affected_namespaces": [], "scope": "galaxy"}"#, ErrorKind::MalformedEvent),
            (&[0xff, 0xfe], ErrorKind::MalformedEvent),
        ];
        for (raw, kind) in cases {
            assert_eq!(
                Event::decode(raw).unwrap_err().kind(),
                kind,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            Event::decode(&huge).unwrap_err().kind(),
            ErrorKind::MalformedEvent
        );
    }

    #[test]
    fn event_type_spellings() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert_eq!(
                t.as_str().replace('_', "-").parse::<EventType>().unwrap(),
                t
            );
            let python = format!("CacheEventType.{}", t.as_str().to_ascii_uppercase());
            assert_eq!(python.parse::<EventType>().unwrap(), t);
        }
        assert_eq!(
            "nope".parse::<EventType>().unwrap_err().kind(),
            ErrorKind::UnknownEventType
        );
    }

    #[test]
    fn only_a_nodes_own_encoded_events_start_with_its_prefix() {
        let own = |node: &str| Event::new(EventType::PricingUpdated, "gpu_1", node, "id", 1.0);
        for node in ["node-a", "edge \"quoted\" \\ node\n", "ünïcode-節点"] {
            let prefix = Event::own_prefix(node);
            let bytes = own(node).encode();
            assert!(bytes.starts_with(&prefix), "{node:?}");
            assert_eq!(Event::decode(&bytes).unwrap().source_node, node);
        }
        let me = Event::own_prefix("node-a");
        // Another node whose id starts like this one's.
        assert!(!own("node-a-2").encode().starts_with(&me));
        // Another node's event naming this one inside its data.
        let mut foreign = own("node-b");
        foreign.data.insert("source_node".into(), json!("node-a"));
        assert!(!foreign.encode().starts_with(&me));
        // The seed's encoder (spaces after separators) never matches: decoded as usual.
        let seed = br#"{"source_node": "node-a", "event_type": "pricing_updated", "affected_namespaces": []}"#;
        assert!(!seed.starts_with(&me));
    }

    #[test]
    fn encodes_byte_for_byte_what_serde_json_writes() {
        let odd = "quote \" backslash \\ tab \t nul \u{0} del \u{7f} ünï 節点 \u{1F680}";
        let mut events = Vec::new();
        for (i, scope) in [
            Scope::Namespace,
            Scope::Resource,
            Scope::Keys(vec![]),
            Scope::Keys(vec!["gpu_avail:00ff".into(), odd.into()]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut event = Event::new(EventType::ALL[i * 2], "gpu_1", "node-a", "id-1", 1.5);
            event.scope = scope;
            events.push(event);
        }
        let mut odd_event = Event::new(EventType::BookingCancelled, odd, odd, odd, f64::NAN);
        odd_event.affected_namespaces = vec![odd.into(), "gpu_avail".into()];
        odd_event
            .data
            .insert(odd.into(), json!({"nested": [1, 2.5, null, odd]}));
        odd_event.data.insert("region".into(), json!("eu"));
        odd_event.version = 0;
        events.push(odd_event);
        let mut huge = Event::new(EventType::PricingUpdated, "", "", "", 1e300);
        huge.version = u32::MAX;
        events.push(huge);
        events.push(Event::new(EventType::ALL[7], "r", "n", "e", -0.0));
        // Each character that needs escaping, alone in an otherwise plain string.
        for lone in [
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "unit\u{1f}",
            "del\u{7f} ünï",
        ] {
            let mut event = Event::new(EventType::ALL[3], lone, lone, lone, 2.0);
            event.scope = Scope::Keys(vec![lone.into()]);
            event.data.insert(lone.into(), json!(lone));
            event
                .data
                .insert("cache_key".into(), json!(format!("ns:{lone}")));
            events.push(event);
        }
        for event in events {
            let (scope, keys) = match &event.scope {
                Scope::Namespace => ("namespace", None),
                Scope::Resource => ("resource", None),
                Scope::Keys(keys) => ("keys", Some(keys.as_slice())),
            };
            let reference = serde_json::to_vec(&WireOut {
                source_node: &event.source_node,
                event_type: event.event_type.as_str(),
                resource_id: &event.resource_id,
                data: &event.data,
                timestamp: event.timestamp,
                event_id: &event.event_id,
                affected_namespaces: &event.affected_namespaces,
                version: event.version,
                scope,
                keys,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&event.encode()),
                String::from_utf8_lossy(&reference)
            );
        }
    }
    /// A write's announcement, written without the event, is what the event encodes to, with
    /// plain strings and with each kind of string that needs escaping, and it reads back as it.
    #[test]
    fn a_write_announcement_encodes_as_its_event() {
        let strings = [
            "gpu_avail:00ff",
            "",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "del\u{7f} ünï",
        ];
        for (i, s) in strings.into_iter().enumerate() {
            for timestamp in [1_767_225_600.5, f64::NAN, -0.0] {
                let write = WriteAnnouncement {
                    namespace: strings[(i + 1) % strings.len()],
                    cache_key: s,
                    region: strings[(i + 2) % strings.len()],
                    source_node: strings[(i + 3) % strings.len()],
                    event_id: strings[(i + 4) % strings.len()],
                    timestamp,
                };
                let event = write.to_event();
                assert_eq!(
                    String::from_utf8_lossy(&write.encode()),
                    String::from_utf8_lossy(&event.encode())
                );
                let decoded = Event::decode(&write.encode()).unwrap();
                assert_eq!(decoded.scope, Scope::Keys(vec![s.to_owned()]));
                assert_eq!(decoded.data["cache_key"], s);
                assert_eq!(decoded.data["action"], "updated");
                assert!(decoded.affected_namespaces.is_empty());
            }
        }
    }
}
