//! Policy distribution: signed bundles pushed by operators, the active revision (with
//! its mode), rollback, and the policy *context* agents long-poll — the active pointer,
//! consent records and break-glass grants (`policy/context.rs`) plus the key agents derive
//! subject pseudonyms with.
//!
//! The control plane verifies a bundle's signature before storing it (an unsigned or
//! tampered bundle is refused and nothing changes); agents verify again before running
//! it, so a compromised store cannot hand them a policy no trusted key signed. Every
//! change commits together with its audit entry (`Store::change_objects`).

mod api;
mod consent;
mod context;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wardmesh_policy::{DEFAULT_ENTRYPOINT, VerifiedBundle, VerifyingKey, verify_bundle};
use wardmesh_proto::policy::{
    ActivateRequest, ActivePolicy, PolicyMode, PolicyRevisionInfo, PolicyStatus,
};
use wardmesh_store::{Event, ObjectChange, ObjectWrite, Store, StoreError};

pub use api::{agent_routes, operator_routes};
pub use context::{ContextPublisher, load_pseudonym_key};

use crate::error::ApiFailure;
use crate::identity::Clock;
use crate::operator::Operator;

/// Object kinds in the store.
pub(crate) mod kinds {
    pub const BUNDLE: &str = "policy.bundle";
    pub const ACTIVE: &str = "policy.active";
    pub const CONSENT: &str = "consent";
    pub const GRANT: &str = "breakglass.grant";
    pub const SECRET: &str = "mesh.secret";
}

const ACTIVE_NAME: &str = "active";
/// Largest bundle accepted by `POST /v1/policy`.
pub const MAX_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
const MAX_REVISION_LEN: usize = 128;

/// Audit kinds written here.
pub mod audit_kinds {
    pub const POLICY_PUSH: &str = "policy.push";
    pub const POLICY_ACTIVATE: &str = "policy.activate";
    pub const CONSENT_SET: &str = "consent.set";
    pub const BREAKGLASS_GRANT: &str = "breakglass.grant";
    pub const BREAKGLASS_REVIEW: &str = "breakglass.review";
}

