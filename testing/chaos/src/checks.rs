//! The end-of-run checks: the ledger against the model of acknowledged outcomes.
use crate::infra::{blocking, Infra};
use crate::workload::{self, Answer, Ctx, Fate, KeyRecord, Stats, PROGRAM};
use flash_loyalty::grpc::proto;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

/// The model's record of every key sent.
type Keys = HashMap<String, KeyRecord>;

pub struct Limits {
    pub daily_cap_points: i64,
    pub max_rss_kib: u64,
}

/// Self-test of the checks: one live batch gets a point it was never credited, so the
/// balance, the tie-out and `flash audit` must all object.
pub async fn corrupt(infra: &Infra) -> anyhow::Result<()> {
    let db = infra.connect(crate::infra::DATABASE).await?;
    let changed = db
        .execute(
            "UPDATE point_batches SET remaining = remaining + 1 WHERE (program_id, batch_id) = \
               (SELECT program_id, batch_id FROM point_batches \
                 WHERE program_id = $1 AND remaining < amount AND expires_at > now() LIMIT 1)",
            &[&PROGRAM],
        )
        .await?;
    anyhow::ensure!(changed == 1, "no partly spent live batch to corrupt");
    Ok(())
}

/// Runs every check; findings go to `ctx.stats` failures and notes.
pub async fn run(infra: &Infra, ctx: &Ctx, rng: &mut ChaCha8Rng, limits: &Limits) {
    if let Err(error) = checks(infra, ctx, rng, limits).await {
        ctx.stats.fail(format!("checks could not run: {error:#}"));
    }
}

async fn checks(
    infra: &Infra,
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
    limits: &Limits,
) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let db = infra.connect(crate::infra::DATABASE).await?;
    let ledger = Ledger::read(&db, stats).await?;
    let model = ctx.model.lock().unwrap().keys.clone();
    every_acknowledged_key_has_its_one_entry(ctx, &model, &ledger.entries);
    balances_match_the_model(ctx, rng, &model, &ledger.engine).await;
    every_change_has_its_one_event(&db, stats).await?;
    each_referral_paid_once(&db, ctx).await?;
    the_graph_holds_the_converted_referrals(&db, ctx, rng).await?;
    the_workers_paid_each_bonus_once(&db, ctx).await?;
    a_cursor_walk_delivers_every_event_once(&db, ctx, rng).await?;
    let per_member = entries_per_member(&db).await?;
    list_entries_pages_through_each_members_entries(ctx, rng, &per_member).await;
    let total: i64 = per_member.values().map(|(_, sum)| sum).sum();
    liability_ties_out(&db, ctx, rng, total).await?;
    books_tie_out(&db, stats).await?;
    no_member_day_earned_past_the_cap(&db, stats, limits).await?;
    no_session_idle_in_transaction(&db, stats).await?;
    memory_stayed_bounded(infra, stats, limits);
    flash_audit_passes(infra, stats)?;
    Ok(())
}

/// The program's entries as the checks read them.
struct Ledger {
    /// Every entry by its idempotency key: (kind, points, member).
    entries: HashMap<String, (String, i64, String)>,
    /// Points the engine moved on its own, per member: expiry sweeps (negative) and bonuses
    /// under keys derived from their cause (birthday, re-engagement, re-upgrade).
    engine: HashMap<String, i64>,
}

/// Whether an entry is the engine's own (no client sent its key).
fn engine_entry(kind: &str, key: &str) -> bool {
    kind == "expiry" || key.starts_with("flash:")
}

