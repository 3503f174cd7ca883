//! Checks a JSON object against the Kubernetes OpenAPI types (k8s-openapi): it must
//! deserialize into the typed struct, and every field it sets must survive the round
//! trip, so a misspelled or misplaced field (which serde would silently drop) fails.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserializes `v` as `T` and returns the paths of fields lost on the way back.
pub fn lost_fields<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Vec<String>, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    compare(v, &back, String::new(), &mut lost);
    Ok(lost)
}

/// Panics with a readable message unless `v` is a valid, fully round-tripping `T`.
pub fn assert_valid<T: DeserializeOwned + Serialize>(what: &str, v: &Value) {
    match lost_fields::<T>(v) {
        Ok(lost) if lost.is_empty() => {}
        Ok(lost) => panic!("{what}: fields not in the Kubernetes schema: {lost:?}"),
        Err(e) => panic!("{what}: not a valid {}: {e}", std::any::type_name::<T>()),
    }
}

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn compare(orig: &Value, back: &Value, path: String, lost: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                match b.get(k) {
                    Some(bv) => compare(v, bv, format!("{path}.{k}"), lost),
                    None if empty(v) => {}
                    None => lost.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, v) in o.iter().enumerate() {
                match b.get(i) {
                    Some(bv) => compare(v, bv, format!("{path}[{i}]"), lost),
                    None => lost.push(format!("{path}[{i}]")),
                }
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, _) if empty(a) => {}
        (a, b) => lost.push(format!("{path}: {a} became {b}")),
    }
}

/// Validates one manifest by its `kind` (the kinds deploy/ and `wardctl` produce).
pub fn assert_manifest(what: &str, v: &Value) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let kind = v["kind"].as_str().unwrap_or_default();
    let what = format!("{what} ({kind} {})", v["metadata"]["name"]);
    match kind {
        "Namespace" => assert_valid::<Namespace>(&what, v),
        "ServiceAccount" => assert_valid::<ServiceAccount>(&what, v),
        "ClusterRole" => assert_valid::<ClusterRole>(&what, v),
        "ClusterRoleBinding" => assert_valid::<ClusterRoleBinding>(&what, v),
        "PersistentVolumeClaim" => assert_valid::<PersistentVolumeClaim>(&what, v),
        "Secret" => assert_valid::<Secret>(&what, v),
        "Service" => assert_valid::<Service>(&what, v),
        "Deployment" => assert_valid::<Deployment>(&what, v),
        "PodDisruptionBudget" => assert_valid::<PodDisruptionBudget>(&what, v),
        "NetworkPolicy" => assert_valid::<NetworkPolicy>(&what, v),
        "MutatingWebhookConfiguration" => assert_valid::<MutatingWebhookConfiguration>(&what, v),
        "Pod" => assert_valid::<Pod>(&what, v),
        other => panic!("{what}: unexpected kind {other:?}"),
    }
    // The API server's own required checks that the types cannot express.
    assert!(
        v["apiVersion"].is_string() && v["metadata"]["name"].is_string(),
        "{what}: needs apiVersion and metadata.name"
    );
}
