//! Member-get-member referrals: invites under the referrer's quotas, acceptance by a new
//! member, conversion on the referee's qualifying purchase (or explicitly) with both
//! credits paid through the ledger's bonus path under keys derived from the invite,
//! revocation, and the reads. Every operation that touches both members holds both
//! locks, taken in the one global order; invite transitions are conditional updates.
use super::bonus::{credit_in_unit, BonusCause, BonusCredit, ReferralSide};
use super::members::program_not_found;
use super::{run_to_completion, Error, Ledger, Opened, Outcome, ReferralRefusal, Unit};
use crate::domain::{
    invite_code, local_day, local_day_bounds, Contact, ContactHash, EntryId, EntryKind, EventType,
    IdempotencyKey, InviteRefusal, InviteStatus, MemberId, ProgramId,
};
use crate::store::events::NewEvent;
use crate::store::referrals::{Conversion, NewInvite, StoredInvite};
use crate::store::{self, entries, mutation};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;

/// The most invites one ListInvites page returns.
pub const INVITE_PAGE_MAX: usize = 200;

/// Invites to send, parsed at the edge.
#[derive(Debug, Clone)]
pub struct CreateInvitesCommand {
    pub program: ProgramId,
    pub referrer: MemberId,
    pub idempotency_key: IdempotencyKey,
    pub contacts: Vec<Contact>,
}

/// One contact's result: an invite, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteSent {
    /// The contact's index in the request.
    pub index: usize,
    pub invite_id: Option<Uuid>,
    pub code: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `own_contact`, `already_member`, `already_invited` or `duplicate_in_batch`.
    pub refused: Option<String>,
}

/// The outcome of CreateInvites; stored with its entry and returned as-is on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateInvitesOutcome {
    pub entry_id: String,
    pub sent_at: DateTime<Utc>,
    pub results: Vec<InviteSent>,
    /// Invites the referrer may still send today and in all, after this call.
    pub remaining_today: i64,
    pub remaining_lifetime: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for CreateInvitesOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

/// The outcome of AcceptInvite, ConvertInvite and RevokeInvite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteOutcome {
    pub entry_id: String,
    pub invite_id: Uuid,
    /// The invite's status after the operation.
    pub status: String,
    pub referrer_member_id: String,
    pub referee_member_id: Option<String>,
    /// The credits, when the operation converted the referral (none for a side the rules
    /// pay nothing).
    pub referrer_bonus_entry_id: Option<String>,
    pub referee_bonus_entry_id: Option<String>,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for InviteOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

/// An invite as the reads show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteView {
    pub invite_id: Uuid,
    pub code: String,
    pub referrer: MemberId,
    pub status: InviteStatus,
    pub sent_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub referee: Option<MemberId>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub converted_at: Option<DateTime<Utc>>,
    pub qualifying_entry_id: Option<Uuid>,
    pub referrer_entry_id: Option<Uuid>,
    pub referee_entry_id: Option<Uuid>,
    pub clawed_back_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl From<StoredInvite> for InviteView {
    fn from(invite: StoredInvite) -> Self {
        Self {
            invite_id: invite.invite_id,
            code: invite.code,
            referrer: invite.referrer,
            status: invite.status,
            sent_at: invite.sent_at,
            expires_at: invite.expires_at,
            referee: invite.referee,
            accepted_at: invite.accepted_at,
            converted_at: invite.converted_at,
            qualifying_entry_id: invite.qualifying_entry_id,
            referrer_entry_id: invite.referrer_entry_id,
            referee_entry_id: invite.referee_entry_id,
            clawed_back_at: invite.clawed_back_at,
            closed_at: invite.closed_at,
        }
    }
}

/// A page of invites, newest first.
#[derive(Debug, Clone)]
pub struct InvitePage {
    pub invites: Vec<InviteView>,
    pub next_page_token: Option<Uuid>,
}

/// A member's referral figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralStats {
    /// Invites sent, and how many are in each status now.
    pub sent: i64,
    pub pending: i64,
    pub accepted: i64,
    pub converted: i64,
    pub clawed_back: i64,
    pub expired: i64,
    pub revoked: i64,
    pub superseded: i64,
    pub remaining_today: i64,
    pub remaining_lifetime: i64,
    /// Points credited by referrals, either side, net of clawbacks.
    pub points_earned: i64,
    /// Who referred this member.
    pub referred_by: Option<MemberId>,
}

