//! The award path: the one function that writes purchase points, for every source.
use super::{
    prior_outcome, program_rules, require_member, run_to_completion, Error, Ledger, Outcome,
    MAX_CLOCK_SKEW,
};
use crate::cap::{Reservation, Reserve};
use crate::domain::{
    local_day, purchase_points, EntryId, IdempotencyKey, MemberId, ProgramId, PurchaseSource,
};
use crate::store::{self, entries, MemberTx};
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The most awards one `AwardBatch` call may carry.
pub const AWARD_BATCH_MAX: usize = 500;
/// How many awards of one batch run at once; more would only queue on the pool.
const AWARD_BATCH_CONCURRENCY: usize = 8;

/// A purchase to credit, parsed at the edge.
#[derive(Debug, Clone)]
pub struct AwardCommand {
    pub program: ProgramId,
    pub member: MemberId,
    pub idempotency_key: IdempotencyKey,
    pub source: PurchaseSource,
    pub external_ref: String,
    /// Positive, in minor units of `currency`.
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

impl AwardCommand {
    /// The request as stored for replay comparison: every field the outcome depends on.
    fn canonical(&self) -> serde_json::Value {
        json!({
            "op": "award",
            "member_id": self.member.to_string(),
            "source": self.source.as_str(),
            "external_ref": self.external_ref,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "occurred_at": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        })
    }
}

/// The outcome of an award; stored with the entry and returned as-is on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwardOutcome {
    pub entry_id: String,
    pub requested_points: i64,
    pub awarded_points: i64,
    pub capped: bool,
    #[serde(skip)]
    pub replayed: bool,
    pub balance_points: i64,
    pub rules_version: i64,
}

impl Outcome for AwardOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

