//! Settings from flags and `FLASH_*` environment variables. Secrets are never logged.
use crate::clock::{Clock, OffsetClock, SystemClock};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Flash Loyalty: a points ledger behind a gRPC API.
#[derive(Debug, Parser)]
#[command(name = "flash", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve gRPC (and run the workers) until SIGINT or SIGTERM.
    Serve {
        /// Serve the API only; run the workers elsewhere (`flash worker`).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run the workers only (every job, claimed with leases), until SIGINT or SIGTERM.
    Worker,
    /// Run one job by hand, or list recent runs and the members jobs parked.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Manage the API's clients: who may call, on which programs, with which scopes.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Create the `demo` program used by the README's examples (idempotent).
    Demo,
    /// Write off every batch that expired by now (or by --as-of), then exit.
    Expire {
        /// Expire what was due at this earlier instant (RFC 3339) instead of now; a future
        /// instant is refused.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Check every ledger invariant; exits 1 on any violation.
    Audit {
        /// The program to audit; every program when omitted.
        #[arg(long)]
        program: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create a client; prints its bearer token once, alone on the last line.
    Add {
        /// 1 to 63 characters of a-z, 0-9 and '-'; never reused, even after a revocation.
        name: String,
        /// The programs it may touch, comma-separated, or '*' for every program (including
        /// programs created later).
        #[arg(long, value_delimiter = ',', required = true)]
        programs: Vec<String>,
        /// Its scopes, comma-separated (award, spend, refund, adjust, referrals, read,
        /// admin), or '*' for all.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// The subject of its client certificate (mutual TLS), e.g. "CN=marketplace,O=Acme".
        #[arg(long)]
        cert_subject: Option<String>,
        /// Its calls a second; default FLASH_CLIENT_RATE_PER_SECOND.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// List every client (never a secret).
    List,
    /// Revoke a client: every replica refuses it within FLASH_CLIENTS_REFRESH_MS.
    Revoke { name: String },
    /// Check a bearer token, read from standard input (never an argument, which every user
    /// of the machine can see): exits 0 when it authenticates a live client, 2 when not.
    Check,
    /// Give a client a new secret (printed once, alone on the last line); the old one stays
    /// valid for the grace period.
    Rotate {
        name: String,
        /// How long the old secret stays valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        grace_seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Run one job once as of an instant (default now): expiry, expiring-soon, tier-grace,
    /// birthday, reengagement, event-prune, invite-expiry or graph-snapshot. Exits 1 when members failed.
    Run {
        job: String,
        /// The instant (RFC 3339) the run is for; not in the future.
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Print recent runs with their counts, and the members jobs could not process.
    List,
}

/// Everything the server needs to run.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "FLASH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flash",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
    /// Redis URL of the daily-cap counters.
    #[arg(
        long,
        env = "FLASH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key, so environments can share a Redis.
    #[arg(
        long,
        env = "FLASH_REDIS_PREFIX",
        default_value = "flash:",
        global = true
    )]
    pub redis_prefix: String,
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "FLASH_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,
    /// Address of the HTTP server (the referral graph page, its JSON); empty: no HTTP server.
    #[arg(
        long,
        env = "FLASH_HTTP_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_listen: String,
    /// The member profile link of the graph page, `{member_id}` replaced by the member's
    /// id, e.g. `https://crm.example/members/{member_id}`; unset: nodes link nowhere.
    #[arg(long, env = "FLASH_PROFILE_URL_TEMPLATE", global = true)]
    pub profile_url_template: Option<String>,
    /// Seconds between two checks for referral graph snapshots written by other replicas.
    #[arg(
        long,
        env = "FLASH_GRAPH_REFRESH_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        global = true
    )]
    pub graph_refresh_seconds: u64,
    /// Milliseconds between two probes of PostgreSQL for the gRPC health service: the
    /// database-backed services turn NOT_SERVING while it is unreachable.
    #[arg(
        long,
        env = "FLASH_HEALTH_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(10..=3_600_000),
        global = true
    )]
    pub health_interval_ms: u64,
    /// Largest number of PostgreSQL connections.
    #[arg(long, env = "FLASH_DB_POOL_SIZE", default_value_t = 16, global = true)]
    pub db_pool_size: usize,
    /// Upper bound of one Redis call; past it a capped award is refused (UNAVAILABLE).
    #[arg(
        long,
        env = "FLASH_REDIS_TIMEOUT_MS",
        default_value_t = 300,
        global = true
    )]
    pub redis_timeout_ms: u64,
    /// PostgreSQL `lock_timeout`: how long a call waits for a member's lock.
    #[arg(
        long,
        env = "FLASH_LOCK_TIMEOUT_MS",
        default_value_t = 3000,
        global = true
    )]
    pub lock_timeout_ms: u64,
    /// PostgreSQL `statement_timeout`.
    #[arg(
        long,
        env = "FLASH_STATEMENT_TIMEOUT_MS",
        default_value_t = 10000,
        global = true
    )]
    pub statement_timeout_ms: u64,
    /// PostgreSQL `idle_in_transaction_session_timeout`.
    #[arg(
        long,
        env = "FLASH_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 15000,
        global = true
    )]
    pub idle_in_transaction_timeout_ms: u64,
    /// Largest request message, in bytes (after decompression): a larger one is refused
    /// with RESOURCE_EXHAUSTED before it is decoded.
    #[arg(
        long,
        env = "FLASH_MAX_MESSAGE_BYTES",
        default_value_t = 1_048_576,
        value_parser = clap::value_parser!(u64).range(1024..=67_108_864),
        global = true
    )]
    pub max_message_bytes: u64,
    /// Most items in one AwardBatch or EnrollBatch call; a larger batch is refused whole
    /// (INVALID_ARGUMENT), nothing written.
    #[arg(
        long,
        env = "FLASH_MAX_BATCH_ITEMS",
        default_value_t = crate::service::BATCH_MAX,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000),
        global = true
    )]
    pub max_batch_items: usize,
    /// Most gRPC calls served at once (health checks aside); past it a call is refused at
    /// once with UNAVAILABLE (load shedding). Unset: 4 × FLASH_DB_POOL_SIZE.
    #[arg(
        long,
        env = "FLASH_MAX_IN_FLIGHT",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000),
        global = true
    )]
    pub max_in_flight: Option<usize>,
    /// Deadline of a call whose caller sets none (a shorter `grpc-timeout` wins): past it
    /// the caller is answered DEADLINE_EXCEEDED, while a unit of work already started
    /// still commits or rolls back.
    #[arg(
        long,
        env = "FLASH_DEFAULT_DEADLINE_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000),
        global = true
    )]
    pub default_deadline_ms: u64,
    /// The gRPC port's TLS certificate chain (PEM); with FLASH_TLS_KEY. Unset: plaintext.
    #[arg(long, env = "FLASH_TLS_CERT", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of FLASH_TLS_CERT.
    #[arg(long, env = "FLASH_TLS_KEY", global = true)]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA certificates (PEM) client certificates are verified against; when set, every
    /// connection must present a valid client certificate (mutual TLS). Needs
    /// FLASH_TLS_CERT and FLASH_TLS_KEY.
    #[arg(long, env = "FLASH_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(
        long,
        env = "FLASH_LOG",
        default_value = "info,tokio_postgres=warn,refinery_core=warn",
        global = true
    )]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "FLASH_LOG_JSON", default_value_t = false, global = true)]
    pub log_json: bool,
    /// OTLP/gRPC endpoint for traces; unset means no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// Seconds added to the system clock, within ±100 years. For tests and drills only:
    /// every instant the process reads (entry dates, expiry, caps) moves with it.
    #[arg(
        long,
        env = "FLASH_CLOCK_OFFSET_SECONDS",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-CLOCK_OFFSET_SECONDS_MAX..=CLOCK_OFFSET_SECONDS_MAX),
        global = true
    )]
    pub clock_offset_seconds: i64,
    /// Seconds between two rounds of the workers (each round runs every job's due slot).
    #[arg(
        long,
        env = "FLASH_WORKER_INTERVAL_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        global = true
    )]
    pub worker_interval_seconds: u64,
    /// A job run's lease: a replica that stops renewing it for this long (it died) leaves
    /// the run to another.
    #[arg(
        long,
        env = "FLASH_JOB_LEASE_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(i64).range(5..=86_400),
        global = true
    )]
    pub job_lease_seconds: i64,
    /// **Drills and chaos runs only**: every job's slot lasts this many seconds instead of
    /// its own period (hourly or daily), so jobs run again within a short run. 0: off.
    #[arg(
        long,
        env = "FLASH_JOB_PERIOD_SECONDS",
        default_value_t = 0,
        value_parser = clap::value_parser!(i64).range(0..=86_400),
        global = true
    )]
    pub job_period_seconds: i64,
    /// The secret contacts (emails, phone numbers) are hashed under (HMAC-SHA-256), at
    /// least 32 bytes. Only the hashes are stored; `flash serve` refuses to start without
    /// it. `make run` creates a local one on first run.
    #[arg(
        long,
        env = "FLASH_CONTACT_HASH_KEY",
        hide_env_values = true,
        global = true
    )]
    pub contact_hash_key: Option<String>,
    /// Milliseconds between two readings of the clients table by each replica: a revoked
    /// or rotated-out client is refused everywhere within this delay.
    #[arg(
        long,
        env = "FLASH_CLIENTS_REFRESH_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(10..=600_000),
        global = true
    )]
    pub clients_refresh_ms: u64,
    /// Calls a second each client may make (a token bucket holding one second of calls),
    /// unless `flash clients add --rate` gave it its own; past it, RESOURCE_EXHAUSTED with
    /// the wait in RetryInfo.
    #[arg(
        long,
        env = "FLASH_CLIENT_RATE_PER_SECOND",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub client_rate_per_second: u32,
}

