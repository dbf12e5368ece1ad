//! The expiry sweep: writes off the points of batches past their expiry, member by member
//! under each member's lock. Balances never count expired batches even before it runs;
//! the sweep makes the books say so.
use super::{run_to_completion, Error, Ledger};
use crate::domain::{Draw, EntryId, EntryKind, EventType, IdempotencyKey, MemberId, ProgramId};
use crate::store::events::NewEvent;
use crate::store::{self, entries, mutation, MemberTx};
use chrono::{DateTime, Utc};
use serde_json::json;

/// Members read per chunk of the sweep.
const EXPIRY_CHUNK_MEMBERS: i64 = 100;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryOutcome {
    pub members_expired: u64,
    pub points_expired: i64,
    /// Members whose expiry failed (logged); the sweep went on with the others.
    pub members_failed: u64,
}

impl Ledger {
    /// Expires every batch due by `as_of`, in bounded chunks. Safe to run twice or on two
    /// machines at once: a member's due batches are re-read under its lock, so a batch is
    /// written off once. `as_of` may not be in the future: an expiry entry is dated now and
    /// may only draw batches expired by its own time (a future `as_of` wrote off live points).
    #[tracing::instrument(name = "expire_due", skip(self))]
    pub async fn expire_due(&self, as_of: DateTime<Utc>) -> Result<ExpiryOutcome, Error> {
        refuse_future(as_of, self.clock.now())?;
        let mut outcome = ExpiryOutcome::default();
        let mut after = None;
        loop {
            let chunk = {
                let client = self.db.get().await?;
                store::batches::members_with_due(
                    &**client,
                    as_of,
                    after.clone(),
                    EXPIRY_CHUNK_MEMBERS,
                )
                .await?
            };
            let Some(last) = chunk.last().cloned() else {
                return Ok(outcome);
            };
            for (program, member) in chunk {
                let result = match ProgramId::parse(&program) {
                    Ok(program) => {
                        self.expire_member(program, MemberId::from_uuid(member), as_of)
                            .await
                    }
                    Err(error) => Err(Error::from(error)),
                };
                match result {
                    Ok(0) => {}
                    Ok(points) => {
                        outcome.members_expired += 1;
                        outcome.points_expired += points;
                    }
                    Err(error) => {
                        outcome.members_failed += 1;
                        tracing::error!(%program, %member, %error, "expiring a member failed");
                    }
                }
            }
            after = Some(last);
        }
    }

    /// Writes off one member's due batches in one entry; returns the points expired.
    pub(super) async fn expire_member(
        &self,
        program: ProgramId,
        member: MemberId,
        as_of: DateTime<Utc>,
    ) -> Result<i64, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let mut client = ledger.db.get().await?;
            let tx = MemberTx::begin(&mut client, &program, member).await?;
            // Read under the lock, and checked again per entry: the invariant is that this
            // entry, dated `now`, draws only batches with `expires_at <= now`.
            let now = ledger.clock.now();
            refuse_future(as_of, now)?;
            let due = store::batches::due_for_update(&tx, as_of).await?;
            if due.is_empty() {
                return Ok(0);
            }
            let stored_program = store::programs::get(&*tx, &program)
                .await?
                .ok_or_else(|| super::members::program_not_found(&program))?;
            let draws: Vec<Draw> = due
                .iter()
                .map(|batch| Draw {
                    batch_id: batch.batch_id,
                    points: -batch.remaining,
                })
                .collect();
            let points: i64 = due.iter().map(|batch| batch.remaining).sum();
            let entry_id = EntryId::generate();
            let key = IdempotencyKey::engine(format!("expiry/{entry_id}"));
            let as_of_text = as_of.to_rfc3339();
            let record = json!({ "op": "expiry", "as_of": as_of_text, "points": points });
            let effects = mutation::Effects {
                member,
                entry: entries::NewEntry {
                    entry_id,
                    kind: EntryKind::Expiry,
                    points: -points,
                    idempotency_key: &key,
                    request: &record,
                    outcome: &record,
                    rules_version: stored_program.rules_version,
                    created_at: now,
                    purchase: None,
                    reason: Some("points expired"),
                    actor: None,
                    reversal: None,
                },
                credit: None,
                draws: &draws,
                owed_delta: 0,
                status: None,
                events: &[NewEvent::new(
                    EventType::PointsExpired,
                    member,
                    json!({
                        "entry_id": entry_id.to_string(),
                        "member_id": member.to_string(),
                        "points": points,
                        "batch_ids": due.iter().map(|batch| batch.batch_id.to_string()).collect::<Vec<_>>(),
                    }),
                )],
            };
            mutation::write(&tx, &effects).await?;
            tx.commit().await?;
            crate::telemetry::metrics::expiry_committed(&program, points);
            Ok(points)
        })
        .await
    }
}

/// INVALID_ARGUMENT when `as_of` is later than `now`.
fn refuse_future(as_of: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Error> {
    if as_of > now {
        return Err(Error::invalid(
            "as_of",
            format!("must not be in the future (it is {as_of}, now is {now})"),
        ));
    }
    Ok(())
}
