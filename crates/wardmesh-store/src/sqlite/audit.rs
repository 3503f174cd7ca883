//! The audit log on SQLite: chained appends, entry queries, checkpoints and pruning.
//! Appends and pruning run in `BEGIN IMMEDIATE` transactions, so processes sharing the file
//! take turns on the write lock and each append chains onto the committed head.

use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, TransactionBehavior, params};
use time::OffsetDateTime;

use super::SqliteBackend;
use super::runs::AUDIT_SUBJECTS;
use crate::audit_sql::{
    ChainedRow, LegacyRow, Param, backfill_rows, chain_rows, entry_filter, entry_from_columns,
    entry_query,
};
use crate::schema::{from_micros, to_micros};
use crate::{
    AuditAnchor, AuditEntry, AuditQuery, ChainHead, Checkpoint, Event, PruneOutcome, StoreError,
    SubjectLookupCheck,
};

const CHECKPOINT_COLUMNS: &str = "id, seq, head_hash, at_us, key_id, signature";

impl SqliteBackend {
    pub(crate) async fn append_events(&self, events: &[Event]) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.to_vec();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seqs = append_in(&tx, &events)?;
            tx.commit()?;
            Ok(seqs)
        })
        .await
    }

    pub(crate) async fn audit_entries(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let q = q.clone();
        self.run(move |c| {
            let (sql, params) = match q.subject.as_deref() {
                Some(subject) => subject_query(&q, subject),
                None => entry_query(&q, |n| format!("?{n}")),
            };
            let values: Vec<rusqlite::types::Value> = params
                .into_iter()
                .map(|p| match p {
                    Param::Int(i) => rusqlite::types::Value::Integer(i),
                    Param::Text(t) => rusqlite::types::Value::Text(t),
                })
                .collect();
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
            let mut entries = Vec::new();
            while let Some(r) = rows.next()? {
                entries.push(entry_from_row(r)?);
            }
            if q.newest {
                entries.reverse();
            }
            Ok(entries)
        })
        .await
    }

    pub(crate) async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        self.run(|c| {
            Ok(c.query_row(
                "SELECT seq, hash FROM audit_head WHERE singleton = 1",
                [],
                |r| {
                    Ok(ChainHead {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                    })
                },
            )?)
        })
        .await
    }

    pub(crate) async fn append_checkpoint(
        &self,
        cp: &Checkpoint,
    ) -> Result<Checkpoint, StoreError> {
        let cp = cp.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            check_covers(&tx, cp.seq, &cp.head_hash)?;
            let id: i64 = tx.query_row(
                "INSERT INTO audit_checkpoints (seq, head_hash, at_us, key_id, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![
                    cp.seq,
                    cp.head_hash,
                    to_micros(cp.at),
                    cp.key_id,
                    cp.signature
                ],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Checkpoint { id, ..cp })
        })
        .await
    }

    pub(crate) async fn list_checkpoints(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id > ?1 \
                 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after_id, limit], checkpoint_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.run(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints \
                     ORDER BY seq DESC, id DESC LIMIT 1"
                ),
                [],
                checkpoint_from_row,
            )
            .optional()?)
        })
        .await
    }

    pub(crate) async fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError> {
        self.run(|c| read_anchor(c)).await
    }

    pub(crate) async fn first_entry_missing_from_subject_lookup(
        &self,
    ) -> Result<SubjectLookupCheck, StoreError> {
        self.run(|c| {
            // One snapshot for the anchor and the scan.
            let tx = c.transaction()?;
            let after = read_anchor(&tx)?.map_or(0, |a| a.checkpoint.seq);
            let found = AUDIT_SUBJECTS.first_unsealed_row(&tx, after)?;
            tx.commit()?;
            Ok(found.map_or(SubjectLookupCheck::Complete, |seq| {
                SubjectLookupCheck::Missing { seq }
            }))
        })
        .await
    }

    pub(crate) async fn prune_audit(
        &self,
        checkpoint_id: i64,
        now: OffsetDateTime,
    ) -> Result<PruneOutcome, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let cp = tx
                .query_row(
                    &format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id = ?1"),
                    [checkpoint_id],
                    checkpoint_from_row,
                )
                .optional()?
                .ok_or_else(|| {
                    StoreError::Rejected(format!("there is no checkpoint with id {checkpoint_id}"))
                })?;
            if let Some(anchor) = read_anchor(&tx)?
                && let Some(done) = crate::audit_sql::prune_noop(&anchor, &cp)?
            {
                return Ok(done);
            }
            check_covers(&tx, cp.seq, &cp.head_hash)?;
            let entries = tx.execute("DELETE FROM events WHERE id <= ?1", [cp.seq])?;
            AUDIT_SUBJECTS.prune(&tx, cp.seq)?;
            let checkpoints =
                tx.execute("DELETE FROM audit_checkpoints WHERE seq < ?1", [cp.seq])?;
            let pruned_at = from_micros(to_micros(now))?;
            tx.execute(
                "INSERT INTO audit_anchor (singleton, checkpoint_id, seq, head_hash, at_us, \
                 key_id, signature, pruned_at_us) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (singleton) DO UPDATE SET checkpoint_id = excluded.checkpoint_id, \
                 seq = excluded.seq, head_hash = excluded.head_hash, at_us = excluded.at_us, \
                 key_id = excluded.key_id, signature = excluded.signature, \
                 pruned_at_us = excluded.pruned_at_us",
                params![
                    cp.id,
                    cp.seq,
                    cp.head_hash,
                    to_micros(cp.at),
                    cp.key_id,
                    cp.signature,
                    to_micros(pruned_at)
                ],
            )?;
            tx.commit()?;
            Ok(PruneOutcome {
                entries_removed: entries as u64,
                checkpoints_removed: checkpoints as u64,
                anchor: AuditAnchor {
                    checkpoint: cp,
                    pruned_at,
                },
            })
        })
        .await
    }
}

