//! The revocation feed for relying parties (SPEC §6.4): `GET /v1/revocations` and its
//! Server-Sent Events form `GET /v1/revocations/stream`.
//!
//! Minimal version written alongside the verifier library (issue 5) to test it before the
//! lead's implementation is merged; the contract is SPEC §6.4: entries as in
//! [`RevocationEntry`]'s JSON, `?since=<cursor>`, 410 for a cursor older than the retained
//! history, authenticated like introspection.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::require_introspector;
use super::error::{ApiError, Door};
use super::{AppState, ConnInfo};
use crate::revoke::entry::RevocationEntry;
use crate::store::{EventRead, Store, StoreError, StreamRead};

/// How long one store read waits for new events before the stream loops.
const BLOCK: Duration = Duration::from_secs(1);
/// The keep-alive comment interval (SPEC §6.4).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    since: Option<String>,
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "invalid_request",
        "the cursor is older than the retained history; reload without `since`",
    )
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::InvalidCursor(_) => ApiError::invalid_request("`since` is not a valid cursor"),
        other => ApiError::from_broker(&other.into(), Door::Protected),
    }
}

/// `GET /v1/revocations[?since=]`.
pub async fn list(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    require_introspector(&state, &headers, &conn)?;
    let store = state.broker.store();
    let (entries, cursor) = match query.since.as_deref() {
        None => store.load_revocations().await.map_err(store_error)?,
        Some(since) => match store
            .read_revocations_after(since, Duration::ZERO)
            .await
            .map_err(store_error)?
        {
            StreamRead::Trimmed => return Err(gone()),
            StreamRead::Entries(list) => {
                let cursor = list
                    .last()
                    .map(|(c, _)| c.clone())
                    .unwrap_or_else(|| since.to_string());
                (list.into_iter().map(|(_, e)| e).collect(), cursor)
            }
        },
    };
    Ok(Json(json!({"entries": entries, "cursor": cursor})).into_response())
}

struct Feed {
    store: Store,
    cursor: String,
    pending: VecDeque<(Option<String>, RevocationEntry)>,
}

/// `GET /v1/revocations/stream[?since=]`.
pub async fn stream(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    require_introspector(&state, &headers, &conn)?;
    let store = state.broker.store().clone();
    let mut pending = VecDeque::new();
    let cursor = match query.since {
        Some(since) => {
            // Answer 410 now rather than after the stream has started.
            match store
                .read_revocation_events_after(&since, Duration::ZERO)
                .await
                .map_err(store_error)?
            {
                EventRead::Trimmed => return Err(gone()),
                EventRead::Events(events) => {
                    let cursor = events.last().map(|e| e.cursor.clone()).unwrap_or(since);
                    pending.extend(events.into_iter().map(|e| (Some(e.cursor), e.entry)));
                    cursor
                }
            }
        }
        None => {
            let (entries, cursor) = store.load_revocations().await.map_err(store_error)?;
            // Only the last entry of the initial load carries the cursor, so a client cut
            // off in the middle resumes with a full load rather than missing entries.
            let count = entries.len();
            pending.extend(
                entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| ((i + 1 == count).then(|| cursor.clone()), e)),
            );
            cursor
        }
    };
    let feed = Feed {
        store,
        cursor,
        pending,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some((id, entry)) = feed.pending.pop_front() {
                let data = serde_json::to_string(&entry).unwrap_or_default();
                let mut event = Event::default().event("revocation").data(data);
                if let Some(id) = id {
                    event = event.id(id);
                }
                return Some((Ok::<_, Infallible>(event), feed));
            }
            match feed
                .store
                .read_revocation_events_after(&feed.cursor, BLOCK)
                .await
            {
                Ok(EventRead::Events(events)) => {
                    if let Some(last) = events.last() {
                        feed.cursor = last.cursor.clone();
                    }
                    feed.pending
                        .extend(events.into_iter().map(|e| (Some(e.cursor), e.entry)));
                }
                // The client reconnects with its last id and gets 410, or a full load.
                Ok(EventRead::Trimmed) | Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}
