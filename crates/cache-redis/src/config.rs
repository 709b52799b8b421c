//! Connection settings shared by the Redis L2 store and the Redis event bus.

use std::fmt;
use std::time::Duration;

/// The seed's channel name, the default for invalidation events.
pub const DEFAULT_CHANNEL: &str = "cache_invalidation_events";

/// Default prefix of every key edge-cache writes.
pub const DEFAULT_KEY_PREFIX: &str = "ec:";

/// Default bound on the bytes a subscription holds for its node: 8 MiB, some 25,000 events.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 << 20;

/// The smallest bound [`RedisConfig::max_queued_bytes`] takes: room for the largest event.
pub const MIN_QUEUED_BYTES: usize = 2 * cache_core::MAX_EVENT_BYTES;

/// Default largest value accepted by the L2 store: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// How many announced changes each namespace's event log keeps by default: at 1,000 changes a
/// second to one namespace, 10 seconds of history, several times the default staleness bound,
/// in about 4 MB of Redis memory per namespace (an event is about 350 bytes).
pub const DEFAULT_LOG_LENGTH: u64 = 10_000;

/// How to reach Redis and how to behave when it goes away.
///
/// ```
/// use std::time::Duration;
/// use cache_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://edge:s3cret@10.0.0.5:6380/2")
///     .channel("marketplace_invalidation")
///     .response_timeout(Duration::from_millis(250));
/// assert_eq!(config.url(), "redis://edge:s3cret@10.0.0.5:6380/2");
/// ```
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    url: String,
    channel: String,
    key_prefix: String,
    max_value_bytes: usize,
    log_length: u64,
    response_timeout: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    ping_interval: Duration,
    max_queued_bytes: usize,
    tls_root_certificate: Option<Vec<u8>>,
    /// The client certificate and key (PEM) for mutual TLS.
    tls_client: Option<(Vec<u8>, Vec<u8>)>,
    allow_plaintext: bool,
    allow_insecure_tls: bool,
}

/// Everything but secrets: the URL's password is redacted and the client key never shown.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("channel", &self.channel)
            .field("key_prefix", &self.key_prefix)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("log_length", &self.log_length)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &(self.reconnect_min, self.reconnect_max))
            .field("ping_interval", &self.ping_interval)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("tls_root_certificate", &self.tls_root_certificate.is_some())
            .field("tls_client_certificate", &self.tls_client.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .field("allow_insecure_tls", &self.allow_insecure_tls)
            .finish()
    }
}

