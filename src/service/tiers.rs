//! The tier engine: status points over the rolling window, upgrades in the transaction of
//! the credit that crosses a threshold, the grace ladder down one rank at a time, the
//! re-upgrade bonus, and manual tiers with a hold.
use super::bonus::{BonusCause, BonusCredit};
use super::members::program_not_found;
use super::{run_to_completion, Error, Ledger, Opened, Outcome, Unit};
use crate::domain::{
    evaluate_tier, rank_after, status_window_start, upgrade_to, EntryId, EntryKind, EventType,
    Grace, IdempotencyKey, MemberId, ProgramId, TierState, TierStep,
};
use crate::store::events::NewEvent;
use crate::store::{self, entries, mutation, tiers::NewTierChange};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// The most tier changes one history page returns.
pub const TIER_HISTORY_PAGE_MAX: usize = 200;
/// The horizon of `points_aging_out_30d`.
const AGING_OUT_HORIZON: Duration = Duration::days(30);
/// Who the history names for changes the engine made.
const SYSTEM_ACTOR: &str = "system";

/// A lift decided while crediting: the member already holds the new rank in the unit (so
/// later credits earn at its multiplier); the change is written after the credit.
#[derive(Debug, Clone)]
pub(super) struct Upgrade {
    member: MemberId,
    from: usize,
    to: usize,
    status: i64,
    /// The credit that crossed the threshold (none for an evaluation after a rules change).
    entry: Option<EntryId>,
    ended_grace: bool,
}

impl Unit<'_> {
    /// Counts a credit toward the member's status points. When status now reaches a
    /// higher tier's qualify points (several ranks at once if so), the member rises there
    /// at once and the lift is returned, for [`Ledger::write_upgrades`].
    pub(super) fn count_status(
        &mut self,
        member: MemberId,
        points: i64,
        entry: EntryId,
    ) -> Option<Upgrade> {
        let rules = self.rules.clone();
        let state = self.members.get_mut(&member)?;
        state.status = state.status.saturating_add(points);
        let row = state.row.as_mut()?;
        let to = upgrade_to(&rules.rules.document.tiers, row.tier_rank, state.status)?;
        let upgrade = Upgrade {
            member,
            from: row.tier_rank,
            to,
            status: state.status,
            entry: Some(entry),
            ended_grace: row.grace.is_some(),
        };
        row.tier_rank = to;
        row.grace = None;
        Some(upgrade)
    }
}

impl Ledger {
    /// Writes the unit's upgrades (each with its history row and `tier.upgraded` event)
    /// and pays the re-upgrade bonus of every demotion from a tier re-qualified inside the
    /// window, once per demotion (its key is derived from the demotion).
    pub(super) async fn write_upgrades(
        &self,
        unit: &mut Unit<'_>,
        upgrades: Vec<Upgrade>,
    ) -> Result<(), Error> {
        for upgrade in upgrades {
            let rules = unit.rules.clone();
            let document = &rules.rules.document;
            let (from, to) = (rules.rules.tier(upgrade.from), rules.rules.tier(upgrade.to));
            let hold_until = unit.member_row(upgrade.member)?.tier_hold_until;
            let change_id = Uuid::now_v7();
            let mut events = vec![];
            if upgrade.ended_grace {
                events.push(NewEvent::new(
                    EventType::TierGraceCleared,
                    upgrade.member,
                    json!({
                        "member_id": upgrade.member.to_string(),
                        "tier_code": from.code,
                        "status_points": upgrade.status,
                    }),
                ));
            }
            events.push(NewEvent::new(
                EventType::TierUpgraded,
                upgrade.member,
                json!({
                    "member_id": upgrade.member.to_string(),
                    "change_id": change_id.to_string(),
                    "from_tier_code": from.code,
                    "to_tier_code": to.code,
                    "status_points": upgrade.status,
                    "entry_id": upgrade.entry.map(|entry| entry.to_string()),
                }),
            ));
            let change = NewTierChange {
                change_id,
                change: "upgraded",
                from_rank: upgrade.from,
                from_code: &from.code,
                to_code: &to.code,
                status_points: upgrade.status,
                reason: "status points reached the tier",
                actor: SYSTEM_ACTOR,
                entry_id: upgrade.entry.map(|entry| entry.as_uuid()),
            };
            let state = TierState {
                rank: upgrade.to,
                grace: None,
                hold_until,
            };
            store::tiers::write(
                &unit.tx,
                upgrade.member,
                &state,
                Some(&change),
                rules.version,
                unit.now,
                &events,
            )
            .await?;
            if document.reupgrade_bonus_points == 0 {
                continue;
            }
            let since = unit.now - Duration::days(i64::from(document.reupgrade_window_days));
            let demotions = store::tiers::demotions_since(
                &unit.tx,
                upgrade.member,
                upgrade.from,
                upgrade.to,
                since,
            )
            .await?;
            for (demotion, _) in demotions {
                let credit = BonusCredit {
                    member: upgrade.member,
                    cause: BonusCause::Reupgrade { demotion },
                    points: document.reupgrade_bonus_points,
                };
                self.credit_derived_bonus(unit, &credit).await?;
            }
        }
        Ok(())
    }
}

