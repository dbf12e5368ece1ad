//! The command-line subcommands other than `serve`.
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{ProgramId, RulesDocument};
use crate::service::Programs;
use crate::store;
use deadpool_postgres::Pool;
use std::sync::Arc;

pub fn pool(settings: &Settings) -> anyhow::Result<Pool> {
    store::connect_pool(&settings.database_url, 2, settings.session_limits())
}

/// Creates the `demo` program the README's examples use: USD, 1 point per dollar,
/// purchases from $1, 500 points a day, points valid a year.
pub async fn create_demo_program(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let pool = pool(settings)?;
    store::migrate(&pool).await?;
    let rules = RulesDocument {
        currency: "USD".into(),
        timezone: "America/New_York".into(),
        base_rate_bp: 10_000,
        min_amount_minor: 100,
        daily_cap_points: Some(500),
        points_validity_days: 365,
        tiers: vec![],
    };
    let program = ProgramId::parse("demo")?;
    match Programs::new(pool, clock)
        .create(program, "Demo".into(), rules)
        .await
    {
        Ok((_, false)) => tracing::info!("created the demo program"),
        Ok((_, true)) => tracing::info!("the demo program exists"),
        Err(crate::service::Error::AlreadyExists(_)) => {
            tracing::info!("the demo program exists with other settings; kept them")
        }
        Err(error) => return Err(anyhow::Error::new(error)),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminated => {},
    }
    tracing::info!("shutting down");
}
