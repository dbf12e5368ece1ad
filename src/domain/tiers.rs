//! Tier status and the grace ladder: pure decisions over a member's tier state. Status
//! points are summed by the store; what they mean for the tier is decided here.
use super::{RulesDocument, Tier};
use chrono::{DateTime, Duration, Months, Utc};

/// A member's tier as stored: its rank, the grace in progress and the manual hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierState {
    pub rank: usize,
    pub grace: Option<Grace>,
    pub hold_until: Option<DateTime<Utc>>,
}

/// A downgrade grace in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grace {
    pub started_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Reminder days (before the end) already sent.
    pub reminders_sent: Vec<i32>,
}

/// One thing an evaluation does to the member's tier state, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierStep {
    /// Status reaches a higher tier's qualify points: up to `to` (clears any grace).
    Upgrade { to: usize },
    /// Status fell below the tier's maintain points: a grace starts (first warning).
    StartGrace { ends_at: DateTime<Utc> },
    /// A reminder of the grace in progress; `days` before its end. `due` lists every
    /// reminder day now passed (all marked sent; one warning goes out).
    Remind { days: i32, due: Vec<i32> },
    /// Status recovered before the grace ended.
    ClearGrace,
    /// The grace ended with status still below: exactly one rank down.
    Downgrade { to: usize },
}

/// The start of the status window `(start, now]`: `months` before `now`.
pub fn status_window_start(now: DateTime<Utc>, months: i32) -> DateTime<Utc> {
    let months = Months::new(u32::try_from(months.max(0)).unwrap_or(0));
    now.checked_sub_months(months)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The highest rank whose qualify points `status` reaches.
pub fn qualifying_rank(tiers: &[Tier], status: i64) -> usize {
    tiers
        .iter()
        .rposition(|tier| status >= tier.qualify_points)
        .unwrap_or(0)
}

/// The rank a credit lifts the member to, when its status now qualifies above `rank`.
pub fn upgrade_to(tiers: &[Tier], rank: usize, status: i64) -> Option<usize> {
    let qualifying = qualifying_rank(tiers, status);
    (qualifying > rank).then_some(qualifying)
}

/// What evaluating a member now does: upgrade when status qualifies higher; otherwise,
/// unless a hold is in force, start, remind, clear or end a grace. A grace that ends moves
/// the member down exactly one rank; still below the new tier's maintain points, a fresh
/// grace starts for the next step. Nothing demotes without a grace having run out.
pub fn evaluate(
    rules: &RulesDocument,
    state: &TierState,
    status: i64,
    now: DateTime<Utc>,
) -> Vec<TierStep> {
    let tiers = &rules.tiers;
    let rank = state.rank.min(tiers.len().saturating_sub(1));
    if let Some(to) = upgrade_to(tiers, rank, status) {
        return vec![TierStep::Upgrade { to }];
    }
    if state.hold_until.is_some_and(|hold| hold > now) {
        return vec![];
    }
    let below = |rank: usize| rank > 0 && status < tiers[rank].maintain_points;
    let grace_ends = |now: DateTime<Utc>| now + Duration::days(i64::from(rules.grace_days));
    let Some(grace) = &state.grace else {
        return if below(rank) {
            vec![TierStep::StartGrace {
                ends_at: grace_ends(now),
            }]
        } else {
            vec![]
        };
    };
    if !below(rank) {
        return vec![TierStep::ClearGrace];
    }
    if now >= grace.ends_at {
        let to = rank - 1;
        let mut steps = vec![TierStep::Downgrade { to }];
        if below(to) {
            steps.push(TierStep::StartGrace {
                ends_at: grace_ends(now),
            });
        }
        return steps;
    }
    let due: Vec<i32> = rules
        .grace_reminder_days
        .iter()
        .copied()
        .filter(|days| !grace.reminders_sent.contains(days))
        .filter(|days| now >= grace.ends_at - Duration::days(i64::from(*days)))
        .collect();
    match due.iter().min() {
        Some(&days) => vec![TierStep::Remind { days, due }],
        None => vec![],
    }
}

/// The rank after the steps of an evaluation.
pub fn rank_after(rank: usize, steps: &[TierStep]) -> usize {
    steps.iter().fold(rank, |rank, step| match step {
        TierStep::Upgrade { to } | TierStep::Downgrade { to } => *to,
        _ => rank,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rules() -> RulesDocument {
        let mut rules = RulesDocument::earning("USD", "UTC", 10_000, 0, None, 365);
        rules.grace_reminder_days = vec![7, 1];
        crate::domain::ProgramRules::parse(rules).unwrap().document
    }

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::days(i64::from(day))
    }

    #[test]
    fn one_credit_can_lift_several_ranks() {
        let tiers = rules().tiers;
        assert_eq!(upgrade_to(&tiers, 0, 999), None);
        assert_eq!(upgrade_to(&tiers, 0, 1_000), Some(1));
        assert_eq!(upgrade_to(&tiers, 0, 5_000), Some(2));
        assert_eq!(upgrade_to(&tiers, 2, 5_000), None);
    }

    #[test]
    fn below_maintain_warns_reminds_and_moves_one_rank() {
        let rules = rules();
        let mut state = TierState {
            rank: 3,
            grace: None,
            hold_until: None,
        };
        let steps = evaluate(&rules, &state, 100, at(0));
        assert_eq!(steps, [TierStep::StartGrace { ends_at: at(30) }]);
        state.grace = Some(Grace {
            started_at: at(0),
            ends_at: at(30),
            reminders_sent: vec![],
        });
        assert!(evaluate(&rules, &state, 100, at(22)).is_empty());
        assert_eq!(
            evaluate(&rules, &state, 100, at(23)),
            [TierStep::Remind {
                days: 7,
                due: vec![7]
            }]
        );
        // A missed run sends one warning for every reminder passed.
        assert_eq!(
            evaluate(&rules, &state, 100, at(29)),
            [TierStep::Remind {
                days: 1,
                due: vec![7, 1]
            }]
        );
        let steps = evaluate(&rules, &state, 100, at(30));
        assert_eq!(
            steps,
            [
                TierStep::Downgrade { to: 2 },
                TierStep::StartGrace { ends_at: at(60) }
            ]
        );
        assert_eq!(rank_after(3, &steps), 2);
        assert_eq!(
            evaluate(&rules, &state, 20_000, at(30)),
            [TierStep::ClearGrace]
        );
    }

    #[test]
    fn a_hold_suspends_downgrades_but_not_upgrades() {
        let rules = rules();
        let state = TierState {
            rank: 2,
            grace: None,
            hold_until: Some(at(10)),
        };
        assert!(evaluate(&rules, &state, 0, at(5)).is_empty());
        assert_eq!(
            evaluate(&rules, &state, 20_000, at(5)),
            [TierStep::Upgrade { to: 3 }]
        );
        assert_eq!(
            evaluate(&rules, &state, 0, at(10)),
            [TierStep::StartGrace { ends_at: at(40) }]
        );
    }

    #[test]
    fn the_window_is_calendar_months() {
        let now = Utc.with_ymd_and_hms(2026, 3, 31, 12, 0, 0).unwrap();
        assert_eq!(
            status_window_start(now, 1),
            Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap()
        );
    }
}
