//! The authorization seam: every inbound request (and every opaque TCP connection) is
//! turned into an [`AuthzInput`] shaped like the policy input of DESIGN.md §4, handed to
//! an [`Authorizer`], and its [`Decision`] is enforced by the proxy.
//!
//! Two authorizers: an [`AllowList`] of SPIFFE IDs (default deny; the fallback until a
//! policy bundle loads) and [`WasmAuthorizer`], the Rego policy compiled to wasm.
//! [`AuthzHandle`] swaps them while traffic flows: the next request uses the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use wardmesh_identity::SpiffeId;

/// Request headers a policy may see. Everything else (cookies, authorization, custom
/// headers that may carry PHI) stays out of the policy input and its logs.
pub const HEADER_ALLOW_LIST: &[&str] = &[
    "accept",
    "content-type",
    "user-agent",
    "x-purpose-of-use",
    "x-request-id",
];

/// The header that carries the HL7 purpose of use (TREAT, ETREAT, HPAYMT, HOPERAT, …).
pub const PURPOSE_OF_USE_HEADER: &str = "x-purpose-of-use";

/// Longest header value copied into the input; longer ones are left out.
const MAX_INPUT_HEADER_LEN: usize = 256;

/// The policy input (DESIGN.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzInput {
    pub source: Source,
    pub destination: Destination,
    /// `None` for opaque TCP: identity-only authorization.
    pub request: Option<RequestInfo>,
    /// The validated end user's claims (`{sub, roles, amr, mfa, iss}`), or `None`.
    pub user: Option<serde_json::Value>,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub spiffe_id: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub spiffe_id: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestInfo {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The declared route template (`/patients/{patient}/notes`) or `unmatched`.
    pub route: String,
    /// `http1` or `http2`.
    pub protocol: String,
    /// Allow-listed headers only ([`HEADER_ALLOW_LIST`]), lower-case names.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Context {
    pub purpose_of_use: Option<String>,
    /// The caller's break-glass grant valid now (`{grant_id, reason, expires_at}`).
    pub break_glass: Option<serde_json::Value>,
    /// The data subject's consent record (`{part2, purposes}`), when the route names a
    /// subject and the mesh holds a record for it.
    pub consent: Option<serde_json::Value>,
    /// RFC 3339, UTC.
    pub time: String,
    /// The risk verdict for the end user (`{flagged, score}`); not flagged without a
    /// risk engine.
    pub risk: serde_json::Value,
}

/// What the agent knows about a request beyond the wire: route, end user, consent and
/// break-glass. Filled by the inbound proxy from its policy context.
#[derive(Debug, Clone, Default)]
pub struct RequestExtras {
    pub route: Option<String>,
    pub user: Option<serde_json::Value>,
    pub break_glass: Option<serde_json::Value>,
    pub consent: Option<serde_json::Value>,
}

/// What the proxy enforces. `rule` and `policy_revision` go into the 403 body and the
/// deny metric, so an operator can always say which rule of which policy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub rule: String,
    pub reason: String,
    pub policy_revision: String,
    /// What must happen for an allow to stand (`audit`, `review`).
    pub obligations: Vec<String>,
    /// Dry-run mode: a deny is logged and counted, and the request goes through.
    pub dry_run: bool,
}

impl Decision {
    /// Whether the proxy blocks the request.
    pub fn blocks(&self) -> bool {
        !self.allow && !self.dry_run
    }
}

/// Decides one request. Implementations must be cheap and non-blocking: `decide` runs on
/// the request path, once per request.
pub trait Authorizer: Send + Sync + fmt::Debug {
    fn decide(&self, input: &AuthzInput) -> Decision;
}

/// The rule names an [`AllowList`] reports.
pub const RULE_ALLOW_LIST: &str = "allow-list";
pub const RULE_DEFAULT_DENY: &str = "default-deny";

/// Allows exactly the listed source SPIFFE IDs; everything else is denied by
/// `default-deny`. An empty list denies everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    ids: BTreeSet<SpiffeId>,
    revision: String,
}

