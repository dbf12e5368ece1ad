//! The audit: replays a program's ledger entry by entry and checks every invariant the
//! product promises. `flash audit` prints its report; tests call it after every run.
use super::{members::program_not_found, Error, Ledger};
use crate::domain::{
    draw_for_reversal, draw_oldest_first, restore_for_spend_reversal, BatchBalance, Draw, ProgramId,
};
use crate::store::{self, batches::StoredBatch, entries::StoredEntry, reports};
use std::collections::HashMap;
use uuid::Uuid;

/// The most violations a report lists; past it the ledger is broken enough.
const VIOLATIONS_MAX: usize = 100;

/// What the audit checked and what it found.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub program: String,
    pub members: usize,
    pub entries: usize,
    pub batches: usize,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "program {}: {} members, {} entries, {} batches, {} violations",
            self.program,
            self.members,
            self.entries,
            self.batches,
            self.violations.len()
        )?;
        for violation in &self.violations {
            writeln!(f, "  violation: {violation}")?;
        }
        Ok(())
    }
}

impl Ledger {
    /// Audits one program from a consistent snapshot.
    pub async fn audit(&self, program: &ProgramId) -> Result<AuditReport, Error> {
        let now = self.clock.now();
        let mut client = self.db.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        store::programs::get(&*tx, program)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        let entries = store::entries::all_in_order(&*tx, program).await?;
        let batches = store::batches::all_of_program(&*tx, program).await?;
        let allocations = store::batches::all_allocations(&*tx, program).await?;
        let caps = reports::caps_by_version(&*tx, program).await?;
        let mut violations = reports::duplicates(&*tx, program).await?;
        let members: Vec<Uuid> = {
            let rows = tx
                .query(
                    "SELECT member_id FROM members WHERE program_id = $1",
                    &[&program.as_str()],
                )
                .await?;
            rows.iter().map(|row| row.get(0)).collect()
        };
        for member in &members {
            let summary = store::members::points_summary(
                &*tx,
                program,
                crate::domain::MemberId::from_uuid(*member),
                now,
            )
            .await?;
            let live: i64 = batches
                .iter()
                .filter(|b| b.member_id == *member && b.expires_at > now)
                .map(|b| b.remaining)
                .sum();
            if summary.balance_points != i128::from(live) {
                violations.push(format!(
                    "member {member}: balance {} ≠ Σ remaining of unexpired batches {live}",
                    summary.balance_points
                ));
            }
        }
        tx.commit().await?;

        violations.extend(replay(&entries, &batches, &allocations));
        violations.extend(check_daily_caps(&entries, &caps));
        violations.truncate(VIOLATIONS_MAX);
        Ok(AuditReport {
            program: program.to_string(),
            members: members.len(),
            entries: entries.len(),
            batches: batches.len(),
            violations,
        })
    }
}

/// A batch as the replay rebuilds it.
struct SimulatedBatch {
    member: Uuid,
    amount: i64,
    balance: BatchBalance,
}

