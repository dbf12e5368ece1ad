//! The event stream: every committed change once, each member's in commit order, resumable
//! from a cursor, never skipping an event whose transaction committed after a
//! later-numbered one.
use crate::helpers::{refusal, spawn_app, usd_rules, TestApp, PROGRAM};
use flash_loyalty::grpc::proto;
use std::time::Duration;
use tonic::Streaming;

/// Long enough for a loaded machine; a bound, never a pace.
const WAIT: Duration = Duration::from_secs(20);

async fn subscribe(
    app: &mut TestApp,
    after: &str,
    types: &[&str],
) -> Streaming<proto::SubscribeResponse> {
    app.events
        .subscribe(proto::SubscribeRequest {
            program_id: PROGRAM.into(),
            after_cursor: after.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// The next `count` events of a stream.
async fn take(stream: &mut Streaming<proto::SubscribeResponse>, count: usize) -> Vec<proto::Event> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let next = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .expect("a healthy stream")
            .expect("an open stream");
        events.push(next.event.expect("an event"));
    }
    events
}

/// No event arrives within a short while.
async fn nothing_more(stream: &mut Streaming<proto::SubscribeResponse>) {
    let next = tokio::time::timeout(Duration::from_millis(600), stream.message()).await;
    assert!(next.is_err(), "unexpected event: {next:?}");
}

fn payload(event: &proto::Event) -> serde_json::Value {
    serde_json::from_str(&event.payload_json).expect("a JSON payload")
}

#[tokio::test]
async fn committed_changes_arrive_once_in_order_with_their_figures() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let award = app.earn(&member, 120).await;
    let spend = app.spend(&member, 20).await;
    let mut stream = subscribe(&mut app, "", &[]).await;
    let events = take(&mut stream, 2).await;
    assert_eq!(events[0].event_type, "points.awarded");
    assert_eq!(events[0].member_id, member);
    let awarded = payload(&events[0]);
    assert_eq!(awarded["entry_id"], award.entry_id);
    assert_eq!(awarded["points"], 120);
    assert_eq!(awarded["balance_points"], 120);
    assert_eq!(events[1].event_type, "points.spent");
    assert_eq!(payload(&events[1])["entry_id"], spend.entry_id);
    assert_eq!(payload(&events[1])["balance_points"], 100);
    // New changes reach a subscriber that is waiting.
    let later = app.earn(&member, 5).await;
    let next = take(&mut stream, 1).await;
    assert_eq!(payload(&next[0])["entry_id"], later.entry_id);
    nothing_more(&mut stream).await;
    // A filter keeps only its types.
    let mut spends = subscribe(&mut app, "", &["points.spent"]).await;
    let only = take(&mut spends, 1).await;
    assert_eq!(only[0].event_id, events[1].event_id);
    nothing_more(&mut spends).await;
}

#[tokio::test]
async fn a_subscriber_resuming_from_its_cursor_misses_nothing_and_sees_each_member_in_order() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let members = [app.enroll().await, app.enroll().await, app.enroll().await];
    let mut written: Vec<(String, String)> = Vec::new();
    for round in 0..10 {
        for member in &members {
            let award = app.earn(member, 10 + round).await;
            written.push((member.clone(), award.entry_id));
        }
    }
    let mut stream = subscribe(&mut app, "", &[]).await;
    let first = take(&mut stream, 12).await;
    drop(stream);
    // More changes while disconnected, from several callers at once.
    let mut tasks = Vec::new();
    for member in members.clone() {
        let mut app_ledger = app.ledger.clone();
        let request = app.purchase(&member, 700);
        tasks.push(tokio::spawn(async move {
            app_ledger
                .award(request)
                .await
                .unwrap()
                .into_inner()
                .entry_id
        }));
    }
    for (member, task) in members.iter().zip(tasks) {
        written.push((member.clone(), task.await.unwrap()));
    }
    let resume_from = first.last().unwrap().cursor.clone();
    let mut resumed = subscribe(&mut app, &resume_from, &[]).await;
    let rest = take(&mut resumed, written.len() - first.len()).await;
    nothing_more(&mut resumed).await;
    let all: Vec<proto::Event> = first.into_iter().chain(rest).collect();
    let mut ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), written.len(), "every event exactly once");
    for member in &members {
        let delivered: Vec<String> = all
            .iter()
            .filter(|e| &e.member_id == member)
            .map(|e| payload(e)["entry_id"].as_str().unwrap().to_owned())
            .collect();
        let committed: Vec<String> = written
            .iter()
            .filter(|(m, _)| m == member)
            .map(|(_, entry)| entry.clone())
            .collect();
        assert_eq!(
            delivered, committed,
            "member {member}'s events in commit order"
        );
    }
}

