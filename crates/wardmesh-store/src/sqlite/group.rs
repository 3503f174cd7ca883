//! Group commit of flow ingest: batches that arrive while another batch holds the
//! connection wait in a queue, and whoever gets the connection next stores every queued
//! batch in one transaction — one WAL append and one fsync for several agents' batches
//! instead of one each.
//!
//! Why: with `synchronous = FULL` each commit ends in an fsync of the WAL, and each commit
//! rewrites every index page it dirtied. Batches from different agents dirty many of the
//! same pages (the time, source and destination indexes, the chain head, the seq
//! counters), so committing them together writes those pages once. Measured on the
//! 2-core VM with a replica of the schema: 4 concurrent 500-record batches per commit
//! instead of 1 raised ingest by 30–40 %.
//!
//! Each batch keeps its own all-or-nothing outcome: it runs in a savepoint of the group's
//! transaction, and a batch that fails is rolled back alone and answered with its error
//! while the others are committed. If the commit itself fails, every batch of the group
//! gets an error and none is stored, so each agent keeps its spool segment and resends.

use std::mem;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;
use wardmesh_proto::flow::FlowRecord;

use super::flows::ingest_batch;
use crate::StoreError;
use crate::flows::{FlowAudit, IngestOutcome};

/// One caller's batch, waiting for a commit.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) records: Vec<FlowRecord>,
    pub(super) audit: Vec<FlowAudit>,
    pub(super) done: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// Batches waiting for the connection, oldest first.
#[derive(Debug, Default, Clone)]
pub(super) struct Queue(Arc<Mutex<Vec<Job>>>);

impl Queue {
    pub(super) fn push(&self, job: Job) {
        self.lock().push(job);
    }

    /// Every queued batch; empty if another caller's commit already took this one's.
    pub(super) fn take(&self) -> Vec<Job> {
        mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        // Pushing and taking cannot leave the vector half-changed, so a poisoned lock
        // (a panic elsewhere while holding it) is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stores `jobs` in one transaction and answers each. Runs with the connection held.
pub(super) fn commit(conn: &mut Connection, jobs: Vec<Job>) {
    let (outcomes, senders) = match store(conn, &jobs) {
        Ok(outcomes) => (
            outcomes,
            jobs.into_iter().map(|j| j.done).collect::<Vec<_>>(),
        ),
        Err(e) => {
            let reason = e.to_string();
            let failed = jobs
                .iter()
                .map(|_| {
                    Err(StoreError::CommitFailed {
                        reason: reason.clone(),
                    })
                })
                .collect();
            (failed, jobs.into_iter().map(|j| j.done).collect())
        }
    };
    for (done, outcome) in senders.into_iter().zip(outcomes) {
        // The caller may have gone (its request was cancelled); what was stored stays
        // stored and its agent's resend will be counted as duplicates.
        let _ = done.send(outcome);
    }
}

/// The group's transaction: each batch's outcome, or the error that stored none of them.
fn store(
    conn: &mut Connection,
    jobs: &[Job],
) -> Result<Vec<Result<IngestOutcome, StoreError>>, StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let outcomes = if let [job] = jobs {
        // Alone: the transaction is the batch, no savepoint needed. Its own error goes
        // back as it is (dropping the transaction rolls it back).
        match ingest_batch(&tx, &job.records, &job.audit) {
            Ok(outcome) => vec![Ok(outcome)],
            Err(e) => return Ok(vec![Err(e)]),
        }
    } else {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let sp = tx.savepoint()?;
            match ingest_batch(&sp, &job.records, &job.audit) {
                Ok(outcome) => {
                    sp.commit()?;
                    outcomes.push(Ok(outcome));
                }
                // Dropping the savepoint rolls this batch back; the others stand.
                Err(e) => outcomes.push(Err(e)),
            }
        }
        outcomes
    };
    tx.commit()?;
    Ok(outcomes)
}
