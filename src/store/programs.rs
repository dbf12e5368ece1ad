//! Programs and their versioned rules.
use crate::domain::{ProgramId, RulesDocument};
use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row, Transaction};

/// A program with its current rules, as stored.
#[derive(Debug, Clone)]
pub struct StoredProgram {
    pub program_id: String,
    pub name: String,
    pub rules_version: i64,
    pub rules: RulesDocument,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SELECT_PROGRAM: &str = "SELECT p.program_id, p.name, p.rules_version, r.rules, \
     p.created_at, p.updated_at \
     FROM programs p JOIN program_rules r \
       ON r.program_id = p.program_id AND r.version = p.rules_version \
     WHERE p.program_id = $1";

/// Inserts a program at rules version 1. Returns false when the id is taken.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::insert"))]
pub async fn insert(
    tx: &Transaction<'_>,
    program: &ProgramId,
    name: &str,
    rules: &RulesDocument,
    now: DateTime<Utc>,
    by: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
        .execute(
            "INSERT INTO programs (program_id, name, rules_version, created_at, updated_at) \
             VALUES ($1, $2, 1, $3, $3) ON CONFLICT (program_id) DO NOTHING",
            &[&program.as_str(), &name, &now],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    insert_rules(tx, program, 1, rules, now, by).await?;
    Ok(true)
}

/// The program with its current rules.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::get"))]
pub async fn get(
    client: &impl GenericClient,
    program: &ProgramId,
) -> Result<Option<StoredProgram>, tokio_postgres::Error> {
    let row = client
        .query_opt(SELECT_PROGRAM, &[&program.as_str()])
        .await?;
    row.map(from_row).transpose()
}

/// The program with its current rules, its row locked against concurrent updates.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::get_for_update"))]
pub async fn get_for_update(
    tx: &Transaction<'_>,
    program: &ProgramId,
) -> Result<Option<StoredProgram>, tokio_postgres::Error> {
    let query = format!("{SELECT_PROGRAM} FOR UPDATE OF p");
    let row = tx.query_opt(&query, &[&program.as_str()]).await?;
    row.map(from_row).transpose()
}

/// Records a new rules version and makes it current.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::update"))]
pub async fn update(
    tx: &Transaction<'_>,
    program: &ProgramId,
    name: &str,
    version: i64,
    rules: &RulesDocument,
    now: DateTime<Utc>,
    by: &str,
) -> Result<(), tokio_postgres::Error> {
    insert_rules(tx, program, version, rules, now, by).await?;
    tx.execute(
        "UPDATE programs SET name = $2, rules_version = $3, updated_at = $4 \
         WHERE program_id = $1",
        &[&program.as_str(), &name, &version, &now],
    )
    .await?;
    Ok(())
}

/// Every rules version of a program up to `version`, oldest first, with the instant each
/// took effect. Versions never change once written, so callers may cache the answer.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::rules_history"))]
pub async fn rules_history(
    client: &impl GenericClient,
    program: &ProgramId,
    version: i64,
) -> Result<Vec<(i64, DateTime<Utc>, RulesDocument)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT version, created_at, rules FROM program_rules \
             WHERE program_id = $1 AND version <= $2 ORDER BY version",
            &[&program.as_str(), &version],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let document: serde_json::Value = row.try_get("rules")?;
            // The stored document was validated before it was written.
            let rules = serde_json::from_value(document).expect("stored rules are a RulesDocument");
            Ok((row.try_get("version")?, row.try_get("created_at")?, rules))
        })
        .collect()
}

/// Every program id, for commands that walk all programs.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "programs::list_ids"))]
pub async fn list_ids(client: &impl GenericClient) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT program_id FROM programs ORDER BY program_id", &[])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

async fn insert_rules(
    tx: &Transaction<'_>,
    program: &ProgramId,
    version: i64,
    rules: &RulesDocument,
    now: DateTime<Utc>,
    by: &str,
) -> Result<(), tokio_postgres::Error> {
    let document = serde_json::to_value(rules).expect("rules serialize to JSON");
    tx.execute(
        "INSERT INTO program_rules (program_id, version, rules, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&program.as_str(), &version, &document, &now, &by],
    )
    .await?;
    Ok(())
}

fn from_row(row: Row) -> Result<StoredProgram, tokio_postgres::Error> {
    let document: serde_json::Value = row.try_get("rules")?;
    // The stored document was validated before it was written.
    let rules = serde_json::from_value(document).expect("stored rules are a RulesDocument");
    Ok(StoredProgram {
        program_id: row.try_get("program_id")?,
        name: row.try_get("name")?,
        rules_version: row.try_get("rules_version")?,
        rules,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
