//! Namespace (cache type) configuration: the seed's `CacheConfig`, validated.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// One cache type: how its entries are keyed, how long they live and where they are kept.
///
/// `name` is what callers pass (`"gpu_availability"`); `key_namespace` is the prefix of every key
/// in the stores and the name used on the wire in `affected_namespaces` (`"gpu_avail"`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// The cache type name callers use.
    pub name: String,
    /// The key prefix, `key_namespace:sha256hex(params)`.
    pub key_namespace: String,
    /// Default lifetime of an entry; a per-call TTL overrides it.
    pub ttl: Duration,
    /// Whether writes and invalidations of this namespace are announced to the fleet.
    pub event_driven: bool,
    /// Whether entries are kept in the in-process L1 store (as well as in L2).
    pub critical: bool,
    /// The L1 byte budget of this namespace.
    pub max_memory_bytes: u64,
    /// What L1 of an event-driven namespace does while its node cannot be sure it heard every
    /// change (see [`OutagePolicy`]).
    pub outage: OutagePolicy,
    /// How long a loader of this namespace may run before `get_or_load` gives up on it with a
    /// loader error; `None` (the default) waits as long as the loader takes. A call may set
    /// its own.
    pub load_timeout: Option<Duration>,
    /// Fail-safe: how long past its expiry an entry's last value may still be served when its
    /// load fails or times out, or L2 is unreachable; `None` (the default) serves nothing past
    /// expiry. Only expired values are candidates: one removed by an invalidation or a write
    /// never is. Needs L1 (`critical`).
    pub fail_safe: Option<Duration>,
    /// With a fail-safe value at hand, how long `get_or_load_owned` waits for a load before
    /// answering with that value while the load goes on in the background and fills the
    /// cache; `None` (the default) waits for the load. Needs `fail_safe`, and is shorter than
    /// `load_timeout` when both are set. A call may set its own.
    pub soft_timeout: Option<Duration>,
    /// Eager refresh, in thousandths of an entry's L1 lifetime: a `get_or_load_owned` hit on
    /// an entry older than this starts one background load of it (single flight), so a hot
    /// key is reloaded before it expires instead of missing. `None` (the default): entries
    /// are loaded when they miss. Between 1 and 999; needs L1 (`critical`).
    pub eager_refresh: Option<u16>,
    /// The fleet-wide fill lease: how long the node that misses a key in L2 holds the right to
    /// load it, while other nodes that miss the same key wait for its fill instead of loading
    /// too. `None` (the default): every node loads its own misses (one load per node, still
    /// single flight within it).
    pub fill_lease: Option<Duration>,
}

/// What an event-driven namespace's L1 does while its node cannot be sure it has applied every
/// change: its subscription is lost or a reconnect not yet replayed, a gap in the event log is
/// not yet repaired, or the log has not confirmed the node is up to date for longer than the
/// staleness bound (Redis unreachable, a deaf subscription). In every case L1 is kept, and the
/// node replays exactly what it missed once it can; the policy only decides what reads get in
/// the meantime. Namespaces that are not event-driven have no L1 to protect this way.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutagePolicy {
    /// Reads skip L1 (they go to L2, or miss) until the node is sure again: the freshest
    /// answer, at the cost of L2 load during the outage. The default, and the right choice for
    /// data that must not be served stale (availability, order books).
    #[default]
    Bypass,
    /// Reads keep using L1 through a lost subscription or a pending gap, for at most `max_age`
    /// after the last moment the node was sure it had applied every change; then L1 is
    /// bypassed. The namespace's staleness bound becomes `max_age` (if longer than the node's
    /// bound). For data where a slightly old answer beats a load storm (market statistics).
    ServeStale {
        /// The longest a value may be served past the last confirmation.
        max_age: Duration,
    },
    /// Reads keep using L1 through a lost subscription or a pending gap for the node's bound
    /// after the last confirmation; past that, the namespace's L1 is emptied and refilled from
    /// L2 with entries that live at most `ttl`, until the node is sure again. The namespace's
    /// staleness bound becomes `max(B, ttl)`, and L1 keeps absorbing reads through a long
    /// outage. For hot data the origin could not reload at once but that must not be old for
    /// long (prices).
    ShortenedTtl {
        /// The longest an entry filled while the node is unsure lives in L1.
        ttl: Duration,
    },
}

impl NamespaceConfig {
    /// A namespace named `name` keyed under `key_namespace` with `ttl`; not event-driven, not
    /// critical, with a 64 MiB L1 budget until changed.
    pub fn new(name: impl Into<String>, key_namespace: impl Into<String>, ttl: Duration) -> Self {
        Self {
            name: name.into(),
            key_namespace: key_namespace.into(),
            ttl,
            event_driven: false,
            critical: false,
            max_memory_bytes: 64 * MIB,
            outage: OutagePolicy::Bypass,
            load_timeout: None,
            fail_safe: None,
            soft_timeout: None,
            eager_refresh: None,
            fill_lease: None,
        }
    }

