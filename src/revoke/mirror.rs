//! The in-memory revocation mirror: every broker and verifier answers "is this revoked?"
//! with a local lookup (SPEC §7, §11: < 1 µs, no allocation, 1 M entries < 200 MB).
//!
//! Pure data and plain functions; feeding it from a store is [`super::sync`]'s job.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::entry::{EntryKind, NORMALIZE_BUF, RevocationEntry, normalize_into};

/// The facts about a credential that revocation looks at.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRef<'a> {
    /// Its id (JWT `jti` or certificate serial).
    pub id: &'a str,
    /// The SPIFFE ID it was issued to.
    pub spiffe_id: &'a str,
    /// Its attestation source (`src`).
    pub source: &'a str,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
    /// Its lineage: the ids of the credentials it descends from.
    pub chain: &'a [String],
    /// The SPIFFE IDs acting in its delegation chain (`act`).
    pub actors: &'a [&'a str],
}

/// Why a credential is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// The credential itself.
    Credential,
    /// A credential it descends from (its `chain`).
    Ancestor,
    /// Its SPIFFE ID, for credentials issued up to a time.
    SpiffeId,
    /// The SPIFFE ID of an actor in its delegation chain.
    Actor,
    /// The attestation source it was obtained with.
    Source,
    /// The global cut-off time.
    All,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Revoked::Credential => "the credential has been revoked",
            Revoked::Ancestor => "a credential it descends from has been revoked",
            Revoked::SpiffeId => "credentials of this identity have been revoked",
            Revoked::Actor => "credentials of an actor in its delegation chain have been revoked",
            Revoked::Source => "credentials from this attestation source have been revoked",
            Revoked::All => "every credential issued before the global cut-off has been revoked",
        })
    }
}

/// A live lock on a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// When the lock lifts by itself; `None` for a lock without TTL.
    pub expires_at: Option<i64>,
    pub reason: Option<String>,
}

/// The local copy of the revocation list, shared by every request (`Arc<RevocationMirror>`).
#[derive(Debug)]
pub struct RevocationMirror {
    tables: RwLock<Tables>,
    /// Wall-clock milliseconds of the last successful answer from the store; `i64::MIN` = never.
    last_synced_ms: AtomicI64,
    /// Entries applied from the feed, for relying parties following `/v1/revocations/stream`.
    changes: tokio::sync::broadcast::Sender<MirrorChange>,
}

/// What a follower of the mirror learns.
#[derive(Debug, Clone)]
pub enum MirrorChange {
    /// An entry from the feed, with its cursor.
    Applied(std::sync::Arc<(String, RevocationEntry)>),
    /// The mirror was reloaded in full: followers may have missed entries and must resync.
    Reloaded,
}

/// How many changes a slow follower may fall behind before it is told to resync.
const CHANGE_BUFFER: usize = 4096;

/// Entries by kind, keyed compactly (`Box<str>`: two words, no spare capacity).
#[derive(Debug, Default)]
struct Tables {
    credentials: HashMap<Box<str>, Expiry>,
    locks: HashMap<Box<str>, Expiry>,
    spiffe_ids: HashMap<Box<str>, Cutoff>,
    sources: HashMap<Box<str>, Cutoff>,
    all: Option<Cutoff>,
    cursor: Option<String>,
}

#[derive(Debug, Clone)]
struct Expiry {
    expires_at: i64,
    reason: Option<Box<str>>,
}

#[derive(Debug, Clone)]
struct Cutoff {
    /// `i64::MAX` when the entry had no `issued_before` (covers any issuance time).
    issued_before: i64,
    expires_at: i64,
    reason: Option<Box<str>>,
}

impl Cutoff {
    fn covers(&self, issued_at: i64, now: i64) -> bool {
        self.expires_at > now && self.issued_before >= issued_at
    }
}

fn live(e: Option<&Expiry>, now: i64) -> bool {
    e.is_some_and(|e| e.expires_at > now)
}

fn covers(c: Option<&Cutoff>, issued_at: i64, now: i64) -> bool {
    c.is_some_and(|c| c.covers(issued_at, now))
}

impl Default for RevocationMirror {
    fn default() -> Self {
        Self::new()
    }
}

impl RevocationMirror {
    /// An empty mirror that has never synced.
    pub fn new() -> Self {
        Self {
            tables: RwLock::new(Tables::default()),
            last_synced_ms: AtomicI64::new(i64::MIN),
            changes: tokio::sync::broadcast::channel(CHANGE_BUFFER).0,
        }
    }

