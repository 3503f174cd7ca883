//! AdmissionReview v1 in, AdmissionReview v1 out. Anything the API server would not send
//! (not JSON, another version, no uid, not a pod) gets `allowed: false` with a message
//! that says what was wrong; nothing here panics on the body.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::InjectParams;
use super::decide::{Decision, decide};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// What happened to one review: the metric label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped,
    Refused,
    Malformed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Refused => "refused",
            Self::Malformed => "malformed",
        }
    }
}

/// The HTTP answer to one review.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// 200 for every review the API server could have sent, 400 for bodies it never would.
    pub http_status: u16,
    pub body: Value,
    pub outcome: Outcome,
    /// Why (skip or refusal reason), for the log.
    pub reason: String,
}

/// Answers one AdmissionReview request body.
pub fn review(body: &[u8], p: &InjectParams) -> Answer {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return malformed("", format!("request body is not JSON: {e}")),
    };
    if req.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION)
        || req.get("kind").and_then(Value::as_str) != Some(KIND)
    {
        return malformed(
            "",
            format!(
                "expected apiVersion {API_VERSION} kind {KIND}; configure the webhook with admissionReviewVersions: [v1]"
            ),
        );
    }
    let Some(request) = req.get("request").filter(|r| r.is_object()) else {
        return malformed("", "the AdmissionReview has no request".into());
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u,
        _ => return malformed("", "the AdmissionReview request has no uid".into()),
    };
    let resource = request.get("resource");
    let field = |v: Option<&Value>, k: &str| {
        v.and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (group, version, res) = (
        field(resource, "group"),
        field(resource, "version"),
        field(resource, "resource"),
    );
    let sub = field(Some(request), "subResource");
    if (group.as_str(), version.as_str(), res.as_str(), sub.as_str()) != ("", "v1", "pods", "") {
        return refuse(
            uid,
            200,
            Outcome::Malformed,
            format!(
                "the wardmesh injector only handles pods (v1), not {}{group}/{version}/{res}; check the webhook's rules",
                if sub.is_empty() {
                    String::new()
                } else {
                    format!("{sub} of ")
                }
            ),
        );
    }
    let operation = field(Some(request), "operation");
    if operation != "CREATE" {
        // Containers of a running pod cannot be added; UPDATE/DELETE/CONNECT pass as-is.
        return allow(
            uid,
            None,
            Outcome::Skipped,
            format!("{operation} is not mutated"),
        );
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return refuse(
            uid,
            200,
            Outcome::Malformed,
            "the CREATE request has no object".into(),
        );
    };
    // Pods created by a ReplicaSet carry generateName and no name, and may carry no
    // namespace in the object: the request's namespace is the authoritative one.
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|n| !n.is_empty());
    let Some(namespace) = namespace else {
        return refuse(
            uid,
            200,
            Outcome::Malformed,
            "the request names no namespace".into(),
        );
    };
    match decide(pod, namespace, p) {
        Decision::Inject(ops) => match serde_json::to_vec(&ops) {
            Ok(bytes) => allow(
                uid,
                Some(STANDARD.encode(bytes)),
                Outcome::Injected,
                String::new(),
            ),
            Err(e) => refuse(
                uid,
                200,
                Outcome::Refused,
                format!("encoding the patch: {e}"),
            ),
        },
        Decision::Skip(why) => allow(uid, None, Outcome::Skipped, why),
        Decision::Refuse(why) => refuse(
            uid,
            200,
            Outcome::Refused,
            format!("wardmesh injector: {why}"),
        ),
    }
}

fn envelope(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": KIND, "response": response})
}

fn allow(uid: &str, patch: Option<String>, outcome: Outcome, reason: String) -> Answer {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(p) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(p);
    }
    Answer {
        http_status: 200,
        body: envelope(response),
        outcome,
        reason,
    }
}

fn refuse(uid: &str, http_status: u16, outcome: Outcome, message: String) -> Answer {
    let code = if outcome == Outcome::Refused {
        403
    } else {
        400
    };
    let response = json!({
        "uid": uid,
        "allowed": false,
        "status": {
            "status": "Failure",
            "message": message,
            "reason": if code == 403 { "Forbidden" } else { "BadRequest" },
            "code": code,
        },
    });
    Answer {
        http_status,
        body: envelope(response),
        outcome,
        reason: message,
    }
}

fn malformed(uid: &str, message: String) -> Answer {
    refuse(uid, 400, Outcome::Malformed, message)
}
