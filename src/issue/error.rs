//! The one error type of [`crate::issue`].

use std::path::PathBuf;

/// What went wrong with a broker key, a signature or key generation.
///
/// Messages name the file (or the key's position when it came from memory) and never
/// contain key bytes or token contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `[jwt] signing_keys` is empty.
    #[error("no JWT signing key given (at least one is required)")]
    NoKeys,
    /// The file holds no `-----BEGIN PRIVATE KEY-----` (PKCS#8) block.
    #[error("{name}: not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----){hint}")]
    NotPkcs8 { name: String, hint: &'static str },
    /// A PKCS#8 key of a type the broker does not sign JWTs with.
    #[error(
        "{name}: unsupported JWT signing key ({what}); use EC P-256 (ES256), RSA of 2048 bits or more (RS256) or Ed25519 (EdDSA)"
    )]
    Unsupported { name: String, what: String },
    /// An RSA key that is too short.
    #[error("{name}: RSA key of {bits} bits is too weak; at least 2048 bits are required")]
    WeakRsa { name: String, bits: usize },
    /// The key's bytes do not form a valid key of its declared type.
    #[error("{name}: invalid private key: {reason}")]
    InvalidKey { name: String, reason: String },
    /// Two configured keys are the same key (same JWK thumbprint).
    #[error("{name}: the same key is configured twice (kid {kid})")]
    DuplicateKey { name: String, kid: String },
    /// The signing operation failed.
    #[error("JWT signing with key {kid} failed: {reason}")]
    Sign { kid: String, reason: String },
    /// The OS random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The request cannot become valid claims (e.g. no audience).
    #[error("cannot mint JWT: {0}")]
    Claims(&'static str),
    /// A presented token is not a compact JWS of the shape this broker issues.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A presented token names a `kid` that is not one of the broker's keys.
    #[error("token signed by unknown key (kid {kid:?})")]
    UnknownKid { kid: String },
    /// A presented token's `alg` differs from the algorithm of the key it names.
    #[error("token alg {got:?} does not match key {kid} ({expected})")]
    AlgMismatch {
        kid: String,
        expected: &'static str,
        got: String,
    },
    /// A presented token's signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `keys generate`: an output file exists already; nothing was written.
    #[error("{path}: already exists; refusing to overwrite (nothing was written)")]
    Exists { path: PathBuf },
    /// `keys generate`: a file or folder could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `keys generate`: bad options (trust domain, SAN).
    #[error("keys generate: {0}")]
    Options(String),
    /// `keys generate`: certificate or key generation failed.
    #[error("keys generate: {what}: {reason}")]
    Generate { what: &'static str, reason: String },
}
