//! The `jwt` attestor: a platform token (Kubernetes service-account token, GitHub Actions or
//! GitLab CI OIDC token, any OIDC issuer) verified against its issuer's JWKS (SPEC §3).
//!
//! Order of checks, each a distinct [`AttestError`]: compact form (three base64url segments,
//! header and payload JSON objects) → `alg` (`none` and HS* refused before any key is looked
//! at, which defeats "HS256 keyed with the RSA public key") → key by `kid` → signature →
//! `iss` → `aud` → `exp` / `nbf` / `iat` (with leeway) → `max_token_age` → subject.
//!
//! One-time use (`replay = "reject"`) needs the shared store, which the attestor does not
//! see: the broker asks [`JwtAttestor::rejects_replay`] and, after a successful
//! [`JwtAttestor::attest`], remembers [`JwtAttestor::replay_key`] atomically (set-if-absent
//! with expiry) and refuses with [`AttestError::Replayed`] when it was already there.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::jwks::{JwksSource, KeyMiss};
use super::{Attestation, SourceId};
use crate::config::{AttestorConfig, AttestorKind, MAX_LEEWAY, ReplayPolicy};

/// Signature algorithms an attestor may allow; `none` and every HS* are never accepted.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The allow-list of an attestor that does not set `algorithms`.
pub const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256"];
/// Clock-skew allowance of an attestor that does not set `leeway`.
pub const DEFAULT_LEEWAY_SECS: i64 = 30;
/// Longest compact token looked at; anything longer is refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;
/// Longest echoed value (alg, kid, iss) in an error message.
const ECHO_CHARS: usize = 100;

/// Why a token was not accepted, or why an attestor could not be set up.
///
/// Messages are fit for `error_description`: they may name claims, the issuer and echo
/// short header values, and never contain the token, a signature or key material.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Not a compact JWS, or a segment that does not decode.
    #[error("malformed token: {reason}")]
    Malformed { reason: &'static str },
    /// `none`, HS*, or an algorithm outside the attestor's allow-list.
    #[error("signature algorithm {alg:?} is not allowed")]
    AlgorithmNotAllowed { alg: String },
    /// No key in the issuer's JWKS has this `kid` (after a refetch, for `jwks_url`).
    #[error("unknown signing key: no key with kid {kid:?} in the issuer's JWKS")]
    UnknownKid { kid: String },
    /// The key named by `kid` cannot verify the token's `alg` (type, curve or its own `alg`).
    #[error("signing key {kid:?} cannot be used with algorithm {alg:?}")]
    KeyAlgorithmMismatch { kid: String, alg: String },
    /// The token names no `kid` and no key in the JWKS can verify its `alg`.
    #[error("the token has no kid and the issuer's JWKS has no key for {alg:?}")]
    NoKeyForAlgorithm { alg: String },
    /// The token names no `kid` and several keys could verify it.
    #[error("the token has no kid and the issuer's JWKS has several keys for {alg:?}")]
    AmbiguousKey { alg: String },
    /// The signature does not verify with the selected key.
    #[error("signature does not verify")]
    BadSignature,
    /// `iss` is not the attestor's issuer.
    #[error("iss is not {expected:?}")]
    WrongIssuer { expected: String },
    /// `aud` contains none of the attestor's audiences.
    #[error("aud does not contain any of: {expected}")]
    WrongAudience { expected: String },
    /// `exp` plus the leeway is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is further in the future than the leeway.
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iat` is further in the future than the leeway.
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    /// A required claim is absent.
    #[error("required claim {claim:?} is missing")]
    MissingClaim { claim: String },
    /// A claim has the wrong type or an unusable value.
    #[error("claim {claim:?} is invalid: {reason}")]
    InvalidClaim { claim: String, reason: &'static str },
    /// `iat` is older than the attestor's `max_token_age`.
    #[error("token is older than max_token_age ({max_age}s)")]
    TooOld { max_age: u64 },
    /// A one-time token (`replay = "reject"`) presented again; raised by the broker.
    #[error("token has already been used")]
    Replayed,
    /// The issuer's JWKS cannot be fetched and no keys are cached.
    #[error("keys of issuer {issuer:?} are unavailable: {reason}")]
    JwksUnavailable { issuer: String, reason: String },
    /// No `jwt` attestor is configured for the token's `iss`.
    #[error("no attestor for issuer {iss:?}")]
    UnknownIssuer { iss: String },
    /// The attestor cannot be set up (start-up only).
    #[error("attestor {attestor:?}: {message}")]
    Config { attestor: String, message: String },
}

impl AttestError {
    /// True when the failure is ours, not the caller's: HTTP 503 `temporarily_unavailable`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AttestError::JwksUnavailable { .. })
    }
}

/// A value from the token, shortened for an error message.
pub(crate) fn echo(value: &str) -> String {
    let mut chars = value.chars();
    let mut out: String = chars.by_ref().take(ECHO_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// A compact JWS decoded once, before anything in it is trusted: the broker routes it to an
/// attestor by `iss`, and that attestor verifies it without decoding it again.
pub struct UnverifiedJwt<'a> {
    header: Header,
    claims: Map<String, Value>,
    signature: Vec<u8>,
    /// `header.payload`: the bytes the signature covers.
    signing_input: &'a str,
}

impl<'a> UnverifiedJwt<'a> {
    /// Splits and decodes `token`; refuses anything that is not a compact JWS whose header
    /// and payload are JSON objects. Nothing is verified.
    pub fn decode(token: &'a str) -> Result<UnverifiedJwt<'a>, AttestError> {
        let parts = Compact::split(token)?;
        let header = Header::decode(parts.header)?;
        let claims = decode_object(parts.payload, "payload is not a JSON object")?;
        let signature = decode_segment(parts.signature, "signature is not base64url")?;
        Ok(UnverifiedJwt {
            header,
            claims,
            signature,
            signing_input: parts.signing_input,
        })
    }

    /// The `iss` claim, if it is a string: which attestor the token is for.
    pub fn iss(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

impl std::fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or its signature: only what routing looks at.
        f.debug_struct("UnverifiedJwt")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .field("iss", &self.iss())
            .finish_non_exhaustive()
    }
}

/// The three segments of a compact JWS, still encoded.
struct Compact<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`: the bytes the signature covers.
    signing_input: &'a str,
}

