//! Flow telemetry on SQLite: batch ingest (in a group commit's `BEGIN IMMEDIATE`
//! transaction, one cached prepared single-row statement, seqs handed out from
//! `flow_head` up front), queries and retention.
//!
//! Why one row per statement execution, not multi-row `INSERT … VALUES (…), (…)`: a
//! multi-row statement that can fail part-way needs a statement journal (every page it
//! touches is copied first), and `RETURNING id` then has to be matched back to the batch.
//! A single-row insert needs no statement journal and its change count says whether the
//! record was new. Measured with `check_flow_ingest_rate` (release, 2 cores): single-row
//! ≈ 35k/44k records/s (batch 100/500) against ≈ 31k/39k for 32-row statements.
//!
//! What is left is mostly SQLite writing each commit's dirty index pages to the WAL: a
//! key that lands on a random page (a caller-sent random request id, the audit log's
//! patient pseudonym) dirties its own page per record. Hence time-ordered record and
//! request ids, no flows index on the pseudonym (schema v7), group commit of concurrent
//! batches (`group.rs`) and WAL checkpoints off the write path (`checkpointer.rs`);
//! bench/RESULTS.md has the measurements.

use std::sync::LazyLock;

use rusqlite::{Connection, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use wardmesh_proto::flow::{FlowRecord, StoredFlow};

use super::SqliteBackend;
use super::group::{self, Job};
use super::runs::FLOW_REQUEST_IDS;
use crate::StoreError;
use crate::flows::{
    FLOW_COLUMNS, FlowAudit, FlowParam, FlowQuery, IngestOutcome, PRUNE_CHUNK, RawFlow, events_for,
    flow_filter, flow_query, stored_count,
};
use crate::schema::to_micros;

/// Parameters of one row: the columns of [`FLOW_COLUMNS`].
const PER_ROW: usize = 21;

/// `INSERT … ON CONFLICT (id) DO NOTHING` for one record: it changes one row if the
/// record is new and none if its id is stored already (idempotent ingest).
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO flows ({FLOW_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
        ["?"; PER_ROW].join(", ")
    )
});

impl SqliteBackend {
    pub(crate) async fn ingest_flows(
        &self,
        records: &[FlowRecord],
        audit: &[FlowAudit],
    ) -> Result<IngestOutcome, StoreError> {
        if records.is_empty() {
            return Ok(IngestOutcome::default());
        }
        // `run` needs owned data (the closure goes to the blocking pool). The copy costs
        // about 0.6 µs a record, a few percent of an ingest; avoiding it would take an
        // owned batch in the public API.
        let (done, answer) = oneshot::channel();
        self.ingest_queue.push(Job {
            records: records.to_vec(),
            audit: audit.to_vec(),
            done,
        });
        let queue = self.ingest_queue.clone();
        self.run(move |c| {
            // Empty when an earlier caller's commit took this batch along (group commit).
            let jobs = queue.take();
            if !jobs.is_empty() {
                group::commit(c, jobs);
            }
            Ok(())
        })
        .await?;
        answer.await.map_err(|_| StoreError::CommitFailed {
            reason: "the storage task ended without an answer".into(),
        })?
    }

    pub(crate) async fn query_flows(&self, q: &FlowQuery) -> Result<Vec<StoredFlow>, StoreError> {
        let q = q.clone();
        self.run(move |c| {
            let (sql, params) = match q.request_id.as_deref() {
                Some(id) => request_id_query(&q, id),
                None => flow_query(&q, |n| format!("?{n}")),
            };
            let values: Vec<rusqlite::types::Value> = params
                .into_iter()
                .map(|p| match p {
                    FlowParam::Int(i) => rusqlite::types::Value::Integer(i),
                    FlowParam::Text(t) => rusqlite::types::Value::Text(t),
                    FlowParam::Bool(b) => rusqlite::types::Value::Integer(i64::from(b)),
                })
                .collect();
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
            let mut flows = Vec::new();
            while let Some(r) = rows.next()? {
                flows.push(raw_from_row(r)?.into_stored()?);
            }
            if q.newest {
                flows.reverse();
            }
            Ok(flows)
        })
        .await
    }

    pub(crate) async fn prune_flows(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let before_us = to_micros(before);
        let mut removed = 0u64;
        loop {
            // One short transaction per chunk: ingest gets the write lock in between.
            let n = self
                .run(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let n = tx
                        .prepare_cached(
                            "DELETE FROM flows WHERE seq IN \
                             (SELECT seq FROM flows WHERE at_us < ?1 LIMIT ?2)",
                        )?
                        .execute(params![before_us, PRUNE_CHUNK])?;
                    // Flows are pruned by time, so only the runs wholly below the oldest
                    // flow kept are dropped.
                    let oldest: Option<i64> =
                        tx.query_row("SELECT min(seq) FROM flows", [], |r| r.get(0))?;
                    FLOW_REQUEST_IDS.prune(&tx, oldest.map_or(i64::MAX, |s| s - 1))?;
                    tx.commit()?;
                    Ok(n)
                })
                .await?;
            removed += n as u64;
            if (n as i64) < PRUNE_CHUNK {
                return Ok(removed);
            }
        }
    }
}

