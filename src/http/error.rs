//! The single mapping from broker errors to OAuth 2.0 error responses.
//!
//! Every failure a client can cause ends here, as `{"error", "error_description"}` with
//! the status RFC 6749 §5.2, RFC 6750 §3.1 and RFC 8693 §2.2.2 prescribe. The same
//! underlying failure maps to different codes at different doors (a policy refusal is
//! `invalid_request` at token exchange but `access_denied` at `/v1/svid`), so the door
//! is part of the mapping.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;
use crate::policy::DenialKind;

/// The endpoint family a request came through; decides how failures are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST /v1/token` with the token-exchange grant.
    TokenExchange,
    /// `POST /v1/token` with `client_credentials` over mTLS.
    ClientCredentials,
    /// `POST /v1/svid`.
    Svid,
    /// Admin, introspection and revocation-feed endpoints.
    Protected,
}

/// An error response, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 for a protected endpoint reached without a valid credential (RFC 6750 `invalid_token`).
    pub fn unauthenticated(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
    }

    /// 403 for a valid credential without the needed right (RFC 6750 `insufficient_scope`).
    pub fn forbidden(description: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "insufficient_scope", description)
    }

    /// 404 for an unknown path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 503 `temporarily_unavailable`.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }

    /// 500 `server_error`; the description stays generic, details go to the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; see the broker log",
        )
    }

    /// Maps a broker failure at a given door to its response.
    pub fn from_broker(error: &BrokerError, door: Door) -> Self {
        use BrokerError as E;
        let refused = |description: String| match door {
            Door::TokenExchange | Door::Protected => ApiError::invalid_request(description),
            Door::ClientCredentials => {
                ApiError::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
            }
            Door::Svid => ApiError::new(StatusCode::FORBIDDEN, "access_denied", description),
        };
        let unauthenticated = |description: String| match door {
            Door::TokenExchange => ApiError::invalid_request(description),
            Door::ClientCredentials | Door::Svid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
            }
            Door::Protected => ApiError::unauthenticated(description),
        };
        match error {
            E::BadRequest(d) => ApiError::invalid_request(d.clone()),
            E::Attestation(e) if e.is_unavailable() => ApiError::unavailable(e.to_string()),
            E::Attestation(e) => unauthenticated(format!("attestation failed: {e}")),
            E::Credential(reason) => unauthenticated(reason.clone()),
            E::Denied(denial) => match (denial.kind(), door) {
                (DenialKind::Audience, Door::TokenExchange | Door::ClientCredentials) => {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        denial.to_string(),
                    )
                }
                (DenialKind::Scope, Door::TokenExchange | Door::ClientCredentials) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_scope", denial.to_string())
                }
                _ => refused(denial.to_string()),
            },
            E::Locked { spiffe_id, reason } => refused(match reason {
                Some(r) => format!("identity {spiffe_id} is locked: {r}"),
                None => format!("identity {spiffe_id} is locked"),
            }),
            E::RateLimited { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow_down",
                    format!("issuance rate limit for this identity reached; retry in {secs}s"),
                );
                e.retry_after = Some(secs);
                e
            }
            E::Unavailable(d) => ApiError::unavailable(d.clone()),
            E::Internal(_) => ApiError::internal(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            error_description: &self.description,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "invalid_token" {
            let challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.description.replace(['"', '\\'], "'")
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}
