//! Manual adjustments: credits become a new batch, debits draw like a spend; both keep
//! their reason and actor for the audit.
use super::spend::{allocation_views, plan_fifo_draw};
use super::{
    prior_outcome, program_rules, require_member, run_to_completion, Error, Ledger, Outcome,
};
use crate::domain::{spendable_points, EntryId, IdempotencyKey, MemberId, ProgramId};
use crate::store::{self, batches::AllocationView, entries, MemberTx};
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
            let now = ledger.clock.now();
            let request = json!({
                "op": "adjust",
                "member_id": command.member.to_string(),
                "points": command.points,
                "reason": command.reason,
                "actor": command.actor,
            });
            let mut client = ledger.db.get().await?;
            let tx = MemberTx::begin(&mut client, &command.program, command.member).await?;
            let (program, rules) = program_rules(&*tx, &command.program).await?;
            if let Some(outcome) = prior_outcome(&tx, &command.idempotency_key, &request).await? {
                return Ok(outcome);
            }
            require_member(&tx).await?;
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
            if command.points < 0 {
                let (planned, batches) = plan_fifo_draw(&tx, -command.points, now).await?;
                outcome.allocations = allocation_views(entry_id, &planned, &batches);
                outcome.balance_points = spendable_points(&batches, now) + command.points;
                draws = planned;
            }
            let mut credited_batch = None;
            if command.points > 0 {
                // The batch id is part of the stored outcome, so it is chosen first.
                let balance = store::batches::balance(&tx, now).await?;
                let batch_id = Uuid::now_v7();
                credited_batch = Some(batch_id);
                outcome.batch_id = Some(batch_id);
                outcome.balance_points = balance.checked_add(command.points).ok_or_else(|| {
                    Error::FailedPrecondition("the balance would overflow".into())
                })?;
            }
            entries::insert(
                &tx,
                &entries::NewEntry {
                    entry_id,
                    kind: "adjustment",
                    points: command.points,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &outcome.to_json(),
                    rules_version: program.rules_version,
                    created_at: now,
                    purchase: None,
                    reason: Some(&command.reason),
                    actor: Some(&command.actor),
                    reversal: None,
                },
            )
            .await?;
            match credited_batch {
                Some(batch_id) => {
                    let validity = Duration::days(i64::from(rules.document.points_validity_days));
                    store::batches::insert_with_id(
                        &tx,
                        batch_id,
                        entry_id,
                        command.points,
                        now,
                        now + validity,
                    )
                    .await?;
                }
                None => store::batches::apply(&tx, entry_id, &draws).await?,
            }
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}
