//! Shared state: revocations, one-time-use keys, join tokens, rate buckets, the inventory
//! and the audit stream (SPEC §7, §8).
//!
//! [`Store`] is Redis in production ([`RedisStore`]) or an in-process [`MemoryStore`] with
//! the same semantics for `dev` and single-process embedding. It is cheap to clone.

pub mod memory;
mod redis_batch;
pub mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::SystemClock;
use crate::config::{RevocationConfig, StoreKind};
use crate::governance::{AuditEvent, IdentityRecord, IssuanceRecord, SvidNote};
use crate::revoke::entry::{RevocationEntry, rfc3339};

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// A one-time-use key is remembered at least this long past "now", whatever `expires_at`
/// says, so that a token accepted within its leeway cannot be replayed (SPEC §3: ≤ 60 s).
pub const MIN_REMEMBER: Duration = Duration::from_secs(60);

/// Where shared state lives.
#[derive(Debug, Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Why a store operation failed. Messages never carry a password or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached (connection refused, dropped, timed out).
    #[error("store unreachable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("store error: {0}")]
    Backend(String),
    /// A stream cursor that is not of the form `<ms>-<seq>`.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// A record in the store could not be read.
    #[error("unreadable record {key}: {message}")]
    Corrupt { key: String, message: String },
    /// The configuration does not describe a usable store.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying later may succeed (the store was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The answer to [`Store::read_revocations_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRead {
    /// Entries after the cursor, oldest first, each with its own cursor (possibly none).
    Entries(Vec<(String, RevocationEntry)>),
    /// Events after the cursor are no longer retained: reload in full.
    Trimmed,
}

/// One revocation event from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEvent {
    /// Where a reader resumes after this event.
    pub cursor: String,
    /// The entry as it was published.
    pub entry: RevocationEntry,
    /// The writer's wall clock when it published (milliseconds), for lag metrics.
    pub written_at_ms: i64,
}

/// The answer to [`Store::read_revocation_events_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRead {
    Events(Vec<RevocationEvent>),
    Trimmed,
}

impl From<EventRead> for StreamRead {
    fn from(r: EventRead) -> Self {
        match r {
            EventRead::Events(events) => {
                StreamRead::Entries(events.into_iter().map(|e| (e.cursor, e.entry)).collect())
            }
            EventRead::Trimmed => StreamRead::Trimmed,
        }
    }
}

