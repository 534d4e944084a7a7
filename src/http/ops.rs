//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: keys loaded, revocation mirror in sync, store reachable.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let broker = &state.broker;
    let mirror_fresh = broker.mirror_fresh();
    let store_ok = broker.store().ping().await.is_ok();
    let staleness_ms = broker.mirror_staleness().as_millis().min(u64::MAX as u128) as u64;
    let ready = mirror_fresh && store_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "keys_loaded": true,
        "revocation_mirror_in_sync": mirror_fresh,
        "revocation_mirror_staleness_ms": staleness_ms,
        "store_reachable": store_ok,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let staleness = state.broker.mirror_staleness();
    metrics::gauge!("credbroker_mirror_staleness_seconds").set(
        if staleness == std::time::Duration::MAX {
            f64::INFINITY
        } else {
            staleness.as_secs_f64()
        },
    );
    metrics::gauge!("credbroker_mirror_entries").set(state.broker.mirror().len() as f64);
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
