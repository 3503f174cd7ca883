//! Command-line grammar. Every command's help ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// wardctl — operate a wardmesh zero-trust mesh.
///
/// Examples:
///   wardctl up                                # local mesh on loopback, embedded SQLite
///   wardctl ca init --dir ./ca                # new root + intermediate
///   wardctl token create --id spiffe://wardmesh.local/ns/clinic/sa/notes
///   wardctl flows --to records --verdict denied --since 10m
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
    /// Output format for query commands: table, json (one document), or jsonl (one JSON
    /// object per line; commands that print a single document print it as json).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    pub format: Format,
    /// `format` for commands that print one document (jsonl reads as json); set from
    /// `format` by `cmd::run`, so that those commands need not know about jsonl.
    #[arg(skip)]
    pub output: Output,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".wardmesh")
}

/// How a command that prints one document prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// `-o`: how query commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One pretty-printed JSON document.
    Json,
    /// One compact JSON object per line (streams; for jq, log shippers, `--follow`).
    Jsonl,
}

impl Format {
    /// The format for commands that print a single document.
    pub fn document(self) -> Output {
        match self {
            Self::Table => Output::Table,
            Self::Json | Self::Jsonl => Output::Json,
        }
    }
}

/// A point in time on the command line (`--since`, `--until`): RFC 3339, or an age before
/// now such as `90s`, `10m`, `2h`, `7d`.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    parse_time_at(text, OffsetDateTime::now_utc())
}

