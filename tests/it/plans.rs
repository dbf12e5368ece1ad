//! The hot path's plans do not depend on statistics: every statement a mutation runs is an
//! index lookup bounded by the member, the key or the entry, with stale statistics (the
//! tables were analyzed empty, then filled, as after a fresh import with autovacuum off),
//! with fresh ones, and as the generic plan a cached prepared statement switches to.
use crate::helpers::{spawn_app, TestApp};
use flash_loyalty::store::{
    batches, entries, events, members, mutation, tiers, LOCK_MEMBER, LOCK_MEMBERS,
};

/// Each hot statement with literal arguments of the right types.
fn hot_statements() -> Vec<(&'static str, &'static str, &'static str)> {
    let member = "'00000000-0000-0000-0000-000000000007'::uuid";
    let other = "'00000000-0000-0000-0000-000000000008'::uuid";
    let now = "'2026-03-01T12:00:00Z'::timestamptz";
    vec![
        ("lock", LOCK_MEMBER, "42"),
        (
            "enroll",
            members::ENROLL_MANY,
            "'big', ARRAY[MEMBER], ARRAY[NULL]::date[], ARRAY[NOW], 'c'",
        ),
        (
            "enroll a batch",
            members::ENROLL_MANY,
            "'big', ARRAY[MEMBER, OTHER], ARRAY[NULL, NULL]::date[], ARRAY[NOW, NOW], 'c'",
        ),
        ("get a member", members::GET_WITH_PROGRAM, "'big', MEMBER"),
        (
            "a member's points",
            members::POINTS_SUMMARY,
            "'big', MEMBER, NOW",
        ),
        ("lock many", LOCK_MEMBERS, "ARRAY[42, 43]::bigint[]"),
        (
            "open an award",
            mutation::OPEN,
            "'big', ARRAY[MEMBER], ARRAY['k-7'], ARRAY['receipt'], ARRAY['r-7'], NOW, \
             ARRAY['c']",
        ),
        (
            "open a batch of awards",
            mutation::OPEN,
            "'big', ARRAY[MEMBER, OTHER], ARRAY['k-7', 'k-8'], ARRAY['receipt', 'receipt'], \
             ARRAY['r-7', 'r-8'], NOW, ARRAY['c', 'c']",
        ),
        (
            "open",
            mutation::OPEN,
            "'big', ARRAY[MEMBER], ARRAY['k-7'], ARRAY[NULL], ARRAY[NULL], NOW, ARRAY['c']",
        ),
        (
            "write awards",
            mutation::WRITE_AWARDS,
            "'big', 1, NOW, ARRAY[gen_random_uuid()], ARRAY[MEMBER], ARRAY[10], ARRAY['k'], \
             ARRAY['{}'::jsonb], ARRAY['{}'::jsonb], ARRAY['receipt'], ARRAY['r'], ARRAY[1000], \
             ARRAY['USD'], ARRAY[NOW], ARRAY[10], ARRAY['2026-03-01'::date], ARRAY[false], \
             ARRAY[gen_random_uuid()], ARRAY[MEMBER], ARRAY[gen_random_uuid()], ARRAY[10], \
             ARRAY[NOW + interval '1 year'], ARRAY[gen_random_uuid()], ARRAY[MEMBER], \
             ARRAY['points.awarded'], ARRAY['{}'::jsonb], ARRAY['c']",
        ),
        (
            "write",
            mutation::WRITE,
            "'big', gen_random_uuid(), MEMBER, 'spend', -1, 'k', '{}', '{}', 1, NOW, NULL, NULL, \
             NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
             NULL, ARRAY[gen_random_uuid()], ARRAY[-1::bigint], 0, ARRAY[gen_random_uuid()], \
             ARRAY[MEMBER], ARRAY['points.spent'], ARRAY['{}'::jsonb], NULL, NULL, 'c'",
        ),
        (
            "events after a cursor",
            events::READ_AFTER,
            "'big', '0', 0, ARRAY[]::text[], 500",
        ),
        (
            "a member's status points",
            tiers::STATUS,
            "'big', MEMBER, NOW - interval '12 months', NOW, NOW - interval '11 months'",
        ),
        (
            "a member's demotions",
            tiers::DEMOTIONS_SINCE,
            "'big', MEMBER, 0, 3, NOW - interval '90 days'",
        ),
        (
            "a member's tier",
            tiers::WRITE_TIER,
            "'big', MEMBER, 1, NULL, NULL, '{}'::int[], NULL, gen_random_uuid(), 'upgraded', 0, \
             'member', 'silver', 1000, 'r', 'system', NULL, 1, NOW, ARRAY[gen_random_uuid()], \
             ARRAY[MEMBER], ARRAY['tier.upgraded'], ARRAY['{}'::jsonb]",
        ),
        (
            "batches a draw takes from",
            batches::FIFO_FOR_UPDATE,
            "'big', MEMBER, 25::bigint, NOW",
        ),
        (
            "the batch of an award",
            batches::CREDITED_BY_FOR_UPDATE,
            "'big', gen_random_uuid()",
        ),
        (
            "the batches of a spend",
            batches::BY_IDS_FOR_UPDATE,
            "'big', ARRAY[gen_random_uuid()]",
        ),
        (
            "reversed so far",
            entries::REVERSED_SO_FAR,
            "'big', gen_random_uuid()",
        ),
        (
            "rebuilding a cap counter",
            entries::PURCHASE_POINTS_BETWEEN,
            "'big', MEMBER, NOW - interval '1 day', NOW",
        ),
        // The checks PostgreSQL runs for the foreign keys the hot path's writes touch,
        // as it words them; it plans each once per connection and keeps the plan.
        (
            "foreign key: a batch's entry",
            "SELECT 1 FROM ONLY ledger_entries x WHERE program_id = $1 AND entry_id = $2 \
             AND member_id = $3 FOR KEY SHARE OF x",
            "'big', gen_random_uuid(), MEMBER",
        ),
        (
            "foreign key: an entry's member",
            "SELECT 1 FROM ONLY members x WHERE program_id = $1 AND member_id = $2 \
             FOR KEY SHARE OF x",
            "'big', MEMBER",
        ),
        (
            "foreign key: an allocation's batch",
            "SELECT 1 FROM ONLY point_batches x WHERE program_id = $1 AND batch_id = $2 \
             FOR KEY SHARE OF x",
            "'big', gen_random_uuid()",
        ),
    ]
    .into_iter()
    .map(|(name, sql, args)| {
        let args: &'static str = Box::leak(
            args.replace("MEMBER", member)
                .replace("OTHER", other)
                .replace("NOW", now)
                .into_boxed_str(),
        );
        (name, sql, args)
    })
    .collect()
}

