//! Which batches a draw takes points from: the one FIFO rule, shared by spends, debits,
//! reversals and the audit's replay.
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A batch as a draw sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchBalance {
    pub batch_id: Uuid,
    pub remaining: i64,
    pub earned_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Points taken from (negative) or put back into (positive) one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub batch_id: Uuid,
    pub points: i64,
}

/// Draws up to `points` from the batches spendable at `now`, oldest first (earned_at,
/// then id). Returns the draws, in order, which sum to at most `points`.
pub fn draw_oldest_first(batches: &[BatchBalance], points: i64, now: DateTime<Utc>) -> Vec<Draw> {
    let mut spendable: Vec<&BatchBalance> = batches
        .iter()
        .filter(|batch| batch.remaining > 0 && batch.expires_at > now)
        .collect();
    spendable.sort_by_key(|batch| (batch.earned_at, batch.batch_id));
    let mut left = points;
    let mut draws = Vec::new();
    for batch in spendable {
        if left == 0 {
            break;
        }
        let taken = left.min(batch.remaining);
        draws.push(Draw {
            batch_id: batch.batch_id,
            points: -taken,
        });
        left -= taken;
    }
    draws
}

/// Σ of the batches spendable at `now`; saturates rather than wraps (a balance past
/// i64::MAX is refused before it is written, so only a corrupted ledger could reach it).
pub fn spendable_points(batches: &[BatchBalance], now: DateTime<Utc>) -> i64 {
    batches
        .iter()
        .filter(|batch| batch.remaining > 0 && batch.expires_at > now)
        .fold(0i64, |sum, batch| sum.saturating_add(batch.remaining))
}

/// Takes back up to `points` for an award reversal: from the award's own batch first,
/// then from the member's other spendable batches oldest first. What the draws do not
/// cover could not be recovered (already spent or expired).
pub fn draw_for_reversal(
    batches: &[BatchBalance],
    own_batch: Option<Uuid>,
    points: i64,
    now: DateTime<Utc>,
) -> Vec<Draw> {
    let own = batches
        .iter()
        .find(|batch| Some(batch.batch_id) == own_batch && batch.expires_at > now);
    let mut draws = Vec::new();
    let mut left = points;
    if let Some(own) = own {
        let taken = left.min(own.remaining);
        if taken > 0 {
            draws.push(Draw {
                batch_id: own.batch_id,
                points: -taken,
            });
            left -= taken;
        }
    }
    let others: Vec<BatchBalance> = batches
        .iter()
        .filter(|batch| Some(batch.batch_id) != own_batch)
        .cloned()
        .collect();
    draws.extend(draw_oldest_first(&others, left, now));
    draws
}

/// Which batches a spend reversal puts points back into. The spend's draws (in the order
/// they were made) are covered in sequence: earlier reversals covered the first
/// `already_covered` points, this one covers the next `points`. Each part goes back into
/// its own batch unless that batch has expired by `now`; returns the restorations and the
/// points not restored because their batch expired.
pub fn restore_for_spend_reversal(
    spend_draws: &[BatchBalance],
    already_covered: i64,
    points: i64,
    now: DateTime<Utc>,
) -> (Vec<Draw>, i64) {
    let mut skip = already_covered;
    let mut left = points;
    let mut restorations = Vec::new();
    let mut expired = 0;
    for drawn in spend_draws {
        if left == 0 {
            break;
        }
        let skipped = skip.min(drawn.remaining);
        skip -= skipped;
        let part = (drawn.remaining - skipped).min(left);
        if part == 0 {
            continue;
        }
        left -= part;
        if drawn.expires_at > now {
            restorations.push(Draw {
                batch_id: drawn.batch_id,
                points: part,
            });
        } else {
            expired += part;
        }
    }
    (restorations, expired)
}

