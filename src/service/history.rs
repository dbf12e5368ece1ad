//! Reading the books: a member's history and the program's liability report.
use super::outcome::AllocationView;
use super::{members::program_not_found, Error, Ledger};
use crate::domain::{EntryId, EntryKind, MemberId, ProgramId, PurchaseSource};
use crate::store::{self, entries::StoredEntry, reports};
use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

/// The most entries one history page returns.
pub const HISTORY_PAGE_MAX: usize = 200;

/// One entry as the history shows it, with the batch it credited and the allocations it
/// made.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub entry_id: EntryId,
    pub kind: EntryKind,
    /// Signed effect on the balance.
    pub points: i64,
    pub rules_version: i64,
    pub created_at: DateTime<Utc>,
    /// Awards: where the purchase came from, its reference, amount and currency.
    pub source: Option<PurchaseSource>,
    pub external_ref: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub reversed_entry_id: Option<EntryId>,
    pub unrecovered_points: Option<i64>,
    pub batch_id: Option<Uuid>,
    pub allocations: Vec<AllocationView>,
}

impl HistoryEntry {
    fn new(entry: StoredEntry, batch_id: Option<Uuid>, allocations: Vec<AllocationView>) -> Self {
        Self {
            entry_id: entry.entry_id,
            kind: entry.kind,
            points: entry.points,
            rules_version: entry.rules_version,
            created_at: entry.created_at,
            source: entry.source.as_deref().and_then(PurchaseSource::parse),
            external_ref: entry.external_ref,
            amount_minor: entry.amount_minor,
            currency: entry.currency,
            reason: entry.reason,
            actor: entry.actor,
            reversed_entry_id: entry.reversed_entry_id,
            unrecovered_points: entry.unrecovered_points,
            batch_id,
            allocations,
        }
    }
}

/// A page of history, newest first.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// The position to continue from; None on the last page.
    pub next_before_seq: Option<i64>,
}

/// How the ledger balance moved over a period.
pub type RollForward = reports::PeriodSums;

/// The points liability: the batches now, and the roll-forward of a period. Figures are
/// exact (`numeric` sums, i128); one past i64 is the transport's OUT_OF_RANGE, not an error
/// of the books.
#[derive(Debug, Clone)]
pub struct Liability {
    pub batches: reports::BatchSums,
    pub roll_forward: RollForward,
    /// The period answered: the one asked for, with its defaults and clamp applied.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The `to` asked for was in the future and was moved to now.
    pub to_clamped: bool,
}

impl Ledger {
    /// A member's entries, newest first, `page_size` at most, older than `before_seq`.
    pub async fn history(
        &self,
        program: &ProgramId,
        member: MemberId,
        page_size: usize,
        before_seq: Option<i64>,
    ) -> Result<HistoryPage, Error> {
        let page_size = page_size.clamp(1, HISTORY_PAGE_MAX);
        let client = self.db.get().await?;
        store::programs::get(&**client, program)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        store::members::get(&**client, program, member)
            .await?
            .ok_or_else(|| Error::MemberNotFound {
                program: program.clone(),
                member,
            })?;
        let limit = i64::try_from(page_size + 1).unwrap_or(i64::MAX);
        let mut entries =
            store::entries::history(&**client, program, member, before_seq, limit).await?;
        let next_before_seq = if entries.len() > page_size {
            entries.truncate(page_size);
            entries.last().map(|entry| entry.seq)
        } else {
            None
        };
        let ids: Vec<Uuid> = entries
            .iter()
            .map(|entry| entry.entry_id.as_uuid())
            .collect();
        let allocations = store::batches::allocations_of(&**client, program, &ids).await?;
        let batches = store::batches::credited_by_entries(&**client, program, &ids).await?;
        let entries = entries
            .into_iter()
            .map(|entry| {
                let id = entry.entry_id.as_uuid();
                let batch_id = batches.iter().find(|(e, _)| *e == id).map(|(_, b)| *b);
                let drawn = allocations
                    .iter()
                    .filter(|a| a.entry_id == id)
                    .cloned()
                    .map(AllocationView::from)
                    .collect();
                HistoryEntry::new(entry, batch_id, drawn)
            })
            .collect();
        Ok(HistoryPage {
            entries,
            next_before_seq,
        })
    }

    /// The liability report for [from, to): outstanding points now, by expiry month, and
    /// the period's roll-forward, checked to add up before it is returned.
    /// The program's liability now and its roll-forward over `[from, to)`. Without `to`,
    /// up to now; a `to` in the future is clamped to now (and says so). Without `from`, from
    /// the start of the program-local month `to` falls in: the month to date by default.
    pub async fn liability(
        &self,
        program: &ProgramId,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Liability, Error> {
        let now = self.clock.now();
        let to_clamped = to.is_some_and(|to| to > now);
        let to = to.map_or(now, |to| to.min(now));
        let mut client = self.db.get().await?;
        // One snapshot for both halves, so they agree with each other.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let stored = store::programs::get(&*tx, program)
            .await?
            .ok_or_else(|| program_not_found(program))?;
        let from = match from {
            Some(from) => from,
            None => {
                let zone = stored.rules.zone();
                let local = to.with_timezone(&zone).date_naive();
                let first = local.with_day(1).unwrap_or(local);
                crate::domain::local_day_bounds(first, zone).0
            }
        };
        if from >= to {
            let to_is = if to_clamped {
                "to (clamped to now)"
            } else {
                "to"
            };
            return Err(Error::invalid(
                "from",
                format!("must be before {to_is}: {from} is not before {to}"),
            ));
        }
        let roll_forward = reports::period_sums(&*tx, program, from, to).await?;
        let batches = reports::batch_sums(&*tx, program, now).await?;
        tx.commit().await?;
        let r = &roll_forward;
        // i128 sums of i64 rows cannot overflow here; checked anyway, so no report panics.
        let credits = [r.earned, r.bonus, r.restored, r.adjusted_credit];
        let debits = [r.spent, r.reversed, r.adjusted_debit, r.expired];
        let computed = credits
            .into_iter()
            .try_fold(r.opening, i128::checked_add)
            .and_then(|total| debits.into_iter().try_fold(total, i128::checked_sub));
        if computed != Some(r.closing) {
            return Err(Error::Unexpected(anyhow::anyhow!(
                "roll-forward does not add up: computed {computed:?}, closing {}",
                r.closing
            )));
        }
        Ok(Liability {
            batches,
            roll_forward,
            from,
            to,
            to_clamped,
        })
    }
}
