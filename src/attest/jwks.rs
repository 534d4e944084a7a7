//! JWKS: where a `jwt` attestor's verification keys come from, and the cache of fetched ones.
//!
//! A [`KeySet`] holds one ready verification key per (JWK, algorithm) pair
//! ([`crate::jws::VerifyKey`]), built once when the set is read.
//!
//! `jwks_file` and inline `jwks` are read once at start-up. A `jwks_url` is fetched on first
//! use and cached: a request whose key is in the cached set never waits for a fetch (a stale
//! set is refreshed by a background task while it keeps being used); only requests that
//! cannot be answered without a fetch — the cold cache, an unknown `kid` — wait, and they
//! share the one fetch in flight (single flight) instead of starting their own.
//!
//! Fetches use rustls with the ring provider and trust the attestor's `jwks_ca_file` when
//! it is set (a private issuer), and the public web PKI roots (`webpki-roots`) otherwise.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use josekit::jwk::Jwk;
use serde_json::Value;

use super::jwt::AttestError;
use crate::config::{AttestorConfig, InlineJwks};
use crate::jws::VerifyKey;

/// Whole-fetch time limit for a `jwks_url`.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted, fetched or read from a file.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Default `jwks_cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// Default `jwks_refresh_cooldown`.
pub const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

const RSA_ALGORITHMS: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];

/// Where a key set came from; decides how forgiving parsing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `jwks_file` / inline `jwks`: the operator's own file, so any broken key is an error.
    Config,
    /// `jwks_url`: somebody else's document, so broken or foreign keys are skipped (logged).
    Fetched,
}

/// One JWK, ready to verify with each algorithm it may be used for.
struct VerificationKey {
    kid: Option<String>,
    verifiers: Vec<(&'static str, VerifyKey)>,
}

impl VerificationKey {
    fn verifier(&self, alg: &str) -> Option<&VerifyKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// The usable keys of one JWKS document.
pub(crate) struct KeySet {
    keys: Vec<VerificationKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kids and algorithms only: never key material.
        let mut list = f.debug_list();
        for k in &self.keys {
            let algs: Vec<&str> = k.verifiers.iter().map(|(a, _)| *a).collect();
            list.entry(&(k.kid.as_deref(), algs));
        }
        list.finish()
    }
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// No key carries the token's `kid`.
    UnknownKid,
    /// The key named by `kid` cannot verify the token's `alg` (kty/crv/alg disagree).
    AlgorithmMismatch,
    /// The token has no `kid` and no key can verify its `alg`.
    NoKey,
    /// The token has no `kid` and several keys could verify its `alg`.
    Ambiguous,
}

impl KeyMiss {
    /// Whether fetching the JWKS again could help (a rotated-in key).
    pub(crate) fn may_be_new_key(self) -> bool {
        matches!(self, KeyMiss::UnknownKid | KeyMiss::NoKey)
    }
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable with `algorithms`.
    ///
    /// The error is fit for logs and error bodies: it names keys by index and `kid`, never
    /// by content.
    pub(crate) fn parse(
        bytes: &[u8],
        algorithms: &[&'static str],
        origin: Origin,
    ) -> Result<KeySet, String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "JWKS is not JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "JWKS has no \"keys\" array".to_string())?;
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match build_key(entry, algorithms, origin) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(why) => {
                    let kid = entry
                        .get("kid")
                        .and_then(Value::as_str)
                        .map(|k| format!(" (kid {:?})", super::jwt::echo(k)))
                        .unwrap_or_default();
                    let message = format!("key #{}{kid}: {why}", i + 1);
                    match origin {
                        Origin::Config => return Err(message),
                        Origin::Fetched => {
                            tracing::warn!(key = %message, "skipping an unusable key in a fetched JWKS")
                        }
                    }
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "JWKS has no key usable with {}",
                algorithms.join(", ")
            ));
        }
        Ok(KeySet { keys })
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Chooses the verifier for a token's `kid` and `alg` (SPEC §3).
    ///
    /// With a `kid`: the key with that `kid` that can verify `alg`. Without one: the single
    /// key that can verify `alg`; none or several is a refusal, never a guess.
    pub(crate) fn select(&self, kid: Option<&str>, alg: &str) -> Result<&VerifyKey, KeyMiss> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(KeyMiss::UnknownKid);
                }
                named
                    .find_map(|k| k.verifier(alg))
                    .ok_or(KeyMiss::AlgorithmMismatch)
            }
            None => {
                let mut fitting = self.keys.iter().filter_map(|k| k.verifier(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(v), None) => Ok(v),
                    (None, _) => Err(KeyMiss::NoKey),
                    (Some(_), Some(_)) => Err(KeyMiss::Ambiguous),
                }
            }
        }
    }
}