/// Replays every entry in write order against batches rebuilt from scratch, checking
/// that each entry's allocations are exactly what the ledger's rules would have drawn.
fn replay(
    entries: &[StoredEntry],
    batches: &[StoredBatch],
    allocations: &[(Uuid, Uuid, i64)],
) -> Vec<String> {
    let mut violations = Vec::new();
    let batch_of_entry: HashMap<Uuid, &StoredBatch> =
        batches.iter().map(|b| (b.entry_id, b)).collect();
    let mut allocations_of: HashMap<Uuid, Vec<Draw>> = HashMap::new();
    for (entry, batch, points) in allocations {
        allocations_of.entry(*entry).or_default().push(Draw {
            batch_id: *batch,
            points: *points,
        });
    }
    let entry_by_id: HashMap<Uuid, &StoredEntry> =
        entries.iter().map(|e| (e.entry_id.as_uuid(), e)).collect();
    let mut simulated: HashMap<Uuid, SimulatedBatch> = HashMap::new();
    let mut covered: HashMap<Uuid, i64> = HashMap::new();
    let no_draws = Vec::new();

    for entry in entries {
        let id = entry.entry_id.as_uuid();
        let member = entry.member_id.as_uuid();
        let actual = allocations_of.get(&id).unwrap_or(&no_draws);
        let member_batches: Vec<BatchBalance> = simulated
            .values()
            .filter(|b| b.member == member)
            .map(|b| b.balance.clone())
            .collect();
        let credit = matches!(entry.kind.as_str(), "award" | "bonus")
            || (entry.kind == "adjustment" && entry.points > 0);
        let expected: Option<Vec<Draw>> = match entry.kind.as_str() {
            _ if credit => {
                match batch_of_entry.get(&id) {
                    Some(batch) if batch.amount != entry.points || batch.member_id != member => {
                        violations.push(format!("entry {id}: its batch does not match its points"))
                    }
                    Some(batch) => {
                        simulated.insert(
                            batch.batch_id,
                            SimulatedBatch {
                                member,
                                amount: batch.amount,
                                balance: BatchBalance {
                                    batch_id: batch.batch_id,
                                    remaining: batch.amount,
                                    earned_at: batch.earned_at,
                                    expires_at: batch.expires_at,
                                },
                            },
                        );
                    }
                    None if entry.points > 0 => violations.push(format!(
                        "entry {id}: credits {} points but has no batch",
                        entry.points
                    )),
                    None => {}
                }
                Some(vec![])
            }
            "spend" | "adjustment" => Some(draw_oldest_first(
                &member_batches,
                -entry.points,
                entry.created_at,
            )),
            "award_reversal" => {
                let reversed = entry
                    .reversed_entry_id
                    .map(|e| e.as_uuid())
                    .unwrap_or_default();
                let own = batch_of_entry.get(&reversed).map(|b| b.batch_id);
                let points = entry.reversed_points.unwrap_or_default();
                check_coverage(
                    &mut violations,
                    &mut covered,
                    &entry_by_id,
                    entry,
                    reversed,
                    points,
                );
                Some(draw_for_reversal(
                    &member_batches,
                    own,
                    points,
                    entry.created_at,
                ))
            }
            "spend_reversal" => {
                let reversed = entry
                    .reversed_entry_id
                    .map(|e| e.as_uuid())
                    .unwrap_or_default();
                let points = entry.reversed_points.unwrap_or_default();
                let already = covered.get(&reversed).copied().unwrap_or(0);
                check_coverage(
                    &mut violations,
                    &mut covered,
                    &entry_by_id,
                    entry,
                    reversed,
                    points,
                );
                let spend_draws: Vec<BatchBalance> = allocations_of
                    .get(&reversed)
                    .unwrap_or(&no_draws)
                    .iter()
                    .filter_map(|draw| {
                        let batch = batches.iter().find(|b| b.batch_id == draw.batch_id)?;
                        Some(BatchBalance {
                            batch_id: draw.batch_id,
                            remaining: -draw.points,
                            earned_at: batch.earned_at,
                            expires_at: batch.expires_at,
                        })
                    })
                    .collect();
                Some(restore_for_spend_reversal(&spend_draws, already, points, entry.created_at).0)
            }
            "expiry" => Some(
                actual
                    .iter()
                    .filter_map(|draw| {
                        let batch = simulated.get(&draw.batch_id)?;
                        Some(Draw {
                            batch_id: draw.batch_id,
                            points: -batch.balance.remaining,
                        })
                    })
                    .collect(),
            ),
            other => {
                violations.push(format!("entry {id}: unknown kind {other}"));
                None
            }
        };
        let drawn: i64 = actual.iter().map(|d| d.points).sum();
        if !credit && drawn != entry.points {
            violations.push(format!(
                "entry {id} ({}): allocations sum to {drawn}, the entry says {}",
                entry.kind, entry.points
            ));
        }
        if let Some(expected) = expected {
            if sorted(&expected) != sorted(actual) {
                violations.push(format!(
                    "entry {id} ({}): allocations differ from what the rules draw",
                    entry.kind
                ));
            }
        }
        for draw in actual {
            match simulated.get_mut(&draw.batch_id) {
                Some(batch) if batch.member == member => {
                    batch.balance.remaining += draw.points;
                    if batch.balance.remaining < 0 || batch.balance.remaining > batch.amount {
                        violations.push(format!(
                            "batch {}: remaining {} outside 0..={} after entry {id}",
                            draw.batch_id, batch.balance.remaining, batch.amount
                        ));
                    }
                }
                _ => violations.push(format!(
                    "entry {id}: allocation on batch {} of another member or not yet credited",
                    draw.batch_id
                )),
            }
        }
    }

    let mut held_by_member: HashMap<Uuid, i64> = HashMap::new();
    for batch in batches {
        *held_by_member.entry(batch.member_id).or_default() += batch.remaining;
        match simulated.get(&batch.batch_id) {
            Some(sim) if sim.balance.remaining == batch.remaining => {}
            Some(sim) => violations.push(format!(
                "batch {}: remaining {} ≠ amount − allocations = {}",
                batch.batch_id, batch.remaining, sim.balance.remaining
            )),
            None => violations.push(format!("batch {}: no entry credited it", batch.batch_id)),
        }
    }
    let mut entries_by_member: HashMap<Uuid, i64> = HashMap::new();
    for entry in entries {
        *entries_by_member
            .entry(entry.member_id.as_uuid())
            .or_default() += entry.points;
    }
    for (member, total) in &entries_by_member {
        let held = held_by_member.get(member).copied().unwrap_or(0);
        if *total != held {
            violations.push(format!(
                "member {member}: Σ entries {total} ≠ Σ remaining of batches {held}"
            ));
        }
    }
    violations
}

