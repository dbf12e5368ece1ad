//! The API's clients (`api_clients`): names, programs, scopes and keyed hashes of secrets.
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

/// A client as stored.
#[derive(Debug, Clone)]
pub struct StoredClient {
    pub name: String,
    pub programs: Vec<String>,
    pub scopes: Vec<String>,
    pub secret_hash: Vec<u8>,
    pub previous_secret_hash: Option<Vec<u8>>,
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub cert_subject: Option<String>,
    pub rate_per_second: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "name, programs, scopes, secret_hash, previous_secret_hash, \
    previous_valid_until, cert_subject, rate_per_second, created_at, rotated_at, revoked_at";

fn from_row(row: &tokio_postgres::Row) -> Result<StoredClient, tokio_postgres::Error> {
    Ok(StoredClient {
        name: row.try_get("name")?,
        programs: row.try_get("programs")?,
        scopes: row.try_get("scopes")?,
        secret_hash: row.try_get("secret_hash")?,
        previous_secret_hash: row.try_get("previous_secret_hash")?,
        previous_valid_until: row.try_get("previous_valid_until")?,
        cert_subject: row.try_get("cert_subject")?,
        rate_per_second: row.try_get("rate_per_second")?,
        created_at: row.try_get("created_at")?,
        rotated_at: row.try_get("rotated_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// A new client.
#[derive(Debug, Clone)]
pub struct NewClient<'a> {
    pub name: &'a str,
    pub programs: &'a [String],
    pub scopes: &'a [String],
    pub secret_hash: &'a [u8],
    pub cert_subject: Option<&'a str>,
    pub rate_per_second: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// Inserts a client; false when the name (or the certificate subject) is taken.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "clients::insert"))]
pub async fn insert(
    db: &impl GenericClient,
    client: &NewClient<'_>,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = db
        .execute(
            "INSERT INTO api_clients (name, programs, scopes, secret_hash, cert_subject, \
               rate_per_second, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
            &[
                &client.name,
                &client.programs,
                &client.scopes,
                &client.secret_hash,
                &client.cert_subject,
                &client.rate_per_second,
                &client.created_at,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Every client, revoked ones included, by name.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "clients::list"))]
pub async fn list(db: &impl GenericClient) -> Result<Vec<StoredClient>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(&format!("SELECT {COLUMNS} FROM api_clients ORDER BY name"))
        .await?;
    let rows = db.query(&statement, &[]).await?;
    rows.iter().map(from_row).collect()
}

/// One client by name.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "clients::get"))]
pub async fn get(
    db: &impl GenericClient,
    name: &str,
) -> Result<Option<StoredClient>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_clients WHERE name = $1"
        ))
        .await?;
    db.query_opt(&statement, &[&name])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Revokes a client at `now`; false when there is no such client. Revoking again keeps the
/// first instant.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "clients::revoke"))]
pub async fn revoke(
    db: &impl GenericClient,
    name: &str,
    now: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    let updated = db
        .execute(
            "UPDATE api_clients SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1",
            &[&name, &now],
        )
        .await?;
    Ok(updated == 1)
}

/// Gives a live client a new secret; the current one stays valid until `old_valid_until`.
/// False when there is no such live client.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "clients::rotate"))]
pub async fn rotate(
    db: &impl GenericClient,
    name: &str,
    secret_hash: &[u8],
    old_valid_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    let updated = db
        .execute(
            "UPDATE api_clients SET previous_secret_hash = secret_hash, \
               previous_valid_until = $3, secret_hash = $2, rotated_at = $4 \
             WHERE name = $1 AND revoked_at IS NULL",
            &[&name, &secret_hash, &old_valid_until, &now],
        )
        .await?;
    Ok(updated == 1)
}
