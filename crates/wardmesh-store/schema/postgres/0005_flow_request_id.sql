-- wardmesh store, schema version 5 (PostgreSQL): the request id of a flow. Keep in step
-- with ../sqlite/0005_flow_request_id.sql, which explains it.
--
-- A nullable column without a default is a catalog-only change (no table rewrite). The
-- index is built inside the migration transaction, which blocks flow ingest while it
-- runs; every existing row has a NULL request id and the index is partial, so the build
-- is one scan of `flows` that adds no entries.
ALTER TABLE flows ADD COLUMN request_id TEXT;

CREATE INDEX flows_by_request_id ON flows (request_id, seq)
    WHERE request_id IS NOT NULL;
