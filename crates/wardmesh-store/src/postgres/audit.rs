//! The audit log on PostgreSQL: chained appends, entry queries, checkpoints and pruning.
//!
//! An append first updates the single `audit_head` row. PostgreSQL holds that row lock
//! until commit and, at READ COMMITTED, a waiting `UPDATE` re-reads the row once the holder
//! commits, so every appender, on every replica, gets the next seq and the hash of the
//! entry committed just before: one chain, in commit order. The hot path uses
//! `query_typed` (no separate prepare round trip) and one multi-row `INSERT … UNNEST`.

use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, Transaction};

use super::PostgresBackend;
use super::ops::ts;
use crate::audit_sql::{
    LegacyRow, Param, backfill_rows, chain_rows, check_head, entry_from_columns, entry_query,
    prune_noop,
};
use crate::schema::{from_micros, to_micros};
use crate::{
    AuditAnchor, AuditEntry, AuditQuery, ChainHead, Checkpoint, Event, PruneOutcome, StoreError,
    SubjectLookupCheck,
};

const CHECKPOINT_COLUMNS: &str = "id, seq, head_hash, at_us, key_id, signature";
const ANCHOR_SELECT: &str = "SELECT checkpoint_id, seq, head_hash, at_us, key_id, signature, \
                             pruned_at_us FROM audit_anchor WHERE singleton = 1";

impl PostgresBackend {
    pub(crate) async fn append_events(&self, events: &[Event]) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seqs = append_in(&tx, events).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    pub(crate) async fn audit_entries(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (sql, params) = entry_query(q, |n| format!("${n}"));
        let boxed: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Int(i) => Box::new(i),
                    Param::Text(t) => Box::new(t),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = boxed
            .iter()
            .map(|b| -> &(dyn ToSql + Sync) { b.as_ref() })
            .collect();
        let client = self.client().await?;
        let rows = client.query(&sql, &refs).await?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if q.newest {
            entries.reverse();
        }
        Ok(entries)
    }

    pub(crate) async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT seq, hash FROM audit_head WHERE singleton = 1", &[])
            .await?;
        Ok(ChainHead {
            seq: row.try_get(0)?,
            hash: row.try_get(1)?,
        })
    }

    pub(crate) async fn append_checkpoint(
        &self,
        cp: &Checkpoint,
    ) -> Result<Checkpoint, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_covers(&tx, cp.seq, &cp.head_hash).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO audit_checkpoints (seq, head_hash, at_us, key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &cp.seq,
                    &cp.head_hash,
                    &to_micros(cp.at),
                    &cp.key_id,
                    &cp.signature,
                ],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(Checkpoint { id, ..cp.clone() })
    }

    pub(crate) async fn list_checkpoints(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id > $1 \
                     ORDER BY id LIMIT $2"
                ),
                &[&after_id, &i64::from(limit)],
            )
            .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    pub(crate) async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints \
                     ORDER BY seq DESC, id DESC LIMIT 1"
                ),
                &[],
            )
            .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    pub(crate) async fn first_entry_missing_from_subject_lookup(
        &self,
    ) -> Result<SubjectLookupCheck, StoreError> {
        Ok(SubjectLookupCheck::DatabaseIndex)
    }

    pub(crate) async fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError> {
        let client = self.client().await?;
        read_anchor(&*client).await
    }

    pub(crate) async fn prune_audit(
        &self,
        checkpoint_id: i64,
        now: OffsetDateTime,
    ) -> Result<PruneOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Prunes take turns (and wait for appends in flight) on the head row.
        tx.execute(
            "SELECT 1 FROM audit_head WHERE singleton = 1 FOR UPDATE",
            &[],
        )
        .await?;
        let cp = tx
            .query_opt(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id = $1"),
                &[&checkpoint_id],
            )
            .await?
            .as_ref()
            .map(checkpoint_from_row)
            .transpose()?
            .ok_or_else(|| {
                StoreError::Rejected(format!("there is no checkpoint with id {checkpoint_id}"))
            })?;
        if let Some(anchor) = read_anchor(&tx).await?
            && let Some(done) = prune_noop(&anchor, &cp)?
        {
            return Ok(done);
        }
        check_covers(&tx, cp.seq, &cp.head_hash).await?;
        let entries = tx
            .execute("DELETE FROM events WHERE id <= $1", &[&cp.seq])
            .await?;
        let checkpoints = tx
            .execute("DELETE FROM audit_checkpoints WHERE seq < $1", &[&cp.seq])
            .await?;
        let pruned_at = from_micros(to_micros(now))?;
        tx.execute(
            "INSERT INTO audit_anchor (singleton, checkpoint_id, seq, head_hash, at_us, key_id, \
             signature, pruned_at_us) VALUES (1, $1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (singleton) DO UPDATE SET checkpoint_id = excluded.checkpoint_id, \
             seq = excluded.seq, head_hash = excluded.head_hash, at_us = excluded.at_us, \
             key_id = excluded.key_id, signature = excluded.signature, \
             pruned_at_us = excluded.pruned_at_us",
            &[
                &cp.id,
                &cp.seq,
                &cp.head_hash,
                &to_micros(cp.at),
                &cp.key_id,
                &cp.signature,
                &to_micros(pruned_at),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(PruneOutcome {
            entries_removed: entries,
            checkpoints_removed: checkpoints,
            anchor: AuditAnchor {
                checkpoint: cp,
                pruned_at,
            },
        })
    }
}

