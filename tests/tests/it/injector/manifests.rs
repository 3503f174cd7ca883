//! Every file in deploy/ parses and validates against the Kubernetes types; overlay
//! patches target resources the base defines.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::schema::assert_manifest;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn base_manifests_validate_against_the_kubernetes_schema() {
    let base = deploy_dir().join("base");
    let kustomization = &documents(&base.join("kustomization.yaml"))[0];
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let mut kinds = Vec::new();
    for file in yaml_files(&base) {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        assert!(
            listed.contains(&name.as_str()),
            "{name} is not in kustomization.yaml"
        );
        for doc in documents(&file) {
            assert_manifest(&name, &doc);
            kinds.push(doc["kind"].as_str().unwrap().to_owned());
        }
    }
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.iter().any(|k| k == want), "deploy/base has no {want}");
    }
}

#[test]
fn rbac_is_least_privilege_and_the_webhook_excludes_its_own_namespace() {
    let base = deploy_dir().join("base");
    let rbac = documents(&base.join("rbac.yaml"));
    let rules = &rbac[0]["rules"];
    assert_eq!(
        rules,
        &serde_json::json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
    );
    let hook = &documents(&base.join("webhook.yaml"))[0]["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    let exprs = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    assert!(
        exprs
            .iter()
            .any(|e| e["key"] == "wardmesh.io/inject"
                && e["values"] == serde_json::json!(["enabled"]))
    );
    assert!(exprs.iter().any(|e| {
        e["operator"] == "NotIn"
            && e["values"]
                .as_array()
                .unwrap()
                .contains(&"wardmesh-system".into())
    }));
}

#[test]
fn postgres_overlay_patches_resources_the_base_defines() {
    let overlay = deploy_dir().join("overlays/postgres");
    let k = &documents(&overlay.join("kustomization.yaml"))[0];
    assert_eq!(k["resources"][0], "../../base");
    let base: Vec<(String, String)> = yaml_files(&deploy_dir().join("base"))
        .iter()
        .flat_map(|f| documents(f))
        .filter(|d| d["kind"] != "Kustomization")
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for p in k["patches"].as_array().unwrap() {
        let doc = match p["path"].as_str() {
            Some(path) => documents(&overlay.join(path)).remove(0),
            None => yaml_serde::from_str(p["patch"].as_str().unwrap()).unwrap(),
        };
        let target = (
            doc["kind"].as_str().unwrap().to_owned(),
            doc["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        assert!(
            base.contains(&target),
            "patch targets {target:?}, which deploy/base lacks"
        );
    }
    let ha = documents(&overlay.join("deployment-ha.yaml")).remove(0);
    assert_eq!(ha["spec"]["replicas"], 2);
    let secret = documents(&overlay.join("store-secret.yaml")).remove(0);
    assert_manifest("store-secret.yaml", &secret);
}
