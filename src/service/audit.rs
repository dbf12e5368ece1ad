//! The audit: checks a program's ledger against the rules the product promises, each stated
//! on its own from first principles. It never calls the functions the service computes
//! with (`domain::allocation`): when one of those is wrong, the audit must still disagree.
//! `flash audit` prints its report; tests call it after every run.
//!
//! Every sum is taken in i128, so a ledger written by an older, buggy version that holds
//! more than i64 is reported, never an error.
use super::{members::program_not_found, Error, Ledger};
use crate::domain::{EntryKind, ProgramId};
use crate::store::{
    self,
    audit::{AuditAllocation, AuditBatch, AuditRules, Snapshot, StoredEntry},
};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
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
        let snapshot = store::audit::snapshot(&*tx, program).await?;
        // What GetMember answers must be what the batches hold.
        let mut violations = Vec::new();
        for (member, _) in &snapshot.members {
            let member_id = crate::domain::MemberId::from_uuid(*member);
            let summary = store::members::points_summary(&*tx, program, member_id, now).await?;
            let live: i128 = snapshot
                .batches
                .iter()
                .filter(|b| b.member_id == *member && b.expires_at > now)
                .map(|b| i128::from(b.remaining))
                .sum();
            if summary.balance_points != live {
                violations.push(format!(
                    "member {member}: GetMember's balance {} ≠ Σ remaining of unexpired batches {live}",
                    summary.balance_points
                ));
            }
        }
        tx.commit().await?;
        violations.extend(check(&snapshot));
        violations.truncate(VIOLATIONS_MAX);
        Ok(AuditReport {
            program: program.to_string(),
            members: snapshot.members.len(),
            entries: snapshot.entries.len(),
            batches: snapshot.batches.len(),
            violations,
        })
    }
}

/// Every rule, over one snapshot.
pub fn check(snapshot: &Snapshot) -> Vec<String> {
    let ledger = Indexed::new(snapshot);
    let mut violations = Vec::new();
    violations.extend(keys_and_purchases_are_unique(&ledger));
    violations.extend(entries_have_their_kinds_shape(&ledger));
    violations.extend(allocations_add_up_to_their_entries(&ledger));
    violations.extend(batches_hold_their_amount_plus_their_allocations(&ledger));
    violations.extend(reversals_cover_at_most_what_they_reverse(&ledger));
    violations.extend(cancellations_return_only_what_the_spend_took(&ledger));
    violations.extend(members_owe_what_refunds_left_unrecovered(&ledger));
    violations.extend(balances_stay_within_net_credits(&ledger));
    violations.extend(expired_points_are_never_spent_and_only_expired_ones_expire(
        &ledger,
    ));
    violations.extend(spends_draw_the_oldest_points_first(&ledger));
    violations.extend(daily_caps_hold_in_every_zone_in_force(&ledger));
    violations.extend(every_member_figure_fits_i64(&ledger));
    violations.extend(tiers_are_what_their_history_says(snapshot));
    violations.extend(reupgrade_bonuses_have_their_demotion(snapshot));
    violations.extend(referral_credits_are_paid_once_per_conversion(snapshot));
    violations.extend(invite_quotas_hold_at_every_sending(snapshot));
    violations.extend(members_waiting_referrals_match_their_invites(snapshot));
    violations.extend(status_counts_only_earnings(&ledger));
    violations.extend(graph_snapshots_hold_only_converted_referrals(snapshot));
    violations
}

/// Every kept referral graph snapshot reads back whole, holds what its row says (content
/// hash, member and referral counts), and each of its edges is a referral that converted
/// (still converted, or clawed back after the snapshot was taken).
fn graph_snapshots_hold_only_converted_referrals(snapshot: &Snapshot) -> Vec<String> {
    use crate::domain::graph::{content_hash, ReferralGraph};
    let converted: HashSet<(Uuid, Uuid)> = snapshot
        .invites
        .iter()
        .filter(|invite| matches!(invite.status.as_str(), "converted" | "clawed_back"))
        .filter_map(|invite| Some((invite.referrer, invite.referee?)))
        .collect();
    let mut violations = Vec::new();
    for stored in &snapshot.graphs {
        let meta = &stored.meta;
        let name = format!(
            "graph snapshot of {} (version {})",
            meta.snapshot_date, meta.version
        );
        if content_hash(&stored.blob, &stored.index) != meta.content_hash {
            violations.push(format!("{name}: its bytes do not match its content hash"));
        }
        let graph = match ReferralGraph::decode(&stored.blob, &stored.index) {
            Ok(graph) => graph,
            Err(error) => {
                violations.push(format!("{name}: unreadable: {error}"));
                continue;
            }
        };
        let counts = (graph.nodes.len(), graph.edges.len());
        let stated = (
            usize::try_from(meta.node_count).unwrap_or(usize::MAX),
            usize::try_from(meta.edge_count).unwrap_or(usize::MAX),
        );
        if counts != stated {
            violations.push(format!(
                "{name}: holds {} members and {} referrals, its row says {} and {}",
                counts.0, counts.1, stated.0, stated.1
            ));
        }
        for &(referrer, referee) in &graph.edges {
            let pair = (
                graph.nodes[referrer as usize].member,
                graph.nodes[referee as usize].member,
            );
            if !converted.contains(&pair) {
                violations.push(format!(
                    "{name}: edge {} → {} is not a converted referral",
                    pair.0, pair.1
                ));
            }
        }
    }
    violations
}

