//! The SQL of the two hot paths, statement by statement, in the order one call issues it:
//! one award ([`AWARD`]) and one spend ([`SPEND`]) of a program without a daily cap.
//!
//! Why a list and not only the functions that run it: `flash-bench` turns each list into a
//! pgbench script, so the database's own limit is measured on exactly the SQL the service
//! issues, and both figures move together when the SQL changes. The store is meant to run
//! these same constants; until it does, a test below checks that every text here is still
//! written, byte for byte, in the store module it was copied from.
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
    sql: "SELECT pg_advisory_xact_lock($1)",
    params: &[Param::LockKey],
};

/// `programs::get`.
const PROGRAM_RULES: Statement = Statement {
    name: "program_rules",
    sql: "SELECT p.program_id, p.name, p.rules_version, r.rules, \
     p.created_at, p.updated_at \
     FROM programs p JOIN program_rules r \
       ON r.program_id = p.program_id AND r.version = p.rules_version \
     WHERE p.program_id = $1",
    params: &[Param::ProgramId],
};

/// `entries::find_by_key`.
const KEY_PROBE: Statement = Statement {
    name: "key_probe",
    sql: "SELECT entry_id, member_id, kind, request, outcome FROM ledger_entries \
             WHERE program_id = $1 AND idempotency_key = $2",
    params: &[Param::ProgramId, Param::IdempotencyKey],
};

/// `members::get`.
const MEMBER: Statement = Statement {
    name: "member",
    sql: "SELECT member_id, birthday, enrolled_at, tier_rank FROM members \
             WHERE program_id = $1 AND member_id = $2",
    params: &[Param::ProgramId, Param::MemberId],
};

/// `entries::find_purchase_award`.
const PURCHASE_PROBE: Statement = Statement {
    name: "purchase_probe",
    sql: "SELECT entry_id FROM ledger_entries \
             WHERE program_id = $1 AND kind = 'award' AND source = $2 AND external_ref = $3",
    params: &[Param::ProgramId, Param::PurchaseSource, Param::ExternalRef],
};

/// `batches::balance`.
const BALANCE: Statement = Statement {
    name: "balance",
    sql: "SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches \
             WHERE program_id = $1 AND member_id = $2 AND remaining > 0 AND expires_at > $3",
    params: &[Param::ProgramId, Param::MemberId, Param::Now],
};

/// `entries::insert`.
const ENTRY_INSERT_SQL: &str =
    "INSERT INTO ledger_entries (program_id, entry_id, member_id, kind, points, \
             idempotency_key, request, outcome, rules_version, created_at, source, \
             external_ref, amount_minor, currency, occurred_at, requested_points, cap_day, capped, \
             reason, actor, reversed_entry_id, reversed_points, unrecovered_points) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                 $19, $20, $21, $22, $23)";

const AWARD_ENTRY_INSERT: Statement = Statement {
    name: "entry_insert",
    sql: ENTRY_INSERT_SQL,
    params: &[
        Param::ProgramId,
        Param::EntryId,
        Param::MemberId,
        Param::Fixed("'award'"),
        Param::AwardedPoints,
        Param::IdempotencyKey,
        Param::Request,
        Param::Outcome,
        Param::RulesVersion,
        Param::Now,
        Param::PurchaseSource,
        Param::ExternalRef,
        Param::AmountMinor,
        Param::Currency,
        Param::OccurredAt,
        Param::RequestedPoints,
        Param::CapDay,
        Param::Fixed("false"),
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
        Param::Null,
    ],
};

/// `batches::insert_with_id`.
const BATCH_INSERT: Statement = Statement {
    name: "batch_insert",
    sql: "INSERT INTO point_batches \
             (program_id, batch_id, member_id, entry_id, amount, remaining, earned_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
    params: &[
        Param::ProgramId,
        Param::BatchId,
        Param::MemberId,
        Param::EntryId,
        Param::AwardedPoints,
        Param::Now,
        Param::ExpiresAt,
    ],
};

