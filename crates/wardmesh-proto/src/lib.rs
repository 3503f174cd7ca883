//! The wire contract between wardmesh agents, the control plane and `wardctl`: request
//! and response bodies of the control-plane HTTP API (JSON), the default ports and the
//! API paths. Types only; no I/O. Unknown fields are refused so a typo in a client is an
//! error, not a silently ignored setting.

pub mod audit;
pub mod disclosure;
pub mod flow;
pub mod identity;
pub mod operator;
pub mod policy;

use serde::{Deserialize, Serialize};

/// Default ports (DESIGN.md §3).
pub mod ports {
    pub const AGENT_INBOUND: u16 = 7143;
    pub const AGENT_OUTBOUND: u16 = 7140;
    pub const AGENT_ADMIN: u16 = 7191;
    pub const CONTROL_PLANE_API: u16 = 7443;
}

/// API paths, relative to the control plane's base URL.
pub mod paths {
    pub const ATTEST: &str = "/v1/identity/attest";
    pub const RENEW: &str = "/v1/identity/renew";
    pub const AGENT_SYNC: &str = "/v1/agent/sync";
    pub const JOIN_TOKENS: &str = "/v1/join-tokens";
    pub const QUARANTINE: &str = "/v1/quarantine";
    pub const AGENTS: &str = "/v1/agents";
    pub const ISSUANCES: &str = "/v1/issuances";
    pub const EVENTS: &str = "/v1/events";
    pub const CA: &str = "/v1/ca";
    pub const CA_RELOAD: &str = "/v1/ca/reload";
    pub const AUDIT_ENTRIES: &str = "/v1/audit/entries";
    pub const AUDIT_CHECKPOINTS: &str = "/v1/audit/checkpoints";
    pub const AUDIT_KEY: &str = "/v1/audit/key";
    /// Auditor `GET`: is every entry reachable by its subject ([`crate::audit::AuditSubjectLookup`]).
    pub const AUDIT_SUBJECT_LOOKUP: &str = "/v1/audit/subject-lookup";
    /// Accounting of disclosures (auditor): `POST` so the patient id travels in the body,
    /// never in a URL ([`crate::disclosure::DisclosureRequest`]).
    pub const AUDIT_DISCLOSURES: &str = "/v1/audit/disclosures";
    /// Agents `POST` flow record batches; operators `GET` them (viewer).
    pub const FLOWS: &str = "/v1/flows";
    /// Operators `GET` the policy status (viewer) and `POST` a signed bundle
    /// (security-admin; body: the `.tar.gz`, `?mode=enforce|dry-run`).
    pub const POLICY: &str = "/v1/policy";
    pub const POLICY_ACTIVATE: &str = "/v1/policy/activate";
    /// Agents fetch a bundle: `GET ...?revision=R` (octet-stream).
    pub const AGENT_POLICY_BUNDLE: &str = "/v1/agent/policy/bundle";
    /// Agents long-poll the policy context ([`crate::policy::AgentPolicyContext`]).
    pub const AGENT_POLICY_CONTEXT: &str = "/v1/agent/policy/context";
    pub const CONSENTS: &str = "/v1/consents";
    pub const BREAKGLASS: &str = "/v1/breakglass";
    pub const BREAKGLASS_REVIEW: &str = "/v1/breakglass/{grant_id}/review";
    pub const LIVE: &str = "/live";
    pub const READY: &str = "/ready";
    pub const METRICS: &str = "/metrics";
}

/// Every API error body: a stable machine code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub error: String,
    pub message: String,
}
