//! Opening a spool directory: read the ack position, drop segments it already covers,
//! scan the rest (count intact records, skip and count damaged ones), truncate a torn
//! tail off the last segment, and pick the segment the writer appends to. Also the ack
//! file itself: written to a temporary file, fsynced, renamed over, directory fsynced.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use super::frame::{Step, step};
use super::{SpoolCursor, SpoolError, State, segment_path};

const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";

/// What recovery found; logged by the caller and returned to tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpenReport {
    pub segments: usize,
    /// Intact records not yet acknowledged (they will be shipped).
    pub pending_records: u64,
    /// Damaged records skipped (CRC or length mismatch).
    pub corrupt_records: u64,
    /// Bytes of a torn final record cut off the last segment.
    pub truncated_bytes: u64,
}

/// The recovered state and the writer's starting point.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) state: State,
    /// The segment to append to and its length.
    pub(crate) active: (u64, u64),
}

pub(crate) fn recover(dir: &Path) -> Result<(Recovered, OpenReport), SpoolError> {
    fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, &e))?;
    let ack = read_ack(dir)?;
    let mut report = OpenReport::default();
    let mut segments = BTreeMap::new();
    let mut reported = HashSet::new();
    let seqs = list_segments(dir)?;
    let last = seqs.last().copied();
    for seq in seqs {
        let path = segment_path(dir, seq);
        if seq < ack.segment {
            // Acknowledged; the crash came between persisting the ack and deleting.
            fs::remove_file(&path).map_err(|e| SpoolError::io(&path, &e))?;
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| SpoolError::io(&path, &e))?;
        let start = if seq == ack.segment { ack.offset } else { 0 };
        let mut pos = 0usize;
        let mut len = bytes.len() as u64;
        loop {
            match step(&bytes, pos) {
                Step::Record { next, .. } => {
                    if pos as u64 >= start {
                        report.pending_records += 1;
                    }
                    pos = next;
                }
                Step::Skip { from, to } => {
                    report.corrupt_records += 1;
                    reported.insert((seq, from as u64));
                    pos = to;
                }
                Step::Tail { from } if Some(seq) == last => {
                    truncate(&path, from as u64)?;
                    report.truncated_bytes += len - from as u64;
                    len = from as u64;
                    break;
                }
                Step::Tail { from } => {
                    report.corrupt_records += 1;
                    reported.insert((seq, from as u64));
                    break;
                }
                Step::End => break,
            }
        }
        segments.insert(seq, len);
    }
    // Never reuse a seq at or before the ack position: its offset would skip new records.
    let active = match segments.last_key_value() {
        Some((&seq, &len)) => (seq, len),
        None => {
            let seq = ack.segment + 1;
            let path = segment_path(dir, seq);
            File::create(&path).map_err(|e| SpoolError::io(&path, &e))?;
            sync_dir(dir)?;
            segments.insert(seq, 0);
            (seq, 0)
        }
    };
    report.segments = segments.len();
    let state = State {
        segments,
        ack,
        unacked_records: report.pending_records,
        reported,
    };
    Ok((Recovered { state, active }, report))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, &e))? {
        let entry = entry.map_err(|e| SpoolError::io(dir, &e))?;
        let name = entry.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn truncate(path: &Path, len: u64) -> Result<(), SpoolError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| SpoolError::io(path, &e))?;
    f.set_len(len).map_err(|e| SpoolError::io(path, &e))?;
    f.sync_all().map_err(|e| SpoolError::io(path, &e))
}

/// `segment offset`, one line. A missing file is the start of a new spool.
fn read_ack(dir: &Path) -> Result<SpoolCursor, SpoolError> {
    let path = dir.join(ACK_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SpoolCursor::default()),
        Err(e) => return Err(SpoolError::io(&path, &e)),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset)), None) => Ok(SpoolCursor { segment, offset }),
        _ => Err(SpoolError::Io {
            path,
            reason: format!(
                "the ack file holds {text:?}, not `<segment> <offset>`; move it away to \
                 resend everything still spooled (ingest drops duplicates)"
            ),
        }),
    }
}

/// Persists the ack position so that it survives a crash at any point.
pub(crate) fn write_ack(dir: &Path, cursor: SpoolCursor) -> Result<(), SpoolError> {
    let tmp = dir.join(ACK_TMP);
    let mut f = File::create(&tmp).map_err(|e| SpoolError::io(&tmp, &e))?;
    writeln!(f, "{} {}", cursor.segment, cursor.offset).map_err(|e| SpoolError::io(&tmp, &e))?;
    f.sync_all().map_err(|e| SpoolError::io(&tmp, &e))?;
    let path = dir.join(ACK_FILE);
    fs::rename(&tmp, &path).map_err(|e| SpoolError::io(&path, &e))?;
    sync_dir(dir)
}

/// Makes a created, renamed or removed directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, &e))
}
