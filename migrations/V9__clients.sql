-- Callers and trust (issue 15): the clients that may call the API, and the client of every
-- entry.

-- A client: a service or a person with a bearer secret (only its keyed hash, HMAC-SHA-256
-- under a key derived from the server secret) or a certificate subject (mutual TLS), the
-- programs it may touch ('*': every program, including later ones) and its scopes ('*':
-- every scope). A name is never used again, even after a revocation: it is the namespace of
-- the client's idempotency keys.
CREATE TABLE api_clients (
    name                 text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    programs             text[] NOT NULL CHECK (cardinality(programs) > 0),
    scopes               text[] NOT NULL CHECK (cardinality(scopes) > 0),
    secret_hash          bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    -- The secret before the last rotation, valid until previous_valid_until.
    previous_secret_hash bytea CHECK (octet_length(previous_secret_hash) = 32),
    previous_valid_until timestamptz,
    -- The subject of the client's certificate (mutual TLS), RFC 4514.
    cert_subject         text UNIQUE CHECK (char_length(cert_subject) BETWEEN 1 AND 1024),
    -- Calls per second; NULL: the server's default.
    rate_per_second      integer CHECK (rate_per_second > 0),
    created_at           timestamptz NOT NULL,
    rotated_at           timestamptz,
    revoked_at           timestamptz,
    CONSTRAINT previous_secret_expires CHECK
        ((previous_secret_hash IS NULL) = (previous_valid_until IS NULL))
);

-- The client whose call wrote the entry; its idempotency key is unique among that client's
-- keys only, so one client can never replay, read or collide with another's. Empty for the
-- entries the engine writes itself (derived credits, expiry) and for entries written before
-- clients existed.
ALTER TABLE ledger_entries
    ADD COLUMN client text NOT NULL DEFAULT '' CHECK (char_length(client) <= 63);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_idempotency_key;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_idempotency_key UNIQUE (idempotency_key, program_id, client);

-- Who enrolled a member and who wrote each rules version.
ALTER TABLE members ADD COLUMN enrolled_by text NOT NULL DEFAULT '' CHECK (char_length(enrolled_by) <= 63);
ALTER TABLE program_rules ADD COLUMN created_by text NOT NULL DEFAULT '' CHECK (char_length(created_by) <= 63);
