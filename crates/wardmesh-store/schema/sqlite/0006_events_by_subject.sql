-- wardmesh store, schema version 6 (SQLite): audit entries by subject. Keep in step with
-- ../postgres/0006_events_by_subject.sql.
--
-- The accounting of disclosures (`POST /v1/audit/disclosures`) reads one patient's
-- `phi.access`, `breakglass.use` and `authz.deny` entries (subject: the patient's keyed
-- pseudonym) in seq order, page by page: `subject = ? AND id > ? ORDER BY id` is a range
-- of this index. The audit log is kept for `--audit-retention` (default forever), so a
-- scan of `events` per page would grow without bound.
CREATE INDEX events_by_subject ON events (subject, id);
