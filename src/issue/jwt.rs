//! Minting JWT credentials (SPEC §5.1, JWT-SVID compatible).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};

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
    let jti = new_credential_id()?;
    let (claims, expires_at) = claims(req, &jti)?;
    let token = keys.active().sign_jwt(&claims)?;
    Ok(IssuedJwt {
        token,
        jti,
        issued_at: req.now,
        expires_at,
    })
}

/// A new credential id: 128 random bits from the OS, base64url without padding.
pub fn new_credential_id() -> Result<String, KeyError> {
    let mut bytes = [0u8; CREDENTIAL_ID_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The claims of SPEC §5.1 and the `exp` they carry.
fn claims(req: &JwtRequest, jti: &str) -> Result<(Map<String, Value>, i64), KeyError> {
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
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    };

    let mut c = Map::new();
    let s = |v: &str| Value::String(v.to_string());
    c.insert("iss".into(), s(req.issuer));
    c.insert("sub".into(), s(req.spiffe_id));
    c.insert("aud".into(), aud);
    c.insert("iat".into(), req.now.into());
    c.insert("nbf".into(), req.now.into());
    c.insert("exp".into(), exp.into());
    c.insert("jti".into(), s(jti));
    if !req.scopes.is_empty() {
        c.insert("scope".into(), Value::String(req.scopes.join(" ")));
    }
    c.insert("owner".into(), s(req.owner));
    let mut att = Map::new();
    att.insert("attestor".into(), s(req.attestor));
    att.insert("kind".into(), s(req.attestor_kind));
    c.insert("att".into(), Value::Object(att));
    if let Some(thumbprint) = req.cnf_x5t_s256 {
        let mut cnf = Map::new();
        cnf.insert("x5t#S256".into(), s(thumbprint));
        c.insert("cnf".into(), Value::Object(cnf));
    }
    if let Some(act) = req.act {
        c.insert("act".into(), act.clone());
    }
    c.insert("src".into(), s(req.source));
    c.insert("rule".into(), s(req.rule));
    if !req.chain.is_empty() {
        c.insert(
            "chain".into(),
            Value::Array(req.chain.iter().cloned().map(Value::String).collect()),
        );
    }
    Ok((c, exp))
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
