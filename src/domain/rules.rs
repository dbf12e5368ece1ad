//! A program's earning rules: the stored document and its validated form.
use super::{Currency, InvalidField};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Upper bound for thresholds and caps, so every sum of them stays far from i64::MAX.
pub const MAX_RULE_POINTS: i64 = 1_000_000_000_000;
/// At most 100 points per major unit.
const MAX_BASE_RATE_BP: i64 = 1_000_000;
/// At most a 10x multiplier.
const MAX_MULTIPLIER_BP: i64 = 100_000;
const MAX_VALIDITY_DAYS: i32 = 3660;
const MAX_TIERS: usize = 10;

/// One rank of the tier ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub code: String,
    pub name: String,
    pub qualify_points: i64,
    pub maintain_points: i64,
    pub multiplier_bp: i64,
}

/// The rules as the caller sent them and as they are stored (JSON in `program_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesDocument {
    pub currency: String,
    pub timezone: String,
    pub base_rate_bp: i64,
    pub min_amount_minor: i64,
    pub daily_cap_points: Option<i64>,
    pub points_validity_days: i32,
    pub tiers: Vec<Tier>,
    /// Status points are those earned in the last this many months (1–36).
    #[serde(default = "default_tier_window_months")]
    pub tier_window_months: i32,
    /// Days a member below its tier's maintain points keeps the tier before moving down.
    #[serde(default = "default_grace_days")]
    pub grace_days: i32,
    /// Days before a grace ends to warn again, each once per grace.
    #[serde(default)]
    pub grace_reminder_days: Vec<i32>,
    /// Re-qualifying this many days after a demotion from a tier pays the bonus below.
    #[serde(default = "default_reupgrade_window_days")]
    pub reupgrade_window_days: i32,
    /// Paid once per demotion on re-qualifying in time; 0: none. Never counts toward status.
    #[serde(default)]
    pub reupgrade_bonus_points: i64,
    /// Paid once a year on the member's birthday in the program's zone; 0: none.
    #[serde(default)]
    pub birthday_bonus_points: i64,
    /// Days without a purchase award after which the re-engagement bonus is paid; None: off.
    #[serde(default)]
    pub reengagement_after_days: Option<i32>,
    /// Paid once per inactive spell; 0: none.
    #[serde(default)]
    pub reengagement_bonus_points: i64,
    /// Days ahead a batch's expiry is announced (`points.expiring_soon`).
    #[serde(default = "default_expiring_soon_days")]
    pub expiring_soon_days: i32,
    /// Days events are kept for subscribers before the pruning job deletes them.
    #[serde(default = "default_events_retention_days")]
    pub events_retention_days: i32,
    /// Paid to the referrer when a referral converts; 0: none.
    #[serde(default)]
    pub referrer_points: i64,
    /// Paid to the referee when its referral converts; 0: none.
    #[serde(default)]
    pub referee_points: i64,
    /// Days an invite stays open.
    #[serde(default = "default_invite_ttl_days")]
    pub invite_ttl_days: i32,
    /// The most invites one CreateInvites call may send.
    #[serde(default = "default_max_invites_per_batch")]
    pub max_invites_per_batch: i32,
    /// The most invites a referrer may send in one program-local day.
    #[serde(default = "default_max_invites_per_day")]
    pub max_invites_per_day: i32,
    /// The most invites a referrer may have sent and not seen expire.
    #[serde(default = "default_max_invites_lifetime")]
    pub max_invites_lifetime: i32,
    /// The referee's first purchase of at least this amount converts the referral.
    #[serde(default)]
    pub referral_qualify_min_amount_minor: i64,
    /// A full refund of the qualifying purchase within this many days of it takes both
    /// referral credits back; 0: never.
    #[serde(default = "default_referral_clawback_days")]
    pub referral_clawback_days: i32,
    /// The program-local hour (0–23) from which the day's referral graph snapshot is taken.
    #[serde(default = "default_graph_snapshot_hour")]
    pub graph_snapshot_hour: i32,
    /// Days graph snapshots are kept; older ones are deleted by the snapshot job.
    #[serde(default = "default_graph_snapshot_retention_days")]
    pub graph_snapshot_retention_days: i32,
}