/// A member's tier as `GetTierStatus` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierStatusView {
    pub tier_code: String,
    pub status_points: i64,
    pub next_tier_code: Option<String>,
    pub points_to_next_tier: i64,
    /// Status points still missing to keep the tier; 0 when kept.
    pub points_to_keep_tier: i64,
    pub grace_ends_at: Option<DateTime<Utc>>,
    pub hold_until: Option<DateTime<Utc>>,
    /// Status points that leave the window in the next 30 days.
    pub points_aging_out_30d: i64,
    /// The tier an evaluation now would leave the member at.
    pub tier_if_evaluated_now: String,
}

/// One tier change of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChangeView {
    pub change_id: Uuid,
    /// `upgraded`, `downgraded` or `set`.
    pub change: String,
    pub from_tier_code: String,
    pub to_tier_code: String,
    pub status_points: i64,
    pub reason: String,
    pub actor: String,
    pub entry_id: Option<Uuid>,
    pub hold_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A page of tier history, newest first.
#[derive(Debug, Clone)]
pub struct TierHistoryPage {
    pub changes: Vec<TierChangeView>,
    /// The page token of the next (older) page; None on the last page.
    pub next_page_token: Option<i64>,
}

/// A manual tier (status match, goodwill), parsed at the edge.
#[derive(Debug, Clone)]
pub struct SetTierCommand {
    pub program: ProgramId,
    pub member: MemberId,
    pub tier_code: String,
    /// Downgrades are suspended until then.
    pub hold_until: Option<DateTime<Utc>>,
    pub reason: String,
    pub actor: String,
    pub idempotency_key: IdempotencyKey,
}

/// The outcome of SetTier; stored with its entry and returned as-is on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTierOutcome {
    pub entry_id: String,
    pub change_id: String,
    pub from_tier_code: String,
    pub tier_code: String,
    pub hold_until: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for SetTierOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

/// What an evaluation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierEvaluation {
    pub steps: Vec<TierStep>,
    pub status: TierStatusView,
}

