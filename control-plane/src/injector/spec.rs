//! The containers and volumes the injector adds, as Kubernetes JSON. The agent's flags
//! and environment variables here are the ones `wardmesh-agent run` and
//! `wardmesh-agent init-iptables` accept (agent/src/cli.rs, agent/src/iptables/args.rs).

use serde_json::{Value, json};
use wardmesh_proto::ports;

use super::InjectParams;
use super::annotations::{Annotations, TRUST_BUNDLE};

pub const AGENT_CONTAINER: &str = "wardmesh-agent";
pub const INIT_CONTAINER: &str = "wardmesh-init";
pub const IDENTITY_VOLUME: &str = "wardmesh-identity";
pub const XTABLES_VOLUME: &str = "wardmesh-xtables";
/// The flow-record spool: an emptyDir on disk, so records survive an agent crash or
/// container restart (not the pod's deletion: the shipper drains it within seconds).
pub const SPOOL_VOLUME: &str = "wardmesh-spool";
pub const SPOOL_DIR: &str = "/var/lib/wardmesh/spool";
/// The agent's UID: `init-iptables` exempts this UID's traffic from redirection, so the
/// application must never run as it.
pub const AGENT_UID: i64 = 1337;
/// Where the projected token and the trust bundle appear in the agent container.
pub const IDENTITY_DIR: &str = "/var/run/secrets/wardmesh";
/// The shortest lifetime the API server allows for a projected token; the kubelet
/// refreshes it at 80 %, so a leaked token is useless within minutes.
pub const TOKEN_EXPIRY_SECONDS: i64 = 600;

/// The sidecar: runs as [`AGENT_UID`], no capabilities, read-only root file system.
pub fn agent_container(p: &InjectParams, a: &Annotations) -> Value {
    let mut env = vec![
        var("WARDMESH_CONTROL_PLANE", &p.control_plane_url),
        var("WARDMESH_TRUST_DOMAIN", &p.trust_domain),
        var(
            "WARDMESH_TRUST_BUNDLE",
            &format!("{IDENTITY_DIR}/bundle.pem"),
        ),
        var("WARDMESH_SA_TOKEN_FILE", &format!("{IDENTITY_DIR}/token")),
        // The kubelet probes the pod IP, so the admin server cannot stay on loopback.
        var(
            "WARDMESH_ADMIN_ADDR",
            &format!("0.0.0.0:{}", ports::AGENT_ADMIN),
        ),
        var(
            "WARDMESH_INBOUND_LISTEN",
            &format!("0.0.0.0:{}", ports::AGENT_INBOUND),
        ),
        var(
            "WARDMESH_OUTBOUND_LISTEN",
            &format!("127.0.0.1:{}", ports::AGENT_OUTBOUND),
        ),
        json!({"name": "WARDMESH_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        var("WARDMESH_SPOOL_DIR", SPOOL_DIR),
    ];
    if let Some(r) = &a.routes {
        env.push(var("WARDMESH_ROUTES", r));
    }
    if a.phi {
        env.push(var("WARDMESH_AUDIT_MODE", "fail-closed"));
    }
    let probe = |path: &str| {
        json!({
            "httpGet": {"path": path, "port": ports::AGENT_ADMIN},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    json!({
        "name": AGENT_CONTAINER,
        "image": p.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["run"],
        "env": env,
        "ports": [
            {"name": "wm-inbound", "containerPort": ports::AGENT_INBOUND, "protocol": "TCP"},
            {"name": "wm-admin", "containerPort": ports::AGENT_ADMIN, "protocol": "TCP"},
        ],
        "readinessProbe": probe("/ready"),
        "livenessProbe": probe("/live"),
        // Measured budget: <= 20 MB RSS under load (DESIGN.md §3); the limit leaves
        // headroom for connection bursts.
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true},
            {"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR},
        ],
    })
}

/// The init container: installs the nat rules, then exits. Root in the pod's network
/// namespace with NET_ADMIN and NET_RAW only; everything else dropped.
pub fn init_container(p: &InjectParams, a: &Annotations) -> Value {
    let mut args = vec![
        "init-iptables".to_owned(),
        "--proxy-uid".into(),
        AGENT_UID.to_string(),
        "--inbound-port".into(),
        ports::AGENT_INBOUND.to_string(),
        "--outbound-port".into(),
        ports::AGENT_OUTBOUND.to_string(),
        "--admin-port".into(),
        ports::AGENT_ADMIN.to_string(),
    ];
    if let Some(v) = &a.inbound_ports_exclude {
        args.extend(["--exclude-inbound-ports".into(), v.clone()]);
    }
    if let Some(v) = &a.outbound_ports_exclude {
        args.extend(["--exclude-outbound-ports".into(), v.clone()]);
    }
    json!({
        "name": INIT_CONTAINER,
        "image": p.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // iptables takes its lock under /run; give it a scratch directory so the root
        // file system can stay read-only.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    })
}

/// The projected token (audience `wardmesh`, short expiry) and the trust bundle, read
/// back from the pod's own annotation through the downward API; iptables' scratch; the
/// flow spool.
pub fn volumes() -> Vec<Value> {
    vec![
        json!({
            "name": IDENTITY_VOLUME,
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {
                        "audience": wardmesh_identity::attest::SA_TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_EXPIRY_SECONDS,
                        "path": "token",
                    }},
                    {"downwardAPI": {"items": [{
                        "path": "bundle.pem",
                        "fieldRef": {"fieldPath": format!("metadata.annotations['{TRUST_BUNDLE}']")},
                    }]}},
                ],
            },
        }),
        json!({"name": XTABLES_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        // Room for the agent's default spool limit (256 MiB) and its segment slack.
        json!({"name": SPOOL_VOLUME, "emptyDir": {"sizeLimit": "300Mi"}}),
    ]
}

fn var(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}
