//! `GET /ready`: whether this server can do its work now. 200 while PostgreSQL answers
//! (even with Redis down: only capped awards are refused then, reported as `degraded`),
//! 503 while it does not. Probed at each request.
use super::HttpState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/ready", get(ready))
}

/// The readiness detail.
#[derive(Debug, Serialize)]
struct Ready {
    /// `up` or `down`.
    postgres: &'static str,
    /// `up` or `down`.
    redis: &'static str,
    /// `available`, or `degraded` while Redis is down (capped awards are refused).
    capped_awards: &'static str,
}

async fn ready(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let readiness = state.ledger.readiness().await;
    let up = |yes: bool| if yes { "up" } else { "down" };
    let body = Ready {
        postgres: up(readiness.postgres),
        redis: up(readiness.redis),
        capped_awards: if readiness.redis {
            "available"
        } else {
            "degraded"
        },
    };
    let status = if readiness.postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