pub const DEFAULT_TIER_WINDOW_MONTHS: i32 = 12;
pub const DEFAULT_GRACE_DAYS: i32 = 30;
pub const DEFAULT_REUPGRADE_WINDOW_DAYS: i32 = 90;
pub const DEFAULT_EXPIRING_SOON_DAYS: i32 = 30;
pub const DEFAULT_EVENTS_RETENTION_DAYS: i32 = 30;
pub const DEFAULT_INVITE_TTL_DAYS: i32 = 30;
pub const DEFAULT_MAX_INVITES_PER_BATCH: i32 = 20;
pub const DEFAULT_MAX_INVITES_PER_DAY: i32 = 50;
pub const DEFAULT_MAX_INVITES_LIFETIME: i32 = 500;
pub const DEFAULT_REFERRAL_CLAWBACK_DAYS: i32 = 30;
pub const DEFAULT_GRAPH_SNAPSHOT_HOUR: i32 = 3;
pub const DEFAULT_GRAPH_SNAPSHOT_RETENTION_DAYS: i32 = 30;
/// The most contacts one CreateInvites call may carry, whatever the rules say.
pub const MAX_INVITES_PER_CALL: i32 = 100;

fn default_tier_window_months() -> i32 {
    DEFAULT_TIER_WINDOW_MONTHS
}
fn default_grace_days() -> i32 {
    DEFAULT_GRACE_DAYS
}
fn default_reupgrade_window_days() -> i32 {
    DEFAULT_REUPGRADE_WINDOW_DAYS
}
fn default_expiring_soon_days() -> i32 {
    DEFAULT_EXPIRING_SOON_DAYS
}
fn default_events_retention_days() -> i32 {
    DEFAULT_EVENTS_RETENTION_DAYS
}
fn default_invite_ttl_days() -> i32 {
    DEFAULT_INVITE_TTL_DAYS
}
fn default_max_invites_per_batch() -> i32 {
    DEFAULT_MAX_INVITES_PER_BATCH
}
fn default_max_invites_per_day() -> i32 {
    DEFAULT_MAX_INVITES_PER_DAY
}
fn default_max_invites_lifetime() -> i32 {
    DEFAULT_MAX_INVITES_LIFETIME
}
fn default_referral_clawback_days() -> i32 {
    DEFAULT_REFERRAL_CLAWBACK_DAYS
}
fn default_graph_snapshot_hour() -> i32 {
    DEFAULT_GRAPH_SNAPSHOT_HOUR
}
fn default_graph_snapshot_retention_days() -> i32 {
    DEFAULT_GRAPH_SNAPSHOT_RETENTION_DAYS
}

impl RulesDocument {
    /// The program's time zone; UTC for a name no zone has (stored rules were validated).
    pub fn zone(&self) -> Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Earning rules with every tier, bonus and event setting at its default.
    pub fn earning(
        currency: &str,
        timezone: &str,
        base_rate_bp: i64,
        min_amount_minor: i64,
        daily_cap_points: Option<i64>,
        points_validity_days: i32,
    ) -> Self {
        Self {
            currency: currency.into(),
            timezone: timezone.into(),
            base_rate_bp,
            min_amount_minor,
            daily_cap_points,
            points_validity_days,
            tiers: vec![],
            tier_window_months: DEFAULT_TIER_WINDOW_MONTHS,
            grace_days: DEFAULT_GRACE_DAYS,
            grace_reminder_days: vec![],
            reupgrade_window_days: DEFAULT_REUPGRADE_WINDOW_DAYS,
            reupgrade_bonus_points: 0,
            birthday_bonus_points: 0,
            reengagement_after_days: None,
            reengagement_bonus_points: 0,
            expiring_soon_days: DEFAULT_EXPIRING_SOON_DAYS,
            events_retention_days: DEFAULT_EVENTS_RETENTION_DAYS,
            referrer_points: 0,
            referee_points: 0,
            invite_ttl_days: DEFAULT_INVITE_TTL_DAYS,
            max_invites_per_batch: DEFAULT_MAX_INVITES_PER_BATCH,
            max_invites_per_day: DEFAULT_MAX_INVITES_PER_DAY,
            max_invites_lifetime: DEFAULT_MAX_INVITES_LIFETIME,
            referral_qualify_min_amount_minor: 0,
            referral_clawback_days: DEFAULT_REFERRAL_CLAWBACK_DAYS,
            graph_snapshot_hour: DEFAULT_GRAPH_SNAPSHOT_HOUR,
            graph_snapshot_retention_days: DEFAULT_GRAPH_SNAPSHOT_RETENTION_DAYS,
        }
    }
}

/// Validated rules: only this type is used to compute points.
#[derive(Debug, Clone)]
pub struct ProgramRules {
    pub document: RulesDocument,
    pub currency: Currency,
    pub timezone: Tz,
}

