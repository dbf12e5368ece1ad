//! The worker fleet's jobs: expiry, expiring-soon notices, the tier grace batch, birthday
//! and re-engagement bonuses, event pruning, invite expiry and the referral graph snapshot.
//! Safe with several replicas: a run of
//! (job, slot) is claimed with a lease that is renewed at every checkpoint; a replica that
//! dies leaves its lease to run out and another takes the run over from its checkpoint.
//! Each member is its own unit of work under its lock; a member that fails is recorded,
//! retried with backoff on later runs and parked after [`MAX_ATTEMPTS`], never failing the
//! batch. Every bonus has a key derived from its cause, so even a double run pays nothing
//! twice.
use super::bonus::{BonusCause, BonusCredit};
use super::{run_to_completion, Error, Ledger};
use crate::domain::{EntryId, EventType, MemberId, ProgramId};
use crate::store::{self, events::NewEvent, MemberTx};
use chrono::{DateTime, Datelike, Duration, DurationRound, NaiveDate, Utc};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

/// Members read per chunk; a checkpoint (and lease renewal) follows each chunk.
const CHUNK: i64 = 100;
/// Tries before a failing member is parked.
pub const MAX_ATTEMPTS: i32 = 5;
/// The first retry's wait; each further one doubles it.
const BACKOFF_BASE: Duration = Duration::minutes(5);
/// Events deleted per pruning statement.
const PRUNE_BATCH: i64 = 5_000;
/// Invites expired per statement.
const INVITE_EXPIRY_BATCH: i64 = 1_000;

/// A job of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Expiry,
    ExpiringSoon,
    TierGrace,
    Birthday,
    Reengagement,
    EventPrune,
    InviteExpiry,
    GraphSnapshot,
}

impl Job {
    pub const ALL: [Job; 8] = [
        Job::Expiry,
        Job::ExpiringSoon,
        Job::TierGrace,
        Job::Birthday,
        Job::Reengagement,
        Job::EventPrune,
        Job::InviteExpiry,
        Job::GraphSnapshot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Expiry => "expiry",
            Job::ExpiringSoon => "expiring-soon",
            Job::TierGrace => "tier-grace",
            Job::Birthday => "birthday",
            Job::Reengagement => "reengagement",
            Job::EventPrune => "event-prune",
            Job::InviteExpiry => "invite-expiry",
            Job::GraphSnapshot => "graph-snapshot",
        }
    }

    pub fn parse(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|job| job.name() == name)
    }

    /// How often the job runs: its slots are instants truncated to this. Birthdays run
    /// hourly so each zone's local day is reached soon after it starts.
    pub fn period(self) -> Duration {
        match self {
            Job::Expiry
            | Job::ExpiringSoon
            | Job::TierGrace
            | Job::Birthday
            | Job::InviteExpiry
            | Job::GraphSnapshot => Duration::hours(1),
            Job::Reengagement | Job::EventPrune => Duration::days(1),
        }
    }

    /// The slot of the run covering `at`, with the job's own period or `period`.
    pub fn slot(self, at: DateTime<Utc>, period: Option<Duration>) -> DateTime<Utc> {
        at.duration_trunc(period.unwrap_or(self.period()))
            .unwrap_or(at)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunCounts {
    /// Members (or programs, for event-prune and invite-expiry) looked at.
    pub examined: u64,
    /// Of those, the ones the job changed something for (a bonus paid, a tier step, …).
    pub changed: u64,
    /// Points moved (expired or paid) or events written or deleted.
    pub amount: i64,
    /// Members that failed this run (recorded for retry).
    pub failed: u64,
    /// Members skipped: waiting for their retry, or parked.
    pub skipped: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Done {
        counts: RunCounts,
        takeovers: i32,
    },
    /// Another replica holds a live lease on the run, or it finished already.
    NotClaimed,
    /// The lease ran out mid-run and another replica took the run over.
    LeaseLost,
}

/// A replica of the fleet: its identity, lease length and slot period.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub lease: Duration,
    /// Every job's slot period instead of its own (drills and chaos runs only).
    pub period: Option<Duration>,
}

impl Replica {
    /// An identity unique to this process: host, pid and a random suffix.
    pub fn new(lease: Duration, period: Option<Duration>) -> Replica {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        let suffix = Uuid::new_v4().simple().to_string();
        Replica {
            id: format!("{host}-{}-{}", std::process::id(), &suffix[..8]),
            lease,
            period,
        }
    }
}

/// What one item of a job did: how much it changed.
type ItemResult = Result<Option<i64>, Error>;

