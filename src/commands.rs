//! The command-line subcommands other than `serve`.
use crate::cap::DailyCap;
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{ProgramId, RulesDocument};
use crate::service::{Ledger, Programs};
use crate::store;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::process::ExitCode;
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
        grace_reminder_days: vec![7, 1],
        reupgrade_bonus_points: 200,
        birthday_bonus_points: 100,
        reengagement_after_days: Some(90),
        reengagement_bonus_points: 50,
        ..RulesDocument::earning("USD", "America/New_York", 10_000, 100, Some(500), 365)
    };
    let program = ProgramId::parse("demo")?;
    match Programs::new(pool, clock)
        .create(program, "Demo".into(), rules)
        .await
    {
        Ok((_, false)) => tracing::info!("created the demo program"),
        Ok((_, true)) => tracing::info!("the demo program exists"),
        Err(crate::service::Error::ProgramExists { .. }) => {
            tracing::info!("the demo program exists with other settings; kept them")
        }
        Err(error) => return Err(anyhow::Error::new(error)),
    }
    Ok(())
}

/// A ledger for one-shot commands: they read and write PostgreSQL only.
fn ledger(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Ledger> {
    let cap = DailyCap::connect(
        &settings.redis_url,
        &settings.redis_prefix,
        settings.redis_timeout(),
    )?;
    Ok(Ledger::new(pool(settings)?, cap, clock))
}

/// `flash expire`: one sweep; fails when any member could not be expired.
pub async fn expire(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    as_of: Option<DateTime<Utc>>,
) -> anyhow::Result<ExitCode> {
    let as_of = as_of.unwrap_or_else(|| clock.now());
    let outcome = match ledger(settings, clock)?.expire_due(as_of).await {
        Ok(outcome) => outcome,
        Err(crate::service::Error::InvalidArgument(invalid)) => {
            eprintln!("flash expire: {invalid}");
            return Ok(ExitCode::from(2));
        }
        Err(error) => return Err(anyhow::Error::new(error)),
    };
    println!(
        "expired {} points of {} members as of {as_of}; {} members failed",
        outcome.points_expired, outcome.members_expired, outcome.members_failed
    );
    Ok(if outcome.members_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `flash audit`: prints one report per program; exit code 1 on any violation.
pub async fn audit(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    program: Option<String>,
) -> anyhow::Result<ExitCode> {
    let ledger = ledger(settings, clock)?;
    let programs = match program {
        Some(program) => vec![program],
        None => store::programs::list_ids(&**pool(settings)?.get().await?).await?,
    };
    let mut clean = true;
    for program in programs {
        let report = ledger.audit(&ProgramId::parse(&program)?).await?;
        print!("{report}");
        clean &= report.is_clean();
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
