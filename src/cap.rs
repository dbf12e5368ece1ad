//! The daily purchase-points cap, counted in Redis. Every failure is a refusal: a cap
//! that cannot be checked never lets an award through.
use crate::domain::{MemberId, ProgramId};
use chrono::NaiveDate;
use fred::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters outlive their day by a day, so late releases still find them.
const COUNTER_TTL_SECONDS: i64 = 2 * 24 * 60 * 60;

/// Reserves min(want, cap − total) in one atomic call, refreshing the key's expiry.
/// A missing counter is unknown, not zero: without a seed it answers -1, and the caller
/// rebuilds the total from PostgreSQL and calls again with it. So is a counter kept under
/// another rules version: awards made while no cap applied were never counted in it
/// (found by the fuzzer: a cap introduced mid-day let a member earn past it). The generation marks which
/// incarnation of the counter a reservation came from, so a release after a flush cannot
/// lower a rebuilt counter (which would let a member earn past the cap).
const RESERVE: &str = r"
local key = KEYS[1]
local want, cap, ttl, seed, generation, version = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'version') ~= version then
  if seed == '' then return {-1, ''} end
  redis.call('HSET', key, 'total', seed, 'generation', generation, 'version', version)
end
local total = tonumber(redis.call('HGET', key, 'total'))
local grant = cap - total
if grant > want then grant = want end
if grant < 0 then grant = 0 end
if grant > 0 then redis.call('HINCRBY', key, 'total', grant) end
redis.call('EXPIRE', key, ttl)
return {grant, redis.call('HGET', key, 'generation')}
";

/// Gives back a reservation whose award was not written, only to the same generation.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'generation') == ARGV[2] then
  redis.call('HINCRBY', KEYS[1], 'total', -tonumber(ARGV[1]))
end
return 0
";

/// Redis could not answer in time: the award must be withheld.
#[derive(Debug, thiserror::Error)]
#[error("daily cap check failed: {0}")]
pub struct CapUnavailable(String);

/// Points granted against a member's daily cap, held until the award commits.
#[derive(Debug, Clone)]
pub struct Reservation {
    key: String,
    generation: String,
    pub granted_points: i64,
}

/// The answer of one reservation attempt.
#[derive(Debug)]
pub enum Reserve {
    Granted(Reservation),
    /// The counter does not exist: rebuild it from the ledger and call again.
    CounterUnknown,
}

/// The Redis client for daily caps.
#[derive(Clone)]
pub struct DailyCap {
    client: Client,
    /// Namespaces keys, so tests and environments can share one Redis.
    key_prefix: String,
    /// Upper bound on one Redis call; beyond it the award is refused.
    timeout: Duration,
    /// Set while a forced reconnection runs, so timeouts do not pile them up.
    reconnecting: Arc<AtomicBool>,
}

impl DailyCap {
    /// Builds the client and starts connecting in the background: a server whose Redis
    /// is down still starts, and refuses capped awards until Redis is back.
    pub fn connect(url: &str, key_prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout.max(Duration::from_millis(500));
                connection.internal_command_timeout = timeout;
                // A reservation must never be sent twice by the client itself.
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 200))
            .build()?;
        tokio::spawn(keep_connected(client.clone()));
        Ok(Self {
            client,
            key_prefix: key_prefix.to_owned(),
            timeout,
            reconnecting: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Reserves up to `want_points` of the member's cap for `day` under the program's
    /// `rules_version`. `seed_total` is the day's total from PostgreSQL, given only after a
    /// [`Reserve::CounterUnknown`].
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        program: &ProgramId,
        member: MemberId,
        day: NaiveDate,
        rules_version: i64,
        want_points: i64,
        cap_points: i64,
        seed_total: Option<i64>,
    ) -> Result<Reserve, CapUnavailable> {
        let key = format!("{}cap:{program}:{member}:{day}", self.key_prefix);
        let generation = uuid::Uuid::new_v4().to_string();
        let seed = seed_total
            .map(|total| total.to_string())
            .unwrap_or_default();
        let args = vec![
            want_points.to_string(),
            cap_points.to_string(),
            COUNTER_TTL_SECONDS.to_string(),
            seed,
            generation,
            rules_version.to_string(),
        ];
        let call = self
            .client
            .eval::<(i64, String), _, _, _>(RESERVE, key.clone(), args);
        let answer = tokio::time::timeout(self.timeout, call).await;
        let (granted_points, generation) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                if *error.kind() == fred::error::ErrorKind::Timeout {
                    self.replace_connection();
                }
                return Err(CapUnavailable(error.to_string()));
            }
            Err(_) => {
                self.replace_connection();
                return Err(CapUnavailable("redis timed out".into()));
            }
        };
        if granted_points < 0 {
            return Ok(Reserve::CounterUnknown);
        }
        Ok(Reserve::Granted(Reservation {
            key,
            generation,
            granted_points,
        }))
    }

    /// Drops the connection and dials a new one, in the background. A connection that
    /// stopped answering (a frozen Redis, a half-dead network) is never closed by the
    /// client on its own: without this every capped award would time out on it until the
    /// process restarted (found by chaos seeds 20 and 30).
    fn replace_connection(&self) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, reconnecting) = (self.client.clone(), self.reconnecting.clone());
        tokio::spawn(async move {
            if let Err(error) = client.force_reconnection().await {
                tracing::warn!(%error, "redis reconnection failed");
            }
            reconnecting.store(false, Ordering::Release);
        });
    }

    /// Returns a reservation whose award was certainly not written. A failed release
    /// leaves the counter high: the member may earn less that day, never more.
    pub async fn release(&self, reservation: &Reservation) {
        if reservation.granted_points == 0 {
            return;
        }
        let args = vec![
            reservation.granted_points.to_string(),
            reservation.generation.clone(),
        ];
        let call = self
            .client
            .eval::<i64, _, _, _>(RELEASE, reservation.key.clone(), args);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, key = %reservation.key, "cap release failed"),
            Err(_) => tracing::warn!(key = %reservation.key, "cap release timed out"),
        }
    }
}

/// Runs the client's connection task, and starts it again whenever it ends. fred retries
/// lost connections by its reconnect policy, but not a first connection that fails: a
/// server started while Redis was down would otherwise never reach it (found by chaos
/// seeds 20 and 30, where a killed server restarted during a Redis outage).
async fn keep_connected(client: Client) {
    loop {
        match client.connect().await {
            Ok(Ok(())) => return, // the client was closed on purpose
            Ok(Err(error)) => tracing::warn!(%error, "redis connection ended; retrying"),
            Err(error) => tracing::warn!(%error, "redis connection task failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
