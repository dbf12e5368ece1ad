//! The operations a case is made of, their strategies, and the requests and responses
//! they become on the wire.
use super::*;

#[derive(Debug, Clone)]
pub(super) enum Step {
    Hours(i64),
    Days(i64),
    /// To the next expiry of any batch holding points, offset by -1, 0 or +1 second.
    ToNextExpiry(i64),
}

#[derive(Debug, Clone)]
pub(super) enum Op {
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
        /// Counts toward status points.
        counts: bool,
    },
    /// EvaluateMember: an upgrade status qualifies for, or the grace ladder.
    Evaluate {
        member: usize,
    },
    /// SetTier to a rank of the ladder, with a hold of some days or none.
    SetTier {
        member: usize,
        rank: usize,
        hold_days: Option<i64>,
    },
    Advance(Step),
    Expire,
    /// Re-sends an earlier request as it was.
    Replay {
        op: usize,
    },
    /// Re-sends an earlier ledger request as it was, key included, as another client: a new
    /// request in that client's own key namespace (never a replay of the first client's).
    OtherClient {
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
    /// A fall and a return: counted credit and debit of 400 (up, then status back down),
    /// an evaluation (a grace starts), another 3 days before the grace's end (a reminder)
    /// and one at its end (one rank down), and a counted credit of 400 again (back up,
    /// with the re-upgrade bonus of that demotion).
    Bounce {
        member: usize,
    },
    /// A referral: the referrer invites a new contact, a second later a new member
    /// enrolls and accepts the invite (then waits for its qualifying purchase).
    Refer {
        referrer: usize,
    },
    /// A purchase by a referral's referee (qualifying or not).
    RefereePurchase {
        referral: usize,
        amount_minor: i64,
    },
    /// ConvertInvite of a referral's invite.
    Convert {
        referral: usize,
    },
    /// RebuildSnapshot, then GetGraph: the converted referrals the model holds, no other.
    Graph,
    /// EnrollBatch of `fresh` new members and an existing one, the first new one named
    /// twice when `twice`: the new members hold nothing, the existing one what it holds.
    EnrollBatch {
        existing: usize,
        fresh: usize,
        twice: bool,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) members: usize,
    pub(super) ops: Vec<Op>,
}

pub(super) fn op_strategy(members: usize) -> impl Strategy<Value = Op> {
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
        ], prop::bool::weighted(0.4))
            .prop_map(|(member, points, counts)| Op::Adjust { member, points, counts }),
        3 => (0..members).prop_map(|member| Op::Evaluate { member }),
        1 => (0..members, 0..TIERS.len(), prop_oneof![Just(None), (1..=15i64).prop_map(Some)])
            .prop_map(|(member, rank, hold_days)| Op::SetTier { member, rank, hold_days }),
        2 => (1..=36i64).prop_map(|hours| Op::Advance(Step::Hours(hours))),
        2 => (1..=20i64).prop_map(|days| Op::Advance(Step::Days(days))),
        1 => (-1..=1i64).prop_map(|offset| Op::Advance(Step::ToNextExpiry(offset))),
        1 => Just(Op::Expire),
        2 => index.clone().prop_map(|op| Op::Replay { op }),
        1 => index.clone().prop_map(|op| Op::OtherClient { op }),
        1 => (index, prop::bool::weighted(0.2))
            .prop_map(|(op, as_credit)| Op::ReplayChanged { op, as_credit }),
        1 => Just(Op::LoseCapCounters),
        1 => (0..ZONES.len()).prop_map(Op::ChangeZone),
        2 => (0..members, any::<bool>())
            .prop_map(|(member, refund_first)| Op::RefundAndCancel { member, refund_first }),
        1 => (0..members).prop_map(|member| Op::Bounce { member }),
        1 => (0..members, 1..=3usize, any::<bool>())
            .prop_map(|(existing, fresh, twice)| Op::EnrollBatch { existing, fresh, twice }),
        2 => (0..members).prop_map(|referrer| Op::Refer { referrer }),
        3 => (0..8usize, prop_oneof![Just(1_500i64), Just(REFERRAL_MIN_AMOUNT_MINOR), Just(6_000i64)])
            .prop_map(|(referral, amount_minor)| Op::RefereePurchase { referral, amount_minor }),
        1 => (0..8usize).prop_map(|referral| Op::Convert { referral }),
        1 => Just(Op::Graph),
    ]
}

pub(super) fn case_strategy() -> impl Strategy<Value = Case> {
    (2..=4usize).prop_flat_map(|members| {
        prop::collection::vec(op_strategy(members), 0..=MAX_OPS)
            .prop_map(move |ops| Case { members, ops })
    })
}

// ---------------------------------------------------------------------------------------
// Requests and responses

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Request {
    Award(proto::AwardRequest),
    Spend(proto::SpendRequest),
    ReverseAward(proto::ReverseAwardRequest),
    ReverseSpend(proto::ReverseSpendRequest),
    Adjust(proto::AdjustRequest),
    SetTier(proto::SetTierRequest),
    CreateInvites(proto::CreateInvitesRequest),
    AcceptInvite(proto::AcceptInviteRequest),
    ConvertInvite(proto::ConvertInviteRequest),
}

impl Request {
    pub(super) fn key(&self) -> &str {
        match self {
            Request::Award(r) => &r.idempotency_key,
            Request::Spend(r) => &r.idempotency_key,
            Request::ReverseAward(r) => &r.idempotency_key,
            Request::ReverseSpend(r) => &r.idempotency_key,
            Request::Adjust(r) => &r.idempotency_key,
            Request::SetTier(r) => &r.idempotency_key,
            Request::CreateInvites(r) => &r.idempotency_key,
            Request::AcceptInvite(r) => &r.idempotency_key,
            Request::ConvertInvite(r) => &r.idempotency_key,
        }
    }

