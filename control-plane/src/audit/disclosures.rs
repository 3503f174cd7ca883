//! `POST /v1/audit/disclosures` (auditor): the accounting of disclosures of one patient's
//! records, read from the flow records that carry the patient's keyed pseudonym.
//!
//! The patient id arrives in the body only (see [`wardmesh_proto::disclosure`]); it is
//! turned into the pseudonym straight away and never written anywhere: not to the
//! answer, not to an error message, not to a log line, not to the audit log. Looking up
//! a patient's accounting is itself a disclosure, so besides the `operator.api` entry of
//! every operator call the handler appends an [`kinds::DISCLOSURES_READ`] entry naming
//! the caller and the pseudonym, *before* answering: if it cannot be written the caller
//! gets 503, never the data.
//!
//! [`kinds::DISCLOSURES_READ`]: super::kinds::DISCLOSURES_READ

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_proto::disclosure::{Disclosure, DisclosurePage, check_subject};
use wardmesh_proto::flow::{StoredFlow, Verdict};
use wardmesh_proto::operator::Role;
use wardmesh_store::FlowQuery;

use super::{AuditRecord, kinds};
use crate::api::{ApiState, JsonBody, bearer, reply};
use crate::error::ApiFailure;

/// Page bounds, as for `GET /v1/flows`.
pub const MAX_PAGE: u32 = crate::flows::MAX_PAGE;
const DEFAULT_PAGE: u32 = 100;

/// The body as received: every field a raw JSON value, so that a bad one is refused with
/// a message naming it, and so that serde never gets to quote the subject back (its type
/// errors quote the offending value).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Received {
    subject: Option<Value>,
    since: Option<Value>,
    until: Option<Value>,
    after: Option<Value>,
    limit: Option<Value>,
    include_denied: Option<Value>,
}

/// A validated request. `Debug` leaves the subject out.
#[derive(Clone, PartialEq, Eq)]
pub struct Accounting {
    /// The patient id, trimmed. Only ever passed to the pseudonym function.
    subject: String,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub after: i64,
    pub limit: u32,
    pub include_denied: bool,
}

impl std::fmt::Debug for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounting")
            .field("since", &self.since)
            .field("until", &self.until)
            .field("after", &self.after)
            .field("limit", &self.limit)
            .field("include_denied", &self.include_denied)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> ApiFailure {
    ApiFailure::bad_request("invalid_request", message)
}

impl Accounting {
    /// Validates a request body; every refusal names the field and what is accepted, and
    /// none quotes the subject.
    pub fn parse(body: Value) -> Result<Self, ApiFailure> {
        if !body.is_object() {
            return Err(invalid(
                "the body must be a JSON object like {\"subject\": \"<patient id>\"}",
            ));
        }
        let r: Received = serde_json::from_value(body).map_err(|e| {
            // Only unknown fields can fail here (every known one is a raw value); the
            // message names the field, never a value.
            ApiFailure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e.to_string(),
            )
        })?;
        let subject = match r.subject {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(invalid(
                    "subject must be a JSON string: quote numeric patient ids",
                ));
            }
            None => {
                return Err(invalid(
                    "subject is required: the patient id as it appears in request paths",
                ));
            }
        };
        check_subject(&subject).map_err(invalid)?;
        let time = |field: &str, v: Option<Value>| -> Result<Option<OffsetDateTime>, ApiFailure> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => {
                    OffsetDateTime::parse(&s, &Rfc3339).map(Some).map_err(|_| {
                        invalid(format!(
                            "{field} must be an RFC 3339 time, e.g. 2025-06-01T12:00:00Z"
                        ))
                    })
                }
                Some(_) => Err(invalid(format!(
                    "{field} must be an RFC 3339 time string, e.g. 2025-06-01T12:00:00Z"
                ))),
            }
        };
        let since = time("since", r.since)?;
        let until = time("until", r.until)?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(invalid("since must be before until"));
        }
        let after = match r.after {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|a| *a >= 0)
                .ok_or_else(|| invalid("after must be a seq of 0 or more (a page's next_after)"))?,
        };
        let limit = match r.limit {
            None | Some(Value::Null) => DEFAULT_PAGE,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| invalid(format!("limit must be a number from 1 to {MAX_PAGE}")))?,
        };
        let include_denied = match r.include_denied {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(invalid("include_denied must be true or false")),
        };
        Ok(Self {
            // Agents hash the path segment as is, and a path segment holds no blanks: a
            // blank around a pasted id is never part of it.
            subject: subject.trim().to_owned(),
            since,
            until,
            after,
            limit,
            include_denied,
        })
    }

    /// The store queries whose merged result is one page: the store filters by one
    /// verdict at most, so "data released" is two queries, one per releasing verdict.
    pub fn queries(&self, pseudonym: &str) -> Vec<FlowQuery> {
        let base = FlowQuery {
            after: self.after,
            subject_pseudonym: Some(pseudonym.to_owned()),
            since: self.since,
            until: self.until,
            limit: self.limit,
            ..FlowQuery::default()
        };
        if self.include_denied {
            return vec![base];
        }
        Verdict::ALL
            .into_iter()
            .filter(|v| Disclosure::released(*v))
            .map(|v| FlowQuery {
                verdict: Some(v),
                ..base.clone()
            })
            .collect()
    }

    /// One page from the queries' results: each holds the first `limit` matches of its
    /// verdict after the cursor, so the first `limit` of their union by seq are exactly
    /// the first `limit` matches overall.
    pub fn page(&self, pseudonym: String, results: Vec<Vec<StoredFlow>>) -> DisclosurePage {
        let mut flows: Vec<StoredFlow> = results.into_iter().flatten().collect();
        flows.sort_by_key(|f| f.seq);
        flows.dedup_by_key(|f| f.seq);
        flows.truncate(self.limit as usize);
        let next_after = flows.last().map_or(self.after, |f| f.seq.max(self.after));
        DisclosurePage {
            subject_pseudonym: pseudonym,
            disclosures: flows.into_iter().map(Disclosure::from).collect(),
            next_after,
        }
    }
}

/// `POST /v1/audit/disclosures` (auditor).
pub async fn handler(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, ApiFailure>,
) -> Response {
    reply(
        async {
            // The role first: a viewer learns nothing, not even whether the body was good.
            let op = s
                .operator
                .authorize(bearer(&headers), Role::Auditor)
                .await?;
            let JsonBody(body) = body?;
            let req = Accounting::parse(body)?;
            let pseudonym = s.policy.context.pseudonym(&req.subject);
            let mut results = Vec::new();
            for q in req.queries(&pseudonym) {
                results.push(s.operator.store.query_flows(&q).await?);
            }
            let page = req.page(pseudonym, results);
            let record = AuditRecord::new(
                kinds::DISCLOSURES_READ,
                &format!("operator:{}", op.name),
                &page.subject_pseudonym,
            )
            .detail(serde_json::json!({
                "role": op.role.as_str(),
                "since": req.since.and_then(|t| t.format(&Rfc3339).ok()),
                "until": req.until.and_then(|t| t.format(&Rfc3339).ok()),
                "after": req.after,
                "include_denied": req.include_denied,
                "returned": page.disclosures.len(),
            }));
            s.audit.append(record).await.map_err(|e| {
                tracing::error!(error = %e, "could not record an accounting of disclosures in the audit log; refusing to answer");
                ApiFailure::internal("audit_unavailable")
            })?;
            Ok(page)
        }
        .await,
    )
}

#[cfg(test)]
mod tests;
