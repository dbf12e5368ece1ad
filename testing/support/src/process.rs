//! The processes and scratch databases the harnesses outside `tests/it` own (`flash-bench`,
//! `flash-demo`, and the tests that run those binaries): the workspace's binaries found
//! beside `flash`, one `flash serve` waited for until it listens and killed when dropped,
//! and a database dropped and created again on every run.
use anyhow::{bail, ensure, Context};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long `flash serve` may take to migrate and listen.
const SERVER_START_MAX: Duration = Duration::from_secs(60);

/// A binary of another workspace member, beside `flash` (`flash_exe`, the test's
/// `CARGO_BIN_EXE_flash`) in the same `target/<profile>/`: Cargo builds it for its own
/// package only, so `make test` builds every binary first. Panics (a test's failure) when
/// it is missing.
pub fn workspace_binary(flash_exe: &str, name: &str) -> PathBuf {
    let path = PathBuf::from(flash_exe).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The `flash` binary: `FLASH_BIN`, or the one beside this executable (both live in
/// target/<profile>/). `build` says how to build it when it is missing.
pub fn flash_binary(build: &str) -> anyhow::Result<PathBuf> {
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
        "no `flash` binary next to {} (run `{build}`)",
        me.display()
    );
    Ok(flash)
}

/// A database a run drops and creates again: its URL, and the admin URL (database
/// `postgres`) beside it. The caller checks the name is one it may drop.
pub struct ScratchDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// The database `url` names.
    pub fn from_url(url: &str) -> anyhow::Result<ScratchDatabase> {
        let base = url.split('?').next().unwrap_or(url);
        let query = &url[base.len()..];
        let (server, name) = base
            .rsplit_once('/')
            .context("the database URL has no database name")?;
        Ok(ScratchDatabase {
            url: url.to_owned(),
            name: name.to_owned(),
            admin_url: format!("{server}/postgres{query}"),
        })
    }

    /// The database `name` on the server of `admin_url` (any database of it).
    pub fn beside(admin_url: &str, name: &str) -> anyhow::Result<ScratchDatabase> {
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let (server, _) = base
            .rsplit_once('/')
            .context("the admin database URL has no database name")?;
        Self::from_url(&format!("{server}/{name}{}", &admin_url[base.len()..]))
    }

    /// A connection to `url`, named `application` in `pg_stat_activity`.
    pub async fn connect(url: &str, application: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = url.parse().context("a PostgreSQL URL")?;
        config.application_name(application);
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
        // Its own statement: several in one simple query run as one transaction, which
        // CREATE DATABASE refuses.
        Self::connect(&self.admin_url, "flash-scratch")
            .await?
            .batch_execute(&format!("CREATE DATABASE \"{}\"", self.name))
            .await
            .with_context(|| format!("creating database {}", self.name))
    }

    /// Drops the database, its connections too.
    pub async fn drop_it(&self) -> anyhow::Result<()> {
        Self::connect(&self.admin_url, "flash-scratch")
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping database {}", self.name))
    }
}

/// One `flash serve` process; killed when dropped, also on failure.
pub struct FlashServer {
    child: Child,
    pub port: u16,
}

impl FlashServer {
    /// Runs `serve` (a `flash serve` command with its environment) on a free port, without
    /// the HTTP port, its output to `log`, and waits until it listens.
    pub fn start(mut serve: Command, log: &Path) -> anyhow::Result<FlashServer> {
        let port = crate::free_port();
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = serve
            .env("FLASH_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASH_HTTP_LISTEN", "")
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting flash serve")?;
        let mut server = FlashServer { child, port };
        let started = Instant::now();
        while started.elapsed() < SERVER_START_MAX {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "flash serve exited at start ({status}); see {}",
                    log.display()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("flash serve did not listen on {port} within {SERVER_START_MAX:?}")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FlashServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a client through `flash clients add` run as `flash` (a command of the `flash`
/// binary with the server's environment, no arguments yet) and returns the bearer token it
/// printed alone on its last line: the harnesses call their servers as that client.
pub fn add_client(
    mut flash: Command,
    name: &str,
    programs: &str,
    scopes: &str,
    rate_per_second: u32,
) -> anyhow::Result<String> {
    let output = flash
        .args([
            "clients",
            "add",
            name,
            "--programs",
            programs,
            "--scopes",
            scopes,
        ])
        .args(["--rate", &rate_per_second.to_string()])
        .output()
        .context("running flash clients add")?;
    if !output.status.success() {
        bail!(
            "flash clients add {name} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout).context("flash clients add printed non-UTF-8")?;
    stdout
        .lines()
        .last()
        .map(str::to_owned)
        .filter(|token| token.starts_with("flash."))
        .context("flash clients add printed no token on its last line")
}
