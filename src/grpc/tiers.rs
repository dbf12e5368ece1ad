//! `flash.loyalty.v1.Tiers`.
use super::proto::{self, tiers_server::Tiers as TiersRpc};
use super::{optional_time, page_request, timestamp};
use crate::domain::{parse_reference, ClientName, IdempotencyKey, MemberId, ProgramId, TierStep};
use crate::service::{
    Error, Ledger, SetTierCommand, SetTierOutcome, TierChangeView, TierStatusView,
};
use tonic::{Request, Response, Status};

/// The gRPC adapter of the tier use cases.
pub struct TiersApi {
    ledger: Ledger,
}

impl TiersApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

fn member_of(program_id: &str, member_id: &str) -> Result<(ProgramId, MemberId), Error> {
    Ok((ProgramId::parse(program_id)?, MemberId::parse(member_id)?))
}

#[tonic::async_trait]
impl TiersRpc for TiersApi {
    async fn get_tier_status(
        &self,
        request: Request<proto::GetTierStatusRequest>,
    ) -> Result<Response<proto::GetTierStatusResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let (program, member) = member_of(&request.program_id, &request.member_id)?;
        let status = self.ledger.tier_status(&program, member).await?;
        Ok(Response::new(proto::GetTierStatusResponse {
            status: Some(status_message(status)),
        }))
    }

    async fn list_tier_history(
        &self,
        request: Request<proto::ListTierHistoryRequest>,
    ) -> Result<Response<proto::ListTierHistoryResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let (program, member) = member_of(&request.program_id, &request.member_id)?;
        let (page_size, before_seq) = page_request(request.page_size, &request.page_token)?;
        let page = self
            .ledger
            .tier_history(&program, member, page_size, before_seq)
            .await?;
        Ok(Response::new(proto::ListTierHistoryResponse {
            changes: page.changes.into_iter().map(change_message).collect(),
            next_page_token: page
                .next_page_token
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn evaluate_member(
        &self,
        request: Request<proto::EvaluateMemberRequest>,
    ) -> Result<Response<proto::EvaluateMemberResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let (program, member) = member_of(&request.program_id, &request.member_id)?;
        let evaluation = self.ledger.evaluate_member(program, member).await?;
        let steps = evaluation
            .steps
            .iter()
            .map(|step| {
                let kind = match step {
                    TierStep::Upgrade { .. } => proto::TierStepKind::Upgraded,
                    TierStep::StartGrace { .. } => proto::TierStepKind::GraceStarted,
                    TierStep::Remind { .. } => proto::TierStepKind::Reminded,
                    TierStep::ClearGrace => proto::TierStepKind::GraceCleared,
                    TierStep::Downgrade { .. } => proto::TierStepKind::Downgraded,
                };
                kind as i32
            })
            .collect();
        Ok(Response::new(proto::EvaluateMemberResponse {
            steps,
            status: Some(status_message(evaluation.status)),
        }))
    }

    async fn set_tier(
        &self,
        request: Request<proto::SetTierRequest>,
    ) -> Result<Response<proto::SetTierResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let command = set_tier_command(&caller.name, request)?;
        let outcome = self.ledger.set_tier(command).await?;
        Ok(Response::new(set_tier_message(outcome)))
    }
}

fn set_tier_command(
    client: &ClientName,
    request: proto::SetTierRequest,
) -> Result<SetTierCommand, Error> {
    let (program, member) = member_of(&request.program_id, &request.member_id)?;
    if request.tier_code.is_empty() {
        return Err(Error::invalid("tier_code", "is required"));
    }
    Ok(SetTierCommand {
        program,
        member,
        tier_code: crate::domain::parse_reference("tier_code", &request.tier_code)?,
        hold_until: optional_time("hold_until", request.hold_until)?,
        reason: parse_reference("reason", &request.reason)?,
        actor: parse_reference("actor", &request.actor)?,
        idempotency_key: IdempotencyKey::parse(client, &request.idempotency_key)?,
    })
}

fn set_tier_message(outcome: SetTierOutcome) -> proto::SetTierResponse {
    proto::SetTierResponse {
        entry_id: outcome.entry_id,
        change_id: outcome.change_id,
        from_tier_code: outcome.from_tier_code,
        tier_code: outcome.tier_code,
        hold_until: outcome.hold_until.map(timestamp),
        replayed: outcome.replayed,
    }
}

fn status_message(status: TierStatusView) -> proto::TierStatus {
    proto::TierStatus {
        tier_code: status.tier_code,
        status_points: status.status_points,
        next_tier_code: status.next_tier_code.unwrap_or_default(),
        points_to_next_tier: status.points_to_next_tier,
        points_to_keep_tier: status.points_to_keep_tier,
        grace_ends_at: status.grace_ends_at.map(timestamp),
        hold_until: status.hold_until.map(timestamp),
        points_aging_out_30d: status.points_aging_out_30d,
        tier_if_evaluated_now: status.tier_if_evaluated_now,
    }
}

fn change_message(change: TierChangeView) -> proto::TierChange {
    let kind = match change.change.as_str() {
        "upgraded" => proto::TierChangeKind::Upgraded,
        "downgraded" => proto::TierChangeKind::Downgraded,
        "set" => proto::TierChangeKind::Set,
        _ => proto::TierChangeKind::Unspecified,
    };
    proto::TierChange {
        change_id: change.change_id.to_string(),
        kind: kind as i32,
        from_tier_code: change.from_tier_code,
        to_tier_code: change.to_tier_code,
        status_points: change.status_points,
        reason: change.reason,
        actor: change.actor,
        entry_id: change
            .entry_id
            .map(|entry| entry.to_string())
            .unwrap_or_default(),
        hold_until: change.hold_until.map(timestamp),
        created_at: Some(timestamp(change.created_at)),
    }
}
