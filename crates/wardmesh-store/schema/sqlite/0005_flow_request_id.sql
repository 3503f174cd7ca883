-- wardmesh store, schema version 5 (SQLite): the request id of a flow. Keep in step with
-- ../postgres/0005_flow_request_id.sql.
--
-- `request_id` is the request's `x-request-id` (HTTP flows; NULL for TCP and for rows
-- stored before this version), so an operator can find both agents' records of one
-- request and match them with the application's logs. Adding a nullable column without a
-- default only rewrites the schema, not the rows.
ALTER TABLE flows ADD COLUMN request_id TEXT;

-- Exact-match lookups (`GET /v1/flows?request_id=`), in cursor order. Partial: rows
-- without a request id (TCP, older rows) cost the index nothing, and `request_id = ?`
-- implies `request_id IS NOT NULL`, so the planner can use it.
CREATE INDEX flows_by_request_id ON flows (request_id, seq)
    WHERE request_id IS NOT NULL;
