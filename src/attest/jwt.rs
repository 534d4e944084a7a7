//! The `jwt` attestor (in progress).

/// Signature algorithms an attestor may allow; `none` and every HS* are never accepted.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
