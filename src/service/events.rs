//! The event stream: what the outbox holds, delivered to subscribers in an order no late
//! commit can slip behind, resumable from an opaque cursor.
//!
//! Waiting for new events: one task per process (the tail) reads the stream's readable
//! horizon — the oldest transaction still running — every [`TAIL_INTERVAL`] and wakes
//! every subscriber when it moves; a subscriber then reads its next page. Writers do not
//! `NOTIFY`: PostgreSQL serializes the commits of every notifying transaction on one lock
//! (taken in `PreCommit_Notify` and held through the commit), which would cap the award
//! path at one commit at a time. The tail costs one tiny query per interval whatever the
//! number of subscribers, and none while nobody subscribes; a subscriber reads only when
//! the horizon moved.
use super::members::program_not_found;
use super::Error;
use crate::clock::Clock;
use crate::domain::{EventType, ProgramId};
use crate::store::{self, events::Position};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// How often the tail reads the readable horizon.
pub const TAIL_INTERVAL: Duration = Duration::from_millis(150);
/// Events read per page.
const PAGE: i64 = 500;
/// How many times in a row a subscriber's read may fail (a pool timeout, a dropped
/// connection) before the stream ends with the error; the waits between double from
/// [`RETRY_FIRST_WAIT`]. A cursor that expired ends the stream at once.
const READ_ATTEMPTS: u32 = 6;
const RETRY_FIRST_WAIT: Duration = Duration::from_millis(100);
/// Events buffered per subscriber: a subscriber slower than its stream waits on its own
/// channel, holding no connection; writers and other subscribers never wait for it.
const BUFFER: usize = 256;

/// One event as subscribers receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView {
    pub event_id: Uuid,
    /// Resume after this event with it.
    pub cursor: String,
    pub program_id: String,
    pub member_id: Option<Uuid>,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The event use cases.
#[derive(Clone)]
pub struct Events {
    db: Pool,
    clock: Arc<dyn Clock>,
    /// Each subscription holds one receiver: the tail polls only while there is one.
    horizon: Arc<watch::Sender<u64>>,
}

impl Events {
    /// Starts the process's tail task; it ends when the last `Events` clone is dropped.
    pub fn new(db: Pool, clock: Arc<dyn Clock>) -> Self {
        let horizon = Arc::new(watch::Sender::new(0));
        tokio::spawn(tail(db.clone(), Arc::downgrade(&horizon)));
        Self { db, clock, horizon }
    }

    /// Subscriptions streaming now.
    pub fn subscribers(&self) -> usize {
        self.horizon.receiver_count()
    }

    /// Streams the program's events after `after_cursor` (empty: from the oldest kept),
    /// only those of `event_types` when any are given. INVALID_ARGUMENT for a cursor this
    /// API did not make or an unknown type, NOT_FOUND for an unknown program, OUT_OF_RANGE
    /// (CURSOR_EXPIRED) for a cursor older than the retention.
    pub async fn subscribe(
        &self,
        program: ProgramId,
        after_cursor: &str,
        event_types: &[String],
    ) -> Result<mpsc::Receiver<Result<EventView, Error>>, Error> {
        let after = parse_cursor(after_cursor)?;
        let types = parse_types(event_types)?;
        let client = self.db.get().await?;
        let stored = store::programs::get(&**client, &program)
            .await?
            .ok_or_else(|| program_not_found(&program))?;
        let retention_days = stored.rules.events_retention_days;
        check_horizon(&client, &program, after, retention_days).await?;
        drop(client);
        let (sender, receiver) = mpsc::channel(BUFFER);
        let subscription = Subscription {
            db: self.db.clone(),
            clock: self.clock.clone(),
            horizon: self.horizon.subscribe(),
            program,
            types,
            retention_days,
            sender,
        };
        tokio::spawn(subscription.run(after));
        Ok(receiver)
    }
}

/// One subscriber's reader.
struct Subscription {
    db: Pool,
    clock: Arc<dyn Clock>,
    horizon: watch::Receiver<u64>,
    program: ProgramId,
    types: Vec<&'static str>,
    retention_days: i32,
    sender: mpsc::Sender<Result<EventView, Error>>,
}

