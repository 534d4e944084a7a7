//! The broker: attest → policy → issue → record, independent of any transport.
//!
//! HTTP handlers parse a request into one of the request types here and map the
//! [`BrokerError`] back to an OAuth error; everything in between happens in this file,
//! so the path a credential takes through the broker reads top to bottom.

mod x509;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::attest::jwt::{AttestError, JwtAttestors, UnverifiedJwt};
use crate::attest::{Attestation, join_token, svid};
use crate::clock::SharedClock;
use crate::config::{Config, CredentialType};
use crate::governance::audit::{AuditEvent, AuditEventKind};
use crate::governance::inventory::{IssuanceRecord, SvidNote};
use crate::issue::jwt::{IssuedJwt, JwtRequest, mint};
use crate::issue::keys::SigningKeys;
use crate::issue::lineage::child_chain;
use crate::policy::{Denial, Grant, Policy, Request};
use crate::revoke::mirror::RevocationMirror;
use crate::store::{JoinTokenRecord, Store, StoreError};

mod delegation;
pub use delegation::{ACTOR_LINE_MIN, ActorCredential, delegated_chain};

/// Why a request did not get a credential. Mapped to HTTP once, in `http::error`.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request itself is malformed (missing parameter, bad value).
    #[error("{0}")]
    BadRequest(String),
    /// The evidence did not prove anything (bad signature, expired, unknown issuer …).
    #[error(transparent)]
    Attestation(#[from] AttestError),
    /// A presented broker credential or join token is invalid, expired, used or revoked.
    #[error("{0}")]
    Credential(String),
    /// Attestation succeeded but policy refused.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The identity is locked by an admin.
    #[error("identity {spiffe_id} is locked")]
    Locked {
        spiffe_id: String,
        reason: Option<String>,
    },
    /// The rule's per-identity rate was exceeded.
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// A dependency is down and the broker fails closed.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an I/O failure the caller cannot fix; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        BrokerError::Unavailable("the revocation store is unreachable; try again shortly".into())
    }
}

/// Evidence presented as an RFC 8693 `subject_token` (or `actor_token`).
#[derive(Clone)]
pub enum PresentedToken {
    /// A JWT: a platform token for a `jwt` attestor, or a JWT this broker issued.
    Jwt(String),
    /// A one-time join token.
    JoinToken(String),
}

impl std::fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PresentedToken::Jwt(_) => f.write_str("Jwt(<redacted>)"),
            PresentedToken::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
        }
    }
}

/// Facts about the caller that the transport knows.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub addr: Option<IpAddr>,
    /// base64url SHA-256 of the client certificate DER (RFC 8705 `x5t#S256`), if one was presented.
    pub cert_thumbprint: Option<String>,
}

/// What a caller asks for, whatever the door.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub ttl: Option<Duration>,
}

/// A freshly minted JWT and what the response should say about it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub credential_id: String,
    pub spiffe_id: String,
    pub expires_in: u64,
    pub scopes: Vec<String>,
}

/// The assembled broker: keys, attestors, policy, store and revocation mirror.
pub struct Broker {
    config: Arc<Config>,
    clock: SharedClock,
    keys: SigningKeys,
    jwt_attestors: JwtAttestors,
    policy: Policy,
    store: Store,
    mirror: Arc<RevocationMirror>,
    x509: x509::X509State,
}