/// Appends `events` inside the caller's transaction and returns their seqs: claims seqs
/// head+1..=head+n (locking the head row until the transaction ends), chains the events
/// onto the head's hash and moves the head to the last one.
pub(super) async fn append_in<E: std::borrow::Borrow<Event> + Sync>(
    tx: &Transaction<'_>,
    events: &[E],
) -> Result<Vec<i64>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    // Claims seqs head+1..=head+n and reads the hash to chain onto; the row stays
    // locked until commit.
    let row = tx
        .query_typed_one(
            "UPDATE audit_head SET seq = seq + $1 WHERE singleton = 1 RETURNING seq, hash",
            &[(&n, Type::INT8)],
        )
        .await?;
    let head = ChainHead {
        seq: row.try_get::<_, i64>(0)? - n,
        hash: row.try_get(1)?,
    };
    let rows = chain_rows(&head, events)?;
    let last_hash = rows.last().map(|r| r.hash.clone()).unwrap_or(head.hash);
    let column = |f: fn(&crate::audit_sql::ChainedRow) -> String| -> Vec<String> {
        rows.iter().map(f).collect()
    };
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.at_us).collect();
    let (kinds, actors, subjects) = (
        column(|r| r.kind.clone()),
        column(|r| r.actor.clone()),
        column(|r| r.subject.clone()),
    );
    let (details, prevs, hashes) = (
        column(|r| r.detail.clone()),
        column(|r| r.prev_hash.clone()),
        column(|r| r.hash.clone()),
    );
    let insert_params: [(&(dyn ToSql + Sync), Type); 8] = [
        (&seqs, Type::INT8_ARRAY),
        (&ats, Type::INT8_ARRAY),
        (&kinds, Type::TEXT_ARRAY),
        (&actors, Type::TEXT_ARRAY),
        (&subjects, Type::TEXT_ARRAY),
        (&details, Type::TEXT_ARRAY),
        (&prevs, Type::TEXT_ARRAY),
        (&hashes, Type::TEXT_ARRAY),
    ];
    let update_params: [(&(dyn ToSql + Sync), Type); 1] = [(&last_hash, Type::TEXT)];
    let insert = tx.execute_typed(
        "INSERT INTO events (id, at_us, kind, actor, subject, detail, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[])",
        &insert_params,
    );
    let update = tx.execute_typed(
        "UPDATE audit_head SET hash = $1 WHERE singleton = 1",
        &update_params,
    );
    // Pipelined on the one connection: one round trip for both.
    tokio::try_join!(insert, update)?;
    Ok(seqs)
}

/// Refuses a checkpoint (or a cut) at `seq` unless `head_hash` is what the log holds there.
async fn check_covers(
    client: &impl GenericClient,
    seq: i64,
    head_hash: &str,
) -> Result<(), StoreError> {
    let stored: Option<String> = match client
        .query_opt("SELECT hash FROM events WHERE id = $1", &[&seq])
        .await?
    {
        Some(row) => Some(row.try_get(0)?),
        None => read_anchor(client)
            .await?
            .filter(|a| a.checkpoint.seq == seq)
            .map(|a| a.checkpoint.head_hash),
    };
    check_head(seq, head_hash, stored.as_deref())
}

async fn read_anchor(client: &impl GenericClient) -> Result<Option<AuditAnchor>, StoreError> {
    let Some(row) = client.query_opt(ANCHOR_SELECT, &[]).await? else {
        return Ok(None);
    };
    Ok(Some(AuditAnchor {
        checkpoint: checkpoint_from_row(&row)?,
        pruned_at: ts(&row, 6)?,
    }))
}

fn checkpoint_from_row(r: &Row) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        id: r.try_get(0)?,
        seq: r.try_get(1)?,
        head_hash: r.try_get(2)?,
        at: ts(r, 3)?,
        key_id: r.try_get(4)?,
        signature: r.try_get(5)?,
    })
}

fn entry_from_row(r: &Row) -> Result<AuditEntry, StoreError> {
    entry_from_columns(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
    )
}

/// Schema version 2: chains the events that existed before, in id order, from the
/// genesis, and points the head at the last one.
pub(super) async fn chain_existing_events(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let legacy = tx
        .query(
            "SELECT id, at_us, kind, actor, subject, detail FROM events ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(LegacyRow {
                id: r.try_get(0)?,
                at_us: r.try_get(1)?,
                kind: r.try_get(2)?,
                actor: r.try_get(3)?,
                subject: r.try_get(4)?,
                detail: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let (rows, head) = backfill_rows(legacy)?;
    let update = tx
        .prepare("UPDATE events SET detail = $2, prev_hash = $3, hash = $4 WHERE id = $1")
        .await?;
    for r in &rows {
        tx.execute(&update, &[&r.seq, &r.detail, &r.prev_hash, &r.hash])
            .await?;
    }
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE singleton = 1",
        &[&head.seq, &head.hash],
    )
    .await?;
    Ok(())
}
