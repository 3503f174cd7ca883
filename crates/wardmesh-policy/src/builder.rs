//! `wardctl policy build`: a policy directory → an OPA bundle (`.tar.gz`) with the same
//! layout as `opa build -t wasm`: `/policy.wasm`, `/data.json`, `/.manifest` and the Rego
//! sources (test files excluded).
//!
//! The Rego is parsed and every entrypoint compiled natively first (errors name
//! `file:line:col`); nothing is evaluated. Then the guest module built by this crate's
//! `build.rs` gets the sources embedded (see [`embed`]).

use std::collections::BTreeSet;
use std::path::Path;

use crate::bundle::{
    BundleError, BundleFiles, DATA_FILE, MANIFEST_FILE, Manifest, WASM_FILE, WasmResolver,
};
use crate::rego::{self, RegoError, RegoFile};

pub mod embed;

pub use embed::{ABI_VERSION, EmbedError, Evaluator};

/// The entrypoint the agent evaluates.
pub const DEFAULT_ENTRYPOINT: &str = "wardmesh/authz/decision";

/// The raw policy guest (`policies/guest`), built from source by `build.rs`.
pub const GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.wasm"));

/// Errors building a bundle. Rego problems carry the file and line to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Rego(#[from] RegoError),
    #[error("revision {0:?} is not usable: use printable characters, at most 256")]
    Revision(String),
    #[error("no entrypoints: a wasm bundle needs at least one (e.g. {DEFAULT_ENTRYPOINT})")]
    NoEntrypoints,
    #[error("embedding the policy into the wasm guest: {0}")]
    Embed(#[from] EmbedError),
    #[error("writing the bundle: {0}")]
    Bundle(#[from] BundleError),
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// `.manifest` revision (a version, a git commit, a timestamp: anything printable).
    pub revision: String,
    /// Entrypoints compiled into the module, `package/path/rule`.
    pub entrypoints: Vec<String>,
    /// regorus' VM (default) or interpreter inside `policy.wasm`.
    pub evaluator: Evaluator,
}

impl BuildOptions {
    /// Builds entrypoint [`DEFAULT_ENTRYPOINT`] at `revision`.
    pub fn new(revision: impl Into<String>) -> Self {
        Self {
            revision: revision.into(),
            entrypoints: vec![DEFAULT_ENTRYPOINT.to_string()],
            evaluator: Evaluator::default(),
        }
    }
}

/// Builds the bundle for the policy directory `dir` with entrypoint
/// `wardmesh/authz/decision`. Returns the `.tar.gz` bytes (unsigned: see
/// [`crate::sign_bundle`]).
pub fn build_bundle(dir: &Path, revision: &str) -> Result<Vec<u8>, BuildError> {
    build_bundle_with(dir, &BuildOptions::new(revision))
}

/// [`build_bundle`] with explicit options.
pub fn build_bundle_with(dir: &Path, options: &BuildOptions) -> Result<Vec<u8>, BuildError> {
    let revision = &options.revision;
    if revision.len() > 256 || revision.chars().any(char::is_control) {
        return Err(BuildError::Revision(revision.clone()));
    }
    if options.entrypoints.is_empty() {
        return Err(BuildError::NoEntrypoints);
    }
    let all = rego::load_rego_files(dir)?;
    let data = rego::load_data(dir)?;
    // Tests are checked too (a broken test file is an error), but never shipped.
    rego::engine_with(&all, &data)?;
    let policies: Vec<RegoFile> = all.into_iter().filter(|f| !f.is_test()).collect();
    if policies.is_empty() {
        return Err(RegoError::NoPolicies(dir.to_path_buf()).into());
    }
    rego::check(&policies, &data, &options.entrypoints)?;

    let wasm = embed::embed_policy(
        GUEST_WASM,
        &policies,
        &options.entrypoints,
        options.evaluator,
    )?;
    let manifest = Manifest {
        revision: revision.clone(),
        roots: Some(roots(&policies, &data)),
        wasm: options
            .entrypoints
            .iter()
            .map(|ep| WasmResolver {
                entrypoint: ep.clone(),
                module: format!("/{WASM_FILE}"),
            })
            .collect(),
        other: Default::default(),
    };

    let mut files = BundleFiles::new();
    files.insert(WASM_FILE, wasm);
    files.insert(DATA_FILE, to_json(&data)?);
    files.insert(MANIFEST_FILE, to_json(&manifest)?);
    for f in policies {
        files.insert(f.path, f.content.into_bytes());
    }
    Ok(files.to_tar_gz()?)
}

fn to_json(v: &impl serde::Serialize) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(v).map_err(|e| {
        BuildError::Bundle(BundleError::InvalidFile {
            file: DATA_FILE,
            reason: e.to_string(),
        })
    })
}

/// The top-level names this bundle owns: its packages' first segments and the data
/// document's keys (what `.manifest` `roots` tells other bundles to keep out of).
fn roots(files: &[RegoFile], data: &serde_json::Value) -> Vec<String> {
    let mut out = BTreeSet::new();
    for f in files {
        let package = f
            .content
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| {
                p.trim()
                    .split(['.', '[', ' '])
                    .next()
                    .unwrap_or("")
                    .to_string()
            });
        if let Some(p) = package.filter(|p| !p.is_empty()) {
            out.insert(p);
        }
    }
    if let Some(obj) = data.as_object() {
        out.extend(obj.keys().cloned());
    }
    out.into_iter().collect()
}
