//! The composition root: open the store, load the CA, start the pollers, the retention
//! task and the API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wardmesh_identity::attest::SaTokenVerifier;
use wardmesh_identity::ca::CaDir;
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_store::Store;

use crate::api::{ApiState, router};
use crate::audit::{AuditLog, AuditSigner};
use crate::ca_state::CaManager;
use crate::config::ControlPlaneConfig;
use crate::identity::{Clock, IdentityService, system_clock};
use crate::metrics::Metrics;
use crate::operator::{DenyListPublisher, OperatorService, bootstrap_admin_token};
use crate::policy::{ContextPublisher, PolicyService, load_pseudonym_key};
use crate::retention::{Retention, RetentionMetrics};
use crate::tokenreview::{SaAttestor, TokenReviewer};

/// File (in the state dir) holding the bootstrap security-admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A started control plane. Dropping it does not stop it; call [`Self::shutdown`].
#[derive(Debug)]
pub struct RunningControlPlane {
    pub addr: SocketAddr,
    /// The injector webhook's address, when it is enabled.
    pub webhook_addr: Option<SocketAddr>,
    pub ca: Arc<CaManager>,
    pub store: Store,
    pub operator: OperatorService,
    pub audit: AuditLog,
    pub policy: PolicyService,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
}

impl RunningControlPlane {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        for t in &self.tasks {
            t.abort();
        }
        // Sign the head once more so the last calls served are covered too.
        if let Err(e) = self.audit.checkpoint_if_moved().await {
            tracing::warn!(error = %e, "could not write the final audit checkpoint");
        }
    }

    /// Resolves when the server stops (it only stops through [`Self::shutdown`]).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

pub async fn start(
    config: &ControlPlaneConfig,
    registry: Arc<prometheus::Registry>,
) -> anyhow::Result<RunningControlPlane> {
    start_with_clock(config, registry, system_clock()).await
}

pub async fn start_with_clock(
    config: &ControlPlaneConfig,
    registry: Arc<prometheus::Registry>,
    clock: Clock,
) -> anyhow::Result<RunningControlPlane> {
    let metrics = Metrics::new(&registry).context("registering metrics")?;
    let retention_metrics =
        RetentionMetrics::new(&registry).context("registering the retention metrics")?;
    let store = Store::open(&config.store_url)
        .await
        .context("opening the store")?;
    let seal =
        SealKey::from_env_or_file(&config.seal_key_file).context("loading the CA sealing key")?;
    let audit_seal = seal.clone();
    let policy_seal = seal.clone();
    let dir = CaDir::new(&config.ca_dir);
    let ca = Arc::new(
        CaManager::load(
            dir,
            seal,
            config.server_names.clone(),
            metrics.clone(),
            clock(),
        )
        .with_context(|| format!("loading the CA from {}", config.ca_dir.display()))?,
    );
    // After the CA: opening it proves the sealing key right, so a wrong key never seals a
    // new audit key on first start.
    let audit_signer = AuditSigner::load_or_create(&config.state_dir, &audit_seal)
        .context("loading the audit signing key")?;
    tracing::info!(key_id = %audit_signer.public().key_id(), public_key = %audit_signer.public().to_text(), "audit checkpoints are signed with this key");
    let audit = AuditLog::new(store.clone(), Arc::new(audit_signer), clock.clone());
    let td = ca.current().trust_domain().clone();
    let sa_verifier = match (&config.k8s, &config.token_review) {
        (Some(_), Some(_)) => {
            anyhow::bail!("configure either a Kubernetes JWKS or TokenReview attestation, not both")
        }
        (Some(k), None) => {
            let jwks = std::fs::read_to_string(&k.jwks_file)
                .with_context(|| format!("reading {}", k.jwks_file.display()))?;
            Some(Arc::new(SaAttestor::Jwks(Arc::new(
                SaTokenVerifier::new(&k.issuer, &jwks, td)
                    .context("loading the Kubernetes JWKS")?,
            ))))
        }
        (None, Some(r)) => Some(Arc::new(SaAttestor::TokenReview(
            TokenReviewer::new(r, td).context("setting up Kubernetes TokenReview")?,
        ))),
        (None, None) => None,
    };
    write_bootstrap_token(&store, &config.state_dir, clock()).await?;
    let deny = DenyListPublisher::load(&store, metrics.clone())
        .await
        .context("loading the deny-list")?;

    let identity = IdentityService {
        store: store.clone(),
        ca: ca.clone(),
        sa_verifier,
        leaf_ttl: config.leaf_ttl,
        metrics,
        clock: clock.clone(),
    };
    let operator = OperatorService {
        store: store.clone(),
        ca: ca.clone(),
        deny: deny.clone(),
        clock: clock.clone(),
    };
    let policy = load_policy_service(config, &store, &policy_seal, clock.clone()).await?;
    let state = ApiState {
        identity,
        operator: operator.clone(),
        audit: audit.clone(),
        policy: policy.clone(),
        registry,
    };

    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "binding {}; is another control plane running?",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let mut tasks = vec![
        tokio::spawn(ca.clone().poll(config.ca_poll_interval, clock.clone())),
        tokio::spawn(deny.poll(store.clone(), config.ca_poll_interval)),
        tokio::spawn(policy.context.clone().poll(
            store.clone(),
            config.ca_poll_interval,
            clock.clone(),
        )),
        tokio::spawn(
            audit
                .clone()
                .run_checkpoints(config.audit_checkpoint_interval),
        ),
        tokio::spawn(
            Retention::new(
                store.clone(),
                audit.clone(),
                config.retention.clone(),
                clock.clone(),
                retention_metrics,
            )
            .run(),
        ),
    ];
    log_retention(&config.retention);
    let webhook_addr = match &config.injector {
        Some(inj) => {
            let l = TcpListener::bind(inj.listen)
                .await
                .with_context(|| format!("binding the injector webhook on {}", inj.listen))?;
            let a = l.local_addr()?;
            // Aborted with the other tasks on shutdown: reviews are short and stateless.
            tasks.push(tokio::spawn(crate::injector::serve(
                l,
                ca.clone(),
                inj.clone(),
                std::future::pending(),
            )));
            tracing::info!(addr = %a, "injector webhook listening");
            Some(a)
        }
        None => None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(
        listener,
        ca.subscribe(),
        router(state),
        async move {
            let _ = stopped.await;
        },
    ));
    tracing::info!(%addr, store = store.backend_name(), trust_domain = %ca.current().trust_domain(), "control plane listening");
    Ok(RunningControlPlane {
        addr,
        webhook_addr,
        ca,
        store,
        operator,
        audit,
        policy,
        stop: Some(stop),
        tasks,
        server,
    })
}

