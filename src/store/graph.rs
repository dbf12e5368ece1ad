//! Referral graph snapshots and the converted referrals they are built from.
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// A stored snapshot's identity and size, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub program_id: String,
    pub snapshot_date: NaiveDate,
    pub version: i64,
    pub built_at: DateTime<Utc>,
    pub node_count: i32,
    pub edge_count: i32,
    pub content_hash: String,
}

/// A stored snapshot with its blob and index.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub blob: Vec<u8>,
    pub index: Vec<u8>,
}

const META: &str =
    "program_id, snapshot_date, version, built_at, node_count, edge_count, content_hash";

fn meta_of(row: &tokio_postgres::Row) -> Result<SnapshotMeta, tokio_postgres::Error> {
    Ok(SnapshotMeta {
        program_id: row.try_get("program_id")?,
        snapshot_date: row.try_get("snapshot_date")?,
        version: row.try_get("version")?,
        built_at: row.try_get("built_at")?,
        node_count: row.try_get("node_count")?,
        edge_count: row.try_get("edge_count")?,
        content_hash: row.try_get("content_hash")?,
    })
}

/// Every converted referral of a program: (referrer, referee). Only `converted` invites:
/// pending, accepted, revoked, expired, superseded and clawed-back ones are not edges.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::converted_referrals"))]
pub async fn converted_referrals(
    client: &impl GenericClient,
    program: &str,
) -> Result<Vec<(Uuid, Uuid)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT referrer_member_id, referee_member_id FROM invites \
             WHERE program_id = $1 AND status = 'converted' \
             ORDER BY referrer_member_id, referee_member_id",
            &[&program],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Stores the snapshot of `(program, date)`: a new row, or a new version of the day's row
/// when its content changed. Unchanged content keeps the stored row and its version.
/// Returns the stored snapshot's meta and whether this call wrote it.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::store"))]
pub async fn store(
    client: &impl GenericClient,
    meta: &SnapshotMeta,
    blob: &[u8],
    index: &[u8],
) -> Result<(SnapshotMeta, bool), tokio_postgres::Error> {
    let written = client
        .query_opt(
            &format!(
                "INSERT INTO graph_snapshots AS s (program_id, snapshot_date, version, built_at, \
                   node_count, edge_count, content_hash, blob, graph_index) \
                 VALUES ($1, $2, nextval('graph_snapshot_versions'), $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (program_id, snapshot_date) DO UPDATE SET \
                   version = nextval('graph_snapshot_versions'), built_at = EXCLUDED.built_at, \
                   node_count = EXCLUDED.node_count, edge_count = EXCLUDED.edge_count, \
                   content_hash = EXCLUDED.content_hash, blob = EXCLUDED.blob, \
                   graph_index = EXCLUDED.graph_index \
                 WHERE s.content_hash <> EXCLUDED.content_hash \
                 RETURNING {META}"
            ),
            &[
                &meta.program_id,
                &meta.snapshot_date,
                &meta.built_at,
                &meta.node_count,
                &meta.edge_count,
                &meta.content_hash,
                &blob,
                &index,
            ],
        )
        .await?;
    if let Some(row) = written {
        return Ok((meta_of(&row)?, true));
    }
    let row = client
        .query_one(
            &format!(
                "SELECT {META} FROM graph_snapshots WHERE program_id = $1 AND snapshot_date = $2"
            ),
            &[&meta.program_id, &meta.snapshot_date],
        )
        .await?;
    Ok((meta_of(&row)?, false))
}

/// The meta of the program's snapshot of `date`, if taken.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::meta_on"))]
pub async fn meta_on(
    client: &impl GenericClient,
    program: &str,
    date: NaiveDate,
) -> Result<Option<SnapshotMeta>, tokio_postgres::Error> {
    client
        .query_opt(
            &format!(
                "SELECT {META} FROM graph_snapshots WHERE program_id = $1 AND snapshot_date = $2"
            ),
            &[&program, &date],
        )
        .await?
        .as_ref()
        .map(meta_of)
        .transpose()
}

/// The program's latest snapshot (latest day), bytes included.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::latest"))]
pub async fn latest(
    client: &impl GenericClient,
    program: &str,
) -> Result<Option<StoredSnapshot>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {META}, blob, graph_index FROM graph_snapshots WHERE program_id = $1 \
                 ORDER BY snapshot_date DESC LIMIT 1"
            ),
            &[&program],
        )
        .await?;
    row.map(|row| {
        Ok(StoredSnapshot {
            meta: meta_of(&row)?,
            blob: row.try_get("blob")?,
            index: row.try_get("graph_index")?,
        })
    })
    .transpose()
}

/// The version of every program's latest snapshot: what replicas compare their caches to.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::latest_versions"))]
pub async fn latest_versions(
    client: &impl GenericClient,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (program_id) program_id, version FROM graph_snapshots \
             ORDER BY program_id, snapshot_date DESC",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Deletes the program's snapshots of days before `keep_from`; returns how many.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::prune"))]
pub async fn prune(
    client: &impl GenericClient,
    program: &str,
    keep_from: NaiveDate,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM graph_snapshots WHERE program_id = $1 AND snapshot_date < $2",
            &[&program, &keep_from],
        )
        .await
}

/// Every stored snapshot's meta with its bytes, for `flash audit`.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "graph::all_of"))]
pub async fn all_of(
    client: &impl GenericClient,
    program: &str,
) -> Result<Vec<StoredSnapshot>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {META}, blob, graph_index FROM graph_snapshots WHERE program_id = $1 \
                 ORDER BY snapshot_date"
            ),
            &[&program],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredSnapshot {
                meta: meta_of(row)?,
                blob: row.try_get("blob")?,
                index: row.try_get("graph_index")?,
            })
        })
        .collect()
}
