//! `flash.loyalty.v1.Ledger`.
use super::proto::{self, ledger_server::Ledger as LedgerRpc};
use super::{int64, optional_time, page_request, required_time, timestamp};
use crate::domain::{
    parse_reference, ClientName, Contact, Currency, EntryId, EntryKind, IdempotencyKey,
    InvalidField, MemberId, ProgramId, PurchaseSource, MAX_AMOUNT_MINOR, MAX_CONTACTS_PER_MEMBER,
    MAX_RULE_POINTS,
};
use crate::service::{
    AdjustCommand, AllocationView, AwardCommand, AwardOutcome, EnrollCommand, EntryRef, Error,
    HistoryEntry, Ledger, MemberView, ReverseAwardCommand, ReverseSpendCommand, SpendCommand,
};
use chrono::NaiveDate;
use tonic::{Request, Response, Status};

/// The gRPC adapter of the ledger use cases.
pub struct LedgerApi {
    ledger: Ledger,
}

impl LedgerApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl LedgerRpc for LedgerApi {
    async fn enroll_member(
        &self,
        request: Request<proto::EnrollMemberRequest>,
    ) -> Result<Response<proto::EnrollMemberResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = enroll_command(&caller.name, request)?;
        let (member, already_enrolled) = self.ledger.enroll(command).await?;
        Ok(Response::new(proto::EnrollMemberResponse {
            member: Some(member_message(member)?),
            already_enrolled,
        }))
    }

    async fn get_member(
        &self,
        request: Request<proto::GetMemberRequest>,
    ) -> Result<Response<proto::GetMemberResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let member = MemberId::parse(&request.member_id).map_err(Error::from)?;
        let member = self.ledger.member(&program, member).await?;
        Ok(Response::new(proto::GetMemberResponse {
            member: Some(member_message(member)?),
        }))
    }

    async fn award(
        &self,
        request: Request<proto::AwardRequest>,
    ) -> Result<Response<proto::AwardResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = award_command(&caller.name, request)?;
        let outcome = self.ledger.award(command).await?;
        Ok(Response::new(award_message(outcome)))
    }

    async fn award_batch(
        &self,
        request: Request<proto::AwardBatchRequest>,
    ) -> Result<Response<proto::AwardBatchResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let commands = request
            .awards
            .into_iter()
            .enumerate()
            .map(|(index, mut award)| {
                in_batch(&program, "awards", index, &mut award.program_id)?;
                award_command(&caller.name, award)
            })
            .collect();
        let results = self.ledger.award_batch(commands).await?;
        let results = results
            .into_iter()
            .map(|result| proto::AwardBatchResult {
                outcome: Some(match result {
                    Ok(outcome) => {
                        proto::award_batch_result::Outcome::Award(award_message(outcome))
                    }
                    Err(error) => proto::award_batch_result::Outcome::Error(item_error(error)),
                }),
            })
            .collect();
        Ok(Response::new(proto::AwardBatchResponse { results }))
    }

    async fn enroll_batch(
        &self,
        request: Request<proto::EnrollBatchRequest>,
    ) -> Result<Response<proto::EnrollBatchResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let commands = request
            .members
            .into_iter()
            .enumerate()
            .map(|(index, mut member)| {
                in_batch(&program, "members", index, &mut member.program_id)?;
                enroll_command(&caller.name, member)
            })
            .collect();
        let results = self.ledger.enroll_batch(commands).await?;
        let results = results
            .into_iter()
            .map(|result| {
                let outcome = match result {
                    Ok((member, already_enrolled)) => {
                        proto::enroll_batch_result::Outcome::Member(proto::EnrollMemberResponse {
                            member: Some(member_message(member)?),
                            already_enrolled,
                        })
                    }
                    Err(error) => proto::enroll_batch_result::Outcome::Error(item_error(error)),
                };
                Ok(proto::EnrollBatchResult {
                    outcome: Some(outcome),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(proto::EnrollBatchResponse { results }))
    }
    async fn spend(
        &self,
        request: Request<proto::SpendRequest>,
    ) -> Result<Response<proto::SpendResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = spend_command(&caller.name, request)?;
        let outcome = self.ledger.spend(command).await?;
        Ok(Response::new(proto::SpendResponse {
            entry_id: outcome.entry_id,
            points: outcome.points,
            allocations: allocation_messages(&outcome.allocations),
            balance_points: outcome.balance_points,
            replayed: outcome.replayed,
        }))
    }

    async fn reverse_award(
        &self,
        request: Request<proto::ReverseAwardRequest>,
    ) -> Result<Response<proto::ReverseAwardResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = reverse_award_command(&caller.name, request)?;
        let outcome = self.ledger.reverse_award(command).await?;
        Ok(Response::new(proto::ReverseAwardResponse {
            entry_id: outcome.entry_id,
            award_entry_id: outcome.award_entry_id,
            member_id: outcome.member_id,
            reversed_points: outcome.reversed_points,
            recovered_points: outcome.recovered_points,
            unrecovered_points: outcome.unrecovered_points,
            allocations: allocation_messages(&outcome.allocations),
            remaining_reversible_points: outcome.remaining_reversible_points,
            balance_points: outcome.balance_points,
            replayed: outcome.replayed,
        }))
    }

    async fn reverse_spend(
        &self,
        request: Request<proto::ReverseSpendRequest>,
    ) -> Result<Response<proto::ReverseSpendResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = reverse_spend_command(&caller.name, request)?;
        let outcome = self.ledger.reverse_spend(command).await?;
        Ok(Response::new(proto::ReverseSpendResponse {
            entry_id: outcome.entry_id,
            spend_entry_id: outcome.spend_entry_id,
            member_id: outcome.member_id,
            reversed_points: outcome.reversed_points,
            restored_points: outcome.restored_points,
            expired_points: outcome.expired_points,
            repaid_points: outcome.repaid_points,
            allocations: allocation_messages(&outcome.allocations),
            balance_points: outcome.balance_points,
            replayed: outcome.replayed,
        }))
    }

    async fn adjust(
        &self,
        request: Request<proto::AdjustRequest>,
    ) -> Result<Response<proto::AdjustResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = adjust_command(&caller.name, request)?;
        let outcome = self.ledger.adjust(command).await?;
        Ok(Response::new(proto::AdjustResponse {
            entry_id: outcome.entry_id,
            points: outcome.points,
            batch_id: outcome
                .batch_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            allocations: allocation_messages(&outcome.allocations),
            balance_points: outcome.balance_points,
            replayed: outcome.replayed,
        }))
    }

    async fn list_entries(
        &self,
        request: Request<proto::ListEntriesRequest>,
    ) -> Result<Response<proto::ListEntriesResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let member = MemberId::parse(&request.member_id).map_err(Error::from)?;
        let (page_size, before_seq) = page_request(request.page_size, &request.page_token)?;
        let page = self
            .ledger
            .history(&program, member, page_size, before_seq)
            .await?;
        Ok(Response::new(proto::ListEntriesResponse {
            entries: page.entries.into_iter().map(entry_message).collect(),
            next_page_token: page
                .next_before_seq
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_liability(
        &self,
        request: Request<proto::GetLiabilityRequest>,
    ) -> Result<Response<proto::GetLiabilityResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let from = optional_time("from", request.from).map_err(Error::from)?;
        let to = optional_time("to", request.to).map_err(Error::from)?;
        let liability = self.ledger.liability(&program, from, to).await?;
        let (period_from, period_to) = (timestamp(liability.from), timestamp(liability.to));
        let batches = liability.batches;
        let r = liability.roll_forward;
        Ok(Response::new(proto::GetLiabilityResponse {
            outstanding_points: int64("outstanding_points", batches.outstanding)?,
            outstanding_by_expiry_month: batches
                .by_expiry_month
                .into_iter()
                .map(|(month, points)| {
                    let field = format!("outstanding_by_expiry_month[{month}].points");
                    Ok(proto::ExpiryMonth {
                        points: int64(&field, points)?,
                        month,
                    })
                })
                .collect::<Result<_, Error>>()?,
            unswept_expired_points: int64("unswept_expired_points", batches.unswept_expired)?,
            batches_remaining_points: int64("batches_remaining_points", batches.remaining)?,
            roll_forward: Some(proto::RollForward {
                opening_balance_points: int64("roll_forward.opening_balance_points", r.opening)?,
                earned_points: int64("roll_forward.earned_points", r.earned)?,
                bonus_points: int64("roll_forward.bonus_points", r.bonus)?,
                spent_points: int64("roll_forward.spent_points", r.spent)?,
                reversed_points: int64("roll_forward.reversed_points", r.reversed)?,
                restored_points: int64("roll_forward.restored_points", r.restored)?,
                adjusted_credit_points: int64(
                    "roll_forward.adjusted_credit_points",
                    r.adjusted_credit,
                )?,
                adjusted_debit_points: int64(
                    "roll_forward.adjusted_debit_points",
                    r.adjusted_debit,
                )?,
                expired_points: int64("roll_forward.expired_points", r.expired)?,
                closing_balance_points: int64("roll_forward.closing_balance_points", r.closing)?,
            }),
            period_from: Some(period_from),
            period_to: Some(period_to),
            to_clamped: liability.to_clamped,
        }))
    }
}

fn award_command(client: &ClientName, request: proto::AwardRequest) -> Result<AwardCommand, Error> {
    let source = match proto::PurchaseSource::try_from(request.source) {
        Ok(proto::PurchaseSource::Receipt) => PurchaseSource::Receipt,
        Ok(proto::PurchaseSource::Shopify) => PurchaseSource::Shopify,
        Ok(proto::PurchaseSource::Marketplace) => PurchaseSource::Marketplace,
        Ok(proto::PurchaseSource::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "source",
                "must be PURCHASE_SOURCE_RECEIPT, PURCHASE_SOURCE_SHOPIFY or PURCHASE_SOURCE_MARKETPLACE",
            ))
        }
    };
    if request.amount_minor <= 0 || request.amount_minor > MAX_AMOUNT_MINOR {
        return Err(Error::invalid(
            "amount_minor",
            format!("must be between 1 and {MAX_AMOUNT_MINOR}"),
        ));
    }
    let currency = Currency::parse("currency", &request.currency)?;
    Ok(AwardCommand {
        program: ProgramId::parse(&request.program_id)?,
        member: MemberId::parse(&request.member_id)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
        source,
        external_ref: parse_reference("external_ref", &request.external_ref)?,
        amount_minor: request.amount_minor,
        currency: currency.code().to_owned(),
        occurred_at: required_time("occurred_at", request.occurred_at)?,
    })
}

