//! The Redis store (SPEC §7, §8).
//!
//! Key layout (`P` = `revocation.key_prefix`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{rev}:e:<kind>:<value>` | string | one revocation entry: `"<expires_at> <issued_before or -> <reason>"` (Unix seconds); `EXAT expires_at`, no TTL for a lock without one |
//! | `P{rev}:stream` | stream | revocation events (same fields + `at`, the writer's ms), `MAXLEN ~ stream_max_len` |
//! | `P jt:<sha256 hex>` | string | a join token's record (JSON), `EX ttl`, consumed with `GETDEL` |
//! | `P once:<key>` | string | a one-time-use key, `SET NX EXAT` |
//! | `P rate:<key>` | hash | a token bucket (`t` tokens, `ts` ms), `PEXPIRE period` |
//! | `P inv:<spiffe id>` | hash | inventory record: `owner`, `rule`, `attestor`, `last_issued`, `count` (HINCRBY), `first_seen` (HSETNX when a batch's HINCRBY makes `count` its own number of records) |
//! | `P inv:index` | sorted set | every identity, scored by its latest credential expiry (`ZADD GT`) |
//! | `P audit` | stream | audit events (`event` = JSON), `MAXLEN ~ audit_max_len` |
//!
//! Every revocation key carries the hash tag `{rev}`, so an entry and its stream event are
//! written by one Lua script even on Redis Cluster; every other command touches one key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisError, Script,
};

use super::redis_batch::{Record, RecordWriter, SetKeys};
use super::{
    EventRead, JoinTokenRecord, MIN_REMEMBER, RevocationEvent, StoreError, parse_cursor,
    redact_url, wall_ms,
};
use crate::governance::{AuditEvent, IdentityRecord, IssuanceRecord, SvidNote};
use crate::revoke::entry::{EntryKind, NEVER, RevocationEntry};

/// Timeouts for ordinary commands: short, so a request fails fast when Redis is away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its `BLOCK` a blocking read may take before its connection is dropped.
const BLOCK_GRACE: Duration = Duration::from_secs(2);
/// Idle dedicated connections kept for blocking reads.
const MAX_IDLE_BLOCKING: usize = 4;
/// Keys per `SCAN` step and per `MGET` / pipelined batch.
const BATCH: usize = 1000;
/// Longer one-time-use keys are replaced by their SHA-256.
const MAX_KEY_PART: usize = 200;

/// Writes one entry (merged with the live one, as [`RevocationEntry::merged_with`] does)
/// and appends the event as published, atomically.
///
/// The entry key holds `"<exp> <ib or -> <reason>"`; kind and value are in the key name.
/// KEYS: entry, stream. ARGV: kind, value, ib ('' = none), exp, reason ('' = none),
/// written_at_ms, maxlen.
const PUBLISH_LUA: &str = r#"
local kind, ib, exp, reason = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
if kind ~= 'lock' then
  local old = redis.call('GET', KEYS[1])
  local oexp, oib, oreason
  if old then oexp, oib, oreason = string.match(old, '^(%S+) (%S+) ?(.*)$') end
  if oexp then
    if kind == 'credential' or oib == '-' then
      ib = ''
    elseif ib ~= '' and tonumber(oib) > tonumber(ib) then
      ib = oib
    end
    if tonumber(oexp) > tonumber(exp) then exp = oexp end
    if reason == '' then reason = oreason end
  end
end
if kind == 'credential' or kind == 'lock' or ib == '' then ib = '-' end
local stored = exp .. ' ' .. ib .. ' ' .. reason
local t = tonumber(exp)
if t <= 0 then
  redis.call('DEL', KEYS[1])
elseif t < 1e15 then
  -- A time in the past deletes the key at once.
  redis.call('SET', KEYS[1], stored, 'EXAT', exp)
else
  -- "Never" (and anything too large to be a millisecond time): no TTL.
  redis.call('SET', KEYS[1], stored)
end
local ev = {'kind', kind, 'value', ARGV[2], 'exp', ARGV[4], 'at', ARGV[6]}
if ARGV[3] ~= '' then table.insert(ev, 'ib'); table.insert(ev, ARGV[3]) end
if ARGV[5] ~= '' then table.insert(ev, 'reason'); table.insert(ev, ARGV[5]) end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(ev))
"#;