pub use x509::{SvidIssued, refresh_after};

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// A start-up failure; the broker refuses to start and says why.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("signing keys: {0}")]
    Keys(#[from] crate::issue::KeyError),
    #[error("attestor: {0}")]
    Attestor(#[from] AttestError),
    #[error("revocation store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl Broker {
    /// Assembles a broker from its parts; the store and mirror are shared with the
    /// background sync task that keeps the mirror current.
    pub fn new(
        config: Arc<Config>,
        clock: SharedClock,
        store: Store,
        mirror: Arc<RevocationMirror>,
    ) -> Result<Broker, StartError> {
        let keys = SigningKeys::load(&config.jwt.signing_keys)?;
        let jwt_attestors = JwtAttestors::new(&config.attestors)?;
        let policy = Policy::compile(&config)?;
        let x509 = x509::X509State::load(&config)?;
        Ok(Broker {
            config,
            clock,
            keys,
            jwt_attestors,
            policy,
            store,
            mirror,
            x509,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn mirror(&self) -> &Arc<RevocationMirror> {
        &self.mirror
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }

    /// How long since the revocation mirror last heard from the store.
    pub fn mirror_staleness(&self) -> Duration {
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        crate::revoke::sync::staleness(&self.mirror, now_ms)
    }

    /// Whether the mirror is recent enough to trust.
    pub fn mirror_fresh(&self) -> bool {
        self.mirror_staleness() <= self.config.revocation.max_staleness.0
    }

    /// Fails closed when revocations may have been missed (SPEC §7), unless `fail_open`.
    pub fn ensure_fresh(&self) -> Result<(), BrokerError> {
        if self.mirror_fresh() || self.config.revocation.fail_open {
            return Ok(());
        }
        Err(BrokerError::Unavailable(format!(
            "the revocation list has not been refreshed for more than {}; refusing to issue until it is",
            crate::config::units::format_duration(self.config.revocation.max_staleness.0)
        )))
    }

    /// RFC 8693 token exchange: `subject_token` (and optional `actor_token`) → a JWT.
    pub async fn exchange(
        &self,
        subject: &PresentedToken,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        self.ensure_fresh()?;
        let attested = self.attest_token(subject).await;
        self.issue_attested(attested, ask, caller).await
    }

    /// Issues a JWT for evidence just attested; a failed attestation is audited and returned.
    pub(crate) async fn issue_attested(
        &self,
        attested: Result<Attestation, BrokerError>,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        match attested {
            Ok(attestation) => self.issue_jwt(&attestation, ask, caller).await,
            Err(e) => {
                self.audit_denial(None, caller, &e).await;
                Err(e)
            }
        }
    }

    /// Grants and mints a JWT for an attested caller (any door).
    pub async fn issue_jwt(
        &self,
        attestation: &Attestation,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        let grant = match self
            .grant(attestation, CredentialType::Jwt, ask, caller)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.audit_denial(Some(attestation), caller, &e).await;
                return Err(e);
            }
        };
        let now = self.now();
        let ttl = cap_to_bearer_parent(attestation, grant.ttl, now);
        let chain = self.chain_for(attestation);
        self.mint_jwt(attestation, grant, chain, ttl, now, caller)
            .await
    }

    /// The last two steps of every JWT door: mint the granted JWT and record it.
    pub(crate) async fn mint_jwt(
        &self,
        attestation: &Attestation,
        grant: Grant,
        chain: Vec<String>,
        ttl: Duration,
        now: i64,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        let source = lineage_source(attestation);
        let cnf = if grant.bind_to_certificate {
            caller.cert_thumbprint.as_deref()
        } else {
            None
        };
        let request = JwtRequest {
            issuer: &self.config.issuer,
            spiffe_id: grant.spiffe_id.as_str(),
            audiences: &grant.audiences,
            scopes: &grant.scopes,
            owner: &grant.owner,
            attestor: &attestation.attestor,
            attestor_kind: attestation.kind.as_str(),
            ttl,
            now,
            cnf_x5t_s256: cnf,
            act: grant.act.as_ref(),
            source: source.as_str(),
            rule: &grant.rule,
            chain: &chain,
        };
        let issued: IssuedJwt =
            mint(&self.keys, &request).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.record_issuance(
            attestation,
            &grant,
            &issued.jti,
            &chain,
            issued.expires_at,
            caller,
            None,
        )
        .await?;
        Ok(IssuedToken {
            token: issued.token,
            credential_id: issued.jti,
            spiffe_id: grant.spiffe_id.to_string(),
            expires_in: (issued.expires_at - issued.issued_at).max(0) as u64,
            scopes: grant.scopes,
        })
    }

    /// With `fail_open`, a store outage must not stop issuance: the failed inventory or
    /// rate-limit write is logged and counted instead. Without it, the request fails closed.
    /// (Join tokens and one-time platform tokens stay strict either way: single use cannot
    /// be promised without the store.)
    fn tolerate_store_error(&self, e: StoreError) -> Result<(), BrokerError> {
        if self.config.revocation.fail_open {
            // The store has already counted the failure in credbroker_redis_errors_total.
            tracing::warn!(error = %e, "store write skipped (fail_open)");
            Ok(())
        } else {
            Err(e.into())
        }
    }

    /// Turns presented evidence into an attestation.
    pub async fn attest_token(&self, token: &PresentedToken) -> Result<Attestation, BrokerError> {
        match token {
            PresentedToken::Jwt(jwt) => {
                let decoded = UnverifiedJwt::decode(jwt)?;
                match decoded.iss() {
                    Some(iss) if iss == self.config.issuer => self.attest_own_jwt(jwt),
                    Some(iss) => {
                        let attestor = self.jwt_attestors.find_by_issuer(iss).ok_or_else(|| {
                            AttestError::UnknownIssuer {
                                iss: iss.chars().take(100).collect(),
                            }
                        })?;
                        let attestation = attestor.attest_decoded(decoded, self.now()).await?;
                        if attestor.rejects_replay()
                            && let Some((key, exp)) = attestor.replay_key(&attestation.claims, jwt)
                        {
                            let once_key = format!("{}:{key}", attestor.name());
                            if !self.store.remember_once(&once_key, exp).await? {
                                return Err(AttestError::Replayed.into());
                            }
                        }
                        Ok(attestation)
                    }
                    None => Err(AttestError::MissingClaim {
                        claim: "iss".into(),
                    }
                    .into()),
                }
            }
            PresentedToken::JoinToken(token) => self.redeem_join_token(token).await,
        }
    }

    fn attest_own_jwt(&self, token: &str) -> Result<Attestation, BrokerError> {
        let leeway = self.config.jwt.leeway.0.as_secs() as i64;
        svid::attest_jwt(
            &self.keys,
            &self.config.issuer,
            &self.mirror,
            token,
            self.now(),
            leeway,
        )
        .map(|(attestation, _)| attestation)
        .map_err(|e| BrokerError::Credential(e.to_string()))
    }

    async fn redeem_join_token(&self, token: &str) -> Result<Attestation, BrokerError> {
        if token.is_empty() || token.len() > 256 {
            return Err(BrokerError::Credential("malformed join token".into()));
        }
        let record: JoinTokenRecord = self
            .store
            .take_join_token(&join_token::token_hash(token))
            .await?
            .ok_or_else(|| {
                BrokerError::Credential("join token is unknown, expired or already used".into())
            })?;
        let attestor = self.join_token_attestor().unwrap_or("join_token");
        let attestation = join_token::attestation(attestor, &record.spiffe_id, record.expires_at);
        let event = AuditEvent::new(AuditEventKind::JoinTokenUsed, self.now())
            .identity(&record.spiffe_id)
            .attestor(attestor);
        event.log();
        self.store.append_audit(&event).await?;
        Ok(attestation)
    }

    /// Policy, then the live checks policy cannot make alone: locks and rate.
    pub async fn grant(
        &self,
        attestation: &Attestation,
        credential: CredentialType,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<Grant, BrokerError> {
        self.grant_as(attestation, credential, ask, caller, None)
            .await
    }

    /// [`grant`](Self::grant) for a request made by `actor` on the subject's behalf
    /// (delegation, SPEC §6.3); `None` is a plain request.
    pub async fn grant_as(
        &self,
        attestation: &Attestation,
        credential: CredentialType,
        ask: &Ask,
        caller: &Caller,
        actor: Option<&crate::policy::Actor>,
    ) -> Result<Grant, BrokerError> {
        let request = Request {
            attestation,
            credential,
            audiences: &ask.audiences,
            scopes: &ask.scopes,
            ttl: ask.ttl,
            caller: caller.addr,
            actor,
        };
        let grant = self.policy.decide(&request)?;
        let now = self.now();
        if let Some(lock) = self.mirror.lock_of(grant.spiffe_id.as_str(), now) {
            return Err(BrokerError::Locked {
                spiffe_id: grant.spiffe_id.to_string(),
                reason: lock.reason,
            });
        }
        if let Some(rate) = &grant.rate {
            let key = format!("{}|{}", grant.rule, grant.spiffe_id);
            let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
            match self
                .store
                .take_rate_token(&key, rate.capacity, rate.period, now_ms)
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(retry_after)) => return Err(BrokerError::RateLimited { retry_after }),
                Err(e) => self.tolerate_store_error(e)?,
            }
        }
        Ok(grant)
    }

    /// The lineage chain of a credential obtained with `attestation`.
    pub fn chain_for(&self, attestation: &Attestation) -> Vec<String> {
        match &attestation.parent {
            Some(parent) => child_chain(&parent.id, &parent.chain),
            None => Vec::new(),
        }
    }

    /// Records an issuance in the inventory and audit log, and an X.509-SVID's note (`svid`;
    /// none for a JWT) for the CRL: one store round trip.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_issuance(
        &self,
        attestation: &Attestation,
        grant: &Grant,
        credential_id: &str,
        chain: &[String],
        expires_at: i64,
        caller: &Caller,
        svid: Option<SvidNote>,
    ) -> Result<(), BrokerError> {
        let credential_type = if svid.is_some() { "x509" } else { "jwt" };
        let now = self.now();
        let event = AuditEvent::new(AuditEventKind::Issued, now)
            .identity(grant.spiffe_id.as_str())
            .owner(&grant.owner)
            .attestor(&attestation.attestor)
            .credential(credential_id)
            .parents(chain)
            .caller(caller.addr);
        event.log();
        let record = IssuanceRecord {
            spiffe_id: grant.spiffe_id.to_string(),
            owner: grant.owner.clone(),
            rule: grant.rule.clone(),
            attestor: attestation.attestor.clone(),
            issued_at: now,
            expires_at,
            event,
            svid,
        };
        if let Err(e) = self.store.record_issuance(&record).await {
            self.tolerate_store_error(e)?;
        }
        metrics::counter!("credbroker_issued_total", "type" => credential_type).increment(1);
        Ok(())
    }

    /// Logs and stores a denial, with its reason; never the evidence itself.
    pub async fn audit_denial(
        &self,
        attestation: Option<&Attestation>,
        caller: &Caller,
        error: &BrokerError,
    ) {
        let reason = denial_reason(error);
        metrics::counter!("credbroker_denied_total", "reason" => reason).increment(1);
        let mut event = AuditEvent::new(AuditEventKind::Denied, self.now()).caller(caller.addr);
        event = match attestation {
            // The attested subject is not yet an identity: it goes with the reason.
            Some(a) => event
                .attestor(&a.attestor)
                .reason(&format!("{error} (attested subject {:?})", a.subject)),
            None => event.reason(&error.to_string()),
        };
        event.log();
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::warn!(error = %e, "could not store a denial audit event");
        }
    }

    /// The configured `join_token` attestor, if any (join tokens are redeemed through it).
    pub fn join_token_attestor(&self) -> Option<&str> {
        self.config
            .attestors
            .iter()
            .find(|a| a.kind == crate::config::AttestorKind::JoinToken)
            .map(|a| a.name.as_str())
    }
}

