//! The referral graph (issue 19): snapshots taken by the job fleet (or on demand), and reads
//! answered from the latest snapshot held in memory. A replica loads a program's snapshot
//! once; every read after that runs no SQL (down-sampled views are cached as well), until a
//! newer snapshot is seen: at once on the replica that wrote it, within
//! `FLASH_GRAPH_REFRESH_SECONDS` on the others ([`Ledger::refresh_graph_cache`]).
use super::{run_to_completion, Error, Ledger};
use crate::domain::graph::{content_hash, ReferralGraph};
use crate::domain::{MemberId, ProgramId};
use crate::store::{self, graph::SnapshotMeta};
use chrono::{DateTime, Duration, Timelike, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// GetGraph's `max_nodes` when the caller gives none, and its largest value.
pub const GRAPH_DEFAULT_NODES: usize = 5_000;
pub const GRAPH_MAX_NODES: usize = 50_000;
/// GetNeighborhood's `max_nodes` when the caller gives none.
pub const NEIGHBOURHOOD_DEFAULT_NODES: usize = 1_000;
/// GetNeighborhood's largest depth.
pub const NEIGHBOURHOOD_MAX_DEPTH: u32 = 3;
/// ListTopAdvocates' largest limit.
pub const ADVOCATES_MAX: usize = 1_000;
/// Down-sampled views kept per snapshot; past it the views start again.
const VIEWS_MAX: usize = 32;

/// A snapshot held in memory.
#[derive(Debug)]
pub struct CachedGraph {
    pub meta: SnapshotMeta,
    pub graph: ReferralGraph,
    views: Mutex<HashMap<usize, Arc<GraphView>>>,
}

/// At most `max_nodes` members of a snapshot and the referrals between them.
#[derive(Debug, PartialEq, Eq)]
pub struct GraphView {
    /// Node indices of the snapshot, ascending.
    pub nodes: Vec<u32>,
    /// (referrer, referee) as positions in `nodes`.
    pub edges: Vec<(u32, u32)>,
    pub dropped_nodes: usize,
    pub dropped_edges: usize,
}

/// Members around one member, nearest first, with their distance.
#[derive(Debug)]
pub struct Neighbourhood {
    /// (node index, distance).
    pub nodes: Vec<(u32, u32)>,
    /// (referrer, referee) as positions in `nodes`.
    pub edges: Vec<(u32, u32)>,
    pub truncated: bool,
}

/// What the graph cache did since the process started (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphCacheStats {
    /// Snapshots read from PostgreSQL.
    pub loads: u64,
    /// Down-sampled views computed.
    pub views_computed: u64,
}

/// The latest snapshot of each program, shared by every clone of the ledger.
#[derive(Clone, Default)]
pub(super) struct GraphCache {
    programs: Arc<RwLock<HashMap<String, Arc<CachedGraph>>>>,
    loads: Arc<AtomicU64>,
    views_computed: Arc<AtomicU64>,
}

impl GraphCache {
    fn get(&self, program: &str) -> Option<Arc<CachedGraph>> {
        self.programs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(program)
            .cloned()
    }

    fn put(&self, program: &str, cached: Arc<CachedGraph>) {
        self.programs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(program.to_owned(), cached);
    }

    /// Forgets the programs whose cached version is not `latest`'s.
    fn retain_current(&self, latest: &HashMap<String, i64>) -> usize {
        let mut programs = self
            .programs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = programs.len();
        programs.retain(|program, cached| latest.get(program) == Some(&cached.meta.version));
        before - programs.len()
    }

    fn forget(&self, program: &str) {
        self.programs
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(program);
    }
}

impl CachedGraph {
    /// The view of at most `max_nodes` members, computed once per snapshot and size.
    fn view(&self, max_nodes: usize, computed: &AtomicU64) -> Arc<GraphView> {
        let mut views = self
            .views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Every size at or above the snapshot's is the same whole view.
        let key = max_nodes.min(self.graph.nodes.len());
        if let Some(view) = views.get(&key) {
            return view.clone();
        }
        let nodes = self.graph.sample(key);
        let edges = self.graph.edges_within(&nodes);
        let view = Arc::new(GraphView {
            dropped_nodes: self.graph.nodes.len() - nodes.len(),
            dropped_edges: self.graph.edges.len() - edges.len(),
            nodes,
            edges,
        });
        computed.fetch_add(1, Ordering::Relaxed);
        if views.len() >= VIEWS_MAX {
            views.clear();
        }
        views.insert(key, view.clone());
        view
    }
}