impl<'a> Compact<'a> {
    fn split(token: &'a str) -> Result<Compact<'a>, AttestError> {
        let malformed = |reason| AttestError::Malformed { reason };
        if token.is_empty() {
            return Err(malformed("empty token"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("token is longer than 32768 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "not a compact JWS (three dot-separated segments)",
            ));
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        Ok(Compact {
            header,
            payload,
            signature,
            signing_input,
        })
    }
}

fn decode_segment(segment: &str, reason: &'static str) -> Result<Vec<u8>, AttestError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AttestError::Malformed { reason })
}

fn decode_object(segment: &str, reason: &'static str) -> Result<Map<String, Value>, AttestError> {
    use serde::Deserializer as _;
    let bytes = decode_segment(segment, reason)?;
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    json.deserialize_map(ObjectVisitor)
        .and_then(|map| json.end().map(|()| map))
        .map_err(|_| AttestError::Malformed { reason })
}

/// A JSON object into a map made with room for a platform token's claims at once
/// (serde_json's own visitor starts it empty and regrows its entries and its table).
struct ObjectVisitor;

impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut entries: A,
    ) -> Result<Self::Value, A::Error> {
        let mut map = Map::with_capacity(16);
        while let Some((name, value)) = entries.next_entry::<String, Value>()? {
            map.insert(name, value);
        }
        Ok(map)
    }
}

/// The JOSE header fields we act on.
struct Header {
    alg: String,
    kid: Option<String>,
    has_crit: bool,
}

impl Header {
    fn decode(segment: &str) -> Result<Header, AttestError> {
        /// The header read straight into the parameters acted on; the rest are skipped, not
        /// built into a map. A repeated `alg`, `kid` or `crit` is refused (RFC 7515 §4 lets
        /// a parser refuse duplicate names rather than take the last).
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            alg: Option<Cow<'a, str>>,
            #[serde(borrow)]
            kid: Option<Cow<'a, str>>,
            #[serde(default)]
            crit: Present,
        }
        const NOT_AN_OBJECT: &str = "header is not base64url-encoded JSON object";
        let bytes = decode_segment(segment, NOT_AN_OBJECT)?;
        // A derived struct would also take a JSON array; a header is an object.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(AttestError::Malformed {
                reason: NOT_AN_OBJECT,
            });
        }
        let raw: Raw = serde_json::from_slice(&bytes).map_err(|e| AttestError::Malformed {
            reason: if e.is_data() {
                "a header parameter (alg, kid) is not a string, or a parameter is repeated"
            } else {
                NOT_AN_OBJECT
            },
        })?;
        let alg = raw.alg.ok_or(AttestError::Malformed {
            reason: "header has no alg",
        })?;
        Ok(Header {
            alg: alg.into_owned(),
            kid: raw.kid.map(Cow::into_owned),
            has_crit: raw.crit.0,
        })
    }
}

/// Whether a header parameter is there at all, whatever its value (`null` included).
#[derive(Default)]
struct Present(bool);

impl<'de> serde::Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// `none` and every HMAC algorithm: refused whatever the config says.
fn never_allowed(alg: &str) -> bool {
    alg.eq_ignore_ascii_case("none") || alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS"))
}

/// One configured `jwt` attestor.
pub struct JwtAttestor {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<&'static str>,
    leeway: i64,
    max_token_age: Option<u64>,
    replay: ReplayPolicy,
    subject_claim: String,
    keys: JwksSource,
}

impl std::fmt::Debug for JwtAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key source prints kids and algorithms only.
        f.debug_struct("JwtAttestor")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("leeway_s", &self.leeway)
            .field("max_token_age_s", &self.max_token_age)
            .field("replay", &self.replay)
            .field("subject_claim", &self.subject_claim)
            .field("keys", &self.keys)
            .finish()
    }
}

