-- wardmesh store, schema version 1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql:
-- both backends hold the same tables and columns. Timestamps are unix microseconds, UTC.

CREATE TABLE join_tokens (
    token_hash    TEXT PRIMARY KEY,
    spiffe_id     TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    used_at_us    BIGINT
);

CREATE TABLE quarantine (
    spiffe_id     TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    created_by    TEXT NOT NULL
);

-- Named counters shared by every replica: 'deny_list_revision' and 'event_id'. Writers
-- update the row in their own transaction, so its row lock orders them.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('deny_list_revision', 0), ('event_id', 0);

CREATE TABLE issuances (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial_hex    TEXT NOT NULL,
    spiffe_id     TEXT NOT NULL,
    not_before_us BIGINT NOT NULL,
    not_after_us  BIGINT NOT NULL,
    authority_id  TEXT NOT NULL,
    attestation   TEXT NOT NULL,
    issued_at_us  BIGINT NOT NULL,
    UNIQUE (authority_id, serial_hex)
);
CREATE INDEX issuances_newest ON issuances (issued_at_us DESC, seq DESC);
CREATE INDEX issuances_by_spiffe_id ON issuances (spiffe_id, issued_at_us DESC, seq DESC);

CREATE TABLE agents (
    instance_id       TEXT PRIMARY KEY,
    spiffe_id         TEXT NOT NULL,
    last_seen_us      BIGINT NOT NULL,
    cert_not_after_us BIGINT NOT NULL,
    cert_authority_id TEXT NOT NULL,
    bundle_revision   BIGINT NOT NULL
);

-- Ids come from counters.event_id, taken in the inserting transaction: gapless and in
-- commit order, so a reader paging with `id > after_id` never skips a late commit.
CREATE TABLE events (
    id      BIGINT PRIMARY KEY,
    at_us   BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  JSONB NOT NULL
);

CREATE TABLE operator_tokens (
    token_hash    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);
