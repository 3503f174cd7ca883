//! Decision and review tests over real AdmissionReview v1 shapes (the HTTPS round trip
//! and schema checks are in tests/tests/it/injector.rs).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::jsonpatch::{PatchOp, apply, escape};
use super::spec::{AGENT_CONTAINER, INIT_CONTAINER};
use super::*;

fn params() -> InjectParams {
    InjectParams {
        agent_image: "ghcr.io/wardmesh/wardmesh-agent:test".into(),
        control_plane_url: DEFAULT_CONTROL_PLANE_URL.into(),
        trust_domain: "clinic.example".into(),
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        excluded_namespaces: default_excluded_namespaces(),
    }
}

/// A pod as a ReplicaSet creates it: generateName, no name, labels and annotations.
fn replicaset_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "notes-api-7d9c6b5f4-",
            "labels": {"app": "notes-api", "pod-template-hash": "7d9c6b5f4"},
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "notes-api-7d9c6b5f4", "uid": "0b9d", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "serviceAccountName": "notes-api",
            "containers": [{"name": "app", "image": "clinic/notes:1.4", "ports": [{"containerPort": 8080}]}],
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": []}}],
        },
    })
}

fn admission(operation: &str, object: Value, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "clinic",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

fn ops_of(d: Decision) -> Vec<PatchOp> {
    match d {
        Decision::Inject(ops) => ops,
        other => panic!("expected injection, got {other:?}"),
    }
}

fn injected(pod: &Value) -> Value {
    let mut out = pod.clone();
    apply(&mut out, &ops_of(decide(pod, "clinic", &params()))).unwrap();
    out
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn replicaset_pod_gets_agent_and_init_without_losing_labels() {
    let pod = replicaset_pod();
    let ops = ops_of(decide(&pod, "clinic", &params()));
    let paths: Vec<&str> = ops.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/wardmesh.io~1trust-bundle",
            "/metadata/labels/wardmesh.io~1injected",
            "/spec/initContainers",
            "/spec/containers/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
        ]
    );
    let out = injected(&pod);
    assert_eq!(out["metadata"]["labels"]["app"], "notes-api");
    assert_eq!(out["metadata"]["labels"]["pod-template-hash"], "7d9c6b5f4");
    assert_eq!(out["metadata"]["labels"]["wardmesh.io/injected"], "true");
    assert_eq!(
        out["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(
        out["metadata"]["annotations"]["wardmesh.io/trust-bundle"],
        params().trust_bundle_pem
    );
    assert_eq!(
        out["spec"]["containers"][0]["name"], "app",
        "app stays first"
    );
    let agent = container(&out, "containers", AGENT_CONTAINER);
    assert_eq!(agent["args"], json!(["run"]));
    assert_eq!(
        env(agent, "WARDMESH_TRUST_DOMAIN").unwrap()["value"],
        "clinic.example"
    );
    assert_eq!(
        env(agent, "WARDMESH_SA_TOKEN_FILE").unwrap()["value"],
        "/var/run/secrets/wardmesh/token"
    );
    assert_eq!(agent["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        agent["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], 7191);
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/live");
    let init = container(&out, "initContainers", INIT_CONTAINER);
    assert_eq!(init["args"][0], "init-iptables");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let vols = out["spec"]["volumes"].as_array().unwrap();
    assert_eq!(vols[0]["name"], "kube-api-access-x", "existing volume kept");
    let token = &vols[1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "wardmesh");
    assert_eq!(token["expirationSeconds"], 600);
    // The spool survives agent restarts: an on-disk emptyDir, mounted where the agent
    // is told to spool.
    assert_eq!(vols[3]["name"], "wardmesh-spool");
    assert!(
        vols[3]["emptyDir"].get("medium").is_none(),
        "on disk, not tmpfs"
    );
    assert_eq!(
        env(agent, "WARDMESH_SPOOL_DIR").unwrap()["value"],
        "/var/lib/wardmesh/spool"
    );
}

#[test]
fn bare_pod_gets_whole_maps_where_none_existed() {
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}], "initContainers": null}});
    let ops = ops_of(decide(&pod, "clinic", &params()));
    assert_eq!(ops[0].path, "/metadata/annotations");
    assert_eq!(ops[1].path, "/metadata/labels");
    assert_eq!(ops[2].path, "/spec/initContainers");
    let out = injected(&pod);
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 3);

    // No metadata at all (a template written by hand): one empty map first, then keys.
    let bare = json!({"spec": {"containers": [{"name": "app", "image": "x"}]}});
    let out = injected(&bare);
    assert_eq!(out["metadata"]["labels"]["wardmesh.io/injected"], "true");
    assert!(out["metadata"]["annotations"]["wardmesh.io/trust-bundle"].is_string());
}

