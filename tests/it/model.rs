//! A model-based test: random sequences of ledger operations (awards, spends, award and
//! spend reversals, adjustments, clock moves, expiry sweeps, replays, reused keys, lost
//! cap counters) run against the real service and against a small in-memory model of the
//! rules, written here independently of the crate's domain code. Every answer must match
//! the model (points, cap, allocations in order and batch by batch, errors, replays); so
//! must GetMember (balance, lifetime earned, next expiry) of the request's member after a
//! request, of every member after a clock move or a sweep and at the end of the case,
//! when a last sweep writes off what is left and the program's audit must be clean.
//! proptest shrinks a failing sequence to a minimal one and prints it.
//!
//! The model never imports the service's domain code: its independence is what makes it
//! worth having. It found, among others, the refund-then-cancel hole (a cancelled spend
//! put back refunded points) once refunds and cancellations of the same purchase were
//! likely in the mix, and it states the daily cap under time-zone changes on its own.
//!
//! One app (one database) serves the whole run; each case gets a fresh program and fresh
//! members, and the shared clock is reset to the same start, so cases run one after another.
//! `FLASH_MODEL_CASES` sets the number of cases (256 by default).
use crate::helpers::{redis_url, spawn_app_with, timestamp, TestApp};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use flash_loyalty::grpc::proto;
use flash_testing_support::dispatch::Clients;
use fred::prelude::{ClientLike, KeysInterface};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;

/// The rules of every case's program: USD, 1.5 points per dollar from $1, at most 100
/// purchase points a Tokyo day, batches valid 21 days.
const BASE_RATE_BP: i64 = 15_000;
const MIN_AMOUNT_MINOR: i64 = 100;
const DAILY_CAP_POINTS: i64 = 100;
const VALIDITY_DAYS: i64 = 21;
const MAX_OPS: usize = 40;
/// The zones a case's program may move to; the first is where it starts.
const ZONES: [&str; 5] = [
    "Asia/Tokyo",
    "UTC",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "America/Los_Angeles",
];
/// How long a replaced zone still bounds the cap: longer than any local day.
const CAP_ZONE_LOOKBACK_HOURS: i64 = 48;
/// The API's limits: the largest purchase, and the largest adjustment or spend.
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
const MAX_ADJUST_POINTS: i64 = 1_000_000_000_000;

/// Starts the Redis key prefix of the test's app, so a case can delete its cap counters.
const REDIS_PREFIX: &str = "test:model:";

fn zone(name: &str) -> chrono_tz::Tz {
    name.parse().expect("a known zone")
}

/// The local calendar day of an instant in a zone, and the instant that day began.
fn local_day(instant: DateTime<Utc>, zone: chrono_tz::Tz) -> (NaiveDate, DateTime<Utc>) {
    let day = instant.with_timezone(&zone).date_naive();
    // None of the model's zones skips midnight.
    let start = zone
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    (day, start)
}

fn case_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// Far past every expiry a case can reach (40 steps of at most 20 days, plus validity).
fn far_future() -> DateTime<Utc> {
    case_start() + Duration::days(20 * 365)
}

fn program_rules(timezone: &str) -> proto::ProgramRules {
    proto::ProgramRules {
        currency: "USD".into(),
        timezone: timezone.into(),
        base_rate_bp: BASE_RATE_BP,
        min_amount_minor: MIN_AMOUNT_MINOR,
        daily_cap_points: Some(DAILY_CAP_POINTS),
        points_validity_days: VALIDITY_DAYS as i32,
        tiers: vec![proto::Tier {
            code: "member".into(),
            name: "Member".into(),
            qualify_points: 0,
            maintain_points: 0,
            multiplier_bp: 10_000,
        }],
    }
}

