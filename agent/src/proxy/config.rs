//! Data-plane configuration: the `[inbound]` and `[outbound]` sections and the `allow`
//! list, as they appear in the agent's TOML file (`--config`), in `AgentConfig` and in
//! `/config_dump`. Durations are milliseconds so the file needs no duration syntax.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wardmesh_identity::SpiffeId;
use wardmesh_proto::ports;

use crate::discovery::{Discovery, DiscoveryError, ServiceEntry};

/// Smallest and largest accepted header limit (hyper needs at least 8 KiB of buffer).
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the line, the column and the offending key.
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{section}.{key} must be {expected} (got {got})")]
    Range {
        section: &'static str,
        key: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("outbound.services: {0}")]
    Services(#[from] DiscoveryError),
    #[error("inbound.app {0} is the inbound listener itself; point it at the application")]
    AppLoop(SocketAddr),
    #[error("inbound.routes: {0}")]
    Routes(#[from] crate::routes::RouteError),
}

/// The inbound (mesh-facing) listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// The local application (`127.0.0.1:<port>`). Unset: the port the peer originally
    /// dialled (transparent mode, `SO_ORIGINAL_DST`) on 127.0.0.1.
    pub app: Option<SocketAddr>,
    /// Accept plaintext (no identity, no authorization) beside mesh TLS: for migrating
    /// clients that are not in the mesh yet. Off by default.
    pub permissive: bool,
    pub handshake_timeout_ms: u64,
    /// Slow-header (slowloris) guard for HTTP/1.
    pub header_read_timeout_ms: u64,
    /// Requests with larger headers get 431.
    pub max_header_bytes: usize,
    /// How long the app may take to send response headers before the caller gets 504.
    pub upstream_timeout_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout_ms: u64,
    /// The application's routes (`[[inbound.routes]]`): templates for policy input,
    /// metrics and flow records, and which parameter names the patient.
    pub routes: Vec<crate::routes::RouteConfig>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], ports::AGENT_INBOUND)),
            app: None,
            permissive: false,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            upstream_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            routes: Vec::new(),
        }
    }
}

