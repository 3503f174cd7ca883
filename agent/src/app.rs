//! The composition root: configuration in, running tasks out, in one linear function.
//!
//! [`start`] validates the config, reads the bootstrap trust bundle, binds the admin,
//! inbound and outbound ports, starts the identity manager, the data plane and the
//! admin server, and returns a
//! [`RunningAgent`] with the handles that `wardctl up` and integration tests embed.
//! [`run`] is what the binary calls: start, wait for the shutdown signal, stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::authz::{AllowList, AuthzHandle, Gate};
use crate::clock::{Clock, SystemClock};
use crate::config::AgentConfig;
use crate::identity::{
    self, CertificateSource, ControlPlaneClient, DenyList, IdentityHandle, IdentityOptions,
    IdentityTasks, WorkloadState,
};
use crate::jwt::JwtValidator;
use crate::policy::worker::activate;
use crate::policy::{PolicyHandle, PolicyLoader, PolicyMetrics, PolicySource, WorkerParts};
use crate::proxy::{self, DataPlane};

/// A started agent: handles to what it publishes, and a way to stop it.
#[derive(Debug)]
pub struct RunningAgent {
    identity: IdentityHandle,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    identity_tasks: IdentityTasks,
    admin_task: JoinHandle<()>,
    dataplane: DataPlane,
    policy: PolicyHandle,
    /// The policy worker, the JWKS refreshers and the flow shipper.
    background: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    pub fn identity(&self) -> &IdentityHandle {
        &self.identity
    }

    /// The workload state channel (`None` until the first certificate).
    pub fn workload_state(&self) -> watch::Receiver<Option<Arc<WorkloadState>>> {
        self.identity.subscribe()
    }

    pub fn deny_list(&self) -> watch::Receiver<Arc<DenyList>> {
        self.identity.subscribe_deny_list()
    }

    /// The admin server's bound address (resolves port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The inbound (mesh mTLS) listener's bound address, when configured.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.dataplane.inbound_addr()
    }

    /// The outbound (app-facing) listener's bound address, when configured.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.dataplane.outbound_addr()
    }

    /// The authorizer in force; `set` swaps it for the next request (the policy engine
    /// plugs in here).
    pub fn authorizer(&self) -> &AuthzHandle {
        self.dataplane.authorizer()
    }

    /// The running policy's status and the policy context (consents, grants).
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Cancelling this token stops the agent, like [`RunningAgent::shutdown`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every task and waits for them: the listeners stop accepting and in-flight
    /// requests get their drain deadline (10 s by default); open admin connections get
    /// up to 5 s.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.dataplane.join().await;
        self.identity_tasks.join().await;
        for t in self.background {
            let _ = t.await;
        }
        if let Err(e) = self.admin_task.await
            && e.is_panic()
        {
            tracing::error!("admin server panicked");
        }
        info!("agent stopped");
    }
}

/// Starts an agent against the control plane in `config`. Metrics go to `registry`.
/// Fails only on local problems (invalid config, unreadable bundle, admin port taken);
/// an unreachable control plane is retried in the background.
pub async fn start(config: AgentConfig, registry: Registry) -> anyhow::Result<RunningAgent> {
    config.validate()?;
    let bootstrap = config.load_trust_bundle()?;
    let source = ControlPlaneClient::from_config(&config, &bootstrap)?;
    let policy_source = ControlPlaneClient::from_config(&config, &bootstrap)?;
    start_with_sources(
        config,
        registry,
        Arc::new(SystemClock),
        source,
        Some(policy_source),
    )
    .await
}

/// [`start`] with another certificate source and clock (tests, embedding); no policy
/// distribution (the allow-list or a local `[policy] bundle` decides).
pub async fn start_with_source<S: CertificateSource>(
    config: AgentConfig,
    registry: Registry,
    clock: Arc<dyn Clock>,
    source: S,
) -> anyhow::Result<RunningAgent> {
    start_with_sources::<S, ControlPlaneClient>(config, registry, clock, source, None).await
}