impl ProgramRules {
    /// Validates a document; an empty tier list becomes the default ladder.
    pub fn parse(mut document: RulesDocument) -> Result<Self, InvalidField> {
        let currency = Currency::parse("rules.currency", &document.currency)?;
        let timezone: Tz = document.timezone.parse().map_err(|_| {
            InvalidField::new(
                "rules.timezone",
                format!("{} is not an IANA time zone", quoted(&document.timezone)),
            )
        })?;
        check_range(
            "rules.base_rate_bp",
            document.base_rate_bp,
            0,
            MAX_BASE_RATE_BP,
        )?;
        check_range(
            "rules.min_amount_minor",
            document.min_amount_minor,
            0,
            MAX_RULE_POINTS,
        )?;
        if let Some(cap) = document.daily_cap_points {
            check_range("rules.daily_cap_points", cap, 1, MAX_RULE_POINTS)?;
        }
        check_range(
            "rules.points_validity_days",
            i64::from(document.points_validity_days),
            1,
            i64::from(MAX_VALIDITY_DAYS),
        )?;
        if document.tiers.is_empty() {
            document.tiers = default_tiers();
        }
        check_tiers(&document.tiers)?;
        check_tier_policy(&mut document)?;
        Ok(Self {
            document,
            currency,
            timezone,
        })
    }

    /// The tier at `rank`, or the top tier when the ladder has since been shortened.
    pub fn tier(&self, rank: usize) -> &Tier {
        let tiers = &self.document.tiers;
        tiers.get(rank).unwrap_or(&tiers[tiers.len() - 1])
    }
}

/// The program-local calendar day of an instant: the day a daily cap counts against.
pub fn local_day(instant: DateTime<Utc>, timezone: Tz) -> NaiveDate {
    instant.with_timezone(&timezone).date_naive()
}

/// The UTC interval `[start, end)` of a local calendar day. A day whose midnight falls in
/// a daylight-saving gap starts at the first local instant that exists.
pub fn local_day_bounds(day: NaiveDate, timezone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        start_of_local_day(day, timezone),
        start_of_local_day(day.succ_opt().unwrap_or(day), timezone),
    )
}

fn start_of_local_day(day: NaiveDate, timezone: Tz) -> DateTime<Utc> {
    use chrono::TimeZone;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    // No zone skips more than a few hours; try each quarter hour after midnight.
    (0..=16 * 4)
        .find_map(|quarter| {
            let local = midnight + chrono::Duration::minutes(15 * quarter);
            timezone.from_local_datetime(&local).earliest()
        })
        .map_or_else(|| midnight.and_utc(), |start| start.with_timezone(&Utc))
}

/// How far back a zone that was replaced still bounds today's cap: longer than any local
/// day, so every zone in force at some instant of the current local day counts.
pub const CAP_ZONE_LOOKBACK: chrono::Duration = chrono::Duration::hours(48);

/// The zones whose local day containing `now` a daily cap must hold for: the zones of every
/// rules version in force at some instant of `[now − CAP_ZONE_LOOKBACK, now]`, in version
/// order without repeats. `history` lists (effective from, zone) oldest first; a version
/// is in force from its instant until the next one's.
pub fn cap_zones(history: &[(DateTime<Utc>, Tz)], now: DateTime<Utc>) -> Vec<Tz> {
    let from = now - CAP_ZONE_LOOKBACK;
    let mut zones: Vec<Tz> = Vec::new();
    for (index, (effective, zone)) in history.iter().enumerate() {
        let until = history.get(index + 1).map(|(next, _)| *next);
        let in_force = *effective <= now && until.is_none_or(|until| until > from);
        if in_force && !zones.contains(zone) {
            zones.push(*zone);
        }
    }
    zones
}