#[test]
fn existing_init_containers_run_before_iptables() {
    let mut pod = replicaset_pod();
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "clinic/migrate"}]);
    let out = injected(&pod);
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["migrate", INIT_CONTAINER]);
}

#[test]
fn injection_is_idempotent() {
    let once = injected(&replicaset_pod());
    assert_eq!(
        decide(&once, "clinic", &params()),
        Decision::Skip("the pod already has the wardmesh agent".into())
    );
    let mut half = replicaset_pod();
    half["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": AGENT_CONTAINER, "image": "x"}));
    assert!(
        matches!(decide(&half, "clinic", &params()), Decision::Refuse(m) if m.contains("only one"))
    );
}

#[test]
fn skips_excluded_namespaces_disabled_pods_and_host_network() {
    let pod = replicaset_pod();
    for ns in ["wardmesh-system", "kube-system"] {
        assert!(matches!(decide(&pod, ns, &params()), Decision::Skip(m) if m.contains("excluded")));
    }
    let mut off = pod.clone();
    off["metadata"]["annotations"]["wardmesh.io/inject"] = json!("disabled");
    assert!(
        matches!(decide(&off, "clinic", &params()), Decision::Skip(m) if m.contains("disabled"))
    );
    let mut host = pod.clone();
    host["spec"]["hostNetwork"] = json!(true);
    assert!(
        matches!(decide(&host, "clinic", &params()), Decision::Skip(m) if m.contains("host-network"))
    );
}

#[test]
fn annotations_steer_the_init_container_and_the_agent() {
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({
        "wardmesh.io/inbound-ports-exclude": "9090, 9000-9100",
        "wardmesh.io/outbound-ports-exclude": "5432",
        "wardmesh.io/routes": "/patients/{id}/notes\n/patients/{id}",
        "wardmesh.io/phi": "true",
    });
    let out = injected(&pod);
    let args: Vec<&str> = container(&out, "initContainers", INIT_CONTAINER)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(after("--exclude-inbound-ports"), "9090,9000-9100");
    assert_eq!(after("--exclude-outbound-ports"), "5432");
    assert_eq!(after("--proxy-uid"), "1337");
    let agent = container(&out, "containers", AGENT_CONTAINER);
    assert_eq!(
        env(agent, "WARDMESH_ROUTES").unwrap()["value"],
        "/patients/{id}/notes,/patients/{id}"
    );
    assert_eq!(
        env(agent, "WARDMESH_AUDIT_MODE").unwrap()["value"],
        "fail-closed"
    );

    let plain = injected(&replicaset_pod());
    let agent = container(&plain, "containers", AGENT_CONTAINER);
    assert!(env(agent, "WARDMESH_ROUTES").is_none());
    assert!(env(agent, "WARDMESH_AUDIT_MODE").is_none());
}

#[test]
fn invalid_annotations_and_agent_uid_refuse_the_pod() {
    let cases = [
        ("wardmesh.io/inbound-ports-exclude", "http", "not a port"),
        (
            "wardmesh.io/outbound-ports-exclude",
            "9100-9000",
            "not a port",
        ),
        ("wardmesh.io/outbound-ports-exclude", "70000", "not a port"),
        ("wardmesh.io/phi", "yes", "\"true\" or \"false\""),
        ("wardmesh.io/inject", "maybe", "\"enabled\" or \"disabled\""),
        ("wardmesh.io/routes", "patients/{id}", "route template"),
    ];
    for (key, value, expect) in cases {
        let mut pod = replicaset_pod();
        pod["metadata"]["annotations"][key] = json!(value);
        match decide(&pod, "clinic", &params()) {
            Decision::Refuse(m) => assert!(m.contains(key) && m.contains(expect), "{key}: {m}"),
            other => panic!("{key}={value}: {other:?}"),
        }
    }
    let mut pod = replicaset_pod();
    pod["spec"]["securityContext"] = json!({"runAsUser": 1337});
    assert!(
        matches!(decide(&pod, "clinic", &params()), Decision::Refuse(m) if m.contains("uid 1337"))
    );
    // A container's own runAsUser overrides the pod's.
    pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1000});
    assert!(matches!(
        decide(&pod, "clinic", &params()),
        Decision::Inject(_)
    ));
}

