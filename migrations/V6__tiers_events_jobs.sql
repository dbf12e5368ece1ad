-- Tiers, the event outbox and the worker fleet (issue 13).

-- Status: what an entry adds to (or, for a refund, takes from) the member's status points,
-- and the instant it counts at. NULL for entries that never count (spends, expiry, debits,
-- tier bonuses, adjustments not marked to count). A refund counts at its award's instant,
-- so the award and its reversal leave the rolling window together.
ALTER TABLE ledger_entries
    ADD COLUMN status_points bigint,
    ADD COLUMN status_at     timestamptz;

-- Entries written before tiers: awards count at their instant, refunds at their award's.
UPDATE ledger_entries SET status_points = points, status_at = created_at WHERE kind = 'award';
UPDATE ledger_entries r SET status_points = -r.reversed_points, status_at = a.created_at
FROM ledger_entries a
WHERE r.kind = 'award_reversal' AND a.program_id = r.program_id
  AND a.entry_id = r.reversed_entry_id;

ALTER TABLE ledger_entries
    ADD CONSTRAINT status_has_an_instant CHECK ((status_points IS NULL) = (status_at IS NULL)),
    ADD CONSTRAINT awards_count_toward_status CHECK (kind <> 'award' OR
        (status_points IS NOT DISTINCT FROM points AND status_at IS NOT DISTINCT FROM created_at)),
    DROP CONSTRAINT ledger_entries_kind_check,
    ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN
        ('award', 'spend', 'award_reversal', 'spend_reversal', 'adjustment', 'expiry', 'bonus',
         'tier_set')),
    ADD CONSTRAINT tier_set_is_audited CHECK (kind <> 'tier_set' OR
        (points = 0 AND reason IS NOT NULL AND actor IS NOT NULL AND status_points IS NULL)),
    ADD CONSTRAINT bonus_says_why CHECK (kind <> 'bonus' OR (points > 0 AND reason IS NOT NULL));

-- Status points of a member in a window, by index: bounded by the member and the instant.
-- Awards count at their own instant, so the same index rebuilds a lost cap counter (the
-- member's awards in a local day's interval), and the award path keeps one index fewer.
CREATE INDEX ledger_entries_status
    ON ledger_entries (program_id, member_id, status_at) INCLUDE (status_points, kind)
    WHERE status_at IS NOT NULL;
DROP INDEX ledger_entries_cap_day;

ALTER TABLE members
    -- A downgrade grace in progress: when it started and when it ends.
    ADD COLUMN grace_started_at     timestamptz,
    ADD COLUMN grace_ends_at        timestamptz,
    -- The reminders (days before the end) already sent for the grace in progress.
    ADD COLUMN grace_reminders_sent integer[] NOT NULL DEFAULT '{}',
    -- A manual tier holds against downgrades until then.
    ADD COLUMN tier_hold_until      timestamptz,
    ADD CONSTRAINT grace_has_both_ends CHECK ((grace_started_at IS NULL) = (grace_ends_at IS NULL));

-- Members above the first tier: what the grace batch walks.
CREATE INDEX members_ranked ON members (program_id, member_id) WHERE tier_rank > 0;
-- Members by birthday (month, day): what the birthday job looks up.
CREATE INDEX members_birthday ON members
    (program_id, (EXTRACT(MONTH FROM birthday)), (EXTRACT(DAY FROM birthday)))
    WHERE birthday IS NOT NULL;

-- Every tier change, the history the member's tier is the last word of.
CREATE TABLE tier_changes (
    program_id    text NOT NULL,
    change_id     uuid NOT NULL,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    member_id     uuid NOT NULL,
    change        text NOT NULL CHECK (change IN ('upgraded', 'downgraded', 'set')),
    from_rank     integer NOT NULL CHECK (from_rank >= 0),
    to_rank       integer NOT NULL CHECK (to_rank >= 0),
    from_code     text NOT NULL,
    to_code       text NOT NULL,
    status_points bigint NOT NULL,
    reason        text NOT NULL CHECK (char_length(reason) <= 256),
    actor         text NOT NULL CHECK (char_length(actor) <= 256),
    -- The credit that crossed the threshold, or the tier_set entry of a manual change.
    entry_id      uuid,
    hold_until    timestamptz,
    rules_version bigint NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (program_id, change_id),
    FOREIGN KEY (program_id, member_id) REFERENCES members (program_id, member_id),
    CONSTRAINT upgrades_go_up CHECK (change <> 'upgraded' OR to_rank > from_rank),
    CONSTRAINT downgrades_go_one_down CHECK (change <> 'downgraded' OR to_rank = from_rank - 1)
);
CREATE INDEX tier_changes_member ON tier_changes (program_id, member_id, seq);

-- The transactional outbox. Rows are read in (txid, seq) order, and only below the oldest
-- transaction still running: every transaction with a smaller txid has ended, so no row
-- can ever appear behind a cursor (a plain "seq greater than the last seen" skips rows
-- whose transaction committed after a later-numbered one).
CREATE TABLE events (
    program_id text NOT NULL,
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    event_id   uuid NOT NULL,
    member_id  uuid,
    event_type text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (program_id, txid, seq)
);
CREATE INDEX events_age ON events (created_at);

-- How far a program's events were pruned: a cursor at or before it is out of range.
CREATE TABLE event_horizons (
    program_id  text PRIMARY KEY,
    pruned_txid xid8 NOT NULL,
    pruned_seq  bigint NOT NULL,
    pruned_at   timestamptz NOT NULL
);

-- Job runs: one row per job and slot, claimed with a lease; a replica that dies leaves
-- its lease to expire and another takes the run over from its last checkpoint.
CREATE TABLE job_runs (
    run_id      uuid PRIMARY KEY,
    job         text NOT NULL,
    slot        timestamptz NOT NULL,
    claimed_by  text NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    takeovers   integer NOT NULL DEFAULT 0,
    checkpoint  jsonb,
    counts      jsonb NOT NULL DEFAULT '{}',
    UNIQUE (job, slot)
);
CREATE INDEX job_runs_recent ON job_runs (started_at);

-- Members a job could not process: retried with backoff, parked after a bounded number of
-- tries (then only `flash jobs` shows them until someone looks).
CREATE TABLE job_member_failures (
    job             text NOT NULL,
    program_id      text NOT NULL,
    member_id       uuid NOT NULL,
    attempts        integer NOT NULL,
    last_error      text NOT NULL,
    failed_at       timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    parked          boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job, program_id, member_id)
);

-- The expiring-soon notice of a batch, sent once.
ALTER TABLE point_batches ADD COLUMN expiry_notice_at timestamptz;
