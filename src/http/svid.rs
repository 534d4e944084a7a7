//! `POST /v1/svid` (SPEC §6.2): a CSR plus an attestation → an X.509-SVID.
//!
//! The attestation is `Authorization: Bearer <platform JWT | broker JWT | join token>`
//! when given, otherwise the TLS client certificate (an `mtls` attestor's, or one of our
//! own SVIDs: a renewal). The CSR is checked before the attestation is consumed, so a
//! malformed request never burns a one-time join token.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Door};
use super::{AppState, ConnInfo, LimitedBody, media_type};
use crate::broker::{Ask, SvidIssued};
use crate::issue::x509::VerifiedCsr;
use crate::revoke::entry::rfc3339;

/// The JSON request form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SvidRequestBody {
    /// PEM `CERTIFICATE REQUEST`.
    csr: String,
    /// Requested lifetime in seconds.
    #[serde(default)]
    ttl: Option<u64>,
}

/// The §6.2 response.
#[derive(Debug, Serialize)]
pub struct SvidResponse {
    pub spiffe_id: String,
    pub svid_chain: String,
    pub bundle: String,
    pub expires_at: String,
    pub refresh_after: String,
}

impl SvidResponse {
    fn new(issued: SvidIssued) -> Self {
        SvidResponse {
            spiffe_id: issued.spiffe_id,
            svid_chain: issued.svid_chain,
            bundle: issued.bundle,
            expires_at: rfc3339::format(issued.expires_at),
            refresh_after: rfc3339::format(issued.refresh_after),
        }
    }
}

impl IntoResponse for SvidResponse {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::OK, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// `POST /v1/svid`.
pub async fn issue(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<SvidResponse, ApiError> {
    let bearer = bearer(&headers)?;
    let has_cert = conn
        .peer_certs
        .as_ref()
        .is_some_and(|c| !c.chain().is_empty());
    if bearer.is_none() && !has_cert {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "attest with a client certificate over mTLS or `Authorization: Bearer <platform token | join token>`",
        ));
    }
    let (csr_bytes, ttl) = match media_type(&headers).as_deref() {
        Some("application/pkcs10") => (body.to_vec(), None),
        Some("application/json") | None => {
            let req: SvidRequestBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::invalid_request(format!(
                    "the body must be JSON {{\"csr\": PEM, \"ttl\"?: seconds}}: {}",
                    first_line(&e.to_string())
                ))
            })?;
            (req.csr.into_bytes(), req.ttl)
        }
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "unsupported content type {:?}; use application/json or application/pkcs10",
                other.chars().take(60).collect::<String>()
            )));
        }
    };
    let ttl = match ttl {
        Some(0) => return Err(ApiError::invalid_request("`ttl` must be positive")),
        Some(secs) => Some(Duration::from_secs(secs)),
        None => None,
    };
    let csr = VerifiedCsr::parse(&csr_bytes)
        .map_err(|e| ApiError::invalid_request(format!("bad CSR: {e}")))?;

    let broker = &state.broker;
    let caller = conn.caller();
    broker
        .ensure_fresh()
        .map_err(|e| ApiError::from_broker(&e, Door::Svid))?;
    let attested = match bearer {
        Some(token) => broker.attest_bearer(token).await,
        None => broker.attest_certificate(conn.peer_certs.as_ref()),
    };
    let attestation = match attested {
        Ok(a) => a,
        Err(e) => {
            broker.audit_denial(None, &caller, &e).await;
            return Err(ApiError::from_broker(&e, Door::Svid));
        }
    };
    let ask = Ask {
        audiences: Vec::new(),
        scopes: Vec::new(),
        ttl,
    };
    broker
        .issue_svid(&attestation, &csr, &ask, &caller)
        .await
        .map(SvidResponse::new)
        .map_err(|e| ApiError::from_broker(&e, Door::Svid))
}

/// The bearer credential, if an `Authorization` header is present.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let unauthorized = |d: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", d);
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| unauthorized("use `Authorization: Bearer <platform token | join token>`"))
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}