impl RedisConfig {
    /// Settings for `url`: `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS
    /// (feature `tls`). Every other setting has its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            channel: DEFAULT_CHANNEL.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            log_length: DEFAULT_LOG_LENGTH,
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(25),
            reconnect_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            tls_root_certificate: None,
            tls_client: None,
            allow_plaintext: false,
            allow_insecure_tls: false,
        }
    }

    /// The pub/sub channel events travel on; default [`DEFAULT_CHANNEL`].
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The prefix of every key written; default [`DEFAULT_KEY_PREFIX`]. Fleets sharing one Redis
    /// database with different prefixes do not see each other's entries, and an ACL can hold
    /// each to its own (`~<prefix>*`; docs/security.md). It may not contain `{` or `}`
    /// (`connect` refuses it).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The largest encoded value a write accepts; larger ones fail with
    /// `ErrorKind::ValueTooLarge` before anything is sent. Default [`DEFAULT_MAX_VALUE_BYTES`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// About how many announced changes each namespace's event log keeps (Redis trims a stream
    /// in whole blocks, so it may keep somewhat more). A node that missed more changes than
    /// the log holds drops that namespace's L1 instead of replaying; see
    /// [`cache_core::log`]. Default [`DEFAULT_LOG_LENGTH`]; at least 1 (see
    /// [`RedisConfig::without_event_log`] to keep none).
    pub fn log_length(mut self, entries: u64) -> Self {
        self.log_length = entries.max(1);
        self
    }

    /// Keeps no event log: announcements are published but not sequenced or logged, as before
    /// edge-cache had logs. Nodes then drop the L1 of event-driven namespaces whenever their
    /// subscription is lost and again when it is back, cannot notice a lost message or a deaf
    /// link, and promise no staleness bound. For comparison runs (`cargo xtask bench` measures
    /// what the log costs) and for fleets that cannot afford the log's memory.
    pub fn without_event_log(mut self) -> Self {
        self.log_length = 0;
        self
    }

    /// How long a command may wait for its reply before it fails (default 1 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long a connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The first and the longest wait between reconnection attempts of the event subscriber;
    /// the wait doubles from `min` up to `max` (defaults 25 ms and 2 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The most bytes of messages a subscription holds that its node has not taken yet
    /// (default [`DEFAULT_MAX_QUEUED_BYTES`], at least [`MIN_QUEUED_BYTES`]). A flood beyond it
    /// is dropped and reported as a lost connection (`Disconnected`, then `Resubscribed` once
    /// half the room is free): the node treats what it missed as it treats an outage, by
    /// replaying its event logs (or, without them, by dropping its event-driven L1). Memory
    /// stays bounded however fast anyone publishes.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes.max(MIN_QUEUED_BYTES);
        self
    }

    /// How often the subscriber pings Redis to notice a connection that died silently
    /// (default 1 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Trusts `pem` (a PEM root certificate, e.g. the fleet's private CA) for `rediss://`
    /// connections instead of the public webpki roots.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// Presents `certificate_pem` with its `key_pem` to the server (mutual TLS, for a Redis run
    /// with `tls-auth-clients yes`). The key never appears in `Debug` or in any message.
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Allows a plain-text `redis://` URL to a host that is not loopback. Off by default: the
    /// password, the events and the values would cross the network readable by anyone on the
    /// path; use `rediss://`.
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// Allows a `rediss://...#insecure` URL, which skips checking the server's certificate.
    /// Off by default: anyone on the path could then pose as the server.
    pub fn allow_insecure_tls(mut self, allow: bool) -> Self {
        self.allow_insecure_tls = allow;
        self
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The event channel.
    pub fn channel_name(&self) -> &str {
        &self.channel
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.key_prefix
    }

    pub(crate) fn max_value(&self) -> usize {
        self.max_value_bytes
    }

    pub(crate) fn log_len(&self) -> u64 {
        self.log_length
    }
    pub(crate) fn response(&self) -> Duration {
        self.response_timeout
    }
    pub(crate) fn connect(&self) -> Duration {
        self.connect_timeout
    }
    pub(crate) fn backoff(&self) -> (Duration, Duration) {
        (self.reconnect_min, self.reconnect_max)
    }
    pub(crate) fn ping_every(&self) -> Duration {
        self.ping_interval
    }

    pub(crate) fn queue_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    /// The shared, auto-reconnecting command connection, checked with a PING: a server that
    /// wants a password accepts the connection and refuses the first command, so a missing or
    /// wrong password is reported here, at start-up, as a connection failure of `kind`.
    pub(crate) async fn connection_manager(
        &self,
        client: &redis::Client,
        kind: cache_core::ErrorKind,
    ) -> cache_core::Result<redis::aio::ConnectionManager> {
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let fail = |e: redis::RedisError| {
            cache_core::Error::new(
                kind,
                format!("cannot connect to Redis at {}: {e}", redact(&self.url)),
            )
            .with_source(e)
        };
        let mut conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(fail)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        Ok(conn)
    }

    /// Where events go for this configuration: the server's address and the channel (pub/sub
    /// channels are server-wide, whatever the database).
    pub(crate) fn route(&self, client: &redis::Client) -> String {
        format!(
            "redis://{}#{}",
            client.get_connection_info().addr(),
            self.channel
        )
    }

    /// Opens a client for the URL.
    pub(crate) fn client(&self) -> cache_core::Result<redis::Client> {
        self.client_for(&self.url)
    }

    /// The checks every URL passes before a client is made for it: the transport (see
    /// `allow_plaintext`), the key prefix, and TLS support.
    pub(crate) fn check(&self, url: &str) -> cache_core::Result<()> {
        self.check_transport(url)?;
        // A brace in the prefix would become the hash tag of every key (Redis Cluster hashes
        // the first `{...}`), and would let a prefix and a namespace spell another prefix's
        // keys: keys are `<prefix>{<namespace>}:...`, namespaces hold no brace, so with none in
        // the prefix either a key splits back into its prefix and namespace one way only.
        if self.key_prefix.contains(['{', '}']) {
            return Err(cache_core::Error::new(
                cache_core::ErrorKind::InvalidConfig,
                format!(
                    "key prefix {:?} must not contain '{{' or '}}' (they steer Redis Cluster's \
                     hash slot and would make key spaces overlap)",
                    self.key_prefix
                ),
            ));
        }
        #[cfg(not(feature = "tls"))]
        if url.starts_with("rediss") {
            return Err(cache_core::Error::new(
                cache_core::ErrorKind::InvalidConfig,
                format!(
                    "{}: rediss:// needs cache-redis built with the `tls` feature",
                    redact(url)
                ),
            ));
        }
        Ok(())
    }

    /// Opens a client for `url` (this config's, or a data node's that Sentinel named) with this
    /// config's TLS settings, after the same checks.
    pub(crate) fn client_for(&self, url: &str) -> cache_core::Result<redis::Client> {
        self.check(url)?;
        #[cfg(feature = "tls")]
        {
            // rustls needs one process-wide crypto provider; if the application installed its
            // own first, that one stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[cfg(feature = "tls")]
        let client = if self.tls_root_certificate.is_some() || self.tls_client.is_some() {
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: self.tls_client.as_ref().map(|(cert, key)| {
                        redis::ClientTlsConfig {
                            client_cert: cert.clone(),
                            client_key: key.clone(),
                        }
                    }),
                    root_cert: self.tls_root_certificate.clone(),
                },
            )
        } else {
            redis::Client::open(url)
        };
        #[cfg(not(feature = "tls"))]
        let client = redis::Client::open(url);
        client.map_err(|e| {
            cache_core::Error::new(
                cache_core::ErrorKind::InvalidConfig,
                format!("invalid Redis URL {}: {e}", redact(url)),
            )
            .with_source(e)
        })
    }
}

