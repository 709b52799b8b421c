//! Where the Redis that L2 and the bus talk to is: one server named by its URL, or the primary
//! a set of Sentinels names (`redis+sentinel://`), followed through failovers.
//!
//! [`Connector`] resolves the current primary. [`Conn`] is the shared command connection every
//! caller clones: for one server, a `ConnectionManager` (which reconnects on its own); under
//! Sentinel, the same, rebuilt on the new primary when a call fails and the Sentinels name
//! another one (a promoted replica), so nodes follow a failover without a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use redis::aio::ConnectionManager;

use crate::config::{redact, RedisConfig};

/// The URL schemes of a Sentinel-managed primary.
const SENTINEL_SCHEMES: [&str; 2] = ["redis+sentinel://", "rediss+sentinel://"];

/// After a failed call, how long before the Sentinels are asked again.
const RESOLVE_EVERY: Duration = Duration::from_millis(100);

/// A Sentinel-managed primary: `redis+sentinel://[user[:password]@]host:port[,host:port...]/master[/db]`.
/// The credentials and database are the data nodes'; the Sentinels are asked without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelSpec {
    /// `host:port` of each Sentinel, in the order given.
    pub(crate) sentinels: Vec<String>,
    /// The master name the Sentinels monitor.
    pub(crate) master: String,
    /// `user:password@` or empty, as written.
    userinfo: String,
    /// `/db` or empty.
    db: String,
    /// Whether the data nodes speak TLS (`rediss+sentinel://`).
    tls: bool,
    /// `user:password@`, `:password@` or empty: how the Sentinels themselves are asked
    /// (`?sentinel_user=…&sentinel_password=…`).
    sentinel_auth: String,
}

impl SentinelSpec {
    /// The spec of `url`, `None` when it is not a Sentinel URL.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a Sentinel URL without Sentinels or master name.
    pub(crate) fn parse(url: &str) -> Option<Result<SentinelSpec>> {
        let scheme = SENTINEL_SCHEMES.iter().find(|s| url.starts_with(*s))?;
        let rest = &url[scheme.len()..];
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{}: {why} (expected redis+sentinel://[user:password@]host:port[,host:port]/master[/db])",
                    redact(url)
                ),
            )
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), authority),
        };
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if sentinels.is_empty() || sentinels.iter().any(|h| !h.contains(':')) {
            return Some(Err(bad("every Sentinel needs host:port")));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let (mut sentinel_user, mut sentinel_password) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sentinel_user", user)) => sentinel_user = Some(user),
                Some(("sentinel_password", password)) => sentinel_password = Some(password),
                _ => {
                    return Some(Err(bad(
                        "the only query parameters are sentinel_user and sentinel_password",
                    )))
                }
            }
        }
        let sentinel_auth = match (sentinel_user, sentinel_password) {
            (None, None) => String::new(),
            (user, Some(password)) => format!("{}:{password}@", user.unwrap_or_default()),
            (Some(_), None) => return Some(Err(bad("sentinel_user needs sentinel_password"))),
        };
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Some(Err(bad("the master name is missing")));
        }
        Some(Ok(SentinelSpec {
            sentinels,
            master: master.to_owned(),
            userinfo,
            db: if db.is_empty() {
                String::new()
            } else {
                format!("/{db}")
            },
            tls: scheme.starts_with("rediss"),
            sentinel_auth,
        }))
    }

    /// The URL of the data node at `host:port`, with this spec's credentials and database.
    fn node_url(&self, host: &str, port: u16) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}{host}:{port}{}", self.userinfo, self.db)
    }

    /// The route events take: the same for every node of the fleet whatever the primary is.
    pub(crate) fn route(&self, channel: &str) -> String {
        format!(
            "redis+sentinel://{}/{}#{channel}",
            self.sentinels.join(","),
            self.master
        )
    }
}

/// Resolves the server to talk to.
#[derive(Debug)]
pub(crate) enum Connector {
    /// One server: its client, from the URL.
    Single(redis::Client),
    /// The primary the Sentinels name.
    Sentinel {
        spec: SentinelSpec,
        config: Box<RedisConfig>,
    },
}

