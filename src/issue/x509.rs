//! Minting X.509-SVIDs (SPEC §5.2, SPIFFE X509-SVID) and the CA's CRL (SPEC §6.4).
//!
//! The certificate is built from scratch: the CSR contributes its public key and nothing
//! else (its subject, SANs and extensions are ignored, as SPEC §5.2 requires), after its
//! signature proves that the caller holds the private key.
//!
//! Lineage (`src`, `rule`, `chain`, SPEC §6.3) travels in one non-critical extension,
//! [`LINEAGE_OID`], whose value is a DER `UTF8String` holding compact JSON
//! `{"src": "…", "rule": "…", "chain": ["…"]}` (`chain` omitted when empty).

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateRevocationListParams, CustomExtension, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm, string::Ia5String,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::config::X509Config;

/// The lineage extension's OID, dotted. Under a private-enterprise arc chosen for
/// credbroker; relying parties that do not know it ignore it (it is non-critical).
pub const LINEAGE_OID_STR: &str = "1.3.6.1.4.1.58270.1.1";
/// The lineage extension's OID as rcgen wants it.
pub const LINEAGE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 58270, 1, 1];

/// `notBefore` is this far in the past, to tolerate clock skew between machines.
pub const BACKDATE_SECS: i64 = 30;
/// The smallest RSA key accepted (SPEC §5.2).
const MIN_RSA_BITS: usize = 2048;
/// The largest CSR accepted, decoded (a 16 kbit RSA CSR is far below this).
const MAX_CSR_BYTES: usize = 16 * 1024;
/// Random bytes of a serial number; the top bit is cleared (positive) and the next set
/// (fixed length), leaving 126 bits of entropy (SPEC §5.2: ≥ 64).
const SERIAL_BYTES: usize = 16;

/// Why a CSR was refused: the caller's fault, reported as `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is empty")]
    Empty,
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR is not a PEM `CERTIFICATE REQUEST` or DER PKCS#10 request")]
    Malformed,
    #[error("the CSR signature does not verify (proof of possession failed)")]
    BadSignature,
    #[error(
        "the CSR key is not accepted ({0}); use ECDSA P-256 or P-384, Ed25519, or RSA of at least 2048 bits"
    )]
    UnsupportedKey(String),
    #[error("the CSR is signed with {0}, which is not accepted; use SHA-256 or stronger")]
    WeakSignature(&'static str),
}

/// A CA problem: the broker's fault (start-up, or minting).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("[x509] is not configured")]
    NotConfigured,
    #[error("the CA certificate expired; no certificate can be issued")]
    Expired,
    #[error("certificate signing failed: {0}")]
    Sign(String),
    #[error("the system random number generator failed")]
    Random,
}

/// The lineage a certificate carries (SPEC §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The attestation source of its line (`src`).
    pub src: String,
    /// The granting rule's name.
    pub rule: String,
    /// Lineage root first, then the latest ancestors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Lineage {
    /// The extension value: DER UTF8String of compact JSON.
    fn to_der(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut der = vec![0x0c];
        push_der_len(&mut der, json.len());
        der.extend_from_slice(&json);
        der
    }

    /// Reads the extension value written by [`Lineage::to_der`].
    pub fn from_der(der: &[u8]) -> Option<Lineage> {
        let (&tag, rest) = der.split_first()?;
        if tag != 0x0c {
            return None;
        }
        let (len, body) = read_der_len(rest)?;
        if body.len() != len {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// The lineage of a parsed certificate, if it carries the extension.
    pub fn of(cert: &X509Certificate<'_>) -> Option<Lineage> {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == LINEAGE_OID_STR)
            .and_then(|e| Lineage::from_der(e.value))
    }
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn read_der_len(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = data.split_first()?;
    if first < 0x80 {
        return Some((first as usize, rest));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((len, &rest[n..]))
}

/// The kinds of workload key accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: usize },
}

impl KeyKind {
    /// The rcgen algorithm whose SPKI encoding matches this key type.
    fn spki_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A verified CSR: only the workload's public key is kept.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    kind: KeyKind,
    /// The subjectPublicKey bits, exactly as the CSR carried them.
    public_key: Vec<u8>,
}

impl VerifiedCsr {
    /// Parses a PEM or DER PKCS#10 request, checks its key type and verifies its signature.
    pub fn parse(input: &[u8]) -> Result<VerifiedCsr, CsrError> {
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(CsrError::Empty);
        }
        if input.len() > MAX_CSR_BYTES * 2 {
            return Err(CsrError::TooLarge);
        }
        let trimmed = trim_ascii(input);
        let der: Vec<u8> = if trimmed.starts_with(b"-----BEGIN") {
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(trimmed)
                .map_err(|_| CsrError::Malformed)?
                .as_ref()
                .to_vec()
        } else {
            // DER is binary: its last bytes may well be 0x0a or 0x20, so it is never trimmed.
            input.to_vec()
        };
        if der.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge);
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        let spki = &csr.certification_request_info.subject_pki;
        let kind = key_kind(spki)?;
        let sig_alg = &csr.signature_algorithm.algorithm;
        if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
            return Err(CsrError::WeakSignature("SHA-1"));
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        Ok(VerifiedCsr {
            kind,
            public_key: spki.subject_public_key.data.to_vec(),
        })
    }

    /// The workload key's type.
    pub fn key_kind(&self) -> KeyKind {
        self.kind
    }
}

