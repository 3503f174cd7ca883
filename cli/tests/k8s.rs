//! `wardctl install` and `wardctl inject` as an operator runs them, their output checked
//! the way `kubectl apply --dry-run=client` would: every document decodes into its
//! Kubernetes type with no field lost (the k8s-openapi schema types).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/tests/it/injector/schema.rs"]
mod schema;

use std::path::Path;
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

fn wardctl(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardctl"))
        .args(args)
        .env("WARDMESH_HOME", home)
        .env_remove("WARDMESH_CA_SEAL_KEY")
        .env_remove("WARDMESH_POSTGRES_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "wardctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|de| Value::deserialize(de).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn home_with_ca() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    ok(wardctl(
        home.path(),
        &["ca", "init", "--trust-domain", "clinic.example"],
        None,
    ));
    home
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn install_renders_valid_deterministic_manifests_with_the_ca() {
    let home = home_with_ca();
    let first = ok(wardctl(home.path(), &["install"], None));
    let second = ok(wardctl(home.path(), &["install"], None));
    assert_eq!(first, second, "install output must be deterministic");
    let docs = documents(&first);
    for d in &docs {
        schema::assert_manifest("wardctl install", d);
    }
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"Namespace"));
    assert_eq!(kinds.last(), Some(&"MutatingWebhookConfiguration"));

    // caBundle: the mesh's roots, so the API server trusts the CA-issued serving cert.
    let hook = find(&docs, "MutatingWebhookConfiguration", "wardmesh-injector");
    let bundle = hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    use base64::Engine;
    let pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
    )
    .unwrap();
    let (state, _) = wardmesh_identity::ca::CaDir::new(home.path().join("ca"))
        .status()
        .unwrap();
    let root = std::fs::read_to_string(
        home.path()
            .join("ca/authorities")
            .join(&state.active)
            .join("root.pem"),
    )
    .unwrap();
    assert_eq!(pem, root);

    // The CA Secret carries the sealed intermediate key, never the offline root key, and
    // the Deployment maps each flat key back to the CA directory layout.
    let secret = find(&docs, "Secret", "wardmesh-ca");
    let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().any(|k| k.ends_with(".intermediate.key.sealed")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("root.key")), "{keys:?}");
    let dep = find(&docs, "Deployment", "wardmesh-control-plane");
    assert_eq!(dep["spec"]["replicas"], 1);
    let ca_vol = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ca")
        .unwrap();
    let items = ca_vol["secret"]["items"].as_array().unwrap();
    assert_eq!(items.len(), keys.len());
    assert!(
        items
            .iter()
            .any(|i| i["path"] == format!("authorities/{}/intermediate.key.sealed", state.active))
    );
    assert!(docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "wardmesh-seal-key")
    );
}

#[test]
fn install_ha_runs_two_replicas_on_postgres() {
    let home = home_with_ca();
    let url = "postgres://wardmesh:pw@db.internal:5432/wardmesh?sslmode=verify-full";
    let out = ok(wardctl(
        home.path(),
        &[
            "install",
            "--ha",
            "--postgres-url",
            url,
            "--include-seal-key",
        ],
        None,
    ));
    let docs = documents(&out);
    for d in &docs {
        schema::assert_manifest("wardctl install --ha", d);
    }
    let dep = find(&docs, "Deployment", "wardmesh-control-plane");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    assert_eq!(
        find(&docs, "Secret", "wardmesh-store")["stringData"]["url"],
        url
    );
    assert!(find(&docs, "Secret", "wardmesh-seal-key")["data"]["seal.key"].is_string());
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "wardmesh-control-plane")["spec"]["minAvailable"],
        1
    );

    let e = wardctl(home.path(), &["install", "--ha"], None);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("--postgres-url"));
}

const SAMPLE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: notes-api
  namespace: clinic
  labels: {app: notes-api}
spec:
  replicas: 2
  selector:
    matchLabels: {app: notes-api}
  template:
    metadata:
      labels: {app: notes-api}
      annotations:
        wardmesh.io/outbound-ports-exclude: "5432"
    spec:
      serviceAccountName: notes-api
      containers:
        - name: notes-api
          image: clinic/notes-api:1.4.2
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: notes-api, namespace: clinic}
spec:
  selector: {app: notes-api}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn inject_adds_the_agent_and_init_container_to_a_deployment() {
    let home = home_with_ca();
    let o = wardctl(home.path(), &["inject", "-f", "-"], Some(SAMPLE));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let docs = documents(&ok(o));
    assert!(stderr.contains("deployment/notes-api injected"), "{stderr}");
    assert!(stderr.contains("service/notes-api skipped"), "{stderr}");
    assert_eq!(docs.len(), 2);
    let dep = &docs[0];
    schema::assert_manifest("wardctl inject", dep);
    let pod = &dep["spec"]["template"]["spec"];
    let names: Vec<&str> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["notes-api", "wardmesh-agent"]);
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "wardmesh-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-outbound-ports", "5432"]),
        "{args:?}"
    );
    let agent = &pod["containers"][1];
    let td = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WARDMESH_TRUST_DOMAIN")
        .unwrap();
    assert_eq!(td["value"], "clinic.example");
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"]["app"],
        "notes-api"
    );

    // Injecting the output again changes nothing.
    let again = ok(wardctl(
        home.path(),
        &["inject", "-f", "-"],
        Some(&yaml_out(&docs)),
    ));
    assert_eq!(documents(&again), docs);
}

fn yaml_out(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", yaml_serde::to_string(d).unwrap()))
        .collect()
}
