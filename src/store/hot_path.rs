//! The SQL of the two hot paths, statement by statement, in the order one call issues it:
//! one award ([`AWARD`]) and one spend ([`SPEND`]) of a program without a daily cap.
//!
//! Why a list and not only the functions that run it: `flash-bench` turns each list into a
//! pgbench script, so the database's own limit is measured on exactly the SQL the service
//! issues, and both figures move together when the SQL changes: the texts are the very
//! constants the store runs (`mutation::OPEN`, `mutation::WRITE_AWARDS`, …).
//!
//! Each [`Statement`] names what every `$n` placeholder carries ([`Param`]), so a tool can
//! supply realistic values without knowing the service.

/// One SQL statement of a hot path.
#[derive(Debug, Clone, Copy)]
pub struct Statement {
    /// A short snake_case name, unique within its list: pgbench variables are named after it.
    pub name: &'static str,
    /// The SQL text exactly as the service sends it.
    pub sql: &'static str,
    /// What `$1`, `$2`, … carry, in order: `params[0]` is `$1`.
    pub params: &'static [Param],
}

/// What a placeholder carries. Values named "fresh" differ on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// The member's advisory-lock key: `domain::member_lock_key(program, member)`.
    LockKey,
    /// The program's id.
    ProgramId,
    /// The member's id.
    MemberId,
    /// The call's idempotency key (fresh).
    IdempotencyKey,
    /// The calling client's name: the namespace of its idempotency keys.
    Client,
    /// The service clock's instant at the start of the call.
    Now,
    /// The id of the entry the call writes (fresh); the same value in every statement.
    EntryId,
    /// The id of the batch an award credits (fresh).
    BatchId,
    /// The program's current rules version, as the program statement read it.
    RulesVersion,
    /// A value every call of this operation passes, as SQL literal text: the entry kind, or
    /// `false` for `capped` when the program has no daily cap.
    Fixed(&'static str),
    /// NULL: a column this operation leaves empty.
    Null,
    /// The canonical request stored with the entry (JSON).
    Request,
    /// The outcome stored with the entry and returned on a replay (JSON).
    Outcome,
    /// Award: the purchase's source.
    PurchaseSource,
    /// Award: the purchase's reference in its source (fresh).
    ExternalRef,
    /// Award: the purchase amount, in minor units.
    AmountMinor,
    /// Award: the purchase's currency code.
    Currency,
    /// Award: when the purchase happened.
    OccurredAt,
    /// Award: the points the purchase earns before the daily cap.
    RequestedPoints,
    /// Award: the points credited (entry points and batch amount).
    AwardedPoints,
    /// Award: the program-local day whose cap the award counts against.
    CapDay,
    /// Award: when the credited batch expires (`Now` + the rules' validity).
    ExpiresAt,
    /// Spend: the points spent.
    SpentPoints,
    /// Spend: the spent points negated, the entry's signed effect on the balance.
    SpentPointsNegated,
    /// Spend: what the points paid for.
    Reason,
    /// Spend: one draw's signed change to its batch (negative). One point spent from a batch
    /// holding more is one draw.
    DrawPoints,
    /// A column of a row an earlier statement of the same list returned: the service
    /// computes with the rows (the FIFO draw takes the oldest batch); a pgbench script
    /// stores them with `\aset`, which keeps the last row — the same statements on another
    /// batch of the same member.
    FromRow {
        statement: &'static str,
        column: &'static str,
    },
    /// An outbox event's id (fresh).
    EventId,
    /// An outbox event's payload (JSON).
    EventPayload,
    /// A one-element array of the value: the batch statements (`mutation::OPEN`,
    /// `mutation::WRITE_AWARDS`) take one array per column, and a single call sends one.
    One(&'static Param),
}

impl Param {
    /// The statement and column of a row this value comes from, if any.
    pub fn from_row(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Param::FromRow { statement, column } => Some((statement, column)),
            Param::One(inner) => inner.from_row(),
            _ => None,
        }
    }
}