/// The outbound (app-facing) listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    pub listen: SocketAddr,
    /// Destinations that are not mesh services are proxied as plain TCP/HTTP instead of
    /// refused. Off by default.
    pub passthrough_unknown: bool,
    pub services: Vec<ServiceEntry>,
    /// TCP connect plus mesh TLS handshake to the destination's agent.
    pub connect_timeout_ms: u64,
    /// How long transparent mode waits for the app's first bytes to tell HTTP from TCP
    /// (server-speaks-first protocols send nothing: they become TCP after this).
    pub detect_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub upstream_timeout_ms: u64,
    pub drain_timeout_ms: u64,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], ports::AGENT_OUTBOUND)),
            passthrough_unknown: false,
            services: Vec::new(),
            connect_timeout_ms: 5_000,
            detect_timeout_ms: 300,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            upstream_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl InboundConfig {
    pub fn handshake_timeout(&self) -> Duration {
        ms(self.handshake_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        ms(self.header_read_timeout_ms)
    }
    pub fn upstream_timeout(&self) -> Duration {
        ms(self.upstream_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        ms(self.drain_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), DataPlaneConfigError> {
        let s = "inbound";
        positive(s, "handshake_timeout_ms", self.handshake_timeout_ms)?;
        positive(s, "header_read_timeout_ms", self.header_read_timeout_ms)?;
        positive(s, "upstream_timeout_ms", self.upstream_timeout_ms)?;
        header_bytes(s, self.max_header_bytes)?;
        if self.app == Some(self.listen) {
            return Err(DataPlaneConfigError::AppLoop(self.listen));
        }
        crate::routes::RouteTable::new(&self.routes)?;
        Ok(())
    }
}

impl OutboundConfig {
    pub fn connect_timeout(&self) -> Duration {
        ms(self.connect_timeout_ms)
    }
    pub fn detect_timeout(&self) -> Duration {
        ms(self.detect_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        ms(self.header_read_timeout_ms)
    }
    pub fn upstream_timeout(&self) -> Duration {
        ms(self.upstream_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        ms(self.drain_timeout_ms)
    }

    /// Checks the limits and builds the service index (which validates every entry).
    pub fn discovery(&self) -> Result<Discovery, DataPlaneConfigError> {
        let s = "outbound";
        positive(s, "connect_timeout_ms", self.connect_timeout_ms)?;
        positive(s, "detect_timeout_ms", self.detect_timeout_ms)?;
        positive(s, "header_read_timeout_ms", self.header_read_timeout_ms)?;
        positive(s, "upstream_timeout_ms", self.upstream_timeout_ms)?;
        header_bytes(s, self.max_header_bytes)?;
        Ok(Discovery::new(self.services.clone())?)
    }
}

fn positive(section: &'static str, key: &'static str, v: u64) -> Result<(), DataPlaneConfigError> {
    if (1..=3_600_000).contains(&v) {
        return Ok(());
    }
    Err(DataPlaneConfigError::Range {
        section,
        key,
        expected: "between 1 and 3600000 (one hour)",
        got: v.to_string(),
    })
}

fn header_bytes(section: &'static str, v: usize) -> Result<(), DataPlaneConfigError> {
    if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&v) {
        return Ok(());
    }
    Err(DataPlaneConfigError::Range {
        section,
        key: "max_header_bytes",
        expected: "between 8192 and 1048576",
        got: v.to_string(),
    })
}

/// The data-plane part of the agent's config file. Absent sections keep their defaults;
/// unknown keys are errors (a typo must not silently disable a setting).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataPlaneFile {
    /// SPIFFE IDs allowed to call this workload (the allow-list authorizer).
    pub allow: Vec<SpiffeId>,
    pub inbound: Option<InboundConfig>,
    pub outbound: Option<OutboundConfig>,
    /// `[policy]`: verification keys, module cache, optional local bundle.
    pub policy: crate::policy::PolicyConfig,
    /// `[oidc]`: issuers whose bearer tokens identify end users.
    pub oidc: Option<crate::jwt::OidcConfig>,
    /// `[telemetry]`: the flow-record spool.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

impl DataPlaneFile {
    /// Reads and checks `path`. Errors name the file, and toml's message names the line
    /// and the key.
    pub fn load(path: &Path) -> Result<Self, DataPlaneConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataPlaneConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, DataPlaneConfigError> {
        let file: Self = toml::from_str(text).map_err(|e| DataPlaneConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if let Some(i) = &file.inbound {
            i.validate()?;
        }
        if let Some(o) = &file.outbound {
            o.discovery()?;
        }
        Ok(file)
    }
}

/// Command-line flags that override the config file.
#[derive(Debug, Clone, Default)]
pub struct DataPlaneOverrides {
    pub inbound_listen: Option<SocketAddr>,
    pub outbound_listen: Option<SocketAddr>,
    pub app: Option<SocketAddr>,
    /// Added to the file's `allow`.
    pub allow: Vec<SpiffeId>,
    /// The spool directory; creates `[telemetry]` with defaults when the file has none.
    pub spool_dir: Option<PathBuf>,
}

/// The data plane `wardmesh-agent run` starts: both listeners, from the file's sections
/// (or the defaults), with the flags applied on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveDataPlane {
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub allow: Vec<SpiffeId>,
    pub policy: crate::policy::PolicyConfig,
    pub oidc: Option<crate::jwt::OidcConfig>,
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

impl DataPlaneFile {
    pub fn resolve(self, flags: DataPlaneOverrides) -> EffectiveDataPlane {
        let mut inbound = self.inbound.unwrap_or_default();
        let mut outbound = self.outbound.unwrap_or_default();
        if let Some(l) = flags.inbound_listen {
            inbound.listen = l;
        }
        if let Some(app) = flags.app {
            inbound.app = Some(app);
        }
        if let Some(l) = flags.outbound_listen {
            outbound.listen = l;
        }
        let mut allow = self.allow;
        for id in flags.allow {
            if !allow.contains(&id) {
                allow.push(id);
            }
        }
        let telemetry = match (self.telemetry, flags.spool_dir) {
            (Some(t), Some(dir)) => Some(crate::telemetry::TelemetryConfig {
                spool_dir: dir,
                ..t
            }),
            (None, Some(dir)) => Some(crate::telemetry::TelemetryConfig::new(dir)),
            (t, None) => t,
        };
        EffectiveDataPlane {
            inbound,
            outbound,
            allow,
            policy: self.policy,
            oidc: self.oidc,
            telemetry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DataPlaneFile, DataPlaneConfigError> {
        DataPlaneFile::parse(text, Path::new("/etc/wardmesh/agent.toml"))
    }

    #[test]
    fn full_file_parses_with_defaults_for_the_rest() {
        let f = parse(
            r#"
allow = ["spiffe://wardmesh.local/ns/clinic/sa/frontend"]

[inbound]
listen = "127.0.0.1:17143"
app = "127.0.0.1:18080"

[outbound]
passthrough_unknown = true

[[outbound.services]]
name = "notes.clinic"
address = "127.0.0.1:18080"
agent = "127.0.0.1:17143"
spiffe_id = "spiffe://wardmesh.local/ns/clinic/sa/notes-api"
"#,
        )
        .unwrap();
        assert_eq!(f.allow.len(), 1);
        let i = f.inbound.unwrap();
        assert_eq!(i.app, Some("127.0.0.1:18080".parse().unwrap()));
        assert_eq!(i.header_read_timeout(), Duration::from_secs(10));
        assert!(!i.permissive);
        let o = f.outbound.unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:7140");
        assert!(o.passthrough_unknown);
        assert_eq!(o.services[0].agent_address(), "127.0.0.1:17143");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[inbound]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/wardmesh/agent.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("listen_typo"), "{e}");

        let e = parse("allow = [\"spiffe://wardmesh.local/ns/a/sa/b\", \"not-an-id\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("allow"), "{e}");

        let e = parse("[outbound]\n[[outbound.services]]\nname = \"x\"\naddress = \"nope\"\nspiffe_id = \"spiffe://wardmesh.local/ns/a/sa/b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbound.services") && e.contains("\"nope\""),
            "{e}"
        );

        let e = parse("[inbound]\nmax_header_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inbound.max_header_bytes"), "{e}");

        let e = parse("[inbound]\nlisten = \"127.0.0.1:5\"\napp = \"127.0.0.1:5\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inbound listener itself"), "{e}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), DataPlaneFile::default());
    }

    #[test]
    fn flags_override_the_file() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let f = parse(
            "allow = [\"spiffe://wardmesh.local/ns/a/sa/x\"]\n[inbound]\napp = \"127.0.0.1:1\"\npermissive = true\n",
        )
        .unwrap();
        let eff = f.resolve(DataPlaneOverrides {
            inbound_listen: Some("127.0.0.1:17143".parse().unwrap()),
            outbound_listen: None,
            app: Some("127.0.0.1:2".parse().unwrap()),
            allow: vec![
                id("spiffe://wardmesh.local/ns/a/sa/x"),
                id("spiffe://wardmesh.local/ns/a/sa/y"),
            ],
            spool_dir: None,
        });
        assert_eq!(eff.inbound.listen.to_string(), "127.0.0.1:17143");
        assert_eq!(eff.inbound.app.unwrap().to_string(), "127.0.0.1:2");
        assert!(
            eff.inbound.permissive,
            "file settings the flags do not touch stay"
        );
        assert_eq!(eff.outbound.listen.to_string(), "127.0.0.1:7140");
        assert_eq!(eff.allow.len(), 2, "deduplicated");
    }
}