fn answer(body: &Value) -> Answer {
    review(&serde_json::to_vec(body).unwrap(), &params())
}

#[test]
fn review_returns_a_base64_json_patch_for_create_and_dry_run() {
    for dry_run in [false, true] {
        let a = answer(&admission("CREATE", replicaset_pod(), dry_run));
        assert_eq!((a.http_status, a.outcome), (200, Outcome::Injected));
        let r = &a.body["response"];
        assert_eq!(a.body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(a.body["kind"], "AdmissionReview");
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: Value =
            serde_json::from_slice(&STANDARD.decode(r["patch"].as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(patch[0]["op"], "add");
        assert_eq!(patch.as_array().unwrap().len(), 7);
    }
}

#[test]
fn review_lets_other_operations_and_injected_pods_through_unpatched() {
    for (op, pod) in [
        ("UPDATE", replicaset_pod()),
        ("DELETE", Value::Null),
        ("CREATE", injected(&replicaset_pod())),
    ] {
        let a = answer(&admission(op, pod, false));
        assert_eq!((a.http_status, a.outcome), (200, Outcome::Skipped), "{op}");
        assert_eq!(a.body["response"]["allowed"], true);
        assert!(a.body["response"].get("patch").is_none(), "{op}");
    }
}

#[test]
fn malformed_reviews_get_clear_refusals() {
    let mut no_uid = admission("CREATE", replicaset_pod(), false);
    no_uid["request"]["uid"] = json!("");
    let mut v1beta1 = admission("CREATE", replicaset_pod(), false);
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut deployment = admission("CREATE", json!({}), false);
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let mut exec = admission("CONNECT", json!({}), false);
    exec["request"]["subResource"] = json!("exec");
    let mut no_ns = admission("CREATE", replicaset_pod(), false);
    no_ns["request"]["namespace"] = Value::Null;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not json", b"{\"apiVersion\":".to_vec(), 400, "not JSON"),
        ("empty", Vec::new(), 400, "not JSON"),
        ("array", b"[]".to_vec(), 400, "expected apiVersion"),
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            400,
            "admissionReviewVersions",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "no request",
        ),
        (
            "no uid",
            serde_json::to_vec(&no_uid).unwrap(),
            400,
            "no uid",
        ),
        (
            "deployment",
            serde_json::to_vec(&deployment).unwrap(),
            200,
            "only handles pods",
        ),
        ("exec", serde_json::to_vec(&exec).unwrap(), 200, "exec of"),
        (
            "no object",
            serde_json::to_vec(&admission("CREATE", Value::Null, false)).unwrap(),
            200,
            "no object",
        ),
        (
            "no namespace",
            serde_json::to_vec(&no_ns).unwrap(),
            200,
            "no namespace",
        ),
        (
            "no containers",
            serde_json::to_vec(&admission("CREATE", json!({"spec": {}}), false)).unwrap(),
            200,
            "no containers",
        ),
    ];
    for (what, body, status, expect) in cases {
        let a = review(&body, &params());
        assert_eq!(a.http_status, status, "{what}");
        let r = &a.body["response"];
        assert_eq!(r["allowed"], false, "{what}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{what}: {msg}");
        assert_eq!(a.body["kind"], "AdmissionReview", "{what}");
    }
}

#[test]
fn json_patch_add_semantics() {
    assert_eq!(escape("wardmesh.io/inject"), "wardmesh.io~1inject");
    assert_eq!(escape("a~b/c"), "a~0b~1c");
    let mut doc = json!({"m": {"a": 1}, "l": [1, 3]});
    apply(
        &mut doc,
        &[
            PatchOp::add("/m/x~1y", json!(2)),
            PatchOp::add("/l/1", json!(2)),
            PatchOp::add("/l/-", json!(4)),
        ],
    )
    .unwrap();
    assert_eq!(doc, json!({"m": {"a": 1, "x/y": 2}, "l": [1, 2, 3, 4]}));
    // `add` on an existing member replaces it whole: why labels are patched per key.
    apply(&mut doc, &[PatchOp::add("/m", json!({"only": true}))]).unwrap();
    assert_eq!(doc["m"], json!({"only": true}));
    assert!(apply(&mut doc, &[PatchOp::add("/nope/x", json!(1))]).is_err());
    assert!(apply(&mut doc, &[PatchOp::add("/l/9", json!(1))]).is_err());
    assert!(apply(&mut doc, &[PatchOp::add("l", json!(1))]).is_err());
}