/// A member's tier is the last word of its tier history (the first tier when it has
/// none); each change starts where the previous one ended, and a downgrade goes exactly
/// one rank down.
fn tiers_are_what_their_history_says(snapshot: &Snapshot) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last: HashMap<Uuid, i32> = HashMap::new();
    for change in &snapshot.tier_changes {
        let before = last.get(&change.member_id).copied().unwrap_or(0);
        if change.from_rank != before {
            violations.push(format!(
                "tier change {} of member {}: starts at rank {} but the member was at {before}",
                change.change_id, change.member_id, change.from_rank
            ));
        }
        let shape_ok = match change.change.as_str() {
            "upgraded" => change.to_rank > change.from_rank,
            "downgraded" => change.to_rank == change.from_rank - 1,
            _ => true,
        };
        if !shape_ok {
            violations.push(format!(
                "tier change {} of member {}: {} from rank {} to {}",
                change.change_id, change.member_id, change.change, change.from_rank, change.to_rank
            ));
        }
        last.insert(change.member_id, change.to_rank);
    }
    for (member, rank) in &snapshot.tiers {
        let expected = last.get(member).copied().unwrap_or(0);
        if *rank != expected {
            violations.push(format!(
                "member {member}: holds tier rank {rank} but its tier history ends at {expected}"
            ));
        }
    }
    violations
}

/// Every re-upgrade bonus names, by its derived key, a demotion of the same member made
/// before it; one bonus per demotion follows from the key being unique.
fn reupgrade_bonuses_have_their_demotion(snapshot: &Snapshot) -> Vec<String> {
    let demotions: HashMap<Uuid, &crate::store::audit::AuditTierChange> = snapshot
        .tier_changes
        .iter()
        .filter(|change| change.change == "downgraded")
        .map(|change| (change.change_id, change))
        .collect();
    let prefix = format!(
        "{}reupgrade:",
        crate::domain::IdempotencyKey::DERIVED_PREFIX
    );
    let mut violations = Vec::new();
    for entry in &snapshot.entries {
        if entry.kind != EntryKind::Bonus || entry.reason.as_deref() != Some("reupgrade") {
            continue;
        }
        let demotion = entry
            .idempotency_key
            .strip_prefix(&prefix)
            .and_then(|id| Uuid::parse_str(id).ok())
            .and_then(|id| demotions.get(&id));
        let paid_for_it = demotion.is_some_and(|demotion| {
            demotion.member_id == entry.member_id.as_uuid()
                && demotion.created_at <= entry.created_at
        });
        if !paid_for_it {
            violations.push(format!(
                "re-upgrade bonus {} (key {:?}): no demotion of member {} before it",
                entry.entry_id.as_uuid(),
                entry.idempotency_key,
                entry.member_id
            ));
        }
    }
    violations
}

/// Every referral credit names (by its derived key) an invite that converted, pays the
/// side it says to the member on that side, and is the entry the invite records for that
/// side; every converted invite's recorded credits exist. Keys are unique, so each side of
/// an invite is paid at most once.
fn referral_credits_are_paid_once_per_conversion(snapshot: &Snapshot) -> Vec<String> {
    let invites: HashMap<Uuid, &crate::store::audit::AuditInvite> = snapshot
        .invites
        .iter()
        .map(|invite| (invite.invite_id, invite))
        .collect();
    let prefix = format!("{}referral:", crate::domain::IdempotencyKey::DERIVED_PREFIX);
    let mut violations = Vec::new();
    let mut credited: HashSet<Uuid> = HashSet::new();
    for entry in &snapshot.entries {
        if entry.kind != EntryKind::Bonus || entry.reason.as_deref() != Some("referral") {
            continue;
        }
        let entry_id = entry.entry_id.as_uuid();
        credited.insert(entry_id);
        let cause = entry
            .idempotency_key
            .strip_prefix(&prefix)
            .and_then(|rest| {
                let (invite, side) = rest.split_once(':')?;
                Some((Uuid::parse_str(invite).ok()?, side))
            });
        let Some((invite_id, side)) = cause else {
            violations.push(format!(
                "referral credit {entry_id} has no referral key ({:?})",
                entry.idempotency_key
            ));
            continue;
        };
        let Some(invite) = invites.get(&invite_id) else {
            violations.push(format!("referral credit {entry_id}: no invite {invite_id}"));
            continue;
        };
        let (member, recorded) = match side {
            "referrer" => (Some(invite.referrer), invite.referrer_entry_id),
            "referee" => (invite.referee, invite.referee_entry_id),
            _ => (None, None),
        };
        let converted = matches!(invite.status.as_str(), "converted" | "clawed_back");
        if !converted || member != Some(entry.member_id.as_uuid()) || recorded != Some(entry_id) {
            violations.push(format!(
                "referral credit {entry_id} ({side} of invite {invite_id}, member {}): the \
                 invite is {} and records {recorded:?} for that side",
                entry.member_id, invite.status
            ));
        }
    }
    for invite in &snapshot.invites {
        for recorded in [invite.referrer_entry_id, invite.referee_entry_id]
            .into_iter()
            .flatten()
        {
            if !credited.contains(&recorded) {
                violations.push(format!(
                    "invite {} records credit {recorded}, which is not a referral credit",
                    invite.invite_id
                ));
            }
        }
    }
    violations
}

