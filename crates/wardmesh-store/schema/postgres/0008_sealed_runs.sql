-- wardmesh store, schema version 8 (PostgreSQL). ../sqlite/0008_sealed_runs.sql replaces
-- SQLite's indexes on random keys with sealed runs, because SQLite's WAL writes a whole
-- page for every random index key. PostgreSQL's WAL logs the inserted tuple, not the page
-- (after the first change since a checkpoint), so its plain indexes stay; this step only
-- records that choice on them.
COMMENT ON INDEX events_by_subject IS
    'audit entries by subject (accounting of disclosures); SQLite uses sealed runs instead (schema v8)';
COMMENT ON INDEX flows_by_request_id IS
    'flows by request id; SQLite uses sealed runs instead (schema v8)';