impl Subscription {
    /// Reads page after page, waiting on the tail when caught up; ends when the subscriber
    /// hangs up or reading fails (the error is its last message).
    async fn run(mut self, mut after: Position) {
        let mut failures = 0;
        loop {
            let page = match self.page(after).await {
                Ok(page) => {
                    failures = 0;
                    page
                }
                Err(error)
                    if failures + 1 < READ_ATTEMPTS && matches!(error, Error::Unavailable(_)) =>
                {
                    failures += 1;
                    tracing::warn!(program = %self.program, %error, failures, "event read failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_FIRST_WAIT * 2u32.pow(failures - 1)) => continue,
                        () = self.sender.closed() => return,
                    }
                }
                Err(error) => {
                    let _ = self.sender.send(Err(error)).await;
                    return;
                }
            };
            let full = page.len() >= usize::try_from(PAGE).unwrap_or(usize::MAX);
            for event in page {
                after = event.position;
                let view = EventView {
                    event_id: event.event_id,
                    cursor: format_cursor(event.position),
                    program_id: self.program.to_string(),
                    member_id: event.member_id,
                    event_type: event.event_type,
                    payload: event.payload,
                    created_at: event.created_at,
                };
                let created_at = view.created_at;
                if self.sender.send(Ok(view)).await.is_err() {
                    return;
                }
                crate::telemetry::metrics::event_delivered(
                    (self.clock.now() - created_at).to_std().unwrap_or_default(),
                );
            }
            if full {
                continue;
            }
            // Caught up: wait until the horizon moves (or the subscriber hangs up).
            tokio::select! {
                changed = self.horizon.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.sender.closed() => return,
            }
        }
    }

    async fn page(&self, after: Position) -> Result<Vec<store::events::StoredEvent>, Error> {
        let client = self.db.get().await?;
        check_horizon(&client, &self.program, after, self.retention_days).await?;
        Ok(store::events::read_after(&client, &self.program, after, &self.types, PAGE).await?)
    }
}

/// OUT_OF_RANGE when events after `after` were pruned already.
async fn check_horizon(
    client: &deadpool_postgres::Client,
    program: &ProgramId,
    after: Position,
    retention_days: i32,
) -> Result<(), Error> {
    match store::events::horizon(client, program).await? {
        Some(pruned) if after < pruned && after != Position::default() => {
            Err(Error::CursorExpired {
                program: program.clone(),
                retention_days,
            })
        }
        _ => Ok(()),
    }
}

/// The tail: publishes the readable horizon whenever it moves, while anyone subscribes.
async fn tail(db: Pool, horizon: Weak<watch::Sender<u64>>) {
    let mut interval = tokio::time::interval(TAIL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(sender) = horizon.upgrade() else {
            return;
        };
        if sender.receiver_count() == 0 {
            continue;
        }
        let horizon = match db.get().await {
            Ok(client) => store::events::readable_horizon(&client).await,
            Err(_) => continue,
        };
        if let Ok(horizon) = horizon {
            sender.send_if_modified(|current| {
                let moved = *current != horizon;
                *current = horizon;
                moved
            });
        }
    }
}

/// A cursor: the position, as 32 hex digits. Opaque to callers.
fn format_cursor(position: Position) -> String {
    format!("{:016x}{:016x}", position.txid, position.seq)
}

fn parse_cursor(cursor: &str) -> Result<Position, Error> {
    if cursor.is_empty() {
        return Ok(Position::default());
    }
    let invalid = || {
        Error::invalid(
            "after_cursor",
            "is not a cursor this API returned; send an event's cursor, or nothing to start \
             from the oldest event kept",
        )
    };
    if cursor.len() != 32 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let txid = u64::from_str_radix(&cursor[..16], 16).map_err(|_| invalid())?;
    let seq = u64::from_str_radix(&cursor[16..], 16)
        .ok()
        .and_then(|seq| i64::try_from(seq).ok())
        .ok_or_else(invalid)?;
    Ok(Position { txid, seq })
}

/// The most entries of `event_types`: far more than there are types, far fewer than a
/// message could carry.
const EVENT_TYPES_MAX: usize = 64;

fn parse_types(types: &[String]) -> Result<Vec<&'static str>, Error> {
    if types.len() > EVENT_TYPES_MAX {
        return Err(Error::invalid(
            "event_types",
            format!("at most {EVENT_TYPES_MAX} entries, got {}", types.len()),
        ));
    }
    types
        .iter()
        .map(|name| {
            EventType::parse(name)
                .map(EventType::as_str)
                .ok_or_else(|| {
                    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                    Error::invalid(
                        "event_types",
                        format!(
                            "{} is not an event type; the types are {}",
                            crate::domain::quoted(name),
                            known.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let position = Position {
            txid: 1_234_567,
            seq: 42,
        };
        assert_eq!(parse_cursor(&format_cursor(position)).unwrap(), position);
        assert_eq!(parse_cursor("").unwrap(), Position::default());
        for bad in ["xyz", "0000000000000001", &"g".repeat(32), &"f".repeat(32)] {
            assert!(parse_cursor(bad).is_err(), "{bad:?} accepted");
        }
    }
}