impl JwtAttestor {
    /// Sets up one attestor: `jwks_file` / inline `jwks` are read now (a missing or
    /// malformed one is a start-up error); a `jwks_url` is fetched on first use and cached.
    pub fn new(cfg: &AttestorConfig) -> Result<JwtAttestor, AttestError> {
        let config_error = |message: String| AttestError::Config {
            attestor: cfg.name.clone(),
            message,
        };
        if cfg.kind != AttestorKind::Jwt {
            return Err(config_error(format!("kind is {}, not jwt", cfg.kind)));
        }
        // Config validates these too; checked again because this is the security boundary.
        let issuer = cfg
            .issuer
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| config_error("issuer is required".into()))?;
        if cfg.audiences.is_empty() {
            return Err(config_error("at least one audience is required".into()));
        }
        let algorithms = match &cfg.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(config_error("algorithms must not be empty".into()));
            }
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for alg in list {
                    let known = ALLOWED_ALGORITHMS
                        .iter()
                        .find(|a| **a == alg.as_str())
                        .filter(|a| !never_allowed(a))
                        .ok_or_else(|| {
                            config_error(format!(
                                "algorithm {:?} is not allowed (`none` and HS* never are)",
                                echo(alg)
                            ))
                        })?;
                    if !out.contains(known) {
                        out.push(*known);
                    }
                }
                out
            }
        };
        let leeway = match cfg.leeway {
            Some(l) if l.0 > MAX_LEEWAY => {
                return Err(config_error("leeway must be at most 60s".into()));
            }
            Some(l) => l.0.as_secs() as i64,
            None => DEFAULT_LEEWAY_SECS,
        };
        let keys = JwksSource::from_config(cfg, &issuer, &algorithms)?;
        Ok(JwtAttestor {
            name: cfg.name.clone(),
            issuer,
            audiences: cfg.audiences.clone(),
            algorithms,
            leeway,
            max_token_age: cfg.max_token_age.map(|d| d.0.as_secs()),
            replay: cfg.replay,
            subject_claim: cfg
                .subject_claim
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "sub".into()),
            keys,
        })
    }

    /// The attestor's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exact `iss` this attestor accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the keys come from (tests look at the cache).
    #[cfg(test)]
    pub(crate) fn key_source(&self) -> &JwksSource {
        &self.keys
    }

    /// Whether tokens are one-time use (`replay = "reject"`); the broker enforces it.
    pub fn rejects_replay(&self) -> bool {
        self.replay == ReplayPolicy::Reject
    }

    /// The one-time-use key of an attested token and the Unix time until which it must be
    /// remembered (`exp` + leeway: the last instant the token could be accepted).
    ///
    /// `jti` when present (hashed with the issuer, as `jti` is unique per issuer), otherwise
    /// a hash of the whole token. Both are base64url SHA-256, so no token content is stored.
    /// `None` when `claims` has no usable `exp` (i.e. was not attested by this attestor).
    pub fn replay_key(&self, claims: &Value, token: &str) -> Option<(String, i64)> {
        let exp = numeric_date(claims.get("exp")?)?;
        let key = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) if !jti.is_empty() => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                ctx.update(self.issuer.as_bytes());
                ctx.update(&[0]);
                ctx.update(jti.as_bytes());
                format!("jti:{}", URL_SAFE_NO_PAD.encode(ctx.finish()))
            }
            _ => {
                let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                format!("tok:{}", URL_SAFE_NO_PAD.encode(digest))
            }
        };
        Some((key, exp.saturating_add(self.leeway)))
    }

    /// Verifies a platform token at `now` (Unix seconds) and returns what it attests.
    pub async fn attest(&self, token: &str, now: i64) -> Result<Attestation, AttestError> {
        self.attest_decoded(UnverifiedJwt::decode(token)?, now)
            .await
    }

    /// [`JwtAttestor::attest`] for a token the caller has already decoded (to route it).
    pub async fn attest_decoded(
        &self,
        jwt: UnverifiedJwt<'_>,
        now: i64,
    ) -> Result<Attestation, AttestError> {
        let header = &jwt.header;
        // Before any key is looked at: `none` and HS* can never pass, whatever the key set.
        if never_allowed(&header.alg) || !self.algorithms.contains(&header.alg.as_str()) {
            return Err(AttestError::AlgorithmNotAllowed {
                alg: echo(&header.alg),
            });
        }
        if header.has_crit {
            return Err(AttestError::Malformed {
                reason: "crit header parameters are not supported",
            });
        }
        self.verify_signature(header, jwt.signing_input.as_bytes(), &jwt.signature, now)
            .await?;

        let claims = jwt.claims;
        let exp = self.check_claims(&claims, now)?;
        let subject = self.subject(&claims)?;
        Ok(Attestation {
            attestor: self.name.clone(),
            kind: AttestorKind::Jwt,
            source: SourceId::new(&self.name, &subject),
            subject,
            claims: Value::Object(claims),
            expires_at: Some(exp),
            parent: None,
        })
    }

    async fn verify_signature(
        &self,
        header: &Header,
        signing_input: &[u8],
        signature: &[u8],
        now: i64,
    ) -> Result<(), AttestError> {
        let kid = header.kid.as_deref();
        let alg = header.alg.as_str();
        let mut keys = self.keys.keys(now).await?;
        if let Err(miss) = keys.select(kid, alg)
            && miss.may_be_new_key()
            && let Some(newer) = self.keys.refetch_for_unknown_key(now, &keys).await
        {
            keys = newer;
        }
        let verifier = keys.select(kid, alg).map_err(|miss| match miss {
            KeyMiss::UnknownKid => AttestError::UnknownKid {
                kid: echo(kid.unwrap_or_default()),
            },
            KeyMiss::AlgorithmMismatch => AttestError::KeyAlgorithmMismatch {
                kid: echo(kid.unwrap_or_default()),
                alg: alg.to_owned(),
            },
            KeyMiss::NoKey => AttestError::NoKeyForAlgorithm {
                alg: alg.to_owned(),
            },
            KeyMiss::Ambiguous => AttestError::AmbiguousKey {
                alg: alg.to_owned(),
            },
        })?;
        verifier
            .verify(signing_input, signature)
            .map_err(|_| AttestError::BadSignature)
    }

    /// `iss`, `aud`, `exp`, `nbf`, `iat`, `max_token_age`; returns `exp`.
    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<i64, AttestError> {
        match claims.get("iss") {
            None => return Err(missing("iss")),
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => {
                return Err(AttestError::WrongIssuer {
                    expected: self.issuer.clone(),
                });
            }
        }

        let audience_ok = match claims.get("aud") {
            None => return Err(missing("aud")),
            Some(Value::String(aud)) => self.audiences.contains(aud),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audiences.iter().any(|a| a == aud)),
            Some(_) => return Err(invalid("aud", "must be a string or an array of strings")),
        };
        if !audience_ok {
            return Err(AttestError::WrongAudience {
                expected: self.audiences.join(", "),
            });
        }

        let date = |name: &'static str| -> Result<Option<i64>, AttestError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => numeric_date(v)
                    .map(Some)
                    .ok_or_else(|| invalid(name, "must be a NumericDate (seconds since 1970)")),
            }
        };
        let exp = date("exp")?.ok_or_else(|| missing("exp"))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AttestError::Expired);
        }
        if date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AttestError::NotYetValid);
        }
        let iat = date("iat")?;
        if iat.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(AttestError::IssuedInFuture);
        }
        if let Some(max_age) = self.max_token_age {
            let iat = iat.ok_or_else(|| missing("iat"))?;
            let age = now.saturating_sub(iat);
            if age > i64::try_from(max_age).unwrap_or(i64::MAX) {
                return Err(AttestError::TooOld { max_age });
            }
        }
        Ok(exp)
    }

    /// The attested subject: `subject_claim` (a claim name, or a JSON Pointer if it starts
    /// with `/`), default `sub`.
    fn subject(&self, claims: &Map<String, Value>) -> Result<String, AttestError> {
        let value = if self.subject_claim.starts_with('/') {
            // Pointer lookups work on a Value; the map is small, and this runs once per token.
            let mut found = None;
            let mut parts = self.subject_claim[1..].split('/');
            if let Some(first) = parts.next() {
                let first = unescape_pointer(first);
                found = claims.get(&first);
                for part in parts {
                    let part = unescape_pointer(part);
                    found = match found {
                        Some(Value::Object(m)) => m.get(&part),
                        Some(Value::Array(a)) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    };
                }
            }
            found
        } else {
            claims.get(&self.subject_claim)
        };
        match value {
            None | Some(Value::Null) => Err(AttestError::MissingClaim {
                claim: self.subject_claim.clone(),
            }),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(AttestError::InvalidClaim {
                claim: self.subject_claim.clone(),
                reason: "must be a non-empty string",
            }),
        }
    }
}

