//! The typed decision the proxy enforces, read from the entrypoint's result.

use serde::{Deserialize, Serialize};

/// Rule name of every deny caused by the policy itself failing (trap, time budget or
/// memory exhausted, malformed decision).
pub const RULE_POLICY_ERROR: &str = "policy_error";

/// Longest failure description put into a decision's `reason`.
const MAX_REASON: usize = 240;

/// What the entrypoint `wardmesh/authz/decision` decided, plus the revision that decided
/// it. `rule` and `policy_revision` go into the 403 body, the log and the deny metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allow: bool,
    pub rule: String,
    pub reason: String,
    /// Things the enforcer must do for an allow to stand (e.g. `audit`, `review`).
    #[serde(default)]
    pub obligations: Vec<String>,
    pub policy_revision: String,
}

impl Decision {
    /// A deny because the policy could not decide.
    pub fn policy_error(reason: impl Into<String>, revision: &str) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        Self {
            allow: false,
            rule: RULE_POLICY_ERROR.to_string(),
            reason,
            obligations: Vec::new(),
            policy_revision: revision.to_string(),
        }
    }

    /// Reads OPA's result set (`[{"result": {...}}]`). Anything but a well-formed
    /// decision object is a [`RULE_POLICY_ERROR`] deny; only `"allow": true` allows.
    pub fn from_result_set(rows: &[serde_json::Value], revision: &str) -> Self {
        let Some(result) = rows.first().and_then(|r| r.get("result")) else {
            return Self::policy_error("the policy returned no decision (undefined)", revision);
        };
        match Self::from_value(result, revision) {
            Ok(d) => d,
            Err(why) => Self::policy_error(format!("malformed decision: {why}"), revision),
        }
    }

    fn from_value(v: &serde_json::Value, revision: &str) -> Result<Self, &'static str> {
        let obj = v
            .as_object()
            .ok_or("expected an object {allow, rule, reason, obligations}")?;
        let allow = obj
            .get("allow")
            .and_then(serde_json::Value::as_bool)
            .ok_or("`allow` is missing or not a boolean")?;
        let rule = obj
            .get("rule")
            .and_then(serde_json::Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or("`rule` is missing or not a non-empty string")?;
        let reason = match obj.get("reason") {
            None | Some(serde_json::Value::Null) => "",
            Some(r) => r.as_str().ok_or("`reason` is not a string")?,
        };
        let obligations = match obj.get("obligations") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|o| o.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("`obligations` must be an array of strings")?,
            Some(_) => return Err("`obligations` must be an array of strings"),
        };
        Ok(Self {
            allow,
            rule: rule.to_string(),
            reason: reason.to_string(),
            obligations,
            policy_revision: revision.to_string(),
        })
    }
}

/// Raw policy input that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input is not valid JSON (line {line}, column {column}): {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("input must be a JSON object (the document of DESIGN.md §4), not {0}")]
    NotAnObject(&'static str),
}

pub(crate) fn parse_input(bytes: &[u8]) -> Result<serde_json::Value, InputError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    let kind = match &value {
        serde_json::Value::Object(_) => return Ok(value),
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
    };
    Err(InputError::NotAnObject(kind))
}

/// A short account of why an evaluation failed: the trap, or the guest's own message
/// (`opa_abort`), without wasmtime's backtrace.
pub(crate) fn describe_failure(e: &anyhow::Error) -> String {
    const BUDGET: &str = "policy exceeded its time budget (endless loop or too much work)";
    if let Some(trap) = e.chain().find_map(|c| c.downcast_ref::<wasmtime::Trap>()) {
        return match trap {
            wasmtime::Trap::Interrupt => BUDGET.to_string(),
            other => format!("policy trapped: {other}"),
        };
    }
    let root = e.root_cause().to_string();
    if root.contains("wasm trap: interrupt") {
        return BUDGET.to_string();
    }
    format!(
        "policy aborted: {}",
        root.lines().next().unwrap_or_default().trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_well_formed_true_allows() {
        let ok = Decision::from_result_set(
            &[
                json!({"result": {"allow": true, "rule": "r", "reason": "x", "obligations": ["audit"]}}),
            ],
            "v1",
        );
        assert!(ok.allow);
        assert_eq!(ok.obligations, ["audit"]);
        assert_eq!(ok.policy_revision, "v1");
        for bad in [
            json!({"result": {"allow": "true", "rule": "r"}}),
            json!({"result": {"allow": true}}),
            json!({"result": {"allow": true, "rule": "r", "obligations": [{"type": "audit"}]}}),
            json!({"result": true}),
            json!({}),
        ] {
            let d = Decision::from_result_set(std::slice::from_ref(&bad), "v1");
            assert!(!d.allow, "{bad}");
            assert_eq!(d.rule, RULE_POLICY_ERROR, "{bad}");
        }
        let undefined = Decision::from_result_set(&[], "v1");
        assert_eq!(undefined.rule, RULE_POLICY_ERROR);
        assert!(undefined.reason.contains("undefined"));
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let err = parse_input(b"{\"source\": ").unwrap_err();
        assert!(
            matches!(err, InputError::Malformed { line: 1, .. }),
            "{err}"
        );
        assert!(matches!(
            parse_input(b"[1]"),
            Err(InputError::NotAnObject("an array"))
        ));
    }
}
