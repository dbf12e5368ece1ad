//! The seeded workload: concurrent clients that award, spend, reverse, adjust and refer, each
//! retrying a call that got no definite answer with the same idempotency key, and the model
//! of every key's fate the final checks compare the ledger with.
use flash_loyalty::grpc::proto;
use flash_testing_support::dispatch::{Authed, Bearer, Clients, Rpc};
use flash_testing_support::timestamp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic::{Code, Status};

pub const PROGRAM: &str = "chaos";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Award,
    AwardBatch,
    Replay,
    DuplicatePurchase,
    KeyConflict,
    Spend,
    ReverseAward,
    ReverseSpend,
    Adjust,
    Read,
    TwinSpend,
    KeyRace,
    Refer,
    Graph,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Award => "award",
            Op::AwardBatch => "award_batch",
            Op::Replay => "replay",
            Op::DuplicatePurchase => "dup_purchase",
            Op::KeyConflict => "key_conflict",
            Op::Spend => "spend",
            Op::ReverseAward => "reverse_award",
            Op::ReverseSpend => "reverse_spend",
            Op::Adjust => "adjust",
            Op::Read => "read",
            Op::TwinSpend => "twin_spend",
            Op::KeyRace => "key_race",
            Op::Refer => "refer",
            Op::Graph => "graph",
        }
    }
}

const WEIGHTS: [(Op, u32); 14] = [
    (Op::TwinSpend, 4),
    (Op::KeyRace, 3),
    (Op::Award, 30),
    (Op::AwardBatch, 6),
    (Op::Replay, 4),
    (Op::DuplicatePurchase, 2),
    (Op::KeyConflict, 2),
    (Op::Spend, 16),
    (Op::ReverseAward, 7),
    (Op::ReverseSpend, 6),
    (Op::Adjust, 9),
    (Op::Read, 4),
    (Op::Refer, 4),
    (Op::Graph, 2),
];

/// The chaos program's referral rules: a purchase of at least this amount converts.
pub const REFERRAL_MIN_AMOUNT_MINOR: i64 = 2_000;
pub const REFERRER_POINTS: i64 = 30;
pub const REFEREE_POINTS: i64 = 20;

/// What became of one idempotency key.
#[derive(Debug, Clone)]
pub enum Fate {
    /// No definite answer yet.
    Unresolved,
    /// OK: one entry must exist, with `delta` points.
    Acked,
    /// A definite refusal: no entry may exist.
    Refused(Code),
    /// The call failed in a way that is itself a finding (INTERNAL, …): not checked.
    Indeterminate,
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The entry kind the key writes.
    pub kind: &'static str,
    /// The member's index; for reversals, known once acknowledged.
    pub member: Option<usize>,
    pub fate: Fate,
    /// Signed effect on the member's balance, once acknowledged.
    pub delta: i64,
}

/// An acknowledged award, for replays, duplicates and reversals.
#[derive(Debug, Clone)]
pub struct AckedAward {
    pub request: proto::AwardRequest,
    pub entry_id: String,
    pub awarded_points: i64,
}

#[derive(Debug, Clone)]
pub struct AckedSpend {
    pub key: String,
    pub entry_id: String,
    pub points: i64,
}

/// An invite its referee accepted.
#[derive(Debug, Clone)]
pub struct AcceptedReferral {
    pub invite_id: String,
    pub referrer: usize,
    pub referee: usize,
    /// A conversion was acknowledged: an explicit one, an acceptance that converted, or a
    /// qualifying purchase.
    pub converted: bool,
}

#[derive(Default)]
pub struct Model {
    pub keys: HashMap<String, KeyRecord>,
    pub awards: Vec<AckedAward>,
    pub spends: Vec<AckedSpend>,
    pub referrals: Vec<AcceptedReferral>,
}

#[derive(Default)]
pub struct Stats {
    pub ops: AtomicU64,
    /// Awards the daily cap reduced.
    pub capped: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub per_op: Mutex<BTreeMap<&'static str, u64>>,
    pub refusals: Mutex<BTreeMap<String, u64>>,
    pub failures: Mutex<Vec<String>>,
    pub notes: Mutex<BTreeSet<String>>,
}

impl Stats {
    pub fn fail(&self, message: impl Into<String>) {
        let message = message.into();
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 200 {
            failures.push(message);
        }
    }

    pub fn note(&self, message: impl Into<String>) {
        self.notes.lock().unwrap().insert(message.into());
    }
}

/// The answer a caller ends up with.
pub enum Answer<T> {
    Ok(T),
    Refused(Code, String),
    Unimplemented,
    /// INTERNAL or an unexpected code: a finding, already recorded.
    Failed,
    /// Retries were cut off (the run's settle time ran out).
    GaveUp,
}

/// What is wrong with a GetGraph answer's shape, if anything.
fn graph_shape_problem(graph: &proto::GetGraphResponse, max_nodes: i32) -> Option<String> {
    let snapshot = graph.snapshot.as_ref()?;
    let nodes = graph.nodes.len();
    if nodes > max_nodes as usize {
        return Some(format!("{nodes} members answered"));
    }
    if nodes + graph.dropped_nodes as usize != snapshot.node_count as usize
        || graph.edges.len() + graph.dropped_edges as usize != snapshot.edge_count as usize
    {
        return Some(format!(
            "{nodes} + {} dropped members, {} + {} dropped referrals for a snapshot of {} and {}",
            graph.dropped_nodes,
            graph.edges.len(),
            graph.dropped_edges,
            snapshot.node_count,
            snapshot.edge_count
        ));
    }
    graph
        .edges
        .iter()
        .find(|e| {
            e.referrer as usize >= nodes
                || e.referee as usize >= nodes
                || e.referrer < 0
                || e.referee < 0
        })
        .map(|e| format!("edge {e:?} names a member not answered"))
}