/// At every CreateInvites call, in write order: the referrer's invites sent that
/// program-local day stay within the per-day quota, and those sent and not expired before
/// the call stay within the lifetime quota, of the rules the call ran under.
fn invite_quotas_hold_at_every_sending(snapshot: &Snapshot) -> Vec<String> {
    let sent_by: HashMap<Uuid, &StoredEntry> = snapshot
        .entries
        .iter()
        .map(|entry| (entry.entry_id.as_uuid(), entry))
        .collect();
    let limits: HashMap<i64, (i64, i64)> = snapshot
        .rules
        .iter()
        .map(|rules| {
            (
                rules.version,
                (rules.max_invites_per_day, rules.max_invites_lifetime),
            )
        })
        .collect();
    let mut violations = Vec::new();
    let mut sendings: Vec<&StoredEntry> = snapshot
        .invites
        .iter()
        .filter_map(|invite| sent_by.get(&invite.sent_entry_id).copied())
        .collect();
    sendings.sort_by_key(|entry| entry.seq);
    sendings.dedup_by_key(|entry| entry.seq);
    for sending in sendings {
        let Some(&(per_day, lifetime)) = limits.get(&sending.rules_version) else {
            continue;
        };
        let referrer = sending.member_id.as_uuid();
        let upto: Vec<&crate::store::audit::AuditInvite> = snapshot
            .invites
            .iter()
            .filter(|invite| invite.referrer == referrer)
            .filter(|invite| {
                sent_by
                    .get(&invite.sent_entry_id)
                    .is_some_and(|entry| entry.seq <= sending.seq)
            })
            .collect();
        let Some(day) = upto
            .iter()
            .find(|invite| invite.sent_entry_id == sending.entry_id.as_uuid())
            .map(|invite| invite.sent_day)
        else {
            continue;
        };
        let today = upto.iter().filter(|invite| invite.sent_day == day).count();
        let held = upto
            .iter()
            .filter(|invite| {
                !(invite.status == "expired"
                    && invite.closed_at.is_some_and(|at| at <= sending.created_at))
            })
            .count();
        let (today, held) = (
            i64::try_from(today).unwrap_or(i64::MAX),
            i64::try_from(held).unwrap_or(i64::MAX),
        );
        if today > per_day || held > lifetime {
            violations.push(format!(
                "invites of {referrer} sent by entry {}: {today} that day (quota {per_day}), \
                 {held} held (quota {lifetime})",
                sending.entry_id.as_uuid()
            ));
        }
    }
    violations
}

/// A member's referral is the invite it accepted, and it waits for its qualifying purchase
/// exactly while that invite is accepted and not yet converted.
fn members_waiting_referrals_match_their_invites(snapshot: &Snapshot) -> Vec<String> {
    let mut violations = Vec::new();
    for (member, invite_id, open) in &snapshot.referrals {
        let invite = invite_id.and_then(|id| snapshot.invites.iter().find(|i| i.invite_id == id));
        let accepted_by_member = snapshot
            .invites
            .iter()
            .find(|invite| invite.referee == Some(*member));
        let consistent = match (invite, accepted_by_member) {
            (None, None) => !open,
            (Some(invite), Some(accepted)) => {
                invite.invite_id == accepted.invite_id && *open == (invite.status == "accepted")
            }
            _ => false,
        };
        if !consistent {
            violations.push(format!(
                "member {member}: referral {invite_id:?} (waiting: {open}) does not match the \
                 invite it accepted ({:?})",
                accepted_by_member.map(|invite| (invite.invite_id, invite.status.as_str()))
            ));
        }
    }
    violations
}

