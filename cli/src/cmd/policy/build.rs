//! `wardctl policy build`: a policy directory → an OPA bundle file.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wardmesh_policy::rego::{self, RegoError};
use wardmesh_policy::{BuildError, BuildOptions, Evaluator, build_bundle_with};

use super::{BuildArgs, EvaluatorArg, write_atomic};

pub(super) fn run(a: &BuildArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            a.out.display()
        );
    }
    let evaluator = match a.evaluator {
        EvaluatorArg::Vm => Evaluator::Vm,
        EvaluatorArg::Interpreter => Evaluator::Interpreter,
    };
    let revision = match &a.revision {
        Some(r) => r.clone(),
        None => content_revision(&a.dir, &a.entrypoints, a.evaluator)?,
    };
    let options = BuildOptions {
        revision: revision.clone(),
        entrypoints: a.entrypoints.clone(),
        evaluator,
    };
    let bundle = build_bundle_with(&a.dir, &options).map_err(|e| located(&a.dir, e))?;
    write_atomic(&a.out, &bundle)?;
    eprintln!(
        "built {} ({} bytes): revision {revision}, entrypoints {}; unsigned: sign it with `wardctl policy sign`",
        a.out.display(),
        bundle.len(),
        a.entrypoints.join(", "),
    );
    Ok(())
}

/// A build error whose Rego location names the file as the operator typed the
/// directory (`policies/clinic/authz.rego:12:3: …`), followed by regorus' excerpt.
fn located(dir: &Path, e: BuildError) -> anyhow::Error {
    match e {
        BuildError::Rego(RegoError::Syntax {
            file,
            line,
            col,
            message,
            detail,
        }) => {
            let excerpt: Vec<&str> = detail
                .lines()
                .skip_while(|l| !l.trim_start().starts_with("-->"))
                .skip(1)
                .collect();
            anyhow::anyhow!(
                "{}:{line}:{col}: {message}\n{}",
                dir.join(file).display(),
                excerpt.join("\n")
            )
        }
        BuildError::Rego(RegoError::File { file, message }) => {
            anyhow::anyhow!("{}: {message}", dir.join(file).display())
        }
        other => anyhow::Error::new(other).context(format!("building {}", dir.display())),
    }
}

/// `sha256:<12 hex>` over what goes into the bundle: the policy files (tests excluded),
/// the data document, the entrypoints and the evaluator. The same sources give the same
/// revision, so a rebuild does not look like a policy change.
fn content_revision(
    dir: &Path,
    entrypoints: &[String],
    evaluator: EvaluatorArg,
) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    // A directory that does not load is reported by the build itself, with locations.
    let files = match rego::load_rego_files(dir) {
        Ok(f) => f,
        Err(_) => return Ok("unversioned".to_owned()),
    };
    for f in files.iter().filter(|f| !f.is_test()) {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.content.as_bytes());
        h.update([0]);
    }
    let data = rego::load_data(dir).unwrap_or_default();
    h.update(serde_json::to_vec(&data).context("hashing the data document")?);
    h.update([0]);
    h.update(entrypoints.join("\n").as_bytes());
    h.update([0, evaluator as u8]);
    let digest = format!("{:x}", h.finalize());
    Ok(format!("sha256:{}", &digest[..12]))
}
