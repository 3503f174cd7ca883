//! What both backends share for the audit log: the rows an append writes (chained here,
//! in Rust, from the head read inside the append transaction), the entry query built from
//! an [`AuditQuery`], and the conversion of stored rows back into entries.

use std::borrow::Borrow;

use crate::chain::{canonical_detail, canonical_entry, canonical_entry_text, chain_hash};
use crate::schema::{detail_from_text, from_micros, to_micros};
use crate::{
    AuditAnchor, AuditEntry, AuditQuery, ChainHead, Checkpoint, Event, PruneOutcome, StoreError,
};

/// The columns every entry query selects, in this order.
pub(crate) const ENTRY_COLUMNS: &str = "id, at_us, kind, actor, subject, detail, prev_hash, hash";

/// An event ready to insert: its place in the chain decided.
#[derive(Debug)]
pub(crate) struct ChainedRow {
    pub(crate) seq: i64,
    pub(crate) at_us: i64,
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) subject: String,
    /// The canonical detail text: exactly what the hash covers.
    pub(crate) detail: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

/// Chains `events` after `head` (seq `head.seq + 1`, `+ 2`, …).
pub(crate) fn chain_rows<E: Borrow<Event>>(
    head: &ChainHead,
    events: &[E],
) -> Result<Vec<ChainedRow>, StoreError> {
    let mut prev = head.hash.clone();
    let mut rows = Vec::with_capacity(events.len());
    for (seq, e) in (head.seq + 1..).zip(events) {
        let e = e.borrow();
        let at_us = to_micros(e.at);
        let detail = canonical_detail(&e.detail);
        let canonical = canonical_entry_text(seq, at_us, &e.kind, &e.actor, &e.subject, &detail);
        let hash = chain_hash(&prev, &canonical).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the audit chain head before seq {seq} is not a sha-256 hash"
            ))
        })?;
        rows.push(ChainedRow {
            seq,
            at_us,
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            detail,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    Ok(rows)
}

/// A stored event row as read for the schema-2 backfill.
#[derive(Debug)]
pub(crate) struct LegacyRow {
    pub(crate) id: i64,
    pub(crate) at_us: i64,
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) subject: String,
    pub(crate) detail: String,
}

/// Chains rows that existed before schema version 2, in id order, from the genesis.
/// Returns the rows to write back (canonical detail, prev_hash, hash) and the new head.
pub(crate) fn backfill_rows(
    legacy: Vec<LegacyRow>,
) -> Result<(Vec<ChainedRow>, ChainHead), StoreError> {
    let mut head = ChainHead::genesis();
    let mut rows = Vec::with_capacity(legacy.len());
    for r in legacy {
        let detail = detail_from_text(&r.detail)?;
        let canonical = canonical_entry(r.id, r.at_us, &r.kind, &r.actor, &r.subject, &detail);
        let hash = chain_hash(&head.hash, &canonical).unwrap_or_default();
        rows.push(ChainedRow {
            seq: r.id,
            at_us: r.at_us,
            kind: r.kind,
            actor: r.actor,
            subject: r.subject,
            detail: canonical_detail(&detail),
            prev_hash: std::mem::replace(&mut head.hash, hash.clone()),
            hash,
        });
        head.seq = r.id;
    }
    Ok((rows, head))
}

/// Accepts a checkpoint (or a pruning cut) at `seq` only if `head_hash` is what the log
/// holds there (`stored`: the entry's hash, or the anchor's at the anchor's seq).
pub(crate) fn check_head(
    seq: i64,
    head_hash: &str,
    stored: Option<&str>,
) -> Result<(), StoreError> {
    match stored {
        _ if seq < 1 => Err(StoreError::Rejected(format!(
            "a checkpoint needs a seq of at least 1, not {seq}"
        ))),
        None => Err(StoreError::Rejected(format!(
            "there is no audit entry at seq {seq} to checkpoint"
        ))),
        Some(stored) if stored != head_hash => Err(StoreError::Rejected(format!(
            "the checkpoint's head hash is not the hash of audit entry seq {seq}"
        ))),
        Some(_) => Ok(()),
    }
}

/// Pruning at `cp` when the log is already anchored at `anchor`: `Some` (nothing to do)
/// when `cp` is the anchor's seq, an error when it is older, `None` to go ahead.
pub(crate) fn prune_noop(
    anchor: &AuditAnchor,
    cp: &Checkpoint,
) -> Result<Option<PruneOutcome>, StoreError> {
    let at = anchor.checkpoint.seq;
    if cp.seq == at {
        return Ok(Some(PruneOutcome {
            entries_removed: 0,
            checkpoints_removed: 0,
            anchor: anchor.clone(),
        }));
    }
    if cp.seq < at {
        return Err(StoreError::Rejected(format!(
            "the audit log is already pruned up to seq {at}; checkpoint {} (seq {}) is older",
            cp.id, cp.seq
        )));
    }
    Ok(None)
}

/// A query parameter, bound by each backend in its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// The `SELECT` for `q` with placeholders from `placeholder(n)` (1-based), and its
/// parameters in order. Rows come newest first when `q.newest`; the caller reverses them.
pub(crate) fn entry_query(
    q: &AuditQuery,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<Param>) {
    let (mut sql, mut params) = entry_filter(q, true, &placeholder);
    let order = if q.newest { "DESC" } else { "ASC" };
    params.push(Param::Int(i64::from(q.limit)));
    sql.push_str(&format!(
        " ORDER BY id {order} LIMIT {}",
        placeholder(params.len())
    ));
    (sql, params)
}

