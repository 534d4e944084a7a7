//! Admin endpoints (SPEC §6.5): revoke, lock and unlock, join tokens, inventory.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::auth::require_admin;
use super::error::ApiError;
use super::{AppState, ConnInfo, LimitedBody, media_type};
use crate::attest::{SourceId, join_token};
use crate::governance::audit::{AuditEvent, AuditEventKind};
use crate::identity::SpiffeId;
use crate::revoke::entry::{EntryKind, RevocationEntry, normalize_credential_id};
use crate::store::JoinTokenRecord;

/// The longest reason kept with an entry.
const MAX_REASON: usize = 256;
/// The longest a join token may live.
const MAX_JOIN_TOKEN_TTL: u64 = 7 * 24 * 3600;
/// A join token's lifetime when the request does not say.
const DEFAULT_JOIN_TOKEN_TTL: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    credential_id: Option<String>,
    spiffe_id: Option<String>,
    issued_before: Option<String>,
    source: Option<SourceBody>,
    all_issued_before: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceBody {
    attestor: String,
    subject: String,
}

/// `POST /v1/revoke`: exactly one JSON form, or the RFC 7009 `token=` form.
pub async fn revoke(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let broker = &state.broker;
    let now = broker.now();
    let longest = broker.config().longest_credential_life().as_secs() as i64;
    let entry = match media_type(&headers).as_deref() {
        Some("application/x-www-form-urlencoded") => rfc7009_entry(&state, &body, now)?,
        Some("application/json") | None => {
            let req: RevokeBody = serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid_request(format!("invalid revoke body: {e}")))?;
            json_entry(&state, req, now, longest)?
        }
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "unsupported content type {other:?}; use application/json or the RFC 7009 form"
            )));
        }
    };
    publish(&state, entry, AuditEventKind::Revoked, conn.caller().addr).await
}

fn json_entry(
    state: &AppState,
    req: RevokeBody,
    now: i64,
    longest: i64,
) -> Result<RevocationEntry, ApiError> {
    let forms = [
        req.credential_id.is_some(),
        req.spiffe_id.is_some(),
        req.source.is_some(),
        req.all_issued_before.is_some(),
    ]
    .iter()
    .filter(|f| **f)
    .count();
    if forms != 1 {
        return Err(ApiError::invalid_request(
            "give exactly one of credential_id, spiffe_id, source, all_issued_before",
        ));
    }
    if req.issued_before.is_some() && req.spiffe_id.is_none() {
        return Err(ApiError::invalid_request(
            "issued_before goes with spiffe_id only",
        ));
    }
    let reason = reason(req.reason)?;
    let entry = if let Some(id) = req.credential_id {
        let id = normalize_credential_id(id.trim());
        if id.is_empty() || id.len() > 128 {
            return Err(ApiError::invalid_request(
                "credential_id is empty or too long",
            ));
        }
        RevocationEntry {
            kind: EntryKind::Credential,
            value: id,
            issued_before: None,
            expires_at: now + longest,
            reason,
        }
    } else if let Some(id) = req.spiffe_id {
        let id = parse_spiffe_id(state, &id)?;
        let before = match req.issued_before {
            Some(t) => parse_time(&t, "issued_before")?,
            None => now,
        };
        RevocationEntry {
            kind: EntryKind::SpiffeId,
            value: id.to_string(),
            issued_before: Some(before),
            expires_at: before.max(now) + longest,
            reason,
        }
    } else if let Some(source) = req.source {
        if source.attestor.is_empty() || source.subject.is_empty() {
            return Err(ApiError::invalid_request(
                "source needs attestor and subject",
            ));
        }
        RevocationEntry {
            kind: EntryKind::Source,
            value: SourceId::new(&source.attestor, &source.subject).0,
            issued_before: Some(now),
            expires_at: now + longest,
            reason,
        }
    } else {
        let before = parse_time(
            req.all_issued_before.as_deref().unwrap_or_default(),
            "all_issued_before",
        )?;
        RevocationEntry {
            kind: EntryKind::All,
            value: String::new(),
            issued_before: Some(before),
            expires_at: before.max(now) + longest,
            reason,
        }
    };
    Ok(entry)
}