fn unescape_pointer(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn missing(claim: &str) -> AttestError {
    AttestError::MissingClaim {
        claim: claim.to_owned(),
    }
}

fn invalid(claim: &str, reason: &'static str) -> AttestError {
    AttestError::InvalidClaim {
        claim: claim.to_owned(),
        reason,
    }
}

/// A NumericDate (RFC 7519 §2): integer or fractional seconds, truncated to whole seconds.
fn numeric_date(value: &Value) -> Option<i64> {
    if let Some(i) = value.as_i64() {
        return Some(i);
    }
    let f = value.as_f64()?;
    // `as` saturates; non-finite values are refused.
    f.is_finite().then(|| f.floor() as i64)
}

/// The configured `jwt` attestors; a platform token is routed by its (unverified) `iss`.
#[derive(Debug, Default)]
pub struct JwtAttestors {
    attestors: Vec<JwtAttestor>,
}

impl JwtAttestors {
    /// Sets up every `kind = "jwt"` entry; two attestors for one issuer is a config error
    /// (routing by `iss` would be ambiguous: list several audiences in one attestor instead).
    pub fn new(cfgs: &[AttestorConfig]) -> Result<Self, AttestError> {
        let mut attestors: Vec<JwtAttestor> = Vec::new();
        for cfg in cfgs.iter().filter(|c| c.kind == AttestorKind::Jwt) {
            let attestor = JwtAttestor::new(cfg)?;
            if let Some(other) = attestors.iter().find(|a| a.issuer == attestor.issuer) {
                return Err(AttestError::Config {
                    attestor: attestor.name.clone(),
                    message: format!(
                        "issuer {:?} is already used by attestor {:?}",
                        attestor.issuer, other.name
                    ),
                });
            }
            attestors.push(attestor);
        }
        Ok(JwtAttestors { attestors })
    }

    /// The attestor whose `issuer` is exactly `iss`.
    pub fn find_by_issuer(&self, iss: &str) -> Option<&JwtAttestor> {
        self.attestors.iter().find(|a| a.issuer == iss)
    }

    /// The attestor with this name.
    pub fn get(&self, name: &str) -> Option<&JwtAttestor> {
        self.attestors.iter().find(|a| a.name == name)
    }

    /// All attestors, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &JwtAttestor> {
        self.attestors.iter()
    }

    /// Routes by the token's `iss` and attests with that attestor.
    pub async fn attest(&self, token: &str, now: i64) -> Result<Attestation, AttestError> {
        let jwt = UnverifiedJwt::decode(token)?;
        let iss = jwt.iss().ok_or_else(|| missing("iss"))?;
        let attestor = self
            .find_by_issuer(iss)
            .ok_or_else(|| AttestError::UnknownIssuer { iss: echo(iss) })?;
        attestor.attest_decoded(jwt, now).await
    }
}

/// Keys, configs and tokens for the attestor tests (here and in `jwks`).
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::OnceLock;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use josekit::jwk::KeyPair;
    use josekit::jwk::alg::ec::EcKeyPair;
    use josekit::jwk::alg::rsa::RsaKeyPair;
    use josekit::jws::JwsSigner;
    use serde_json::{Value, json};

    use crate::config::{AttestorConfig, AttestorKind, InlineJwks, ReplayPolicy};

    pub const NOW: i64 = 1_700_000_000;
    pub const ISSUER: &str = "https://issuer.example";
    pub const AUDIENCE: &str = "credbroker";

    /// Test keys, generated once per test binary (RSA generation is not free).
    pub struct Keys {
        pub rsa: RsaKeyPair,
        pub rsa2: RsaKeyPair,
        pub ec: EcKeyPair,
    }

    pub fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| Keys {
            rsa: josekit::jws::RS256.generate_key_pair(2048).unwrap(),
            rsa2: josekit::jws::RS256.generate_key_pair(2048).unwrap(),
            ec: josekit::jws::ES256.generate_key_pair().unwrap(),
        })
    }

    /// A public JWK as JSON with `kid` set (and `alg` removed unless given).
    pub fn public_jwk(pair: &dyn KeyPair, kid: Option<&str>, alg: Option<&str>) -> Value {
        let mut map = pair.to_jwk_public_key().as_ref().clone();
        map.remove("alg");
        if let Some(kid) = kid {
            map.insert("kid".into(), json!(kid));
        }
        if let Some(alg) = alg {
            map.insert("alg".into(), json!(alg));
        }
        Value::Object(map)
    }

    /// `{"keys": [rsa "rsa1", ec "ec1"]}`
    pub fn default_jwks() -> Value {
        json!({ "keys": [
            public_jwk(&keys().rsa, Some("rsa1"), None),
            public_jwk(&keys().ec, Some("ec1"), None),
        ]})
    }

    /// A `jwt` attestor config with no key source set.
    pub fn bare_config(name: &str) -> AttestorConfig {
        AttestorConfig {
            name: name.into(),
            kind: AttestorKind::Jwt,
            preset: None,
            issuer: Some(ISSUER.into()),
            jwks_url: None,
            jwks_file: None,
            jwks: None,
            audiences: vec![AUDIENCE.into(), "other-aud".into()],
            algorithms: None,
            leeway: None,
            max_token_age: None,
            replay: ReplayPolicy::Allow,
            subject_claim: None,
            jwks_refresh_cooldown: None,
            jwks_cache_ttl: None,
            jwks_ca_file: None,
            ca_bundle: None,
        }
    }

    /// A `jwt` attestor config with an inline JWKS.
    pub fn inline_config(jwks: Value) -> AttestorConfig {
        let mut cfg = bare_config("k8s");
        cfg.jwks = Some(InlineJwks::Table(jwks));
        cfg
    }

    /// Valid claims at [`NOW`].
    pub fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "system:serviceaccount:prod:api",
            "exp": NOW + 600,
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "kubernetes.io": { "namespace": "prod" },
        })
    }

    pub fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `header.payload.signature` with the signer's signature over the first two.
    pub fn sign(header: &Value, claims: &Value, signer: &dyn JwsSigner) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    pub fn rs256_with(kid: Option<&str>, pair: &RsaKeyPair, claims: &Value) -> String {
        let signer = josekit::jws::RS256
            .signer_from_der(pair.to_der_private_key())
            .unwrap();
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        sign(&header, claims, &signer)
    }

    pub fn rs256(claims: &Value) -> String {
        rs256_with(Some("rsa1"), &keys().rsa, claims)
    }

    pub fn es256(claims: &Value) -> String {
        let signer = josekit::jws::ES256
            .signer_from_der(keys().ec.to_der_private_key())
            .unwrap();
        sign(&json!({ "alg": "ES256", "kid": "ec1" }), claims, &signer)
    }
}

