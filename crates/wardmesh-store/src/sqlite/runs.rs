//! Exact-match lookups by a random key on SQLite, without an index keyed at random: the
//! audit log by subject (a patient pseudonym) and flows by request id (often a caller's
//! UUIDv4).
//!
//! Why: SQLite's WAL, and the checkpoint after it, write whole pages, and an index whose
//! keys arrive at random dirties its own page for nearly every row: the audit log's
//! subject index alone cost ≈ 40 % of flow ingest, random request ids ≈ 50 %
//! (bench/RESULTS.md, section 2026-12-06 23:20). Instead, the write that completes a run of [`RUN`]
//! rows copies the run's (key, id) pairs, sorted, under the run's own key into a
//! `WITHOUT ROWID` table, in that write's transaction: a new run only extends the right
//! edge of that table, so each page is written once, and the runs never disagree with the
//! rows, whichever process writes. A lookup seeks once per run and ranges over the rows
//! after the last run (fewer than [`RUN`]) by id, in one statement, so it sees one
//! snapshot. PostgreSQL logs tuples rather than pages and keeps plain indexes.

use rusqlite::{Connection, OptionalExtension as _};

use crate::StoreError;

/// Rows per run: sealing copies this many pairs at once; a lookup scans at most this many
/// unsealed rows (≈ 10 MB for PHI audit entries) and seeks once per run. Small in unit
/// tests, so that every test of the audit log and of flows crosses runs.
pub(super) const RUN: i64 = if cfg!(test) { 4 } else { 16_384 };

/// The schema version that introduced sealed runs.
pub(super) const SCHEMA_VERSION: i64 = 8;

/// Schema version 8, after its SQL: seals the rows already stored, so that the first
/// write after an upgrade does not pay for a whole existing log (and hold the write lock
/// meanwhile); the upgrade does, once, while the store opens.
pub(super) fn seal_existing(tx: &Connection) -> Result<(), StoreError> {
    let audit_head: i64 =
        tx.query_row("SELECT seq FROM audit_head WHERE singleton = 1", [], |r| {
            r.get(0)
        })?;
    AUDIT_SUBJECTS.seal(tx, audit_head)?;
    let flow_head: i64 =
        tx.query_row("SELECT seq FROM flow_head WHERE singleton = 1", [], |r| {
            r.get(0)
        })?;
    FLOW_REQUEST_IDS.seal(tx, flow_head)
}

/// One lookup key of one table, and the tables that hold its sealed runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunIndex {
    /// `(after_id INTEGER PRIMARY KEY, last_id)`: run `after_id` covers ids in
    /// `(after_id, last_id]`.
    pub(super) runs: &'static str,
    /// `(run, <key>, <id>)`, primary key in that order, `WITHOUT ROWID`.
    pub(super) pairs: &'static str,
    /// The indexed table, its integer primary key and the key column.
    pub(super) table: &'static str,
    pub(super) id: &'static str,
    pub(super) key: &'static str,
}

/// `events.subject` (schema v8).
pub(super) const AUDIT_SUBJECTS: RunIndex = RunIndex {
    runs: "audit_subject_runs",
    pairs: "audit_subjects",
    table: "events",
    id: "id",
    key: "subject",
};

/// `flows.request_id` (schema v8); rows without one have no pair.
pub(super) const FLOW_REQUEST_IDS: RunIndex = RunIndex {
    runs: "flow_request_id_runs",
    pairs: "flow_request_ids",
    table: "flows",
    id: "seq",
    key: "request_id",
};

impl RunIndex {
    /// Seals every complete run up to `head` (the last id written). Call inside the
    /// writing transaction, after the rows are inserted.
    pub(super) fn seal(&self, tx: &Connection, head: i64) -> Result<(), StoreError> {
        let Self {
            runs,
            pairs,
            table,
            id,
            key,
        } = *self;
        let mut sealed = self.sealed_through(tx)?;
        if sealed.is_none() {
            // No run yet (a new or just-migrated table): start at the oldest row kept, so
            // a table pruned long ago does not get a run for every gap.
            sealed = tx
                .prepare_cached(&format!("SELECT min({id}) - 1 FROM {table}"))?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?;
        }
        let Some(mut from) = sealed else {
            return Ok(());
        };
        while head - from >= RUN {
            let to = from + RUN;
            tx.prepare_cached(&format!(
                "INSERT INTO {pairs} (run, {key}, {id}) \
                 SELECT ?1, {key}, {id} FROM {table} \
                 WHERE {id} > ?1 AND {id} <= ?2 AND {key} IS NOT NULL \
                 ORDER BY {key}, {id}"
            ))?
            .execute([from, to])?;
            tx.prepare_cached(&format!(
                "INSERT INTO {runs} (after_id, last_id) VALUES (?1, ?2)"
            ))?
            .execute([from, to])?;
            from = to;
        }
        Ok(())
    }