/// RFC 7009: `token=<JWT>` revokes that credential, kept until it would have expired.
fn rfc7009_entry(state: &AppState, body: &[u8], now: i64) -> Result<RevocationEntry, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
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
    let payload = state
        .broker
        .keys()
        .verify_own(token)
        .map_err(|_| ApiError::invalid_request("the token was not issued by this broker"))?;
    let jti = payload
        .get("jti")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let exp = payload.get("exp").and_then(Value::as_i64).unwrap_or(now);
    if jti.is_empty() {
        return Err(ApiError::invalid_request("the token has no jti"));
    }
    let leeway = state.broker.config().jwt.leeway.0.as_secs() as i64;
    Ok(RevocationEntry {
        kind: EntryKind::Credential,
        value: jti.to_string(),
        issued_before: None,
        expires_at: exp.max(now) + leeway,
        reason: None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    spiffe_id: String,
    ttl: Option<u64>,
    reason: Option<String>,
}

/// `POST /v1/lock`: no new issuance for an identity, and what it holds is revoked.
pub async fn lock(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let req: LockBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_request(format!("invalid lock body: {e}")))?;
    let id = parse_spiffe_id(&state, &req.spiffe_id)?;
    let reason = reason(req.reason)?;
    let now = state.broker.now();
    let expires_at = match req.ttl {
        Some(0) => return Err(ApiError::invalid_request("ttl must be positive")),
        Some(ttl) => now.saturating_add(ttl.min(i64::MAX as u64 / 2) as i64),
        None => i64::MAX,
    };
    let longest = state.broker.config().longest_credential_life().as_secs() as i64;
    let holdings = RevocationEntry {
        kind: EntryKind::SpiffeId,
        value: id.to_string(),
        issued_before: Some(now),
        expires_at: now + longest,
        reason: reason.clone(),
    };
    state
        .broker
        .store()
        .publish_revocation(&holdings)
        .await
        .map_err(store_down)?;
    state.broker.mirror().apply(holdings, None);
    let lock = RevocationEntry {
        kind: EntryKind::Lock,
        value: id.to_string(),
        issued_before: None,
        expires_at,
        reason,
    };
    publish(&state, lock, AuditEventKind::Locked, conn.caller().addr).await
}

/// `?spiffe_id=` of `DELETE /v1/lock`.
#[derive(Debug, Deserialize)]
pub struct UnlockQuery {
    pub spiffe_id: String,
}

/// `DELETE /v1/lock?spiffe_id=`: issuance may resume (what was revoked stays revoked).
pub async fn unlock(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    query: Result<Query<UnlockQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let Query(q) = query.map_err(|_| ApiError::invalid_request("give ?spiffe_id=<id>"))?;
    let id = parse_spiffe_id(&state, &q.spiffe_id)?;
    let now = state.broker.now();
    if state.broker.mirror().lock_of(id.as_str(), now).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            format!("{id} is not locked"),
        ));
    }
    // A lock entry that has already expired travels through the stream as a removal.
    let removal = RevocationEntry {
        kind: EntryKind::Lock,
        value: id.to_string(),
        issued_before: None,
        expires_at: now,
        reason: None,
    };
    state
        .broker
        .store()
        .publish_revocation(&removal)
        .await
        .map_err(store_down)?;
    state.broker.mirror().apply(removal, None);
    let event = AuditEvent::new(AuditEventKind::Unlocked, now)
        .identity(id.as_str())
        .caller(conn.caller().addr);
    event.log();
    let _ = state.broker.store().append_audit(&event).await;
    Ok(Json(json!({"unlocked": id.as_str()})).into_response())
}

