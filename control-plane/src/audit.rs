//! The tamper-evident audit log: every identity, CA and operator event, every operator API
//! call (reads included: who looked at what), and later every PHI access, appended to the
//! store's hash chain ([`wardmesh_store::chain`]); signed checkpoints over the chain head
//! ([`checkpoint`]); the verifier `wardctl audit verify` runs ([`verify`]); and the
//! operator endpoints ([`api`]), among them the accounting of disclosures
//! ([`disclosures`]).
//!
//! [`AuditLog`] is the one entry point for writers: `audit.append(AuditRecord::new(
//! kinds::PHI_ACCESS, actor, subject).detail(..))` from flow ingest, or `append_batch` for
//! a whole ingest batch in one transaction.

pub mod api;
pub mod checkpoint;
pub mod disclosures;
pub mod key;
pub mod verify;

use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_proto::audit as proto;
use wardmesh_store::{AuditQuery, Checkpoint, Event, PruneOutcome, Store, StoreError};

pub use checkpoint::CheckpointError;
pub use key::{AuditKeyError, AuditPublicKey, AuditSigner};
pub use verify::{AuditVerifier, Damage, VerifyReport};

use crate::error::ApiFailure;
use crate::identity::Clock;

/// Audit entry kinds written by the control plane. Identity and operator services write
/// their own (`identity.issued`, `identity.quarantined`, `operator.join_token.created`, …).
pub mod kinds {
    /// One call to an operator endpoint: method, path template, role, outcome.
    pub const OPERATOR_API: &str = "operator.api";
    /// The log was pruned up to a checkpoint (retention).
    pub const AUDIT_PRUNED: &str = "audit.pruned";
    /// A request that touched protected health information (written by flow ingest).
    pub const PHI_ACCESS: &str = "phi.access";
    /// An auditor read a patient's accounting of disclosures (subject: the pseudonym).
    pub const DISCLOSURES_READ: &str = "audit.disclosures.read";
}

/// Page size bounds of the audit endpoints.
pub const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
const MAX_KIND_LEN: usize = 128;

/// What to append. The time is the log's clock at append unless set.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub at: Option<OffsetDateTime>,
}

impl AuditRecord {
    pub fn new(kind: &str, actor: &str, subject: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            detail: serde_json::json!({}),
            at: None,
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn at(mut self, at: OffsetDateTime) -> Self {
        self.at = Some(at);
        self
    }
}

/// A cheap handle on the audit log: the store's chain, the checkpoint signer, a clock.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    signer: Arc<AuditSigner>,
    clock: Clock,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    pub fn new(store: Store, signer: Arc<AuditSigner>, clock: Clock) -> Self {
        Self {
            store,
            signer,
            clock,
        }
    }

    /// Appends one entry; returns its seq.
    pub async fn append(&self, record: AuditRecord) -> Result<i64, StoreError> {
        self.store.append_event(&self.event(record)).await
    }

    /// Appends entries in one transaction (consecutive seqs, in order); returns their seqs.
    pub async fn append_batch(&self, records: Vec<AuditRecord>) -> Result<Vec<i64>, StoreError> {
        let events: Vec<Event> = records.into_iter().map(|r| self.event(r)).collect();
        self.store.append_events(&events).await
    }

    fn event(&self, r: AuditRecord) -> Event {
        Event {
            id: 0,
            at: r.at.unwrap_or_else(|| (self.clock)()),
            kind: r.kind,
            actor: r.actor,
            subject: r.subject,
            detail: r.detail,
        }
    }

    pub fn public_key(&self) -> &AuditPublicKey {
        self.signer.public()
    }

    /// The public key as the API serves it.
    pub fn key_info(&self) -> proto::AuditKey {
        let key = self.signer.public();
        proto::AuditKey {
            algorithm: "ed25519".to_owned(),
            public_key: key.to_base64(),
            key_id: key.key_id(),
        }
    }

