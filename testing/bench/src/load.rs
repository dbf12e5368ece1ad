//! The gRPC side: the benchmark program, seeding through `EnrollMember`, `EnrollBatch` and
//! `AwardBatch`, and the timed workloads, each client on its own connection.
use flash_loyalty::grpc::proto::{self, ledger_client::LedgerClient};
use flash_testing_support::dispatch::{Authed, BatchItem, Bearer};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

pub const PROGRAM: &str = "bench";
pub const CURRENCY: &str = "USD";
/// The amount of a workload award, in cents: 25 points at one point a dollar.
pub const AWARD_AMOUNT_MINOR: i64 = 2_500;
pub const AWARD_POINTS: i64 = 25;
/// A seeded award: 100 points, so every funded member can pay many one-point spends.
const SEED_AMOUNT_MINOR: i64 = 10_000;
/// A workload spend: small enough to succeed for every funded member.
pub const SPEND_POINTS: i64 = 1;
pub const SPEND_REASON: &str = "bench";
/// Awards per `AwardBatch` call: the server's maximum.
const SEED_BATCH_SIZE: usize = 500;

/// Member `index` (1-based) of the benchmark. The pgbench scripts build the same id in SQL
/// from the same number (`pgbench::member_id_sql`): the last group holds the decimal index.
pub fn member_id(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012}")
}

/// The server under load and the client the benchmark calls it as.
pub struct Api {
    pub endpoint: String,
    /// The bearer token of the benchmark's client (every scope, a rate the load never
    /// reaches), sent with every call.
    pub token: String,
}