/// Builds the verifiers for one JWK. `Ok(None)`: the key is not for us (encryption key,
/// a type none of `algorithms` uses). `Err`: the key claims to be usable but is broken.
fn build_key(
    entry: &Value,
    algorithms: &[&'static str],
    origin: Origin,
) -> Result<Option<VerificationKey>, String> {
    let map = entry.as_object().ok_or("not a JSON object")?;
    let jwk = Jwk::from_map(map.clone()).map_err(|_| "not a valid JWK".to_string())?;
    if jwk.key_use().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if jwk.key_operations().is_some() && !jwk.is_for_key_operation("verify") {
        return Ok(None);
    }
    let crv = jwk.parameter("crv").and_then(Value::as_str);
    let compatible: &[&str] = match (jwk.key_type(), crv) {
        ("RSA", _) => RSA_ALGORITHMS,
        ("EC", Some("P-256")) => &["ES256"],
        ("EC", Some("P-384")) => &["ES384"],
        ("OKP", Some("Ed25519" | "Ed448")) => &["EdDSA"],
        ("oct", _) => return Err("symmetric (oct) keys are never accepted".into()),
        _ => &[],
    };
    if origin == Origin::Config
        && ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|p| map.contains_key(*p))
    {
        return Err("contains private key material; publish only public keys".into());
    }
    let usable: Vec<&'static str> = algorithms
        .iter()
        .copied()
        .filter(|a| compatible.contains(a))
        .filter(|a| jwk.algorithm().is_none_or(|own| own == *a))
        .collect();
    if usable.is_empty() {
        return Ok(None);
    }
    let mut verifiers = Vec::with_capacity(usable.len());
    for alg in usable {
        let verifier = VerifyKey::from_jwk(alg, &jwk)
            .map_err(|e| format!("not a valid {} key for {alg}: {e}", jwk.key_type()))?;
        verifiers.push((alg, verifier));
    }
    Ok(Some(VerificationKey {
        kid: jwk.key_id().map(str::to_owned),
        verifiers,
    }))
}

/// Where one attestor's keys come from.
pub(crate) enum JwksSource {
    /// `jwks_file` or inline `jwks`, read at start-up; never refetched.
    Static {
        keys: Arc<KeySet>,
        /// `file <path>` or `inline`, for `Debug`.
        from: String,
    },
    /// `jwks_url`, fetched lazily and cached.
    Remote(Arc<RemoteJwks>),
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Static { keys, from } => f
                .debug_struct("Static")
                .field("from", from)
                .field("keys", keys)
                .finish(),
            JwksSource::Remote(remote) => f
                .debug_struct("Remote")
                .field("url", &remote.url)
                .field("ttl_s", &remote.ttl)
                .field("cooldown_s", &remote.cooldown)
                .finish_non_exhaustive(),
        }
    }
}