    /// Retention: drops the entries a checkpoint covers (see [`Store::prune_audit`]) and
    /// records that it did, by whom, in the log itself.
    pub async fn prune_to(&self, checkpoint_id: i64, by: &str) -> Result<PruneOutcome, StoreError> {
        let out = self
            .store
            .prune_audit(checkpoint_id, (self.clock)())
            .await?;
        if out.entries_removed > 0 {
            self.append(AuditRecord::new(kinds::AUDIT_PRUNED, by, "audit").detail(
                serde_json::json!({
                    "up_to_seq": out.anchor.checkpoint.seq,
                    "checkpoint_id": out.anchor.checkpoint.id,
                    "entries_removed": out.entries_removed,
                }),
            ))
            .await?;
        }
        Ok(out)
    }

    /// `GET /v1/audit/entries`.
    pub async fn entries(&self, q: EntriesQuery) -> Result<Vec<proto::AuditEntry>, ApiFailure> {
        let q = q.parse()?;
        Ok(self
            .store
            .audit_entries(&q)
            .await?
            .into_iter()
            .map(entry_to_api)
            .collect())
    }

    /// `GET /v1/audit/subject-lookup`.
    pub async fn subject_lookup(&self) -> Result<proto::AuditSubjectLookup, ApiFailure> {
        use wardmesh_store::SubjectLookupCheck as Check;
        let check = self.store.first_entry_missing_from_subject_lookup().await?;
        let (result, first_missing_seq) = match check {
            Check::Complete => ("complete", None),
            Check::Missing { seq } => ("missing", Some(seq)),
            Check::DatabaseIndex => ("database_index", None),
        };
        Ok(proto::AuditSubjectLookup {
            result: result.to_owned(),
            first_missing_seq,
        })
    }

    /// `GET /v1/audit/checkpoints`.
    pub async fn checkpoints(
        &self,
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<proto::AuditCheckpoints, ApiFailure> {
        let limit = page_limit(limit)?;
        let after = after.unwrap_or(0);
        // Head last: every checkpoint listed then names an entry at or before it.
        let checkpoints = self.store.list_checkpoints(after, limit).await?;
        let anchor = self.store.audit_anchor().await?;
        let head = self.store.audit_head().await?;
        Ok(proto::AuditCheckpoints {
            head: proto::AuditHead {
                seq: head.seq,
                hash: head.hash,
            },
            anchor: anchor.map(|a| proto::AuditAnchor {
                checkpoint: checkpoint_to_api(a.checkpoint),
                pruned_at: a.pruned_at,
            }),
            checkpoints: checkpoints.into_iter().map(checkpoint_to_api).collect(),
        })
    }
}

/// The query string of `GET /v1/audit/entries`, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    pub after: Option<i64>,
    /// Only entries with `seq < before`: with `last`, pages backwards (`wardctl audit log
    /// --actor` filters the newest entries page by page).
    pub before: Option<i64>,
    pub limit: Option<u32>,
    pub kind: Option<String>,
    pub since: Option<String>,
    /// The newest `last` matching entries (ascending), instead of the oldest `limit`.
    pub last: Option<u32>,
}

impl EntriesQuery {
    /// Validates into a store query; every refusal says what is accepted.
    pub fn parse(self) -> Result<AuditQuery, ApiFailure> {
        let invalid = |m: String| ApiFailure::bad_request("invalid_query", m);
        let after = self.after.unwrap_or(0);
        if after < 0 {
            return Err(invalid("after must be a seq of 0 or more".to_owned()));
        }
        if self.before.is_some_and(|b| b < 1) {
            return Err(invalid("before must be a seq of 1 or more".to_owned()));
        }
        if let Some(kind) = &self.kind {
            let stem = kind.strip_suffix(".*").unwrap_or(kind);
            let ok = !stem.is_empty()
                && kind.len() <= MAX_KIND_LEN
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !ok {
                return Err(invalid(format!(
                    "kind must be an event kind like identity.issued, or a prefix like \
                     identity.* ({MAX_KIND_LEN} characters at most: a-z, 0-9, '.', '_', '-')"
                )));
            }
        }
        let since = match &self.since {
            Some(s) => Some(OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                invalid("since must be an RFC 3339 time, e.g. 2025-06-01T12:00:00Z".to_owned())
            })?),
            None => None,
        };
        let (limit, newest) = match self.last {
            Some(last) => (page_limit(Some(last))?, true),
            None => (page_limit(self.limit)?, false),
        };
        Ok(AuditQuery {
            after,
            before: self.before,
            kind: self.kind.map(|k| match k.strip_suffix(".*") {
                Some(stem) => format!("{stem}.*"),
                None => k,
            }),
            exclude_kind: None,
            since,
            limit,
            newest,
            ..AuditQuery::default()
        })
    }
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiFailure> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiFailure::bad_request(
            "invalid_query",
            format!("limit and last must be between 1 and {MAX_PAGE}"),
        )),
    }
}