/// Status points come only from earnings: an award counts its points at its own instant,
/// a refund takes its reversed points back at its award's instant, bonuses count except
/// tier bonuses (so status never feeds itself), and spends, expiry, cancellations and tier
/// changes never count.
fn status_counts_only_earnings(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in &ledger.snapshot.entries {
        let status = entry.status_points.zip(entry.status_at);
        let expected = match entry.kind {
            EntryKind::Award => Some((entry.points, entry.created_at)),
            EntryKind::AwardReversal => entry
                .reversed_entry_id
                .and_then(|award| ledger.entry.get(&award.as_uuid()))
                .map(|award| (-entry.reversed_points.unwrap_or(0), award.created_at)),
            EntryKind::Bonus if entry.reason.as_deref() == Some("reupgrade") => None,
            EntryKind::Bonus => Some((entry.points, entry.created_at)),
            // Counted only when the adjustment said so; either way at its own instant.
            EntryKind::Adjustment => status.map(|_| (entry.points, entry.created_at)),
            EntryKind::Spend
            | EntryKind::SpendReversal
            | EntryKind::Expiry
            | EntryKind::TierSet
            | EntryKind::Referral => None,
        };
        if status != expected {
            violations.push(format!(
                "entry {} ({}): counts {status:?} toward status, expected {expected:?}",
                entry.entry_id.as_uuid(),
                entry.kind
            ));
        }
    }
    violations
}

/// The snapshot with the lookups the rules share.
struct Indexed<'a> {
    snapshot: &'a Snapshot,
    entry: HashMap<Uuid, &'a StoredEntry>,
    batch: HashMap<Uuid, &'a AuditBatch>,
    allocations_of_entry: HashMap<Uuid, Vec<&'a AuditAllocation>>,
    allocations_of_batch: HashMap<Uuid, Vec<&'a AuditAllocation>>,
    batches_of_entry: HashMap<Uuid, Vec<&'a AuditBatch>>,
    /// Entries by member, in write order.
    entries_of_member: BTreeMap<Uuid, Vec<&'a StoredEntry>>,
}

impl<'a> Indexed<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        let mut ledger = Self {
            snapshot,
            entry: HashMap::new(),
            batch: HashMap::new(),
            allocations_of_entry: HashMap::new(),
            allocations_of_batch: HashMap::new(),
            batches_of_entry: HashMap::new(),
            entries_of_member: BTreeMap::new(),
        };
        for entry in &snapshot.entries {
            ledger.entry.insert(entry.entry_id.as_uuid(), entry);
            ledger
                .entries_of_member
                .entry(entry.member_id.as_uuid())
                .or_default()
                .push(entry);
        }
        for batch in &snapshot.batches {
            ledger.batch.insert(batch.batch_id, batch);
            ledger
                .batches_of_entry
                .entry(batch.entry_id)
                .or_default()
                .push(batch);
        }
        for allocation in &snapshot.allocations {
            ledger
                .allocations_of_entry
                .entry(allocation.entry_id)
                .or_default()
                .push(allocation);
            ledger
                .allocations_of_batch
                .entry(allocation.batch_id)
                .or_default()
                .push(allocation);
        }
        ledger
    }

    fn allocations(&self, entry: Uuid) -> &[&'a AuditAllocation] {
        self.allocations_of_entry
            .get(&entry)
            .map_or(&[], Vec::as_slice)
    }
}

/// Credits create a batch; everything else moves points between batches and the world.
fn is_credit(entry: &StoredEntry) -> bool {
    matches!(entry.kind, EntryKind::Award | EntryKind::Bonus)
        || (entry.kind == EntryKind::Adjustment && entry.points > 0)
}

/// Draws taken from batches by the member's own choice to use points.
fn is_spending(entry: &StoredEntry) -> bool {
    entry.kind == EntryKind::Spend || (entry.kind == EntryKind::Adjustment && entry.points < 0)
}

/// One idempotency key of a client writes one entry; one purchase earns once, whichever
/// client sent it.
fn keys_and_purchases_are_unique(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let (mut keys, mut purchases) = (HashSet::new(), HashSet::new());
    for entry in &ledger.snapshot.entries {
        if !keys.insert((entry.client.as_str(), entry.idempotency_key.as_str())) {
            violations.push(format!(
                "idempotency key {:?} of client {:?} used by more than one entry",
                entry.idempotency_key, entry.client
            ));
        }
        if entry.kind == EntryKind::Award {
            let purchase = (entry.source.as_deref(), entry.external_ref.as_deref());
            if !purchases.insert(purchase) {
                violations.push(format!(
                    "purchase {}/{} awarded more than once (entry {})",
                    purchase.0.unwrap_or_default(),
                    purchase.1.unwrap_or_default(),
                    entry.entry_id.as_uuid()
                ));
            }
        }
    }
    violations
}