/// Worker threads of one layout: both cores of a small machine, at most four.
fn layout_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

impl Ledger {
    /// The latest snapshot of a program with its view of at most `max_nodes` members.
    pub async fn graph(
        &self,
        program: &ProgramId,
        max_nodes: usize,
    ) -> Result<(Arc<CachedGraph>, Arc<GraphView>), Error> {
        let cached = self.cached_graph(program).await?;
        let view = cached.view(max_nodes, &self.graph.views_computed);
        Ok((cached, view))
    }

    /// The members within `depth` referrals of `member` in the latest snapshot.
    pub async fn graph_neighbourhood(
        &self,
        program: &ProgramId,
        member: MemberId,
        depth: u32,
        max_nodes: usize,
    ) -> Result<(Arc<CachedGraph>, Neighbourhood), Error> {
        let cached = self.cached_graph(program).await?;
        let graph = &cached.graph;
        let Some(centre) = graph.node_of(&member.as_uuid()) else {
            return Err(Error::NotInGraph {
                member,
                snapshot_date: cached.meta.snapshot_date,
            });
        };
        let (nodes, truncated) = graph.neighbourhood(centre, depth, max_nodes);
        let mut sorted: Vec<(u32, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(position, &(node, _))| (node, position))
            .collect();
        sorted.sort_unstable();
        let position_of = |node: u32| {
            sorted
                .binary_search_by_key(&node, |&(n, _)| n)
                .ok()
                .and_then(|i| u32::try_from(sorted[i].1).ok())
        };
        // The referrals among them: each member's own, found from its adjacency.
        let mut edges = Vec::new();
        for &(node, _) in &nodes {
            for &other in graph.neighbours(node) {
                let (Some(from), Some(to)) = (position_of(node), position_of(other)) else {
                    continue;
                };
                if graph.edges.binary_search(&(node, other)).is_ok() {
                    edges.push((from, to));
                }
            }
        }
        edges.sort_unstable();
        Ok((
            cached,
            Neighbourhood {
                nodes,
                edges,
                truncated,
            },
        ))
    }

    /// The top `limit` advocates (node indices) of the latest snapshot.
    pub async fn top_advocates(
        &self,
        program: &ProgramId,
        limit: usize,
    ) -> Result<(Arc<CachedGraph>, Vec<u32>), Error> {
        let cached = self.cached_graph(program).await?;
        let top = cached.graph.hubs.iter().take(limit).copied().collect();
        Ok((cached, top))
    }

    /// What the graph cache did so far.
    pub fn graph_cache_stats(&self) -> GraphCacheStats {
        GraphCacheStats {
            loads: self.graph.loads.load(Ordering::Relaxed),
            views_computed: self.graph.views_computed.load(Ordering::Relaxed),
        }
    }

    /// Takes today's (program-local) snapshot now; replaces today's when the graph changed.
    /// Returns the snapshot in force and whether this call wrote it.
    pub async fn rebuild_graph_snapshot(
        &self,
        program: &ProgramId,
    ) -> Result<(SnapshotMeta, bool), Error> {
        let now = self.clock.now();
        let ledger = self.clone();
        let program = program.clone();
        run_to_completion(async move {
            let rules = ledger.program_rules(&program).await?;
            ledger.take_graph_snapshot(&program, &rules, now).await
        })
        .await
    }

