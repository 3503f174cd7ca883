//! Flow telemetry on the control plane, transport-free: deciding whether an agent's
//! ingest batch is acceptable and which audit entries it implies, and turning the query
//! string of `GET /v1/flows` into a store query. [`api`] is the thin HTTP adapter.
//!
//! Ingest is idempotent by record id (the agent resends whatever it has not seen
//! acknowledged); the audit entries of a batch — every PHI access, deny and break-glass
//! use — are written in the same transaction as its flows and only for records that are
//! new, so a resent batch audits nothing twice and no stored flow lacks its entry.

pub mod api;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::flow::{FlowRecord, IngestBatch, MAX_BATCH_RECORDS, Verdict};
use wardmesh_store::{Event, FlowAudit, FlowQuery, IdFilter};

use crate::error::ApiFailure;

/// Audit entry kinds written by flow ingest.
pub mod kinds {
    /// A request that touched protected health information (the route names a subject).
    pub const PHI_ACCESS: &str = crate::audit::kinds::PHI_ACCESS;
    /// A request the policy denied.
    pub const AUTHZ_DENY: &str = "authz.deny";
    /// A request let through under a break-glass grant.
    pub const BREAKGLASS_USE: &str = "breakglass.use";
}

/// Page bounds of `GET /v1/flows`.
pub const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
const MAX_FILTER_LEN: usize = 512;

/// Checks a batch from the agent `peer`: size, every record's shape, and that each
/// record is one the caller took part in (its SPIFFE ID is the source or destination), so
/// an agent cannot write flows, or audit entries, in another workload's name.
pub fn check_batch(peer: &SpiffeId, batch: &IngestBatch) -> Result<(), ApiFailure> {
    if batch.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiFailure::new(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH_RECORDS} records, not {}",
                batch.records.len()
            ),
        ));
    }
    let instance_ok = !batch.agent_instance.is_empty()
        && batch.agent_instance.len() <= 128
        && batch
            .agent_instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !instance_ok {
        return Err(ApiFailure::bad_request(
            "invalid_batch",
            "agent_instance must be 1-128 characters of [A-Za-z0-9._-]",
        ));
    }
    let me = peer.to_string();
    for (i, r) in batch.records.iter().enumerate() {
        r.validate()
            .map_err(|e| ApiFailure::bad_request("invalid_record", format!("records[{i}].{e}")))?;
        if r.source.as_deref() != Some(me.as_str()) && r.destination != me {
            return Err(ApiFailure::bad_request(
                "foreign_flow",
                format!(
                    "records[{i}] has neither source nor destination {me}: an agent reports \
                     only flows it took part in"
                ),
            ));
        }
    }
    Ok(())
}

/// The audit entries a batch implies, one per record at most: break-glass use first,
/// then deny, then PHI access (the detail carries all three flags).
pub fn audit_for(reporter: &SpiffeId, records: &[FlowRecord]) -> Vec<FlowAudit> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let kind = if r.break_glass {
                kinds::BREAKGLASS_USE
            } else if r.verdict == Verdict::Denied {
                kinds::AUTHZ_DENY
            } else if r.subject_pseudonym.is_some() {
                kinds::PHI_ACCESS
            } else {
                return None;
            };
            let actor = match (&r.user, &r.source) {
                (Some(user), _) => format!("user:{user}"),
                (None, Some(source)) => source.clone(),
                (None, None) => "unauthenticated".to_owned(),
            };
            Some(FlowAudit {
                record: i,
                event: Event {
                    id: 0,
                    at: r.at,
                    kind: kind.to_owned(),
                    actor,
                    subject: r
                        .subject_pseudonym
                        .clone()
                        .unwrap_or_else(|| r.destination.clone()),
                    detail: serde_json::json!({
                        "flow_id": r.id,
                        "request_id": r.request_id,
                        "source": r.source,
                        "destination": r.destination,
                        "method": r.method,
                        "route": r.route,
                        "status": r.status,
                        "verdict": r.verdict.as_str(),
                        "policy_revision": r.policy_revision,
                        "rule": r.rule,
                        "user": r.user,
                        "purpose": r.purpose,
                        "break_glass": r.break_glass,
                        "subject_pseudonym": r.subject_pseudonym,
                        "reported_by": reporter.to_string(),
                    }),
                },
            })
        })
        .collect()
}

/// The query string of `GET /v1/flows`, as received: every value a string, so that a bad
/// one is refused with a message naming its parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
    /// The newest `last` matches (ascending) instead of the oldest `limit`.
    pub last: Option<String>,
    /// Source: a SPIFFE ID, `namespace/service-account`, or `namespace`.
    pub from: Option<String>,
    /// Destination, same forms as `from`.
    pub to: Option<String>,
    /// `allowed`, `denied`, `dry-run` (or `dry_run`), `error`.
    pub verdict: Option<String>,
    pub route: Option<String>,
    pub user: Option<String>,
    pub purpose: Option<String>,
    /// `true` or `false`.
    pub break_glass: Option<String>,
    /// Exact `x-request-id`: both agents' records of one request.
    pub request_id: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
}

