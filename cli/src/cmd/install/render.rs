//! Pure rendering of the install manifests: the deploy/base files, compiled in, with the
//! CA Secret, the webhook's caBundle, images and (with `--ha`) the PostgreSQL settings
//! filled in. Same inputs, same bytes: no clocks, no randomness, sorted maps.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::yaml::parse_documents;

/// The base manifests in apply order (namespace and RBAC before the workload, the webhook
/// last so it only starts matching once its backend exists).
const BASE: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../../deploy/base/namespace.yaml"),
    ),
    (
        "serviceaccount.yaml",
        include_str!("../../../../deploy/base/serviceaccount.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../../deploy/base/rbac.yaml"),
    ),
    ("pvc.yaml", include_str!("../../../../deploy/base/pvc.yaml")),
    (
        "service.yaml",
        include_str!("../../../../deploy/base/service.yaml"),
    ),
    (
        "deployment.yaml",
        include_str!("../../../../deploy/base/deployment.yaml"),
    ),
    ("pdb.yaml", include_str!("../../../../deploy/base/pdb.yaml")),
    (
        "networkpolicy.yaml",
        include_str!("../../../../deploy/base/networkpolicy.yaml"),
    ),
    (
        "webhook.yaml",
        include_str!("../../../../deploy/base/webhook.yaml"),
    ),
];

pub const NAMESPACE: &str = "wardmesh-system";
pub const CA_SECRET: &str = "wardmesh-ca";
pub const SEAL_SECRET: &str = "wardmesh-seal-key";
pub const STORE_SECRET: &str = "wardmesh-store";

/// Everything the manifests depend on.
#[derive(Debug, Clone)]
pub struct InstallInputs {
    /// CA directory files by relative path (`ca.json`, `authorities/<id>/root.pem`, …),
    /// without the offline root key.
    pub ca_files: BTreeMap<String, Vec<u8>>,
    /// The trusted roots, PEM: the webhook's caBundle.
    pub roots_pem: String,
    pub control_plane_image: String,
    pub agent_image: String,
    /// `Some(url)`: two replicas on PostgreSQL.
    pub postgres_url: Option<String>,
    /// The sealing key, when the operator asked for it to be included.
    pub seal_key: Option<Vec<u8>>,
}

/// The manifests, in apply order.
pub fn render(i: &InstallInputs) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (name, text) in BASE {
        for doc in parse_documents(text, name)? {
            let kind = doc["kind"].as_str().unwrap_or("").to_owned();
            if kind == "PersistentVolumeClaim" && i.postgres_url.is_some() {
                continue;
            }
            if kind == "Deployment" {
                // Secrets right before the workload that mounts them.
                out.extend(secrets(i)?);
            }
            out.push(doc);
        }
    }
    for doc in &mut out {
        match doc["kind"].as_str() {
            Some("Deployment") => deployment(doc, i)?,
            Some("MutatingWebhookConfiguration") => {
                for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                    w["clientConfig"]["caBundle"] = json!(STANDARD.encode(&i.roots_pem));
                }
            }
            Some("PodDisruptionBudget") if i.postgres_url.is_some() => {
                let spec = doc["spec"].as_object_mut().context("pdb has no spec")?;
                spec.remove("maxUnavailable");
                spec.insert("minAvailable".into(), json!(1));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `authorities/<id>/root.pem` → `<id>.root.pem`: Secret keys are flat.
pub fn secret_key(path: &str) -> String {
    path.strip_prefix("authorities/")
        .unwrap_or(path)
        .replace('/', ".")
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": "wardmesh-control-plane", "app.kubernetes.io/part-of": "wardmesh"})
}

fn secrets(i: &InstallInputs) -> anyhow::Result<Vec<Value>> {
    let mut data = serde_json::Map::new();
    for (path, bytes) in &i.ca_files {
        let key = secret_key(path);
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!("CA file {path} has a name a Secret key cannot hold");
        }
        data.insert(key, json!(STANDARD.encode(bytes)));
    }
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CA_SECRET, "namespace": NAMESPACE, "labels": labels()},
        "type": "Opaque",
        "data": data,
    })];
    if let Some(key) = &i.seal_key {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SEAL_SECRET, "namespace": NAMESPACE, "labels": labels()},
            "type": "Opaque",
            "data": {"seal.key": STANDARD.encode(key)},
        }));
    }
    if let Some(url) = &i.postgres_url {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": STORE_SECRET, "namespace": NAMESPACE, "labels": labels()},
            "type": "Opaque",
            "stringData": {"url": url},
        }));
    }
    Ok(out)
}

fn deployment(doc: &mut Value, i: &InstallInputs) -> anyhow::Result<()> {
    let pod = &mut doc["spec"]["template"]["spec"];
    let c = pod["containers"]
        .get_mut(0)
        .context("deployment.yaml has no container")?;
    c["image"] = json!(i.control_plane_image);
    for arg in c["args"].as_array_mut().into_iter().flatten() {
        if arg
            .as_str()
            .is_some_and(|a| a.starts_with("--agent-image="))
        {
            *arg = json!(format!("--agent-image={}", i.agent_image));
        }
    }
    if i.postgres_url.is_some() {
        c["env"]
            .as_array_mut()
            .context("deployment.yaml container has no env")?
            .push(json!({"name": "WARDMESH_STORE_URL", "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": "url"}}}));
    }
    let items: Vec<Value> = i
        .ca_files
        .keys()
        .map(|path| json!({"key": secret_key(path), "path": path}))
        .collect();
    for v in pod["volumes"].as_array_mut().into_iter().flatten() {
        match v["name"].as_str() {
            Some("ca") => v["secret"]["items"] = json!(items),
            // State lives in PostgreSQL; the home directory only holds per-pod files.
            Some("data") if i.postgres_url.is_some() => {
                *v = json!({"name": "data", "emptyDir": {}})
            }
            _ => {}
        }
    }
    if i.postgres_url.is_some() {
        pod["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "wardmesh-control-plane"}},
        }]);
        doc["spec"]["replicas"] = json!(2);
        doc["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}});
    }
    Ok(())
}
