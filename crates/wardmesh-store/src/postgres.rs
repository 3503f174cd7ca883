//! The shared backend: a small fixed pool of `tokio_postgres` clients. Several control-plane
//! replicas may share one database; everything that must agree across them (single-use
//! tokens, the deny-list revision, the audit chain) is decided inside PostgreSQL
//! transactions. Operations are in `postgres/ops.rs` and `postgres/audit.rs`.
//!
//! A client whose connection broke (server restart, network cut, backend terminated) is
//! replaced by a fresh connection the next time its slot is used, so the store recovers by
//! itself once the server is reachable again; the call in flight when it broke fails.

mod audit;
mod flows;
mod objects;
mod ops;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls};

use crate::StoreError;
use crate::schema::{CREATE_SCHEMA_VERSION, POSTGRES_MIGRATIONS, pending, to_micros};

/// Connections per store handle (per control-plane replica).
const POOL_SIZE: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` key serialising migrations between replicas ("wardmesh").
const MIGRATION_LOCK: i64 = 0x7761_7264_6d65_7368;

pub(crate) struct PostgresBackend {
    config: Config,
    url_redacted: String,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &self.url_redacted)
            .field("pool_size", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects once (so a wrong URL fails here, not on first use) and migrates.
    pub(crate) async fn open(mut config: Config, url_redacted: String) -> Result<Self, StoreError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("wardmesh");
        }
        let backend = Self {
            config,
            url_redacted,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        let mut client = backend.client().await?;
        migrate(&mut client).await?;
        drop(client);
        Ok(backend)
    }

    /// A healthy client from the pool: a free slot if there is one (round robin from the
    /// next slot), else waits for the next slot. Reconnects a closed or empty slot.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, StoreError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let free = (0..n).find_map(|i| self.slots[(start + i) % n].try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.slots[start].lock().await,
        };
        let client = match slot.take() {
            Some(client) if !client.is_closed() => client,
            stale => {
                if stale.is_some() {
                    tracing::info!(url = %self.url_redacted, "reconnecting to postgres");
                }
                self.connect().await?
            }
        };
        Ok(MutexGuard::map(slot, move |slot| slot.insert(client)))
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| StoreError::PostgresConnect {
                    url_redacted: self.url_redacted.clone(),
                    source,
                })?;
        let url = self.url_redacted.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(%url, error = %crate::error::describe_postgres(&e), "postgres connection lost");
            }
        });
        Ok(client)
    }

    pub(crate) async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        current_version(&*client).await
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // Replicas starting together take turns; the second finds nothing left to do.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(CREATE_SCHEMA_VERSION).await?;
    let current = current_version(&tx).await?;
    for m in pending(POSTGRES_MIGRATIONS, current)? {
        let failed = |e: tokio_postgres::Error| StoreError::Migration {
            version: m.version,
            reason: crate::error::describe_postgres(&e),
        };
        tx.batch_execute(m.sql).await.map_err(failed)?;
        if m.chain_existing_events {
            audit::chain_existing_events(&tx)
                .await
                .map_err(|e| StoreError::Migration {
                    version: m.version,
                    reason: e.to_string(),
                })?;
        }
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_us) VALUES ($1, $2)",
            &[&m.version, &to_micros(OffsetDateTime::now_utc())],
        )
        .await
        .map_err(failed)?;
        tracing::info!(version = m.version, "applied postgres schema migration");
    }
    tx.commit().await?;
    Ok(())
}

async fn current_version(client: &impl tokio_postgres::GenericClient) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?;
    Ok(row.try_get(0)?)
}
