//! Decide, for one pod (or pod template), whether to inject and with which patch. Pure:
//! no I/O, no clock; the HTTP handler and `wardctl inject` both call [`decide`].

use serde_json::{Map, Value, json};

use super::InjectParams;
use super::annotations::{self, INJECTED_LABEL, TRUST_BUNDLE};
use super::jsonpatch::{PatchOp, escape};
use super::spec::{
    AGENT_CONTAINER, AGENT_UID, IDENTITY_VOLUME, INIT_CONTAINER, SPOOL_VOLUME, XTABLES_VOLUME,
    agent_container, init_container, volumes,
};

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit it with this patch.
    Inject(Vec<PatchOp>),
    /// Admit it unchanged, and why (logged, and shown by `wardctl inject`).
    Skip(String),
    /// Refuse it: injecting would be unsafe or the owner's annotations are invalid.
    Refuse(String),
}

/// The decision for `pod` (a Pod, or a template with `metadata` and `spec`) created in
/// `namespace`.
pub fn decide(pod: &Value, namespace: &str, p: &InjectParams) -> Decision {
    if p.excluded_namespaces.iter().any(|n| n == namespace) {
        return Decision::Skip(format!("namespace {namespace} is excluded from injection"));
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Decision::Refuse("the pod has no spec".into());
    };
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let ann = match annotations::parse(metadata.and_then(|m| m.get("annotations"))) {
        Ok(a) => a,
        Err(e) => return Decision::Refuse(e),
    };
    if ann.disabled {
        return Decision::Skip(format!(
            "the pod is annotated {}: disabled",
            annotations::INJECT
        ));
    }
    let containers = match spec.get("containers") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => return Decision::Refuse("the pod spec has no containers".into()),
    };
    let inits = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has_agent = containers.iter().any(|c| named(c, AGENT_CONTAINER));
    let has_init = inits.iter().any(|c| named(c, INIT_CONTAINER));
    match (has_agent, has_init) {
        (true, true) => return Decision::Skip("the pod already has the wardmesh agent".into()),
        (true, false) | (false, true) => {
            return Decision::Refuse(format!(
                "the pod has only one of the {AGENT_CONTAINER} and {INIT_CONTAINER} containers; \
                 remove it and let the injector add both"
            ));
        }
        (false, false) => {}
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        // iptables rules in a host-network pod would rewrite the node's own traffic.
        return Decision::Skip("host-network pods are never injected".into());
    }
    if let Some(c) = runs_as_agent_uid(spec, containers, inits) {
        return Decision::Refuse(format!(
            "{c} runs as uid {AGENT_UID}, the wardmesh agent's uid, whose traffic bypasses \
             the mesh; run the application as another uid or annotate the pod {}: disabled",
            annotations::INJECT
        ));
    }
    let existing_volumes = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(v) = [IDENTITY_VOLUME, XTABLES_VOLUME, SPOOL_VOLUME]
        .into_iter()
        .find(|v| existing_volumes.iter().any(|e| named(e, v)))
    {
        return Decision::Refuse(format!(
            "the pod already has a volume named {v}, which the injector adds"
        ));
    }

    let mut ops = Vec::new();
    let empty = Map::new();
    let metadata = match metadata {
        Some(m) => m,
        None => {
            ops.push(PatchOp::add("/metadata", json!({})));
            &empty
        }
    };
    map_entries(
        &mut ops,
        metadata,
        "annotations",
        &[(TRUST_BUNDLE, p.trust_bundle_pem.as_str())],
    );
    map_entries(&mut ops, metadata, "labels", &[(INJECTED_LABEL, "true")]);
    append(
        &mut ops,
        spec,
        "initContainers",
        vec![init_container(p, &ann)],
    );
    append(&mut ops, spec, "containers", vec![agent_container(p, &ann)]);
    append(&mut ops, spec, "volumes", volumes());
    Decision::Inject(ops)
}

fn named(v: &Value, name: &str) -> bool {
    v.get("name").and_then(Value::as_str) == Some(name)
}

fn run_as(v: Option<&Value>) -> Option<i64> {
    v?.get("runAsUser")?.as_i64()
}

/// The first container that would run as the agent's UID, if any.
fn runs_as_agent_uid(
    spec: &Map<String, Value>,
    containers: &[Value],
    inits: &[Value],
) -> Option<String> {
    let pod_uid = run_as(spec.get("securityContext"));
    containers.iter().chain(inits).find_map(|c| {
        let uid = run_as(c.get("securityContext")).or(pod_uid)?;
        (uid == AGENT_UID).then(|| {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("a container");
            format!("container {name}")
        })
    })
}

/// Adds `entries` to `metadata.<field>` one key at a time: `add /metadata/labels` would
/// replace the whole map and drop the owner's labels.
fn map_entries(
    ops: &mut Vec<PatchOp>,
    metadata: &Map<String, Value>,
    field: &str,
    entries: &[(&str, &str)],
) {
    if metadata.get(field).is_some_and(Value::is_object) {
        for (k, v) in entries {
            ops.push(PatchOp::add(
                format!("/metadata/{field}/{}", escape(k)),
                json!(v),
            ));
        }
    } else {
        // Absent (or null): nothing of the owner's to lose, so add the map whole.
        let fresh: Map<String, Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        ops.push(PatchOp::add(
            format!("/metadata/{field}"),
            Value::Object(fresh),
        ));
    }
}

/// Appends `items` to `spec.<field>`, creating the list when it is absent (or null).
fn append(ops: &mut Vec<PatchOp>, spec: &Map<String, Value>, field: &str, items: Vec<Value>) {
    if spec.get(field).is_some_and(Value::is_array) {
        for item in items {
            ops.push(PatchOp::add(format!("/spec/{field}/-"), item));
        }
    } else {
        ops.push(PatchOp::add(format!("/spec/{field}"), Value::Array(items)));
    }
}
