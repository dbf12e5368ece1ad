//! The award path: the one function that writes purchase points, for every source.
use super::{run_to_completion, Error, Ledger, Opened, Outcome, Unit, MAX_CLOCK_SKEW};
use crate::cap::{CapDay, Reservation, Reserve};
use crate::domain::{
    cap_zones, local_day, local_day_bounds, purchase_points, EntryId, IdempotencyKey, MemberId,
    ProgramId, PurchaseSource,
};
use crate::store::{entries, mutation};
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
        if command.occurred_at > self.clock.now() + MAX_CLOCK_SKEW {
            return Err(Error::invalid("occurred_at", "must not be in the future"));
        }
        let request = command.canonical();
        let mut client = self.db.get().await?;
        let purchase = mutation::PurchaseRef {
            source: command.source.as_str(),
            external_ref: &command.external_ref,
        };
        let unit = match self
            .open(
                &mut client,
                &command.program,
                command.member,
                &command.idempotency_key,
                &request,
                Some(purchase),
            )
            .await?
        {
            Opened::Replay(outcome) => return Ok(outcome),
            Opened::Fresh(unit) => unit,
        };
        let rules = &unit.rules.rules;
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
        let member = unit.member()?;
        if let Some(entry) = unit.purchase_entry {
            return Err(purchase_already_awarded(&command, entry));
        }
        let requested_points = if command.amount_minor < rules.document.min_amount_minor {
            0
        } else {
            purchase_points(
                command.amount_minor,
                rules.currency,
                rules.document.base_rate_bp,
                rules.tier(member.tier_rank).multiplier_bp,
            )
            .map_err(|_| Error::invalid("amount_minor", "the points it earns overflow"))?
        };
        let reservation = match rules.document.daily_cap_points {
            Some(cap_points) if requested_points > 0 => Some(
                self.reserve_cap(&unit, requested_points, cap_points)
                    .await?,
            ),
            _ => None,
        };
        let awarded_points = reservation
            .as_ref()
            .map_or(requested_points, |r| r.granted_points);
        match self
            .write_award(unit, &command, &request, requested_points, awarded_points)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err((error, committed_maybe)) => {
                // A failed commit may still have committed: the reservation is kept, so
                // the member can earn less that day but never more.
                if let (Some(reservation), false) = (&reservation, committed_maybe) {
                    self.cap.release(reservation).await;
                }
                Err(error)
            }
        }
    }

    /// Writes the award entry and its batch and commits. On failure, says whether the
    /// commit was sent (so the award may have been written).
    async fn write_award(
        &self,
        unit: Unit<'_>,
        command: &AwardCommand,
        request: &serde_json::Value,
        requested_points: i64,
        awarded_points: i64,
    ) -> Result<AwardOutcome, (Error, bool)> {
        let (now, rules) = (unit.now, &unit.rules);
        let entry_id = EntryId::generate();
        let outcome = AwardOutcome {
            entry_id: entry_id.to_string(),
            requested_points,
            awarded_points,
            capped: awarded_points < requested_points,
            replayed: false,
            balance_points: unit
                .balance_after_credit(awarded_points)
                .map_err(|error| (error, false))?,
            rules_version: rules.version,
        };
        let validity = Duration::days(i64::from(rules.rules.document.points_validity_days));
        let effects = mutation::Effects {
            entry: entries::NewEntry {
                entry_id,
                kind: "award",
                points: awarded_points,
                idempotency_key: &command.idempotency_key,
                request,
                outcome: &outcome.to_json(),
                rules_version: rules.version,
                created_at: now,
                purchase: Some(entries::Purchase {
                    source: command.source.as_str(),
                    external_ref: &command.external_ref,
                    amount_minor: command.amount_minor,
                    currency: &command.currency,
                    occurred_at: command.occurred_at,
                    requested_points,
                    cap_day: local_day(now, rules.rules.timezone),
                    capped: outcome.capped,
                }),
                reason: None,
                actor: None,
                reversal: None,
            },
            credit: (awarded_points > 0).then(|| mutation::NewBatch {
                batch_id: uuid::Uuid::now_v7(),
                amount: awarded_points,
                expires_at: now + validity,
            }),
            draws: &[],
            owed_delta: 0,
        };
        mutation::write(&unit.tx, &effects)
            .await
            .map_err(|error| (error.into(), false))?;
        unit.tx
            .commit()
            .await
            .map_err(|error| (error.into(), true))?;
        Ok(outcome)
    }

    /// Reserves cap on every zone's local day the award must fit under (usually one; more
    /// for two days after the program changed its time zone), rebuilding lost counters
    /// from the ledger first. Runs under the member lock, so a rebuilt total includes
    /// every committed award of the member.
    async fn reserve_cap(
        &self,
        unit: &Unit<'_>,
        want_points: i64,
        cap_points: i64,
    ) -> Result<Reservation, Error> {
        let (program, member, now) = (unit.tx.program(), unit.tx.member(), unit.now);
        let mut zones = cap_zones(&unit.rules.zone_history, now);
        if zones.is_empty() {
            zones.push(unit.rules.rules.timezone);
        }
        let days: Vec<CapDay> = zones
            .iter()
            .map(|zone| CapDay {
                zone: zone.name().to_owned(),
                day: local_day(now, *zone),
            })
            .collect();
        let mut seeds = vec![None; days.len()];
        for _attempt in 0..2 {
            let answer = self
                .cap
                .reserve(
                    program,
                    member,
                    &days,
                    unit.rules.version,
                    want_points,
                    cap_points,
                    &seeds,
                )
                .await?;
            let unknown = match answer {
                Reserve::Granted(reservation) => return Ok(reservation),
                Reserve::CountersUnknown(unknown) => unknown,
            };
            for index in unknown {
                let (zone, day) = (zones[index], days[index].day);
                let (start, end) = local_day_bounds(day, zone);
                let around = (day - chrono::Days::new(2), day + chrono::Days::new(2));
                let total = entries::purchase_points_between(&unit.tx, around, start, end).await?;
                seeds[index] = Some(i64::try_from(total).unwrap_or(i64::MAX));
            }
        }
        Err(Error::Unexpected(anyhow::anyhow!(
            "cap counter still unknown after seeding"
        )))
    }
}

fn purchase_already_awarded(command: &AwardCommand, entry: EntryId) -> Error {
    Error::AlreadyExists(format!(
        "purchase {}/{} was already awarded by entry {entry} under another idempotency key",
        command.source.as_str(),
        command.external_ref
    ))
}
