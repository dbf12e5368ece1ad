//! What one run owns outside itself: its database (dropped and created again on every
//! run), the migrated schema, one release `flash serve` process, and what `/proc` says
//! about that process.
use anyhow::{ensure, Context};
use flash_testing_support::process::{self, FlashServer, ScratchDatabase};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The prefix every benchmark database name must start with: the run drops the database
/// it is given, so it refuses any name that could belong to the application or the tests.
const DATABASE_PREFIX: &str = "flash_bench";

/// The benchmark database (a scratch database: dropped and created again on every run).
pub struct Database(ScratchDatabase);

impl std::ops::Deref for Database {
    type Target = ScratchDatabase;

    fn deref(&self) -> &ScratchDatabase {
        &self.0
    }
}

impl Database {
    pub fn parse(url: &str) -> anyhow::Result<Database> {
        let database = ScratchDatabase::from_url(url)?;
        let name = &database.name;
        ensure!(
            name.starts_with(DATABASE_PREFIX)
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "the benchmark drops its database, so its name must start with `{DATABASE_PREFIX}` \
             and hold only letters, digits and `_`; got `{name}`"
        );
        Ok(Database(database))
    }

    async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
        ScratchDatabase::connect(url, "flash-bench").await
    }

    /// Writes the seeded pages out now, so the checkpoint a bulk load triggers does not land
    /// in the middle of the first measured cell.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        Self::connect(&self.url)
            .await?
            .batch_execute("CHECKPOINT")
            .await?;
        Ok(())
    }

    /// Fresh planner statistics, for the `--analyze` variant.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        Self::connect(&self.url)
            .await?
            .batch_execute("ANALYZE")
            .await?;
        Ok(())
    }

    /// How many ledger entries the database holds.
    pub async fn entry_count(&self) -> anyhow::Result<u64> {
        let row = Self::connect(&self.url)
            .await?
            .query_one("SELECT count(*) FROM ledger_entries", &[])
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

/// The `flash` binary next to this executable: `make bench` builds both in target/release.
pub fn flash_binary() -> anyhow::Result<PathBuf> {
    process::flash_binary("cargo build --release --bins")
}

/// The environment every `flash` command of the run gets.
pub struct FlashEnv {
    pub binary: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    /// `FLASH_DB_POOL_SIZE`; None keeps the server's default.
    pub pool_size: Option<usize>,
}

impl FlashEnv {
    /// `flash` with the run's environment, no arguments yet.
    fn flash(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("FLASH_DATABASE_URL", &self.database_url)
            .env("FLASH_REDIS_URL", &self.redis_url)
            .env("FLASH_REDIS_PREFIX", &self.redis_prefix)
            // The server's key, which `flash clients add` hashes client secrets under too.
            .env(
                "FLASH_CONTACT_HASH_KEY",
                "bench-contact-hash-key-of-at-least-32-bytes",
            )
            .env("FLASH_LOG", "warn")
            // The bench measures throughput at up to 64 concurrent clients: load shedding
            // (64 calls in flight by default) would measure the limit instead.
            .env("FLASH_MAX_IN_FLIGHT", "100000")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null());
        if let Some(size) = self.pool_size {
            command.env("FLASH_DB_POOL_SIZE", size.to_string());
        }
        command
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut command = self.flash();
        command.arg(subcommand);
        command
    }

    /// `flash clients add`: the benchmark's client (every program, every scope, a rate the
    /// load never reaches), and its bearer token.
    pub fn add_client(&self) -> anyhow::Result<String> {
        process::add_client(self.flash(), "bench", "*", "*", 1_000_000)
    }

    /// `flash migrate`: the schema exactly as the service creates it.
    pub fn migrate(&self) -> anyhow::Result<()> {
        let output = self
            .command("migrate")
            .output()
            .context("running flash migrate")?;
        ensure!(
            output.status.success(),
            "flash migrate failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Starts `flash serve` on a free port and waits until it listens.
    pub fn serve(&self, log: &Path) -> anyhow::Result<Server> {
        // The API alone: background jobs would run beside the measured load.
        let mut serve = self.command("serve");
        serve.arg("--no-workers");
        FlashServer::start(serve, log)
    }
}

/// The running server; killed when dropped, also on failure.
pub type Server = FlashServer;

/// Reads what the kernel accounts for one process.
pub struct ProcStats {
    ticks_per_second: u64,
}

impl ProcStats {
    pub fn new() -> ProcStats {
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100);
        ProcStats { ticks_per_second }
    }

    /// User + system CPU time the process has used so far.
    pub fn cpu_time(&self, pid: u32) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after it are space-separated:
        // state is field 3, utime field 14, stime field 15.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let user: u64 = fields.get(11)?.parse().ok()?;
        let system: u64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_secs_f64(
            (user + system) as f64 / self.ticks_per_second as f64,
        ))
    }

    /// The process's peak resident set (VmHWM), in KiB.
    pub fn peak_rss_kib(&self, pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}