impl Api {
    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(Endpoint::from_shared(self.endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    /// A ledger client on a connection of its own.
    pub async fn connect(&self) -> anyhow::Result<LedgerClient<Authed>> {
        Ok(LedgerClient::with_interceptor(
            self.channel().await?,
            Bearer::new(&self.token),
        ))
    }
}

/// USD, one point a dollar, no daily cap (it never binds), points valid a year.
pub async fn create_program(api: &Api) -> anyhow::Result<()> {
    proto::programs_client::ProgramsClient::with_interceptor(
        api.channel().await?,
        Bearer::new(&api.token),
    )
    .create_program(proto::CreateProgramRequest {
        program_id: PROGRAM.into(),
        name: "Benchmark".into(),
        rules: Some(proto::ProgramRules {
            currency: CURRENCY.into(),
            timezone: "UTC".into(),
            base_rate_bp: 10_000,
            min_amount_minor: 100,
            daily_cap_points: None,
            points_validity_days: 365,
            tiers: vec![],
            ..Default::default()
        }),
    })
    .await?;
    Ok(())
}

/// How a seeding step went.
#[derive(Debug, Default, Clone)]
pub struct SeedRate {
    pub items: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl SeedRate {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn error(&mut self, code: tonic::Code) {
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
    }
}

/// What one seeding call answered: how many items it carried, and each item's error code
/// (None: done), or the whole call's.
type SeedAnswer = (usize, Result<Vec<Option<tonic::Code>>, tonic::Code>);

/// Runs the seeding calls, `concurrency` at a time, and counts what their items answered.
async fn seed<F>(calls: Vec<F>, concurrency: usize) -> SeedRate
where
    F: std::future::Future<Output = SeedAnswer>,
{
    let started = Instant::now();
    let answers: Vec<SeedAnswer> = futures::stream::iter(calls)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut rate = SeedRate {
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for (size, answer) in answers {
        rate.items += size as u64;
        match answer {
            Ok(items) => {
                for item in items {
                    match item {
                        None => rate.ok += 1,
                        Some(code) => rate.error(code),
                    }
                }
            }
            Err(code) => {
                for _ in 0..size {
                    rate.error(code);
                }
            }
        }
    }
    rate
}

/// Each item's error code; None for an item that was done.
fn item_codes(results: Vec<impl BatchItem>) -> Vec<Option<tonic::Code>> {
    results
        .into_iter()
        .map(|result| match result.item() {
            Some(Ok(_)) => None,
            Some(Err(error)) => Some(tonic::Code::from_i32(error.code)),
            None => Some(tonic::Code::Unknown),
        })
        .collect()
}

/// `range` cut in seeding batches.
fn batches(range: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
    let end = range.end;
    range
        .step_by(SEED_BATCH_SIZE)
        .map(|start| start..(start + SEED_BATCH_SIZE).min(end))
        .collect()
}

/// Enrols members `members` (1-based), one `EnrollMember` call each, `concurrency` calls at
/// a time.
pub async fn enrol(
    api: &Api,
    members: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<SeedRate> {
    let client = api.connect().await?;
    let calls = members
        .map(|index| {
            let mut client = client.clone();
            async move {
                let answer = client
                    .enroll_member(proto::EnrollMemberRequest {
                        program_id: PROGRAM.into(),
                        member_id: member_id(index),
                        ..Default::default()
                    })
                    .await
                    .map(|_| vec![None])
                    .map_err(|status| status.code());
                (1, answer)
            }
        })
        .collect();
    Ok(seed(calls, concurrency).await)
}

/// Enrols members `members` (1-based) through `EnrollBatch`, 500 a call, `concurrency`
/// calls at a time.
pub async fn enrol_batches(
    api: &Api,
    members: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<SeedRate> {
    let client = api.connect().await?;
    let calls = batches(members)
        .into_iter()
        .map(|range| {
            let mut client = client.clone();
            let members = range
                .clone()
                .map(|index| proto::EnrollMemberRequest {
                    member_id: member_id(index),
                    ..Default::default()
                })
                .collect();
            async move {
                let answer = client
                    .enroll_batch(proto::EnrollBatchRequest {
                        program_id: PROGRAM.into(),
                        members,
                    })
                    .await
                    .map(|response| item_codes(response.into_inner().results))
                    .map_err(|status| status.code());
                (range.len(), answer)
            }
        })
        .collect();
    Ok(seed(calls, concurrency).await)
}

/// Seeded awards `from..to` (0-based, global): award `k` goes to member `k % members + 1`,
/// so the first `min(to, members)` members all hold points.
pub async fn seed_awards(
    api: &Api,
    members: usize,
    from: usize,
    to: usize,
    concurrency: usize,
) -> anyhow::Result<SeedRate> {
    let client = api.connect().await?;
    let occurred_at = timestamp_ago(Duration::from_secs(3_600));
    let calls = batches(from..to)
        .into_iter()
        .map(|range| {
            let mut client = client.clone();
            let awards = range
                .clone()
                .map(|k| proto::AwardRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id(k % members + 1),
                    idempotency_key: format!("seed-{k}"),
                    source: proto::PurchaseSource::Marketplace as i32,
                    external_ref: format!("seed-{k}"),
                    amount_minor: SEED_AMOUNT_MINOR,
                    currency: CURRENCY.into(),
                    occurred_at: Some(occurred_at),
                })
                .collect();
            async move {
                let answer = client
                    .award_batch(proto::AwardBatchRequest {
                        program_id: PROGRAM.into(),
                        awards,
                    })
                    .await
                    .map(|response| item_codes(response.into_inner().results))
                    .map_err(|status| status.code());
                (range.len(), answer)
            }
        })
        .collect();
    Ok(seed(calls, concurrency).await)
}

fn timestamp_ago(ago: Duration) -> prost_types::Timestamp {
    let at = std::time::SystemTime::now() - ago;
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(0),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

/// What the clients of one timed workload do.
#[derive(Debug, Clone)]
pub struct Mix {
    /// The share of calls that are awards; the rest are spends.
    pub award_share: f64,
    /// The members awards go to, uniformly.
    pub award_members: RangeInclusive<usize>,
    /// The members spends take from: only members holding points.
    pub spend_members: RangeInclusive<usize>,
}

/// What one timed workload measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Latencies of OK calls, sorted, in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Measured {
    pub fn ok_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `clients` clients for `duration`, each on its own connection, each issuing one
/// call at a time. `tag` makes the idempotency keys and purchase references of this run
/// unlike any other's.
pub async fn run(
    api: &Api,
    mix: &Mix,
    clients: usize,
    duration: Duration,
    tag: &str,
) -> anyhow::Result<Measured> {
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(api.connect().await?);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let barrier = barrier.clone();
            let mix = mix.clone();
            let prefix = format!("{tag}-{index}");
            tokio::spawn(async move {
                barrier.wait().await;
                client_loop(client, &mix, Instant::now() + duration, &prefix).await
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut total = Measured::default();
    for task in tasks {
        let part = task.await?;
        total.ok += part.ok;
        total.latencies_us.extend(part.latencies_us);
        for (code, count) in part.errors {
            *total.errors.entry(code).or_default() += count;
        }
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

async fn client_loop(
    mut client: LedgerClient<Authed>,
    mix: &Mix,
    deadline: Instant,
    prefix: &str,
) -> Measured {
    let mut rng = ChaCha8Rng::from_rng(&mut rand::rng());
    let mut measured = Measured::default();
    let occurred_at = timestamp_ago(Duration::from_secs(60));
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        sequence += 1;
        let key = format!("{prefix}-{sequence}");
        let started = Instant::now();
        let answer = if rng.random_bool(mix.award_share) {
            let member = rng.random_range(mix.award_members.clone());
            client
                .award(proto::AwardRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id(member),
                    idempotency_key: key.clone(),
                    source: proto::PurchaseSource::Marketplace as i32,
                    external_ref: key,
                    amount_minor: AWARD_AMOUNT_MINOR,
                    currency: CURRENCY.into(),
                    occurred_at: Some(occurred_at),
                })
                .await
                .map(|_| ())
        } else {
            let member = rng.random_range(mix.spend_members.clone());
            client
                .spend(proto::SpendRequest {
                    program_id: PROGRAM.into(),
                    member_id: member_id(member),
                    idempotency_key: key,
                    points: SPEND_POINTS,
                    reference: SPEND_REASON.into(),
                })
                .await
                .map(|_| ())
        };
        match answer {
            Ok(()) => {
                measured.ok += 1;
                let micros = started.elapsed().as_micros();
                measured
                    .latencies_us
                    .push(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Err(status) => {
                *measured
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }
    measured
}

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
