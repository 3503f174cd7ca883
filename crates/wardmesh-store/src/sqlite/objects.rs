//! Configuration objects on SQLite (see `objects.rs`).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};

use super::SqliteBackend;
use crate::StoreError;
use crate::error::sqlite_conflict;
use crate::objects::{ObjectChange, ObjectChangeOutcome, ObjectWrite, StoredObject, touched_kinds};
use crate::schema::to_micros;

const COLUMNS: &str = "kind, name, value, blob, generation, updated_at_us, updated_by";
const LIST_COLUMNS: &str = "kind, name, value, NULL, generation, updated_at_us, updated_by";

impl SqliteBackend {
    pub(crate) async fn change_objects(
        &self,
        change: &ObjectChange,
    ) -> Result<ObjectChangeOutcome, StoreError> {
        let change = change.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut generations = BTreeMap::new();
            for kind in touched_kinds(&change.writes) {
                let generation: i64 = tx.query_row(
                    "INSERT INTO object_generations (kind, generation) VALUES (?1, 1) \
                     ON CONFLICT (kind) DO UPDATE SET generation = generation + 1 \
                     RETURNING generation",
                    [&kind],
                    |r| r.get(0),
                )?;
                generations.insert(kind, generation);
            }
            let at = to_micros(change.at);
            for write in &change.writes {
                let generation = generations.get(write.kind()).copied().unwrap_or_default();
                apply(&tx, write, generation, at, &change.by)?;
            }
            let audit_seq = match &change.audit {
                Some(event) => super::audit::append_in(&tx, std::slice::from_ref(event))?
                    .first()
                    .copied(),
                None => None,
            };
            tx.commit()?;
            Ok(ObjectChangeOutcome {
                generations,
                audit_seq,
            })
        })
        .await
    }

    pub(crate) async fn get_object(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM objects WHERE kind = ?1 AND name = ?2"),
                params![kind, name],
                object,
            )
            .optional()?)
        })
        .await
    }

    pub(crate) async fn list_objects(&self, kind: &str) -> Result<Vec<StoredObject>, StoreError> {
        let kind = kind.to_owned();
        self.run(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {LIST_COLUMNS} FROM objects WHERE kind = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map([&kind], object)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn object_generation(&self, kind: &str) -> Result<i64, StoreError> {
        let kind = kind.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT generation FROM object_generations WHERE kind = ?1",
                [&kind],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }
}

fn apply(
    c: &Connection,
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
            c.execute(
                "INSERT INTO objects (kind, name, value, blob, generation, updated_at_us, \
                 updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (kind, name) DO \
                 UPDATE SET value = excluded.value, blob = excluded.blob, \
                 generation = excluded.generation, updated_at_us = excluded.updated_at_us, \
                 updated_by = excluded.updated_by",
                params![kind, name, value, blob, generation, at, by],
            )?;
        }
        ObjectWrite::Create {
            kind,
            name,
            value,
            blob,
        } => {
            c.execute(
                "INSERT INTO objects (kind, name, value, blob, generation, updated_at_us, \
                 updated_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![kind, name, value, blob, generation, at, by],
            )
            .map_err(|e| sqlite_conflict(e, &format!("{kind} {name:?} already exists")))?;
        }
        ObjectWrite::Delete { kind, name } => {
            c.execute(
                "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )?;
        }
    }
    Ok(())
}

fn object(r: &Row<'_>) -> rusqlite::Result<StoredObject> {
    Ok(StoredObject {
        kind: r.get(0)?,
        name: r.get(1)?,
        value: r.get(2)?,
        blob: r.get(3)?,
        generation: r.get(4)?,
        updated_at: super::ts(r, 5)?,
        updated_by: r.get(6)?,
    })
}