    /// Turns fail-safe on: when a load of this namespace fails or times out, or L2 is
    /// unreachable, the last value of the entry is served for up to `max_stale` past its
    /// expiry (counted in `fail_safe_served`), and kept for a second so the failing source is
    /// not asked again at once. Only expired values are candidates: a value removed by an
    /// invalidation or a write is gone, so fail-safe never serves what the fleet was told to
    /// drop. Needs `critical` (an L1).
    pub fn fail_safe(mut self, max_stale: Duration) -> Self {
        self.fail_safe = Some(max_stale);
        self
    }

    /// Sets a soft timeout: when a load takes longer than `timeout` and the entry's last value
    /// is at hand under fail-safe, `get_or_load_owned` answers with it (counted in
    /// `soft_timeouts` and `fail_safe_served`) and the load goes on in the background and
    /// fills the cache when it ends. Needs [`NamespaceConfig::fail_safe`]; must be shorter
    /// than the [`NamespaceConfig::load_timeout`] (the hard one) when both are set.
    /// (`get_or_load`'s loader borrows from its caller, so it cannot outlive the call and
    /// waits for the load.)
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Turns eager refresh on: a `get_or_load_owned` hit on an L1 entry past `fraction` of its
    /// lifetime (for example 0.8: in its last fifth) starts one background load of the key,
    /// whose result replaces the entry, so a hot key never expires under load. The refresh
    /// takes a value another node already refreshed in L2 rather than loading again, and
    /// honours the fill lease. `fraction` is rounded to thousandths and must lie strictly
    /// between 0 and 1 (checked by [`validate`]). Needs `critical` (an L1).
    ///
    /// [`validate`]: NamespaceConfig::validate
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        let permille = (fraction * 1000.0).round();
        // Out of range (NaN included) is kept out of range, for `validate` to refuse.
        self.eager_refresh = Some(if (1.0..=999.0).contains(&permille) {
            permille as u16
        } else {
            0
        });
        self
    }

    /// Turns the fleet-wide fill lease on: a node that misses a key in L2 takes a lease on it
    /// in L2 for `hold`; the others that miss it meanwhile wait (woken by the release, not
    /// polling) for the holder's fill and read it from L2. A holder that dies frees the key
    /// when `hold` runs out; a waiter tries for the lease itself then, at most three times,
    /// and after that loads without one. Pick `hold` a little above the loader's usual
    /// duration (its p99): longer only delays the fleet when a holder dies.
    pub fn fill_lease(mut self, hold: Duration) -> Self {
        self.fill_lease = Some(hold);
        self
    }

    /// Sets how long a loader may run before `get_or_load` fails with a loader error (the
    /// load's other waiters too); default: no limit. Zero is refused by [`validate`].
    ///
    /// [`validate`]: NamespaceConfig::validate
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = Some(timeout);
        self
    }

    /// Sets what L1 does while the node cannot be sure it heard every change; default
    /// [`OutagePolicy::Bypass`].
    pub fn outage_policy(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// Sets whether changes are announced to the fleet.
    pub fn event_driven(mut self, yes: bool) -> Self {
        self.event_driven = yes;
        self
    }

    /// Sets whether entries are kept in L1.
    pub fn critical(mut self, yes: bool) -> Self {
        self.critical = yes;
        self
    }

    /// Sets the L1 budget in mebibytes, as the seed's `max_memory_mb`.
    pub fn max_memory_mb(mut self, mb: u64) -> Self {
        self.max_memory_bytes = mb.saturating_mul(MIB);
        self
    }

    /// Sets the L1 budget in bytes.
    pub fn max_memory_bytes(mut self, bytes: u64) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// Checks this namespace on its own: names in the safe alphabet, a non-zero TTL.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the field at fault, or [`ErrorKind::InvalidTtl`].
    pub fn validate(&self) -> Result<()> {
        check_name("name", &self.name)?;
        check_name("key_namespace", &self.key_namespace)?;
        if self.ttl.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidTtl,
                format!(
                    "namespace {:?}: the TTL must be greater than zero",
                    self.name
                ),
            ));
        }
        if self.fail_safe.is_some() && !self.critical {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "namespace {:?}: fail-safe serves values kept in L1, and the namespace has \
                     none (make it critical)",
                    self.name
                ),
            ));
        }
        if let Some(soft) = self.soft_timeout {
            if self.fail_safe.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "namespace {:?}: a soft timeout answers with the fail-safe value, and \
                         the namespace has no fail-safe (set fail_safe)",
                        self.name
                    ),
                ));
            }
            if soft.is_zero() || self.load_timeout.is_some_and(|hard| soft >= hard) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "namespace {:?}: the soft timeout ({soft:?}) must be above zero and \
                         below the load timeout ({:?})",
                        self.name, self.load_timeout
                    ),
                ));
            }
        }
        if let Some(permille) = self.eager_refresh {
            if !(1..=999).contains(&permille) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "namespace {:?}: eager refresh takes a fraction of the lifetime \
                         strictly between 0 and 1 (0.001 to 0.999)",
                        self.name
                    ),
                ));
            }
            if !self.critical {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "namespace {:?}: eager refresh watches entries in L1, and the \
                         namespace has none (make it critical)",
                        self.name
                    ),
                ));
            }
        }
        if self.fill_lease.is_some_and(|hold| hold.is_zero()) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "namespace {:?}: a fill lease held for zero time would never be waited on",
                    self.name
                ),
            ));
        }
        if self.load_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "namespace {:?}: a load timeout of zero would fail every load",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

