//! What the walkthrough owns: its database (dropped and created again on every run), a
//! private Redis and one debug `flash serve` on a free port. The server and Redis are
//! killed when dropped, also on failure.
use anyhow::{bail, ensure, Context};
use flash_testing_support::redis::PrivateRedis;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `flash serve` may take to migrate and listen.
const SERVER_START_MAX: Duration = Duration::from_secs(60);
/// The contact hash key of the walkthrough's server: its own, never the checkout's.
const CONTACT_HASH_KEY: &str = "flash-demo-contact-hash-key-of-at-least-32-bytes";

/// The walkthrough's database on the local PostgreSQL.
pub struct Database {
    pub name: String,
    server: String,
    query: String,
}

impl Database {
    /// `admin_url` names any database of the server (`postgres`); `name` is the one the
    /// walkthrough drops and creates, so it must look like a demo's.
    pub fn new(admin_url: &str, name: &str) -> anyhow::Result<Database> {
        ensure!(
            name.starts_with("flash_")
                && name.contains("demo")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "the walkthrough drops its database, so its name must start with `flash_`, \
             contain `demo` and hold only a-z, 0-9 and `_`; got `{name}`"
        );
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let (server, _) = base
            .rsplit_once('/')
            .context("the admin database URL has no database name")?;
        Ok(Database {
            name: name.to_owned(),
            server: server.to_owned(),
            query: admin_url[base.len()..].to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}/{}{}", self.server, self.name, self.query)
    }

    fn admin_url(&self) -> String {
        format!("{}/postgres{}", self.server, self.query)
    }

    pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = url.parse().context("a PostgreSQL URL")?;
        config.application_name("flash-demo");
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url} (is PostgreSQL up? `make bootstrap`)"))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Drops the database of an earlier run (with its connections) and creates it empty.
    pub async fn recreate(&self) -> anyhow::Result<()> {
        self.drop_it().await?;
        Self::connect(&self.admin_url())
            .await?
            .batch_execute(&format!("CREATE DATABASE \"{}\"", self.name))
            .await
            .with_context(|| format!("creating database {}", self.name))
    }

    pub async fn drop_it(&self) -> anyhow::Result<()> {
        Self::connect(&self.admin_url())
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping database {}", self.name))
    }
}

/// The `flash` binary next to this executable (both live in target/<profile>/).
pub fn flash_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("FLASH_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    let flash = me
        .parent()
        .context("executable has no directory")?
        .join("flash");
    ensure!(
        flash.exists(),
        "no `flash` binary next to {} (run `cargo build --workspace --bins`)",
        me.display()
    );
    Ok(flash)
}

/// The server, its Redis and how to run `flash` against them.
pub struct World {
    pub server: Server,
    pub redis: PrivateRedis,
    pub flash: PathBuf,
    pub database_url: String,
}

impl World {
    /// Starts a private Redis, then `flash serve` (which migrates the database) against it.
    pub fn start(database_url: String, log: &Path) -> anyhow::Result<World> {
        let flash = flash_binary()?;
        let redis = PrivateRedis::start(None).context("starting a private redis-server")?;
        let mut world = World {
            server: Server {
                child: None,
                port: 0,
            },
            redis,
            flash,
            database_url,
        };
        world.server = world.serve(log)?;
        Ok(world)
    }

    /// A `flash` command against the walkthrough's database and Redis.
    pub fn flash_command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(&self.flash);
        command
            .arg(subcommand)
            .env("FLASH_DATABASE_URL", &self.database_url)
            .env("FLASH_REDIS_URL", self.redis.url())
            .env("FLASH_REDIS_PREFIX", "flash-demo:")
            .env("FLASH_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null());
        command
    }

    fn serve(&self, log: &Path) -> anyhow::Result<Server> {
        let port = flash_testing_support::free_port();
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .flash_command("serve")
            .env("FLASH_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASH_HTTP_LISTEN", "")
            .env("FLASH_CONTACT_HASH_KEY", CONTACT_HASH_KEY)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting flash serve")?;
        let mut server = Server {
            child: Some(child),
            port,
        };
        let started = Instant::now();
        while started.elapsed() < SERVER_START_MAX {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                // The caller prints the log's end.
                bail!("flash serve exited at start ({status})");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("flash serve did not listen on {port} within {SERVER_START_MAX:?}")
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

/// One `flash serve` process; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a log, for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