#[derive(Clone)]
pub struct PolicyService {
    pub store: Store,
    pub clock: Clock,
    /// Keys a pushed bundle's signature must verify with. Empty: pushes are refused.
    pub keys: Arc<Vec<VerifyingKey>>,
    pub context: ContextPublisher,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl PolicyService {
    /// `wardctl policy push`: verify, store the revision, make it active — atomically,
    /// with its audit entry. Pushing the same bytes again just re-activates them.
    pub async fn push(
        &self,
        op: &Operator,
        bytes: &[u8],
        mode: PolicyMode,
    ) -> Result<ActivePolicy, ApiFailure> {
        let verified = self.verify(bytes)?;
        let revision = verified.revision().to_owned();
        check_revision(&revision)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let now = (self.clock)();
        let existing = self.store.get_object(kinds::BUNDLE, &revision).await?;
        let mut writes = Vec::new();
        match existing {
            Some(o) => {
                let info: PolicyRevisionInfo = parse(&o.value)?;
                if info.sha256 != sha256 {
                    return Err(ApiFailure::new(
                        http::StatusCode::CONFLICT,
                        "revision_exists",
                        format!(
                            "revision {revision:?} is already stored with different content; \
                             build with a new --revision (revisions are immutable)"
                        ),
                    ));
                }
            }
            None => {
                let info = PolicyRevisionInfo {
                    revision: revision.clone(),
                    sha256: sha256.clone(),
                    size_bytes: bytes.len() as u64,
                    signed_by: verified.signer().unwrap_or("").to_owned(),
                    uploaded_by: op.name.clone(),
                    uploaded_at: now,
                };
                writes.push(ObjectWrite::Create {
                    kind: kinds::BUNDLE.into(),
                    name: revision.clone(),
                    value: json(&info)?,
                    blob: Some(bytes.to_vec()),
                });
            }
        }
        let active = ActivePolicy {
            revision: revision.clone(),
            sha256: sha256.clone(),
            mode,
            activated_by: op.name.clone(),
            activated_at: now,
        };
        writes.push(active_write(&active)?);
        let detail = serde_json::json!({
            "revision": revision, "sha256": sha256, "mode": mode.as_str(),
            "signed_by": verified.signer(), "size_bytes": bytes.len(),
        });
        self.commit(op, writes, audit_kinds::POLICY_PUSH, &revision, detail)
            .await?;
        tracing::info!(%revision, mode = mode.as_str(), operator = %op.name, "policy pushed and activated");
        Ok(active)
    }

    /// `wardctl policy rollback <revision>` (or a mode change of the active revision).
    pub async fn activate(
        &self,
        op: &Operator,
        req: ActivateRequest,
    ) -> Result<ActivePolicy, ApiFailure> {
        check_revision(&req.revision)?;
        let Some(stored) = self.store.get_object(kinds::BUNDLE, &req.revision).await? else {
            return Err(ApiFailure::not_found(
                "unknown_revision",
                format!(
                    "no stored policy revision {:?}; `wardctl policy list` shows the stored ones",
                    req.revision
                ),
            ));
        };
        let info: PolicyRevisionInfo = parse(&stored.value)?;
        let current = self.active().await?;
        let mode = req
            .mode
            .or(current.as_ref().map(|a| a.mode))
            .unwrap_or_default();
        let active = ActivePolicy {
            revision: info.revision.clone(),
            sha256: info.sha256.clone(),
            mode,
            activated_by: op.name.clone(),
            activated_at: (self.clock)(),
        };
        let detail = serde_json::json!({
            "revision": info.revision, "sha256": info.sha256, "mode": mode.as_str(),
            "previous": current.map(|c| c.revision),
        });
        self.commit(
            op,
            vec![active_write(&active)?],
            audit_kinds::POLICY_ACTIVATE,
            &info.revision,
            detail,
        )
        .await?;
        tracing::info!(revision = %active.revision, mode = mode.as_str(), operator = %op.name, "policy activated");
        Ok(active)
    }

    pub async fn status(&self) -> Result<PolicyStatus, ApiFailure> {
        let mut revisions = self
            .store
            .list_objects(kinds::BUNDLE)
            .await?
            .iter()
            .map(|o| parse::<PolicyRevisionInfo>(&o.value))
            .collect::<Result<Vec<_>, _>>()?;
        revisions.sort_by_key(|r| std::cmp::Reverse(r.uploaded_at));
        Ok(PolicyStatus {
            active: self.active().await?,
            revisions,
        })
    }

    /// The bundle bytes of a stored revision, for agents.
    pub async fn bundle(&self, revision: &str) -> Result<Vec<u8>, ApiFailure> {
        check_revision(revision)?;
        self.store
            .get_object(kinds::BUNDLE, revision)
            .await?
            .and_then(|o| o.blob)
            .ok_or_else(|| {
                ApiFailure::not_found(
                    "unknown_revision",
                    format!("no policy revision {revision:?}"),
                )
            })
    }

    pub(crate) async fn active(&self) -> Result<Option<ActivePolicy>, ApiFailure> {
        match self.store.get_object(kinds::ACTIVE, ACTIVE_NAME).await? {
            Some(o) => Ok(Some(parse(&o.value)?)),
            None => Ok(None),
        }
    }

    fn verify(&self, bytes: &[u8]) -> Result<VerifiedBundle, ApiFailure> {
        if self.keys.is_empty() {
            return Err(ApiFailure::new(
                http::StatusCode::CONFLICT,
                "no_verification_key",
                "the control plane has no policy verification key, so it cannot accept \
                 bundles; start it with --policy-public-key <key-id>=<pem file>",
            ));
        }
        let verified = verify_bundle(bytes, &self.keys)
            .map_err(|e| ApiFailure::bad_request("invalid_bundle", e.to_string()))?;
        let entrypoints: Vec<&str> = verified
            .manifest()
            .wasm
            .iter()
            .map(|w| w.entrypoint.as_str())
            .collect();
        if !entrypoints.contains(&DEFAULT_ENTRYPOINT) {
            return Err(ApiFailure::bad_request(
                "missing_entrypoint",
                format!(
                    "the bundle's wasm has no entrypoint {DEFAULT_ENTRYPOINT:?} (it has {entrypoints:?}); \
                     agents evaluate only that one"
                ),
            ));
        }
        Ok(verified)
    }

    /// Commits `writes` with one audit entry, then republishes the agents' context so
    /// this replica's agents see the change at once (others see it on their next poll).
    async fn commit(
        &self,
        op: &Operator,
        writes: Vec<ObjectWrite>,
        kind: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), ApiFailure> {
        let at = (self.clock)();
        let change = ObjectChange {
            writes,
            at,
            by: op.name.clone(),
            audit: Some(Event {
                id: 0,
                at,
                kind: kind.to_owned(),
                actor: format!("operator:{}", op.name),
                subject: subject.to_owned(),
                detail,
            }),
        };
        self.store
            .change_objects(&change)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => {
                    ApiFailure::new(http::StatusCode::CONFLICT, "conflict", m)
                }
                StoreError::Rejected(m) => ApiFailure::bad_request("too_large", m),
                other => other.into(),
            })?;
        if let Err(e) = self.context.refresh(&self.store, at).await {
            tracing::warn!(error = %e, "republishing the policy context failed; the poll will retry");
        }
        Ok(())
    }
}

fn active_write(active: &ActivePolicy) -> Result<ObjectWrite, ApiFailure> {
    Ok(ObjectWrite::Put {
        kind: kinds::ACTIVE.into(),
        name: ACTIVE_NAME.into(),
        value: json(active)?,
        blob: None,
    })
}

fn check_revision(revision: &str) -> Result<(), ApiFailure> {
    let ok = !revision.is_empty()
        && revision.len() <= MAX_REVISION_LEN
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiFailure::bad_request(
            "invalid_revision",
            format!(
                "revision {revision:?} must be 1-{MAX_REVISION_LEN} characters of \
                 [A-Za-z0-9._+:-]"
            ),
        ))
    }
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, ApiFailure> {
    serde_json::to_string(v).map_err(|e| {
        tracing::error!(error = %e, "serializing a stored object");
        ApiFailure::internal("serialize")
    })
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiFailure> {
    serde_json::from_str(text).map_err(|e| {
        tracing::error!(error = %e, "a stored policy object does not parse");
        ApiFailure::internal("corrupt_object")
    })
}
