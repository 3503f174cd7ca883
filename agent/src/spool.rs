//! The durable flow-record spool (DESIGN.md §5): every flow record is written to local
//! disk before anyone relies on it, and shipped to the control plane from there, so a
//! control-plane outage, an agent restart or a `kill -9` loses nothing.
//!
//! Layout: `<dir>/<seq>.seg` segment files (20-digit, zero-padded seq), each a run of
//! frames `len u32 | crc32 u32 | payload` ([`frame`]; the payload is the record's JSON),
//! and `<dir>/ack`, the position up to which the control plane has acknowledged.
//!
//! Writing is group commit: [`Spool::append`] hands the encoded record to one writer
//! thread, which takes everything queued (up to a batch limit), writes it with one
//! `write`, `fdatasync`s once and then answers every appender, so `append` returning `Ok`
//! means the record is on disk, and under load one fsync covers many records without any
//! artificial delay. Segments roll at `segment_bytes`; past `max_bytes` on disk appends
//! fail with [`SpoolError::Full`] and the caller applies its route's mode (fail-closed:
//! refuse the request; fail-open: carry on, the spool counts the drop).
//!
//! Opening recovers: a record whose CRC does not match is skipped and counted (never a
//! crash), and a torn final record (crash mid-write) is truncated away. The reader half
//! ([`SpoolReader`]) hands the shipper batches from the acknowledged position; acking a
//! cursor persists it (atomic rename) and deletes the segments it covers. Records after
//! the ack position are sent again after a restart: ingest is idempotent by record id.

mod frame;
mod metrics;
mod reader;
mod recovery;
pub mod shipper;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::Registry;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use wardmesh_proto::flow::{FlowRecord, InvalidRecord, MAX_RECORD_BYTES};

pub use metrics::SpoolMetrics;
pub use reader::{SpoolBatch, SpoolReader};
pub use recovery::OpenReport;

/// Defaults for [`SpoolConfig`].
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_QUEUE: usize = 8192;
const DEFAULT_COMMIT_RECORDS: usize = 2048;

/// The `[telemetry]` spool settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes on disk (all segments, acknowledged or not) beyond which appends fail.
    pub max_bytes: u64,
    /// A segment is closed and the next one started at this size.
    pub segment_bytes: u64,
    /// Appends waiting for the writer; beyond it `append` waits and `try_enqueue` fails.
    pub queue: usize,
    /// At most this many records per write + fsync.
    pub commit_records: usize,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            queue: DEFAULT_QUEUE,
            commit_records: DEFAULT_COMMIT_RECORDS,
        }
    }

    pub fn validate(&self) -> Result<(), SpoolError> {
        let bad = |m: &str| Err(SpoolError::Config(m.to_owned()));
        if self.segment_bytes < 2 * MAX_RECORD_BYTES as u64 {
            return bad("segment_bytes must hold at least two maximal records (8 KiB)");
        }
        // The active segment is only deleted once closed, so its acknowledged part still
        // counts; leave room for a few.
        if self.max_bytes < 4 * self.segment_bytes {
            return bad("max_bytes must be at least 4 x segment_bytes");
        }
        if self.queue == 0 || self.commit_records == 0 {
            return bad("queue and commit_records must be at least 1");
        }
        Ok(())
    }
}

/// Why a spool operation failed. Cloneable: one write failure answers many appenders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the flow spool is full ({used} of {max} bytes on disk): records are not reaching the \
         control plane; check its reachability and the shipper's logs"
    )]
    Full { used: u64, max: u64 },
    #[error("the flow spool's queue is full ({0} records waiting for the writer)")]
    Busy(usize),
    #[error("flow record refused: {0}")]
    Invalid(InvalidRecord),
    #[error("flow spool i/o on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("the flow spool writer has stopped; restart the agent")]
    Closed,
    #[error("invalid spool configuration: {0}")]
    Config(String),
}

impl SpoolError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// A position in the spool: the next byte to read, in segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct SpoolCursor {
    pub segment: u64,
    pub offset: u64,
}

/// State shared by the appenders, the writer thread and the reader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: SpoolConfig,
    pub(crate) state: Mutex<State>,
    /// Woken after every commit (the shipper waits on it).
    pub(crate) committed: Notify,
    /// Set while the spool has no room for another maximal record.
    pub(crate) full: AtomicBool,
    pub(crate) metrics: SpoolMetrics,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Segment seq → durable (fsynced) length. The last one is the active segment.
    pub(crate) segments: BTreeMap<u64, u64>,
    pub(crate) ack: SpoolCursor,
    /// Intact records after `ack`.
    pub(crate) unacked_records: u64,
    /// Damaged frames already counted, so a re-read does not count them again.
    pub(crate) reported: HashSet<(u64, u64)>,
}