/// The composition root: identity, policy, data plane, admin — in that order.
pub async fn start_with_sources<S: CertificateSource, P: PolicySource>(
    config: AgentConfig,
    registry: Registry,
    clock: Arc<dyn Clock>,
    source: S,
    policy_source: Option<P>,
) -> anyhow::Result<RunningAgent> {
    config.validate()?;
    let listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin address {}", config.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let listeners = proxy::bind(config.inbound.as_ref(), config.outbound.as_ref()).await?;
    let shutdown = CancellationToken::new();

    let options = IdentityOptions {
        instance_id: config.instance_id.clone(),
        sync_wait_seconds: config.sync_wait_seconds,
        trust_domain: config.trust_domain.clone(),
        jitter_seed: None,
    };
    let (identity, identity_tasks) = identity::spawn(
        source,
        options,
        Arc::clone(&clock),
        &registry,
        shutdown.child_token(),
    )
    .context("cannot register identity metrics")?;

    // Until a policy bundle loads, the allow-list decides (empty: default deny).
    let authz = AuthzHandle::new(Arc::new(AllowList::new(config.allow.iter().cloned())));
    let policy_metrics = PolicyMetrics::new(&registry).context("cannot register policy metrics")?;
    let static_bundle = config.policy.bundle.is_some();
    let policy = PolicyHandle::new(if static_bundle {
        "file"
    } else {
        "control-plane"
    });
    let loader = Arc::new(PolicyLoader::new(&config.policy).context("invalid [policy] section")?);
    if let Some(path) = config.policy.bundle.clone() {
        let l = Arc::clone(&loader);
        let (engine, sha) = tokio::task::spawn_blocking(move || l.load_file(&path))
            .await?
            .context("the local policy bundle does not load")?;
        activate(
            &authz,
            &policy,
            &policy_metrics,
            engine,
            config.policy.mode,
            &sha,
        );
    }
    let mut background = Vec::new();
    if let Some(ps) = policy_source {
        let parts = WorkerParts {
            identity: identity.clone(),
            authz: authz.clone(),
            handle: policy.clone(),
            loader,
            metrics: policy_metrics,
            // A caller-only agent decides nothing: it takes the context, not bundles.
            static_bundle: static_bundle || config.inbound.is_none(),
        };
        background.push(crate::policy::spawn(ps, parts, shutdown.child_token()));
    }
    let jwt = match &config.oidc {
        Some(oidc) => {
            let v = JwtValidator::new(oidc).context("invalid [oidc] section")?;
            let tasks = v.spawn_refresh(Arc::clone(&clock), shutdown.child_token());
            background.push(tokio::spawn(tasks.join()));
            Some(v)
        }
        None => None,
    };

    let telemetry = match &config.telemetry {
        Some(t) => {
            let started = crate::telemetry::start(
                t,
                &registry,
                &config.base_url()?,
                identity.subscribe(),
                &config.instance_id,
                shutdown.child_token(),
            )
            .await
            .with_context(|| format!("cannot open the flow spool in {}", t.spool_dir.display()))?;
            background.push(started.shipper);
            Some(started.telemetry)
        }
        None => {
            tracing::warn!(
                "flow telemetry is off: requests leave no flow records (set --spool-dir)"
            );
            None
        }
    };

    let gate = Gate::new(authz, policy.clone(), jwt.clone());
    let dataplane = proxy::spawn(
        listeners,
        identity.clone(),
        gate,
        &registry,
        Arc::clone(&clock),
        telemetry,
        shutdown.child_token(),
    )?;

    let admin_state = AdminState::new(&config, identity.clone(), registry, clock)?
        .with_policy(policy.clone(), jwt);
    let admin_task = tokio::spawn(admin::serve(
        listener,
        Arc::new(admin_state),
        shutdown.child_token(),
    ));
    info!(
        admin = %admin_addr,
        control_plane = %config.control_plane_url,
        instance_id = %config.instance_id,
        "agent started"
    );
    Ok(RunningAgent {
        identity,
        admin_addr,
        shutdown,
        identity_tasks,
        admin_task,
        dataplane,
        policy,
        background,
    })
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let agent = start(config, Registry::new()).await?;
    shutdown.await;
    info!("shutting down");
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