/// `batches::held_for_update`: the rows the spend's FIFO draw is planned from.
const HELD_BATCHES: Statement = Statement {
    name: "held_batches",
    sql: "SELECT batch_id, remaining, earned_at, expires_at FROM point_batches \
             WHERE program_id = $1 AND member_id = $2 AND remaining > 0 \
             ORDER BY earned_at, batch_id FOR UPDATE",
    params: &[Param::ProgramId, Param::MemberId],
};

const SPEND_ENTRY_INSERT: Statement = Statement {
    name: "entry_insert",
    sql: ENTRY_INSERT_SQL,
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
    ],
};

/// `batches::apply`, first of the two statements of one draw.
const DRAW_APPLY: Statement = Statement {
    name: "draw_apply",
    sql: "UPDATE point_batches SET remaining = remaining + $3 \
             WHERE program_id = $1 AND batch_id = $2",
    params: &[
        Param::ProgramId,
        Param::FromRow {
            statement: "held_batches",
            column: "batch_id",
        },
        Param::DrawPoints,
    ],
};

/// `batches::apply`, second of the two statements of one draw.
const ALLOCATION_INSERT: Statement = Statement {
    name: "allocation_insert",
    sql: "INSERT INTO allocations (program_id, entry_id, batch_id, points) \
             VALUES ($1, $2, $3, $4)",
    params: &[
        Param::ProgramId,
        Param::EntryId,
        Param::FromRow {
            statement: "held_batches",
            column: "batch_id",
        },
        Param::DrawPoints,
    ],
};

/// One award of a purchase (`Ledger::award`, no daily cap): lock, program and rules, key
/// probe, member, purchase probe, balance, entry, batch.
pub const AWARD: &[Statement] = &[
    BEGIN,
    MEMBER_LOCK,
    PROGRAM_RULES,
    KEY_PROBE,
    MEMBER,
    PURCHASE_PROBE,
    BALANCE,
    AWARD_ENTRY_INSERT,
    BATCH_INSERT,
    COMMIT,
];

/// One spend drawing from a single batch (`Ledger::spend`): lock, program and rules, key
/// probe, member, the held batches locked, entry, then per draw the batch update and the
/// allocation.
pub const SPEND: &[Statement] = &[
    BEGIN,
    MEMBER_LOCK,
    PROGRAM_RULES,
    KEY_PROBE,
    MEMBER,
    HELD_BATCHES,
    SPEND_ENTRY_INSERT,
    DRAW_APPLY,
    ALLOCATION_INSERT,
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
                    if let Param::FromRow {
                        statement: from, ..
                    } = param
                    {
                        assert!(
                            list[..index].iter().any(|earlier| earlier.name == *from),
                            "`{}` reads a row of `{from}`, which does not run before it",
                            statement.name
                        );
                    }
                }
            }
        }
    }

    /// The store's source as the compiler reads its string literals: a `\` at the end of a
    /// line drops the line break and the next line's leading whitespace.
    fn joined_source(source: &str) -> String {
        let mut joined = String::with_capacity(source.len());
        let mut rest = source;
        while let Some(at) = rest.find("\\\n") {
            joined.push_str(&rest[..at]);
            rest = rest[at + 2..].trim_start();
        }
        joined.push_str(rest);
        joined
    }

    /// Until the store runs these constants, a copy that drifted from it fails here.
    #[test]
    fn every_statement_is_the_text_the_store_sends() {
        let store = [
            include_str!("member_tx.rs"),
            include_str!("programs.rs"),
            include_str!("entries.rs"),
            include_str!("members.rs"),
            include_str!("batches.rs"),
        ]
        .map(joined_source)
        .join("\n");
        for statement in all().filter(|s| s.name != "begin" && s.name != "commit") {
            assert!(
                store.contains(statement.sql),
                "`{}` is no longer in src/store: {}",
                statement.name,
                statement.sql
            );
        }
    }
}
