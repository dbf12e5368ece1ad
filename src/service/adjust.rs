//! Manual adjustments: credits become a new batch, debits draw like a spend; both keep
//! their reason and actor for the audit.
use super::outcome::AllocationView;
use super::spend::{allocation_views, plan_fifo_draw};
use super::{run_to_completion, Error, Ledger, Opened, Outcome};
use crate::domain::{EntryId, EntryKind, EventType, IdempotencyKey, MemberId, ProgramId};
use crate::store::events::NewEvent;
use crate::store::{entries, mutation};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// A manual credit (points > 0) or debit (points < 0), parsed at the edge.
#[derive(Debug, Clone)]
pub struct AdjustCommand {
    pub program: ProgramId,
    pub member: MemberId,
    pub idempotency_key: IdempotencyKey,
    /// Not zero.
    pub points: i64,
    pub reason: String,
    pub actor: String,
    /// Whether the adjustment counts toward status points (default: no).
    pub counts_toward_tier: bool,
}

/// The outcome of an adjustment; stored with the entry and returned as-is on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustOutcome {
    pub entry_id: String,
    pub points: i64,
    /// A credit's new batch.
    pub batch_id: Option<Uuid>,
    /// A debit's draws, oldest batch first.
    pub allocations: Vec<AllocationView>,
    pub balance_points: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for AdjustOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

impl Ledger {
    #[tracing::instrument(name = "adjust", skip_all, fields(program = %command.program, member = %command.member, key = command.idempotency_key.as_str()))]
    pub async fn adjust(&self, command: AdjustCommand) -> Result<AdjustOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let mut request = json!({
                "op": "adjust",
                "member_id": command.member.to_string(),
                "points": command.points,
                "reason": command.reason,
                "actor": command.actor,
            });
            // Only when set: requests stored before the flag existed replay as they were.
            if command.counts_toward_tier {
                request["counts_toward_tier"] = json!(true);
            }
            let mut client = ledger.db.get().await?;
            let mut unit = match ledger
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
            unit.member()?;
            let entry_id = EntryId::generate();
            let mut outcome = AdjustOutcome {
                entry_id: entry_id.to_string(),
                points: command.points,
                batch_id: None,
                allocations: vec![],
                balance_points: 0,
                replayed: false,
            };
            let mut draws = vec![];
            let mut credit = None;
            if command.points < 0 {
                let (planned, batches) = plan_fifo_draw(&unit, -command.points).await?;
                outcome.allocations = allocation_views(entry_id, &planned, &batches);
                outcome.balance_points = unit.balance_points() + command.points;
                draws = planned;
            } else {
                // The batch id is part of the stored outcome, so it is chosen first.
                let validity =
                    Duration::days(i64::from(unit.rules.rules.document.points_validity_days));
                let batch = mutation::NewBatch {
                    batch_id: Uuid::now_v7(),
                    amount: command.points,
                    expires_at: unit.now + validity,
                };
                outcome.batch_id = Some(batch.batch_id);
                outcome.balance_points = unit.balance_after_credit(command.points)?;
                credit = Some(batch);
            }
            let effects = mutation::Effects {
                member: command.member,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::Adjustment,
                    points: command.points,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: unit.rules.version,
                    created_at: unit.now,
                    purchase: None,
                    reason: Some(&command.reason),
                    actor: Some(&command.actor),
                    reversal: None,
                },
                credit,
                draws: &draws,
                owed_delta: 0,
                status: command
                    .counts_toward_tier
                    .then_some((command.points, unit.now)),
                events: &[NewEvent::new(
                    EventType::PointsAdjusted,
                    command.member,
                    json!({
                        "entry_id": outcome.entry_id,
                        "member_id": command.member.to_string(),
                        "points": command.points,
                        "counts_toward_tier": command.counts_toward_tier,
                        "balance_points": outcome.balance_points,
                    }),
                )],
            };
            // A counted credit that crosses a threshold lifts the tier in its own transaction,
            // as an award does.
            let upgrade = if command.counts_toward_tier {
                unit.count_status(command.member, command.points, entry_id)
            } else {
                None
            };
            mutation::write(&unit.tx, &effects).await?;
            ledger
                .write_upgrades(&mut unit, upgrade.into_iter().collect())
                .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}