/// Keeps back, from the first restorations of a spend reversal, up to `owed` points: the
/// points of refunded awards that had already been spent, which the member repays before
/// anything is put back. Returns the restorations left and the points kept back. So a
/// refund and the cancellation of the redemption that spent its points end at the same
/// balance in either order.
pub fn repay_owed(restorations: Vec<Draw>, owed: i64) -> (Vec<Draw>, i64) {
    let mut left_owed = owed.max(0);
    let mut repaid = 0;
    let mut kept = Vec::with_capacity(restorations.len());
    for draw in restorations {
        let withheld = left_owed.min(draw.points);
        left_owed -= withheld;
        repaid += withheld;
        if draw.points > withheld {
            kept.push(Draw {
                batch_id: draw.batch_id,
                points: draw.points - withheld,
            });
        }
    }
    (kept, repaid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn batch(n: u128, remaining: i64, month: u32) -> BatchBalance {
        let earned_at = Utc.with_ymd_and_hms(2026, month, 1, 0, 0, 0).unwrap();
        BatchBalance {
            batch_id: Uuid::from_u128(n),
            remaining,
            earned_at,
            expires_at: earned_at + chrono::Duration::days(365),
        }
    }

    #[test]
    fn spending_500_takes_400_from_march_and_100_from_april() {
        let batches = [
            batch(3, 600, 5),
            batch(1, 400, 3),
            batch(4, 300, 6),
            batch(2, 250, 4),
        ];
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let draws = draw_oldest_first(&batches, 500, now);
        assert_eq!(
            draws,
            [
                Draw {
                    batch_id: Uuid::from_u128(1),
                    points: -400
                },
                Draw {
                    batch_id: Uuid::from_u128(2),
                    points: -100
                },
            ]
        );
    }

    #[test]
    fn expired_and_empty_batches_are_skipped() {
        let mut expired = batch(1, 400, 3);
        expired.expires_at = Utc.with_ymd_and_hms(2026, 6, 30, 0, 0, 0).unwrap();
        let batches = [expired, batch(2, 0, 4), batch(3, 600, 5)];
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        assert_eq!(spendable_points(&batches, now), 600);
        let draws = draw_oldest_first(&batches, 100, now);
        assert_eq!(
            draws,
            [Draw {
                batch_id: Uuid::from_u128(3),
                points: -100
            }]
        );
    }

    #[test]
    fn a_batch_expiring_exactly_now_is_not_spendable() {
        let mut due = batch(1, 400, 3);
        let now = due.expires_at;
        due.remaining = 400;
        assert_eq!(spendable_points(&[due], now), 0);
    }

    #[test]
    fn a_reversal_takes_from_its_own_batch_first_then_the_oldest() {
        let batches = [batch(1, 400, 3), batch(2, 250, 4), batch(3, 100, 5)];
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let draws = draw_for_reversal(&batches, Some(Uuid::from_u128(3)), 300, now);
        assert_eq!(
            draws,
            [
                Draw {
                    batch_id: Uuid::from_u128(3),
                    points: -100
                },
                Draw {
                    batch_id: Uuid::from_u128(1),
                    points: -200
                },
            ]
        );
    }

    #[test]
    fn partial_spend_reversals_cover_the_draws_in_order_and_skip_expired_batches() {
        // A spend drew 400 from March (since expired) and 100 from April.
        let mut march = batch(1, 400, 3);
        march.expires_at = Utc.with_ymd_and_hms(2026, 6, 30, 0, 0, 0).unwrap();
        let april = batch(2, 100, 4);
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        let draws = [march, april];
        let (restored, expired) = restore_for_spend_reversal(&draws, 0, 450, now);
        assert_eq!(
            restored,
            [Draw {
                batch_id: Uuid::from_u128(2),
                points: 50
            }]
        );
        assert_eq!(expired, 400);
        let (restored, expired) = restore_for_spend_reversal(&draws, 450, 50, now);
        assert_eq!(
            restored,
            [Draw {
                batch_id: Uuid::from_u128(2),
                points: 50
            }]
        );
        assert_eq!(expired, 0);
    }

    #[test]
    fn owed_points_are_kept_back_from_the_first_restorations() {
        let restorations = vec![
            Draw {
                batch_id: Uuid::from_u128(1),
                points: 60,
            },
            Draw {
                batch_id: Uuid::from_u128(2),
                points: 40,
            },
        ];
        let (kept, repaid) = repay_owed(restorations.clone(), 70);
        assert_eq!(repaid, 70);
        assert_eq!(
            kept,
            [Draw {
                batch_id: Uuid::from_u128(2),
                points: 30
            }]
        );
        assert_eq!(repay_owed(restorations.clone(), 0), (restorations, 0));
        let (kept, repaid) = repay_owed(vec![], 50);
        assert!(kept.is_empty());
        assert_eq!(repaid, 0);
    }
}
