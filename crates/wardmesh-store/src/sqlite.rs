//! The embedded backend: one SQLite connection behind a mutex, used from
//! `spawn_blocking`. Writes that read-then-write run in `BEGIN IMMEDIATE` transactions so
//! that several processes sharing the file serialise on the write lock (with the busy
//! timeout) instead of failing on a lock upgrade. The audit log's operations are in
//! `sqlite/audit.rs`.

pub(crate) mod audit;
mod checkpointer;
pub(crate) mod flows;
mod group;
mod objects;
mod runs;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};
use time::OffsetDateTime;

use crate::error::sqlite_conflict;
use crate::schema::{
    CREATE_SCHEMA_VERSION, SQLITE_MIGRATIONS, classify_unconsumed, from_micros, pending, to_micros,
};
use crate::{
    AgentStatus, CommitOutcome, ConsumeOutcome, Issuance, IssuanceCommit, JoinToken,
    JoinTokenRecord, OperatorToken, QuarantineEntry, StoreError,
};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct SqliteBackend {
    conn: Arc<Mutex<Connection>>,
    /// Flow batches waiting for the connection (see `sqlite/group.rs`).
    ingest_queue: group::Queue,
    /// Copies the WAL into a database file off the write path; none in memory.
    _checkpointer: Option<checkpointer::Checkpointer>,
}