impl AllowList {
    pub fn new(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        let ids: BTreeSet<SpiffeId> = ids.into_iter().collect();
        // The revision names the list's content, so two agents with the same list report
        // the same revision and a changed list a different one.
        let mut h = Sha256::new();
        for id in &ids {
            h.update(id.to_string().as_bytes());
            h.update(b"\n");
        }
        let digest = h.finalize();
        let revision = format!("allowlist-{}", hex_prefix(&digest, 6));
        Self { ids, revision }
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

impl Authorizer for AllowList {
    fn decide(&self, input: &AuthzInput) -> Decision {
        let listed = SpiffeId::parse(&input.source.spiffe_id)
            .map(|id| self.ids.contains(&id))
            .unwrap_or(false);
        if listed {
            Decision {
                allow: true,
                rule: RULE_ALLOW_LIST.into(),
                reason: "source is on the allow-list".into(),
                policy_revision: self.revision.clone(),
                obligations: Vec::new(),
                dry_run: false,
            }
        } else {
            Decision {
                allow: false,
                rule: RULE_DEFAULT_DENY.into(),
                reason: format!(
                    "source {} is not on the allow-list of this workload",
                    input.source.spiffe_id
                ),
                policy_revision: self.revision.clone(),
                obligations: Vec::new(),
                dry_run: false,
            }
        }
    }
}

/// The authorizer in force, swappable at run time. Clones share the slot.
#[derive(Clone)]
pub struct AuthzHandle(Arc<RwLock<Arc<dyn Authorizer>>>);

impl fmt::Debug for AuthzHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuthzHandle").field(&self.current()).finish()
    }
}

impl AuthzHandle {
    pub fn new(authorizer: Arc<dyn Authorizer>) -> Self {
        Self(Arc::new(RwLock::new(authorizer)))
    }

    /// The authorizer for one request. The lock is held only to clone the `Arc`, so a
    /// slow `decide` never blocks a swap.
    pub fn current(&self) -> Arc<dyn Authorizer> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the authorizer; requests already deciding finish with the old one.
    pub fn set(&self, authorizer: Arc<dyn Authorizer>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = authorizer;
    }

    pub fn decide(&self, input: &AuthzInput) -> Decision {
        self.current().decide(input)
    }
}

/// The HTTP facts of a request that go into the input.
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub headers: &'a HeaderMap,
}

/// Builds the policy input. Pure: everything comes from the arguments.
pub fn build_input(
    source: &SpiffeId,
    destination: &SpiffeId,
    port: u16,
    http: Option<HttpFacts<'_>>,
    extras: RequestExtras,
    now: OffsetDateTime,
) -> AuthzInput {
    let purpose_of_use = http.and_then(|h| header_str(h.headers, PURPOSE_OF_USE_HEADER));
    let request = http.map(|h| RequestInfo {
        method: h.method.to_owned(),
        path: h.path.to_owned(),
        route: extras
            .route
            .clone()
            .unwrap_or_else(|| crate::routes::UNMATCHED.to_owned()),
        protocol: h.protocol.to_owned(),
        headers: HEADER_ALLOW_LIST
            .iter()
            .filter_map(|name| header_str(h.headers, name).map(|v| ((*name).to_owned(), v)))
            .collect(),
    });
    AuthzInput {
        source: Source {
            spiffe_id: source.to_string(),
            namespace: source.namespace().map(str::to_owned),
            service_account: source.service_account().map(str::to_owned),
        },
        destination: Destination {
            spiffe_id: destination.to_string(),
            port,
        },
        request,
        user: extras.user,
        context: Context {
            purpose_of_use,
            break_glass: extras.break_glass,
            consent: extras.consent,
            time: crate::identity::rfc3339(now),
            risk: serde_json::json!({"flagged": false, "score": 0.0}),
        },
    }
}

/// A header's value when it is present once, printable and short; otherwise `None`.
fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let s = first.to_str().ok()?.trim();
    (!s.is_empty() && s.len() <= MAX_INPUT_HEADER_LEN).then(|| s.to_owned())
}

mod gate;
mod wasm;

pub use gate::{Enriched, Gate};
pub use wasm::WasmAuthorizer;

#[cfg(test)]
mod tests;
