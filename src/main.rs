//! The `flash` binary: parse the command line, set up telemetry, run the subcommand.
use clap::Parser;
use flash_loyalty::app::Application;
use flash_loyalty::config::{Cli, Command};
use flash_loyalty::{commands, store, telemetry};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = match telemetry::init(&cli.settings) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("flash: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "flash failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    let clock = settings.clock();
    match cli.command {
        Command::Serve { no_workers } => {
            let app = Application::build(&settings, clock).await?;
            store::migrate(app.pool()).await?;
            let (stop_workers, stopped) = tokio::sync::oneshot::channel::<()>();
            let workers = (!no_workers).then(|| {
                let ledger = app.ledger().clone();
                let (replica, interval) = (settings.replica(), settings.worker_interval());
                tokio::spawn(async move {
                    ledger
                        .run_workers(replica, interval, async {
                            let _ = stopped.await;
                        })
                        .await
                })
            });
            app.serve(commands::shutdown_signal()).await?;
            let _ = stop_workers.send(());
            if let Some(workers) = workers {
                let _ = workers.await;
            }
        }
        Command::Worker => commands::worker(&settings, clock).await?,
        Command::Jobs { command } => return commands::jobs(&settings, clock, command).await,
        Command::Clients { command } => return commands::clients(&settings, clock, command).await,
        Command::Migrate => {
            let pool = commands::pool(&settings)?;
            store::migrate(&pool).await?;
        }
        Command::Demo => commands::create_demo_program(&settings, clock).await?,
        Command::Expire { as_of } => return commands::expire(&settings, clock, as_of).await,
        Command::Audit { program } => return commands::audit(&settings, clock, program).await,
    }
    Ok(ExitCode::SUCCESS)
}
