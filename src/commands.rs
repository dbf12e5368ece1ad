//! The command-line subcommands other than `serve`.
use crate::cap::DailyCap;
use crate::clock::Clock;
use crate::config::{ClientsCommand, JobsCommand, Settings};
use crate::domain::{ProgramId, RulesDocument};
use crate::service::{Job, Ledger, Programs, RunOutcome};
use crate::store;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::process::ExitCode;
use std::sync::Arc;

pub fn pool(settings: &Settings) -> anyhow::Result<Pool> {
    pool_of(settings, 2)
}

fn pool_of(settings: &Settings, size: usize) -> anyhow::Result<Pool> {
    store::connect_pool(&settings.database_url, size, settings.session_limits())
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
        referrer_points: 300,
        referee_points: 100,
        referral_qualify_min_amount_minor: 2_000,
        ..RulesDocument::earning("USD", "America/New_York", 10_000, 100, Some(500), 365)
    };
    let program = ProgramId::parse("demo")?;
    match Programs::new(pool, clock)
        .create(program, "Demo".into(), rules, "flash-demo-command")
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
    ledger_on(settings, clock, pool(settings)?)
}

fn ledger_on(settings: &Settings, clock: Arc<dyn Clock>, pool: Pool) -> anyhow::Result<Ledger> {
    let cap = DailyCap::connect(
        &settings.redis_url,
        &settings.redis_prefix,
        settings.redis_timeout(),
    )?;
    Ok(Ledger::new(pool, cap, clock))
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

/// `flash worker`: the workers alone, until SIGINT or SIGTERM.
pub async fn worker(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let pool = pool_of(settings, settings.db_pool_size)?;
    store::migrate(&pool).await?;
    let ledger = ledger_on(settings, clock, pool)?;
    ledger
        .run_workers(
            settings.replica(),
            settings.worker_interval(),
            shutdown_signal(),
        )
        .await;
    Ok(())
}

/// `flash jobs run JOB [--at]` and `flash jobs list`.
pub async fn jobs(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    command: JobsCommand,
) -> anyhow::Result<ExitCode> {
    let ledger = ledger(settings, clock.clone())?;
    match command {
        JobsCommand::Run { job: name, at } => {
            let Some(job) = Job::parse(&name) else {
                let known: Vec<&str> = Job::ALL.iter().map(|job| job.name()).collect();
                eprintln!(
                    "flash jobs run: no job {name:?}; the jobs are {}",
                    known.join(", ")
                );
                return Ok(ExitCode::from(2));
            };
            let at = at.unwrap_or_else(|| clock.now());
            let outcome = match ledger.run_job(job, at, &settings.replica()).await {
                Ok(outcome) => outcome,
                Err(crate::service::Error::InvalidArgument(invalid)) => {
                    eprintln!("flash jobs run: {invalid}");
                    return Ok(ExitCode::from(2));
                }
                Err(error) => return Err(anyhow::Error::new(error)),
            };
            match outcome {
                RunOutcome::Done { counts, takeovers } => {
                    println!(
                        "{} as of {at}: examined {}, changed {}, amount {}, failed {}, \
                         skipped {}{}",
                        job.name(),
                        counts.examined,
                        counts.changed,
                        counts.amount,
                        counts.failed,
                        counts.skipped,
                        if takeovers > 0 { " (taken over)" } else { "" }
                    );
                    Ok(if counts.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                RunOutcome::NotClaimed => {
                    println!(
                        "{}: the run of slot {} is finished or held by another replica",
                        job.name(),
                        job.slot(at, settings.replica().period)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                RunOutcome::LeaseLost => {
                    eprintln!("{}: another replica took the run over", job.name());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        JobsCommand::List => {
            let (runs, failures) = ledger.job_report().await?;
            println!("recent runs:");
            for run in runs {
                println!(
                    "  {:<14} slot {}  by {}  started {}  {}  takeovers {}  {}",
                    run.job,
                    run.slot.to_rfc3339(),
                    run.claimed_by,
                    run.started_at.to_rfc3339(),
                    run.finished_at.map_or("running".to_owned(), |at| format!(
                        "finished {}",
                        at.to_rfc3339()
                    )),
                    run.takeovers,
                    run.counts
                );
            }
            println!("members jobs could not process:");
            for failure in failures {
                println!(
                    "  {:<14} {} {}  attempts {}  {}  last error: {}",
                    failure.job,
                    failure.program_id,
                    failure.member_id,
                    failure.attempts,
                    if failure.parked {
                        "PARKED".to_owned()
                    } else {
                        format!("next try {}", failure.next_attempt_at.to_rfc3339())
                    },
                    failure.last_error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

/// `flash clients …`: exit code 2 on a refused request (a bad name, an unknown client).
pub async fn clients(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    command: ClientsCommand,
) -> anyhow::Result<ExitCode> {
    use crate::domain::{ClientName, ProgramAccess, Scopes};
    let pool = pool(settings)?;
    store::migrate(&pool).await?;
    let clients = settings.clients(pool, clock)?;
    let done = match command {
        ClientsCommand::Add {
            name,
            programs,
            scopes,
            cert_subject,
            rate,
        } => {
            let command = ClientName::parse(&name).and_then(|name| {
                Ok(crate::service::NewClientCommand {
                    name,
                    programs: ProgramAccess::parse(programs.iter().map(String::as_str))?,
                    scopes: Scopes::parse(scopes.iter().map(String::as_str))?,
                    cert_subject,
                    rate_per_second: rate,
                })
            });
            match command {
                Ok(command) => clients.add(command).await.map(|(client, token)| {
                    println!(
                        "client {} may call programs {} with scopes {}",
                        client.name,
                        client.programs.join(","),
                        client.scopes.join(",")
                    );
                    println!("its bearer token, shown once (send `authorization: Bearer <token>`):");
                    println!("{}", token.expose());
                }),
                Err(invalid) => Err(invalid.into()),
            }
        }
        ClientsCommand::List => clients.list().await.map(|listed| {
            println!("name\tprograms\tscopes\tcert_subject\trate\tcreated_at\tstatus");
            for client in listed {
                let status = match (client.revoked_at, client.previous_valid_until) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(until)) => format!("live; the previous secret is valid until {until}"),
                    (None, None) => "live".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{status}",
                    client.name,
                    client.programs.join(","),
                    client.scopes.join(","),
                    client.cert_subject.as_deref().unwrap_or("-"),
                    client
                        .rate_per_second
                        .map_or_else(|| "default".to_owned(), |rate| rate.to_string()),
                    client.created_at,
                );
            }
        }),
        ClientsCommand::Revoke { name } => match ClientName::parse(&name) {
            Ok(name) => clients.revoke(&name).await.map(|()| {
                println!("client {name} is revoked: every replica refuses it within {} ms", settings.clients_refresh_ms);
            }),
            Err(invalid) => Err(invalid.into()),
        },
        ClientsCommand::Check => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            clients
                .authenticate(token.trim())
                .await
                .map(|(caller, _)| println!("the token authenticates client {}", caller.name))
        }
        ClientsCommand::Rotate {
            name,
            grace_seconds,
        } => match ClientName::parse(&name) {
            Ok(name) => clients
                .rotate(&name, std::time::Duration::from_secs(grace_seconds))
                .await
                .map(|token| {
                    println!("client {name} has a new secret; the old one stays valid for {grace_seconds} s");
                    println!("its new bearer token, shown once:");
                    println!("{}", token.expose());
                }),
            Err(invalid) => Err(invalid.into()),
        },
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(crate::service::Error::Unexpected(error)) => Err(error),
        Err(crate::service::Error::Unavailable(unavailable)) => Err(anyhow::anyhow!(
            "the database is unavailable: {unavailable:?}"
        )),
        Err(refused) => {
            eprintln!("flash clients: {refused}");
            Ok(ExitCode::from(2))
        }
    }
}