/// Token bucket. KEYS: bucket. ARGV: capacity, period_ms, now_ms.
/// Returns 0 when a token was taken, else the milliseconds until one is available.
const RATE_LUA: &str = r#"
local cap, period, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens = cap; ts = now end
if now > ts then
  tokens = math.min(cap, tokens + (now - ts) * cap / period)
  ts = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) * period / cap))
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return wait
"#;

/// The Redis store; clones share connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Multiplexed, reconnecting: every non-blocking command.
    conn: ConnectionManager,
    /// Issuance records, group-committed over `conn`.
    records: RecordWriter,
    /// Dedicated connections for blocking stream reads, so that a read waiting for events
    /// never holds up request traffic on `conn`.
    idle_blocking: Mutex<Vec<MultiplexedConnection>>,
    keys: Keys,
    stream_max_len: usize,
    audit_max_len: usize,
    publish: Script,
    rate: Script,
    /// The URL with its password masked, for messages.
    url: String,
}

struct Keys {
    prefix: String,
    rev_entry: String,
    rev_stream: String,
    rev_match: String,
    inv_index: String,
    audit: String,
    crl: String,
    svids: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            rev_entry: format!("{prefix}{{rev}}:e:"),
            rev_stream: format!("{prefix}{{rev}}:stream"),
            rev_match: format!("{}{{rev}}:e:*", glob_escape(prefix)),
            inv_index: format!("{prefix}inv:index"),
            audit: format!("{prefix}audit"),
            crl: format!("{prefix}crl:serials"),
            svids: format!("{prefix}crl:svids"),
        }
    }

    fn entry(&self, kind: EntryKind, value: &str) -> String {
        format!("{}{}:{}", self.rev_entry, kind.as_str(), value)
    }

    fn with(&self, what: &str, key: &str) -> String {
        format!("{}{what}:{key}", self.prefix)
    }
}

/// Where and how to connect. The redis crate leaves Nagle's algorithm on: on the multiplexed
/// connection, a command or pipeline sent while another awaits its reply would be held back
/// until that reply acknowledges it, a round trip later.
fn connection_info(url: &str) -> Result<ConnectionInfo, RedisError> {
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true)))
}

