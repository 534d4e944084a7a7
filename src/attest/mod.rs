//! Attestation: how a workload proves what it is.
//!
//! Each attestor kind lives in its own file and turns evidence (a platform token, a
//! client certificate, a join token, a credential we issued) into an [`Attestation`]:
//! the claims that policy rules match on, plus the attested subject and source.

pub mod join_token;
pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod svid;
pub mod x509svid;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::config::AttestorKind;

/// What a successful attestation established about the caller.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The configured attestor's name (`"svid"` for the built-in one).
    pub attestor: String,
    pub kind: AttestorKind,
    /// The attested subject: a platform token's `sub`, a client certificate's SHA-256
    /// fingerprint, a join token's SPIFFE ID, or a broker credential's SPIFFE ID.
    pub subject: String,
    /// The claims rules match on (JSON Pointer targets).
    pub claims: Value,
    /// Short hash of attestor + subject; names the source for revocation (`src`).
    pub source: SourceId,
    /// When the attested evidence expires (Unix seconds), if it says.
    pub expires_at: Option<i64>,
    /// Set when the evidence was a credential this broker issued: what it descends from.
    pub parent: Option<ParentCredential>,
}

/// A broker credential presented as evidence (SVID renewal, JWT re-scoping, delegation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentCredential {
    /// Its credential id (JWT `jti` or certificate serial, lowercase hex).
    pub id: String,
    /// The rule that granted it; that rule, as configured now, governs what it may get.
    pub rule: String,
    /// Its lineage chain (root first).
    pub chain: Vec<String>,
    /// The source of its line.
    pub source: SourceId,
    /// Audiences and scopes it carries (a bearer JWT can only narrow these).
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
}

/// The `src` value: base64url of the first 128 bits of SHA-256(attestor ‖ 0 ‖ subject).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SourceId(pub String);

impl SourceId {
    /// Hashes an attestor name and attested subject into a source id.
    pub fn new(attestor: &str, subject: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(attestor.as_bytes());
        ctx.update(&[0]);
        ctx.update(subject.as_bytes());
        let digest = ctx.finish();
        Self(URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]))
    }

    /// The encoded value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ids_separate_attestor_from_subject() {
        assert_ne!(SourceId::new("ab", "c"), SourceId::new("a", "bc"));
        assert_eq!(SourceId::new("k8s", "x"), SourceId::new("k8s", "x"));
        assert_eq!(SourceId::new("k8s", "x").as_str().len(), 22);
    }
}