/// What a join token stands for; stored under the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// The identity the token bootstraps.
    pub spiffe_id: String,
    #[serde(with = "rfc3339")]
    pub created_at: i64,
    #[serde(with = "rfc3339")]
    pub expires_at: i64,
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call,
            Store::Redis($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store the config names: in-process memory, or Redis at `redis_url`.
    pub async fn connect(cfg: &RevocationConfig) -> Result<Store, StoreError> {
        match cfg.store {
            StoreKind::Memory => Ok(Store::Memory(MemoryStore::new(
                cfg.stream_max_len,
                cfg.audit_max_len,
                Arc::new(SystemClock),
            ))),
            StoreKind::Redis => {
                let url = cfg.redis_url.as_deref().ok_or_else(|| {
                    StoreError::Config("redis_url is required when store = \"redis\"".into())
                })?;
                RedisStore::connect(url, &cfg.key_prefix, cfg.stream_max_len, cfg.audit_max_len)
                    .await
                    .map(Store::Redis)
            }
        }
    }

    /// An in-process store on the wall clock with the default limits.
    pub fn memory() -> Store {
        let defaults = RevocationConfig::default();
        Store::Memory(MemoryStore::new(
            defaults.stream_max_len,
            defaults.audit_max_len,
            Arc::new(SystemClock),
        ))
    }

    /// Writes a revocation entry and appends it to the stream, atomically; returns the new
    /// event's cursor. Revocations only grow (see [`RevocationEntry::merged_with`]); a lock
    /// entry replaces the previous lock, and an expired one removes it.
    pub async fn publish_revocation(&self, e: &RevocationEntry) -> Result<String, StoreError> {
        let e = e.clone().normalized();
        dispatch!(self, s => s.publish_revocation(&e).await)
    }

    /// Every live entry, and the cursor to follow the stream from.
    pub async fn load_revocations(&self) -> Result<(Vec<RevocationEntry>, String), StoreError> {
        dispatch!(self, s => s.load_revocations().await)
    }

    /// Entries published after `cursor`, waiting up to `block` for the first one
    /// (`Duration::ZERO`: answer at once).
    pub async fn read_revocations_after(
        &self,
        cursor: &str,
        block: Duration,
    ) -> Result<StreamRead, StoreError> {
        self.read_revocation_events_after(cursor, block)
            .await
            .map(StreamRead::from)
    }

    /// As [`read_revocations_after`](Self::read_revocations_after), with each event's
    /// write time.
    pub async fn read_revocation_events_after(
        &self,
        cursor: &str,
        block: Duration,
    ) -> Result<EventRead, StoreError> {
        parse_cursor(cursor)?;
        dispatch!(self, s => s.read_events_after(cursor, block).await)
    }

    /// Remembers `key` until `expires_at` (Unix seconds; at least [`MIN_REMEMBER`] from now);
    /// `true` the first time, `false` for every later call while it is remembered.
    pub async fn remember_once(&self, key: &str, expires_at: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remember_once(key, expires_at).await)
    }

    /// Stores a join token's record under the token's hash for `ttl` (at least one second).
    pub async fn put_join_token(
        &self,
        token_hash: &str,
        rec: &JoinTokenRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_join_token(token_hash, rec, ttl).await)
    }

    /// Consumes a join token: the record the first time, `None` ever after (atomic).
    pub async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        dispatch!(self, s => s.take_join_token(token_hash).await)
    }

    /// Takes one token from the bucket `key` (burst `capacity`, refilled evenly over
    /// `period`); `Ok(Err(retry_after))` when it is empty.
    pub async fn take_rate_token(
        &self,
        key: &str,
        capacity: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<Result<(), Duration>, StoreError> {
        if capacity == 0 {
            return Ok(Err(period.max(Duration::from_millis(1))));
        }
        let period = period.max(Duration::from_millis(1));
        dispatch!(self, s => s.take_rate_token(key, capacity, period, now_ms).await)
    }

    /// Updates the inventory and appends the `issued` audit event (and keeps an X.509-SVID's
    /// note), in one round trip.
    pub async fn record_issuance(&self, inv: &IssuanceRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_issuance(inv).await)
    }

    /// Appends an audit event to the bounded audit stream.
    pub async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_audit(ev).await)
    }

    /// The inventory, sorted by SPIFFE ID, optionally only one owner's (`locked` is false:
    /// the caller fills it from the mirror).
    pub async fn list_identities(
        &self,
        owner: Option<&str>,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        dispatch!(self, s => s.list_identities(owner).await)
    }

    /// The latest `count` audit events, oldest first.
    pub async fn recent_audit(&self, count: usize) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self, s => s.recent_audit(count).await)
    }

    /// Adds X.509-SVID serials (each with its expiry, Unix seconds) to the set every CRL
    /// lists: a broker knows the SVIDs it issued, and shares those a revocation covers.
    pub async fn add_crl_serials(&self, serials: &[(String, i64)]) -> Result<(), StoreError> {
        if serials.is_empty() {
            return Ok(());
        }
        dispatch!(self, s => s.add_crl_serials(serials).await)
    }

    /// The notes of X.509-SVIDs live at `now` (see [`IssuanceRecord::svid`]), at most
    /// `limit`, the latest to expire first. The memory store keeps none: it ends with the
    /// process, and so does every broker that could read one from it.
    pub async fn svid_notes(&self, now: i64, limit: usize) -> Result<Vec<SvidNote>, StoreError> {
        match self {
            Store::Memory(_) => Ok(Vec::new()),
            Store::Redis(s) => s.svid_notes(now, limit).await,
        }
    }

    /// The shared CRL serials that have not expired at `now`, sorted; expired ones are dropped.
    pub async fn crl_serials(&self, now: i64) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.crl_serials(now).await)
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
}

/// A stream cursor `<ms>-<seq>` as a comparable pair.
pub(crate) fn parse_cursor(cursor: &str) -> Result<(u64, u64), StoreError> {
    let bad = || StoreError::InvalidCursor(cursor.chars().take(64).collect());
    let (ms, seq) = cursor.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return Err(bad());
    }
    Ok((
        ms.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    ))
}

/// `text` with the user-info part of every URL in it (`redis://:password@`) masked.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Wall-clock milliseconds (for event timestamps and lag).
pub(crate) fn wall_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse() {
        assert_eq!(parse_cursor("0-0").unwrap(), (0, 0));
        assert_eq!(parse_cursor("1712345678901-3").unwrap(), (1712345678901, 3));
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-2-3",
            "+",
            "$",
            "99999999999999999999999-0",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("cannot reach redis://:s3cret@db:6379/0 now"),
            "cannot reach redis://***@db:6379/0 now"
        );
        assert_eq!(redact_url("rediss://default:p@ss@h/1"), "rediss://***@h/1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
