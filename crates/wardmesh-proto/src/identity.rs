//! Identity issuance and agent synchronisation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a workload presents to prove its identity on first contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attestation {
    /// A single-use token from `wardctl token create`.
    JoinToken { token: String },
    /// A Kubernetes projected service-account token with audience `wardmesh`.
    K8sSaToken { token: String },
}

impl Attestation {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JoinToken { .. } => "join_token",
            Self::K8sSaToken { .. } => "k8s_sa_token",
        }
    }
}

/// `POST /v1/identity/attest`: first certificate, no client certificate needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    pub csr_pem: String,
    pub attestation: Attestation,
}

/// `POST /v1/identity/renew`: authenticated by the caller's current SVID (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The answer to attest and renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidResponse {
    pub spiffe_id: String,
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
    pub bundle_revision: u64,
    pub authority_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `POST /v1/agent/sync`: the agent reports its state and long-polls for a newer trust
/// bundle, signing authority or deny-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub instance_id: String,
    pub bundle_revision: u64,
    pub deny_list_revision: i64,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub cert_not_after: Option<OffsetDateTime>,
    #[serde(default)]
    pub cert_authority_id: Option<String>,
    /// How long the control plane may hold the request when nothing changed (≤ 60).
    pub wait_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncResponse {
    pub trust_domain: String,
    pub trust_bundle_pem: String,
    pub bundle_revision: u64,
    /// Leaves from other authorities should be renewed now (CA rotation).
    pub active_authority_id: String,
    /// Quarantined SPIFFE IDs: refuse connections from them.
    pub deny_list: Vec<String>,
    pub deny_list_revision: i64,
}
