//! `flash-chaos`: a seeded chaos driver for the ledger. For each seed it starts a private
//! PostgreSQL cluster, a private Redis behind a controllable proxy and one or two
//! `flash serve` processes; runs concurrent clients that retry every call without a
//! definite answer under its idempotency key; injects faults on a seeded schedule (server
//! SIGKILL, Redis cut/freeze/flush/restart, backend termination, PostgreSQL crash-restart,
//! cancelled calls); then heals everything and checks the ledger against the model of
//! acknowledged outcomes.
//!
//! ```text
//! flash-chaos --seed 7 [--seconds 8] [--servers 1|2]
//! flash-chaos --seeds 1..20            # inclusive; prints a table
//! ```
mod checks;
mod faults;
mod infra;
mod workload;

use clap::Parser;
use flash_loyalty::grpc::proto::{self, programs_client::ProgramsClient};
use flash_testing_support::dispatch::Bearer;
use infra::Infra;
use rand::Rng;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{Ctx, Fate, PROGRAM};

#[derive(Debug, Parser)]
#[command(
    name = "flash-chaos",
    about = "Seeded chaos runs against the Flash ledger"
)]
struct Cli {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run every seed of an inclusive range, e.g. `1..100`.
    #[arg(long)]
    seeds: Option<String>,
    /// Seconds of workload and faults per run (healing and checks come after).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// `flash serve` processes; by default 1 for even seeds and 2 for odd ones.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    servers: Option<u8>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Members; the first eighth of them are hot.
    #[arg(long, default_value_t = 24)]
    members: usize,
    /// Run the workload without injecting faults (for telling faults from plain bugs).
    #[arg(long)]
    no_faults: bool,
    /// Self-test: corrupt one batch before the checks, which must then fail.
    #[arg(long, hide = true)]
    corrupt: bool,
}

struct RunConfig {
    seed: u64,
    seconds: f64,
    servers: usize,
    clients: usize,
    members: usize,
    faults: bool,
    corrupt: bool,
}

