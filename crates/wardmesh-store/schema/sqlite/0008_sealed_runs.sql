-- wardmesh store, schema version 8 (SQLite): the lookups by a random key become sealed
-- runs. ../postgres/0008_sealed_runs.sql keeps plain indexes (see there).
--
-- `events_by_subject` (v6: a patient pseudonym) and `flows_by_request_id` (v5: often a
-- caller's random UUID) took their keys at random: nearly every row dirtied its own index
-- page, and SQLite's WAL writes (and the checkpoint copies) whole pages, so those two
-- indexes cost about 40 % and 50 % of flow ingest (bench/RESULTS.md, 2026-12-06 23:20).
-- Instead, every `RUN` rows (src/sqlite/runs.rs) the write that completes a run copies
-- the run's (key, id) pairs, sorted, under the run's key: a new run only extends the right
-- edge of its table, so each page is written once. A lookup seeks once per run and scans
-- the rows not yet sealed (fewer than `RUN`) by id.

-- Run `after_id` covers events with after_id < id <= last_id.
CREATE TABLE audit_subject_runs (
    after_id INTEGER PRIMARY KEY NOT NULL,
    last_id  INTEGER NOT NULL
);
CREATE TABLE audit_subjects (
    run     INTEGER NOT NULL,
    subject TEXT NOT NULL,
    id      INTEGER NOT NULL,
    PRIMARY KEY (run, subject, id)
) WITHOUT ROWID;
DROP INDEX events_by_subject;

-- The same for flows by request id; the ids here are flow seqs. Flows without a request
-- id (TCP) have no pair.
CREATE TABLE flow_request_id_runs (
    after_id INTEGER PRIMARY KEY NOT NULL,
    last_id  INTEGER NOT NULL
);
CREATE TABLE flow_request_ids (
    run        INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (run, request_id, seq)
) WITHOUT ROWID;
DROP INDEX flows_by_request_id;
