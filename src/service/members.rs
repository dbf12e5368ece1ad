//! Enrolling members and reading their points.
use super::{run_to_completion, Error, Ledger, MAX_CLOCK_SKEW};
use crate::domain::{Contact, ContactHash, MemberId, ProgramId};
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
    /// Emails and phone numbers, stored only as keyed hashes.
    pub contacts: Vec<Contact>,
    /// The client enrolling the member.
    pub enrolled_by: String,
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
            let hashes = command
                .contacts
                .iter()
                .map(|contact| Ok((ledger.hash_contact(contact)?, contact.kind())))
                .collect::<Result<Vec<_>, Error>>()?;
            let mut client = ledger.db.get().await?;
            let (rules_version, stored, existed) = if hashes.is_empty() {
                // One statement, atomic by itself: no BEGIN and COMMIT round trips.
                store::members::enroll(
                    &client,
                    &command.program,
                    command.member,
                    command.birthday,
                    enrolled_at,
                    &command.enrolled_by,
                )
                .await?
                .ok_or_else(|| program_not_found(&command.program))?
            } else {
                // The member and its contacts in one transaction: a contact of another
                // member refuses the whole enrolment.
                let tx = client.transaction().await?;
                let enrolled = store::members::enroll(
                    &tx,
                    &command.program,
                    command.member,
                    command.birthday,
                    enrolled_at,
                    &command.enrolled_by,
                )
                .await?
                .ok_or_else(|| program_not_found(&command.program))?;
                let taken = store::referrals::add_contacts(
                    &tx,
                    &command.program,
                    command.member,
                    &hashes,
                    now,
                )
                .await?;
                if taken > 0 {
                    let only: Vec<ContactHash> = hashes.iter().map(|(hash, _)| *hash).collect();
                    let owners =
                        store::referrals::contact_owners(&tx, &command.program, &only).await?;
                    let index = hashes
                        .iter()
                        .position(|(hash, _)| {
                            owners
                                .iter()
                                .any(|(owned, owner)| owned == hash && *owner != command.member)
                        })
                        .unwrap_or(0);
                    return Err(Error::ContactTaken { index });
                }
                tx.commit().await?;
                enrolled
            };
            // A member enrolled just now holds nothing yet: no second statement.
            let points = if existed {
                store::members::points_summary_prepared(
                    &client,
                    &command.program,
                    command.member,
                    now,
                )
                .await?
            } else {
                PointsSummary::default()
            };
            let rules = ledger
                .rules
                .get(&**client, &command.program, rules_version)
                .await?;
            Ok((view(&command.program, &rules, stored, points), existed))
        })
        .await
    }

    /// The member's balance, earned points, tier and next expiry as of now.
    pub async fn member(&self, program: &ProgramId, member: MemberId) -> Result<MemberView, Error> {
        let client = self.db.get().await?;
        let (rules_version, stored) = store::members::get_with_program(&client, program, member)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        let stored = stored.ok_or_else(|| Error::MemberNotFound {
            program: program.clone(),
            member,
        })?;
        let points =
            store::members::points_summary_prepared(&client, program, member, self.clock.now())
                .await?;
        let rules = self.rules.get(&**client, program, rules_version).await?;
        Ok(view(program, &rules, stored, points))
    }
}

fn view(
    program: &ProgramId,
    rules: &super::RulesAt,
    stored: store::members::StoredMember,
    points: PointsSummary,
) -> MemberView {
    MemberView {
        program: program.clone(),
        member: stored.member_id,
        birthday: stored.birthday,
        enrolled_at: stored.enrolled_at,
        tier_code: rules.rules.tier(stored.tier_rank).code.clone(),
        points,
    }
}

pub(super) fn program_not_found(program: &ProgramId) -> Error {
    Error::ProgramNotFound {
        program: program.clone(),
    }
}
