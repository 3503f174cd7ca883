//! `wardmesh-control-plane`: parse flags into a config and run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use wardmesh_control_plane::config::{ControlPlaneConfig, K8sAttestation, default_server_names};
use wardmesh_control_plane::injector::InjectorConfig;
use wardmesh_control_plane::tokenreview::TokenReviewConfig;

/// The wardmesh control plane: CA, attestation, identity issuance and the operator API.
///
/// Example:
///   wardmesh-control-plane --home /var/lib/wardmesh --listen 0.0.0.0:7443
///
/// In Kubernetes (deploy/): TokenReview attestation and the injector webhook:
///   wardmesh-control-plane --k8s-token-review --webhook-listen 0.0.0.0:7444
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// State directory: ca/, seal.key, wardmesh.db and admin.token live here by default.
    #[arg(long, env = "WARDMESH_HOME", default_value = "/var/lib/wardmesh")]
    home: PathBuf,
    /// Address of the API (agents, wardctl, console).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// Store URL: sqlite:<file> (default <home>/wardmesh.db) or postgres://…
    #[arg(long, env = "WARDMESH_STORE_URL")]
    store: Option<String>,
    /// CA directory (default <home>/ca), created by `wardctl ca init`.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// CA sealing key file (default <home>/seal.key); WARDMESH_CA_SEAL_KEY overrides.
    #[arg(long)]
    seal_key_file: Option<PathBuf>,
    /// Workload certificate lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    leaf_ttl_seconds: u64,
    /// Extra DNS names/IPs for the serving certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Seconds between signed audit checkpoints (when the log moved).
    #[arg(long, default_value_t = 60)]
    audit_checkpoint_seconds: u64,
    /// Kubernetes service-account token issuer (enables SA-token attestation).
    #[arg(long, requires = "k8s_jwks_file")]
    k8s_issuer: Option<String>,
    /// The issuer's JWKS (saved from the API server's /openid/v1/jwks).
    #[arg(long, requires = "k8s_issuer")]
    k8s_jwks_file: Option<PathBuf>,
    /// Verify agents' service-account tokens with the API server's TokenReview, using
    /// this pod's own service account (in-cluster; see deploy/).
    #[arg(long, conflicts_with = "k8s_issuer")]
    k8s_token_review: bool,
    /// Serve the sidecar injector webhook on this address (TLS; off unless set).
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// Agent image the injector adds to pods.
    #[arg(long, default_value = wardmesh_control_plane::injector::DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// Control-plane URL injected agents connect to.
    #[arg(long, default_value = wardmesh_control_plane::injector::DEFAULT_CONTROL_PLANE_URL)]
    agent_control_plane_url: String,
    /// Policy bundle verification key, `<key-id>=<public key PEM>` (repeatable); without
    /// one, `wardctl policy push` is refused.
    #[arg(long = "policy-public-key", value_name = "KEY_ID=FILE")]
    policy_keys: Vec<wardmesh_control_plane::config::PolicyKey>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let a = Args::parse();
    let mut cfg = ControlPlaneConfig::local(&a.home, a.listen);
    if let Some(s) = a.store {
        cfg.store_url = s;
    }
    if let Some(d) = a.ca_dir {
        cfg.ca_dir = d;
    }
    if let Some(k) = a.seal_key_file {
        cfg.seal_key_file = k;
    }
    if a.leaf_ttl_seconds < 60 || a.leaf_ttl_seconds > 24 * 3600 {
        anyhow::bail!("--leaf-ttl-seconds must be between 60 and 86400");
    }
    cfg.leaf_ttl = Duration::from_secs(a.leaf_ttl_seconds);
    if a.audit_checkpoint_seconds == 0 || a.audit_checkpoint_seconds > 3600 {
        anyhow::bail!("--audit-checkpoint-seconds must be between 1 and 3600");
    }
    cfg.audit_checkpoint_interval = Duration::from_secs(a.audit_checkpoint_seconds);
    cfg.server_names = default_server_names();
    cfg.server_names.extend(a.server_names);
    if let (Some(issuer), Some(jwks_file)) = (a.k8s_issuer, a.k8s_jwks_file) {
        cfg.k8s = Some(K8sAttestation { issuer, jwks_file });
    }
    cfg.policy_keys = a.policy_keys;
    if a.k8s_token_review {
        cfg.token_review = Some(TokenReviewConfig::in_cluster()?);
    }
    if let Some(listen) = a.webhook_listen {
        let mut inj = InjectorConfig::new(listen);
        inj.agent_image = a.agent_image;
        inj.control_plane_url = a.agent_control_plane_url;
        cfg.injector = Some(inj);
    }
    let registry = Arc::new(prometheus::Registry::new());
    let cp = wardmesh_control_plane::start(&cfg, registry).await?;
    // Kubernetes stops pods with SIGTERM; both signals end with a final audit checkpoint.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    cp.shutdown().await;
    Ok(())
}