/// Says at start what will be deleted when, and warns about an audit retention shorter
/// than HIPAA's six years.
fn log_retention(r: &crate::config::RetentionConfig) {
    let days = |d: Option<std::time::Duration>| d.map(|d| d.as_secs() / 86_400);
    tracing::info!(
        flow_retention_days = ?days(r.flow_retention),
        audit_retention_days = ?days(r.audit_retention),
        interval_secs = r.retention_interval.as_secs(),
        "retention (None: kept forever)"
    );
    if let Some(audit) = r.audit_retention
        && audit < crate::config::HIPAA_AUDIT_RETENTION
    {
        tracing::warn!(
            audit_retention_days = audit.as_secs() / 86_400,
            "the audit retention is shorter than the six years HIPAA expects for audit documentation"
        );
    }
}

async fn write_bootstrap_token(
    store: &Store,
    state_dir: &Path,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    if let Some(token) = bootstrap_admin_token(store, now).await? {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join(ADMIN_TOKEN_FILE);
        write_private(&path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), "wrote the bootstrap security-admin token");
    }
    Ok(())
}

/// The policy service: verification keys from the config, the mesh pseudonym key from
/// the store (created on first start), and the agents' context.
async fn load_policy_service(
    config: &ControlPlaneConfig,
    store: &Store,
    seal: &SealKey,
    clock: Clock,
) -> anyhow::Result<PolicyService> {
    let mut keys = Vec::new();
    for k in &config.policy_keys {
        let pem = std::fs::read_to_string(&k.file)
            .with_context(|| format!("reading policy key {}", k.file.display()))?;
        keys.push(
            wardmesh_policy::VerifyingKey::from_spki_pem(&pem, &k.key_id)
                .with_context(|| format!("loading policy key {}", k.file.display()))?,
        );
    }
    let pseudonym_key = load_pseudonym_key(store, seal, clock())
        .await
        .context("loading the subject pseudonym key")?;
    let context = ContextPublisher::load(store, pseudonym_key, clock())
        .await
        .context("loading the policy context")?;
    Ok(PolicyService {
        store: store.clone(),
        clock,
        keys: Arc::new(keys),
        context,
    })
}