impl PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.kind.spki_algorithm()
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return if spki.subject_public_key.data.len() == 32 {
            Ok(KeyKind::Ed25519)
        } else {
            Err(CsrError::UnsupportedKey("malformed Ed25519 key".into()))
        };
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            Some(c) => Err(CsrError::UnsupportedKey(format!("EC curve {c}"))),
            None => Err(CsrError::UnsupportedKey(
                "EC key without a named curve".into(),
            )),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::UnsupportedKey("malformed RSA key".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(CsrError::UnsupportedKey(format!("RSA of {bits} bits")));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    Err(CsrError::UnsupportedKey(format!("key algorithm {alg}")))
}

/// What the issuer needs besides the key: decided by attestation and policy.
#[derive(Debug, Clone, Copy)]
pub struct SvidRequest<'a> {
    /// The one URI SAN.
    pub spiffe_id: &'a str,
    /// Requested lifetime (already clamped by policy).
    pub ttl: Duration,
    /// Unix seconds.
    pub now: i64,
    pub lineage: &'a Lineage,
}

/// A freshly signed X.509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The leaf, DER.
    pub leaf: CertificateDer<'static>,
    /// PEM: leaf followed by the intermediates (never the root).
    pub chain_pem: String,
    /// The credential id: serial, lowercase hex without leading zeros.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// The broker's issuing CA, loaded once at start-up.
