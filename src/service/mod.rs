//! Use cases. Each owns its transaction, the member lock and the cap reservation, and
//! runs in its own task so a caller hanging up can never leave it half done.
mod adjust;
mod audit;
mod award;
mod bonus;
mod clients;
mod error;
mod events;
mod expiry;
mod graph;
mod health;
mod history;
mod jobs;
mod members;
mod outcome;
mod programs;
mod referrals;
mod reversal;
mod spend;
mod tiers;

pub use adjust::{AdjustCommand, AdjustOutcome};
pub use audit::AuditReport;
pub use award::{AwardCommand, AwardOutcome, BATCH_MAX};
pub use bonus::{BonusCause, BonusCredit, BonusOutcome, ReferralSide};
pub use clients::{Caller, ClientView, Clients, Credentials, Limiter, NewClientCommand};
pub use error::{Error, ReferralRefusal, Unavailable};
pub use events::{EventView, Events};
pub use expiry::ExpiryOutcome;
pub use graph::{
    CachedGraph, GraphCacheStats, GraphView, Neighbourhood, ADVOCATES_MAX, GRAPH_DEFAULT_NODES,
    GRAPH_MAX_NODES, NEIGHBOURHOOD_DEFAULT_NODES, NEIGHBOURHOOD_MAX_DEPTH,
};
pub use health::Readiness;
pub use history::{HistoryEntry, HistoryPage, Liability, RollForward};
pub use jobs::{birthdays_celebrated_on, Job, Replica, RunCounts, RunOutcome, MAX_ATTEMPTS};
pub use members::{EnrollCommand, MemberView};
pub use outcome::AllocationView;
pub use programs::{ProgramView, Programs};
pub use referrals::{
    CreateInvitesCommand, CreateInvitesOutcome, InviteOutcome, InvitePage, InviteSent, InviteView,
    ReferralStats, INVITE_PAGE_MAX,
};
pub use reversal::{
    EntryRef, ReverseAwardCommand, ReverseAwardOutcome, ReverseSpendCommand, ReverseSpendOutcome,
};
pub use spend::{SpendCommand, SpendOutcome};
pub use tiers::{
    SetTierCommand, SetTierOutcome, TierChangeView, TierEvaluation, TierHistoryPage, TierStatusView,
};

use crate::cap::DailyCap;
use crate::clock::Clock;
use crate::domain::{ContactKey, IdempotencyKey, MemberId, ProgramId, ProgramRules};
use crate::store::{self, mutation, MemberTx};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use deadpool_postgres::{Client, Pool};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// How far in the future a caller's timestamp may be, for clock skew between services.
pub const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// The ledger use cases: members and their points.
#[derive(Clone)]
pub struct Ledger {
    db: Pool,
    cap: DailyCap,
    clock: Arc<dyn Clock>,
    /// Rules versions never change once written: read once per process.
    rules: RulesCache,
    /// Contacts are hashed under it; None in one-shot commands, which take no contacts.
    contact_key: Option<ContactKey>,
    /// The latest referral graph snapshot of each program read so far.
    graph: graph::GraphCache,
    /// The most items one `AwardBatch` or `EnrollBatch` call may carry (FLASH_MAX_BATCH_ITEMS).
    batch_max: usize,
}

impl Ledger {
    pub fn new(db: Pool, cap: DailyCap, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            cap,
            clock,
            rules: RulesCache::default(),
            contact_key: None,
            graph: graph::GraphCache::default(),
            batch_max: BATCH_MAX,
        }
    }

    /// The process's clock, for the services beside the ledger.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The ledger hashing contacts under `key` (the server's).
    pub fn with_contact_key(mut self, key: ContactKey) -> Self {
        self.contact_key = Some(key);
        self
    }

    /// The most items one `AwardBatch` or `EnrollBatch` call may carry ([`BATCH_MAX`] by
    /// default).
    pub fn with_batch_max(mut self, max: usize) -> Self {
        self.batch_max = max;
        self
    }
}

/// A program's rules at one version, with what the daily cap needs of its history.
#[derive(Debug)]
struct RulesAt {
    pub version: i64,
    pub rules: ProgramRules,
    /// (in force from, zone) of every version up to this one, oldest first.
    pub zone_history: Vec<(DateTime<Utc>, Tz)>,
}

/// The most rules versions kept in memory; past it the cache starts again.
const RULES_CACHE_MAX: usize = 4096;

/// Rules by (program, version), shared by every clone of the ledger.
#[derive(Clone, Default)]
struct RulesCache(Arc<Mutex<RulesByVersion>>);

type RulesByVersion = HashMap<(ProgramId, i64), Arc<RulesAt>>;

