//! The injector webhook over real HTTPS, called the way the API server calls it
//! (AdmissionReview v1, no client certificate, the mesh root as caBundle), and the
//! patched pods checked against the Kubernetes OpenAPI types.

mod manifests;
mod schema;
mod tokenreview;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use wardmesh_control_plane::injector::jsonpatch::{PatchOp, apply};
use wardmesh_control_plane::injector::{InjectorConfig, WEBHOOK_PATH};
use wardmesh_tests::{TestCp, TestMesh};

async fn start() -> (TestMesh, TestCp, String) {
    let mesh = TestMesh::new();
    let mut cfg = mesh.config(None);
    let mut inj = InjectorConfig::new("127.0.0.1:0".parse().unwrap());
    inj.agent_image = "ghcr.io/wardmesh/wardmesh-agent:it".into();
    cfg.injector = Some(inj);
    let cp = mesh.start_with(cfg).await;
    let url = format!(
        "https://127.0.0.1:{}{WEBHOOK_PATH}",
        cp.cp.webhook_addr.unwrap().port()
    );
    (mesh, cp, url)
}

/// What the API server sends for a pod a ReplicaSet creates: generateName, no name, no
/// namespace in the object, oldObject null.
fn replicaset_pod() -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "notes-api-5c7d8b9f6-",
            "creationTimestamp": null,
            "labels": {"app": "notes-api", "pod-template-hash": "5c7d8b9f6"},
            "annotations": {"wardmesh.io/inbound-ports-exclude": "9090", "wardmesh.io/phi": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "notes-api-5c7d8b9f6", "uid": "8d1f0a52-6d0c-4c5e-9d0e-1f2a3b4c5d6e", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{
                "name": "notes-api",
                "image": "clinic/notes-api:1.4.2",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
                "securityContext": {"runAsUser": 1000, "runAsNonRoot": true},
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "notes-api",
            "serviceAccount": "notes-api",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    })
}

