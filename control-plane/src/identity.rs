//! Attestation and issuance, transport-free: decide who the caller is from what it
//! proved, validate the CSR, sign, and only then commit: consume the join token (if any),
//! record the issuance and append its audit event, all in one store transaction. A bad
//! CSR, a refused attestation or a failed commit changes nothing and returns no
//! certificate.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use time::OffsetDateTime;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::attest::{hash_secret, looks_like_join_token};
use wardmesh_identity::ca::{IssueError, IssuedSvid};
use wardmesh_proto::identity::{AttestRequest, Attestation, RenewRequest, SvidResponse};
use wardmesh_store::{CommitOutcome, ConsumeOutcome, Event, Issuance, IssuanceCommit, Store};

use crate::ca_state::{CaManager, CaSnapshot};
use crate::error::ApiFailure;
use crate::metrics::Metrics;
use crate::tokenreview::SaAttestor;

pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

#[derive(Clone)]
pub struct IdentityService {
    pub store: Store,
    pub ca: Arc<CaManager>,
    pub sa_verifier: Option<Arc<SaAttestor>>,
    pub leaf_ttl: Duration,
    pub metrics: Metrics,
    pub clock: Clock,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("leaf_ttl", &self.leaf_ttl)
            .finish_non_exhaustive()
    }
}

fn issue_failure(e: IssueError) -> ApiFailure {
    let code = match e {
        IssueError::WrongTrustDomain { .. } => "unknown_trust_domain",
        IssueError::IntermediateExpired(_) => "ca_expired",
        IssueError::Generate(_) => "internal",
        _ => "bad_csr",
    };
    if code == "ca_expired" || code == "internal" {
        tracing::error!(error = %e, "cannot issue");
        return ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string());
    }
    ApiFailure::bad_request(code, e.to_string())
}

fn attestation_failed(message: impl Into<String>) -> ApiFailure {
    ApiFailure::unauthorized("attestation_failed", message)
}

/// The failure for a join token the commit could not spend.
fn token_refused(outcome: ConsumeOutcome) -> ApiFailure {
    match outcome {
        ConsumeOutcome::AlreadyUsed { .. } => {
            attestation_failed("join token was already used; create a new one")
        }
        ConsumeOutcome::Expired { .. } => {
            attestation_failed("join token has expired; create a new one")
        }
        ConsumeOutcome::NotFound => {
            attestation_failed("join token is not known to this control plane")
        }
        ConsumeOutcome::Consumed { .. } => {
            tracing::error!("the store refused a join token it reports as consumed");
            ApiFailure::internal("internal")
        }
    }
}

impl IdentityService {
    pub async fn attest(&self, req: AttestRequest) -> Result<SvidResponse, ApiFailure> {
        let kind = req.attestation.kind();
        let res = match &req.attestation {
            Attestation::JoinToken { token } => self.attest_join_token(token, &req.csr_pem).await,
            Attestation::K8sSaToken { token } => self.attest_sa_token(token, &req.csr_pem).await,
        };
        self.count(kind, &res);
        res
    }

    pub async fn renew(
        &self,
        peer: Option<&SpiffeId>,
        req: RenewRequest,
    ) -> Result<SvidResponse, ApiFailure> {
        let res = async {
            let id = peer.ok_or_else(|| {
                ApiFailure::unauthorized(
                    "client_certificate_required",
                    "renewal requires the current SVID as TLS client certificate; use /v1/identity/attest for a first certificate",
                )
            })?;
            self.refuse_quarantined(id, "renewal").await?;
            let snap = self.ca.current();
            let issued = self.sign(&snap, &req.csr_pem, id)?;
            self.commit(&snap, &issued, "renewal", None).await?;
            Ok(response(&snap, &issued))
        }
        .await;
        self.count("renewal", &res);
        res
    }

    async fn attest_join_token(&self, token: &str, csr: &str) -> Result<SvidResponse, ApiFailure> {
        if !looks_like_join_token(token) {
            return Err(attestation_failed(
                "join token is malformed; create one with `wardctl token create --id <spiffe-id>`",
            ));
        }
        let hash = hash_secret(token);
        let now = (self.clock)();
        let record =
            self.store.find_join_token(&hash).await?.ok_or_else(|| {
                attestation_failed("join token is not known to this control plane")
            })?;
        if let Some(used_at) = record.used_at {
            return Err(attestation_failed(format!(
                "join token was already used at {used_at}; join tokens are single-use, create a new one"
            )));
        }
        if record.token.expires_at <= now {
            return Err(attestation_failed(
                "join token has expired; create a new one",
            ));
        }
        let id = SpiffeId::parse(&record.token.spiffe_id).map_err(|e| {
            tracing::error!(error = %e, "stored join token names an invalid spiffe id");
            ApiFailure::internal("internal")
        })?;
        self.refuse_quarantined(&id, "join_token").await?;
        let snap = self.ca.current();
        let issued = self.sign(&snap, csr, &id)?;
        // Signing succeeded; only now spend the token, in the same transaction that
        // records the issuance. A concurrent use of the same token loses there and its
        // certificate is discarded.
        self.commit(&snap, &issued, "join_token", Some((hash, now)))
            .await?;
        Ok(response(&snap, &issued))
    }

