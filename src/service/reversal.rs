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
use crate::telemetry::metrics;
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
    /// recorded as unrecovered, so the balance never goes negative. A full refund of a
    /// purchase that converted a referral, within the program's clawback days, takes both
    /// referral credits back in the same transaction (both members locked).
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
            // The referral this purchase converted, whose referrer a clawback touches: read
            // before locking, and again under the locks (a conversion may have committed
            // between); then the referrer's lock is taken by opening again with it.
            let mut others = vec![];
            let mut client = ledger.db.get().await?;
            let (mut unit, referral) = loop {
                let unit = match ledger
                    .open_locking(
                        &mut client,
                        &command.program,
                        award.member_id,
                        &command.idempotency_key,
                        &request,
                        &others,
                    )
                    .await?
                {
                    Opened::Replay(outcome) => return Ok(outcome),
                    Opened::Fresh(unit) => unit,
                };
                let referral = store::referrals::by_qualifying_entry(
                    unit.tx.cached(),
                    &command.program,
                    award.entry_id,
                )
                .await?;
                match referral {
                    Some(invite) if !unit.members.contains_key(&invite.referrer) => {
                        unit.tx.rollback().await?;
                        others.push(invite.referrer);
                        if others.len() > 1 {
                            return Err(Error::Unexpected(anyhow::anyhow!(
                                "the referrer of a refunded purchase changed"
                            )));
                        }
                    }
                    referral => break (unit, referral),
                }
            };
            let reversal = CreditReversal {
                credit: &award,
                points: command.points,
                key: &command.idempotency_key,
                request: &request,
                reason: command.reason.as_deref(),
            };
            let outcome = write_credit_reversal(&mut unit, &reversal).await?;
            if let Some(invite) = referral {
                if outcome.remaining_reversible_points == 0 {
                    ledger
                        .claw_back(&mut unit, invite.invite_id, &award)
                        .await?;
                }
            }
            unit.tx.commit().await?;
            metrics::reversal_committed(&command.program, "award", outcome.reversed_points);
            Ok(outcome)
        })
        .await
    }

    /// Takes both credits of the referral `award` converted back (through the same
    /// reversal as a refund, under keys derived from the invite) and marks the invite
    /// clawed back, when the refund came within the program's clawback days of the
    /// purchase and the invite is still converted.
    async fn claw_back(
        &self,
        unit: &mut Unit<'_>,
        invite: uuid::Uuid,
        award: &StoredEntry,
    ) -> Result<(), Error> {
        let days = unit.rules.rules.document.referral_clawback_days;
        if days == 0 || unit.now > award.created_at + chrono::Duration::days(i64::from(days)) {
            return Ok(());
        }
        let program = unit.tx.program().clone();
        let Some(invite) = store::referrals::by_id(unit.tx.cached(), &program, invite).await?
        else {
            return Ok(());
        };
        if invite.status != crate::domain::InviteStatus::Converted {
            return Ok(());
        }
        let mut clawed = vec![];
        for (side, credit) in [
            ("referrer", invite.referrer_entry_id),
            ("referee", invite.referee_entry_id),
        ] {
            let Some(credit) = credit else { continue };
            let Some(credit) =
                entries::get(&*unit.tx, &program, EntryId::from_uuid(credit)).await?
            else {
                continue;
            };
            let key = IdempotencyKey::derived(&format!("clawback:{}:{side}", invite.invite_id));
            let request = json!({
                "op": "referral_clawback",
                "invite_id": invite.invite_id.to_string(),
                "side": side,
            });
            let reversal = CreditReversal {
                credit: &credit,
                points: None,
                key: &key,
                request: &request,
                reason: Some(REFERRAL_CLAWBACK),
            };
            let outcome = write_credit_reversal(unit, &reversal).await?;
            clawed.push(json!({
                "side": side,
                "entry_id": outcome.entry_id,
                "reversed_points": outcome.reversed_points,
                "unrecovered_points": outcome.unrecovered_points,
            }));
        }
        let event = NewEvent::new(
            EventType::ReferralClawedBack,
            invite.referrer,
            json!({
                "invite_id": invite.invite_id.to_string(),
                "referrer_member_id": invite.referrer.to_string(),
                "referee_member_id": invite.referee.map(|m| m.to_string()),
                "qualifying_entry_id": award.entry_id.to_string(),
                "reversals": clawed,
            }),
        );
        store::referrals::claw_back(&unit.tx, invite.invite_id, unit.now, &[event]).await?;
        Ok(())
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
            metrics::reversal_committed(&command.program, "spend", outcome.reversed_points);
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

/// Why a clawback's reversals were written; also what GetReferralStats nets out.
pub(super) const REFERRAL_CLAWBACK: &str = "referral clawback";

/// A reversal of a credit (a purchase award, or a referral credit clawed back).
struct CreditReversal<'a> {
    credit: &'a StoredEntry,
    /// None: all that is left to reverse.
    points: Option<i64>,
    key: &'a IdempotencyKey,
    request: &'a serde_json::Value,
    reason: Option<&'a str>,
}

