//! Operator services, transport-free: token authentication and roles, join tokens,
//! quarantine (with the deny-list that agents sync), agent sync and status queries.
//! Every write is recorded as an event with the operator's name.

mod denylist;

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use time::OffsetDateTime;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::attest::{hash_secret, new_join_token};
use wardmesh_proto::identity::{SyncRequest, SyncResponse};
use wardmesh_proto::operator::{
    AgentInfo, AuthorityStatus, CaStatus, CreateJoinTokenRequest, CreateJoinTokenResponse,
    EventInfo, IssuanceInfo, QuarantineChange, QuarantineEntry as ApiQuarantineEntry,
    QuarantineRequest, Role,
};
use wardmesh_store::{AgentStatus, Event, JoinToken, OperatorToken, QuarantineEntry, Store};

pub use denylist::{DenyList, DenyListPublisher};

use crate::ca_state::CaManager;
use crate::error::ApiFailure;
use crate::identity::Clock;

const JOIN_TOKEN_DEFAULT_TTL: u64 = 600;
const JOIN_TOKEN_MAX_TTL: u64 = 86_400;
const MAX_SYNC_WAIT: u32 = 60;
const MAX_REASON_LEN: usize = 512;
const OPERATOR_TOKEN_PREFIX: &str = "wmop_";

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
pub struct OperatorService {
    pub store: Store,
    pub ca: Arc<CaManager>,
    pub deny: DenyListPublisher,
    pub clock: Clock,
}

impl std::fmt::Debug for OperatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorService").finish_non_exhaustive()
    }
}