/// A program of 2,000 members with 40,000 awards, batches and spends, written by SQL
/// without ANALYZE (the migration analyzed the tables while they were empty).
async fn fill(app: &TestApp) {
    let client = app.db.get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO programs VALUES ('big', 'Big', 1, now(), now());
             INSERT INTO program_rules VALUES ('big', 1, '{}', now());
             INSERT INTO members (program_id, member_id, enrolled_at)
               SELECT 'big', ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, now()
               FROM generate_series(1, 2000) i;
             INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points,
                 idempotency_key, request, outcome, rules_version, created_at, source,
                 external_ref, amount_minor, currency, occurred_at, requested_points, cap_day,
                 status_points, status_at)
               SELECT 'big', gen_random_uuid(),
                 ('00000000-0000-0000-0000-' || lpad((i % 2000 + 1)::text, 12, '0'))::uuid,
                 'award', 10, 'k-' || i, '{}', '{}', 1, now() - (i || ' minutes')::interval,
                 'receipt', 'r-' || i, 1000, 'USD', now(), 10, current_date,
                 10, now() - (i || ' minutes')::interval
               FROM generate_series(1, 40000) i;
             INSERT INTO point_batches
               SELECT program_id, gen_random_uuid(), member_id, entry_id, 10, 10, created_at,
                 created_at + interval '365 days'
               FROM ledger_entries WHERE program_id = 'big';",
        )
        .await
        .unwrap();
}