/// The entry query for `q` when it names `subject`, with its parameters: a lookup of the
/// sealed runs of `events.subject` (schema v8, `runs.rs`).
pub(crate) fn subject_query(q: &AuditQuery, subject: &str) -> (String, Vec<Param>) {
    let (filter, mut params) = entry_filter(q, false, |n| format!("?{n}"));
    params.push(Param::Text(subject.to_owned()));
    let key = params.len();
    params.push(Param::Int(i64::from(q.limit)));
    let sql = AUDIT_SUBJECTS.lookup(&filter, key, params.len(), q.newest);
    (sql, params)
}

/// Appends `events` inside the caller's write transaction (`BEGIN IMMEDIATE`, so the head
/// read here is the committed one; `tx` may be a savepoint within it) and returns their seqs: claims seqs head+1..=head+n,
/// chains the events onto the head's hash and moves the head to the last one.
pub(super) fn append_in<E: std::borrow::Borrow<Event>>(
    tx: &Connection,
    events: &[E],
) -> Result<Vec<i64>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let (last_seq, prev_hash): (i64, String) = tx
        .prepare_cached(
            "UPDATE audit_head SET seq = seq + ?1 WHERE singleton = 1 RETURNING seq, hash",
        )?
        .query_row([n], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let head = ChainHead {
        seq: last_seq - n,
        hash: prev_hash,
    };
    let rows = chain_rows(&head, events)?;
    insert_rows(tx, &rows)?;
    if let Some(last) = rows.last() {
        tx.prepare_cached("UPDATE audit_head SET hash = ?1 WHERE singleton = 1")?
            .execute([&last.hash])?;
    }
    AUDIT_SUBJECTS.seal(tx, last_seq)?;
    Ok(rows.iter().map(|r| r.seq).collect())
}

fn insert_rows(tx: &Connection, rows: &[ChainedRow]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (id, at_us, kind, actor, subject, detail, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in rows {
        stmt.execute(params![
            r.seq,
            r.at_us,
            r.kind,
            r.actor,
            r.subject,
            r.detail,
            r.prev_hash,
            r.hash
        ])?;
    }
    Ok(())
}

/// Refuses a checkpoint (or a cut) at `seq` unless `head_hash` is what the log holds there:
/// the stored entry's hash, or the anchor's when `seq` is the anchor itself.
fn check_covers(c: &Connection, seq: i64, head_hash: &str) -> Result<(), StoreError> {
    let stored: Option<String> = c
        .query_row("SELECT hash FROM events WHERE id = ?1", [seq], |r| r.get(0))
        .optional()?;
    let stored = match stored {
        Some(h) => Some(h),
        None => read_anchor(c)?
            .filter(|a| a.checkpoint.seq == seq)
            .map(|a| a.checkpoint.head_hash),
    };
    crate::audit_sql::check_head(seq, head_hash, stored.as_deref())
}

fn read_anchor(c: &Connection) -> Result<Option<AuditAnchor>, StoreError> {
    Ok(c.query_row(
        "SELECT checkpoint_id, seq, head_hash, at_us, key_id, signature, pruned_at_us \
         FROM audit_anchor WHERE singleton = 1",
        [],
        |r| {
            Ok(AuditAnchor {
                checkpoint: checkpoint_from_row(r)?,
                pruned_at: super::ts(r, 6)?,
            })
        },
    )
    .optional()?)
}

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        id: r.get(0)?,
        seq: r.get(1)?,
        head_hash: r.get(2)?,
        at: super::ts(r, 3)?,
        key_id: r.get(4)?,
        signature: r.get(5)?,
    })
}

fn entry_from_row(r: &Row<'_>) -> Result<AuditEntry, StoreError> {
    let detail: String = r.get(5)?;
    entry_from_columns(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        &detail,
        r.get(6)?,
        r.get(7)?,
    )
}

/// Schema version 2: chains the events that existed before, in id order, from the
/// genesis, and points the head at the last one.
pub(super) fn chain_existing_events(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let legacy = {
        let mut stmt =
            tx.prepare("SELECT id, at_us, kind, actor, subject, detail FROM events ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(LegacyRow {
                id: r.get(0)?,
                at_us: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                subject: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let (rows, head) = backfill_rows(legacy)?;
    {
        let mut stmt =
            tx.prepare("UPDATE events SET detail = ?2, prev_hash = ?3, hash = ?4 WHERE id = ?1")?;
        for r in &rows {
            stmt.execute(params![r.seq, r.detail, r.prev_hash, r.hash])?;
        }
    }
    tx.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE singleton = 1",
        params![head.seq, head.hash],
    )?;
    Ok(())
}