/// `GET /v1/locks`
pub async fn locks(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let now = state.broker.now();
    let locks: Vec<RevocationEntry> = state
        .broker
        .mirror()
        .live_entries(now)
        .into_iter()
        .filter(|e| e.kind == EntryKind::Lock)
        .collect();
    Ok(Json(json!({ "locks": locks })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenBody {
    spiffe_id: String,
    ttl: Option<u64>,
}

/// `POST /v1/join-tokens`: the token is shown only in this response; we keep its hash.
pub async fn create_join_token(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let req: JoinTokenBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_request(format!("invalid join-token body: {e}")))?;
    let id = parse_spiffe_id(&state, &req.spiffe_id)?;
    let ttl = req.ttl.unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
    if ttl == 0 || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::invalid_request(
            "ttl must be between 1 and 604800 seconds",
        ));
    }
    let attestor = state
        .broker
        .join_token_attestor()
        .ok_or_else(|| {
            ApiError::invalid_request("no join_token attestor is configured on this broker")
        })?
        .to_string();
    let token = join_token::new_token().map_err(|_| ApiError::internal())?;
    let now = state.broker.now();
    let expires_at = now + ttl as i64;
    let record = JoinTokenRecord {
        spiffe_id: id.to_string(),
        created_at: now,
        expires_at,
    };
    state
        .broker
        .store()
        .put_join_token(
            &join_token::token_hash(&token),
            &record,
            Duration::from_secs(ttl),
        )
        .await
        .map_err(store_down)?;
    let event = AuditEvent::new(AuditEventKind::JoinTokenCreated, now)
        .identity(id.as_str())
        .attestor(&attestor)
        .caller(conn.caller().addr);
    event.log();
    let _ = state.broker.store().append_audit(&event).await;
    let body = json!({
        "token": token,
        "spiffe_id": id.as_str(),
        "expires_at": rfc3339(expires_at),
    });
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}

/// `?owner=` of `GET /v1/identities`.
#[derive(Debug, Deserialize)]
pub struct IdentitiesQuery {
    pub owner: Option<String>,
}

/// `GET /v1/identities[?owner=]`: the inventory.
pub async fn identities(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    query: Result<Query<IdentitiesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &conn)?;
    let Query(q) = query.map_err(|_| ApiError::invalid_request("invalid query"))?;
    let now = state.broker.now();
    let mut list = state
        .broker
        .store()
        .list_identities(q.owner.as_deref())
        .await
        .map_err(store_down)?;
    for record in &mut list {
        record.locked = state
            .broker
            .mirror()
            .lock_of(&record.spiffe_id, now)
            .is_some();
    }
    list.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
    Ok(Json(json!({ "identities": list })).into_response())
}

/// Writes an entry to the store, applies it locally at once, audits it, and answers.
async fn publish(
    state: &AppState,
    entry: RevocationEntry,
    kind: AuditEventKind,
    caller: Option<std::net::IpAddr>,
) -> Result<Response, ApiError> {
    let broker = &state.broker;
    broker
        .store()
        .publish_revocation(&entry)
        .await
        .map_err(store_down)?;
    broker.mirror().apply(entry.clone(), None);
    metrics::counter!("credbroker_revoked_total", "kind" => entry.kind.as_str()).increment(1);
    let mut event = AuditEvent::new(kind, broker.now()).caller(caller);
    event = match entry.kind {
        EntryKind::Credential => event.credential(&entry.value),
        EntryKind::All => event,
        _ => event.identity(&entry.value),
    };
    if let Some(r) = &entry.reason {
        event = event.reason(r);
    }
    event.log();
    let _ = broker.store().append_audit(&event).await;
    let key = if kind == AuditEventKind::Locked {
        "locked"
    } else {
        "revoked"
    };
    Ok(Json(json!({ key: entry })).into_response())
}

fn store_down(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store write failed");
    ApiError::unavailable("the revocation store is unreachable; nothing was changed")
}

fn parse_spiffe_id(state: &AppState, id: &str) -> Result<SpiffeId, ApiError> {
    SpiffeId::parse_in(id, &state.broker.config().trust_domain)
        .map_err(|e| ApiError::invalid_request(format!("spiffe_id: {e}")))
}

fn parse_time(text: &str, field: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| ApiError::invalid_request(format!("{field} must be an RFC 3339 time")))
}

fn reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason {
        Some(r) if r.len() > MAX_REASON => Err(ApiError::invalid_request(format!(
            "reason is longer than {MAX_REASON} bytes"
        ))),
        other => Ok(other),
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
