//! The award path: the one function that writes purchase points, for every source.
use super::{
    replay_or_conflict, replayed, run_to_completion, Error, ItemOpening, Ledger, Outcome,
    Unavailable, Unit, MAX_CLOCK_SKEW,
};
use crate::cap::{CapDay, Reservation, Reserve};
use crate::domain::{
    cap_zones, local_day, local_day_bounds, purchase_points, EntryId, EntryKind, EventType,
    IdempotencyKey, MemberId, ProgramId, PurchaseSource,
};
use crate::store::events::NewEvent;
use crate::store::{entries, mutation};
use crate::telemetry::metrics;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;

/// The most items one `AwardBatch` or `EnrollBatch` call may carry unless
/// FLASH_MAX_BATCH_ITEMS says otherwise.
pub const BATCH_MAX: usize = 500;
/// The most awards written in one transaction. Larger groups hold more members' locks
/// for longer; smaller ones pay more round trips per award.
const AWARD_GROUP_MAX: usize = 100;
/// How many groups of one batch run at once. Groups lock their members in the one
/// global order, so two groups sharing a member wait for each other, never deadlock.
const AWARD_GROUP_CONCURRENCY: usize = 2;

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

impl GroupPlan {
    /// Whether the item was answered already: a replay of an earlier call (its stored
    /// outcome) or of an earlier item of this group with the same key and request. The same
    /// key with another request is ALREADY_EXISTS naming what differs.
    fn answered_before(
        &mut self,
        index: usize,
        command: &AwardCommand,
        request: &serde_json::Value,
        item: &ItemOpening,
    ) -> Result<bool, Error> {
        let key = &command.idempotency_key;
        if let Some(prior) = &item.prior {
            let outcome: AwardOutcome = replayed(key, prior, request)?;
            self.outcomes.push((index, outcome));
            return Ok(true);
        }
        let Some(&(first, ref first_request, entry)) = self.keys.get(key.as_str()) else {
            return Ok(false);
        };
        let prior = entries::KeyedEntry {
            entry_id: entry,
            member_id: command.member,
            kind: EntryKind::Award,
            request: first_request.clone(),
            outcome: serde_json::Value::Null,
        };
        replay_or_conflict::<serde_json::Value>(key, &prior, request)?;
        self.replays.push((index, first));
        Ok(true)
    }
}

