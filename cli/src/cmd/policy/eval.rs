//! `wardctl policy eval`: verify a bundle (or, loudly, don't), load it exactly as the
//! agent does (opa-wasm on wasmtime, module cache) and decide one input.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use wardmesh_policy::{
    LoadError, PolicyEngine, PolicyRuntime, RuntimeConfig, VerifiedBundle, VerifyError,
    VerifyingKey, danger_accept_unsigned_bundle, verify_bundle,
};

use super::{Env, EvalArgs, key_id_from_path, read};
use crate::args::Output;
use crate::output::table;

pub(super) fn run(g: &Env, a: &EvalArgs) -> anyhow::Result<()> {
    let bundle_bytes = read(&a.bundle)?;
    // The input is checked before the (slow) load, so a typo fails at once.
    let input = read_input(&a.input)?;
    let bundle = verified(a, &bundle_bytes)?;
    let engine = load(g, a, &bundle)?;
    if a.raw {
        let rows = engine
            .evaluate_raw(&input)
            .map_err(|e| anyhow::anyhow!("evaluating {}: {e}", a.entrypoint))?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let decision = engine.evaluate(&input);
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&decision)?),
        Output::Table => {
            let obligations = if decision.obligations.is_empty() {
                "-".to_owned()
            } else {
                decision.obligations.join(", ")
            };
            let rows = vec![
                row("DECISION", if decision.allow { "allow" } else { "deny" }),
                row("RULE", &decision.rule),
                row("REASON", &decision.reason),
                row("OBLIGATIONS", &obligations),
                row("REVISION", &decision.policy_revision),
                row(
                    "SIGNED BY",
                    bundle.signer().unwrap_or("(unsigned: not verified)"),
                ),
            ];
            print!("{}", table(&["FIELD", "VALUE"], &rows));
        }
    }
    Ok(())
}

fn row(k: &str, v: &str) -> Vec<String> {
    vec![k.to_owned(), v.to_owned()]
}

/// The input document: a JSON object. Errors name the file, line and column.
fn read_input(path: &Path) -> anyhow::Result<serde_json::Value> {
    let (name, bytes) = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the input from stdin")?;
        ("<stdin>".to_owned(), buf)
    } else {
        (path.display().to_string(), read(path)?)
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}:{}:{}: input is not valid JSON: {e}",
            e.line(),
            e.column()
        )
    })?;
    if !value.is_object() {
        bail!("{name}: the input must be a JSON object (see policies/README.md), not {value}");
    }
    Ok(value)
}

fn verified(a: &EvalArgs, bytes: &[u8]) -> anyhow::Result<VerifiedBundle> {
    let name = a.bundle.display();
    if a.unsigned {
        eprintln!(
            "WARNING: --unsigned: the signature of {name} is NOT verified; agents only load signed bundles"
        );
        return danger_accept_unsigned_bundle(bytes).with_context(|| format!("reading {name}"));
    }
    let Some(key_path) = &a.public_key else {
        bail!("pass --public-key to verify {name}, or --unsigned for a local build");
    };
    let key_id = match &a.key_id {
        Some(k) => k.clone(),
        None => key_id_from_path(key_path)?,
    };
    let pem = String::from_utf8(read(key_path)?)
        .with_context(|| format!("{} is not a PEM file", key_path.display()))?;
    let key = VerifyingKey::from_spki_pem(&pem, &key_id)
        .with_context(|| format!("loading the public key {}", key_path.display()))?;
    verify_bundle(bytes, &[key]).map_err(|e| {
        let hint = match &e {
            VerifyError::Unsigned => " (for a local build, pass --unsigned instead)",
            VerifyError::UnknownKey(_) => " (pass --key-id with the id the bundle was signed with)",
            _ => "",
        };
        anyhow::anyhow!("{name} is refused: {e}{hint}")
    })
}

fn load(g: &Env, a: &EvalArgs, bundle: &VerifiedBundle) -> anyhow::Result<PolicyEngine> {
    let cache = a
        .cache_dir
        .clone()
        .unwrap_or_else(|| g.home.join("cache").join("policy"));
    let config = |cache_dir| RuntimeConfig {
        module_cache_dir: cache_dir,
        prewarm_instances: 1,
        max_idle_instances: 1,
        entrypoint: a.entrypoint.clone(),
        ..RuntimeConfig::default()
    };
    let runtime = PolicyRuntime::new(config(Some(cache.clone())))?;
    match runtime.load_with_report(bundle) {
        Ok((engine, report)) => {
            tracing::debug!(?report, "policy loaded");
            Ok(engine)
        }
        // A cache we cannot write costs time, not correctness.
        Err(LoadError::Cache { path, source }) => {
            eprintln!(
                "warning: module cache {} unusable ({source}); compiling without it",
                path.display()
            );
            Ok(PolicyRuntime::new(config(None))?.load(bundle)?)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("loading {}", a.bundle.display()))),
    }
}
