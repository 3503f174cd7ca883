//! The identity manager: obtains the workload's X509-SVID, renews it at half-life with
//! jitter, follows trust-bundle, CA-rotation and deny-list changes from the control
//! plane, and publishes the results through `tokio::sync::watch`.
//!
//! Shape (after ztunnel's): [`spawn`] starts a *worker* task (attest → renew loop; the
//! only writer of the workload state) and a *sync* task (long-polls the control plane;
//! the only writer of the deny-list, and forwards bundle and authority changes to the
//! worker). Callers hold a cheap [`IdentityHandle`]. Where certificates come from is a
//! [`CertificateSource`]: the control plane in production, an in-process CA in tests.
//!
//! Fail static: a failed renewal or sync never removes what was published; the last
//! good certificate keeps serving until it expires, and after expiry the worker falls
//! back to attestation.

mod client;
mod metrics;
mod source;
mod state;
mod sync;
mod worker;

use std::sync::{Arc, Mutex};

use prometheus::Registry;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wardmesh_identity::TrustDomain;

pub use client::ControlPlaneClient;
pub use source::{CertificateSource, SourceError};
pub use state::{DenyList, StateError, WorkloadState, bundle_from_pem};

use crate::clock::Clock;
use metrics::IdentityMetrics;

/// Settings of the identity manager.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// Reported to the control plane on every sync.
    pub instance_id: String,
    /// Long-poll wait of each sync call.
    pub sync_wait_seconds: u32,
    /// The trust domain the agent accepts; `None` accepts the control plane's.
    pub trust_domain: Option<TrustDomain>,
    /// Seeds the jitter RNG (renewal jitter, backoff jitter); `None` draws from the OS.
    pub jitter_seed: Option<u64>,
}

impl IdentityOptions {
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            sync_wait_seconds: crate::config::DEFAULT_SYNC_WAIT_SECONDS,
            trust_domain: None,
            jitter_seed: None,
        }
    }
}

/// State shared between the tasks and the handles that is not worth a channel.
#[derive(Debug, Default)]
struct Shared {
    /// The last attest/renew failure, cleared when a certificate is published.
    last_error: Mutex<Option<String>>,
    /// The last sync failure, cleared when a sync succeeds.
    last_sync_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn set_sync_error(&self, e: Option<String>) {
        *self
            .last_sync_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// A cheap, cloneable view of the published identity.
#[derive(Debug, Clone)]
pub struct IdentityHandle {
    state: watch::Receiver<Option<Arc<WorkloadState>>>,
    deny: watch::Receiver<Arc<DenyList>>,
    shared: Arc<Shared>,
}

impl IdentityHandle {
    /// A handle over channels someone else publishes on (data-plane tests with a fixed
    /// identity).
    pub fn from_receivers(
        state: watch::Receiver<Option<Arc<WorkloadState>>>,
        deny: watch::Receiver<Arc<DenyList>>,
    ) -> Self {
        Self {
            state,
            deny,
            shared: Arc::default(),
        }
    }

    /// The current state, `None` before the first certificate.
    pub fn current(&self) -> Option<Arc<WorkloadState>> {
        self.state.borrow().clone()
    }

    pub fn deny_list(&self) -> Arc<DenyList> {
        self.deny.borrow().clone()
    }

    /// A receiver that sees every published state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<WorkloadState>>> {
        self.state.clone()
    }

    pub fn subscribe_deny_list(&self) -> watch::Receiver<Arc<DenyList>> {
        self.deny.clone()
    }

    /// Waits for the first certificate; `None` if the manager stopped before one.
    pub async fn wait_ready(&self) -> Option<Arc<WorkloadState>> {
        let mut rx = self.state.clone();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// Why the last attest or renew failed, if it did (cleared by the next success).
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the last control-plane sync failed, if it did (cleared by the next success).
    pub fn last_sync_error(&self) -> Option<String> {
        self.shared
            .last_sync_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Readiness now: see [`readiness`].
    pub fn readiness(&self, now: OffsetDateTime) -> Result<(), NotReady> {
        readiness(self.state.borrow().as_deref(), now)
    }
}

/// Why the agent is not ready; one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("no workload certificate yet: attestation with the control plane has not succeeded")]
    NoIdentity,
    #[error("workload certificate for {spiffe_id} expired at {not_after}; renewal is failing")]
    Expired {
        spiffe_id: String,
        not_after: String,
    },
    #[error(
        "workload certificate for {spiffe_id} is not valid before {not_before}; check the clock"
    )]
    NotYetValid {
        spiffe_id: String,
        not_before: String,
    },
}