// ---------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone)]
enum Step {
    Hours(i64),
    Days(i64),
    /// To the next expiry of any batch holding points, offset by -1, 0 or +1 second.
    ToNextExpiry(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Award {
        member: usize,
        amount_minor: i64,
        source: i32,
    },
    /// The purchase of an earlier award again under a new key (ALREADY_EXISTS), or the
    /// same order id from another source (another purchase).
    RepeatPurchase {
        award: usize,
        other_source: bool,
    },
    Spend {
        member: usize,
        points: i64,
    },
    ReverseAward {
        award: usize,
        points: Option<i64>,
        by_id: bool,
    },
    ReverseSpend {
        spend: usize,
        points: Option<i64>,
        by_id: bool,
    },
    Adjust {
        member: usize,
        points: i64,
    },
    Advance(Step),
    Expire,
    /// Re-sends an earlier request as it was.
    Replay {
        op: usize,
    },
    /// Re-sends an earlier request's key with one field changed, or with another kind of
    /// request (a credit).
    ReplayChanged {
        op: usize,
        as_credit: bool,
    },
    /// Redis loses today's cap counters of every member (a flush or restart): the
    /// service must rebuild them from PostgreSQL, never read them as zero.
    LoseCapCounters,
    /// The program moves to another time zone (an index into `ZONES`).
    ChangeZone(usize),
    /// Award, spend, refund the award and cancel the spend: the refund first or the
    /// cancellation first, which must end at the same balance.
    RefundAndCancel {
        member: usize,
        refund_first: bool,
    },
}

#[derive(Debug, Clone)]
struct Case {
    members: usize,
    ops: Vec<Op>,
}

fn op_strategy(members: usize) -> impl Strategy<Value = Op> {
    let index = 0..64usize;
    let reverse_points = prop_oneof![1 => Just(None), 2 => (1..=40i64).prop_map(Some)];
    prop_oneof![
        5 => (0..members, prop_oneof![
            1 => 1..=200i64,
            3 => 1..=9_000i64,
            // The largest purchase, and one past it (refused).
            1 => MAX_AMOUNT_MINOR..=MAX_AMOUNT_MINOR + 1,
        ], 1..=3i32).prop_map(
            |(member, amount_minor, source)| Op::Award { member, amount_minor, source }
        ),
        1 => (index.clone(), any::<bool>())
            .prop_map(|(award, other_source)| Op::RepeatPurchase { award, other_source }),
        4 => (0..members, prop_oneof![2 => 1..=25i64, 1 => 1..=150i64])
            .prop_map(|(member, points)| Op::Spend { member, points }),
        2 => (index.clone(), reverse_points.clone(), any::<bool>()).prop_map(
            |(award, points, by_id)| Op::ReverseAward { award, points, by_id }
        ),
        2 => (index.clone(), reverse_points, any::<bool>()).prop_map(
            |(spend, points, by_id)| Op::ReverseSpend { spend, points, by_id }
        ),
        2 => (0..members, prop_oneof![
            4 => -40..=-1i64,
            4 => 1..=80i64,
            // The largest credit, and one past the limit either way (refused).
            1 => MAX_ADJUST_POINTS..=MAX_ADJUST_POINTS + 1,
            1 => Just(-MAX_ADJUST_POINTS - 1),
        ])
            .prop_map(|(member, points)| Op::Adjust { member, points }),
        2 => (1..=36i64).prop_map(|hours| Op::Advance(Step::Hours(hours))),
        2 => (1..=20i64).prop_map(|days| Op::Advance(Step::Days(days))),
        1 => (-1..=1i64).prop_map(|offset| Op::Advance(Step::ToNextExpiry(offset))),
        1 => Just(Op::Expire),
        2 => index.clone().prop_map(|op| Op::Replay { op }),
        1 => (index, prop::bool::weighted(0.2))
            .prop_map(|(op, as_credit)| Op::ReplayChanged { op, as_credit }),
        1 => Just(Op::LoseCapCounters),
        1 => (0..ZONES.len()).prop_map(Op::ChangeZone),
        2 => (0..members, any::<bool>())
            .prop_map(|(member, refund_first)| Op::RefundAndCancel { member, refund_first }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (2..=4usize).prop_flat_map(|members| {
        prop::collection::vec(op_strategy(members), 0..=MAX_OPS)
            .prop_map(move |ops| Case { members, ops })
    })
}

// ---------------------------------------------------------------------------------------
// Requests and responses

#[derive(Debug, Clone, PartialEq)]
enum Request {
    Award(proto::AwardRequest),
    Spend(proto::SpendRequest),
    ReverseAward(proto::ReverseAwardRequest),
    ReverseSpend(proto::ReverseSpendRequest),
    Adjust(proto::AdjustRequest),
}

impl Request {
    fn key(&self) -> &str {
        match self {
            Request::Award(r) => &r.idempotency_key,
            Request::Spend(r) => &r.idempotency_key,
            Request::ReverseAward(r) => &r.idempotency_key,
            Request::ReverseSpend(r) => &r.idempotency_key,
            Request::Adjust(r) => &r.idempotency_key,
        }
    }

    /// The same key with one field the outcome depends on changed.
    fn changed(&self) -> Request {
        match self.clone() {
            Request::Award(r) => Request::Award(proto::AwardRequest {
                amount_minor: r.amount_minor + 1,
                ..r
            }),
            Request::Spend(r) => Request::Spend(proto::SpendRequest {
                points: r.points + 1,
                ..r
            }),
            Request::ReverseAward(r) => Request::ReverseAward(proto::ReverseAwardRequest {
                reason: format!("{} (changed)", r.reason),
                ..r
            }),
            Request::ReverseSpend(r) => Request::ReverseSpend(proto::ReverseSpendRequest {
                points: Some(r.points.map_or(1, |p| p + 1)),
                ..r
            }),
            Request::Adjust(r) => Request::Adjust(proto::AdjustRequest {
                points: r.points + r.points.signum(),
                ..r
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Response {
    Award(proto::AwardResponse),
    Spend(proto::SpendResponse),
    ReverseAward(proto::ReverseAwardResponse),
    ReverseSpend(proto::ReverseSpendResponse),
    Adjust(proto::AdjustResponse),
}

impl Response {
    fn replayed(&self) -> bool {
        match self {
            Response::Award(r) => r.replayed,
            Response::Spend(r) => r.replayed,
            Response::ReverseAward(r) => r.replayed,
            Response::ReverseSpend(r) => r.replayed,
            Response::Adjust(r) => r.replayed,
        }
    }

    fn entry_id(&self) -> &str {
        match self {
            Response::Award(r) => &r.entry_id,
            Response::Spend(r) => &r.entry_id,
            Response::ReverseAward(r) => &r.entry_id,
            Response::ReverseSpend(r) => &r.entry_id,
            Response::Adjust(r) => &r.entry_id,
        }
    }

    /// The response with its `replayed` flag set as given.
    fn with_replayed(&self, replayed: bool) -> Response {
        let mut response = self.clone();
        match &mut response {
            Response::Award(r) => r.replayed = replayed,
            Response::Spend(r) => r.replayed = replayed,
            Response::ReverseAward(r) => r.replayed = replayed,
            Response::ReverseSpend(r) => r.replayed = replayed,
            Response::Adjust(r) => r.replayed = replayed,
        }
        response
    }
}

async fn send(clients: &mut Clients, request: &Request) -> Result<Response, tonic::Status> {
    Ok(match request.clone() {
        Request::Award(r) => Response::Award(clients.rpc(r, None).await?),
        Request::Spend(r) => Response::Spend(clients.rpc(r, None).await?),
        Request::ReverseAward(r) => Response::ReverseAward(clients.rpc(r, None).await?),
        Request::ReverseSpend(r) => Response::ReverseSpend(clients.rpc(r, None).await?),
        Request::Adjust(r) => Response::Adjust(clients.rpc(r, None).await?),
    })
}

// ---------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone)]
struct Batch {
    member: usize,
    earned_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    remaining: i64,
}

#[derive(Debug, Clone)]
enum Entry {
    Award {
        member: usize,
        points: i64,
        batch: Option<usize>,
        reversed: i64,
    },
    Spend {
        member: usize,
        points: i64,
        /// (batch, points) in the order drawn.
        draws: Vec<(usize, i64)>,
        reversed: i64,
    },
    Other,
}

/// What the service must answer. Draws name model batches by their creation index.
#[derive(Debug, Clone)]
enum Expected {
    Replay(Response),
    Error(Code),
    Award {
        requested: i64,
        awarded: i64,
        balance: i64,
    },
    Spend {
        points: i64,
        draws: Vec<(usize, i64)>,
        balance: i64,
    },
    ReverseAward {
        member: usize,
        reversed: i64,
        draws: Vec<(usize, i64)>,
        remaining_reversible: i64,
        balance: i64,
    },
    ReverseSpend {
        member: usize,
        reversed: i64,
        restorations: Vec<(usize, i64)>,
        expired: i64,
        repaid: i64,
        balance: i64,
    },
    Adjust {
        points: i64,
        credited: Option<usize>,
        draws: Vec<(usize, i64)>,
        balance: i64,
    },
}

struct Model {
    now: DateTime<Utc>,
    members: Vec<String>,
    /// Every batch ever credited, in creation order.
    batches: Vec<Batch>,
    /// The service's id of each batch, learnt from its answers.
    batch_ids: Vec<Option<String>>,
    known_batch_ids: HashMap<String, usize>,
    /// Claimed keys: the request that claimed each and the service's original answer.
    claimed: HashMap<String, (Request, Response)>,
    /// Entries written, by idempotency key; entry ids map to keys.
    entries: HashMap<String, Entry>,
    entry_keys: HashMap<String, String>,
    purchases: HashSet<(i32, String)>,
    /// Every award that earned points: (member, when, points).
    earned: Vec<(usize, DateTime<Utc>, i64)>,
    /// The program's zones: (in force from, zone), oldest first.
    zones: Vec<(DateTime<Utc>, chrono_tz::Tz)>,
    lifetime_earned: Vec<i64>,
    /// Points of refunded awards the member had already spent: repaid by cancellations.
    owed: Vec<i64>,
    /// Keys of the awards and spends written, in order.
    awards: Vec<String>,
    spends: Vec<String>,
}

impl Model {
    fn new(members: Vec<String>, now: DateTime<Utc>) -> Model {
        let count = members.len();
        Model {
            now,
            members,
            batches: vec![],
            batch_ids: vec![],
            known_batch_ids: HashMap::new(),
            claimed: HashMap::new(),
            entries: HashMap::new(),
            entry_keys: HashMap::new(),
            purchases: HashSet::new(),
            earned: vec![],
            zones: vec![(now, zone(ZONES[0]))],
            lifetime_earned: vec![0; count],
            owed: vec![0; count],
            awards: vec![],
            spends: vec![],
        }
    }

    fn member_index(&self, member_id: &str) -> usize {
        self.members
            .iter()
            .position(|m| m == member_id)
            .expect("a member of the case")
    }

    fn live(&self, batch: &Batch) -> bool {
        batch.remaining > 0 && batch.expires_at > self.now
    }

    fn balance(&self, member: usize) -> i64 {
        self.batches
            .iter()
            .filter(|b| b.member == member && self.live(b))
            .map(|b| b.remaining)
            .sum()
    }

    /// (next expiry, points expiring then) of a member's live batches.
    fn next_expiry(&self, member: usize) -> Option<(DateTime<Utc>, i64)> {
        let live: Vec<&Batch> = self
            .batches
            .iter()
            .filter(|b| b.member == member && self.live(b))
            .collect();
        let next = live.iter().map(|b| b.expires_at).min()?;
        let points = live
            .iter()
            .filter(|b| b.expires_at == next)
            .map(|b| b.remaining)
            .sum();
        Some((next, points))
    }

    fn credit(&mut self, member: usize, points: i64) -> usize {
        self.batches.push(Batch {
            member,
            earned_at: self.now,
            expires_at: self.now + Duration::days(VALIDITY_DAYS),
            remaining: points,
        });
        self.batch_ids.push(None);
        self.batches.len() - 1
    }

    /// Takes `points` from the member's live batches, oldest earned first, ties broken by
    /// creation order, skipping `except`. Returns the draws; they may fall short.
    fn draw_fifo(
        &mut self,
        member: usize,
        points: i64,
        except: Option<usize>,
    ) -> Vec<(usize, i64)> {
        let mut order: Vec<usize> = (0..self.batches.len())
            .filter(|&i| {
                Some(i) != except && self.batches[i].member == member && self.live(&self.batches[i])
            })
            .collect();
        order.sort_by_key(|&i| (self.batches[i].earned_at, i));
        let mut left = points;
        let mut draws = vec![];
        for i in order {
            if left == 0 {
                break;
            }
            let taken = left.min(self.batches[i].remaining);
            self.batches[i].remaining -= taken;
            left -= taken;
            draws.push((i, taken));
        }
        draws
    }

    fn resolve(&self, reference: &Option<proto::EntryRef>) -> Option<(String, Entry)> {
        let key = match reference.as_ref()?.r#ref.as_ref()? {
            proto::entry_ref::Ref::IdempotencyKey(key) => key.clone(),
            proto::entry_ref::Ref::EntryId(id) => self.entry_keys.get(id)?.clone(),
        };
        let entry = self.entries.get(&key)?.clone();
        Some((key, entry))
    }

    /// The member a request is about, when the model knows it.
    fn involved(&self, request: &Request) -> Option<usize> {
        match request {
            Request::Award(r) => Some(self.member_index(&r.member_id)),
            Request::Spend(r) => Some(self.member_index(&r.member_id)),
            Request::Adjust(r) => Some(self.member_index(&r.member_id)),
            Request::ReverseAward(r) => match self.resolve(&r.award)?.1 {
                Entry::Award { member, .. } => Some(member),
                _ => None,
            },
            Request::ReverseSpend(r) => match self.resolve(&r.spend)?.1 {
                Entry::Spend { member, .. } => Some(member),
                _ => None,
            },
        }
    }

    /// Applies a request to the model and says what the service must answer.
    fn apply(&mut self, request: &Request) -> Expected {
        // Fields past the API's limits are refused at the edge, before any key is looked at.
        let out_of_range = match request {
            Request::Award(r) => r.amount_minor > MAX_AMOUNT_MINOR,
            Request::Adjust(r) => r.points.abs() > MAX_ADJUST_POINTS,
            Request::Spend(r) => r.points > MAX_ADJUST_POINTS,
            _ => false,
        };
        if out_of_range {
            return Expected::Error(Code::InvalidArgument);
        }
        if let Some((original, response)) = self.claimed.get(request.key()) {
            return if original == request {
                Expected::Replay(response.clone())
            } else {
                Expected::Error(Code::AlreadyExists)
            };
        }
        let key = request.key().to_owned();
        match request {
            Request::Award(r) => {
                let member = self.member_index(&r.member_id);
                if !self.purchases.insert((r.source, r.external_ref.clone())) {
                    return Expected::Error(Code::AlreadyExists);
                }
                let requested = if r.amount_minor < MIN_AMOUNT_MINOR {
                    0
                } else {
                    // floor(amount × rate_bp × multiplier_bp / (10^exponent × 10^8))
                    let points = i128::from(r.amount_minor) * i128::from(BASE_RATE_BP) * 10_000
                        / 10_000_000_000;
                    i64::try_from(points).unwrap()
                };
                let awarded = if requested > 0 {
                    let granted = requested.min(self.cap_room(member));
                    self.earned.push((member, self.now, granted));
                    granted
                } else {
                    0
                };
                let balance = self.balance(member) + awarded;
                let batch = (awarded > 0).then(|| self.credit(member, awarded));
                self.lifetime_earned[member] += awarded;
                self.entries.insert(
                    key.clone(),
                    Entry::Award {
                        member,
                        points: awarded,
                        batch,
                        reversed: 0,
                    },
                );
                self.awards.push(key);
                Expected::Award {
                    requested,
                    awarded,
                    balance,
                }
            }
            Request::Spend(r) => {
                let member = self.member_index(&r.member_id);
                let available = self.balance(member);
                if available < r.points {
                    return Expected::Error(Code::FailedPrecondition);
                }
                let draws = self.draw_fifo(member, r.points, None);
                self.entries.insert(
                    key.clone(),
                    Entry::Spend {
                        member,
                        points: r.points,
                        draws: draws.clone(),
                        reversed: 0,
                    },
                );
                self.spends.push(key);
                Expected::Spend {
                    points: r.points,
                    draws,
                    balance: available - r.points,
                }
            }
            Request::Adjust(r) => {
                let member = self.member_index(&r.member_id);
                let available = self.balance(member);
                let (credited, draws) = if r.points > 0 {
                    (Some(self.credit(member, r.points)), vec![])
                } else {
                    if available < -r.points {
                        return Expected::Error(Code::FailedPrecondition);
                    }
                    (None, self.draw_fifo(member, -r.points, None))
                };
                self.entries.insert(key, Entry::Other);
                Expected::Adjust {
                    points: r.points,
                    credited,
                    draws,
                    balance: available + r.points,
                }
            }
            Request::ReverseAward(r) => {
                let Some((award_key, entry)) = self.resolve(&r.award) else {
                    return Expected::Error(Code::NotFound);
                };
                let Entry::Award {
                    member,
                    points: awarded,
                    batch,
                    reversed,
                } = entry
                else {
                    return Expected::Error(Code::InvalidArgument);
                };
                let reversible = awarded - reversed;
                if reversible <= 0 {
                    return Expected::Error(Code::FailedPrecondition);
                }
                let points = r.points.unwrap_or(reversible);
                if points > reversible {
                    return Expected::Error(Code::FailedPrecondition);
                }
                let mut draws = vec![];
                let mut left = points;
                if let Some(own) = batch {
                    if self.live(&self.batches[own]) {
                        let taken = left.min(self.batches[own].remaining);
                        self.batches[own].remaining -= taken;
                        left -= taken;
                        draws.push((own, taken));
                    }
                }
                draws.extend(self.draw_fifo(member, left, batch));
                let recovered: i64 = draws.iter().map(|d| d.1).sum();
                // What was spent already cannot be taken back: the member owes it.
                self.owed[member] += points - recovered;
                self.lifetime_earned[member] -= points;
                if let Some(Entry::Award { reversed, .. }) = self.entries.get_mut(&award_key) {
                    *reversed += points;
                }
                self.entries.insert(key, Entry::Other);
                debug_assert!(recovered <= points);
                Expected::ReverseAward {
                    member,
                    reversed: points,
                    draws,
                    remaining_reversible: reversible - points,
                    balance: self.balance(member),
                }
            }
            Request::ReverseSpend(r) => {
                let Some((spend_key, entry)) = self.resolve(&r.spend) else {
                    return Expected::Error(Code::NotFound);
                };
                let Entry::Spend {
                    member,
                    points: spent,
                    draws,
                    reversed,
                } = entry
                else {
                    return Expected::Error(Code::InvalidArgument);
                };
                let left = spent - reversed;
                if left <= 0 {
                    return Expected::Error(Code::FailedPrecondition);
                }
                let points = r.points.unwrap_or(left);
                if points > left {
                    return Expected::Error(Code::FailedPrecondition);
                }
                // Earlier reversals covered the spend's first `reversed` points, in the
                // order they were drawn; this one covers the next `points`.
                let (mut skip, mut cover) = (reversed, points);
                let mut restorations = vec![];
                let (mut expired, mut repaid) = (0, 0);
                for (batch, drawn) in draws {
                    let skipped = skip.min(drawn);
                    skip -= skipped;
                    let part = (drawn - skipped).min(cover);
                    if part == 0 {
                        continue;
                    }
                    cover -= part;
                    if self.batches[batch].expires_at <= self.now {
                        expired += part;
                        continue;
                    }
                    // Owed points are repaid first, from the first parts put back.
                    let repay = part.min(self.owed[member]);
                    self.owed[member] -= repay;
                    repaid += repay;
                    if part > repay {
                        self.batches[batch].remaining += part - repay;
                        restorations.push((batch, part - repay));
                    }
                }
                if let Some(Entry::Spend { reversed, .. }) = self.entries.get_mut(&spend_key) {
                    *reversed += points;
                }
                self.entries.insert(key, Entry::Other);
                Expected::ReverseSpend {
                    member,
                    reversed: points,
                    restorations,
                    expired,
                    repaid,
                    balance: self.balance(member),
                }
            }
        }
    }

    /// What the member may still earn now: for each zone the program had at some instant
    /// of the last 48 hours, the cap less the member's awards in that zone's local day so
    /// far; the least of them.
    fn cap_room(&self, member: usize) -> i64 {
        let from = self.now - Duration::hours(CAP_ZONE_LOOKBACK_HOURS);
        let mut room = DAILY_CAP_POINTS;
        for (index, (effective, zone)) in self.zones.iter().enumerate() {
            let until = self.zones.get(index + 1).map(|(next, _)| *next);
            if *effective > self.now || until.is_some_and(|until| until <= from) {
                continue;
            }
            let (_, start) = local_day(self.now, *zone);
            let used: i64 = self
                .earned
                .iter()
                .filter(|(m, at, _)| *m == member && *at >= start && *at <= self.now)
                .map(|(_, _, points)| points)
                .sum();
            room = room.min(DAILY_CAP_POINTS - used);
        }
        room.max(0)
    }

    /// The sweep: every batch due by now loses its points. Returns the points expired.
    fn expire(&mut self) -> i64 {
        let now = self.now;
        let mut expired = 0;
        for batch in &mut self.batches {
            if batch.remaining > 0 && batch.expires_at <= now {
                expired += batch.remaining;
                batch.remaining = 0;
            }
        }
        expired
    }

    /// Records (or checks) which service batch a model batch is.
    fn same_batch(&mut self, service_id: &str, batch: usize) -> Result<(), TestCaseError> {
        match &self.batch_ids[batch] {
            Some(known) => prop_assert_eq!(known, service_id, "batch #{} has another id", batch),
            None => {
                let other = self.known_batch_ids.get(service_id);
                prop_assert!(
                    other.is_none(),
                    "batch {} is both #{} and #{}",
                    service_id,
                    other.unwrap(),
                    batch
                );
                self.batch_ids[batch] = Some(service_id.to_owned());
                self.known_batch_ids.insert(service_id.to_owned(), batch);
            }
        }
        Ok(())
    }

    fn check_allocations(
        &mut self,
        what: &str,
        actual: &[proto::Allocation],
        expected: &[(usize, i64)],
    ) -> Result<(), TestCaseError> {
        let points: Vec<i64> = actual.iter().map(|a| a.points).collect();
        let want: Vec<i64> = expected.iter().map(|d| d.1).collect();
        prop_assert_eq!(points, want, "{}: allocation points in order", what);
        for (allocation, &(batch, _)) in actual.iter().zip(expected) {
            self.same_batch(&allocation.batch_id, batch)?;
            let model = &self.batches[batch];
            prop_assert_eq!(
                allocation.earned_at,
                Some(timestamp(model.earned_at)),
                "{}: earned_at of batch #{}",
                what,
                batch
            );
            prop_assert_eq!(
                allocation.expires_at,
                Some(timestamp(model.expires_at)),
                "{}: expires_at of batch #{}",
                what,
                batch
            );
        }
        Ok(())
    }

    /// Checks the service's answer against the model's expectation, and learns from it.
    fn check(
        &mut self,
        request: &Request,
        expected: Expected,
        actual: Result<Response, tonic::Status>,
    ) -> Result<(), TestCaseError> {
        let response = match (expected, actual) {
            (Expected::Error(code), Err(status)) => {
                prop_assert_eq!(status.code(), code, "{}", status.message());
                return Ok(());
            }
            (Expected::Error(code), Ok(response)) => {
                return Err(TestCaseError::fail(format!(
                    "expected {code:?}, the service answered {response:?}"
                )));
            }
            (expected, Err(status)) => {
                return Err(TestCaseError::fail(format!(
                    "expected {expected:?}, the service answered {:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
            (Expected::Replay(original), Ok(response)) => {
                prop_assert!(response.replayed(), "a replay must say replayed");
                prop_assert_eq!(
                    response.with_replayed(false),
                    original,
                    "a replay answers the original"
                );
                return Ok(());
            }
            (expected, Ok(response)) => {
                prop_assert!(!response.replayed(), "a first request is not a replay");
                self.check_outcome(expected, &response)?;
                response
            }
        };
        self.entry_keys
            .insert(response.entry_id().to_owned(), request.key().to_owned());
        self.claimed
            .insert(request.key().to_owned(), (request.clone(), response));
        Ok(())
    }

    fn check_outcome(
        &mut self,
        expected: Expected,
        response: &Response,
    ) -> Result<(), TestCaseError> {
        match (expected, response) {
            (
                Expected::Award {
                    requested,
                    awarded,
                    balance,
                },
                Response::Award(r),
            ) => {
                prop_assert_eq!(r.requested_points, requested, "award: requested points");
                prop_assert_eq!(r.awarded_points, awarded, "award: awarded points");
                prop_assert_eq!(r.capped, awarded < requested, "award: capped");
                prop_assert_eq!(r.balance_points, balance, "award: balance");
            }
            (
                Expected::Spend {
                    points,
                    draws,
                    balance,
                },
                Response::Spend(r),
            ) => {
                prop_assert_eq!(r.points, points, "spend: points");
                self.check_allocations("spend", &r.allocations, &draws)?;
                prop_assert_eq!(r.balance_points, balance, "spend: balance");
            }
            (
                Expected::ReverseAward {
                    member,
                    reversed,
                    draws,
                    remaining_reversible,
                    balance,
                },
                Response::ReverseAward(r),
            ) => {
                let recovered: i64 = draws.iter().map(|d| d.1).sum();
                prop_assert_eq!(&r.member_id, &self.members[member], "reverse award: member");
                prop_assert_eq!(r.reversed_points, reversed, "reverse award: reversed");
                prop_assert_eq!(r.recovered_points, recovered, "reverse award: recovered");
                prop_assert_eq!(
                    r.unrecovered_points,
                    reversed - recovered,
                    "reverse award: unrecovered"
                );
                self.check_allocations("reverse award", &r.allocations, &draws)?;
                prop_assert_eq!(
                    r.remaining_reversible_points,
                    remaining_reversible,
                    "reverse award: remaining reversible"
                );
                prop_assert_eq!(r.balance_points, balance, "reverse award: balance");
            }
            (
                Expected::ReverseSpend {
                    member,
                    reversed,
                    restorations,
                    expired,
                    repaid,
                    balance,
                },
                Response::ReverseSpend(r),
            ) => {
                prop_assert_eq!(r.repaid_points, repaid, "reverse spend: repaid");
                let restored: i64 = restorations.iter().map(|d| d.1).sum();
                prop_assert_eq!(&r.member_id, &self.members[member], "reverse spend: member");
                prop_assert_eq!(r.reversed_points, reversed, "reverse spend: reversed");
                prop_assert_eq!(r.restored_points, restored, "reverse spend: restored");
                prop_assert_eq!(r.expired_points, expired, "reverse spend: expired");
                self.check_allocations("reverse spend", &r.allocations, &restorations)?;
                prop_assert_eq!(r.balance_points, balance, "reverse spend: balance");
            }
            (
                Expected::Adjust {
                    points,
                    credited,
                    draws,
                    balance,
                },
                Response::Adjust(r),
            ) => {
                prop_assert_eq!(r.points, points, "adjust: points");
                match credited {
                    Some(batch) => self.same_batch(&r.batch_id, batch)?,
                    None => prop_assert_eq!(&r.batch_id, "", "adjust: a debit has no batch"),
                }
                self.check_allocations("adjust", &r.allocations, &draws)?;
                prop_assert_eq!(r.balance_points, balance, "adjust: balance");
            }
            (expected, response) => {
                return Err(TestCaseError::fail(format!(
                    "expected {expected:?}, the service answered {response:?}"
                )));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Running a case

/// Builds the request an operation sends; None when it has nothing to refer to yet.
fn request_for(
    op: &Op,
    step: usize,
    program: &str,
    model: &Model,
    sent: &[Request],
) -> Option<Request> {
    let key = format!("k-{step}");
    let member_id = |member: usize| model.members[member].clone();
    let by_ref = |key: &str, by_id: bool| {
        let reference = if by_id {
            let (_, response) = &model.claimed[key];
            proto::entry_ref::Ref::EntryId(response.entry_id().to_owned())
        } else {
            proto::entry_ref::Ref::IdempotencyKey(key.to_owned())
        };
        Some(proto::EntryRef {
            r#ref: Some(reference),
        })
    };
    Some(match op {
        Op::Award {
            member,
            amount_minor,
            source,
        } => Request::Award(proto::AwardRequest {
            program_id: program.into(),
            member_id: member_id(*member),
            idempotency_key: key,
            source: *source,
            external_ref: format!("order-{step}"),
            amount_minor: *amount_minor,
            currency: "USD".into(),
            occurred_at: Some(timestamp(model.now)),
        }),
        Op::RepeatPurchase {
            award,
            other_source,
        } => {
            let awards: Vec<&proto::AwardRequest> = sent
                .iter()
                .filter_map(|r| match r {
                    Request::Award(a) => Some(a),
                    _ => None,
                })
                .collect();
            let earlier = awards.get(award % awards.len().max(1))?;
            let source = if *other_source {
                earlier.source % 3 + 1
            } else {
                earlier.source
            };
            Request::Award(proto::AwardRequest {
                idempotency_key: key,
                source,
                occurred_at: Some(timestamp(model.now)),
                ..(*earlier).clone()
            })
        }
        Op::Spend { member, points } => Request::Spend(proto::SpendRequest {
            program_id: program.into(),
            member_id: member_id(*member),
            idempotency_key: key,
            points: *points,
            reference: format!("reward-{step}"),
        }),
        Op::ReverseAward {
            award,
            points,
            by_id,
        } => {
            let award_key = model.awards.get(award % model.awards.len().max(1))?;
            Request::ReverseAward(proto::ReverseAwardRequest {
                program_id: program.into(),
                idempotency_key: key,
                award: by_ref(award_key, *by_id),
                points: *points,
                reason: format!("refund-{step}"),
            })
        }
        Op::ReverseSpend {
            spend,
            points,
            by_id,
        } => {
            let spend_key = model.spends.get(spend % model.spends.len().max(1))?;
            Request::ReverseSpend(proto::ReverseSpendRequest {
                program_id: program.into(),
                idempotency_key: key,
                spend: by_ref(spend_key, *by_id),
                points: *points,
                reason: format!("cancel-{step}"),
            })
        }
        Op::Adjust { member, points } => Request::Adjust(proto::AdjustRequest {
            program_id: program.into(),
            member_id: member_id(*member),
            idempotency_key: key,
            points: *points,
            reason: format!("goodwill-{step}"),
            actor: "model".into(),
        }),
        Op::Replay { op } => sent.get(op % sent.len().max(1))?.clone(),
        Op::ReplayChanged { op, as_credit } => {
            let earlier = sent.get(op % sent.len().max(1))?;
            if *as_credit {
                Request::Adjust(proto::AdjustRequest {
                    program_id: program.into(),
                    member_id: model.members[0].clone(),
                    idempotency_key: earlier.key().to_owned(),
                    points: 1,
                    reason: format!("reused key at step {step}"),
                    actor: "model".into(),
                })
            } else {
                earlier.changed()
            }
        }
        Op::Advance(_)
        | Op::Expire
        | Op::LoseCapCounters
        | Op::ChangeZone(_)
        | Op::RefundAndCancel { .. } => return None,
    })
}

/// The four requests of `Op::RefundAndCancel`: an award of $50, a spend of the whole
/// balance (so the award's points are spent), then
/// the refund of the award and the cancellation of the spend in the order given. Each is
/// made from the model as it stands when its turn comes.
#[allow(clippy::type_complexity)]
fn refund_and_cancel(
    step: usize,
    program: &str,
    model: &Model,
    member: usize,
    refund_first: bool,
) -> Vec<Box<dyn Fn(&Model) -> Request>> {
    let (program, member_id) = (program.to_owned(), model.members[member].clone());
    let award_key = format!("k-{step}-award");
    let spend_key = format!("k-{step}-spend");
    let award = {
        let (program, member_id, key) = (program.clone(), member_id.clone(), award_key.clone());
        Box::new(move |model: &Model| {
            Request::Award(proto::AwardRequest {
                program_id: program.clone(),
                member_id: member_id.clone(),
                idempotency_key: key.clone(),
                source: 1,
                external_ref: format!("order-{step}-refunded"),
                amount_minor: 5_000,
                currency: "USD".into(),
                occurred_at: Some(timestamp(model.now)),
            })
        }) as Box<dyn Fn(&Model) -> Request>
    };
    let spend = {
        let (program, member_id, key) = (program.clone(), member_id, spend_key.clone());
        Box::new(move |model: &Model| {
            Request::Spend(proto::SpendRequest {
                program_id: program.clone(),
                member_id: member_id.clone(),
                idempotency_key: key.clone(),
                points: model.balance(member).clamp(1, MAX_ADJUST_POINTS),
                reference: format!("reward-{step}"),
            })
        }) as Box<dyn Fn(&Model) -> Request>
    };
    let by_key = |key: &str| {
        Some(proto::EntryRef {
            r#ref: Some(proto::entry_ref::Ref::IdempotencyKey(key.to_owned())),
        })
    };
    let refund = {
        let (program, award) = (program.clone(), by_key(&award_key));
        Box::new(move |_: &Model| {
            Request::ReverseAward(proto::ReverseAwardRequest {
                program_id: program.clone(),
                idempotency_key: format!("k-{step}-refund"),
                award: award.clone(),
                points: None,
                reason: "refund".into(),
            })
        }) as Box<dyn Fn(&Model) -> Request>
    };
    let cancel = {
        let spend = by_key(&spend_key);
        Box::new(move |_: &Model| {
            Request::ReverseSpend(proto::ReverseSpendRequest {
                program_id: program.clone(),
                idempotency_key: format!("k-{step}-cancel"),
                spend: spend.clone(),
                points: None,
                reason: "cancelled".into(),
            })
        }) as Box<dyn Fn(&Model) -> Request>
    };
    if refund_first {
        vec![award, spend, refund, cancel]
    } else {
        vec![award, spend, cancel, refund]
    }
}

/// Every member's (or only member `which`'s) balance, lifetime earned points and next
/// expiry, as GetMember answers them, match the model.
async fn check_members(
    app: &TestApp,
    program: &str,
    model: &Model,
    which: Option<usize>,
    after: &str,
) -> Result<(), TestCaseError> {
    let mut ledger = app.ledger.clone();
    for index in 0..model.members.len() {
        if which.is_some_and(|only| only != index) {
            continue;
        }
        let request = proto::GetMemberRequest {
            program_id: program.into(),
            member_id: model.members[index].clone(),
        };
        let member = ledger
            .get_member(request)
            .await
            .map_err(|status| TestCaseError::fail(format!("GetMember: {status}")))?
            .into_inner()
            .member
            .unwrap();
        prop_assert_eq!(
            member.balance_points,
            model.balance(index),
            "member #{} balance after {}",
            index,
            after
        );
        prop_assert_eq!(
            member.lifetime_earned_points,
            model.lifetime_earned[index],
            "member #{} lifetime earned after {}",
            index,
            after
        );
        let next = model.next_expiry(index);
        prop_assert_eq!(
            member.next_expiry_at,
            next.map(|(at, _)| timestamp(at)),
            "member #{} next expiry after {}",
            index,
            after
        );
        prop_assert_eq!(
            member.next_expiry_points,
            next.map_or(0, |(_, points)| points),
            "member #{} next expiry points after {}",
            index,
            after
        );
    }
    Ok(())
}

async fn sweep(app: &TestApp, model: &mut Model, after: &str) -> Result<(), TestCaseError> {
    let expected = model.expire();
    let outcome = app
        .service
        .expire_due(app.clock_now())
        .await
        .map_err(|error| TestCaseError::fail(format!("expiry sweep: {error}")))?;
    prop_assert_eq!(outcome.members_failed, 0, "{}: members failed", after);
    prop_assert_eq!(
        outcome.points_expired,
        expected,
        "{}: points expired",
        after
    );
    Ok(())
}

async fn run_case(
    app: &TestApp,
    redis: &fred::prelude::Client,
    prefix: &str,
    number: usize,
    case: &Case,
) -> Result<(), TestCaseError> {
    // Write off whatever an earlier (failed) case left, so sweeps count this case only.
    app.clock.set(far_future());
    app.service
        .expire_due(far_future())
        .await
        .map_err(|error| TestCaseError::fail(format!("cleanup sweep: {error}")))?;
    app.clock.set(case_start());

    let program = format!("m-{number}");
    let mut programs = app.programs.clone();
    programs
        .create_program(proto::CreateProgramRequest {
            program_id: program.clone(),
            name: "Model".into(),
            rules: Some(program_rules(ZONES[0])),
        })
        .await
        .map_err(|status| TestCaseError::fail(format!("create program: {status}")))?;
    let mut members = vec![];
    for _ in 0..case.members {
        let member_id = uuid::Uuid::new_v4().to_string();
        app.ledger
            .clone()
            .enroll_member(proto::EnrollMemberRequest {
                program_id: program.clone(),
                member_id: member_id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("enroll: {status}")))?;
        members.push(member_id);
    }
    let mut model = Model::new(members, case_start());
    let mut sent: Vec<Request> = vec![];
    let mut clients = Clients {
        ledger: app.ledger.clone(),
        programs: app.programs.clone(),
    };

    for (step, op) in case.ops.iter().enumerate() {
        let after = format!("step {step} {op:?}");
        // A request is checked by its answer and its member's GetMember; a clock move or a
        // sweep by every member's (GetMember costs as much as a request on 2 cores).
        let mut which = None;
        match op {
            Op::Advance(how) => {
                let to = match how {
                    Step::Hours(hours) => model.now + Duration::hours(*hours),
                    Step::Days(days) => model.now + Duration::days(*days),
                    Step::ToNextExpiry(offset) => {
                        let next = model
                            .batches
                            .iter()
                            .filter(|b| model.live(b))
                            .map(|b| b.expires_at)
                            .min();
                        match next {
                            Some(at) => (at + Duration::seconds(*offset)).max(model.now),
                            None => model.now,
                        }
                    }
                };
                model.now = to;
                app.clock.set(to);
            }
            Op::Expire => sweep(app, &mut model, &after).await?,
            Op::ChangeZone(index) => {
                let mut programs = app.programs.clone();
                programs
                    .update_program(proto::UpdateProgramRequest {
                        program_id: program.clone(),
                        rules: Some(program_rules(ZONES[*index])),
                        expected_rules_version: 0,
                        name: String::new(),
                    })
                    .await
                    .map_err(|status| TestCaseError::fail(format!("{after}: {status}")))?;
                model.zones.push((model.now, zone(ZONES[*index])));
            }
            Op::RefundAndCancel {
                member,
                refund_first,
            } => {
                for request in refund_and_cancel(step, &program, &model, *member, *refund_first) {
                    // Each request is built once the one before it has an answer.
                    let request = request(&model);
                    let expected = model.apply(&request);
                    let actual = send(&mut clients, &request).await;
                    model
                        .check(&request, expected, actual)
                        .map_err(|error| TestCaseError::fail(format!("{after}: {error}")))?;
                    sent.push(request);
                }
                which = Some(*member);
            }
            Op::LoseCapCounters => {
                let mut keys: Vec<String> = vec![];
                for member in &model.members {
                    for name in ZONES {
                        let (day, _) = local_day(model.now, zone(name));
                        keys.push(format!("{prefix}cap:{{{program}:{member}}}:{name}:{day}"));
                    }
                }
                redis
                    .del::<i64, _>(keys)
                    .await
                    .map_err(|error| TestCaseError::fail(format!("redis DEL: {error}")))?;
            }
            _ => {
                let Some(request) = request_for(op, step, &program, &model, &sent) else {
                    continue;
                };
                which = model.involved(&request);
                let expected = model.apply(&request);
                let actual = send(&mut clients, &request).await;
                model
                    .check(&request, expected, actual)
                    .map_err(|error| TestCaseError::fail(format!("{after}: {error}")))?;
                sent.push(request);
            }
        }
        check_members(app, &program, &model, which, &after).await?;
    }

    // Past every expiry: the sweep writes off exactly what the model says is left.
    model.now = far_future();
    app.clock.set(model.now);
    sweep(app, &mut model, "the final sweep").await?;
    check_members(app, &program, &model, None, "the final sweep").await?;
    let program_id = flash_loyalty::domain::ProgramId::parse(&program).unwrap();
    let report = app
        .service
        .audit(&program_id)
        .await
        .map_err(|error| TestCaseError::fail(format!("audit: {error}")))?;
    prop_assert!(report.is_clean(), "{}", report);
    Ok(())
}

#[test]
fn the_ledger_matches_its_model() {
    let cases = std::env::var("FLASH_MODEL_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A prefix of our own (the app is alone on its database; Redis is shared), unique
    // per run so two runs at once cannot see each other's counters.
    let prefix = format!("{REDIS_PREFIX}{}:", uuid::Uuid::new_v4().simple());
    let mut app = runtime.block_on(spawn_app_with(|settings| {
        settings.redis_prefix = prefix.clone();
    }));
    let redis = runtime.block_on(async {
        let config = fred::prelude::Config::from_url(&redis_url()).unwrap();
        let client = fred::prelude::Builder::from_config(config).build().unwrap();
        client.init().await.expect("connect to redis");
        client
    });
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let counter = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let result = runner.run(&case_strategy(), |case| {
        let number = counter.fetch_add(1, Ordering::SeqCst);
        runtime.block_on(run_case(&app, &redis, &prefix, number, &case))
    });
    let elapsed = started.elapsed();
    let ran = counter.load(Ordering::SeqCst);
    eprintln!(
        "model: {ran} cases in {:.1}s ({:.1} cases/s)",
        elapsed.as_secs_f64(),
        ran as f64 / elapsed.as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!("the ledger disagrees with its model: {reason}\nminimal case: {case:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("the model test aborted: {reason}"),
    }
    runtime.block_on(app.assert_ties_out());
}
