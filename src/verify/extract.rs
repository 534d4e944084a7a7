//! The axum extractor: `VerifiedJwt(claims)` in a handler's arguments admits only requests
//! with a valid credbroker JWT for the verifier's audience (RFC 6750 bearer usage).
//!
//! The [`Verifier`] is taken from the request extensions (`.layer(Extension(verifier))`),
//! and its configured audience is required. When the service's accept loop puts the
//! client's certificate in the extensions as a [`PeerCertificate`], a token bound to a
//! certificate (`cnf`) must be bound to that one.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::CertificateDer;

use super::{Verifier, VerifyError};
use crate::claims::Claims;

/// The verified claims of the request's bearer token.
#[derive(Debug, Clone)]
pub struct VerifiedJwt(pub Claims);

/// The client certificate of the connection (leaf), for bound tokens.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub CertificateDer<'static>);

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyRejection {
    /// No `Authorization: Bearer` header: 401 with a bare challenge (RFC 6750 §3.1).
    Missing,
    /// The token is not acceptable: 401 `invalid_token`.
    Invalid(VerifyError),
    /// The revocation list is stale: 503, the service fails closed.
    Unavailable,
    /// No verifier (or no audience) configured for this route: 500.
    Misconfigured,
}

const REALM: &str = "credbroker";

impl IntoResponse for VerifyRejection {
    fn into_response(self) -> Response {
        let (status, challenge, message) = match &self {
            VerifyRejection::Missing => (
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer realm=\"{REALM}\"")),
                "a credbroker bearer token is required".to_string(),
            ),
            VerifyRejection::Invalid(e) => (
                StatusCode::UNAUTHORIZED,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    e.to_string().replace(['"', '\\'], "'")
                )),
                e.to_string(),
            ),
            VerifyRejection::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                VerifyError::Stale.to_string(),
            ),
            VerifyRejection::Misconfigured => (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "the service has no credbroker verifier configured".to_string(),
            ),
        };
        let code = match status {
            StatusCode::UNAUTHORIZED if matches!(self, VerifyRejection::Missing) => {
                "invalid_request"
            }
            StatusCode::UNAUTHORIZED => "invalid_token",
            StatusCode::SERVICE_UNAVAILABLE => "temporarily_unavailable",
            _ => "server_error",
        };
        let body = serde_json::json!({"error": code, "error_description": message});
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedJwt {
    type Rejection = VerifyRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let verifier = parts
            .extensions
            .get::<Verifier>()
            .cloned()
            .ok_or(VerifyRejection::Misconfigured)?;
        let audience = verifier
            .audience()
            .map(str::to_string)
            .ok_or(VerifyRejection::Misconfigured)?;
        let token = bearer_token(parts)?;
        let cert = parts
            .extensions
            .get::<PeerCertificate>()
            .map(|c| c.0.as_ref());
        match verifier.verify_jwt_refreshing(token, &audience, cert).await {
            Ok(claims) => Ok(VerifiedJwt(claims)),
            Err(VerifyError::Stale) => Err(VerifyRejection::Unavailable),
            Err(e) => Err(VerifyRejection::Invalid(e)),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer_token(parts: &Parts) -> Result<&str, VerifyRejection> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(VerifyRejection::Missing)?
        .to_str()
        .map_err(|_| VerifyRejection::Invalid(VerifyError::Malformed("Authorization header")))?;
    let (scheme, token) =
        value
            .split_once(' ')
            .ok_or(VerifyRejection::Invalid(VerifyError::Malformed(
                "Authorization header",
            )))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(VerifyRejection::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(VerifyRejection::Invalid(VerifyError::Malformed(
            "empty bearer token",
        )));
    }
    Ok(token)
}