impl Ledger {
    /// Credits the points a purchase earns: validate → lock the member → claim the key →
    /// compute → reserve the daily cap → write the entry and its batch → commit.
    #[tracing::instrument(name = "award", skip_all, fields(program = %command.program, member = %command.member, key = command.idempotency_key.as_str()))]
    pub async fn award(&self, command: AwardCommand) -> Result<AwardOutcome, Error> {
        let ledger = self.clone();
        let mut results =
            run_to_completion(async move { Ok(ledger.award_counted(vec![command]).await) }).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Unexpected(anyhow::anyhow!("an award went missing"))))
    }

    /// Runs up to `batch_max` ([`BATCH_MAX`] by default) awards of one program; each
    /// succeeds or fails on its own, and the results keep the request order. The awards go through the same path
    /// as a single one, [`AWARD_GROUP_MAX`] to a transaction: a back-fill of a million
    /// orders is thousands of transactions, not a million.
    pub async fn award_batch(
        &self,
        commands: Vec<Result<AwardCommand, Error>>,
    ) -> Result<Vec<Result<AwardOutcome, Error>>, Error> {
        let max = self.batch_max;
        if commands.len() > max {
            return Err(Error::invalid(
                "awards",
                format!("at most {max} awards per batch, got {}", commands.len()),
            ));
        }
        let mut results: Vec<Option<Result<AwardOutcome, Error>>> = Vec::new();
        let mut valid: Vec<(usize, AwardCommand)> = Vec::new();
        for (index, command) in commands.into_iter().enumerate() {
            match command {
                Ok(command) => {
                    results.push(None);
                    valid.push((index, command));
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        let mut groups = Vec::new();
        while !valid.is_empty() {
            let rest = valid.split_off(valid.len().min(AWARD_GROUP_MAX));
            groups.push(std::mem::replace(&mut valid, rest));
        }
        let done: Vec<Result<Vec<IndexedResult>, Error>> = futures::stream::iter(groups)
            .map(|group| {
                let ledger = self.clone();
                run_to_completion(async move {
                    let (indexes, commands): (Vec<usize>, Vec<AwardCommand>) =
                        group.into_iter().unzip();
                    let outcomes = ledger.award_counted(commands).await;
                    Ok(indexes.into_iter().zip(outcomes).collect())
                })
            })
            .buffered(AWARD_GROUP_CONCURRENCY)
            .collect()
            .await;
        for group in done {
            for (index, result) in group? {
                results[index] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(Error::Unexpected(anyhow::anyhow!("an award went missing")))
                })
            })
            .collect())
    }

    /// [`Ledger::award_group`], counted once it is over: the points and cap hits of the
    /// awards that committed (a replay counts nothing), and the awards withheld because
    /// the cap's Redis could not answer.
    async fn award_counted(&self, commands: Vec<AwardCommand>) -> Vec<Result<AwardOutcome, Error>> {
        let Some(program) = commands.first().map(|command| command.program.clone()) else {
            return vec![];
        };
        let results = self.award_group(commands).await;
        for result in &results {
            match result {
                Ok(outcome) if !outcome.replayed => {
                    metrics::award_committed(&program, outcome.awarded_points, outcome.capped)
                }
                Err(Error::Unavailable(Unavailable::DailyCap)) => metrics::award_withheld(&program),
                _ => {}
            }
        }
        results
    }

    /// Awards a group of purchases of one program in one transaction under their members'
    /// locks; each gets its own result. When the group cannot commit, a group of several
    /// is run again one award at a time, so one award's trouble (a key raced by another
    /// member's call) never fails the others.
    async fn award_group(&self, commands: Vec<AwardCommand>) -> Vec<Result<AwardOutcome, Error>> {
        match self.try_award_group(&commands).await {
            Ok(results) => results,
            Err(error) if error.repeat().is_some() => commands
                .iter()
                .map(|_| Err(error.repeat().unwrap_or(Error::KeyRaced)))
                .collect(),
            Err(error) if commands.len() == 1 => vec![Err(error)],
            Err(_) => {
                let mut results = Vec::with_capacity(commands.len());
                for command in commands {
                    let mut alone = Box::pin(self.award_group(vec![command])).await;
                    results.push(alone.pop().unwrap_or_else(|| {
                        Err(Error::Unexpected(anyhow::anyhow!("an award went missing")))
                    }));
                }
                results
            }
        }
    }

    /// One transaction for a group of awards. A purchase that converts its member's
    /// referral credits the referrer too, so the referrer's lock is needed: found only once
    /// the member's row is read, it is taken by opening the group again with it, in the one
    /// global order (a referral converts once, so this happens once per referee).
    async fn try_award_group(
        &self,
        commands: &[AwardCommand],
    ) -> Result<Vec<Result<AwardOutcome, Error>>, Error> {
        let mut also_lock: Vec<MemberId> = vec![];
        loop {
            match self.run_award_group(commands, &also_lock).await? {
                GroupRun::Done(results) => return Ok(results),
                GroupRun::LockAlso(referrers) if also_lock.len() < AWARD_GROUP_MAX => {
                    also_lock.extend(referrers);
                }
                GroupRun::LockAlso(_) => {
                    return Err(Error::Unexpected(anyhow::anyhow!(
                        "the referrers to lock kept changing"
                    )))
                }
            }
        }
    }

    /// The group's transaction: open every item in one statement, plan each in request
    /// order (replays, refusals, points, cap), write them all in one statement.
    async fn run_award_group(
        &self,
        commands: &[AwardCommand],
        also_lock: &[MemberId],
    ) -> Result<GroupRun, Error> {
        let Some(program) = commands.first().map(|c| c.program.clone()) else {
            return Ok(GroupRun::Done(vec![]));
        };
        let latest = self.clock.now() + MAX_CLOCK_SKEW;
        let requests: Vec<serde_json::Value> = commands.iter().map(|c| c.canonical()).collect();
        let mut results: Vec<Option<Result<AwardOutcome, Error>>> = commands
            .iter()
            .map(|c| {
                (c.occurred_at > latest)
                    .then(|| Err(Error::invalid("occurred_at", "must not be in the future")))
            })
            .collect();
        let asked: Vec<usize> = (0..commands.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if asked.is_empty() {
            return Ok(GroupRun::Done(results.into_iter().flatten().collect()));
        }
        let mut asks: Vec<mutation::Ask<'_>> = asked
            .iter()
            .map(|&i| mutation::Ask {
                member: commands[i].member,
                key: Some(&commands[i].idempotency_key),
                purchase: Some(mutation::PurchaseRef {
                    source: commands[i].source.as_str(),
                    external_ref: &commands[i].external_ref,
                }),
            })
            .collect();
        asks.extend(also_lock.iter().map(|&member| mutation::Ask {
            member,
            key: None,
            purchase: None,
        }));
        let mut client = self.db.get().await?;
        let (mut unit, items) = self.open_many(&mut client, &program, &asks).await?;
        let referrers = referrers_to_lock(&unit, asked.iter().map(|&i| &commands[i]));
        if !referrers.is_empty() {
            unit.tx.rollback().await?;
            return Ok(GroupRun::LockAlso(referrers));
        }
        let mut plan = GroupPlan::default();
        for (&i, item) in asked.iter().zip(&items) {
            let result = self
                .plan_award(&mut unit, &mut plan, i, &commands[i], &requests[i], item)
                .await;
            results[i] = result.err().map(Err);
        }
        let written = self.write_group(unit, &mut plan, commands, &requests).await;
        match written {
            Ok(()) => {}
            Err((error, committed_maybe)) => {
                // A failed commit may still have committed: the reservations are kept, so
                // members can earn less that day but never more.
                if !committed_maybe {
                    for reservation in &plan.reservations {
                        self.cap.release(reservation).await;
                    }
                }
                return Err(error);
            }
        }
        for (i, outcome) in plan.outcomes {
            results[i] = Some(Ok(outcome));
        }
        for (i, first) in plan.replays {
            let result = match &results[first] {
                Some(Ok(outcome)) => Ok(AwardOutcome {
                    replayed: true,
                    ..outcome.clone()
                }),
                _ => Err(Error::Unexpected(anyhow::anyhow!(
                    "a replayed award went missing"
                ))),
            };
            results[i] = Some(result);
        }
        Ok(GroupRun::Done(
            results
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|| {
                        Err(Error::Unexpected(anyhow::anyhow!(
                            "an award was not planned"
                        )))
                    })
                })
                .collect(),
        ))
    }

    /// Decides one award of a group: a replay, a refusal, or points to credit (reserved
    /// against the daily cap and added to the member's running balance).
    async fn plan_award(
        &self,
        unit: &mut Unit<'_>,
        plan: &mut GroupPlan,
        index: usize,
        command: &AwardCommand,
        request: &serde_json::Value,
        item: &ItemOpening,
    ) -> Result<(), Error> {
        let key = &command.idempotency_key;
        if plan.answered_before(index, command, request, item)? {
            return Ok(());
        }
        let rules = &unit.rules.rules;
        check_currency(command, rules)?;
        let tier_rank = unit.member_row(command.member)?.tier_rank;
        let purchase = (
            command.source.as_str().to_owned(),
            command.external_ref.clone(),
        );
        if let Some(entry) = item
            .purchase_entry
            .or_else(|| plan.purchases.get(&purchase).copied())
        {
            return Err(purchase_already_awarded(command, entry));
        }
        // The crossing credit earns at the multiplier of the tier held before it.
        let requested_points = requested_points(command, rules, tier_rank)?;
        let reservation = match rules.document.daily_cap_points {
            Some(cap_points) if requested_points > 0 => {
                let pending = plan.granted.get(&command.member).copied().unwrap_or(0);
                Some(
                    self.reserve_cap(unit, command.member, pending, requested_points, cap_points)
                        .await?,
                )
            }
            _ => None,
        };
        let awarded_points = reservation
            .as_ref()
            .map_or(requested_points, |r| r.granted_points);
        let balance_points = match unit.credit_balance(command.member, awarded_points) {
            Ok(balance) => balance,
            Err(error) => {
                if let Some(reservation) = &reservation {
                    self.cap.release(reservation).await;
                }
                return Err(error);
            }
        };
        let entry_id = EntryId::generate();
        plan.upgrades
            .extend(unit.count_status(command.member, awarded_points, entry_id));
        if let Some((invite, referrer)) = referral_converted_by(unit, command) {
            plan.conversions
                .push((invite, referrer, command.member, entry_id));
        }
        *plan.granted.entry(command.member).or_default() += awarded_points;
        plan.reservations.extend(reservation);
        plan.keys
            .insert(key.as_str().to_owned(), (index, request.clone(), entry_id));
        plan.purchases.insert(purchase, entry_id);
        plan.outcomes.push((
            index,
            AwardOutcome {
                entry_id: entry_id.to_string(),
                requested_points,
                awarded_points,
                capped: awarded_points < requested_points,
                replayed: false,
                balance_points,
                rules_version: unit.rules.version,
            },
        ));
        plan.fresh.push((index, entry_id));
        Ok(())
    }

    /// Writes the group's new awards and their batches in one statement and commits. On
    /// failure, says whether the commit was sent (so the awards may have been written).
    async fn write_group(
        &self,
        mut unit: Unit<'_>,
        plan: &mut GroupPlan,
        commands: &[AwardCommand],
        requests: &[serde_json::Value],
    ) -> Result<(), (Error, bool)> {
        if plan.fresh.is_empty() {
            return Ok(());
        }
        let (now, rules) = (unit.now, &unit.rules);
        let validity = Duration::days(i64::from(rules.rules.document.points_validity_days));
        let cap_day = local_day(now, rules.rules.timezone);
        let outcomes: HashMap<usize, &AwardOutcome> =
            plan.outcomes.iter().map(|(i, o)| (*i, o)).collect();
        let awards: Vec<mutation::NewAward<'_>> = plan
            .fresh
            .iter()
            .filter_map(|&(i, entry_id)| {
                let (command, outcome) = (&commands[i], outcomes.get(&i)?);
                Some(mutation::NewAward {
                    entry_id,
                    member: command.member,
                    points: outcome.awarded_points,
                    idempotency_key: &command.idempotency_key,
                    request: &requests[i],
                    outcome: outcome.to_json(),
                    purchase: entries::Purchase {
                        source: command.source.as_str(),
                        external_ref: &command.external_ref,
                        amount_minor: command.amount_minor,
                        currency: &command.currency,
                        occurred_at: command.occurred_at,
                        requested_points: outcome.requested_points,
                        cap_day,
                        capped: outcome.capped,
                    },
                    credit: (outcome.awarded_points > 0).then(|| mutation::NewBatch {
                        batch_id: uuid::Uuid::now_v7(),
                        amount: outcome.awarded_points,
                        expires_at: now + validity,
                    }),
                })
            })
            .collect();
        let events: Vec<NewEvent> = awards
            .iter()
            .filter_map(|award| {
                let outcome = outcomes
                    .values()
                    .find(|o| o.entry_id == award.entry_id.to_string())?;
                Some(NewEvent::new(
                    EventType::PointsAwarded,
                    award.member,
                    json!({
                        "entry_id": outcome.entry_id,
                        "member_id": award.member.to_string(),
                        "source": award.purchase.source,
                        "external_ref": award.purchase.external_ref,
                        "amount_minor": award.purchase.amount_minor,
                        "requested_points": outcome.requested_points,
                        "points": outcome.awarded_points,
                        "capped": outcome.capped,
                        "balance_points": outcome.balance_points,
                        "rules_version": outcome.rules_version,
                    }),
                ))
            })
            .collect();
        mutation::write_awards(&unit.tx, rules.version, now, &awards, &events)
            .await
            .map_err(|error| (error.into(), false))?;
        let upgrades = std::mem::take(&mut plan.upgrades);
        self.write_upgrades(&mut unit, upgrades)
            .await
            .map_err(|error| (error, false))?;
        for (invite, referrer, referee, entry) in std::mem::take(&mut plan.conversions) {
            self.convert_in_unit(&mut unit, invite, referrer, referee, Some(entry))
                .await
                .map_err(|error| (error, false))?;
        }
        unit.tx
            .commit()
            .await
            .map_err(|error| (error.into(), true))?;
        Ok(())
    }

    /// Reserves cap on every zone's local day the award must fit under (usually one; more
    /// for two days after the program changed its time zone), rebuilding lost counters
    /// from the ledger first. Runs under the member lock, so a rebuilt total includes
    /// every committed award of the member; `pending_points` are the member's awards
    /// earlier in the same group, granted but not yet written, which a counter lost
    /// between two of them must count too.
    async fn reserve_cap(
        &self,
        unit: &Unit<'_>,
        member: MemberId,
        pending_points: i64,
        want_points: i64,
        cap_points: i64,
    ) -> Result<Reservation, Error> {
        let (program, now) = (unit.tx.program(), unit.now);
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
                let total = entries::purchase_points_between(&unit.tx, member, start, end).await?;
                let total = total.saturating_add(i128::from(pending_points));
                seeds[index] = Some(i64::try_from(total).unwrap_or(i64::MAX));
            }
        }
        Err(Error::Unexpected(anyhow::anyhow!(
            "cap counter still unknown after seeding"
        )))
    }
}

