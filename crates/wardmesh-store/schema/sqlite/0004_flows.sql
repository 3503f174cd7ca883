-- wardmesh store, schema version 4 (SQLite): flow telemetry. Keep in step with
-- ../postgres/0004_flows.sql.
--
-- One row per flow record an agent shipped. `id` is the agent-assigned record id (128
-- random bits, hex): ingest is `INSERT ... ON CONFLICT (id) DO NOTHING`, so a batch resent
-- after a lost answer or an agent crash is stored once. `seq` is the ingest order and the
-- paging cursor of `GET /v1/flows` (and `wardctl flows --follow`): it is handed out from
-- `flow_head` inside the ingest transaction, so seqs commit in order and a reader that has
-- seen seq N has seen every smaller one (duplicates leave gaps, which paging ignores).
-- No raw paths, no patient ids: `route` is a template, `subject_pseudonym` an HMAC.
CREATE TABLE flows (
    seq               INTEGER PRIMARY KEY NOT NULL,
    id                TEXT NOT NULL UNIQUE,
    at_us             INTEGER NOT NULL,
    kind              TEXT NOT NULL,
    direction         TEXT NOT NULL,
    source            TEXT,
    destination       TEXT NOT NULL,
    method            TEXT,
    route             TEXT,
    status            INTEGER,
    verdict           TEXT NOT NULL,
    policy_revision   TEXT,
    rule              TEXT,
    latency_us        INTEGER NOT NULL,
    bytes_in          INTEGER NOT NULL,
    bytes_out         INTEGER NOT NULL,
    user_subject      TEXT,
    purpose           TEXT,
    break_glass       INTEGER NOT NULL,
    subject_pseudonym TEXT
);

-- The common filters of `wardctl flows`, each ending in seq so a filtered page is one
-- index range in cursor order. Time also serves retention (`prune_flows`).
CREATE INDEX flows_by_time ON flows (at_us);
CREATE INDEX flows_by_source ON flows (source, seq);
CREATE INDEX flows_by_destination ON flows (destination, seq);
CREATE INDEX flows_by_verdict ON flows (verdict, seq);
CREATE INDEX flows_by_subject ON flows (subject_pseudonym, seq)
    WHERE subject_pseudonym IS NOT NULL;

-- The last seq handed out, one row.
CREATE TABLE flow_head (
    singleton INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    seq       INTEGER NOT NULL
);
INSERT INTO flow_head (singleton, seq) VALUES (1, 0);
