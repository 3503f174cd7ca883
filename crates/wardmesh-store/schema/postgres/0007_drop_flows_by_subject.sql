-- wardmesh store, schema version 7 (PostgreSQL): drop the flows' subject index. Keep in
-- step with ../sqlite/0007_drop_flows_by_subject.sql, which explains it.
DROP INDEX flows_by_subject;