impl Ledger {
    /// Credits the points a purchase earns: validate → lock the member → claim the key →
    /// compute → reserve the daily cap → write the entry and its batch → commit.
    #[tracing::instrument(name = "award", skip_all, fields(program = %command.program, member = %command.member, key = command.idempotency_key.as_str()))]
    pub async fn award(&self, command: AwardCommand) -> Result<AwardOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move { ledger.award_unit(command).await }).await
    }

    /// Runs up to [`AWARD_BATCH_MAX`] awards; each succeeds or fails on its own, and the
    /// results keep the request order.
    pub async fn award_batch(
        &self,
        commands: Vec<Result<AwardCommand, Error>>,
    ) -> Result<Vec<Result<AwardOutcome, Error>>, Error> {
        if commands.len() > AWARD_BATCH_MAX {
            return Err(Error::invalid(
                "awards",
                format!(
                    "at most {AWARD_BATCH_MAX} awards per batch, got {}",
                    commands.len()
                ),
            ));
        }
        let results = futures::stream::iter(commands)
            .map(|command| async move {
                match command {
                    Ok(command) => self.award(command).await,
                    Err(error) => Err(error),
                }
            })
            .buffered(AWARD_BATCH_CONCURRENCY)
            .collect()
            .await;
        Ok(results)
    }

    async fn award_unit(&self, command: AwardCommand) -> Result<AwardOutcome, Error> {
        let now = self.clock.now();
        if command.occurred_at > now + MAX_CLOCK_SKEW {
            return Err(Error::invalid("occurred_at", "must not be in the future"));
        }
        let request = command.canonical();
        let mut client = self.db.get().await?;
        let tx = MemberTx::begin(&mut client, &command.program, command.member).await?;

        let (program, rules) = program_rules(&*tx, &command.program).await?;
        if let Some(outcome) =
            prior_outcome::<AwardOutcome>(&tx, &command.idempotency_key, &request).await?
        {
            return Ok(outcome);
        }
        if command.currency != rules.currency.code() {
            return Err(Error::invalid(
                "currency",
                format!(
                    "program {} earns in {}, got {}",
                    command.program,
                    rules.currency.code(),
                    command.currency
                ),
            ));
        }
        let member = require_member(&tx).await?;
        if let Some(entry) = entries::find_purchase_award(
            &*tx,
            &command.program,
            command.source.as_str(),
            &command.external_ref,
        )
        .await?
        {
            return Err(purchase_already_awarded(&command, entry));
        }

        let requested_points = if command.amount_minor < rules.document.min_amount_minor {
            0
        } else {
            let tier = rules.tier(member.tier_rank);
            purchase_points(
                command.amount_minor,
                rules.currency,
                rules.document.base_rate_bp,
                tier.multiplier_bp,
            )
            .map_err(|_| Error::invalid("amount_minor", "the points it earns overflow"))?
        };
        let cap_day = local_day(now, rules.timezone);
        let reservation = match rules.document.daily_cap_points {
            Some(cap_points) if requested_points > 0 => Some(
                self.reserve_cap(
                    &tx,
                    cap_day,
                    program.rules_version,
                    requested_points,
                    cap_points,
                )
                .await?,
            ),
            _ => None,
        };
        let awarded_points = reservation
            .as_ref()
            .map_or(requested_points, |r| r.granted_points);

        let written = async {
            let entry_id = EntryId::generate();
            let balance_before = store::batches::balance(&tx, now).await?;
            let outcome = AwardOutcome {
                entry_id: entry_id.to_string(),
                requested_points,
                awarded_points,
                capped: awarded_points < requested_points,
                replayed: false,
                balance_points: balance_before.checked_add(awarded_points).ok_or_else(|| {
                    Error::FailedPrecondition("the balance would overflow".into())
                })?,
                rules_version: program.rules_version,
            };
            let stored_outcome = outcome.to_json();
            entries::insert(
                &tx,
                &entries::NewEntry {
                    entry_id,
                    kind: "award",
                    points: awarded_points,
                    idempotency_key: &command.idempotency_key,
                    request: &request,
                    outcome: &stored_outcome,
                    rules_version: program.rules_version,
                    created_at: now,
                    purchase: Some(entries::Purchase {
                        source: command.source.as_str(),
                        external_ref: &command.external_ref,
                        amount_minor: command.amount_minor,
                        currency: &command.currency,
                        occurred_at: command.occurred_at,
                        requested_points,
                        cap_day,
                        capped: outcome.capped,
                    }),
                    reason: None,
                    actor: None,
                    reversal: None,
                },
            )
            .await?;
            if awarded_points > 0 {
                let expires_at =
                    now + Duration::days(i64::from(rules.document.points_validity_days));
                store::batches::insert(&tx, entry_id, awarded_points, now, expires_at).await?;
            }
            Ok::<_, Error>(outcome)
        }
        .await;

        match written {
            Ok(outcome) => {
                // A failed commit may still have committed: the reservation is kept, so
                // the member can earn less that day but never more.
                tx.commit().await?;
                Ok(outcome)
            }
            Err(error) => {
                let _ = tx.rollback().await;
                drop(client);
                if let Some(reservation) = &reservation {
                    self.cap.release(reservation).await;
                }
                Err(error)
            }
        }
    }

    /// Reserves cap for today, rebuilding a lost counter from the ledger first. Runs under
    /// the member lock, so the rebuilt total includes every committed award of the member.
    async fn reserve_cap(
        &self,
        tx: &MemberTx<'_>,
        day: chrono::NaiveDate,
        rules_version: i64,
        want_points: i64,
        cap_points: i64,
    ) -> Result<Reservation, Error> {
        let (program, member) = (tx.program(), tx.member());
        let first = self
            .cap
            .reserve(
                program,
                member,
                day,
                rules_version,
                want_points,
                cap_points,
                None,
            )
            .await?;
        let answer = match first {
            Reserve::Granted(reservation) => return Ok(reservation),
            Reserve::CounterUnknown => {
                let total = entries::purchase_points_on_day(tx, day).await?;
                self.cap
                    .reserve(
                        program,
                        member,
                        day,
                        rules_version,
                        want_points,
                        cap_points,
                        Some(total),
                    )
                    .await?
            }
        };
        match answer {
            Reserve::Granted(reservation) => Ok(reservation),
            Reserve::CounterUnknown => Err(Error::Unexpected(anyhow::anyhow!(
                "cap counter still unknown after seeding"
            ))),
        }
    }
}

fn purchase_already_awarded(command: &AwardCommand, entry: EntryId) -> Error {
    Error::AlreadyExists(format!(
        "purchase {}/{} was already awarded by entry {entry} under another idempotency key",
        command.source.as_str(),
        command.external_ref
    ))
}
