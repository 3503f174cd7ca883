//! The sync task: long-polls the control plane for trust-bundle, authority and deny-list
//! changes. It publishes the deny-list itself and forwards bundle and authority news to
//! the worker, waiting until the worker applied them so the next poll reports the new
//! revisions. Failures back off and keep everything last published (fail static).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wardmesh_proto::identity::{SyncRequest, SyncResponse};

use super::metrics::{IdentityMetrics, Outcome};
use super::worker::SyncUpdate;
use super::{CertificateSource, DenyList, Shared, WorkloadState, backoff};

/// Successive polls start at least this far apart, so a control plane that answers at
/// once every time cannot spin the agent.
pub(super) const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The request reporting `state` and the deny-list revision we hold (`-1`: none yet, so
/// the first poll answers at once).
pub(super) fn sync_request(
    state: &WorkloadState,
    deny_list_revision: Option<i64>,
    instance_id: &str,
    wait_seconds: u32,
) -> SyncRequest {
    SyncRequest {
        instance_id: instance_id.to_owned(),
        bundle_revision: state.bundle.revision,
        deny_list_revision: deny_list_revision.unwrap_or(-1),
        cert_not_after: Some(state.not_after),
        cert_authority_id: Some(state.authority_id.clone()),
        wait_seconds,
    }
}

/// Whether the worker has anything to do with `resp`.
pub(super) fn needs_worker(state: &WorkloadState, resp: &SyncResponse) -> bool {
    resp.bundle_revision > state.bundle.revision
        || (!resp.active_authority_id.is_empty() && resp.active_authority_id != state.authority_id)
}

pub(super) struct SyncTask<S> {
    pub(super) source: Arc<S>,
    pub(super) state: watch::Receiver<Option<Arc<WorkloadState>>>,
    pub(super) deny_tx: watch::Sender<Arc<DenyList>>,
    pub(super) updates: mpsc::Sender<SyncUpdate>,
    pub(super) metrics: IdentityMetrics,
    pub(super) shared: Arc<Shared>,
    pub(super) instance_id: String,
    pub(super) wait_seconds: u32,
    pub(super) rng: StdRng,
}

impl<S: CertificateSource> SyncTask<S> {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut state_rx = self.state.clone();
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = state_rx.wait_for(Option::is_some) => if r.is_err() { return },
        }
        let mut deny_revision: Option<i64> = None;
        let mut failures: u32 = 0;
        loop {
            let Some(state) = state_rx.borrow().clone() else {
                return;
            };
            let req = sync_request(&state, deny_revision, &self.instance_id, self.wait_seconds);
            let started = Instant::now();
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.source.sync(&state, &req) => r,
            };
            let pause = match result {
                Ok(resp) => {
                    self.metrics.sync(Outcome::Success);
                    if failures > 0 {
                        info!(after_failures = failures, "control-plane sync recovered");
                        self.shared.set_sync_error(None);
                    }
                    failures = 0;
                    if deny_revision != Some(resp.deny_list_revision) {
                        self.publish_deny_list(&resp);
                        deny_revision = Some(resp.deny_list_revision);
                    }
                    if needs_worker(&state, &resp) && !self.forward(resp, &shutdown).await {
                        return;
                    }
                    (started + MIN_SYNC_INTERVAL).saturating_duration_since(Instant::now())
                }
                Err(e) => {
                    self.metrics.sync(Outcome::Failure);
                    let delay = backoff(failures, self.rng.gen_range(0.8..=1.2));
                    failures = failures.saturating_add(1);
                    warn!(
                        error = %e,
                        attempt = failures,
                        retry_in_s = delay.as_secs_f64(),
                        "control-plane sync failed; keeping the last-known bundle and deny-list"
                    );
                    self.shared.set_sync_error(Some(e.to_string()));
                    delay
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    fn publish_deny_list(&self, resp: &SyncResponse) {
        let (list, invalid) = DenyList::from_sync(resp);
        if !invalid.is_empty() {
            warn!(
                entries = ?invalid,
                "deny-list entries that are not SPIFFE IDs were ignored"
            );
        }
        info!(
            revision = resp.deny_list_revision,
            size = list.len(),
            "deny-list updated"
        );
        self.metrics
            .deny_list_size
            .set(i64::try_from(list.len()).unwrap_or(i64::MAX));
        self.deny_tx.send_replace(Arc::new(list));
    }

    /// Hands `resp` to the worker and waits until it is applied. False on shutdown.
    async fn forward(&self, response: SyncResponse, shutdown: &CancellationToken) -> bool {
        let (applied, done) = oneshot::channel();
        let update = SyncUpdate { response, applied };
        tokio::select! {
            () = shutdown.cancelled() => return false,
            r = self.updates.send(update) => if r.is_err() {
                debug!("identity worker stopped; sync ends");
                return false;
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => false,
            r = done => r.is_ok(),
        }
    }
}
