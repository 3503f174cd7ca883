//! The renewal worker: the only writer of the workload state.
//!
//! Attest (retrying with backoff) → publish → loop { sleep until the renewal point
//! (`rotation::renewal_delay` with a jitter sample), renew; on failure keep the current
//! state and retry after `rotation::retry_delay`; apply bundle and authority changes the
//! sync task forwards }. After expiry a renewal cannot authenticate, so the worker
//! attests again instead.

use std::sync::Arc;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use wardmesh_identity::TrustDomain;
use wardmesh_identity::keygen::{KeygenError, generate_anonymous_csr, generate_csr};
use wardmesh_identity::rotation;
use wardmesh_identity::tls::TrustBundle;
use wardmesh_proto::identity::{SvidResponse, SyncResponse};

use super::metrics::{IdentityMetrics, Outcome};
use super::{
    CertificateSource, Shared, SourceError, StateError, WorkloadState, backoff, bundle_from_pem,
    rfc3339,
};
use crate::clock::Clock;

/// A sync response with bundle or authority news, and a way to say it was applied.
#[derive(Debug)]
pub(super) struct SyncUpdate {
    pub(super) response: SyncResponse,
    pub(super) applied: oneshot::Sender<()>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum RefreshError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Keygen(#[from] KeygenError),
}

/// How to get the next certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// mTLS renewal with the current, still valid certificate.
    Renew,
    /// The current certificate expired (renewal cannot authenticate): attest again.
    Attest,
}

/// Decides how to refresh `current` at `now`.
pub(super) fn refresh_method(current: &WorkloadState, now: time::OffsetDateTime) -> Method {
    if now >= current.not_after {
        Method::Attest
    } else {
        Method::Renew
    }
}

/// What a sync response asks of the worker.
#[derive(Debug)]
pub(super) struct SyncPlan {
    /// A newer bundle to rebuild the configs with (or why it cannot be used).
    pub(super) bundle: Option<Result<TrustBundle, StateError>>,
    /// The control plane signs with another authority now: renew immediately.
    pub(super) renew_now: bool,
}

/// Decides what a sync response changes for `current`. Pure.
pub(super) fn plan_sync(current: &WorkloadState, resp: &SyncResponse) -> SyncPlan {
    let bundle = (resp.bundle_revision > current.bundle.revision).then(|| {
        bundle_from_pem(
            &resp.trust_domain,
            &resp.trust_bundle_pem,
            resp.bundle_revision,
            Some(current.trust_domain()),
        )
    });
    let renew_now =
        !resp.active_authority_id.is_empty() && resp.active_authority_id != current.authority_id;
    SyncPlan { bundle, renew_now }
}

pub(super) struct Worker<S> {
    pub(super) source: Arc<S>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) state_tx: watch::Sender<Option<Arc<WorkloadState>>>,
    pub(super) metrics: IdentityMetrics,
    pub(super) shared: Arc<Shared>,
    pub(super) trust_domain: Option<TrustDomain>,
    pub(super) rng: StdRng,
}

