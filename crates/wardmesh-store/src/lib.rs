//! Storage for the wardmesh control plane. This crate owns the durable state behind
//! identity issuance and operator access: single-use join tokens, the quarantine
//! (deny-list) and its revision counter, the record of issued certificates, the last status
//! of every agent, the hash-chained audit log (identity/CA/operator events, operator API
//! calls, later PHI accesses) with its signed checkpoints, and operator API tokens. One API, [`Store`], runs on two backends chosen by URL: an embedded
//! SQLite file (the default, one process) or PostgreSQL (several control-plane replicas
//! sharing one database). Opening a store applies the schema migrations it is missing.
//!
//! Invariants the control plane relies on, on both backends and across replicas: a join
//! token is consumed at most once; the deny-list revision changes with every change of the
//! quarantine set and only then; event ids (audit `seq`) are gapless and strictly
//! increasing in commit order, so paging with `after_id` never skips an event; and every
//! appended event is chained onto the entry committed before it ([`chain`] defines the
//! hash), so one database shared by several replicas holds one chain.

mod audit_sql;
pub mod chain;
mod error;
mod flows;
mod location;
pub mod objects;
mod postgres;
mod schema;
mod sqlite;
mod types;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use time::OffsetDateTime;

pub use error::StoreError;
pub use flows::{FlowAudit, FlowQuery, IdFilter, IngestOutcome, IngestRate, ingest_benchmark};
pub use location::redact_url;
pub use objects::{ObjectChange, ObjectChangeOutcome, ObjectWrite, StoredObject};
pub use schema::SCHEMA_VERSION;
pub use types::{
    AgentStatus, AuditAnchor, AuditEntry, AuditQuery, ChainHead, Checkpoint, CommitOutcome,
    ConsumeOutcome, Event, Issuance, IssuanceCommit, JoinToken, JoinTokenRecord, OperatorToken,
    PruneOutcome, QuarantineEntry, SubjectLookupCheck,
};

use location::Location;
use postgres::PostgresBackend;
use sqlite::SqliteBackend;

/// A handle to the control plane's storage. Cloning is cheap and clones share the
/// connection(s). Every method is safe to call concurrently.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per store, behind the handle's Arc"
)]
enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

