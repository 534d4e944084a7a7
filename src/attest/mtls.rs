//! The `mtls` attestor: a client certificate chain presented in the TLS handshake.
//!
//! The TLS layer only checked proof of possession; here the chain is verified to the
//! attestor's own `ca_bundle` roots with webpki (path, validity, `clientAuth` usage), and
//! the leaf's names become the claims rules match on (SPEC §3).

use std::path::Path;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Attestation, SourceId};
use crate::config::AttestorKind;

/// Why a client certificate chain was not accepted. Says what failed, never echoes key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no client certificate was presented")]
    Missing,
    #[error("the client certificate cannot be parsed")]
    Malformed,
    #[error("the client certificate does not chain to a trusted CA")]
    Untrusted,
    #[error("the client certificate has expired")]
    Expired,
    #[error("the client certificate is not valid yet")]
    NotYetValid,
    #[error("the client certificate is not valid for client authentication (extended key usage)")]
    WrongUsage,
    #[error("the client certificate chain is invalid: {0}")]
    Invalid(String),
}

impl CertError {
    /// How specific an error is: when several roots were tried, the most specific wins.
    pub fn specificity(&self) -> u8 {
        match self {
            CertError::Missing | CertError::Untrusted => 0,
            _ => 1,
        }
    }
}

/// Verifies `certs` (leaf first) to `roots` for client authentication at `now` (Unix seconds).
pub fn verify_chain(
    certs: &[CertificateDer<'static>],
    extra_intermediates: &[CertificateDer<'static>],
    roots: &[TrustAnchor<'static>],
    now: i64,
) -> Result<(), CertError> {
    let (leaf, presented) = certs.split_first().ok_or(CertError::Missing)?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|_| CertError::Malformed)?;
    let mut intermediates: Vec<CertificateDer<'static>> = presented.to_vec();
    intermediates.extend_from_slice(extra_intermediates);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        roots,
        &intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::UnknownIssuer => CertError::Untrusted,
        webpki::Error::CertExpired { .. } => CertError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertError::NotYetValid,
        webpki::Error::RequiredEkuNotFoundContext(_) => CertError::WrongUsage,
        other => CertError::Invalid(format!("{other:?}").chars().take(120).collect()),
    })
}

/// Trust anchors from a PEM bundle.
pub fn load_anchors(path: &Path) -> Result<Vec<TrustAnchor<'static>>, String> {
    let certs = crate::tls::load_certs(path).map_err(|e| e.to_string())?;
    anchors(&certs).map_err(|e| format!("{}: {e}", path.display()))
}

/// Trust anchors from DER certificates.
pub fn anchors(certs: &[CertificateDer<'_>]) -> Result<Vec<TrustAnchor<'static>>, String> {
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("not a usable CA certificate: {e:?}"))
        })
        .collect()
}

/// SHA-256 of a certificate's DER, lowercase hex (the attested subject of a certificate).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The claims of SPEC §3 for a client certificate.
pub fn certificate_claims(leaf: &[u8]) -> Result<Value, CertError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| CertError::Malformed)?;
    let first = |mut it: Box<dyn Iterator<Item = String> + '_>| it.next();
    let cn = first(Box::new(
        cert.subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok().map(str::to_string)),
    ));
    let o = first(Box::new(
        cert.subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string)),
    ));
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(Value::String((*u).to_string())),
                GeneralName::DNSName(d) => dns.push(Value::String((*d).to_string())),
                _ => {}
            }
        }
    }
    let mut subject = serde_json::Map::new();
    if let Some(cn) = cn {
        subject.insert("cn".into(), Value::String(cn));
    }
    if let Some(o) = o {
        subject.insert("o".into(), Value::String(o));
    }
    Ok(json!({
        "subject": subject,
        "san": {"uri": uris, "dns": dns},
        "fingerprint": fingerprint(leaf),
        "serial": format!("{:x}", cert.tbs_certificate.serial),
    }))
}

/// One configured `mtls` attestor.
pub struct MtlsAttestor {
    name: String,
    roots: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for MtlsAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAttestor")
            .field("name", &self.name)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl MtlsAttestor {
    /// Loads the attestor's `ca_bundle`.
    pub fn new(name: &str, ca_bundle: &Path) -> Result<MtlsAttestor, String> {
        Ok(MtlsAttestor {
            name: name.to_string(),
            roots: load_anchors(ca_bundle)?,
        })
    }

    /// The attestor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies the chain to this attestor's roots and returns the attestation.
    pub fn attest(
        &self,
        certs: &[CertificateDer<'static>],
        now: i64,
    ) -> Result<Attestation, CertError> {
        verify_chain(certs, &[], &self.roots, now)?;
        let leaf = certs.first().ok_or(CertError::Missing)?;
        let claims = certificate_claims(leaf)?;
        let fp = fingerprint(leaf);
        let expires_at = X509Certificate::from_der(leaf)
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp());
        Ok(Attestation {
            attestor: self.name.clone(),
            kind: AttestorKind::Mtls,
            source: SourceId::new(&self.name, &fp),
            subject: fp,
            claims,
            expires_at,
            parent: None,
        })
    }
}
