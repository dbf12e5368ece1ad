//! Running a case: the requests each operation becomes, sending them, checking every
//! answer and every member against the model, and the sweeps.
use super::*;

/// Builds the request an operation sends; None when it has nothing to refer to yet.
pub(super) fn request_for(
    op: &Op,
    step: usize,
    program: &str,
    model: &Model,
    sent: &[Request],
) -> Option<Request> {
    let key = format!("k-{step}");
    let member_id = |member: usize| model.members[member].clone();
    let by_ref = |key: &str, by_id: bool| {
        // An entry the second client wrote is named by its id: its key is not the first
        // client's to name.
        let reference = if by_id || key.starts_with(OTHER_CLIENT) {
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
        Op::Adjust {
            member,
            points,
            counts,
        } => Request::Adjust(proto::AdjustRequest {
            program_id: program.into(),
            member_id: member_id(*member),
            idempotency_key: key,
            points: *points,
            reason: format!("goodwill-{step}"),
            actor: "model".into(),
            counts_toward_tier: *counts,
        }),
        Op::SetTier {
            member,
            rank,
            hold_days,
        } => Request::SetTier(proto::SetTierRequest {
            program_id: program.into(),
            member_id: member_id(*member),
            tier_code: TIERS[*rank].0.into(),
            hold_until: hold_days.map(|days| timestamp(model.now + Duration::days(days))),
            reason: format!("status match {step}"),
            actor: "model".into(),
            idempotency_key: key,
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
                    ..Default::default()
                })
            } else {
                earlier.changed()?
            }
        }
        Op::RefereePurchase {
            referral,
            amount_minor,
        } => {
            let found = model
                .referrals
                .get(referral % model.referrals.len().max(1))?;
            Request::Award(proto::AwardRequest {
                program_id: program.into(),
                member_id: model.members[found.referee].clone(),
                idempotency_key: key,
                source: 1,
                external_ref: format!("order-{step}"),
                amount_minor: *amount_minor,
                currency: "USD".into(),
                occurred_at: Some(timestamp(model.now)),
            })
        }
        Op::Convert { referral } => {
            let found = model
                .referrals
                .get(referral % model.referrals.len().max(1))?;
            Request::ConvertInvite(proto::ConvertInviteRequest {
                program_id: program.into(),
                code: found.code.clone(),
                idempotency_key: key,
            })
        }
        Op::Advance(_)
        | Op::OtherClient { .. }
        | Op::Refer { .. }
        | Op::Evaluate { .. }
        | Op::Expire
        | Op::LoseCapCounters
        | Op::ChangeZone(_)
        | Op::RefundAndCancel { .. }
        | Op::Bounce { .. }
        | Op::EnrollBatch { .. }
        | Op::Graph => return None,
    })
}

/// `Op::EnrollBatch`: each item answered as the model says, the new members added to it.
async fn enroll_batch(
    app: &TestApp,
    program: &str,
    model: &mut Model,
    existing: usize,
    fresh: usize,
    twice: bool,
    after: &str,
) -> Result<(), TestCaseError> {
    let new: Vec<String> = (0..fresh)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    // (member id, its model index when it exists, already enrolled when answered)
    let mut items: Vec<(String, Option<usize>, bool)> =
        new.iter().map(|id| (id.clone(), None, false)).collect();
    items.push((model.members[existing].clone(), Some(existing), true));
    if twice {
        items.push((new[0].clone(), None, true));
    }
    let request = proto::EnrollBatchRequest {
        program_id: program.into(),
        members: items
            .iter()
            .map(|(member_id, _, _)| proto::EnrollMemberRequest {
                member_id: member_id.clone(),
                ..Default::default()
            })
            .collect(),
    };
    let results = app
        .ledger
        .clone()
        .enroll_batch(request)
        .await
        .map_err(|status| TestCaseError::fail(format!("{after}: EnrollBatch: {status}")))?
        .into_inner()
        .results;
    prop_assert_eq!(results.len(), items.len(), "results of {}", after);
    for ((member_id, index, already), result) in items.iter().zip(results) {
        let Some(proto::enroll_batch_result::Outcome::Member(enrolled)) = result.outcome else {
            return Err(TestCaseError::fail(format!(
                "{after}: {member_id}: {:?}",
                result.outcome
            )));
        };
        let member = enrolled.member.unwrap_or_default();
        prop_assert_eq!(
            enrolled.already_enrolled,
            *already,
            "{} of {}",
            member_id,
            after
        );
        prop_assert_eq!(&member.member_id, member_id, "{}", after);
        let (balance, earned) = match index {
            Some(index) => (model.balance(*index), model.lifetime_earned[*index]),
            None => (0, 0),
        };
        prop_assert_eq!(
            member.balance_points,
            balance,
            "{} balance after {}",
            member_id,
            after
        );
        prop_assert_eq!(
            member.lifetime_earned_points,
            earned,
            "{} lifetime earned after {}",
            member_id,
            after
        );
    }
    for member_id in new {
        model.add_member(member_id);
    }
    Ok(())
}