    async fn attest_sa_token(&self, token: &str, csr: &str) -> Result<SvidResponse, ApiFailure> {
        let verifier = self.sa_verifier.as_ref().ok_or_else(|| {
            ApiFailure::bad_request(
                "attestation_unsupported",
                "this control plane has no Kubernetes issuer configured (--k8s-issuer, --k8s-jwks-file)",
            )
        })?;
        let id = verifier.verify(token).await.map_err(attestation_failed)?;
        self.refuse_quarantined(&id, "k8s_sa_token").await?;
        let snap = self.ca.current();
        let issued = self.sign(&snap, csr, &id)?;
        self.commit(&snap, &issued, "k8s_sa_token", None).await?;
        Ok(response(&snap, &issued))
    }

    fn sign(&self, snap: &CaSnapshot, csr: &str, id: &SpiffeId) -> Result<IssuedSvid, ApiFailure> {
        snap.ca
            .signer
            .sign_csr(csr.as_bytes(), id, self.leaf_ttl, (self.clock)())
            .map_err(issue_failure)
    }

    async fn refuse_quarantined(&self, id: &SpiffeId, via: &str) -> Result<(), ApiFailure> {
        if self.store.is_quarantined(&id.to_string()).await? {
            self.event(
                "identity.refused",
                via,
                id,
                serde_json::json!({"reason": "quarantined"}),
            )
            .await;
            return Err(ApiFailure::forbidden(
                "quarantined",
                format!("{id} is quarantined; `wardctl identity unquarantine {id}` lifts it"),
            ));
        }
        Ok(())
    }

    /// Spends `join_token` (its hash and the instant its expiry is checked against), if
    /// any, records the issuance and appends `identity.issued`: one store transaction, all
    /// or nothing. An error means the certificate must not be handed out.
    async fn commit(
        &self,
        snap: &CaSnapshot,
        issued: &IssuedSvid,
        attestation: &str,
        join_token: Option<(String, OffsetDateTime)>,
    ) -> Result<(), ApiFailure> {
        let now = (self.clock)();
        let commit = IssuanceCommit {
            consume_join_token: join_token,
            issuance: Issuance {
                serial_hex: issued.serial_hex.clone(),
                spiffe_id: issued.spiffe_id.to_string(),
                not_before: issued.not_before,
                not_after: issued.not_after,
                authority_id: snap.ca.signer.authority_id().to_owned(),
                attestation: attestation.to_owned(),
                issued_at: now,
            },
            event: Event {
                id: 0,
                at: now,
                kind: "identity.issued".to_owned(),
                actor: attestation.to_owned(),
                subject: issued.spiffe_id.to_string(),
                detail: serde_json::json!({
                    "serial": issued.serial_hex,
                    "not_after": issued.not_after.unix_timestamp(),
                    "authority": issued.authority_id,
                }),
            },
        };
        match self.store.commit_issuance(&commit).await? {
            CommitOutcome::Committed { .. } => {}
            CommitOutcome::TokenRefused(outcome) => return Err(token_refused(outcome)),
        }
        tracing::info!(spiffe_id = %issued.spiffe_id, attestation, serial = %issued.serial_hex, "svid issued");
        Ok(())
    }

    async fn event(&self, kind: &str, actor: &str, subject: &SpiffeId, detail: serde_json::Value) {
        let ev = Event {
            id: 0,
            at: (self.clock)(),
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_string(),
            detail,
        };
        if let Err(e) = self.store.append_event(&ev).await {
            tracing::error!(error = %e, kind, "could not record event");
        }
    }

    fn count(&self, attestation: &str, res: &Result<SvidResponse, ApiFailure>) {
        let outcome = match res {
            Ok(_) => "issued",
            Err(f) => f.code,
        };
        self.metrics
            .issuances
            .with_label_values(&[attestation, outcome])
            .inc();
    }
}

fn response(snap: &CaSnapshot, issued: &IssuedSvid) -> SvidResponse {
    SvidResponse {
        spiffe_id: issued.spiffe_id.to_string(),
        chain_pem: issued.chain_pem.clone(),
        trust_domain: snap.trust_domain().to_string(),
        trust_bundle_pem: snap.ca.bundle_pem.clone(),
        bundle_revision: snap.revision(),
        authority_id: issued.authority_id.clone(),
        not_after: issued.not_after,
    }
}
