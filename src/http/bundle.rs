//! Trust distribution for X.509 relying parties (SPEC §6.4): the SPIFFE bundle, the PEM
//! roots and the CRL.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Door};
use crate::broker::BrokerError;

/// Bundles change rarely and only with a key change; a minute keeps rotation quick.
const BUNDLE_MAX_AGE: &str = "public, max-age=60";

/// `GET /v1/bundle`: the SPIFFE trust bundle (JWKS with `x509-svid` and `jwt-svid` keys).
pub async fn bundle(State(state): State<AppState>) -> Response {
    let mut response = Json(state.broker.bundle_document()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(BUNDLE_MAX_AGE),
    );
    response
}

/// `GET /v1/bundle.pem`: the X.509 roots as PEM.
pub async fn bundle_pem(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pem = state.broker.bundle_pem().map_err(|e| map(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CACHE_CONTROL, BUNDLE_MAX_AGE),
        ],
        pem,
    )
        .into_response())
}

/// `GET /v1/crl`: the DER CRL, signed by the CA. Cached only briefly by clients, since it
/// changes with every X.509 revocation.
pub async fn crl(State(state): State<AppState>) -> Result<Response, ApiError> {
    let der = state.broker.crl_der().await.map_err(|e| map(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "public, max-age=5"),
        ],
        der,
    )
        .into_response())
}

fn map(e: &BrokerError) -> ApiError {
    ApiError::from_broker(e, Door::Protected)
}