    /// Follows the entries this mirror applies from the feed (and its full reloads).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MirrorChange> {
        self.changes.subscribe()
    }

    /// Why `c` is revoked at `now`, or `None` if no live entry covers it.
    ///
    /// Ids are compared in normal form (see [`super::normalize_credential_id`]), normalised on
    /// the stack: the check never allocates.
    pub fn check(&self, c: &CredentialRef<'_>, now: i64) -> Option<Revoked> {
        let t = self.read();
        let mut buf = [0u8; NORMALIZE_BUF];
        if !t.credentials.is_empty() {
            if live(t.credentials.get(normal(c.id, &mut buf)), now) {
                return Some(Revoked::Credential);
            }
            for ancestor in c.chain {
                if live(t.credentials.get(normal(ancestor, &mut buf)), now) {
                    return Some(Revoked::Ancestor);
                }
            }
        }
        if !t.spiffe_ids.is_empty() {
            if covers(t.spiffe_ids.get(c.spiffe_id), c.issued_at, now) {
                return Some(Revoked::SpiffeId);
            }
            for actor in c.actors {
                if covers(t.spiffe_ids.get(*actor), c.issued_at, now) {
                    return Some(Revoked::Actor);
                }
            }
        }
        if covers(t.sources.get(c.source), c.issued_at, now) {
            return Some(Revoked::Source);
        }
        if covers(t.all.as_ref(), c.issued_at, now) {
            return Some(Revoked::All);
        }
        None
    }

    /// The live lock on `spiffe_id`, if any. Locks block new issuance; they revoke nothing.
    pub fn lock_of(&self, spiffe_id: &str, now: i64) -> Option<LockInfo> {
        let t = self.read();
        let lock = t.locks.get(spiffe_id).filter(|l| l.expires_at > now)?;
        Some(LockInfo {
            expires_at: (lock.expires_at != super::NEVER).then_some(lock.expires_at),
            reason: lock.reason.as_deref().map(str::to_string),
        })
    }

    /// Applies one entry from the feed, and advances the cursor when one is given.
    ///
    /// Idempotent and order-insensitive for revocations (they only grow: see
    /// [`RevocationEntry::merged_with`]); a lock entry replaces the previous one, so an
    /// expired lock entry is an unlock. Expired entries cover nothing and are dropped by
    /// [`prune`](Self::prune).
    pub fn apply(&self, entry: RevocationEntry, cursor: Option<&str>) {
        let entry = entry.normalized();
        let announce = match cursor {
            Some(c) if self.changes.receiver_count() > 0 => Some((c.to_string(), entry.clone())),
            _ => None,
        };
        {
            let mut t = self.write();
            t.insert(entry);
            if let Some(cursor) = cursor {
                t.cursor = Some(cursor.to_string());
            }
        }
        if let Some(change) = announce {
            let _ = self
                .changes
                .send(MirrorChange::Applied(std::sync::Arc::new(change)));
        }
    }

    /// Replaces the whole content after a full load; `cursor` is where the feed resumes.
    pub fn replace_all(&self, entries: Vec<RevocationEntry>, cursor: String) {
        // Build outside the lock so checks are not held up by a large load.
        let mut fresh = Tables::default();
        let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
        fresh.credentials.reserve(count(EntryKind::Credential));
        fresh.spiffe_ids.reserve(count(EntryKind::SpiffeId));
        fresh.sources.reserve(count(EntryKind::Source));
        fresh.locks.reserve(count(EntryKind::Lock));
        for entry in entries {
            fresh.insert(entry.normalized());
        }
        fresh.cursor = Some(cursor);
        *self.write() = fresh;
        let _ = self.changes.send(MirrorChange::Reloaded);
    }

    /// Where the feed resumes; `None` before the first load.
    pub fn cursor(&self) -> Option<String> {
        self.read().cursor.clone()
    }

    /// Every entry still live at `now` (for `GET /v1/revocations` and `GET /v1/locks`).
    pub fn live_entries(&self, now: i64) -> Vec<RevocationEntry> {
        let t = self.read();
        let mut out = Vec::new();
        let expiring = |kind: EntryKind, map: &HashMap<Box<str>, Expiry>, out: &mut Vec<_>| {
            for (value, e) in map.iter().filter(|(_, e)| e.expires_at > now) {
                out.push(RevocationEntry {
                    kind,
                    value: value.to_string(),
                    issued_before: None,
                    expires_at: e.expires_at,
                    reason: e.reason.as_deref().map(str::to_string),
                });
            }
        };
        expiring(EntryKind::Credential, &t.credentials, &mut out);
        expiring(EntryKind::Lock, &t.locks, &mut out);
        let cutoff = |kind: EntryKind, value: &str, c: &Cutoff| RevocationEntry {
            kind,
            value: value.to_string(),
            issued_before: (c.issued_before != i64::MAX).then_some(c.issued_before),
            expires_at: c.expires_at,
            reason: c.reason.as_deref().map(str::to_string),
        };
        for (kind, map) in [
            (EntryKind::SpiffeId, &t.spiffe_ids),
            (EntryKind::Source, &t.sources),
        ] {
            for (value, c) in map.iter().filter(|(_, c)| c.expires_at > now) {
                out.push(cutoff(kind, value, c));
            }
        }
        if let Some(c) = t.all.as_ref().filter(|c| c.expires_at > now) {
            out.push(cutoff(EntryKind::All, "", c));
        }
        out
    }

    /// Entries held, expired ones not yet pruned included.
    pub fn len(&self) -> usize {
        let t = self.read();
        t.credentials.len()
            + t.locks.len()
            + t.spiffe_ids.len()
            + t.sources.len()
            + usize::from(t.all.is_some())
    }

    /// Whether the mirror holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a successful answer from the store (wall-clock milliseconds).
    pub fn mark_synced(&self, at_ms: i64) {
        self.last_synced_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// When the store last answered; `None` if it never has.
    pub fn last_synced_ms(&self) -> Option<i64> {
        let v = self.last_synced_ms.load(Ordering::Acquire);
        (v != i64::MIN).then_some(v)
    }

    /// Drops entries that expired at or before `now`.
    pub fn prune(&self, now: i64) {
        let mut t = self.write();
        prune_map(&mut t.credentials, |e| e.expires_at > now);
        prune_map(&mut t.locks, |e| e.expires_at > now);
        prune_map(&mut t.spiffe_ids, |c| c.expires_at > now);
        prune_map(&mut t.sources, |c| c.expires_at > now);
        if t.all.as_ref().is_some_and(|c| c.expires_at <= now) {
            t.all = None;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing every check would, so poisoning is ignored.
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The id in normal form, borrowed from `id` or from `buf`.
fn normal<'a>(id: &'a str, buf: &'a mut [u8; NORMALIZE_BUF]) -> &'a str {
    // An id too long for the buffer is looked up as given; ids we mint always fit.
    match normalize_into(id, buf) {
        Some(s) => s,
        None => id,
    }
}

fn prune_map<V>(map: &mut HashMap<Box<str>, V>, keep: impl Fn(&V) -> bool) {
    map.retain(|_, v| keep(v));
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

impl Tables {
    fn insert(&mut self, e: RevocationEntry) {
        let reason = e.reason.map(String::into_boxed_str);
        match e.kind {
            EntryKind::Credential => {
                let new = Expiry {
                    expires_at: e.expires_at,
                    reason,
                };
                match self.credentials.get_mut(e.value.as_str()) {
                    Some(old) => {
                        old.expires_at = old.expires_at.max(new.expires_at);
                        if new.reason.is_some() {
                            old.reason = new.reason;
                        }
                    }
                    None => {
                        self.credentials.insert(e.value.into_boxed_str(), new);
                    }
                }
            }
            EntryKind::Lock => {
                self.locks.insert(
                    e.value.into_boxed_str(),
                    Expiry {
                        expires_at: e.expires_at,
                        reason,
                    },
                );
            }
            EntryKind::SpiffeId | EntryKind::Source | EntryKind::All => {
                let new = Cutoff {
                    issued_before: e.issued_before.unwrap_or(i64::MAX),
                    expires_at: e.expires_at,
                    reason,
                };
                let slot = match e.kind {
                    EntryKind::SpiffeId => self.spiffe_ids.get_mut(e.value.as_str()),
                    EntryKind::Source => self.sources.get_mut(e.value.as_str()),
                    _ => self.all.as_mut(),
                };
                match slot {
                    Some(old) => {
                        old.issued_before = old.issued_before.max(new.issued_before);
                        old.expires_at = old.expires_at.max(new.expires_at);
                        if new.reason.is_some() {
                            old.reason = new.reason;
                        }
                    }
                    None => match e.kind {
                        EntryKind::SpiffeId => {
                            self.spiffe_ids.insert(e.value.into_boxed_str(), new);
                        }
                        EntryKind::Source => {
                            self.sources.insert(e.value.into_boxed_str(), new);
                        }
                        _ => self.all = Some(new),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revoke::NEVER;

    const NOW: i64 = 1_700_000_000;

    fn entry(kind: EntryKind, value: &str, issued_before: Option<i64>) -> RevocationEntry {
        RevocationEntry {
            kind,
            value: value.into(),
            issued_before,
            expires_at: NOW + 3600,
            reason: None,
        }
    }

    struct Cred {
        id: &'static str,
        spiffe_id: &'static str,
        source: &'static str,
        issued_at: i64,
        chain: Vec<String>,
        actors: Vec<&'static str>,
    }

    impl Cred {
        fn new() -> Self {
            Self {
                id: "q3Zb-Y_7kP2mXw9aL0cVtA",
                spiffe_id: "spiffe://example.org/a",
                source: "srcA",
                issued_at: NOW - 10,
                chain: vec![],
                actors: vec![],
            }
        }
        fn check(&self, m: &RevocationMirror, now: i64) -> Option<Revoked> {
            m.check(
                &CredentialRef {
                    id: self.id,
                    spiffe_id: self.spiffe_id,
                    source: self.source,
                    issued_at: self.issued_at,
                    chain: &self.chain,
                    actors: &self.actors,
                },
                now,
            )
        }
    }

    #[test]
    fn empty_mirror_revokes_nothing() {
        let m = RevocationMirror::new();
        assert_eq!(Cred::new().check(&m, NOW), None);
        assert!(m.is_empty());
        assert_eq!(m.cursor(), None);
        assert_eq!(m.last_synced_ms(), None);
    }

    #[test]
    fn credential_and_its_descendants() {
        let m = RevocationMirror::new();
        let c = Cred::new();
        m.apply(
            entry(EntryKind::Credential, "q3Zb-Y_7kP2mXw9aL0cVtA", None),
            Some("1-0"),
        );
        assert_eq!(c.check(&m, NOW), Some(Revoked::Credential));
        assert_eq!(m.cursor().as_deref(), Some("1-0"));

        let child = Cred {
            id: "child",
            chain: vec!["root".into(), "q3Zb-Y_7kP2mXw9aL0cVtA".into()],
            ..Cred::new()
        };
        assert_eq!(child.check(&m, NOW), Some(Revoked::Ancestor));
        let cousin = Cred {
            id: "other",
            chain: vec!["root".into()],
            ..Cred::new()
        };
        assert_eq!(cousin.check(&m, NOW), None);
    }

    #[test]
    fn serials_match_in_any_spelling() {
        let m = RevocationMirror::new();
        m.apply(entry(EntryKind::Credential, "01:AB:CD", None), None);
        for id in ["1abcd", "01ABCD", "01:ab:cd"] {
            let c = Cred { id, ..Cred::new() };
            assert_eq!(c.check(&m, NOW), Some(Revoked::Credential), "{id}");
        }
        let child = Cred {
            id: "2",
            chain: vec!["00:01:AB:CD".into()],
            ..Cred::new()
        };
        assert_eq!(child.check(&m, NOW), Some(Revoked::Ancestor));
    }

    #[test]
    fn spiffe_id_boundary_is_inclusive() {
        let m = RevocationMirror::new();
        m.apply(
            entry(
                EntryKind::SpiffeId,
                "spiffe://example.org/a",
                Some(NOW - 10),
            ),
            None,
        );
        let at = Cred::new();
        assert_eq!(at.check(&m, NOW), Some(Revoked::SpiffeId));
        let after = Cred {
            issued_at: NOW - 9,
            ..Cred::new()
        };
        assert_eq!(after.check(&m, NOW), None);
        let other = Cred {
            spiffe_id: "spiffe://example.org/b",
            ..Cred::new()
        };
        assert_eq!(other.check(&m, NOW), None);
    }

    #[test]
    fn actors_are_covered() {
        let m = RevocationMirror::new();
        m.apply(
            entry(EntryKind::SpiffeId, "spiffe://example.org/agent", Some(NOW)),
            None,
        );
        let delegated = Cred {
            actors: vec!["spiffe://example.org/other", "spiffe://example.org/agent"],
            ..Cred::new()
        };
        assert_eq!(delegated.check(&m, NOW), Some(Revoked::Actor));
        let later = Cred {
            issued_at: NOW + 1,
            actors: vec!["spiffe://example.org/agent"],
            ..Cred::new()
        };
        assert_eq!(later.check(&m, NOW), None);
    }

    #[test]
    fn source_and_all() {
        let m = RevocationMirror::new();
        m.apply(entry(EntryKind::Source, "srcA", Some(NOW - 10)), None);
        assert_eq!(Cred::new().check(&m, NOW), Some(Revoked::Source));
        let fresh = Cred {
            issued_at: NOW - 5,
            ..Cred::new()
        };
        assert_eq!(fresh.check(&m, NOW), None);
        m.apply(entry(EntryKind::All, "ignored", Some(NOW - 5)), None);
        assert_eq!(fresh.check(&m, NOW), Some(Revoked::All));
        let newer = Cred {
            issued_at: NOW - 4,
            ..Cred::new()
        };
        assert_eq!(newer.check(&m, NOW), None);
        let all = m
            .live_entries(NOW)
            .into_iter()
            .find(|e| e.kind == EntryKind::All)
            .unwrap();
        assert_eq!(all.value, "");
    }

    #[test]
    fn missing_issued_before_covers_any_time() {
        let m = RevocationMirror::new();
        m.apply(entry(EntryKind::Source, "srcA", None), None);
        let future = Cred {
            issued_at: NOW + 100,
            ..Cred::new()
        };
        assert_eq!(future.check(&m, NOW), Some(Revoked::Source));
        assert_eq!(m.live_entries(NOW)[0].issued_before, None);
    }

    #[test]
    fn expired_entries_never_cover_and_are_pruned() {
        let m = RevocationMirror::new();
        let mut e = entry(EntryKind::Credential, "q3Zb-Y_7kP2mXw9aL0cVtA", None);
        e.expires_at = NOW;
        m.apply(e, None);
        let mut s = entry(EntryKind::SpiffeId, "spiffe://example.org/a", Some(NOW));
        s.expires_at = NOW;
        m.apply(s, None);
        assert_eq!(Cred::new().check(&m, NOW), None);
        assert_eq!(Cred::new().check(&m, NOW - 1), Some(Revoked::Credential));
        assert!(m.live_entries(NOW).is_empty());
        assert_eq!(m.len(), 2);
        m.prune(NOW);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn apply_is_idempotent_and_never_shrinks_a_revocation() {
        let m = RevocationMirror::new();
        let e = entry(
            EntryKind::SpiffeId,
            "spiffe://example.org/a",
            Some(NOW - 10),
        );
        m.apply(e.clone(), None);
        m.apply(e.clone(), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.live_entries(NOW), vec![e.clone()]);
        let earlier = RevocationEntry {
            issued_before: Some(NOW - 100),
            expires_at: NOW + 1,
            ..e.clone()
        };
        m.apply(earlier, None);
        assert_eq!(m.live_entries(NOW), vec![e]);
        assert_eq!(Cred::new().check(&m, NOW), Some(Revoked::SpiffeId));
    }

    #[test]
    fn locks_block_issuance_only_and_expired_lock_unlocks() {
        let m = RevocationMirror::new();
        let mut lock = entry(EntryKind::Lock, "spiffe://example.org/a", None);
        lock.expires_at = NEVER;
        lock.reason = Some("incident".into());
        m.apply(lock.clone(), Some("5-0"));
        assert_eq!(Cred::new().check(&m, NOW), None);
        assert_eq!(
            m.lock_of("spiffe://example.org/a", NOW),
            Some(LockInfo {
                expires_at: None,
                reason: Some("incident".into())
            })
        );
        assert_eq!(m.lock_of("spiffe://example.org/b", NOW), None);

        let unlock = RevocationEntry {
            expires_at: NOW,
            reason: None,
            ..lock.clone()
        };
        m.apply(unlock, Some("6-0"));
        assert_eq!(m.lock_of("spiffe://example.org/a", NOW), None);
        assert!(m.live_entries(NOW).is_empty());

        let ttl = RevocationEntry {
            expires_at: NOW + 60,
            ..lock
        };
        m.apply(ttl, None);
        assert_eq!(
            m.lock_of("spiffe://example.org/a", NOW).unwrap().expires_at,
            Some(NOW + 60)
        );
        assert_eq!(m.lock_of("spiffe://example.org/a", NOW + 60), None);
    }

    #[test]
    fn replace_all_swaps_content_and_cursor() {
        let m = RevocationMirror::new();
        m.apply(entry(EntryKind::Source, "old", Some(NOW)), Some("1-0"));
        m.replace_all(
            vec![entry(EntryKind::Credential, "00FF", None)],
            "9-0".into(),
        );
        assert_eq!(m.cursor().as_deref(), Some("9-0"));
        let live = m.live_entries(NOW);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].value, "ff");
    }

    #[test]
    fn sync_bookkeeping_only_moves_forward() {
        let m = RevocationMirror::new();
        m.mark_synced(2000);
        m.mark_synced(1000);
        assert_eq!(m.last_synced_ms(), Some(2000));
    }
}
