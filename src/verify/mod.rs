//! The relying-party library (SPEC §9): accept credbroker credentials and honour
//! revocations instantly, without calling the broker per request.
//!
//! A [`Verifier`] is built once from the broker's URL and the CA that signs its HTTPS
//! certificate and its X.509-SVIDs. It keeps three things fresh in the background — the
//! JWKS, the trust bundle and a local [`RevocationMirror`] fed by
//! `GET /v1/revocations/stream` — so that [`Verifier::verify_jwt`] and the rustls
//! verifiers ([`SvidClientCertVerifier`], [`SvidServerCertVerifier`]) are local,
//! synchronous checks. When the revocation feed has been unreachable for longer than
//! `max_staleness`, every check fails closed ([`VerifyError::Stale`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), credbroker::verify::VerifyError> {
//! use credbroker::verify::{FeedCredential, Verifier, VerifierConfig};
//! let verifier = Verifier::connect(
//!     VerifierConfig::new("https://broker.example.org:8443")
//!         .ca_file("/etc/credbroker/ca.pem")
//!         .feed_credential(FeedCredential::BearerFile("/run/secrets/introspect.jwt".into())),
//! )
//! .await?;
//! let claims = verifier.verify_jwt("eyJ…", "payments")?;
//! println!("caller {} (owner {})", claims.sub, claims.owner);
//! # Ok(()) }
//! ```

mod extract;
mod feed;
mod http;
mod jwks;
mod jwt;
mod x509;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::revoke::mirror::{RevocationMirror, Revoked};

pub use extract::{PeerCertificate, VerifiedJwt, VerifyRejection};
pub use x509::{SvidClientCertVerifier, SvidServerCertVerifier, VerifiedSvid, serial_hex};

/// Default for [`VerifierConfig::max_staleness`] (as the broker's `revocation.max_staleness`).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
/// Default clock-skew allowance for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// How often the JWKS and trust bundle are refetched even when nothing asks for it (the
/// broker serves the JWKS with `max-age=60`).
pub const DEFAULT_KEYS_REFRESH: Duration = Duration::from_secs(60);
/// The shortest time between two JWKS fetches caused by unknown `kid`s, so that tokens
/// with made-up `kid`s cannot make the verifier hammer the broker.
pub const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(5);

/// What the verifier shows the broker to read the revocation feed (SPEC §6.4: like
/// introspection). Never printed: `Debug` names the kind only.
#[derive(Clone, Default)]
pub enum FeedCredential {
    /// No credential (a broker in `dev` mode leaves the feed open).
    #[default]
    None,
    /// The admin token.
    AdminToken(String),
    /// A credbroker JWT whose scope contains `credbroker:introspect`.
    Bearer(String),
    /// A file holding such a JWT, read again at every (re)connection so it can be rotated.
    BearerFile(PathBuf),
    /// An X.509-SVID presented over mTLS: PEM chain (leaf first) and PEM private key.
    ClientCert { chain_pem: String, key_pem: String },
}

impl std::fmt::Debug for FeedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FeedCredential::None => "None",
            FeedCredential::AdminToken(_) => "AdminToken(<redacted>)",
            FeedCredential::Bearer(_) => "Bearer(<redacted>)",
            FeedCredential::BearerFile(_) => "BearerFile",
            FeedCredential::ClientCert { .. } => "ClientCert",
        })
    }
}

/// How to build a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The broker's base URL, e.g. `https://broker.example.org:8443`.
    pub broker_url: String,
    /// PEM file with the CA(s) that sign the broker's HTTPS certificate and its SVIDs.
    pub ca_file: Option<PathBuf>,
    /// The same as PEM text (added to `ca_file`'s certificates when both are given).
    pub ca_pem: Option<String>,
    /// The expected `iss`; by default the `issuer` of the broker's RFC 8414 metadata.
    pub issuer: Option<String>,
    /// The audience [`VerifiedJwt`] requires; `verify_jwt` takes it per call.
    pub audience: Option<String>,
    /// Credential for the revocation feed.
    pub feed_credential: FeedCredential,
    /// Past this long without a live feed, every check fails closed.
    pub max_staleness: Duration,
    /// Allowed clock skew for the token's time window.
    pub leeway: Duration,
    /// Periodic JWKS and bundle refresh.
    pub keys_refresh: Duration,
    /// Minimum time between two JWKS fetches triggered by an unknown `kid`.
    pub refetch_cooldown: Duration,
    /// Accept credentials while the feed is stale (logged loudly). Not recommended.
    pub fail_open: bool,
}

impl VerifierConfig {
    /// A configuration with defaults for everything but the broker URL.
    pub fn new(broker_url: impl Into<String>) -> Self {
        Self {
            broker_url: broker_url.into(),
            ca_file: None,
            ca_pem: None,
            issuer: None,
            audience: None,
            feed_credential: FeedCredential::None,
            max_staleness: DEFAULT_MAX_STALENESS,
            leeway: DEFAULT_LEEWAY,
            keys_refresh: DEFAULT_KEYS_REFRESH,
            refetch_cooldown: DEFAULT_REFETCH_COOLDOWN,
            fail_open: false,
        }
    }

    /// Trusts the CA certificates in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Trusts these PEM CA certificates.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sets the audience the axum extractor requires.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the credential for the revocation feed.
    pub fn feed_credential(mut self, credential: FeedCredential) -> Self {
        self.feed_credential = credential;
        self
    }