impl Ledger {
    /// The member's tier, status points and what keeps or lifts it, as of now.
    pub async fn tier_status(
        &self,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<TierStatusView, Error> {
        let client = self.db.get().await?;
        let (version, row) = store::members::get_with_program(&client, program, member)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        let row = row.ok_or_else(|| Error::MemberNotFound {
            program: program.clone(),
            member,
        })?;
        let rules = self.rules.get(&**client, program, version).await?;
        let now = self.clock.now();
        let months = rules.rules.document.tier_window_months;
        let window_start = status_window_start(now, months);
        let aging_before = status_window_start(now + AGING_OUT_HORIZON, months);
        let (status, aging) = store::tiers::status(
            &**client,
            program,
            member,
            (window_start, now),
            aging_before,
        )
        .await?;
        let status = figure("status_points", status)?;
        Ok(status_view(
            &rules.rules,
            &row.tier_state(),
            status,
            figure("points_aging_out_30d", aging)?,
            now,
        ))
    }

    /// A member's tier changes, newest first; `page_token` continues a previous page.
    pub async fn tier_history(
        &self,
        program: &ProgramId,
        member: MemberId,
        page_size: usize,
        page_token: Option<i64>,
    ) -> Result<TierHistoryPage, Error> {
        let client = self.db.get().await?;
        let (_, row) = store::members::get_with_program(&client, program, member)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        row.ok_or_else(|| Error::MemberNotFound {
            program: program.clone(),
            member,
        })?;
        let size = page_size.clamp(1, TIER_HISTORY_PAGE_MAX);
        let limit = i64::try_from(size).unwrap_or(50) + 1;
        let mut rows = store::tiers::history(&**client, program, member, page_token, limit).await?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|row| row.seq)
        } else {
            None
        };
        let changes = rows
            .into_iter()
            .map(|row| TierChangeView {
                change_id: row.change_id,
                change: row.change,
                from_tier_code: row.from_code,
                to_tier_code: row.to_code,
                status_points: row.status_points,
                reason: row.reason,
                actor: row.actor,
                entry_id: row.entry_id,
                hold_until: row.hold_until,
                created_at: row.created_at,
            })
            .collect();
        Ok(TierHistoryPage {
            changes,
            next_page_token,
        })
    }

    /// Re-runs the tier logic for one member now, under its lock: an upgrade its status
    /// qualifies for, or the grace ladder (start, remind, clear, one rank down). Running it
    /// twice does nothing more: every step is decided from the stored state it changes.
    #[tracing::instrument(name = "evaluate_member", skip(self))]
    pub async fn evaluate_member(
        &self,
        program: ProgramId,
        member: MemberId,
    ) -> Result<TierEvaluation, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let steps = ledger.evaluate_locked(&program, member).await?;
            let status = ledger.tier_status(&program, member).await?;
            Ok(TierEvaluation { steps, status })
        })
        .await
    }

    /// [`Ledger::evaluate_member`]'s unit of work.
    async fn evaluate_locked(
        &self,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<Vec<TierStep>, Error> {
        let ledger = self;
        {
            let mut client = ledger.db.get().await?;
            let ask = mutation::Ask {
                member,
                key: None,
                purchase: None,
            };
            let (mut unit, _) = ledger.open_many(&mut client, program, &[ask]).await?;
            let row = unit.member()?.clone();
            let status = unit.members.get(&member).map_or(0, |state| state.status);
            let rules = unit.rules.clone();
            let steps = evaluate_tier(&rules.rules.document, &row.tier_state(), status, unit.now);
            let mut state = row.tier_state();
            let mut events = vec![];
            let mut change = None;
            let now = unit.now;
            let member_text = member.to_string();
            for step in &steps {
                match step {
                    TierStep::Upgrade { .. } => {}
                    TierStep::StartGrace { ends_at } => {
                        state.grace = Some(Grace {
                            started_at: now,
                            ends_at: *ends_at,
                            reminders_sent: vec![],
                        });
                        events.push(warning(&rules.rules, &state, status, member, None));
                    }
                    TierStep::Remind { days, due } => {
                        if let Some(grace) = state.grace.as_mut() {
                            grace.reminders_sent.extend(due.iter().copied());
                        }
                        events.push(warning(&rules.rules, &state, status, member, Some(*days)));
                    }
                    TierStep::ClearGrace => {
                        state.grace = None;
                        events.push(NewEvent::new(
                            EventType::TierGraceCleared,
                            member,
                            json!({
                                "member_id": member_text,
                                "tier_code": rules.rules.tier(state.rank).code,
                                "status_points": status,
                            }),
                        ));
                    }
                    TierStep::Downgrade { to } => {
                        let change_id = Uuid::now_v7();
                        events.push(NewEvent::new(
                            EventType::TierDowngraded,
                            member,
                            json!({
                                "member_id": member_text,
                                "change_id": change_id.to_string(),
                                "from_tier_code": rules.rules.tier(state.rank).code,
                                "to_tier_code": rules.rules.tier(*to).code,
                                "status_points": status,
                            }),
                        ));
                        change = Some((change_id, state.rank, *to));
                        state.rank = *to;
                        state.grace = None;
                    }
                }
            }
            let upgrades: Vec<Upgrade> = steps
                .iter()
                .filter_map(|step| match step {
                    TierStep::Upgrade { to } => Some(Upgrade {
                        member,
                        from: row.tier_rank,
                        to: *to,
                        status,
                        entry: None,
                        ended_grace: row.grace.is_some(),
                    }),
                    _ => None,
                })
                .collect();
            if !upgrades.is_empty() {
                if let Some(state) = unit.members.get_mut(&member) {
                    if let Some(row) = state.row.as_mut() {
                        row.tier_rank = rank_after(row.tier_rank, &steps);
                        row.grace = None;
                    }
                }
                ledger.write_upgrades(&mut unit, upgrades).await?;
            } else if !events.is_empty() {
                let (from_code, to_code) = change
                    .map(|(_, from, to)| {
                        (
                            rules.rules.tier(from).code.clone(),
                            rules.rules.tier(to).code.clone(),
                        )
                    })
                    .unwrap_or_default();
                let new_change = change.map(|(change_id, from, _)| NewTierChange {
                    change_id,
                    change: "downgraded",
                    from_rank: from,
                    from_code: &from_code,
                    to_code: &to_code,
                    status_points: status,
                    reason: "the grace ended below the tier's maintain points",
                    actor: SYSTEM_ACTOR,
                    entry_id: None,
                });
                store::tiers::write(
                    &unit.tx,
                    member,
                    &state,
                    new_change.as_ref(),
                    rules.version,
                    now,
                    &events,
                )
                .await?;
            }
            unit.tx.commit().await?;
            Ok(steps)
        }
    }

    /// Sets a member's tier by hand and suspends downgrades until `hold_until`; recorded
    /// as a `tier_set` entry (reason, actor) and a tier change.
    #[tracing::instrument(name = "set_tier", skip_all, fields(program = %command.program, member = %command.member, key = command.idempotency_key.as_str()))]
    pub async fn set_tier(&self, command: SetTierCommand) -> Result<SetTierOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let request = json!({
                "op": "set_tier",
                "member_id": command.member.to_string(),
                "tier_code": command.tier_code,
                "hold_until": command.hold_until,
                "reason": command.reason,
                "actor": command.actor,
            });
            let mut client = ledger.db.get().await?;
            let unit = match ledger
                .open(
                    &mut client,
                    &command.program,
                    command.member,
                    &command.idempotency_key,
                    &request,
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let row = unit.member()?.clone();
            let rules = unit.rules.clone();
            let tiers = &rules.rules.document.tiers;
            let rank = tiers
                .iter()
                .position(|tier| tier.code == command.tier_code)
                .ok_or_else(|| {
                    let codes: Vec<&str> = tiers.iter().map(|tier| tier.code.as_str()).collect();
                    Error::invalid(
                        "tier_code",
                        format!(
                            "program {} has no tier {:?}; its tiers are {}",
                            command.program,
                            command.tier_code,
                            codes.join(", ")
                        ),
                    )
                })?;
            if let Some(hold) = command.hold_until {
                if hold <= unit.now {
                    return Err(Error::invalid("hold_until", "must be in the future"));
                }
            }
            let status = unit.members.get(&command.member).map_or(0, |s| s.status);
            let entry_id = EntryId::generate();
            let change_id = Uuid::now_v7();
            let from_code = rules.rules.tier(row.tier_rank).code.clone();
            let outcome = SetTierOutcome {
                entry_id: entry_id.to_string(),
                change_id: change_id.to_string(),
                from_tier_code: from_code.clone(),
                tier_code: command.tier_code.clone(),
                hold_until: command.hold_until,
                replayed: false,
            };
            let event = NewEvent::new(
                EventType::TierSet,
                command.member,
                json!({
                    "member_id": command.member.to_string(),
                    "change_id": outcome.change_id,
                    "entry_id": outcome.entry_id,
                    "from_tier_code": from_code,
                    "to_tier_code": command.tier_code,
                    "hold_until": command.hold_until,
                    "status_points": status,
                }),
            );
            let effects = mutation::Effects {
                member: command.member,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::TierSet,
                    points: 0,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: rules.version,
                    created_at: unit.now,
                    purchase: None,
                    reason: Some(&command.reason),
                    actor: Some(&command.actor),
                    reversal: None,
                },
                credit: None,
                draws: &[],
                owed_delta: 0,
                status: None,
                events: &[event],
            };
            mutation::write(&unit.tx, &effects).await?;
            let change = NewTierChange {
                change_id,
                change: "set",
                from_rank: row.tier_rank,
                from_code: &from_code,
                to_code: &command.tier_code,
                status_points: status,
                reason: &command.reason,
                actor: &command.actor,
                entry_id: Some(entry_id.as_uuid()),
            };
            let state = TierState {
                rank,
                grace: None,
                hold_until: command.hold_until,
            };
            store::tiers::write(
                &unit.tx,
                command.member,
                &state,
                Some(&change),
                rules.version,
                unit.now,
                &[],
            )
            .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}

