//! Who is calling a protected endpoint: the admin, a workload, or nobody we trust.
//!
//! Admin endpoints accept the admin bearer token (checked against its SHA-256 in
//! constant time) or an SVID over mTLS whose SPIFFE ID `[admin] spiffe_ids` lists.
//! Introspection and the revocation feed also accept any valid workload SVID, or a JWT
//! whose scope contains `credbroker:introspect`. A missing or invalid credential is 401;
//! a valid one without the right is 403 (SPEC §6).

use axum::http::{HeaderMap, header};

use super::AppState;
use super::error::ApiError;
use crate::attest::svid;

/// The scope that lets a workload JWT call introspection and the revocation feed.
pub const INTROSPECT_SCOPE: &str = "credbroker:introspect";

/// An authenticated caller of a protected endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin bearer token.
    AdminToken,
    /// A workload identified by a credential we issued.
    Workload {
        spiffe_id: String,
        scopes: Vec<String>,
        /// Whether it authenticated with an X.509-SVID over mTLS (not a bearer JWT).
        mtls: bool,
    },
}

impl Principal {
    /// Whether this caller may use admin endpoints.
    pub fn is_admin(&self, state: &AppState) -> bool {
        match self {
            Principal::AdminToken => true,
            Principal::Workload {
                spiffe_id, mtls, ..
            } => {
                *mtls
                    && state
                        .broker
                        .config()
                        .admin
                        .spiffe_ids
                        .iter()
                        .any(|id| id == spiffe_id)
            }
        }
    }

    /// Whether this caller may introspect tokens and read the revocation feed.
    pub fn may_introspect(&self, state: &AppState) -> bool {
        match self {
            Principal::AdminToken => true,
            Principal::Workload { scopes, mtls, .. } => {
                *mtls || scopes.iter().any(|s| s == INTROSPECT_SCOPE) || self.is_admin(state)
            }
        }
    }
}

/// Authenticates the caller of a protected endpoint; `None` means no credential at all.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    conn: &super::ConnInfo,
) -> Result<Option<Principal>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("use `Authorization: Bearer <credential>`"))?;
        if admin_token_matches(state, token) {
            return Ok(Some(Principal::AdminToken));
        }
        let broker = &state.broker;
        let leeway = broker.config().jwt.leeway.0.as_secs() as i64;
        return match svid::attest_jwt(
            broker.keys(),
            &broker.config().issuer,
            broker.mirror(),
            token,
            broker.now(),
            leeway,
        ) {
            Ok((_, claims)) => Ok(Some(Principal::Workload {
                scopes: claims.scopes(),
                spiffe_id: claims.sub,
                mtls: false,
            })),
            Err(_) => Err(ApiError::unauthenticated(
                "the bearer credential is not a valid admin token or credbroker credential",
            )),
        };
    }
    if let Some(certs) = &conn.peer_certs {
        return match state.broker.verify_peer_svid(certs) {
            Ok(spiffe_id) => Ok(Some(Principal::Workload {
                spiffe_id,
                scopes: Vec::new(),
                mtls: true,
            })),
            Err(reason) => Err(ApiError::unauthenticated(format!(
                "the client certificate is not a valid credbroker SVID: {reason}"
            ))),
        };
    }
    Ok(None)
}

/// Requires an admin: 401 without a valid credential, 403 with one that is not an admin.
pub fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    conn: &super::ConnInfo,
) -> Result<Principal, ApiError> {
    match authenticate(state, headers, conn)? {
        None => Err(ApiError::unauthenticated("an admin credential is required")),
        Some(p) if p.is_admin(state) => Ok(p),
        Some(_) => Err(ApiError::forbidden(
            "this credential is not an admin credential",
        )),
    }
}

/// Requires a caller allowed to introspect; `dev` mode leaves introspection open.
pub fn require_introspector(
    state: &AppState,
    headers: &HeaderMap,
    conn: &super::ConnInfo,
) -> Result<(), ApiError> {
    match authenticate(state, headers, conn)? {
        None if state.broker.config().dev => Ok(()),
        None => Err(ApiError::unauthenticated(
            "authenticate with an SVID over mTLS, a JWT with scope credbroker:introspect, or the admin token",
        )),
        Some(p) if p.may_introspect(state) => Ok(()),
        Some(_) => Err(ApiError::forbidden(format!(
            "this credential lacks the {INTROSPECT_SCOPE} scope"
        ))),
    }
}

/// Constant-time comparison of the presented token's SHA-256 with the configured one.
fn admin_token_matches(state: &AppState, token: &str) -> bool {
    let Some(expected_hex) = state.broker.config().admin.token_sha256.as_deref() else {
        return false;
    };
    let Ok(expected) = hex::decode(expected_hex) else {
        return false;
    };
    let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    constant_time_eq(presented.as_ref(), &expected)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
