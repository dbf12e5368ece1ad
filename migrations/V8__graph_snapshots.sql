-- The referral graph's snapshots (issue 19): one per program and program-local day, laid
-- out and encoded once by the snapshot job (or Graph.RebuildSnapshot), read by every replica
-- into memory. The blob and index formats are described in src/domain/graph.rs.
CREATE SEQUENCE graph_snapshot_versions;

CREATE TABLE graph_snapshots (
    program_id    text NOT NULL REFERENCES programs (program_id),
    snapshot_date date NOT NULL,
    -- Taken from graph_snapshot_versions each time the content changes: a client's cache
    -- key, and how a replica notices a new snapshot.
    version       bigint NOT NULL UNIQUE CHECK (version > 0),
    built_at      timestamptz NOT NULL,
    node_count    integer NOT NULL CHECK (node_count >= 0),
    edge_count    integer NOT NULL CHECK (edge_count >= 0),
    -- SHA-256 of blob || graph_index, hex.
    content_hash  text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    blob          bytea NOT NULL,
    graph_index   bytea NOT NULL,
    PRIMARY KEY (program_id, snapshot_date)
);
-- Coordinates compress poorly: store them as they are.
ALTER TABLE graph_snapshots ALTER COLUMN blob SET STORAGE EXTERNAL;
ALTER TABLE graph_snapshots ALTER COLUMN graph_index SET STORAGE EXTERNAL;

-- The converted referrals of a program, read whole by the snapshot job from the index alone.
CREATE INDEX invites_converted ON invites (program_id, referrer_member_id, referee_member_id)
    WHERE status = 'converted';
