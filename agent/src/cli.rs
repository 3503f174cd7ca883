//! Command-line interface: `wardmesh-agent run [flags]`. Flags also read `WARDMESH_*`
//! environment variables; the join token's value is never shown in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use wardmesh_identity::{SpiffeId, TrustDomain};

use crate::config::{
    AgentConfig, AttestationConfig, ConfigError, DEFAULT_SYNC_WAIT_SECONDS, SecretString,
    default_admin_addr, random_instance_id,
};
use crate::proxy::DataPlaneFile;
use crate::proxy::config::DataPlaneOverrides;

const RUN_EXAMPLE: &str = "\
Example (outside Kubernetes, with a join token from `wardctl token create`):
  export WARDMESH_JOIN_TOKEN=<token>
  wardmesh-agent run --control-plane https://127.0.0.1:7443 --trust-bundle ./bundle.pem \
    --app 127.0.0.1:8080 --routes '/patients/{patient}/notes' --audit-mode fail-closed \
    --spool-dir /var/lib/wardmesh/spool

In Kubernetes the injected sidecar uses the projected service-account token instead:
  wardmesh-agent run --control-plane https://wardmesh-control-plane.wardmesh-system.svc:7443 \\
    --trust-bundle /etc/wardmesh/bundle.pem --sa-token-file /var/run/secrets/wardmesh/token

Logging: RUST_LOG=info (default), e.g. RUST_LOG=wardmesh_agent=debug.";

/// The wardmesh sidecar agent.
#[derive(Debug, Parser)]
#[command(name = "wardmesh-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: obtain and renew the workload identity, serve the admin endpoints.
    #[command(after_help = RUN_EXAMPLE)]
    Run(RunArgs),
    /// Install the nat-table rules of transparent mode (run once per pod, as root).
    #[command(after_help = crate::iptables::INIT_IPTABLES_EXAMPLE)]
    InitIptables(crate::iptables::InitIptablesArgs),
    /// Verify a signed policy bundle and compile its module into a module cache
    /// directory (the agent runs this itself, so it never holds the compiler's memory).
    #[command(after_help = crate::policy::precompile::EXAMPLE)]
    PrecompilePolicy(crate::policy::precompile::PrecompileArgs),
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("attestation")
        .required(true)
        .args(["join_token", "sa_token_file"])
))]
pub struct RunArgs {
    /// Control-plane API base URL (https).
    #[arg(long, env = "WARDMESH_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: String,

    /// PEM file with the trust bundle's roots: the agent's bootstrap trust.
    #[arg(long, env = "WARDMESH_TRUST_BUNDLE", value_name = "FILE")]
    pub trust_bundle: PathBuf,

    /// Single-use join token (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "WARDMESH_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: Option<SecretString>,

    /// Kubernetes projected service-account token file (audience `wardmesh`).
    #[arg(long, env = "WARDMESH_SA_TOKEN_FILE", value_name = "FILE")]
    pub sa_token_file: Option<PathBuf>,

    /// Admin server address (/live, /ready, /metrics, /config_dump).
    #[arg(long, env = "WARDMESH_ADMIN_ADDR", default_value_t = default_admin_addr())]
    pub admin_addr: SocketAddr,

    /// Instance id reported to the control plane [default: random hex].
    #[arg(long, env = "WARDMESH_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Long-poll wait of control-plane sync, in seconds (1-60).
    #[arg(
        long,
        default_value_t = DEFAULT_SYNC_WAIT_SECONDS,
        value_parser = clap::value_parser!(u32).range(1..=60)
    )]
    pub sync_wait_seconds: u32,

    /// Expected trust domain [default: whatever the control plane issues].
    #[arg(long, env = "WARDMESH_TRUST_DOMAIN")]
    pub trust_domain: Option<TrustDomain>,

    /// TOML file with the data-plane settings: `allow = [...]`, `[inbound]`,
    /// `[outbound]` with `[[outbound.services]]`. Flags override it.
    #[arg(long, env = "WARDMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Inbound (mesh mTLS) listener [default: 0.0.0.0:7143].
    #[arg(long, env = "WARDMESH_INBOUND_LISTEN", value_name = "ADDR")]
    pub inbound_listen: Option<SocketAddr>,

    /// Outbound (app-facing) listener [default: 127.0.0.1:7140].
    #[arg(long, env = "WARDMESH_OUTBOUND_LISTEN", value_name = "ADDR")]
    pub outbound_listen: Option<SocketAddr>,

    /// The local app the inbound listener forwards to [default: the port the caller
    /// dialled, on 127.0.0.1 (transparent mode)].
    #[arg(long, env = "WARDMESH_APP", value_name = "ADDR")]
    pub app: Option<SocketAddr>,

    /// A SPIFFE ID allowed to call this workload (repeatable; default: nobody).
    #[arg(long = "allow", value_name = "SPIFFE_ID")]
    pub allow: Vec<SpiffeId>,

    /// The app's route templates, comma-separated (`/patients/{patient}/notes,...`); a
    /// `{patient}` or `{subject}` parameter names the data subject. Added to the file's
    /// `[[inbound.routes]]` (the injector sets this from `wardmesh.io/routes`).
    #[arg(long, env = "WARDMESH_ROUTES", value_name = "TEMPLATES")]
    pub routes: Option<String>,

    /// `fail-closed`: the flag's routes carry PHI, so no access without an audit record
    /// (the injector sets this from `wardmesh.io/phi: "true"`). Default `fail-open`.
    #[arg(long, env = "WARDMESH_AUDIT_MODE", value_name = "MODE", value_parser = ["fail-open", "fail-closed"])]
    pub audit_mode: Option<String>,

    /// Flow-record spool directory: every request's flow record is written here before
    /// it is shipped to the control plane (the injector mounts an emptyDir). Without it
    /// (or a `[telemetry]` section) no flows are recorded, and PHI routes are refused at
    /// startup.
    #[arg(long, env = "WARDMESH_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
}

