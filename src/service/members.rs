//! Enrolling members and reading their points.
use super::{run_to_completion, Error, Ledger, MAX_CLOCK_SKEW};
use crate::domain::{MemberId, ProgramId, ProgramRules};
use crate::store::{self, members::PointsSummary};
use chrono::{DateTime, NaiveDate, Utc};

/// A member to enroll, parsed at the edge.
#[derive(Debug, Clone)]
pub struct EnrollCommand {
    pub program: ProgramId,
    pub member: MemberId,
    pub birthday: Option<NaiveDate>,
    /// Defaults to now.
    pub enrolled_at: Option<DateTime<Utc>>,
}

/// A member and their points as of now.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub program: ProgramId,
    pub member: MemberId,
    pub birthday: Option<NaiveDate>,
    pub enrolled_at: DateTime<Utc>,
    pub tier_code: String,
    pub points: PointsSummary,
}

impl Ledger {
    /// Creates the member or returns the existing one; returns whether it existed.
    pub async fn enroll(&self, command: EnrollCommand) -> Result<(MemberView, bool), Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let now = ledger.clock.now();
            let enrolled_at = command.enrolled_at.unwrap_or(now);
            if enrolled_at > now + MAX_CLOCK_SKEW {
                return Err(Error::invalid("enrolled_at", "must not be in the future"));
            }
            if let Some(birthday) = command.birthday {
                if birthday > now.date_naive() {
                    return Err(Error::invalid("birthday", "must not be in the future"));
                }
            }
            let mut client = ledger.db.get().await?;
            let tx = client.transaction().await?;
            let program = store::programs::get(&*tx, &command.program)
                .await?
                .ok_or_else(|| program_not_found(&command.program))?;
            let (_, existed) = store::members::upsert(
                &tx,
                &command.program,
                command.member,
                command.birthday,
                enrolled_at,
            )
            .await?;
            tx.commit().await?;
            let view = ledger
                .member_view(
                    &**client,
                    &program.rules,
                    &command.program,
                    command.member,
                    now,
                )
                .await?;
            Ok((view, existed))
        })
        .await
    }

    /// The member's balance, earned points, tier and next expiry as of now.
    pub async fn member(&self, program: &ProgramId, member: MemberId) -> Result<MemberView, Error> {
        let client = self.db.get().await?;
        let stored = store::programs::get(&**client, program)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        self.member_view(&**client, &stored.rules, program, member, self.clock.now())
            .await
    }

    async fn member_view(
        &self,
        client: &impl tokio_postgres::GenericClient,
        rules: &crate::domain::RulesDocument,
        program: &ProgramId,
        member: MemberId,
        now: DateTime<Utc>,
    ) -> Result<MemberView, Error> {
        let stored = store::members::get(client, program, member)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "member {member} is not enrolled in program {program}"
                ))
            })?;
        let points = store::members::points_summary(client, program, member, now).await?;
        let rules = ProgramRules::parse(rules.clone())
            .map_err(|error| Error::Unexpected(anyhow::anyhow!("stored rules invalid: {error}")))?;
        Ok(MemberView {
            program: program.clone(),
            member,
            birthday: stored.birthday,
            enrolled_at: stored.enrolled_at,
            tier_code: rules.tier(stored.tier_rank).code.clone(),
            points,
        })
    }
}

pub(super) fn program_not_found(program: &ProgramId) -> Error {
    Error::NotFound(format!("program {program} not found"))
}