/// The four requests of `Op::RefundAndCancel`: an award of $50, a spend of the whole
/// balance (so the award's points are spent), then
/// the refund of the award and the cancellation of the spend in the order given. Each is
/// made from the model as it stands when its turn comes.
#[allow(clippy::type_complexity)]
pub(super) fn refund_and_cancel(
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
pub(super) async fn check_members(
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
        let status = app
            .tiers
            .clone()
            .get_tier_status(proto::GetTierStatusRequest {
                program_id: program.into(),
                member_id: model.members[index].clone(),
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("GetTierStatus: {status}")))?
            .into_inner()
            .status
            .unwrap();
        check_standing(model, index, &status, after)?;
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

/// A member's tier status as the service answers it matches the model: the tier, status
/// points in the window, the grace's end and the hold.
pub(super) fn check_standing(
    model: &Model,
    index: usize,
    status: &proto::TierStatus,
    after: &str,
) -> Result<(), TestCaseError> {
    let standing = &model.standings[index];
    prop_assert_eq!(
        &status.tier_code,
        TIERS[standing.rank].0,
        "member #{} tier after {}",
        index,
        after
    );
    prop_assert_eq!(
        status.status_points,
        model.status(index),
        "member #{} status points after {}",
        index,
        after
    );
    prop_assert_eq!(
        status.grace_ends_at,
        standing.grace.as_ref().map(|(ends, _)| timestamp(*ends)),
        "member #{} grace after {}",
        index,
        after
    );
    prop_assert_eq!(
        status.hold_until,
        standing.hold_until.map(timestamp),
        "member #{} hold after {}",
        index,
        after
    );
    Ok(())
}

/// Sends a request and checks its answer against the model.
async fn exchange(
    clients: &mut Clients,
    model: &mut Model,
    sent: &mut Vec<Request>,
    request: Request,
    after: &str,
) -> Result<(), TestCaseError> {
    let expected = model.apply(&request);
    let actual = send(clients, &request).await;
    model
        .check(&request, expected, actual)
        .map_err(|error| TestCaseError::fail(format!("{after}: {error}")))?;
    sent.push(request);
    Ok(())
}

/// EvaluateMember: its steps and the member's standing after it match the model.
async fn evaluate(
    app: &TestApp,
    program: &str,
    model: &mut Model,
    member: usize,
    after: &str,
) -> Result<(), TestCaseError> {
    let expected = model.evaluate(member);
    let answer = app
        .tiers
        .clone()
        .evaluate_member(proto::EvaluateMemberRequest {
            program_id: program.into(),
            member_id: model.members[member].clone(),
        })
        .await
        .map_err(|status| TestCaseError::fail(format!("{after}: {status}")))?
        .into_inner();
    let steps: Vec<i32> = expected.iter().map(|kind| *kind as i32).collect();
    prop_assert_eq!(answer.steps, steps, "{}: the steps", after);
    check_standing(model, member, &answer.status.unwrap(), after)
}

/// A counted adjustment of `points` for `member`.
fn counted_adjustment(
    program: &str,
    model: &Model,
    member: usize,
    key: String,
    points: i64,
) -> Request {
    Request::Adjust(proto::AdjustRequest {
        program_id: program.into(),
        member_id: model.members[member].clone(),
        idempotency_key: key,
        points,
        reason: "bounce".into(),
        actor: "model".into(),
        counts_toward_tier: true,
    })
}

/// A snapshot rebuilt now holds exactly the referrals the model has converted.
async fn graph(
    app: &TestApp,
    program: &str,
    model: &Model,
    after: &str,
) -> Result<(), TestCaseError> {
    let fail = |what: &str, status: tonic::Status| {
        TestCaseError::fail(format!("{after}: {what}: {status}"))
    };
    let mut graph = app.graph.clone();
    graph
        .rebuild_snapshot(proto::RebuildSnapshotRequest {
            program_id: program.into(),
        })
        .await
        .map_err(|status| fail("rebuild snapshot", status))?;
    let answer = graph
        .get_graph(proto::GetGraphRequest {
            program_id: program.into(),
            max_nodes: 50_000,
        })
        .await
        .map_err(|status| fail("get graph", status))?
        .into_inner();
    let edges: std::collections::BTreeSet<(String, String)> = answer
        .edges
        .iter()
        .map(|edge| {
            (
                answer.nodes[edge.referrer as usize].member_id.clone(),
                answer.nodes[edge.referee as usize].member_id.clone(),
            )
        })
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> = model
        .referrals
        .iter()
        .filter(|referral| referral.status == proto::InviteStatus::Converted)
        .map(|referral| {
            (
                model.members[referral.referrer].clone(),
                model.members[referral.referee].clone(),
            )
        })
        .collect();
    prop_assert_eq!(edges, expected, "{}: the graph's edges", after);
    prop_assert_eq!(answer.dropped_nodes, 0, "{}: nothing dropped", after);
    Ok(())
}

pub(super) async fn sweep(
    app: &TestApp,
    model: &mut Model,
    after: &str,
) -> Result<(), TestCaseError> {
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

/// The prefix under which the model keeps the second client's keys.
const OTHER_CLIENT: &str = "other~";

pub(super) async fn run_case(
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
    let mut clients = app.clients();
    // The second client (every program, every scope) whose keys live apart from the first's.
    let mut other_clients = app.clients_as(
        &app.add_client(&format!("model-other-{number}"), &["*"], &["*"], None)
            .await,
    );

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
            Op::Graph => graph(app, &program, &model, &after).await?,
            Op::Evaluate { member } => {
                evaluate(app, &program, &mut model, *member, &after).await?;
                which = Some(*member);
            }
            Op::Refer { referrer } => {
                let invite_key = format!("k-{step}-invite");
                let invite = Request::CreateInvites(proto::CreateInvitesRequest {
                    program_id: program.clone(),
                    referrer_member_id: model.members[*referrer].clone(),
                    idempotency_key: invite_key.clone(),
                    contacts: vec![format!("friend-{number}-{step}@model.example")],
                });
                exchange(&mut clients, &mut model, &mut sent, invite, &after).await?;
                let Some(code) = model.invites.last().and_then(|(_, code, _)| code.clone()) else {
                    return Err(TestCaseError::fail(format!("{after}: no invite code")));
                };
                // A new member, a second later, accepts it.
                model.now += Duration::seconds(1);
                app.clock.set(model.now);
                let referee_id = uuid::Uuid::new_v4().to_string();
                app.ledger
                    .clone()
                    .enroll_member(proto::EnrollMemberRequest {
                        program_id: program.clone(),
                        member_id: referee_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| TestCaseError::fail(format!("{after}: enroll: {status}")))?;
                let referee = model.add_member(referee_id.clone());
                let accept = Request::AcceptInvite(proto::AcceptInviteRequest {
                    program_id: program.clone(),
                    code,
                    referee_member_id: referee_id,
                    idempotency_key: format!("k-{step}-accept"),
                });
                exchange(&mut clients, &mut model, &mut sent, accept, &after).await?;
                which = Some(referee);
            }
            Op::Bounce { member } => {
                let m = *member;
                for (part, points) in [("up", 400), ("down", -400)] {
                    let request =
                        counted_adjustment(&program, &model, m, format!("k-{step}-{part}"), points);
                    exchange(&mut clients, &mut model, &mut sent, request, &after).await?;
                }
                evaluate(app, &program, &mut model, m, &after).await?;
                // Inside the last five days (a reminder), then at the grace's end.
                for days in [GRACE_DAYS - 3, 3] {
                    model.now += Duration::days(days);
                    app.clock.set(model.now);
                    evaluate(app, &program, &mut model, m, &after).await?;
                }
                let request =
                    counted_adjustment(&program, &model, m, format!("k-{step}-again"), 400);
                exchange(&mut clients, &mut model, &mut sent, request, &after).await?;
            }
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
                    exchange(&mut clients, &mut model, &mut sent, request, &after).await?;
                }
                which = Some(*member);
            }
            Op::EnrollBatch {
                existing,
                fresh,
                twice,
            } => {
                enroll_batch(app, &program, &mut model, *existing, *fresh, *twice, &after).await?;
                which = Some(*existing);
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
            Op::OtherClient { op } => {
                // Ledger requests only: the model does not follow an invite's contact
                // being invited again (superseding) or accepted twice.
                let Some(wire) = sent.get(op % sent.len().max(1)).cloned().filter(|r| {
                    !matches!(
                        r,
                        Request::CreateInvites(_)
                            | Request::AcceptInvite(_)
                            | Request::ConvertInvite(_)
                    )
                }) else {
                    continue;
                };
                // The model keeps the second client's keys under a prefix no key of the
                // first client has; the wire carries the request as the first client sent
                // it. Not kept in `sent`: a replay of it is the second client's to send.
                let seen = wire.in_namespace(OTHER_CLIENT);
                which = model.involved(&seen);
                let expected = model.apply(&seen);
                let actual = send(&mut other_clients, &wire).await;
                model
                    .check(&seen, expected, actual)
                    .map_err(|error| TestCaseError::fail(format!("{after}: {error}")))?;
            }
            _ => {
                let Some(request) = request_for(op, step, &program, &model, &sent) else {
                    continue;
                };
                which = model.involved(&request);
                exchange(&mut clients, &mut model, &mut sent, request, &after).await?;
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
