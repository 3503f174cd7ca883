//! The audit log by subject on SQLite: sealed runs instead of an index on
//! `events (subject, id)` (schema v8 says why: that index's random keys dirtied a page per
//! PHI entry).
//!
//! The append that completes a run of [`RUN`] entries copies the run's (subject, id)
//! pairs into `audit_subjects` under the run's key, in one sorted `INSERT … SELECT`, in
//! the append's own transaction: the run table and the log never disagree, whichever
//! process appends. A query by subject reads the sealed runs (one index seek each) and
//! scans the entries after the last run by id (fewer than [`RUN`]), in one statement, so
//! it sees one snapshot.

use rusqlite::{Connection, OptionalExtension as _};

use crate::audit_sql::{Param, entry_filter};
use crate::{AuditQuery, StoreError};

/// Entries per sealed run: sealing costs one sorted copy of this many pairs; a lookup scans
/// at most this many unsealed entries (≈ 10 MB of rows for PHI entries) and seeks once per
/// run. Small in unit tests, so every test of the audit log crosses runs.
pub(super) const RUN: i64 = if cfg!(test) { 4 } else { 16_384 };

/// Seals every complete run up to `head` (the last seq appended). Call inside the append's
/// write transaction, after the entries are inserted.
pub(super) fn seal(tx: &Connection, head: i64) -> Result<(), StoreError> {
    let mut sealed = sealed_through(tx)?;
    if sealed.is_none() {
        // No run yet (a new or just-migrated log): start at the oldest entry kept, so a
        // log pruned long ago does not get a run for every gap.
        sealed = tx
            .prepare_cached("SELECT min(id) - 1 FROM events")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?;
    }
    let Some(mut from) = sealed else {
        return Ok(());
    };
    while head - from >= RUN {
        let to = from + RUN;
        tx.prepare_cached(
            "INSERT INTO audit_subjects (run, subject, id) \
             SELECT ?1, subject, id FROM events WHERE id > ?1 AND id <= ?2 \
             ORDER BY subject, id",
        )?
        .execute([from, to])?;
        tx.prepare_cached("INSERT INTO audit_subject_runs (after_id, last_id) VALUES (?1, ?2)")?
            .execute([from, to])?;
        from = to;
    }
    Ok(())
}

/// The last id the sealed runs cover, if there is a run.
fn sealed_through(c: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT last_id FROM audit_subject_runs ORDER BY after_id DESC LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?,
    )
}

/// Drops the runs that only cover pruned entries (ids up to `cut`). A run that straddles
/// the cut keeps its pairs; a lookup joins them with `events`, so pruned ids drop out.
pub(super) fn prune(tx: &Connection, cut: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM audit_subjects WHERE run IN \
         (SELECT after_id FROM audit_subject_runs WHERE last_id <= ?1)",
        [cut],
    )?;
    tx.execute("DELETE FROM audit_subject_runs WHERE last_id <= ?1", [cut])?;
    Ok(())
}

/// The entry query for `q` when it names a subject, with its parameters: the sealed runs'
/// matches and the unsealed tail's, merged in id order.
pub(crate) fn entry_query(q: &AuditQuery, subject: &str) -> (String, Vec<Param>) {
    let ph = |n: usize| format!("?{n}");
    // Both branches share the filter's parameters (?1 is `after`).
    let (filter, mut params) = entry_filter(q, false, ph);
    params.push(Param::Text(subject.to_owned()));
    let s = params.len();
    params.push(Param::Int(i64::from(q.limit)));
    let limit = params.len();
    let order = if q.newest { "DESC" } else { "ASC" };
    // The tail's lower bound is one expression, so SQLite ranges over the rowid from it
    // rather than from whichever of two bounds it picks.
    let tail_filter = filter.replacen(
        "WHERE id > ?1",
        "WHERE id > max(?1, coalesce((SELECT last_id FROM audit_subject_runs \
         ORDER BY after_id DESC LIMIT 1), 0))",
        1,
    );
    // CROSS JOIN fixes the loop order (SQLite's documented hint): over the runs, one seek
    // into each; left to itself the planner may scan every sealed pair instead.
    let sql = format!(
        "{filter} AND id IN (SELECT s.id FROM audit_subject_runs r \
         CROSS JOIN audit_subjects s ON s.run = r.after_id AND s.subject = ?{s} \
         WHERE r.last_id > ?1) \
         UNION ALL {tail_filter} AND subject = ?{s} \
         ORDER BY id {order} LIMIT ?{limit}"
    );
    (sql, params)
}