/// Writes the reversal of a credit in the unit (which holds its member's lock): points
/// come back from the credit's own batch, then the member's other batches oldest first;
/// what was spent already is unrecovered and owed. Status loses the reversed points at the
/// credit's own instant, so the two leave the rolling window together.
async fn write_credit_reversal(
    unit: &mut Unit<'_>,
    reversal: &CreditReversal<'_>,
) -> Result<ReverseAwardOutcome, Error> {
    let (tx, now, credit) = (&unit.tx, unit.now, reversal.credit);
    let already = entries::reversed_so_far(tx, credit.entry_id).await?;
    let reversible = credit.points - already;
    let points = points_to_reverse(reversal.points, reversible, "award")?;
    let own_batch = store::batches::credited_by(tx, credit.entry_id).await?;
    // The batches a FIFO draw of the points would take, and the credit's own batch, drawn
    // first whatever its age: every batch the reversal can take from.
    let mut batches = store::batches::fifo_for_update(tx, credit.member_id, points, now).await?;
    if let Some(own) = &own_batch {
        if !batches.iter().any(|batch| batch.batch_id == own.batch_id) {
            batches.push(own.clone());
        }
    }
    let draws = draw_for_reversal(
        &batches,
        own_batch.as_ref().map(|batch| batch.batch_id),
        points,
        now,
    );
    let recovered: i64 = draws.iter().map(|draw| -draw.points).sum();
    let unrecovered = points - recovered;
    let entry_id = EntryId::generate();
    let balance = unit
        .members
        .get(&credit.member_id)
        .map_or(0, |state| state.balance);
    let outcome = ReverseAwardOutcome {
        entry_id: entry_id.to_string(),
        award_entry_id: credit.entry_id.to_string(),
        member_id: credit.member_id.to_string(),
        reversed_points: points,
        recovered_points: recovered,
        unrecovered_points: unrecovered,
        allocations: allocation_views(entry_id, &draws, &batches),
        remaining_reversible_points: reversible - points,
        balance_points: balance - recovered,
        replayed: false,
    };
    let effects = mutation::Effects {
        member: credit.member_id,
        entry: entries::NewEntry {
            entry_id,
            kind: EntryKind::AwardReversal,
            points: -recovered,
            idempotency_key: reversal.key,
            request: reversal.request,
            outcome: &outcome.to_json(),
            rules_version: unit.rules.version,
            created_at: now,
            purchase: None,
            reason: reversal.reason,
            actor: None,
            reversal: Some(entries::Reversal {
                entry_id: credit.entry_id,
                reversed_points: points,
                unrecovered_points: Some(unrecovered),
                repaid_points: None,
            }),
        },
        credit: None,
        draws: &draws,
        // Points already spent are owed, and repaid by a later cancellation of the spend
        // that took them (see `reverse_spend`).
        owed_delta: unrecovered,
        status: credit.status_points.map(|_| (-points, credit.created_at)),
        events: &[NewEvent::new(
            EventType::PointsAwardReversed,
            credit.member_id,
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
    mutation::write(tx, &effects).await?;
    if let Some(state) = unit.members.get_mut(&credit.member_id) {
        state.balance = outcome.balance_points;
    }
    Ok(outcome)
}
