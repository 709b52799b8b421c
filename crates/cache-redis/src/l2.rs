//! [`RedisL2`]: the shared second tier on Redis.
//!
//! # Key layout
//!
//! For a key namespace `ns` and prefix `ec:` (every key of a namespace shares the hash tag
//! `{ns}`, so one namespace lives in one Redis Cluster slot and its scripts stay single-slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ec:{ns}:g` | string (integer) | the namespace's generation, bumped by a namespace invalidation |
//! | `ec:{ns}:f` | string (integer) | the fence counter, bumped by deletes and tag invalidations |
//! | `ec:{ns}:<gen>:<sha256 hex>` | string | an entry: envelope (tags + value), with `PX` TTL |
//! | `ec:{ns}:t:<tag>` | set | the entry keys written with `tag` |
//! | `ec:{ns}:epoch` | hash | the namespace's event log: `e` its epoch |
//! | `ec:{ns}:log` | stream | the log: entry `<epoch>-<n>` holds field `m`, the event as published without its positions and closing brace; `<epoch>-0` marks the epoch's start |
//! | `ec:{ns}:lease:<hex>`, `ec:{ns}:filled:<hex>` | string, stream | a key's fill lease (see `lease.rs`) |
//!
//! # Event log
//!
//! Every script that announces a change also sequences it ([`cache_core::log`]): for each
//! namespace the change touches it `XADD`s the event to the namespace's stream under id
//! `<epoch>-*`, so that Redis gives the entry the next number of the epoch (dense: the last
//! plus one), starts a new epoch when the namespace has none or its stream is gone (the `TIME`
//! of that moment, in microseconds: a Redis that restarted empty, or lost either key to
//! eviction, starts another), trims the stream to about [`crate::RedisConfig::log_length`]
//! entries (`XTRIM MAXLEN ~`, once every 64 numbers), splices the positions into the event as
//! its last field and `PUBLISH`es it: the change, its position, its log entry and its
//! publication are one atomic step ([`L2Store::change_and_log`] runs the same scripts with no
//! channel: they log, publish nothing and return the message as it would have been published,
//! for a node whose bus is on another server to publish). The position is the stream's own id,
//! so a change costs one `HGET` of the epoch and one `XADD` over an unsequenced one, no counter
//! of its own. A receiver reads the log back with one script ([`L2Store::read_log`]): epoch,
//! head, the oldest number still held (the trim point), and the entries it asked for, by id
//! range, each with its position put back in.
//!
//! Namespace invalidation is one `INCR` whatever the number of keys: entries of older
//! generations are unreachable and expire on their own TTL. Tag invalidation deletes exactly the
//! members of the tag's set. A read is one `MGET` of the generation and the entries under the
//! generation this client last saw (a script re-reads under the right one when it moved), or a
//! plain `GET`/`MGET` of the entries while the generation it remembers is trusted (the node hears
//! every invalidation). Fills, tagged writes, deletes and tag invalidations are Lua scripts, so
//! checking and writing is atomic and one round trip. An untagged write under a trusted
//! generation is one small script that reads the generation and, only if it is still the one
//! written under, `SET`s the entry and publishes the write's event: one command, as close as
//! Redis allows to the `SET` + `PUBLISH` a hand-rolled cache would send (a write with nothing to
//! announce is a plain `SET` pipelined with a `GET` of the generation). Should the generation
//! have moved (an invalidation of the namespace this node has not applied yet, or a Redis that
//! restarted empty), a write under it would go where no reader looks, or where one would look
//! once the generation climbs back to it: the script writes and announces nothing (a plain `SET`
//! already made is deleted at once), and the write is made again by the SET script, under the
//! current generation and announced, since it came after
//! that invalidation and must outlive it. An entry's envelope
//! carries its tags and its writer's expiry time, from which a reader computes the remaining
//! lifetime less [`CLOCK_SKEW_MARGIN`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{
    log, CacheKey, Error, ErrorKind, Fence, L2Entry, L2Info, L2Store, L2Write, Lease, LeaseWait,
    LogPosition, LogRead, Logged, LoggedChange, Result,
};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};

use crate::config::{redact, RedisConfig};
use crate::lease::LeaseKeys;
use crate::topology::{Conn, Connector};

/// Returns the generation, then each entry under it ('' for a missing one).
const GET: &str = r"
local g = redis.call('GET', KEYS[1] .. 'g') or '0'
local out = {g}
for i = 1, #ARGV do
  out[i + 1] = redis.call('GET', KEYS[1] .. g .. ':' .. ARGV[i]) or ''
end
return out
";