fn review(
    uid: &str,
    namespace: &str,
    operation: &str,
    object: Value,
    old: Value,
    dry_run: bool,
) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "c5b0", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// An HTTPS client that trusts only the mesh roots and presents no certificate: what the
/// API server does with the caBundle `wardctl install` writes.
fn api_server_client(cp: &TestCp) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in wardmesh_identity::svid::certs_from_pem(&cp.bundle_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(wardmesh_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // The API server resolves the Service name; the certificate must carry it.
        .resolve(
            "wardmesh-control-plane.wardmesh-system.svc",
            cp.cp.webhook_addr.unwrap(),
        )
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn patch_of(answer: &Value) -> Vec<PatchOp> {
    let b64 = answer["response"]["patch"].as_str().expect("a patch");
    let ops: Vec<Value> = serde_json::from_slice(&STANDARD.decode(b64).unwrap()).unwrap();
    ops.into_iter()
        .map(|o| {
            assert_eq!(o["op"], "add");
            PatchOp::add(o["path"].as_str().unwrap(), o["value"].clone())
        })
        .collect()
}

#[tokio::test]
async fn webhook_injects_replicaset_pods_over_https_and_the_result_is_a_valid_pod() {
    let (_mesh, cp, _) = start().await;
    let client = api_server_client(&cp);
    let port = cp.cp.webhook_addr.unwrap().port();
    let url = format!("https://wardmesh-control-plane.wardmesh-system.svc:{port}{WEBHOOK_PATH}");

    for (uid, dry_run) in [("uid-create", false), ("uid-dry-run", true)] {
        let body = review(
            uid,
            "clinic",
            "CREATE",
            replicaset_pod(),
            Value::Null,
            dry_run,
        );
        let (status, answer) = post(&client, &url, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");

        let mut pod = replicaset_pod();
        apply(&mut pod, &patch_of(&answer)).unwrap();
        schema::assert_valid::<Pod>("injected pod", &pod);
        let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
        let spec = typed.spec.unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["notes-api", "wardmesh-agent"]);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "wardmesh-init");
        let args = init.args.as_ref().unwrap();
        assert_eq!(args[0], "init-iptables");
        assert!(
            args.windows(2)
                .any(|w| w == ["--exclude-inbound-ports", "9090"]),
            "{args:?}"
        );
        let caps = init
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
        let agent = &spec.containers[1];
        assert_eq!(
            agent.security_context.as_ref().unwrap().run_as_user,
            Some(1337)
        );
        let env: Vec<(&str, Option<&str>)> = agent
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert!(env.contains(&("WARDMESH_TRUST_DOMAIN", Some("wardmesh.local"))));
        assert!(env.contains(&("WARDMESH_AUDIT_MODE", Some("fail-closed"))));
        // The owner's labels survive; ours is added by key (JSON Pointer ~1 escaping).
        let labels = typed.metadata.labels.unwrap();
        assert_eq!(labels["app"], "notes-api");
        assert_eq!(labels["wardmesh.io/injected"], "true");
        // The bundle annotation is the mesh's current roots, read back by the agent.
        assert_eq!(
            typed.metadata.annotations.unwrap()["wardmesh.io/trust-bundle"],
            cp.bundle_pem()
        );
        let vol = spec.volumes.unwrap();
        let token = vol
            .iter()
            .find(|v| v.name == "wardmesh-identity")
            .and_then(|v| v.projected.as_ref())
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some("wardmesh"));
        assert_eq!(token.expiration_seconds, Some(600));

        // Idempotent: the injected pod coming back (a re-invocation) is left alone.
        let again = review(
            "uid-again",
            "clinic",
            "CREATE",
            pod.clone(),
            Value::Null,
            false,
        );
        let (_, answer) = post(&client, &url, serde_json::to_vec(&again).unwrap()).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
    }
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn webhook_passes_updates_excluded_namespaces_and_opted_out_pods_unchanged() {
    let (_mesh, cp, url) = start().await;
    let client = cp.client(None);
    let mut disabled = replicaset_pod();
    disabled["metadata"]["annotations"]["wardmesh.io/inject"] = json!("disabled");
    let cases = [
        (
            "update",
            review(
                "u1",
                "clinic",
                "UPDATE",
                replicaset_pod(),
                replicaset_pod(),
                false,
            ),
        ),
        (
            "own namespace",
            review(
                "u2",
                "wardmesh-system",
                "CREATE",
                replicaset_pod(),
                Value::Null,
                false,
            ),
        ),
        (
            "kube-system",
            review(
                "u3",
                "kube-system",
                "CREATE",
                replicaset_pod(),
                Value::Null,
                false,
            ),
        ),
        (
            "annotated disabled",
            review("u4", "clinic", "CREATE", disabled, Value::Null, false),
        ),
    ];
    for (what, body) in cases {
        let (status, answer) = post(&client, &url, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, 200, "{what}");
        assert_eq!(answer["response"]["uid"], body["request"]["uid"], "{what}");
        assert_eq!(answer["response"]["allowed"], true, "{what}");
        assert!(
            answer["response"].get("patch").is_none(),
            "{what}: {answer}"
        );
    }
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn webhook_answers_malformed_reviews_with_allowed_false() {
    let (_mesh, cp, url) = start().await;
    let client = cp.client(None);
    let mut bad_ann = replicaset_pod();
    bad_ann["metadata"]["annotations"]["wardmesh.io/outbound-ports-exclude"] = json!("postgres");
    let mut svc = review(
        "m3",
        "clinic",
        "CREATE",
        json!({"kind": "Service"}),
        Value::Null,
        false,
    );
    svc["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "services"});
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"\x00\xffnot json".to_vec(), 400, "not JSON"),
        ("truncated", br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"#.to_vec(), 400, "not JSON"),
        ("v1beta1", serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}})).unwrap(), 400, "v1"),
        ("no object", serde_json::to_vec(&review("m1", "clinic", "CREATE", Value::Null, Value::Null, false)).unwrap(), 200, "no object"),
        ("bad annotation", serde_json::to_vec(&review("m2", "clinic", "CREATE", bad_ann, Value::Null, false)).unwrap(), 200, "outbound-ports-exclude"),
        ("service", serde_json::to_vec(&svc).unwrap(), 200, "only handles pods"),
    ];
    for (what, body, status, expect) in cases {
        let (got, answer) = post(&client, &url, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{what}");
        assert_eq!(answer["response"]["allowed"], false, "{what}");
        let msg = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{what}: {msg}");
    }
    // The webhook is still serving after all of that.
    let ok = review(
        "m4",
        "clinic",
        "CREATE",
        replicaset_pod(),
        Value::Null,
        false,
    );
    let (status, answer) = post(&client, &url, serde_json::to_vec(&ok).unwrap()).await;
    assert_eq!(
        (status, &answer["response"]["allowed"]),
        (200, &json!(true))
    );
    cp.cp.shutdown().await;
}