impl RedisConfig {
    /// Refuses a plain-text URL to a host that is not loopback, and a TLS URL that skips
    /// certificate checks, unless the config opted in.
    fn check_transport(&self, url: &str) -> cache_core::Result<()> {
        let refuse = |why: String| {
            Err(cache_core::Error::new(
                cache_core::ErrorKind::InvalidConfig,
                format!("{}: {why}", redact(url)),
            ))
        };
        if url.starts_with("redis://") && !self.allow_plaintext && !is_loopback(url) {
            return refuse(
                "plain-text redis:// to a host that is not loopback would send the password, \
                 events and values readable on the network; use rediss://, or opt in with \
                 RedisConfig::allow_plaintext(true)"
                    .to_owned(),
            );
        }
        if url.starts_with("rediss://") && url.ends_with("#insecure") && !self.allow_insecure_tls {
            return refuse(
                "#insecure skips checking the server's certificate; trust the fleet's CA with \
                 tls_root_certificate instead, or opt in with \
                 RedisConfig::allow_insecure_tls(true)"
                    .to_owned(),
            );
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if !self.allow_plaintext
                && !hosts
                    .split(',')
                    .all(|host| is_loopback(&format!("redis://{host}")))
            {
                return refuse(
                    "plain-text redis+sentinel:// to Sentinels that are not loopback would \
                     send the password, events and values readable on the network; use \
                     rediss+sentinel://, or opt in with RedisConfig::allow_plaintext(true)"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

/// Whether the host of `url` is loopback: `localhost`, `127.0.0.0/8` or `::1`.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let shown = match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{shown}@{host}")
        }
        None => url.to_owned(),
    };
    // A Sentinel URL's `sentinel_password=` query parameter is a password too.
    match shown.split_once("sentinel_password=") {
        Some((before, after)) => {
            let tail = after.find('&').map_or("", |i| &after[i..]);
            format!("{before}sentinel_password=***{tail}")
        }
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://edge:s3cret@h:6379/0"),
            "redis://edge:***@h:6379/0"
        );
        assert_eq!(redact("rediss://:s3cret@h:6380"), "rediss://:***@h:6380");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("redis+sentinel://u:pw@h:1/m?sentinel_user=s&sentinel_password=sp&x=1"),
            "redis+sentinel://u:***@h:1/m?sentinel_user=s&sentinel_password=***&x=1"
        );
    }

    #[test]
    fn a_bad_url_is_a_config_error_without_the_password() {
        let err = RedisConfig::new("http://edge:s3cret@h")
            .client()
            .unwrap_err();
        assert_eq!(err.kind(), cache_core::ErrorKind::InvalidConfig);
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn loopback_hosts_are_told_apart_from_the_rest() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user:pw@127.0.0.2/0",
            "redis://localhost",
            "redis://[::1]:6379/1",
            "redis://:p@ss:word@127.0.0.1:1",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "redis://10.0.0.5:6379",
            "redis://redis.internal",
            "redis://127.0.0.1.evil.example:6379",
            "redis://user:127.0.0.1@10.0.0.5",
            "redis://[2001:db8::1]:6379",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn plain_text_off_loopback_and_insecure_tls_need_an_opt_in() {
        let refused = |config: RedisConfig| {
            let err = config.client().unwrap_err();
            assert_eq!(err.kind(), cache_core::ErrorKind::InvalidConfig);
            assert!(!err.to_string().contains("s3cret"), "{err}");
            err.to_string()
        };
        let text = refused(RedisConfig::new("redis://edge:s3cret@10.0.0.5:6379"));
        assert!(text.contains("allow_plaintext"), "{text}");
        assert!(RedisConfig::new("redis://edge:s3cret@10.0.0.5:6379")
            .allow_plaintext(true)
            .client()
            .is_ok());
        assert!(RedisConfig::new("redis://127.0.0.1:6379").client().is_ok());
        let text = refused(RedisConfig::new(
            "rediss://edge:s3cret@10.0.0.5:6380/#insecure",
        ));
        assert!(text.contains("allow_insecure_tls"), "{text}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let config = RedisConfig::new("redis://edge:s3cret@127.0.0.1:6379/0");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("edge:***@127.0.0.1"), "{shown}");
    }
}
