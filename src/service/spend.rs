//! Spending: points leave the oldest unexpired batches first, every draw recorded.
use super::{
    prior_outcome, program_rules, require_member, run_to_completion, Error, Ledger, Outcome,
};
use crate::domain::{
    draw_oldest_first, spendable_points, BatchBalance, Draw, EntryId, IdempotencyKey, MemberId,
    ProgramId,
};
use crate::store::{self, batches::AllocationView, entries, MemberTx};
use chrono::{DateTime, Utc};
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
            let now = ledger.clock.now();
            let request = json!({
                "op": "spend",
                "member_id": command.member.to_string(),
                "points": command.points,
                "reference": command.reference,
            });
            let mut client = ledger.db.get().await?;
            let tx = MemberTx::begin(&mut client, &command.program, command.member).await?;
            let (program, _) = program_rules(&*tx, &command.program).await?;
            if let Some(outcome) = prior_outcome(&tx, &command.idempotency_key, &request).await? {
                return Ok(outcome);
            }
            require_member(&tx).await?;
            let (draws, batches) = plan_fifo_draw(&tx, command.points, now).await?;
            let entry_id = EntryId::generate();
            let balance_before = spendable_points(&batches, now);
            let outcome = SpendOutcome {
                entry_id: entry_id.to_string(),
                points: command.points,
                allocations: allocation_views(entry_id, &draws, &batches),
                balance_points: balance_before - command.points,
                replayed: false,
            };
            entries::insert(
                &tx,
                &entries::NewEntry {
                    entry_id,
                    kind: "spend",
                    points: -command.points,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: program.rules_version,
                    created_at: now,
                    purchase: None,
                    reason: Some(&command.reference),
                    actor: None,
                    reversal: None,
                },
            )
            .await?;
            store::batches::apply(&tx, entry_id, &draws).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}

/// Locks the member's batches and plans a FIFO draw of `points`. FAILED_PRECONDITION,
/// naming the available balance, when the unexpired batches hold fewer.
pub(super) async fn plan_fifo_draw(
    tx: &MemberTx<'_>,
    points: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<Draw>, Vec<BatchBalance>), Error> {
    let batches = store::batches::held_for_update(tx).await?;
    let available = spendable_points(&batches, now);
    if available < points {
        return Err(Error::FailedPrecondition(format!(
            "insufficient points: the balance is {available}, {points} were asked"
        )));
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
