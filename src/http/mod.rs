//! The HTTP transport (`FLASH_HTTP_LISTEN`): the referral graph page and its JSON,
//! `/metrics` (Prometheus) and `/ready` (readiness). Like the gRPC layer it converts and
//! calls the service, nothing more. No SQL.
mod graph;
mod metrics;
mod ready;

use crate::service::{Clients, Events, Ledger};
use axum::Router;
use std::sync::Arc;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub ledger: Ledger,
    /// The event stream, for its subscriber count.
    pub events: Events,
    /// `FLASH_PROFILE_URL_TEMPLATE`.
    pub profile_url_template: Option<String>,
    /// Who may read the graph's data.
    pub clients: Clients,
}

/// Every HTTP route.
pub fn router(state: HttpState) -> Router {
    graph::routes()
        .merge(metrics::routes())
        .merge(ready::routes())
        .with_state(Arc::new(state))
}
