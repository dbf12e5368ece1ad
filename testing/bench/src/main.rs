//! `flash-bench`: a benchmark of the ledger's hot paths, never a pass/fail test.
//!
//! It recreates its own database, migrates it with `flash migrate`, starts a release
//! `flash serve`, seeds a program through gRPC (`EnrollMember`, `EnrollBatch`,
//! `AwardBatch`) and reports the seeding rates; then, for each workload (award, spend, mixed 80/20, hot members) and
//! client count, drives the server for a fixed time and runs pgbench on the SQL the service
//! issues (`store::hot_path`) at the same client count, against the same database. Absolute
//! figures on a shared machine are noise; the ratio ours / pgbench is the figure.
//!
//! ```text
//! flash-bench [--members 100000] [--entries 1000000] [--seconds 10] [--clients 1,4,16,64]
//!             [--history-sizes 10000] [--analyze]
//! ```
//! Award and spend are also measured at each smaller `--history-sizes` (the history is
//! seeded up to each size in turn), for "cost independent of history size".
mod infra;
mod load;
mod pgbench;
mod report;

use anyhow::ensure;
use clap::Parser;
use infra::{Database, FlashEnv, ProcStats, Server};
use pgbench::Pgbench;
use report::{Cell, Report, Seeding};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "flash-bench",
    about = "Throughput and latency of awards and spends, beside pgbench"
)]
struct Cli {
    /// Members enrolled in the benchmark program.
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// Seeded awards: the ledger's history when the full matrix runs.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Seconds of each workload, for us and for pgbench alike.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of each workload.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Smaller histories at which award and spend are measured first (with
    /// `--history-clients` clients); sizes not below `--entries` are the full run.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    history_sizes: Vec<usize>,
    /// Clients of the measurements at the smaller histories.
    #[arg(long, default_value_t = 16)]
    history_clients: usize,
    /// Members of the hot-member workload: the advisory lock's worst case.
    #[arg(long, default_value_t = 10)]
    hot_members: usize,
    /// Clients of the hot-member workload.
    #[arg(long, default_value_t = 16)]
    hot_clients: usize,
    /// Concurrent `AwardBatch` and `EnrollBatch` calls while seeding (500 items each);
    /// single `EnrollMember` calls run four times as many.
    #[arg(long, default_value_t = 4)]
    seed_concurrency: usize,
    /// Runs ANALYZE after seeding: the "fresh statistics" variant. Without it the planner
    /// has none, as on a machine without autovacuum.
    #[arg(long)]
    analyze: bool,
    /// The benchmark's database, dropped and created again on every run; its name must
    /// start with `flash_bench`.
    #[arg(
        long,
        env = "FLASH_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flash_bench"
    )]
    database_url: String,
    #[arg(
        long,
        env = "FLASH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// `FLASH_DB_POOL_SIZE` of the server; its own default when unset.
    #[arg(long)]
    pool_size: Option<usize>,
    /// Where the report, the pgbench scripts and the server log go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

impl Cli {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|c| *c >= 1),
            "--clients needs at least one count, each at least 1"
        );
        ensure!(
            self.hot_members >= 1 && self.members >= self.hot_members,
            "--members must be at least --hot-members"
        );
        ensure!(
            self.entries >= self.hot_members,
            "--entries must fund at least the hot members"
        );
        ensure!(self.seconds >= 1, "--seconds must be at least 1");
        Ok(())
    }

    /// The history sizes to seed to, ascending; the last is `--entries`.
    fn sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = self
            .history_sizes
            .iter()
            .copied()
            .filter(|size| *size > 0 && *size < self.entries)
            .collect();
        sizes.push(self.entries);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    Award,
    Spend,
    Mixed,
    Hot,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Award => "award",
            Workload::Spend => "spend",
            Workload::Mixed => "mixed 80/20",
            Workload::Hot => "hot members",
        }
    }

    fn award_share(self) -> f64 {
        match self {
            Workload::Award => 1.0,
            Workload::Spend => 0.0,
            Workload::Mixed | Workload::Hot => 0.8,
        }
    }
}

/// What every measurement shares.
struct Bench {
    cli: Cli,
    database: Database,
    server: Server,
    api: load::Api,
    pgbench: Pgbench,
    proc_stats: ProcStats,
    cells: usize,
}

impl Bench {
    /// Ours, then pgbench, for one workload at one client count.
    async fn measure(
        &mut self,
        workload: Workload,
        clients: usize,
        funded: usize,
    ) -> anyhow::Result<Cell> {
        self.cells += 1;
        let history = self.database.entry_count().await?;
        let (award_members, spend_members) = match workload {
            Workload::Hot => (self.cli.hot_members, self.cli.hot_members),
            _ => (self.cli.members, funded),
        };
        let mix = load::Mix {
            award_share: workload.award_share(),
            award_members: 1..=award_members,
            spend_members: 1..=spend_members,
        };
        let duration = Duration::from_secs(self.cli.seconds);
        let pid = self.server.pid();
        let cpu_before = self.proc_stats.cpu_time(pid);
        let tag = format!("c{}", self.cells);
        let ours = load::run(&self.api, &mix, clients, duration, &tag).await?;
        let server_cpu = cpu_before
            .zip(self.proc_stats.cpu_time(pid))
            .map(|(before, after)| after.saturating_sub(before));
        let baseline = tokio::task::block_in_place(|| {
            self.pgbench.run(
                &self.database.url,
                workload.award_share(),
                award_members,
                spend_members,
                clients,
                duration,
            )
        })
        .map_err(|error| format!("{error:#}"));
        let cell = Cell {
            workload: workload.name(),
            clients,
            history,
            ours,
            server_cpu,
            baseline,
        };
        say(&format!(
            "{:<12} clients={:<3} entries={:<8} ours={:>8.1} ok/s  pgbench={} tps  errors={:?}",
            cell.workload,
            clients,
            history,
            cell.ours.ok_per_second(),
            cell.baseline
                .as_ref()
                .map_or_else(|e| format!("failed ({e})"), |b| format!("{:.1}", b.tps)),
            cell.ours.errors
        ));
        Ok(cell)
    }