const MIB: u64 = 1024 * 1024;
const MAX_NAME_LEN: usize = 64;

/// Names are limited to ASCII letters, digits, `_`, `-` and `.`: no `:` (the key delimiter) and no
/// glob characters, so a namespace can never widen a pattern or collide with another's prefix.
fn check_name(field: &str, value: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if value.is_empty() || value.len() > MAX_NAME_LEN || !value.chars().all(ok_char) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{field} {value:?} must be 1 to {MAX_NAME_LEN} characters from [A-Za-z0-9_.-] \
                 (no ':', '*', '?', '[', ']', '\\\\' or spaces)"
            ),
        ));
    }
    Ok(())
}

/// The set of configured namespaces, in insertion order.
///
/// Invariant: every namespace validates, no two share a `name`, and no two share a
/// `key_namespace` (so their key spaces cannot overlap: keys are `key_namespace:` + hash, and `:`
/// is not allowed inside a key namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    list: Vec<NamespaceConfig>,
}

impl Namespaces {
    /// No namespaces.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The seed's six cache types with exactly its values.
    pub fn defaults() -> Self {
        let s = Duration::from_secs;
        let list = vec![
            NamespaceConfig::new(GPU_AVAILABILITY, "gpu_avail", s(30))
                .event_driven(true)
                .critical(true)
                .max_memory_mb(100),
            NamespaceConfig::new(GPU_PRICING, "gpu_pricing", s(60))
                .event_driven(true)
                .critical(true)
                .max_memory_mb(50),
            NamespaceConfig::new(ORDER_BOOK, "order_book", s(5))
                .event_driven(true)
                .critical(true)
                .max_memory_mb(200),
            NamespaceConfig::new(PROVIDER_STATUS, "provider_status", s(120))
                .event_driven(true)
                .critical(false)
                .max_memory_mb(50),
            NamespaceConfig::new(MARKET_STATS, "market_stats", s(300))
                .event_driven(true)
                .critical(false)
                .max_memory_mb(100),
            NamespaceConfig::new(HISTORICAL_DATA, "historical", s(3600))
                .event_driven(false)
                .critical(false)
                .max_memory_mb(500),
        ];
        Self { list }
    }

    /// Adds a namespace.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when it does not validate, or its name or key namespace is
    /// already taken.
    pub fn add(&mut self, config: NamespaceConfig) -> Result<()> {
        config.validate()?;
        self.check_unique(&config, None)?;
        self.list.push(config);
        Ok(())
    }

    /// Replaces the namespace with the same `name`.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`] when none has that name; [`ErrorKind::InvalidConfig`] as for
    /// [`Namespaces::add`].
    pub fn replace(&mut self, config: NamespaceConfig) -> Result<()> {
        config.validate()?;
        let index = self
            .index_of(&config.name)
            .ok_or_else(|| Error::unknown_namespace(&config.name))?;
        self.check_unique(&config, Some(index))?;
        self.list[index] = config;
        Ok(())
    }

    /// Removes and returns the namespace named `name`.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`] when none has that name.
    pub fn remove(&mut self, name: &str) -> Result<NamespaceConfig> {
        let index = self
            .index_of(name)
            .ok_or_else(|| Error::unknown_namespace(name))?;
        Ok(self.list.remove(index))
    }

    /// The namespace named `name`.
    pub fn get(&self, name: &str) -> Option<&NamespaceConfig> {
        self.list.iter().find(|c| c.name == name)
    }

    /// The namespace whose key prefix is `key_namespace`.
    pub fn by_key_namespace(&self, key_namespace: &str) -> Option<&NamespaceConfig> {
        self.list.iter().find(|c| c.key_namespace == key_namespace)
    }

