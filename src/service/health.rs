//! What the server can do right now: PostgreSQL reachable (every service needs it), Redis
//! reachable (capped awards need it; without it they are refused, the rest goes on).
use super::Ledger;
use std::time::Duration;

/// The longest a PostgreSQL probe may take before the database counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer of a readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub postgres: bool,
    pub redis: bool,
}

impl Ledger {
    /// Whether a pooled connection answers `SELECT 1` within [`PROBE_TIMEOUT`].
    pub async fn postgres_up(&self) -> bool {
        let probe = async {
            let client = self.db.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Some(_))
        )
    }

    /// Both dependencies, probed at once.
    pub async fn readiness(&self) -> Readiness {
        let (postgres, redis) = tokio::join!(self.postgres_up(), self.cap.ping());
        Readiness { postgres, redis }
    }

    /// The PostgreSQL pool's size, connections in use and callers waiting.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.db.status()
    }
}