/// Calls the same method on whichever backend the store uses.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date:
    /// `sqlite:<path>` (the file is created if missing; WAL mode), `sqlite::memory:`
    /// (private to this handle and its clones; for tests), or `postgres://...` /
    /// `postgresql://...` (libpq-style URL, without TLS). Errors never contain the
    /// password of the URL.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let backend = match location::parse(url)? {
            Location::SqliteMemory => Backend::Sqlite(SqliteBackend::open(None).await?),
            Location::SqliteFile(path) => Backend::Sqlite(SqliteBackend::open(Some(path)).await?),
            Location::Postgres(config) => {
                Backend::Postgres(PostgresBackend::open(*config, redact_url(url.trim())).await?)
            }
        };
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The schema version of the database (equal to [`SCHEMA_VERSION`] after `open`).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        dispatch!(self.schema_version())
    }

    // ---- join tokens ------------------------------------------------------------------

    /// Stores a new join token; [`StoreError::Conflict`] if its hash already exists.
    pub async fn insert_join_token(&self, token: &JoinToken) -> Result<(), StoreError> {
        dispatch!(self.insert_join_token(token))
    }

    /// Uses up the token with this hash if it is unused and `now < expires_at`. Atomic:
    /// among any number of concurrent callers (on any replica) at most one gets
    /// [`ConsumeOutcome::Consumed`]. A used token reports `AlreadyUsed` even once expired.
    pub async fn consume_join_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        dispatch!(self.consume_join_token(token_hash, now))
    }

    /// The token with this hash and when it was used, if it exists. Read-only: looking a
    /// token up neither consumes it nor checks its expiry (compare `expires_at` yourself);
    /// only [`Store::consume_join_token`] decides whether a bearer may use it.
    pub async fn find_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        dispatch!(self.find_join_token(token_hash))
    }

    // ---- quarantine -------------------------------------------------------------------

    /// Quarantines `entry.spiffe_id`; returns `true` if it was not quarantined before.
    /// Quarantining an already quarantined ID replaces its reason, time and author but
    /// leaves the deny-list revision alone (the set did not change).
    pub async fn quarantine(&self, entry: &QuarantineEntry) -> Result<bool, StoreError> {
        dispatch!(self.quarantine(entry))
    }

    /// Lifts a quarantine; returns `false` if the ID was not quarantined.
    pub async fn unquarantine(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        dispatch!(self.unquarantine(spiffe_id))
    }

    pub async fn is_quarantined(&self, spiffe_id: &str) -> Result<bool, StoreError> {
        dispatch!(self.is_quarantined(spiffe_id))
    }

    /// Every quarantined ID, sorted by SPIFFE ID.
    pub async fn list_quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        dispatch!(self.list_quarantined())
    }

    /// A counter (0 for a new database) that increases by one with every quarantine that
    /// adds an ID and every unquarantine that removes one, in the same transaction.
    /// Agents compare it with the revision of the deny-list they hold.
    pub async fn deny_list_revision(&self) -> Result<i64, StoreError> {
        dispatch!(self.deny_list_revision())
    }

    // ---- issuances --------------------------------------------------------------------

    /// Records an issued certificate; [`StoreError::Conflict`] if the same authority
    /// already recorded this serial.
    pub async fn record_issuance(&self, issuance: &Issuance) -> Result<(), StoreError> {
        dispatch!(self.record_issuance(issuance))
    }

    /// Commits one issuance in a single transaction: consumes the join token (if
    /// `commit.consume_join_token` names one), records the issuance and appends its audit
    /// event to the chain, exactly as [`Store::consume_join_token`],
    /// [`Store::record_issuance`] and [`Store::append_event`] would one after the other,
    /// but all or nothing. If the token cannot be consumed the transaction is rolled back
    /// and [`CommitOutcome::TokenRefused`] says why; nothing is written. Any error also
    /// leaves nothing written (the token stays unused). The token is checked first, so
    /// among concurrent commits spending one token at most one is `Committed`.
    pub async fn commit_issuance(
        &self,
        commit: &IssuanceCommit,
    ) -> Result<CommitOutcome, StoreError> {
        dispatch!(self.commit_issuance(commit))
    }

    /// Up to `limit` issuances, newest `issued_at` first (ties: most recently recorded
    /// first), optionally only those for one SPIFFE ID.
    pub async fn list_issuances(
        &self,
        spiffe_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Issuance>, StoreError> {
        dispatch!(self.list_issuances(spiffe_id, limit))
    }

    // ---- agents -----------------------------------------------------------------------

    /// Inserts or replaces the status of the agent with `status.instance_id`.
    pub async fn upsert_agent(&self, status: &AgentStatus) -> Result<(), StoreError> {
        dispatch!(self.upsert_agent(status))
    }

    /// Every agent's last status, sorted by SPIFFE ID then instance ID.
    pub async fn list_agents(&self) -> Result<Vec<AgentStatus>, StoreError> {
        dispatch!(self.list_agents())
    }

    // ---- events: the audit log ------------------------------------------------------

    /// Appends an event to the audit log and returns its seq (`event.id` is ignored).
    /// Seqs are gapless and strictly increasing in commit order; the entry is chained onto
    /// the one committed before it, in the same transaction.
    pub async fn append_event(&self, event: &Event) -> Result<i64, StoreError> {
        let seqs = dispatch!(self.append_events(std::slice::from_ref(event)))?;
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".to_owned()))
    }

    /// Appends several events in one transaction (consecutive seqs, in slice order) and
    /// returns their seqs. Cheaper per event than one append each: batch ingest uses it.
    pub async fn append_events(&self, events: &[Event]) -> Result<Vec<i64>, StoreError> {
        dispatch!(self.append_events(events))
    }

    /// Up to `limit` events with `id > after_id`, ascending. Page by passing the last id
    /// seen; start with 0.
    pub async fn list_events(&self, after_id: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let q = AuditQuery {
            after: after_id,
            limit,
            ..AuditQuery::default()
        };
        Ok(self
            .audit_entries(&q)
            .await?
            .into_iter()
            .map(Event::from)
            .collect())
    }

    /// Audit entries (events with their chain hashes) matching `q`, ascending by seq.
    pub async fn audit_entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self.audit_entries(q))
    }

    /// The last appended entry's seq and hash ([`ChainHead::genesis`] for an empty log).
    pub async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        dispatch!(self.audit_head())
    }

    /// Stores a signed checkpoint and returns it with its id (`checkpoint.id` is ignored).
    /// [`StoreError::Rejected`] unless `head_hash` is the hash the log holds at `seq`.
    pub async fn append_checkpoint(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<Checkpoint, StoreError> {
        dispatch!(self.append_checkpoint(checkpoint))
    }

    /// Up to `limit` checkpoints with `id > after_id`, ascending by id.
    pub async fn list_checkpoints(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        dispatch!(self.list_checkpoints(after_id, limit))
    }

    /// The checkpoint with the highest seq, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        dispatch!(self.latest_checkpoint())
    }

    /// Checks the structure that answers queries by subject (the accounting of
    /// disclosures) against the log: `Some(seq)` names the first entry such a query would
    /// miss. On SQLite that structure is derived data (sealed runs, `sqlite/runs.rs`) that
    /// a plain SQL statement could edit without touching the chain, so `wardctl audit
    /// verify` asks for this; on PostgreSQL it is an index the database keeps (always
    /// `None`). Reads every entry once.
    pub async fn first_entry_missing_from_subject_lookup(
        &self,
    ) -> Result<SubjectLookupCheck, StoreError> {
        dispatch!(self.first_entry_missing_from_subject_lookup())
    }

    /// The checkpoint a pruned log starts from; `None` if the log was never pruned.
    pub async fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError> {
        dispatch!(self.audit_anchor())
    }

    /// Retention: deletes every entry up to the checkpoint's seq and the older checkpoints,
    /// and makes the checkpoint the log's anchor, so the rest stays verifiable from it.
    /// Refused if the checkpoint does not match the log, or is older than the anchor;
    /// pruning again at the anchor changes nothing.
    pub async fn prune_audit(
        &self,
        checkpoint_id: i64,
        now: OffsetDateTime,
    ) -> Result<PruneOutcome, StoreError> {
        dispatch!(self.prune_audit(checkpoint_id, now))
    }

    // ---- configuration objects ------------------------------------------------------

    /// Commits `change` in one transaction: every write, the generation bump of every kind
    /// it touches, and its audit entry, or none of them. [`StoreError::Conflict`] if a
    /// `Create` names an existing object; [`StoreError::Rejected`] for an oversized value
    /// or blob (checked before anything is written).
    pub async fn change_objects(
        &self,
        change: &ObjectChange,
    ) -> Result<ObjectChangeOutcome, StoreError> {
        for write in &change.writes {
            write.check_size()?;
        }
        dispatch!(self.change_objects(change))
    }

    /// One object with its blob, if it exists.
    pub async fn get_object(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        dispatch!(self.get_object(kind, name))
    }

    /// Every object of `kind`, sorted by name, without blobs.
    pub async fn list_objects(&self, kind: &str) -> Result<Vec<StoredObject>, StoreError> {
        dispatch!(self.list_objects(kind))
    }

    /// The generation of `kind`: 0 until its first write, then +1 per committed change
    /// that touches it.
    pub async fn object_generation(&self, kind: &str) -> Result<i64, StoreError> {
        dispatch!(self.object_generation(kind))
    }

    // ---- flow telemetry ---------------------------------------------------------------

    /// Stores a batch of flow records in one transaction. Idempotent by record id: a
    /// record whose id is already stored (or repeats within the batch) is counted as a
    /// duplicate and left as it was. Callers validate records first
    /// ([`FlowRecord::validate`](wardmesh_proto::flow::FlowRecord::validate)).
    pub async fn ingest_flows(
        &self,
        records: &[wardmesh_proto::flow::FlowRecord],
    ) -> Result<IngestOutcome, StoreError> {
        dispatch!(self.ingest_flows(records, &[]))
    }

    /// [`Store::ingest_flows`] plus, in the same transaction, the audit events of the
    /// records it inserted (chained like [`Store::append_events`], in batch order). An
    /// event whose record is a duplicate is not appended: it was when the record was new.
    pub async fn ingest_flows_audited(
        &self,
        records: &[wardmesh_proto::flow::FlowRecord],
        audit: &[FlowAudit],
    ) -> Result<IngestOutcome, StoreError> {
        dispatch!(self.ingest_flows(records, audit))
    }

    /// Flows matching `q`, ascending by ingest seq. Seqs commit in order (on every
    /// replica), so paging or following with `after = <last seq seen>` never skips one.
    pub async fn query_flows(
        &self,
        q: &FlowQuery,
    ) -> Result<Vec<wardmesh_proto::flow::StoredFlow>, StoreError> {
        dispatch!(self.query_flows(q))
    }

    /// Retention: deletes every flow recorded before `before`; returns how many.
    pub async fn prune_flows(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        dispatch!(self.prune_flows(before))
    }

    // ---- operator tokens --------------------------------------------------------------

    /// Stores an operator token; [`StoreError::Conflict`] if its hash already exists.
    pub async fn insert_operator_token(&self, token: &OperatorToken) -> Result<(), StoreError> {
        dispatch!(self.insert_operator_token(token))
    }

    pub async fn find_operator_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<OperatorToken>, StoreError> {
        dispatch!(self.find_operator_token(token_hash))
    }

    pub async fn count_operator_tokens(&self) -> Result<i64, StoreError> {
        dispatch!(self.count_operator_tokens())
    }
}