impl Ledger {
    /// Runs `job`'s slot covering `at`, if no other replica holds it. `at` may not be in the
    /// future of the clock (the jobs date their entries now).
    pub async fn run_job(
        &self,
        job: Job,
        at: DateTime<Utc>,
        replica: &Replica,
    ) -> Result<RunOutcome, Error> {
        let now = self.clock.now();
        if at > now {
            return Err(Error::invalid(
                "at",
                format!("must not be in the future (it is {at}, now is {now})"),
            ));
        }
        self.run_slot(job, job.slot(at, replica.period), at, replica)
            .await
    }

    /// Takes over the runs other replicas left unfinished with their leases run out.
    pub async fn take_over_abandoned(
        &self,
        replica: &Replica,
    ) -> Result<Vec<(Job, RunOutcome)>, Error> {
        let abandoned = {
            let client = self.db.get().await?;
            store::jobs::abandoned(&**client, self.clock.now()).await?
        };
        let mut outcomes = Vec::new();
        for (name, slot) in abandoned {
            let Some(job) = Job::parse(&name) else {
                continue;
            };
            // An abandoned run continues as of its own slot (the end of it, for hourly
            // and daily slots alike, clamped to now).
            let period = replica.period.unwrap_or(job.period());
            let at = (slot + period - Duration::seconds(1)).min(self.clock.now());
            outcomes.push((job, self.run_slot(job, slot, at, replica).await?));
        }
        Ok(outcomes)
    }

    /// Runs a slot (see [`Ledger::run_claimed_slot`]), counted and timed by how it ended.
    async fn run_slot(
        &self,
        job: Job,
        slot: DateTime<Utc>,
        at: DateTime<Utc>,
        replica: &Replica,
    ) -> Result<RunOutcome, Error> {
        let started = std::time::Instant::now();
        let ran = self.run_claimed_slot(job, slot, at, replica).await;
        let outcome = match &ran {
            Ok(RunOutcome::Done { .. }) => "done",
            Ok(RunOutcome::NotClaimed) => "not_claimed",
            Ok(RunOutcome::LeaseLost) => "lease_lost",
            Err(_) => "failed",
        };
        crate::telemetry::metrics::job_run(job.name(), outcome, started.elapsed());
        ran
    }

    /// Claims the slot's run and runs it, chunk by chunk from its checkpoint.
    async fn run_claimed_slot(
        &self,
        job: Job,
        slot: DateTime<Utc>,
        at: DateTime<Utc>,
        replica: &Replica,
    ) -> Result<RunOutcome, Error> {
        let claim = {
            let client = self.db.get().await?;
            let now = self.clock.now();
            store::jobs::claim(
                &**client,
                job.name(),
                slot,
                &replica.id,
                now,
                now + replica.lease,
            )
            .await?
        };
        let Some(claim) = claim else {
            return Ok(RunOutcome::NotClaimed);
        };
        tracing::info!(job = job.name(), %slot, takeovers = claim.takeovers, checkpoint = ?claim.checkpoint, "job run claimed");
        let mut counts = RunCounts::default();
        let mut after = claim.checkpoint.clone();
        loop {
            let chunk = self.candidates(job, at, after.clone()).await?;
            let Some(last) = chunk.last().cloned() else {
                break;
            };
            self.process_chunk(job, at, &chunk, &mut counts).await?;
            after = Some(last);
            if !self
                .checkpoint(&claim, replica, after.as_ref(), &counts)
                .await?
            {
                tracing::warn!(job = job.name(), %slot, "lease lost: another replica took the run over");
                return Ok(RunOutcome::LeaseLost);
            }
            tracing::info!(job = job.name(), %slot, examined = counts.examined, changed = counts.changed, failed = counts.failed, "job progress");
        }
        // Members that failed in earlier runs and are due for another try.
        let due = {
            let client = self.db.get().await?;
            store::jobs::due_failures(&**client, job.name(), self.clock.now(), CHUNK).await?
        };
        if !due.is_empty() {
            self.process_chunk(job, at, &due, &mut counts).await?;
        }
        let finished = {
            let client = self.db.get().await?;
            let counts = json!(counts);
            store::jobs::finish(
                &**client,
                claim.run_id,
                &replica.id,
                self.clock.now(),
                &counts,
            )
            .await?
        };
        if !finished {
            return Ok(RunOutcome::LeaseLost);
        }
        tracing::info!(job = job.name(), %slot, ?counts, "job run finished");
        Ok(RunOutcome::Done {
            counts,
            takeovers: claim.takeovers,
        })
    }

