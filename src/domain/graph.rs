//! The referral graph of one snapshot (issue 19): converted referrals as nodes and edges,
//! laid out by [`super::layout`], encoded as a compact blob plus a small index, and the
//! read views answered from it (down-sampled graph, neighbourhoods, top advocates). Pure:
//! no IO, no clock; the same referrals give the same bytes on every machine and run.
//!
//! # Encoding (little-endian)
//! - blob: `b"FLG1"`, node count `u32`, edge count `u32`; then per node its member id (16
//!   bytes), `x` and `y` (`f32`), recruits and degree (`u32`); then per edge the referrer's
//!   and the referee's node index (`u32`). Nodes in ascending member id, edges in ascending
//!   (referrer, referee).
//! - index: `b"FLI1"`, hub count `u32` and the hubs (node indices, most recruits first, ties
//!   by index), then `n + 1` neighbourhood offsets and the neighbours (`u32` each): node
//!   `i`'s neighbours, both directions, ascending, are `neighbours[offsets[i]..offsets[i+1]]`.
use super::layout::{layout, LayoutParams};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use uuid::Uuid;

const BLOB_MAGIC: &[u8; 4] = b"FLG1";
const INDEX_MAGIC: &[u8; 4] = b"FLI1";
const NODE_BYTES: usize = 32;
const EDGE_BYTES: usize = 8;

/// One member of the graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphNode {
    pub member: Uuid,
    pub x: f32,
    pub y: f32,
    /// Converted referrals this member made.
    pub recruits: u32,
    /// Distinct members it is joined to, either direction.
    pub degree: u32,
}

/// A laid-out referral graph with its index.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferralGraph {
    /// Ascending by member id.
    pub nodes: Vec<GraphNode>,
    /// (referrer, referee) node indices, ascending.
    pub edges: Vec<(u32, u32)>,
    /// Members with at least one recruit: most recruits first, ties by index.
    pub hubs: Vec<u32>,
    offsets: Vec<u32>,
    neighbours: Vec<u32>,
}

