//! Bonus credits: points granted for a cause other than a purchase (birthday,
//! re-engagement, re-upgrade, later referrals). Each is a `bonus` entry with its own batch,
//! through the same write as every credit, under a key derived from its cause — a second
//! run of the same cause pays nothing.
use super::tiers::Upgrade;
use super::{run_to_completion, Error, Ledger, Opened, Outcome, Unit};
use crate::domain::{EntryId, EntryKind, EventType, IdempotencyKey, MemberId, ProgramId};
use crate::store::events::NewEvent;
use crate::store::{entries, mutation};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// Why a bonus is paid; its key is derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BonusCause {
    /// The member's birthday in `year` (program-local).
    Birthday { year: i32 },
    /// An inactive spell, named by the last purchase award before it (None: never earned
    /// since enrolling).
    Reengagement { last_award: Option<EntryId> },
    /// Re-qualifying for a tier after the demotion `demotion` (a tier change).
    Reupgrade { demotion: Uuid },
    /// A converted referral: its invite, and the side paid.
    Referral { invite: Uuid, side: ReferralSide },
}

/// Which side of a referral a credit pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralSide {
    Referrer,
    Referee,
}

impl ReferralSide {
    pub fn as_str(self) -> &'static str {
        match self {
            ReferralSide::Referrer => "referrer",
            ReferralSide::Referee => "referee",
        }
    }
}

impl BonusCause {
    /// The entry's reason, and the `reason` of `bonus.awarded`.
    pub fn reason(&self) -> &'static str {
        match self {
            BonusCause::Birthday { .. } => "birthday",
            BonusCause::Reengagement { .. } => "reengagement",
            BonusCause::Reupgrade { .. } => "reupgrade",
            BonusCause::Referral { .. } => "referral",
        }
    }

    /// Tier bonuses never count toward status, so status cannot feed itself.
    pub fn counts_toward_status(&self) -> bool {
        !matches!(self, BonusCause::Reupgrade { .. })
    }

    /// The key the cause always makes.
    pub fn key(&self, member: MemberId) -> IdempotencyKey {
        IdempotencyKey::derived(&match self {
            BonusCause::Birthday { year } => format!("birthday:{member}:{year}"),
            BonusCause::Reengagement { last_award } => match last_award {
                Some(entry) => format!("reengagement:{member}:{entry}"),
                None => format!("reengagement:{member}:enrolled"),
            },
            BonusCause::Reupgrade { demotion } => format!("reupgrade:{demotion}"),
            BonusCause::Referral { invite, side } => format!("referral:{invite}:{}", side.as_str()),
        })
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            BonusCause::Birthday { year } => json!({ "birthday_year": year }),
            BonusCause::Reengagement { last_award } => {
                json!({ "last_award_entry_id": last_award.map(|e| e.to_string()) })
            }
            BonusCause::Reupgrade { demotion } => {
                json!({ "demotion_change_id": demotion.to_string() })
            }
            BonusCause::Referral { invite, side } => {
                json!({ "invite_id": invite.to_string(), "side": side.as_str() })
            }
        }
    }
}

/// A bonus to credit.
#[derive(Debug, Clone)]
pub struct BonusCredit {
    pub member: MemberId,
    pub cause: BonusCause,
    pub points: i64,
}

impl BonusCredit {
    /// The request stored for the derived key: the cause, not the amount, so a rules change
    /// between two runs of one cause still pays it once.
    fn canonical(&self) -> serde_json::Value {
        json!({
            "op": "bonus",
            "member_id": self.member.to_string(),
            "reason": self.cause.reason(),
            "cause": self.cause.describe(),
        })
    }
}

/// The outcome of a bonus; stored with its entry and returned on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BonusOutcome {
    pub entry_id: String,
    pub member_id: String,
    pub reason: String,
    pub points: i64,
    pub batch_id: Uuid,
    pub balance_points: i64,
    #[serde(skip)]
    pub replayed: bool,
}

impl Outcome for BonusOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