/// The Lua functions every announcing script starts with (see [`crate::l2`]'s "Event log").
/// `announce(q, l, names, ev, maxlen, channel)` gives the change the next number of each
/// namespace it touches (`q[i]` the hash holding the namespace's epoch, `l[i]` its log stream,
/// `names[i]` its name as a JSON string): it appends the event to each log under id
/// `<epoch>-*`, so Redis numbers the entry itself (the last number plus one, dense within an
/// epoch), starting a new epoch (from Redis's clock) where the namespace has none or its stream
/// is gone, trims each log to about `maxlen` entries every `min(64, maxlen)` numbers, and
/// publishes the event with its positions as its last field on `channel`;
/// `announce1(q, l, name, ev, maxlen, channel)` does the same for one namespace, without
/// building tables (most changes touch one). All in the script's one atomic step, after the
/// change it announces. `ev` is the event *without its closing brace*: it is logged so (the
/// reader appends its position and the brace, [`parse_log_read`]) and published with the
/// positions appended in one concatenation. A `maxlen` of `'0'` (the event log switched off)
/// publishes the event as it is. An empty `channel` logs without publishing and returns the
/// message as it would have been published, for the caller to publish on another server
/// ([`L2Store::change_and_log`]); callers only pass one with a log.
macro_rules! announce_lua {
    () => {
        r#"
local function new_epoch(q, l)
  local t = redis.call('TIME')
  local e = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', q, 'e', e)
  if redis.call('EXISTS', l) == 1 then redis.call('DEL', l) end
  redis.call('XADD', l, e .. '-0', 'm', '')
  return e
end
local function append(q, l, ev, maxlen)
  local e = redis.call('HGET', q, 'e')
  if e then
    local id = redis.pcall('XADD', l, e .. '-*', 'm', ev)
    if type(id) == 'string' then
      local n = string.sub(id, #e + 2)
      if n ~= '0' then
        if tonumber(n) % math.min(64, tonumber(maxlen)) == 0 then
          redis.call('XTRIM', l, 'MAXLEN', '~', maxlen)
        end
        return e, n
      end
    end
  end
  e = new_epoch(q, l)
  redis.call('XADD', l, e .. '-1', 'm', ev)
  return e, '1'
end
local function announce1(q, l, name, ev, maxlen, channel)
  if maxlen == '0' then
    redis.call('PUBLISH', channel, ev .. '}')
    return
  end
  local e, n = append(q, l, ev, maxlen)
  local msg = ev .. ',"pos":[[' .. name .. ',' .. e .. ',' .. n .. ']]}'
  if channel == '' then return msg end
  redis.call('PUBLISH', channel, msg)
end
local function announce(q, l, names, ev, maxlen, channel)
  if maxlen == '0' then
    redis.call('PUBLISH', channel, ev .. '}')
    return
  end
  local parts = {}
  for i = 1, #names do
    local e, n = append(q[i], l[i], ev, maxlen)
    parts[i] = '[' .. names[i] .. ',' .. e .. ',' .. n .. ']'
  end
  local msg = ev .. ',"pos":[' .. table.concat(parts, ',') .. ']}'
  if channel == '' then return msg end
  redis.call('PUBLISH', channel, msg)
end
"#
    };
}

/// ARGV: hash, envelope, ttl ms, fenced ('0': no, '1': a fill, else a refresh: the 8-byte
/// writer's expiry of the live entry it may replace), expected generation, expected fence, channel
/// ('' to log without publishing), event ('' for none), namespace name (JSON), log length,
/// tags... The event is sequenced and published only after a write that happened. Returns
/// whether it wrote (1 or 0) and the generation it wrote under, then, when it logged without
/// publishing, the message as logged.
const SET: &str = concat!(
    announce_lua!(),
    r"
local g = redis.call('GET', KEYS[1] .. 'g') or '0'
local k = KEYS[1] .. g .. ':' .. ARGV[1]
if ARGV[4] ~= '0' then
  local f = redis.call('GET', KEYS[1] .. 'f') or '0'
  if g ~= ARGV[5] or f ~= ARGV[6] then return {0, g} end
  if not redis.call('SET', k, ARGV[2], 'PX', ARGV[3], 'NX') then
    if ARGV[4] == '1' then return {0, g} end
    local cur = redis.call('GET', k)
    if string.sub(cur, 2, 9) ~= ARGV[4] then return {0, g} end
    redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
  end
else
  redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
end
local ttl = tonumber(ARGV[3])
for i = 11, #ARGV do
  local t = KEYS[1] .. 't:' .. ARGV[i]
  redis.call('SADD', t, k)
  if redis.call('PTTL', t) < ttl then redis.call('PEXPIRE', t, ttl) end
end
if ARGV[8] ~= '' then
  local msg = announce1(KEYS[1] .. 'epoch', KEYS[1] .. 'log', ARGV[9], ARGV[8], ARGV[10], ARGV[7])
  if msg then return {1, g, msg} end
end
return {1, g}
"
);

/// The announced write under a remembered generation: `SET`, then sequence, log and `PUBLISH`
/// the event, only if that generation is still the namespace's, so a write never lands where no
/// reader looks and an event never goes out before its value can be read. One command, so one
/// Lua call and one reply. KEYS: the namespace's generation key, the entry's key (under the
/// remembered generation), the namespace's sequence hash and its log stream; ARGV: that
/// generation, envelope, TTL in ms, channel, event, the namespace's name as a JSON string, the
/// log's length. Returns the namespace's generation: the write was made if and only if it is
/// `ARGV[1]`.
///
/// Public so that tools can send exactly what a node sends: `cargo xtask bench` times it raw as
/// row 3's floor.
pub const SET_IF_CURRENT_SCRIPT: &str = concat!(
    announce_lua!(),
    r"
local g = redis.call('GET', KEYS[1]) or '0'
if g ~= ARGV[1] then return g end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
announce1(KEYS[3], KEYS[4], ARGV[6], ARGV[5], ARGV[7], ARGV[4])
return g
"
);

/// KEYS: the namespaces' prefixes; ARGV: channel ('' to log without publishing), event ('' for
/// none), log length, then each namespace's name as a JSON string, in the order of KEYS.
/// Returns the number of namespaces, and, when it logged without publishing, the message as
/// logged.
const INVALIDATE_NAMESPACES: &str = concat!(
    announce_lua!(),
    r"
for i = 1, #KEYS do redis.call('INCR', KEYS[i] .. 'g') end
if ARGV[2] ~= '' then
  local q, l, names = {}, {}, {}
  for i = 1, #KEYS do
    q[i] = KEYS[i] .. 'epoch'
    l[i] = KEYS[i] .. 'log'
    names[i] = ARGV[3 + i]
  end
  local msg = announce(q, l, names, ARGV[2], ARGV[3], ARGV[1])
  if msg then return {#KEYS, msg} end
end
return #KEYS
"
);

/// ARGV: channel ('' to log without publishing), event ('' for none), namespace name (JSON), log
/// length, then the hash of each key to remove (all of the namespace of KEYS[1]). Returns how
/// many entries it removed, and, when it logged without publishing, the message as logged: one
/// announcement however many keys.
const DELETE: &str = concat!(
    announce_lua!(),
    r"
local g = redis.call('GET', KEYS[1] .. 'g') or '0'
redis.call('INCR', KEYS[1] .. 'f')
local removed = 0
for i = 5, #ARGV do
  removed = removed + redis.call('DEL', KEYS[1] .. g .. ':' .. ARGV[i])
end
if ARGV[2] ~= '' then
  local msg = announce1(KEYS[1] .. 'epoch', KEYS[1] .. 'log', ARGV[3], ARGV[2], ARGV[4], ARGV[1])
  if msg then return {removed, msg} end
end
return removed
"
);

/// ARGV: tag, channel ('' to log without publishing), event ('' for none), namespace name
/// (JSON), log length. Returns how many entries it removed, and, when it logged without
/// publishing, the message as logged.
const INVALIDATE_TAG: &str = concat!(
    announce_lua!(),
    r"
local t = KEYS[1] .. 't:' .. ARGV[1]
local members = redis.call('SMEMBERS', t)
local removed = 0
for i = 1, #members, 512 do
  removed = removed + redis.call('DEL', unpack(members, i, math.min(i + 511, #members)))
end
redis.call('DEL', t)
redis.call('INCR', KEYS[1] .. 'f')
if ARGV[3] ~= '' then
  local msg = announce1(KEYS[1] .. 'epoch', KEYS[1] .. 'log', ARGV[4], ARGV[3], ARGV[5], ARGV[2])
  if msg then return {removed, msg} end
end
return removed
"
);

/// One namespace's log, read in one step. KEYS: the hash holding the epoch, the log stream;
/// ARGV: the number to read after, the most entries to return. A namespace without a log, or
/// whose stream is gone (or is not of its epoch), is given a new one (a new epoch, with nothing
/// in it), so that the empty log a restart leaves behind is another epoch than the one a reader
/// saw before it. Returns epoch, head, the first number held, then each entry's id
/// (`<epoch>-<n>`) and message (the event without its closing brace).
const READ_LOG: &str = concat!(
    announce_lua!(),
    r"
local e = redis.call('HGET', KEYS[1], 'e')
local last = {}
if e then last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1) end
if #last == 0 or string.sub(last[1][1], 1, #e + 1) ~= e .. '-' then
  return {new_epoch(KEYS[1], KEYS[2]), '0', '1'}
end
local head = tonumber(string.sub(last[1][1], #e + 2))
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first = math.max(1, tonumber(string.sub(oldest[1][1], #e + 2)))
local out = {e, tostring(head), tostring(first)}
local after = tonumber(ARGV[1])
if after < head then
  local entries = redis.call('XRANGE', KEYS[2], e .. '-' .. (after + 1), '+', 'COUNT', ARGV[2])
  for i = 1, #entries do
    out[#out + 1] = entries[i][1]
    out[#out + 1] = entries[i][2][2]
  end
end
return out
"
);

/// Sends `evalsha`, an `EVALSHA` of `script`; on `NOSCRIPT` (a Redis that restarted or flushed
/// its scripts since it was loaded; nothing ran) loads the script and sends it once more, as
/// redis-rs's `ScriptInvocation::invoke_async` does.
async fn evalsha_or_load<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    script: &Script,
    evalsha: &redis::Cmd,
) -> redis::RedisResult<T> {
    match evalsha.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            evalsha.query_async(conn).await
        }
        result => result,
    }
}

/// The L2 store on Redis: one auto-reconnecting multiplexed connection shared by every caller
/// (cloning a `RedisL2` shares it too), scripts for every multi-step operation.
///
/// When Redis is unreachable, calls fail with [`ErrorKind::L2`] within the response timeout;
/// the connection is re-established in the background and later calls succeed again.
#[derive(Clone)]
pub struct RedisL2 {
    conn: Arc<Conn>,
    prefix: String,
    max_value_bytes: usize,
    url: String,
    get: Script,
    set: Script,
    delete: Script,
    invalidate_tag: Script,
    invalidate_namespaces: Script,
    set_if_current: Script,
    read_log: Script,
    /// About how many entries each namespace's log keeps (`XADD ... MAXLEN ~`).
    log_length: u64,
    /// The last generation seen per namespace, the assumption reads start from.
    generations: Arc<Generations>,
    /// The channel events are announced on, and its route (server address + channel).
    channel: String,
    route: String,
    /// Fill leases, and the connections their waits block on.
    leases: Arc<crate::lease::Leases>,
    /// Which server instance answered the last [`L2Store::check_server`].
    identity: Arc<Identity>,
}

/// The server instance behind the connection, by its `run_id` (`INFO server`): another one
/// behind the same address (a failover behind a virtual IP, a DNS name or a proxy, or a
/// restart) moves [`L2Store::server_epoch`] as a Sentinel switch does.
#[derive(Default)]
struct Identity {
    /// The `run_id` last seen; `None` before the first check and after a Sentinel switch
    /// (which counts the move itself).
    run_id: std::sync::Mutex<Option<String>>,
    /// How many times it changed.
    changes: std::sync::atomic::AtomicU64,
}

impl Identity {
    /// Records `run_id`; returns whether it replaced another one.
    fn observe(&self, run_id: &str) -> bool {
        let mut seen = self
            .run_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = seen.as_deref().is_some_and(|before| before != run_id);
        if seen.as_deref() != Some(run_id) {
            *seen = Some(run_id.to_owned());
        }
        if changed {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        changed
    }

    fn forget(&self) {
        *self
            .run_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

impl RedisL2 {
    /// Connects (once; reconnection afterwards is automatic). Logs a warning when the server
    /// may evict keys (see [`L2Info::evicts_keys`]).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a URL that does not parse; [`ErrorKind::L2`] when Redis
    /// cannot be reached or refuses the credentials.
    pub async fn connect(config: &RedisConfig) -> Result<RedisL2> {
        let connector = Arc::new(Connector::new(config)?);
        let conn = Conn::connect(config, Arc::clone(&connector), ErrorKind::L2).await?;
        let route = connector.route(config);
        let generations: Arc<Generations> = Arc::default();
        let identity: Arc<Identity> = Arc::default();
        {
            // A new primary may lack the last generation bumps the old one made (replication
            // is asynchronous): nothing remembered of the old one is assumed of it. The switch
            // counts as the move; the new primary's run_id is the one compared from now on.
            let generations = Arc::clone(&generations);
            let identity = Arc::clone(&identity);
            conn.on_switch(Box::new(move || {
                generations.forget(None);
                identity.forget();
            }));
        }
        let l2 = RedisL2 {
            leases: Arc::new(crate::lease::Leases::new(
                Arc::clone(&conn),
                config.connect(),
                config.response(),
                config.url(),
            )),
            conn,
            prefix: config.prefix().to_owned(),
            max_value_bytes: config.max_value(),
            url: redact(config.url()),
            get: Script::new(GET),
            set: Script::new(SET),
            delete: Script::new(DELETE),
            invalidate_tag: Script::new(INVALIDATE_TAG),
            invalidate_namespaces: Script::new(INVALIDATE_NAMESPACES),
            set_if_current: Script::new(SET_IF_CURRENT_SCRIPT),
            read_log: Script::new(READ_LOG),
            log_length: config.log_len(),
            generations,
            channel: config.channel_name().to_owned(),
            route,
            identity,
        };
        // Loaded now so the first plain write does not meet NOSCRIPT (which it survives: it
        // loads the script then, as after a Redis restart).
        let mut conn = l2.conn.get();
        if let Err(e) = l2.set_if_current.load_async(&mut conn).await {
            tracing::debug!(url = %l2.url, error = %e, "SCRIPT LOAD failed; loaded on first use");
        }
        match l2.info().await {
            Ok(info) if info.evicts_keys == Some(true) => tracing::warn!(
                url = %l2.url,
                "Redis may evict keys when full (maxmemory is set and maxmemory-policy is not \
                 noeviction): an evicted generation counter or tag set can make invalidations \
                 miss entries; set maxmemory-policy noeviction (see docs/operations.md)"
            ),
            Ok(_) => {}
            // Not worth failing the connection over: some proxies refuse INFO.
            Err(e) => tracing::debug!(url = %l2.url, error = %e, "INFO memory could not be read"),
        }
        // The server every later check compares with.
        if let Err(e) = l2.check_server().await {
            tracing::debug!(url = %l2.url, error = %e, "the server's run_id could not be read");
        }
        Ok(l2)
    }

    /// `ec:{ns}:` — the start of every key of the namespace.
    fn ns_prefix(&self, key_namespace: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key_namespace.len() + 3);
        self.push_ns_prefix(&mut out, key_namespace);
        out
    }

    fn push_ns_prefix(&self, out: &mut String, key_namespace: &str) {
        out.push_str(&self.prefix);
        out.push('{');
        out.push_str(key_namespace);
        out.push_str("}:");
    }

    /// `ec:{ns}:g` — the namespace's generation.
    fn generation_key(&self, key_namespace: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key_namespace.len() + 4);
        self.push_generation_key(&mut out, key_namespace);
        out
    }

    /// Appends [`RedisL2::generation_key`].
    fn push_generation_key(&self, out: &mut String, key_namespace: &str) {
        self.push_ns_prefix(out, key_namespace);
        out.push('g');
    }

    /// Appends the key `key`'s entry has under `generation`: `ec:{ns}:<generation>:<hex>`.
    fn push_entry_key(
        &self,
        out: &mut String,
        key_namespace: &str,
        generation: u64,
        key: &CacheKey,
    ) {
        self.push_ns_prefix(out, key_namespace);
        let _ = write!(out, "{generation}:");
        key.digest().push_hex(out);
    }

    /// The fast write of `write`'s `envelope` under `generation`, in one round trip: with an
    /// announcement, the set-if-current script (loaded first if Redis does not have it), which
    /// writes and publishes only if `generation` is still current; without, a plain `SET` and,
    /// pipelined after it, the namespace's generation read back. Returns the generation read and
    /// the key written if the write was made under a generation that turned out not to be
    /// current (to be deleted).
    async fn plain_set(
        &self,
        conn: &mut ConnectionManager,
        write: &L2Write,
        generation: u64,
        envelope: &[u8],
        ttl_ms: u64,
    ) -> Result<(u64, Option<String>)> {
        let namespace = write.key.key_namespace();
        // Both keys in one buffer: the generation's, then the entry's.
        let mut keys = String::with_capacity(2 * (self.prefix.len() + namespace.len()) + 96);
        self.push_generation_key(&mut keys, namespace);
        let generation_end = keys.len();
        self.push_entry_key(&mut keys, namespace, generation, &write.key);
        let (generation_key, entry_key) = keys.split_at(generation_end);
        let Some(event) = &write.announce else {
            let (current,): (Option<u64>,) = redis::pipe()
                .cmd("SET")
                .arg(entry_key)
                .arg(envelope)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("GET")
                .arg(generation_key)
                .query_async(conn)
                .await
                .map_err(|e| self.fail("SET", e))?;
            let current = current.unwrap_or(0);
            return Ok((
                current,
                (current != generation).then(|| entry_key.to_owned()),
            ));
        };
        // The EVALSHA built as one command: redis-rs's `ScriptInvocation` would first copy each
        // argument (the envelope and the event too) into a buffer of its own, then all of them
        // again into the command.
        let mut evalsha = redis::cmd("EVALSHA");
        let mut log_keys = String::with_capacity(2 * (self.prefix.len() + namespace.len()) + 8);
        self.push_ns_prefix(&mut log_keys, namespace);
        log_keys.push_str("epoch");
        let sequence_end = log_keys.len();
        self.push_ns_prefix(&mut log_keys, namespace);
        log_keys.push_str("log");
        let (sequence_key, log_key) = log_keys.split_at(sequence_end);
        evalsha
            .arg(self.set_if_current.get_hash())
            .arg(4)
            .arg(generation_key)
            .arg(entry_key)
            .arg(sequence_key)
            .arg(log_key)
            .arg(generation)
            .arg(envelope)
            .arg(ttl_ms)
            .arg(&self.channel)
            .arg(open_event(event)?)
            .arg(json_name(namespace))
            .arg(self.log_length);
        let current: Option<u64> = evalsha_or_load(conn, &self.set_if_current, &evalsha)
            .await
            .map_err(|e| self.fail("SET", e))?;
        Ok((current.unwrap_or(0), None))
    }

    /// `write`'s envelope and TTL in milliseconds.
    ///
    /// # Errors
    /// [`ErrorKind::ValueTooLarge`] over the configured limit.
    fn envelope(&self, write: &L2Write) -> Result<(Vec<u8>, u64)> {
        if write.bytes.len() > self.max_value_bytes {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "{}: value of {} bytes exceeds the L2 limit of {} bytes; nothing was sent",
                    write.key,
                    write.bytes.len(),
                    self.max_value_bytes
                ),
            ));
        }
        let ttl_ms = u64::try_from(write.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let expires_at_ms = unix_millis().saturating_add(ttl_ms);
        Ok((
            envelope::encode(expires_at_ms, &write.tags, &write.bytes),
            ttl_ms,
        ))
    }

    /// The SET script for `write`; `channel` and `event` as [`SET`] takes them. Returns whether
    /// it wrote and, when it logged without publishing, the message as logged.
    async fn set_script(
        &self,
        conn: &mut ConnectionManager,
        write: &L2Write,
        envelope: Vec<u8>,
        ttl_ms: u64,
        channel: &str,
        event: &[u8],
    ) -> Result<(bool, Option<Vec<u8>>)> {
        let namespace = write.key.key_namespace();
        let epoch = self.generations.epoch();
        let (fenced, generation, fence) = match write.fence {
            Some(Fence(f)) => (
                // A refresh names the entry it may replace by its writer's expiry, as stored.
                write
                    .replaces
                    .map_or_else(|| b"1".to_vec(), |version| version.to_be_bytes().to_vec()),
                (f >> 32).to_string(),
                (f & 0xffff_ffff).to_string(),
            ),
            None => (b"0".to_vec(), String::new(), String::new()),
        };
        let mut invocation = self.set.key(self.ns_prefix(namespace));
        invocation
            .arg(write.key.digest().to_hex())
            .arg(envelope)
            .arg(ttl_ms)
            .arg(fenced)
            .arg(generation)
            .arg(fence)
            .arg(channel)
            .arg(event)
            .arg(json_name(namespace))
            .arg(self.log_length);
        for tag in &write.tags {
            invocation.arg(tag);
        }
        let reply: Vec<Value> = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| self.fail("SET", e))?;
        let bad = || Error::new(ErrorKind::L2, "unexpected reply to the SET script");
        let mut reply = reply.into_iter();
        let written: i64 = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(bad)?;
        let generation: u64 = reply
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(bad)?;
        let message = match reply.next() {
            Some(v) => Some(redis::from_redis_value::<Vec<u8>>(v).map_err(|_| bad())?),
            None => None,
        };
        // Remembered as a read's generation is, so the next write can skip the script.
        self.generations.remember(namespace, generation, epoch);
        Ok((written == 1, message))
    }

    /// The INVALIDATE_NAMESPACES script; `channel` and `event` as it takes them.
    async fn invalidate_namespaces_script<T: redis::FromRedisValue>(
        &self,
        key_namespaces: &[String],
        channel: &str,
        event: &[u8],
    ) -> Result<T> {
        let mut conn = self.conn.get();
        let mut invocation = self.invalidate_namespaces.prepare_invoke();
        for key_namespace in key_namespaces {
            invocation.key(self.ns_prefix(key_namespace));
        }
        invocation.arg(channel).arg(event).arg(self.log_length);
        for key_namespace in key_namespaces {
            invocation.arg(json_name(key_namespace));
        }
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("invalidate and announce", e))
    }

    /// The channel and event to pass a script: empty for none.
    fn announcement<'a>(&'a self, announce: &'a Option<Vec<u8>>) -> Result<(&'a str, &'a [u8])> {
        match announce {
            Some(event) => Ok((self.channel.as_str(), open_event(event)?)),
            None => Ok(("", &[])),
        }
    }

    async fn delete_with(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        let (channel, event) = self.announcement(&announce)?;
        let removed: i64 = self.delete_script(keys, channel, event).await?;
        Ok(u64::try_from(removed).unwrap_or(0))
    }

    /// The DELETE script; `channel` and `event` as [`DELETE`] takes them. `keys` are of one
    /// namespace (the first key's; callers check).
    async fn delete_script<T: redis::FromRedisValue>(
        &self,
        keys: &[CacheKey],
        channel: &str,
        event: &[u8],
    ) -> Result<T> {
        let Some(first) = keys.first() else {
            return Err(Error::new(ErrorKind::L2, "DEL of no key"));
        };
        let namespace = first.key_namespace();
        if keys.iter().any(|k| k.key_namespace() != namespace) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "keys removed in one step must share a namespace",
            ));
        }
        let mut conn = self.conn.get();
        let mut invocation = self.delete.key(self.ns_prefix(namespace));
        invocation
            .arg(channel)
            .arg(event)
            .arg(json_name(namespace))
            .arg(self.log_length);
        for key in keys {
            invocation.arg(key.digest().to_hex());
        }
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("DEL", e))
    }

    async fn invalidate_tag_with(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Option<Vec<u8>>,
    ) -> Result<u64> {
        let (channel, event) = self.announcement(&announce)?;
        self.invalidate_tag_script(key_namespace, tag, channel, event)
            .await
    }

    /// The INVALIDATE_TAG script; `channel` and `event` as [`INVALIDATE_TAG`] takes them.
    async fn invalidate_tag_script<T: redis::FromRedisValue>(
        &self,
        key_namespace: &str,
        tag: &str,
        channel: &str,
        event: &[u8],
    ) -> Result<T> {
        let mut conn = self.conn.get();
        self.invalidate_tag
            .key(self.ns_prefix(key_namespace))
            .arg(tag)
            .arg(channel)
            .arg(event)
            .arg(json_name(key_namespace))
            .arg(self.log_length)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("tag invalidation", e))
    }

    fn known_generation(&self, key_namespace: &str) -> Option<u64> {
        self.generations.known(key_namespace)
    }

    /// The generation remembered for the namespace, if there is one and it is trusted (the
    /// node hears every invalidation), so plain reads and writes may go under it.
    fn trusted_generation(&self, key_namespace: &str) -> Option<u64> {
        if self.generations.trusted() {
            self.known_generation(key_namespace)
        } else {
            None
        }
    }

    fn fail(&self, op: &str, e: redis::RedisError) -> Error {
        // Under Sentinel the primary may have moved: ask which it is now.
        self.conn.suspect();
        Error::new(
            ErrorKind::L2,
            format!("Redis {op} failed ({}): {e}", self.url),
        )
        .with_source(e)
    }

    /// The server this store talks to now, `host:port` (under Sentinel, the primary it last
    /// found; it changes when the store follows a failover).
    pub fn server(&self) -> String {
        self.conn.addr()
    }

    /// How many times this store moved to a new primary (always 0 on one server).
    pub fn primaries_followed(&self) -> u64 {
        self.conn.switches()
    }

    /// The entry keys of one namespace's generation, for tests and tools: `ec:{ns}:<gen>:`.
    pub async fn generation(&self, key_namespace: &str) -> Result<u64> {
        let mut conn = self.conn.get();
        let g: Option<u64> = conn
            .get(self.generation_key(key_namespace))
            .await
            .map_err(|e| self.fail("GET", e))?;
        Ok(g.unwrap_or(0))
    }
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl L2Store for RedisL2 {
    async fn get(&self, key: &CacheKey) -> Result<Option<L2Entry>> {
        let namespace = key.key_namespace();
        if let Some(generation) = self.trusted_generation(namespace) {
            // The common read: one plain GET, its reply's bytes handed on as they are. The key
            // is spelled in a per-thread scratch buffer (the command copies it), so a read
            // allocates no string of its own.
            let mut get = redis::cmd("GET");
            SCRATCH_KEY.with_borrow_mut(|entry_key| {
                entry_key.clear();
                self.push_entry_key(entry_key, namespace, generation, key);
                get.arg(entry_key.as_str());
            });
            let mut conn = self.conn.get();
            let reply: Value = get
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("GET", e))?;
            return decode_entry(key, reply, unix_millis());
        }
        let mut found = self.get_many(std::slice::from_ref(key)).await?;
        Ok(found.pop().flatten())
    }

    /// Reads under the generation this client last saw, in one `MGET` of the generation and the
    /// entries. If Redis's generation is another (an invalidation since), the script reads
    /// again under the right one and the new generation is remembered. One command, one round
    /// trip and no Lua in the common case; the entries' expiry travels in their envelope.
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<L2Entry>>> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        // One read per namespace: keys of one namespace share a slot.
        if keys
            .iter()
            .any(|k| k.key_namespace() != first.key_namespace())
        {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.get(key).await?);
            }
            return Ok(out);
        }
        let namespace = first.key_namespace();
        let prefix = self.ns_prefix(namespace);
        let mut conn = self.conn.get();
        let epoch = self.generations.epoch();
        if let Some(assumed) = self.known_generation(namespace) {
            let trusted = self.generations.trusted();
            // A single trusted key is a plain GET, the cheapest read Redis has.
            let mut read = redis::cmd(if trusted && keys.len() == 1 {
                "GET"
            } else {
                "MGET"
            });
            if !trusted {
                read.arg(format!("{prefix}g"));
            }
            let mut entry_key = String::with_capacity(prefix.len() + 24 + 64);
            for key in keys {
                entry_key.clear();
                self.push_entry_key(&mut entry_key, namespace, assumed, key);
                read.arg(entry_key.as_str());
            }
            let reply: Value = read
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("MGET", e))?;
            let values = match reply {
                Value::Array(values) => values,
                single => vec![single],
            };
            if trusted {
                // Every invalidation of the namespace reaches the node as an event, which makes
                // it forget the generation before it is applied: the one remembered is current
                // for every read that starts after the node applied an invalidation.
                return decode_entries(keys, values);
            }
            let (generation, entries) = split_generation(values)?;
            if generation == assumed {
                return decode_entries(keys, entries);
            }
        }
        let mut invocation = self.get.key(&prefix);
        for key in keys {
            invocation.arg(key.digest().to_hex());
        }
        let values: Vec<Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("GET", e))?;
        let (generation, entries) = split_generation(values)?;
        self.generations.remember(namespace, generation, epoch);
        decode_entries(keys, entries)
    }

    async fn set(&self, write: L2Write) -> Result<bool> {
        let (envelope, ttl_ms) = self.envelope(&write)?;
        let namespace = write.key.key_namespace();
        let mut conn = self.conn.get();
        if write.fence.is_none() && write.tags.is_empty() {
            if let Some(generation) = self.trusted_generation(namespace) {
                // The common write, in one round trip: with an announcement, one small script
                // that checks the generation, SETs and PUBLISHes (the event follows the change);
                // without, a plain SET with the generation read back after it.
                //
                // The generation is current unless something moved it that this node has not
                // applied yet: an invalidation of the namespace on its way here, or a Redis that
                // restarted empty (its generations start again from 0). On a mismatch the script
                // writes and announces nothing (a write under that generation would land where no
                // reader looks, or where the namespace would one day climb back to and expose
                // it, and an event for it would go out before its value could be read); a plain
                // SET already made is deleted at once. The generation is forgotten, and the
                // write made again by the SET script below, under the current generation, with
                // its announcement. It must not be dropped: the mismatch proves the invalidation
                // came first, and other nodes may have written or filled the key under the new
                // generation since, with older values.
                let (current, dead_entry) = self
                    .plain_set(&mut conn, &write, generation, &envelope, ttl_ms)
                    .await?;
                if current == generation {
                    return Ok(true);
                }
                self.generations.forget(Some(namespace));
                if let Some(entry_key) = dead_entry {
                    let _: i64 = conn
                        .del(entry_key.as_str())
                        .await
                        .map_err(|e| self.fail("DEL", e))?;
                }
            }
        }
        let (channel, event) = self.announcement(&write.announce)?;
        let (written, _) = self
            .set_script(&mut conn, &write, envelope, ttl_ms, channel, event)
            .await?;
        Ok(written)
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.delete_with(std::slice::from_ref(key), None).await? > 0)
    }

    async fn delete_and_announce(&self, key: &CacheKey, announce: Vec<u8>) -> Result<bool> {
        Ok(self
            .delete_with(std::slice::from_ref(key), Some(announce))
            .await?
            > 0)
    }

    async fn delete_many(&self, keys: &[CacheKey], announce: Option<Vec<u8>>) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.delete_with(keys, announce).await
    }

    async fn invalidate_namespace(&self, key_namespace: &str) -> Result<()> {
        self.invalidate_namespaces(&[key_namespace.to_owned()], None)
            .await
    }

    async fn invalidate_namespaces(
        &self,
        key_namespaces: &[String],
        announce: Option<Vec<u8>>,
    ) -> Result<()> {
        let mut conn = self.conn.get();
        let Some(event) = announce else {
            // A pipeline of INCRs: one round trip, and no script touching several namespaces
            // (which Redis Cluster would refuse as cross-slot).
            let mut pipe = redis::pipe();
            for key_namespace in key_namespaces {
                pipe.incr(self.generation_key(key_namespace), 1).ignore();
            }
            let () = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("INCR", e))?;
            return Ok(());
        };
        let _: i64 = self
            .invalidate_namespaces_script(key_namespaces, &self.channel, open_event(&event)?)
            .await?;
        Ok(())
    }

    async fn change_and_log(&self, change: LoggedChange, event: Vec<u8>) -> Result<Logged> {
        if !self.sequenced() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "this RedisL2 keeps no event log (RedisConfig::without_event_log)",
            ));
        }
        let event = open_event(&event)?;
        // An empty channel: each script logs the change and returns the message as logged.
        let reply: Value = match change {
            LoggedChange::Set(write) => {
                let (envelope, ttl_ms) = self.envelope(&write)?;
                let mut conn = self.conn.get();
                let (written, message) = self
                    .set_script(&mut conn, &write, envelope, ttl_ms, "", event)
                    .await?;
                return Ok(Logged::new(u64::from(written), message));
            }
            LoggedChange::Delete(key) => {
                self.delete_script(std::slice::from_ref(&key), "", event)
                    .await?
            }
            LoggedChange::DeleteMany(keys) => self.delete_script(&keys, "", event).await?,
            LoggedChange::InvalidateTag { key_namespace, tag } => {
                self.invalidate_tag_script(&key_namespace, &tag, "", event)
                    .await?
            }
            LoggedChange::InvalidateNamespaces(key_namespaces) => {
                self.invalidate_namespaces_script(&key_namespaces, "", event)
                    .await?
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("RedisL2 cannot log {other:?}"),
                ))
            }
        };
        logged_reply(reply)
    }

    fn announce_route(&self) -> Option<String> {
        Some(self.route.clone())
    }

    fn sequenced(&self) -> bool {
        self.log_length > 0
    }

    async fn read_log(&self, key_namespace: &str, after: u64, limit: usize) -> Result<LogRead> {
        if !self.sequenced() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "this RedisL2 keeps no event log (RedisConfig::without_event_log)",
            ));
        }
        let prefix = self.ns_prefix(key_namespace);
        let mut conn = self.conn.get();
        let reply: Vec<Value> = self
            .read_log
            .key(format!("{prefix}epoch"))
            .key(format!("{prefix}log"))
            .arg(after)
            .arg(limit.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("log read", e))?;
        parse_log_read(key_namespace, reply)
    }

    fn namespace_invalidated(&self, key_namespace: &str) {
        self.generations.forget(Some(key_namespace));
    }

    fn invalidation_feed(&self, complete: i64, incomplete: i64) {
        self.generations.feed(complete, incomplete);
    }

    async fn invalidate_tag(&self, key_namespace: &str, tag: &str) -> Result<u64> {
        self.invalidate_tag_with(key_namespace, tag, None).await
    }

    async fn invalidate_tag_and_announce(
        &self,
        key_namespace: &str,
        tag: &str,
        announce: Vec<u8>,
    ) -> Result<u64> {
        self.invalidate_tag_with(key_namespace, tag, Some(announce))
            .await
    }

    async fn fence(&self, key: &CacheKey) -> Result<Fence> {
        let prefix = self.ns_prefix(key.key_namespace());
        let mut conn = self.conn.get();
        let (g, f): (Option<u64>, Option<u64>) = conn
            .mget(&[format!("{prefix}g"), format!("{prefix}f")])
            .await
            .map_err(|e| self.fail("MGET", e))?;
        let (g, f) = (g.unwrap_or(0), f.unwrap_or(0));
        if g > u64::from(u32::MAX) || f > u64::from(u32::MAX) {
            // Past 2^32 invalidations the packed form no longer fits: no fence, no fenced write.
            return Err(Error::new(
                ErrorKind::L2,
                format!("fence counters of {} exceed 32 bits", key.key_namespace()),
            ));
        }
        Ok(Fence((g << 32) | f))
    }

    fn server_epoch(&self) -> u64 {
        self.conn.switches()
            + self
                .identity
                .changes
                .load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn check_server(&self) -> Result<()> {
        let mut conn = self.conn.get();
        let info: String = match redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            // A proxy that refuses INFO: which server answers cannot be told this way.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) || e.code().is_some() => {
                return Ok(())
            }
            Err(e) => return Err(self.fail("INFO server", e)),
        };
        let Some(run_id) = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::trim)
        else {
            return Ok(());
        };
        if self.identity.observe(run_id) {
            // Generation bumps the old server made may be missing here.
            self.generations.forget(None);
            tracing::warn!(url = %self.url, "another Redis server answers at this address (a failover or a restart): it may lack acknowledged changes");
        }
        Ok(())
    }

    async fn lease(&self, key: &CacheKey, token: &str, hold: Duration) -> Result<Lease> {
        let keys = LeaseKeys::new(&self.ns_prefix(key.key_namespace()), key);
        let mut conn = self.conn.get();
        self.leases.lease(&mut conn, &keys, token, hold).await
    }

    async fn wait_lease(&self, key: &CacheKey, wait: &LeaseWait) -> Result<bool> {
        let keys = LeaseKeys::new(&self.ns_prefix(key.key_namespace()), key);
        self.leases.wait(&keys, wait).await
    }

    async fn release_lease(&self, key: &CacheKey, token: &str) -> Result<()> {
        let keys = LeaseKeys::new(&self.ns_prefix(key.key_namespace()), key);
        let mut conn = self.conn.get();
        self.leases.release(&mut conn, &keys, token).await
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.get();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail("PING", e))?;
        Ok(())
    }

    async fn info(&self) -> Result<L2Info> {
        let mut conn = self.conn.get();
        let text: String = redis::cmd("INFO")
            .arg("memory")
            .arg("clients")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail("INFO", e))?;
        Ok(L2Info::new(
            info_field(&text, "used_memory"),
            info_field(&text, "connected_clients"),
        )
        .with_evicts_keys(evicts_keys(&text)))
    }
}