    /// Position of the namespace named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|c| c.name == name)
    }

    /// All namespaces, in insertion order.
    pub fn iter(&self) -> std::slice::Iter<'_, NamespaceConfig> {
        self.list.iter()
    }

    /// How many namespaces are configured.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn check_unique(&self, config: &NamespaceConfig, skip: Option<usize>) -> Result<()> {
        for (i, other) in self.list.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            if other.name == config.name {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("a namespace named {:?} already exists", config.name),
                ));
            }
            if other.key_namespace == config.key_namespace {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "namespaces {:?} and {:?} would share the key space {:?}",
                        other.name, config.name, config.key_namespace
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Namespaces {
    type Item = &'a NamespaceConfig;
    type IntoIter = std::slice::Iter<'a, NamespaceConfig>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// Name of the seed's GPU availability cache type.
pub const GPU_AVAILABILITY: &str = "gpu_availability";
/// Name of the seed's GPU pricing cache type.
pub const GPU_PRICING: &str = "gpu_pricing";
/// Name of the seed's order book cache type.
pub const ORDER_BOOK: &str = "order_book";
/// Name of the seed's provider status cache type.
pub const PROVIDER_STATUS: &str = "provider_status";
/// Name of the seed's market statistics cache type.
pub const MARKET_STATS: &str = "market_stats";
/// Name of the seed's historical data cache type.
pub const HISTORICAL_DATA: &str = "historical_data";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let ns = Namespaces::defaults();
        let expect = [
            ("gpu_availability", "gpu_avail", 30, true, true, 100),
            ("gpu_pricing", "gpu_pricing", 60, true, true, 50),
            ("order_book", "order_book", 5, true, true, 200),
            ("provider_status", "provider_status", 120, true, false, 50),
            ("market_stats", "market_stats", 300, true, false, 100),
            ("historical_data", "historical", 3600, false, false, 500),
        ];
        assert_eq!(ns.len(), expect.len());
        for (config, (name, key_ns, ttl, event, critical, mb)) in ns.iter().zip(expect) {
            assert_eq!(config.name, name);
            assert_eq!(config.key_namespace, key_ns);
            assert_eq!(config.ttl, Duration::from_secs(ttl));
            assert_eq!(config.event_driven, event, "{name}");
            assert_eq!(config.critical, critical, "{name}");
            assert_eq!(config.max_memory_bytes, mb * MIB, "{name}");
            config.validate().unwrap();
        }
    }

    #[test]
    fn names_outside_the_safe_alphabet_are_rejected() {
        for bad in [
            "",
            "a:b",
            "gpu*",
            "a?",
            "x[1]",
            "back\\slash",
            "with space",
            &"n".repeat(65),
        ] {
            let err = NamespaceConfig::new("ok", bad, Duration::from_secs(1))
                .validate()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad:?}");
            let err = NamespaceConfig::new(bad, "ok", Duration::from_secs(1))
                .validate()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad:?}");
        }
    }

    #[test]
    fn zero_ttl_is_rejected() {
        let err = NamespaceConfig::new("a", "a", Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidTtl);
    }

    #[test]
    fn add_replace_remove_and_overlap_checks() {
        let mut ns = Namespaces::defaults();
        ns.add(NamespaceConfig::new(
            "gpu_reviews",
            "reviews",
            Duration::from_secs(10),
        ))
        .unwrap();
        assert_eq!(ns.len(), 7);

        // Same key space as gpu_availability: rejected, nothing changed.
        let clash = NamespaceConfig::new("other", "gpu_avail", Duration::from_secs(10));
        assert_eq!(ns.add(clash).unwrap_err().kind(), ErrorKind::InvalidConfig);
        let dup = NamespaceConfig::new("gpu_reviews", "reviews2", Duration::from_secs(10));
        assert_eq!(ns.add(dup).unwrap_err().kind(), ErrorKind::InvalidConfig);
        assert_eq!(ns.len(), 7);

        // A prefix of another key namespace is fine: keys are delimited by ':'.
        ns.add(NamespaceConfig::new("gpu", "gpu", Duration::from_secs(10)))
            .unwrap();

        let changed =
            NamespaceConfig::new("order_book", "order_book", Duration::from_secs(2)).critical(true);
        ns.replace(changed.clone()).unwrap();
        assert_eq!(ns.get("order_book"), Some(&changed));
        let moved = NamespaceConfig::new("order_book", "historical", Duration::from_secs(2));
        assert_eq!(
            ns.replace(moved).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );

        assert_eq!(ns.remove("gpu_reviews").unwrap().key_namespace, "reviews");
        assert_eq!(
            ns.remove("gpu_reviews").unwrap_err().kind(),
            ErrorKind::UnknownNamespace
        );
        assert!(ns.by_key_namespace("gpu_avail").is_some());
    }
}