/// Every table scan in the plan reads an index with a condition naming one of the
/// columns that bound it to a member, a key or an entry.
fn unbounded_scans(plan: &serde_json::Value, found: &mut Vec<String>) {
    if let Some(relation) = plan.get("Relation Name").and_then(|r| r.as_str()) {
        let node = plan["Node Type"].as_str().unwrap_or_default();
        let condition = plan
            .get("Index Cond")
            .or_else(|| plan.get("Recheck Cond"))
            .and_then(|c| c.as_str())
            .unwrap_or_default();
        let bounded = [
            "member_id",
            "idempotency_key",
            "external_ref",
            "entry_id",
            "batch_id",
            "reversed_entry_id",
        ]
        .iter()
        .any(|column| condition.contains(column))
            || (relation == "programs" && condition.contains("program_id"))
            // A program's rules versions are few and made by hand (an update each).
            || (relation == "program_rules" && condition.contains("program_id"))
            // A subscriber's page: the program's stream after its position.
            || (relation == "events" && condition.contains("txid"));
        let writes = matches!(node, "ModifyTable");
        if !writes && !bounded {
            found.push(format!("{node} on {relation} ({condition:?})"));
        }
    }
    for child in plan
        .get("Plans")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        unbounded_scans(child, found);
    }
}

async fn unbounded_plans(app: &TestApp, generic: bool) -> Vec<String> {
    unbounded_plans_with(app, generic, false).await
}

/// With `seqscan` the planner may choose sequential scans, as in production.
async fn unbounded_plans_with(app: &TestApp, generic: bool, seqscan: bool) -> Vec<String> {
    let client = app.db.get().await.unwrap();
    client
        .batch_execute(&format!(
            "SET enable_seqscan = {}; SET plan_cache_mode = {}",
            if seqscan { "on" } else { "off" },
            if generic {
                "force_generic_plan"
            } else {
                "force_custom_plan"
            }
        ))
        .await
        .unwrap();
    let mut problems = Vec::new();
    for (index, (name, sql, args)) in hot_statements().into_iter().enumerate() {
        client
            .batch_execute(&format!("PREPARE hot_{index} AS {sql}"))
            .await
            .unwrap_or_else(|error| panic!("{name}: {error:?}"));
        let row = client
            .query_one(
                &format!("EXPLAIN (FORMAT JSON) EXECUTE hot_{index}({args})"),
                &[],
            )
            .await
            .unwrap_or_else(|error| panic!("{name}: {error:?}"));
        let plan: serde_json::Value = row.get(0);
        let mut found = Vec::new();
        unbounded_scans(&plan[0]["Plan"], &mut found);
        problems.extend(found.into_iter().map(|scan| format!("{name}: {scan}")));
        client
            .batch_execute(&format!("DEALLOCATE hot_{index}"))
            .await
            .unwrap();
    }
    client
        .batch_execute("RESET enable_seqscan; RESET plan_cache_mode")
        .await
        .unwrap();
    problems
}

#[tokio::test]
async fn every_hot_statement_is_an_index_lookup_bounded_by_member_or_key_without_statistics() {
    let app = spawn_app().await;
    fill(&app).await;
    for generic in [false, true] {
        let problems = unbounded_plans(&app, generic).await;
        assert!(problems.is_empty(), "generic={generic}: {problems:#?}");
    }
}

#[tokio::test]
async fn every_hot_statement_is_an_index_lookup_bounded_by_member_or_key_with_statistics() {
    let app = spawn_app().await;
    fill(&app).await;
    app.db
        .get()
        .await
        .unwrap()
        .batch_execute("ANALYZE")
        .await
        .unwrap();
    for generic in [false, true] {
        let problems = unbounded_plans(&app, generic).await;
        assert!(problems.is_empty(), "generic={generic}: {problems:#?}");
    }
}

/// A connection keeps its generic plans (and PostgreSQL its foreign-key checks' plans)
/// for its whole life: plans made while the tables were still empty, on a fresh database
/// with autovacuum off, must already be the member- or key-bounded ones, sequential scans
/// allowed.
#[tokio::test]
async fn plans_made_while_the_tables_are_empty_are_bounded_too() {
    let app = spawn_app().await;
    let client = app.db.get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO programs VALUES ('big', 'Big', 1, now(), now());
             INSERT INTO program_rules VALUES ('big', 1, '{}', now());",
        )
        .await
        .unwrap();
    let problems = unbounded_plans_with(&app, true, true).await;
    assert!(problems.is_empty(), "{problems:#?}");
}