impl Connector {
    /// The connector `config` describes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a URL that does not parse or is refused.
    pub(crate) fn new(config: &RedisConfig) -> Result<Connector> {
        if config.url().starts_with("redis+cluster://")
            || config.url().starts_with("rediss+cluster://")
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{}: Redis Cluster is not supported yet (docs/scaling.md has the planned \
                     layout); use one server or a Sentinel-managed primary \
                     (redis+sentinel://)",
                    redact(config.url())
                ),
            ));
        }
        match SentinelSpec::parse(config.url()) {
            None => Ok(Connector::Single(config.client()?)),
            Some(spec) => {
                config.check(config.url())?;
                Ok(Connector::Sentinel {
                    spec: spec?,
                    config: Box::new(config.clone()),
                })
            }
        }
    }

    /// The route events take (see `L2Store::announce_route`).
    pub(crate) fn route(&self, config: &RedisConfig) -> String {
        match self {
            Connector::Single(client) => config.route(client),
            Connector::Sentinel { spec, .. } => spec.route(config.channel_name()),
        }
    }

    /// A client of the current primary, and its address.
    ///
    /// # Errors
    /// `kind` when no Sentinel answers, none names a primary that answers as one.
    pub(crate) async fn resolve(&self, kind: ErrorKind) -> Result<(redis::Client, String)> {
        let (spec, config) = match self {
            Connector::Single(client) => {
                let addr = client.get_connection_info().addr().to_string();
                return Ok((client.clone(), addr));
            }
            Connector::Sentinel { spec, config } => (spec, config),
        };
        let mut why = Vec::new();
        for sentinel in &spec.sentinels {
            match self.ask(sentinel, spec, config).await {
                Ok(found) => return Ok(found),
                Err(e) => why.push(format!("{sentinel}: {e}")),
            }
        }
        Err(Error::new(
            kind,
            format!(
                "no Sentinel named a primary for {:?}: {}",
                spec.master,
                why.join("; ")
            ),
        ))
    }

    /// Asks one Sentinel for the primary, then checks the primary says it is one (a Sentinel
    /// that has not heard of a failover yet names the old one).
    async fn ask(
        &self,
        sentinel: &str,
        spec: &SentinelSpec,
        config: &RedisConfig,
    ) -> std::result::Result<(redis::Client, String), String> {
        let timeout = config.connect();
        let client = redis::Client::open(format!("redis://{}{sentinel}", spec.sentinel_auth))
            .map_err(|e| e.to_string())?;
        let mut conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let addr: Option<(String, u16)> = tokio::time::timeout(
            config.response(),
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&spec.master)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| "no reply".to_owned())?
        .map_err(|e| e.to_string())?;
        let (host, port) = addr.ok_or_else(|| format!("does not know {:?}", spec.master))?;
        let node = config
            .client_for(&spec.node_url(&host, port))
            .map_err(|e| e.to_string())?;
        let mut data = tokio::time::timeout(timeout, node.get_multiplexed_async_connection())
            .await
            .map_err(|_| format!("the primary it names, {host}:{port}: connect timed out"))?
            .map_err(|e| format!("the primary it names, {host}:{port}: {e}"))?;
        // `INFO replication` rather than `ROLE`: the ACL line in docs/operations.md allows
        // INFO, and ROLE is in @dangerous.
        let info: String = tokio::time::timeout(
            config.response(),
            redis::cmd("INFO").arg("replication").query_async(&mut data),
        )
        .await
        .map_err(|_| format!("the primary it names, {host}:{port}: no reply to INFO"))?
        .map_err(|e| format!("the primary it names, {host}:{port}: {e}"))?;
        if !info.lines().any(|line| line.trim() == "role:master") {
            return Err(format!(
                "the primary it names, {host}:{port} is not a primary (yet)"
            ));
        }
        Ok((node, format!("{host}:{port}")))
    }
}

/// The shared command connection, following the primary under Sentinel.
pub(crate) struct Conn {
    connector: Arc<Connector>,
    config: RedisConfig,
    kind: ErrorKind,
    current: RwLock<Current>,
    /// A re-resolution is running.
    resolving: AtomicBool,
    /// Primaries switched to since start.
    switches: AtomicU64,
    /// Told when the primary changes (the L2 store forgets what it remembered of the old one).
    on_switch: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

struct Current {
    manager: ConnectionManager,
    client: redis::Client,
    addr: String,
}

impl Conn {
    /// Resolves the server and connects to it.
    ///
    /// # Errors
    /// `kind` when it cannot be reached (see `RedisConfig::connection_manager`).
    pub(crate) async fn connect(
        config: &RedisConfig,
        connector: Arc<Connector>,
        kind: ErrorKind,
    ) -> Result<Arc<Conn>> {
        let (client, addr) = connector.resolve(kind).await?;
        let manager = config.connection_manager(&client, kind).await?;
        Ok(Arc::new(Conn {
            connector,
            config: config.clone(),
            kind,
            current: RwLock::new(Current {
                manager,
                client,
                addr,
            }),
            resolving: AtomicBool::new(false),
            switches: AtomicU64::new(0),
            on_switch: Mutex::new(Vec::new()),
        }))
    }

