//! `GET /graph/{program_id}`: the page drawing the latest referral graph snapshot on a
//! canvas; `GET /graph/{program_id}/data.json?max_nodes=N`: the snapshot it draws (the
//! same down-sampled views as `Graph.GetGraph`, from the same in-memory cache), for a
//! client with the `read` scope on the program, as `Graph.GetGraph` (`authorization: Bearer`;
//! the page takes the token from its URL's fragment, `#token=…`). The page itself holds
//! no data and is served to anyone.
use super::HttpState;
use crate::domain::{ProgramId, Scope};
use crate::grpc::{code_of, graph::bounded};
use crate::service::{Credentials, Error, GRAPH_DEFAULT_NODES, GRAPH_MAX_NODES};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The page: plain HTML, CSS and JS in one file, no external assets.
const PAGE: &str = include_str!("graph.html");
/// Replaced by the profile URL template as a JSON string (or `null`).
const TEMPLATE_PLACEHOLDER: &str = "__FLASH_PROFILE_URL_TEMPLATE__";

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/graph/{program_id}", get(page))
        .route("/graph/{program_id}/data.json", get(data))
}

async fn page(State(state): State<Arc<HttpState>>) -> Response {
    let template = serde_json::to_string(&state.profile_url_template)
        .unwrap_or_else(|_| "null".into())
        // Inside a <script>: no way to close it from the template.
        .replace('<', "\\u003c");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE.replace(TEMPLATE_PLACEHOLDER, &template)),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct DataQuery {
    max_nodes: Option<i32>,
}

/// The JSON the page reads.
#[derive(Debug, Serialize)]
struct GraphData {
    program_id: String,
    snapshot_date: String,
    version: i64,
    built_at: String,
    total_nodes: i32,
    total_edges: i32,
    dropped_nodes: usize,
    dropped_edges: usize,
    downsampled: bool,
    nodes: Vec<NodeData>,
    edges: Vec<[u32; 2]>,
}

#[derive(Debug, Serialize)]
struct NodeData {
    id: String,
    x: f32,
    y: f32,
    recruits: u32,
    degree: u32,
    hub: bool,
}

async fn data(
    State(state): State<Arc<HttpState>>,
    Path(program_id): Path<String>,
    Query(query): Query<DataQuery>,
    headers: header::HeaderMap,
) -> Response {
    let credentials = Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes().to_vec()),
        cert_subject: None,
    };
    let admitted = state
        .clients
        .admit(credentials, Some(&[Scope::Read]))
        .await
        .and_then(|caller| caller.may_use(&program_id));
    if let Err(refused) = admitted {
        return error_response(refused);
    }
    match graph_data(&state, &program_id, query.max_nodes.unwrap_or(0)).await {
        Ok(data) => ([(header::CACHE_CONTROL, "no-cache")], Json(data)).into_response(),
        Err(error) => error_response(error),
    }
}

async fn graph_data(
    state: &HttpState,
    program_id: &str,
    max_nodes: i32,
) -> Result<GraphData, Error> {
    let program = ProgramId::parse(program_id)?;
    let max_nodes = bounded("max_nodes", max_nodes, GRAPH_DEFAULT_NODES, GRAPH_MAX_NODES)?;
    let (cached, view) = state.ledger.graph(&program, max_nodes).await?;
    let meta = &cached.meta;
    Ok(GraphData {
        program_id: meta.program_id.clone(),
        snapshot_date: meta.snapshot_date.to_string(),
        version: meta.version,
        built_at: meta.built_at.to_rfc3339(),
        total_nodes: meta.node_count,
        total_edges: meta.edge_count,
        dropped_nodes: view.dropped_nodes,
        dropped_edges: view.dropped_edges,
        downsampled: view.dropped_nodes > 0,
        nodes: view
            .nodes
            .iter()
            .map(|&i| {
                let node = &cached.graph.nodes[i as usize];
                NodeData {
                    id: node.member.to_string(),
                    x: node.x,
                    y: node.y,
                    recruits: node.recruits,
                    degree: node.degree,
                    hub: node.recruits > 0,
                }
            })
            .collect(),
        edges: view.edges.iter().map(|&(a, b)| [a, b]).collect(),
    })
}

/// The gRPC code's HTTP counterpart, with the same message.
fn error_response(error: Error) -> Response {
    let status = match code_of(&error) {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = format!("{error:#}"), "graph data failed");
        "internal error".to_owned()
    } else {
        error.to_string()
    };
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