/// Ready means: a certificate is published and valid at `now`. Pure, for `/ready`.
pub fn readiness(state: Option<&WorkloadState>, now: OffsetDateTime) -> Result<(), NotReady> {
    let s = state.ok_or(NotReady::NoIdentity)?;
    if now >= s.not_after {
        return Err(NotReady::Expired {
            spiffe_id: s.spiffe_id.to_string(),
            not_after: rfc3339(s.not_after),
        });
    }
    if now < s.not_before {
        return Err(NotReady::NotYetValid {
            spiffe_id: s.spiffe_id.to_string(),
            not_before: rfc3339(s.not_before),
        });
    }
    Ok(())
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The running tasks of an identity manager.
#[derive(Debug)]
pub struct IdentityTasks {
    worker: JoinHandle<()>,
    sync: JoinHandle<()>,
}

impl IdentityTasks {
    /// Waits for both tasks (they end when the shutdown token is cancelled).
    pub async fn join(self) {
        for (name, task) in [("worker", self.worker), ("sync", self.sync)] {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(task = name, "identity task panicked");
            }
        }
    }
}

/// Starts the identity manager. Metrics go to `registry`; the tasks stop when `shutdown`
/// is cancelled.
pub fn spawn<S: CertificateSource>(
    source: S,
    options: IdentityOptions,
    clock: Arc<dyn Clock>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(IdentityHandle, IdentityTasks), prometheus::Error> {
    let (state_tx, state_rx) = watch::channel(None);
    let (deny_tx, deny_rx) = watch::channel(Arc::new(DenyList::default()));
    let metrics = IdentityMetrics::register(registry, state_rx.clone(), Arc::clone(&clock))?;
    let shared = Arc::new(Shared::default());
    let source = Arc::new(source);
    let (update_tx, update_rx) = mpsc::channel(1);
    let seed = options.jitter_seed.unwrap_or_else(rand::random);

    let worker = worker::Worker {
        source: Arc::clone(&source),
        clock,
        state_tx,
        metrics: metrics.clone(),
        shared: Arc::clone(&shared),
        trust_domain: options.trust_domain.clone(),
        rng: rand::SeedableRng::seed_from_u64(seed),
    };
    let sync = sync::SyncTask {
        source,
        state: state_rx.clone(),
        deny_tx,
        updates: update_tx,
        metrics,
        shared: Arc::clone(&shared),
        instance_id: options.instance_id,
        wait_seconds: options.sync_wait_seconds,
        rng: rand::SeedableRng::seed_from_u64(seed.wrapping_add(1)),
    };
    let tasks = IdentityTasks {
        worker: tokio::spawn(worker.run(update_rx, shutdown.clone())),
        sync: tokio::spawn(sync.run(shutdown)),
    };
    let handle = IdentityHandle {
        state: state_rx,
        deny: deny_rx,
        shared,
    };
    Ok((handle, tasks))
}

/// Exponential backoff for attestation and sync retries: 1 s doubling to 60 s, scaled
/// by `jitter` in `[0.8, 1.2]` so a fleet does not retry in lockstep.
pub(crate) fn backoff(attempt: u32, jitter: f64) -> std::time::Duration {
    use wardmesh_identity::rotation::{BACKOFF_MAX, BACKOFF_MIN};
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(jitter.clamp(0.8, 1.2)).max(BACKOFF_MIN)
}

#[cfg(test)]
mod tests;
