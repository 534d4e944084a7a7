//! The verifier's HTTPS client for the broker: metadata, JWKS, bundle, revocation feed.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::{FeedCredential, VerifyError};

/// Time limit of one ordinary request (not the stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest document accepted (JWKS, bundle, full revocation list).
pub(super) const MAX_DOCUMENT: usize = 256 * 1024 * 1024;

/// An HTTPS client that trusts the configured CA and authenticates to the feed.
pub(super) struct BrokerClient {
    base: String,
    client: reqwest::Client,
    credential: FeedCredential,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("base", &self.base)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl BrokerClient {
    pub(super) fn new(
        broker_url: &str,
        ca_pem: &str,
        credential: &FeedCredential,
    ) -> Result<Self, VerifyError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| VerifyError::Setup(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| setup("CA PEM", &e))?;
            roots.add(cert).map_err(|e| setup("CA certificate", &e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup("TLS", &e))?
            .with_root_certificates(roots);
        let tls = match credential {
            FeedCredential::ClientCert { chain_pem, key_pem } => {
                let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| setup("client certificate", &e))?;
                // The key's parse error may quote nothing secret, but keep it generic anyway.
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|_| VerifyError::Setup("client key: not a PEM private key".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| setup("client certificate", &e))?
            }
            _ => builder.with_no_client_auth(),
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| setup("HTTP client", &e))?;
        Ok(Self {
            base: broker_url.trim_end_matches('/').to_string(),
            client,
            credential: credential.clone(),
        })
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A GET with the feed credential, if any; no overall timeout when `streaming`.
    pub(super) fn get(&self, path: &str, streaming: bool) -> reqwest::RequestBuilder {
        let mut request = self.client.get(self.url(path));
        if !streaming {
            request = request.timeout(REQUEST_TIMEOUT);
        }
        match &self.credential {
            FeedCredential::AdminToken(t) | FeedCredential::Bearer(t) => request.bearer_auth(t),
            FeedCredential::BearerFile(path) => match std::fs::read_to_string(path) {
                Ok(t) => request.bearer_auth(t.trim()),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the feed credential file");
                    request
                }
            },
            FeedCredential::None | FeedCredential::ClientCert { .. } => request,
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value, VerifyError> {
        let resp = self
            .get(path, false)
            .send()
            .await
            .map_err(|e| VerifyError::Setup(format!("GET {path}: {}", e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(VerifyError::Setup(format!("GET {path}: HTTP {status}")));
        }
        let bytes = read_limited(resp).await?;
        serde_json::from_slice(&bytes)
            .map_err(|_| VerifyError::Setup(format!("GET {path}: not JSON")))
    }

    /// The `issuer` of the broker's RFC 8414 metadata.
    pub(super) async fn issuer(&self) -> Result<String, VerifyError> {
        let meta = self
            .get_json("/.well-known/oauth-authorization-server")
            .await?;
        meta.get("issuer")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| VerifyError::Setup("broker metadata has no issuer".into()))
    }

    /// The JWKS document's bytes.
    pub(super) async fn fetch_jwks(&self) -> Result<Vec<u8>, VerifyError> {
        let resp = self
            .get("/.well-known/jwks.json", false)
            .send()
            .await
            .map_err(|e| VerifyError::Setup(format!("JWKS: {}", e.without_url())))?;
        if !resp.status().is_success() {
            return Err(VerifyError::Setup(format!("JWKS: HTTP {}", resp.status())));
        }
        read_limited(resp).await
    }

    /// `GET /v1/bundle.pem`; `None` when the broker does not serve one.
    pub(super) async fn fetch_bundle_pem(&self) -> Result<Option<String>, VerifyError> {
        let resp = self
            .get("/v1/bundle.pem", false)
            .send()
            .await
            .map_err(|e| VerifyError::Setup(format!("bundle: {}", e.without_url())))?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let bytes = read_limited(resp).await?;
        Ok(String::from_utf8(bytes).ok())
    }

    /// `GET /v1/revocations` (full list).
    pub(super) async fn revocations(&self) -> Result<Value, VerifyError> {
        self.get_json("/v1/revocations").await
    }
}

/// Reads a body up to [`MAX_DOCUMENT`] bytes.
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(VerifyError::Setup("broker document too large".into()));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(VerifyError::Setup(format!("read: {}", e.without_url()))),
        }
    }
}