impl JwksSource {
    /// Reads `jwks_file` / inline `jwks` now, or prepares the client for `jwks_url`.
    pub(crate) fn from_config(
        cfg: &AttestorConfig,
        issuer: &str,
        algorithms: &[&'static str],
    ) -> Result<JwksSource, AttestError> {
        let config_error = |message: String| AttestError::Config {
            attestor: cfg.name.clone(),
            message,
        };
        match (&cfg.jwks_url, &cfg.jwks_file, &cfg.jwks) {
            (None, Some(path), None) => {
                let bytes = read_limited(path)
                    .map_err(|e| config_error(format!("jwks_file {}: {e}", path.display())))?;
                let keys = KeySet::parse(&bytes, algorithms, Origin::Config)
                    .map_err(|e| config_error(format!("jwks_file {}: {e}", path.display())))?;
                Ok(JwksSource::Static {
                    keys: Arc::new(keys),
                    from: format!("file {}", path.display()),
                })
            }
            (None, None, Some(inline)) => {
                let bytes = match inline {
                    InlineJwks::Json(text) => text.as_bytes().to_vec(),
                    InlineJwks::Table(value) => serde_json::to_vec(value)
                        .map_err(|_| config_error("jwks: cannot be written as JSON".into()))?,
                };
                let keys = KeySet::parse(&bytes, algorithms, Origin::Config)
                    .map_err(|e| config_error(format!("jwks: {e}")))?;
                Ok(JwksSource::Static {
                    keys: Arc::new(keys),
                    from: "inline".into(),
                })
            }
            (Some(url), None, None) => {
                let remote = RemoteJwks::new(cfg, issuer, url, algorithms).map_err(config_error)?;
                Ok(JwksSource::Remote(Arc::new(remote)))
            }
            _ => Err(config_error(
                "set exactly one of jwks_url, jwks_file, jwks".into(),
            )),
        }
    }

    /// The keys to verify with now. Only a cold `jwks_url` cache waits for a fetch.
    pub(crate) async fn keys(&self, now: i64) -> Result<Arc<KeySet>, AttestError> {
        match self {
            JwksSource::Static { keys, .. } => Ok(Arc::clone(keys)),
            JwksSource::Remote(remote) => remote.keys(now).await,
        }
    }

    /// After a token named a key that `seen` lacks: a newer key set, fetching one if the
    /// cooldown allows; `None` when there is nothing newer to try.
    pub(crate) async fn refetch_for_unknown_key(
        &self,
        now: i64,
        seen: &Arc<KeySet>,
    ) -> Option<Arc<KeySet>> {
        match self {
            JwksSource::Static { .. } => None,
            JwksSource::Remote(remote) => remote.refetch_for_unknown_key(now, seen).await,
        }
    }
}

fn read_limited(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// A fetched key set and when (broker clock, Unix seconds) it was fetched.
#[derive(Clone)]
struct Snapshot {
    keys: Arc<KeySet>,
    fetched_at: i64,
}

/// A `jwks_url` with its cache.
pub(crate) struct RemoteJwks {
    attestor: String,
    issuer: String,
    url: String,
    client: reqwest::Client,
    algorithms: Vec<&'static str>,
    /// `jwks_cache_ttl`, seconds.
    ttl: i64,
    /// `jwks_refresh_cooldown`, seconds.
    cooldown: i64,
    /// What requests verify with; replaced whole, never edited.
    snapshot: RwLock<Option<Snapshot>>,
    /// Held for the duration of a fetch: at most one fetch at a time. Holds the last
    /// fetch's failure, which requests that waited for that fetch report.
    fetch_lock: tokio::sync::Mutex<Option<String>>,
    /// Number of finished fetches; a waiter that sees it move knows a fetch happened for it.
    fetches: AtomicU64,
    /// Start of the last fetch of any kind (paces retries of a failing background refresh).
    last_attempt: AtomicI64,
    /// Start of the last fetch triggered by an unknown `kid` (the cooldown).
    last_kid_refetch: AtomicI64,
    /// A background refresh task is queued or running.
    refreshing: AtomicBool,
}

impl RemoteJwks {
    fn new(
        cfg: &AttestorConfig,
        issuer: &str,
        url: &str,
        algorithms: &[&'static str],
    ) -> Result<RemoteJwks, String> {
        let secs = |d: Option<crate::config::Dur>, default: Duration| -> i64 {
            i64::try_from(d.map(|d| d.0).unwrap_or(default).as_secs()).unwrap_or(i64::MAX)
        };
        Ok(RemoteJwks {
            attestor: cfg.name.clone(),
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            client: http_client(cfg, url)?,
            algorithms: algorithms.to_vec(),
            ttl: secs(cfg.jwks_cache_ttl, DEFAULT_CACHE_TTL),
            cooldown: secs(cfg.jwks_refresh_cooldown, DEFAULT_REFRESH_COOLDOWN),
            snapshot: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            last_attempt: AtomicI64::new(i64::MIN),
            last_kid_refetch: AtomicI64::new(i64::MIN),
            refreshing: AtomicBool::new(false),
        })
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn unavailable(&self, reason: Option<String>) -> AttestError {
        AttestError::JwksUnavailable {
            issuer: self.issuer.clone(),
            reason: reason.unwrap_or_else(|| "no key set fetched yet".into()),
        }
    }

    async fn keys(self: &Arc<Self>, now: i64) -> Result<Arc<KeySet>, AttestError> {
        if let Some(snap) = self.snapshot() {
            let stale = now.saturating_sub(snap.fetched_at) >= self.ttl;
            let paced =
                now.saturating_sub(self.last_attempt.load(Ordering::Acquire)) >= self.cooldown;
            if stale && paced {
                self.spawn_refresh(now);
            }
            return Ok(snap.keys);
        }
        // Cold cache: nothing to answer with, so wait — for the fetch in flight if any.
        let seen = self.fetches.load(Ordering::Acquire);
        let mut last_error = self.fetch_lock.lock().await;
        if let Some(snap) = self.snapshot() {
            return Ok(snap.keys);
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            return Err(self.unavailable(last_error.clone()));
        }
        self.fetch_locked(&mut last_error, now)
            .await
            .map_err(|reason| self.unavailable(Some(reason)))
    }

    /// Refreshes a stale set in a task of its own; requests keep using the stale set.
    fn spawn_refresh(self: &Arc<Self>, now: i64) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            // Clears the flag however the task ends (including runtime shutdown).
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&this.refreshing);
            let mut last_error = this.fetch_lock.lock().await;
            let fresh = this
                .snapshot()
                .is_some_and(|s| now.saturating_sub(s.fetched_at) < this.ttl);
            if !fresh {
                // A failure is logged in fetch_locked; the stale set stays in use.
                let _ = this.fetch_locked(&mut last_error, now).await;
            }
        });
    }

