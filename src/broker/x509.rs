//! The X.509 half of the broker: certificate attestation (`mtls` and `svid`), X.509-SVID
//! issuance, `client_credentials`, the trust bundle and the CRL.
//!
//! Same flow as the JWT half in the parent module: attest → grant → mint → record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::TrustAnchor;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::{Ask, Broker, BrokerError, Caller, IssuedToken, PresentedToken, StartError};
use super::{cap_to_bearer_parent, lineage_source};
use crate::attest::Attestation;
use crate::attest::mtls::{self, CertError, MtlsAttestor};
use crate::attest::x509svid::{self, OwnCa, X509SvidError};
use crate::config::{AttestorKind, Config, CredentialType};
use crate::governance::{MAX_SVID_NOTES, SvidNote};
use crate::issue::x509::{
    CaError, IssuedSvid, Lineage, SvidRequest, VerifiedCsr, X509Ca, is_serial,
};
use crate::store::StoreError;
use crate::tls::{CertificateAttestation, PeerCertificates};

/// How long the CRL follower gathers mirror changes before it scans (see
/// `Broker::share_covered_svids`).
const SHARE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(250);
/// After a failed share, the first retry waits this long; each further one twice as long,
/// up to [`SHARE_RETRY_MAX`].
const SHARE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const SHARE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The X.509 state of a broker: the CA, the trust anchors of every certificate attestor,
/// what the CRL needs to know.
pub(super) struct X509State {
    ca: Option<CaState>,
    mtls: Vec<MtlsAttestor>,
    issued: Mutex<Remembered>,
    crl: Mutex<CrlCache>,
}

/// The live X.509-SVIDs this broker issued, for the CRL.
#[derive(Default)]
struct Remembered {
    notes: HashMap<String, IssuedNote>,
    /// Set while full: no note expires before this time, so pruning earlier would find
    /// nothing (and scan every note on every issuance).
    full_until: Option<i64>,
}

impl Remembered {
    /// Remembers `note` unless `cap` live notes are remembered already; returns whether it
    /// did. Expired notes are pruned only when that can make room.
    fn remember(&mut self, note: SvidNote, now: i64, cap: usize) -> bool {
        if self.notes.len() >= cap {
            if self.full_until.is_some_and(|until| now < until) {
                return false;
            }
            self.notes.retain(|_, n| n.note.expires_at > now);
            if self.notes.len() >= cap {
                self.full_until = self.notes.values().map(|n| n.note.expires_at).min();
                tracing::warn!(
                    "more than {cap} live X.509-SVIDs: the CRL lists only directly revoked serials for the newest ones"
                );
                return false;
            }
            self.full_until = None;
        }
        let serial = note.serial.clone();
        self.notes.insert(
            serial,
            IssuedNote {
                note,
                shared: false,
            },
        );
        true
    }
}

struct CaState {
    ca: X509Ca,
    anchors: Vec<TrustAnchor<'static>>,
}

/// An X.509-SVID this broker knows of, for the CRL.
struct IssuedNote {
    note: SvidNote,
    /// Whether its serial is in the store's shared CRL set (a revocation covers it).
    shared: bool,
}

/// What a cached CRL reflects: the mirror (cursor, entry count) and the shared serials.
type CrlKey = (Option<String>, usize, Vec<String>);

#[derive(Default)]
struct CrlCache {
    key: Option<CrlKey>,
    built_at: i64,
    number: u64,
    der: Vec<u8>,
    /// When each listed serial first appeared on our CRL (its revocationDate).
    listed_since: HashMap<String, i64>,
}