/// Escapes Redis glob metacharacters so a prefix matches itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://` or `rediss://`) and checks that Redis answers.
    pub async fn connect(
        url: &str,
        prefix: &str,
        stream_max_len: usize,
        audit_max_len: usize,
    ) -> Result<Self, StoreError> {
        // rediss:// goes through rustls; make sure it has its (only) crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redacted = redact_url(url);
        let invalid = |e: RedisError| {
            StoreError::Config(format!(
                "invalid redis URL {redacted}: {}",
                redact_url(&e.to_string())
            ))
        };
        let client = Client::open(connection_info(url).map_err(invalid)?).map_err(invalid)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| {
                let message = format!("{redacted}: {}", redact_url(&e.to_string()));
                match map_err("connect", e) {
                    StoreError::Unavailable(_) => StoreError::Unavailable(message),
                    _ => StoreError::Backend(message),
                }
            })?;
        let keys = Keys::new(prefix);
        let store = Self {
            inner: Arc::new(Inner {
                client,
                records: RecordWriter::spawn(
                    conn.clone(),
                    SetKeys {
                        index: keys.inv_index.clone(),
                        notes: keys.svids.clone(),
                    },
                ),
                conn,
                idle_blocking: Mutex::new(Vec::new()),
                keys,
                stream_max_len: stream_max_len.max(1),
                audit_max_len: audit_max_len.max(1),
                publish: Script::new(PUBLISH_LUA),
                rate: Script::new(RATE_LUA),
                url: redacted,
            }),
        };
        store.ping().await?;
        Ok(store)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    pub(super) async fn publish_revocation(
        &self,
        e: &RevocationEntry,
    ) -> Result<String, StoreError> {
        let keys = &self.inner.keys;
        let ib = e.issued_before.map(|t| t.to_string()).unwrap_or_default();
        self.inner
            .publish
            .key(keys.entry(e.kind, &e.value))
            .key(&keys.rev_stream)
            .arg(e.kind.as_str())
            .arg(&e.value)
            .arg(ib)
            .arg(e.expires_at)
            .arg(e.reason.as_deref().unwrap_or(""))
            .arg(wall_ms())
            .arg(self.inner.stream_max_len)
            .invoke_async::<String>(&mut self.conn())
            .await
            .map_err(|err| map_err("publish_revocation", err))
    }

    pub(super) async fn load_revocations(
        &self,
    ) -> Result<(Vec<RevocationEntry>, String), StoreError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        // The cursor first: anything written during the scan is also read from the stream
        // afterwards, and applying it twice is harmless.
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&keys.rev_stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("load_revocations", e))?;
        let cursor = last
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |s| s.id.clone());

        // Fetch each page while scanning the next one (the connection is multiplexed).
        let mut seen = HashSet::new();
        let mut fetches = Vec::new();
        let mut scan: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(scan)
                .arg("MATCH")
                .arg(&keys.rev_match)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err("load_revocations", e))?;
            let page: Vec<String> = page
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .collect();
            if !page.is_empty() {
                let mut conn = self.conn();
                fetches.push(tokio::spawn(async move {
                    let values: Vec<Option<String>> =
                        redis::cmd("MGET").arg(&page).query_async(&mut conn).await?;
                    Ok::<_, RedisError>((page, values))
                }));
            }
            if next == 0 {
                break;
            }
            scan = next;
        }
        let mut entries = Vec::with_capacity(seen.len());
        for fetch in fetches {
            let (page, values) = fetch
                .await
                .map_err(|e| StoreError::Backend(format!("load_revocations: {e}")))?
                .map_err(|e| map_err("load_revocations", e))?;
            for (key, value) in page.iter().zip(values) {
                // None: expired between SCAN and MGET.
                let Some(value) = value else { continue };
                match entry_from_stored(key.strip_prefix(&keys.rev_entry).unwrap_or(key), &value) {
                    Ok(entry) => entries.push(entry),
                    Err(message) => {
                        tracing::warn!(key = %key, %message, "skipping unreadable revocation entry")
                    }
                }
            }
        }
        Ok((entries, cursor))
    }

    pub(super) async fn read_events_after(
        &self,
        cursor: &str,
        block: Duration,
    ) -> Result<EventRead, StoreError> {
        let after = parse_cursor(cursor)?;
        let stream = &self.inner.keys.rev_stream;
        let mut pipe = redis::pipe();
        let read = pipe.cmd("XREAD");
        if !block.is_zero() {
            read.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        read.arg("STREAMS").arg(stream).arg(cursor);
        // Evaluated after the read returns: whatever was trimmed before it answered shows.
        pipe.cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);

        type Reply = (Option<StreamReadReply>, StreamRangeReply, StreamRangeReply);
        let (read, first, last): Reply = if block.is_zero() {
            pipe.query_async(&mut self.conn())
                .await
                .map_err(|e| map_err("read_revocations", e))?
        } else {
            let mut conn = self.blocking_conn().await?;
            let answer = tokio::time::timeout(block + BLOCK_GRACE, pipe.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::Unavailable("blocking stream read timed out".into()))?
                .map_err(|e| map_err("read_revocations", e))?;
            self.return_blocking_conn(conn);
            answer
        };

        if after != (0, 0) {
            let first = first.ids.first().and_then(|s| parse_cursor(&s.id).ok());
            let last = last.ids.first().and_then(|s| parse_cursor(&s.id).ok());
            match (first, last) {
                // The stream is gone (Redis lost its data or was flushed).
                (None, _) | (_, None) => return Ok(EventRead::Trimmed),
                // Events between the cursor and the oldest retained one may be gone
                // (conservative: a reload is always safe).
                (Some(first), _) if first > after => return Ok(EventRead::Trimmed),
                // The stream restarted below the cursor.
                (_, Some(last)) if last < after => return Ok(EventRead::Trimmed),
                _ => {}
            }
        }

        let mut events = Vec::new();
        for key in read.map(|r| r.keys).unwrap_or_default() {
            for item in key.ids {
                match event_from_stream(&item) {
                    Ok(event) => events.push(event),
                    Err(message) => {
                        tracing::warn!(id = %item.id, %message, "skipping unreadable revocation event")
                    }
                }
            }
        }
        Ok(EventRead::Events(events))
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let idle = self
            .inner
            .idle_blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| map_err("read_revocations", e))
    }

    fn return_blocking_conn(&self, conn: MultiplexedConnection) {
        let mut idle = self
            .inner
            .idle_blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push(conn);
        }
    }

    pub(super) async fn remember_once(
        &self,
        key: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let floor =
            time::OffsetDateTime::now_utc().unix_timestamp() + MIN_REMEMBER.as_secs() as i64;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.inner.keys.with("once", &bounded_key(key)))
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(expires_at.max(floor))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_err("remember_once", e))?;
        Ok(set.is_some())
    }

    pub(super) async fn put_join_token(
        &self,
        token_hash: &str,
        rec: &JoinTokenRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Backend(e.to_string()))?;
        redis::cmd("SET")
            .arg(self.inner.keys.with("jt", token_hash))
            .arg(json)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| map_err("put_join_token", e))
    }

    pub(super) async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let key = self.inner.keys.with("jt", token_hash);
        let json: Option<String> = redis::cmd("GETDEL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_err("take_join_token", e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                key: format!("{}jt:…", self.inner.keys.prefix),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    pub(super) async fn take_rate_token(
        &self,
        key: &str,
        capacity: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<Result<(), Duration>, StoreError> {
        let period_ms = period.as_millis().min(i64::MAX as u128) as i64;
        let wait_ms: i64 = self
            .inner
            .rate
            .key(self.inner.keys.with("rate", &bounded_key(key)))
            .arg(capacity)
            .arg(period_ms)
            .arg(now_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| map_err("take_rate_token", e))?;
        Ok(if wait_ms <= 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms as u64))
        })
    }

    pub(super) async fn record_issuance(&self, inv: &IssuanceRecord) -> Result<(), StoreError> {
        let key = self.inner.keys.with("inv", &inv.spiffe_id);
        // The variable arguments, plus the field names and up to 20 digits.
        let size = key.len() + inv.owner.len() + inv.rule.len() + inv.attestor.len() + 60;
        let mut fields = sized_cmd("HSET", 9, size);
        fields
            .arg(&key)
            .arg("owner")
            .arg(&inv.owner)
            .arg("rule")
            .arg(&inv.rule)
            .arg("attestor")
            .arg(&inv.attestor)
            .arg("last_issued")
            .arg(inv.issued_at);
        let note = match &inv.svid {
            Some(note) => Some((
                note.expires_at,
                serde_json::to_string(note).map_err(|e| StoreError::Backend(e.to_string()))?,
            )),
            None => None,
        };
        let record = Record {
            key,
            spiffe_id: inv.spiffe_id.clone(),
            issued_at: inv.issued_at,
            expires_at: inv.expires_at,
            fields,
            audit: self.audit_cmd(&inv.event)?,
            note,
        };
        self.inner.records.write(record).await
    }

    /// `XADD` of one audit event to the bounded audit stream.
    fn audit_cmd(&self, ev: &AuditEvent) -> Result<redis::Cmd, StoreError> {
        let mut json = Vec::with_capacity(384);
        serde_json::to_writer(&mut json, ev).map_err(|e| StoreError::Backend(e.to_string()))?;
        let audit = &self.inner.keys.audit;
        let mut cmd = sized_cmd("XADD", 7, audit.len() + json.len() + 32);
        cmd.arg(audit)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.audit_max_len)
            .arg("*")
            .arg("event")
            .arg(json);
        Ok(cmd)
    }

    pub(super) async fn add_crl_serials(
        &self,
        serials: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let key = &self.inner.keys.crl;
        // GT keeps the later expiry of a serial added twice (and still adds new ones).
        let mut add = redis::cmd("ZADD");
        add.arg(key).arg("GT");
        for (serial, expires_at) in serials {
            add.arg(*expires_at).arg(serial);
        }
        // The set goes when its last serial expires, even if no CRL is read to prune it.
        let last = serials.iter().map(|(_, e)| *e).max().unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.add_command(add).ignore();
        pipe.cmd("EXPIREAT").arg(key).arg(last).arg("NX").ignore();
        pipe.cmd("EXPIREAT").arg(key).arg(last).arg("GT").ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| map_err("add_crl_serials", e))
    }

    pub(super) async fn svid_notes(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<SvidNote>, StoreError> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.inner.keys.svids)
            .arg("+inf")
            .arg(format!("({now}"))
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_err("svid_notes", e))?;
        let total = members.len();
        let notes: Vec<SvidNote> = members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        if notes.len() < total {
            tracing::warn!(
                unreadable = total - notes.len(),
                "skipped unreadable X.509-SVID notes"
            );
        }
        Ok(notes)
    }

    pub(super) async fn crl_serials(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let key = &self.inner.keys.crl;
        let (mut serials,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(key)
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_err("crl_serials", e))?;
        serials.sort();
        Ok(serials)
    }

    pub(super) async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        self.audit_cmd(ev)?
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| map_err("append_audit", e))
    }

    pub(super) async fn list_identities(
        &self,
        owner: Option<&str>,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let index: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.inv_index)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("list_identities", e))?;
        let mut out = Vec::with_capacity(index.len());
        for chunk in index.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (id, _) in chunk {
                pipe.cmd("HGETALL").arg(keys.with("inv", id));
            }
            let maps: Vec<HashMap<String, String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err("list_identities", e))?;
            for ((id, latest_expiry), map) in chunk.iter().zip(maps) {
                if map.is_empty() {
                    continue;
                }
                let rec =
                    identity_from_fields(id, *latest_expiry as i64, &map).map_err(|message| {
                        StoreError::Corrupt {
                            key: keys.with("inv", id),
                            message,
                        }
                    })?;
                if owner.is_none_or(|o| rec.owner == o) {
                    out.push(rec);
                }
            }
        }
        out.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
        Ok(out)
    }

    pub(super) async fn recent_audit(&self, count: usize) -> Result<Vec<AuditEvent>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.inner.keys.audit)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_err("recent_audit", e))?;
        let mut out = Vec::with_capacity(reply.ids.len());
        for item in reply.ids.iter().rev() {
            let Some(json) = item.get::<String>("event") else {
                continue;
            };
            match serde_json::from_str(&json) {
                Ok(ev) => out.push(ev),
                Err(e) => {
                    tracing::warn!(id = %item.id, error = %e, "skipping unreadable audit event")
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(|e| map_err("ping", e))
    }
}

/// `redis::cmd(name)` with room for `args` more arguments of about `bytes` in all. A command
/// otherwise regrows its two buffers as arguments arrive: a token's record took 17
/// allocations more that way.
pub(super) fn sized_cmd(name: &str, args: usize, bytes: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args + 1, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// Maps a Redis error, counting it, with any URL password masked.
pub(super) fn map_err(op: &'static str, e: RedisError) -> StoreError {
    metrics::counter!("credbroker_redis_errors_total", "op" => op).increment(1);
    let message = format!("{op}: {}", redact_url(&e.to_string()));
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(message)
    } else {
        StoreError::Backend(message)
    }
}

/// Keys from outside (a `jti`, a rate key) are hashed when long, to keep Redis keys small.
fn bounded_key(key: &str) -> String {
    if key.len() <= MAX_KEY_PART {
        return key.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

fn int_field(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<i64>, String> {
    get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("field {name} is not an integer"))
        })
        .transpose()
}

fn entry_from_fields(get: impl Fn(&str) -> Option<String>) -> Result<RevocationEntry, String> {
    let kind = get("kind").ok_or("no kind")?;
    let kind = EntryKind::parse(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let value = get("value").ok_or("no value")?;
    let expires_at = int_field(&get, "exp")?.ok_or("no exp")?;
    Ok(RevocationEntry {
        kind,
        value,
        issued_before: int_field(&get, "ib")?,
        expires_at: never_if_huge(expires_at),
        reason: get("reason").filter(|r| !r.is_empty()),
    }
    .normalized())
}

/// An entry from its key (after the `P{rev}:e:` prefix: `<kind>:<value>`) and stored value
/// (`"<exp> <ib or -> <reason>"`).
fn entry_from_stored(kind_value: &str, stored: &str) -> Result<RevocationEntry, String> {
    let (kind, value) = kind_value.split_once(':').ok_or("no kind in key")?;
    let kind = EntryKind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let mut parts = stored.splitn(3, ' ');
    let exp = parts.next().unwrap_or_default();
    let ib = parts.next().ok_or("no issued_before")?;
    let reason = parts.next().unwrap_or_default();
    let expires_at: i64 = exp.parse().map_err(|_| "expiry is not an integer")?;
    let issued_before = match ib {
        "-" => None,
        ib => Some(ib.parse().map_err(|_| "issued_before is not an integer")?),
    };
    Ok(RevocationEntry {
        kind,
        value: value.to_string(),
        issued_before,
        expires_at: never_if_huge(expires_at),
        reason: (!reason.is_empty()).then(|| reason.to_string()),
    }
    .normalized())
}

/// Expiries past year 9999 mean "never" (see [`NEVER`]).
fn never_if_huge(t: i64) -> i64 {
    if t >= 253_402_300_799 { NEVER } else { t }
}

fn event_from_stream(item: &StreamId) -> Result<RevocationEvent, String> {
    let get = |f: &str| item.get::<String>(f);
    let entry = entry_from_fields(get)?;
    let written_at_ms = int_field(&get, "at")?.unwrap_or(0);
    Ok(RevocationEvent {
        cursor: item.id.clone(),
        entry,
        written_at_ms,
    })
}

fn identity_from_fields(
    spiffe_id: &str,
    latest_expiry: i64,
    map: &HashMap<String, String>,
) -> Result<IdentityRecord, String> {
    let get = |f: &str| map.get(f).cloned();
    let text = |f: &str| get(f).unwrap_or_default();
    let last_issued = int_field(&get, "last_issued")?.unwrap_or(0);
    Ok(IdentityRecord {
        spiffe_id: spiffe_id.to_string(),
        owner: text("owner"),
        rule: text("rule"),
        attestor: text("attestor"),
        // Written just after the record's first batch (see `redis_batch`).
        first_seen: int_field(&get, "first_seen")?.unwrap_or(last_issued),
        last_issued,
        credentials_issued: int_field(&get, "count")?.unwrap_or(0).max(0) as u64,
        latest_expiry,
        locked: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("credbroker:");
        assert_eq!(
            k.entry(EntryKind::SpiffeId, "spiffe://example.org/a"),
            "credbroker:{rev}:e:spiffe_id:spiffe://example.org/a"
        );
        assert_eq!(k.rev_stream, "credbroker:{rev}:stream");
        assert_eq!(k.rev_match, "credbroker:{rev}:e:*");
        assert_eq!(Keys::new("a*[").rev_match, "a\\*\\[{rev}:e:*");
        assert_eq!(k.with("jt", "ab"), "credbroker:jt:ab");
    }

    #[test]
    fn connections_send_without_waiting_for_acknowledgements() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://:secret@redis.example:6380",
        ] {
            assert!(
                connection_info(url).unwrap().tcp_settings().nodelay(),
                "{url}"
            );
        }
    }

    #[test]
    fn long_keys_are_hashed() {
        assert_eq!(bounded_key("abc"), "abc");
        let long = "x".repeat(500);
        assert!(bounded_key(&long).starts_with("sha256:"));
        assert_eq!(bounded_key(&long).len(), 7 + 64);
    }

    #[test]
    fn entries_read_back_from_fields() {
        let map: HashMap<&str, &str> = [
            ("kind", "credential"),
            ("value", "01:AB"),
            ("exp", "9223372036854775807"),
            ("reason", ""),
        ]
        .into();
        let e = entry_from_fields(|f| map.get(f).map(|s| s.to_string())).unwrap();
        assert_eq!(e.value, "1ab");
        assert_eq!(e.expires_at, NEVER);
        assert_eq!(e.reason, None);
        let bad: HashMap<&str, &str> = [("kind", "x"), ("value", ""), ("exp", "1")].into();
        assert!(entry_from_fields(|f| bad.get(f).map(|s| s.to_string())).is_err());

        let e = entry_from_stored("spiffe_id:spiffe://example.org/a", "100 50 two words").unwrap();
        assert_eq!(e.kind, EntryKind::SpiffeId);
        assert_eq!(e.value, "spiffe://example.org/a");
        assert_eq!((e.issued_before, e.expires_at), (Some(50), 100));
        assert_eq!(e.reason.as_deref(), Some("two words"));
        let e = entry_from_stored("lock:spiffe://example.org/a", "9223372036854775807 - ").unwrap();
        assert_eq!(
            (e.issued_before, e.expires_at, e.reason),
            (None, NEVER, None)
        );
        assert!(entry_from_stored("lock:x", "soon - ").is_err());
        assert!(entry_from_stored("nokind", "1 - ").is_err());
    }
}