impl RulesCache {
    async fn get(
        &self,
        client: &impl tokio_postgres::GenericClient,
        program: &ProgramId,
        version: i64,
    ) -> Result<Arc<RulesAt>, Error> {
        let cache_key = (program.clone(), version);
        if let Some(found) = self.lock().get(&cache_key) {
            return Ok(found.clone());
        }
        let history = store::programs::rules_history(client, program, version).await?;
        let mut zone_history = Vec::with_capacity(history.len());
        let mut current = None;
        for (stored_version, effective, document) in history {
            let rules = ProgramRules::parse(document).map_err(|error| {
                Error::Unexpected(anyhow::anyhow!("stored rules invalid: {error}"))
            })?;
            zone_history.push((effective, rules.timezone));
            if stored_version == version {
                current = Some(rules);
            }
        }
        let rules = current.ok_or_else(|| {
            Error::Unexpected(anyhow::anyhow!(
                "rules version {version} of {program} missing"
            ))
        })?;
        let found = Arc::new(RulesAt {
            version,
            rules,
            zone_history,
        });
        let mut cache = self.lock();
        if cache.len() >= RULES_CACHE_MAX {
            cache.clear();
        }
        cache.insert(cache_key, found.clone());
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RulesByVersion> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A mutation's unit of work, opened: the members' locks held, the rules, their rows and
/// balances read. Every mutation — award, spend, reversal, adjustment, and every later
/// credit — starts with [`Ledger::open`] (one member) or [`Ledger::open_many`] (a batch),
/// so the round trips are counted and fixed in one place.
struct Unit<'c> {
    tx: MemberTx<'c>,
    now: DateTime<Utc>,
    rules: Arc<RulesAt>,
    /// Each locked member's row, balance and status, kept current as the unit credits.
    members: HashMap<MemberId, MemberState>,
}

/// A locked member as the unit sees it.
struct MemberState {
    /// None: not enrolled.
    row: Option<store::members::StoredMember>,
    /// Spendable balance at `now`, after the unit's credits so far.
    balance: i64,
    /// Status points of the tier window ending at `now`, after the unit's credits so far.
    status: i64,
}

impl Unit<'_> {
    /// The row of a member of the unit; NOT_FOUND when it is not enrolled.
    fn member_row(&self, member: MemberId) -> Result<&store::members::StoredMember, Error> {
        self.members
            .get(&member)
            .and_then(|state| state.row.as_ref())
            .ok_or_else(|| Error::MemberNotFound {
                program: self.tx.program().clone(),
                member,
            })
    }

    /// The row of the unit's one member; NOT_FOUND when it is not enrolled.
    fn member(&self) -> Result<&store::members::StoredMember, Error> {
        self.member_row(self.tx.member())
    }

    /// The spendable balance of the unit's one member, before this mutation.
    fn balance_points(&self) -> i64 {
        self.members
            .get(&self.tx.member())
            .map_or(0, |state| state.balance)
    }

    /// Credits `points` to a member's running balance and returns the new balance;
    /// FAILED_PRECONDITION when it would pass i64::MAX (so every balance and every stored
    /// figure stays an i64).
    fn credit_balance(&mut self, member: MemberId, points: i64) -> Result<i64, Error> {
        let state = self.members.entry(member).or_insert(MemberState {
            row: None,
            balance: 0,
            status: 0,
        });
        state.balance = state
            .balance
            .checked_add(points)
            .ok_or(Error::BalanceOverflow)?;
        Ok(state.balance)
    }

    /// The balance of the unit's one member after crediting `points`, without recording it.
    fn balance_after_credit(&self, points: i64) -> Result<i64, Error> {
        self.balance_points()
            .checked_add(points)
            .ok_or(Error::BalanceOverflow)
    }

    /// Writes the mutation and commits.
    async fn finish(self, effects: &mutation::Effects<'_>) -> Result<(), Error> {
        mutation::write(&self.tx, effects).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// What opening a single mutation found: the stored answer of a replay, or the unit to go
/// on with.
enum Opened<'c, T> {
    Replay(T),
    Fresh(Unit<'c>),
}

/// What opening found for one item of a batch, besides the members' rows.
struct ItemOpening {
    /// The entry already written under the item's key.
    prior: Option<store::entries::KeyedEntry>,
    /// The award that already credited the item's purchase.
    purchase_entry: Option<crate::domain::EntryId>,
}

impl Ledger {
    /// Opens a mutation of one member: begins the transaction, takes the member's lock and
    /// reads, in one statement, the rules version, the member, the entry under the key (a
    /// replay returns its stored outcome; a different request under it is ALREADY_EXISTS
    /// naming the fields) and the balance. Awards open through [`Ledger::open_many`].
    async fn open<'c, T: Outcome>(
        &self,
        client: &'c mut Client,
        program: &ProgramId,
        member: MemberId,
        key: &IdempotencyKey,
        request: &serde_json::Value,
    ) -> Result<Opened<'c, T>, Error> {
        self.open_locking(client, program, member, key, request, &[])
            .await
    }