impl X509State {
    /// Loads the CA (when `[x509]` is configured) and every `mtls` attestor's roots.
    pub(super) fn load(config: &Config) -> Result<X509State, StartError> {
        let ca = match X509Ca::load(&config.x509) {
            Ok(ca) => {
                let anchors = mtls::anchors(ca.roots())
                    .map_err(|e| StartError::Other(format!("[x509] bundle: {e}")))?;
                Some(CaState { ca, anchors })
            }
            Err(CaError::NotConfigured) => None,
            Err(e) => return Err(StartError::Other(format!("[x509]: {e}"))),
        };
        let mut attestors = Vec::new();
        for a in config
            .attestors
            .iter()
            .filter(|a| a.kind == AttestorKind::Mtls)
        {
            let bundle = a.ca_bundle.as_ref().ok_or_else(|| {
                StartError::Other(format!("attestor {:?}: ca_bundle is required", a.name))
            })?;
            attestors.push(
                MtlsAttestor::new(&a.name, bundle)
                    .map_err(|e| StartError::Other(format!("attestor {:?}: {e}", a.name)))?,
            );
        }
        Ok(X509State {
            ca,
            mtls: attestors,
            issued: Mutex::new(Remembered::default()),
            crl: Mutex::new(CrlCache::default()),
        })
    }
}

/// A freshly issued X.509-SVID and what `/v1/svid` answers.
#[derive(Debug, Clone)]
pub struct SvidIssued {
    pub spiffe_id: String,
    /// PEM leaf + intermediates.
    pub svid_chain: String,
    /// PEM roots.
    pub bundle: String,
    pub serial: String,
    pub expires_at: i64,
    pub refresh_after: i64,
}

impl Broker {
    /// The broker's issuing CA, when `[x509]` is configured.
    pub fn x509_ca(&self) -> Option<&X509Ca> {
        self.x509.ca.as_ref().map(|c| &c.ca)
    }

    fn ca_state(&self) -> Result<&CaState, BrokerError> {
        self.x509.ca.as_ref().ok_or_else(|| {
            BrokerError::Unavailable(
                "X.509-SVIDs are not configured on this broker ([x509])".into(),
            )
        })
    }

    /// The client certificate as an attestation: our own SVID (`svid`) first, then each
    /// `mtls` attestor's roots. Untrusted, expired or revoked → `Credential` (401).
    ///
    /// The first success on a connection is remembered with the chain's validity window;
    /// later requests on it skip path validation but are checked for time and, for our
    /// own SVIDs, revocation.
    pub fn attest_certificate(
        &self,
        certs: Option<&PeerCertificates>,
    ) -> Result<Attestation, BrokerError> {
        let certs = certs.filter(|c| !c.chain().is_empty()).ok_or_else(|| {
            BrokerError::Credential("a client certificate over mTLS is required".into())
        })?;
        let now = self.now();
        if let Some(known) = certs.attested_at(now) {
            if known.kind == AttestorKind::Svid {
                x509svid::check_revoked(&self.mirror, known, now)
                    .map_err(|e| BrokerError::Credential(e.to_string()))?;
            }
            return Ok(known.clone());
        }
        let attestation = self.verify_certificate(certs, now)?;
        if let Some((valid_from, valid_until)) = validity_window(certs.chain()) {
            certs.remember(CertificateAttestation {
                attestation: attestation.clone(),
                valid_from,
                valid_until,
            });
        }
        Ok(attestation)
    }