    /// The connection to send on (cheap: a handle on the shared one).
    pub(crate) fn get(&self) -> ConnectionManager {
        self.read().manager.clone()
    }

    /// A client of the server currently talked to, for connections of its own (lease waits,
    /// subscriptions).
    pub(crate) fn client(&self) -> redis::Client {
        self.read().client.clone()
    }

    /// The address currently talked to.
    pub(crate) fn addr(&self) -> String {
        self.read().addr.clone()
    }

    /// How many times the primary changed.
    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(SeqCst)
    }

    /// Calls `f` whenever the primary changes.
    pub(crate) fn on_switch(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.on_switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(f);
    }

    /// A call failed: under Sentinel, ask which server is the primary now (once at a time, at
    /// most every [`RESOLVE_EVERY`]) and move to it if it changed. One server: nothing to do,
    /// its connection reconnects by itself.
    pub(crate) fn suspect(self: &Arc<Self>) {
        if matches!(*self.connector, Connector::Single(_)) || self.resolving.swap(true, SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.follow().await;
            tokio::time::sleep(RESOLVE_EVERY).await;
            this.resolving.store(false, SeqCst);
        });
    }

    async fn follow(&self) {
        let (client, addr) = match self.connector.resolve(self.kind).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "primary not resolved yet");
                return;
            }
        };
        if addr == self.addr() {
            return;
        }
        let manager = match self.config.connection_manager(&client, self.kind).await {
            Ok(manager) => manager,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the new primary does not answer yet");
                return;
            }
        };
        let old = {
            let mut current = self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let old = std::mem::replace(&mut current.addr, addr.clone());
            current.manager = manager;
            current.client = client;
            old
        };
        self.switches.fetch_add(1, SeqCst);
        tracing::warn!(from = %old, to = %addr, "following the new primary the Sentinels name");
        for f in self
            .on_switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            f();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse_and_bad_ones_say_why() {
        let spec = SentinelSpec::parse(
            "redis+sentinel://edge:pw@10.0.0.1:26379,10.0.0.2:26379/edge-cache/2",
        )
        .unwrap()
        .unwrap();
        assert_eq!(spec.sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(spec.master, "edge-cache");
        assert_eq!(
            spec.node_url("10.0.0.9", 6379),
            "redis://edge:pw@10.0.0.9:6379/2"
        );
        assert_eq!(
            spec.route("events"),
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/edge-cache#events"
        );
        let with_auth = SentinelSpec::parse("redis+sentinel://h:1/m/3?sentinel_password=sp")
            .unwrap()
            .unwrap();
        assert_eq!(
            (with_auth.sentinel_auth.as_str(), with_auth.db.as_str()),
            (":sp@", "/3")
        );
        let bad = SentinelSpec::parse("redis+sentinel://h:1/m?sentinel_pass=sp")
            .unwrap()
            .unwrap_err();
        assert!(bad.to_string().contains("query parameters"), "{bad}");
        let tls = SentinelSpec::parse("rediss+sentinel://h:1/m")
            .unwrap()
            .unwrap();
        assert_eq!(tls.node_url("n", 7), "rediss://n:7");
        assert!(SentinelSpec::parse("redis://h:1/0").is_none());
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel:///m",
            "redis+sentinel://h/m",
        ] {
            let err = SentinelSpec::parse(bad).unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(
                err.to_string().contains("expected redis+sentinel://"),
                "{err}"
            );
        }
        // A cluster URL says what is supported instead of failing to parse.
        let err =
            Connector::new(&RedisConfig::new("redis+cluster://u:secret@h:1,h:2")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("not supported yet"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        // The password never shows.
        let err = SentinelSpec::parse("redis+sentinel://u:secret@h:1/")
            .unwrap()
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
