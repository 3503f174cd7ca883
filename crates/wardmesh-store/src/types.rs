//! The records the store keeps. Timestamps are UTC and kept with microsecond precision:
//! anything finer is truncated (towards the past) when written.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A single-use join token, the attestation of an agent outside Kubernetes. Only the hash
/// of the token is stored; the token itself is shown once to the operator who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Hash of the secret token (e.g. hex SHA-256); the primary key.
    pub token_hash: String,
    /// The SPIFFE ID the token entitles its bearer to.
    pub spiffe_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The token is valid strictly before this instant.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The operator (or subsystem) that created it.
    pub created_by: String,
}

/// A stored join token and whether it was used, as [`Store::find_join_token`] reads it.
///
/// [`Store::find_join_token`]: crate::Store::find_join_token
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub token: JoinToken,
    /// When the token was consumed; `None` while it is unused.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
}

/// What happened when a join token was presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ConsumeOutcome {
    /// The token was valid and is now used up; issue an identity for `spiffe_id`.
    Consumed { spiffe_id: String },
    /// No token with that hash exists.
    NotFound,
    /// The token was already consumed at `used_at`.
    AlreadyUsed {
        #[serde(with = "time::serde::rfc3339")]
        used_at: OffsetDateTime,
    },
    /// The token expired at `expired_at` without being used.
    Expired {
        #[serde(with = "time::serde::rfc3339")]
        expired_at: OffsetDateTime,
    },
}

/// Everything one certificate issuance writes, committed by [`Store::commit_issuance`] in
/// one transaction: the join token it spends (if any), the issuance record and its audit
/// event.
///
/// [`Store::commit_issuance`]: crate::Store::commit_issuance
#[derive(Debug, Clone, PartialEq)]
pub struct IssuanceCommit {
    /// The hash of the join token to consume and the instant to check its expiry against;
    /// `None` for attestations that spend nothing (Kubernetes tokens, renewals).
    pub consume_join_token: Option<(String, OffsetDateTime)>,
    pub issuance: Issuance,
    /// The audit event, chained like [`Store::append_event`] chains it (`event.id` is
    /// ignored).
    ///
    /// [`Store::append_event`]: crate::Store::append_event
    pub event: Event,
}

/// What [`Store::commit_issuance`] did.
///
/// [`Store::commit_issuance`]: crate::Store::commit_issuance
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The token (if any) is used up and the issuance and its event are stored; the event
    /// got `event_seq`.
    Committed { event_seq: i64 },
    /// The join token could not be consumed (never [`ConsumeOutcome::Consumed`]); nothing
    /// was written.
    TokenRefused(ConsumeOutcome),
}

/// A SPIFFE ID that must not be issued certificates and that agents deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub spiffe_id: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// One certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    /// Certificate serial number, hex; unique per `authority_id`.
    pub serial_hex: String,
    pub spiffe_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Identifies the issuing CA certificate (e.g. its subject key identifier, hex).
    pub authority_id: String,
    /// How the caller proved its identity: `join_token`, `k8s_sa_token` or `renewal`.
    pub attestation: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
}

/// The last status an agent instance reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub spiffe_id: String,
    /// Unique per running agent (e.g. pod UID); the primary key.
    pub instance_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub cert_not_after: OffsetDateTime,
    pub cert_authority_id: String,
    pub bundle_revision: i64,
}

/// An identity, CA or operator event, in the order the store accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the store, strictly increasing; ignored by `append_event`.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// e.g. `identity.issued`, `identity.quarantined`, `operator.token_created`.
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// An operator API token. Only the hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    pub token_hash: String,
    pub name: String,
    /// `viewer`, `auditor` or `security-admin`.
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One entry of the hash-chained audit log: an [`Event`] with its place in the chain.
/// See [`crate::chain`] for how `hash` is computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The event id: gapless, strictly increasing in commit order.
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub detail: serde_json::Value,
    /// Hash of the entry before (or of the anchor / genesis), lowercase hex.
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this entry's canonical form, lowercase hex.
    pub hash: String,
}

/// A point of the chain: the last entry's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// 0 for an empty log.
    pub seq: i64,
    pub hash: String,
}

impl ChainHead {
    /// The point before the first entry of a log that was never pruned.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: crate::chain::GENESIS_HASH.to_owned(),
        }
    }
}

/// A signed statement "the log up to `seq` has head hash `head_hash`", written by the
/// control plane. The store checks the claim against the chain; the signature is opaque to
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Assigned by the store; ignored by `append_checkpoint`.
    pub id: i64,
    pub seq: i64,
    pub head_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Which signing key made `signature`.
    pub key_id: String,
    /// The signature over the checkpoint, encoded by the signer (base64).
    pub signature: String,
}

/// The checkpoint a pruned log now starts from, and when it was pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    pub checkpoint: Checkpoint,
    #[serde(with = "time::serde::rfc3339")]
    pub pruned_at: OffsetDateTime,
}

/// What pruning removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneOutcome {
    pub entries_removed: u64,
    pub checkpoints_removed: u64,
    /// The new starting point of the log.
    pub anchor: AuditAnchor,
}

/// Which audit entries to read. Entries come back in ascending `seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    /// Only entries with `seq > after`.
    pub after: i64,
    /// Only entries with `seq < before`.
    pub before: Option<i64>,
    /// Only this kind; `prefix.*` matches every kind starting with `prefix.`.
    pub kind: Option<String>,
    /// Leave out this exact kind.
    pub exclude_kind: Option<String>,
    /// Only entries of one of these exact kinds (`kind IN (...)`, no prefixes); empty: no
    /// restriction. Combines with `kind` (both must match). One query, so `limit` counts
    /// only matches and a short page is the last.
    pub kinds: Vec<String>,
    /// Only entries whose subject is exactly this (PostgreSQL: index `events_by_subject`;
    /// SQLite: sealed runs, `sqlite/runs.rs`).
    pub subject: Option<String>,
    /// Only entries at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only entries strictly before this instant.
    pub until: Option<OffsetDateTime>,
    /// At most this many entries.
    pub limit: u32,
    /// Take the newest `limit` matches instead of the oldest (still returned ascending).
    pub newest: bool,
}

/// What [`crate::Store::first_entry_missing_from_subject_lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum SubjectLookupCheck {
    /// Every entry is reachable by its subject.
    Complete,
    /// Entry `seq` (and maybe later ones) would be left out of queries by subject.
    Missing { seq: i64 },
    /// The backend's lookup is an index the database maintains (PostgreSQL): nothing the
    /// store could check.
    DatabaseIndex,
}