    /// Full path validation of a client chain, to our CA and then each `mtls` attestor's.
    fn verify_certificate(
        &self,
        certs: &PeerCertificates,
        now: i64,
    ) -> Result<Attestation, BrokerError> {
        let mut best: Option<CertError> = None;
        if let Some(ca) = &self.x509.ca {
            match self.attest_own_svid(ca, certs, now) {
                Ok(a) => return Ok(a),
                Err(X509SvidError::Chain(e)) => best = Some(e),
                // Chains to our CA but is revoked or not an SVID: final.
                Err(e) => return Err(BrokerError::Credential(e.to_string())),
            }
        }
        for attestor in &self.x509.mtls {
            match attestor.attest(certs.chain(), now) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| e.specificity() > b.specificity())
                    {
                        best = Some(e);
                    }
                }
            }
        }
        Err(BrokerError::Credential(
            best.unwrap_or(CertError::Untrusted).to_string(),
        ))
    }

    fn attest_own_svid(
        &self,
        ca: &CaState,
        certs: &PeerCertificates,
        now: i64,
    ) -> Result<Attestation, X509SvidError> {
        let own = OwnCa {
            roots: &ca.anchors,
            intermediates: ca.ca.intermediates(),
            trust_domain: &self.config.trust_domain,
        };
        x509svid::attest(&own, &self.mirror, certs.chain(), now)
    }

    /// Checks a client certificate chain as an X.509-SVID this broker issued; returns
    /// its SPIFFE ID. Used by admin-over-mTLS and introspection authentication.
    pub fn verify_peer_svid(&self, certs: &PeerCertificates) -> Result<String, String> {
        let ca = self
            .x509
            .ca
            .as_ref()
            .ok_or_else(|| "X.509-SVIDs are not configured on this broker".to_string())?;
        self.attest_own_svid(ca, certs, self.now())
            .map(|a| a.subject)
            .map_err(|e| e.to_string())
    }

    /// A bearer credential presented to `/v1/svid`: a JWT (platform token or one of ours)
    /// or, when it does not look like a JWT, a join token.
    pub async fn attest_bearer(&self, token: &str) -> Result<Attestation, BrokerError> {
        let looks_like_jwt = token.split('.').count() == 3 && token.starts_with("eyJ");
        let presented = if looks_like_jwt {
            PresentedToken::Jwt(token.to_string())
        } else {
            PresentedToken::JoinToken(token.to_string())
        };
        self.attest_token(&presented).await
    }

    /// `client_credentials` over mTLS: the client certificate is the attestation.
    pub async fn client_credentials(
        &self,
        certs: Option<&PeerCertificates>,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        self.ensure_fresh()?;
        let attested = self.attest_certificate(certs);
        self.issue_attested(attested, ask, caller).await
    }

    /// Grants and mints an X.509-SVID for an attested caller's CSR (SPEC §5.2, §6.2).
    pub async fn issue_svid(
        &self,
        attestation: &Attestation,
        csr: &VerifiedCsr,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<SvidIssued, BrokerError> {
        self.ensure_fresh()?;
        let ca = self.ca_state()?;
        let grant = match self
            .grant(attestation, CredentialType::X509, ask, caller)
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
        let lineage = Lineage {
            src: lineage_source(attestation).0,
            rule: grant.rule.clone(),
            chain: chain.clone(),
        };
        let request = SvidRequest {
            spiffe_id: grant.spiffe_id.as_str(),
            ttl,
            now,
            lineage: &lineage,
        };
        let issued: IssuedSvid = ca.ca.mint(csr, &request).map_err(|e| {
            tracing::error!(error = %e, "X.509-SVID signing failed");
            BrokerError::Internal(e.to_string())
        })?;
        let note = SvidNote {
            serial: issued.serial.clone(),
            spiffe_id: grant.spiffe_id.to_string(),
            src: lineage.src,
            issued_at: now,
            expires_at: issued.not_after,
            chain: lineage.chain,
        };
        self.record_issuance(
            attestation,
            &grant,
            &issued.serial,
            &chain,
            issued.not_after,
            caller,
            Some(note.clone()),
        )
        .await?;
        self.remember_issued(note);
        Ok(SvidIssued {
            spiffe_id: grant.spiffe_id.to_string(),
            svid_chain: issued.chain_pem,
            bundle: ca.ca.roots_pem().to_string(),
            serial: issued.serial,
            expires_at: issued.not_after,
            refresh_after: refresh_after(now, issued.not_after),
        })
    }

    fn remember_issued(&self, note: SvidNote) {
        let now = self.now();
        self.x509
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(note, now, MAX_SVID_NOTES);
    }

    /// Remembers the live SVIDs noted in the store (issued before this process started, or
    /// by another broker), so that revocations cover them on the CRL too.
    async fn recall_issued(&self) -> Result<(), StoreError> {
        let now = self.now();
        let notes = self.store.svid_notes(now, MAX_SVID_NOTES).await?;
        let mut recalled = false;
        {
            let mut remembered = self.x509.issued.lock().unwrap_or_else(|e| e.into_inner());
            for note in notes {
                if !remembered.notes.contains_key(&note.serial) {
                    recalled |= remembered.remember(note, now, MAX_SVID_NOTES);
                }
            }
        }
        if recalled {
            // A CRL served before could not list them, and no change to its key may follow
            // while their share fails: the next request rebuilds it.
            self.x509.crl.lock().unwrap_or_else(|e| e.into_inner()).key = None;
        }
        Ok(())
    }

    /// The PEM trust bundle (`GET /v1/bundle.pem`).
    pub fn bundle_pem(&self) -> Result<String, BrokerError> {
        Ok(self.ca_state()?.ca.roots_pem().to_string())
    }

    /// The SPIFFE trust bundle (`GET /v1/bundle`): `x509-svid` keys with `x5c` and no
    /// `kid`, then the JWT keys as `jwt-svid`.
    pub fn bundle_document(&self) -> Value {
        use base64::Engine;
        let mut keys = Vec::new();
        if let Some(ca) = &self.x509.ca {
            for root in ca.ca.roots() {
                if let Some(mut jwk) = certificate_jwk(root) {
                    jwk.insert("use".into(), json!("x509-svid"));
                    jwk.insert(
                        "x5c".into(),
                        json!([base64::engine::general_purpose::STANDARD.encode(root)]),
                    );
                    keys.push(Value::Object(jwk));
                }
            }
        }
        if let Some(jwks) = self.keys.jwks().get("keys").and_then(Value::as_array) {
            for key in jwks {
                let mut key = key.clone();
                if let Some(obj) = key.as_object_mut() {
                    obj.insert("use".into(), json!("jwt-svid"));
                }
                keys.push(key);
            }
        }
        let refresh_hint = self.config.x509.crl_next_update.0.as_secs().max(60);
        json!({
            "keys": keys,
            "spiffe_sequence": self.bundle_sequence(),
            "spiffe_refresh_hint": refresh_hint,
        })
    }

    /// Changes only when the published keys change: a hash of them, as a number.
    fn bundle_sequence(&self) -> u64 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        if let Some(ca) = &self.x509.ca {
            for root in ca.ca.roots() {
                ctx.update(root);
            }
        }
        for key in self.keys.all() {
            ctx.update(key.kid().as_bytes());
        }
        let d = ctx.finish();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d.as_ref()[..8]);
        // Keep it within JSON's exact integer range.
        u64::from_be_bytes(b) >> 11
    }

    /// The current CRL (DER), rebuilt when the revocation mirror or the shared serials
    /// changed, or half of `nextUpdate` has passed.
    pub async fn crl_der(&self) -> Result<Vec<u8>, BrokerError> {
        let ca = self.ca_state()?;
        let now = self.now();
        let shared = match self.store.crl_serials(now).await {
            Ok(serials) => serials,
            Err(e) => {
                self.tolerate_store_error(e)?;
                Vec::new()
            }
        };
        let next_update = self.config.x509.crl_next_update.0;
        let key = (self.mirror.cursor(), self.mirror.len(), shared);
        let mut cache = self.x509.crl.lock().unwrap_or_else(|e| e.into_inner());
        let fresh_enough = now < cache.built_at + (next_update.as_secs() as i64 / 2).max(1);
        if cache.key.as_ref() == Some(&key) && fresh_enough && !cache.der.is_empty() {
            return Ok(cache.der.clone());
        }
        let mut revoked = self.revoked_serials(now);
        revoked.extend(key.2.iter().cloned());
        let mut listed = HashMap::with_capacity(revoked.len());
        for serial in revoked {
            let since = cache.listed_since.get(&serial).copied().unwrap_or(now);
            listed.insert(serial, since);
        }
        let mut entries: Vec<(String, i64)> = listed.iter().map(|(s, t)| (s.clone(), *t)).collect();
        entries.sort();
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as u64;
        let number = now_ms.max(cache.number + 1);
        let der = ca
            .ca
            .crl(&entries, now, next_update, number)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        *cache = CrlCache {
            key: Some(key),
            built_at: now,
            number,
            der: der.clone(),
            listed_since: listed,
        };
        Ok(der)
    }

    /// Serials to list (possibly repeated): revoked credential entries that are serials, and
    /// every remembered live X.509-SVID that any entry covers (lineage, identity, source,
    /// cut-off).
    fn revoked_serials(&self, now: i64) -> Vec<String> {
        use crate::revoke::entry::EntryKind;
        let mut out: Vec<String> = self
            .mirror
            .live_entries(now)
            .into_iter()
            .filter(|e| e.kind == EntryKind::Credential && is_serial(&e.value))
            .map(|e| e.value)
            .collect();
        out.extend(self.covered_svids(now, false).into_iter().map(|(s, _)| s));
        out
    }

    /// This broker's live X.509-SVIDs that a revocation covers, with their expiry; only
    /// those not yet in the store's shared set when `unshared_only`.
    fn covered_svids(&self, now: i64, unshared_only: bool) -> Vec<(String, i64)> {
        use crate::revoke::mirror::CredentialRef;
        let mut remembered = self.x509.issued.lock().unwrap_or_else(|e| e.into_inner());
        remembered.notes.retain(|_, n| n.note.expires_at > now);
        remembered
            .notes
            .values()
            .filter(|n| !(unshared_only && n.shared))
            .map(|n| &n.note)
            .filter(|note| {
                let c = CredentialRef {
                    id: &note.serial,
                    spiffe_id: &note.spiffe_id,
                    source: &note.src,
                    issued_at: note.issued_at,
                    chain: &note.chain,
                    actors: &[],
                };
                self.mirror.check(&c, now).is_some()
            })
            .map(|note| (note.serial.clone(), note.expires_at))
            .collect()
    }

    /// Follows the revocation mirror and adds the serials of the SVIDs it knows that a new
    /// entry covers to the store's shared set, which every broker's CRL lists. It knows the
    /// SVIDs this broker issued and those noted in the store when it started: the live ones
    /// issued before (by any broker on the store), which its first scan checks against the
    /// entries already mirrored. A recall or share that fails is retried (with backoff)
    /// until it succeeds, without waiting for another revocation. Ends when `shutdown`
    /// turns true.
    pub async fn share_covered_svids(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.x509.ca.is_none() {
            return;
        }
        let mut changes = self.mirror.subscribe();
        let mut recalled = false;
        // Set while the recall or covered serials wait: how long until the next try.
        let mut retry = Some(std::time::Duration::ZERO);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                change = changes.recv(), if retry.is_none() => {
                    if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
            }
            // Entries come in bursts, and a scan reads every remembered SVID: one scan per
            // burst, at most four a second.
            tokio::time::sleep(SHARE_DEBOUNCE).await;
            while !matches!(
                changes.try_recv(),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
            ) {}
            if !recalled {
                if let Err(e) = self.recall_issued().await {
                    back_off(&mut retry, &e, "read the X.509-SVIDs noted in the store");
                    continue;
                }
                recalled = true;
            }
            let covered = self.covered_svids(self.now(), true);
            if covered.is_empty() {
                retry = None;
                continue;
            }
            match self.store.add_crl_serials(&covered).await {
                Ok(()) => {
                    retry = None;
                    let mut remembered = self.x509.issued.lock().unwrap_or_else(|e| e.into_inner());
                    for (serial, _) in &covered {
                        if let Some(note) = remembered.notes.get_mut(serial) {
                            note.shared = true;
                        }
                    }
                }
                Err(e) => back_off(&mut retry, &e, "share revoked SVID serials"),
            }
        }
    }
}

