//! The HTTP doors: one file per endpoint group, one error mapping (`error.rs`).
//!
//! Handlers are thin: they parse the request into the broker's types, call the broker,
//! and render the result. Connection facts (caller address, client certificate) arrive
//! as a request extension set by the accept loop in `server.rs`.

pub mod admin;
pub mod auth;
pub mod bundle;
pub mod error;
pub mod introspect;
pub mod latency;
pub mod listener;
pub mod ops;
pub mod revocations;
pub mod svid;
pub mod token;
pub mod wellknown;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::broker::{Broker, Caller};
use crate::tls::{PeerCertificates, thumbprint};
use error::ApiError;

/// What every handler can reach: the broker and the metrics renderer.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub metrics: Option<PrometheusHandle>,
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The client's certificate chain, when it presented one over TLS.
    pub peer_certs: Option<PeerCertificates>,
}

impl ConnInfo {
    /// The broker's view of the caller.
    pub fn caller(&self) -> Caller {
        Caller {
            addr: self.remote.map(|a| a.ip()),
            cert_thumbprint: self
                .peer_certs
                .as_ref()
                .and_then(PeerCertificates::leaf)
                .map(|c| thumbprint(c)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ConnInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or(ConnInfo {
                remote: None,
                peer_certs: None,
            }))
    }
}

/// A request body read up to `[server] max_body`; larger bodies get 413 with a JSON error.
pub struct LimitedBody(pub Bytes);

/// How much of an oversized body is read and discarded before answering 413, so that the
/// client sees the answer instead of a connection reset. Larger bodies are cut off at once.
const DRAIN_LIMIT: u64 = 1024 * 1024;

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        use futures_util::StreamExt;
        let limit = state.broker.config().server.max_body.0;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                format!("request body is larger than the {limit}-byte limit"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > DRAIN_LIMIT) {
            return Err(too_large());
        }
        let mut stream = req.into_body().into_data_stream();
        // Sized once from the declared length (bounded by the limit), not grown chunk by chunk.
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
        let mut seen: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|_| ApiError::invalid_request("the request body could not be read"))?;
            seen += chunk.len() as u64;
            if seen > DRAIN_LIMIT {
                return Err(too_large());
            }
            if seen <= limit {
                body.extend_from_slice(&chunk);
            }
        }
        if seen > limit {
            return Err(too_large());
        }
        Ok(LimitedBody(Bytes::from(body)))
    }
}

/// The name/value pairs of an `application/x-www-form-urlencoded` body, exactly as
/// `form_urlencoded::parse` yields them; but a pair with nothing to decode (no `%` or `+`)
/// is borrowed as it is. Tokens are URL-safe, so the kilobyte-long token of a request is
/// validated and searched with vectorised routines (`memchr`) instead of being decoded byte
/// by byte in three passes (that was a fifth of a token request's non-crypto instructions).
pub fn form_pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    // A body that is not UTF-8 goes to form_urlencoded whole: it replaces what is invalid.
    let (text, not_utf8) = match std::str::from_utf8(body) {
        Ok(text) => (text, &b""[..]),
        Err(_) => ("", body),
    };
    let mut rest = Some(text);
    let pairs = std::iter::from_fn(move || {
        let text = rest?;
        let (pair, tail) = match memchr::memchr(b'&', text.as_bytes()) {
            // `&` is ASCII: both sides of it are on character boundaries.
            Some(at) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        rest = tail;
        Some(pair)
    })
    .filter(|pair| !pair.is_empty())
    .filter_map(|pair| {
        if memchr::memchr2(b'%', b'+', pair.as_bytes()).is_some() {
            return form_urlencoded::parse(pair.as_bytes()).next();
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        Some((Cow::Borrowed(name), Cow::Borrowed(value)))
    });
    pairs.chain(form_urlencoded::parse(not_utf8))
}

/// The one `token` parameter of an urlencoded body (RFC 7009 revocation, RFC 7662 introspection).
pub fn token_param(body: &[u8]) -> Result<String, ApiError> {
    let mut tokens = form_pairs(body)
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v);
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => Ok(token.into_owned()),
        _ => Err(ApiError::invalid_request(
            "give the `token` parameter exactly once",
        )),
    }
}

/// The content type of a request, without parameters, lowercased.
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// The complete router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/token", post(token::token))
        .route("/v1/introspect", post(introspect::introspect))
        .route("/v1/revoke", post(admin::revoke))
        .route("/v1/lock", post(admin::lock).delete(admin::unlock))
        .route("/v1/locks", get(admin::locks))
        .route("/v1/join-tokens", post(admin::create_join_token))
        .route("/v1/identities", get(admin::identities))
        .route("/v1/revocations", get(revocations::feed))
        .route("/v1/revocations/stream", get(revocations::stream))
        .route("/v1/svid", post(svid::issue))
        .route("/v1/bundle", get(bundle::bundle))
        .route("/v1/bundle.pem", get(bundle::bundle_pem))
        .route("/v1/crl", get(bundle::crl))
        .route("/.well-known/jwks.json", get(wellknown::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(wellknown::metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(wellknown::metadata),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found() })
        .layer(latency::RecordLatencyLayer::default())
        .with_state(state)
}