/// [`parse_time`] relative to `now` (tests pin it).
pub fn parse_time_at(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.to_offset(time::UtcOffset::UTC));
    }
    let bad = || {
        format!(
            "{text:?} is not a time: use an RFC 3339 time (2025-06-01T12:00:00Z) or an age \
             like 30s, 10m, 2h, 7d"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    // Checked: an absurd age is an error, not a panic.
    n.checked_mul(seconds_per)
        .map(time::Duration::seconds)
        .and_then(|age| now.checked_sub(age))
        .ok_or_else(|| format!("{text:?} reaches too far into the past"))
}

/// RFC 3339 in UTC, as the API takes it.
pub fn rfc3339_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
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
    ///   wardctl audit disclosures --subject p-2001 --since 2025-01-01T00:00:00Z
    #[command(subcommand, verbatim_doc_comment)]
    Audit(AuditCommand),
    /// Flow records: every request between workloads, filtered like `hubble observe`
    /// (viewer role). Without --since or --last, the newest 20.
    ///
    /// Examples:
    ///   wardctl flows --from clinic/frontend --to records --verdict denied
    ///   wardctl flows --route '/patients/{patient}/notes' --since 1h -o json
    ///   wardctl flows --to records --follow -o jsonl
    ///   wardctl flows --request-id 3f2a9c0e1b7d4e55
    #[command(verbatim_doc_comment)]
    Flows(crate::cmd::flows::FlowsArgs),
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

/// `--actor`: an exact actor, or a prefix ending in `*`.
fn parse_actor(s: &str) -> Result<String, String> {
    let stem = s.strip_suffix('*').unwrap_or(s);
    if stem.is_empty() || s.len() > 512 || s.contains(char::is_control) {
        return Err(
            "use an actor such as operator:alice, user:dr-ada or a SPIFFE ID, or a prefix \
             such as operator:*"
                .to_owned(),
        );
    }
    Ok(s.to_owned())
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit entries, oldest first (auditor role).
    ///
    /// Examples:
    ///   wardctl audit log --last 20
    ///   wardctl audit log --kind operator.api --since 1h -o json
    ///   wardctl audit log --kind 'identity.*' --since 2025-06-01T00:00:00Z
    ///   wardctl audit log --kind phi.access --actor user:dr-ada --since 7d --until 1d
    #[command(verbatim_doc_comment)]
    Log {
        /// Only this kind (e.g. identity.issued), or a prefix such as identity.*
        #[arg(long)]
        kind: Option<String>,
        /// Only this actor (operator:NAME, user:SUB, a SPIFFE ID), or a prefix such as
        /// operator:* (filtered by wardctl: the API has no actor filter).
        #[arg(long, value_parser = parse_actor)]
        actor: Option<String>,
        /// Only entries since this time: RFC 3339, or an age such as 30s, 10m, 2h, 7d.
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Only entries before this time, same forms as --since (filtered by wardctl).
        #[arg(long, value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// Only the newest N matching entries (default 100 when --since is not given).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        last: Option<u32>,
    },
    /// Accounting of disclosures (auditor role): who accessed one patient's records,
    /// when, from which service, under which purpose. Lists requests that released data
    /// (verdict allowed or dry-run); --include-denied adds refused attempts.
    ///
    /// The patient id is sent in the request body, never in a URL, and the control plane
    /// matches it by its keyed pseudonym, exactly as it appears in request paths. Pass
    /// `--subject -` to read it from stdin and keep it out of shell history.
    ///
    /// Examples:
    ///   wardctl audit disclosures --subject p-2001
    ///   wardctl audit disclosures --subject p-2001 --since 2025-01-01T00:00:00Z --include-denied -o json
    ///   read -rs P && echo "$P" | wardctl audit disclosures --subject -
    #[command(verbatim_doc_comment)]
    Disclosures {
        /// The patient (data subject) id, or `-` to read it from stdin.
        #[arg(long)]
        subject: String,
        /// Only accesses since this time: RFC 3339, or an age such as 30s, 10m, 2h, 7d.
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Only accesses before this time, same forms as --since.
        #[arg(long, value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// Also list refused attempts (verdict denied or error).
        #[arg(long)]
        include_denied: bool,
    },
    /// Download the whole log and its checkpoints, recompute the hash chain and check each
    /// checkpoint's signature against the pinned key, then ask the control plane whether
    /// every entry is reachable by its subject (what the accounting of disclosures reads);
    /// exits non-zero on the first damage.
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wardctl").chain(args.iter().copied()))
    }

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        let at = |s: &str| parse_time_at(s, now).map(rfc3339_utc);
        assert_eq!(
            at("2025-06-01T12:00:00+02:00").unwrap(),
            "2025-06-01T10:00:00Z"
        );
        assert_eq!(at("90s").unwrap(), "2025-06-15T15:05:10Z");
        assert_eq!(at("2h").unwrap(), "2025-06-15T13:06:40Z");
        assert_eq!(at("7d").unwrap(), "2025-06-08T15:06:40Z");
        for bad in ["yesterday", "10", "5w", "h", "", "-5m"] {
            let err = at(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
        let err = at("9999999999999999d").unwrap_err();
        assert!(err.contains("too far"), "{err}");
    }

    #[test]
    fn jsonl_is_json_for_single_document_commands() {
        assert_eq!(Format::Jsonl.document(), Output::Json);
        assert_eq!(Format::Json.document(), Output::Json);
        assert_eq!(Format::Table.document(), Output::Table);
        let cli = parse(&["agents", "-o", "jsonl"]).unwrap();
        assert_eq!(cli.global.format, Format::Jsonl);
        let err = parse(&["agents", "-o", "yaml"]).unwrap_err().to_string();
        assert!(err.contains("jsonl"), "{err}");
    }

    #[test]
    fn audit_log_and_disclosure_arguments_are_checked() {
        let cli = parse(&[
            "audit",
            "log",
            "--kind",
            "phi.access",
            "--actor",
            "operator:*",
            "--since",
            "1h",
            "--until",
            "2030-01-01T00:00:00Z",
            "--last",
            "5",
        ])
        .unwrap();
        let Command::Audit(AuditCommand::Log {
            actor, until, last, ..
        }) = cli.command
        else {
            panic!("not audit log");
        };
        assert_eq!(actor.as_deref(), Some("operator:*"));
        assert_eq!(until.map(|t| t.year()), Some(2030));
        assert_eq!(last, Some(5));
        for bad in [
            &["audit", "log", "--last", "0"][..],
            &["audit", "log", "--last", "1001"],
            &["audit", "log", "--since", "last tuesday"],
            &["audit", "log", "--actor", "*"],
            &["audit", "disclosures"],
            &["audit", "disclosures", "--subject", "p", "--until", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let cli = parse(&[
            "audit",
            "disclosures",
            "--subject",
            "p-2001",
            "--include-denied",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit(AuditCommand::Disclosures {
                include_denied: true,
                ..
            })
        ));
    }
}