impl Ledger {
    async fn read(db: &tokio_postgres::Client, stats: &Stats) -> anyhow::Result<Ledger> {
        let rows = db
            .query(
                "SELECT idempotency_key, kind, points, member_id::text FROM ledger_entries \
                 WHERE program_id = $1",
                &[&PROGRAM],
            )
            .await?;
        let mut entries: HashMap<String, (String, i64, String)> = HashMap::new();
        let mut engine: HashMap<String, i64> = HashMap::new();
        let (mut sweeps, mut swept, mut bonuses, mut bonus_points) = (0, 0, 0, 0);
        for row in &rows {
            let (key, kind, points, member): (String, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if engine_entry(&kind, &key) {
                *engine.entry(member.clone()).or_default() += points;
                if kind == "expiry" {
                    (sweeps, swept) = (sweeps + 1, swept + points);
                } else {
                    (bonuses, bonus_points) = (bonuses + 1, bonus_points + points);
                }
            }
            entries.insert(key, (kind, points, member));
        }
        stats.note(format!(
            "{sweeps} expiry entries, {swept} points swept; {bonuses} bonuses, {bonus_points} points"
        ));
        Ok(Ledger { entries, engine })
    }
}

/// 1. Every acknowledged key has its one entry, every refused key none.
fn every_acknowledged_key_has_its_one_entry(
    ctx: &Ctx,
    model: &Keys,
    entries: &HashMap<String, (String, i64, String)>,
) {
    let stats = &ctx.stats;
    let (mut unresolved, mut missing, mut written) = (Vec::new(), Vec::new(), Vec::new());
    for (key, record) in model {
        let entry = entries.get(key);
        match (&record.fate, entry) {
            (Fate::Unresolved, _) => unresolved.push(key.clone()),
            (Fate::Acked, None) => missing.push(key.clone()),
            (Fate::Acked, Some((kind, points, member))) => {
                let expected_member = record.member.map(|m| ctx.members[m].as_str());
                if kind != record.kind
                    || *points != record.delta
                    || expected_member != Some(member.as_str())
                {
                    stats.fail(format!(
                        "key {key}: acknowledged as {} of {} points for {expected_member:?}, \
                         entry is {kind} of {points} for {member}",
                        record.kind, record.delta
                    ));
                }
            }
            (Fate::Refused(code), Some((kind, points, _))) => {
                written.push(format!("{key} ({code:?}; entry {kind} {points})"))
            }
            (Fate::Refused(_), None) | (Fate::Indeterminate, _) => {}
        }
    }
    if !unresolved.is_empty() {
        unresolved.sort();
        stats.fail(format!(
            "{} keys never got a definite answer after healing, e.g. {:?}",
            unresolved.len(),
            &unresolved[..unresolved.len().min(5)]
        ));
    }
    if !missing.is_empty() {
        missing.sort();
        stats.fail(format!(
            "{} acknowledged keys have no ledger entry, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !written.is_empty() {
        written.sort();
        stats.fail(format!(
            "{} refused keys have a ledger entry, e.g. {:?}",
            written.len(),
            &written[..written.len().min(5)]
        ));
    }
    let strangers: Vec<&String> = entries
        .iter()
        .filter(|(key, (kind, _, _))| !engine_entry(kind, key) && !model.contains_key(*key))
        .map(|(key, _)| key)
        .take(5)
        .collect();
    if !strangers.is_empty() {
        stats.fail(format!("entries under keys never sent: {strangers:?}"));
    }
}

/// 2. Each member's balance equals the model: acknowledged deltas plus what the engine moved
///    on its own (swept expiries, bonuses).
async fn balances_match_the_model(
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
    model: &Keys,
    expired: &HashMap<String, i64>,
) {
    let stats = &ctx.stats;
    let mut model_balance = vec![0i64; ctx.members.len()];
    let mut unknown_members = vec![false; ctx.members.len()];
    for record in model.values() {
        match (&record.fate, record.member) {
            (Fate::Acked, Some(member)) => model_balance[member] += record.delta,
            (Fate::Indeterminate, Some(member)) => unknown_members[member] = true,
            _ => {}
        }
    }
    for index in ctx.enrolled_members() {
        let member = &ctx.members[index];
        let expected = model_balance[index] + expired.get(member).copied().unwrap_or(0);
        match ctx.get_member(rng, index).await {
            Answer::Ok(response) => {
                let balance = response.member.map_or(i64::MIN, |m| m.balance_points);
                if balance != expected && !unknown_members[index] {
                    stats.fail(format!(
                        "member {member}: balance {balance}, model {expected} \
                         (acknowledged {}, swept and bonuses {})",
                        model_balance[index],
                        expired.get(member).copied().unwrap_or(0)
                    ));
                }
            }
            _ => stats.fail(format!("member {member}: GetMember failed after healing")),
        }
    }
}

/// Each member's entries in the ledger: (count, Σ points).
async fn entries_per_member(
    db: &tokio_postgres::Client,
) -> anyhow::Result<HashMap<String, (i64, i64)>> {
    let per_member = db
        .query(
            "SELECT member_id::text, count(*), COALESCE(sum(points), 0)::bigint \
             FROM ledger_entries WHERE program_id = $1 GROUP BY 1",
            &[&PROGRAM],
        )
        .await?;
    let per_member: HashMap<String, (i64, i64)> = per_member
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok(per_member)
}

/// 2b. ListEntries pages through exactly the member's entries, newest first.
async fn list_entries_pages_through_each_members_entries(
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
    per_member: &HashMap<String, (i64, i64)>,
) {
    let stats = &ctx.stats;
    for index in ctx.enrolled_members() {
        let member = &ctx.members[index];
        let (mut count, mut sum, mut token, mut pages) = (0i64, 0i64, String::new(), 0);
        let mut seen = std::collections::HashSet::new();
        loop {
            pages += 1;
            let Answer::Ok(page) = ctx.list_entries(rng, index, &token).await else {
                stats.fail(format!("member {member}: ListEntries failed after healing"));
                break;
            };
            for entry in &page.entries {
                count += 1;
                sum += entry.points;
                if !seen.insert(entry.entry_id.clone()) {
                    stats.fail(format!(
                        "member {member}: ListEntries returned entry {} twice",
                        entry.entry_id
                    ));
                }
            }
            token = page.next_page_token;
            if token.is_empty() || pages > 10_000 {
                break;
            }
        }
        let expected = per_member.get(member).copied().unwrap_or((0, 0));
        if (count, sum) != expected {
            stats.fail(format!(
                "member {member}: ListEntries gave {count} entries totalling {sum}, \
                 the ledger holds {} totalling {}",
                expected.0, expected.1
            ));
        }
    }
}

/// 2c. GetLiability: outstanding = Σ balances, remaining = Σ entries (`total`), the
/// roll-forward adds up and closes on Σ entries.
async fn liability_ties_out(
    db: &tokio_postgres::Client,
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
    total: i64,
) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let live: i64 = db
        .query_one(
            "SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches \
             WHERE program_id = $1 AND expires_at > now()",
            &[&PROGRAM],
        )
        .await?
        .get(0);
    let to_instant = chrono::Utc::now();
    let from = flash_testing_support::timestamp(to_instant - chrono::Duration::hours(1));
    let to = flash_testing_support::timestamp(to_instant);
    // The sweeps run with their clock moved ahead, so their entries are dated after `to`:
    // the roll-forward closes on the entries dated before it, the batches on all of them.
    let dated: i64 = db
        .query_one(
            "SELECT COALESCE(sum(points), 0)::bigint FROM ledger_entries \
             WHERE program_id = $1 AND created_at < $2",
            &[&PROGRAM, &to_instant],
        )
        .await?
        .get(0);
    match ctx.get_liability(rng, from, to).await {
        Answer::Ok(report) => {
            let roll = report.roll_forward.unwrap_or_default();
            let computed = roll.opening_balance_points + roll.earned_points + roll.bonus_points
                - roll.reversed_points
                + roll.restored_points
                - roll.spent_points
                + roll.adjusted_credit_points
                - roll.adjusted_debit_points
                - roll.expired_points;
            if report.batches_remaining_points != total
                || report.outstanding_points + report.unswept_expired_points
                    != report.batches_remaining_points
                || report.outstanding_points != live
                || computed != roll.closing_balance_points
                || roll.closing_balance_points != dated
                || roll.opening_balance_points != 0
            {
                stats.fail(format!(
                    "GetLiability does not tie out (Σ entries {total}, dated before `to` \
                     {dated}, live batches {live}): \
                     outstanding {}, unswept {}, remaining {}, roll-forward {roll:?} \
                     adds up to {computed}",
                    report.outstanding_points,
                    report.unswept_expired_points,
                    report.batches_remaining_points
                ));
            }
            let by_month: i64 = report
                .outstanding_by_expiry_month
                .iter()
                .map(|m| m.points)
                .sum();
            if by_month != report.outstanding_points {
                stats.fail(format!(
                    "GetLiability: by-month total {by_month} ≠ outstanding {}",
                    report.outstanding_points
                ));
            }
        }
        Answer::Unimplemented => stats.note("GetLiability is unimplemented: not checked"),
        _ => stats.fail("GetLiability failed after healing"),
    }
    Ok(())
}

/// 3. The books tie out: Σ entries = Σ batch remaining, per member; nothing negative.
async fn books_tie_out(db: &tokio_postgres::Client, stats: &Stats) -> anyhow::Result<()> {
    let rows = db
        .query(
            "SELECT m.member_id::text, \
               (SELECT COALESCE(sum(points), 0)::bigint FROM ledger_entries e \
                 WHERE e.program_id = m.program_id AND e.member_id = m.member_id), \
               (SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches b \
                 WHERE b.program_id = m.program_id AND b.member_id = m.member_id) \
             FROM members m WHERE m.program_id = $1",
            &[&PROGRAM],
        )
        .await?;
    for row in rows {
        let (member, entries, held): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if entries != held || held < 0 {
            stats.fail(format!(
                "member {member}: Σ entries {entries} ≠ Σ batch remaining {held}"
            ));
        }
    }
    Ok(())
}

/// 3b. The outbox holds exactly one event for every entry and every tier change, and none
/// for anything that was rolled back (an event naming no entry or change).
async fn every_change_has_its_one_event(
    db: &tokio_postgres::Client,
    stats: &Stats,
) -> anyhow::Result<()> {
    let row = db
        .query_one(
            "WITH named AS ( \
               SELECT payload ->> 'entry_id' AS entry_id, count(*) AS n FROM events \
               WHERE program_id = $1 AND event_type IN ('points.awarded', 'points.spent', \
                 'points.award_reversed', 'points.spend_reversed', 'points.adjusted', \
                 'points.expired', 'bonus.awarded', 'tier.set') GROUP BY 1), \
             changes AS ( \
               SELECT payload ->> 'change_id' AS change_id, count(*) AS n FROM events \
               WHERE program_id = $1 AND event_type IN ('tier.upgraded', 'tier.downgraded', \
                 'tier.set') GROUP BY 1) \
             SELECT \
               (SELECT count(*) FROM ledger_entries e LEFT JOIN named \
                  ON named.entry_id = e.entry_id::text \
                 WHERE e.program_id = $1 AND e.kind <> 'referral' \
                   AND COALESCE(named.n, 0) <> 1), \
               (SELECT count(*) FROM named WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e \
                 WHERE e.program_id = $1 AND e.entry_id::text = named.entry_id)), \
               (SELECT count(*) FROM tier_changes c LEFT JOIN changes \
                  ON changes.change_id = c.change_id::text \
                 WHERE c.program_id = $1 AND COALESCE(changes.n, 0) <> 1), \
               (SELECT count(*) FROM events WHERE program_id = $1)",
            &[&PROGRAM],
        )
        .await?;
    let (entries, orphans, changes, events): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if entries > 0 {
        stats.fail(format!("{entries} entries without exactly one event"));
    }
    if orphans > 0 {
        stats.fail(format!(
            "{orphans} events name an entry that does not exist"
        ));
    }
    if changes > 0 {
        stats.fail(format!("{changes} tier changes without exactly one event"));
    }
    stats.note(format!("{events} events in the outbox"));
    Ok(())
}

/// 3c'. Referrals: each converted invite paid each side once, with the rules' points, and a
///      clawed-back one had both credits reversed; no referral credit outside them; every
///      invite's transitions each have their one event; every acceptance the driver saw
///      stands, and every conversion it saw acknowledged is converted (or clawed back).
async fn each_referral_paid_once(db: &tokio_postgres::Client, ctx: &Ctx) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let invites = db
        .query(
            "SELECT i.invite_id::text, i.status, i.referrer_member_id::text, \
               i.referee_member_id::text, i.accepted_at IS NOT NULL, \
               (SELECT array_agg(e.member_id::text || ':' || e.points || ':' || \
                  (SELECT count(*) FROM ledger_entries r WHERE r.program_id = e.program_id \
                     AND r.reversed_entry_id = e.entry_id AND r.reason = 'referral clawback') \
                  ORDER BY e.member_id) \
                  FROM ledger_entries e WHERE e.program_id = i.program_id \
                   AND e.entry_id IN (i.referrer_entry_id, i.referee_entry_id) \
                   AND e.kind = 'bonus' AND e.reason = 'referral'), \
               ev.invited, ev.accepted, ev.converted, ev.clawed_back, ev.closed, \
               (SELECT a.points > 0 AND a.points = (SELECT COALESCE(sum(r.reversed_points), 0) \
                  FROM ledger_entries r WHERE r.program_id = a.program_id \
                   AND r.reversed_entry_id = a.entry_id AND r.kind = 'award_reversal') \
                  FROM ledger_entries a WHERE a.program_id = i.program_id \
                   AND a.entry_id = i.qualifying_entry_id) \
             FROM invites i LEFT JOIN LATERAL (SELECT \
                 count(*) FILTER (WHERE v.event_type = 'referral.invited') AS invited, \
                 count(*) FILTER (WHERE v.event_type = 'referral.accepted') AS accepted, \
                 count(*) FILTER (WHERE v.event_type = 'referral.converted') AS converted, \
                 count(*) FILTER (WHERE v.event_type = 'referral.clawed_back') AS clawed_back, \
                 count(*) FILTER (WHERE v.event_type = 'referral.closed') AS closed \
               FROM events v WHERE v.program_id = i.program_id \
                 AND v.payload ->> 'invite_id' = i.invite_id::text) ev ON true \
             WHERE i.program_id = $1",
            &[&PROGRAM],
        )
        .await?;
    let credits: i64 = db
        .query_one(
            "SELECT count(*) FROM ledger_entries WHERE program_id = $1 AND kind = 'bonus' \
               AND reason = 'referral'",
            &[&PROGRAM],
        )
        .await?
        .get(0);
    let mut by_id: HashMap<String, (String, String, Option<String>)> = HashMap::new();
    let mut paid = 0i64;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for row in &invites {
        let (invite, status, referrer, referee, accepted): (
            String,
            String,
            String,
            Option<String>,
            bool,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let entries: Option<Vec<String>> = row.get(5);
        *statuses.entry(status.clone()).or_default() += 1;
        let converted = status == "converted" || status == "clawed_back";
        let reversals = usize::from(status == "clawed_back");
        let mut expected: Vec<String> = Vec::new();
        if converted {
            if let Some(referee) = &referee {
                expected.push(format!(
                    "{referee}:{}:{reversals}",
                    workload::REFEREE_POINTS
                ));
            }
            expected.push(format!(
                "{referrer}:{}:{reversals}",
                workload::REFERRER_POINTS
            ));
            expected.sort();
        }
        let entries = entries.unwrap_or_default();
        paid += entries.len() as i64;
        if entries != expected {
            stats.fail(format!(
                "invite {invite} ({status}): credits (member:points:clawbacks) {entries:?}, \
                 expected {expected:?}"
            ));
        }
        let closed = matches!(status.as_str(), "expired" | "revoked" | "superseded");
        let wanted = [
            ("referral.invited", true),
            ("referral.accepted", accepted),
            ("referral.converted", converted),
            ("referral.clawed_back", status == "clawed_back"),
            ("referral.closed", closed),
        ];
        for (column, (kind, due)) in (6..).zip(wanted) {
            let count: i64 = row.get(column);
            if count != i64::from(due) {
                stats.fail(format!(
                    "invite {invite} ({status}): {count} {kind} events, expected {}",
                    i64::from(due)
                ));
            }
        }
        // The chaos program claws back within 30 days: every run is inside them.
        let refunded: Option<bool> = row.get(11);
        if refunded.unwrap_or(false) != (status == "clawed_back") {
            stats.fail(format!(
                "invite {invite} ({status}): its qualifying purchase fully refunded: {refunded:?}"
            ));
        }
        by_id.insert(invite, (status, referrer, referee));
    }
    if credits != paid {
        stats.fail(format!(
            "{credits} referral credits in the ledger, {paid} named by converted invites"
        ));
    }
    let accepted = ctx.model.lock().unwrap().referrals.clone();
    for seen in &accepted {
        let referrer = &ctx.members[seen.referrer];
        let referee = &ctx.members[seen.referee];
        match by_id.get(&seen.invite_id) {
            Some((status, r, e)) if r == referrer && e.as_ref() == Some(referee) => {
                if seen.converted && status != "converted" && status != "clawed_back" {
                    stats.fail(format!(
                        "invite {}: a conversion was acknowledged, the invite is {status}",
                        seen.invite_id
                    ));
                }
            }
            other => stats.fail(format!(
                "invite {}: accepted by {referee} from {referrer}, the ledger has {other:?}",
                seen.invite_id
            )),
        }
    }
    stats.note(format!(
        "referrals: {} accepted by the driver, invites by status {statuses:?}, {paid} credits",
        accepted.len()
    ));
    Ok(())
}

/// 3c. The servers' workers, killed mid-job with their servers, paid every member born
///     today its birthday bonus exactly once, and no member a re-engagement bonus twice.
/// A snapshot rebuilt after the run holds exactly the converted invites, and every replica
/// answers it (the others see it within their refresh interval).
async fn the_graph_holds_the_converted_referrals(
    db: &tokio_postgres::Client,
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let rebuild = proto::RebuildSnapshotRequest {
        program_id: PROGRAM.into(),
    };
    let Answer::Ok(rebuilt) = ctx.call(rng, "rebuild_snapshot", &rebuild).await else {
        stats.fail("RebuildSnapshot failed after healing".to_owned());
        return Ok(());
    };
    let version = rebuilt.snapshot.map_or(0, |s| s.version);
    let expected: std::collections::BTreeSet<(String, String)> = db
        .query(
            "SELECT referrer_member_id::text, referee_member_id::text FROM invites \
             WHERE program_id = $1 AND status = 'converted'",
            &[&PROGRAM],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let request = proto::GetGraphRequest {
        program_id: PROGRAM.into(),
        max_nodes: 50_000,
    };
    for _ in 0..100 {
        let Answer::Ok(graph) = ctx.call(rng, "get_graph", &request).await else {
            stats.fail("GetGraph failed after healing".to_owned());
            return Ok(());
        };
        if graph.snapshot.as_ref().map_or(0, |s| s.version) < version {
            // Another replica, not refreshed yet.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        let edges: std::collections::BTreeSet<(String, String)> = graph
            .edges
            .iter()
            .map(|e| {
                (
                    graph.nodes[e.referrer as usize].member_id.clone(),
                    graph.nodes[e.referee as usize].member_id.clone(),
                )
            })
            .collect();
        if edges != expected {
            stats.fail(format!(
                "the graph has {} referrals, {} invites are converted; differing: {:?}",
                edges.len(),
                expected.len(),
                edges
                    .symmetric_difference(&expected)
                    .take(5)
                    .collect::<Vec<_>>()
            ));
        }
        stats.note(format!(
            "graph: {} converted referrals in the snapshot",
            edges.len()
        ));
        return Ok(());
    }
    stats.fail(format!(
        "a replica never answered graph snapshot version {version}"
    ));
    Ok(())
}

async fn the_workers_paid_each_bonus_once(
    db: &tokio_postgres::Client,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let read = || async {
        let rows = db
            .query(
                "SELECT member_id::text, reason, count(*), sum(points)::bigint \
                 FROM ledger_entries WHERE program_id = $1 AND kind = 'bonus' GROUP BY 1, 2",
                &[&PROGRAM],
            )
            .await?;
        let mut paid: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for row in rows {
            paid.insert((row.get(0), row.get(1)), (row.get(2), row.get(3)));
        }
        anyhow::Ok(paid)
    };
    // The workers run every second; give them a few rounds after healing.
    let born_today: Vec<&String> = ctx.members[..ctx.regular].iter().step_by(3).collect();
    let mut paid = read().await?;
    for _ in 0..60 {
        let missing = born_today
            .iter()
            .any(|m| !paid.contains_key(&((*m).clone(), "birthday".into())));
        if !missing {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        paid = read().await?;
    }
    for (index, member) in ctx.members.iter().enumerate() {
        let birthday = paid.get(&(member.clone(), "birthday".into())).copied();
        // Referees join with no birthday, enrolled today.
        let expected =
            (index % 3 == 0 && !ctx.is_referee(index)).then_some((1, crate::BIRTHDAY_BONUS));
        if birthday != expected {
            stats.fail(format!(
                "member {member}: birthday bonuses (count, points) {birthday:?}, expected {expected:?}"
            ));
        }
        if let Some((count, points)) = paid.get(&(member.clone(), "reengagement".into())) {
            if *count != 1
                || *points != crate::REENGAGEMENT_BONUS
                || index % 2 != 0
                || ctx.is_referee(index)
            {
                stats.fail(format!(
                    "member {member}: {count} re-engagement bonuses of {points} points"
                ));
            }
        }
    }
    let reengaged = paid.keys().filter(|(_, r)| r == "reengagement").count();
    stats.note(format!(
        "bonuses: {} birthday, {reengaged} re-engagement",
        born_today.len()
    ));
    Ok(())
}

/// 3d. A subscriber walking the stream from the start, disconnecting half way and resuming
///     from its cursor, receives every stored event exactly once, in stream order.
async fn a_cursor_walk_delivers_every_event_once(
    db: &tokio_postgres::Client,
    ctx: &Ctx,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    let stats = &ctx.stats;
    let expected: Vec<String> = db
        .query(
            "SELECT event_id::text FROM events WHERE program_id = $1 ORDER BY txid, seq",
            &[&PROGRAM],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let wanted: std::collections::HashSet<&String> = expected.iter().collect();
    let mut delivered: Vec<String> = Vec::new();
    let mut cursor = String::new();
    let half = expected.len() / 2;
    for leg in 0..2 {
        let mut client = ctx.events_client(rng);
        let request = flash_loyalty::grpc::proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            after_cursor: cursor.clone(),
            event_types: vec![],
        };
        let mut stream = match client.subscribe(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                stats.fail(format!("Subscribe failed after healing: {status}"));
                return Ok(());
            }
        };
        let target = if leg == 0 { half } else { usize::MAX };
        loop {
            let seen = delivered.iter().filter(|id| wanted.contains(id)).count();
            if delivered.len() >= target || (leg == 1 && seen >= expected.len()) {
                break;
            }
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message());
            match next.await {
                Ok(Ok(Some(message))) => {
                    let Some(event) = message.event else {
                        stats.fail("the event stream sent a message without its event");
                        return Ok(());
                    };
                    cursor = event.cursor;
                    delivered.push(event.event_id);
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    stats.fail(format!("the event stream failed: {status}"));
                    return Ok(());
                }
                Err(_) => break,
            }
        }
    }
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != delivered.len() {
        stats.fail(format!(
            "the cursor walk delivered {} duplicate events",
            delivered.len() - unique.len()
        ));
    }
    let in_order: Vec<&String> = delivered.iter().filter(|id| wanted.contains(id)).collect();
    let expected_refs: Vec<&String> = expected.iter().collect();
    if in_order != expected_refs {
        // What holds the stream's horizon back: transactions with an xid still running.
        let holders: Vec<String> = db
            .query(
                "SELECT pid::text || ' ' || COALESCE(application_name, '') || ' xid ' || \
                   backend_xid::text || ' ' || state || ': ' || left(query, 80) \
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let horizon: String = db
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await?
            .get(0);
        let got: std::collections::HashSet<&String> = delivered.iter().collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|id| !got.contains(id))
            .cloned()
            .collect();
        let missing_rows: Vec<String> = db
            .query(
                "SELECT txid::text || '/' || seq || ' ' || event_type FROM events \
                 WHERE event_id::text = ANY($1) ORDER BY txid, seq LIMIT 8",
                &[&missing],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        stats.note(format!(
            "{} missing, first: {missing_rows:?}",
            missing.len()
        ));
        // Would a fresh subscription from the same cursor get further?
        let mut fresh = 0;
        let request = flash_loyalty::grpc::proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            after_cursor: cursor.clone(),
            event_types: vec![],
        };
        if let Ok(response) = ctx.events_client(rng).subscribe(request).await {
            let mut stream = response.into_inner();
            while let Ok(Ok(Some(_))) =
                tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await
            {
                fresh += 1;
            }
        }
        stats.fail(format!(
            "the cursor walk delivered {} of {} stored events, or out of order \
             (horizon {horizon}, transactions holding it: {holders:?}; a fresh subscription \
             from the last cursor {cursor} got {fresh} more)",
            in_order.len(),
            expected.len()
        ));
    }
    stats.note(format!(
        "cursor walk: {} events, resumed once",
        delivered.len()
    ));
    Ok(())
}

/// 4. No member/day earned more capped purchase points than the cap.
async fn no_member_day_earned_past_the_cap(
    db: &tokio_postgres::Client,
    stats: &Stats,
    limits: &Limits,
) -> anyhow::Result<()> {
    let rows = db
        .query(
            "SELECT member_id::text, cap_day::text, sum(points)::bigint FROM ledger_entries \
             WHERE program_id = $1 AND kind = 'award' GROUP BY 1, 2 HAVING sum(points)::bigint > $2",
            &[&PROGRAM, &limits.daily_cap_points],
        )
        .await?;
    for row in rows {
        let (member, day, points): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        stats.fail(format!(
            "member {member} earned {points} purchase points on {day}, cap {}",
            limits.daily_cap_points
        ));
    }
    Ok(())
}

/// 5. No session left idle in a transaction once everything settled.
async fn no_session_idle_in_transaction(
    db: &tokio_postgres::Client,
    stats: &Stats,
) -> anyhow::Result<()> {
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let rows = db
        .query(
            "SELECT pid, application_name, left(query, 120), \
                    extract(epoch FROM now() - state_change)::float8 \
             FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )
        .await?;
    for row in rows {
        let (pid, app, query, idle): (i32, String, String, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        stats.fail(format!(
            "session {pid} ({app}) idle in transaction for {idle:.1}s after settling: {query}"
        ));
    }
    Ok(())
}

/// 6. Memory stayed bounded.
fn memory_stayed_bounded(infra: &Infra, stats: &Stats, limits: &Limits) {
    let rss = infra.max_rss_kib.load(std::sync::atomic::Ordering::Relaxed);
    if rss > limits.max_rss_kib {
        stats.fail(format!(
            "a server reached {} MiB RSS (bound {} MiB)",
            rss / 1024,
            limits.max_rss_kib / 1024
        ));
    }
}

/// 7. `flash audit`, once it exists.
fn flash_audit_passes(infra: &Infra, stats: &Stats) -> anyhow::Result<()> {
    let output = blocking(|| {
        infra
            .flash_command()
            .args(["audit", "--program", PROGRAM])
            .output()
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        stats.note("flash audit passed");
    } else {
        if text.contains("unrecognized subcommand") {
            stats.note("flash audit does not exist yet: skipped");
        } else {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            stats.fail(format!(
                "flash audit --program {PROGRAM} exited {}: {}",
                output.status,
                tail.join(" | ")
            ));
        }
    }
    Ok(())
}
