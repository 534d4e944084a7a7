//! X.509-SVIDs at handshake time: rustls verifiers that accept a certificate chain only if
//! it chains to the trust bundle (webpki), is a valid SPIFFE X509-SVID leaf (exactly one
//! `spiffe://` URI SAN, not a CA) and is not revoked in the local mirror.
//!
//! A certificate's credential id is its serial as lowercase hex without leading zeros
//! (SPEC §5.2); its issuance time is taken as `notBefore` + 30 s, since the broker
//! backdates `notBefore` by 30 s. The broker's lineage extension (the line's source and
//! ancestors) is read too, so an SVID is revoked by its own serial, any ancestor, its SPIFFE
//! ID, its attestation source, or the global cut-off.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::{Verifier, VerifyError};
use crate::identity::SpiffeId;
use crate::revoke::mirror::CredentialRef;

/// How far the broker backdates `notBefore` (SPEC §5.2).
const NOT_BEFORE_BACKDATE: i64 = 30;

/// The trust bundle: the configured CA plus roots fetched from `/v1/bundle.pem`.
#[derive(Debug)]
pub(super) struct Bundle {
    anchors: RwLock<Arc<Anchors>>,
}

#[derive(Debug, Default)]
struct Anchors {
    ders: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Bundle {
    pub(super) fn from_pem(pem: &str) -> Result<Bundle, VerifyError> {
        let bundle = Bundle {
            anchors: RwLock::new(Arc::new(Anchors::default())),
        };
        if bundle.add_pem(pem) == 0 {
            return Err(VerifyError::Setup(
                "the CA PEM holds no usable certificate".into(),
            ));
        }
        Ok(bundle)
    }

    /// Adds the certificates of `pem` not yet known; returns how many the bundle holds.
    pub(super) fn add_pem(&self, pem: &str) -> usize {
        let mut guard = self.anchors.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Anchors {
            ders: guard.ders.clone(),
            anchors: guard.anchors.clone(),
        };
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            if next.ders.contains(&cert) {
                continue;
            }
            if let Ok(anchor) = webpki::anchor_from_trusted_cert(&cert) {
                next.anchors.push(anchor.to_owned());
                next.ders.push(cert);
            }
        }
        let count = next.ders.len();
        *guard = Arc::new(next);
        count
    }

