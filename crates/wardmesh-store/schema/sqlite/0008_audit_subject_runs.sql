-- wardmesh store, schema version 8 (SQLite): the audit log's by-subject index becomes
-- sealed runs. ../postgres/0008_audit_subject_runs.sql keeps its plain index (see there).
--
-- `events_by_subject` (v6) took its keys in patient-pseudonym order, i.e. at random: every
-- PHI entry dirtied its own index page, and SQLite's WAL writes (and the checkpoint copies)
-- whole pages, so that index alone cost about 40 % of flow ingest (bench/RESULTS.md,
-- 2026-12-06 23:10). Instead, every `RUN` entries (src/sqlite/subjects.rs) the append
-- that completes a run copies the run's (subject, id) pairs into `audit_subjects`, sorted,
-- under the run's key: a new run only ever extends the right edge of this tree, so each
-- page is written once. A lookup by subject seeks once per run and scans the entries not
-- yet sealed (fewer than `RUN`) by id.
CREATE TABLE audit_subject_runs (
    -- The run covers events with after_id < id <= last_id.
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