    /// The request as the model sees it when another client sends it: its key, and the key
    /// of the entry it names, in that client's namespace (`namespace` prefixed).
    pub(super) fn in_namespace(&self, namespace: &str) -> Request {
        let key = |key: &str| format!("{namespace}{key}");
        let entry_ref = |reference: &Option<proto::EntryRef>| {
            reference.as_ref().map(|reference| proto::EntryRef {
                r#ref: reference.r#ref.as_ref().map(|r| match r {
                    proto::entry_ref::Ref::IdempotencyKey(k) => {
                        proto::entry_ref::Ref::IdempotencyKey(key(k))
                    }
                    other => other.clone(),
                }),
            })
        };
        match self.clone() {
            Request::Award(r) => Request::Award(proto::AwardRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::Spend(r) => Request::Spend(proto::SpendRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::ReverseAward(r) => Request::ReverseAward(proto::ReverseAwardRequest {
                idempotency_key: key(&r.idempotency_key),
                award: entry_ref(&r.award),
                ..r
            }),
            Request::ReverseSpend(r) => Request::ReverseSpend(proto::ReverseSpendRequest {
                idempotency_key: key(&r.idempotency_key),
                spend: entry_ref(&r.spend),
                ..r
            }),
            Request::Adjust(r) => Request::Adjust(proto::AdjustRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::SetTier(r) => Request::SetTier(proto::SetTierRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::CreateInvites(r) => Request::CreateInvites(proto::CreateInvitesRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::AcceptInvite(r) => Request::AcceptInvite(proto::AcceptInviteRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
            Request::ConvertInvite(r) => Request::ConvertInvite(proto::ConvertInviteRequest {
                idempotency_key: key(&r.idempotency_key),
                ..r
            }),
        }
    }

    /// The same key with one field the outcome depends on changed; None when the service
    /// would refuse the changed request for another reason first (an unknown code).
    pub(super) fn changed(&self) -> Option<Request> {
        Some(match self.clone() {
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
            Request::SetTier(r) => Request::SetTier(proto::SetTierRequest {
                reason: format!("{} (changed)", r.reason),
                ..r
            }),
            Request::CreateInvites(r) => Request::CreateInvites(proto::CreateInvitesRequest {
                contacts: vec!["changed@model.example".into()],
                ..r
            }),
            Request::AcceptInvite(_) | Request::ConvertInvite(_) => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Response {
    Award(proto::AwardResponse),
    Spend(proto::SpendResponse),
    ReverseAward(proto::ReverseAwardResponse),
    ReverseSpend(proto::ReverseSpendResponse),
    Adjust(proto::AdjustResponse),
    SetTier(proto::SetTierResponse),
    CreateInvites(proto::CreateInvitesResponse),
    /// AcceptInvite and ConvertInvite.
    InviteChange(proto::InviteChange),
}

impl Response {
    pub(super) fn replayed(&self) -> bool {
        match self {
            Response::Award(r) => r.replayed,
            Response::Spend(r) => r.replayed,
            Response::ReverseAward(r) => r.replayed,
            Response::ReverseSpend(r) => r.replayed,
            Response::Adjust(r) => r.replayed,
            Response::SetTier(r) => r.replayed,
            Response::CreateInvites(r) => r.replayed,
            Response::InviteChange(r) => r.replayed,
        }
    }

    pub(super) fn entry_id(&self) -> &str {
        match self {
            Response::Award(r) => &r.entry_id,
            Response::Spend(r) => &r.entry_id,
            Response::ReverseAward(r) => &r.entry_id,
            Response::ReverseSpend(r) => &r.entry_id,
            Response::Adjust(r) => &r.entry_id,
            Response::SetTier(r) => &r.entry_id,
            Response::CreateInvites(r) => &r.entry_id,
            Response::InviteChange(r) => &r.entry_id,
        }
    }

    /// The response with its `replayed` flag set as given.
    pub(super) fn with_replayed(&self, replayed: bool) -> Response {
        let mut response = self.clone();
        match &mut response {
            Response::Award(r) => r.replayed = replayed,
            Response::Spend(r) => r.replayed = replayed,
            Response::ReverseAward(r) => r.replayed = replayed,
            Response::ReverseSpend(r) => r.replayed = replayed,
            Response::Adjust(r) => r.replayed = replayed,
            Response::SetTier(r) => r.replayed = replayed,
            Response::CreateInvites(r) => r.replayed = replayed,
            Response::InviteChange(r) => r.replayed = replayed,
        }
        response
    }
}

pub(super) async fn send(
    clients: &mut Clients,
    request: &Request,
) -> Result<Response, tonic::Status> {
    Ok(match request.clone() {
        Request::Award(r) => Response::Award(clients.rpc(r, None).await?),
        Request::Spend(r) => Response::Spend(clients.rpc(r, None).await?),
        Request::ReverseAward(r) => Response::ReverseAward(clients.rpc(r, None).await?),
        Request::ReverseSpend(r) => Response::ReverseSpend(clients.rpc(r, None).await?),
        Request::Adjust(r) => Response::Adjust(clients.rpc(r, None).await?),
        Request::SetTier(r) => Response::SetTier(clients.rpc(r, None).await?),
        Request::CreateInvites(r) => Response::CreateInvites(clients.rpc(r, None).await?),
        Request::AcceptInvite(r) => {
            Response::InviteChange(clients.rpc(r, None).await?.change.unwrap_or_default())
        }
        Request::ConvertInvite(r) => {
            Response::InviteChange(clients.rpc(r, None).await?.change.unwrap_or_default())
        }
    })
}
