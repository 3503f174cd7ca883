-- wardmesh store, schema version 8 (PostgreSQL). ../sqlite/0008_audit_subject_runs.sql
-- replaces SQLite's by-subject index with sealed runs, because SQLite's WAL writes a whole
-- page for every random index key. PostgreSQL's WAL logs the inserted tuple, not the page
-- (after the first change since a checkpoint), so its plain index stays; this step only
-- records that choice on it.
COMMENT ON INDEX events_by_subject IS
    'audit entries by subject (accounting of disclosures); SQLite uses sealed runs instead (schema v8)';
