//! `wardctl policy build | test | eval | sign | keygen`: the Rego policy workflow on local
//! files (DESIGN.md §4, policies/README.md), on top of `wardmesh-policy`; and
//! `push | rollback | list` (`policy/remote.rs`), the control plane's side.
//!
//! `-o` is wardctl's global output format (`-o json`), so files are named with `--out`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use wardmesh_proto::policy::PolicyMode;

use crate::args::{Global, Output};

mod build;
mod eval;
mod keys;
mod remote;
mod test;

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Compile a policy directory into an OPA bundle (.tar.gz: policy.wasm, data.json,
    /// .manifest with revision, roots and wasm entrypoints). The Rego is parsed and every
    /// entrypoint compiled first; errors name file:line:col.
    ///
    /// Examples:
    ///   wardctl policy build policies/clinic --out clinic.tar.gz
    ///   wardctl policy build policies/clinic --revision 2025-06-01.1 --out clinic.tar.gz
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// Run the Rego unit tests: every `test_*` rule under the directory, like `opa test -v`.
    /// Exits non-zero when any test fails or none exists.
    ///
    /// Example:
    ///   wardctl policy test policies/clinic
    #[command(verbatim_doc_comment)]
    Test(TestArgs),
    /// Evaluate a bundle on one input document and print the decision. The bundle's
    /// signature is verified with --public-key; --unsigned skips that (local builds only).
    ///
    /// Examples:
    ///   wardctl policy eval clinic.tar.gz --input request.json --public-key clinic-2025.pub.pem
    ///   wardctl policy eval clinic.tar.gz --input request.json --unsigned -o json
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),
    /// Sign a bundle: writes .signatures.json, a JWT (EdDSA or ES256) listing every file's
    /// SHA-256 (OPA's bundle-signing scheme). Replaces an existing signature.
    ///
    /// Example:
    ///   wardctl policy sign clinic.tar.gz --key clinic-2025.pem
    #[command(verbatim_doc_comment)]
    Sign(SignArgs),
    /// Create a bundle-signing key pair: the private key (PKCS#8 PEM, mode 0600) at --out
    /// and the public key next to it as <name>.pub.pem (what agents and `eval` verify with).
    ///
    /// Example:
    ///   wardctl policy keygen --alg ed25519 --out clinic-2025.pem
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
    /// Upload a signed bundle to the control plane and make it the active policy. The
    /// control plane refuses bundles whose signature does not verify with one of its
    /// --policy-public-key keys; agents switch within seconds.
    ///
    /// Examples:
    ///   wardctl policy push clinic.tar.gz
    ///   wardctl policy push clinic.tar.gz --mode dry-run
    #[command(verbatim_doc_comment)]
    Push {
        bundle: PathBuf,
        /// enforce, or dry-run (decisions logged and counted, nothing blocked).
        #[arg(long, default_value = "enforce", value_parser = parse_mode)]
        mode: PolicyMode,
    },
    /// Make a stored revision active again (or change the active one's mode).
    ///
    /// Examples:
    ///   wardctl policy rollback sha256:1a2b3c4d5e6f
    ///   wardctl policy rollback sha256:1a2b3c4d5e6f --mode enforce
    #[command(verbatim_doc_comment)]
    Rollback {
        revision: String,
        /// Default: keep the current mode.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<PolicyMode>,
    },
    /// Stored revisions, newest first, and which one is active in which mode.
    ///
    /// Example:
    ///   wardctl policy list -o json
    #[command(verbatim_doc_comment)]
    List,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Policy directory (.rego files, data.json / data.yaml; *_test.rego are checked but
    /// not shipped).
    pub dir: PathBuf,
    /// Bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// .manifest revision [default: sha256:<12 hex> of the directory's policy and data files,
    /// so the same sources always give the same revision].
    #[arg(long)]
    pub revision: Option<String>,
    /// Entrypoints compiled into policy.wasm (repeatable).
    #[arg(long = "entrypoint", short = 'e', value_name = "PATH", default_value = wardmesh_policy::DEFAULT_ENTRYPOINT)]
    pub entrypoints: Vec<String>,
    /// Evaluator inside policy.wasm: regorus' VM (fast) or its interpreter (OPA's exact
    /// semantics for conflicting complete rules).
    #[arg(long, value_enum, default_value_t = EvaluatorArg::Vm)]
    pub evaluator: EvaluatorArg,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvaluatorArg {
    Vm,
    Interpreter,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Policy directory.
    pub dir: PathBuf,
    /// Only run tests whose rule name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub run: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("trust").required(true).args(["public_key", "unsigned"])
))]
pub struct EvalArgs {
    /// The bundle (.tar.gz).
    pub bundle: PathBuf,
    /// Input document (JSON, the shape in policies/README.md); `-` reads stdin.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// Public key (SubjectPublicKeyInfo PEM) that must have signed the bundle.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// Key id the signature names [default: the key file name without .pub.pem / .pem].
    #[arg(long, requires = "public_key")]
    pub key_id: Option<String>,
    /// DANGER: do not verify the bundle's signature (for a bundle you just built).
    #[arg(long)]
    pub unsigned: bool,
    /// Entrypoint to evaluate.
    #[arg(long, short = 'e', value_name = "PATH", default_value = wardmesh_policy::DEFAULT_ENTRYPOINT)]
    pub entrypoint: String,
    /// Print OPA's raw result set instead of a wardmesh decision.
    #[arg(long)]
    pub raw: bool,
    /// Where compiled modules are cached (compiling takes seconds; a cached module loads
    /// in milliseconds) [default: <home>/cache/policy].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The bundle (.tar.gz) to sign.
    pub bundle: PathBuf,
    /// Private key (PKCS#8 PEM, Ed25519 or ECDSA P-256), e.g. from `wardctl policy keygen`
    /// or `openssl genpkey -algorithm ed25519`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Key id written into the signature; verifiers look the public key up by it
    /// [default: the key file name without .pem].
    #[arg(long)]
    pub key_id: Option<String>,
    /// Write the signed bundle here instead of replacing the input.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = KeyAlg::Ed25519)]
    pub alg: KeyAlg,
    /// Private key file to write; the public key goes to the same name with .pub.pem.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyAlg {
    /// EdDSA (Ed25519).
    Ed25519,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

fn parse_mode(s: &str) -> Result<PolicyMode, String> {
    PolicyMode::parse(s).ok_or_else(|| format!("{s:?} is not `enforce` or `dry-run`"))
}

pub async fn run(g: &Global, c: PolicyCommand) -> anyhow::Result<()> {
    let c = match c {
        PolicyCommand::Push { bundle, mode } => return remote::push(g, &bundle, mode).await,
        PolicyCommand::Rollback { revision, mode } => {
            return remote::rollback(g, revision, mode).await;
        }
        PolicyCommand::List => return remote::list(g).await,
        local => local,
    };
    let g = Env {
        home: g.home.clone(),
        output: g.output,
    };
    // Compiling and evaluating is CPU-bound and synchronous: keep it off the runtime.
    tokio::task::spawn_blocking(move || match c {
        PolicyCommand::Build(a) => build::run(&a),
        PolicyCommand::Test(a) => test::run(&g, &a),
        PolicyCommand::Eval(a) => eval::run(&g, &a),
        PolicyCommand::Sign(a) => keys::sign(&a),
        PolicyCommand::Keygen(a) => keys::keygen(&a),
        PolicyCommand::Push { .. } | PolicyCommand::Rollback { .. } | PolicyCommand::List => {
            anyhow::bail!("push, rollback and list run against the control plane, not here")
        }
    })
    .await
    .context("the policy command panicked")?
}

/// The global flags the (blocking) policy commands use.
#[derive(Debug, Clone)]
struct Env {
    home: PathBuf,
    output: Output,
}

/// The key id a key file implies: its name without `.pub.pem`, `.pem`, `.key`.
fn key_id_from_path(path: &Path) -> anyhow::Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let id = [".pub.pem", ".pem", ".pub", ".key"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    anyhow::ensure!(
        !id.is_empty(),
        "cannot derive a key id from {}; pass --key-id",
        path.display()
    );
    Ok(id.to_owned())
}

/// Reads a file, naming it in the error.
fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to `path` atomically (temp file + rename), so a reader never sees a
/// half-written bundle.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