impl<S: CertificateSource> Worker<S> {
    pub(super) async fn run(
        mut self,
        mut updates: mpsc::Receiver<SyncUpdate>,
        shutdown: CancellationToken,
    ) {
        let Some(mut current) = self.bootstrap(&shutdown).await else {
            return;
        };
        let mut failures: u32 = 0;
        let mut due = self.schedule_renewal(&current);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(update) = updates.recv() => {
                    let plan = plan_sync(&current, &update.response);
                    if let Some(next) = self.apply_bundle(&current, plan.bundle) {
                        current = next;
                    }
                    if plan.renew_now && failures == 0 {
                        info!(
                            current = %current.authority_id,
                            active = %update.response.active_authority_id,
                            "control plane signs with a new authority; renewing now"
                        );
                        due = Instant::now();
                    }
                    let _ = update.applied.send(());
                }
                () = tokio::time::sleep_until(due) => {
                    let result = tokio::select! {
                        () = shutdown.cancelled() => return,
                        r = self.refresh(&current) => r,
                    };
                    match result {
                        Ok(next) => {
                            current = next;
                            failures = 0;
                            due = self.schedule_renewal(&current);
                        }
                        Err(e) => {
                            let now = self.clock.now();
                            let delay = rotation::retry_delay(failures, now, current.not_after);
                            failures = failures.saturating_add(1);
                            warn!(
                                error = %e,
                                attempt = failures,
                                retry_in_s = delay.as_secs_f64(),
                                seconds_to_expiry = rotation::seconds_to_expiry(current.not_after, now).floor(),
                                "certificate renewal failed; keeping the current certificate"
                            );
                            if now >= current.not_after {
                                error!(not_after = %rfc3339(current.not_after), "workload certificate expired");
                            }
                            self.shared.set_error(Some(e.to_string()));
                            due = Instant::now() + delay;
                        }
                    }
                }
            }
        }
    }

    /// Attests until it succeeds (or shutdown).
    async fn bootstrap(&mut self, shutdown: &CancellationToken) -> Option<Arc<WorkloadState>> {
        let mut attempt: u32 = 0;
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return None,
                r = self.attest() => r,
            };
            match result {
                Ok(state) => return Some(state),
                Err(e) => {
                    let delay = backoff(attempt, self.rng.gen_range(0.8..=1.2));
                    attempt = attempt.saturating_add(1);
                    warn!(error = %e, attempt, retry_in_s = delay.as_secs_f64(), "attestation failed; retrying");
                    self.shared.set_error(Some(e.to_string()));
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn refresh(
        &mut self,
        current: &Arc<WorkloadState>,
    ) -> Result<Arc<WorkloadState>, RefreshError> {
        match refresh_method(current, self.clock.now()) {
            Method::Renew => self.renew(current).await,
            Method::Attest => {
                info!("certificate expired; attesting again");
                self.attest().await
            }
        }
    }

    async fn attest(&mut self) -> Result<Arc<WorkloadState>, RefreshError> {
        let result = async {
            let csr = generate_anonymous_csr()?;
            let resp = self.source.attest(&csr.csr_pem).await?;
            self.accept(&resp, csr.key.serialize_der(), self.trust_domain.as_ref())
        }
        .await;
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.metrics.attestation(outcome);
        let state = result?;
        Ok(self.publish(state, "attested"))
    }

    async fn renew(
        &mut self,
        current: &Arc<WorkloadState>,
    ) -> Result<Arc<WorkloadState>, RefreshError> {
        let result = async {
            let csr = generate_csr(&current.spiffe_id)?;
            let resp = self.source.renew(current, &csr.csr_pem).await?;
            let next = self.accept(&resp, csr.key.serialize_der(), Some(current.trust_domain()))?;
            if next.spiffe_id != current.spiffe_id {
                return Err(StateError::IdentityChanged {
                    issued: next.spiffe_id.to_string(),
                    current: current.spiffe_id.to_string(),
                }
                .into());
            }
            // A lagging replica may answer with an older bundle: keep the newer one.
            if next.bundle.revision < current.bundle.revision {
                return Ok(next.with_bundle((*current.bundle).clone())?);
            }
            Ok::<_, RefreshError>(next)
        }
        .await;
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.metrics.renewal(outcome);
        let state = result?;
        Ok(self.publish(state, "renewed"))
    }

    fn accept(
        &self,
        resp: &SvidResponse,
        key_pkcs8: Vec<u8>,
        trust_domain: Option<&TrustDomain>,
    ) -> Result<WorkloadState, RefreshError> {
        Ok(WorkloadState::from_issued(
            resp,
            key_pkcs8,
            trust_domain,
            self.clock.now(),
        )?)
    }

    fn publish(&self, state: WorkloadState, what: &str) -> Arc<WorkloadState> {
        let state = Arc::new(state);
        info!(
            spiffe_id = %state.spiffe_id,
            serial = %state.serial_hex(),
            not_after = %rfc3339(state.not_after),
            authority = %state.authority_id,
            bundle_revision = state.bundle.revision,
            "workload certificate {what}"
        );
        self.metrics.published(&state);
        self.shared.set_error(None);
        self.state_tx.send_replace(Some(Arc::clone(&state)));
        state
    }

    /// The tokio deadline of the next renewal, with a fresh jitter sample.
    fn schedule_renewal(&mut self, state: &WorkloadState) -> Instant {
        let jitter = self.rng.gen_range(-1.0..=1.0);
        let start = state.not_before.max(state.received_at);
        let delay = rotation::renewal_delay(start, state.not_after, self.clock.now(), jitter);
        debug!(renew_in_s = delay.as_secs_f64(), "renewal scheduled");
        Instant::now() + delay
    }

    fn apply_bundle(
        &self,
        current: &Arc<WorkloadState>,
        bundle: Option<Result<TrustBundle, StateError>>,
    ) -> Option<Arc<WorkloadState>> {
        let next = match bundle? {
            Ok(bundle) => current.with_bundle(bundle),
            Err(e) => Err(e),
        };
        match next {
            Ok(next) => {
                let roots = next.bundle.roots.len();
                let state = self.publish(next, "kept with a new trust bundle");
                info!(
                    bundle_revision = state.bundle.revision,
                    roots, "trust bundle updated"
                );
                Some(state)
            }
            Err(e) => {
                warn!(error = %e, "ignoring trust bundle from the control plane; keeping the current one");
                None
            }
        }
    }
}