/// Whether a Redis whose `INFO memory` reads `info` may evict keys: a `maxmemory` is set and its
/// policy is not `noeviction`. `None` when `INFO` does not tell (a proxy that hides it).
fn evicts_keys(info: &str) -> Option<bool> {
    let maxmemory = info_field(info, "maxmemory")?;
    let policy = info_value(info, "maxmemory_policy")?;
    Some(maxmemory > 0 && policy != "noeviction")
}

thread_local! {
    /// Where the hot paths spell an entry's key before a command copies it.
    static SCRATCH_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The value of `name` in `INFO` text (`name:value` lines).
fn info_value<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A whole-number `INFO` field.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info_value(info, name)?.parse().ok()
}

/// The generation this client last saw per namespace, and whether it may be used without
/// asking Redis.
///
/// A remembered generation always saves the read script: a read sends one `MGET` of the
/// generation and the entries under it, and only re-reads when Redis's generation differs. While
/// the nodes using this store hear every invalidation (see [`L2Store::invalidation_feed`]), it
/// is trusted outright and a read is a plain `GET`/`MGET` of the entries: an applied
/// invalidation makes the node forget the generation first ([`L2Store::namespace_invalidated`]),
/// and a generation learned by a read that raced such a forgetting is not kept (`epoch`).
#[derive(Debug, Default)]
struct Generations {
    map: std::sync::RwLock<std::collections::HashMap<String, u64>>,
    /// Bumped (under the map's write lock) by every forgetting.
    epoch: std::sync::atomic::AtomicU64,
    complete: std::sync::atomic::AtomicI64,
    incomplete: std::sync::atomic::AtomicI64,
}

