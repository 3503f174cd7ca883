-- wardmesh store, schema version 4 (PostgreSQL): flow telemetry. Keep in step with
-- ../sqlite/0004_flows.sql, which explains the layout.
--
-- Replicas ingest concurrently: each ingest first bumps the single `flow_head` row, whose
-- lock is held until commit, so seqs are handed out (and committed) in order on every
-- replica and `--follow` paging by seq never skips a row.
CREATE TABLE flows (
    seq               BIGINT PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    at_us             BIGINT NOT NULL,
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
    latency_us        BIGINT NOT NULL,
    bytes_in          BIGINT NOT NULL,
    bytes_out         BIGINT NOT NULL,
    user_subject      TEXT,
    purpose           TEXT,
    break_glass       BOOLEAN NOT NULL,
    subject_pseudonym TEXT
);

CREATE INDEX flows_by_time ON flows (at_us);
CREATE INDEX flows_by_source ON flows (source, seq);
CREATE INDEX flows_by_destination ON flows (destination, seq);
CREATE INDEX flows_by_verdict ON flows (verdict, seq);
CREATE INDEX flows_by_subject ON flows (subject_pseudonym, seq)
    WHERE subject_pseudonym IS NOT NULL;

CREATE TABLE flow_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    seq       BIGINT NOT NULL
);
INSERT INTO flow_head (singleton, seq) VALUES (1, 0);
