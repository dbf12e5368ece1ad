//! `flash.loyalty.v1.Referrals`.
use super::ledger::parse_contacts;
use super::proto::{self, referrals_server::Referrals as ReferralsRpc};
use super::timestamp;
use crate::domain::{
    plausible_invite_code, IdempotencyKey, InviteStatus, MemberId, ProgramId, MAX_INVITES_PER_CALL,
};
use crate::service::{
    CreateInvitesCommand, CreateInvitesOutcome, Error, InviteOutcome, InviteView, Ledger,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The gRPC adapter of the referral use cases.
pub struct ReferralsApi {
    ledger: Ledger,
}

impl ReferralsApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl ReferralsRpc for ReferralsApi {
    async fn create_invites(
        &self,
        request: Request<proto::CreateInvitesRequest>,
    ) -> Result<Response<proto::CreateInvitesResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let max = usize::try_from(MAX_INVITES_PER_CALL).unwrap_or(100);
        let contacts = parse_contacts(&request.contacts, max)?;
        if contacts.is_empty() {
            return Err(Error::invalid("contacts", "at least one contact is required").into());
        }
        let command = CreateInvitesCommand {
            program: ProgramId::parse(&request.program_id).map_err(Error::from)?,
            referrer: MemberId::parse(&request.referrer_member_id).map_err(Error::from)?,
            idempotency_key: IdempotencyKey::parse(&caller.name, &request.idempotency_key)
                .map_err(Error::from)?,
            contacts,
        };
        let outcome = self.ledger.create_invites(command).await?;
        Ok(Response::new(create_invites_message(
            &request.referrer_member_id,
            outcome,
        )))
    }

    async fn accept_invite(
        &self,
        request: Request<proto::AcceptInviteRequest>,
    ) -> Result<Response<proto::AcceptInviteResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let code = parse_code(&request.code)?;
        let referee = MemberId::parse(&request.referee_member_id).map_err(Error::from)?;
        let key =
            IdempotencyKey::parse(&caller.name, &request.idempotency_key).map_err(Error::from)?;
        let outcome = self
            .ledger
            .accept_invite(program, code, referee, key)
            .await?;
        Ok(Response::new(proto::AcceptInviteResponse {
            change: Some(change_message(outcome)),
        }))
    }

    async fn convert_invite(
        &self,
        request: Request<proto::ConvertInviteRequest>,
    ) -> Result<Response<proto::ConvertInviteResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let code = parse_code(&request.code)?;
        let key =
            IdempotencyKey::parse(&caller.name, &request.idempotency_key).map_err(Error::from)?;
        let outcome = self.ledger.convert_invite(program, code, key).await?;
        Ok(Response::new(proto::ConvertInviteResponse {
            change: Some(change_message(outcome)),
        }))
    }

    async fn revoke_invite(
        &self,
        request: Request<proto::RevokeInviteRequest>,
    ) -> Result<Response<proto::RevokeInviteResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let code = parse_code(&request.code)?;
        let key =
            IdempotencyKey::parse(&caller.name, &request.idempotency_key).map_err(Error::from)?;
        let outcome = self.ledger.revoke_invite(program, code, key).await?;
        Ok(Response::new(proto::RevokeInviteResponse {
            change: Some(change_message(outcome)),
        }))
    }

    async fn list_invites(
        &self,
        request: Request<proto::ListInvitesRequest>,
    ) -> Result<Response<proto::ListInvitesResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let referrer = MemberId::parse(&request.referrer_member_id).map_err(Error::from)?;
        let status = match proto::InviteStatus::try_from(request.status) {
            Ok(proto::InviteStatus::Unspecified) => None,
            Ok(status) => Some(status_of(status)),
            Err(_) => {
                return Err(Error::invalid("status", "is not an InviteStatus").into());
            }
        };
        let page_size = match request.page_size {
            0 => 50,
            size @ 1..=200 => usize::try_from(size).unwrap_or(50),
            _ => return Err(Error::invalid("page_size", "must be between 0 and 200").into()),
        };
        let page_token =
            if request.page_token.is_empty() {
                None
            } else {
                Some(Uuid::parse_str(&request.page_token).map_err(|_| {
                    Error::invalid("page_token", "is not a token this API returned")
                })?)
            };
        let page = self
            .ledger
            .list_invites(&program, referrer, status, page_size, page_token)
            .await?;
        Ok(Response::new(proto::ListInvitesResponse {
            invites: page.invites.into_iter().map(invite_message).collect(),
            next_page_token: page
                .next_page_token
                .map(|token| token.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_referral_stats(
        &self,
        request: Request<proto::GetReferralStatsRequest>,
    ) -> Result<Response<proto::GetReferralStatsResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let member = MemberId::parse(&request.member_id).map_err(Error::from)?;
        let stats = self.ledger.referral_stats(&program, member).await?;
        Ok(Response::new(proto::GetReferralStatsResponse {
            sent: stats.sent,
            pending: stats.pending,
            accepted: stats.accepted,
            converted: stats.converted,
            expired: stats.expired,
            revoked: stats.revoked,
            superseded: stats.superseded,
            clawed_back: stats.clawed_back,
            remaining_today: stats.remaining_today,
            remaining_lifetime: stats.remaining_lifetime,
            points_earned: stats.points_earned,
            referred_by_member_id: stats
                .referred_by
                .map(|member| member.to_string())
                .unwrap_or_default(),
        }))
    }
}

fn parse_code(code: &str) -> Result<String, Error> {
    if plausible_invite_code(code) {
        Ok(code.to_owned())
    } else {
        Err(Error::invalid(
            "code",
            "is not an invite code (16 to 64 URL-safe characters)",
        ))
    }
}

fn status_of(status: proto::InviteStatus) -> InviteStatus {
    match status {
        proto::InviteStatus::Pending | proto::InviteStatus::Unspecified => InviteStatus::Pending,
        proto::InviteStatus::Accepted => InviteStatus::Accepted,
        proto::InviteStatus::Converted => InviteStatus::Converted,
        proto::InviteStatus::ClawedBack => InviteStatus::ClawedBack,
        proto::InviteStatus::Expired => InviteStatus::Expired,
        proto::InviteStatus::Revoked => InviteStatus::Revoked,
        proto::InviteStatus::Superseded => InviteStatus::Superseded,
    }
}

fn status_message(status: InviteStatus) -> proto::InviteStatus {
    match status {
        InviteStatus::Pending => proto::InviteStatus::Pending,
        InviteStatus::Accepted => proto::InviteStatus::Accepted,
        InviteStatus::Converted => proto::InviteStatus::Converted,
        InviteStatus::ClawedBack => proto::InviteStatus::ClawedBack,
        InviteStatus::Expired => proto::InviteStatus::Expired,
        InviteStatus::Revoked => proto::InviteStatus::Revoked,
        InviteStatus::Superseded => proto::InviteStatus::Superseded,
    }
}

fn invite_message(invite: InviteView) -> proto::Invite {
    let text = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    proto::Invite {
        invite_id: invite.invite_id.to_string(),
        code: invite.code,
        referrer_member_id: invite.referrer.to_string(),
        status: status_message(invite.status) as i32,
        sent_at: Some(timestamp(invite.sent_at)),
        expires_at: Some(timestamp(invite.expires_at)),
        referee_member_id: invite
            .referee
            .map(|member| member.to_string())
            .unwrap_or_default(),
        accepted_at: invite.accepted_at.map(timestamp),
        converted_at: invite.converted_at.map(timestamp),
        qualifying_entry_id: text(invite.qualifying_entry_id),
        referrer_entry_id: text(invite.referrer_entry_id),
        referee_entry_id: text(invite.referee_entry_id),
        clawed_back_at: invite.clawed_back_at.map(timestamp),
        closed_at: invite.closed_at.map(timestamp),
    }
}

fn create_invites_message(
    referrer: &str,
    outcome: CreateInvitesOutcome,
) -> proto::CreateInvitesResponse {
    let sent_at = Some(timestamp(outcome.sent_at));
    let results = outcome
        .results
        .into_iter()
        .map(|result| {
            let refusal = match result.refused.as_deref() {
                None => proto::InviteRefusal::Unspecified,
                Some("own_contact") => proto::InviteRefusal::OwnContact,
                Some("already_member") => proto::InviteRefusal::AlreadyMember,
                Some("already_invited") => proto::InviteRefusal::AlreadyInvited,
                Some(_) => proto::InviteRefusal::DuplicateInBatch,
            };
            let invite = result
                .invite_id
                .zip(result.code)
                .zip(result.expires_at)
                .map(|((invite_id, code), expires_at)| proto::Invite {
                    sent_at,
                    invite_id: invite_id.to_string(),
                    code,
                    referrer_member_id: referrer.to_owned(),
                    status: proto::InviteStatus::Pending as i32,
                    expires_at: Some(timestamp(expires_at)),
                    ..Default::default()
                });
            proto::InviteResult {
                index: i32::try_from(result.index).unwrap_or(i32::MAX),
                invite,
                refusal: refusal as i32,
            }
        })
        .collect();
    proto::CreateInvitesResponse {
        entry_id: outcome.entry_id,
        results,
        remaining_today: outcome.remaining_today,
        remaining_lifetime: outcome.remaining_lifetime,
        replayed: outcome.replayed,
    }
}

fn change_message(outcome: InviteOutcome) -> proto::InviteChange {
    let status = InviteStatus::parse(&outcome.status).unwrap_or(InviteStatus::Pending);
    proto::InviteChange {
        entry_id: outcome.entry_id,
        invite_id: outcome.invite_id.to_string(),
        status: status_message(status) as i32,
        referrer_member_id: outcome.referrer_member_id,
        referee_member_id: outcome.referee_member_id.unwrap_or_default(),
        referrer_bonus_entry_id: outcome.referrer_bonus_entry_id.unwrap_or_default(),
        referee_bonus_entry_id: outcome.referee_bonus_entry_id.unwrap_or_default(),
        replayed: outcome.replayed,
    }
}
