//! `GET /metrics`: every metric of the process in the Prometheus text format (the names
//! are in [`crate::telemetry::metrics`]). The gauges that describe a state rather than
//! count events (the pool, the event stream's subscribers) are read at scrape time.
use super::HttpState;
use crate::telemetry::metrics;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    metrics::scrape_gauges(&state.ledger.pool_status(), state.events.subscribers());
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], metrics::render())
}
