//! Refunds and cancelled redemptions: reversing an award takes its points back, reversing
//! a spend puts them back into the very batches they came from.
use super::outcome::AllocationView;
use super::spend::allocation_views;
use super::{run_to_completion, Error, Ledger, Opened, Outcome, Unit};
use crate::domain::{
    draw_for_reversal, repay_owed, restore_for_spend_reversal, BatchBalance, EntryId, EntryKind,
    EventType, IdempotencyKey, ProgramId,
};
use crate::store::events::NewEvent;
use crate::store::{self, entries, entries::StoredEntry, mutation};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Names an earlier entry: by its id or by the key it was written with.
#[derive(Debug, Clone)]
pub enum EntryRef {
    Id(EntryId),
    Key(IdempotencyKey),
}

impl std::fmt::Display for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Key(key) => write!(f, "with idempotency key {:?}", key.as_str()),
        }
    }
}

impl EntryRef {
    fn canonical(&self) -> serde_json::Value {
        match self {
            Self::Id(id) => json!({ "entry_id": id.to_string() }),
            Self::Key(key) => json!({ "idempotency_key": key.as_str() }),
        }
    }
}

/// A refund of an award, parsed at the edge.
#[derive(Debug, Clone)]
pub struct ReverseAwardCommand {
    pub program: ProgramId,
    pub idempotency_key: IdempotencyKey,
    pub award: EntryRef,
    /// Positive; None means all that is left to reverse.
    pub points: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseAwardOutcome {
    pub entry_id: String,
    pub award_entry_id: String,
    pub member_id: String,
    pub reversed_points: i64,
    pub recovered_points: i64,
    pub unrecovered_points: i64,
    pub allocations: Vec<AllocationView>,
    pub remaining_reversible_points: i64,
    pub balance_points: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for ReverseAwardOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

/// A cancelled redemption, parsed at the edge.
#[derive(Debug, Clone)]
pub struct ReverseSpendCommand {
    pub program: ProgramId,
    pub idempotency_key: IdempotencyKey,
    pub spend: EntryRef,
    /// Positive; None means all that is left to put back.
    pub points: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseSpendOutcome {
    pub entry_id: String,
    pub spend_entry_id: String,
    pub member_id: String,
    pub reversed_points: i64,
    pub restored_points: i64,
    pub expired_points: i64,
    /// Kept back to repay points of refunded awards that had already been spent.
    /// Absent from outcomes stored before it existed.
    #[serde(default)]
    pub repaid_points: i64,
    pub allocations: Vec<AllocationView>,
    pub balance_points: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for ReverseSpendOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

impl Ledger {
    /// Reverses an award fully or partly. Points come back from the award's own batch,
    /// then from the member's other batches oldest first; what was already spent is
    /// recorded as unrecovered, so the balance never goes negative.
    #[tracing::instrument(name = "reverse_award", skip_all, fields(program = %command.program, key = command.idempotency_key.as_str()))]
    pub async fn reverse_award(
        &self,
        command: ReverseAwardCommand,
    ) -> Result<ReverseAwardOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let request = json!({
                "op": "reverse_award",
                "award": command.award.canonical(),
                "points": command.points,
                "reason": command.reason,
            });
            let award = ledger
                .referenced_entry(&command.program, &command.award, EntryKind::Award)
                .await?;
            let mut client = ledger.db.get().await?;
            let unit = match ledger
                .open(
                    &mut client,
                    &command.program,
                    award.member_id,
                    &command.idempotency_key,
                    &request,
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let (tx, now) = (&unit.tx, unit.now);
            let already = entries::reversed_so_far(tx, award.entry_id).await?;
            let reversible = award.points - already;
            let points = points_to_reverse(command.points, reversible, "award")?;
            let own_batch = store::batches::credited_by(tx, award.entry_id).await?;
            let batches = store::batches::held_for_update(tx).await?;
            let draws = draw_for_reversal(
                &batches,
                own_batch.as_ref().map(|batch| batch.batch_id),
                points,
                now,
            );
            let recovered: i64 = draws.iter().map(|draw| -draw.points).sum();
            let unrecovered = points - recovered;
            let entry_id = EntryId::generate();
            let outcome = ReverseAwardOutcome {
                entry_id: entry_id.to_string(),
                award_entry_id: award.entry_id.to_string(),
                member_id: award.member_id.to_string(),
                reversed_points: points,
                recovered_points: recovered,
                unrecovered_points: unrecovered,
                allocations: allocation_views(entry_id, &draws, &batches),
                remaining_reversible_points: reversible - points,
                balance_points: unit.balance_points() - recovered,
                replayed: false,
            };
            let effects = mutation::Effects {
                member: award.member_id,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::AwardReversal,
                    points: -recovered,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: unit.rules.version,
                    created_at: now,
                    purchase: None,
                    reason: command.reason.as_deref(),
                    actor: None,
                    reversal: Some(entries::Reversal {
                        entry_id: award.entry_id,
                        reversed_points: points,
                        unrecovered_points: Some(unrecovered),
                        repaid_points: None,
                    }),
                },
                credit: None,
                draws: &draws,
                // Points already spent are owed, and repaid by a later cancellation of
                // the spend that took them (see `reverse_spend`).
                owed_delta: unrecovered,
                // A refund takes its points out of status at the award's own instant, so
                // the two leave the rolling window together.
                status: Some((-points, award.created_at)),
                events: &[NewEvent::new(
                    EventType::PointsAwardReversed,
                    award.member_id,
                    json!({
                        "entry_id": outcome.entry_id,
                        "member_id": outcome.member_id,
                        "award_entry_id": outcome.award_entry_id,
                        "reversed_points": points,
                        "recovered_points": recovered,
                        "unrecovered_points": unrecovered,
                        "balance_points": outcome.balance_points,
                    }),
                )],
            };
            unit.finish(&effects).await?;
            Ok(outcome)
        })
        .await
    }

    /// Reverses a spend fully or partly: points go back into the batches the spend drew
    /// from, keeping their original expiry; a batch that has expired since gets nothing
    /// back and its points are reported as expired.
    #[tracing::instrument(name = "reverse_spend", skip_all, fields(program = %command.program, key = command.idempotency_key.as_str()))]
    pub async fn reverse_spend(
        &self,
        command: ReverseSpendCommand,
    ) -> Result<ReverseSpendOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let request = json!({
                "op": "reverse_spend",
                "spend": command.spend.canonical(),
                "points": command.points,
                "reason": command.reason,
            });
            let spend = ledger
                .referenced_entry(&command.program, &command.spend, EntryKind::Spend)
                .await?;
            let mut client = ledger.db.get().await?;
            let unit = match ledger
                .open(
                    &mut client,
                    &command.program,
                    spend.member_id,
                    &command.idempotency_key,
                    &request,
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let already = entries::reversed_so_far(&unit.tx, spend.entry_id).await?;
            let points = points_to_reverse(command.points, -spend.points - already, "spend")?;
            let spend_draws = spend_draws(&unit, spend.entry_id).await?;
            let (restorable, expired) =
                restore_for_spend_reversal(&spend_draws, already, points, unit.now);
            let owed = unit.member()?.points_owed;
            let (restorations, repaid) = repay_owed(restorable, owed);
            let restored: i64 = restorations.iter().map(|draw| draw.points).sum();
            let entry_id = EntryId::generate();
            let outcome = ReverseSpendOutcome {
                entry_id: entry_id.to_string(),
                spend_entry_id: spend.entry_id.to_string(),
                member_id: spend.member_id.to_string(),
                reversed_points: points,
                restored_points: restored,
                expired_points: expired,
                repaid_points: repaid,
                allocations: allocation_views(entry_id, &restorations, &spend_draws),
                balance_points: unit.balance_after_credit(restored)?,
                replayed: false,
            };
            let effects = mutation::Effects {
                member: spend.member_id,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::SpendReversal,
                    points: restored,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: unit.rules.version,
                    created_at: unit.now,
                    purchase: None,
                    reason: command.reason.as_deref(),
                    actor: None,
                    reversal: Some(entries::Reversal {
                        entry_id: spend.entry_id,
                        reversed_points: points,
                        unrecovered_points: None,
                        repaid_points: Some(repaid),
                    }),
                },
                credit: None,
                draws: &restorations,
                owed_delta: -repaid,
                status: None,
                events: &[NewEvent::new(
                    EventType::PointsSpendReversed,
                    spend.member_id,
                    json!({
                        "entry_id": outcome.entry_id,
                        "member_id": outcome.member_id,
                        "spend_entry_id": outcome.spend_entry_id,
                        "reversed_points": points,
                        "restored_points": restored,
                        "expired_points": expired,
                        "repaid_points": repaid,
                        "balance_points": outcome.balance_points,
                    }),
                )],
            };
            unit.finish(&effects).await?;
            Ok(outcome)
        })
        .await
    }

    /// Resolves a reference to an entry of the expected kind. Read before the member's
    /// lock is taken: an entry's member and kind never change.
    async fn referenced_entry(
        &self,
        program: &ProgramId,
        reference: &EntryRef,
        kind: EntryKind,
    ) -> Result<StoredEntry, Error> {
        let client = self.db.get().await?;
        let entry_id = match reference {
            EntryRef::Id(id) => Some(*id),
            EntryRef::Key(key) => entries::find_by_key(&**client, program, key)
                .await?
                .map(|entry| entry.entry_id),
        };
        let entry = match entry_id {
            Some(id) => entries::get(&**client, program, id).await?,
            None => None,
        };
        let entry = entry.ok_or_else(|| Error::EntryNotFound {
            program: program.clone(),
            reference: reference.to_string(),
        })?;
        if entry.kind != kind {
            return Err(Error::invalid(
                kind.as_str(),
                format!("entry {} is a {}, not a {kind}", entry.entry_id, entry.kind),
            ));
        }
        Ok(entry)
    }
}