/// What one try of a group's transaction ended with.
enum GroupRun {
    Done(Vec<Result<AwardOutcome, Error>>),
    /// Rolled back: these referrers' locks are needed too.
    LockAlso(Vec<MemberId>),
}

/// An award's result with its index in the batch.
type IndexedResult = (usize, Result<AwardOutcome, Error>);

/// What a group's planning decided, item by item (indexes into the group's commands).
#[derive(Default)]
struct GroupPlan {
    /// Outcomes to answer: fresh awards and replays of earlier calls.
    outcomes: Vec<(usize, AwardOutcome)>,
    /// Fresh awards to write, with their entry ids.
    fresh: Vec<(usize, EntryId)>,
    /// Items repeating an earlier item's key and request: they answer its outcome.
    replays: Vec<(usize, usize)>,
    /// Keys of fresh awards in this group: (item, canonical request, entry).
    keys: HashMap<String, (usize, serde_json::Value, EntryId)>,
    /// Purchases credited by fresh awards in this group.
    purchases: HashMap<(String, String), EntryId>,
    /// Cap reservations of the fresh awards, released if the group does not commit.
    reservations: Vec<Reservation>,
    /// Points granted to each member by the group's fresh awards.
    granted: HashMap<MemberId, i64>,
    /// Tiers the fresh awards lifted, written after them.
    upgrades: Vec<super::tiers::Upgrade>,
    /// Referrals the fresh awards converted: (invite, referrer, referee, the award).
    conversions: Vec<(uuid::Uuid, MemberId, MemberId, EntryId)>,
}

