//! A background thread that copies committed WAL frames into the database file, so the
//! writer does not have to.
//!
//! Why: with only auto-checkpoints the committing connection copies the WAL into the
//! database (and fsyncs it) itself, on the ingest path, while the second core idles —
//! about a tenth of flow ingest's time in the profile. This thread runs passive
//! checkpoints on its own connection every [`INTERVAL`]; a passive checkpoint never
//! blocks the writer or readers and copies only frames every reader is done with. The
//! writer keeps its auto-checkpoint as the backstop that bounds the WAL (and resets it
//! once a checkpoint has caught up); after this thread's copies it finds little left to
//! do. Crash safety is unchanged: a frame leaves the WAL only after it is in the
//! database file and that file is fsynced.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How often to checkpoint: at 50k records/s, about 2,500 records' pages at a time.
const INTERVAL: Duration = Duration::from_millis(50);

/// Stops the thread when dropped (with the store).
#[derive(Debug)]
pub(super) struct Checkpointer {
    _stop: Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing `path` (a WAL-mode database the caller has opened and
    /// migrated). Errors are logged, not fatal: the writer's auto-checkpoint still
    /// bounds the WAL without this thread.
    pub(super) fn start(path: PathBuf) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let conn = match open(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "sqlite checkpointer not started; the writer checkpoints alone");
                        return;
                    }
                };
                // Disconnected (the store was dropped) ends the loop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "passive wal checkpoint failed; retrying later");
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Self { _stop: stop }),
            Err(e) => {
                tracing::warn!(error = %e, "sqlite checkpointer thread not started; the writer checkpoints alone");
                None
            }
        }
    }
}

fn open(path: &PathBuf) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_millis(100))?;
    // This connection never writes pages of its own, so it must not checkpoint on
    // commit either; its only job is the passive checkpoint above.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}