impl State {
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// Unacknowledged bytes: everything from the ack position on.
    pub(crate) fn depth_bytes(&self) -> u64 {
        self.disk_bytes()
            .saturating_sub(self.ack.offset)
            .saturating_sub(
                self.segments
                    .range(..self.ack.segment)
                    .map(|(_, len)| len)
                    .sum(),
            )
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of State is a few assignments: a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes depth and fullness after a change.
    pub(crate) fn publish(&self, state: &State) {
        let full =
            state.disk_bytes() + (frame::HEADER + MAX_RECORD_BYTES) as u64 > self.config.max_bytes;
        self.full.store(full, Ordering::Relaxed);
        self.metrics
            .set_depth(state.depth_bytes(), state.unacked_records, full);
    }

    pub(crate) fn segment_path(&self, seq: u64) -> PathBuf {
        segment_path(&self.dir, seq)
    }
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// One record on its way to the writer thread.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) frame: Vec<u8>,
    /// `None` for [`Spool::try_enqueue`]: nobody waits for the answer.
    pub(crate) done: Option<oneshot::Sender<Result<(), SpoolError>>>,
}

/// The appending half: cheap to clone, one per proxy task if you like. The writer thread
/// stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Spool {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `config.dir`, recovers it (see the module
    /// docs), starts the writer thread and registers the `wardmesh_spool_*` metrics.
    pub async fn open(
        config: SpoolConfig,
        registry: &Registry,
    ) -> Result<(Spool, SpoolReader, OpenReport), SpoolError> {
        config.validate()?;
        let metrics = SpoolMetrics::register(registry)
            .map_err(|e| SpoolError::Config(format!("registering spool metrics: {e}")))?;
        let dir = config.dir.clone();
        let (recovered, report) = tokio::task::spawn_blocking(move || recovery::recover(&dir))
            .await
            .map_err(|_| SpoolError::Closed)??;
        metrics.corrupt(report.corrupt_records);
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            config: config.clone(),
            state: Mutex::new(recovered.state),
            committed: Notify::new(),
            full: AtomicBool::new(false),
            metrics,
        });
        shared.publish(&shared.lock());
        let (tx, rx) = mpsc::channel(config.queue);
        writer::spawn(Arc::clone(&shared), recovered.active, rx)?;
        let reader = SpoolReader::new(Arc::clone(&shared));
        Ok((Spool { tx, shared }, reader, report))
    }

    /// Appends `record` and resolves once it is on disk (fsynced). Waits while the
    /// writer's queue is full. [`SpoolError::Full`] when the spool has no room: for a
    /// fail-closed route, refuse the request (503); for a fail-open one, carry on.
    pub async fn append(&self, record: &FlowRecord) -> Result<(), SpoolError> {
        let frame = encode(record)?;
        if self.is_full() {
            return Err(self.refuse_full());
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Request {
                frame,
                done: Some(done),
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Queues `record` without waiting (fail-open routes): `Ok` means queued, not yet
    /// durable. Refused, and counted as dropped, when the spool is full or its queue is.
    pub fn try_enqueue(&self, record: &FlowRecord) -> Result<(), SpoolError> {
        let frame = encode(record)?;
        if self.is_full() {
            self.shared.metrics.dropped();
            return Err(self.refuse_full());
        }
        self.tx
            .try_send(Request { frame, done: None })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.shared.metrics.dropped();
                    SpoolError::Busy(self.shared.config.queue)
                }
                mpsc::error::TrySendError::Closed(_) => SpoolError::Closed,
            })
    }

    /// True while another record would not fit: a fail-closed route can refuse before
    /// doing any work upstream.
    pub fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    fn refuse_full(&self) -> SpoolError {
        self.shared.metrics.refused_full();
        SpoolError::Full {
            used: self.shared.lock().disk_bytes(),
            max: self.shared.config.max_bytes,
        }
    }
}

/// Validates and frames a record (on the caller's task, off the writer thread).
fn encode(record: &FlowRecord) -> Result<Vec<u8>, SpoolError> {
    record.validate().map_err(SpoolError::Invalid)?;
    let json = serde_json::to_vec(record).map_err(|e| {
        SpoolError::Invalid(InvalidRecord {
            field: "record",
            reason: e.to_string(),
        })
    })?;
    let mut frame = Vec::with_capacity(frame::HEADER + json.len());
    frame::encode(&json, &mut frame);
    Ok(frame)
}

#[cfg(test)]
mod tests;
