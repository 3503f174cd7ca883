//! Audit endpoints: the hash-chained audit log, its signed checkpoints and the key that
//! signs them. `wardctl audit verify` downloads these and re-checks everything locally;
//! the chain's hash and the checkpoint signature are defined in
//! `wardmesh_store::chain` and `wardmesh_control_plane::audit`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One audit log entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Gapless, strictly increasing.
    pub seq: i64,
    /// Microsecond precision.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// e.g. `identity.issued`, `operator.api`, `phi.access`.
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub detail: serde_json::Value,
    /// Lowercase hex SHA-256 of the previous entry (64 zeros before the first).
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement over the chain head at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    pub id: i64,
    pub seq: i64,
    pub head_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub key_id: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

/// The last entry's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Where a pruned log starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnchor {
    pub checkpoint: AuditCheckpoint,
    #[serde(with = "time::serde::rfc3339")]
    pub pruned_at: OffsetDateTime,
}

/// `GET /v1/audit/checkpoints`: one page of checkpoints plus the current head and anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoints {
    pub head: AuditHead,
    /// Set once the log was pruned: entries before it are gone, the chain starts here.
    pub anchor: Option<AuditAnchor>,
    /// Ascending by id; page with `after=<last id>`.
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// `GET /v1/audit/key`: the public key that signs checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, base64.
    pub public_key: String,
    /// First 16 hex digits of SHA-256 over the public key.
    pub key_id: String,
}

/// `GET /v1/audit/subject-lookup` (auditor): whether every entry of the log is reachable
/// by its subject, as the accounting of disclosures reads it. `wardctl audit verify`
/// checks it after the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSubjectLookup {
    /// `complete`; `missing` (see `first_missing_seq`); or `database_index` (PostgreSQL:
    /// an index the database maintains, nothing the control plane can check).
    pub result: String,
    /// With `missing`: the first entry that queries by subject leave out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_missing_seq: Option<i64>,
}
