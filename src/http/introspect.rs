//! `POST /v1/introspect` (RFC 7662): is this credbroker JWT active right now?

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::require_introspector;
use super::error::ApiError;
use super::{AppState, ConnInfo, LimitedBody};
use crate::attest::svid;

/// Active only if signature, `iss`, time window and revocation (with lineage) all pass.
pub async fn introspect(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    require_introspector(&state, &headers, &conn)?;
    state
        .broker
        .ensure_fresh()
        .map_err(|e| ApiError::from_broker(&e, super::error::Door::Protected))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::invalid_request("the body is not valid form-urlencoded data"))?;
    let tokens: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .collect();
    let [token] = tokens.as_slice() else {
        return Err(ApiError::invalid_request(
            "give the `token` parameter exactly once",
        ));
    };
    let broker = &state.broker;
    let leeway = broker.config().jwt.leeway.0.as_secs() as i64;
    let answer = match svid::attest_jwt(
        broker.keys(),
        &broker.config().issuer,
        broker.mirror(),
        token,
        broker.now(),
        leeway,
    ) {
        Ok((attestation, _)) => {
            let mut claims = attestation.claims;
            if let Value::Object(map) = &mut claims {
                map.remove("typ");
                map.insert("active".into(), Value::Bool(true));
                map.insert("token_type".into(), Value::String("Bearer".into()));
            }
            claims
        }
        Err(_) => json!({"active": false}),
    };
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