    async fn refetch_for_unknown_key(&self, now: i64, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let newer = |this: &Self| {
            this.snapshot()
                .filter(|s| !Arc::ptr_eq(&s.keys, seen))
                .map(|s| s.keys)
        };
        if let Some(keys) = newer(self) {
            return Some(keys);
        }
        let cooling = |this: &Self| {
            now.saturating_sub(this.last_kid_refetch.load(Ordering::Acquire)) < this.cooldown
        };
        if cooling(self) {
            return None;
        }
        let seen_fetches = self.fetches.load(Ordering::Acquire);
        let mut last_error = self.fetch_lock.lock().await;
        if self.fetches.load(Ordering::Acquire) != seen_fetches || cooling(self) {
            // Someone fetched while we waited: use what they got rather than fetch again.
            return newer(self);
        }
        self.last_kid_refetch.store(now, Ordering::Release);
        tracing::info!(attestor = %self.attestor, issuer = %self.issuer, "unknown kid: fetching the JWKS again");
        // On failure the cached keys stay; the caller reports the unknown kid.
        self.fetch_locked(&mut last_error, now).await.ok()
    }

    /// One fetch; the caller holds `fetch_lock` (passing in its guarded value).
    async fn fetch_locked(
        &self,
        last_error: &mut Option<String>,
        now: i64,
    ) -> Result<Arc<KeySet>, String> {
        self.last_attempt.store(now, Ordering::Release);
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once()).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {}s", FETCH_TIMEOUT.as_secs())),
        };
        let outcome = match result {
            Ok(set) => {
                let keys = Arc::new(set);
                tracing::info!(attestor = %self.attestor, issuer = %self.issuer, keys = keys.len(), "fetched JWKS");
                *self
                    .snapshot
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Snapshot {
                    keys: Arc::clone(&keys),
                    fetched_at: now,
                });
                *last_error = None;
                Ok(keys)
            }
            Err(reason) => {
                let cached = self.snapshot().is_some();
                tracing::warn!(
                    attestor = %self.attestor,
                    issuer = %self.issuer,
                    url = %self.url,
                    %reason,
                    keeping_cached_keys = cached,
                    "JWKS fetch failed"
                );
                *last_error = Some(reason.clone());
                Err(reason)
            }
        };
        self.fetches.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn fetch_once(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {}", status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("response larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("response larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body, &self.algorithms, Origin::Fetched)
    }
}

