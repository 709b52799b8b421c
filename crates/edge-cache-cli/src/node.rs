//! Starting this process's edge node on Redis, and checking arguments before doing so.

use std::sync::Arc;

use cache_core::{EventKeys, Namespaces};
use cache_edge::EdgeCache;
use cache_redis::{RedisBus, RedisConfig, RedisL2};

use crate::fail::CliError;

/// The reason written on a namespace invalidation when the operator gives none.
pub const DEFAULT_REASON: &str = "operator invalidation (edge-cache cli)";

/// Where the fleet is and who this process is on it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The Redis URL, as given (it may hold a password: print only `redact`ed forms).
    pub url: String,
    /// The event channel.
    pub channel: String,
    /// The id written on events this process publishes.
    pub node_id: String,
    /// The fleet's event keys, if it signs its events.
    pub keys: Option<EventKeys>,
    /// Whether a plain-text URL to a host that is not loopback is allowed.
    pub allow_plaintext: bool,
}

impl Target {
    /// The Redis settings of the L2 store and the bus.
    pub fn config(&self) -> RedisConfig {
        RedisConfig::new(self.url.as_str())
            .channel(self.channel.as_str())
            .allow_plaintext(self.allow_plaintext)
    }
}

/// The namespaces this CLI's nodes are built with (the seed's six), so arguments can be checked
/// against the same list before connecting.
pub fn namespaces() -> Namespaces {
    Namespaces::defaults()
}

/// Connects to Redis (L2 and the event bus) and starts an edge node.
///
/// # Errors
/// Redis cannot be reached, refuses the credentials, or the URL does not parse; the message
/// names the URL with its password redacted.
pub async fn connect(target: &Target) -> Result<EdgeCache, CliError> {
    let config = target.config();
    let l2 = RedisL2::connect(&config).await?;
    let bus = RedisBus::connect(&config).await?;
    let mut builder = EdgeCache::builder()
        .node_id(target.node_id.as_str())
        .namespaces(namespaces())
        .l2(Arc::new(l2))
        .bus(Arc::new(bus));
    if let Some(keys) = &target.keys {
        builder = builder.event_keys(keys.clone());
    }
    let node = builder.build().await?;
    Ok(node)
}

/// Checks that `name` is a configured namespace; the error lists the configured ones.
///
/// # Errors
/// When it is not, with the list (and a hint when `name` is a key prefix such as `gpu_avail`).
pub fn check_namespace(namespaces: &Namespaces, name: &str) -> Result<(), CliError> {
    if namespaces.get(name).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = namespaces.iter().map(|c| c.name.as_str()).collect();
    let hint = namespaces
        .by_key_namespace(name)
        .map(|c| format!(" ({name:?} is the key prefix of {:?})", c.name))
        .unwrap_or_default();
    Err(CliError::new(format!(
        "unknown namespace {name:?}{hint}; configured namespaces: {}",
        names.join(", ")
    )))
}

/// The message for an argument `name` whose text is not valid JSON, quoting (the start of) it.
pub fn bad_json(name: &str, text: &str, error: &serde_json::Error) -> String {
    const SHOWN: usize = 60;
    let shown = match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    };
    format!("{name} is not valid JSON ({error}): {shown}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_namespace_lists_the_configured_ones() {
        let err = check_namespace(&namespaces(), "gpu_avail").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"gpu_avail\" is the key prefix of \"gpu_availability\""));
        for name in [
            "gpu_availability",
            "gpu_pricing",
            "order_book",
            "provider_status",
        ] {
            assert!(text.contains(name), "{text}");
        }
        check_namespace(&namespaces(), "order_book").unwrap();
    }

    #[test]
    fn bad_json_names_the_argument_and_quotes_a_bounded_excerpt() {
        let text = "{gpu_id: g-42}".repeat(10);
        let e = serde_json::from_str::<serde_json::Value>(&text).unwrap_err();
        let msg = bad_json("PARAMS_JSON", &text, &e);
        assert!(
            msg.starts_with("PARAMS_JSON is not valid JSON (key must be a string"),
            "{msg}"
        );
        assert!(msg.ends_with("..."), "{msg}");
    }
}