/// The points a reversal covers: the request's, or all that is left; never more.
fn points_to_reverse(requested: Option<i64>, left: i64, what: &'static str) -> Result<i64, Error> {
    if left <= 0 {
        return Err(Error::NothingLeftToReverse { what });
    }
    let points = requested.unwrap_or(left);
    if points > left {
        return Err(Error::ReversalExceedsRemaining {
            what,
            left_points: left,
            requested_points: points,
        });
    }
    Ok(points)
}

/// A spend's draws in the order they were made (its batches oldest first), as batches
/// holding the drawn points.
async fn spend_draws(unit: &Unit<'_>, spend: EntryId) -> Result<Vec<BatchBalance>, Error> {
    let tx = &unit.tx;
    let allocations =
        store::batches::allocations_of(&**tx, tx.program(), &[spend.as_uuid()]).await?;
    let ids: Vec<_> = allocations.iter().map(|a| a.batch_id).collect();
    // Lock the batches that may get points back.
    store::batches::by_ids_for_update(tx, &ids).await?;
    Ok(allocations
        .iter()
        .map(|allocation| BatchBalance {
            batch_id: allocation.batch_id,
            remaining: -allocation.points,
            earned_at: allocation.earned_at,
            expires_at: allocation.expires_at,
        })
        .collect())
}