    /// Sets how long the verifier may run without a live revocation feed.
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }
}

/// Why a credential was refused, or the verifier could not start. Messages never contain
/// the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The verifier could not be set up (bad CA file, unreachable broker at start).
    #[error("verifier setup: {0}")]
    Setup(String),
    /// Not a well-formed compact JWS, or its claims are not a credbroker credential's.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not one the broker signs with (`none` and HS* are always refused).
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No key in the broker's JWKS has this `kid` (a refetch may help, within its cooldown).
    #[error("no published key has this kid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `iss` is not the broker's issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name the expected audience.
    #[error("the token is not for this audience")]
    WrongAudience,
    /// Past `exp` (plus leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` or `iat` in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Revoked: the credential, an ancestor in its `chain`, its identity, an actor, its
    /// source, or everything before a cut-off.
    #[error("revoked: {0}")]
    Revoked(Revoked),
    /// The token is bound to a client certificate (`cnf`) and none, or another, was presented.
    #[error("the token is bound to a different client certificate, or none was presented")]
    BindingMismatch,
    /// The revocation feed has been down for longer than `max_staleness`: fail closed.
    #[error("the revocation list is stale; refusing until the feed is back")]
    Stale,
    /// A certificate that is not a valid X.509-SVID of this trust bundle.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// Verifies credbroker credentials locally; cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    audience: Option<String>,
    leeway: i64,
    max_staleness: Duration,
    fail_open: bool,
    refetch_cooldown: Duration,
    http: Arc<http::BrokerClient>,
    keys: jwks::KeyCache,
    bundle: x509::Bundle,
    /// Signature algorithms for handshakes and certificate chains (ring).
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    mirror: Arc<RevocationMirror>,
    /// Wakes the key refresher early (unknown `kid`).
    refresh_keys: Arc<Notify>,
    shutdown: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Verifier {
    /// Connects to the broker: learns its issuer, fetches the JWKS and bundle, loads the
    /// revocation list in full, then follows the feed in a background task (which stops
    /// when the last clone of the verifier is dropped).
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(config: VerifierConfig) -> Result<Verifier, VerifyError> {
        crate::tls::install_default_provider();
        let ca_pem = read_ca(&config)?;
        let http = Arc::new(http::BrokerClient::new(
            &config.broker_url,
            &ca_pem,
            &config.feed_credential,
        )?);
        let issuer = match &config.issuer {
            Some(i) => i.clone(),
            None => http.issuer().await?,
        };
        let keys = jwks::KeyCache::new(http.fetch_jwks().await?)?;
        let bundle = x509::Bundle::from_pem(&ca_pem)?;
        if let Ok(Some(pem)) = http.fetch_bundle_pem().await {
            bundle.add_pem(&pem);
        }
        let mirror = Arc::new(RevocationMirror::new());
        feed::full_load(&http, &mirror).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        if config.fail_open {
            tracing::warn!(
                "verifier fail_open = true: credentials are ACCEPTED while the revocation feed is down"
            );
        }
        let inner = Arc::new(Inner {
            issuer,
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs() as i64,
            max_staleness: config.max_staleness,
            fail_open: config.fail_open,
            refetch_cooldown: config.refetch_cooldown,
            http,
            keys,
            bundle,
            algorithms: crate::tls::provider().signature_verification_algorithms,
            mirror,
            refresh_keys: Arc::new(Notify::new()),
            shutdown,
        });
        tokio::spawn(feed::follow(
            inner.http.clone(),
            inner.mirror.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(jwks::refresher(
            Arc::downgrade(&inner),
            inner.refresh_keys.clone(),
            config.keys_refresh,
            shutdown_rx,
        ));
        Ok(Verifier { inner })
    }

    /// The issuer tokens must name.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The audience configured for the axum extractor, if any.
    pub fn audience(&self) -> Option<&str> {
        self.inner.audience.as_deref()
    }

    /// The local revocation mirror (read-only use; the feed task writes it).
    pub fn revocation_mirror(&self) -> &Arc<RevocationMirror> {
        &self.inner.mirror
    }

    /// How long since the revocation feed was last known live (`Duration::MAX`: never).
    pub fn staleness(&self) -> Duration {
        crate::revoke::sync::staleness(&self.inner.mirror, crate::store::wall_ms())
    }

    /// Fails closed when the revocation list may have missed revocations.
    fn ensure_fresh(&self) -> Result<(), VerifyError> {
        if self.inner.fail_open || self.staleness() <= self.inner.max_staleness {
            Ok(())
        } else {
            Err(VerifyError::Stale)
        }
    }

    /// Refetches the JWKS now unless one was fetched within the cooldown.
    pub async fn refresh_keys(&self) -> Result<(), VerifyError> {
        jwks::refresh_if_cool(&self.inner).await
    }
}

/// The CA PEM text from `ca_file` and/or `ca_pem`.
fn read_ca(config: &VerifierConfig) -> Result<String, VerifyError> {
    let mut pem = String::new();
    if let Some(path) = &config.ca_file {
        pem = std::fs::read_to_string(path)
            .map_err(|e| VerifyError::Setup(format!("{}: {e}", path.display())))?;
    }
    if let Some(extra) = &config.ca_pem {
        pem.push('\n');
        pem.push_str(extra);
    }
    if pem.trim().is_empty() {
        return Err(VerifyError::Setup(
            "a CA is required (ca_file or ca_pem) to trust the broker".into(),
        ));
    }
    Ok(pem)
}
