//! A transaction that holds its members' advisory locks.
use crate::domain::{member_lock_key, MemberId, ProgramId};
use deadpool_postgres::{Client, Transaction};
use std::ops::Deref;
use tokio_postgres::{IsolationLevel, Statement};

/// Takes the member's lock until the transaction ends. Always its own statement: a
/// statement's snapshot is taken before it waits, so reads in the same statement could
/// miss what the previous holder committed.
pub const LOCK_MEMBER: &str = "SELECT pg_advisory_xact_lock($1)";

/// Takes several members' locks, one after the other in the order of the array, which
/// callers sort by lock key: every transaction that holds more than one member's lock
/// takes them in that one global order, so two of them can never deadlock.
pub const LOCK_MEMBERS: &str =
    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k";

/// The only handle balance-changing store functions accept: a READ COMMITTED transaction
/// that has taken `pg_advisory_xact_lock` on the member. Under READ COMMITTED every
/// statement after the lock sees rows committed by the previous holder; the lock goes
/// with the transaction, so it can never leak past commit or rollback.
pub struct MemberTx<'a> {
    transaction: Transaction<'a>,
    program: ProgramId,
    /// The locked members, in lock-key order; never empty.
    members: Vec<MemberId>,
}

impl<'a> MemberTx<'a> {
    #[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "member_tx::begin"))]
    pub async fn begin(
        client: &'a mut Client,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<Self, tokio_postgres::Error> {
        Self::begin_many(client, program, &[member]).await
    }

    /// Locks every member given (at least one), in lock-key order.
    #[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "member_tx::begin_many"))]
    pub async fn begin_many(
        client: &'a mut Client,
        program: &ProgramId,
        members: &[MemberId],
    ) -> Result<Self, tokio_postgres::Error> {
        let mut keyed: Vec<(i64, MemberId)> = members
            .iter()
            .map(|member| (member_lock_key(program, *member), *member))
            .collect();
        keyed.sort();
        keyed.dedup();
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        // Timed from the lock statement alone: the wait is what the histogram is for.
        let waiting;
        if let [(key, _)] = keyed.as_slice() {
            let lock = transaction.prepare_cached(LOCK_MEMBER).await?;
            waiting = std::time::Instant::now();
            transaction.execute(&lock, &[key]).await?;
        } else {
            let keys: Vec<i64> = keyed.iter().map(|(key, _)| *key).collect();
            let lock = transaction.prepare_cached(LOCK_MEMBERS).await?;
            waiting = std::time::Instant::now();
            transaction.execute(&lock, &[&keys]).await?;
        }
        crate::telemetry::metrics::member_lock_waited(waiting.elapsed());
        Ok(Self {
            transaction,
            program: program.clone(),
            members: keyed.into_iter().map(|(_, member)| member).collect(),
        })
    }

    pub fn program(&self) -> &ProgramId {
        &self.program
    }

    /// The member of a single-member unit of work (the first locked otherwise).
    pub fn member(&self) -> MemberId {
        self.members[0]
    }

    /// Every locked member, in lock order.
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// The statement prepared once per connection: the hot path never parses SQL twice.
    #[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "member_tx::prepared"))]
    pub async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.transaction.prepare_cached(sql).await
    }

    /// The transaction, for store functions that also run outside a member's lock.
    pub fn cached(&self) -> &Transaction<'a> {
        &self.transaction
    }

    #[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "member_tx::commit"))]
    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.transaction.commit().await
    }

    /// Rolls back now, so the lock is free before the caller does anything else.
    #[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "member_tx::rollback"))]
    pub async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.transaction.rollback().await
    }
}

impl<'a> Deref for MemberTx<'a> {
    type Target = tokio_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.transaction
    }
}