/// Whether the referral is due to convert on this purchase: the member accepted an invite
/// that waits for its qualifying purchase, and the amount qualifies.
fn converts_referral(unit: &Unit<'_>, command: &AwardCommand) -> Option<(uuid::Uuid, MemberId)> {
    let row = unit.member_row(command.member).ok()?;
    let min = unit.rules.rules.document.referral_qualify_min_amount_minor;
    if !row.referral_open || command.amount_minor < min {
        return None;
    }
    row.referral
}

/// The referrers of referrals the group's purchases convert whose locks the unit does not
/// hold.
fn referrers_to_lock<'a>(
    unit: &Unit<'_>,
    commands: impl Iterator<Item = &'a AwardCommand>,
) -> Vec<MemberId> {
    let mut missing: Vec<MemberId> = commands
        .filter_map(|command| converts_referral(unit, command))
        .map(|(_, referrer)| referrer)
        .filter(|referrer| !unit.members.contains_key(referrer))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// The referral this fresh award converts, if any; the member's referral is no longer
/// open in the unit, so a later award of the group does not convert it again.
fn referral_converted_by(
    unit: &mut Unit<'_>,
    command: &AwardCommand,
) -> Option<(uuid::Uuid, MemberId)> {
    let (invite, referrer) = converts_referral(unit, command)?;
    if !unit.members.contains_key(&referrer) {
        return None;
    }
    let row = unit.members.get_mut(&command.member)?.row.as_mut()?;
    row.referral_open = false;
    Some((invite, referrer))
}

/// The program earns in one currency; an award in another is the caller's mistake.
fn check_currency(
    command: &AwardCommand,
    rules: &crate::domain::ProgramRules,
) -> Result<(), Error> {
    if command.currency == rules.currency.code() {
        return Ok(());
    }
    Err(Error::invalid(
        "currency",
        format!(
            "program {} earns in {}, got {}",
            command.program,
            rules.currency.code(),
            command.currency
        ),
    ))
}

/// The points a purchase earns before the daily cap: none below the minimum amount, else
/// amount × base rate × the member's tier multiplier, floored; overflow is refused.
fn requested_points(
    command: &AwardCommand,
    rules: &crate::domain::ProgramRules,
    tier_rank: usize,
) -> Result<i64, Error> {
    if command.amount_minor < rules.document.min_amount_minor {
        return Ok(0);
    }
    purchase_points(
        command.amount_minor,
        rules.currency,
        rules.document.base_rate_bp,
        rules.tier(tier_rank).multiplier_bp,
    )
    .map_err(|_| Error::invalid("amount_minor", "the points it earns overflow"))
}

fn purchase_already_awarded(command: &AwardCommand, entry: EntryId) -> Error {
    Error::PurchaseAlreadyAwarded {
        purchase_source: command.source.as_str().to_owned(),
        external_ref: command.external_ref.clone(),
        entry,
    }
}
