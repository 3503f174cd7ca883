//! The pod annotations a workload owner uses to steer injection, parsed and validated in
//! one place. A malformed value refuses the pod: silently ignoring, say, a port exclusion
//! would route traffic the owner meant to keep out of the mesh.

use serde_json::Value;

pub const INJECT: &str = "wardmesh.io/inject";
pub const INBOUND_PORTS_EXCLUDE: &str = "wardmesh.io/inbound-ports-exclude";
pub const OUTBOUND_PORTS_EXCLUDE: &str = "wardmesh.io/outbound-ports-exclude";
pub const ROUTES: &str = "wardmesh.io/routes";
pub const PHI: &str = "wardmesh.io/phi";
/// Written by the injector: the trust bundle the agent bootstraps from (read back into the
/// pod through a downward-API volume, so no per-namespace ConfigMap or RBAC is needed).
pub const TRUST_BUNDLE: &str = "wardmesh.io/trust-bundle";
/// Written by the injector on the pod's labels: selects injected pods.
pub const INJECTED_LABEL: &str = "wardmesh.io/injected";

/// Route templates longer than this are refused (they travel in an env var).
const MAX_ROUTES_BYTES: usize = 4096;

/// What the annotations ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub disabled: bool,
    /// Normalised `a,b-c` lists for `init-iptables`.
    pub inbound_ports_exclude: Option<String>,
    pub outbound_ports_exclude: Option<String>,
    /// Comma-separated route templates (`/patients/{id}/notes`).
    pub routes: Option<String>,
    /// `wardmesh.io/phi: "true"`: audit fails closed for this workload.
    pub phi: bool,
}

/// Parses the annotations of a pod (`metadata.annotations`, possibly absent).
pub fn parse(annotations: Option<&Value>) -> Result<Annotations, String> {
    let get = |key: &str| -> Result<Option<&str>, String> {
        match annotations.and_then(|a| a.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(_) => Err(format!("annotation {key} must be a string")),
        }
    };
    let disabled = match get(INJECT)? {
        None | Some("enabled") | Some("true") => false,
        Some("disabled") | Some("false") => true,
        Some(other) => {
            return Err(format!(
                "annotation {INJECT}: {other:?} is not \"enabled\" or \"disabled\""
            ));
        }
    };
    let phi = match get(PHI)? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "annotation {PHI}: {other:?} is not \"true\" or \"false\""
            ));
        }
    };
    Ok(Annotations {
        disabled,
        inbound_ports_exclude: get(INBOUND_PORTS_EXCLUDE)?
            .map(|v| port_list(INBOUND_PORTS_EXCLUDE, v))
            .transpose()?
            .flatten(),
        outbound_ports_exclude: get(OUTBOUND_PORTS_EXCLUDE)?
            .map(|v| port_list(OUTBOUND_PORTS_EXCLUDE, v))
            .transpose()?
            .flatten(),
        routes: get(ROUTES)?.map(routes).transpose()?.flatten(),
        phi,
    })
}

/// `9090, 9000-9100` → `9090,9000-9100`; `None` for an empty list.
fn port_list(key: &str, value: &str) -> Result<Option<String>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            format!(
                "annotation {key}: {item:?} is not a port (1-65535) or a range such as 9000-9100"
            )
        };
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?);
                if a > b {
                    return Err(bad());
                }
                out.push(format!("{a}-{b}"));
            }
            None => out.push(port(item).ok_or_else(bad)?.to_string()),
        }
    }
    Ok((!out.is_empty()).then(|| out.join(",")))
}

/// Route templates, comma- or newline-separated, each an absolute path template.
fn routes(value: &str) -> Result<Option<String>, String> {
    if value.len() > MAX_ROUTES_BYTES {
        return Err(format!(
            "annotation {ROUTES} is longer than {MAX_ROUTES_BYTES} bytes"
        ));
    }
    let mut out = Vec::new();
    for r in value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !r.starts_with('/') || r.contains(char::is_whitespace) || r.contains('?') {
            return Err(format!(
                "annotation {ROUTES}: {r:?} is not a route template such as /patients/{{id}}/notes"
            ));
        }
        out.push(r);
    }
    Ok((!out.is_empty()).then(|| out.join(",")))
}
