//! What the walkthrough owns: its database (dropped and created again on every run), a
//! private Redis and one debug `flash serve` on a free port. The server and Redis are
//! killed when dropped, also on failure.
use anyhow::{ensure, Context};
use flash_testing_support::process::{self, FlashServer, ScratchDatabase};
use flash_testing_support::redis::PrivateRedis;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
/// The contact hash key of the walkthrough's server: its own, never the checkout's.
const CONTACT_HASH_KEY: &str = "flash-demo-contact-hash-key-of-at-least-32-bytes";

/// The walkthrough's database on the server of `admin_url` (any of its databases): `name` is
/// the one the walkthrough drops and creates, so it must look like a demo's.
pub fn database(admin_url: &str, name: &str) -> anyhow::Result<ScratchDatabase> {
    ensure!(
        name.starts_with("flash_")
            && name.contains("demo")
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "the walkthrough drops its database, so its name must start with `flash_`, \
         contain `demo` and hold only a-z, 0-9 and `_`; got `{name}`"
    );
    ScratchDatabase::beside(admin_url, name)
}

/// A connection to the walkthrough's database.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    ScratchDatabase::connect(url, "flash-demo").await
}

/// The server, its Redis and how to run `flash` against them.
pub struct World {
    pub server: FlashServer,
    pub redis: PrivateRedis,
    pub flash: PathBuf,
    pub database_url: String,
    /// The bearer token of the walkthrough's client (`demo`: every program, every scope),
    /// sent with every call.
    pub token: String,
}

impl World {
    /// Starts a private Redis, then `flash serve` (which migrates the database) against it,
    /// then creates the client the walkthrough calls as.
    pub fn start(database_url: String, log: &Path) -> anyhow::Result<World> {
        let flash = process::flash_binary("cargo build --workspace --bins")?;
        let redis = PrivateRedis::start(None).context("starting a private redis-server")?;
        let mut serve = flash_command(&flash, &database_url, &redis);
        serve.arg("serve");
        let server = FlashServer::start(serve, log)?;
        let token = process::add_client(
            flash_command(&flash, &database_url, &redis),
            "demo",
            "*",
            "*",
            1_000,
        )?;
        Ok(World {
            server,
            redis,
            flash,
            database_url,
            token,
        })
    }

    /// A `flash` command against the walkthrough's database and Redis.
    pub fn flash_command(&self, subcommand: &str) -> Command {
        let mut command = flash_command(&self.flash, &self.database_url, &self.redis);
        command.arg(subcommand);
        command
    }

    /// Runs `flash <args>` to completion.
    pub fn flash(&self, args: &[&str]) -> anyhow::Result<Output> {
        let (subcommand, rest) = args.split_first().context("no subcommand")?;
        self.flash_command(subcommand)
            .args(rest)
            .output()
            .with_context(|| format!("running flash {}", args.join(" ")))
    }
}

/// `flash` against the walkthrough's database and Redis, with its server's contact hash key
/// (`flash clients add` hashes client secrets under it too); no arguments yet.
fn flash_command(flash: &Path, database_url: &str, redis: &PrivateRedis) -> Command {
    let mut command = Command::new(flash);
    command
        .env("FLASH_CONTACT_HASH_KEY", CONTACT_HASH_KEY)
        .env("FLASH_DATABASE_URL", database_url)
        .env("FLASH_REDIS_URL", redis.url())
        .env("FLASH_REDIS_PREFIX", "flash-demo:")
        .env("FLASH_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null());
    command
}

/// The last `lines` lines of a log, for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