    /// [`Ledger::open`] of a mutation that also touches `others` (a referral's other
    /// side): their locks are taken with the member's, in the one global order, and their
    /// rows and balances read with it.
    async fn open_locking<'c, T: Outcome>(
        &self,
        client: &'c mut Client,
        program: &ProgramId,
        member: MemberId,
        key: &IdempotencyKey,
        request: &serde_json::Value,
        others: &[MemberId],
    ) -> Result<Opened<'c, T>, Error> {
        let mut asks = vec![mutation::Ask {
            member,
            key: Some(key),
            purchase: None,
        }];
        asks.extend(others.iter().map(|&other| mutation::Ask {
            member: other,
            key: None,
            purchase: None,
        }));
        let (unit, mut items) = self.open_many(client, program, &asks).await?;
        items.truncate(1);
        let item = items
            .pop()
            .ok_or_else(|| members::program_not_found(program))?;
        if let Some(prior) = &item.prior {
            return Ok(Opened::Replay(replayed(key, prior, request)?));
        }
        Ok(Opened::Fresh(unit))
    }

    /// Opens a mutation of several items (a batch of awards): locks every member in the
    /// one global order, then reads every item in one statement. NOT_FOUND when the
    /// program does not exist.
    async fn open_many<'c>(
        &self,
        client: &'c mut Client,
        program: &ProgramId,
        asks: &[mutation::Ask<'_>],
    ) -> Result<(Unit<'c>, Vec<ItemOpening>), Error> {
        let members: Vec<MemberId> = asks.iter().map(|ask| ask.member).collect();
        let tx = MemberTx::begin_many(client, program, &members).await?;
        // Read once the lock is held: a member's entries are then dated in the order they
        // were written, and nothing is drawn from a batch earned after the entry's time
        // (the audit found spends dated a few ms before a batch an award, waiting on the
        // lock meanwhile, had just credited).
        let now = self.clock.now();
        let openings = mutation::open(&tx, asks, now).await?;
        let Some(first) = openings.first() else {
            return Err(members::program_not_found(program));
        };
        let rules = self.rules.get(&*tx, program, first.rules_version).await?;
        let mut states = HashMap::new();
        let mut items = Vec::with_capacity(openings.len());
        for (ask, opening) in asks.iter().zip(openings) {
            let figure = |what: &str, value: i128| {
                i64::try_from(value).map_err(|_| {
                    Error::Unexpected(anyhow::anyhow!(
                        "member {} has {value} {what}, past i64",
                        ask.member
                    ))
                })
            };
            let state = MemberState {
                balance: figure("points", opening.balance_points)?,
                status: figure("status points", opening.status_points)?,
                row: opening.member,
            };
            states.insert(ask.member, state);
            items.push(ItemOpening {
                prior: opening.prior,
                purchase_entry: opening.purchase_entry,
            });
        }
        let unit = Unit {
            tx,
            now,
            rules,
            members: states,
        };
        Ok((unit, items))
    }
}

/// The stored outcome of a key's earlier request, marked as a replay; ALREADY_EXISTS
/// naming the differing fields when the request differs.
fn replayed<T: Outcome>(
    key: &IdempotencyKey,
    prior: &store::entries::KeyedEntry,
    request: &serde_json::Value,
) -> Result<T, Error> {
    let mut outcome: T = replay_or_conflict(key, prior, request)?;
    outcome.mark_replayed();
    Ok(outcome)
}

/// Runs a unit of work in its own task and waits for it. If the caller's future is
/// dropped (the gRPC client cancelled), the task still commits or rolls back, and a
/// cap reservation is still released.
async fn run_to_completion<T, F>(work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    // The unit of work stays in the RPC's span, its database calls the RPC's children.
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(|join_error| {
            Error::Unexpected(anyhow::anyhow!("unit of work failed: {join_error}"))
        })?
}

/// Names the fields whose values differ between a stored request and a new one.
fn differing_fields(stored: &serde_json::Value, requested: &serde_json::Value) -> Vec<String> {
    let (Some(stored), Some(requested)) = (stored.as_object(), requested.as_object()) else {
        return vec!["request".into()];
    };
    let mut fields: Vec<String> = stored
        .keys()
        .chain(requested.keys())
        .filter(|field| stored.get(*field) != requested.get(*field))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// The answer to a key seen before: the original outcome when the request is the same,
/// ALREADY_EXISTS naming the differing fields otherwise.
fn replay_or_conflict<T: serde::de::DeserializeOwned>(
    key: &crate::domain::IdempotencyKey,
    prior: &crate::store::entries::KeyedEntry,
    request: &serde_json::Value,
) -> Result<T, Error> {
    let differing = differing_fields(&prior.request, request);
    if !differing.is_empty() {
        return Err(Error::KeyReused {
            key: key.as_str().to_owned(),
            entry: prior.entry_id,
            differing_fields: differing,
        });
    }
    serde_json::from_value(prior.outcome.clone())
        .map_err(|error| Error::Unexpected(anyhow::Error::new(error).context("stored outcome")))
}

/// An outcome stored with its entry and returned again on a replay.
trait Outcome: serde::Serialize + serde::de::DeserializeOwned {
    fn mark_replayed(&mut self);

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("outcomes serialize to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differing_fields_lists_changed_and_missing_fields() {
        let stored = json!({"op": "award", "amount_minor": 100, "currency": "USD"});
        let same = stored.clone();
        assert!(differing_fields(&stored, &same).is_empty());
        let other = json!({"op": "award", "amount_minor": 200, "source": "receipt"});
        assert_eq!(
            differing_fields(&stored, &other),
            ["amount_minor", "currency", "source"]
        );
    }
}