    /// The last id the sealed runs cover, if there is a run.
    fn sealed_through(&self, c: &Connection) -> Result<Option<i64>, StoreError> {
        Ok(c.prepare_cached(&format!(
            "SELECT last_id FROM {} ORDER BY after_id DESC LIMIT 1",
            self.runs
        ))?
        .query_row([], |r| r.get(0))
        .optional()?)
    }

    /// Drops the runs that only cover ids up to `cut` (deleted rows). A run that
    /// straddles the cut keeps its pairs: lookups join them with the table, so the ids of
    /// deleted rows drop out.
    pub(super) fn prune(&self, tx: &Connection, cut: i64) -> Result<(), StoreError> {
        let Self { runs, pairs, .. } = *self;
        tx.execute(
            &format!(
                "DELETE FROM {pairs} WHERE run IN \
                 (SELECT after_id FROM {runs} WHERE last_id <= ?1)"
            ),
            [cut],
        )?;
        tx.execute(&format!("DELETE FROM {runs} WHERE last_id <= ?1"), [cut])?;
        Ok(())
    }

    /// The first row (id above `after`) that a lookup by its key would miss: a sealed row
    /// without its pair in the run covering it. After a prune, pass the cut as `after`.
    /// Reads every sealed row once (for `wardctl audit verify`, not the request path).
    pub(super) fn first_unsealed_row(
        &self,
        c: &Connection,
        after: i64,
    ) -> Result<Option<i64>, StoreError> {
        let Self {
            runs,
            pairs,
            table,
            id,
            key,
        } = *self;
        let Some(sealed) = self.sealed_through(c)? else {
            return Ok(None);
        };
        Ok(c.query_row(
            &format!(
                "SELECT t.{id} FROM {table} t WHERE t.{id} > ?1 AND t.{id} <= ?2 \
                 AND t.{key} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {pairs} p \
                 WHERE p.run = (SELECT after_id FROM {runs} WHERE after_id < t.{id} \
                 ORDER BY after_id DESC LIMIT 1) AND p.{key} = t.{key} AND p.{id} = t.{id}) \
                 ORDER BY t.{id} LIMIT 1"
            ),
            [after, sealed],
            |r| r.get(0),
        )
        .optional()?)
    }

    /// A lookup: `filter` is `SELECT … FROM <table> WHERE <id> > ?1 …` (every other filter
    /// of the query, `?1` being the paging cursor); `key` and `limit` name the parameters
    /// holding the looked-up key and the page size. The sealed runs' matches and the
    /// unsealed tail's, merged in id order (`newest`: descending).
    pub(super) fn lookup(&self, filter: &str, key: usize, limit: usize, newest: bool) -> String {
        let Self {
            runs,
            pairs,
            id,
            key: column,
            ..
        } = *self;
        let cursor = format!("WHERE {id} > ?1");
        debug_assert!(filter.contains(&cursor), "{filter}");
        // The tail's lower bound is one expression, so SQLite ranges over the rowid from
        // it rather than from whichever of two bounds it picks.
        let tail = filter.replacen(
            &cursor,
            &format!(
                "WHERE {id} > max(?1, coalesce((SELECT last_id FROM {runs} \
                 ORDER BY after_id DESC LIMIT 1), 0))"
            ),
            1,
        );
        let order = if newest { "DESC" } else { "ASC" };
        // CROSS JOIN fixes the loop order (SQLite's documented hint): over the runs, one
        // seek into each; left to itself the planner may scan every sealed pair instead.
        // The rows' own key is checked too, so a pair pointing at another key's row (a
        // forged pair) cannot put that row into this key's answer; a missing pair is what
        // `first_unsealed_row` finds.
        format!(
            "{filter} AND {column} = ?{key} AND {id} IN (SELECT p.{id} FROM {runs} r \
             CROSS JOIN {pairs} p ON p.run = r.after_id AND p.{column} = ?{key} \
             WHERE r.last_id > ?1) \
             UNION ALL {tail} AND {column} = ?{key} \
             ORDER BY {id} {order} LIMIT ?{limit}"
        )
    }
}