/// The largest clock offset, 100 years: keeps every instant inside the timestamp range.
pub const CLOCK_OFFSET_SECONDS_MAX: i64 = 100 * 366 * 24 * 60 * 60;

impl Settings {
    /// The contact hash key; an error naming the setting when it is missing or short.
    pub fn contact_key(&self) -> anyhow::Result<crate::domain::ContactKey> {
        let secret = self.contact_hash_key.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "FLASH_CONTACT_HASH_KEY is not set: give a secret of at least {} bytes \
                 (e.g. `openssl rand -hex 32`); `make run` creates a local one",
                crate::domain::CONTACT_KEY_MIN_BYTES
            )
        })?;
        crate::domain::ContactKey::new(secret.as_bytes())
            .map_err(|error| anyhow::anyhow!("FLASH_CONTACT_HASH_KEY: {error}"))
    }

    /// Settings with every default, for tests and tools that override a few fields.
    pub fn defaults() -> Self {
        Cli::parse_from(["flash", "serve"]).settings
    }

    /// This process's identity in the worker fleet.
    pub fn replica(&self) -> crate::service::Replica {
        crate::service::Replica::new(
            chrono::Duration::seconds(self.job_lease_seconds),
            (self.job_period_seconds > 0)
                .then(|| chrono::Duration::seconds(self.job_period_seconds)),
        )
    }

    pub fn session_limits(&self) -> crate::store::SessionLimits {
        crate::store::SessionLimits {
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(self.idle_in_transaction_timeout_ms),
        }
    }

    /// The one time source of the process: the system clock, moved by the testing offset
    /// when one is set.
    pub fn clock(&self) -> Arc<dyn Clock> {
        if self.clock_offset_seconds == 0 {
            return Arc::new(SystemClock);
        }
        tracing::warn!(
            offset_seconds = self.clock_offset_seconds,
            "the clock is offset (FLASH_CLOCK_OFFSET_SECONDS): for tests and drills only"
        );
        Arc::new(OffsetClock::new(chrono::Duration::seconds(
            self.clock_offset_seconds,
        )))
    }

    pub fn worker_interval(&self) -> Duration {
        Duration::from_secs(self.worker_interval_seconds)
    }

    /// The HTTP server's address; None when it is off.
    pub fn http_address(&self) -> anyhow::Result<Option<SocketAddr>> {
        let raw = self.http_listen.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse()
            .map(Some)
            .map_err(|error| anyhow::anyhow!("FLASH_HTTP_LISTEN {raw:?}: {error}"))
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    pub fn clients_refresh(&self) -> Duration {
        Duration::from_millis(self.clients_refresh_ms)
    }

    /// The API's clients, their secrets hashed under a key derived from the server secret.
    pub fn clients(
        &self,
        pool: deadpool_postgres::Pool,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<crate::service::Clients> {
        // The same checks as the contact key: present, long enough.
        self.contact_key()?;
        let secret = self.contact_hash_key.as_deref().unwrap_or_default();
        Ok(crate::service::Clients::new(
            pool,
            secret.as_bytes(),
            clock,
            self.client_rate_per_second,
        ))
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The largest request message, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }

    /// Most calls served at once: FLASH_MAX_IN_FLIGHT, or 4 × the pool size.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
            .unwrap_or_else(|| self.db_pool_size.saturating_mul(4))
            .max(1)
    }

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// The gRPC port's TLS configuration, None for plaintext; an error naming the setting
    /// when a file is missing, unreadable or not the PEM it should be, or when the
    /// certificate and the key do not come together.
    pub fn tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        crate::grpc::tls::server_config(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
    }
}