/// `--routes` → route configs: the subject is a `{patient}` or `{subject}` parameter.
fn flag_routes(list: &str, phi: bool) -> Vec<crate::routes::RouteConfig> {
    list.split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| crate::routes::RouteConfig {
            template: t.to_owned(),
            subject: ["patient", "subject"]
                .into_iter()
                .find(|p| t.contains(&format!("{{{p}}}")))
                .map(str::to_owned),
            phi,
        })
        .collect()
}

impl RunArgs {
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let attestation = match (self.join_token, self.sa_token_file) {
            (Some(token), _) => AttestationConfig::JoinToken { token },
            (None, Some(path)) => AttestationConfig::SaTokenFile { path },
            (None, None) => return Err(ConfigError::EmptyJoinToken),
        };
        let file = match &self.config {
            Some(path) => DataPlaneFile::load(path)?,
            None => DataPlaneFile::default(),
        };
        let phi = self.audit_mode.as_deref() == Some("fail-closed");
        let mut file = file;
        if let Some(list) = &self.routes {
            let inbound = file.inbound.get_or_insert_with(Default::default);
            inbound.routes.extend(flag_routes(list, phi));
            inbound.validate()?;
        }
        let dataplane = file.resolve(DataPlaneOverrides {
            inbound_listen: self.inbound_listen,
            outbound_listen: self.outbound_listen,
            app: self.app,
            allow: self.allow,
            spool_dir: self.spool_dir,
        });
        let config = AgentConfig {
            control_plane_url: self.control_plane,
            trust_bundle: self.trust_bundle,
            attestation,
            admin_addr: self.admin_addr,
            instance_id: self.instance_id.unwrap_or_else(random_instance_id),
            sync_wait_seconds: self.sync_wait_seconds,
            trust_domain: self.trust_domain,
            inbound: Some(dataplane.inbound),
            outbound: Some(dataplane.outbound),
            allow: dataplane.allow,
            policy: dataplane.policy,
            oidc: dataplane.oidc,
            telemetry: dataplane.telemetry,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wardmesh-agent").chain(args.iter().copied()))
    }

    #[test]
    fn route_flag_names_the_subject_and_marks_phi() {
        let r = flag_routes("/patients/{patient}/notes, /health,", true);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].subject.as_deref(), Some("patient"));
        assert!(r[0].phi && r[1].phi);
        assert_eq!(r[1].subject, None);
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_with_join_token() {
        let cli = parse(&[
            "run",
            "--control-plane",
            "https://127.0.0.1:7443",
            "--trust-bundle",
            "b.pem",
            "--join-token",
            "wmjt_secret",
            "--instance-id",
            "pod-1",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected the run subcommand")
        };
        assert!(!format!("{args:?}").contains("wmjt_secret"));
        let config = args.into_config().unwrap();
        assert_eq!(config.instance_id, "pod-1");
        assert_eq!(config.admin_addr, default_admin_addr());
        assert_eq!(config.sync_wait_seconds, 30);
        match &config.attestation {
            AttestationConfig::JoinToken { token } => assert_eq!(token.expose(), "wmjt_secret"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn attestation_is_required_and_exclusive() {
        let base = [
            "run",
            "--control-plane",
            "https://cp:7443",
            "--trust-bundle",
            "b.pem",
        ];
        assert!(parse(&base).is_err(), "no attestation");
        let mut both = base.to_vec();
        both.extend(["--join-token", "t", "--sa-token-file", "/tok"]);
        assert!(parse(&both).is_err(), "both attestations");
        let mut wait = base.to_vec();
        wait.extend(["--sa-token-file", "/tok", "--sync-wait-seconds", "61"]);
        assert!(parse(&wait).is_err(), "wait above 60");
    }

    #[test]
    fn data_plane_flags_and_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[outbound]\nlisten = \"127.0.0.1:17140\"\n").unwrap();
        let file_arg = file.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["run", "--control-plane", "https://cp:7443"];
            args.extend(["--trust-bundle", "b.pem", "--join-token", "t"]);
            args.extend(extra);
            let Command::Run(a) = parse(&args).unwrap().command else {
                panic!("expected the run subcommand")
            };
            a.into_config()
        };
        let c = run(&["--config", file_arg, "--app", "127.0.0.1:8080"]).unwrap();
        let c = (c.inbound.unwrap(), c.outbound.unwrap(), c.allow);
        assert_eq!(c.0.listen.to_string(), "0.0.0.0:7143", "default inbound");
        assert_eq!(c.0.app.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.1.listen.to_string(), "127.0.0.1:17140", "from the file");
        assert!(c.2.is_empty(), "nobody allowed by default");
        let id = "spiffe://wardmesh.local/ns/a/sa/b";
        assert_eq!(run(&["--allow", id]).unwrap().allow[0].to_string(), id);
        assert!(parse(&["run", "--allow", "not-an-id"]).is_err());

        std::fs::write(&file, "[outbound]\nlisen = 1\n").unwrap();
        let e = run(&["--config", file_arg]).unwrap_err().to_string();
        assert!(
            e.contains(file_arg) && e.contains("line 2") && e.contains("lisen"),
            "{e}"
        );
    }
}
