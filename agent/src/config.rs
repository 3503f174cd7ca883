//! The agent's effective configuration. It serializes for `/config_dump`; secrets (the
//! join token) serialize and debug-print as `<redacted>`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::TrustBundle;
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::identity::Attestation;
use wardmesh_proto::ports;

use crate::proxy::{InboundConfig, OutboundConfig};

/// How long the control plane may hold a sync long poll, by default.
pub const DEFAULT_SYNC_WAIT_SECONDS: u32 = 30;
/// The control plane's upper bound for `wait_seconds`.
pub const MAX_SYNC_WAIT_SECONDS: u32 = 60;
/// Timeout of attest and renew calls (sync gets its wait plus [`SYNC_GRACE`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a sync call may take beyond the long-poll wait.
pub const SYNC_GRACE: Duration = Duration::from_secs(10);
/// Service-account token files larger than this are refused.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("control plane url {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read trust bundle {path}: {source}")]
    ReadBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust bundle {path} holds no usable PEM certificate: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("sync wait must be between 1 and {MAX_SYNC_WAIT_SECONDS} seconds (got {0})")]
    SyncWait(u32),
    #[error("instance id must be 1-128 characters of [A-Za-z0-9._-] (got {0:?})")]
    InstanceId(String),
    #[error("cannot read service-account token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("the join token is empty; create one with `wardctl token create`")]
    EmptyJoinToken,
    #[error(transparent)]
    DataPlane(#[from] crate::proxy::DataPlaneConfigError),
    #[error(
        "route {0:?} carries PHI (fail-closed: no access without audit) but flow telemetry is \
         off; set --spool-dir (WARDMESH_SPOOL_DIR) or [telemetry] spool_dir"
    )]
    PhiWithoutTelemetry(String),
    #[error("invalid [telemetry] section: {0}")]
    Telemetry(#[from] crate::spool::SpoolError),
}

/// A string that never appears in logs, debug output or `/config_dump`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Where the agent's first identity comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttestationConfig {
    /// A single-use join token (`wardctl token create`): a restarted agent needs a new one.
    JoinToken { token: SecretString },
    /// A Kubernetes projected service-account token, re-read on every attestation.
    SaTokenFile { path: PathBuf },
}

impl AttestationConfig {
    /// The attestation to send now (reads the token file each time: kubelet rotates it).
    pub fn read(&self) -> Result<Attestation, ConfigError> {
        match self {
            Self::JoinToken { token } => {
                let token = token.expose().trim();
                if token.is_empty() {
                    return Err(ConfigError::EmptyJoinToken);
                }
                Ok(Attestation::JoinToken {
                    token: token.to_owned(),
                })
            }
            Self::SaTokenFile { path } => Ok(Attestation::K8sSaToken {
                token: read_token_file(path)?,
            }),
        }
    }
}

fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(err(format!(
            "file is {} bytes; a token is at most {MAX_TOKEN_FILE_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("file is empty".into()));
    }
    Ok(token.to_owned())
}

/// Everything `wardmesh-agent run` needs.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// Base URL of the control-plane API, e.g. `https://127.0.0.1:7443`.
    pub control_plane_url: String,
    /// PEM roots the agent trusts before its first sync (bootstrap trust).
    pub trust_bundle: PathBuf,
    pub attestation: AttestationConfig,
    /// Where `/live`, `/ready`, `/metrics` and `/config_dump` are served.
    pub admin_addr: SocketAddr,
    /// Identifies this agent process to the control plane (default: random hex).
    pub instance_id: String,
    /// Long-poll wait of `/v1/agent/sync`.
    pub sync_wait_seconds: u32,
    /// The expected trust domain; `None` accepts the control plane's (still checked
    /// against every SVID and bundle it sends).
    pub trust_domain: Option<TrustDomain>,
    /// The mesh-facing listener; `None`: no inbound data plane.
    pub inbound: Option<InboundConfig>,
    /// The app-facing listener; `None`: no outbound data plane.
    pub outbound: Option<OutboundConfig>,
    /// SPIFFE IDs allowed to call this workload (the allow-list authorizer; empty
    /// denies every caller).
    pub allow: Vec<SpiffeId>,
    /// The Rego/wasm policy: keys, cache, optional local bundle.
    pub policy: crate::policy::PolicyConfig,
    /// OIDC issuers for end-user bearer tokens; `None`: tokens are not examined.
    pub oidc: Option<crate::jwt::OidcConfig>,
    /// Flow telemetry (`[telemetry]`, `--spool-dir`); `None`: no flow records, which a
    /// PHI route does not allow.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

impl AgentConfig {
    /// A configuration with the defaults: admin on `127.0.0.1:7191`, a random instance
    /// id, 30 s sync wait.
    pub fn new(
        control_plane_url: impl Into<String>,
        trust_bundle: impl Into<PathBuf>,
        attestation: AttestationConfig,
    ) -> Self {
        Self {
            control_plane_url: control_plane_url.into(),
            trust_bundle: trust_bundle.into(),
            attestation,
            admin_addr: default_admin_addr(),
            instance_id: random_instance_id(),
            sync_wait_seconds: DEFAULT_SYNC_WAIT_SECONDS,
            trust_domain: None,
            inbound: None,
            outbound: None,
            allow: Vec::new(),
            policy: crate::policy::PolicyConfig::default(),
            oidc: None,
            telemetry: None,
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.base_url()?;
        if !(1..=MAX_SYNC_WAIT_SECONDS).contains(&self.sync_wait_seconds) {
            return Err(ConfigError::SyncWait(self.sync_wait_seconds));
        }
        let id_ok = !self.instance_id.is_empty()
            && self.instance_id.len() <= 128
            && self
                .instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(ConfigError::InstanceId(self.instance_id.clone()));
        }
        if let AttestationConfig::JoinToken { token } = &self.attestation
            && token.expose().trim().is_empty()
        {
            return Err(ConfigError::EmptyJoinToken);
        }
        if let Some(inbound) = &self.inbound {
            inbound.validate()?;
            if self.telemetry.is_none()
                && let Some(r) = inbound.routes.iter().find(|r| r.phi)
            {
                return Err(ConfigError::PhiWithoutTelemetry(r.template.clone()));
            }
        }
        if let Some(t) = &self.telemetry {
            t.validate()?;
        }
        if let Some(outbound) = &self.outbound {
            outbound.discovery()?;
        }
        Ok(())
    }

    /// The control plane's base URL; must be `https` with a host.
    pub fn base_url(&self) -> Result<reqwest::Url, ConfigError> {
        let bad = |reason: &str| ConfigError::BadUrl {
            url: self.control_plane_url.clone(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(&self.control_plane_url).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad("the control plane is only reached over https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a base url has no query or fragment"));
        }
        Ok(url)
    }

    /// Reads the bootstrap trust bundle (revision 0: anything the control plane sends is
    /// newer).
    pub fn load_trust_bundle(&self) -> Result<TrustBundle, ConfigError> {
        let path = &self.trust_bundle;
        let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadBundle {
            path: path.clone(),
            source,
        })?;
        let roots = certs_from_pem(&pem).map_err(|e| ConfigError::BadBundle {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let bundle = TrustBundle {
            trust_domain: self.trust_domain.clone().unwrap_or_default(),
            roots,
            revision: 0,
        };
        bundle.root_store().map_err(|e| ConfigError::BadBundle {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(bundle)
    }
}

/// `127.0.0.1:7191`.
pub fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports::AGENT_ADMIN))
}

/// 16 random bytes as hex.
pub fn random_instance_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig::new(
            "https://127.0.0.1:7443",
            "/nonexistent/bundle.pem",
            AttestationConfig::JoinToken {
                token: SecretString::new("wmjt_supersecret"),
            },
        )
    }

    #[test]
    fn defaults_and_redaction() {
        let c = config();
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7191");
        assert_eq!(c.instance_id.len(), 32);
        assert_ne!(c.instance_id, config().instance_id, "random per process");
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("supersecret"), "{json}");
        assert!(json.contains("<redacted>"), "{json}");
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = config();
        c.control_plane_url = "http://127.0.0.1:7443".into();
        assert!(c.validate().unwrap_err().to_string().contains("https"));
        let mut c = config();
        c.sync_wait_seconds = 61;
        assert!(matches!(c.validate(), Err(ConfigError::SyncWait(61))));
        let mut c = config();
        c.instance_id = "a b".into();
        assert!(matches!(c.validate(), Err(ConfigError::InstanceId(_))));
        let mut c = config();
        c.attestation = AttestationConfig::JoinToken {
            token: SecretString::new("  "),
        };
        assert!(matches!(c.validate(), Err(ConfigError::EmptyJoinToken)));
        let err = config().load_trust_bundle().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
    }

    #[test]
    fn sa_token_file_is_read_fresh_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let att = AttestationConfig::SaTokenFile { path: path.clone() };
        assert!(att.read().is_err(), "missing file");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(
            att.read().unwrap(),
            Attestation::K8sSaToken {
                token: "first".into()
            }
        );
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            att.read().unwrap(),
            Attestation::K8sSaToken {
                token: "second".into()
            }
        );
    }
}