/// A JWT exchanged for another never outlives it: a bearer token can be narrowed, not
/// extended, so a stolen one cannot be renewed forever. (An X.509-SVID renewed over mTLS
/// proves possession of its key and may be renewed; its rule bounds it.)
fn cap_to_bearer_parent(attestation: &Attestation, ttl: Duration, now: i64) -> Duration {
    let bearer = attestation.parent.is_some()
        && attestation.claims.get("typ").and_then(|t| t.as_str()) != Some("x509");
    match (bearer, attestation.expires_at) {
        (true, Some(exp)) => ttl.min(Duration::from_secs(exp.saturating_sub(now).max(1) as u64)),
        _ => ttl,
    }
}

/// The source that revocation by source should reach: a renewal keeps its line's source.
fn lineage_source(attestation: &Attestation) -> crate::attest::SourceId {
    match &attestation.parent {
        Some(p) => p.source.clone(),
        None => attestation.source.clone(),
    }
}

/// A short, stable label for the denial metric.
fn denial_reason(error: &BrokerError) -> &'static str {
    match error {
        BrokerError::BadRequest(_) => "bad_request",
        BrokerError::Attestation(e) if e.is_unavailable() => "attestor_unavailable",
        BrokerError::Attestation(_) => "attestation",
        BrokerError::Credential(_) => "credential",
        BrokerError::Denied(_) => "policy",
        BrokerError::Locked { .. } => "locked",
        BrokerError::RateLimited { .. } => "rate",
        BrokerError::Unavailable(_) => "unavailable",
        BrokerError::Internal(_) => "internal",
    }
}