impl RunConfig {
    fn replay_command(&self) -> String {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| {
                let cwd = std::env::current_dir().ok()?;
                Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
            })
            // A binary rebuilt under a running process reads as "… (deleted)".
            .map(|p| {
                p.display()
                    .to_string()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_else(|| "target/debug/flash-chaos".into());
        let mut command = format!(
            "{exe} --seed {} --seconds {} --servers {} --clients {} --members {}",
            self.seed, self.seconds, self.servers, self.clients, self.members
        );
        if !self.faults {
            command.push_str(" --no-faults");
        }
        if self.corrupt {
            command.push_str(" --corrupt");
        }
        command
    }
}

struct Report {
    seed: u64,
    servers: usize,
    ops: u64,
    keys: usize,
    acked: usize,
    refused: usize,
    retries: u64,
    faults: BTreeMap<&'static str, u32>,
    max_rss_mib: u64,
    failures: Vec<String>,
    notes: Vec<String>,
    server_errors: Vec<String>,
    elapsed: Duration,
    replay: String,
}

impl Report {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn faults_text(&self) -> String {
        if self.faults.is_empty() {
            return "none".into();
        }
        self.faults
            .iter()
            .map(|(name, count)| format!("{name}:{count}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn summary(&self) -> String {
        format!(
            "seed={} servers={} ops={} keys={} acked={} refused={} retries={} faults={} \
             max_rss={}MiB outcome={} time={:.1}s",
            self.seed,
            self.servers,
            self.ops,
            self.keys,
            self.acked,
            self.refused,
            self.retries,
            self.faults_text(),
            self.max_rss_mib,
            if self.passed() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64()
        )
    }

    fn print(&self) {
        println!("{}", self.summary());
        for note in &self.notes {
            println!("  note: {note}");
        }
        if !self.passed() {
            for failure in &self.failures {
                println!("  FAIL: {failure}");
            }
            for line in &self.server_errors {
                println!("  log: {line}");
            }
            println!("  seed {} failed; replay with: {}", self.seed, self.replay);
        }
    }
}

/// The bonuses the workers pay during a run.
pub const BIRTHDAY_BONUS: i64 = 25;
pub const REENGAGEMENT_BONUS: i64 = 15;

async fn create_program(
    endpoint: &str,
    token: &str,
    daily_cap_points: i64,
    validity_days: i32,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut programs = ProgramsClient::with_interceptor(channel, Bearer::new(token));
    let request = proto::CreateProgramRequest {
        program_id: PROGRAM.into(),
        name: "Chaos".into(),
        rules: Some(proto::ProgramRules {
            currency: "USD".into(),
            timezone: "Europe/Paris".into(),
            base_rate_bp: 10_000,
            min_amount_minor: 100,
            daily_cap_points: Some(daily_cap_points),
            points_validity_days: validity_days,
            tiers: vec![],
            birthday_bonus_points: Some(BIRTHDAY_BONUS),
            reengagement_after_days: Some(90),
            reengagement_bonus_points: Some(REENGAGEMENT_BONUS),
            reupgrade_bonus_points: Some(10),
            referrer_points: Some(workload::REFERRER_POINTS),
            referee_points: Some(workload::REFEREE_POINTS),
            // Low enough that hot referrers meet the daily quota during a run.
            max_invites_per_day: Some(4),
            referral_qualify_min_amount_minor: Some(workload::REFERRAL_MIN_AMOUNT_MINOR),
            referral_clawback_days: Some(30),
            ..Default::default()
        }),
    };
    let mut last = None;
    for _ in 0..100 {
        match programs.create_program(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("CreateProgram kept failing: {last:?}")
}

async fn run_seed(config: &RunConfig) -> Report {
    let started = Instant::now();
    let mut report = Report {
        seed: config.seed,
        servers: config.servers,
        ops: 0,
        keys: 0,
        acked: 0,
        refused: 0,
        retries: 0,
        faults: BTreeMap::new(),
        max_rss_mib: 0,
        failures: Vec::new(),
        notes: Vec::new(),
        server_errors: Vec::new(),
        elapsed: Duration::ZERO,
        replay: config.replay_command(),
    };
    match Infra::start(config.seed, config.servers).await {
        Ok(infra) => {
            run_with(config, &infra, &mut report).await;
            if !report.passed() {
                report.server_errors = infra.server_errors(8);
                if let Ok(dir) = std::env::var("FLASH_CHAOS_KEEP_LOGS") {
                    let dir = std::path::Path::new(&dir).join(format!("seed-{}", config.seed));
                    match infra.keep_logs(&dir) {
                        Ok(()) => report.notes.push(format!("logs kept in {}", dir.display())),
                        Err(error) => report.notes.push(format!("keeping logs: {error}")),
                    }
                }
            }
            drop(infra);
        }
        Err(error) => report.failures.push(format!("setup: {error:#}")),
    }
    report.elapsed = started.elapsed();
    report
}

async fn run_with(config: &RunConfig, infra: &Arc<Infra>, report: &mut Report) {
    let seed = config.seed;
    let mut setup_rng = workload::rng_for(seed, 0);
    let daily_cap_points = setup_rng.random_range(150..=600);
    let validity_days = setup_rng.random_range(1..=2);
    let endpoints = infra.endpoints();
    if let Err(error) =
        create_program(&endpoints[0], &infra.token, daily_cap_points, validity_days).await
    {
        report.failures.push(format!("setup: {error:#}"));
        return;
    }
    let ctx = Arc::new(Ctx::new(
        seed,
        &endpoints,
        &infra.token,
        &mut setup_rng,
        config.members,
    ));
    *ctx.give_up_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(60));
    if let Err(error) = ctx.enroll_all(&mut setup_rng).await {
        report.failures.push(format!("setup: {error:#}"));
        return;
    }
    *ctx.give_up_at.lock().unwrap() = None;

    let injected: faults::Injected = Arc::new(Mutex::new(BTreeMap::new()));
    let run_started = chrono::Utc::now();
    let rss = {
        let infra = infra.clone();
        tokio::spawn(async move {
            loop {
                infra.sample_rss();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let clients: Vec<_> = (0..config.clients)
        .map(|id| {
            let ctx = ctx.clone();
            let rng = workload::rng_for(seed, 100 + id as u64);
            tokio::spawn(async move { ctx.client(id, rng).await })
        })
        .collect();
    let fault_task = config.faults.then(|| {
        tokio::spawn(faults::schedule(
            infra.clone(),
            ctx.clone(),
            workload::rng_for(seed, 1),
            injected.clone(),
        ))
    });
    let sweep_task = if faults::sweeps_supported(infra) {
        Some(tokio::spawn(faults::sweeps(
            infra.clone(),
            ctx.clone(),
            workload::rng_for(seed, 2),
            run_started,
            i64::from(validity_days),
            injected.clone(),
        )))
    } else {
        ctx.stats
            .note("flash has no clock offset setting: no expiry sweeps");
        None
    };

    tokio::time::sleep(Duration::from_secs_f64(config.seconds)).await;
    ctx.stop.store(true, Ordering::SeqCst);
    for task in fault_task.into_iter().chain(sweep_task) {
        if let Err(error) = task.await {
            ctx.stats.fail(format!("fault task: {error}"));
        }
    }
    if let Err(error) = infra.heal().await {
        ctx.stats.fail(format!("final heal: {error:#}"));
    }
    if let Err(error) = infra.ping_redis_via_proxy().await {
        ctx.stats.fail(format!(
            "harness: Redis unreachable through the healed proxy: {error:#}"
        ));
    }
    // Let every client's retries settle; a key still without an answer then is a finding.
    *ctx.give_up_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(45));
    for client in clients {
        if let Err(error) = client.await {
            ctx.stats.fail(format!("client task: {error}"));
        }
    }
    *ctx.give_up_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(30));
    infra.sample_rss();
    if config.corrupt {
        if let Err(error) = checks::corrupt(infra).await {
            ctx.stats.fail(format!("corrupting: {error:#}"));
        }
    }
    let mut check_rng = workload::rng_for(seed, 3);
    checks::run(
        infra,
        &ctx,
        &mut check_rng,
        &checks::Limits {
            daily_cap_points,
            max_rss_kib: 512 * 1024,
        },
    )
    .await;
    rss.abort();

    let model = ctx.model.lock().unwrap();
    report.ops = ctx.stats.ops.load(Ordering::Relaxed);
    report.keys = model.keys.len();
    report.acked = model
        .keys
        .values()
        .filter(|r| matches!(r.fate, Fate::Acked))
        .count();
    report.refused = model
        .keys
        .values()
        .filter(|r| matches!(r.fate, Fate::Refused(_)))
        .count();
    report.retries = ctx.stats.retries.load(Ordering::Relaxed);
    report.faults = injected.lock().unwrap().clone();
    let restarts = infra.total_server_starts() as usize - config.servers;
    if restarts > 0 {
        report.faults.insert("server_restarts", restarts as u32);
    }
    report.max_rss_mib = infra.max_rss_kib.load(Ordering::Relaxed) / 1024;
    report
        .failures
        .extend(ctx.stats.failures.lock().unwrap().iter().cloned());
    report
        .notes
        .extend(ctx.stats.notes.lock().unwrap().iter().cloned());
    report.notes.push(format!(
        "{} awards capped (cap {daily_cap_points}/day, points valid {validity_days} days)",
        ctx.stats.capped.load(Ordering::Relaxed)
    ));
    let per_op = ctx.stats.per_op.lock().unwrap();
    report.notes.push(format!(
        "ops: {}",
        per_op
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    ));
    let refusals = ctx.stats.refusals.lock().unwrap();
    if !refusals.is_empty() {
        report.notes.push(format!(
            "refusals: {}",
            refusals
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once("..")?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let seeds: Vec<u64> = match (&cli.seed, &cli.seeds) {
        (Some(seed), _) => vec![*seed],
        (None, Some(range)) => match parse_range(range) {
            Some((a, b)) => (a..=b).collect(),
            None => {
                eprintln!("flash-chaos: --seeds wants A..B (inclusive), got {range}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("flash-chaos: give --seed N or --seeds A..B");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for seed in &seeds {
            let config = RunConfig {
                seed: *seed,
                seconds: cli.seconds,
                servers: cli
                    .servers
                    .map_or(if seed % 2 == 1 { 2 } else { 1 }, usize::from),
                clients: cli.clients,
                members: cli.members,
                faults: !cli.no_faults,
                corrupt: cli.corrupt,
            };
            let report = tokio::select! {
                report = run_seed(&config) => report,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("flash-chaos: interrupted; cleaning up");
                    return None;
                }
            };
            report.print();
            reports.push(report);
        }
        Some(reports)
    });
    // Dropping the runtime drops every task, and with them the last handles on the
    // clusters and servers, which kills them.
    drop(runtime);
    let Some(reports) = reports else {
        return ExitCode::from(130);
    };
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
    if reports.len() > 1 {
        println!();
        println!(
            "{:>6} {:>7} {:>6} {:>7} {:>8}  {:<6} {:>7}  faults",
            "seed", "servers", "ops", "acked", "retries", "result", "time"
        );
        for r in &reports {
            println!(
                "{:>6} {:>7} {:>6} {:>7} {:>8}  {:<6} {:>6.1}s  {}",
                r.seed,
                r.servers,
                r.ops,
                r.acked,
                r.retries,
                if r.passed() { "PASS" } else { "FAIL" },
                r.elapsed.as_secs_f64(),
                r.faults_text()
            );
        }
        println!(
            "{} of {} seeds passed",
            reports.len() - failed.len(),
            reports.len()
        );
        for r in &failed {
            println!("failed seed {}: {}", r.seed, r.replay);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