impl Statement {
    /// The highest `$n` in the text. Every placeholder up to it must have a [`Param`].
    pub fn placeholder_count(&self) -> usize {
        let bytes = self.sql.as_bytes();
        let mut highest = 0;
        let mut index = 0;
        while index < bytes.len() {
            if bytes[index] == b'$' {
                let digits = bytes[index + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits > 0 {
                    let number: usize = self.sql[index + 1..index + 1 + digits]
                        .parse()
                        .expect("digits parse");
                    highest = highest.max(number);
                }
                index += 1 + digits;
            } else {
                index += 1;
            }
        }
        highest
    }

    /// Panics, naming the statement, when its placeholders and its params disagree: a
    /// statement edited without its description is a programmer error.
    pub fn assert_params_match(&self) {
        let placeholders = self.placeholder_count();
        assert_eq!(
            placeholders,
            self.params.len(),
            "hot-path statement `{}` has {} `$n` placeholders but {} params: {}",
            self.name,
            placeholders,
            self.params.len(),
            self.sql
        );
    }
}

/// What tokio-postgres sends for `build_transaction().isolation_level(ReadCommitted)`.
const BEGIN: Statement = Statement {
    name: "begin",
    sql: "START TRANSACTION ISOLATION LEVEL READ COMMITTED",
    params: &[],
};

const COMMIT: Statement = Statement {
    name: "commit",
    sql: "COMMIT",
    params: &[],
};

/// `MemberTx::begin`.
const MEMBER_LOCK: Statement = Statement {
    name: "member_lock",
    sql: super::LOCK_MEMBER,
    params: &[Param::LockKey],
};

/// `mutation::open` for an award: rules version, member, key probe, purchase probe and
/// balance in one statement.
const OPEN_AWARD: Statement = Statement {
    name: "open",
    sql: super::mutation::OPEN,
    params: &[
        Param::ProgramId,
        Param::One(&Param::MemberId),
        Param::One(&Param::IdempotencyKey),
        Param::One(&Param::PurchaseSource),
        Param::One(&Param::ExternalRef),
        Param::Now,
        Param::One(&Param::Client),
    ],
};

/// `mutation::write_awards` of one award: the entry and its batch.
const WRITE_AWARD: Statement = Statement {
    name: "write_awards",
    sql: super::mutation::WRITE_AWARDS,
    params: &[
        Param::ProgramId,
        Param::RulesVersion,
        Param::Now,
        Param::One(&Param::EntryId),
        Param::One(&Param::MemberId),
        Param::One(&Param::AwardedPoints),
        Param::One(&Param::IdempotencyKey),
        Param::One(&Param::Request),
        Param::One(&Param::Outcome),
        Param::One(&Param::PurchaseSource),
        Param::One(&Param::ExternalRef),
        Param::One(&Param::AmountMinor),
        Param::One(&Param::Currency),
        Param::One(&Param::OccurredAt),
        Param::One(&Param::RequestedPoints),
        Param::One(&Param::CapDay),
        Param::One(&Param::Fixed("false")),
        Param::One(&Param::BatchId),
        Param::One(&Param::MemberId),
        Param::One(&Param::EntryId),
        Param::One(&Param::AwardedPoints),
        Param::One(&Param::ExpiresAt),
        // Its `points.awarded` event.
        Param::One(&Param::EventId),
        Param::One(&Param::MemberId),
        Param::One(&Param::Fixed("'points.awarded'")),
        Param::One(&Param::EventPayload),
        Param::One(&Param::Client),
    ],
};

/// `mutation::open` for any other mutation: no purchase to probe.
const OPEN_SPEND: Statement = Statement {
    name: "open",
    sql: super::mutation::OPEN,
    params: &[
        Param::ProgramId,
        Param::One(&Param::MemberId),
        Param::One(&Param::IdempotencyKey),
        Param::One(&Param::Null),
        Param::One(&Param::Null),
        Param::Now,
        Param::One(&Param::Client),
    ],
};

/// `batches::fifo_for_update`: the rows the spend's FIFO draw is planned from.
const HELD_BATCHES: Statement = Statement {
    name: "held_batches",
    sql: super::batches::FIFO_FOR_UPDATE,
    params: &[
        Param::ProgramId,
        Param::MemberId,
        Param::SpentPoints,
        Param::Now,
    ],
};

/// `mutation::write` of a spend with one draw: the entry, the batch and its allocation.
const WRITE_SPEND: Statement = Statement {
    name: "write",
    sql: super::mutation::WRITE,
    params: &[
        Param::ProgramId,
        Param::EntryId,
        Param::MemberId,
        Param::Fixed("'spend'"),
        Param::SpentPointsNegated,
        Param::IdempotencyKey,
        Param::Request,
        Param::Outcome,
        Param::RulesVersion,
        Param::Now,
        // No purchase ($11–$17), not capped, the reference, no actor, no reversal.
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Fixed("false"),
        Param::Reason,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        // No new batch ($25–$27).
        Param::Null,
        Param::Null,
        Param::Null,
        // One draw, no change to owed points.
        Param::One(&Param::FromRow {
            statement: "held_batches",
            column: "batch_id",
        }),
        Param::One(&Param::DrawPoints),
        Param::Fixed("0"),
        // Its `points.spent` event; a spend never counts toward status.
        Param::One(&Param::EventId),
        Param::One(&Param::MemberId),
        Param::One(&Param::Fixed("'points.spent'")),
        Param::One(&Param::EventPayload),
        Param::Null,
        Param::Null,
        Param::Client,
    ],
};

/// One award of a purchase (`Ledger::award`, no daily cap): lock; rules version, key,
/// member, purchase and balance; entry and batch.
pub const AWARD: &[Statement] = &[BEGIN, MEMBER_LOCK, OPEN_AWARD, WRITE_AWARD, COMMIT];

/// One spend drawing from a single batch (`Ledger::spend`): lock; rules version, key,
/// member and balance; the held batches locked; entry, draw and allocation.
pub const SPEND: &[Statement] = &[
    BEGIN,
    MEMBER_LOCK,
    OPEN_SPEND,
    HELD_BATCHES,
    WRITE_SPEND,
    COMMIT,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> impl Iterator<Item = &'static Statement> {
        AWARD.iter().chain(SPEND)
    }

    #[test]
    fn every_placeholder_has_a_param() {
        for statement in all() {
            statement.assert_params_match();
        }
    }

    #[test]
    #[should_panic(expected = "`broken` has 2 `$n` placeholders but 1 params")]
    fn a_statement_without_all_its_params_panics() {
        Statement {
            name: "broken",
            sql: "SELECT $1, $2",
            params: &[Param::ProgramId],
        }
        .assert_params_match();
    }

    #[test]
    fn rows_feed_only_later_statements_of_the_same_list() {
        for list in [AWARD, SPEND] {
            for (index, statement) in list.iter().enumerate() {
                for param in statement.params {
                    if let Some((from, _)) = param.from_row() {
                        assert!(
                            list[..index].iter().any(|earlier| earlier.name == from),
                            "`{}` reads a row of `{from}`, which does not run before it",
                            statement.name
                        );
                    }
                }
            }
        }
    }
}
