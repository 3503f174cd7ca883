-- wardmesh store, schema version 3 (SQLite): configuration objects the control plane
-- distributes to agents — policy bundles and the active-policy pointer, consent records,
-- break-glass grants and their uses. Keep in step with ../postgres/0003_objects.sql.
--
-- One table, keyed by (kind, name), with a per-kind generation: every write to a kind
-- bumps its generation in the same transaction, so agents and replicas watch "has kind K
-- changed since generation G" with one cheap read. `value` is the object's JSON; `blob`
-- carries large binary payloads (a bundle's tar.gz) so they stay out of the JSON.
CREATE TABLE objects (
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    blob          BLOB,
    generation    INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    updated_by    TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE object_generations (
    kind       TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL
);
