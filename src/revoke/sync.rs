//! Keeping a [`RevocationMirror`] in step with the store: a full load at start, then a
//! blocking read of the stream from the last cursor (SPEC §7).
//!
//! After an error the loop backs off and resumes from the same cursor; when the stream no
//! longer holds the events after it, the loop reloads in full. Nothing is lost either way
//! because applying an entry twice is harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::RevocationMirror;
use crate::store::{EventRead, Store, StoreError};

/// How long one stream read waits for an event.
const BLOCK: Duration = Duration::from_secs(1);
/// Back-off after a failed read: doubles from the first value up to the second.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Expired entries are dropped from the mirror this often.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Loads every live entry into `mirror`, replacing what it held, and marks it synced.
pub async fn initial_load(store: &Store, mirror: &RevocationMirror) -> Result<(), StoreError> {
    let (entries, cursor) = store.load_revocations().await?;
    let count = entries.len();
    mirror.replace_all(entries, cursor);
    mirror.mark_synced(crate::store::wall_ms());
    metrics::gauge!("credbroker_mirror_entries").set(mirror.len() as f64);
    tracing::info!(entries = count, "revocation mirror loaded");
    Ok(())
}

/// Follows the store's revocation stream into `mirror` until `shutdown` turns true.
///
/// Loads in full first when the mirror has never been loaded. Every answer from the store
/// (even an empty one) marks the mirror synced; see [`staleness`].
pub async fn run_mirror_sync(
    store: Store,
    mirror: Arc<RevocationMirror>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let step = async {
            match mirror.cursor() {
                None => initial_load(&store, &mirror).await,
                Some(cursor) => follow(&store, &mirror, &cursor).await,
            }
        };
        let result = tokio::select! {
            r = step => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "revocation mirror cannot reach the store");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            mirror.prune(crate::store::wall_ms() / 1000);
            metrics::gauge!("credbroker_mirror_entries").set(mirror.len() as f64);
            last_prune = tokio::time::Instant::now();
        }
    }
}

/// One read from the stream, applied.
async fn follow(store: &Store, mirror: &RevocationMirror, cursor: &str) -> Result<(), StoreError> {
    match store.read_revocation_events_after(cursor, BLOCK).await? {
        EventRead::Events(events) => {
            let applied_at = crate::store::wall_ms();
            let any = !events.is_empty();
            for event in events {
                let lag_ms = (applied_at - event.written_at_ms).max(0);
                metrics::histogram!("credbroker_mirror_lag_seconds").record(lag_ms as f64 / 1000.0);
                mirror.apply(event.entry, Some(&event.cursor));
            }
            mirror.mark_synced(applied_at);
            if any {
                metrics::gauge!("credbroker_mirror_entries").set(mirror.len() as f64);
            }
            Ok(())
        }
        EventRead::Trimmed => {
            tracing::warn!(
                cursor,
                "revocation stream no longer holds our position; reloading in full"
            );
            initial_load(store, mirror).await
        }
    }
}

/// How long since the mirror last heard from the store (`Duration::MAX` if never).
pub fn staleness(mirror: &RevocationMirror, now_ms: i64) -> Duration {
    match mirror.last_synced_ms() {
        Some(at) => Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64),
        None => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revoke::{EntryKind, RevocationEntry};

    #[test]
    fn staleness_counts_from_the_last_answer() {
        let m = RevocationMirror::new();
        assert_eq!(staleness(&m, 5000), Duration::MAX);
        m.mark_synced(4000);
        assert_eq!(staleness(&m, 5500), Duration::from_millis(1500));
        assert_eq!(staleness(&m, 3000), Duration::ZERO);
    }

    #[tokio::test]
    async fn follows_the_memory_store_and_stops_on_shutdown() {
        let store = Store::memory();
        let mirror = Arc::new(RevocationMirror::new());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run_mirror_sync(store.clone(), mirror.clone(), rx));
        let entry = RevocationEntry::credential("abc", i64::MAX, None);
        store.publish_revocation(&entry).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while mirror.live_entries(0).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(mirror.live_entries(0)[0].kind, EntryKind::Credential);
        assert!(mirror.last_synced_ms().is_some());
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