/// Each kind moves points one way: awards and bonuses credit, spends and expiries take,
/// reversals state how much they cover and why part of it did not move.
fn entries_have_their_kinds_shape(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in &ledger.snapshot.entries {
        let reversed = i128::from(entry.reversed_points.unwrap_or(0));
        let points = i128::from(entry.points);
        let unrecovered = i128::from(entry.unrecovered_points.unwrap_or(0));
        let repaid = i128::from(entry.repaid_points.unwrap_or(0));
        let well_formed = match entry.kind {
            EntryKind::Award => points >= 0 && entry.cap_day.is_some(),
            EntryKind::Bonus => points > 0,
            EntryKind::Spend | EntryKind::Expiry => points < 0,
            EntryKind::Adjustment => points != 0,
            EntryKind::TierSet | EntryKind::Referral => points == 0,
            // reversed = recovered + unrecovered, where recovered = −points.
            EntryKind::AwardReversal => {
                points <= 0 && unrecovered >= 0 && reversed == unrecovered - points
            }
            // reversed = restored + expired + repaid, expired ≥ 0.
            EntryKind::SpendReversal => points >= 0 && repaid >= 0 && reversed >= points + repaid,
        };
        if !well_formed {
            violations.push(format!(
                "entry {} ({}): its points {} do not fit its kind (reversed {reversed}, \
                 unrecovered {unrecovered}, repaid {repaid})",
                entry.entry_id.as_uuid(),
                entry.kind,
                entry.points
            ));
        }
    }
    violations
}

/// A credit puts its points in exactly one new batch of its member; any other entry's
/// allocations, all on its member's batches and all of one sign, add up to its points.
fn allocations_add_up_to_their_entries(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in &ledger.snapshot.entries {
        let id = entry.entry_id.as_uuid();
        let allocations = ledger.allocations(id);
        for allocation in allocations {
            match ledger.batch.get(&allocation.batch_id) {
                Some(batch) if batch.member_id == entry.member_id.as_uuid() => {}
                _ => violations.push(format!(
                    "entry {id}: allocation on batch {} of another member or of none",
                    allocation.batch_id
                )),
            }
        }
        let batches = ledger.batches_of_entry.get(&id).map_or(0, Vec::len);
        if is_credit(entry) {
            let one_batch = ledger.batches_of_entry.get(&id).is_some_and(|b| {
                b.len() == 1
                    && b[0].amount == entry.points
                    && b[0].member_id == entry.member_id.as_uuid()
            });
            if !allocations.is_empty() || (entry.points > 0 && !one_batch) {
                violations.push(format!(
                    "entry {id} ({}): a credit of {} must create one batch of that amount",
                    entry.kind, entry.points
                ));
            }
            continue;
        }
        let sum: i128 = allocations.iter().map(|a| i128::from(a.points)).sum();
        let restores = entry.kind == EntryKind::SpendReversal;
        let one_sign = allocations.iter().all(|a| (a.points > 0) == restores);
        if batches > 0 || !one_sign || sum != i128::from(entry.points) {
            violations.push(format!(
                "entry {id} ({}): allocations sum to {sum}, the entry says {}",
                entry.kind, entry.points
            ));
        }
    }
    violations
}

/// A batch holds its amount plus every draw and restoration recorded on it, never less
/// than nothing nor more than its amount, and was credited by an entry of its member.
fn batches_hold_their_amount_plus_their_allocations(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for batch in &ledger.snapshot.batches {
        let allocated: i128 = ledger
            .allocations_of_batch
            .get(&batch.batch_id)
            .into_iter()
            .flatten()
            .map(|a| i128::from(a.points))
            .sum();
        let expected = i128::from(batch.amount) + allocated;
        if i128::from(batch.remaining) != expected
            || batch.remaining < 0
            || batch.remaining > batch.amount
        {
            violations.push(format!(
                "batch {}: remaining {} ≠ amount {} + allocations {allocated}, or outside 0..=amount",
                batch.batch_id, batch.remaining, batch.amount
            ));
        }
        match ledger.entry.get(&batch.entry_id) {
            Some(entry) if entry.member_id.as_uuid() == batch.member_id && is_credit(entry) => {}
            _ => violations.push(format!(
                "batch {}: no credit of its member created it",
                batch.batch_id
            )),
        }
    }
    violations
}

/// Reversals name an earlier entry of their member and the right kind, and together never
/// cover more than it moved.
fn reversals_cover_at_most_what_they_reverse(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let mut covered: HashMap<Uuid, i128> = HashMap::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    for entry in &ledger.snapshot.entries {
        seen.insert(entry.entry_id.as_uuid());
        let expected_kind = match entry.kind {
            EntryKind::AwardReversal => EntryKind::Award,
            EntryKind::SpendReversal => EntryKind::Spend,
            _ => continue,
        };
        // A referral clawback reverses a referral credit (a bonus) the same way.
        let clawback = entry.kind == EntryKind::AwardReversal
            && entry.reason.as_deref() == Some("referral clawback");
        let Some(reversed) = entry
            .reversed_entry_id
            .map(|id| id.as_uuid())
            .and_then(|id| ledger.entry.get(&id))
        else {
            violations.push(format!(
                "entry {}: reverses no entry",
                entry.entry_id.as_uuid()
            ));
            continue;
        };
        let right_kind = reversed.kind == expected_kind
            || (clawback
                && reversed.kind == EntryKind::Bonus
                && reversed.reason.as_deref() == Some("referral"));
        if !right_kind
            || reversed.member_id.as_uuid() != entry.member_id.as_uuid()
            || !seen.contains(&reversed.entry_id.as_uuid())
        {
            violations.push(format!(
                "entry {}: reverses {} ({}), not an earlier {expected_kind} of its member",
                entry.entry_id.as_uuid(),
                reversed.entry_id.as_uuid(),
                reversed.kind
            ));
        }
        let total = covered.entry(reversed.entry_id.as_uuid()).or_default();
        *total += i128::from(entry.reversed_points.unwrap_or(0));
        let limit = i128::from(reversed.points).abs();
        if *total > limit {
            violations.push(format!(
                "entry {}: reversals of {} cover {total} points of its {limit}",
                entry.entry_id.as_uuid(),
                reversed.entry_id.as_uuid()
            ));
        }
    }
    violations
}

