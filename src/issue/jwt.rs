//! Minting JWT credentials (SPEC §5.1, JWT-SVID compatible).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;

use super::{KeyError, SigningKeys};

/// Random bytes in a credential id (SPEC §5.1: ≥ 128 bits).
const CREDENTIAL_ID_BYTES: usize = 16;

/// Everything a JWT says, decided by attestation and policy before minting.
#[derive(Debug, Clone, Copy)]
pub struct JwtRequest<'a> {
    /// `iss`: the broker's issuer URL.
    pub issuer: &'a str,
    /// `sub`: the SPIFFE ID.
    pub spiffe_id: &'a str,
    /// `aud`: a string when one, an array when several; at least one.
    pub audiences: &'a [String],
    /// `scope`, space separated; omitted when empty.
    pub scopes: &'a [String],
    /// `owner`: the granting rule's owner.
    pub owner: &'a str,
    /// `att.attestor`: the attestor's name.
    pub attestor: &'a str,
    /// `att.kind`: the attestor's kind.
    pub attestor_kind: &'a str,
    /// Lifetime; `exp` = `iat` + whole seconds of it.
    pub ttl: Duration,
    /// `iat` and `nbf`, Unix seconds.
    pub now: i64,
    /// `cnf.x5t#S256` (RFC 8705) when bound to a client certificate.
    pub cnf_x5t_s256: Option<&'a str>,
    /// `act` (RFC 8693 §4.1) when delegated.
    pub act: Option<&'a Value>,
    /// `src`: the attestation source hash.
    pub source: &'a str,
    /// `rule`: the granting rule's name.
    pub rule: &'a str,
    /// `chain`: lineage (SPEC §6.3); omitted when empty.
    pub chain: &'a [String],
}

/// A signed JWT and the facts the broker records about it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedJwt {
    pub token: String,
    /// The credential id (`jti`).
    pub jti: String,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

// The token is a bearer secret: keep it out of logs.
impl std::fmt::Debug for IssuedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedJwt")
            .field("jti", &self.jti)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Builds the claims of `req` and signs them with the active key.
pub fn mint(keys: &SigningKeys, req: &JwtRequest) -> Result<IssuedJwt, KeyError> {
    let jti = new_credential_id();
    let (claims, expires_at) = claims(req, &jti)?;
    let token = keys.active().sign_jwt(&claims)?;
    Ok(IssuedJwt {
        token,
        jti,
        issued_at: req.now,
        expires_at,
    })
}

/// A new credential id: 128 random bits, base64url without padding.
///
/// From the thread's CSPRNG (ChaCha12, seeded and periodically reseeded from the OS), not a
/// system call per id: ids must be unique and unguessable, and this is on every issuance.
pub fn new_credential_id() -> String {
    let bytes: [u8; CREDENTIAL_ID_BYTES] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of SPEC §5.1, serialised straight from the request (in this order).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Audience<'a>,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    owner: &'a str,
    att: Att<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Value>,
    src: &'a str,
    rule: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    chain: &'a [String],
}

/// `aud`: a string when one, an array when several (RFC 7519 §4.1.3).
#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct Att<'a> {
    attestor: &'a str,
    kind: &'a str,
}

#[derive(Serialize)]
struct Cnf<'a> {
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

/// The claims of `req` and the `exp` they carry.
fn claims<'a>(req: &JwtRequest<'a>, jti: &'a str) -> Result<(Claims<'a>, i64), KeyError> {
    let ttl = i64::try_from(req.ttl.as_secs()).map_err(|_| KeyError::Claims("TTL too long"))?;
    if ttl == 0 {
        return Err(KeyError::Claims("TTL must be at least one second"));
    }
    let exp = req
        .now
        .checked_add(ttl)
        .ok_or(KeyError::Claims("TTL too long"))?;
    let aud = match req.audiences {
        [] => return Err(KeyError::Claims("at least one audience is required")),
        [one] => Audience::One(one),
        many => Audience::Many(many),
    };
    let claims = Claims {
        iss: req.issuer,
        sub: req.spiffe_id,
        aud,
        iat: req.now,
        nbf: req.now,
        exp,
        jti,
        scope: (!req.scopes.is_empty()).then(|| req.scopes.join(" ")),
        owner: req.owner,
        att: Att {
            attestor: req.attestor,
            kind: req.attestor_kind,
        },
        cnf: req.cnf_x5t_s256.map(|x5t_s256| Cnf { x5t_s256 }),
        act: req.act,
        src: req.source,
        rule: req.rule,
        chain: req.chain,
    };
    Ok((claims, exp))
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