/// A short reason for a failed request (no URL: the log line carries it).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out after {}s", FETCH_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".into()
    } else if e.is_redirect() {
        "too many redirects".into()
    } else {
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// The HTTP client for one `jwks_url`: rustls with the ring provider, trusting the
/// attestor's `jwks_ca_file` when set, and the public web PKI roots otherwise.
fn http_client(cfg: &AttestorConfig, url: &str) -> Result<reqwest::Client, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &cfg.jwks_ca_file {
        let pem =
            read_limited(path).map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "jwks_ca_file {}: no certificates in the file",
                path.display()
            ));
        }
    } else {
        // Public issuers (GitHub, GitLab, cloud OIDC) are served under the web PKI.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let plain_http = url.starts_with("http://");
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .https_only(!plain_http)
        .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")));
    if plain_http {
        // Config allows http:// only on loopback; never send that through a proxy.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;
    use crate::attest::jwt::test_support::*;
    use crate::attest::jwt::{AttestError, JwtAttestor};

    /// A loopback HTTP server answering every request with a canned response.
    struct JwksServer {
        url: String,
        hits: Arc<AtomicUsize>,
        response: Arc<Mutex<(u16, Vec<u8>)>>,
        /// While true, requests are counted but not answered.
        hold: watch::Sender<bool>,
    }

    impl JwksServer {
        async fn start(body: &Value) -> JwksServer {
            Self::start_with(body, None).await
        }

        /// With `tls`, serves HTTPS on 127.0.0.1.
        async fn start_with(body: &Value, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://{}/jwks", listener.local_addr().unwrap());
            let hits = Arc::new(AtomicUsize::new(0));
            let response = Arc::new(Mutex::new((200, body.to_string().into_bytes())));
            let (hold, _) = watch::channel(false);
            let server = JwksServer {
                url,
                hits: Arc::clone(&hits),
                response: Arc::clone(&response),
                hold: hold.clone(),
            };
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let hits = Arc::clone(&hits);
                    let response = Arc::clone(&response);
                    let hold = hold.subscribe();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => answer(socket, hits, response, hold).await,
                            Some(tls) => {
                                if let Ok(socket) = tls.accept(socket).await {
                                    answer(socket, hits, response, hold).await;
                                }
                            }
                        }
                    });
                }
            });
            server
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn serve(&self, status: u16, body: Vec<u8>) {
            *self.response.lock().unwrap() = (status, body);
        }

        fn attestor(&self) -> JwtAttestor {
            let mut cfg = bare_config("github");
            cfg.jwks_url = Some(self.url.clone());
            JwtAttestor::new(&cfg).unwrap()
        }
    }

    /// Answers one request with the canned response (counting it, honouring `hold`).
    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut socket: S,
        hits: Arc<AtomicUsize>,
        response: Arc<Mutex<(u16, Vec<u8>)>>,
        mut hold: watch::Receiver<bool>,
    ) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let _ = hold.wait_for(|held| !*held).await;
        let (status, body) = response.lock().unwrap().clone();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(&body).await;
        let _ = socket.shutdown().await;
    }

    /// Waits (briefly polling) for background work driven by real I/O.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..1000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn remote(a: &JwtAttestor) -> &Arc<RemoteJwks> {
        match a.key_source() {
            JwksSource::Remote(r) => r,
            JwksSource::Static { .. } => panic!("not a jwks_url attestor"),
        }
    }

    async fn refresh_done(a: &JwtAttestor) {
        let r = Arc::clone(remote(a));
        eventually("the background refresh", || {
            !r.refreshing.load(Ordering::SeqCst)
        })
        .await;
    }

    #[tokio::test]
    async fn fetched_jwks_is_cached() {
        let server = JwksServer::start(&default_jwks()).await;
        let a = server.attestor();
        assert_eq!(server.hits(), 0, "jwks_url is fetched lazily");
        a.attest(&rs256(&claims()), NOW).await.unwrap();
        a.attest(&es256(&claims()), NOW + 10).await.unwrap();
        a.attest(&rs256(&claims()), NOW + 299).await.unwrap();
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn concurrent_cold_requests_share_one_fetch() {
        let server = JwksServer::start(&default_jwks()).await;
        let a = server.attestor();
        server.hold.send_replace(true);
        let token = rs256(&claims());
        let hits = Arc::clone(&server.hits);
        let hold = server.hold.clone();
        tokio::spawn(async move {
            eventually("the first fetch", || hits.load(Ordering::SeqCst) == 1).await;
            // Give the other requests time to queue up behind it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            hold.send_replace(false);
        });
        let results = futures_util::future::join_all((0..8).map(|_| a.attest(&token, NOW))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_per_cooldown() {
        let server = JwksServer::start(&default_jwks()).await;
        let a = server.attestor();
        a.attest(&rs256(&claims()), NOW).await.unwrap();
        assert_eq!(server.hits(), 1);

        let rotated = rs256_with(Some("rsa2"), &keys().rsa2, &claims());
        let err = a.attest(&rotated, NOW).await.unwrap_err();
        assert!(matches!(&err, AttestError::UnknownKid { kid } if kid == "rsa2"));
        assert!(!err.is_unavailable());
        assert_eq!(server.hits(), 2, "one refetch for the unknown kid");
        for t in [NOW, NOW + 1, NOW + 29] {
            assert!(matches!(
                a.attest(&rotated, t).await,
                Err(AttestError::UnknownKid { .. })
            ));
        }
        assert_eq!(server.hits(), 2, "no refetch within the cooldown");
        // Known keys keep working meanwhile, without fetching.
        a.attest(&rs256(&claims()), NOW + 29).await.unwrap();
        assert_eq!(server.hits(), 2);

        // The issuer rotates the new key in; after the cooldown one refetch finds it.
        server.serve(
            200,
            json!({ "keys": [
                public_jwk(&keys().rsa, Some("rsa1"), None),
                public_jwk(&keys().rsa2, Some("rsa2"), None),
            ]})
            .to_string()
            .into_bytes(),
        );
        a.attest(&rotated, NOW + 30).await.unwrap();
        assert_eq!(server.hits(), 3);
        a.attest(&rotated, NOW + 31).await.unwrap();
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn stale_keys_are_refreshed_in_the_background() {
        let server = JwksServer::start(&default_jwks()).await;
        let a = server.attestor();
        a.attest(&rs256(&claims()), NOW).await.unwrap();

        // The refresh hangs; requests must not wait for it.
        server.hold.send_replace(true);
        let later = NOW + 301;
        let token = rs256(&claims());
        let answer = tokio::time::timeout(Duration::from_secs(2), a.attest(&token, later)).await;
        answer
            .expect("a stale-cache request waited for the refresh")
            .unwrap();
        eventually("the refresh request", || server.hits() == 2).await;
        let answer =
            tokio::time::timeout(Duration::from_secs(2), a.attest(&token, later + 1)).await;
        answer
            .expect("a second request waited for the refresh")
            .unwrap();
        server.hold.send_replace(false);
        refresh_done(&a).await;
        assert_eq!(server.hits(), 2, "one refresh, not one per request");

        // Fresh again until the next TTL.
        a.attest(&token, later + 299).await.unwrap();
        refresh_done(&a).await;
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_cached_keys() {
        let server = JwksServer::start(&default_jwks()).await;
        let a = server.attestor();
        a.attest(&rs256(&claims()), NOW).await.unwrap();

        server.serve(500, b"oops".to_vec());
        let token = rs256(&claims());
        a.attest(&token, NOW + 301).await.unwrap();
        refresh_done(&a).await;
        assert_eq!(server.hits(), 2);
        // Retries are paced by the cooldown, and the old keys stay in use.
        a.attest(&token, NOW + 302).await.unwrap();
        refresh_done(&a).await;
        assert_eq!(server.hits(), 2);
        a.attest(&token, NOW + 331).await.unwrap();
        refresh_done(&a).await;
        assert_eq!(server.hits(), 3);

        // An unknown kid whose refetch fails is still just an unknown kid.
        let rotated = rs256_with(Some("rsa2"), &keys().rsa2, &claims());
        assert!(matches!(
            a.attest(&rotated, NOW + 400).await,
            Err(AttestError::UnknownKid { .. })
        ));
    }

    #[tokio::test]
    async fn cold_fetch_failures_are_unavailable() {
        for (status, body) in [
            (500, b"oops".to_vec()),
            (200, b"<html>".to_vec()),
            (200, br#"{"keys": []}"#.to_vec()),
            (200, vec![b' '; MAX_JWKS_BYTES + 1]),
        ] {
            let server = JwksServer::start(&json!({})).await;
            server.serve(status, body);
            let a = server.attestor();
            let token = rs256(&claims());
            let err = a.attest(&token, NOW).await.unwrap_err();
            assert!(err.is_unavailable(), "{err}");
            assert!(!err.to_string().contains(&token));
            // The next request tries again rather than caching the failure.
            assert!(
                a.attest(&token, NOW + 1)
                    .await
                    .unwrap_err()
                    .is_unavailable()
            );
            assert_eq!(server.hits(), 2);
            // Once the issuer is back, requests succeed.
            server.serve(200, default_jwks().to_string().into_bytes());
            a.attest(&token, NOW + 2).await.unwrap();
        }
    }

    #[tokio::test]
    async fn unreachable_jwks_url_is_unavailable() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut cfg = bare_config("github");
        cfg.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks"));
        let a = JwtAttestor::new(&cfg).unwrap();
        let token = rs256(&claims());
        let err = a.attest(&token, NOW).await.unwrap_err();
        assert!(
            matches!(&err, AttestError::JwksUnavailable { issuer, .. } if issuer == ISSUER),
            "{err}"
        );
        assert!(err.is_unavailable());
        assert!(!err.to_string().contains(&token));
    }

    /// A self-signed certificate for 127.0.0.1 and the acceptor serving it.
    fn loopback_tls() -> (String, tokio_rustls::TlsAcceptor) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        (
            certified.cert.pem(),
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        )
    }

    #[tokio::test]
    async fn https_jwks_url_trusts_only_the_configured_ca() {
        let (ca_pem, acceptor) = loopback_tls();
        let server = JwksServer::start_with(&default_jwks(), Some(acceptor)).await;
        let mut cfg = bare_config("github");
        cfg.jwks_url = Some(server.url.clone());

        // No jwks_ca_file: only public roots, which do not include the test's private CA.
        let a = JwtAttestor::new(&cfg).unwrap();
        let err = a.attest(&rs256(&claims()), NOW).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert_eq!(server.hits(), 0);

        let dir = std::env::temp_dir().join(format!("credbroker-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        cfg.jwks_ca_file = Some(ca_file);
        let a = JwtAttestor::new(&cfg).unwrap();
        a.attest(&rs256(&claims()), NOW).await.unwrap();
        assert_eq!(server.hits(), 1);

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        cfg.jwks_ca_file = Some(empty);
        assert!(matches!(
            JwtAttestor::new(&cfg),
            Err(AttestError::Config { .. })
        ));
        cfg.jwks_ca_file = Some("/nonexistent/credbroker-test/ca.pem".into());
        assert!(matches!(
            JwtAttestor::new(&cfg),
            Err(AttestError::Config { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fetched_sets_skip_broken_keys_but_files_do_not() {
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB" },
            { "kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": "x", "y": "y" },
            { "kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA" },
            "not an object",
            public_jwk(&keys().rsa, Some("rsa1"), None),
        ]})
        .to_string();
        let set = KeySet::parse(jwks.as_bytes(), &["RS256", "ES256"], Origin::Fetched).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.select(Some("rsa1"), "RS256").is_ok());
        assert_eq!(
            set.select(Some("enc"), "ES256").err(),
            Some(KeyMiss::UnknownKid)
        );
        let err = KeySet::parse(jwks.as_bytes(), &["RS256", "ES256"], Origin::Config).unwrap_err();
        assert!(err.contains("broken"), "{err}");
    }

    #[test]
    fn keys_get_a_verifier_per_compatible_allowed_algorithm() {
        let jwks = default_jwks().to_string();
        let set = KeySet::parse(
            jwks.as_bytes(),
            &["RS256", "PS256", "ES256"],
            Origin::Config,
        )
        .unwrap();
        assert!(set.select(Some("rsa1"), "PS256").is_ok());
        assert!(set.select(Some("rsa1"), "RS256").is_ok());
        assert_eq!(
            set.select(Some("rsa1"), "RS384").err(),
            Some(KeyMiss::AlgorithmMismatch)
        );
        assert_eq!(
            set.select(Some("ec1"), "RS256").err(),
            Some(KeyMiss::AlgorithmMismatch)
        );
        assert_eq!(set.select(None, "ES256").map(|_| ()).err(), None);
        assert_eq!(set.select(None, "ES384").err(), Some(KeyMiss::NoKey));
        assert_eq!(set.select(None, "HS256").err(), Some(KeyMiss::NoKey));
        // Only RS256 allowed: the EC key is simply not usable, not an error.
        let set = KeySet::parse(jwks.as_bytes(), &["RS256"], Origin::Config).unwrap();
        assert_eq!(set.len(), 1);
        assert!(format!("{set:?}").contains("rsa1"));
    }
}