/// A cancelled spend's points go back only into the batches it drew from, never more
/// into one than it took from it.
fn cancellations_return_only_what_the_spend_took(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let mut returned: HashMap<(Uuid, Uuid), i128> = HashMap::new();
    for entry in ledger
        .snapshot
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::SpendReversal)
    {
        let Some(spend) = entry.reversed_entry_id.map(|id| id.as_uuid()) else {
            continue;
        };
        let taken: HashMap<Uuid, i128> = ledger
            .allocations(spend)
            .iter()
            .map(|a| (a.batch_id, -i128::from(a.points)))
            .collect();
        for allocation in ledger.allocations(entry.entry_id.as_uuid()) {
            let total = returned.entry((spend, allocation.batch_id)).or_default();
            *total += i128::from(allocation.points);
            let took = taken.get(&allocation.batch_id).copied().unwrap_or(0);
            if *total > took {
                violations.push(format!(
                    "entry {}: puts {total} points back into batch {}, which spend {spend} \
                     took {took} from",
                    entry.entry_id.as_uuid(),
                    allocation.batch_id
                ));
            }
        }
    }
    violations
}

/// What a member owes is what its refunds could not take back (spent already) less what
/// cancelled spends kept back to repay it, and never less than nothing.
fn members_owe_what_refunds_left_unrecovered(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for (member, stored_owed) in &ledger.snapshot.members {
        let entries = ledger
            .entries_of_member
            .get(member)
            .map_or(&[][..], Vec::as_slice);
        let owed: i128 = entries
            .iter()
            .map(|e| {
                i128::from(e.unrecovered_points.unwrap_or(0))
                    - i128::from(e.repaid_points.unwrap_or(0))
            })
            .sum();
        if owed != i128::from(*stored_owed) || owed < 0 {
            violations.push(format!(
                "member {member}: owes {stored_owed} points, its refunds and cancellations say {owed}"
            ));
        }
    }
    violations
}

/// The books of each member: the points its batches hold are exactly the sum of its
/// entries, and — stated without any allocation rule — never more than it was credited net
/// of refunds, less what it spent net of cancellations, less what expired, plus what it
/// owes (refunded points it had already spent). A refund followed by the cancellation of the
/// redemption that spent its points can no longer leave points behind.
fn balances_stay_within_net_credits(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let owed: HashMap<Uuid, i128> = ledger
        .snapshot
        .members
        .iter()
        .map(|(member, owed)| (*member, i128::from(*owed)))
        .collect();
    let mut held: HashMap<Uuid, i128> = HashMap::new();
    for batch in &ledger.snapshot.batches {
        *held.entry(batch.member_id).or_default() += i128::from(batch.remaining);
    }
    for (member, entries) in &ledger.entries_of_member {
        let held = held.get(member).copied().unwrap_or(0);
        let net: i128 = entries.iter().map(|e| i128::from(e.points)).sum();
        if held != net {
            violations.push(format!(
                "member {member}: batches hold {held}, its entries add up to {net}"
            ));
        }
        let (mut credited, mut refunded, mut spent, mut cancelled, mut expired) =
            (0i128, 0i128, 0i128, 0i128, 0i128);
        for entry in entries {
            let points = i128::from(entry.points);
            let reversed = i128::from(entry.reversed_points.unwrap_or(0));
            match entry.kind {
                _ if is_credit(entry) => credited += points,
                _ if is_spending(entry) => spent -= points,
                EntryKind::AwardReversal => refunded += reversed,
                EntryKind::SpendReversal => cancelled += reversed,
                EntryKind::Expiry => expired -= points,
                _ => {}
            }
        }
        let owes = owed.get(member).copied().unwrap_or(0);
        let bound = credited - refunded - (spent - cancelled) - expired + owes;
        if held > bound {
            violations.push(format!(
                "member {member}: holds {held} points, more than credited {credited} − refunded \
                 {refunded} − spent {spent} + cancelled {cancelled} − expired {expired} + owed \
                 {owes} = {bound}"
            ));
        }
    }
    violations
}

