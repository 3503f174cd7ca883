//! Policy distribution, consent records and break-glass grants: the operator API bodies
//! (`wardctl policy|consent|breakglass`) and what agents receive with their sync.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How an agent applies the active policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    /// Denies are enforced.
    #[default]
    Enforce,
    /// Decisions are logged and counted; nothing is blocked.
    DryRun,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(Self::Enforce),
            "dry-run" => Some(Self::DryRun),
            _ => None,
        }
    }
}

/// A stored bundle revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRevisionInfo {
    pub revision: String,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
    pub size_bytes: u64,
    /// The key id the signature was verified with.
    pub signed_by: String,
    pub uploaded_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub uploaded_at: OffsetDateTime,
}

/// What every agent should run: a revision and a mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivePolicy {
    pub revision: String,
    pub sha256: String,
    pub mode: PolicyMode,
    pub activated_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub activated_at: OffsetDateTime,
}

/// `GET /v1/policy`: the active policy and the stored revisions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStatus {
    pub active: Option<ActivePolicy>,
    pub revisions: Vec<PolicyRevisionInfo>,
}

/// `POST /v1/policy/activate`: make a stored revision active (rollback, or a mode change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub revision: String,
    #[serde(default)]
    pub mode: Option<PolicyMode>,
}

/// A patient's consent for one purpose of use. The subject is the patient id as the
/// operator knows it; the control plane stores only its pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    pub subject: String,
    /// HL7 PurposeOfUse code (TREAT, ETREAT, HPAYMT, HOPERAT, …).
    pub purpose: String,
    /// `true`: consent given; `false`: refused.
    pub allow: bool,
    /// 42 CFR Part 2 record: disclosure requires explicit consent.
    #[serde(default)]
    pub part2: bool,
}

/// One patient's consent record as policies see it in `input.context.consent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    pub part2: bool,
    pub purposes: BTreeMap<String, bool>,
}

/// A stored consent record (operator view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInfo {
    pub subject_pseudonym: String,
    pub record: ConsentRecord,
    pub updated_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `POST /v1/breakglass`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// The end user's `sub` claim.
    pub user: String,
    pub reason: String,
    pub ttl_seconds: u64,
}

/// A time-boxed emergency-access grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassGrant {
    pub grant_id: String,
    pub user: String,
    pub reason: String,
    pub granted_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default)]
    pub review: Option<BreakGlassReview>,
}

/// `POST /v1/breakglass/{grant_id}/review`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReviewRequest {
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReview {
    pub reviewed_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub reviewed_at: OffsetDateTime,
    pub note: String,
}

/// `GET /v1/breakglass`: grants (newest first) with how often each was used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassEntry {
    pub grant: BreakGlassGrant,
    /// Audited uses of the grant (`breakglass.use` audit entries).
    pub uses: u64,
    pub active: bool,
}

/// The policy context agents receive with every sync: the active policy pointer, consent
/// records keyed by subject pseudonym, active break-glass grants, and the key agents
/// derive subject pseudonyms with. Sent only over the agent's mTLS channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicyContext {
    /// Changes whenever anything below changes.
    pub generation: String,
    pub active: Option<ActivePolicy>,
    pub consents: BTreeMap<String, ConsentRecord>,
    pub break_glass: Vec<BreakGlassGrant>,
    /// Hex HMAC key for subject pseudonyms.
    pub pseudonym_key_hex: String,
}

/// `POST /v1/agent/policy/context`: answered at once when the agent's generation is
/// stale, else held up to `wait_seconds` (≤ 60) for a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyContextRequest {
    pub generation: String,
    pub wait_seconds: u32,
    /// The revision the agent runs, for `wardctl check` convergence reporting.
    #[serde(default)]
    pub running_revision: Option<String>,
}
