//! Configuration objects on PostgreSQL (see `objects.rs`). Generations are bumped with
//! an upsert whose row lock serialises concurrent changes of one kind across replicas;
//! kinds are bumped in sorted order, so two changes never wait on each other in a cycle.

use std::collections::BTreeMap;

use tokio_postgres::{GenericClient, Row};

use super::PostgresBackend;
use super::ops::ts;
use crate::StoreError;
use crate::error::postgres_conflict;
use crate::objects::{ObjectChange, ObjectChangeOutcome, ObjectWrite, StoredObject, touched_kinds};
use crate::schema::to_micros;

const COLUMNS: &str = "kind, name, value, blob, generation, updated_at_us, updated_by";
const LIST_COLUMNS: &str = "kind, name, value, NULL::bytea, generation, updated_at_us, updated_by";

impl PostgresBackend {
    pub(crate) async fn change_objects(
        &self,
        change: &ObjectChange,
    ) -> Result<ObjectChangeOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut generations = BTreeMap::new();
        for kind in touched_kinds(&change.writes) {
            let row = tx
                .query_one(
                    "INSERT INTO object_generations (kind, generation) VALUES ($1, 1) \
                     ON CONFLICT (kind) DO UPDATE \
                     SET generation = object_generations.generation + 1 \
                     RETURNING generation",
                    &[&kind],
                )
                .await?;
            generations.insert(kind, row.try_get::<_, i64>(0)?);
        }
        let at = to_micros(change.at);
        for write in &change.writes {
            let generation = generations.get(write.kind()).copied().unwrap_or_default();
            apply(&tx, write, generation, at, &change.by).await?;
        }
        let audit_seq = match &change.audit {
            Some(event) => super::audit::append_in(&tx, std::slice::from_ref(event))
                .await?
                .first()
                .copied(),
            None => None,
        };
        tx.commit().await?;
        Ok(ObjectChangeOutcome {
            generations,
            audit_seq,
        })
    }

    pub(crate) async fn get_object(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM objects WHERE kind = $1 AND name = $2"),
                &[&kind, &name],
            )
            .await?;
        row.as_ref().map(object).transpose()
    }

    pub(crate) async fn list_objects(&self, kind: &str) -> Result<Vec<StoredObject>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {LIST_COLUMNS} FROM objects WHERE kind = $1 ORDER BY name"),
                &[&kind],
            )
            .await?;
        rows.iter().map(object).collect()
    }

    pub(crate) async fn object_generation(&self, kind: &str) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT generation FROM object_generations WHERE kind = $1",
                &[&kind],
            )
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }
}

async fn apply(
    client: &impl GenericClient,
    write: &ObjectWrite,
    generation: i64,
    at: i64,
    by: &str,
) -> Result<(), StoreError> {
    match write {
        ObjectWrite::Put {
            kind,
            name,
            value,
            blob,
        } => {
            client
                .execute(
                    "INSERT INTO objects (kind, name, value, blob, generation, updated_at_us, \
                     updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, name) \
                     DO UPDATE SET value = excluded.value, blob = excluded.blob, \
                     generation = excluded.generation, updated_at_us = excluded.updated_at_us, \
                     updated_by = excluded.updated_by",
                    &[kind, name, value, blob, &generation, &at, &by],
                )
                .await?;
        }
        ObjectWrite::Create {
            kind,
            name,
            value,
            blob,
        } => {
            client
                .execute(
                    "INSERT INTO objects (kind, name, value, blob, generation, updated_at_us, \
                     updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[kind, name, value, blob, &generation, &at, &by],
                )
                .await
                .map_err(|e| postgres_conflict(e, &format!("{kind} {name:?} already exists")))?;
        }
        ObjectWrite::Delete { kind, name } => {
            client
                .execute(
                    "DELETE FROM objects WHERE kind = $1 AND name = $2",
                    &[kind, name],
                )
                .await?;
        }
    }
    Ok(())
}

fn object(r: &Row) -> Result<StoredObject, StoreError> {
    Ok(StoredObject {
        kind: r.try_get(0)?,
        name: r.try_get(1)?,
        value: r.try_get(2)?,
        blob: r.try_get(3)?,
        generation: r.try_get(4)?,
        updated_at: ts(r, 5)?,
        updated_by: r.try_get(6)?,
    })
}