/// No point is spent, debited, refunded from or put back into a batch past its expiry at
/// the entry's time, none is drawn before it was earned, and an expiry entry takes only
/// from batches that had expired by its own time.
fn expired_points_are_never_spent_and_only_expired_ones_expire(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in &ledger.snapshot.entries {
        for allocation in ledger.allocations(entry.entry_id.as_uuid()) {
            let Some(batch) = ledger.batch.get(&allocation.batch_id) else {
                continue;
            };
            let expired_then = batch.expires_at <= entry.created_at;
            let problem = if batch.earned_at > entry.created_at {
                Some("before it was earned")
            } else if entry.kind == EntryKind::Expiry && !expired_then {
                Some("before it expired")
            } else if entry.kind != EntryKind::Expiry && expired_then {
                Some("after it expired")
            } else {
                None
            };
            if let Some(problem) = problem {
                violations.push(format!(
                    "entry {} ({}): moves points of batch {} {problem} (expires {}, entry at {})",
                    entry.entry_id.as_uuid(),
                    entry.kind,
                    batch.batch_id,
                    batch.expires_at,
                    entry.created_at
                ));
            }
        }
    }
    violations
}

/// Spends and debits take the member's oldest spendable points first: the batches an entry
/// drew from are the oldest ones spendable at its time (earned_at, then id), every one of
/// them but the last emptied. A refund takes from its own award's batch first, then the
/// same way. Batches' contents at each entry's time are rebuilt by adding allocations in
/// write order — plain arithmetic, not the service's draw functions.
fn spends_draw_the_oldest_points_first(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    for entries in ledger.entries_of_member.values() {
        let mut remaining: BTreeMap<(DateTime<Utc>, Uuid), i128> = BTreeMap::new();
        for entry in entries {
            let drawn: HashMap<Uuid, i128> = ledger
                .allocations(entry.entry_id.as_uuid())
                .iter()
                .map(|a| (a.batch_id, -i128::from(a.points)))
                .collect();
            let own = (entry.kind == EntryKind::AwardReversal)
                .then_some(entry.reversed_entry_id)
                .flatten()
                .and_then(|award| ledger.batches_of_entry.get(&award.as_uuid()))
                .and_then(|batches| batches.first())
                .map(|batch| batch.batch_id);
            if is_spending(entry) || entry.kind == EntryKind::AwardReversal {
                let order: Vec<(Uuid, i128)> = remaining
                    .iter()
                    .filter(|((_, id), held)| {
                        **held > 0
                            && ledger
                                .batch
                                .get(id)
                                .is_some_and(|b| b.expires_at > entry.created_at)
                    })
                    .map(|((_, id), held)| (*id, *held))
                    .collect();
                if let Some(problem) = oldest_first_problem(&order, &drawn, own) {
                    violations.push(format!(
                        "entry {} ({}): allocations differ from oldest-first: {problem}",
                        entry.entry_id.as_uuid(),
                        entry.kind
                    ));
                }
            }
            if is_credit(entry) {
                for batch in ledger
                    .batches_of_entry
                    .get(&entry.entry_id.as_uuid())
                    .into_iter()
                    .flatten()
                {
                    remaining.insert((batch.earned_at, batch.batch_id), i128::from(batch.amount));
                }
            }
            for allocation in ledger.allocations(entry.entry_id.as_uuid()) {
                if let Some(batch) = ledger.batch.get(&allocation.batch_id) {
                    *remaining
                        .entry((batch.earned_at, batch.batch_id))
                        .or_default() += i128::from(allocation.points);
                }
            }
        }
    }
    violations
}

/// Given the spendable batches oldest first with what they held, and what an entry drew
/// from each, what breaks "oldest first" (with `own` taken before all others), if anything.
fn oldest_first_problem(
    spendable: &[(Uuid, i128)],
    drawn: &HashMap<Uuid, i128>,
    own: Option<Uuid>,
) -> Option<String> {
    let mut order: Vec<(Uuid, i128)> = spendable.to_vec();
    if let Some(own) = own {
        if let Some(at) = order.iter().position(|(id, _)| *id == own) {
            let first = order.remove(at);
            order.insert(0, first);
        }
    }
    let mut finished = false;
    for (batch, held) in &order {
        let took = drawn.get(batch).copied().unwrap_or(0);
        if finished && took > 0 {
            return Some(format!(
                "drew from batch {batch} while an older one kept points"
            ));
        }
        if took < *held {
            finished = true;
        }
    }
    drawn
        .keys()
        .find(|batch| !order.iter().any(|(id, _)| id == *batch))
        .map(|batch| format!("drew from batch {batch}, which held no spendable points"))
}