pub struct X509Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates between the issuing CA and the root, issuing CA first (PEM).
    intermediates_pem: String,
    /// Intermediates as DER (for path building when verifying our own SVIDs).
    intermediates: Vec<CertificateDer<'static>>,
    /// The trust bundle (roots) as DER and PEM.
    roots: Vec<CertificateDer<'static>>,
    roots_pem: String,
    /// The earliest `notAfter` of the configured chain (issuing CA and the certificates
    /// above it), Unix seconds: no SVID outlives it.
    not_after: i64,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("roots", &self.roots.len())
            .field("intermediates", &self.intermediates.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Ca {
    /// Loads `[x509] ca_cert`, `ca_key` and `bundle`.
    pub fn load(config: &X509Config) -> Result<X509Ca, CaError> {
        if config.ca_cert.as_os_str().is_empty() {
            return Err(CaError::NotConfigured);
        }
        let certs = read_certs(&config.ca_cert)?;
        let key_path = config.ca_key.display().to_string();
        let key_pem = std::fs::read_to_string(&config.ca_key).map_err(|e| CaError::File {
            path: key_path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::File {
            path: key_path.clone(),
            message: format!("not a usable PKCS#8 private key: {e}"),
        })?;
        let roots = match &config.bundle {
            Some(path) => read_certs(path)?,
            None => certs.last().cloned().into_iter().collect(),
        };
        Self::from_parts(
            certs,
            key,
            roots,
            &config.ca_cert.display().to_string(),
            &key_path,
        )
    }

    /// Builds the CA from its certificate chain (issuing CA first), key and roots.
    pub fn from_parts(
        certs: Vec<CertificateDer<'static>>,
        key: KeyPair,
        roots: Vec<CertificateDer<'static>>,
        cert_name: &str,
        key_name: &str,
    ) -> Result<X509Ca, CaError> {
        let file_err = |path: &str, message: String| CaError::File {
            path: path.to_string(),
            message,
        };
        let ca_der = certs
            .first()
            .ok_or_else(|| file_err(cert_name, "no certificate found".into()))?;
        let (_, ca) = X509Certificate::from_der(ca_der)
            .map_err(|e| file_err(cert_name, format!("cannot parse: {e}")))?;
        if !ca.is_ca() {
            return Err(file_err(
                cert_name,
                "the first certificate is not a CA".into(),
            ));
        }
        if ca.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(file_err(
                key_name,
                "this key does not belong to the CA certificate".into(),
            ));
        }
        // An SVID never outlives any certificate of the chain above it: a relying party
        // (and our per-connection memo of a validated chain) may see only the leaf.
        let mut not_after = ca.validity().not_after.timestamp();
        let mut intermediates = Vec::new();
        for der in &certs {
            let (_, c) = X509Certificate::from_der(der)
                .map_err(|e| file_err(cert_name, format!("cannot parse: {e}")))?;
            not_after = not_after.min(c.validity().not_after.timestamp());
            if c.subject() != c.issuer() {
                intermediates.push(der.clone());
            }
        }
        let issuer = Issuer::from_ca_cert_der(ca_der, key)
            .map_err(|e| file_err(cert_name, format!("cannot use as issuer: {e}")))?;
        Ok(X509Ca {
            issuer,
            intermediates_pem: intermediates.iter().map(|c| pem_cert(c)).collect(),
            intermediates,
            roots_pem: roots.iter().map(|c| pem_cert(c)).collect(),
            roots,
            not_after,
        })
    }

    /// The trust bundle (roots), DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The trust bundle as PEM.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    /// Intermediates between the issuing CA and the roots (issuing CA first), DER.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The earliest `notAfter` of the issuing CA's chain: when it can issue no more.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Signs an X.509-SVID for `csr`'s key with exactly the SPIFFE X509-SVID profile.
    pub fn mint(&self, csr: &VerifiedCsr, req: &SvidRequest<'_>) -> Result<IssuedSvid, CaError> {
        if self.not_after <= req.now {
            return Err(CaError::Expired);
        }
        let not_before = req.now - BACKDATE_SECS;
        let wanted = req
            .now
            .saturating_add(i64::try_from(req.ttl.as_secs()).unwrap_or(i64::MAX));
        let not_after = wanted.min(self.not_after);
        let serial = random_serial()?;
        let uri = Ia5String::try_from(req.spiffe_id).map_err(|e| CaError::Sign(e.to_string()))?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match csr.kind {
            KeyKind::Rsa { .. } => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            LINEAGE_OID,
            req.lineage.to_der(),
        )];
        let cert = params
            .signed_by(csr, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let leaf = cert.der().clone();
        let mut chain_pem = pem_cert(&leaf);
        chain_pem.push_str(&self.intermediates_pem);
        Ok(IssuedSvid {
            leaf,
            chain_pem,
            serial: serial_hex(&serial),
            not_before,
            not_after,
        })
    }

    /// Signs a CRL listing `revoked` (serial in normal hex form, revocation time).
    pub fn crl(
        &self,
        revoked: &[(String, i64)],
        now: i64,
        next_update: Duration,
        number: u64,
    ) -> Result<Vec<u8>, CaError> {
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for (serial, at) in revoked {
            let Some(bytes) = serial_bytes(serial) else {
                continue;
            };
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: to_time(*at)?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let next = now.saturating_add(i64::try_from(next_update.as_secs()).unwrap_or(i64::MAX));
        let params = CertificateRevocationListParams {
            this_update: to_time(now)?,
            next_update: to_time(next.max(now + 1))?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(crl.der().to_vec())
    }
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    crate::tls::load_certs(path).map_err(|e| CaError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn to_time(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Sign(e.to_string()))
}

fn random_serial() -> Result<[u8; SERIAL_BYTES], CaError> {
    let mut serial = [0u8; SERIAL_BYTES];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Random)?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// A serial's credential id: lowercase hex without leading zeros (SPEC §5.2).
pub fn serial_hex(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The bytes of a serial in normal hex form (positive: a leading zero byte when needed).
fn serial_bytes(serial: &str) -> Option<Vec<u8>> {
    if serial.is_empty() || serial.len() > 40 {
        return None;
    }
    let padded = if serial.len() % 2 == 1 {
        format!("0{serial}")
    } else {
        serial.to_string()
    };
    let bytes = hex::decode(padded).ok()?;
    Some(bytes)
}

/// Whether a credential id looks like a certificate serial (hex, at most 20 bytes).
pub fn is_serial(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A certificate as a PEM block.
pub fn pem_cert(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + 70);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
#[path = "x509_tests.rs"]
mod tests;