/// Transaction A takes its xid first but writes its event last; B writes and commits in
/// between, so B's row has the smaller sequence number and A's commits later. A reader of
/// "sequence greater than the last seen" would deliver B, move past it, and then skip
/// nothing here — but with the numbers the other way round (the common case: A inserted
/// first, committed last) it would skip A for good. The stream holds B back until A ends,
/// then delivers both in (xid, seq) order.
#[tokio::test]
async fn an_event_committed_after_a_later_numbered_one_is_still_delivered() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let insert = |label: &str| {
        format!(
            "INSERT INTO events (program_id, event_id, member_id, event_type, payload, created_at) \
             VALUES ('{PROGRAM}', gen_random_uuid(), '{member}', 'points.adjusted', \
             '{{\"label\": \"{label}\"}}', now())"
        )
    };
    let (a, a_connection) = tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(a_connection);
    let b = app.db.get().await.unwrap();
    a.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; {}; COMMIT", insert("B")))
        .await
        .unwrap();
    let mut stream = subscribe(&mut app, "", &[]).await;
    // B committed, but behind A's xid: not deliverable while A may still write.
    nothing_more(&mut stream).await;
    a.batch_execute(&format!("{}; COMMIT", insert("A")))
        .await
        .unwrap();
    let events = take(&mut stream, 2).await;
    let labels: Vec<String> = events
        .iter()
        .map(|e| payload(e)["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels, ["A", "B"], "in (xid, seq) order");
    // A row of a rolled-back transaction never appears.
    b.batch_execute(&format!("BEGIN; {}; ROLLBACK", insert("rolled back")))
        .await
        .unwrap();
    app.earn(&member, 1).await;
    let next = take(&mut stream, 1).await;
    assert_eq!(next[0].event_type, "points.awarded");
    nothing_more(&mut stream).await;
}

/// The same race seen by a subscriber that disconnects in between: its cursor, taken after
/// B was delivered, must still lead to A's event.
#[tokio::test]
async fn a_cursor_taken_before_a_late_commit_still_leads_to_it() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 1).await;
    let (a, a_connection) = tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(a_connection);
    let mut stream = subscribe(&mut app, "", &[]).await;
    let first = take(&mut stream, 1).await;
    drop(stream);
    // A holds an xid while another award commits with a later sequence number.
    a.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    app.earn(&member, 2).await;
    a.batch_execute(&format!(
        "INSERT INTO events (program_id, event_id, member_id, event_type, payload, created_at) \
         VALUES ('{PROGRAM}', gen_random_uuid(), NULL, 'points.adjusted', '{{}}', now()); COMMIT"
    ))
    .await
    .unwrap();
    let mut resumed = subscribe(&mut app, &first[0].cursor, &[]).await;
    let rest = take(&mut resumed, 2).await;
    let types: Vec<&str> = rest.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["points.adjusted", "points.awarded"]);
}