impl SqliteBackend {
    /// Opens (creating if missing) the file, or an in-memory database for `None`.
    pub(crate) async fn open(path: Option<PathBuf>) -> Result<Self, StoreError> {
        let file = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_and_migrate(path)).await??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            ingest_queue: group::Queue::default(),
            _checkpointer: file.and_then(checkpointer::Checkpointer::start),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no half-done transaction behind
            // (rusqlite rolls back on drop), so a poisoned lock is still usable.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await?
    }

    pub(crate) async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| current_version(c)).await
    }

    pub(crate) async fn insert_join_token(&self, t: &JoinToken) -> Result<(), StoreError> {
        let t = t.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO join_tokens (token_hash, spiffe_id, created_at_us, expires_at_us, \
                 created_by, used_at_us) VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
                params![
                    t.token_hash,
                    t.spiffe_id,
                    to_micros(t.created_at),
                    to_micros(t.expires_at),
                    t.created_by
                ],
            )
            .map_err(|e| sqlite_conflict(e, "a join token with this hash already exists"))?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn consume_join_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        let hash = token_hash.to_owned();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let outcome = consume_in(&tx, &hash, now)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub(crate) async fn find_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let hash = token_hash.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT token_hash, spiffe_id, created_at_us, expires_at_us, created_by, \
                 used_at_us FROM join_tokens WHERE token_hash = ?1",
                [&hash],
                |r| {
                    Ok(JoinTokenRecord {
                        token: JoinToken {
                            token_hash: r.get(0)?,
                            spiffe_id: r.get(1)?,
                            created_at: ts(r, 2)?,
                            expires_at: ts(r, 3)?,
                            created_by: r.get(4)?,
                        },
                        used_at: opt_ts(r, 5)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub(crate) async fn quarantine(&self, e: &QuarantineEntry) -> Result<bool, StoreError> {
        let e = e.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO quarantine (spiffe_id, reason, created_at_us, created_by) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (spiffe_id) DO NOTHING",
                params![e.spiffe_id, e.reason, to_micros(e.created_at), e.created_by],
            )? == 1;
            if inserted {
                bump_deny_list_revision(&tx)?;
            } else {
                tx.execute(
                    "UPDATE quarantine SET reason = ?2, created_at_us = ?3, created_by = ?4 \
                     WHERE spiffe_id = ?1",
                    params![e.spiffe_id, e.reason, to_micros(e.created_at), e.created_by],
                )?;
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    pub(crate) async fn unquarantine(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        let id = spiffe_id.to_owned();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute("DELETE FROM quarantine WHERE spiffe_id = ?1", [&id])? > 0;
            if removed {
                bump_deny_list_revision(&tx)?;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    pub(crate) async fn is_quarantined(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        let id = spiffe_id.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM quarantine WHERE spiffe_id = ?1)",
                [&id],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub(crate) async fn list_quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(
                "SELECT spiffe_id, reason, created_at_us, created_by FROM quarantine \
                 ORDER BY spiffe_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(QuarantineEntry {
                    spiffe_id: r.get(0)?,
                    reason: r.get(1)?,
                    created_at: ts(r, 2)?,
                    created_by: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn deny_list_revision(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(c.query_row(
                "SELECT value FROM counters WHERE name = 'deny_list_revision'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub(crate) async fn record_issuance(&self, i: &Issuance) -> Result<(), StoreError> {
        let i = i.clone();
        self.run(move |c| insert_issuance(c, &i)).await
    }

    pub(crate) async fn commit_issuance(
        &self,
        commit: &IssuanceCommit,
    ) -> Result<CommitOutcome, StoreError> {
        let commit = commit.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((hash, now)) = &commit.consume_join_token {
                let outcome = consume_in(&tx, hash, *now)?;
                if !matches!(outcome, ConsumeOutcome::Consumed { .. }) {
                    tx.rollback()?;
                    return Ok(CommitOutcome::TokenRefused(outcome));
                }
            }
            insert_issuance(&tx, &commit.issuance)?;
            let seqs = audit::append_in(&tx, std::slice::from_ref(&commit.event))?;
            let event_seq = seqs
                .first()
                .copied()
                .ok_or_else(|| StoreError::Corrupt("an append returned no seq".to_owned()))?;
            tx.commit()?;
            Ok(CommitOutcome::Committed { event_seq })
        })
        .await
    }

    pub(crate) async fn list_issuances(
        &self,
        spiffe_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Issuance>, StoreError> {
        let id = spiffe_id.map(str::to_owned);
        self.run(move |c| {
            const COLUMNS: &str = "SELECT serial_hex, spiffe_id, not_before_us, not_after_us, \
                                   authority_id, attestation, issued_at_us FROM issuances";
            const ORDER: &str = "ORDER BY issued_at_us DESC, seq DESC LIMIT";
            let map = |r: &Row<'_>| {
                Ok(Issuance {
                    serial_hex: r.get(0)?,
                    spiffe_id: r.get(1)?,
                    not_before: ts(r, 2)?,
                    not_after: ts(r, 3)?,
                    authority_id: r.get(4)?,
                    attestation: r.get(5)?,
                    issued_at: ts(r, 6)?,
                })
            };
            let rows = match id {
                Some(id) => c
                    .prepare(&format!("{COLUMNS} WHERE spiffe_id = ?1 {ORDER} ?2"))?
                    .query_map(params![id, limit], map)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => c
                    .prepare(&format!("{COLUMNS} {ORDER} ?1"))?
                    .query_map(params![limit], map)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(rows)
        })
        .await
    }

    pub(crate) async fn upsert_agent(&self, a: &AgentStatus) -> Result<(), StoreError> {
        let a = a.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO agents (instance_id, spiffe_id, last_seen_us, cert_not_after_us, \
                 cert_authority_id, bundle_revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (instance_id) DO UPDATE SET spiffe_id = excluded.spiffe_id, \
                 last_seen_us = excluded.last_seen_us, \
                 cert_not_after_us = excluded.cert_not_after_us, \
                 cert_authority_id = excluded.cert_authority_id, \
                 bundle_revision = excluded.bundle_revision",
                params![
                    a.instance_id,
                    a.spiffe_id,
                    to_micros(a.last_seen),
                    to_micros(a.cert_not_after),
                    a.cert_authority_id,
                    a.bundle_revision
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentStatus>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(
                "SELECT spiffe_id, instance_id, last_seen_us, cert_not_after_us, \
                 cert_authority_id, bundle_revision FROM agents ORDER BY spiffe_id, instance_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AgentStatus {
                    spiffe_id: r.get(0)?,
                    instance_id: r.get(1)?,
                    last_seen: ts(r, 2)?,
                    cert_not_after: ts(r, 3)?,
                    cert_authority_id: r.get(4)?,
                    bundle_revision: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn insert_operator_token(&self, t: &OperatorToken) -> Result<(), StoreError> {
        let t = t.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO operator_tokens (token_hash, name, role, created_at_us) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![t.token_hash, t.name, t.role, to_micros(t.created_at)],
            )
            .map_err(|e| sqlite_conflict(e, "an operator token with this hash already exists"))?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn find_operator_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<OperatorToken>, StoreError> {
        let hash = token_hash.to_owned();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT token_hash, name, role, created_at_us FROM operator_tokens \
                 WHERE token_hash = ?1",
                [&hash],
                |r| {
                    Ok(OperatorToken {
                        token_hash: r.get(0)?,
                        name: r.get(1)?,
                        role: r.get(2)?,
                        created_at: ts(r, 3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub(crate) async fn count_operator_tokens(&self) -> Result<i64, StoreError> {
        self.run(|c| Ok(c.query_row("SELECT COUNT(*) FROM operator_tokens", [], |r| r.get(0))?))
            .await
    }
}

/// Uses up the token with this hash if it is unused and `now < expires_at`, inside the
/// caller's write transaction; otherwise says why not and changes nothing.
fn consume_in(
    tx: &Connection,
    hash: &str,
    now: OffsetDateTime,
) -> Result<ConsumeOutcome, StoreError> {
    let now_us = to_micros(now);
    let consumed: Option<String> = tx
        .prepare_cached(
            "UPDATE join_tokens SET used_at_us = ?1 WHERE token_hash = ?2 \
             AND used_at_us IS NULL AND expires_at_us > ?1 RETURNING spiffe_id",
        )?
        .query_row(params![now_us, hash], |r| r.get(0))
        .optional()?;
    if let Some(spiffe_id) = consumed {
        return Ok(ConsumeOutcome::Consumed { spiffe_id });
    }
    let row: Option<(Option<i64>, i64)> = tx
        .prepare_cached("SELECT used_at_us, expires_at_us FROM join_tokens WHERE token_hash = ?1")?
        .query_row(params![hash], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((used, expires)) => {
            classify_unconsumed(used, expires, now_us)?.unwrap_or(ConsumeOutcome::NotFound)
        }
        None => ConsumeOutcome::NotFound,
    })
}

fn insert_issuance(c: &Connection, i: &Issuance) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO issuances (serial_hex, spiffe_id, not_before_us, not_after_us, \
         authority_id, attestation, issued_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        i.serial_hex,
        i.spiffe_id,
        to_micros(i.not_before),
        to_micros(i.not_after),
        i.authority_id,
        i.attestation,
        to_micros(i.issued_at)
    ])
    .map_err(|e| {
        sqlite_conflict(
            e,
            "this authority already recorded a certificate with this serial",
        )
    })?;
    Ok(())
}

fn open_and_migrate(path: Option<PathBuf>) -> Result<Connection, StoreError> {
    let mut conn = match &path {
        Some(path) => Connection::open(path).map_err(|source| StoreError::SqliteOpen {
            path: path.display().to_string(),
            source,
        })?,
        None => Connection::open_in_memory()?,
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if path.is_some() && !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "sqlite store is not in WAL mode");
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    // Durability stays SQLite's default, synchronous = FULL: in WAL mode every commit
    // fsyncs the WAL, so an acknowledged ingest batch or audit entry survives a power
    // cut. (NORMAL would skip that fsync and could lose the last commits; the audit log
    // must not, so the store does not use it.)
    //
    // Page cache: 16 MiB instead of the default 2 MiB, so the hot index pages of flow
    // ingest (the id and subject indexes take random keys) stay in memory instead of
    // being spilled and read back. Per connection; the store holds one.
    conn.pragma_update(None, "cache_size", -16 * 1024)?;
    // Checkpoint the WAL into the database every 8000 pages (32 MiB) instead of 1000: a
    // hot page written by many commits is copied once per checkpoint, and the WAL file is
    // reset less often (flow ingest: the largest single gain, ≈ +40%). Crash safety is
    // unchanged: committed frames sit in the fsynced WAL until checkpointed. The WAL
    // file grows to about this size between checkpoints.
    conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
    // Temporary files in memory: group commit (sqlite/group.rs) runs each batch in a
    // savepoint, whose rollback journal would otherwise spill to a temp file on disk.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(CREATE_SCHEMA_VERSION)?;
    let current = current_version(&tx)?;
    for m in pending(SQLITE_MIGRATIONS, current)? {
        let failed = |e: rusqlite::Error| StoreError::Migration {
            version: m.version,
            reason: e.to_string(),
        };
        tx.execute_batch(m.sql).map_err(failed)?;
        if m.chain_existing_events {
            audit::chain_existing_events(&tx).map_err(|e| StoreError::Migration {
                version: m.version,
                reason: e.to_string(),
            })?;
        }
        if m.version == runs::SCHEMA_VERSION {
            runs::seal_existing(&tx).map_err(|e| StoreError::Migration {
                version: m.version,
                reason: e.to_string(),
            })?;
        }
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_us) VALUES (?1, ?2)",
            params![m.version, to_micros(OffsetDateTime::now_utc())],
        )
        .map_err(failed)?;
        tracing::info!(version = m.version, "applied sqlite schema migration");
    }
    tx.commit()?;
    Ok(())
}

fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?)
}

fn bump_deny_list_revision(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'deny_list_revision'",
        [],
    )?;
    Ok(())
}

/// Reads a microsecond timestamp column.
fn ts(row: &Row<'_>, idx: usize) -> rusqlite::Result<OffsetDateTime> {
    let micros: i64 = row.get(idx)?;
    micros_to_ts(micros, idx)
}

/// Reads a nullable microsecond timestamp column.
fn opt_ts(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<OffsetDateTime>> {
    let micros: Option<i64> = row.get(idx)?;
    micros.map(|micros| micros_to_ts(micros, idx)).transpose()
}

fn micros_to_ts(micros: i64, idx: usize) -> rusqlite::Result<OffsetDateTime> {
    from_micros(micros).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Integer, Box::new(e))
    })
}
