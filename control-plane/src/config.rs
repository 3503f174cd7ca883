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