fn bad(param: &str, expected: &str) -> ApiFailure {
    ApiFailure::bad_request(
        "invalid_query",
        format!("invalid value for `{param}`: expected {expected}"),
    )
}

impl FlowsQuery {
    /// Validates into a store query; `td` expands `namespace[/service-account]`.
    pub fn parse(self, td: &TrustDomain) -> Result<FlowQuery, ApiFailure> {
        let after = match &self.after {
            Some(a) => a
                .parse::<i64>()
                .ok()
                .filter(|&a| a >= 0)
                .ok_or_else(|| bad("after", "a seq of 0 or more"))?,
            None => 0,
        };
        let page = |param: &str, v: &Option<String>| -> Result<Option<u32>, ApiFailure> {
            v.as_deref()
                .map(|s| {
                    s.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| bad(param, &format!("a number from 1 to {MAX_PAGE}")))
                })
                .transpose()
        };
        let (limit, newest) = match (page("last", &self.last)?, page("limit", &self.limit)?) {
            (Some(last), _) => (last, true),
            (None, limit) => (limit.unwrap_or(DEFAULT_PAGE), false),
        };
        let text = |param: &str, v: Option<String>| -> Result<Option<String>, ApiFailure> {
            match v {
                Some(s)
                    if s.is_empty() || s.len() > MAX_FILTER_LEN || s.contains(char::is_control) =>
                {
                    Err(bad(
                        param,
                        &format!("1 to {MAX_FILTER_LEN} printable characters"),
                    ))
                }
                other => Ok(other),
            }
        };
        let time =
            |param: &str, v: &Option<String>| -> Result<Option<OffsetDateTime>, ApiFailure> {
                v.as_deref()
                    .map(|s| {
                        OffsetDateTime::parse(s, &Rfc3339)
                            .map_err(|_| bad(param, "an RFC 3339 time, e.g. 2025-06-01T12:00:00Z"))
                    })
                    .transpose()
            };
        let verdict = self
            .verdict
            .as_deref()
            .map(|v| {
                Verdict::parse(v).ok_or_else(|| bad("verdict", "allowed, denied, dry-run or error"))
            })
            .transpose()?;
        let break_glass = match self.break_glass.as_deref() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(bad("break_glass", "true or false")),
            None => None,
        };
        Ok(FlowQuery {
            after,
            source: self
                .from
                .as_deref()
                .map(|v| peer_filter("from", v, td))
                .transpose()?,
            destination: self
                .to
                .as_deref()
                .map(|v| peer_filter("to", v, td))
                .transpose()?,
            verdict,
            route: text("route", self.route)?,
            user: text("user", self.user)?,
            purpose: text("purpose", self.purpose)?,
            break_glass,
            request_id: text("request_id", self.request_id)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            limit,
            newest,
        })
    }
}

/// `spiffe://…` (exact), `ns/sa` (exact, in this trust domain) or `ns` (every service
/// account of the namespace).
fn peer_filter(param: &str, v: &str, td: &TrustDomain) -> Result<IdFilter, ApiFailure> {
    if v.starts_with("spiffe://") {
        return SpiffeId::parse(v)
            .map(|id| IdFilter::Exact(id.to_string()))
            .map_err(|e| bad(param, &format!("a valid SPIFFE ID ({e})")));
    }
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    match v.split_once('/') {
        Some((ns, sa)) if label(ns) && label(sa) => {
            Ok(IdFilter::Exact(format!("spiffe://{td}/ns/{ns}/sa/{sa}")))
        }
        None if label(v) => Ok(IdFilter::Prefix(format!("spiffe://{td}/ns/{v}/sa/"))),
        _ => Err(bad(
            param,
            "a SPIFFE ID, namespace/service-account or namespace (lowercase letters, digits, \
             '-' and '.')",
        )),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod request_id_tests {
    use super::*;

    #[test]
    fn request_id_is_an_exact_filter_with_a_named_error() {
        let td = SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/frontend")
            .unwrap()
            .trust_domain()
            .clone();
        let q = FlowsQuery {
            request_id: Some("9f1c-42".into()),
            ..FlowsQuery::default()
        }
        .parse(&td)
        .unwrap();
        assert_eq!(q.request_id.as_deref(), Some("9f1c-42"));
        assert_eq!(FlowsQuery::default().parse(&td).unwrap().request_id, None);
        for bad in [
            String::new(),
            "a\nb".to_owned(),
            "x".repeat(MAX_FILTER_LEN + 1),
        ] {
            let err = FlowsQuery {
                request_id: Some(bad),
                ..FlowsQuery::default()
            }
            .parse(&td)
            .unwrap_err();
            assert_eq!((err.status.as_u16(), err.code), (400, "invalid_query"));
            assert!(err.message.contains("`request_id`"), "{}", err.message);
        }
    }
}