/// A stored snapshot that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("graph snapshot encoding: {0}")]
pub struct DecodeError(&'static str);

/// The layout seed of a program's graph: derived from the program and the graph itself,
/// so equal inputs start from equal positions.
pub fn layout_seed(program: &str, referrals: &[(Uuid, Uuid)]) -> u64 {
    let mut hash = Sha256::new();
    hash.update(b"flash-graph-seed-v1\0");
    hash.update(program.as_bytes());
    hash.update([0]);
    for (referrer, referee) in referrals {
        hash.update(referrer.as_bytes());
        hash.update(referee.as_bytes());
    }
    let digest = hash.finalize();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(seed)
}

impl ReferralGraph {
    /// The graph of `referrals` (referrer, referee; any order, duplicates and self
    /// referrals ignored), laid out with a seed derived from `program` and the graph.
    /// `threads` may be anything: the result does not depend on it.
    pub fn build(program: &str, referrals: &[(Uuid, Uuid)], threads: usize) -> Self {
        let pairs: BTreeSet<(Uuid, Uuid)> = referrals
            .iter()
            .copied()
            .filter(|(referrer, referee)| referrer != referee)
            .collect();
        let pairs: Vec<(Uuid, Uuid)> = pairs.into_iter().collect();
        let members: Vec<Uuid> = pairs
            .iter()
            .flat_map(|&(a, b)| [a, b])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index_of = |member: &Uuid| {
            u32::try_from(members.binary_search(member).unwrap_or(0)).unwrap_or(u32::MAX)
        };
        let mut edges: Vec<(u32, u32)> = pairs
            .iter()
            .map(|(referrer, referee)| (index_of(referrer), index_of(referee)))
            .collect();
        edges.sort_unstable();
        let params = LayoutParams {
            threads,
            ..LayoutParams::default()
        };
        let positions = layout(members.len(), &edges, layout_seed(program, &pairs), &params);
        let mut nodes: Vec<GraphNode> = members
            .iter()
            .enumerate()
            .map(|(i, &member)| GraphNode {
                member,
                x: positions.x[i],
                y: positions.y[i],
                recruits: 0,
                degree: 0,
            })
            .collect();
        for &(referrer, _) in &edges {
            nodes[referrer as usize].recruits += 1;
        }
        let (offsets, neighbours) = adjacency(nodes.len(), &edges);
        for (i, node) in nodes.iter_mut().enumerate() {
            node.degree = offsets[i + 1] - offsets[i];
        }
        let hubs = rank_hubs(&nodes);
        Self {
            nodes,
            edges,
            hubs,
            offsets,
            neighbours,
        }
    }

    /// The node of a member.
    pub fn node_of(&self, member: &Uuid) -> Option<u32> {
        self.nodes
            .binary_search_by(|node| node.member.cmp(member))
            .ok()
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Node `i`'s neighbours, both directions, ascending.
    pub fn neighbours(&self, i: u32) -> &[u32] {
        let i = i as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&from), Some(&to)) => &self.neighbours[from as usize..to as usize],
            _ => &[],
        }
    }

    /// The blob and the index, byte for byte the same for the same graph.
    pub fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        let mut blob =
            Vec::with_capacity(12 + self.nodes.len() * NODE_BYTES + self.edges.len() * EDGE_BYTES);
        blob.extend_from_slice(BLOB_MAGIC);
        put_len(&mut blob, self.nodes.len());
        put_len(&mut blob, self.edges.len());
        for node in &self.nodes {
            blob.extend_from_slice(node.member.as_bytes());
            blob.extend_from_slice(&node.x.to_le_bytes());
            blob.extend_from_slice(&node.y.to_le_bytes());
            blob.extend_from_slice(&node.recruits.to_le_bytes());
            blob.extend_from_slice(&node.degree.to_le_bytes());
        }
        for &(from, to) in &self.edges {
            blob.extend_from_slice(&from.to_le_bytes());
            blob.extend_from_slice(&to.to_le_bytes());
        }
        let mut index = Vec::with_capacity(
            8 + 4 * (self.hubs.len() + self.offsets.len() + self.neighbours.len()),
        );
        index.extend_from_slice(INDEX_MAGIC);
        put_len(&mut index, self.hubs.len());
        for values in [&self.hubs, &self.offsets, &self.neighbours] {
            for value in values.iter() {
                index.extend_from_slice(&value.to_le_bytes());
            }
        }
        (blob, index)
    }

    /// Reads back what [`Self::encode`] wrote, checking every count and index.
    pub fn decode(blob: &[u8], index: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader(blob);
        if reader.take(4)? != BLOB_MAGIC {
            return Err(DecodeError("not a graph blob"));
        }
        let n = reader.u32()? as usize;
        let m = reader.u32()? as usize;
        if reader.0.len() != n * NODE_BYTES + m * EDGE_BYTES {
            return Err(DecodeError("blob length does not match its counts"));
        }
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let member =
                Uuid::from_slice(reader.take(16)?).map_err(|_| DecodeError("bad member id"))?;
            nodes.push(GraphNode {
                member,
                x: f32::from_bits(reader.u32()?),
                y: f32::from_bits(reader.u32()?),
                recruits: reader.u32()?,
                degree: reader.u32()?,
            });
        }
        let mut edges = Vec::with_capacity(m);
        for _ in 0..m {
            let edge = (reader.u32()?, reader.u32()?);
            if edge.0 as usize >= n || edge.1 as usize >= n {
                return Err(DecodeError("edge names a missing node"));
            }
            edges.push(edge);
        }
        let mut reader = Reader(index);
        if reader.take(4)? != INDEX_MAGIC {
            return Err(DecodeError("not a graph index"));
        }
        let hub_count = reader.u32()? as usize;
        let hubs = reader.u32s(hub_count)?;
        let offsets = reader.u32s(n + 1)?;
        let total = offsets.last().copied().unwrap_or(0) as usize;
        let neighbours = reader.u32s(total)?;
        let damaged = !reader.0.is_empty()
            || offsets.windows(2).any(|pair| pair[0] > pair[1])
            || offsets.first() != Some(&0)
            || hubs.iter().chain(&neighbours).any(|&i| i as usize >= n);
        if damaged {
            return Err(DecodeError("index does not match the blob"));
        }
        Ok(Self {
            nodes,
            edges,
            hubs,
            offsets,
            neighbours,
        })
    }

    /// At most `max_nodes` nodes: every node when the graph fits, else the top hubs each
    /// with its neighbourhood (its neighbours with the most recruits first), hub after hub,
    /// until the budget is spent. The kept nodes in ascending index order.
    pub fn sample(&self, max_nodes: usize) -> Vec<u32> {
        let n = self.nodes.len();
        if n <= max_nodes {
            return (0..n).filter_map(|i| u32::try_from(i).ok()).collect();
        }
        let mut kept = vec![false; n];
        let mut count = 0;
        let mut keep = |i: u32, kept: &mut Vec<bool>| {
            if count < max_nodes && !kept[i as usize] {
                kept[i as usize] = true;
                count += 1;
            }
        };
        for &hub in &self.hubs {
            keep(hub, &mut kept);
            let mut around: Vec<u32> = self.neighbours(hub).to_vec();
            around.sort_by_key(|&i| (std::cmp::Reverse(self.nodes[i as usize].recruits), i));
            for i in around {
                keep(i, &mut kept);
            }
        }
        (0..n)
            .filter(|&i| kept[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect()
    }

    /// The members within `depth` referrals of `centre`, either direction, nearest first
    /// (then by index), at most `max_nodes`; with each its distance. The bool says the
    /// budget cut the neighbourhood short.
    pub fn neighbourhood(
        &self,
        centre: u32,
        depth: u32,
        max_nodes: usize,
    ) -> (Vec<(u32, u32)>, bool) {
        let mut seen = BTreeMap::new();
        let mut queue = VecDeque::from([(centre, 0u32)]);
        seen.insert(centre, 0);
        let mut order = vec![(centre, 0)];
        let mut truncated = false;
        while let Some((node, distance)) = queue.pop_front() {
            if distance == depth {
                continue;
            }
            for &next in self.neighbours(node) {
                if seen.contains_key(&next) {
                    continue;
                }
                if order.len() >= max_nodes {
                    truncated = true;
                    break;
                }
                seen.insert(next, distance + 1);
                order.push((next, distance + 1));
                queue.push_back((next, distance + 1));
            }
        }
        (order, truncated)
    }

    /// The edges with both ends in `kept` (ascending node indices), renumbered to
    /// positions in `kept`.
    pub fn edges_within(&self, kept: &[u32]) -> Vec<(u32, u32)> {
        let position = |i: u32| {
            kept.binary_search(&i)
                .ok()
                .and_then(|p| u32::try_from(p).ok())
        };
        self.edges
            .iter()
            .filter_map(|&(from, to)| Some((position(from)?, position(to)?)))
            .collect()
    }
}

/// SHA-256 of a snapshot's blob and index, hex: the snapshot's content hash.
pub fn content_hash(blob: &[u8], index: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(blob);
    hash.update(index);
    hash.finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn adjacency(n: usize, edges: &[(u32, u32)]) -> (Vec<u32>, Vec<u32>) {
    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        lists[a as usize].push(b);
        lists[b as usize].push(a);
    }
    let mut offsets = Vec::with_capacity(n + 1);
    let mut neighbours = Vec::with_capacity(edges.len() * 2);
    offsets.push(0);
    for mut list in lists {
        list.sort_unstable();
        list.dedup();
        neighbours.extend_from_slice(&list);
        offsets.push(u32::try_from(neighbours.len()).unwrap_or(u32::MAX));
    }
    (offsets, neighbours)
}

fn rank_hubs(nodes: &[GraphNode]) -> Vec<u32> {
    let mut hubs: Vec<u32> = (0..nodes.len())
        .filter(|&i| nodes[i].recruits > 0)
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    hubs.sort_by_key(|&i| (std::cmp::Reverse(nodes[i as usize].recruits), i));
    hubs
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < len {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u32s(&mut self, count: usize) -> Result<Vec<u32>, DecodeError> {
        if self.0.len() / 4 < count {
            return Err(DecodeError("truncated"));
        }
        (0..count).map(|_| self.u32()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u128) -> Uuid {
        Uuid::from_u128(i)
    }

    /// Two hubs: 1 recruited 2, 3, 4, 5; 2 recruited 6, 7; and a lone pair 8 → 9.
    fn small() -> Vec<(Uuid, Uuid)> {
        [(1, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7), (8, 9)]
            .into_iter()
            .map(|(a, b)| (member(a), member(b)))
            .collect()
    }

    #[test]
    fn nodes_edges_recruits_and_degrees() {
        let graph = ReferralGraph::build("acme", &small(), 1);
        assert_eq!(graph.nodes.len(), 9);
        assert_eq!(graph.edges.len(), 7);
        let one = graph.node_of(&member(1)).unwrap();
        let two = graph.node_of(&member(2)).unwrap();
        assert_eq!(graph.nodes[one as usize].recruits, 4);
        assert_eq!(graph.nodes[two as usize].recruits, 2);
        assert_eq!(graph.nodes[two as usize].degree, 3);
        assert_eq!(
            graph.hubs,
            vec![one, two, graph.node_of(&member(8)).unwrap()]
        );
        assert!(graph
            .nodes
            .iter()
            .all(|n| n.x.is_finite() && n.y.is_finite()));
    }

    #[test]
    fn duplicates_and_order_do_not_matter() {
        let mut shuffled = small();
        shuffled.reverse();
        shuffled.push((member(1), member(2)));
        shuffled.push((member(5), member(5)));
        let a = ReferralGraph::build("acme", &small(), 1).encode();
        let b = ReferralGraph::build("acme", &shuffled, 2).encode();
        assert_eq!(a, b);
    }

    /// A change of the algorithm or the encoding must be deliberate: update this hash with
    /// the change that causes it.
    #[test]
    fn a_fixed_graph_has_a_committed_hash() {
        let (blob, index) = ReferralGraph::build("acme", &small(), 1).encode();
        assert_eq!(
            content_hash(&blob, &index),
            "464ed8df09763f6b556b7cec562dda38a1e1f9bfc01dd4bc045553599fc62016"
        );
    }

    #[test]
    fn decode_reads_back_what_encode_wrote_and_refuses_damage() {
        let graph = ReferralGraph::build("acme", &small(), 1);
        let (blob, index) = graph.encode();
        assert_eq!(ReferralGraph::decode(&blob, &index).unwrap(), graph);
        assert!(ReferralGraph::decode(&blob[..blob.len() - 1], &index).is_err());
        assert!(ReferralGraph::decode(&blob, &index[..index.len() - 4]).is_err());
        assert!(ReferralGraph::decode(&index, &blob).is_err());
        assert!(ReferralGraph::decode(&[], &[]).is_err());
    }

    #[test]
    fn sampling_keeps_the_top_hubs_and_their_neighbourhoods() {
        let graph = ReferralGraph::build("acme", &small(), 1);
        assert_eq!(graph.sample(100).len(), 9);
        let kept = graph.sample(5);
        let ids: Vec<u128> = kept
            .iter()
            .map(|&i| graph.nodes[i as usize].member.as_u128())
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        let edges = graph.edges_within(&kept);
        assert_eq!(edges.len(), 4);
        let kept = graph.sample(7);
        let ids: Vec<u128> = kept
            .iter()
            .map(|&i| graph.nodes[i as usize].member.as_u128())
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn neighbourhoods_follow_both_directions_up_to_the_depth() {
        let graph = ReferralGraph::build("acme", &small(), 1);
        let six = graph.node_of(&member(6)).unwrap();
        let (one_step, truncated) = graph.neighbourhood(six, 1, 100);
        assert!(!truncated);
        assert_eq!(one_step.len(), 2);
        let (three_steps, _) = graph.neighbourhood(six, 3, 100);
        let mut ids: Vec<u128> = three_steps
            .iter()
            .map(|&(i, _)| graph.nodes[i as usize].member.as_u128())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7]);
        let (cut, truncated) = graph.neighbourhood(six, 3, 3);
        assert!(truncated);
        assert_eq!(cut.len(), 3);
    }
}