/// The daily cap: when a member earns purchase points at instant t, for every time zone Z
/// that was the program's at some instant of Z's local day up to t, the member's purchase
/// points of that local day up to and including this award stay within the cap of the
/// rules the award was made under. A zone change can never open a second cap in one
/// local day.
fn daily_caps_hold_in_every_zone_in_force(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let rules = &ledger.snapshot.rules;
    let mut zones: Vec<chrono_tz::Tz> = Vec::new();
    for version in rules {
        if let Ok(zone) = version.timezone.parse::<chrono_tz::Tz>() {
            if !zones.contains(&zone) {
                zones.push(zone);
            }
        }
    }
    let cap_of: HashMap<i64, Option<i64>> = rules
        .iter()
        .map(|r| (r.version, r.daily_cap_points))
        .collect();
    for (member, entries) in &ledger.entries_of_member {
        let awards: Vec<&StoredEntry> = entries
            .iter()
            .copied()
            .filter(|e| e.kind == EntryKind::Award)
            .collect();
        for (index, award) in awards.iter().enumerate() {
            let Some(Some(cap)) = cap_of.get(&award.rules_version) else {
                continue;
            };
            if award.points == 0 {
                continue;
            }
            let t = award.created_at;
            for zone in &zones {
                let day = t.with_timezone(zone).date_naive();
                let (start, _) = crate::domain::local_day_bounds(day, *zone);
                let end = t + chrono::Duration::nanoseconds(1);
                // The versions the award could know of: its own and those before it.
                let known = rules.partition_point(|r| r.version <= award.rules_version);
                let in_force = versions_in_force(&rules[..known], start, end)
                    .iter()
                    .any(|r| r.timezone == zone.name());
                if !in_force {
                    continue;
                }
                // Awards are in write order, which is time order but for clock skew: two
                // days back is far enough for any local day.
                let horizon = start - chrono::Duration::days(2);
                let earned: i128 = awards[..=index]
                    .iter()
                    .rev()
                    .take_while(|a| a.created_at >= horizon)
                    .filter(|a| a.created_at >= start && a.created_at <= t)
                    .map(|a| i128::from(a.points))
                    .sum();
                if earned > i128::from(*cap) {
                    violations.push(format!(
                        "award {}: member {member} reached {earned} purchase points on {day} in \
                         {}, over the cap {cap}",
                        award.entry_id.as_uuid(),
                        zone.name()
                    ));
                }
            }
        }
    }
    violations
}

/// The rules versions in force at some instant of `[start, end)`.
fn versions_in_force(
    rules: &[AuditRules],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<&AuditRules> {
    rules
        .iter()
        .enumerate()
        .filter(|(index, version)| {
            let until = rules.get(index + 1).map(|next| next.effective_at);
            version.effective_at < end && until.is_none_or(|until| until > start)
        })
        .map(|(_, version)| version)
        .collect()
}

/// Every figure of a member fits its int64 field: its balance and its earned points (a
/// credit that would pass i64 is refused). Program totals are summed exactly in numeric
/// and may pass i64, which GetLiability answers with OUT_OF_RANGE naming the figure.
fn every_member_figure_fits_i64(ledger: &Indexed) -> Vec<String> {
    let mut violations = Vec::new();
    let max = i128::from(i64::MAX);
    let mut held: BTreeMap<Uuid, i128> = BTreeMap::new();
    for batch in &ledger.snapshot.batches {
        *held.entry(batch.member_id).or_default() += i128::from(batch.remaining);
    }
    for (member, points) in &held {
        if *points > max {
            violations.push(format!("member {member}: holds {points} points, past i64"));
        }
    }
    for (member, entries) in &ledger.entries_of_member {
        let earned: i128 = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Award | EntryKind::Bonus))
            .map(|e| i128::from(e.points))
            .sum();
        if earned > max {
            violations.push(format!("member {member}: earned {earned} points, past i64"));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn oldest_first_accepts_a_prefix_and_refuses_a_skip() {
        let spendable = [(id(1), 400), (id(2), 250), (id(3), 100)];
        let fifo: HashMap<Uuid, i128> = [(id(1), 400), (id(2), 100)].into();
        assert_eq!(oldest_first_problem(&spendable, &fifo, None), None);
        let skipped: HashMap<Uuid, i128> = [(id(2), 100)].into();
        assert!(oldest_first_problem(&spendable, &skipped, None).is_some());
        let own_first: HashMap<Uuid, i128> = [(id(3), 100), (id(1), 50)].into();
        assert_eq!(
            oldest_first_problem(&spendable, &own_first, Some(id(3))),
            None
        );
        assert!(oldest_first_problem(&spendable, &own_first, None).is_some());
        let unknown: HashMap<Uuid, i128> = [(id(9), 1)].into();
        assert!(oldest_first_problem(&spendable, &unknown, None).is_some());
    }

    #[test]
    fn versions_in_force_overlap_the_interval() {
        let at = |h: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
                .unwrap()
                .and_hms_opt(h, 0, 0)
                .unwrap()
                .and_utc()
        };
        let version = |v: i64, h: u32| AuditRules {
            version: v,
            effective_at: at(h),
            timezone: "UTC".into(),
            daily_cap_points: Some(500),
            max_invites_per_day: 50,
            max_invites_lifetime: 500,
        };
        let rules = [version(1, 0), version(2, 11)];
        let found: Vec<i64> = versions_in_force(&rules, at(12), at(13))
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(found, [2]);
        let found: Vec<i64> = versions_in_force(&rules, at(5), at(13))
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(found, [1, 2]);
    }
}
