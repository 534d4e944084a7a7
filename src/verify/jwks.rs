//! The broker's published JWT keys, kept fresh: refetched periodically, and early (within
//! a cooldown) when a token names a `kid` we do not know. A refetch replaces the set, so a
//! key the broker stopped publishing stops verifying.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::{Inner, VerifyError};
use crate::attest::jwks::{KeySet, Origin};

/// The algorithms the broker may sign with (SPEC §5.1); `none` and HS* never.
pub(super) const ALGORITHMS: &[&str] = &["ES256", "RS256", "EdDSA"];

pub(super) struct KeyCache {
    set: RwLock<Arc<KeySet>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.current())
            .finish()
    }
}

fn parse(bytes: &[u8]) -> Result<KeySet, VerifyError> {
    KeySet::parse(bytes, ALGORITHMS, Origin::Fetched).map_err(VerifyError::Setup)
}

impl KeyCache {
    /// A cache holding the keys of this JWKS document, which must parse.
    pub(super) fn new(jwks: Vec<u8>) -> Result<Self, VerifyError> {
        Ok(Self {
            set: RwLock::new(Arc::new(parse(&jwks)?)),
            last_fetch: Mutex::new(Some(Instant::now())),
        })
    }

    /// The current key set.
    pub(super) fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// Claims the right to fetch now: false when the last fetch is within `cooldown`.
    fn claim_fetch(&self, cooldown: Duration) -> bool {
        let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < cooldown) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

async fn fetch_into(inner: &Inner) -> Result<(), VerifyError> {
    let bytes = inner.http.fetch_jwks().await?;
    let set = parse(&bytes)?;
    inner.keys.replace(set);
    if let Ok(Some(pem)) = inner.http.fetch_bundle_pem().await {
        inner.bundle.add_pem(&pem);
    }
    Ok(())
}

/// Refetches unless a fetch happened within the cooldown (then it is a no-op).
pub(super) async fn refresh_if_cool(inner: &Inner) -> Result<(), VerifyError> {
    if !inner.keys.claim_fetch(inner.refetch_cooldown) {
        return Ok(());
    }
    fetch_into(inner).await
}

/// Periodic refresh, and early refresh when woken (unknown `kid`), until the verifier is
/// dropped. Holds the verifier only while fetching, so dropping it ends the task.
pub(super) async fn refresher(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_secs(1));
    loop {
        let woken = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = wake.notified() => true,
            _ = shutdown.changed() => return,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let result = if woken {
            refresh_if_cool(&strong).await
        } else {
            strong.keys.claim_fetch(Duration::ZERO);
            fetch_into(&strong).await
        };
        if let Err(e) = result {
            // The old keys stay in use: a broker outage does not stop verification.
            tracing::warn!(error = %e, "cannot refresh the broker's JWKS");
        }
    }
}
