//! The shipper's half of the spool: batches from the acknowledged position (so a failed
//! send just asks again and gets the same records), and acks that persist the position
//! and delete the segments it has passed. Only durable bytes are read.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use wardmesh_proto::flow::FlowRecord;

use super::frame::{Step, step};
use super::recovery::{sync_dir, write_ack};
use super::{Shared, SpoolCursor, SpoolError};

/// Records read from the spool and where acknowledging them moves the ack position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolBatch {
    pub records: Vec<FlowRecord>,
    pub cursor: SpoolCursor,
}

/// Reads and acknowledges. Meant for one shipper task.
#[derive(Debug, Clone)]
pub struct SpoolReader {
    shared: Arc<Shared>,
}

impl SpoolReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Up to `max` records from the ack position on (empty when everything is acked).
    pub async fn next_batch(&self, max: usize) -> Result<SpoolBatch, SpoolError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || read_batch(&shared, max))
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    /// Marks everything before `cursor` as delivered: persists it and deletes the
    /// segments before it. Acking an older cursor than the current one changes nothing.
    pub async fn ack(&self, batch: &SpoolBatch) -> Result<(), SpoolError> {
        let shared = Arc::clone(&self.shared);
        let (cursor, count) = (batch.cursor, batch.records.len() as u64);
        tokio::task::spawn_blocking(move || ack(&shared, cursor, count))
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    /// Resolves after the next commit, or after `timeout`.
    pub async fn wait_for_records(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.committed.notified()).await;
    }

    /// The spool directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// Intact records written and not yet acknowledged.
    pub fn pending_records(&self) -> u64 {
        self.shared.lock().unacked_records
    }
}

fn read_batch(shared: &Shared, max: usize) -> Result<SpoolBatch, SpoolError> {
    let (mut cursor, segments) = {
        let state = shared.lock();
        let segments: Vec<(u64, u64)> = state
            .segments
            .range(state.ack.segment..)
            .map(|(&s, &l)| (s, l))
            .collect();
        (state.ack, segments)
    };
    let mut records = Vec::new();
    for (i, &(seq, durable)) in segments.iter().enumerate() {
        if seq > cursor.segment {
            cursor = SpoolCursor {
                segment: seq,
                offset: 0,
            };
        }
        if cursor.offset >= durable {
            continue;
        }
        let path = shared.segment_path(seq);
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(cursor.offset))?;
                f.take(durable - cursor.offset).read_to_end(&mut buf)
            })
            .map_err(|e| SpoolError::io(&path, &e))?;
        let base = cursor.offset;
        let mut pos = 0usize;
        while records.len() < max {
            match step(&buf, pos) {
                Step::Record { payload, next } => {
                    match serde_json::from_slice::<FlowRecord>(payload) {
                        Ok(r) => records.push(r),
                        Err(e) => report(
                            shared,
                            seq,
                            base + pos as u64,
                            &format!("not a flow record: {e}"),
                        ),
                    }
                    pos = next;
                }
                Step::Skip { from, to } => {
                    report(shared, seq, base + from as u64, "crc or length mismatch");
                    pos = to;
                }
                Step::Tail { from } => {
                    report(
                        shared,
                        seq,
                        base + from as u64,
                        "damaged to the end of the segment",
                    );
                    pos = buf.len();
                }
                Step::End => break,
            }
        }
        cursor.offset = base + pos as u64;
        let more_segments = i + 1 < segments.len();
        if records.len() >= max || !more_segments {
            break;
        }
    }
    Ok(SpoolBatch { records, cursor })
}

/// Counts a damaged record once, however often it is read past.
fn report(shared: &Shared, seq: u64, offset: u64, what: &str) {
    if shared.lock().reported.insert((seq, offset)) {
        tracing::warn!(
            segment = seq,
            offset,
            reason = what,
            "skipped a damaged flow record in the spool"
        );
        shared.metrics.corrupt(1);
    }
}

fn ack(shared: &Shared, cursor: SpoolCursor, count: u64) -> Result<(), SpoolError> {
    let (cursor, doomed) = {
        let state = shared.lock();
        if cursor <= state.ack {
            return Ok(());
        }
        // At the end of a closed segment: move to the next so the closed one can go.
        let mut cursor = cursor;
        while let Some((&next, _)) = state.segments.range(cursor.segment + 1..).next() {
            if state.segments.get(&cursor.segment) == Some(&cursor.offset) {
                cursor = SpoolCursor {
                    segment: next,
                    offset: 0,
                };
            } else {
                break;
            }
        }
        let doomed: Vec<u64> = state
            .segments
            .range(..cursor.segment)
            .map(|(&s, _)| s)
            .collect();
        (cursor, doomed)
    };
    // Ack first: a crash before the deletions leaves segments that recovery removes.
    write_ack(&shared.dir, cursor)?;
    for seq in &doomed {
        let path = shared.segment_path(*seq);
        std::fs::remove_file(&path).map_err(|e| SpoolError::io(&path, &e))?;
    }
    if !doomed.is_empty() {
        sync_dir(&shared.dir)?;
    }
    let mut state = shared.lock();
    state.ack = cursor;
    for seq in doomed {
        state.segments.remove(&seq);
    }
    state.reported.retain(|&(seq, _)| seq >= cursor.segment);
    state.unacked_records = state.unacked_records.saturating_sub(count);
    shared.publish(&state);
    Ok(())
}
