//! Verification metadata for relying parties: JWKS and RFC 8414 server metadata.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// How long relying parties may cache the JWKS: short, so rotation reaches them quickly.
const JWKS_MAX_AGE: &str = "public, max-age=60";

/// `GET /.well-known/jwks.json`: every published signing key.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.broker.keys().jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(JWKS_MAX_AGE),
    );
    response
}

/// `GET /.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`.
pub async fn metadata(State(state): State<AppState>) -> Response {
    let config = state.broker.config();
    let issuer = &config.issuer;
    let alg = state.broker.keys().active().alg().to_string();
    let mut response = Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/v1/token"),
        "introspection_endpoint": format!("{issuer}/v1/introspect"),
        "revocation_endpoint": format!("{issuer}/v1/revoke"),
        "grant_types_supported": [
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_credentials"
        ],
        "token_endpoint_auth_methods_supported": ["none", "tls_client_auth"],
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth", "bearer"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth", "bearer"],
        "tls_client_certificate_bound_access_tokens": true,
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "token_endpoint_auth_signing_alg_values_supported": [alg],
        "scopes_supported": [],
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(JWKS_MAX_AGE),
    );
    response
}
