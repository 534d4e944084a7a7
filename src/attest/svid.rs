//! The built-in `svid` attestor: a credential this broker issued, presented back.
//!
//! It lets a workload renew and fetch JWTs for its own identity without re-attesting.
//! The credential must be ours, unexpired and unrevoked (including through its lineage).

use serde_json::Value;

use super::{Attestation, ParentCredential, SourceId};
use crate::claims::Claims;
use crate::config::AttestorKind;
use crate::issue::keys::SigningKeys;
use crate::revoke::mirror::{CredentialRef, RevocationMirror};

/// The attestor name that rules use for delegation and that `att` records for renewals.
pub const SVID_ATTESTOR: &str = "svid";

/// Why a presented broker credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the credential was not signed by this broker")]
    BadSignature,
    #[error("the credential's claims are not those of a credbroker credential")]
    Malformed,
    #[error("the credential was issued by {0:?}, not by this broker")]
    WrongIssuer(String),
    #[error("the credential has expired")]
    Expired,
    #[error("the credential is not valid yet")]
    NotYetValid,
    #[error("the credential has been revoked ({0})")]
    Revoked(String),
}

/// Verifies a JWT this broker issued and turns it into an `svid` attestation.
pub fn attest_jwt(
    keys: &SigningKeys,
    issuer: &str,
    mirror: &RevocationMirror,
    token: &str,
    now: i64,
    leeway: i64,
) -> Result<(Attestation, Claims), SvidError> {
    let payload = keys
        .verify_own(token)
        .map_err(|_| SvidError::BadSignature)?;
    let claims: Claims =
        serde_json::from_value(Value::Object(payload.clone())).map_err(|_| SvidError::Malformed)?;
    if claims.iss != issuer {
        return Err(SvidError::WrongIssuer(truncate(&claims.iss)));
    }
    if now > claims.exp + leeway {
        return Err(SvidError::Expired);
    }
    if claims.nbf > now + leeway {
        return Err(SvidError::NotYetValid);
    }
    let actors = claims.actors();
    let actor_refs: Vec<&str> = actors.iter().map(String::as_str).collect();
    let credential = CredentialRef {
        id: &claims.jti,
        spiffe_id: &claims.sub,
        source: &claims.src,
        issued_at: claims.iat,
        chain: &claims.chain,
        actors: &actor_refs,
    };
    if let Some(why) = mirror.check(&credential, now) {
        return Err(SvidError::Revoked(why.to_string()));
    }
    let mut claim_map = payload;
    claim_map.insert("typ".into(), Value::String("jwt".into()));
    let attestation = Attestation {
        attestor: SVID_ATTESTOR.to_string(),
        kind: AttestorKind::Svid,
        subject: claims.sub.clone(),
        claims: Value::Object(claim_map),
        source: SourceId(claims.src.clone()),
        expires_at: Some(claims.exp),
        parent: Some(ParentCredential {
            id: claims.jti.clone(),
            rule: claims.rule.clone(),
            chain: claims.chain.clone(),
            source: SourceId(claims.src.clone()),
            audiences: claims.aud.to_vec(),
            scopes: claims.scopes(),
        }),
    };
    Ok((attestation, claims))
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}
