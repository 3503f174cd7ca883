-- wardmesh store, schema version 2 (SQLite): the event log becomes the hash-chained audit
-- log. Keep in step with ../postgres/0002_audit_chain.sql. After these statements the
-- migration code chains the existing events in id order (see src/chain.rs for the hash)
-- and rewrites their detail as the canonical JSON text it hashed.

ALTER TABLE events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN hash TEXT NOT NULL DEFAULT '';
CREATE INDEX events_by_kind ON events (kind, id);

-- The chain head, one row. It replaces counters.event_id as the row every append updates
-- first: that update serialises appenders (on every replica) and hands each the seq to use
-- and the hash to chain onto, in commit order.
CREATE TABLE audit_head (
    singleton INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL
);
INSERT INTO audit_head (singleton, seq, hash)
    SELECT 1, value, '0000000000000000000000000000000000000000000000000000000000000000'
    FROM counters WHERE name = 'event_id';
DELETE FROM counters WHERE name = 'event_id';

-- Signed statements "the log up to seq has this head hash" (Ed25519, by the control plane).
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    seq       INTEGER NOT NULL,
    head_hash TEXT NOT NULL,
    at_us     INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_by_seq ON audit_checkpoints (seq, id);

-- After pruning: the checkpoint the remaining log starts from (its first entry's
-- prev_hash is head_hash). At most one row.
CREATE TABLE audit_anchor (
    singleton     INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    checkpoint_id INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    head_hash     TEXT NOT NULL,
    at_us         INTEGER NOT NULL,
    key_id        TEXT NOT NULL,
    signature     TEXT NOT NULL,
    pruned_at_us  INTEGER NOT NULL
);