/// After a failure to `what` (for the CRL), logs it and sets the wait before the next try:
/// twice the last one, from [`SHARE_RETRY`] up to [`SHARE_RETRY_MAX`].
fn back_off(retry: &mut Option<std::time::Duration>, e: &StoreError, what: &str) {
    let wait = retry
        .filter(|w| !w.is_zero())
        .map_or(SHARE_RETRY, |w| (w * 2).min(SHARE_RETRY_MAX));
    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "could not {what} for the CRL");
    *retry = Some(wait);
}

/// `refresh_after`: half the lifetime, ± a random 10 % of it (SPEC §6.2).
pub fn refresh_after(now: i64, expires_at: i64) -> i64 {
    let lifetime = (expires_at - now).max(1);
    let tenth = lifetime / 10;
    let mut b = [0u8; 8];
    let jitter = if tenth > 0 && SystemRandom::new().fill(&mut b).is_ok() {
        let span = (2 * tenth + 1) as u64;
        (u64::from_le_bytes(b) % span) as i64 - tenth
    } else {
        0
    };
    (now + lifetime / 2 + jitter).clamp(now, expires_at)
}

/// The JWK members (`kty`, `crv`/`n`/`e`, `x`/`y`) of a certificate's public key.
fn certificate_jwk(der: &[u8]) -> Option<serde_json::Map<String, Value>> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spki = cert.public_key();
    let mut jwk = serde_json::Map::new();
    match spki.parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, n) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            jwk.insert("kty".into(), json!("EC"));
            jwk.insert("crv".into(), json!(crv));
            jwk.insert("x".into(), json!(B64.encode(&data[1..1 + n])));
            jwk.insert("y".into(), json!(B64.encode(&data[1 + n..])));
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[i..].to_vec()
            };
            jwk.insert("kty".into(), json!("RSA"));
            jwk.insert("n".into(), json!(B64.encode(strip(rsa.modulus))));
            jwk.insert("e".into(), json!(B64.encode(strip(rsa.exponent))));
        }
        _ if spki.subject_public_key.data.len() == 32 => {
            jwk.insert("kty".into(), json!("OKP"));
            jwk.insert("crv".into(), json!("Ed25519"));
            jwk.insert("x".into(), json!(B64.encode(&spki.subject_public_key.data)));
        }
        _ => return None,
    }
    Some(jwk)
}

