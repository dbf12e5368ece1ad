//! Spending: points leave the oldest unexpired batches first, every draw recorded.
use super::outcome::AllocationView;
use super::{run_to_completion, Error, Ledger, Opened, Outcome, Unit};
use crate::domain::{
    draw_oldest_first, spendable_points, BatchBalance, Draw, EntryId, EntryKind, EventType,
    IdempotencyKey, MemberId, ProgramId,
};
use crate::store::events::NewEvent;
use crate::store::{self, entries, mutation};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A redemption, parsed at the edge.
#[derive(Debug, Clone)]
pub struct SpendCommand {
    pub program: ProgramId,
    pub member: MemberId,
    pub idempotency_key: IdempotencyKey,
    /// Positive.
    pub points: i64,
    pub reference: String,
}

/// The outcome of a spend; stored with the entry and returned as-is on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendOutcome {
    pub entry_id: String,
    pub points: i64,
    /// The draws, oldest batch first (negative points: taken from the batch).
    pub allocations: Vec<AllocationView>,
    pub balance_points: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for SpendOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

impl Ledger {
    /// Spends points oldest batch first. Refused with FAILED_PRECONDITION, before any
    /// write, when the unexpired batches hold fewer points than asked.
    #[tracing::instrument(name = "spend", skip_all, fields(program = %command.program, member = %command.member, key = command.idempotency_key.as_str()))]
    pub async fn spend(&self, command: SpendCommand) -> Result<SpendOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let request = json!({
                "op": "spend",
                "member_id": command.member.to_string(),
                "points": command.points,
                "reference": command.reference,
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
            unit.member()?;
            let (draws, batches) = plan_fifo_draw(&unit, command.points).await?;
            let entry_id = EntryId::generate();
            let outcome = SpendOutcome {
                entry_id: entry_id.to_string(),
                points: command.points,
                allocations: allocation_views(entry_id, &draws, &batches),
                balance_points: unit.balance_points() - command.points,
                replayed: false,
            };
            let effects = mutation::Effects {
                member: command.member,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::Spend,
                    points: -command.points,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: unit.rules.version,
                    created_at: unit.now,
                    purchase: None,
                    reason: Some(&command.reference),
                    actor: None,
                    reversal: None,
                },
                credit: None,
                draws: &draws,
                owed_delta: 0,
                status: None,
                events: &[NewEvent::new(
                    EventType::PointsSpent,
                    command.member,
                    json!({
                        "entry_id": outcome.entry_id,
                        "member_id": command.member.to_string(),
                        "points": command.points,
                        "balance_points": outcome.balance_points,
                    }),
                )],
            };
            unit.finish(&effects).await?;
            crate::telemetry::metrics::spend_committed(&command.program, outcome.points);
            Ok(outcome)
        })
        .await
    }
}

/// Locks the batches a FIFO draw of `points` takes from and plans the draw.
/// FAILED_PRECONDITION, naming the available balance, when the unexpired batches hold
/// fewer (then every one of them was read).
pub(super) async fn plan_fifo_draw(
    unit: &Unit<'_>,
    points: i64,
) -> Result<(Vec<Draw>, Vec<BatchBalance>), Error> {
    let now = unit.now;
    let batches = store::batches::fifo_for_update(&unit.tx, unit.tx.member(), points, now).await?;
    let available = spendable_points(&batches, now);
    if available < points {
        return Err(Error::InsufficientPoints {
            balance_points: available,
            requested_points: points,
        });
    }
    let draws = draw_oldest_first(&batches, points, now);
    Ok((draws, batches))
}

/// The draws of an entry with their batches' dates, for answers.
pub(super) fn allocation_views(
    entry: EntryId,
    draws: &[Draw],
    batches: &[BatchBalance],
) -> Vec<AllocationView> {
    draws
        .iter()
        .filter_map(|draw| {
            let batch = batches
                .iter()
                .find(|batch| batch.batch_id == draw.batch_id)?;
            Some(AllocationView {
                entry_id: entry.as_uuid(),
                batch_id: draw.batch_id,
                points: draw.points,
                earned_at: batch.earned_at,
                expires_at: batch.expires_at,
            })
        })
        .collect()
}