#[tokio::test]
async fn bad_cursors_types_and_programs_are_refused_precisely() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    app.earn(&member, 1).await;
    app.earn(&member, 2).await;
    let mut stream = subscribe(&mut app, "", &[]).await;
    let events = take(&mut stream, 2).await;
    let refuse = |after: &str, types: Vec<String>, program: &str| proto::SubscribeRequest {
        program_id: program.into(),
        after_cursor: after.into(),
        event_types: types,
    };
    let garbage = app
        .events
        .subscribe(refuse("not-a-cursor", vec![], PROGRAM))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    assert_eq!(refusal(&garbage).bad_fields, ["after_cursor"]);
    let unknown = app
        .events
        .subscribe(refuse("", vec!["points.gifted".into()], PROGRAM))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(unknown.message().contains("tier.upgraded"));
    let missing = app
        .events
        .subscribe(refuse("", vec![], "nope"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // The pruning job recorded that it deleted up to the second event.
    let client = app.db.get().await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO event_horizons \
             SELECT program_id, txid, seq, now() FROM events \
             WHERE program_id = '{PROGRAM}' ORDER BY txid DESC, seq DESC LIMIT 1"
        ))
        .await
        .unwrap();
    let expired = app
        .events
        .subscribe(refuse(&events[0].cursor, vec![], PROGRAM))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), tonic::Code::OutOfRange);
    assert_eq!(refusal(&expired).reason, "CURSOR_EXPIRED");
    assert!(expired.message().contains("empty after_cursor"));
    // From the horizon itself, or from scratch, is fine.
    subscribe(&mut app, &events[1].cursor, &[]).await;
    subscribe(&mut app, "", &[]).await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_blocks_neither_writers_nor_others() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let _stalled = subscribe(&mut app, "", &[]).await;
    let mut reader = subscribe(&mut app, "", &[]).await;
    let awards = 600;
    let writes = async {
        for _ in 0..awards {
            app.earn(&member, 1).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("awards completed beside a stalled subscriber");
    let events = take(&mut reader, awards).await;
    assert_eq!(events.len(), awards);
}

#[tokio::test]
async fn a_long_stream_is_read_page_after_page() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let awards: Vec<proto::AwardRequest> = (0..450).map(|_| app.purchase(&member, 100)).collect();
    for chunk in awards.chunks(150) {
        app.ledger
            .award_batch(proto::AwardBatchRequest {
                program_id: PROGRAM.into(),
                awards: chunk.to_vec(),
            })
            .await
            .unwrap();
    }
    for _ in 0..900 {
        app.earn(&member, 1).await;
    }
    let mut stream = subscribe(&mut app, "", &[]).await;
    let first = take(&mut stream, 700).await;
    drop(stream);
    let mut resumed = subscribe(&mut app, &first.last().unwrap().cursor, &[]).await;
    // 1,350 awards, and the upgrade to Silver the 1,000th status point made.
    let rest = take(&mut resumed, 651).await;
    nothing_more(&mut resumed).await;
    let mut ids: Vec<String> = first.into_iter().chain(rest).map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1351);
}

/// Positions order by their numbers: a transaction id with more digits comes after one with
/// fewer (the stream once sorted them as text, "1000" before "743", and skipped events).
/// The ids stay below any a fresh cluster has reached, so the horizon is past them.
#[tokio::test]
async fn stream_positions_order_numerically_across_digit_counts() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let client = app.db.get().await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO events (program_id, txid, event_id, event_type, payload, created_at) \
             VALUES ('{PROGRAM}', '10'::xid8, gen_random_uuid(), 'points.adjusted', \
                     '{{\"n\": 2}}', now()), \
                    ('{PROGRAM}', '9'::xid8, gen_random_uuid(), 'points.adjusted', \
                     '{{\"n\": 1}}', now()), \
                    ('{PROGRAM}', '100'::xid8, gen_random_uuid(), 'points.adjusted', \
                     '{{\"n\": 3}}', now())"
        ))
        .await
        .unwrap();
    let mut stream = subscribe(&mut app, "", &[]).await;
    let first = take(&mut stream, 2).await;
    let numbers: Vec<i64> = first
        .iter()
        .map(|e| payload(e)["n"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    drop(stream);
    let mut resumed = subscribe(&mut app, &first[1].cursor, &[]).await;
    let last = take(&mut resumed, 1).await;
    assert_eq!(payload(&last[0])["n"], 3);
    nothing_more(&mut resumed).await;
}
