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

/// Reserves min(want, cap − total) against every counter at once (one per zone the day
/// must hold under, see `domain::cap_zones`), in one atomic call that also refreshes the
/// keys' expiry. A missing counter is unknown, not zero: without a seed the call answers
/// -1 and the indexes of the unknown counters, and the caller rebuilds their totals from
/// PostgreSQL and calls again with them. So is a counter kept under another rules version:
/// awards made while no cap applied were never counted in it (found by the fuzzer: a cap
/// introduced mid-day let a member earn past it). The generation marks which incarnation
/// of a counter a reservation came from, so a release after a flush cannot lower a rebuilt
/// counter (which would let a member earn past the cap).
/// ARGV: want, cap, ttl, generation, version, then one seed per key ('' = none).
/// Answers {grant, generation of each key} or {-1, index of each unknown key}.
const RESERVE: &str = r"
local want, cap, ttl, generation, version = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local unknown = {-1}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'version') ~= version then
    local seed = ARGV[5 + i]
    if seed == '' then
      table.insert(unknown, i)
    else
      redis.call('HSET', key, 'total', seed, 'generation', generation, 'version', version)
    end
  end
end
if #unknown > 1 then return unknown end
local grant = want
for _, key in ipairs(KEYS) do
  local room = cap - tonumber(redis.call('HGET', key, 'total'))
  if room < grant then grant = room end
end
if grant < 0 then grant = 0 end
local answer = {grant}
for _, key in ipairs(KEYS) do
  if grant > 0 then redis.call('HINCRBY', key, 'total', grant) end
  redis.call('EXPIRE', key, ttl)
  table.insert(answer, redis.call('HGET', key, 'generation'))
end
return answer
";

/// Gives back a reservation whose award was not written, to each counter of the same
/// generation only. ARGV: points, then the generation of each key.
const RELEASE: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'generation') == ARGV[1 + i] then
    redis.call('HINCRBY', key, 'total', -tonumber(ARGV[1]))
  end
end
return 0
";

/// One counter a reservation must fit under: a zone's local day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapDay {
    /// The IANA zone name.
    pub zone: String,
    pub day: NaiveDate,
}

/// Redis could not answer in time: the award must be withheld.
#[derive(Debug, thiserror::Error)]
#[error("daily cap check failed: {0}")]
pub struct CapUnavailable(String);

/// Points granted against a member's daily cap, held until the award commits.
#[derive(Debug, Clone)]
pub struct Reservation {
    keys: Vec<String>,
    generations: Vec<String>,
    pub granted_points: i64,
}

/// The answer of one reservation attempt.
#[derive(Debug)]
pub enum Reserve {
    Granted(Reservation),
    /// These counters (indexes into the days asked) do not exist: rebuild them from the
    /// ledger and call again.
    CountersUnknown(Vec<usize>),
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

    /// Reserves up to `want_points` of the member's cap on every day of `days` under the
    /// program's `rules_version`. `seeds` has one entry per day: its total from PostgreSQL,
    /// given only after a [`Reserve::CountersUnknown`] named it.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "redis", level = "debug", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "cap::reserve"))]
    pub async fn reserve(
        &self,
        program: &ProgramId,
        member: MemberId,
        days: &[CapDay],
        rules_version: i64,
        want_points: i64,
        cap_points: i64,
        seeds: &[Option<i64>],
    ) -> Result<Reserve, CapUnavailable> {
        // One hash tag per member keeps a member's counters in one cluster slot.
        let keys: Vec<String> = days
            .iter()
            .map(|d| {
                format!(
                    "{}cap:{{{program}:{member}}}:{}:{}",
                    self.key_prefix, d.zone, d.day
                )
            })
            .collect();
        let mut args = vec![
            want_points.to_string(),
            cap_points.to_string(),
            COUNTER_TTL_SECONDS.to_string(),
            uuid::Uuid::new_v4().to_string(),
            rules_version.to_string(),
        ];
        args.extend((0..keys.len()).map(|i| {
            seeds
                .get(i)
                .copied()
                .flatten()
                .map(|total| total.to_string())
                .unwrap_or_default()
        }));
        let call = self
            .client
            .eval::<Vec<String>, _, _, _>(RESERVE, keys.clone(), args);
        let answer = match tokio::time::timeout(self.timeout, call).await {
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
        let malformed = || CapUnavailable(format!("unexpected cap answer {answer:?}"));
        let (first, rest) = answer.split_first().ok_or_else(malformed)?;
        let granted_points: i64 = first.parse().map_err(|_| malformed())?;
        if granted_points < 0 {
            let unknown = rest
                .iter()
                .map(|index| index.parse::<usize>().map(|i| i - 1))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| malformed())?;
            return Ok(Reserve::CountersUnknown(unknown));
        }
        if rest.len() != keys.len() {
            return Err(malformed());
        }
        Ok(Reserve::Granted(Reservation {
            keys,
            generations: rest.to_vec(),
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

    /// Whether Redis answers a PING within the call timeout (readiness; a refusal of
    /// capped awards follows from the same failures).
    pub async fn ping(&self) -> bool {
        let call = self.client.ping::<String>(None);
        matches!(tokio::time::timeout(self.timeout, call).await, Ok(Ok(_)))
    }

    /// Returns a reservation whose award was certainly not written. A failed release
    /// leaves the counters high: the member may earn less that day, never more.
    #[tracing::instrument(name = "redis", level = "debug", skip_all, fields(otel.kind = "client", db.system = "redis", db.operation = "cap::release"))]
    pub async fn release(&self, reservation: &Reservation) {
        if reservation.granted_points == 0 {
            return;
        }
        let mut args = vec![reservation.granted_points.to_string()];
        args.extend(reservation.generations.iter().cloned());
        let call = self
            .client
            .eval::<i64, _, _, _>(RELEASE, reservation.keys.clone(), args);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, keys = ?reservation.keys, "cap release failed")
            }
            Err(_) => tracing::warn!(keys = ?reservation.keys, "cap release timed out"),
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
