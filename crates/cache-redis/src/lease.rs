//! Fill leases on Redis (see [`cache_core::L2Store::lease`]).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ec:{ns}:lease:<sha256 hex>` | string, `PX` | the holder's token, while the lease lasts |
//! | `ec:{ns}:filled:<sha256 hex>` | stream (one entry), `PX` | the last release of the key's lease |
//!
//! Taking a lease is one `SET NX PX`; a caller that finds it held gets, in the same script, the
//! lease's remaining time and the id of the key's last release. It then waits with
//! `XREAD BLOCK` for a release after that id, so a release that lands between the two steps
//! still ends the wait, and no one polls. A holder's release deletes the lease (if its token
//! still holds it) and appends to the stream. Blocking commands hold their connection, so waits
//! run on connections of their own, kept in a small idle pool, never on the shared one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{CacheKey, Error, ErrorKind, Lease, LeaseWait, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script, Value};

use crate::config::redact;
use crate::topology::Conn;

/// KEYS: the lease, the release stream; ARGV: token, hold in ms. Returns `{1}` when the lease
/// was taken, else `{0, ms left, id of the last release or '0-0'}`.
const LEASE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
local left = redis.call('PTTL', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local cursor = '0-0'
if #last > 0 then cursor = last[1][1] end
return {0, left, cursor}
";

/// KEYS: the lease, the release stream; ARGV: token, how long the stream is kept in ms.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '1', '*', 't', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Idle wait connections kept for later waits; more are opened when needed and closed after.
const IDLE_WAIT_CONNECTIONS: usize = 8;

/// How long a release record outlives its lease's hold: long enough for any waiter that found
/// the lease held to start its wait.
const RELEASE_KEPT: Duration = Duration::from_secs(10);

/// The lease scripts and the connections waits block on.
pub(crate) struct Leases {
    /// The shared connection, whose current server waits connect to.
    conn: Arc<Conn>,
    connect_timeout: Duration,
    response_timeout: Duration,
    url: String,
    lease: Script,
    release: Script,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Leases {
    pub(crate) fn new(
        conn: Arc<Conn>,
        connect_timeout: Duration,
        response_timeout: Duration,
        url: &str,
    ) -> Self {
        Self {
            conn,
            connect_timeout,
            response_timeout,
            url: redact(url),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) async fn lease(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        keys: &LeaseKeys,
        token: &str,
        hold: Duration,
    ) -> Result<Lease> {
        let reply: Vec<Value> = self
            .lease
            .key(&keys.lease)
            .key(&keys.released)
            .arg(token)
            .arg(millis(hold))
            .invoke_async(conn)
            .await
            .map_err(|e| self.fail("lease", e))?;
        let bad = || Error::new(ErrorKind::L2, "unexpected reply to the lease script");
        let mut reply = reply.into_iter();
        let taken: i64 = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(bad)?;
        if taken == 1 {
            return Ok(Lease::Acquired);
        }
        let left: i64 = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(bad)?;
        let cursor: String = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(bad)?;
        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
        Ok(Lease::Held(LeaseWait::new(left, cursor)))
    }

    pub(crate) async fn release(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        keys: &LeaseKeys,
        token: &str,
    ) -> Result<()> {
        let _: i64 = self
            .release
            .key(&keys.lease)
            .key(&keys.released)
            .arg(token)
            .arg(millis(RELEASE_KEPT))
            .invoke_async(conn)
            .await
            .map_err(|e| self.fail("lease release", e))?;
        Ok(())
    }

    /// `XREAD BLOCK` for a release after `wait.cursor`, on a wait connection.
    pub(crate) async fn wait(&self, keys: &LeaseKeys, wait: &LeaseWait) -> Result<bool> {
        if wait.remaining.is_zero() {
            return Ok(false);
        }
        let mut conn = self.take().await?;
        // `BLOCK 0` would wait for ever: at least a millisecond.
        let block_ms = millis(wait.remaining).max(1);
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&keys.released)
            .arg(&wait.cursor);
        let read = xread.query_async::<Value>(&mut conn);
        // The connection has no response timeout of its own (the block would trip it): a
        // server that stops answering is given the block plus the usual response time.
        let limit = wait.remaining + self.response_timeout;
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(reply)) => {
                self.put_back(conn);
                Ok(!matches!(reply, Value::Nil))
            }
            Ok(Err(e)) => Err(self.fail("lease wait", e)),
            Err(_) => Err(Error::new(
                ErrorKind::L2,
                format!("Redis lease wait ({}): no reply within {limit:?}", self.url),
            )),
        }
    }

    async fn take(&self) -> Result<MultiplexedConnection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        self.conn
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.fail("lease wait connect", e))
    }

    fn put_back(&self, conn: MultiplexedConnection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_WAIT_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn fail(&self, op: &str, e: redis::RedisError) -> Error {
        Error::new(
            ErrorKind::L2,
            format!("Redis {op} failed ({}): {e}", self.url),
        )
        .with_source(e)
    }
}

/// The two keys of one key's lease.
pub(crate) struct LeaseKeys {
    pub(crate) lease: String,
    pub(crate) released: String,
}

impl LeaseKeys {
    /// Under `ns_prefix` (`ec:{ns}:`), for `key`.
    pub(crate) fn new(ns_prefix: &str, key: &CacheKey) -> Self {
        let hex = key.digest().to_hex();
        Self {
            lease: format!("{ns_prefix}lease:{hex}"),
            released: format!("{ns_prefix}filled:{hex}"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