pub struct Ctx {
    pub seed: u64,
    /// The members enrolled before the run (`..regular`), then the slots of referees
    /// who join during it.
    pub members: Vec<String>,
    pub member_index: HashMap<String, usize>,
    pub hot: usize,
    /// How many members were enrolled before the run.
    pub regular: usize,
    /// The next referee slot (`regular + next_slot`).
    next_slot: AtomicUsize,
    /// Referees enrolled during the run, in the order they joined: the operations pick
    /// them like any member.
    joined: Mutex<Vec<usize>>,
    clients: Vec<Clients>,
    pub model: Mutex<Model>,
    pub stats: Stats,
    /// Clients start no new operation once set.
    pub stop: AtomicBool,
    /// Retrying stops after this instant (set when settling).
    pub give_up_at: Mutex<Option<Instant>>,
    /// Operations the servers answer UNIMPLEMENTED to.
    pub disabled: Mutex<BTreeSet<Op>>,
    /// Chance that an attempt gets a short deadline and is cancelled mid-flight.
    pub cancel_chance: f64,
}

/// Codes after which the caller cannot know whether the call took effect.
fn no_definite_answer(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => true,
        // The transport's own INTERNAL (an h2 stream torn down by a killed server), not
        // the server's answer, which is always "internal error".
        Code::Internal => {
            let message = status.message();
            message.contains("h2 protocol error") || message.contains("transport")
        }
        _ => false,
    }
}

impl Ctx {
    pub fn new(
        seed: u64,
        endpoints: &[String],
        token: &str,
        rng: &mut ChaCha8Rng,
        members: usize,
    ) -> Ctx {
        let clients = endpoints
            .iter()
            .map(|endpoint| {
                let channel = Endpoint::from_shared(endpoint.clone())
                    .expect("endpoint")
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy();
                Clients::new(channel, Bearer::new(token))
            })
            .collect();
        // As many referee slots as members.
        let regular = members;
        let members: Vec<String> = (0..2 * members)
            .map(|_| uuid::Builder::from_random_bytes(rng.random()).into_uuid())
            .map(|u| u.to_string())
            .collect();
        let member_index = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        Ctx {
            seed,
            hot: (regular / 8).max(1),
            regular,
            next_slot: AtomicUsize::new(0),
            joined: Mutex::new(Vec::new()),
            members,
            member_index,
            clients,
            model: Mutex::new(Model::default()),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            give_up_at: Mutex::new(None),
            disabled: Mutex::new(BTreeSet::new()),
            cancel_chance: 0.12,
        }
    }

    fn gave_up(&self) -> bool {
        matches!(*self.give_up_at.lock().unwrap(), Some(at) if Instant::now() >= at)
    }

