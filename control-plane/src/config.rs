//! Control-plane configuration: what `main` parses and `/config_dump`-style output shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Kubernetes service-account token attestation settings.
#[derive(Debug, Clone, Serialize)]
pub struct K8sAttestation {
    /// The API server's service-account issuer (`iss` claim).
    pub issuer: String,
    /// The issuer's JWKS document (`/openid/v1/jwks`), saved to a file.
    pub jwks_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub ca_dir: PathBuf,
    /// File with the CA sealing key; `WARDMESH_CA_SEAL_KEY` takes precedence.
    pub seal_key_file: PathBuf,
    /// `sqlite:<file>` or `postgres://…` (shown redacted).
    #[serde(serialize_with = "redacted_url")]
    pub store_url: String,
    /// Where the bootstrap operator token is written on first start.
    pub state_dir: PathBuf,
    #[serde(with = "secs")]
    pub leaf_ttl: Duration,
    #[serde(with = "secs")]
    pub ca_poll_interval: Duration,
    /// How often a signed checkpoint is written over the audit chain head (when it moved).
    #[serde(with = "secs")]
    pub audit_checkpoint_interval: Duration,
    /// Host names and IPs in the serving certificate besides the SPIFFE ID.
    pub server_names: Vec<String>,
    pub k8s: Option<K8sAttestation>,
    /// SA-token attestation through the API server's TokenReview (instead of `k8s`).
    pub token_review: Option<crate::tokenreview::TokenReviewConfig>,
    /// The sidecar injector webhook (its own TLS listener); off unless configured.
    pub injector: Option<crate::injector::InjectorConfig>,
    /// Public keys a pushed policy bundle's signature must verify with (none: pushes
    /// are refused).
    pub policy_keys: Vec<PolicyKey>,
}

/// A policy verification key: the `kid` bundles name and a SubjectPublicKeyInfo PEM file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyKey {
    pub key_id: String,
    pub file: PathBuf,
}

impl std::str::FromStr for PolicyKey {
    type Err = String;

    /// `<key-id>=<pem file>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((id, file)) if !id.trim().is_empty() && !file.trim().is_empty() => Ok(Self {
                key_id: id.trim().to_owned(),
                file: PathBuf::from(file.trim()),
            }),
            _ => Err(format!(
                "policy key {s:?} must be <key-id>=<public key PEM file>, e.g. clinic-2025=/etc/wardmesh/policy.pub.pem"
            )),
        }
    }
}

impl ControlPlaneConfig {
    /// Defaults for a local, single-node control plane rooted at `home`.
    pub fn local(home: &std::path::Path, listen: SocketAddr) -> Self {
        Self {
            listen,
            ca_dir: home.join("ca"),
            seal_key_file: home.join("seal.key"),
            store_url: format!("sqlite:{}", home.join("wardmesh.db").display()),
            state_dir: home.to_owned(),
            leaf_ttl: Duration::from_secs(3600),
            ca_poll_interval: Duration::from_secs(2),
            audit_checkpoint_interval: Duration::from_secs(60),
            server_names: default_server_names(),
            k8s: None,
            token_review: None,
            injector: None,
            policy_keys: Vec::new(),
        }
    }
}

pub fn default_server_names() -> Vec<String> {
    vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "wardmesh-control-plane.wardmesh-system.svc".into(),
    ]
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&wardmesh_store::redact_url(url))
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
