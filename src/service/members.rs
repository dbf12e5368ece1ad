//! Enrolling members and reading their points.
use super::{run_to_completion, Error, Ledger, MAX_CLOCK_SKEW};
use crate::domain::{Contact, ContactHash, MemberId, ProgramId};
use crate::store::{self, members::PointsSummary};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{BTreeMap, HashMap};

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
            let enrolled_at = enrolled_at(&command, now)?;
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
                    enrolment(&command, enrolled_at),
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
                    enrolment(&command, enrolled_at),
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

    /// Enrolls up to `batch_max` (FLASH_MAX_BATCH_ITEMS) members of one program, each
    /// as [`Ledger::enroll`] would; results in request order. Those without contacts are
    /// enrolled in one statement (a member named twice once: the later items answer
    /// already enrolled, with the last birthday given); those with contacts each in their
    /// own transaction, a taken contact failing that item alone.
    pub async fn enroll_batch(
        &self,
        commands: Vec<Result<EnrollCommand, Error>>,
    ) -> Result<Vec<Result<(MemberView, bool), Error>>, Error> {
        let max = self.batch_max;
        if commands.len() > max {
            return Err(Error::invalid(
                "members",
                format!("at most {max} members per batch, got {}", commands.len()),
            ));
        }
        let ledger = self.clone();
        run_to_completion(async move {
            let now = ledger.clock.now();
            let program = commands
                .iter()
                .find_map(|command| command.as_ref().ok())
                .map(|command| (command.program.clone(), command.enrolled_by.clone()));
            let Some((program, enrolled_by)) = program else {
                // Every item was refused at the edge.
                return Ok(commands
                    .into_iter()
                    .map(|command| Err(command.err().unwrap_or_else(missing)))
                    .collect());
            };
            let mut results: Vec<Option<Result<(MemberView, bool), Error>>> = Vec::new();
            let mut plain: Vec<(usize, store::members::Enrolment)> = Vec::new();
            for (index, command) in commands.into_iter().enumerate() {
                results.push(None);
                let checked = command.and_then(|command| {
                    if command.program != program {
                        return Err(Error::invalid(
                            &format!("members[{index}].program_id"),
                            "must be empty or the batch's program_id",
                        ));
                    }
                    Ok((enrolled_at(&command, now)?, command))
                });
                match checked {
                    Err(error) => results[index] = Some(Err(error)),
                    Ok((_, command)) if !command.contacts.is_empty() => {
                        results[index] = Some(ledger.enroll(command).await)
                    }
                    Ok((enrolled_at, command)) => {
                        plain.push((index, enrolment(&command, enrolled_at)))
                    }
                }
            }
            // One row a member: the first item's instant, the last birthday given.
            let mut rows: BTreeMap<MemberId, store::members::Enrolment> = BTreeMap::new();
            for (_, item) in &plain {
                rows.entry(item.member)
                    .and_modify(|row| row.birthday = item.birthday.or(row.birthday))
                    .or_insert_with(|| item.clone());
            }
            if !rows.is_empty() {
                let rows: Vec<_> = rows.into_values().collect();
                let client = ledger.db.get().await?;
                match store::members::enroll_many(&client, &program, &rows, &enrolled_by).await? {
                    None => {
                        for (index, _) in &plain {
                            results[*index] = Some(Err(program_not_found(&program)));
                        }
                    }
                    Some((rules_version, stored)) => {
                        let rules = ledger.rules.get(&**client, &program, rules_version).await?;
                        let stored: HashMap<MemberId, store::members::Upserted> = stored
                            .into_iter()
                            .map(|(member, existed)| (member.member_id, (member, existed)))
                            .collect();
                        // Each member's points, read once: its first item's.
                        let mut points: HashMap<MemberId, PointsSummary> = HashMap::new();
                        for (index, item) in &plain {
                            let Some((member, existed)) = stored.get(&item.member) else {
                                return Err(missing());
                            };
                            let first = !points.contains_key(&item.member);
                            if first {
                                // A member enrolled just now holds nothing yet.
                                let summary = if *existed {
                                    store::members::points_summary_prepared(
                                        &client,
                                        &program,
                                        item.member,
                                        now,
                                    )
                                    .await?
                                } else {
                                    PointsSummary::default()
                                };
                                points.insert(item.member, summary);
                            }
                            let summary = points.get(&item.member).cloned().unwrap_or_default();
                            // The member's later items find it enrolled.
                            let already = *existed || !first;
                            results[*index] = Some(Ok((
                                view(&program, &rules, member.clone(), summary),
                                already,
                            )));
                        }
                    }
                }
            }
            Ok(results
                .into_iter()
                .map(|result| result.unwrap_or_else(|| Err(missing())))
                .collect())
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

/// The instant a command enrolls at (now when it gives none), checked against the clock
/// with its birthday.
fn enrolled_at(command: &EnrollCommand, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    let enrolled_at = command.enrolled_at.unwrap_or(now);
    if enrolled_at > now + MAX_CLOCK_SKEW {
        return Err(Error::invalid("enrolled_at", "must not be in the future"));
    }
    if let Some(birthday) = command.birthday {
        if birthday > now.date_naive() {
            return Err(Error::invalid("birthday", "must not be in the future"));
        }
    }
    Ok(enrolled_at)
}

fn enrolment(command: &EnrollCommand, enrolled_at: DateTime<Utc>) -> store::members::Enrolment {
    store::members::Enrolment {
        member: command.member,
        birthday: command.birthday,
        enrolled_at,
    }
}

fn missing() -> Error {
    Error::Unexpected(anyhow::anyhow!("an enrolment went missing"))
}

pub(super) fn program_not_found(program: &ProgramId) -> Error {
    Error::ProgramNotFound {
        program: program.clone(),
    }
}