    /// Sends a call until it gets a definite answer, the same request each time.
    pub async fn call<R: Rpc>(
        &self,
        rng: &mut ChaCha8Rng,
        what: &str,
        request: &R,
    ) -> Answer<R::Response> {
        let mut in_a_row = 0u32;
        loop {
            if self.gave_up() {
                return Answer::GaveUp;
            }
            let mut client = self.clients[rng.random_range(0..self.clients.len())].clone();
            let deadline = if rng.random_bool(self.cancel_chance) {
                Duration::from_millis(rng.random_range(1..120))
            } else {
                Duration::from_secs(5)
            };
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::time::timeout(
                deadline + Duration::from_millis(20),
                client.rpc(request.clone(), Some(deadline)),
            )
            .await;
            match outcome {
                Ok(Ok(response)) => return Answer::Ok(response),
                Ok(Err(status)) if !no_definite_answer(&status) => {
                    return match status.code() {
                        Code::FailedPrecondition
                        | Code::AlreadyExists
                        | Code::InvalidArgument
                        | Code::NotFound
                        // A referrer's invite quota: the whole call refused.
                        | Code::ResourceExhausted => {
                            *self
                                .stats
                                .refusals
                                .lock()
                                .unwrap()
                                .entry(format!("{what}:{:?}", status.code()))
                                .or_default() += 1;
                            Answer::Refused(status.code(), status.message().to_owned())
                        }
                        Code::Unimplemented => Answer::Unimplemented,
                        code => {
                            self.stats
                                .fail(format!("{what}: {code:?} \"{}\"", status.message()));
                            Answer::Failed
                        }
                    };
                }
                _ => {}
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            in_a_row += 1;
            let backoff = rng.random_range(5..40) * u64::from(in_a_row.min(8));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
    }

    /// A member to act on: most often a hot one, else any enrolled member, referees who
    /// joined included.
    fn pick_member(&self, rng: &mut ChaCha8Rng) -> usize {
        if rng.random_bool(0.6) {
            return rng.random_range(0..self.hot);
        }
        let joined = self.joined.lock().unwrap();
        let pick = rng.random_range(0..self.regular + joined.len());
        if pick < self.regular {
            pick
        } else {
            joined[pick - self.regular]
        }
    }

    /// Every member known to be enrolled: the regular ones, then the referees who joined.
    pub fn enrolled_members(&self) -> Vec<usize> {
        (0..self.regular)
            .chain(self.joined.lock().unwrap().iter().copied())
            .collect()
    }

    /// Whether `member` is a referee who joined during the run.
    pub fn is_referee(&self, member: usize) -> bool {
        member >= self.regular
    }

    fn disable(&self, op: Op) {
        if self.disabled.lock().unwrap().insert(op) {
            self.stats.note(format!(
                "{} answers UNIMPLEMENTED: not exercised",
                op.name()
            ));
        }
    }

    fn pick_op(&self, rng: &mut ChaCha8Rng) -> Op {
        let disabled = self.disabled.lock().unwrap().clone();
        let choices: Vec<(Op, u32)> = WEIGHTS
            .iter()
            .copied()
            .filter(|(op, _)| !disabled.contains(op))
            .collect();
        let total: u32 = choices.iter().map(|(_, w)| w).sum();
        let mut roll = rng.random_range(0..total);
        for (op, weight) in choices {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        Op::Award
    }

    fn register(&self, key: &str, kind: &'static str, member: Option<usize>) {
        let previous = self.model.lock().unwrap().keys.insert(
            key.to_owned(),
            KeyRecord {
                kind,
                member,
                fate: Fate::Unresolved,
                delta: 0,
            },
        );
        assert!(previous.is_none(), "key {key} used twice by the driver");
    }

    fn settle(&self, key: &str, fate: Fate, member: Option<usize>, delta: i64) {
        let mut model = self.model.lock().unwrap();
        let record = model.keys.get_mut(key).expect("registered key");
        record.fate = fate;
        record.delta = delta;
        if member.is_some() {
            record.member = member;
        }
    }

    /// Records the fate of a call whose answer is not OK.
    fn settle_not_ok<T>(&self, key: &str, op: Op, answer: &Answer<T>) {
        match answer {
            Answer::Ok(_) => unreachable!(),
            Answer::Refused(code, _) => self.settle(key, Fate::Refused(*code), None, 0),
            Answer::Unimplemented => {
                self.disable(op);
                self.settle(key, Fate::Refused(Code::Unimplemented), None, 0);
            }
            Answer::Failed => self.settle(key, Fate::Indeterminate, None, 0),
            Answer::GaveUp => {}
        }
    }

    fn award_request(&self, rng: &mut ChaCha8Rng, member: usize, key: &str) -> proto::AwardRequest {
        let source = match rng.random_range(0..3) {
            0 => proto::PurchaseSource::Receipt,
            1 => proto::PurchaseSource::Shopify,
            _ => proto::PurchaseSource::Marketplace,
        };
        proto::AwardRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
            idempotency_key: key.to_owned(),
            source: source as i32,
            external_ref: format!("order-{key}"),
            // Some below the $1 minimum (0 points), most a few dollars to ~$60.
            amount_minor: rng.random_range(50..6_000),
            currency: "USD".into(),
            occurred_at: Some(timestamp(
                chrono::Utc::now() - chrono::Duration::milliseconds(rng.random_range(0..60_000)),
            )),
        }
    }

    fn acked_award(&self, rng: &mut ChaCha8Rng, points_only: bool) -> Option<AckedAward> {
        let model = self.model.lock().unwrap();
        let awards: Vec<&AckedAward> = model
            .awards
            .iter()
            .filter(|a| !points_only || a.awarded_points > 0)
            .collect();
        if awards.is_empty() {
            return None;
        }
        Some(awards[rng.random_range(0..awards.len())].clone())
    }

    fn record_award(&self, request: &proto::AwardRequest, response: &proto::AwardResponse) {
        let member = self.member_index[&request.member_id];
        if response.awarded_points > response.requested_points || response.awarded_points < 0 {
            self.stats.fail(format!(
                "award {}: awarded {} of requested {}",
                request.idempotency_key, response.awarded_points, response.requested_points
            ));
        }
        if response.capped {
            self.stats.capped.fetch_add(1, Ordering::Relaxed);
        }
        self.settle(
            &request.idempotency_key,
            Fate::Acked,
            Some(member),
            response.awarded_points,
        );
        self.model.lock().unwrap().awards.push(AckedAward {
            request: request.clone(),
            entry_id: response.entry_id.clone(),
            awarded_points: response.awarded_points,
        });
    }

    /// Enrols every member: every third with a birthday today in the program's zone and
    /// every other one enrolled 200 days ago, so the servers' workers pay birthday and
    /// re-engagement bonuses during the run, killed mid-job with their servers.
    pub async fn enroll_all(&self, rng: &mut ChaCha8Rng) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let today = now.with_timezone(&chrono_tz::Europe::Paris).date_naive();
        let birthday = match today.format("%m-%d").to_string().as_str() {
            "02-29" => "1992-02-29".to_owned(),
            month_day => format!("1990-{month_day}"),
        };
        let requests: Vec<proto::EnrollMemberRequest> = self.members[..self.regular]
            .iter()
            .cloned()
            .enumerate()
            .map(|(index, member)| proto::EnrollMemberRequest {
                program_id: PROGRAM.into(),
                member_id: member,
                birthday: if index % 3 == 0 {
                    birthday.clone()
                } else {
                    String::new()
                },
                enrolled_at: (index % 2 == 0)
                    .then(|| flash_testing_support::timestamp(now - chrono::Duration::days(200))),
                // Every other member without contacts: EnrollBatch enrolls those in one
                // statement, the others each in its own transaction.
                contacts: if index % 4 < 2 {
                    vec![format!("member{index}@chaos.example")]
                } else {
                    vec![]
                },
            })
            .collect();
        // The first half one by one, the rest in batches.
        let (single, batched) = requests.split_at(requests.len() / 2);
        for request in single {
            let answer = self.call(rng, "enroll", request).await;
            if !matches!(answer, Answer::Ok(_)) {
                anyhow::bail!("enrolling a member failed");
            }
        }
        for members in batched.chunks(25) {
            let request = proto::EnrollBatchRequest {
                program_id: PROGRAM.into(),
                members: members.to_vec(),
            };
            let Answer::Ok(response) = self.call(rng, "enroll_batch", &request).await else {
                anyhow::bail!("enrolling a batch of members failed");
            };
            let enrolled = response
                .results
                .iter()
                .filter(|result| {
                    matches!(
                        result.outcome,
                        Some(proto::enroll_batch_result::Outcome::Member(_))
                    )
                })
                .count();
            if enrolled != members.len() {
                anyhow::bail!(
                    "a batch enrolled {enrolled} of {} members: {:?}",
                    members.len(),
                    response.results
                );
            }
        }
        Ok(())
    }

    /// One client: operations until told to stop, each retried to a definite answer.
    pub async fn client(&self, id: usize, mut rng: ChaCha8Rng) {
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let key = format!("s{}-c{id}-{n}", self.seed);
            let op = self.pick_op(&mut rng);
            self.stats.ops.fetch_add(1, Ordering::Relaxed);
            *self
                .stats
                .per_op
                .lock()
                .unwrap()
                .entry(op.name())
                .or_default() += 1;
            match op {
                Op::Award => self.award(&mut rng, key).await,
                Op::AwardBatch => self.award_batch(&mut rng, key).await,
                Op::Replay => self.replay(&mut rng).await,
                Op::DuplicatePurchase => self.duplicate_purchase(&mut rng, key).await,
                Op::KeyConflict => self.key_conflict(&mut rng).await,
                Op::Spend => self.spend(&mut rng, key).await,
                Op::ReverseAward => self.reverse_award(&mut rng, key).await,
                Op::ReverseSpend => self.reverse_spend(&mut rng, key).await,
                Op::Adjust => self.adjust(&mut rng, key).await,
                Op::Read => self.read(&mut rng).await,
                Op::TwinSpend => self.twin_spend(&mut rng, key).await,
                Op::KeyRace => self.key_race(&mut rng, key).await,
                Op::Refer => self.refer(&mut rng, key).await,
                Op::Graph => self.graph(&mut rng).await,
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
        }
    }

    async fn send_award(
        &self,
        rng: &mut ChaCha8Rng,
        request: &proto::AwardRequest,
    ) -> Answer<proto::AwardResponse> {
        self.call(rng, "award", request).await
    }

    async fn award(&self, rng: &mut ChaCha8Rng, key: String) {
        let member = self.pick_member(rng);
        let request = self.award_request(rng, member, &key);
        self.register(&key, "award", Some(member));
        match self.send_award(rng, &request).await {
            Answer::Ok(response) => self.record_award(&request, &response),
            other => self.settle_not_ok(&key, Op::Award, &other),
        }
    }

    async fn award_batch(&self, rng: &mut ChaCha8Rng, key: String) {
        let items = rng.random_range(2..=8);
        let mut pending: Vec<proto::AwardRequest> = (0..items)
            .map(|i| {
                let member = self.pick_member(rng);
                let item_key = format!("{key}-b{i}");
                self.register(&item_key, "award", Some(member));
                let mut request = self.award_request(rng, member, &item_key);
                // The batch carries the program; items may leave it empty.
                if rng.random_bool(0.5) {
                    request.program_id.clear();
                }
                request
            })
            .collect();
        let mut rounds = 0u32;
        while !pending.is_empty() {
            rounds += 1;
            let batch = proto::AwardBatchRequest {
                program_id: PROGRAM.into(),
                awards: pending.clone(),
            };
            let answer = self.call(rng, "award_batch", &batch).await;
            let response = match answer {
                Answer::Ok(response) => response,
                other => {
                    for request in &pending {
                        self.settle_not_ok(&request.idempotency_key, Op::AwardBatch, &other);
                    }
                    return;
                }
            };
            if response.results.len() != pending.len() {
                self.stats.fail(format!(
                    "award_batch {key}: {} results for {} awards",
                    response.results.len(),
                    pending.len()
                ));
                for request in &pending {
                    self.settle(&request.idempotency_key, Fate::Indeterminate, None, 0);
                }
                return;
            }
            let mut retry = Vec::new();
            for (request, result) in pending.into_iter().zip(response.results) {
                let mut full = request.clone();
                full.program_id = PROGRAM.into();
                match result.outcome {
                    Some(proto::award_batch_result::Outcome::Award(award)) => {
                        self.record_award(&full, &award)
                    }
                    Some(proto::award_batch_result::Outcome::Error(error)) => {
                        let status = Status::new(Code::from_i32(error.code), error.message);
                        let key = &request.idempotency_key;
                        if no_definite_answer(&status) {
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            retry.push(request);
                        } else {
                            match status.code() {
                                Code::FailedPrecondition
                                | Code::AlreadyExists
                                | Code::InvalidArgument
                                | Code::NotFound => {
                                    *self
                                        .stats
                                        .refusals
                                        .lock()
                                        .unwrap()
                                        .entry(format!("award_batch_item:{:?}", status.code()))
                                        .or_default() += 1;
                                    self.settle(key, Fate::Refused(status.code()), None, 0)
                                }
                                code => {
                                    self.stats.fail(format!(
                                        "award_batch item {key}: {code:?} \"{}\"",
                                        status.message()
                                    ));
                                    self.settle(key, Fate::Indeterminate, None, 0)
                                }
                            }
                        }
                    }
                    None => {
                        self.stats
                            .fail(format!("award_batch {key}: a result with no outcome"));
                        self.settle(&request.idempotency_key, Fate::Indeterminate, None, 0)
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                if self.gave_up() {
                    return;
                }
                let backoff = rng.random_range(5..40) * u64::from(rounds.min(8));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
        }
    }

    /// The same request again under an acknowledged key: the original outcome, replayed.
    async fn replay(&self, rng: &mut ChaCha8Rng) {
        let Some(original) = self.acked_award(rng, false) else {
            return;
        };
        match self.send_award(rng, &original.request).await {
            Answer::Ok(response)
                if !response.replayed
                    || response.entry_id != original.entry_id
                    || response.awarded_points != original.awarded_points =>
            {
                self.stats.fail(format!(
                    "replay of {}: got entry {} ({} points, replayed={}), acknowledged entry {} ({} points)",
                    original.request.idempotency_key,
                    response.entry_id,
                    response.awarded_points,
                    response.replayed,
                    original.entry_id,
                    original.awarded_points
                ));
            }
            Answer::Ok(_) => {}
            Answer::Refused(code, message) => self.stats.fail(format!(
                "replay of acknowledged {}: {code:?} \"{message}\"",
                original.request.idempotency_key
            )),
            _ => {}
        }
    }

    /// An acknowledged purchase sent again under a new key: ALREADY_EXISTS, nothing written.
    async fn duplicate_purchase(&self, rng: &mut ChaCha8Rng, key: String) {
        let Some(original) = self.acked_award(rng, false) else {
            return;
        };
        let mut request = original.request.clone();
        request.idempotency_key = key.clone();
        if rng.random_bool(0.5) {
            request.amount_minor += rng.random_range(1..500);
        }
        let member = self.member_index[&request.member_id];
        self.register(&key, "award", Some(member));
        match self.send_award(rng, &request).await {
            Answer::Ok(response) => {
                self.stats.fail(format!(
                    "purchase {} credited twice: key {key} got {} points (entry {}), first under {}",
                    request.external_ref,
                    response.awarded_points,
                    response.entry_id,
                    original.request.idempotency_key
                ));
                self.settle(&key, Fate::Acked, Some(member), response.awarded_points);
            }
            Answer::Refused(Code::AlreadyExists, _) => {
                self.settle(&key, Fate::Refused(Code::AlreadyExists), None, 0)
            }
            Answer::Refused(code, message) => {
                self.stats.fail(format!(
                    "duplicate purchase {key}: {code:?} \"{message}\", expected ALREADY_EXISTS"
                ));
                self.settle(&key, Fate::Refused(code), None, 0)
            }
            other => self.settle_not_ok(&key, Op::DuplicatePurchase, &other),
        }
    }

    /// An acknowledged key with a different request: ALREADY_EXISTS.
    async fn key_conflict(&self, rng: &mut ChaCha8Rng) {
        let Some(original) = self.acked_award(rng, false) else {
            return;
        };
        let mut request = original.request.clone();
        request.amount_minor += rng.random_range(1..500);
        match self.send_award(rng, &request).await {
            Answer::Ok(response) => self.stats.fail(format!(
                "key {} reused with another amount answered OK (entry {}, replayed={})",
                request.idempotency_key, response.entry_id, response.replayed
            )),
            Answer::Refused(Code::AlreadyExists, _) => {}
            Answer::Refused(code, message) => self.stats.fail(format!(
                "key conflict on {}: {code:?} \"{message}\", expected ALREADY_EXISTS",
                request.idempotency_key
            )),
            _ => {}
        }
    }

    async fn spend(&self, rng: &mut ChaCha8Rng, key: String) {
        let member = self.pick_member(rng);
        let points = rng.random_range(1..=60);
        let request = proto::SpendRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
            idempotency_key: key.clone(),
            points,
            reference: format!("reward-{key}"),
        };
        self.register(&key, "spend", Some(member));
        let answer = self.call(rng, "spend", &request).await;
        match answer {
            Answer::Ok(response) => {
                let drawn: i64 = response.allocations.iter().map(|a| a.points).sum();
                if response.points != points || drawn != points {
                    self.stats.fail(format!(
                        "spend {key}: asked {points}, spent {}, allocations total {drawn}",
                        response.points
                    ));
                }
                if response.balance_points < 0 {
                    self.stats.fail(format!(
                        "spend {key}: negative balance {}",
                        response.balance_points
                    ));
                }
                self.settle(&key, Fate::Acked, Some(member), -response.points);
                self.model.lock().unwrap().spends.push(AckedSpend {
                    key,
                    entry_id: response.entry_id,
                    points: response.points,
                });
            }
            other => self.settle_not_ok(&key, Op::Spend, &other),
        }
    }

    async fn send_spend(
        &self,
        rng: &mut ChaCha8Rng,
        request: &proto::SpendRequest,
    ) -> Answer<proto::SpendResponse> {
        self.call(rng, "spend", request).await
    }

    /// The same spend sent twice at once (a caller retrying while its first call is still
    /// in flight): one entry, and both answers agree.
    async fn twin_spend(&self, rng: &mut ChaCha8Rng, key: String) {
        let member = self.pick_member(rng);
        let points = rng.random_range(1..=40);
        let request = proto::SpendRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
            idempotency_key: key.clone(),
            points,
            reference: format!("reward-{key}"),
        };
        self.register(&key, "spend", Some(member));
        let (mut rng_a, mut rng_b) = (
            ChaCha8Rng::from_rng(&mut *rng),
            ChaCha8Rng::from_rng(&mut *rng),
        );
        let (a, b) = futures::join!(
            self.send_spend(&mut rng_a, &request),
            self.send_spend(&mut rng_b, &request)
        );
        let describe = |answer: &Answer<proto::SpendResponse>| match answer {
            Answer::Ok(r) => format!(
                "OK entry {} ({} points, replayed={})",
                r.entry_id, r.points, r.replayed
            ),
            Answer::Refused(code, message) => format!("{code:?} \"{message}\""),
            Answer::Unimplemented => "UNIMPLEMENTED".into(),
            Answer::Failed => "failed".into(),
            Answer::GaveUp => "no answer".into(),
        };
        match (&a, &b) {
            (Answer::Ok(x), Answer::Ok(y)) if x.entry_id != y.entry_id || x.points != y.points => {
                self.stats.fail(format!(
                    "twin spend {key}: two different entries: {} / {}",
                    describe(&a),
                    describe(&b)
                ));
            }
            (Answer::Ok(_), Answer::Ok(_)) => {}
            (Answer::Ok(done), Answer::Refused(..)) | (Answer::Refused(..), Answer::Ok(done)) => {
                // Legitimate when the refusal came first (the balance grew in between): a
                // refusal is not stored. But once acknowledged, the key must replay.
                if let Answer::Refused(code, message) = self.send_spend(rng, &request).await {
                    self.stats.fail(format!(
                        "twin spend {key}: acknowledged as {}, then the same request was \
                         refused: {code:?} \"{message}\" (twins: {} / {})",
                        done.entry_id,
                        describe(&a),
                        describe(&b)
                    ));
                }
            }
            _ => {}
        }
        match (a, b) {
            (Answer::Ok(response), _) | (_, Answer::Ok(response)) => {
                self.settle(&key, Fate::Acked, Some(member), -response.points);
                self.model.lock().unwrap().spends.push(AckedSpend {
                    key,
                    entry_id: response.entry_id,
                    points: response.points,
                });
            }
            (Answer::GaveUp, _) | (_, Answer::GaveUp) => {}
            (other, _) => self.settle_not_ok(&key, Op::TwinSpend, &other),
        }
    }

    /// One fresh key sent at once for two different purchases of two members: exactly
    /// one wins, the other is ALREADY_EXISTS.
    async fn key_race(&self, rng: &mut ChaCha8Rng, key: String) {
        let first = self.pick_member(rng);
        let second = (0..16)
            .map(|_| self.pick_member(rng))
            .find(|&m| m != first)
            .unwrap_or((first + 1) % self.regular);
        let request_a = self.award_request(rng, first, &key);
        let mut request_b = self.award_request(rng, second, &key);
        request_b.external_ref.push_str("-rival");
        self.register(&key, "award", None);
        let (mut rng_a, mut rng_b) = (
            ChaCha8Rng::from_rng(&mut *rng),
            ChaCha8Rng::from_rng(&mut *rng),
        );
        let (a, b) = futures::join!(
            self.send_award(&mut rng_a, &request_a),
            self.send_award(&mut rng_b, &request_b)
        );
        match (a, b) {
            (Answer::Ok(x), Answer::Ok(y)) => {
                self.stats.fail(format!(
                    "key race {key}: both purchases credited under one key (entries {} and {})",
                    x.entry_id, y.entry_id
                ));
                self.settle(&key, Fate::Indeterminate, None, 0);
            }
            (Answer::Ok(x), Answer::Refused(Code::AlreadyExists, _)) => {
                self.record_award(&request_a, &x)
            }
            (Answer::Refused(Code::AlreadyExists, _), Answer::Ok(y)) => {
                self.record_award(&request_b, &y)
            }
            (Answer::Ok(x), other) => {
                if let Answer::Refused(code, message) = &other {
                    self.stats.fail(format!(
                        "key race {key}: loser got {code:?} \"{message}\", expected ALREADY_EXISTS"
                    ));
                }
                self.record_award(&request_a, &x)
            }
            (other, Answer::Ok(y)) => {
                if let Answer::Refused(code, message) = &other {
                    self.stats.fail(format!(
                        "key race {key}: loser got {code:?} \"{message}\", expected ALREADY_EXISTS"
                    ));
                }
                self.record_award(&request_b, &y)
            }
            (Answer::Refused(code_a, message_a), Answer::Refused(code_b, message_b)) => {
                self.stats.fail(format!(
                    "key race {key}: neither purchase credited: {code_a:?} \"{message_a}\" / {code_b:?} \"{message_b}\""
                ));
                self.settle(&key, Fate::Refused(code_a), None, 0);
            }
            (Answer::GaveUp, _) | (_, Answer::GaveUp) => {}
            _ => self.settle(&key, Fate::Indeterminate, None, 0),
        }
    }

    async fn reverse_award(&self, rng: &mut ChaCha8Rng, key: String) {
        let Some(award) = self.acked_award(rng, true) else {
            return;
        };
        let points = rng
            .random_bool(0.5)
            .then(|| rng.random_range(1..=award.awarded_points));
        let reference = if rng.random_bool(0.5) {
            proto::entry_ref::Ref::IdempotencyKey(award.request.idempotency_key.clone())
        } else {
            proto::entry_ref::Ref::EntryId(award.entry_id.clone())
        };
        let request = proto::ReverseAwardRequest {
            program_id: PROGRAM.into(),
            idempotency_key: key.clone(),
            award: Some(proto::EntryRef {
                r#ref: Some(reference),
            }),
            points,
            reason: format!("refund-{key}"),
        };
        let member = self.member_index[&award.request.member_id];
        self.register(&key, "award_reversal", Some(member));
        let answer = self.call(rng, "reverse_award", &request).await;
        match answer {
            Answer::Ok(response) => {
                if response.member_id != award.request.member_id
                    || response.award_entry_id != award.entry_id
                    || response.recovered_points + response.unrecovered_points
                        != response.reversed_points
                    || points.is_some_and(|p| p != response.reversed_points)
                    || response.recovered_points < 0
                {
                    self.stats.fail(format!(
                        "reverse_award {key} of {} ({} points, asked {points:?}): {response:?}",
                        award.entry_id, award.awarded_points
                    ));
                }
                self.settle(&key, Fate::Acked, Some(member), -response.recovered_points);
            }
            other => self.settle_not_ok(&key, Op::ReverseAward, &other),
        }
    }

    async fn reverse_spend(&self, rng: &mut ChaCha8Rng, key: String) {
        let spend = {
            let model = self.model.lock().unwrap();
            if model.spends.is_empty() {
                return;
            }
            model.spends[rng.random_range(0..model.spends.len())].clone()
        };
        let points = rng
            .random_bool(0.5)
            .then(|| rng.random_range(1..=spend.points));
        let reference = if rng.random_bool(0.5) {
            proto::entry_ref::Ref::IdempotencyKey(spend.key.clone())
        } else {
            proto::entry_ref::Ref::EntryId(spend.entry_id.clone())
        };
        let request = proto::ReverseSpendRequest {
            program_id: PROGRAM.into(),
            idempotency_key: key.clone(),
            spend: Some(proto::EntryRef {
                r#ref: Some(reference),
            }),
            points,
            reason: format!("cancel-{key}"),
        };
        let member = self.model.lock().unwrap().keys[&spend.key].member;
        self.register(&key, "spend_reversal", member);
        let answer = self.call(rng, "reverse_spend", &request).await;
        match answer {
            Answer::Ok(response) => {
                let restored: i64 = response.allocations.iter().map(|a| a.points).sum();
                if response.spend_entry_id != spend.entry_id
                    || response.restored_points + response.expired_points + response.repaid_points
                        != response.reversed_points
                    || points.is_some_and(|p| p != response.reversed_points)
                    || restored != response.restored_points
                    || member.map(|m| &self.members[m]) != Some(&response.member_id)
                {
                    self.stats.fail(format!(
                        "reverse_spend {key} of {} ({} points, asked {points:?}): {response:?}",
                        spend.entry_id, spend.points
                    ));
                }
                self.settle(&key, Fate::Acked, member, response.restored_points);
            }
            other => self.settle_not_ok(&key, Op::ReverseSpend, &other),
        }
    }

    async fn adjust(&self, rng: &mut ChaCha8Rng, key: String) {
        let member = self.pick_member(rng);
        let mut points = rng.random_range(-40..=100);
        if points == 0 {
            points = 1;
        }
        let request = proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
            idempotency_key: key.clone(),
            points,
            reason: format!("goodwill-{key}"),
            actor: "flash-chaos".into(),
            ..Default::default()
        };
        self.register(&key, "adjustment", Some(member));
        let answer = self.call(rng, "adjust", &request).await;
        match answer {
            Answer::Ok(response) => {
                if response.points != points {
                    self.stats.fail(format!(
                        "adjust {key}: asked {points}, applied {}",
                        response.points
                    ));
                }
                self.settle(&key, Fate::Acked, Some(member), response.points);
            }
            other => self.settle_not_ok(&key, Op::Adjust, &other),
        }
    }

    /// A referral end to end, each step retried to a definite answer: a member invites a
    /// new contact, the referee enrols with it and accepts, then converts with a
    /// qualifying purchase or explicitly. The referee joins the members every other
    /// operation picks once enrolled, so its purchases, refunds and spends race the
    /// conversion and the clawback.
    async fn refer(&self, rng: &mut ChaCha8Rng, key: String) {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let referee = self.regular + slot;
        if referee >= self.members.len() {
            return self.award(rng, key).await;
        }
        let referrer = self.pick_member(rng);
        let contact = format!("referee{slot}@chaos.example");
        let invite_key = format!("{key}-invite");
        self.register(&invite_key, "referral", Some(referrer));
        let request = proto::CreateInvitesRequest {
            program_id: PROGRAM.into(),
            referrer_member_id: self.members[referrer].clone(),
            idempotency_key: invite_key.clone(),
            contacts: vec![contact.clone()],
        };
        let answer = self.call(rng, "create_invites", &request).await;
        let Answer::Ok(response) = answer else {
            return self.settle_not_ok(&invite_key, Op::Refer, &answer);
        };
        self.settle(&invite_key, Fate::Acked, None, 0);
        let result = response.results.first();
        let Some(invite) = result.and_then(|r| r.invite.clone()) else {
            // A quota or a refusal of the contact: counted, nothing to follow.
            let refusal = result.map_or(0, |r| r.refusal);
            *self
                .stats
                .refusals
                .lock()
                .unwrap()
                .entry(format!("create_invites:refusal {refusal}"))
                .or_default() += 1;
            return;
        };

        if rng.random_bool(0.1) {
            // The referrer takes it back before anyone joins.
            let revoke_key = format!("{key}-revoke");
            self.register(&revoke_key, "referral", Some(referrer));
            let revoke = proto::RevokeInviteRequest {
                program_id: PROGRAM.into(),
                code: invite.code,
                idempotency_key: revoke_key.clone(),
            };
            match self.call(rng, "revoke_invite", &revoke).await {
                Answer::Ok(_) => self.settle(&revoke_key, Fate::Acked, None, 0),
                other => self.settle_not_ok(&revoke_key, Op::Refer, &other),
            }
            return;
        }
        let enroll = proto::EnrollMemberRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[referee].clone(),
            birthday: String::new(),
            enrolled_at: None,
            contacts: vec![contact],
        };
        match self.call(rng, "enroll_referee", &enroll).await {
            Answer::Ok(_) => self.joined.lock().unwrap().push(referee),
            Answer::Refused(code, message) => {
                return self.stats.fail(format!(
                    "enrolling referee {referee}: {code:?} \"{message}\""
                ));
            }
            Answer::Unimplemented | Answer::Failed | Answer::GaveUp => return,
        }

        let accept_key = format!("{key}-accept");
        self.register(&accept_key, "referral", Some(referee));
        let accept = proto::AcceptInviteRequest {
            program_id: PROGRAM.into(),
            code: invite.code.clone(),
            referee_member_id: self.members[referee].clone(),
            idempotency_key: accept_key.clone(),
        };
        let answer = self.call(rng, "accept_invite", &accept).await;
        let Answer::Ok(response) = answer else {
            if let Answer::Refused(code, message) = &answer {
                // A fresh invite to a fresh contact accepted by a new member: nothing may
                // refuse it.
                self.stats.fail(format!(
                    "accepting invite {}: {code:?} \"{message}\"",
                    invite.invite_id
                ));
            }
            return self.settle_not_ok(&accept_key, Op::Refer, &answer);
        };
        self.settle(&accept_key, Fate::Acked, None, 0);
        let converted = response
            .change
            .is_some_and(|c| c.status == proto::InviteStatus::Converted as i32);
        let record = {
            let mut model = self.model.lock().unwrap();
            model.referrals.push(AcceptedReferral {
                invite_id: invite.invite_id.clone(),
                referrer,
                referee,
                converted,
            });
            model.referrals.len() - 1
        };

        let converted = if rng.random_bool(0.15) {
            // Left accepted: a later purchase of the referee's, by any client, converts it.
            false
        } else if rng.random_bool(0.7) {
            let purchase_key = format!("{key}-purchase");
            let mut request = self.award_request(rng, referee, &purchase_key);
            request.amount_minor = rng.random_range(REFERRAL_MIN_AMOUNT_MINOR..6_000);
            self.register(&purchase_key, "award", Some(referee));
            match self.send_award(rng, &request).await {
                Answer::Ok(response) => {
                    self.record_award(&request, &response);
                    true
                }
                other => {
                    self.settle_not_ok(&purchase_key, Op::Award, &other);
                    false
                }
            }
        } else {
            let convert_key = format!("{key}-convert");
            self.register(&convert_key, "referral", Some(referee));
            let convert = proto::ConvertInviteRequest {
                program_id: PROGRAM.into(),
                code: invite.code,
                idempotency_key: convert_key.clone(),
            };
            match self.call(rng, "convert_invite", &convert).await {
                Answer::Ok(_) => {
                    self.settle(&convert_key, Fate::Acked, None, 0);
                    true
                }
                // A purchase of the referee's, racing on another client, converted first.
                other => {
                    self.settle_not_ok(&convert_key, Op::Refer, &other);
                    false
                }
            }
        };
        if converted {
            self.model.lock().unwrap().referrals[record].converted = true;
        }
    }

