//! The policy worker: long-polls the control plane's policy context, publishes it to the
//! request path, and activates the announced bundle when it changes — fetch, verify,
//! compile on the blocking pool, then one atomic swap of the authorizer. Failures keep
//! the running policy (fail static) and are retried when the announcement changes or
//! after [`RETRY_FAILED_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wardmesh_policy::PolicyEngine;
use wardmesh_proto::policy::{ActivePolicy, PolicyContextRequest, PolicyMode};

use super::{ContextSnapshot, LoadFailure, PolicyHandle, PolicyLoader, PolicySource};
use crate::authz::{AuthzHandle, WasmAuthorizer};
use crate::identity::IdentityHandle;

const CONTEXT_WAIT_SECONDS: u32 = 30;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A bundle that failed to load is fetched again after this long (or when the control
/// plane announces another one).
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);

/// Policy metrics (bounded labels: revision and mode of the one running bundle).
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    loads: IntCounterVec,
    info: IntGaugeVec,
}

impl PolicyMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let loads = IntCounterVec::new(
            Opts::new(
                "wardmesh_agent_policy_loads_total",
                "Policy bundle activations by result (ok, or the failure kind)",
            ),
            &["result"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "wardmesh_agent_policy_info",
                "1 for the running policy bundle's revision and mode",
            ),
            &["revision", "mode"],
        )?;
        registry.register(Box::new(loads.clone()))?;
        registry.register(Box::new(info.clone()))?;
        Ok(Self { loads, info })
    }

    pub(crate) fn loaded(&self, revision: &str, mode: PolicyMode) {
        self.loads.with_label_values(&["ok"]).inc();
        self.info.reset();
        self.info
            .with_label_values(&[revision, mode.as_str()])
            .set(1);
    }

    pub(crate) fn failed(&self, kind: &str) {
        self.loads.with_label_values(&[kind]).inc();
    }
}

/// Activates `engine` in `mode` and records it everywhere an operator looks.
pub(crate) fn activate(
    authz: &AuthzHandle,
    handle: &PolicyHandle,
    metrics: &PolicyMetrics,
    engine: PolicyEngine,
    mode: PolicyMode,
    sha256: &str,
) {
    let revision = engine.revision().to_owned();
    authz.set(Arc::new(WasmAuthorizer::new(engine, mode)));
    metrics.loaded(&revision, mode);
    handle.update_status(|s| {
        s.revision = Some(revision.clone());
        s.mode = Some(mode);
        s.sha256 = Some(sha256.to_owned());
        s.last_error = None;
    });
    info!(%revision, mode = mode.as_str(), "policy activated");
}

pub(crate) fn record_failure(
    handle: &PolicyHandle,
    metrics: &PolicyMetrics,
    revision: &str,
    e: &LoadFailure,
) {
    metrics.failed(e.kind());
    warn!(%revision, error = %e, "policy bundle not activated; the running policy stays in force");
    handle.update_status(|s| s.last_error = Some(format!("revision {revision}: {e}")));
}

/// What the worker needs besides the source.
#[derive(Debug, Clone)]
pub struct WorkerParts {
    pub identity: IdentityHandle,
    pub authz: AuthzHandle,
    pub handle: PolicyHandle,
    pub loader: Arc<PolicyLoader>,
    pub metrics: PolicyMetrics,
    /// A local bundle is running: take only the context from the control plane.
    pub static_bundle: bool,
}

pub fn spawn<S: PolicySource>(
    source: S,
    parts: WorkerParts,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = run(source, parts) => {}
            () = shutdown.cancelled() => {}
        }
    })
}

struct Running {
    sha256: String,
    mode: PolicyMode,
    engine: PolicyEngine,
}

async fn run<S: PolicySource>(source: S, p: WorkerParts) {
    let mut generation = String::new();
    let mut running: Option<Running> = None;
    let mut failed: Option<(String, tokio::time::Instant)> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(state) = p.identity.wait_ready().await else {
            return;
        };
        let req = PolicyContextRequest {
            generation: generation.clone(),
            wait_seconds: CONTEXT_WAIT_SECONDS,
            running_revision: running.as_ref().map(|r| r.engine.revision().to_owned()),
        };
        let ctx = match source.context(&state, &req).await {
            Ok(ctx) => ctx,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "policy context sync failed; keeping the last policy and context");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        generation = ctx.generation.clone();
        let active = ctx.active.clone();
        p.handle.set_context(ContextSnapshot::from_wire(ctx));
        let Some(active) = active.filter(|_| !p.static_bundle) else {
            continue;
        };
        match &running {
            Some(r) if r.sha256 == active.sha256 && r.mode == active.mode => continue,
            Some(r) if r.sha256 == active.sha256 => {
                // Only the mode changed: same engine, new wrapper.
                let engine = r.engine.clone();
                activate(
                    &p.authz,
                    &p.handle,
                    &p.metrics,
                    engine.clone(),
                    active.mode,
                    &active.sha256,
                );
                running = Some(Running {
                    sha256: active.sha256.clone(),
                    mode: active.mode,
                    engine,
                });
                continue;
            }
            _ => {}
        }
        if let Some((sha, at)) = &failed
            && *sha == active.sha256
            && at.elapsed() < RETRY_FAILED_AFTER
        {
            continue;
        }
        match fetch_and_load(&source, &state, &p.loader, &active).await {
            Ok(engine) => {
                activate(
                    &p.authz,
                    &p.handle,
                    &p.metrics,
                    engine.clone(),
                    active.mode,
                    &active.sha256,
                );
                running = Some(Running {
                    sha256: active.sha256.clone(),
                    mode: active.mode,
                    engine,
                });
                failed = None;
            }
            Err(e) => {
                record_failure(&p.handle, &p.metrics, &active.revision, &e);
                failed = Some((active.sha256.clone(), tokio::time::Instant::now()));
            }
        }
    }
}

async fn fetch_and_load<S: PolicySource>(
    source: &S,
    state: &crate::identity::WorkloadState,
    loader: &Arc<PolicyLoader>,
    active: &ActivePolicy,
) -> Result<PolicyEngine, LoadFailure> {
    let bytes = source
        .bundle(state, &active.revision)
        .await
        .map_err(|e| LoadFailure::Fetch(e.to_string()))?;
    let loader = Arc::clone(loader);
    let sha = active.sha256.clone();
    tokio::task::spawn_blocking(move || loader.load(&bytes, Some(&sha)))
        .await
        .map_err(|e| LoadFailure::Fetch(format!("the loader task failed: {e}")))?
}
