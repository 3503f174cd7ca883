-- wardmesh store, schema version 6 (PostgreSQL): audit entries by subject. Keep in step
-- with ../sqlite/0006_events_by_subject.sql, which explains it.
--
-- The index is built inside the migration transaction, which blocks audit appends (and
-- so flow ingest and audited operator calls) while it runs: one scan and sort of
-- `events`, done once at upgrade.
CREATE INDEX events_by_subject ON events (subject, id);
