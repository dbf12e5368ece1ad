//! What the ledger answers and stores with each entry: the outcome a replay returns, even
//! years later. These types are a persisted format: the golden tests below fail when a
//! field is renamed or its encoding changes, so an old entry's replay can never break.
use crate::store::batches::StoredAllocation;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One allocation with its batch's dates, as answers and the history show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    pub entry_id: Uuid,
    pub batch_id: Uuid,
    /// Signed change to the batch: negative drawn, positive restored.
    pub points: i64,
    pub earned_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl From<StoredAllocation> for AllocationView {
    fn from(row: StoredAllocation) -> Self {
        Self {
            entry_id: row.entry_id,
            batch_id: row.batch_id,
            points: row.points,
            earned_at: row.earned_at,
            expires_at: row.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        AdjustOutcome, AwardOutcome, ReverseAwardOutcome, ReverseSpendOutcome, SpendOutcome,
    };
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn allocation(points: i64) -> AllocationView {
        AllocationView {
            entry_id: Uuid::from_u128(1),
            batch_id: Uuid::from_u128(2),
            points,
            earned_at: Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
            expires_at: Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap(),
        }
    }

    fn allocation_json(points: i64) -> serde_json::Value {
        json!({
            "entry_id": "00000000-0000-0000-0000-000000000001",
            "batch_id": "00000000-0000-0000-0000-000000000002",
            "points": points,
            "earned_at": "2026-03-01T12:00:00Z",
            "expires_at": "2027-03-01T12:00:00Z",
        })
    }

    /// Serialises to exactly the stored JSON, and the stored JSON reads back as it was.
    fn golden<T>(outcome: T, stored: serde_json::Value)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(&outcome).unwrap(), stored);
        assert_eq!(serde_json::from_value::<T>(stored).unwrap(), outcome);
    }

    #[test]
    fn an_award_outcome_keeps_its_stored_form() {
        golden(
            AwardOutcome {
                entry_id: "e".into(),
                requested_points: 30,
                awarded_points: 20,
                capped: true,
                replayed: false,
                balance_points: 120,
                rules_version: 2,
            },
            json!({"entry_id": "e", "requested_points": 30, "awarded_points": 20,
                   "capped": true, "balance_points": 120, "rules_version": 2}),
        );
    }

    #[test]
    fn a_spend_outcome_keeps_its_stored_form() {
        golden(
            SpendOutcome {
                entry_id: "e".into(),
                points: 5,
                allocations: vec![allocation(-5)],
                balance_points: 95,
                replayed: false,
            },
            json!({"entry_id": "e", "points": 5, "allocations": [allocation_json(-5)],
                   "balance_points": 95}),
        );
    }

    #[test]
    fn a_refund_outcome_keeps_its_stored_form() {
        golden(
            ReverseAwardOutcome {
                entry_id: "e".into(),
                award_entry_id: "a".into(),
                member_id: "m".into(),
                reversed_points: 10,
                recovered_points: 6,
                unrecovered_points: 4,
                allocations: vec![allocation(-6)],
                remaining_reversible_points: 0,
                balance_points: 0,
                replayed: false,
            },
            json!({"entry_id": "e", "award_entry_id": "a", "member_id": "m",
                   "reversed_points": 10, "recovered_points": 6, "unrecovered_points": 4,
                   "allocations": [allocation_json(-6)], "remaining_reversible_points": 0,
                   "balance_points": 0}),
        );
    }

    #[test]
    fn a_cancellation_outcome_keeps_its_stored_form_and_reads_the_older_one() {
        let outcome = ReverseSpendOutcome {
            entry_id: "e".into(),
            spend_entry_id: "s".into(),
            member_id: "m".into(),
            reversed_points: 10,
            restored_points: 6,
            expired_points: 0,
            repaid_points: 4,
            allocations: vec![allocation(6)],
            balance_points: 6,
            replayed: false,
        };
        golden(
            outcome.clone(),
            json!({"entry_id": "e", "spend_entry_id": "s", "member_id": "m",
                   "reversed_points": 10, "restored_points": 6, "expired_points": 0,
                   "repaid_points": 4, "allocations": [allocation_json(6)],
                   "balance_points": 6}),
        );
        // Stored before owed points existed: no repaid_points, read as 0.
        let older = json!({"entry_id": "e", "spend_entry_id": "s", "member_id": "m",
                           "reversed_points": 10, "restored_points": 10, "expired_points": 0,
                           "allocations": [], "balance_points": 10});
        let read: ReverseSpendOutcome = serde_json::from_value(older).unwrap();
        assert_eq!((read.restored_points, read.repaid_points), (10, 0));
    }

    #[test]
    fn an_adjustment_outcome_keeps_its_stored_form() {
        golden(
            AdjustOutcome {
                entry_id: "e".into(),
                points: 7,
                batch_id: Some(Uuid::from_u128(3)),
                allocations: vec![],
                balance_points: 7,
                replayed: false,
            },
            json!({"entry_id": "e", "points": 7,
                   "batch_id": "00000000-0000-0000-0000-000000000003",
                   "allocations": [], "balance_points": 7}),
        );
    }
}
