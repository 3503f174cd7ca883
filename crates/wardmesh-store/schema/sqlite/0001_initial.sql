-- wardmesh store, schema version 1 (SQLite). Keep in step with ../postgres/0001_initial.sql:
-- both backends hold the same tables and columns. Timestamps are unix microseconds, UTC.

CREATE TABLE join_tokens (
    token_hash    TEXT PRIMARY KEY NOT NULL,
    spiffe_id     TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    expires_at_us INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    used_at_us    INTEGER
);

CREATE TABLE quarantine (
    spiffe_id     TEXT PRIMARY KEY NOT NULL,
    reason        TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    created_by    TEXT NOT NULL
);

-- Named counters shared by every replica: 'deny_list_revision' and 'event_id'.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('deny_list_revision', 0), ('event_id', 0);

CREATE TABLE issuances (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    serial_hex    TEXT NOT NULL,
    spiffe_id     TEXT NOT NULL,
    not_before_us INTEGER NOT NULL,
    not_after_us  INTEGER NOT NULL,
    authority_id  TEXT NOT NULL,
    attestation   TEXT NOT NULL,
    issued_at_us  INTEGER NOT NULL,
    UNIQUE (authority_id, serial_hex)
);
CREATE INDEX issuances_newest ON issuances (issued_at_us DESC, seq DESC);
CREATE INDEX issuances_by_spiffe_id ON issuances (spiffe_id, issued_at_us DESC, seq DESC);

CREATE TABLE agents (
    instance_id       TEXT PRIMARY KEY NOT NULL,
    spiffe_id         TEXT NOT NULL,
    last_seen_us      INTEGER NOT NULL,
    cert_not_after_us INTEGER NOT NULL,
    cert_authority_id TEXT NOT NULL,
    bundle_revision   INTEGER NOT NULL
);

-- Ids come from counters.event_id, taken in the inserting transaction.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY NOT NULL,
    at_us   INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);

CREATE TABLE operator_tokens (
    token_hash    TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
);