pub fn entry_to_api(e: wardmesh_store::AuditEntry) -> proto::AuditEntry {
    proto::AuditEntry {
        seq: e.seq,
        at: e.at,
        kind: e.kind,
        actor: e.actor,
        subject: e.subject,
        detail: e.detail,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

/// The inverse of [`entry_to_api`], for verifying what the API served.
pub fn entry_from_api(e: proto::AuditEntry) -> wardmesh_store::AuditEntry {
    wardmesh_store::AuditEntry {
        seq: e.seq,
        at: e.at,
        kind: e.kind,
        actor: e.actor,
        subject: e.subject,
        detail: e.detail,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

pub fn checkpoint_to_api(c: Checkpoint) -> proto::AuditCheckpoint {
    proto::AuditCheckpoint {
        id: c.id,
        seq: c.seq,
        head_hash: c.head_hash,
        at: c.at,
        key_id: c.key_id,
        signature: c.signature,
    }
}

/// The inverse of [`checkpoint_to_api`], for verifying what the API served.
pub fn checkpoint_from_api(c: proto::AuditCheckpoint) -> Checkpoint {
    Checkpoint {
        id: c.id,
        seq: c.seq,
        head_hash: c.head_hash,
        at: c.at,
        key_id: c.key_id,
        signature: c.signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> EntriesQuery {
        EntriesQuery::default()
    }

    #[test]
    fn entry_queries_are_validated_with_reasons() {
        let ok = EntriesQuery {
            after: Some(5),
            before: Some(90),
            kind: Some("identity.*".to_owned()),
            since: Some("2025-06-01T12:00:00Z".to_owned()),
            ..query()
        }
        .parse()
        .unwrap();
        assert_eq!((ok.after, ok.limit, ok.newest), (5, DEFAULT_PAGE, false));
        assert_eq!(ok.before, Some(90));
        assert_eq!(ok.kind.as_deref(), Some("identity.*"));
        assert_eq!(ok.since.map(|t| t.unix_timestamp()), Some(1_748_779_200));
        let last = EntriesQuery {
            last: Some(20),
            ..query()
        }
        .parse()
        .unwrap();
        assert_eq!((last.limit, last.newest), (20, true));

        let kind = |k: &str| EntriesQuery {
            kind: Some(k.to_owned()),
            ..query()
        };
        for (bad, says) in [
            (
                EntriesQuery {
                    limit: Some(0),
                    ..query()
                },
                "between 1 and 1000",
            ),
            (
                EntriesQuery {
                    last: Some(5000),
                    ..query()
                },
                "between 1 and 1000",
            ),
            (
                EntriesQuery {
                    after: Some(-1),
                    ..query()
                },
                "0 or more",
            ),
            (
                EntriesQuery {
                    before: Some(0),
                    ..query()
                },
                "1 or more",
            ),
            (
                EntriesQuery {
                    since: Some("yesterday".to_owned()),
                    ..query()
                },
                "RFC 3339",
            ),
            (kind("Identity"), "event kind"),
            (kind(".*"), "event kind"),
            (kind("a' OR 1=1"), "event kind"),
        ] {
            let shown = format!("{bad:?}");
            let err = bad.parse().unwrap_err();
            assert_eq!((err.status.as_u16(), err.code), (400, "invalid_query"));
            assert!(err.message.contains(says), "{shown}: {}", err.message);
        }
    }
}
