//! Issuing credentials: the broker's signing keys, JWT minting, lineage, key generation.
//!
//! [`keys`] loads the JWT signing keys once (first = active, the rest published only) and
//! keeps ready ring signers and verifiers; [`jwt`] turns a policy grant into a signed
//! JWT-SVID (SPEC §5.1); [`lineage`] computes a descendant credential's `chain` (SPEC §6.3);
//! [`x509`] mints X.509-SVIDs from CSRs and signs the CRL (SPEC §5.2, §6.4);
//! [`keygen`] writes a complete, working key set and `broker.toml` (`credbroker keys generate`).

pub mod error;
pub mod jwt;
pub mod keygen;
pub mod keys;
pub mod lineage;
pub mod x509;

pub use error::KeyError;
pub use jwt::{IssuedJwt, JwtRequest, mint, new_credential_id};
pub use keygen::{KeygenOptions, generate, generate_jwt_key_pem};
pub use keys::{SigningAlg, SigningKey, SigningKeys};
pub use lineage::{MAX_CHAIN, child_chain};