impl Generations {
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn trusted(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.incomplete.load(SeqCst) <= 0 && self.complete.load(SeqCst) > 0
    }

    fn known(&self, key_namespace: &str) -> Option<u64> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_namespace)
            .copied()
    }

    /// Keeps `generation` unless something was forgotten since `epoch` was read.
    fn remember(&self, key_namespace: &str, generation: u64, epoch: u64) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.epoch() == epoch {
            map.insert(key_namespace.to_owned(), generation);
        }
    }

    /// Forgets one namespace's generation, or all of them.
    fn forget(&self, key_namespace: Option<&str>) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match key_namespace {
            Some(ns) => {
                map.remove(ns);
            }
            None => map.clear(),
        }
    }

    fn feed(&self, complete: i64, incomplete: i64) {
        use std::sync::atomic::Ordering::SeqCst;
        // Whatever was remembered before the change is not vouched for by the new state.
        self.forget(None);
        self.complete.fetch_add(complete, SeqCst);
        self.incomplete.fetch_add(incomplete, SeqCst);
    }
}

/// How much earlier than its writer's clock says an entry is taken to expire when a reader
/// computes its remaining lifetime: absorbs clock differences between nodes, so an L1 copy never
/// outlives the Redis entry.
pub const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(1);

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An encoded event without its closing brace, as the announcing scripts take it (they append
/// the positions and the brace in one concatenation).
///
/// # Errors
/// [`ErrorKind::MalformedEvent`] for bytes that do not end in `}`: no event of ours.
fn open_event(event: &[u8]) -> Result<&[u8]> {
    event.strip_suffix(b"}").ok_or_else(|| {
        Error::new(
            ErrorKind::MalformedEvent,
            "an announced event must be a JSON object; nothing was written",
        )
    })
}

/// A namespace's name as a JSON string, as a position names it on the wire.
fn json_name(key_namespace: &str) -> String {
    serde_json::to_string(key_namespace).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The reply of a script that logged without publishing: its count, then the message as
/// logged.
fn logged_reply(reply: Value) -> Result<Logged> {
    let bad = || Error::new(ErrorKind::L2, "unexpected reply to a logged change");
    let Value::Array(values) = reply else {
        return Err(bad());
    };
    let Ok([count, message]) = <[Value; 2]>::try_from(values) else {
        return Err(bad());
    };
    let count: u64 = redis::from_redis_value(count).map_err(|_| bad())?;
    let message: Vec<u8> = redis::from_redis_value(message).map_err(|_| bad())?;
    Ok(Logged::new(count, Some(message)))
}

/// The reply of [`READ_LOG`]: epoch, head, first, then id and message of each entry.
fn parse_log_read(key_namespace: &str, reply: Vec<Value>) -> Result<LogRead> {
    let bad = |what: &str| {
        Error::new(
            ErrorKind::L2,
            format!("unexpected reply to a read of {key_namespace}'s log: {what}"),
        )
    };
    let text = |value: &Value| -> Option<String> {
        match value {
            Value::BulkString(text) => String::from_utf8(text.clone()).ok(),
            Value::SimpleString(text) => Some(text.clone()),
            Value::Int(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut values = reply.into_iter();
    let mut head_field = |name: &str| -> Result<u64> {
        values
            .next()
            .as_ref()
            .and_then(text)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(name))
    };
    let epoch = head_field("epoch")?;
    let head = head_field("head")?;
    let first = head_field("first")?;
    let rest: Vec<Value> = values.collect();
    let mut entries = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let [id, message] = pair else {
            return Err(bad("an entry without its message"));
        };
        // An entry id is `<epoch>-<n>`.
        let seq = text(id)
            .and_then(|id| {
                let (e, n) = id.split_once('-')?;
                (e.parse::<u64>().ok()? == epoch).then_some(())?;
                n.parse::<u64>().ok()
            })
            .ok_or_else(|| bad("an entry id"))?;
        let Value::BulkString(message) = message else {
            return Err(bad("an entry's message"));
        };
        // Logged without its closing brace: the position goes where the script put it in the
        // published copy.
        let mut event = Vec::with_capacity(message.len() + 1);
        event.extend_from_slice(message);
        event.push(b'}');
        let position = LogPosition::new(key_namespace, epoch, seq);
        entries.push((seq, log::splice_positions(&event, &[position])));
    }
    Ok(LogRead::new(epoch, head, first, entries))
}

/// The generation at the head of a read's reply, and the entries after it.
fn split_generation(mut values: Vec<Value>) -> Result<(u64, Vec<Value>)> {
    if values.is_empty() {
        return Err(Error::new(ErrorKind::L2, "empty reply to a read"));
    }
    let entries = values.split_off(1);
    let head = &values[0];
    let generation = match head {
        Value::Nil => Some(0),
        Value::BulkString(text) => std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let generation = generation.ok_or_else(|| {
        Error::new(
            ErrorKind::L2,
            format!("unexpected generation in a read's reply: {head:?}"),
        )
    })?;
    Ok((generation, entries))
}

fn decode_entries(keys: &[CacheKey], entries: Vec<Value>) -> Result<Vec<Option<L2Entry>>> {
    if entries.len() != keys.len() {
        return Err(Error::new(
            ErrorKind::L2,
            format!("{} entries read for {} keys", entries.len(), keys.len()),
        ));
    }
    let now_ms = unix_millis();
    keys.iter()
        .zip(entries)
        .map(|(key, entry)| decode_entry(key, entry, now_ms))
        .collect()
}

/// Takes the reply's bytes over as the entry's (the envelope's header is cut off in place), so a
/// read copies the value no more than redis-rs already did.
fn decode_entry(key: &CacheKey, entry: Value, now_ms: u64) -> Result<Option<L2Entry>> {
    let mut raw = match entry {
        Value::Nil => return Ok(None),
        Value::BulkString(raw) if raw.is_empty() => return Ok(None),
        Value::BulkString(raw) => raw,
        other => {
            return Err(Error::new(
                ErrorKind::L2,
                format!("{key}: unexpected reply for an entry: {other:?}"),
            ));
        }
    };
    let Some((expires_at_ms, tags, value)) = envelope::decode(&raw) else {
        return Err(Error::new(
            ErrorKind::Decode,
            format!("{key}: the stored entry is not an edge-cache envelope"),
        ));
    };
    let margin = u64::try_from(CLOCK_SKEW_MARGIN.as_millis()).unwrap_or(u64::MAX);
    let remaining =
        Duration::from_millis(expires_at_ms.saturating_sub(now_ms).saturating_sub(margin));
    let header = raw.len() - value.len();
    raw.drain(..header);
    Ok(Some(
        L2Entry::new(raw, remaining)
            .with_tags(tags)
            .with_version(expires_at_ms),
    ))
}

/// The stored form of an entry: `0x02`, the writer's expiry in Unix milliseconds (8 bytes,
/// big-endian), the tags as a JSON array with a 4-byte big-endian length, then the value's
/// bytes. Binary-safe whatever the value codec; carrying the expiry spares readers a `PTTL`.
pub(crate) mod envelope {
    const FORMAT: u8 = 2;

    pub(crate) fn encode(expires_at_ms: u64, tags: &[String], value: &[u8]) -> Vec<u8> {
        let tags_json = if tags.is_empty() {
            b"[]".to_vec()
        } else {
            serde_json::to_vec(tags).unwrap_or_else(|_| b"[]".to_vec())
        };
        let len = u32::try_from(tags_json.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(1 + 8 + 4 + tags_json.len() + value.len());
        out.push(FORMAT);
        out.extend_from_slice(&expires_at_ms.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&tags_json);
        out.extend_from_slice(value);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<(u64, Vec<String>, &[u8])> {
        let (&format, rest) = raw.split_first()?;
        if format != FORMAT || rest.len() < 12 {
            return None;
        }
        let (expires, rest) = rest.split_at(8);
        let expires_at_ms = u64::from_be_bytes(expires.try_into().ok()?);
        let (len, rest) = rest.split_at(4);
        let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (tags, value) = rest.split_at(len);
        let tags = if tags == b"[]" {
            Vec::new()
        } else {
            serde_json::from_slice(tags).ok()?
        };
        Some((expires_at_ms, tags, value))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_rejects_foreign_bytes() {
            let tags = vec!["gpu:g-1".to_owned(), "p\n1".to_owned()];
            let raw = encode(1_700_000_000_123, &tags, b"{\"a\":1}\n\x00bin");
            let (expires, t, v) = decode(&raw).unwrap();
            assert_eq!(expires, 1_700_000_000_123);
            assert_eq!(t, tags);
            assert_eq!(v, b"{\"a\":1}\n\x00bin");
            assert!(
                decode(&encode(1, &[], b"")).is_some_and(|(_, t, v)| t.is_empty() && v.is_empty())
            );
            assert!(decode(b"{\"plain\": \"json\"}").is_none());
            assert!(decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'[']).is_none());
            assert!(
                decode(&[1, 0, 0, 0, 2, b'[', b']']).is_none(),
                "the previous format is refused"
            );
            assert!(decode(&[]).is_none());
        }
    }
}
