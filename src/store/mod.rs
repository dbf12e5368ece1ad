//! PostgreSQL storage: SQL only. Functions take the client or transaction explicitly;
//! balance-changing writes take a [`MemberTx`], which holds the member's lock.
pub mod audit;
pub mod batches;
pub mod clients;
pub mod entries;
mod error;
pub mod events;
pub mod graph;
pub mod hot_path;
pub mod jobs;
mod member_tx;
pub mod members;
pub mod mutation;
pub mod programs;
pub mod referrals;
pub mod reports;
pub mod tiers;

pub use error::{classify, DbFailure};
pub use member_tx::{MemberTx, LOCK_MEMBER, LOCK_MEMBERS};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;

refinery::embed_migrations!("migrations");

/// A sum of points across rows, computed by PostgreSQL in `numeric` (never `::bigint`,
/// which fails on a total past i64) and read as its text, `sum(...)::text`. Any Σ of
/// bigints a table can hold fits i128; the caller decides whether it fits what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum(pub i128);

impl<'a> tokio_postgres::types::FromSql<'a> for Sum {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = std::str::from_utf8(raw)?;
        let value = text
            .parse::<i128>()
            .map_err(|error| format!("sum {text:?} is not an i128: {error}"))?;
        Ok(Self(value))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TEXT
    }
}

/// `ledger_entries.kind` as the domain names it; an unknown name is an error, never a
/// guess. The impls live here so the domain stays free of IO.
impl<'a> tokio_postgres::types::FromSql<'a> for crate::domain::EntryKind {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let name = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
        Self::parse(name).ok_or_else(|| format!("unknown entry kind {name:?}").into())
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

impl tokio_postgres::types::ToSql for crate::domain::EntryKind {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Session limits applied to every pooled connection.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// How long a statement waits for a row or advisory lock before failing (retryable).
    pub lock_timeout: Duration,
    /// Upper bound of any one statement.
    pub statement_timeout: Duration,
    /// A transaction left open by a crashed or cancelled caller is ended by the server.
    pub idle_in_transaction_timeout: Duration,
}

/// Builds the connection pool. Connections are made lazily, so a server can start
/// while PostgreSQL is down and answer UNAVAILABLE until it is back.
pub fn connect_pool(
    database_url: &str,
    max_size: usize,
    limits: SessionLimits,
) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .context("FLASH_DATABASE_URL is not a valid URL")?;
    config.options(format!(
        "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        limits.lock_timeout.as_millis(),
        limits.statement_timeout.as_millis(),
        limits.idle_in_transaction_timeout.as_millis(),
    ));
    config.connect_timeout(Duration::from_secs(3));
    config.application_name("flash");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            // No round trip on checkout. A dropped tokio-postgres transaction queues its
            // ROLLBACK ahead of anything the next user sends on the connection, and every
            // unit of work runs to completion in its own task (`run_to_completion`), so
            // no connection comes back "idle in transaction" with work half done.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .context("building the PostgreSQL pool")
}

/// Applies pending migrations. A session advisory lock keeps two starting servers from
/// migrating at once.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    const MIGRATION_LOCK: i64 = 0x666c_6173_685f_6d69; // "flash_mi"
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = migrations::runner().run_async(&mut **client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = outcome.context("applying migrations")?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    // No ANALYZE here: on a fresh database it would record every table as empty, and with
    // autovacuum off the planner would go on believing it, caching sequential scans as the
    // tables grow. Never analyzed, a table is planned from its real size (tests/it/plans.rs
    // checks the hot path's plans empty, filled, and with or without statistics).
    Ok(())
}