/// `SELECT … FROM events WHERE …` with every filter of `q` (the subject only if
/// `with_subject`), without order or limit; `placeholder(n)` names the `n`th parameter.
pub(crate) fn entry_filter(
    q: &AuditQuery,
    with_subject: bool,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut params = vec![Param::Int(q.after)];
    let mut sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM events WHERE id > {}",
        placeholder(1)
    );
    let mut push = |sql: &mut String, clause: &str, p: Param| {
        params.push(p);
        sql.push_str(&clause.replace('?', &placeholder(params.len())));
    };
    if let Some(before) = q.before {
        push(&mut sql, " AND id < ?", Param::Int(before));
    }
    if let Some(kind) = q.kind.as_deref() {
        match kind.strip_suffix('*') {
            // The prefix is one parameter used twice: its length comes from the server's
            // own `length()`, so no integer parameter whose width each backend infers
            // differently (PostgreSQL wants int4 for substr). No LIKE: SQLite's ignores case.
            Some(prefix) => push(
                &mut sql,
                " AND substr(kind, 1, length(?)) = ?",
                Param::Text(prefix.to_owned()),
            ),
            None => push(&mut sql, " AND kind = ?", Param::Text(kind.to_owned())),
        }
    }
    if let Some(kind) = &q.exclude_kind {
        push(&mut sql, " AND kind <> ?", Param::Text(kind.clone()));
    }
    // One placeholder per kind: `kind IN (?1, ?2, …)`.
    for (i, kind) in q.kinds.iter().enumerate() {
        let clause = if i == 0 { " AND kind IN (?" } else { ", ?" };
        push(&mut sql, clause, Param::Text(kind.clone()));
    }
    if !q.kinds.is_empty() {
        sql.push(')');
    }
    if let Some(subject) = q.subject.as_ref().filter(|_| with_subject) {
        push(&mut sql, " AND subject = ?", Param::Text(subject.clone()));
    }
    if let Some(since) = q.since {
        push(&mut sql, " AND at_us >= ?", Param::Int(to_micros(since)));
    }
    if let Some(until) = q.until {
        push(&mut sql, " AND at_us < ?", Param::Int(to_micros(until)));
    }
    (sql, params)
}

/// An entry from its stored columns.
#[expect(clippy::too_many_arguments, reason = "one argument per stored column")]
pub(crate) fn entry_from_columns(
    seq: i64,
    at_us: i64,
    kind: String,
    actor: String,
    subject: String,
    detail: &str,
    prev_hash: String,
    hash: String,
) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq,
        at: from_micros(at_us)?,
        kind,
        actor,
        subject,
        detail: detail_from_text(detail)?,
        prev_hash,
        hash,
    })
}

impl From<AuditEntry> for Event {
    fn from(e: AuditEntry) -> Self {
        Event {
            id: e.seq,
            at: e.at,
            kind: e.kind,
            actor: e.actor,
            subject: e.subject,
            detail: e.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_number_their_placeholders_in_order() {
        let q = AuditQuery {
            after: 5,
            before: Some(50),
            kind: Some("identity.*".to_owned()),
            exclude_kind: Some("operator.api".to_owned()),
            kinds: Vec::new(),
            subject: None,
            since: Some(time::OffsetDateTime::UNIX_EPOCH),
            until: None,
            limit: 10,
            newest: true,
        };
        let (sql, params) = entry_query(&q, |n| format!("${n}"));
        assert_eq!(
            sql,
            format!(
                "SELECT {ENTRY_COLUMNS} FROM events WHERE id > $1 AND id < $2 AND \
                 substr(kind, 1, length($3)) = $3 AND kind <> $4 AND at_us >= $5 ORDER BY id \
                 DESC LIMIT $6"
            )
        );
        assert_eq!(
            params,
            [
                Param::Int(5),
                Param::Int(50),
                Param::Text("identity.".to_owned()),
                Param::Text("operator.api".to_owned()),
                Param::Int(0),
                Param::Int(10),
            ]
        );
        let (sql, params) = entry_query(&AuditQuery::default(), |n| format!("?{n}"));
        assert_eq!(
            sql,
            format!("SELECT {ENTRY_COLUMNS} FROM events WHERE id > ?1 ORDER BY id ASC LIMIT ?2")
        );
        assert_eq!(params, [Param::Int(0), Param::Int(0)]);
    }

    #[test]
    fn subjects_kind_sets_and_until_are_parameters() {
        let q = AuditQuery {
            after: 7,
            kinds: vec!["phi.access".to_owned(), "breakglass.use".to_owned()],
            subject: Some("ab'; DROP TABLE events; --".to_owned()),
            since: Some(time::OffsetDateTime::UNIX_EPOCH),
            until: Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1)),
            limit: 3,
            ..AuditQuery::default()
        };
        let (sql, params) = entry_query(&q, |n| format!("?{n}"));
        assert_eq!(
            sql,
            format!(
                "SELECT {ENTRY_COLUMNS} FROM events WHERE id > ?1 AND kind IN (?2, ?3) AND \
                 subject = ?4 AND at_us >= ?5 AND at_us < ?6 ORDER BY id ASC LIMIT ?7"
            )
        );
        assert_eq!(
            params,
            [
                Param::Int(7),
                Param::Text("phi.access".to_owned()),
                Param::Text("breakglass.use".to_owned()),
                Param::Text("ab'; DROP TABLE events; --".to_owned()),
                Param::Int(0),
                Param::Int(1_000_000),
                Param::Int(3),
            ]
        );
        let one = AuditQuery {
            kinds: vec!["authz.deny".to_owned()],
            ..AuditQuery::default()
        };
        let (sql, _) = entry_query(&one, |n| format!("${n}"));
        assert!(sql.contains(" AND kind IN ($2) ORDER BY"), "{sql}");
    }
}
