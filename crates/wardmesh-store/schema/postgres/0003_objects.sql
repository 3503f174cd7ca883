-- wardmesh store, schema version 3 (PostgreSQL): configuration objects (policy bundles,
-- the active-policy pointer, consent records, break-glass grants and uses). Keep in step
-- with ../sqlite/0003_objects.sql, which explains the layout.
CREATE TABLE objects (
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    blob          BYTEA,
    generation    BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    updated_by    TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE object_generations (
    kind       TEXT PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL
);