    async fn checkpoint(
        &self,
        claim: &store::jobs::Claim,
        replica: &Replica,
        after: Option<&(String, Uuid)>,
        counts: &RunCounts,
    ) -> Result<bool, Error> {
        let client = self.db.get().await?;
        let lease_until = self.clock.now() + replica.lease;
        Ok(store::jobs::checkpoint(
            &**client,
            claim.run_id,
            &replica.id,
            lease_until,
            after,
            &json!(counts),
        )
        .await?)
    }

    /// Processes each item on its own; a failure is recorded and the batch goes on.
    async fn process_chunk(
        &self,
        job: Job,
        at: DateTime<Utc>,
        chunk: &[(String, Uuid)],
        counts: &mut RunCounts,
    ) -> Result<(), Error> {
        let failures: HashMap<(String, Uuid), store::jobs::StoredFailure> = {
            let client = self.db.get().await?;
            store::jobs::failures_of(&**client, job.name(), chunk)
                .await?
                .into_iter()
                .map(|f| ((f.program_id.clone(), f.member_id), f))
                .collect()
        };
        let now = self.clock.now();
        for (program, member) in chunk {
            let known = failures.get(&(program.clone(), *member));
            if known.is_some_and(|f| f.parked || f.next_attempt_at > now) {
                counts.skipped += 1;
                continue;
            }
            counts.examined += 1;
            let result = match ProgramId::parse(program) {
                Ok(program_id) => self.process(job, at, program_id, *member).await,
                Err(error) => Err(Error::from(error)),
            };
            let client = self.db.get().await?;
            match result {
                Ok(changed) => {
                    if let Some(amount) = changed {
                        counts.changed += 1;
                        counts.amount += amount;
                    }
                    if known.is_some() {
                        store::jobs::clear_failure(&**client, job.name(), program, *member).await?;
                    }
                }
                Err(error) => {
                    counts.failed += 1;
                    let record = store::jobs::record_failure(
                        &**client,
                        job.name(),
                        program,
                        *member,
                        &format!("{error:#}"),
                        self.clock.now(),
                        BACKOFF_BASE,
                        MAX_ATTEMPTS,
                    )
                    .await?;
                    tracing::error!(job = job.name(), %program, %member, %error, attempts = record.attempts, parked = record.parked, "a member failed; the batch goes on");
                }
            }
        }
        Ok(())
    }

    /// The next chunk of a job's work after `after`, in (program, member) order.
    async fn candidates(
        &self,
        job: Job,
        at: DateTime<Utc>,
        after: Option<(String, Uuid)>,
    ) -> Result<Vec<(String, Uuid)>, Error> {
        let client = self.db.get().await?;
        Ok(match job {
            Job::Expiry => store::batches::members_with_due(&**client, at, after, CHUNK).await?,
            Job::ExpiringSoon => {
                store::jobs::members_expiring_soon(&**client, at, after, CHUNK).await?
            }
            Job::TierGrace => store::tiers::ranked_members(&**client, after, CHUNK).await?,
            Job::Birthday | Job::Reengagement => {
                self.members_per_program(&client, job, at, after).await?
            }
            Job::EventPrune | Job::InviteExpiry | Job::GraphSnapshot => {
                let after_program = after.map(|(program, _)| program).unwrap_or_default();
                store::programs::list_ids(&**client)
                    .await?
                    .into_iter()
                    .filter(|program| *program > after_program)
                    .take(usize::try_from(CHUNK).unwrap_or(100))
                    .map(|program| (program, Uuid::nil()))
                    .collect()
            }
        })
    }

    /// Birthday and re-engagement candidates: program by program (only programs paying the
    /// bonus), the members born on the program-local date of `at`, or every member.
    async fn members_per_program(
        &self,
        client: &deadpool_postgres::Client,
        job: Job,
        at: DateTime<Utc>,
        after: Option<(String, Uuid)>,
    ) -> Result<Vec<(String, Uuid)>, Error> {
        let (after_program, after_member) = after.unwrap_or_default();
        for program in store::programs::list_ids(&***client).await? {
            if program < after_program {
                continue;
            }
            let from = if program == after_program {
                after_member
            } else {
                Uuid::nil()
            };
            let Some(stored) =
                store::programs::get(&***client, &ProgramId::parse(&program)?).await?
            else {
                continue;
            };
            let rules = &stored.rules;
            let members = match job {
                Job::Birthday if rules.birthday_bonus_points > 0 => {
                    let zone = rules.zone();
                    let today = at.with_timezone(&zone).date_naive();
                    store::jobs::members_born_on(
                        &***client,
                        &program,
                        &birthdays_celebrated_on(today),
                        at,
                        from,
                        CHUNK,
                    )
                    .await?
                }
                Job::Reengagement
                    if rules.reengagement_after_days.is_some()
                        && rules.reengagement_bonus_points > 0 =>
                {
                    store::jobs::members_of(&***client, &program, at, from, CHUNK).await?
                }
                _ => vec![],
            };
            if !members.is_empty() {
                return Ok(members.into_iter().map(|m| (program.clone(), m)).collect());
            }
        }
        Ok(vec![])
    }

