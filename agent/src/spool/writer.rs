//! The writer thread: group commit. It blocks for the first queued record, takes whatever
//! else is already queued (up to `commit_records`), checks each against the size cap,
//! writes the frames with one `write` per segment touched, `fdatasync`s, publishes the new
//! durable lengths and only then answers the appenders. Blocking file I/O stays on this
//! one OS thread, off the async runtime.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::recovery::sync_dir;
use super::{Request, Shared, SpoolError};

pub(crate) fn spawn(
    shared: Arc<Shared>,
    (seq, len): (u64, u64),
    rx: mpsc::Receiver<Request>,
) -> Result<(), SpoolError> {
    let path = shared.segment_path(seq);
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, &e))?;
    let writer = Writer {
        shared,
        file,
        seq,
        len,
    };
    std::thread::Builder::new()
        .name("wardmesh-spool".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| SpoolError::Io {
            path,
            reason: format!("cannot start the spool writer thread: {e}"),
        })?;
    Ok(())
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    seq: u64,
    /// Durable length of the active segment.
    len: u64,
}

type Answer = Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let max = self.shared.config.commit_records;
        let mut batch = Vec::with_capacity(max);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
        tracing::debug!("flow spool writer stopped: every handle was dropped");
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
        let max_bytes = self.shared.config.max_bytes;
        let mut used = self.shared.lock().disk_bytes();
        let mut buf = Vec::new();
        let mut accepted: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut written = 0u64;
        let start = Instant::now();
        let mut result = Ok(());
        for req in batch.drain(..) {
            let n = req.frame.len() as u64;
            if used + n > max_bytes {
                answer(
                    req.done,
                    Err(SpoolError::Full {
                        used,
                        max: max_bytes,
                    }),
                    &self.shared,
                );
                continue;
            }
            if result.is_ok()
                && self.len + buf.len() as u64 + n > self.shared.config.segment_bytes
                && self.len + buf.len() as u64 > 0
            {
                result = self.flush(&mut buf).and_then(|()| self.roll());
            }
            buf.extend_from_slice(&req.frame);
            used += n;
            written += 1;
            accepted.push(req.done);
        }
        if result.is_ok() {
            result = self.flush(&mut buf);
        }
        self.shared.metrics.fsync(start.elapsed());
        match result {
            Ok(()) => {
                let mut state = self.shared.lock();
                state.unacked_records += written;
                self.shared.publish(&state);
                drop(state);
                self.shared.committed.notify_one();
                for done in accepted {
                    answer(done, Ok(()), &self.shared);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = accepted.len(), "flow spool write failed");
                for done in accepted {
                    answer(done, Err(e.clone()), &self.shared);
                }
            }
        }
    }

    /// Writes and fsyncs `buf` to the active segment, then publishes its length. On
    /// failure cuts the segment back to its last durable length so no half-written frame
    /// sits before later ones.
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.shared.segment_path(self.seq);
        let res = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            let _ = self.file.set_len(self.len);
            buf.clear();
            return Err(SpoolError::io(&path, &e));
        }
        self.len += buf.len() as u64;
        buf.clear();
        self.shared.lock().segments.insert(self.seq, self.len);
        Ok(())
    }

    /// Closes the active segment and starts the next.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let seq = self.seq + 1;
        let path = self.shared.segment_path(seq);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, &e))?;
        sync_dir(&self.shared.dir)?;
        self.shared.lock().segments.insert(seq, 0);
        self.file = file;
        self.seq = seq;
        self.len = 0;
        Ok(())
    }
}

/// Answers one appender; a record queued by `try_enqueue` that could not be written is
/// counted as dropped (nobody else will know).
fn answer(done: Answer, result: Result<(), SpoolError>, shared: &Shared) {
    match done {
        Some(done) => {
            if matches!(result, Err(SpoolError::Full { .. })) {
                shared.metrics.refused_full();
            }
            let _ = done.send(result);
        }
        None if result.is_err() => shared.metrics.dropped(),
        None => {}
    }
}
