//! The one JSON Patch (RFC 6902) operation the injector emits, `add`, and an applier for
//! it. The API server applies our patches itself; `wardctl inject` and the tests apply
//! them here, so both paths see exactly the bytes the API server would.

use serde::Serialize;
use serde_json::Value;

/// One `add` operation. Kept as a struct, not free JSON, so every patch we emit has the
/// same, reviewable shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    /// Always `add`: the injector never removes or replaces what the user wrote.
    pub op: &'static str,
    pub path: String,
    pub value: Value,
}

impl PatchOp {
    pub fn add(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: "add",
            path: path.into(),
            value,
        }
    }
}

/// Escapes one JSON Pointer reference token (RFC 6901): `~` → `~0`, `/` → `~1`, so a key
/// such as `wardmesh.io/injected` addresses one map entry, not a nested path.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("json patch path {0:?} must start with '/'")]
    BadPath(String),
    #[error("json patch path {0:?}: parent does not exist or is not a container")]
    NoParent(String),
    #[error("json patch path {0:?}: array index out of range")]
    Index(String),
    #[error("json patch operation {0:?} is not supported")]
    Unsupported(String),
}

/// Applies `ops` in order with RFC 6902 `add` semantics: on an object member the value is
/// set (replacing an existing member whole), on an array `-` appends and an index inserts.
pub fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        if op.op != "add" {
            return Err(PatchError::Unsupported(op.op.to_owned()));
        }
        add(doc, &op.path, op.value.clone())?;
    }
    Ok(())
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError::BadPath(path.to_owned()))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    let mut cur = doc;
    for t in &tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::NoParent(path.to_owned()))?;
    }
    match cur {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i <= a.len())
                .ok_or_else(|| PatchError::Index(path.to_owned()))?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(PatchError::NoParent(path.to_owned())),
    }
}
