//! `flash.loyalty.v1.Programs`.
use super::proto::{self, programs_server::Programs as ProgramsRpc};
use super::timestamp;
use crate::domain::{InvalidField, ProgramId, RulesDocument, Tier};
use crate::service::{ProgramView, Programs};
use tonic::{Request, Response, Status};

/// The gRPC adapter of the program use cases.
pub struct ProgramsApi {
    programs: Programs,
}

impl ProgramsApi {
    pub fn new(programs: Programs) -> Self {
        Self { programs }
    }
}

#[tonic::async_trait]
impl ProgramsRpc for ProgramsApi {
    async fn create_program(
        &self,
        request: Request<proto::CreateProgramRequest>,
    ) -> Result<Response<proto::CreateProgramResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(crate::service::Error::from)?;
        let rules = rules_document(request.rules)?;
        let (stored, replayed) = self
            .programs
            .create(program, request.name, rules, caller.name.as_str())
            .await?;
        Ok(Response::new(proto::CreateProgramResponse {
            program: Some(program_message(stored)),
            replayed,
        }))
    }

    async fn get_program(
        &self,
        request: Request<proto::GetProgramRequest>,
    ) -> Result<Response<proto::GetProgramResponse>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(crate::service::Error::from)?;
        let stored = self.programs.get(&program).await?;
        Ok(Response::new(proto::GetProgramResponse {
            program: Some(program_message(stored)),
        }))
    }

    async fn update_program(
        &self,
        request: Request<proto::UpdateProgramRequest>,
    ) -> Result<Response<proto::UpdateProgramResponse>, Status> {
        let (caller, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(crate::service::Error::from)?;
        let rules = rules_document(request.rules)?;
        let expected = match request.expected_rules_version {
            0 => None,
            version if version > 0 => Some(version),
            _ => {
                return Err(crate::service::Error::invalid(
                    "expected_rules_version",
                    "must not be negative",
                )
                .into())
            }
        };
        let name = Some(request.name).filter(|name| !name.is_empty());
        let (stored, unchanged) = self
            .programs
            .update(program, name, rules, expected, caller.name.as_str())
            .await?;
        Ok(Response::new(proto::UpdateProgramResponse {
            program: Some(program_message(stored)),
            unchanged,
        }))
    }
}

fn rules_document(
    rules: Option<proto::ProgramRules>,
) -> Result<RulesDocument, crate::service::Error> {
    let rules = rules.ok_or_else(|| InvalidField::new("rules", "is required"))?;
    let defaults = RulesDocument::earning(
        &rules.currency,
        &rules.timezone,
        rules.base_rate_bp,
        rules.min_amount_minor,
        rules.daily_cap_points,
        rules.points_validity_days,
    );
    Ok(RulesDocument {
        tier_window_months: rules
            .tier_window_months
            .unwrap_or(defaults.tier_window_months),
        grace_days: rules.grace_days.unwrap_or(defaults.grace_days),
        grace_reminder_days: rules.grace_reminder_days,
        reupgrade_window_days: rules
            .reupgrade_window_days
            .unwrap_or(defaults.reupgrade_window_days),
        reupgrade_bonus_points: rules.reupgrade_bonus_points.unwrap_or(0),
        birthday_bonus_points: rules.birthday_bonus_points.unwrap_or(0),
        reengagement_after_days: rules.reengagement_after_days,
        reengagement_bonus_points: rules.reengagement_bonus_points.unwrap_or(0),
        expiring_soon_days: rules
            .expiring_soon_days
            .unwrap_or(defaults.expiring_soon_days),
        events_retention_days: rules
            .events_retention_days
            .unwrap_or(defaults.events_retention_days),
        referrer_points: rules.referrer_points.unwrap_or(0),
        referee_points: rules.referee_points.unwrap_or(0),
        invite_ttl_days: rules.invite_ttl_days.unwrap_or(defaults.invite_ttl_days),
        max_invites_per_batch: rules
            .max_invites_per_batch
            .unwrap_or(defaults.max_invites_per_batch),
        max_invites_per_day: rules
            .max_invites_per_day
            .unwrap_or(defaults.max_invites_per_day),
        max_invites_lifetime: rules
            .max_invites_lifetime
            .unwrap_or(defaults.max_invites_lifetime),
        referral_qualify_min_amount_minor: rules.referral_qualify_min_amount_minor.unwrap_or(0),
        referral_clawback_days: rules
            .referral_clawback_days
            .unwrap_or(defaults.referral_clawback_days),
        graph_snapshot_hour: rules
            .graph_snapshot_hour
            .unwrap_or(defaults.graph_snapshot_hour),
        graph_snapshot_retention_days: rules
            .graph_snapshot_retention_days
            .unwrap_or(defaults.graph_snapshot_retention_days),
        tiers: rules
            .tiers
            .into_iter()
            .map(|tier| Tier {
                code: tier.code,
                name: tier.name,
                qualify_points: tier.qualify_points,
                maintain_points: tier.maintain_points,
                multiplier_bp: tier.multiplier_bp,
            })
            .collect(),
        ..defaults
    })
}

fn program_message(program: ProgramView) -> proto::Program {
    let rules = program.rules;
    proto::Program {
        program_id: program.program_id,
        name: program.name,
        rules: Some(proto::ProgramRules {
            currency: rules.currency,
            timezone: rules.timezone,
            base_rate_bp: rules.base_rate_bp,
            min_amount_minor: rules.min_amount_minor,
            daily_cap_points: rules.daily_cap_points,
            points_validity_days: rules.points_validity_days,
            tiers: rules
                .tiers
                .into_iter()
                .map(|tier| proto::Tier {
                    code: tier.code,
                    name: tier.name,
                    qualify_points: tier.qualify_points,
                    maintain_points: tier.maintain_points,
                    multiplier_bp: tier.multiplier_bp,
                })
                .collect(),
            tier_window_months: Some(rules.tier_window_months),
            grace_days: Some(rules.grace_days),
            grace_reminder_days: rules.grace_reminder_days,
            reupgrade_window_days: Some(rules.reupgrade_window_days),
            reupgrade_bonus_points: Some(rules.reupgrade_bonus_points),
            birthday_bonus_points: Some(rules.birthday_bonus_points),
            reengagement_after_days: rules.reengagement_after_days,
            reengagement_bonus_points: Some(rules.reengagement_bonus_points),
            expiring_soon_days: Some(rules.expiring_soon_days),
            events_retention_days: Some(rules.events_retention_days),
            referrer_points: Some(rules.referrer_points),
            referee_points: Some(rules.referee_points),
            invite_ttl_days: Some(rules.invite_ttl_days),
            max_invites_per_batch: Some(rules.max_invites_per_batch),
            max_invites_per_day: Some(rules.max_invites_per_day),
            max_invites_lifetime: Some(rules.max_invites_lifetime),
            referral_qualify_min_amount_minor: Some(rules.referral_qualify_min_amount_minor),
            referral_clawback_days: Some(rules.referral_clawback_days),
            graph_snapshot_hour: Some(rules.graph_snapshot_hour),
            graph_snapshot_retention_days: Some(rules.graph_snapshot_retention_days),
        }),
        rules_version: program.rules_version,
        created_at: Some(timestamp(program.created_at)),
        updated_at: Some(timestamp(program.updated_at)),
    }
}
