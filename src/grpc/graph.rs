//! `flash.loyalty.v1.Graph`.
use super::proto::{self, graph_server::Graph as GraphRpc};
use super::timestamp;
use crate::domain::graph::GraphNode;
use crate::domain::{MemberId, ProgramId};
use crate::service::{
    Error, Ledger, ADVOCATES_MAX, GRAPH_DEFAULT_NODES, GRAPH_MAX_NODES,
    NEIGHBOURHOOD_DEFAULT_NODES, NEIGHBOURHOOD_MAX_DEPTH,
};
use crate::store::graph::SnapshotMeta;
use tonic::{Request, Response, Status};

/// The gRPC adapter of the referral graph reads and rebuilds.
pub struct GraphApi {
    ledger: Ledger,
}

impl GraphApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

/// A count field: 0 means `default`, else 1 to `max`.
pub fn bounded(field: &str, value: i32, default: usize, max: usize) -> Result<usize, Error> {
    match usize::try_from(value) {
        Ok(0) => Ok(default),
        Ok(value) if value <= max => Ok(value),
        _ => Err(Error::invalid(
            field,
            format!("must be between 1 and {max}, or 0 for {default}"),
        )),
    }
}

#[tonic::async_trait]
impl GraphRpc for GraphApi {
    async fn get_graph(
        &self,
        request: Request<proto::GetGraphRequest>,
    ) -> Result<Response<proto::GetGraphResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let max_nodes = bounded(
            "max_nodes",
            request.max_nodes,
            GRAPH_DEFAULT_NODES,
            GRAPH_MAX_NODES,
        )?;
        let (cached, view) = self.ledger.graph(&program, max_nodes).await?;
        let nodes = &cached.graph.nodes;
        Ok(Response::new(proto::GetGraphResponse {
            snapshot: Some(snapshot_message(&cached.meta)),
            nodes: view
                .nodes
                .iter()
                .map(|&i| node_message(&nodes[i as usize]))
                .collect(),
            edges: view.edges.iter().map(|&edge| edge_message(edge)).collect(),
            dropped_nodes: count(view.dropped_nodes),
            dropped_edges: count(view.dropped_edges),
        }))
    }

    async fn get_neighborhood(
        &self,
        request: Request<proto::GetNeighborhoodRequest>,
    ) -> Result<Response<proto::GetNeighborhoodResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let member = MemberId::parse(&request.member_id).map_err(Error::from)?;
        let depth = bounded("depth", request.depth, 1, NEIGHBOURHOOD_MAX_DEPTH as usize)?;
        let max_nodes = bounded(
            "max_nodes",
            request.max_nodes,
            NEIGHBOURHOOD_DEFAULT_NODES,
            GRAPH_MAX_NODES,
        )?;
        let depth = u32::try_from(depth).unwrap_or(1);
        let (cached, around) = self
            .ledger
            .graph_neighbourhood(&program, member, depth, max_nodes)
            .await?;
        let nodes = &cached.graph.nodes;
        Ok(Response::new(proto::GetNeighborhoodResponse {
            snapshot: Some(snapshot_message(&cached.meta)),
            nodes: around
                .nodes
                .iter()
                .map(|&(i, distance)| proto::NeighborhoodNode {
                    node: Some(node_message(&nodes[i as usize])),
                    distance: i32::try_from(distance).unwrap_or(i32::MAX),
                })
                .collect(),
            edges: around
                .edges
                .iter()
                .map(|&edge| edge_message(edge))
                .collect(),
            truncated: around.truncated,
        }))
    }

    async fn list_top_advocates(
        &self,
        request: Request<proto::ListTopAdvocatesRequest>,
    ) -> Result<Response<proto::ListTopAdvocatesResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let limit = bounded("limit", request.limit, 10, ADVOCATES_MAX)?;
        let (cached, top) = self.ledger.top_advocates(&program, limit).await?;
        let nodes = &cached.graph.nodes;
        Ok(Response::new(proto::ListTopAdvocatesResponse {
            snapshot: Some(snapshot_message(&cached.meta)),
            advocates: top
                .iter()
                .enumerate()
                .map(|(rank, &i)| {
                    let node = &nodes[i as usize];
                    proto::Advocate {
                        rank: count(rank + 1),
                        member_id: node.member.to_string(),
                        recruits: count(node.recruits as usize),
                        degree: count(node.degree as usize),
                    }
                })
                .collect(),
        }))
    }

    async fn rebuild_snapshot(
        &self,
        request: Request<proto::RebuildSnapshotRequest>,
    ) -> Result<Response<proto::RebuildSnapshotResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let (meta, changed) = self.ledger.rebuild_graph_snapshot(&program).await?;
        Ok(Response::new(proto::RebuildSnapshotResponse {
            snapshot: Some(snapshot_message(&meta)),
            changed,
        }))
    }
}

fn count(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn snapshot_message(meta: &SnapshotMeta) -> proto::GraphSnapshot {
    proto::GraphSnapshot {
        program_id: meta.program_id.clone(),
        snapshot_date: meta.snapshot_date.to_string(),
        version: meta.version,
        built_at: Some(timestamp(meta.built_at)),
        node_count: meta.node_count,
        edge_count: meta.edge_count,
        content_hash: meta.content_hash.clone(),
    }
}

fn node_message(node: &GraphNode) -> proto::GraphNode {
    proto::GraphNode {
        member_id: node.member.to_string(),
        x: node.x,
        y: node.y,
        recruits: count(node.recruits as usize),
        degree: count(node.degree as usize),
    }
}

fn edge_message((referrer, referee): (u32, u32)) -> proto::GraphEdge {
    proto::GraphEdge {
        referrer: count(referrer as usize),
        referee: count(referee as usize),
    }
}