impl Ledger {
    /// Pays a bonus in its own unit of work under the member's lock (the jobs). A cause
    /// already paid answers the first payment, marked replayed.
    #[tracing::instrument(name = "bonus", skip_all, fields(program = %program, member = %credit.member, reason = credit.cause.reason()))]
    pub async fn pay_bonus(
        &self,
        program: ProgramId,
        credit: BonusCredit,
    ) -> Result<BonusOutcome, Error> {
        let ledger = self.clone();
        run_to_completion(async move {
            let key = credit.cause.key(credit.member);
            let mut client = ledger.db.get().await?;
            let mut unit = match ledger
                .open(
                    &mut client,
                    &program,
                    credit.member,
                    &key,
                    &credit.canonical(),
                )
                .await?
            {
                Opened::Replay(outcome) => return Ok(outcome),
                Opened::Fresh(unit) => unit,
            };
            unit.member()?;
            let (outcome, upgrade) = credit_bonus(&mut unit, &key, &credit).await?;
            ledger
                .write_upgrades(&mut unit, upgrade.into_iter().collect())
                .await?;
            unit.tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Pays a bonus inside another unit of work (the re-upgrade bonus of an upgrade):
    /// nothing when its cause was paid already.
    pub(super) async fn credit_derived_bonus(
        &self,
        unit: &mut Unit<'_>,
        credit: &BonusCredit,
    ) -> Result<Option<BonusOutcome>, Error> {
        let Some((outcome, upgrade)) = credit_in_unit(unit, credit).await? else {
            return Ok(None);
        };
        if upgrade.is_some() {
            return Err(Error::Unexpected(anyhow::anyhow!(
                "a {} bonus lifted a tier; only bonuses paid on their own may",
                credit.cause.reason()
            )));
        }
        Ok(Some(outcome))
    }
}

/// Pays a bonus inside another unit of work under its derived key, and returns the lift
/// it causes (to write after it); nothing when its cause was paid already.
pub(super) async fn credit_in_unit(
    unit: &mut Unit<'_>,
    credit: &BonusCredit,
) -> Result<Option<(BonusOutcome, Option<Upgrade>)>, Error> {
    let key = credit.cause.key(credit.member);
    let program = unit.tx.program().clone();
    if entries::find_by_key(&*unit.tx, &program, &key)
        .await?
        .is_some()
    {
        return Ok(None);
    }
    Ok(Some(credit_bonus(unit, &key, credit).await?))
}

/// Writes a bonus entry with its batch and `bonus.awarded`, counts it toward status when
/// its cause does, and returns the lift it causes (to write after it).
async fn credit_bonus(
    unit: &mut Unit<'_>,
    key: &IdempotencyKey,
    credit: &BonusCredit,
) -> Result<(BonusOutcome, Option<Upgrade>), Error> {
    if credit.points <= 0 {
        return Err(Error::Unexpected(anyhow::anyhow!(
            "a bonus of {} points",
            credit.points
        )));
    }
    let validity = Duration::days(i64::from(unit.rules.rules.document.points_validity_days));
    let batch = mutation::NewBatch {
        batch_id: Uuid::now_v7(),
        amount: credit.points,
        expires_at: unit.now + validity,
    };
    let entry_id = EntryId::generate();
    let outcome = BonusOutcome {
        entry_id: entry_id.to_string(),
        member_id: credit.member.to_string(),
        reason: credit.cause.reason().to_owned(),
        points: credit.points,
        batch_id: batch.batch_id,
        balance_points: unit.credit_balance(credit.member, credit.points)?,
        replayed: false,
    };
    let counts = credit.cause.counts_toward_status();
    let event = NewEvent::new(
        EventType::BonusAwarded,
        credit.member,
        json!({
            "entry_id": outcome.entry_id,
            "member_id": outcome.member_id,
            "reason": outcome.reason,
            "points": credit.points,
            "counts_toward_status": counts,
            "balance_points": outcome.balance_points,
            "cause": credit.cause.describe(),
        }),
    );
    let request = credit.canonical();
    let effects = mutation::Effects {
        member: credit.member,
        entry: entries::NewEntry {
            entry_id,
            kind: EntryKind::Bonus,
            points: credit.points,
            idempotency_key: key,
            request: &request,
            outcome: &outcome.to_json(),
            rules_version: unit.rules.version,
            created_at: unit.now,
            purchase: None,
            reason: Some(credit.cause.reason()),
            actor: None,
            reversal: None,
        },
        credit: Some(batch),
        draws: &[],
        owed_delta: 0,
        status: counts.then_some((credit.points, unit.now)),
        events: &[event],
    };
    mutation::write(&unit.tx, &effects).await?;
    let upgrade = if counts {
        unit.count_status(credit.member, credit.points, entry_id)
    } else {
        None
    };
    Ok((outcome, upgrade))
}