/// No award took a member's purchase points of a day past the cap of the rules it was
/// computed under. Checked award by award in write order, so a cap introduced or lowered
/// during a day judges only the awards written after it.
fn check_daily_caps(entries: &[StoredEntry], caps: &HashMap<i64, Option<i64>>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut day_totals: HashMap<(Uuid, chrono::NaiveDate), i64> = HashMap::new();
    for entry in entries.iter().filter(|e| e.kind == "award") {
        let Some(day) = entry.cap_day else {
            violations.push(format!("award {}: no cap day", entry.entry_id));
            continue;
        };
        let total = day_totals
            .entry((entry.member_id.as_uuid(), day))
            .or_default();
        *total += entry.points;
        if let Some(Some(cap)) = caps.get(&entry.rules_version) {
            if entry.points > 0 && *total > *cap {
                violations.push(format!(
                    "award {}: member {} reached {total} purchase points on {day}, over the cap {cap}",
                    entry.entry_id, entry.member_id
                ));
            }
        }
    }
    violations
}

/// Reversals of one entry never cover more than the entry.
fn check_coverage(
    violations: &mut Vec<String>,
    covered: &mut HashMap<Uuid, i64>,
    entry_by_id: &HashMap<Uuid, &StoredEntry>,
    reversal: &StoredEntry,
    reversed: Uuid,
    points: i64,
) {
    let total = covered.entry(reversed).or_default();
    *total += points;
    let limit = entry_by_id
        .get(&reversed)
        .map(|e| e.points.abs())
        .unwrap_or(0);
    if *total > limit {
        violations.push(format!(
            "entry {}: reversals of {reversed} cover {} points of {limit}",
            reversal.entry_id, total
        ));
    }
}

fn sorted(draws: &[Draw]) -> Vec<(Uuid, i64)> {
    let mut pairs: Vec<_> = draws.iter().map(|d| (d.batch_id, d.points)).collect();
    pairs.sort();
    pairs
}
