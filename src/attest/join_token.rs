//! The `join_token` attestor: a one-time token an admin created for one SPIFFE ID.
//!
//! Tokens are random, shown once, and stored only as their SHA-256; redemption is an
//! atomic take from the store, so a token works exactly once even under concurrent use.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::{Attestation, SourceId};
use crate::config::AttestorKind;

/// The RFC 8693 token type under which join tokens are exchanged.
pub const JOIN_TOKEN_TYPE: &str = "urn:credbroker:token-type:join-token";

/// A new join token: 256 random bits, base64url.
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The store key for a token: lowercase hex SHA-256 of its bytes.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The attestation a redeemed token gives: rules match on `/spiffe_id`.
pub fn attestation(attestor: &str, spiffe_id: &str, expires_at: i64) -> Attestation {
    Attestation {
        attestor: attestor.to_string(),
        kind: AttestorKind::JoinToken,
        subject: spiffe_id.to_string(),
        claims: json!({ "spiffe_id": spiffe_id }),
        source: SourceId::new(attestor, spiffe_id),
        expires_at: Some(expires_at),
        parent: None,
    }
}
