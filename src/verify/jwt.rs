//! JWT verification: signature with the broker's published keys, `iss`, time window,
//! `aud`, binding, and revocation (with lineage and actors) — all local.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::jwks::ALGORITHMS;
use super::{Verifier, VerifyError};
use crate::attest::jwks::KeyMiss;
use crate::claims::Claims;
use crate::revoke::mirror::CredentialRef;

/// Largest token accepted; a credbroker JWT is well under 4 KiB.
const MAX_TOKEN: usize = 16 * 1024;

impl Verifier {
    /// Verifies a credbroker JWT for `expected_audience`: a local check, no network call.
    ///
    /// Refuses a token bound to a client certificate (`cnf`): such a token proves nothing
    /// without the certificate, so use [`verify_jwt_bound`](Self::verify_jwt_bound).
    /// A token signed with a key the verifier has not seen yet is refused with
    /// [`VerifyError::UnknownKey`] and wakes the key refresher;
    /// [`verify_jwt_refreshing`](Self::verify_jwt_refreshing) waits for it instead.
    pub fn verify_jwt(&self, token: &str, expected_audience: &str) -> Result<Claims, VerifyError> {
        let claims = self.verify_unbound_parts(token, expected_audience)?;
        if claims.cnf.is_some() {
            return Err(VerifyError::BindingMismatch);
        }
        Ok(claims)
    }

    /// As [`verify_jwt`](Self::verify_jwt), for a caller that presented `client_cert_der`
    /// over mTLS: a bound token (RFC 8705 `cnf.x5t#S256`) must be bound to exactly this
    /// certificate; an unbound token is accepted as a bearer token.
    pub fn verify_jwt_bound(
        &self,
        token: &str,
        expected_audience: &str,
        client_cert_der: &[u8],
    ) -> Result<Claims, VerifyError> {
        let claims = self.verify_unbound_parts(token, expected_audience)?;
        if claims.cnf.is_some() {
            let presented = crate::tls::thumbprint(client_cert_der);
            if claims.certificate_thumbprint() != Some(presented.as_str()) {
                return Err(VerifyError::BindingMismatch);
            }
        }
        Ok(claims)
    }

    /// As [`verify_jwt`](Self::verify_jwt) (or the bound variant when `client_cert_der`
    /// is given), but an unknown `kid` refetches the JWKS (at most once per cooldown) and
    /// retries once: the path for a key the broker has just rotated in.
    pub async fn verify_jwt_refreshing(
        &self,
        token: &str,
        expected_audience: &str,
        client_cert_der: Option<&[u8]>,
    ) -> Result<Claims, VerifyError> {
        let check = || match client_cert_der {
            Some(der) => self.verify_jwt_bound(token, expected_audience, der),
            None => self.verify_jwt(token, expected_audience),
        };
        match check() {
            Err(VerifyError::UnknownKey) => {
                if let Err(e) = self.refresh_keys().await {
                    tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
                }
                check()
            }
            other => other,
        }
    }

    /// Every check but the binding.
    fn verify_unbound_parts(&self, token: &str, audience: &str) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN {
            return Err(VerifyError::Malformed("token too large"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("not a compact JWS"));
        };
        let header = decode_json(header_b64)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(VerifyError::Malformed("no alg"))?;
        if !ALGORITHMS.contains(&alg) {
            return Err(VerifyError::Algorithm(alg.chars().take(20).collect()));
        }
        if header.get("crit").is_some() {
            return Err(VerifyError::Malformed("unsupported crit header"));
        }
        if let Some(typ) = header.get("typ")
            && typ != "JWT"
            && typ != "JOSE"
        {
            return Err(VerifyError::Malformed("typ is not JWT"));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(VerifyError::Malformed("no kid"))?;
        let keys = self.inner.keys.current();
        let verifier = match keys.select(Some(kid), alg) {
            Ok(v) => v,
            Err(KeyMiss::UnknownKid) | Err(KeyMiss::NoKey) => {
                self.inner.refresh_keys.notify_one();
                return Err(VerifyError::UnknownKey);
            }
            Err(_) => return Err(VerifyError::BadSignature),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        verifier
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| VerifyError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| VerifyError::Malformed("claims are not a credbroker credential's"))?;
        if claims.iss != self.inner.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        let now = crate::store::wall_ms() / 1000;
        let leeway = self.inner.leeway;
        if now > claims.exp.saturating_add(leeway) {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now.saturating_add(leeway) || claims.iat > now.saturating_add(leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if !claims.aud.contains(audience) {
            return Err(VerifyError::WrongAudience);
        }
        self.ensure_fresh()?;
        self.check_revocation(&claims, now)?;
        Ok(claims)
    }

    fn check_revocation(&self, claims: &Claims, now: i64) -> Result<(), VerifyError> {
        // `act` chains are at most 4 deep (SPEC §6.3); a few more are tolerated, not allocated.
        let mut actors: [&str; 8] = [""; 8];
        let mut count = 0;
        let mut act = claims.act.as_ref();
        while let Some(a) = act {
            let Some(sub) = a.get("sub").and_then(Value::as_str) else {
                break;
            };
            if count == actors.len() {
                return Err(VerifyError::Malformed("act chain too deep"));
            }
            actors[count] = sub;
            count += 1;
            act = a.get("act");
        }
        let credential = CredentialRef {
            id: &claims.jti,
            spiffe_id: &claims.sub,
            source: &claims.src,
            issued_at: claims.iat,
            chain: &claims.chain,
            actors: &actors[..count],
        };
        match self.inner.mirror.check(&credential, now) {
            Some(why) => Err(VerifyError::Revoked(why)),
            None => Ok(()),
        }
    }
}

fn decode_json(segment: &str) -> Result<Value, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed("header is not base64url"))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed("header is not JSON"))?;
    if !value.is_object() {
        return Err(VerifyError::Malformed("header is not a JSON object"));
    }
    Ok(value)
}