/// A `tier.downgrade_warning`: the grace's end and what keeps the tier.
fn warning(
    rules: &crate::domain::ProgramRules,
    state: &TierState,
    status: i64,
    member: MemberId,
    reminder_days: Option<i32>,
) -> NewEvent {
    let tier = rules.tier(state.rank);
    NewEvent::new(
        EventType::TierDowngradeWarning,
        member,
        json!({
            "member_id": member.to_string(),
            "tier_code": tier.code,
            "status_points": status,
            "maintain_points": tier.maintain_points,
            "points_to_keep_tier": (tier.maintain_points - status).max(0),
            "grace_ends_at": state.grace.as_ref().map(|grace| grace.ends_at),
            "reminder_days_before_end": reminder_days,
        }),
    )
}

fn figure(field: &str, value: i128) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::FigureOutOfRange {
        field: field.to_owned(),
        value,
    })
}

fn status_view(
    rules: &crate::domain::ProgramRules,
    state: &TierState,
    status: i64,
    aging_out: i64,
    now: DateTime<Utc>,
) -> TierStatusView {
    let tiers = &rules.document.tiers;
    let rank = state.rank.min(tiers.len().saturating_sub(1));
    let tier = &tiers[rank];
    let next = tiers.get(rank + 1);
    let steps = evaluate_tier(&rules.document, state, status, now);
    TierStatusView {
        tier_code: tier.code.clone(),
        status_points: status,
        next_tier_code: next.map(|tier| tier.code.clone()),
        points_to_next_tier: next.map_or(0, |tier| (tier.qualify_points - status).max(0)),
        points_to_keep_tier: if rank == 0 {
            0
        } else {
            (tier.maintain_points - status).max(0)
        },
        grace_ends_at: state.grace.as_ref().map(|grace| grace.ends_at),
        hold_until: state.hold_until,
        points_aging_out_30d: aging_out,
        tier_if_evaluated_now: rules.tier(rank_after(rank, &steps)).code.clone(),
    }
}
