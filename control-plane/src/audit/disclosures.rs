//! `POST /v1/audit/disclosures` (auditor): the accounting of disclosures of one patient's
//! records, read from the audit log.
//!
//! Flow ingest writes one audit entry per record that carries a patient's keyed pseudonym
//! (`phi.access`; `authz.deny` when denied, `breakglass.use` under a grant), with the
//! pseudonym as its subject and the record's who/when/why in its detail
//! ([`crate::flows::audit_for`]). The accounting reads those entries by subject and kind
//! (an index on PostgreSQL, sealed runs on SQLite), never the flows table: flows are pruned after
//! `--flow-retention` (30 days by default) while HIPAA's accounting covers six years, and
//! audit entries are kept for `--audit-retention` (default forever). So the accounting
//! reaches back as far as the audit log does, and its paging cursors (`after`,
//! `next_after`, each disclosure's `seq`) are audit seqs. The handler's own
//! [`kinds::DISCLOSURES_READ`] entries share the subject but are not disclosures: the kind
//! filter leaves them out.
//!
//! By default a page lists the requests that released data (verdict `allowed` or
//! `dry_run`): entries of kinds `phi.access` and `breakglass.use`, less those whose detail
//! says `denied` or `error` (rare: a break-glass request still denied, a request without a
//! decision), which are skipped by reading on until the page is full, so `limit` stays
//! exact and a short page is the last. An entry whose detail is missing a field, or holds
//! one in an unexpected form, still becomes a disclosure with that field `None`.
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
use wardmesh_proto::flow::Verdict;
use wardmesh_proto::operator::Role;
use wardmesh_store::{AuditEntry, AuditQuery, Store};

use super::{AuditRecord, kinds};
use crate::api::{ApiState, JsonBody, bearer, reply};
use crate::error::ApiFailure;
use crate::flows::kinds as flow_kinds;

/// Page bounds, as for `GET /v1/audit/entries`.
pub const MAX_PAGE: u32 = super::MAX_PAGE;
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

    /// The audit entry kinds a page is read from.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds = vec![
            flow_kinds::PHI_ACCESS.to_owned(),
            flow_kinds::BREAKGLASS_USE.to_owned(),
        ];
        if self.include_denied {
            kinds.push(flow_kinds::AUTHZ_DENY.to_owned());
        }
        kinds
    }

    /// The audit query reading entries after `cursor`: `limit` of them in the first round,
    /// a full page in any later one (needed only when a round's entries were skipped).
    pub fn query(&self, pseudonym: &str, cursor: i64, first: bool) -> AuditQuery {
        AuditQuery {
            after: cursor,
            kinds: self.kinds(),
            subject: Some(pseudonym.to_owned()),
            since: self.since,
            until: self.until,
            limit: if first { self.limit } else { MAX_PAGE },
            ..AuditQuery::default()
        }
    }

    /// Whether the page lists `d`: everything with `include_denied`, otherwise what
    /// released data, and what cannot be told apart from that (no known verdict).
    pub fn lists(&self, d: &Disclosure) -> bool {
        self.include_denied || d.verdict.is_none_or(Disclosure::released)
    }

    /// Adds the listed disclosures among one round's `entries` (the store's answer to a
    /// query for `asked` entries) to `found`, up to `limit`. Returns the cursor of the next
    /// round, or `None` when the page is complete: full, or the store has no more.
    pub fn take(
        &self,
        found: &mut Vec<Disclosure>,
        entries: &[AuditEntry],
        asked: u32,
    ) -> Option<i64> {
        let mut cursor = None;
        for e in entries {
            if found.len() >= self.limit as usize {
                return None;
            }
            cursor = Some(e.seq);
            let d = disclosure(e);
            if self.lists(&d) {
                found.push(d);
            }
        }
        if found.len() >= self.limit as usize || entries.len() < asked as usize {
            return None;
        }
        cursor
    }

    /// One page of disclosures, ascending by audit seq.
    pub async fn read(
        &self,
        store: &Store,
        pseudonym: &str,
    ) -> Result<Vec<Disclosure>, ApiFailure> {
        let mut found = Vec::new();
        let mut cursor = self.after;
        let mut first = true;
        loop {
            let q = self.query(pseudonym, cursor, first);
            let entries = store.audit_entries(&q).await?;
            match self.take(&mut found, &entries, q.limit) {
                Some(next) => cursor = next,
                None => return Ok(found),
            }
            first = false;
        }
    }

    /// The answer: `next_after` is the seq of the last disclosure listed, or the request's
    /// cursor when there is none.
    pub fn page(&self, pseudonym: String, disclosures: Vec<Disclosure>) -> DisclosurePage {
        let next_after = disclosures
            .last()
            .map_or(self.after, |d| d.seq.max(self.after));
        DisclosurePage {
            subject_pseudonym: pseudonym,
            disclosures,
            next_after,
        }
    }
}

/// The disclosure an audit entry written by flow ingest records: `seq` and `at` from the
/// entry, the rest from its detail. A field the detail lacks or holds in another form is
/// `None` (user and source fall back on the entry's actor, `user:<sub>` or the caller's
/// SPIFFE ID; the verdict of an `authz.deny` entry is `denied`; `break_glass` on the kind).
pub fn disclosure(e: &AuditEntry) -> Disclosure {
    let field = |k: &str| e.detail.get(k);
    let text = |k: &str| field(k).and_then(Value::as_str).map(str::to_owned);
    let verdict = field("verdict")
        .and_then(Value::as_str)
        .and_then(Verdict::parse)
        .or_else(|| (e.kind == flow_kinds::AUTHZ_DENY).then_some(Verdict::Denied));
    Disclosure {
        seq: e.seq,
        at: e.at,
        source: text("source")
            .or_else(|| e.actor.starts_with("spiffe://").then(|| e.actor.clone())),
        destination: text("destination"),
        method: text("method"),
        route: text("route"),
        status: field("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok()),
        verdict,
        user: text("user").or_else(|| e.actor.strip_prefix("user:").map(str::to_owned)),
        purpose: text("purpose"),
        policy_revision: text("policy_revision"),
        rule: text("rule"),
        break_glass: field("break_glass")
            .and_then(Value::as_bool)
            .unwrap_or(e.kind == flow_kinds::BREAKGLASS_USE),
        request_id: text("request_id"),
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
            let disclosures = req.read(&s.operator.store, &pseudonym).await?;
            let page = req.page(pseudonym, disclosures);
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
