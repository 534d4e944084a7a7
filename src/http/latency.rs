//! `credbroker_http_request_duration_seconds{path, status}`, recorded for every request.
//!
//! A tower layer rather than axum's `from_fn`, which boxes each request's future and clones
//! the route's service; and each (route, status) keeps its histogram handle, where the
//! `histogram!` macro would build a key of two fresh strings and look it up in the
//! recorder's registry on every request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::response::Response;
use metrics::Histogram;
use tower::{Layer, Service};

/// The label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Wraps every route of a router; clones share the handles.
#[derive(Clone, Default)]
pub struct RecordLatencyLayer {
    histograms: Arc<Histograms>,
}

impl<S> Layer<S> for RecordLatencyLayer {
    type Service = RecordLatency<S>;

    fn layer(&self, inner: S) -> RecordLatency<S> {
        RecordLatency {
            inner,
            histograms: self.histograms.clone(),
        }
    }
}

/// The handles by status, then by route. A router has a few dozen routes and statuses
/// occur in a handful, so the map stays small; it is written once per new pair.
#[derive(Default)]
struct Histograms(RwLock<HashMap<u16, HashMap<Box<str>, Histogram>>>);

impl Histograms {
    fn record(&self, path: &str, status: u16, seconds: f64) {
        if let Ok(known) = self.0.read()
            && let Some(histogram) = known.get(&status).and_then(|by_path| by_path.get(path))
        {
            histogram.record(seconds);
            return;
        }
        let histogram = metrics::histogram!(
            "credbroker_http_request_duration_seconds",
            "path" => path.to_owned(),
            "status" => status.to_string()
        );
        histogram.record(seconds);
        if let Ok(mut known) = self.0.write() {
            known
                .entry(status)
                .or_default()
                .insert(path.into(), histogram);
        }
    }
}

#[derive(Clone)]
pub struct RecordLatency<S> {
    inner: S,
    histograms: Arc<Histograms>,
}

impl<S, B> Service<Request<B>> for RecordLatency<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RecordLatencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.extensions().get::<MatchedPath>().cloned();
        RecordLatencyFuture {
            inner: self.inner.call(request),
            path,
            started: Instant::now(),
            histograms: self.histograms.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RecordLatencyFuture<F> {
        #[pin]
        inner: F,
        path: Option<MatchedPath>,
        started: Instant,
        histograms: Arc<Histograms>,
    }
}

impl<F, E> Future for RecordLatencyFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let path = this.path.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            this.histograms.record(
                path,
                response.status().as_u16(),
                this.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(result)
    }
}