    /// The snapshot job's work for one program: takes the day's snapshot once the program-
    /// local hour reached the rules' `graph_snapshot_hour`, unless the day has one, and
    /// deletes snapshots past the retention. `Some(members)` when it took one.
    pub(super) async fn graph_snapshot_if_due(
        &self,
        program: &ProgramId,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, Error> {
        let rules = self.program_rules(program).await?;
        let zone = rules.zone();
        let local = at.with_timezone(&zone);
        if i64::from(local.hour()) < i64::from(rules.graph_snapshot_hour) {
            return Ok(None);
        }
        let taken = {
            let client = self.db.get().await?;
            store::graph::meta_on(&**client, program.as_str(), local.date_naive()).await?
        };
        if taken.is_some() {
            return Ok(None);
        }
        let (meta, _) = self.take_graph_snapshot(program, &rules, at).await?;
        Ok(Some(i64::from(meta.node_count)))
    }

    /// Builds, lays out and stores the program's graph as of now, dated by the program-
    /// local day of `at`; prunes the snapshots past the retention.
    async fn take_graph_snapshot(
        &self,
        program: &ProgramId,
        rules: &crate::domain::RulesDocument,
        at: DateTime<Utc>,
    ) -> Result<(SnapshotMeta, bool), Error> {
        let zone = rules.zone();
        let date = at.with_timezone(&zone).date_naive();
        let referrals = {
            let client = self.db.get().await?;
            store::graph::converted_referrals(&**client, program.as_str()).await?
        };
        let name = program.as_str().to_owned();
        let started = std::time::Instant::now();
        let (graph, blob, index) = tokio::task::spawn_blocking(move || {
            let graph = ReferralGraph::build(&name, &referrals, layout_threads());
            let (blob, index) = graph.encode();
            (graph, blob, index)
        })
        .await
        .map_err(|error| Error::Unexpected(anyhow::anyhow!("graph layout failed: {error}")))?;
        let count = |len: usize, what: &str| {
            i32::try_from(len).map_err(|_| {
                Error::Unexpected(anyhow::anyhow!("{len} {what} do not fit a snapshot"))
            })
        };
        let meta = SnapshotMeta {
            program_id: program.as_str().to_owned(),
            snapshot_date: date,
            version: 0,
            built_at: self.clock.now(),
            node_count: count(graph.nodes.len(), "members")?,
            edge_count: count(graph.edges.len(), "referrals")?,
            content_hash: content_hash(&blob, &index),
        };
        let (stored, changed, pruned) = {
            let client = self.db.get().await?;
            let (stored, changed) = store::graph::store(&**client, &meta, &blob, &index).await?;
            let keep_from = date - Duration::days(i64::from(rules.graph_snapshot_retention_days));
            let pruned = store::graph::prune(&**client, program.as_str(), keep_from).await?;
            (stored, changed, pruned)
        };
        if changed {
            self.graph.forget(program.as_str());
        }
        tracing::info!(
            program = %program,
            date = %date,
            version = stored.version,
            members = stored.node_count,
            referrals = stored.edge_count,
            changed,
            pruned,
            layout_ms = started.elapsed().as_millis() as u64,
            "graph snapshot"
        );
        Ok((stored, changed))
    }

    /// Compares every cached snapshot with the latest stored one and forgets the stale:
    /// how replicas see each other's snapshots. Returns how many were forgotten.
    pub async fn refresh_graph_cache(&self) -> Result<usize, Error> {
        let latest: HashMap<String, i64> = {
            let client = self.db.get().await?;
            store::graph::latest_versions(&**client)
                .await?
                .into_iter()
                .collect()
        };
        Ok(self.graph.retain_current(&latest))
    }

    /// Refreshes the cache every `every` until the process ends.
    pub async fn watch_graph_snapshots(self, every: std::time::Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = self.refresh_graph_cache().await {
                tracing::warn!(%error, "graph cache refresh failed; cached snapshots kept");
            }
        }
    }

    /// The cached latest snapshot, loaded on first use.
    async fn cached_graph(&self, program: &ProgramId) -> Result<Arc<CachedGraph>, Error> {
        if let Some(cached) = self.graph.get(program.as_str()) {
            return Ok(cached);
        }
        let stored = {
            let client = self.db.get().await?;
            let stored = store::graph::latest(&**client, program.as_str()).await?;
            if stored.is_none() && store::programs::get(&**client, program).await?.is_none() {
                return Err(super::members::program_not_found(program));
            }
            stored
        };
        let Some(stored) = stored else {
            return Err(Error::GraphSnapshotNotFound {
                program: program.clone(),
            });
        };
        let graph = tokio::task::spawn_blocking(move || {
            ReferralGraph::decode(&stored.blob, &stored.index).map(|graph| (stored.meta, graph))
        })
        .await
        .map_err(|error| Error::Unexpected(anyhow::anyhow!("graph decoding failed: {error}")))?;
        let (meta, graph) = graph.map_err(|error| Error::Unexpected(error.into()))?;
        self.graph.loads.fetch_add(1, Ordering::Relaxed);
        let cached = Arc::new(CachedGraph {
            meta,
            graph,
            views: Mutex::new(HashMap::new()),
        });
        self.graph.put(program.as_str(), cached.clone());
        Ok(cached)
    }
}