/// One batch inside the caller's transaction (or savepoint): its flows, then the audit
/// entries of the records that were new.
pub(super) fn ingest_batch(
    tx: &Connection,
    records: &[FlowRecord],
    audit: &[FlowAudit],
) -> Result<IngestOutcome, StoreError> {
    let mask = ingest_in(tx, records)?;
    let events = events_for(audit, &mask);
    super::audit::append_in(tx, &events)?;
    Ok(IngestOutcome::new(records.len(), &mask, events.len()))
}

/// Inserts the batch; returns which records were new. A duplicate (stored before, or
/// repeated within the batch) leaves its seq unused: paging by seq ignores gaps.
fn ingest_in(tx: &Connection, records: &[FlowRecord]) -> Result<Vec<bool>, StoreError> {
    let n = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let last: i64 = tx
        .prepare_cached("UPDATE flow_head SET seq = seq + ?1 WHERE singleton = 1 RETURNING seq")?
        .query_row([n], |r| r.get(0))?;
    let mut insert = tx.prepare_cached(&INSERT)?;
    let mut mask = Vec::with_capacity(records.len());
    for (r, seq) in records.iter().zip(last - n + 1..) {
        bind_row(&mut insert, seq, r)?;
        mask.push(insert.raw_execute()? == 1);
    }
    FLOW_REQUEST_IDS.seal(tx, last)?;
    Ok(mask)
}

/// The flow query for `q` when it names a request id, with its parameters: a lookup of
/// the sealed runs of `flows.request_id` (schema v8, `runs.rs`).
pub(crate) fn request_id_query(q: &FlowQuery, request_id: &str) -> (String, Vec<FlowParam>) {
    let (filter, mut params) = flow_filter(q, false, |n| format!("?{n}"));
    params.push(FlowParam::Text(request_id.to_owned()));
    let key = params.len();
    params.push(FlowParam::Int(i64::from(q.limit)));
    let sql = FLOW_REQUEST_IDS.lookup(&filter, key, params.len(), q.newest);
    (sql, params)
}

/// Binds one record's columns, in [`FLOW_COLUMNS`] order. Every parameter is bound on
/// every call, so nothing of the previous record can leak into this one.
fn bind_row(stmt: &mut rusqlite::Statement<'_>, seq: i64, r: &FlowRecord) -> rusqlite::Result<()> {
    let at = |i: usize| i + 1;
    stmt.raw_bind_parameter(at(0), seq)?;
    stmt.raw_bind_parameter(at(1), &r.id)?;
    stmt.raw_bind_parameter(at(2), to_micros(r.at))?;
    stmt.raw_bind_parameter(at(3), r.kind.as_str())?;
    stmt.raw_bind_parameter(at(4), r.direction.as_str())?;
    stmt.raw_bind_parameter(at(5), &r.source)?;
    stmt.raw_bind_parameter(at(6), &r.destination)?;
    stmt.raw_bind_parameter(at(7), &r.method)?;
    stmt.raw_bind_parameter(at(8), &r.route)?;
    stmt.raw_bind_parameter(at(9), r.status)?;
    stmt.raw_bind_parameter(at(10), r.verdict.as_str())?;
    stmt.raw_bind_parameter(at(11), &r.policy_revision)?;
    stmt.raw_bind_parameter(at(12), &r.rule)?;
    stmt.raw_bind_parameter(at(13), stored_count(r.latency_us))?;
    stmt.raw_bind_parameter(at(14), stored_count(r.bytes_in))?;
    stmt.raw_bind_parameter(at(15), stored_count(r.bytes_out))?;
    stmt.raw_bind_parameter(at(16), &r.user)?;
    stmt.raw_bind_parameter(at(17), &r.purpose)?;
    stmt.raw_bind_parameter(at(18), r.break_glass)?;
    stmt.raw_bind_parameter(at(19), &r.subject_pseudonym)?;
    stmt.raw_bind_parameter(at(20), &r.request_id)
}

fn raw_from_row(r: &Row<'_>) -> rusqlite::Result<RawFlow> {
    Ok(RawFlow {
        seq: r.get(0)?,
        id: r.get(1)?,
        at_us: r.get(2)?,
        kind: r.get(3)?,
        direction: r.get(4)?,
        source: r.get(5)?,
        destination: r.get(6)?,
        method: r.get(7)?,
        route: r.get(8)?,
        status: r.get(9)?,
        verdict: r.get(10)?,
        policy_revision: r.get(11)?,
        rule: r.get(12)?,
        latency_us: r.get(13)?,
        bytes_in: r.get(14)?,
        bytes_out: r.get(15)?,
        user: r.get(16)?,
        purpose: r.get(17)?,
        break_glass: r.get(18)?,
        subject_pseudonym: r.get(19)?,
        request_id: r.get(20)?,
    })
}