    async fn read(&self, rng: &mut ChaCha8Rng) {
        let member = self.pick_member(rng);
        if rng.random_bool(0.5) {
            // The newest page of the member's history, under the same faults.
            let _ = self.list_entries(rng, member, "").await;
            return;
        }
        if let Answer::Ok(response) = self.get_member(rng, member).await {
            let balance = response.member.map_or(0, |m| m.balance_points);
            if balance < 0 {
                self.stats.fail(format!(
                    "member {}: negative balance {balance}",
                    self.members[member]
                ));
            }
        }
    }

    /// A snapshot rebuilt, or a graph read (down-sampled or a neighbourhood) checked for
    /// its shape. NOT_FOUND before the first snapshot is a refusal like any other.
    async fn graph(&self, rng: &mut ChaCha8Rng) {
        let roll = rng.random_range(0..10);
        if roll < 3 {
            let request = proto::RebuildSnapshotRequest {
                program_id: PROGRAM.into(),
            };
            let _ = self.call(rng, "rebuild_snapshot", &request).await;
        } else if roll < 7 {
            let max_nodes = rng.random_range(1..=200);
            let request = proto::GetGraphRequest {
                program_id: PROGRAM.into(),
                max_nodes,
            };
            if let Answer::Ok(graph) = self.call(rng, "get_graph", &request).await {
                if let Some(problem) = graph_shape_problem(&graph, max_nodes) {
                    self.stats
                        .fail(format!("GetGraph(max_nodes {max_nodes}): {problem}"));
                }
            }
        } else {
            let member = self.pick_member(rng);
            let request = proto::GetNeighborhoodRequest {
                program_id: PROGRAM.into(),
                member_id: self.members[member].clone(),
                depth: rng.random_range(1..=3),
                max_nodes: rng.random_range(1..=100),
            };
            if let Answer::Ok(around) = self.call(rng, "get_neighborhood", &request).await {
                let centre = around.nodes.first().and_then(|n| n.node.as_ref());
                if centre.map(|n| n.member_id.as_str()) != Some(self.members[member].as_str()) {
                    self.stats.fail(format!(
                        "GetNeighborhood of {}: the centre is not first",
                        self.members[member]
                    ));
                }
            }
        }
    }