    /// One item of a job; `Some(amount)` when it changed something.
    async fn process(
        &self,
        job: Job,
        at: DateTime<Utc>,
        program: ProgramId,
        member: Uuid,
    ) -> ItemResult {
        let member_id = MemberId::from_uuid(member);
        match job {
            Job::Expiry => {
                let points = self.expire_member(program, member_id, at).await?;
                Ok((points > 0).then_some(points))
            }
            Job::ExpiringSoon => {
                let notices = self.announce_expiring(program, member_id, at).await?;
                Ok((notices > 0).then_some(notices))
            }
            Job::TierGrace => {
                let evaluation = self.evaluate_member(program, member_id).await?;
                Ok((!evaluation.steps.is_empty()).then_some(evaluation.steps.len() as i64))
            }
            Job::Birthday => self.birthday(program, member_id, at).await,
            Job::Reengagement => self.reengagement(program, member_id, at).await,
            Job::EventPrune => self.prune_events(&program, at).await,
            Job::InviteExpiry => self.expire_invites(&program, at).await,
            Job::GraphSnapshot => self.graph_snapshot_if_due(&program, at).await,
        }
    }

    pub(super) async fn program_rules(
        &self,
        program: &ProgramId,
    ) -> Result<crate::domain::RulesDocument, Error> {
        let client = self.db.get().await?;
        store::programs::get(&**client, program)
            .await?
            .map(|stored| stored.rules)
            .ok_or_else(|| super::members::program_not_found(program))
    }

    async fn birthday(
        &self,
        program: ProgramId,
        member: MemberId,
        at: DateTime<Utc>,
    ) -> ItemResult {
        let rules = self.program_rules(&program).await?;
        let zone = rules.zone();
        let year = at.with_timezone(&zone).year();
        let credit = BonusCredit {
            member,
            cause: BonusCause::Birthday { year },
            points: rules.birthday_bonus_points,
        };
        let outcome = self.pay_bonus(program, credit).await?;
        Ok((!outcome.replayed).then_some(outcome.points))
    }

    /// Pays the re-engagement bonus to a member whose last purchase award (or enrolment)
    /// is older than the program's `reengagement_after_days`; once per inactive spell, the
    /// spell named by that last award.
    async fn reengagement(
        &self,
        program: ProgramId,
        member: MemberId,
        at: DateTime<Utc>,
    ) -> ItemResult {
        let rules = self.program_rules(&program).await?;
        let Some(days) = rules.reengagement_after_days else {
            return Ok(None);
        };
        let (last, enrolled_at) = {
            let client = self.db.get().await?;
            store::jobs::last_earning(&**client, program.as_str(), member.as_uuid()).await?
        };
        let since = last.map_or(enrolled_at, |(_, when)| when);
        if since > at - Duration::days(i64::from(days)) {
            return Ok(None);
        }
        let credit = BonusCredit {
            member,
            cause: BonusCause::Reengagement {
                last_award: last.map(|(entry, _)| EntryId::from_uuid(entry)),
            },
            points: rules.reengagement_bonus_points,
        };
        let outcome = self.pay_bonus(program, credit).await?;
        Ok((!outcome.replayed).then_some(outcome.points))
    }

    /// Announces, once per batch, the member's batches expiring within the program's
    /// `expiring_soon_days` of `at` (`points.expiring_soon`), under the member's lock.
    async fn announce_expiring(
        &self,
        program: ProgramId,
        member: MemberId,
        at: DateTime<Utc>,
    ) -> Result<i64, Error> {
        let rules = self.program_rules(&program).await?;
        let ledger = self.clone();
        run_to_completion(async move {
            let mut client = ledger.db.get().await?;
            let tx = MemberTx::begin(&mut client, &program, member).await?;
            let until = at + Duration::days(i64::from(rules.expiring_soon_days));
            let batches = store::jobs::take_expiring_soon(&tx, at, until).await?;
            let events: Vec<NewEvent> = batches
                .iter()
                .map(|(batch, points, expires_at)| {
                    NewEvent::new(
                        EventType::PointsExpiringSoon,
                        member,
                        json!({
                            "member_id": member.to_string(),
                            "batch_id": batch.to_string(),
                            "points": points,
                            "expires_at": expires_at,
                        }),
                    )
                })
                .collect();
            store::events::append(&tx, ledger.clock.now(), &events).await?;
            tx.commit().await?;
            Ok(i64::try_from(events.len()).unwrap_or(i64::MAX))
        })
        .await
    }

