//! The revocation feed for relying parties (SPEC §6.4): a snapshot or the entries after a
//! cursor, and the same as Server-Sent Events.
//!
//! The stream fans out from this broker's own mirror, so a thousand verifiers cost one
//! Redis reader, not a thousand.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::require_introspector;
use super::error::ApiError;
use super::{AppState, ConnInfo};
use crate::revoke::entry::RevocationEntry;
use crate::revoke::mirror::MirrorChange;
use crate::store::StreamRead;

/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `?since=<cursor>`
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    pub since: Option<String>,
}

/// `GET /v1/revocations[?since=]`
pub async fn feed(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_introspector(&state, &headers, &conn)?;
    let Query(q) = query.map_err(|_| ApiError::invalid_request("invalid query"))?;
    let (entries, cursor) = match q.since {
        None => snapshot(&state),
        Some(since) => after(&state, &since).await?,
    };
    Ok(Json(json!({ "entries": entries, "cursor": cursor })).into_response())
}

/// `GET /v1/revocations/stream[?since=]`
pub async fn stream(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_introspector(&state, &headers, &conn)?;
    let Query(q) = query.map_err(|_| ApiError::invalid_request("invalid query"))?;
    // Subscribe before reading the backlog so nothing falls between the two.
    let changes = state.broker.mirror().subscribe();
    let backlog: Vec<(String, RevocationEntry)> = match q.since {
        None => {
            let (entries, cursor) = snapshot(&state);
            entries.into_iter().map(|e| (cursor.clone(), e)).collect()
        }
        Some(since) => read_after(&state, &since).await?,
    };
    let last = backlog.last().map(|(c, _)| c.clone());
    let backlog = stream::iter(
        backlog
            .into_iter()
            .map(|(cursor, entry)| Ok(event(&cursor, &entry))),
    );
    let live = stream::unfold((changes, last), |(mut rx, mut last_seen)| async move {
        loop {
            match rx.recv().await {
                Ok(MirrorChange::Applied(change)) => {
                    let (cursor, entry) = change.as_ref();
                    if last_seen
                        .as_deref()
                        .is_some_and(|l| !cursor_after(cursor, l))
                    {
                        continue;
                    }
                    last_seen = Some(cursor.clone());
                    return Some((
                        Ok::<Event, Infallible>(event(cursor, entry)),
                        (rx, last_seen),
                    ));
                }
                // The follower fell behind or the mirror reloaded: end the stream, and the
                // client resumes from its last id (or reloads on 410).
                Ok(MirrorChange::Reloaded) | Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    return None;
                }
            }
        }
    });
    let body = backlog.chain(live);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

fn event(cursor: &str, entry: &RevocationEntry) -> Event {
    let data = serde_json::to_string(entry).unwrap_or_else(|_| "{}".into());
    Event::default().event("revocation").id(cursor).data(data)
}

fn snapshot(state: &AppState) -> (Vec<RevocationEntry>, String) {
    let mirror = state.broker.mirror();
    let cursor = mirror.cursor().unwrap_or_else(|| "0-0".into());
    (mirror.live_entries(state.broker.now()), cursor)
}

async fn after(state: &AppState, since: &str) -> Result<(Vec<RevocationEntry>, String), ApiError> {
    let events = read_after(state, since).await?;
    let cursor = events
        .last()
        .map(|(c, _)| c.clone())
        .unwrap_or_else(|| since.to_string());
    Ok((events.into_iter().map(|(_, e)| e).collect(), cursor))
}

async fn read_after(
    state: &AppState,
    since: &str,
) -> Result<Vec<(String, RevocationEntry)>, ApiError> {
    if parse_cursor(since).is_none() {
        return Err(ApiError::invalid_request(
            "`since` is not a cursor from this feed",
        ));
    }
    match state
        .broker
        .store()
        .read_revocations_after(since, Duration::ZERO)
        .await
    {
        Ok(StreamRead::Entries(events)) => Ok(events),
        Ok(StreamRead::Trimmed) => Err(ApiError::new(
            StatusCode::GONE,
            "invalid_request",
            "the cursor is older than the retained history; reload without `since`",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "revocation feed read failed");
            Err(ApiError::unavailable("the revocation store is unreachable"))
        }
    }
}

/// A stream id `<ms>-<seq>`.
fn parse_cursor(c: &str) -> Option<(u64, u64)> {
    let (a, b) = c.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn cursor_after(candidate: &str, last: &str) -> bool {
    match (parse_cursor(candidate), parse_cursor(last)) {
        (Some(c), Some(l)) => c > l,
        _ => true,
    }
}
