//! Following the broker's revocation feed into the local mirror (SPEC §6.4, §7).
//!
//! Start: `GET /v1/revocations` (every live entry and a cursor). Then
//! `GET /v1/revocations/stream?since=<cursor>`, applying each `revocation` event and
//! remembering its `id`. After a disconnect the loop resumes from the last id; a 410
//! (cursor older than the broker's history) triggers a full reload. Applying an entry twice
//! is harmless, so nothing is lost either way.
//!
//! Staleness: the mirror counts as synced while the stream is connected and has sent
//! something (an event or the 15 s keep-alive comment) within [`SILENCE_LIMIT`]; once the
//! connection is lost, staleness grows until the feed is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

use super::VerifyError;
use super::http::BrokerClient;
use crate::revoke::entry::RevocationEntry;
use crate::revoke::mirror::RevocationMirror;
use crate::store::wall_ms;

/// The broker's keep-alive interval (SPEC §6.4) plus a margin: a stream silent for longer
/// is considered dead and reopened.
const SILENCE_LIMIT: Duration = Duration::from_secs(20);
/// How often a connected, quiet stream refreshes the mirror's sync mark.
const TICK: Duration = Duration::from_millis(500);
/// Back-off between reconnection attempts: doubles from the first value up to the second.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest SSE line accepted (one entry is well under 1 KiB).
const MAX_LINE: usize = 64 * 1024;
/// Expired entries are dropped from the mirror this often.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct FullList {
    entries: Vec<RevocationEntry>,
    cursor: String,
}

/// Loads every live entry into the mirror, replacing what it held.
pub(super) async fn full_load(
    http: &BrokerClient,
    mirror: &RevocationMirror,
) -> Result<(), VerifyError> {
    let doc = http.revocations().await?;
    let list: FullList = serde_json::from_value(doc)
        .map_err(|_| VerifyError::Setup("GET /v1/revocations: unexpected body".into()))?;
    let count = list.entries.len();
    mirror.replace_all(list.entries, list.cursor);
    mirror.mark_synced(wall_ms());
    tracing::debug!(entries = count, "verifier revocation mirror loaded");
    Ok(())
}

/// How one stream connection ended.
enum Ended {
    /// The cursor is too old: reload in full.
    Gone,
    /// Closed by the broker, or failed; reconnect.
    Lost(String),
    Shutdown,
}

/// Follows the feed until the verifier is dropped.
pub(super) async fn follow(
    http: Arc<BrokerClient>,
    mirror: Arc<RevocationMirror>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_prune = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ended = match mirror.cursor() {
            None => match full_load(&http, &mirror).await {
                Ok(()) => continue,
                Err(e) => Ended::Lost(e.to_string()),
            },
            Some(cursor) => stream_once(&http, &mirror, &cursor, &mut shutdown).await,
        };
        match ended {
            Ended::Shutdown => return,
            Ended::Gone => {
                tracing::warn!(
                    "the broker no longer holds our feed position; reloading the revocation list"
                );
                if let Err(e) = full_load(&http, &mirror).await {
                    tracing::warn!(error = %e, "revocation list reload failed");
                } else {
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, retry_in_ms = backoff.as_millis() as u64, "revocation feed lost; resuming from the last cursor");
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            mirror.prune(wall_ms() / 1000);
            last_prune = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One stream connection, from `cursor`, until it ends.
async fn stream_once(
    http: &BrokerClient,
    mirror: &RevocationMirror,
    cursor: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let request = http
        .get("/v1/revocations/stream", true)
        .query(&[("since", cursor)])
        .header("accept", "text/event-stream");
    let mut resp = tokio::select! {
        r = tokio::time::timeout(SILENCE_LIMIT, request.send()) => match r {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Ended::Lost(e.without_url().to_string()),
            Err(_) => return Ended::Lost("connection timed out".into()),
        },
        _ = shutdown.changed() => return Ended::Shutdown,
    };
    match resp.status().as_u16() {
        200 => {}
        410 => return Ended::Gone,
        other => return Ended::Lost(format!("HTTP {other}")),
    }
    mirror.mark_synced(wall_ms());
    let mut parser = SseParser::default();
    let mut last_heard = Instant::now();
    let mut last_prune = Instant::now();
    loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(TICK, resp.chunk()) => c,
            _ = shutdown.changed() => return Ended::Shutdown,
        };
        match chunk {
            Err(_) if last_heard.elapsed() <= SILENCE_LIMIT => {}
            Err(_) => return Ended::Lost("the stream went silent".into()),
            Ok(Ok(Some(bytes))) => {
                last_heard = Instant::now();
                let events = match parser.push(&bytes) {
                    Ok(events) => events,
                    Err(e) => return Ended::Lost(e.into()),
                };
                for event in events {
                    if event.kind != "revocation" {
                        continue;
                    }
                    match serde_json::from_str::<RevocationEntry>(&event.data) {
                        Ok(entry) => mirror.apply(entry, event.id.as_deref()),
                        // An entry we cannot read could be a revocation we would miss:
                        // reconnect from the last good cursor rather than skip it.
                        Err(_) => return Ended::Lost("unreadable revocation entry".into()),
                    }
                }
            }
            Ok(Ok(None)) => return Ended::Lost("the broker closed the stream".into()),
            Ok(Err(e)) => return Ended::Lost(e.without_url().to_string()),
        }
        mirror.mark_synced(wall_ms());
        if last_prune.elapsed() >= PRUNE_EVERY {
            mirror.prune(wall_ms() / 1000);
            last_prune = Instant::now();
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    pub kind: String,
    pub data: String,
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser (the WHATWG rules this feed needs: `event`,
/// `data`, `id`, comments, LF or CRLF line ends).
#[derive(Debug, Default)]
pub(super) struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub(super) fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, &'static str> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_LINE {
                    return Err("an event-stream line is too long");
                }
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    let mut event = std::mem::take(&mut self.current);
                    if event.kind.is_empty() {
                        event.kind = "message".into();
                    }
                    out.push(event);
                } else {
                    self.current = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.current.kind = value.to_string(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.current.id = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks_with_comments_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nevent: revoc").unwrap().is_empty());
        let events = p
            .push(b"ation\r\nid: 1-0\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n")
            .unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    kind: "revocation".into(),
                    data: "{\"a\":1}".into(),
                    id: Some("1-0".into())
                },
                SseEvent {
                    kind: "message".into(),
                    data: "x\ny".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn refuses_endless_lines() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_LINE + 1];
        assert!(p.push(&big).is_err());
    }
}