    pub async fn list_entries(
        &self,
        rng: &mut ChaCha8Rng,
        member: usize,
        page_token: &str,
    ) -> Answer<proto::ListEntriesResponse> {
        let request = proto::ListEntriesRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
            page_size: rng.random_range(1..=200),
            page_token: page_token.to_owned(),
        };
        self.call(rng, "list_entries", &request).await
    }

    pub async fn get_liability(
        &self,
        rng: &mut ChaCha8Rng,
        from: prost_types::Timestamp,
        to: prost_types::Timestamp,
    ) -> Answer<proto::GetLiabilityResponse> {
        let request = proto::GetLiabilityRequest {
            program_id: PROGRAM.into(),
            from: Some(from),
            to: Some(to),
        };
        self.call(rng, "get_liability", &request).await
    }

    /// An event-stream client of one of the servers.
    pub fn events_client(
        &self,
        rng: &mut ChaCha8Rng,
    ) -> flash_loyalty::grpc::proto::events_client::EventsClient<Authed> {
        use rand::Rng;
        self.clients[rng.random_range(0..self.clients.len())]
            .events
            .clone()
    }

    pub async fn get_member(
        &self,
        rng: &mut ChaCha8Rng,
        member: usize,
    ) -> Answer<proto::GetMemberResponse> {
        let request = proto::GetMemberRequest {
            program_id: PROGRAM.into(),
            member_id: self.members[member].clone(),
        };
        self.call(rng, "get_member", &request).await
    }
}

pub fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
