//! `flash.loyalty.v1.Ledger`.
use super::proto::{self, ledger_server::Ledger as LedgerRpc};
use super::{optional_time, required_time, timestamp};
use crate::domain::{
    parse_reference, Currency, IdempotencyKey, InvalidField, MemberId, ProgramId, PurchaseSource,
    MAX_AMOUNT_MINOR,
};
use crate::service::{AwardCommand, AwardOutcome, EnrollCommand, Error, Ledger, MemberView};
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
        let request = request.into_inner();
        let command = EnrollCommand {
            program: ProgramId::parse(&request.program_id).map_err(Error::from)?,
            member: MemberId::parse(&request.member_id).map_err(Error::from)?,
            birthday: parse_birthday(&request.birthday).map_err(Error::from)?,
            enrolled_at: optional_time("enrolled_at", request.enrolled_at).map_err(Error::from)?,
        };
        let (member, already_enrolled) = self.ledger.enroll(command).await?;
        Ok(Response::new(proto::EnrollMemberResponse {
            member: Some(member_message(member)),
            already_enrolled,
        }))
    }

    async fn get_member(
        &self,
        request: Request<proto::GetMemberRequest>,
    ) -> Result<Response<proto::GetMemberResponse>, Status> {
        let request = request.into_inner();
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let member = MemberId::parse(&request.member_id).map_err(Error::from)?;
        let member = self.ledger.member(&program, member).await?;
        Ok(Response::new(proto::GetMemberResponse {
            member: Some(member_message(member)),
        }))
    }

    async fn award(
        &self,
        request: Request<proto::AwardRequest>,
    ) -> Result<Response<proto::AwardResponse>, Status> {
        let command = award_command(request.into_inner())?;
        let outcome = self.ledger.award(command).await?;
        Ok(Response::new(award_message(outcome)))
    }

    async fn award_batch(
        &self,
        request: Request<proto::AwardBatchRequest>,
    ) -> Result<Response<proto::AwardBatchResponse>, Status> {
        let request = request.into_inner();
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let commands = request
            .awards
            .into_iter()
            .enumerate()
            .map(|(index, mut award)| {
                if award.program_id.is_empty() {
                    award.program_id = program.to_string();
                } else if award.program_id != program.as_str() {
                    return Err(Error::invalid(
                        &format!("awards[{index}].program_id"),
                        "must be empty or the batch's program_id",
                    ));
                }
                award_command(award)
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
                    Err(error) => {
                        let status = Status::from(error);
                        proto::award_batch_result::Outcome::Error(proto::AwardBatchItemError {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        })
                    }
                }),
            })
            .collect();
        Ok(Response::new(proto::AwardBatchResponse { results }))
    }
}

fn award_command(request: proto::AwardRequest) -> Result<AwardCommand, Error> {
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
        idempotency_key: IdempotencyKey::parse(&request.idempotency_key)?,
        source,
        external_ref: parse_reference("external_ref", &request.external_ref)?,
        amount_minor: request.amount_minor,
        currency: currency.code().to_owned(),
        occurred_at: required_time("occurred_at", request.occurred_at)?,
    })
}

fn parse_birthday(raw: &str) -> Result<Option<NaiveDate>, InvalidField> {
    if raw.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| InvalidField::new("birthday", "must be a date as YYYY-MM-DD"))
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

fn member_message(view: MemberView) -> proto::Member {
    proto::Member {
        program_id: view.program.to_string(),
        member_id: view.member.to_string(),
        birthday: view
            .birthday
            .map(|day| day.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
        enrolled_at: Some(timestamp(view.enrolled_at)),
        balance_points: view.points.balance_points,
        lifetime_earned_points: view.points.lifetime_earned_points,
        tier_code: view.tier_code,
        next_expiry_at: view.points.next_expiry_at.map(timestamp),
        next_expiry_points: view.points.next_expiry_points,
    }
}
