//! `wardctl inject`: add the wardmesh agent to manifests offline, the same patch the
//! injector webhook applies (like `linkerd inject`), for GitOps flows and for namespaces
//! without the webhook.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use wardmesh_control_plane::injector::jsonpatch::apply;
use wardmesh_control_plane::injector::{
    DEFAULT_AGENT_IMAGE, DEFAULT_CONTROL_PLANE_URL, Decision, InjectParams, decide,
    default_excluded_namespaces,
};
use wardmesh_identity::ca::CaDir;

use super::install::yaml::{parse_documents, to_stream};
use crate::args::Global;

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Agent image.
    #[arg(long, default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// Control-plane URL the agents connect to.
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE_URL)]
    pub agent_control_plane_url: String,
    /// Trust domain (default: the local CA's).
    #[arg(long)]
    pub trust_domain: Option<String>,
}

pub fn run(g: &Global, a: InjectArgs) -> anyhow::Result<()> {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?
    };
    let (bundle, ca_td) = roots(g)?;
    let params = InjectParams {
        agent_image: a.agent_image,
        control_plane_url: a.agent_control_plane_url,
        trust_domain: a
            .trust_domain
            .or(ca_td)
            .unwrap_or_else(|| "wardmesh.local".into()),
        trust_bundle_pem: bundle,
        excluded_namespaces: default_excluded_namespaces(),
    };
    let mut docs = parse_documents(&text, &a.file.display().to_string())?;
    for doc in &mut docs {
        for line in inject_object(doc, &params)? {
            eprintln!("{line}");
        }
    }
    print!("{}", to_stream(&docs)?);
    Ok(())
}

/// The trust bundle PEM (`--trust-bundle`, else the local CA's trusted roots) and, from
/// the local CA, the trust domain.
fn roots(g: &Global) -> anyhow::Result<(String, Option<String>)> {
    if let Some(p) = &g.trust_bundle {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok((pem, None));
    }
    let dir = CaDir::new(g.home.join("ca"));
    let (state, _) = dir.status().with_context(|| {
        format!(
            "no --trust-bundle given and no CA in {}; pass the mesh's root bundle",
            dir.path().display()
        )
    })?;
    let mut pem = String::new();
    for id in &state.trusted {
        let p = dir.path().join("authorities").join(id).join("root.pem");
        pem.push_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        );
    }
    Ok((pem, Some(state.trust_domain.to_string())))
}

/// Injects every pod template in `doc` (a `List` recursively); one report line each.
pub fn inject_object(doc: &mut Value, p: &InjectParams) -> anyhow::Result<Vec<String>> {
    let kind = doc["kind"].as_str().unwrap_or("").to_owned();
    if kind == "List" {
        let mut lines = Vec::new();
        for item in doc["items"].as_array_mut().into_iter().flatten() {
            lines.extend(inject_object(item, p)?);
        }
        return Ok(lines);
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let label = format!("{}/{name}", kind.to_lowercase());
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let pointer = match kind.as_str() {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return Ok(vec![format!("{label} skipped: no pod template")]),
    };
    let Some(template) = doc.pointer_mut(pointer) else {
        bail!("{label} has no pod template at {pointer}");
    };
    match decide(template, &namespace, p) {
        Decision::Inject(ops) => {
            apply(template, &ops).with_context(|| format!("patching {label}"))?;
            Ok(vec![format!("{label} injected")])
        }
        Decision::Skip(why) => Ok(vec![format!("{label} skipped: {why}")]),
        Decision::Refuse(why) => bail!("{label}: {why}"),
    }
}
