//! A transaction that holds one member's advisory lock.
use crate::domain::{member_lock_key, MemberId, ProgramId};
use deadpool_postgres::{Client, Transaction};
use std::ops::Deref;
use tokio_postgres::{IsolationLevel, Statement};

/// Takes the member's lock until the transaction ends. Always its own statement: a
/// statement's snapshot is taken before it waits, so reads in the same statement could
/// miss what the previous holder committed.
pub const LOCK_MEMBER: &str = "SELECT pg_advisory_xact_lock($1)";

/// The only handle balance-changing store functions accept: a READ COMMITTED transaction
/// that has taken `pg_advisory_xact_lock` on the member. Under READ COMMITTED every
/// statement after the lock sees rows committed by the previous holder; the lock goes
/// with the transaction, so it can never leak past commit or rollback.
pub struct MemberTx<'a> {
    transaction: Transaction<'a>,
    program: ProgramId,
    member: MemberId,
}

impl<'a> MemberTx<'a> {
    pub async fn begin(
        client: &'a mut Client,
        program: &ProgramId,
        member: MemberId,
    ) -> Result<Self, tokio_postgres::Error> {
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let lock = transaction.prepare_cached(LOCK_MEMBER).await?;
        transaction
            .execute(&lock, &[&member_lock_key(program, member)])
            .await?;
        Ok(Self {
            transaction,
            program: program.clone(),
            member,
        })
    }

    pub fn program(&self) -> &ProgramId {
        &self.program
    }

    pub fn member(&self) -> MemberId {
        self.member
    }

    /// The statement prepared once per connection: the hot path never parses SQL twice.
    pub async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.transaction.prepare_cached(sql).await
    }

    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.transaction.commit().await
    }

    /// Rolls back now, so the lock is free before the caller does anything else.
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
