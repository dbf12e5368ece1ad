//! The seeded fault schedule and the expiry sweeps.
use crate::infra::{blocking, Infra};
use crate::workload::Ctx;
use flash_testing_support::proxy::Mode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillServer,
    RedisCut,
    RedisFreeze,
    RedisFlush,
    RedisRestart,
    PgTerminate,
    PgRestart,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillServer => "kill",
            Fault::RedisCut => "redis_cut",
            Fault::RedisFreeze => "redis_freeze",
            Fault::RedisFlush => "redis_flush",
            Fault::RedisRestart => "redis_restart",
            Fault::PgTerminate => "pg_terminate",
            Fault::PgRestart => "pg_restart",
        }
    }
}

const FAULTS: [(Fault, u32); 7] = [
    (Fault::KillServer, 4),
    (Fault::RedisCut, 3),
    (Fault::RedisFreeze, 3),
    (Fault::RedisFlush, 2),
    (Fault::RedisRestart, 2),
    (Fault::PgTerminate, 3),
    (Fault::PgRestart, 2),
];

fn pick(rng: &mut ChaCha8Rng) -> Fault {
    let total: u32 = FAULTS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (fault, weight) in FAULTS {
        if roll < weight {
            return fault;
        }
        roll -= weight;
    }
    Fault::KillServer
}

pub type Injected = Arc<Mutex<BTreeMap<&'static str, u32>>>;

/// Injects one fault at a time until `ctx.stop`, then heals. Errors of the fault machinery
/// itself (a cluster that does not come back) are run failures.
pub async fn schedule(infra: Arc<Infra>, ctx: Arc<Ctx>, mut rng: ChaCha8Rng, injected: Injected) {
    // Let the workload get going first.
    tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
    while !ctx.stop.load(Ordering::Relaxed) {
        // Mostly one fault at a time; sometimes two different ones at once.
        let first = pick(&mut rng);
        let mut faults = vec![first];
        if rng.random_bool(0.25) {
            let second = pick(&mut rng);
            if second != first {
                faults.push(second);
            }
        }
        let mut injections = Vec::new();
        for &fault in &faults {
            *injected.lock().unwrap().entry(fault.name()).or_default() += 1;
            let hold = Duration::from_millis(rng.random_range(100..1_500));
            let mut fault_rng = ChaCha8Rng::from_rng(&mut rng);
            let (infra, ctx) = (infra.clone(), ctx.clone());
            injections.push(async move {
                // A fault can fail to land when another one overlaps it (a terminate while
                // the cluster restarts): noted, not failed. Healing must succeed.
                if let Err(error) = inject(&infra, &ctx, &mut fault_rng, fault, hold).await {
                    ctx.stats
                        .note(format!("fault {} did not land: {error:#}", fault.name()));
                }
            });
        }
        futures::future::join_all(injections).await;
        if let Err(error) = infra.heal().await {
            ctx.stats
                .fail(format!("healing after {faults:?}: {error:#}"));
        }
        let quiet = Duration::from_millis(rng.random_range(100..1_200));
        tokio::time::sleep(quiet).await;
    }
}

async fn inject(
    infra: &Arc<Infra>,
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
    fault: Fault,
    hold: Duration,
) -> anyhow::Result<()> {
    match fault {
        Fault::KillServer => {
            let index = rng.random_range(0..infra.servers.len());
            infra.kill_server(index);
            tokio::time::sleep(hold / 3).await;
            blocking(|| infra.start_server(index))?;
        }
        Fault::RedisCut | Fault::RedisFreeze => {
            infra.proxy.set(if fault == Fault::RedisCut {
                Mode::Cut
            } else {
                Mode::Freeze
            });
            tokio::time::sleep(hold).await;
            infra.proxy.set(Mode::Forward);
        }
        Fault::RedisFlush => {
            blocking(|| infra.redis.lock().unwrap().cli(&["FLUSHALL"]))?;
        }
        Fault::RedisRestart => {
            blocking(|| infra.redis.lock().unwrap().restart())?;
        }
        Fault::PgTerminate => {
            let client = infra.connect("postgres").await?;
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'flash'",
                    &[],
                )
                .await?;
            if rows.is_empty() {
                ctx.stats
                    .note("a pg_terminate_backend found no flash session");
            }
        }
        Fault::PgRestart => {
            blocking(|| infra.pg.restart_immediate())?;
        }
    }
    Ok(())
}

/// Whether `flash` knows the testing clock offset the sweeps run under.
pub fn sweeps_supported(infra: &Infra) -> bool {
    blocking(|| {
        infra
            .flash_command()
            .args(["expire", "--help"])
            .output()
            .map(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains(CLOCK_OFFSET_VARIABLE)
            })
            .unwrap_or(false)
    })
}

/// The `flash` setting that moves its clock (tests and drills only).
const CLOCK_OFFSET_VARIABLE: &str = "FLASH_CLOCK_OFFSET_SECONDS";

/// Runs `flash expire` every second or two with its clock moved to `T`: the start plus the
/// validity, plus a random part of the elapsed time, so each sweep expires the batches
/// earned before some moment of the run. The sweep's entries are dated `T` (a future
/// `--as-of` is refused: an expiry may only take what expired by its own time).
pub async fn sweeps(
    infra: Arc<Infra>,
    ctx: Arc<Ctx>,
    mut rng: ChaCha8Rng,
    started: chrono::DateTime<chrono::Utc>,
    validity_days: i64,
    counts: Injected,
) {
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2_500))).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let elapsed = chrono::Utc::now() - started;
        let offset_seconds = if rng.random_bool(0.2) {
            0
        } else {
            let offset = rng.random_range(0..=elapsed.num_milliseconds().max(1));
            let at = started
                + chrono::Duration::days(validity_days)
                + chrono::Duration::milliseconds(offset);
            (at - chrono::Utc::now()).num_seconds().max(0)
        };
        let infra = infra.clone();
        // Now and then the sweep itself is SIGKILLed part-way.
        let kill_after = rng
            .random_bool(0.3)
            .then(|| Duration::from_millis(rng.random_range(0..400)));
        let outcome = tokio::task::spawn_blocking(move || {
            let mut command = infra.flash_command();
            command
                .arg("expire")
                .env(CLOCK_OFFSET_VARIABLE, offset_seconds.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = command.spawn().ok()?;
            if let Some(after) = kill_after {
                std::thread::sleep(after);
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Some("sweep_killed");
                }
            }
            let status = child.wait().ok()?;
            Some(if status.success() {
                "sweep_ok"
            } else {
                "sweep_err"
            })
        })
        .await
        .ok()
        .flatten()
        .unwrap_or("sweep_err");
        *counts.lock().unwrap().entry(outcome).or_default() += 1;
    }
}