/// Creates the first security-admin token when the store has none. Returns the token
/// (to be written to a 0600 file by the caller) or `None` when tokens already exist.
pub async fn bootstrap_admin_token(
    store: &Store,
    now: OffsetDateTime,
) -> Result<Option<String>, wardmesh_store::StoreError> {
    if store.count_operator_tokens().await? > 0 {
        return Ok(None);
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("{OPERATOR_TOKEN_PREFIX}{}", hex::encode(raw));
    store
        .insert_operator_token(&OperatorToken {
            token_hash: hash_secret(&token),
            name: "bootstrap-admin".into(),
            role: Role::SecurityAdmin.as_str().into(),
            created_at: now,
        })
        .await?;
    Ok(Some(token))
}

impl OperatorService {
    /// Resolves a bearer token to an operator and checks it holds at least `needed`.
    pub async fn authorize(
        &self,
        bearer: Option<&str>,
        needed: Role,
    ) -> Result<Operator, ApiFailure> {
        let token = bearer.ok_or_else(|| {
            ApiFailure::unauthorized(
                "operator_token_required",
                "this endpoint needs an operator token: pass --token or set WARDMESH_TOKEN",
            )
        })?;
        if token.len() > 256 {
            return Err(ApiFailure::unauthorized(
                "invalid_operator_token",
                "operator token is malformed",
            ));
        }
        let found = self
            .store
            .find_operator_token(&hash_secret(token))
            .await?
            .ok_or_else(|| {
                ApiFailure::unauthorized(
                    "invalid_operator_token",
                    "operator token is not known to this control plane",
                )
            })?;
        let role = Role::parse(&found.role).ok_or_else(|| {
            tracing::error!(role = %found.role, "stored operator token has an unknown role");
            ApiFailure::internal("internal")
        })?;
        if role < needed {
            return Err(ApiFailure::forbidden(
                "insufficient_role",
                format!(
                    "operator {:?} has role {}; this needs {}",
                    found.name,
                    role.as_str(),
                    needed.as_str()
                ),
            ));
        }
        Ok(Operator {
            name: found.name,
            role,
        })
    }

    fn parse_id(&self, raw: &str) -> Result<SpiffeId, ApiFailure> {
        let id = SpiffeId::parse(raw)
            .map_err(|e| ApiFailure::bad_request("invalid_spiffe_id", e.to_string()))?;
        let td = self.ca.current().trust_domain().clone();
        if id.trust_domain() != &td {
            return Err(ApiFailure::bad_request(
                "unknown_trust_domain",
                format!("{id} is not in this mesh's trust domain {td}"),
            ));
        }
        Ok(id)
    }

    pub async fn create_join_token(
        &self,
        op: &Operator,
        req: CreateJoinTokenRequest,
    ) -> Result<CreateJoinTokenResponse, ApiFailure> {
        let id = self.parse_id(&req.spiffe_id)?;
        let ttl = req.ttl_seconds.unwrap_or(JOIN_TOKEN_DEFAULT_TTL);
        if ttl == 0 || ttl > JOIN_TOKEN_MAX_TTL {
            return Err(ApiFailure::bad_request(
                "invalid_ttl",
                format!("ttl must be between 1 and {JOIN_TOKEN_MAX_TTL} seconds"),
            ));
        }
        let now = (self.clock)();
        let (token, hash) = new_join_token();
        let expires_at = now + Duration::from_secs(ttl);
        self.store
            .insert_join_token(&JoinToken {
                token_hash: hash,
                spiffe_id: id.to_string(),
                created_at: now,
                expires_at,
                created_by: op.name.clone(),
            })
            .await?;
        self.event(
            op,
            "operator.join_token.created",
            &id.to_string(),
            serde_json::json!({"ttl_seconds": ttl}),
        )
        .await;
        Ok(CreateJoinTokenResponse {
            token,
            spiffe_id: id.to_string(),
            expires_at,
        })
    }

    pub async fn quarantine(
        &self,
        op: &Operator,
        req: QuarantineRequest,
    ) -> Result<QuarantineChange, ApiFailure> {
        let id = self.parse_id(&req.spiffe_id)?;
        let reason = req.reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON_LEN {
            return Err(ApiFailure::bad_request(
                "invalid_reason",
                format!("a reason of 1 to {MAX_REASON_LEN} characters is required"),
            ));
        }
        let changed = self
            .store
            .quarantine(&QuarantineEntry {
                spiffe_id: id.to_string(),
                reason: reason.to_owned(),
                created_at: (self.clock)(),
                created_by: op.name.clone(),
            })
            .await?;
        self.event(
            op,
            "identity.quarantined",
            &id.to_string(),
            serde_json::json!({"reason": reason, "changed": changed}),
        )
        .await;
        let rev = self.deny.refresh(&self.store).await?;
        Ok(QuarantineChange {
            spiffe_id: id.to_string(),
            changed,
            deny_list_revision: rev,
        })
    }

    pub async fn unquarantine(
        &self,
        op: &Operator,
        raw_id: &str,
    ) -> Result<QuarantineChange, ApiFailure> {
        let id = self.parse_id(raw_id)?;
        let changed = self.store.unquarantine(&id.to_string()).await?;
        self.event(
            op,
            "identity.unquarantined",
            &id.to_string(),
            serde_json::json!({"changed": changed}),
        )
        .await;
        let rev = self.deny.refresh(&self.store).await?;
        Ok(QuarantineChange {
            spiffe_id: id.to_string(),
            changed,
            deny_list_revision: rev,
        })
    }

    pub async fn list_quarantined(&self) -> Result<Vec<ApiQuarantineEntry>, ApiFailure> {
        Ok(self
            .store
            .list_quarantined()
            .await?
            .into_iter()
            .map(|q| ApiQuarantineEntry {
                spiffe_id: q.spiffe_id,
                reason: q.reason,
                created_at: q.created_at,
                created_by: q.created_by,
            })
            .collect())
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentInfo>, ApiFailure> {
        Ok(self
            .store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| AgentInfo {
                spiffe_id: a.spiffe_id,
                instance_id: a.instance_id,
                last_seen: a.last_seen,
                cert_not_after: a.cert_not_after,
                cert_authority_id: a.cert_authority_id,
                bundle_revision: a.bundle_revision,
            })
            .collect())
    }

    pub async fn list_issuances(
        &self,
        spiffe_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<IssuanceInfo>, ApiFailure> {
        Ok(self
            .store
            .list_issuances(spiffe_id, limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|i| IssuanceInfo {
                serial_hex: i.serial_hex,
                spiffe_id: i.spiffe_id,
                not_before: i.not_before,
                not_after: i.not_after,
                authority_id: i.authority_id,
                attestation: i.attestation,
                issued_at: i.issued_at,
            })
            .collect())
    }

    pub async fn list_events(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<EventInfo>, ApiFailure> {
        // State changes only: operator API access records are in /v1/audit/entries.
        let q = wardmesh_store::AuditQuery {
            after: after_id,
            limit: limit.clamp(1, 1000),
            exclude_kind: Some(crate::audit::kinds::OPERATOR_API.to_owned()),
            ..Default::default()
        };
        Ok(self
            .store
            .audit_entries(&q)
            .await?
            .into_iter()
            .map(|e| EventInfo {
                id: e.seq,
                at: e.at,
                kind: e.kind,
                actor: e.actor,
                subject: e.subject,
                detail: e.detail,
            })
            .collect())
    }

    pub fn ca_status(&self) -> CaStatus {
        let snap = self.ca.current();
        CaStatus {
            trust_domain: snap.trust_domain().to_string(),
            revision: snap.revision(),
            active: snap.ca.state.active.clone(),
            authorities: snap
                .ca
                .authorities
                .iter()
                .map(|a| AuthorityStatus {
                    id: a.id.clone(),
                    active: a.active,
                    root_subject: a.root_subject.clone(),
                    root_fingerprint: a.root_fingerprint.clone(),
                    root_not_after: a.root_not_after.clone(),
                    intermediate_subject: a.intermediate_subject.clone(),
                    intermediate_fingerprint: a.intermediate_fingerprint.clone(),
                    intermediate_not_after: a.intermediate_not_after.clone(),
                })
                .collect(),
        }
    }

    pub async fn reload_ca(&self, op: &Operator) -> Result<CaStatus, ApiFailure> {
        let ca = self.ca.clone();
        let now = (self.clock)();
        let res = tokio::task::spawn_blocking(move || ca.reload(now, true))
            .await
            .map_err(|_| ApiFailure::internal("internal"))?;
        match res {
            Ok(rev) => {
                self.event(
                    op,
                    "ca.reloaded",
                    "ca",
                    serde_json::json!({"revision": rev}),
                )
                .await;
                Ok(self.ca_status())
            }
            Err(e) => Err(ApiFailure::bad_request(
                "ca_invalid",
                format!("the CA directory is invalid, the previous CA stays active: {e}"),
            )),
        }
    }

    /// Records the agent's report, then answers once something is newer than what the
    /// agent has, or after its wait.
    pub async fn sync(
        &self,
        peer: Option<&SpiffeId>,
        req: SyncRequest,
    ) -> Result<SyncResponse, ApiFailure> {
        let peer = peer.ok_or_else(|| {
            ApiFailure::unauthorized(
                "client_certificate_required",
                "agent sync requires the agent's SVID as TLS client certificate",
            )
        })?;
        if req.instance_id.is_empty() || req.instance_id.len() > 128 {
            return Err(ApiFailure::bad_request(
                "invalid_instance_id",
                "instance_id must be 1 to 128 characters",
            ));
        }
        if let (Some(not_after), Some(authority)) =
            (req.cert_not_after, req.cert_authority_id.as_ref())
        {
            self.store
                .upsert_agent(&AgentStatus {
                    spiffe_id: peer.to_string(),
                    instance_id: req.instance_id.clone(),
                    last_seen: (self.clock)(),
                    cert_not_after: not_after,
                    cert_authority_id: authority.clone(),
                    bundle_revision: req.bundle_revision as i64,
                })
                .await?;
        }
        let wait = Duration::from_secs(u64::from(req.wait_seconds.min(MAX_SYNC_WAIT)));
        let mut ca_rx = self.ca.subscribe();
        let mut deny_rx = self.deny.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snap = ca_rx.borrow_and_update().clone();
            let deny = deny_rx.borrow_and_update().clone();
            let stale = snap.revision() != req.bundle_revision
                || deny.revision != req.deny_list_revision
                || req.cert_authority_id.as_deref() != Some(snap.ca.state.active.as_str());
            if stale || tokio::time::Instant::now() >= deadline {
                return Ok(SyncResponse {
                    trust_domain: snap.trust_domain().to_string(),
                    trust_bundle_pem: snap.ca.bundle_pem.clone(),
                    bundle_revision: snap.revision(),
                    active_authority_id: snap.ca.state.active.clone(),
                    deny_list: deny.ids.as_ref().clone(),
                    deny_list_revision: deny.revision,
                });
            }
            tokio::select! {
                _ = ca_rx.changed() => {}
                _ = deny_rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn event(&self, op: &Operator, kind: &str, subject: &str, detail: serde_json::Value) {
        let ev = Event {
            id: 0,
            at: (self.clock)(),
            kind: kind.to_owned(),
            actor: format!("operator:{}", op.name),
            subject: subject.to_owned(),
            detail,
        };
        if let Err(e) = self.store.append_event(&ev).await {
            tracing::error!(error = %e, kind, "could not record operator event");
        }
    }
}