impl Ledger {
    /// The keyed hash of a contact; INTERNAL when this process has no key (one-shot
    /// commands take no contacts).
    pub(super) fn hash_contact(&self, contact: &Contact) -> Result<ContactHash, Error> {
        let key = self.contact_key.as_ref().ok_or_else(|| {
            Error::Unexpected(anyhow::anyhow!("this process has no contact hash key"))
        })?;
        Ok(key.hash(contact))
    }

    /// Sends one invite per contact, refusing (in the results) the referrer's own
    /// contacts, members' contacts, contacts it invited already and repeats; refuses the
    /// whole call with RESOURCE_EXHAUSTED when it would pass a quota.
    #[tracing::instrument(name = "create_invites", skip_all, fields(program = %command.program, referrer = %command.referrer, key = command.idempotency_key.as_str()))]
    pub async fn create_invites(
        &self,
        command: CreateInvitesCommand,
    ) -> Result<CreateInvitesOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let hashes: Vec<ContactHash> = command
                .contacts
                .iter()
                .map(|contact| ledger.hash_contact(contact))
                .collect::<Result<_, _>>()?;
            // The request as stored: hashes, never the contacts.
            let request = json!({
                "op": "create_invites",
                "referrer_member_id": command.referrer.to_string(),
                "contacts": hashes.iter().map(|hash| hex(&hash.0)).collect::<Vec<_>>(),
            });
            let mut client = ledger.db.get().await?;
            let unit = match ledger
                .open(
                    &mut client,
                    &command.program,
                    command.referrer,
                    &command.idempotency_key,
                    &request,
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            unit.member()?;
            let rules = unit.rules.clone();
            let document = &rules.rules.document;
            let per_batch = i64::from(document.max_invites_per_batch);
            let asked = i64::try_from(hashes.len()).unwrap_or(i64::MAX);
            if asked > per_batch {
                return Err(Error::InviteQuotaExceeded {
                    quota: "per_batch",
                    limit: per_batch,
                    remaining: per_batch,
                    asked,
                    retry_after: None,
                });
            }
            let program = command.program.clone();
            let owners =
                store::referrals::contact_owners(unit.tx.cached(), &program, &hashes).await?;
            let pending = store::referrals::pending_from(
                unit.tx.cached(),
                &program,
                command.referrer,
                &hashes,
            )
            .await?;
            let mut seen = HashSet::new();
            let mut refusals: Vec<Option<InviteRefusal>> = Vec::with_capacity(hashes.len());
            for hash in &hashes {
                let owner = owners.iter().find(|(owned, _)| owned == hash).map(|o| o.1);
                refusals.push(if !seen.insert(*hash) {
                    Some(InviteRefusal::DuplicateInBatch)
                } else if owner == Some(command.referrer) {
                    Some(InviteRefusal::OwnContact)
                } else if owner.is_some() {
                    Some(InviteRefusal::AlreadyMember)
                } else if pending.contains(hash) {
                    Some(InviteRefusal::AlreadyInvited)
                } else {
                    None
                });
            }
            let now = unit.now;
            let day = local_day(now, rules.rules.timezone);
            let (used_today, used_lifetime) =
                store::referrals::quota_used(unit.tx.cached(), &program, command.referrer, day)
                    .await?;
            let sending =
                i64::try_from(refusals.iter().filter(|r| r.is_none()).count()).unwrap_or(i64::MAX);
            for (quota, limit, used) in [
                (
                    "per_day",
                    i64::from(document.max_invites_per_day),
                    used_today,
                ),
                (
                    "lifetime",
                    i64::from(document.max_invites_lifetime),
                    used_lifetime,
                ),
            ] {
                if used + sending > limit {
                    let tomorrow = local_day_bounds(day, rules.rules.timezone).1;
                    return Err(Error::InviteQuotaExceeded {
                        quota,
                        limit,
                        remaining: (limit - used).max(0),
                        asked: sending,
                        retry_after: (quota == "per_day")
                            .then(|| (tomorrow - now).to_std().ok())
                            .flatten(),
                    });
                }
            }
            let expires_at = now + Duration::days(i64::from(document.invite_ttl_days));
            let mut invites = vec![];
            let mut results = vec![];
            for (index, ((contact, hash), refusal)) in command
                .contacts
                .iter()
                .zip(&hashes)
                .zip(&refusals)
                .enumerate()
            {
                if let Some(refusal) = refusal {
                    results.push(InviteSent {
                        index,
                        invite_id: None,
                        code: None,
                        expires_at: None,
                        refused: Some(refusal.as_str().to_owned()),
                    });
                    continue;
                }
                let invite = NewInvite {
                    invite_id: Uuid::now_v7(),
                    code: invite_code(random_bytes()?),
                    contact_hash: *hash,
                    contact_kind: contact.kind(),
                    expires_at,
                };
                results.push(InviteSent {
                    index,
                    invite_id: Some(invite.invite_id),
                    code: Some(invite.code.clone()),
                    expires_at: Some(expires_at),
                    refused: None,
                });
                invites.push(invite);
            }
            let entry_id = EntryId::generate();
            let outcome = CreateInvitesOutcome {
                entry_id: entry_id.to_string(),
                sent_at: now,
                results,
                remaining_today: i64::from(document.max_invites_per_day) - used_today - sending,
                remaining_lifetime: i64::from(document.max_invites_lifetime)
                    - used_lifetime
                    - sending,
                replayed: false,
            };
            let events: Vec<NewEvent> = invites
                .iter()
                .map(|invite| {
                    NewEvent::new(
                        EventType::ReferralInvited,
                        command.referrer,
                        json!({
                            "invite_id": invite.invite_id.to_string(),
                            "referrer_member_id": command.referrer.to_string(),
                            "contact_kind": invite.contact_kind.as_str(),
                            "expires_at": expires_at,
                        }),
                    )
                })
                .collect();
            write_referral_entry(
                &unit,
                command.referrer,
                entry_id,
                &command.idempotency_key,
                &request,
                &outcome.to_json(),
                "invites sent",
                &events,
            )
            .await?;
            store::referrals::insert(
                &unit.tx,
                command.referrer,
                entry_id.as_uuid(),
                now,
                day,
                &invites,
            )
            .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// The invited person joined: a pending, unexpired invite becomes accepted for the
    /// referee (a new member, not the referrer, never referred before); every other
    /// pending invite to the same person is superseded. When the referee already made a
    /// qualifying purchase, the referral converts at once.
    #[tracing::instrument(name = "accept_invite", skip_all, fields(program = %program, referee = %referee, key = key.as_str()))]
    pub async fn accept_invite(
        &self,
        program: ProgramId,
        code: String,
        referee: MemberId,
        key: IdempotencyKey,
    ) -> Result<InviteOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let invite = ledger.invite_by_code(&program, &code).await?;
            if invite.referrer == referee {
                return Err(Error::ReferralRefused(ReferralRefusal::SelfReferral));
            }
            let request = json!({
                "op": "accept_invite",
                "invite_id": invite.invite_id.to_string(),
                "referee_member_id": referee.to_string(),
            });
            let mut client = ledger.db.get().await?;
            let mut unit = match ledger
                .open_locking(
                    &mut client,
                    &program,
                    referee,
                    &key,
                    &request,
                    &[invite.referrer],
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let invite = ledger.invite_under_lock(&unit, invite.invite_id).await?;
            let now = unit.now;
            let row = unit.member_row(referee)?.clone();
            open_for(
                &invite,
                now,
                InviteStatus::Pending,
                "only a pending invite can be accepted",
            )?;
            if row.referral.is_some() {
                return Err(Error::ReferralRefused(ReferralRefusal::AlreadyReferred));
            }
            if row.enrolled_at <= invite.sent_at {
                return Err(Error::ReferralRefused(
                    ReferralRefusal::EnrolledBeforeInvite,
                ));
            }
            let accepted = NewEvent::new(
                EventType::ReferralAccepted,
                invite.referrer,
                json!({
                    "invite_id": invite.invite_id.to_string(),
                    "referrer_member_id": invite.referrer.to_string(),
                    "referee_member_id": referee.to_string(),
                }),
            );
            if !store::referrals::accept(&unit.tx, invite.invite_id, referee, now, &[accepted])
                .await?
            {
                return Err(Error::InviteNotOpen {
                    status: "expired",
                    needs: "only a pending invite can be accepted",
                });
            }
            // Every other pending invite to this person: the same contact, or any contact
            // the referee enrolled with.
            let mut contacts =
                store::referrals::contacts_of(unit.tx.cached(), &program, referee).await?;
            contacts.push(invite.contact_hash);
            let superseded =
                store::referrals::supersede(&unit.tx, &contacts, invite.invite_id, now).await?;
            let closed: Vec<NewEvent> = superseded
                .iter()
                .map(|(invite_id, referrer)| closed_event(*invite_id, *referrer, "superseded"))
                .collect();
            store::events::append(&unit.tx, now, &closed).await?;
            let min_amount = unit.rules.rules.document.referral_qualify_min_amount_minor;
            let qualifying =
                store::referrals::qualifying_award(&unit.tx, referee, min_amount).await?;
            let credits = match qualifying {
                Some(entry) => Some(
                    ledger
                        .convert_in_unit(
                            &mut unit,
                            invite.invite_id,
                            invite.referrer,
                            referee,
                            Some(EntryId::from_uuid(entry)),
                        )
                        .await?,
                ),
                None => None,
            };
            let entry_id = EntryId::generate();
            let outcome = InviteOutcome {
                entry_id: entry_id.to_string(),
                invite_id: invite.invite_id,
                status: if credits.is_some() {
                    "converted"
                } else {
                    "accepted"
                }
                .to_owned(),
                referrer_member_id: invite.referrer.to_string(),
                referee_member_id: Some(referee.to_string()),
                referrer_bonus_entry_id: credits
                    .and_then(|c| c.referrer_entry)
                    .map(|e| e.to_string()),
                referee_bonus_entry_id: credits
                    .and_then(|c| c.referee_entry)
                    .map(|e| e.to_string()),
                replayed: false,
            };
            write_referral_entry(
                &unit,
                referee,
                entry_id,
                &key,
                &request,
                &outcome.to_json(),
                "invite accepted",
                &[],
            )
            .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Converts an accepted invite now, for a signup service that decides qualification
    /// itself: both credits, once.
    #[tracing::instrument(name = "convert_invite", skip_all, fields(program = %program, key = key.as_str()))]
    pub async fn convert_invite(
        &self,
        program: ProgramId,
        code: String,
        key: IdempotencyKey,
    ) -> Result<InviteOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let invite = ledger.invite_by_code(&program, &code).await?;
            let Some(referee) = invite.referee else {
                return Err(Error::InviteNotOpen {
                    status: invite.status.as_str(),
                    needs: "only an accepted invite can be converted",
                });
            };
            let request = json!({
                "op": "convert_invite",
                "invite_id": invite.invite_id.to_string(),
            });
            let mut client = ledger.db.get().await?;
            let mut unit = match ledger
                .open_locking(
                    &mut client,
                    &program,
                    referee,
                    &key,
                    &request,
                    &[invite.referrer],
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let invite = ledger.invite_under_lock(&unit, invite.invite_id).await?;
            if invite.status != InviteStatus::Accepted {
                return Err(Error::InviteNotOpen {
                    status: invite.status.as_str(),
                    needs: "only an accepted invite can be converted",
                });
            }
            let credits = ledger
                .convert_in_unit(&mut unit, invite.invite_id, invite.referrer, referee, None)
                .await?;
            let entry_id = EntryId::generate();
            let outcome = InviteOutcome {
                entry_id: entry_id.to_string(),
                invite_id: invite.invite_id,
                status: "converted".to_owned(),
                referrer_member_id: invite.referrer.to_string(),
                referee_member_id: Some(referee.to_string()),
                referrer_bonus_entry_id: credits.referrer_entry.map(|e| e.to_string()),
                referee_bonus_entry_id: credits.referee_entry.map(|e| e.to_string()),
                replayed: false,
            };
            write_referral_entry(
                &unit,
                referee,
                entry_id,
                &key,
                &request,
                &outcome.to_json(),
                "invite converted",
                &[],
            )
            .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Withdraws a pending invite (the referrer's call).
    #[tracing::instrument(name = "revoke_invite", skip_all, fields(program = %program, key = key.as_str()))]
    pub async fn revoke_invite(
        &self,
        program: ProgramId,
        code: String,
        key: IdempotencyKey,
    ) -> Result<InviteOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let invite = ledger.invite_by_code(&program, &code).await?;
            let request = json!({
                "op": "revoke_invite",
                "invite_id": invite.invite_id.to_string(),
            });
            let mut client = ledger.db.get().await?;
            let unit = match ledger
                .open(&mut client, &program, invite.referrer, &key, &request)
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            let invite = ledger.invite_under_lock(&unit, invite.invite_id).await?;
            open_for(
                &invite,
                unit.now,
                InviteStatus::Pending,
                "only a pending invite can be revoked",
            )?;
            if !store::referrals::revoke(&unit.tx, invite.invite_id, unit.now).await? {
                return Err(Error::InviteNotOpen {
                    status: "expired",
                    needs: "only a pending invite can be revoked",
                });
            }
            let entry_id = EntryId::generate();
            let outcome = InviteOutcome {
                entry_id: entry_id.to_string(),
                invite_id: invite.invite_id,
                status: "revoked".to_owned(),
                referrer_member_id: invite.referrer.to_string(),
                referee_member_id: None,
                referrer_bonus_entry_id: None,
                referee_bonus_entry_id: None,
                replayed: false,
            };
            write_referral_entry(
                &unit,
                invite.referrer,
                entry_id,
                &key,
                &request,
                &outcome.to_json(),
                "invite revoked",
                &[closed_event(invite.invite_id, invite.referrer, "revoked")],
            )
            .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// A referrer's invites, newest first, of one status or all.
    pub async fn list_invites(
        &self,
        program: &ProgramId,
        referrer: MemberId,
        status: Option<InviteStatus>,
        page_size: usize,
        page_token: Option<Uuid>,
    ) -> Result<InvitePage, Error> {
        let client = self.db.get().await?;
        self.member_of(&client, program, referrer).await?;
        let size = page_size.clamp(1, INVITE_PAGE_MAX);
        let limit = i64::try_from(size).unwrap_or(50) + 1;
        let mut invites =
            store::referrals::list(&client, program, referrer, status, page_token, limit).await?;
        let next_page_token = if invites.len() > size {
            invites.truncate(size);
            invites.last().map(|invite| invite.invite_id)
        } else {
            None
        };
        Ok(InvitePage {
            invites: invites.into_iter().map(InviteView::from).collect(),
            next_page_token,
        })
    }

    /// A member's referral figures: invites by status, quotas left, points earned, who
    /// referred it.
    pub async fn referral_stats(
        &self,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<ReferralStats, Error> {
        let client = self.db.get().await?;
        let (version, row) = self.member_of(&client, program, member).await?;
        let rules = self.rules.get(&**client, program, version).await?;
        let document = &rules.rules.document;
        let day = local_day(self.clock.now(), rules.rules.timezone);
        let (counts, earned) = store::referrals::stats(&client, program, member).await?;
        let (used_today, used_lifetime) =
            store::referrals::quota_used(&client, program, member, day).await?;
        let mut stats = ReferralStats {
            remaining_today: (i64::from(document.max_invites_per_day) - used_today).max(0),
            remaining_lifetime: (i64::from(document.max_invites_lifetime) - used_lifetime).max(0),
            points_earned: i64::try_from(earned.0).map_err(|_| Error::FigureOutOfRange {
                field: "points_earned".into(),
                value: earned.0,
            })?,
            referred_by: row.referral.map(|(_, referrer)| referrer),
            ..ReferralStats::default()
        };
        for (status, count) in counts {
            stats.sent += count;
            *match status {
                InviteStatus::Pending => &mut stats.pending,
                InviteStatus::Accepted => &mut stats.accepted,
                InviteStatus::Converted => &mut stats.converted,
                InviteStatus::ClawedBack => &mut stats.clawed_back,
                InviteStatus::Expired => &mut stats.expired,
                InviteStatus::Revoked => &mut stats.revoked,
                InviteStatus::Superseded => &mut stats.superseded,
            } += count;
        }
        Ok(stats)
    }

    /// Pays both sides of a referral inside a unit holding both members' locks (bonus
    /// entries under keys derived from the invite, counted toward status) and marks the
    /// invite converted; the lifts the credits cause are written after them.
    pub(super) async fn convert_in_unit(
        &self,
        unit: &mut Unit<'_>,
        invite: Uuid,
        referrer: MemberId,
        referee: MemberId,
        qualifying_entry: Option<EntryId>,
    ) -> Result<Conversion, Error> {
        let document = unit.rules.rules.document.clone();
        let mut conversion = Conversion {
            invite,
            qualifying_entry: qualifying_entry.map(|entry| entry.as_uuid()),
            referrer_entry: None,
            referee_entry: None,
        };
        let mut upgrades = vec![];
        for (member, side, points) in [
            (referee, ReferralSide::Referee, document.referee_points),
            (referrer, ReferralSide::Referrer, document.referrer_points),
        ] {
            if points == 0 {
                continue;
            }
            let credit = BonusCredit {
                member,
                cause: BonusCause::Referral { invite, side },
                points,
            };
            if let Some((outcome, upgrade)) = credit_in_unit(unit, &credit).await? {
                let entry = outcome.entry_id.parse::<Uuid>().ok();
                match side {
                    ReferralSide::Referee => conversion.referee_entry = entry,
                    ReferralSide::Referrer => conversion.referrer_entry = entry,
                }
                upgrades.extend(upgrade);
            }
        }
        let event = NewEvent::new(
            EventType::ReferralConverted,
            referrer,
            json!({
                "invite_id": invite.to_string(),
                "referrer_member_id": referrer.to_string(),
                "referee_member_id": referee.to_string(),
                "qualifying_entry_id": conversion.qualifying_entry.map(|e| e.to_string()),
                "referrer_points": document.referrer_points,
                "referee_points": document.referee_points,
            }),
        );
        if !store::referrals::convert(&unit.tx, &conversion, unit.now, &[event]).await? {
            return Err(Error::InviteNotOpen {
                status: "converted",
                needs: "only an accepted invite can be converted",
            });
        }
        self.write_upgrades(unit, upgrades).await?;
        Ok(conversion)
    }

    async fn invite_by_code(&self, program: &ProgramId, code: &str) -> Result<StoredInvite, Error> {
        let client = self.db.get().await?;
        match store::referrals::by_code(&client, program, code).await? {
            Some(invite) => Ok(invite),
            None => {
                store::programs::get(&**client, program)
                    .await?
                    .ok_or_else(|| program_not_found(program))?;
                Err(Error::InviteNotFound {
                    program: program.clone(),
                })
            }
        }
    }

    /// The invite as it stands once the members' locks are held.
    async fn invite_under_lock(
        &self,
        unit: &Unit<'_>,
        invite: Uuid,
    ) -> Result<StoredInvite, Error> {
        store::referrals::by_id(unit.tx.cached(), unit.tx.program(), invite)
            .await?
            .ok_or_else(|| Error::InviteNotFound {
                program: unit.tx.program().clone(),
            })
    }

    async fn member_of(
        &self,
        client: &deadpool_postgres::Client,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<(i64, store::members::StoredMember), Error> {
        let (version, row) = store::members::get_with_program(client, program, member)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        let row = row.ok_or_else(|| Error::MemberNotFound {
            program: program.clone(),
            member,
        })?;
        Ok((version, row))
    }
}

/// FAILED_PRECONDITION unless the invite is in `wanted` (a pending invite past its expiry
/// counts as expired, whether or not the job marked it yet).
fn open_for(
    invite: &StoredInvite,
    now: DateTime<Utc>,
    wanted: InviteStatus,
    needs: &'static str,
) -> Result<(), Error> {
    let status = if invite.status == InviteStatus::Pending && invite.expires_at <= now {
        InviteStatus::Expired
    } else {
        invite.status
    };
    if status == wanted {
        Ok(())
    } else {
        Err(Error::InviteNotOpen {
            status: status.as_str(),
            needs,
        })
    }
}

/// A `referral.closed` event: an invite expired, revoked or superseded.
fn closed_event(invite: Uuid, referrer: MemberId, status: &str) -> NewEvent {
    NewEvent::new(
        EventType::ReferralClosed,
        referrer,
        json!({
            "invite_id": invite.to_string(),
            "referrer_member_id": referrer.to_string(),
            "status": status,
        }),
    )
}

/// The `referral` entry of an operation: no points; its key, request and outcome make the
/// operation idempotent.
#[allow(clippy::too_many_arguments)]
async fn write_referral_entry(
    unit: &Unit<'_>,
    member: MemberId,
    entry_id: EntryId,
    key: &IdempotencyKey,
    request: &serde_json::Value,
    outcome: &serde_json::Value,
    reason: &str,
    events: &[NewEvent],
) -> Result<(), Error> {
    let effects = mutation::Effects {
        member,
        entry: entries::NewEntry {
            entry_id,
            kind: EntryKind::Referral,
            points: 0,
            idempotency_key: key,
            request,
            outcome,
            rules_version: unit.rules.version,
            created_at: unit.now,
            purchase: None,
            reason: Some(reason),
            actor: None,
            reversal: None,
        },
        credit: None,
        draws: &[],
        owed_delta: 0,
        status: None,
        events,
    };
    mutation::write(&unit.tx, &effects).await?;
    Ok(())
}

/// 16 bytes from the operating system's generator.
fn random_bytes() -> Result<[u8; 16], Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::Unexpected(anyhow::anyhow!("no randomness: {error}")))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
