//! The HTTP transport (`FLASH_HTTP_LISTEN`): the referral graph page and its JSON. Like the
//! gRPC layer it converts and calls the service, nothing more. No SQL.
mod graph;

use crate::service::Ledger;
use axum::Router;
use std::sync::Arc;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub ledger: Ledger,
    /// `FLASH_PROFILE_URL_TEMPLATE`.
    pub profile_url_template: Option<String>,
}

/// Every HTTP route.
pub fn router(state: HttpState) -> Router {
    graph::routes().with_state(Arc::new(state))
}