    fn current(&self) -> Arc<Anchors> {
        self.anchors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a verified X.509-SVID says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub spiffe_id: SpiffeId,
    /// The serial as lowercase hex without leading zeros (the credential id).
    pub serial: String,
    /// `notAfter`, Unix seconds.
    pub expires_at: i64,
}

/// Which end of a connection a certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

impl Verifier {
    /// Verifies an X.509-SVID chain (leaf first) presented by a client: chain to the bundle,
    /// validity, key usage, SPIFFE ID, revocation. Local, no network call.
    pub fn verify_client_svid(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<VerifiedSvid, VerifyError> {
        self.verify_svid_as(chain, now, Role::Client)
    }

    /// The same for a server's certificate chain.
    pub fn verify_server_svid(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<VerifiedSvid, VerifyError> {
        self.verify_svid_as(chain, now, Role::Server)
    }

    fn verify_svid_as(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<VerifiedSvid, VerifyError> {
        let bad = |e: &dyn std::fmt::Display| VerifyError::Certificate(e.to_string());
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| VerifyError::Certificate("no certificate".into()))?;
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| bad(&e))?;
        let anchors = self.inner.bundle.current();
        let usage = match role {
            Role::Client => webpki::KeyUsage::client_auth(),
            Role::Server => webpki::KeyUsage::server_auth(),
        };
        end_entity
            .verify_for_usage(
                self.inner.algorithms.all,
                &anchors.anchors,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(|e| bad(&e))?;
        let svid = parse_svid(leaf)?;
        self.ensure_fresh()?;
        let (source, chain) = match &svid.lineage {
            Some(l) => (l.src.as_str(), l.chain.as_slice()),
            None => ("", &[][..]),
        };
        let credential = CredentialRef {
            id: &svid.serial,
            spiffe_id: svid.spiffe_id.as_str(),
            source,
            issued_at: svid.issued_at,
            chain,
            actors: &[],
        };
        if let Some(why) = self.inner.mirror.check(&credential, now.as_secs() as i64) {
            return Err(VerifyError::Revoked(why));
        }
        Ok(VerifiedSvid {
            spiffe_id: svid.spiffe_id,
            serial: svid.serial,
            expires_at: svid.expires_at,
        })
    }

    /// A rustls client-certificate verifier for servers that accept only this bundle's
    /// SVIDs. With `mandatory = false` a client may connect without a certificate (and
    /// authenticate per request, e.g. with a JWT); a certificate it does present must pass.
    pub fn client_cert_verifier(&self, mandatory: bool) -> Arc<SvidClientCertVerifier> {
        Arc::new(SvidClientCertVerifier {
            verifier: self.clone(),
            mandatory,
        })
    }

    /// A rustls server configuration for an SVID-authenticated service: this server's
    /// certificate chain and key, client certificates checked by
    /// [`client_cert_verifier`](Self::client_cert_verifier), and **no session resumption**:
    /// a resumed TLS session skips certificate verification, which would let a client keep
    /// using an SVID after its revocation.
    pub fn mtls_server_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        client_auth_mandatory: bool,
    ) -> Result<rustls::ServerConfig, VerifyError> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| VerifyError::Setup(e.to_string()))?
            .with_client_cert_verifier(self.client_cert_verifier(client_auth_mandatory))
            .with_single_cert(chain, key)
            .map_err(|e| VerifyError::Setup(e.to_string()))?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A rustls server-certificate verifier for clients that talk to SVID-authenticated
    /// servers; with `expected`, the server's SPIFFE ID must be exactly that.
    pub fn server_cert_verifier(&self, expected: Option<SpiffeId>) -> Arc<SvidServerCertVerifier> {
        Arc::new(SvidServerCertVerifier {
            verifier: self.clone(),
            expected,
        })
    }
}

struct ParsedSvid {
    spiffe_id: SpiffeId,
    serial: String,
    issued_at: i64,
    expires_at: i64,
    /// The broker's lineage extension: the line's source and ancestors, for revocation.
    lineage: Option<crate::issue::x509::Lineage>,
}

/// The SPIFFE X509-SVID rules webpki does not check: exactly one URI SAN, a SPIFFE ID.
fn parse_svid(leaf: &CertificateDer<'_>) -> Result<ParsedSvid, VerifyError> {
    let bad = |m: &str| VerifyError::Certificate(m.to_string());
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| bad("unparsable"))?;
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(*uri);
                }
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(bad("an X.509-SVID has exactly one URI SAN"));
    };
    let spiffe_id =
        SpiffeId::parse(uri).map_err(|e| VerifyError::Certificate(format!("URI SAN: {e}")))?;
    Ok(ParsedSvid {
        spiffe_id,
        serial: serial_hex(cert.raw_serial()),
        issued_at: cert.validity().not_before.timestamp() + NOT_BEFORE_BACKDATE,
        expires_at: cert.validity().not_after.timestamp(),
        lineage: crate::issue::x509::Lineage::of(&cert),
    })
}

/// A serial's credential id: lowercase hex, no separators, no leading zeros (SPEC §5.2).
pub fn serial_hex(raw: &[u8]) -> String {
    let hex = hex::encode(raw);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// A rustls [`ClientCertVerifier`] accepting only unrevoked SVIDs of the bundle.
#[derive(Debug)]
pub struct SvidClientCertVerifier {
    verifier: Verifier,
    mandatory: bool,
}

fn tls_error(e: VerifyError) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        VerifyError::Revoked(_) => C::Revoked,
        VerifyError::Certificate(m) if m.contains("expired") || m.contains("Expired") => C::Expired,
        VerifyError::Certificate(m) if m.contains("UnknownIssuer") => C::UnknownIssuer,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl ClientCertVerifier for SvidClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        self.verifier
            .verify_client_svid(&chain, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(tls_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.verifier.inner.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.verifier.inner.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.inner.algorithms.supported_schemes()
    }
}

/// A rustls [`ServerCertVerifier`] accepting only unrevoked SVIDs of the bundle.
///
/// SPIFFE authenticates a server by its SPIFFE ID, not its DNS name, so the TLS server
/// name is not compared; pin the expected SPIFFE ID instead.
#[derive(Debug)]
pub struct SvidServerCertVerifier {
    verifier: Verifier,
    expected: Option<SpiffeId>,
}

impl ServerCertVerifier for SvidServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let svid = self
            .verifier
            .verify_server_svid(&chain, now)
            .map_err(tls_error)?;
        match &self.expected {
            Some(expected) if *expected != svid.spiffe_id => Err(tls_error(
                VerifyError::Certificate(format!("server is {}, not {expected}", svid.spiffe_id)),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.verifier.inner.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.verifier.inner.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.inner.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::serial_hex;

    #[test]
    fn serials_are_lowercase_hex_without_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x0A, 0xBC]), "abc");
        assert_eq!(serial_hex(&[0x7F, 0x01]), "7f01");
        assert_eq!(serial_hex(&[0x00]), "0");
    }
}