/// The window (Unix seconds) in which every certificate of `chain` is valid; `None` if a
/// certificate cannot be parsed (then nothing is remembered).
fn validity_window(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    chain
        .iter()
        .try_fold((i64::MIN, i64::MAX), |(from, until), der| {
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            let validity = cert.validity();
            Some((
                from.max(validity.not_before.timestamp()),
                until.min(validity.not_after.timestamp()),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::{Remembered, SvidNote};

    fn note(serial: &str, expires_at: i64) -> SvidNote {
        SvidNote {
            serial: serial.into(),
            spiffe_id: "spiffe://example.org/w".into(),
            src: "src".into(),
            issued_at: 0,
            expires_at,
            chain: Vec::new(),
        }
    }

    #[test]
    fn a_full_crl_memory_waits_for_its_first_expiry_and_then_makes_room() {
        let mut r = Remembered::default();
        for (serial, expires_at) in [("a", 100), ("b", 200), ("c", 300)] {
            assert!(r.remember(note(serial, expires_at), 0, 3));
        }
        // Full, and nothing has expired: refused, and it knows until when that holds.
        assert!(!r.remember(note("d", 400), 50, 3));
        assert_eq!(r.full_until, Some(100));
        assert!(!r.remember(note("e", 400), 99, 3));
        assert_eq!(r.notes.len(), 3);
        // Once the earliest has expired, it is pruned and the new one kept.
        assert!(r.remember(note("f", 400), 100, 3));
        assert_eq!(r.full_until, None);
        let mut serials: Vec<_> = r.notes.keys().cloned().collect();
        serials.sort();
        assert_eq!(serials, ["b", "c", "f"]);
    }
}