#[cfg(test)]
mod tests {
    use josekit::jwk::KeyPair;
    use serde_json::json;

    use super::test_support::*;
    use super::*;
    use crate::config::{Dur, InlineJwks};
    use std::time::Duration;

    fn attestor() -> JwtAttestor {
        JwtAttestor::new(&inline_config(default_jwks())).unwrap()
    }

    async fn refuse(a: &JwtAttestor, token: &str) -> AttestError {
        let err = a
            .attest(token, NOW)
            .await
            .expect_err("token must be refused");
        let message = err.to_string();
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !message.contains(part),
                "error {message:?} echoes the token"
            );
        }
        err
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn secs(s: u64) -> Option<Dur> {
        Some(Dur(Duration::from_secs(s)))
    }

    #[tokio::test]
    async fn valid_rs256_token_is_accepted() {
        let a = attestor();
        let att = a.attest(&rs256(&claims()), NOW).await.unwrap();
        assert_eq!(att.attestor, "k8s");
        assert_eq!(att.kind, AttestorKind::Jwt);
        assert_eq!(att.subject, "system:serviceaccount:prod:api");
        assert_eq!(att.claims, claims());
        assert_eq!(
            att.source,
            SourceId::new("k8s", "system:serviceaccount:prod:api")
        );
        assert_eq!(att.expires_at, Some(NOW + 600));
        assert!(att.parent.is_none());
    }

    #[tokio::test]
    async fn valid_es256_token_is_accepted() {
        let att = attestor().attest(&es256(&claims()), NOW).await.unwrap();
        assert_eq!(att.subject, "system:serviceaccount:prod:api");
        assert_eq!(att.claims["kubernetes.io"]["namespace"], "prod");
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let a = attestor();
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({ "alg": alg, "kid": "rsa1" }).to_string().as_bytes());
            let payload = b64(claims().to_string().as_bytes());
            for token in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}.AAAA"),
            ] {
                let err = refuse(&a, &token).await;
                assert!(
                    matches!(err, AttestError::AlgorithmNotAllowed { .. }),
                    "{err}"
                );
            }
        }
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion attack: HMAC keyed with the issuer's public key, hoping a
        // verifier picks "the key for kid rsa1" and lets the header choose HMAC.
        let a = attestor();
        let rsa = &keys().rsa;
        let public_pem = rsa.to_pem_public_key();
        let public_der = rsa.to_der_public_key();
        let public_jwk = public_jwk(rsa, Some("rsa1"), None).to_string();
        for secret in [&public_pem[..], &public_der[..], public_jwk.as_bytes()] {
            let signer = josekit::jws::HS256.signer_from_bytes(secret).unwrap();
            for alg_header in [
                json!({ "alg": "HS256", "kid": "rsa1" }),
                json!({ "alg": "HS256" }),
                json!({ "alg": "HS256", "kid": "ec1" }),
            ] {
                let token = sign(&alg_header, &claims(), &signer);
                let err = refuse(&a, &token).await;
                assert!(
                    matches!(&err, AttestError::AlgorithmNotAllowed { alg } if alg == "HS256"),
                    "{err}"
                );
            }
        }
        // And no config can let HS* in.
        for alg in ["HS256", "HS384", "HS512", "none"] {
            let mut cfg = inline_config(default_jwks());
            cfg.algorithms = Some(vec![alg.into()]);
            assert!(matches!(
                JwtAttestor::new(&cfg),
                Err(AttestError::Config { .. })
            ));
        }
    }

    #[tokio::test]
    async fn oct_keys_in_a_jwks_are_refused_at_start_up() {
        let jwks = json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0", "kid": "h" }] });
        let err = JwtAttestor::new(&inline_config(jwks)).unwrap_err();
        assert!(err.to_string().contains("oct"), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0"));
    }

    #[tokio::test]
    async fn alg_outside_the_allow_list_is_refused() {
        let mut cfg = inline_config(default_jwks());
        cfg.algorithms = Some(vec!["RS256".into()]);
        let a = JwtAttestor::new(&cfg).unwrap();
        let err = refuse(&a, &es256(&claims())).await;
        assert!(matches!(&err, AttestError::AlgorithmNotAllowed { alg } if alg == "ES256"));

        // PS256 over the same RSA key: a real signature, but not an allowed algorithm.
        let signer = josekit::jws::PS256
            .signer_from_der(keys().rsa.to_der_private_key())
            .unwrap();
        let token = sign(
            &json!({ "alg": "PS256", "kid": "rsa1" }),
            &claims(),
            &signer,
        );
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::AlgorithmNotAllowed { .. }
        ));

        // An algorithm no one supports.
        let header = b64(br#"{"alg":"XY999","kid":"rsa1"}"#);
        let token = format!("{header}.{}.AAAA", b64(claims().to_string().as_bytes()));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::AlgorithmNotAllowed { .. }
        ));
    }

    #[tokio::test]
    async fn key_must_agree_with_alg() {
        let a = attestor();
        // RS256 header naming the EC key.
        let token = rs256_with(Some("ec1"), &keys().rsa, &claims());
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::KeyAlgorithmMismatch { .. }
        ));
        // A JWK whose own alg is RS512 cannot verify RS256.
        let jwks = json!({ "keys": [public_jwk(&keys().rsa, Some("rsa1"), Some("RS512"))] });
        let mut cfg = inline_config(jwks);
        cfg.algorithms = Some(vec!["RS256".into(), "RS512".into()]);
        let a = JwtAttestor::new(&cfg).unwrap();
        assert!(matches!(
            refuse(&a, &rs256(&claims())).await,
            AttestError::KeyAlgorithmMismatch { .. }
        ));
    }

    #[tokio::test]
    async fn unknown_kid_with_a_static_jwks_is_refused() {
        let a = attestor();
        let token = rs256_with(Some("rotated"), &keys().rsa, &claims());
        let err = refuse(&a, &token).await;
        assert!(matches!(&err, AttestError::UnknownKid { kid } if kid == "rotated"));
        assert!(!err.is_unavailable());
    }

    #[tokio::test]
    async fn token_without_kid_uses_the_single_compatible_key() {
        let a = attestor();
        let token = rs256_with(None, &keys().rsa, &claims());
        a.attest(&token, NOW).await.unwrap();

        let jwks = json!({ "keys": [
            public_jwk(&keys().rsa, Some("a"), None),
            public_jwk(&keys().rsa2, Some("b"), None),
        ]});
        let a = JwtAttestor::new(&inline_config(jwks)).unwrap();
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::AmbiguousKey { .. }
        ));
    }

    #[tokio::test]
    async fn signature_by_another_key_is_refused() {
        let token = rs256_with(Some("rsa1"), &keys().rsa2, &claims());
        assert!(matches!(
            refuse(&attestor(), &token).await,
            AttestError::BadSignature
        ));
    }

    #[tokio::test]
    async fn wrong_or_missing_issuer_is_refused() {
        let a = attestor();
        let token = rs256(&with(claims(), "iss", json!("https://evil.example")));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::WrongIssuer { .. }
        ));
        let token = rs256(&with(claims(), "iss", json!(format!("{ISSUER}/"))));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::WrongIssuer { .. }
        ));
        let token = rs256(&without(claims(), "iss"));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::MissingClaim { .. }
        ));
    }

    #[tokio::test]
    async fn audience_must_contain_a_configured_one() {
        let a = attestor();
        let token = rs256(&with(claims(), "aud", json!("someone-else")));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::WrongAudience { .. }
        ));
        let token = rs256(&with(claims(), "aud", json!(["x", "y"])));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::WrongAudience { .. }
        ));
        let token = rs256(&with(claims(), "aud", json!(["x", AUDIENCE])));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&with(claims(), "aud", json!("other-aud")));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&without(claims(), "aud"));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::MissingClaim { .. }
        ));
        let token = rs256(&with(claims(), "aud", json!(42)));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::InvalidClaim { .. }
        ));
    }

    #[tokio::test]
    async fn expiry_honours_the_leeway() {
        let a = attestor();
        let token = rs256(&with(claims(), "exp", json!(NOW - 30)));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&with(claims(), "exp", json!(NOW - 31)));
        assert!(matches!(refuse(&a, &token).await, AttestError::Expired));
        let token = rs256(&without(claims(), "exp"));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::MissingClaim { .. }
        ));
        let token = rs256(&with(claims(), "exp", json!("tomorrow")));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::InvalidClaim { .. }
        ));
        // Fractional NumericDate.
        let token = rs256(&with(claims(), "exp", json!((NOW + 10) as f64 + 0.5)));
        a.attest(&token, NOW).await.unwrap();

        let mut cfg = inline_config(default_jwks());
        cfg.leeway = secs(0);
        let strict = JwtAttestor::new(&cfg).unwrap();
        let token = rs256(&with(claims(), "exp", json!(NOW - 1)));
        assert!(matches!(
            refuse(&strict, &token).await,
            AttestError::Expired
        ));
        cfg.leeway = secs(61);
        assert!(matches!(
            JwtAttestor::new(&cfg),
            Err(AttestError::Config { .. })
        ));
    }

    #[tokio::test]
    async fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
        let a = attestor();
        let token = rs256(&with(claims(), "nbf", json!(NOW + 30)));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&with(claims(), "nbf", json!(NOW + 31)));
        assert!(matches!(refuse(&a, &token).await, AttestError::NotYetValid));
        let token = rs256(&with(claims(), "iat", json!(NOW + 30)));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&with(claims(), "iat", json!(NOW + 31)));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::IssuedInFuture
        ));
        // Both optional without max_token_age.
        let token = rs256(&without(without(claims(), "nbf"), "iat"));
        a.attest(&token, NOW).await.unwrap();
    }

    #[tokio::test]
    async fn max_token_age_requires_a_recent_iat() {
        let mut cfg = inline_config(default_jwks());
        cfg.max_token_age = secs(600);
        let a = JwtAttestor::new(&cfg).unwrap();
        let token = rs256(&with(claims(), "iat", json!(NOW - 600)));
        a.attest(&token, NOW).await.unwrap();
        let token = rs256(&with(claims(), "iat", json!(NOW - 601)));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::TooOld { max_age: 600 }
        ));
        let token = rs256(&without(claims(), "iat"));
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::MissingClaim { claim } if claim == "iat"
        ));
    }

    #[tokio::test]
    async fn tampered_payload_or_signature_is_refused() {
        let a = attestor();
        for token in [rs256(&claims()), es256(&claims())] {
            let parts: Vec<&str> = token.split('.').collect();
            let forged = b64(with(
                claims(),
                "sub",
                json!("system:serviceaccount:kube-system:admin"),
            )
            .to_string()
            .as_bytes());
            let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
            assert!(matches!(
                refuse(&a, &tampered).await,
                AttestError::BadSignature
            ));

            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            sig[5] ^= 0x01;
            let tampered = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
            assert!(matches!(
                refuse(&a, &tampered).await,
                AttestError::BadSignature
            ));

            let truncated = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..10]));
            assert!(matches!(
                refuse(&a, &truncated).await,
                AttestError::BadSignature
            ));

            let unsigned = format!("{}.{}.", parts[0], parts[1]);
            assert!(matches!(
                refuse(&a, &unsigned).await,
                AttestError::BadSignature
            ));
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_without_panic() {
        let a = attestor();
        let good = rs256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let payload = parts[1];
        let huge_header = b64(json!({ "alg": "RS256", "x": "a".repeat(100_000) })
            .to_string()
            .as_bytes());
        let cases = vec![
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{good}.extra"),
            format!("{}.{}.{}.{}.{}", parts[0], parts[1], "x", "y", parts[2]),
            format!("!!!.{payload}.{}", parts[2]),
            format!("{}=.{payload}.{}", parts[0], parts[2]),
            format!("{}.{payload}.{}", b64(b"not json"), parts[2]),
            format!("{}.{payload}.{}", b64(b"[1,2]"), parts[2]),
            format!("{}.{payload}.{}", b64(b"{}"), parts[2]),
            format!("{}.{payload}.{}", b64(br#"["RS256"]"#), parts[2]),
            format!("{}.{payload}.{}", b64(br#"{"alg":null}"#), parts[2]),
            format!(
                "{}.{payload}.{}",
                b64(br#"{"alg":"RS256","alg":"none"}"#),
                parts[2]
            ),
            format!("{}.{payload}.{}", b64(br#"{"alg":7}"#), parts[2]),
            format!(
                "{}.{payload}.{}",
                b64(br#"{"alg":"RS256","kid":5}"#),
                parts[2]
            ),
            format!("{}.{payload}.{}", b64(&[0xff, 0xfe, 0x00]), parts[2]),
            format!("{}.%%%.{}", parts[0], parts[2]),
            format!("{}.{payload}.%%%", parts[0]),
            format!("{huge_header}.{payload}.{}", parts[2]),
            format!(
                "{}.{payload}.{}",
                b64(&"[".repeat(10_000).into_bytes()),
                parts[2]
            ),
            "..".into(),
            "\u{0}.\u{0}.\u{0}".into(),
        ];
        for token in &cases {
            let err = refuse(&a, token).await;
            assert!(
                matches!(err, AttestError::Malformed { .. }),
                "{token:.40}: {err}"
            );
            assert!(
                UnverifiedJwt::decode(token).is_err(),
                "decode accepted {token:.40}"
            );
        }
        // A payload that is signed but not a JSON object.
        let signer = josekit::jws::RS256
            .signer_from_der(keys().rsa.to_der_private_key())
            .unwrap();
        let token = sign(
            &json!({ "alg": "RS256", "kid": "rsa1" }),
            &json!([1]),
            &signer,
        );
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::Malformed { .. }
        ));
        // crit is not understood, so refused.
        let token = sign(
            &json!({ "alg": "RS256", "kid": "rsa1", "crit": ["exp"], "exp": 1 }),
            &claims(),
            &signer,
        );
        assert!(matches!(
            refuse(&a, &token).await,
            AttestError::Malformed { .. }
        ));
    }

    #[tokio::test]
    async fn subject_comes_from_the_configured_claim() {
        let mut cfg = inline_config(default_jwks());
        cfg.subject_claim = Some("/kubernetes.io/namespace".into());
        let a = JwtAttestor::new(&cfg).unwrap();
        let att = a.attest(&rs256(&claims()), NOW).await.unwrap();
        assert_eq!(att.subject, "prod");
        assert_eq!(att.source, SourceId::new("k8s", "prod"));

        cfg.subject_claim = Some("repository".into());
        let a = JwtAttestor::new(&cfg).unwrap();
        let err = refuse(&a, &rs256(&claims())).await;
        assert!(matches!(&err, AttestError::MissingClaim { claim } if claim == "repository"));
        let err = refuse(&attestor(), &rs256(&without(claims(), "sub"))).await;
        assert!(matches!(&err, AttestError::MissingClaim { claim } if claim == "sub"));
        let err = refuse(&attestor(), &rs256(&with(claims(), "sub", json!("")))).await;
        assert!(matches!(err, AttestError::InvalidClaim { .. }));
    }

    #[tokio::test]
    async fn error_messages_never_contain_the_token() {
        let a = attestor();
        let long_kid = "k".repeat(5000);
        let tokens = [
            rs256(&with(claims(), "exp", json!(NOW - 1000))),
            rs256(&with(claims(), "aud", json!("nope"))),
            rs256(&with(claims(), "iss", json!("x".repeat(5000)))),
            rs256_with(Some(&long_kid), &keys().rsa, &claims()),
            rs256_with(Some("rsa1"), &keys().rsa2, &claims()),
        ];
        for token in &tokens {
            let err = refuse(&a, token).await;
            let message = err.to_string();
            assert!(!message.contains(token.as_str()));
            assert!(message.len() < 400, "{message}");
        }
        // Routing errors too.
        let registry = JwtAttestors::new(&[inline_config(default_jwks())]).unwrap();
        let token = rs256(&with(claims(), "iss", json!("https://unknown.example")));
        let err = registry.attest(&token, NOW).await.unwrap_err();
        assert!(matches!(err, AttestError::UnknownIssuer { .. }));
        assert!(!err.to_string().contains(&token));
    }

    #[test]
    fn start_up_errors_for_bad_key_sources() {
        let mut cfg = bare_config("k8s");
        cfg.jwks_file = Some("/nonexistent/credbroker-test/jwks.json".into());
        let err = JwtAttestor::new(&cfg).unwrap_err();
        assert!(matches!(err, AttestError::Config { .. }), "{err}");
        assert!(err.to_string().contains("jwks_file"));

        let dir = std::env::temp_dir().join(format!("credbroker-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwks.json");
        std::fs::write(&file, b"{ not json").unwrap();
        cfg.jwks_file = Some(file.clone());
        assert!(matches!(
            JwtAttestor::new(&cfg),
            Err(AttestError::Config { .. })
        ));
        std::fs::write(&file, br#"{"keys": []}"#).unwrap();
        assert!(matches!(
            JwtAttestor::new(&cfg),
            Err(AttestError::Config { .. })
        ));
        std::fs::write(&file, default_jwks().to_string()).unwrap();
        let a = JwtAttestor::new(&cfg).unwrap();
        assert_eq!(a.name(), "k8s");
        assert_eq!(a.issuer(), ISSUER);

        // A private key published by mistake is refused.
        let private =
            json!({ "keys": [Value::Object(keys().rsa.to_jwk_private_key().as_ref().clone())] });
        assert!(matches!(
            JwtAttestor::new(&inline_config(private)),
            Err(AttestError::Config { .. })
        ));
        // Inline JSON string form.
        let mut cfg = bare_config("k8s");
        cfg.jwks = Some(InlineJwks::Json(default_jwks().to_string()));
        JwtAttestor::new(&cfg).unwrap();
        // No source, or two.
        let mut cfg = bare_config("k8s");
        assert!(JwtAttestor::new(&cfg).is_err());
        cfg.jwks = Some(InlineJwks::Table(default_jwks()));
        cfg.jwks_file = Some(file.clone());
        assert!(JwtAttestor::new(&cfg).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn debug_does_not_print_keys() {
        let a = attestor();
        let text = format!("{a:?}");
        let n = keys()
            .rsa
            .to_jwk_public_key()
            .parameter("n")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!text.contains(&n[..40]), "{text}");
        assert!(text.contains("rsa1"));
    }

    #[tokio::test]
    async fn decoding_reads_without_verifying() {
        let token = rs256(&claims());
        let jwt = UnverifiedJwt::decode(&token).unwrap();
        assert_eq!(jwt.iss(), Some(ISSUER));
        assert_eq!(jwt.header.alg, "RS256");
        assert_eq!(jwt.header.kid.as_deref(), Some("rsa1"));
        // Debug shows what routing looks at, never the token or its signature.
        let debug = format!("{jwt:?}");
        assert!(debug.contains(ISSUER) && debug.contains("rsa1"), "{debug}");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!debug.contains(signature) && !debug.contains(&token[..40]));
        // Decoding does not verify: a forged token still decodes, and attesting it fails.
        let forged = rs256_with(Some("rsa1"), &keys().rsa2, &claims());
        let jwt = UnverifiedJwt::decode(&forged).unwrap();
        let a = JwtAttestor::new(&inline_config(default_jwks())).unwrap();
        assert!(matches!(
            a.attest_decoded(jwt, NOW).await,
            Err(AttestError::BadSignature)
        ));
    }

    #[tokio::test]
    async fn replay_keys() {
        let mut cfg = inline_config(default_jwks());
        let a = JwtAttestor::new(&cfg).unwrap();
        assert!(!a.rejects_replay());
        cfg.replay = ReplayPolicy::Reject;
        let a = JwtAttestor::new(&cfg).unwrap();
        assert!(a.rejects_replay());

        let with_jti = rs256(&with(claims(), "jti", json!("abc")));
        let att = a.attest(&with_jti, NOW).await.unwrap();
        let (key, until) = a.replay_key(&att.claims, &with_jti).unwrap();
        assert!(key.starts_with("jti:") && !key.contains("abc"));
        assert_eq!(until, NOW + 600 + DEFAULT_LEEWAY_SECS);
        // Same jti, different token bytes: same key.
        let again = rs256(&with(
            with(claims(), "jti", json!("abc")),
            "iat",
            json!(NOW),
        ));
        assert_eq!(
            a.replay_key(&with(claims(), "jti", json!("abc")), &again)
                .unwrap()
                .0,
            key
        );

        let plain = rs256(&claims());
        let (key, _) = a.replay_key(&claims(), &plain).unwrap();
        assert!(key.starts_with("tok:"));
        assert!(!plain.contains(&key[4..]));
        assert_ne!(a.replay_key(&claims(), &es256(&claims())).unwrap().0, key);
        assert!(a.replay_key(&json!({}), &plain).is_none());
    }

    #[tokio::test]
    async fn registry_routes_by_issuer() {
        let k8s = inline_config(default_jwks());
        let mut gh = inline_config(default_jwks());
        gh.name = "github".into();
        gh.issuer = Some("https://token.actions.githubusercontent.com".into());
        let mut mtls = bare_config("legacy");
        mtls.kind = AttestorKind::Mtls;
        let registry = JwtAttestors::new(&[k8s.clone(), mtls, gh.clone()]).unwrap();
        assert_eq!(registry.iter().count(), 2);
        assert_eq!(registry.find_by_issuer(ISSUER).unwrap().name(), "k8s");
        assert_eq!(
            registry.get("github").unwrap().issuer(),
            gh.issuer.as_deref().unwrap()
        );
        assert!(registry.get("legacy").is_none());
        assert!(registry.find_by_issuer("https://issuer.example/").is_none());

        let gh_token = rs256(&with(claims(), "iss", json!(gh.issuer.clone().unwrap())));
        assert_eq!(
            registry.attest(&gh_token, NOW).await.unwrap().attestor,
            "github"
        );
        assert_eq!(
            registry
                .attest(&rs256(&claims()), NOW)
                .await
                .unwrap()
                .attestor,
            "k8s"
        );
        let no_iss = rs256(&without(claims(), "iss"));
        assert!(matches!(
            registry.attest(&no_iss, NOW).await,
            Err(AttestError::MissingClaim { .. })
        ));

        let mut dup = k8s.clone();
        dup.name = "k8s-2".into();
        assert!(matches!(
            JwtAttestors::new(&[k8s, dup]),
            Err(AttestError::Config { .. })
        ));
    }
}