/// An item of a batch is of the batch's program: its own `program_id` empty (it takes the
/// batch's) or the same.
fn in_batch(
    program: &ProgramId,
    items: &str,
    index: usize,
    item_program: &mut String,
) -> Result<(), Error> {
    if item_program.is_empty() {
        *item_program = program.to_string();
    } else if item_program != program.as_str() {
        return Err(Error::invalid(
            &format!("{items}[{index}].program_id"),
            "must be empty or the batch's program_id",
        ));
    }
    Ok(())
}

/// Why one item of a batch failed: the status it alone would have had.
fn item_error(error: Error) -> proto::AwardBatchItemError {
    let status = Status::from(error);
    proto::AwardBatchItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

fn enroll_command(
    client: &ClientName,
    request: proto::EnrollMemberRequest,
) -> Result<EnrollCommand, Error> {
    Ok(EnrollCommand {
        program: ProgramId::parse(&request.program_id)?,
        member: MemberId::parse(&request.member_id)?,
        birthday: parse_birthday(&request.birthday)?,
        enrolled_at: optional_time("enrolled_at", request.enrolled_at)?,
        contacts: parse_contacts(&request.contacts, MAX_CONTACTS_PER_MEMBER)?,
        enrolled_by: client.to_string(),
    })
}

/// Contacts of a request, normalised; at most `max` of them. Messages never repeat one.
pub(super) fn parse_contacts(raw: &[String], max: usize) -> Result<Vec<Contact>, Error> {
    if raw.len() > max {
        return Err(Error::invalid(
            "contacts",
            format!("at most {max} contacts, got {}", raw.len()),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(index, contact)| Ok(Contact::parse(&format!("contacts[{index}]"), contact)?))
        .collect()
}

fn spend_command(client: &ClientName, request: proto::SpendRequest) -> Result<SpendCommand, Error> {
    Ok(SpendCommand {
        program: ProgramId::parse(&request.program_id)?,
        member: MemberId::parse(&request.member_id)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
        points: positive_points("points", request.points)?,
        reference: parse_reference("reference", &request.reference)?,
    })
}

fn reverse_award_command(
    client: &ClientName,
    request: proto::ReverseAwardRequest,
) -> Result<ReverseAwardCommand, Error> {
    Ok(ReverseAwardCommand {
        program: ProgramId::parse(&request.program_id)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
        award: entry_ref(client, "award", request.award)?,
        points: request
            .points
            .map(|p| positive_points("points", p))
            .transpose()?,
        reason: optional_text("reason", &request.reason)?,
    })
}

fn reverse_spend_command(
    client: &ClientName,
    request: proto::ReverseSpendRequest,
) -> Result<ReverseSpendCommand, Error> {
    Ok(ReverseSpendCommand {
        program: ProgramId::parse(&request.program_id)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
        spend: entry_ref(client, "spend", request.spend)?,
        points: request
            .points
            .map(|p| positive_points("points", p))
            .transpose()?,
        reason: optional_text("reason", &request.reason)?,
    })
}

fn adjust_command(
    client: &ClientName,
    request: proto::AdjustRequest,
) -> Result<AdjustCommand, Error> {
    if request.points == 0 || request.points.unsigned_abs() > MAX_RULE_POINTS.unsigned_abs() {
        return Err(Error::invalid(
            "points",
            format!("must be non-zero and within ±{MAX_RULE_POINTS}"),
        ));
    }
    Ok(AdjustCommand {
        program: ProgramId::parse(&request.program_id)?,
        member: MemberId::parse(&request.member_id)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
        points: request.points,
        reason: parse_reference("reason", &request.reason)?,
        actor: parse_reference("actor", &request.actor)?,
        counts_toward_tier: request.counts_toward_tier,
    })
}

fn positive_points(field: &str, points: i64) -> Result<i64, Error> {
    if points <= 0 || points > MAX_RULE_POINTS {
        return Err(Error::invalid(
            field,
            format!("must be between 1 and {MAX_RULE_POINTS}"),
        ));
    }
    Ok(points)
}

fn optional_text(field: &str, raw: &str) -> Result<Option<String>, Error> {
    if raw.is_empty() {
        return Ok(None);
    }
    Ok(Some(parse_reference(field, raw)?))
}

/// The entry a reversal names: by id, or by the idempotency key this client wrote it under
/// (another client's keys are not this client's to name).
fn entry_ref(
    client: &ClientName,
    field: &str,
    reference: Option<proto::EntryRef>,
) -> Result<EntryRef, Error> {
    match reference.and_then(|r| r.r#ref) {
        Some(proto::entry_ref::Ref::EntryId(id)) => Ok(EntryRef::Id(EntryId::parse(
            &format!("{field}.entry_id"),
            &id,
        )?)),
        Some(proto::entry_ref::Ref::IdempotencyKey(key)) => IdempotencyKey::parse(client, &key)
            .map(EntryRef::Key)
            .map_err(|error| Error::invalid(&format!("{field}.idempotency_key"), error.message)),
        None => Err(Error::invalid(
            field,
            "is required: give the entry_id or the idempotency_key",
        )),
    }
}

fn allocation_messages(allocations: &[AllocationView]) -> Vec<proto::Allocation> {
    allocations
        .iter()
        .map(|allocation| proto::Allocation {
            batch_id: allocation.batch_id.to_string(),
            points: allocation.points.abs(),
            earned_at: Some(timestamp(allocation.earned_at)),
            expires_at: Some(timestamp(allocation.expires_at)),
        })
        .collect()
}

fn entry_message(entry: HistoryEntry) -> proto::Entry {
    let kind = match entry.kind {
        EntryKind::Award => proto::EntryKind::Award,
        EntryKind::Spend => proto::EntryKind::Spend,
        EntryKind::AwardReversal => proto::EntryKind::AwardReversal,
        EntryKind::SpendReversal => proto::EntryKind::SpendReversal,
        EntryKind::Adjustment => proto::EntryKind::Adjustment,
        EntryKind::Expiry => proto::EntryKind::Expiry,
        EntryKind::Bonus => proto::EntryKind::Bonus,
        EntryKind::TierSet => proto::EntryKind::TierSet,
        EntryKind::Referral => proto::EntryKind::Referral,
    };
    let source = match entry.source {
        Some(PurchaseSource::Receipt) => proto::PurchaseSource::Receipt,
        Some(PurchaseSource::Shopify) => proto::PurchaseSource::Shopify,
        Some(PurchaseSource::Marketplace) => proto::PurchaseSource::Marketplace,
        None => proto::PurchaseSource::Unspecified,
    };
    proto::Entry {
        entry_id: entry.entry_id.to_string(),
        kind: kind as i32,
        points: entry.points,
        source: source as i32,
        external_ref: entry.external_ref.unwrap_or_default(),
        reason: entry.reason.unwrap_or_default(),
        actor: entry.actor.unwrap_or_default(),
        rules_version: entry.rules_version,
        created_at: Some(timestamp(entry.created_at)),
        batch_id: entry.batch_id.map(|id| id.to_string()).unwrap_or_default(),
        allocations: allocation_messages(&entry.allocations),
        reversed_entry_id: entry
            .reversed_entry_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        unrecovered_points: entry.unrecovered_points.unwrap_or_default(),
        amount_minor: entry.amount_minor.unwrap_or_default(),
        currency: entry.currency.unwrap_or_default(),
    }
}

/// A date as exactly `YYYY-MM-DD` with a year from 0001 to 9999, like timestamps: chrono
/// alone also reads signed and longer years ("-5000-01-01", "+10000-01-01"), which
/// PostgreSQL then refused as out of range (INTERNAL).
fn parse_birthday(raw: &str) -> Result<Option<NaiveDate>, InvalidField> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        InvalidField::new(
            "birthday",
            "must be a date as YYYY-MM-DD with a year from 0001 to 9999",
        )
    };
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(index, byte)| match index {
            4 | 7 => byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !shaped || raw.starts_with("0000") {
        return Err(invalid());
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| invalid())
}

fn award_message(outcome: AwardOutcome) -> proto::AwardResponse {
    proto::AwardResponse {
        entry_id: outcome.entry_id,
        requested_points: outcome.requested_points,
        awarded_points: outcome.awarded_points,
        capped: outcome.capped,
        replayed: outcome.replayed,
        balance_points: outcome.balance_points,
        rules_version: outcome.rules_version,
    }
}

/// The member as answered; OUT_OF_RANGE when a summary figure does not fit its field.
fn member_message(view: MemberView) -> Result<proto::Member, Error> {
    Ok(proto::Member {
        program_id: view.program.to_string(),
        member_id: view.member.to_string(),
        birthday: view
            .birthday
            .map(|day| day.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
        enrolled_at: Some(timestamp(view.enrolled_at)),
        balance_points: int64("member.balance_points", view.points.balance_points)?,
        lifetime_earned_points: int64(
            "member.lifetime_earned_points",
            view.points.lifetime_earned_points,
        )?,
        tier_code: view.tier_code,
        next_expiry_at: view.points.next_expiry_at.map(timestamp),
        next_expiry_points: int64("member.next_expiry_points", view.points.next_expiry_points)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birthdays_are_four_digit_years_from_0001_to_9999() {
        for good in ["0001-01-01", "1990-02-28", "2024-02-29", "9999-12-31"] {
            assert!(parse_birthday(good).unwrap().is_some(), "{good}");
        }
        for bad in [
            "-5000-01-01",
            "-4714-11-24",
            "-262143-01-01",
            "+10000-01-01",
            "+2000-01-01",
            "10000-01-01",
            "0000-01-01",
            "2023-02-29",
            "2024-2-01",
            "2024-02-1",
            " 2024-02-01",
            "2024/02/01",
            "２０２４-02-01",
        ] {
            let error = parse_birthday(bad).unwrap_err();
            assert_eq!(error.field, "birthday", "{bad}");
        }
    }
}
