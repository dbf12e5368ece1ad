//! The private world of one run: a PostgreSQL cluster, a redis-server, the Redis proxy and
//! the `flash serve` processes. Everything is torn down when [`Infra`] is dropped, also on
//! failure and on panic.
use anyhow::{bail, Context};
use flash_testing_support::free_port;
use flash_testing_support::proxy::{Mode, Proxy};
use flash_testing_support::redis::PrivateRedis;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DATABASE: &str = "flash";

/// The contact hash key of every `flash` process of a run.
const CONTACT_HASH_KEY: &str = "chaos-contact-hash-key-of-at-least-32-bytes";

/// Runs a blocking closure without stalling the runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn run_quiet(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}): {}", output.status, text.trim());
    }
    Ok(text)
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The PostgreSQL `bin` directory: `$PG_BIN`, else the newest /usr/lib/postgresql/*/bin.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("listing /usr/lib/postgresql (is PostgreSQL installed?)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL with initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(seed: u64) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "flash-chaos-{seed}-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private PostgreSQL cluster.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            command
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn init(root: &Path) -> anyhow::Result<PgCluster> {
        let as_postgres = is_root();
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir)?;
        if as_postgres {
            run_quiet(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(root);
                    c
                },
                "chown",
            )?;
        }
        let cluster = PgCluster {
            bin: pg_bin()?,
            data: dir.join("data"),
            socket_dir: dir.clone(),
            log: dir.join("postgres.log"),
            port: free_port(),
            as_postgres,
        };
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C");
        run_quiet(initdb, "initdb")?;
        cluster.pg_ctl(&["start"])?;
        Ok(cluster)
    }

    fn pg_ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
                 -c max_connections=200",
                self.port,
                self.socket_dir.display()
            ))
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60"])
            .args(action);
        run_quiet(command, &format!("pg_ctl {}", action.join(" "))).map(|_| ())
    }

    /// `pg_ctl restart -m immediate`: a crash and recovery.
    pub fn restart_immediate(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "restart"])
    }

    fn stop(&self) {
        if self.pg_ctl(&["-m", "immediate", "stop"]).is_err() {
            // Last resort: the postmaster's pid is the first line of postmaster.pid.
            if let Ok(file) = File::open(self.data.join("postmaster.pid")) {
                if let Some(Ok(pid)) = BufReader::new(file).lines().next() {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

/// One `flash serve` process on a fixed port.
pub struct Server {
    pub index: usize,
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

/// Everything one run owns. Field order is drop order: servers first, the cluster last.
pub struct Infra {
    pub servers: Vec<Mutex<Server>>,
    pub proxy: Proxy,
    pub redis: Mutex<PrivateRedis>,
    pub pg: PgCluster,
    pub flash: PathBuf,
    pub redis_prefix: String,
    /// The highest VmRSS seen of any server, in KiB.
    pub max_rss_kib: Arc<AtomicU64>,
    /// The bearer token of the run's client (`chaos`: every program, every scope, a rate
    /// the workload never reaches): every call of the run sends it.
    pub token: String,
    _root: TempDir,
}

impl Drop for Infra {
    fn drop(&mut self) {
        for server in &self.servers {
            if let Ok(mut server) = server.lock() {
                if let Some(mut child) = server.child.take() {
                    kill_child(&mut child);
                }
            }
        }
        // Then the fields drop in order: proxy, redis, the cluster, the temp dir last.
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `flash` binary next to this executable (both live in target/<profile>/).
pub fn flash_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("FLASH_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("executable has no directory")?;
    for candidate in [dir.join("flash"), dir.join("../flash")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no `flash` binary next to {} (run `cargo build --bins`)",
        me.display()
    )
}

impl Infra {
    pub async fn start(seed: u64, servers: usize) -> anyhow::Result<Arc<Infra>> {
        let flash = flash_binary()?;
        let root = TempDir::new(seed)?;
        let pg = blocking(|| PgCluster::init(&root.0))?;
        // From here on a failure must still stop the cluster: wrap it at once.
        // A failure from here on drops `pg`, which stops the cluster.
        let redis =
            blocking(|| PrivateRedis::start(Some(&root.0))).context("starting redis-server")?;
        let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await?;
        let mut infra = Infra {
            servers: (0..servers)
                .map(|index| {
                    Mutex::new(Server {
                        index,
                        port: free_port(),
                        log: root.0.join(format!("flash-{index}.log")),
                        child: None,
                        starts: 0,
                    })
                })
                .collect(),
            proxy,
            redis: Mutex::new(redis),
            pg,
            flash,
            redis_prefix: format!("chaos{seed}:"),
            max_rss_kib: Arc::new(AtomicU64::new(0)),
            token: String::new(),
            _root: root,
        };
        infra.create_database().await?;
        // `flash clients add` migrates the database first, before any server starts.
        infra.token = blocking(|| {
            flash_testing_support::process::add_client(
                infra.flash_command(),
                "chaos",
                "*",
                "*",
                1_000_000,
            )
        })
        .context("creating the run's API client")?;
        let infra = Arc::new(infra);
        for index in 0..servers {
            infra.start_server(index)?;
        }
        Ok(infra)
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let client = self.connect("postgres").await?;
        client
            .execute(&format!("CREATE DATABASE {DATABASE}"), &[])
            .await?;
        Ok(())
    }

    /// A connection to the private cluster, as `flash-chaos` (never terminated by the
    /// pg_terminate_backend fault, which targets `flash`).
    pub async fn connect(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = self.pg.url(database).parse()?;
        config.application_name("flash-chaos");
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub fn database_url(&self) -> String {
        self.pg.url(DATABASE)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.proxy.port())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.lock().unwrap().port))
            .collect()
    }

    /// A `flash` command with the run's environment.
    pub fn flash_command(&self) -> Command {
        let mut command = Command::new(&self.flash);
        command
            .env("FLASH_DATABASE_URL", self.database_url())
            .env("FLASH_REDIS_URL", self.redis_url())
            .env("FLASH_REDIS_PREFIX", &self.redis_prefix)
            // The servers' key, which `flash clients add` hashes client secrets under too.
            .env("FLASH_CONTACT_HASH_KEY", CONTACT_HASH_KEY)
            .env(
                "FLASH_LOG",
                std::env::var("FLASH_CHAOS_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null());
        command
    }

    /// Starts server `index` (after a kill, or for the first time) and waits until it
    /// listens.
    pub fn start_server(&self, index: usize) -> anyhow::Result<()> {
        let mut server = self.servers[index].lock().unwrap();
        if let Some(mut child) = server.child.take() {
            kill_child(&mut child);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&server.log)?;
        let child = self
            .flash_command()
            .arg("serve")
            .env("FLASH_LISTEN", format!("127.0.0.1:{}", server.port))
            .env("FLASH_HTTP_LISTEN", "")
            .env("FLASH_DB_POOL_SIZE", "12")
            // The workers run beside the API in every server: killed mid-job with it.
            .env("FLASH_WORKER_INTERVAL_SECONDS", "1")
            .env("FLASH_JOB_LEASE_SECONDS", "5")
            .env("FLASH_JOB_PERIOD_SECONDS", "2")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting flash serve")?;
        server.child = Some(child);
        server.starts += 1;
        let port = server.port;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "flash serve #{index} exited at start ({status}): {}",
                    self.log_excerpt(&server.log, 10)
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            drop(server);
            std::thread::sleep(Duration::from_millis(25));
            server = self.servers[index].lock().unwrap();
        }
        bail!("flash serve #{index} did not listen on {port} within 30 s")
    }

    /// SIGKILL of server `index`.
    pub fn kill_server(&self, index: usize) {
        let mut server = self.servers[index].lock().unwrap();
        if let Some(mut child) = server.child.take() {
            kill_child(&mut child);
        }
    }

    /// Undoes every fault: proxy forwarding, Redis and every server running.
    pub async fn heal(&self) -> anyhow::Result<()> {
        self.proxy.set(Mode::Forward);
        blocking(|| -> anyhow::Result<()> {
            let mut redis = self.redis.lock().unwrap();
            if !redis.running() {
                redis.restart()?;
            }
            Ok(())
        })?;
        for index in 0..self.servers.len() {
            let running = self.servers[index].lock().unwrap().running();
            if !running {
                blocking(|| self.start_server(index))?;
            }
        }
        Ok(())
    }

    /// PING through the proxy: tells a stuck proxy (a harness bug) from a stuck client.
    pub async fn ping_redis_via_proxy(&self) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = async {
            let mut stream =
                tokio::net::TcpStream::connect(("127.0.0.1", self.proxy.port())).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).await?;
            anyhow::ensure!(&reply == b"+PONG\r\n", "unexpected reply {reply:?}");
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .map_err(|_| anyhow::anyhow!("no PONG through the proxy within 2 s"))?
    }

    /// Samples every server's VmRSS into `max_rss_kib`.
    pub fn sample_rss(&self) {
        for server in &self.servers {
            let Some(pid) = server.lock().unwrap().pid() else {
                continue;
            };
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    self.max_rss_kib.fetch_max(kib, Ordering::Relaxed);
                }
            }
        }
    }

    /// Error and panic lines of a server log, for a failure report.
    fn log_excerpt(&self, path: &Path, limit: usize) -> String {
        let Ok(text) = std::fs::read_to_string(path) else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(limit);
        lines[start..].join("\n")
    }

    /// The ERROR and panic lines of every server log (at most `limit` each).
    pub fn server_errors(&self, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        for server in &self.servers {
            let server = server.lock().unwrap();
            let Ok(text) = std::fs::read_to_string(&server.log) else {
                continue;
            };
            for line in text
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("panicked"))
                .take(limit)
            {
                out.push(format!("server#{}: {line}", server.index));
            }
        }
        out
    }

    /// Copies the server and PostgreSQL logs to `dir` (for `FLASH_CHAOS_KEEP_LOGS`).
    pub fn keep_logs(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(&self._root.0)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") {
                std::fs::copy(&path, dir.join(path.file_name().unwrap()))?;
            }
        }
        let _ = std::fs::copy(&self.pg.log, dir.join("postgres.log"));
        Ok(())
    }

    pub fn total_server_starts(&self) -> u32 {
        self.servers.iter().map(|s| s.lock().unwrap().starts).sum()
    }
}
