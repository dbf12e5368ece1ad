-- Programs, members and the award half of the ledger.
-- Every row carries program_id and every key starts with it: nothing of one program is
-- reachable through another.

CREATE TABLE programs (
    program_id    text PRIMARY KEY CHECK (program_id ~ '^[a-z0-9-]{1,64}$'),
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    rules_version bigint NOT NULL CHECK (rules_version >= 1),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Every version of a program's rules is kept: entries record the version they used.
CREATE TABLE program_rules (
    program_id text NOT NULL REFERENCES programs (program_id),
    version    bigint NOT NULL CHECK (version >= 1),
    rules      jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (program_id, version)
);

CREATE TABLE members (
    program_id  text NOT NULL REFERENCES programs (program_id),
    member_id   uuid NOT NULL,
    birthday    date,
    enrolled_at timestamptz NOT NULL,
    -- Index into the program's tier ladder; the tier engine moves it.
    tier_rank   integer NOT NULL DEFAULT 0 CHECK (tier_rank >= 0),
    PRIMARY KEY (program_id, member_id)
);

-- The ledger: one row per accepted mutation, never updated except to record later
-- reversals. `points` is the signed effect on the member's balance.
CREATE TABLE ledger_entries (
    program_id       text NOT NULL,
    entry_id         uuid NOT NULL,
    -- Orders a member's history; entries of one member are written under its lock, so
    -- this order is their commit order.
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    member_id        uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN
                        ('award', 'spend', 'award_reversal', 'spend_reversal',
                         'adjustment', 'expiry', 'bonus')),
    points           bigint NOT NULL,
    idempotency_key  text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    -- The canonical request, compared field by field when the key is seen again.
    request          jsonb NOT NULL,
    -- The original answer, returned as it was on a replay.
    outcome          jsonb NOT NULL,
    rules_version    bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    -- Purchase awards.
    source           text CHECK (source IN ('receipt', 'shopify', 'marketplace')),
    external_ref     text,
    amount_minor     bigint CHECK (amount_minor > 0),
    currency         text,
    occurred_at      timestamptz,
    requested_points bigint CHECK (requested_points >= 0),
    -- The program-local day whose daily cap the award counted against.
    cap_day          date,
    capped           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (program_id, entry_id),
    UNIQUE (program_id, entry_id, member_id),
    CONSTRAINT ledger_entries_idempotency_key UNIQUE (program_id, idempotency_key),
    FOREIGN KEY (program_id, member_id) REFERENCES members (program_id, member_id),
    FOREIGN KEY (program_id, rules_version) REFERENCES program_rules (program_id, version),
    CONSTRAINT award_is_a_purchase CHECK (kind <> 'award' OR (
        source IS NOT NULL AND external_ref IS NOT NULL AND amount_minor IS NOT NULL
        AND currency IS NOT NULL AND occurred_at IS NOT NULL AND cap_day IS NOT NULL
        AND points >= 0 AND points <= requested_points))
);

-- One purchase earns once, whatever key it is sent under.
CREATE UNIQUE INDEX ledger_entries_one_award_per_purchase
    ON ledger_entries (program_id, source, external_ref) WHERE kind = 'award';
CREATE INDEX ledger_entries_member_history ON ledger_entries (program_id, member_id, seq);
CREATE INDEX ledger_entries_cap_day
    ON ledger_entries (program_id, member_id, cap_day) WHERE kind = 'award';

-- Points are held in batches: each credit creates one, spends draw from the oldest.
CREATE TABLE point_batches (
    program_id text NOT NULL,
    batch_id   uuid NOT NULL,
    member_id  uuid NOT NULL,
    -- The entry that credited this batch.
    entry_id   uuid NOT NULL,
    amount     bigint NOT NULL CHECK (amount > 0),
    remaining  bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    earned_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL CHECK (expires_at > earned_at),
    PRIMARY KEY (program_id, batch_id),
    UNIQUE (program_id, entry_id),
    FOREIGN KEY (program_id, entry_id, member_id)
        REFERENCES ledger_entries (program_id, entry_id, member_id),
    FOREIGN KEY (program_id, member_id) REFERENCES members (program_id, member_id)
);

CREATE INDEX point_batches_spendable
    ON point_batches (program_id, member_id, earned_at, batch_id) WHERE remaining > 0;
CREATE INDEX point_batches_due ON point_batches (expires_at) WHERE remaining > 0;
