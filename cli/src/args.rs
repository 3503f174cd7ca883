//! Command-line grammar. Every command's help ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// wardctl — operate a wardmesh zero-trust mesh.
///
/// Examples:
///   wardctl up                                # local mesh on loopback, embedded SQLite
///   wardctl ca init --dir ./ca                # new root + intermediate
///   wardctl token create --id spiffe://wardmesh.local/ns/clinic/sa/notes
#[derive(Debug, Parser)]
#[command(name = "wardctl", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// wardmesh home: ca/, seal.key, wardmesh.db, admin.token.
    #[arg(long, global = true, env = "WARDMESH_HOME", default_value_os_t = default_home())]
    pub home: PathBuf,
    /// Control-plane API base URL.
    #[arg(
        long,
        global = true,
        env = "WARDMESH_CONTROL_PLANE",
        default_value = "https://127.0.0.1:7443"
    )]
    pub control_plane: String,
    /// Operator token (default: contents of <home>/admin.token).
    #[arg(long, global = true, env = "WARDMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM roots that verify the control plane (default: the roots in <home>/ca).
    #[arg(long, global = true, env = "WARDMESH_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Output format for query commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".wardmesh")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local mesh on loopback: embedded control plane (SQLite), agents, identities.
    ///
    /// Example:
    ///   wardctl up --once      # start, show identities, stop
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Join tokens for agents outside Kubernetes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workload identities: quarantine, issuance history.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Agents known to the control plane and their certificate state.
    ///
    /// Example:
    ///   wardctl agents -o json
    #[command(verbatim_doc_comment)]
    Agents,
    /// The tamper-evident audit log: read it, verify its chain and signed checkpoints.
    ///
    /// Examples:
    ///   wardctl audit log --last 20
    ///   wardctl audit verify
    #[command(subcommand, verbatim_doc_comment)]
    Audit(AuditCommand),
    /// Rego policies: build OPA bundles, run their tests, sign them, evaluate an input.
    ///
    /// Examples:
    ///   wardctl policy test policies/clinic
    ///   wardctl policy build policies/clinic --out clinic.tar.gz
    ///   wardctl policy sign clinic.tar.gz --key clinic-2025.pem
    #[command(subcommand, verbatim_doc_comment)]
    Policy(crate::cmd::policy::PolicyCommand),
    /// Patient consent records by purpose of use (42 CFR Part 2 flags included).
    ///
    /// Examples:
    ///   wardctl consent set --subject p-2001 --purpose TREAT --allow --part2
    ///   wardctl consent list
    #[command(subcommand, verbatim_doc_comment)]
    Consent(crate::cmd::consent::ConsentCommand),
    /// Break-glass: time-boxed emergency access, audited and queued for review.
    ///
    /// Examples:
    ///   wardctl breakglass grant --user dr-ada --reason "unconscious patient in the ER" --ttl 1h
    ///   wardctl breakglass list --pending
    #[command(subcommand, verbatim_doc_comment)]
    Breakglass(crate::cmd::breakglass::BreakGlassCommand),
    /// Print the Kubernetes manifests (with this mesh's CA) for `kubectl apply -f -`.
    ///
    /// Examples:
    ///   wardctl install | kubectl apply -f -
    ///   wardctl install --ha --postgres-url "$PG_URL" | kubectl apply -f -
    #[command(verbatim_doc_comment)]
    Install(crate::cmd::install::InstallArgs),
    /// Add the wardmesh agent to manifests offline (the injector webhook's patch).
    ///
    /// Example:
    ///   wardctl inject -f deployment.yaml | kubectl apply -f -
    #[command(verbatim_doc_comment)]
    Inject(crate::cmd::inject::InjectArgs),
    /// Verify a running installation: control plane, CA expiry, webhook, agents.
    ///
    /// Example:
    ///   wardctl check -o json
    #[command(verbatim_doc_comment)]
    Check(crate::cmd::check::CheckArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Stop after the mesh is up and identities are shown (for scripts and CI).
    #[arg(long)]
    pub once: bool,
    /// Control-plane listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: std::net::SocketAddr,
    /// First agent admin port (each further agent uses the next port); 0 picks free ports.
    #[arg(long, default_value_t = 7191)]
    pub admin_port: u16,
    /// Workload certificate lifetime in seconds (short values show renewal live).
    #[arg(long, default_value_t = 3600)]
    pub leaf_ttl_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root and an intermediate (or import them with --from).
    ///
    /// Examples:
    ///   wardctl ca init --trust-domain clinic.example
    ///   wardctl ca init --from ./external   # root.pem, intermediate.pem, intermediate.key
    #[command(verbatim_doc_comment)]
    Init(CaInitArgs),
    /// Show the chain, fingerprints and expiries (reads the CA directory; no key needed).
    ///
    /// Example:
    ///   wardctl ca status -o json
    #[command(verbatim_doc_comment)]
    Status(CaDirArgs),
    /// Rotate the root: prepare (new root trusted), activate (new intermediate signs),
    /// retire (old root dropped). Without a step, runs all three and waits for agents
    /// between steps.
    ///
    /// Examples:
    ///   wardctl ca rotate                 # all steps, waiting for agents
    ///   wardctl ca rotate prepare
    #[command(verbatim_doc_comment)]
    Rotate(CaRotateArgs),
}

