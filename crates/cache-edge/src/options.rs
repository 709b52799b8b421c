//! Per-call options of writes and loads.

use std::time::Duration;

/// Options of one `set` or `get_or_load` call.
///
/// ```
/// use std::time::Duration;
/// use cache_edge::SetOptions;
///
/// let opts = SetOptions::new().ttl(Duration::from_secs(10)).tag("gpu:g-42").tag("provider:p-1");
/// assert_eq!(opts.resource_tags().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetOptions {
    ttl: Option<Duration>,
    tags: Vec<String>,
    load_timeout: Option<Duration>,
    soft_timeout: Option<Duration>,
}

impl SetOptions {
    /// The namespace's TTL and no tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the namespace's TTL for this entry. A zero TTL is rejected when the call is made,
    /// never silently replaced by the default.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Tags the entry with a resource, so `invalidate_resource(namespace, resource)` removes it.
    pub fn tag(mut self, resource: impl Into<String>) -> Self {
        self.tags.push(resource.into());
        self
    }

    /// Tags the entry with several resources.
    pub fn tags<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(resources.into_iter().map(Into::into));
        self
    }

    /// For `get_or_load`: how long the loader may run before the call (and the load's other
    /// waiters) fail with a loader error, instead of the namespace's `load_timeout`.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = Some(timeout);
        self
    }

    /// For `get_or_load_owned`: how long to wait for a load before answering with the entry's
    /// fail-safe value (if there is one) while the load goes on in the background, instead of
    /// the namespace's `soft_timeout`. Refused (with [`cache_core::ErrorKind::InvalidConfig`])
    /// by `get_or_load`, whose loader cannot outlive the call, and in a namespace without
    /// fail-safe, which has no value to answer with.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The soft timeout override, if any.
    pub fn soft_timeout_override(&self) -> Option<Duration> {
        self.soft_timeout
    }

    /// The load timeout override, if any.
    pub fn load_timeout_override(&self) -> Option<Duration> {
        self.load_timeout
    }

    /// The TTL override, if any.
    pub fn ttl_override(&self) -> Option<Duration> {
        self.ttl
    }

    /// The resource tags.
    pub fn resource_tags(&self) -> &[String] {
        &self.tags
    }
}
