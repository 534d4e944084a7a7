//! The in-process store: the same semantics as Redis, for `dev` and single-process use.
//!
//! The revocation "stream" is a bounded queue with ids `<n>-0`, so a reader that falls
//! behind sees [`EventRead::Trimmed`] exactly as it would with Redis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::{
    EventRead, JoinTokenRecord, MIN_REMEMBER, RevocationEvent, StoreError, parse_cursor, wall_ms,
};
use crate::clock::SharedClock;
use crate::governance::{AuditEvent, IdentityRecord, IssuanceRecord};
use crate::revoke::entry::{EntryKind, RevocationEntry};

/// Expired one-time keys, join tokens and rate buckets are swept every this many writes.
const SWEEP_EVERY: u64 = 1024;

/// An in-process store; clones share the same state.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    stream_max_len: usize,
    audit_max_len: usize,
    state: Mutex<State>,
    /// The id of the latest stream event, for blocking readers.
    latest: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    entries: HashMap<(EntryKind, String), RevocationEntry>,
    stream: VecDeque<(u64, RevocationEntry, i64)>,
    last_id: u64,
    once: HashMap<String, i64>,
    /// hash → (record, forget at)
    join_tokens: HashMap<String, (JoinTokenRecord, i64)>,
    /// key → (tokens, last refill ms, forget after ms)
    rate: HashMap<String, (f64, i64, i64)>,
    inventory: BTreeMap<String, IdentityRecord>,
    audit: VecDeque<AuditEvent>,
    /// serial → expiry
    crl_serials: HashMap<String, i64>,
    writes: u64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store keeping `stream_max_len` revocation events and `audit_max_len` audit
    /// events, telling time by `clock`.
    pub fn new(stream_max_len: usize, audit_max_len: usize, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                stream_max_len: stream_max_len.max(1),
                audit_max_len: audit_max_len.max(1),
                state: Mutex::new(State::default()),
                latest: watch::Sender::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> i64 {
        self.inner.clock.unix()
    }

    pub(super) async fn publish_revocation(
        &self,
        e: &RevocationEntry,
    ) -> Result<String, StoreError> {
        let now = self.now();
        let id = {
            let mut st = self.state();
            let key = (e.kind, e.value.clone());
            let merged = match st.entries.remove(&key) {
                Some(old) if old.is_live(now) => old.merged_with(e.clone()),
                _ => e.clone(),
            };
            if merged.is_live(now) {
                st.entries.insert(key, merged);
            }
            st.last_id += 1;
            let id = st.last_id;
            st.stream.push_back((id, e.clone(), wall_ms()));
            while st.stream.len() > self.inner.stream_max_len {
                st.stream.pop_front();
            }
            st.sweep(now);
            id
        };
        self.inner.latest.send_replace(id);
        Ok(format!("{id}-0"))
    }

    pub(super) async fn load_revocations(
        &self,
    ) -> Result<(Vec<RevocationEntry>, String), StoreError> {
        let now = self.now();
        let st = self.state();
        let entries = st
            .entries
            .values()
            .filter(|e| e.is_live(now))
            .cloned()
            .collect();
        Ok((entries, format!("{}-0", st.last_id)))
    }

    pub(super) async fn read_events_after(
        &self,
        cursor: &str,
        block: Duration,
    ) -> Result<EventRead, StoreError> {
        let (after, _) = parse_cursor(cursor)?;
        let deadline = tokio::time::Instant::now() + block;
        let mut latest = self.inner.latest.subscribe();
        loop {
            latest.borrow_and_update();
            {
                let st = self.state();
                let first = st.stream.front().map_or(st.last_id + 1, |(id, ..)| *id);
                if after > st.last_id || after + 1 < first {
                    return Ok(EventRead::Trimmed);
                }
                let events: Vec<_> = st
                    .stream
                    .iter()
                    .filter(|(id, ..)| *id > after)
                    .map(|(id, entry, at)| RevocationEvent {
                        cursor: format!("{id}-0"),
                        entry: entry.clone(),
                        written_at_ms: *at,
                    })
                    .collect();
                if !events.is_empty() || block.is_zero() {
                    return Ok(EventRead::Events(events));
                }
            }
            match tokio::time::timeout_at(deadline, latest.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the store is gone): nothing new.
                _ => return Ok(EventRead::Events(Vec::new())),
            }
        }
    }

    pub(super) async fn remember_once(
        &self,
        key: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let until = expires_at.max(now + MIN_REMEMBER.as_secs() as i64);
        let mut st = self.state();
        st.sweep(now);
        match st.once.get(key) {
            Some(&exp) if exp > now => Ok(false),
            _ => {
                st.once.insert(key.to_string(), until);
                Ok(true)
            }
        }
    }

    pub(super) async fn put_join_token(
        &self,
        token_hash: &str,
        rec: &JoinTokenRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let forget_at = now.saturating_add(ttl.as_secs().max(1) as i64);
        let mut st = self.state();
        st.sweep(now);
        st.join_tokens
            .insert(token_hash.to_string(), (rec.clone(), forget_at));
        Ok(())
    }

    pub(super) async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let now = self.now();
        let mut st = self.state();
        Ok(st
            .join_tokens
            .remove(token_hash)
            .filter(|(_, forget_at)| *forget_at > now)
            .map(|(rec, _)| rec))
    }

    pub(super) async fn take_rate_token(
        &self,
        key: &str,
        capacity: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<Result<(), Duration>, StoreError> {
        let period_ms = period.as_millis().min(i64::MAX as u128) as i64;
        let cap = f64::from(capacity);
        let mut st = self.state();
        let (mut tokens, mut ts) = match st.rate.get(key) {
            Some(&(tokens, ts, forget)) if forget > now_ms => (tokens, ts),
            _ => (cap, now_ms),
        };
        if now_ms > ts {
            tokens = cap.min(tokens + (now_ms - ts) as f64 * cap / period_ms as f64);
            ts = now_ms;
        }
        let answer = if tokens >= 1.0 {
            tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - tokens) * period_ms as f64 / cap).ceil().max(1.0);
            Err(Duration::from_millis(wait_ms as u64))
        };
        st.rate.insert(
            key.to_string(),
            (tokens, ts, now_ms.saturating_add(period_ms)),
        );
        Ok(answer)
    }

    pub(super) async fn record_issuance(&self, inv: &IssuanceRecord) -> Result<(), StoreError> {
        let mut st = self.state();
        let current = st.inventory.remove(&inv.spiffe_id);
        st.inventory
            .insert(inv.spiffe_id.clone(), IdentityRecord::updated(current, inv));
        st.push_audit(inv.event.clone(), self.inner.audit_max_len);
        Ok(())
    }

    pub(super) async fn add_crl_serials(
        &self,
        serials: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        for (serial, expires_at) in serials {
            let known = st.crl_serials.entry(serial.clone()).or_insert(*expires_at);
            *known = (*known).max(*expires_at);
        }
        Ok(())
    }

    pub(super) async fn crl_serials(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut st = self.state();
        st.crl_serials.retain(|_, expires_at| *expires_at > now);
        let mut serials: Vec<String> = st.crl_serials.keys().cloned().collect();
        serials.sort();
        Ok(serials)
    }

    pub(super) async fn append_audit(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        self.state()
            .push_audit(ev.clone(), self.inner.audit_max_len);
        Ok(())
    }

    pub(super) async fn list_identities(
        &self,
        owner: Option<&str>,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let st = self.state();
        Ok(st
            .inventory
            .values()
            .filter(|r| owner.is_none_or(|o| r.owner == o))
            .cloned()
            .collect())
    }

    pub(super) async fn recent_audit(&self, count: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let st = self.state();
        let skip = st.audit.len().saturating_sub(count);
        Ok(st.audit.iter().skip(skip).cloned().collect())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl State {
    fn push_audit(&mut self, ev: AuditEvent, max: usize) {
        self.audit.push_back(ev);
        while self.audit.len() > max {
            self.audit.pop_front();
        }
    }

    /// Forgets what has expired, every [`SWEEP_EVERY`] writes.
    fn sweep(&mut self, now: i64) {
        self.writes += 1;
        if !self.writes.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        self.once.retain(|_, exp| *exp > now);
        self.join_tokens
            .retain(|_, (_, forget_at)| *forget_at > now);
        self.entries.retain(|_, e| e.is_live(now));
        let now_ms = now.saturating_mul(1000);
        self.rate.retain(|_, (_, _, forget)| *forget > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::Store;

    #[tokio::test]
    async fn join_tokens_and_one_time_keys_expire_with_the_clock() {
        let clock = ManualClock::at(1_000_000);
        let store = Store::Memory(MemoryStore::new(10, 10, Arc::new(clock.clone())));
        let rec = JoinTokenRecord {
            spiffe_id: "spiffe://example.org/n".into(),
            created_at: 1_000_000,
            expires_at: 1_000_060,
        };
        store
            .put_join_token("h1", &rec, Duration::from_secs(60))
            .await
            .unwrap();
        store
            .put_join_token("h2", &rec, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.take_join_token("h1").await.unwrap(), Some(rec));
        clock.advance(60);
        assert_eq!(store.take_join_token("h2").await.unwrap(), None);

        assert!(store.remember_once("k", 1_000_200).await.unwrap());
        clock.advance(139);
        assert!(!store.remember_once("k", 1_000_200).await.unwrap());
        clock.advance(1);
        assert!(store.remember_once("k", 1_000_200).await.unwrap());
        // An expiry in the past is still remembered for MIN_REMEMBER.
        assert!(store.remember_once("old", 0).await.unwrap());
        clock.advance(59);
        assert!(!store.remember_once("old", 0).await.unwrap());
    }

    #[tokio::test]
    async fn expired_entries_are_not_loaded() {
        let clock = ManualClock::at(1_000);
        let store = Store::Memory(MemoryStore::new(10, 10, Arc::new(clock.clone())));
        let e = RevocationEntry::credential("abc", 1_100, None);
        store.publish_revocation(&e).await.unwrap();
        assert_eq!(store.load_revocations().await.unwrap().0, vec![e]);
        clock.advance(100);
        assert!(store.load_revocations().await.unwrap().0.is_empty());
    }
}