    /// The workloads at one history size: award and spend at the history clients for a
    /// smaller history, every workload at every client count for the full one.
    fn plan(&self, full: bool) -> Vec<(Workload, usize)> {
        if !full {
            let clients = self.cli.history_clients;
            return vec![(Workload::Award, clients), (Workload::Spend, clients)];
        }
        let mut plan = Vec::new();
        for workload in [Workload::Award, Workload::Spend, Workload::Mixed] {
            plan.extend(self.cli.clients.iter().map(|clients| (workload, *clients)));
        }
        plan.push((Workload::Hot, self.cli.hot_clients));
        plan
    }
}

fn say(message: &str) {
    eprintln!("flash-bench: {message}");
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            say(&format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.check()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let database = Database::parse(&cli.database_url)?;
    std::fs::create_dir_all(&cli.out)?;
    let pgbench = Pgbench::prepare(&cli.out.join("pgbench"))?;
    let flash = FlashEnv {
        binary: infra::flash_binary()?,
        database_url: database.url.clone(),
        redis_url: cli.redis_url.clone(),
        redis_prefix: format!("flash-bench:{}:", std::process::id()),
        pool_size: cli.pool_size,
    };
    say(&format!("recreating database {}", database.name));
    database.recreate().await?;
    flash.migrate()?;
    let token = flash.add_client()?;
    let server = flash.serve(&cli.out.join("server.log"))?;
    say(&format!(
        "flash serve (pid {}) on {}",
        server.pid(),
        server.endpoint()
    ));
    let api = load::Api {
        endpoint: server.endpoint(),
        token,
    };
    load::create_program(&api).await?;

    let mut report = Report {
        command,
        setup: vec![
            ("members".into(), cli.members.to_string()),
            ("seconds per workload".into(), cli.seconds.to_string()),
            ("statistics".into(), statistics_note(cli.analyze).into()),
            ("server".into(), format!("{} serve", flash.binary.display())),
            (
                "server pool size".into(),
                cli.pool_size
                    .map_or("the default (FLASH_DB_POOL_SIZE)".into(), |s| s.to_string()),
            ),
            ("baseline".into(), pgbench.version()),
            ("cores".into(), cores().to_string()),
        ],
        seeding: Vec::new(),
        cells: Vec::new(),
        peak_rss_kib: None,
        server_cpu_total: None,
    };
    let mut bench = Bench {
        database,
        server,
        api,
        pgbench,
        proc_stats: ProcStats::new(),
        cells: 0,
        cli,
    };
    let cpu_start = bench.proc_stats.cpu_time(bench.server.pid());

    // A tenth of the members one call each (EnrollMember's own rate), the rest as a
    // back-fill would enrol them (EnrollBatch).
    let single = (bench.cli.members / 10)
        .clamp(1, 10_000)
        .min(bench.cli.members);
    say(&format!("enrolling {single} members one by one"));
    let rate = load::enrol(&bench.api, 1..single + 1, bench.cli.seed_concurrency * 4).await?;
    say(&format!("enrolled at {:.0}/s", rate.per_second()));
    report.seeding.push(Seeding {
        what: "EnrollMember".into(),
        rate,
    });
    say(&format!(
        "enrolling {} members in batches",
        bench.cli.members - single
    ));
    let rate = load::enrol_batches(
        &bench.api,
        single + 1..bench.cli.members + 1,
        bench.cli.seed_concurrency,
    )
    .await?;
    say(&format!("enrolled at {:.0} items/s", rate.per_second()));
    report.seeding.push(Seeding {
        what: "EnrollBatch items".into(),
        rate,
    });

    let sizes = bench.cli.sizes();
    let mut seeded = 0;
    for (index, size) in sizes.iter().copied().enumerate() {
        say(&format!("seeding awards up to {size} entries"));
        let rate = load::seed_awards(
            &bench.api,
            bench.cli.members,
            seeded,
            size,
            bench.cli.seed_concurrency,
        )
        .await?;
        say(&format!("awarded at {:.0} items/s", rate.per_second()));
        report.seeding.push(Seeding {
            what: format!("AwardBatch items, history {seeded} → {size}"),
            rate,
        });
        seeded = size;
        bench.database.checkpoint().await?;
        if bench.cli.analyze {
            bench.database.analyze().await?;
        }
        let funded = seeded.min(bench.cli.members);
        let full = index + 1 == sizes.len();
        for (workload, clients) in bench.plan(full) {
            let cell = bench.measure(workload, clients, funded).await?;
            report.cells.push(cell);
        }
    }

    let pid = bench.server.pid();
    report.peak_rss_kib = bench.proc_stats.peak_rss_kib(pid);
    report.server_cpu_total = cpu_start
        .zip(bench.proc_stats.cpu_time(pid))
        .map(|(before, after)| after.saturating_sub(before));
    let markdown = report.markdown();
    println!("{markdown}");
    let path = bench.cli.out.join("report.md");
    std::fs::write(&path, markdown)?;
    say(&format!("report written to {}", path.display()));
    Ok(())
}

fn statistics_note(analyze: bool) -> &'static str {
    if analyze {
        "ANALYZE after each seeding step"
    } else {
        "none collected by the benchmark (no ANALYZE; autovacuum as configured)"
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
