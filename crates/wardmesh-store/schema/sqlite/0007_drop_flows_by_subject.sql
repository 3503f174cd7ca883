-- wardmesh store, schema version 7 (SQLite): drop the flows' subject index. Keep in step
-- with ../postgres/0007_drop_flows_by_subject.sql.
--
-- Since version 6 the accounting of disclosures reads the audit log (`events_by_subject`),
-- and no query filters flows by patient pseudonym any more, so this index only cost
-- ingest: its keys are HMACs, so nearly every PHI record dirtied its own index page
-- (measured: about 15-25 % of SQLite ingest throughput). The column stays: it is part of
-- the flow record an operator reads.
DROP INDEX flows_by_subject;
