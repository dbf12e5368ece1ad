//! A private `redis-server` on a free port, without persistence, killed when dropped: for
//! faults that must never touch the shared Redis (FLUSHALL, restarts).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting `redis-server` may take to listen.
const START_MAX: Duration = Duration::from_secs(10);

pub struct PrivateRedis {
    pub port: u16,
    /// Its working directory (`--dir`); the current one when `None`.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server and waits until it listens. Blocks the thread (briefly): call it
    /// through `block_in_place` on a multi-threaded runtime.
    pub fn start(dir: Option<&Path>) -> std::io::Result<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: crate::free_port(),
            dir: dir.map(Path::to_path_buf),
            child: None,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(dir) = &self.dir {
            command.arg("--dir").arg(dir);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_MAX {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "redis-server did not listen on {} within {START_MAX:?}",
                self.port
            ),
        ))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no persistence: every counter is lost) and starts it again on
    /// the same port.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the server (an outage); [`PrivateRedis::restart`] starts it again on the same
    /// port.
    pub fn stop(&mut self) {
        self.kill();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs one command with redis-cli against this server; its trimmed output, or an
    /// error when redis-cli fails.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