    /// Deletes the program's events older than its retention; returns how many.
    async fn prune_events(&self, program: &ProgramId, at: DateTime<Utc>) -> ItemResult {
        let rules = self.program_rules(program).await?;
        let before = at - Duration::days(i64::from(rules.events_retention_days));
        let mut deleted: u64 = 0;
        loop {
            let mut client = self.db.get().await?;
            let batch = store::jobs::prune_events(
                &mut client,
                program.as_str(),
                before,
                self.clock.now(),
                PRUNE_BATCH,
            )
            .await?;
            deleted += batch;
            if batch < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
        Ok((deleted > 0).then_some(i64::try_from(deleted).unwrap_or(i64::MAX)))
    }

    /// Marks the program's pending invites past their expiry `expired`, in bounded
    /// batches, each with its `referral.closed` event; returns how many.
    async fn expire_invites(&self, program: &ProgramId, at: DateTime<Utc>) -> ItemResult {
        let mut expired: i64 = 0;
        loop {
            let client = self.db.get().await?;
            let batch =
                store::referrals::expire_due(&client, program, at, INVITE_EXPIRY_BATCH).await?;
            expired += batch;
            if batch < INVITE_EXPIRY_BATCH {
                break;
            }
        }
        Ok((expired > 0).then_some(expired))
    }

    /// The fleet's loop: every `interval`, each job's current slot (when no replica holds
    /// it) and any run a dead replica left behind. Ends when `shutdown` resolves.
    pub async fn run_workers(
        &self,
        replica: Replica,
        interval: std::time::Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tracing::info!(replica = %replica.id, "workers started");
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {}
            }
            let round = async {
                if let Err(error) = self.take_over_abandoned(&replica).await {
                    tracing::error!(%error, "taking over abandoned runs failed");
                }
                for job in Job::ALL {
                    let at = self.clock.now();
                    if let Err(error) = self.run_job(job, at, &replica).await {
                        tracing::error!(job = job.name(), %error, "job run failed");
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = round => {}
            }
        }
        tracing::info!(replica = %replica.id, "workers stopped");
    }

    /// Recent runs and the members jobs could not process, for `flash jobs list`.
    pub async fn job_report(
        &self,
    ) -> Result<(Vec<store::jobs::StoredRun>, Vec<store::jobs::StoredFailure>), Error> {
        let client = self.db.get().await?;
        let runs = store::jobs::recent_runs(&**client, 30).await?;
        let failures = store::jobs::all_failures(&**client).await?;
        Ok((runs, failures))
    }
}

/// The (month, day) birthdays celebrated on `day`: its own, and 29 February on 28 February
/// of a year without one.
pub fn birthdays_celebrated_on(day: NaiveDate) -> Vec<(u32, u32)> {
    let mut days = vec![(day.month(), day.day())];
    let leap = NaiveDate::from_ymd_opt(day.year(), 2, 29).is_some();
    if day.month() == 2 && day.day() == 28 && !leap {
        days.push((2, 29));
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_29th_of_february_is_celebrated_on_the_28th_in_other_years() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(
            birthdays_celebrated_on(day(2027, 2, 28)),
            [(2, 28), (2, 29)]
        );
        assert_eq!(birthdays_celebrated_on(day(2028, 2, 28)), [(2, 28)]);
        assert_eq!(birthdays_celebrated_on(day(2028, 2, 29)), [(2, 29)]);
        assert_eq!(birthdays_celebrated_on(day(2027, 3, 1)), [(3, 1)]);
    }

    #[test]
    fn slots_are_the_period_the_instant_falls_in() {
        let at = DateTime::parse_from_rfc3339("2026-03-01T12:34:56Z")
            .unwrap()
            .with_timezone(&Utc);
        let slot = |job: Job, period| job.slot(at, period).to_rfc3339();
        assert_eq!(slot(Job::Expiry, None), "2026-03-01T12:00:00+00:00");
        assert_eq!(slot(Job::EventPrune, None), "2026-03-01T00:00:00+00:00");
        assert_eq!(
            slot(Job::EventPrune, Some(Duration::seconds(5))),
            "2026-03-01T12:34:55+00:00"
        );
        assert_eq!(Job::parse("tier-grace"), Some(Job::TierGrace));
    }
}