#[derive(Debug, Args)]
pub struct CaDirArgs {
    /// CA directory (default <home>/ca).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    #[command(flatten)]
    pub dir: CaDirArgs,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "wardmesh.local")]
    pub trust_domain: String,
    /// Sealing key file (created if missing; default <home>/seal.key).
    #[arg(long)]
    pub seal_key_file: Option<PathBuf>,
    /// Import an external root: a directory with root.pem, intermediate.pem and
    /// intermediate.key (PKCS#8 PEM). The root's key never enters wardmesh.
    #[arg(long)]
    pub from: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotateStep {
    Prepare,
    Activate,
    Retire,
}

#[derive(Debug, Args)]
pub struct CaRotateArgs {
    /// Run one step only.
    pub step: Option<RotateStep>,
    #[command(flatten)]
    pub dir: CaDirArgs,
    /// Sealing key file (default <home>/seal.key).
    #[arg(long)]
    pub seal_key_file: Option<PathBuf>,
    /// How long to wait for agents to converge between steps, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_seconds: u64,
    /// Retire the old root even if some agents still hold certificates from it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token for one SPIFFE ID.
    ///
    /// Example:
    ///   wardctl token create --id spiffe://wardmesh.local/ns/billing/sa/api --ttl-seconds 900
    #[command(verbatim_doc_comment)]
    Create {
        /// The SPIFFE ID the token entitles its bearer to.
        #[arg(long)]
        id: String,
        /// Validity in seconds (max 86400).
        #[arg(long, default_value_t = 600)]
        ttl_seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Stop issuance for an ID and push it to every agent's deny-list.
    ///
    /// Example:
    ///   wardctl identity quarantine spiffe://wardmesh.local/ns/clinic/sa/notes --reason "compromised node"
    #[command(verbatim_doc_comment)]
    Quarantine {
        spiffe_id: String,
        /// Why (recorded in the event log).
        #[arg(long)]
        reason: String,
    },
    /// Lift a quarantine.
    ///
    /// Example:
    ///   wardctl identity unquarantine spiffe://wardmesh.local/ns/clinic/sa/notes
    #[command(verbatim_doc_comment)]
    Unquarantine { spiffe_id: String },
    /// List quarantined IDs.
    ///
    /// Example:
    ///   wardctl identity quarantined -o json
    #[command(verbatim_doc_comment)]
    Quarantined,
    /// Certificates issued, newest first.
    ///
    /// Example:
    ///   wardctl identity issuances --id spiffe://wardmesh.local/ns/clinic/sa/notes
    #[command(verbatim_doc_comment)]
    Issuances {
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Identity, CA and operator events: the audit log's state changes (`wardctl audit log`
    /// also shows every operator API call).
    ///
    /// Example:
    ///   wardctl identity events --limit 20
    #[command(verbatim_doc_comment)]
    Events {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit entries, oldest first (auditor role).
    ///
    /// Examples:
    ///   wardctl audit log --last 20
    ///   wardctl audit log --kind operator.api --since 1h -o json
    ///   wardctl audit log --kind 'identity.*' --since 2025-06-01T00:00:00Z
    #[command(verbatim_doc_comment)]
    Log {
        /// Only this kind (e.g. identity.issued), or a prefix such as identity.*
        #[arg(long)]
        kind: Option<String>,
        /// Only entries since this time: RFC 3339, or an age such as 30s, 10m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only the newest N matching entries (default 100 when --since is not given).
        #[arg(long)]
        last: Option<u32>,
    },
    /// Download the whole log and its checkpoints, recompute the hash chain and check each
    /// checkpoint's signature against the pinned key; exits non-zero on the first damage.
    ///
    /// The key is pinned on first use in <home>/audit-key.pub; pass --key to use a key
    /// obtained out of band (the control plane writes it to <state dir>/audit-signing.pub).
    ///
    /// Example:
    ///   wardctl audit verify --key ./audit-signing.pub
    #[command(verbatim_doc_comment)]
    Verify {
        /// Public key file (`ed25519:<base64>`), instead of the pinned one.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}
