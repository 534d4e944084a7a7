//! The built-in `svid` attestor for X.509: an X.509-SVID this broker issued, presented
//! as the TLS client certificate.
//!
//! It must chain to the broker's own CA, be unexpired, carry exactly one URI SAN in our
//! trust domain and our lineage extension, and be unrevoked — including through its
//! lineage, so revoking an ancestor kills a renewal made before the revocation.

use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::json;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::mtls::{CertError, verify_chain};
use super::svid::SVID_ATTESTOR;
use super::{Attestation, ParentCredential, SourceId};
use crate::config::AttestorKind;
use crate::identity::{SpiffeId, TrustDomain};
use crate::issue::x509::{BACKDATE_SECS, Lineage};
use crate::revoke::mirror::{CredentialRef, RevocationMirror};

/// Why a presented certificate is not a valid X.509-SVID of this broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509SvidError {
    /// The chain does not verify to the broker's CA (the caller may be another attestor's).
    #[error(transparent)]
    Chain(#[from] CertError),
    #[error("the certificate is not a credbroker X.509-SVID: {0}")]
    NotSvid(&'static str),
    #[error("the X.509-SVID has been revoked ({0})")]
    Revoked(String),
}

/// What the broker's CA trusts: its roots and the intermediates it issues under.
#[derive(Debug)]
pub struct OwnCa<'a> {
    pub roots: &'a [TrustAnchor<'static>],
    pub intermediates: &'a [CertificateDer<'static>],
    pub trust_domain: &'a TrustDomain,
}

/// Verifies a peer chain as one of our X.509-SVIDs and turns it into an `svid` attestation.
pub fn attest(
    ca: &OwnCa<'_>,
    mirror: &RevocationMirror,
    certs: &[CertificateDer<'static>],
    now: i64,
) -> Result<Attestation, X509SvidError> {
    verify_chain(certs, ca.intermediates, ca.roots, now)?;
    let leaf = certs.first().ok_or(CertError::Missing)?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| CertError::Malformed)?;
    let spiffe_id = single_uri_san(&cert)?;
    let id = SpiffeId::parse_in(&spiffe_id, ca.trust_domain).map_err(|_| {
        X509SvidError::NotSvid("its URI SAN is not a SPIFFE ID of our trust domain")
    })?;
    let lineage =
        Lineage::of(&cert).ok_or(X509SvidError::NotSvid("it carries no credbroker lineage"))?;
    let serial = format!("{:x}", cert.tbs_certificate.serial);
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    // Issued at notBefore + backdate: what revocation by SPIFFE ID or time compares with.
    let issued_at = not_before + BACKDATE_SECS;
    let claims = json!({
        "typ": "x509",
        "sub": id.as_str(),
        "serial": serial,
        "iat": issued_at,
        "exp": not_after,
        "rule": lineage.rule,
        "src": lineage.src,
        "chain": lineage.chain,
    });
    let attestation = Attestation {
        attestor: SVID_ATTESTOR.to_string(),
        kind: AttestorKind::Svid,
        subject: id.to_string(),
        claims,
        source: SourceId(lineage.src.clone()),
        expires_at: Some(not_after),
        parent: Some(ParentCredential {
            id: serial,
            rule: lineage.rule,
            chain: lineage.chain,
            source: SourceId(lineage.src),
            audiences: Vec::new(),
            scopes: Vec::new(),
        }),
    };
    check_revoked(mirror, &attestation, now)?;
    Ok(attestation)
}

/// Refuses an `svid` attestation whose certificate has been revoked: by serial, SPIFFE
/// ID, source or through its lineage. Checked again on every request that reuses it.
pub fn check_revoked(
    mirror: &RevocationMirror,
    attestation: &Attestation,
    now: i64,
) -> Result<(), X509SvidError> {
    let parent = attestation
        .parent
        .as_ref()
        .ok_or(X509SvidError::NotSvid("it carries no credbroker lineage"))?;
    let issued_at = attestation
        .claims
        .get("iat")
        .and_then(serde_json::Value::as_i64)
        .ok_or(X509SvidError::NotSvid("it carries no issue time"))?;
    let credential = CredentialRef {
        id: &parent.id,
        spiffe_id: &attestation.subject,
        source: &parent.source.0,
        issued_at,
        chain: &parent.chain,
        actors: &[],
    };
    match mirror.check(&credential, now) {
        Some(why) => Err(X509SvidError::Revoked(why.to_string())),
        None => Ok(()),
    }
}

/// The one URI SAN an X.509-SVID carries (X509-SVID §2: exactly one).
fn single_uri_san(cert: &X509Certificate<'_>) -> Result<String, X509SvidError> {
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or(X509SvidError::NotSvid("it has no URI SAN"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(X509SvidError::NotSvid("it has no URI SAN")),
        _ => Err(X509SvidError::NotSvid("it has more than one URI SAN")),
    }
}