/// A caller's value quoted in a message, cut short: a message must never carry a huge
/// input back (it travels in a header).
pub fn quoted(value: &str) -> String {
    const QUOTED_CHARS_MAX: usize = 40;
    if value.chars().count() <= QUOTED_CHARS_MAX {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(QUOTED_CHARS_MAX).collect();
    format!("{head:?}…")
}

fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), InvalidField> {
    if value < min || value > max {
        return Err(InvalidField::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

fn check_tiers(tiers: &[Tier]) -> Result<(), InvalidField> {
    if tiers.len() > MAX_TIERS {
        return Err(InvalidField::new(
            "rules.tiers",
            format!("at most {MAX_TIERS} tiers"),
        ));
    }
    for (rank, tier) in tiers.iter().enumerate() {
        let field = |name: &str| format!("rules.tiers[{rank}].{name}");
        let code_ok = !tier.code.is_empty()
            && tier.code.len() <= 32
            && tier
                .code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !code_ok {
            return Err(InvalidField::new(
                field("code"),
                "must be 1 to 32 characters of a-z, 0-9, '-' and '_'",
            ));
        }
        if tiers[..rank]
            .iter()
            .any(|earlier| earlier.code == tier.code)
        {
            return Err(InvalidField::new(
                field("code"),
                "tier codes must be unique",
            ));
        }
        let name_chars = tier.name.chars().count();
        if name_chars == 0 || name_chars > 64 || tier.name.chars().any(char::is_control) {
            return Err(InvalidField::new(
                field("name"),
                "must be 1 to 64 characters without control characters",
            ));
        }
        check_range(
            &field("multiplier_bp"),
            tier.multiplier_bp,
            0,
            MAX_MULTIPLIER_BP,
        )?;
        check_range(
            &field("qualify_points"),
            tier.qualify_points,
            0,
            MAX_RULE_POINTS,
        )?;
        check_range(
            &field("maintain_points"),
            tier.maintain_points,
            0,
            tier.qualify_points,
        )?;
        if rank == 0 && tier.qualify_points != 0 {
            return Err(InvalidField::new(
                field("qualify_points"),
                "the first tier must qualify at 0",
            ));
        }
        if rank > 0 && tier.qualify_points <= tiers[rank - 1].qualify_points {
            return Err(InvalidField::new(
                field("qualify_points"),
                "thresholds must be strictly increasing",
            ));
        }
    }
    Ok(())
}

const MAX_GRACE_DAYS: i32 = 3660;
const MAX_NOTICE_DAYS: i32 = 3660;

/// Validates the tier, bonus and event settings; sorts the reminders, latest first.
fn check_tier_policy(document: &mut RulesDocument) -> Result<(), InvalidField> {
    let days = |field: &str, value: i32, min: i32, max: i32| {
        check_range(field, i64::from(value), i64::from(min), i64::from(max))
    };
    days(
        "rules.tier_window_months",
        document.tier_window_months,
        1,
        36,
    )?;
    days("rules.grace_days", document.grace_days, 0, MAX_GRACE_DAYS)?;
    if document.grace_reminder_days.len() > 10 {
        return Err(InvalidField::new(
            "rules.grace_reminder_days",
            "at most 10 reminders",
        ));
    }
    for (index, reminder) in document.grace_reminder_days.iter().enumerate() {
        days(
            &format!("rules.grace_reminder_days[{index}]"),
            *reminder,
            1,
            document.grace_days.max(1),
        )?;
    }
    document
        .grace_reminder_days
        .sort_unstable_by(|a, b| b.cmp(a));
    document.grace_reminder_days.dedup();
    days(
        "rules.reupgrade_window_days",
        document.reupgrade_window_days,
        0,
        MAX_GRACE_DAYS,
    )?;
    for (field, points) in [
        (
            "rules.reupgrade_bonus_points",
            document.reupgrade_bonus_points,
        ),
        (
            "rules.birthday_bonus_points",
            document.birthday_bonus_points,
        ),
        (
            "rules.reengagement_bonus_points",
            document.reengagement_bonus_points,
        ),
        ("rules.referrer_points", document.referrer_points),
        ("rules.referee_points", document.referee_points),
    ] {
        check_range(field, points, 0, MAX_RULE_POINTS)?;
    }
    if let Some(after) = document.reengagement_after_days {
        days("rules.reengagement_after_days", after, 1, MAX_NOTICE_DAYS)?;
    }
    days(
        "rules.expiring_soon_days",
        document.expiring_soon_days,
        0,
        MAX_NOTICE_DAYS,
    )?;
    days(
        "rules.events_retention_days",
        document.events_retention_days,
        1,
        MAX_NOTICE_DAYS,
    )?;
    days(
        "rules.invite_ttl_days",
        document.invite_ttl_days,
        1,
        MAX_NOTICE_DAYS,
    )?;
    days(
        "rules.max_invites_per_batch",
        document.max_invites_per_batch,
        1,
        MAX_INVITES_PER_CALL,
    )?;
    days(
        "rules.max_invites_per_day",
        document.max_invites_per_day,
        1,
        1_000_000,
    )?;
    days(
        "rules.max_invites_lifetime",
        document.max_invites_lifetime,
        1,
        1_000_000,
    )?;
    check_range(
        "rules.referral_qualify_min_amount_minor",
        document.referral_qualify_min_amount_minor,
        0,
        i64::MAX,
    )?;
    days(
        "rules.referral_clawback_days",
        document.referral_clawback_days,
        0,
        MAX_NOTICE_DAYS,
    )?;
    days(
        "rules.graph_snapshot_hour",
        document.graph_snapshot_hour,
        0,
        23,
    )?;
    days(
        "rules.graph_snapshot_retention_days",
        document.graph_snapshot_retention_days,
        1,
        MAX_NOTICE_DAYS,
    )?;
    Ok(())
}

fn default_tiers() -> Vec<Tier> {
    let tier = |code: &str, name: &str, qualify, maintain, multiplier_bp| Tier {
        code: code.into(),
        name: name.into(),
        qualify_points: qualify,
        maintain_points: maintain,
        multiplier_bp,
    };
    vec![
        tier("member", "Member", 0, 0, 10_000),
        tier("silver", "Silver", 1_000, 800, 12_500),
        tier("gold", "Gold", 5_000, 4_000, 15_000),
        tier("vip", "VIP", 20_000, 16_000, 20_000),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> RulesDocument {
        RulesDocument::earning("USD", "Europe/Paris", 10_000, 100, Some(500), 365)
    }

    #[test]
    fn empty_tiers_become_the_default_ladder() {
        let rules = ProgramRules::parse(document()).unwrap();
        let codes: Vec<_> = rules
            .document
            .tiers
            .iter()
            .map(|t| t.code.as_str())
            .collect();
        assert_eq!(codes, ["member", "silver", "gold", "vip"]);
    }

    #[test]
    fn invalid_rules_name_their_field() {
        let mut bad = document();
        bad.timezone = "Mars/Olympus".into();
        assert_eq!(
            ProgramRules::parse(bad).unwrap_err().field,
            "rules.timezone"
        );

        let mut bad = document();
        bad.tiers = default_tiers();
        bad.tiers[2].qualify_points = 900;
        bad.tiers[2].maintain_points = 900;
        assert_eq!(
            ProgramRules::parse(bad).unwrap_err().field,
            "rules.tiers[2].qualify_points"
        );

        let mut bad = document();
        bad.tiers = default_tiers();
        bad.tiers[1].maintain_points = 2_000;
        assert_eq!(
            ProgramRules::parse(bad).unwrap_err().field,
            "rules.tiers[1].maintain_points"
        );

        let mut bad = document();
        bad.daily_cap_points = Some(0);
        assert_eq!(
            ProgramRules::parse(bad).unwrap_err().field,
            "rules.daily_cap_points"
        );
    }

    #[test]
    fn local_day_uses_the_program_time_zone() {
        let instant = DateTime::parse_from_rfc3339("2026-03-01T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let paris = local_day(instant, "Europe/Paris".parse().unwrap());
        assert_eq!(paris, NaiveDate::from_ymd_opt(2026, 3, 2).unwrap());
    }

    #[test]
    fn a_zone_replaced_within_two_days_still_bounds_the_cap() {
        use chrono::TimeZone;
        let utc: Tz = "UTC".parse().unwrap();
        let kiritimati: Tz = "Pacific/Kiritimati".parse().unwrap();
        let created = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let changed = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let history = [(created, utc), (changed, kiritimati)];
        assert_eq!(cap_zones(&history, changed), [utc, kiritimati]);
        let later = changed + CAP_ZONE_LOOKBACK + chrono::Duration::seconds(1);
        assert_eq!(cap_zones(&history, later), [kiritimati]);
        assert_eq!(cap_zones(&history[..1], changed), [utc]);
    }

    #[test]
    fn a_local_day_starts_at_local_midnight_or_the_first_instant_after_a_gap() {
        use chrono::TimeZone;
        let kiritimati: Tz = "Pacific/Kiritimati".parse().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let (start, end) = local_day_bounds(day, kiritimati);
        assert_eq!(start, Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap());
        assert_eq!(end, Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap());
        // Havana springs forward at midnight: 8 March 2026 starts at 01:00 local.
        let havana: Tz = "America/Havana".parse().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        let (start, _) = local_day_bounds(day, havana);
        assert_eq!(start, Utc.with_ymd_and_hms(2026, 3, 8, 5, 0, 0).unwrap());
    }
}
