//! Accounting of disclosures (DESIGN.md §5; HIPAA §164.528, GDPR art. 15): `POST
//! /v1/audit/disclosures` answers "who accessed this patient's records, when, under which
//! purpose" from the flow records that carry the patient's pseudonym.
//!
//! The patient id travels only in the request *body* ([`DisclosureRequest::subject`]), so
//! it never lands in a URL, an access log or the `operator.api` audit entry (which records
//! the route template). The control plane turns it into the keyed pseudonym at once and
//! never echoes it: the answer names the pseudonym only.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::flow::{StoredFlow, Verdict};

/// At most this many bytes of subject (patient) id.
pub const MAX_SUBJECT_LEN: usize = 256;

/// `POST /v1/audit/disclosures` (auditor).
///
/// `Debug` redacts the subject: a request logged by accident must not leak the id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosureRequest {
    /// The patient (data subject) id exactly as it appears in request paths; see
    /// [`check_subject`].
    pub subject: String,
    /// Only accesses at or after this instant.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Only accesses strictly before this instant.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<OffsetDateTime>,
    /// Paging cursor: only flows with `seq > after` (the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Also list refused attempts (verdict `denied` or `error`); by default only requests
    /// that released data (`allowed`, `dry_run`) are listed.
    #[serde(default)]
    pub include_denied: bool,
}

impl fmt::Debug for DisclosureRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DisclosureRequest")
            .field("subject", &"<redacted>")
            .field("since", &self.since)
            .field("until", &self.until)
            .field("after", &self.after)
            .field("limit", &self.limit)
            .field("include_denied", &self.include_denied)
            .finish()
    }
}

/// One access to the patient's records: one flow record carrying their pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    /// The flow's ingest seq (the paging cursor).
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The calling service's SPIFFE ID; `None` when it presented none.
    pub source: Option<String>,
    /// The service holding the records.
    pub destination: String,
    pub method: Option<String>,
    /// Route template, e.g. `/patients/{patient}/notes`.
    pub route: Option<String>,
    pub status: Option<u16>,
    pub verdict: Verdict,
    /// The end user's `sub`.
    pub user: Option<String>,
    /// Purpose of use (HL7 code: TREAT, ETREAT, …).
    pub purpose: Option<String>,
    pub policy_revision: Option<String>,
    pub rule: Option<String>,
    pub break_glass: bool,
    pub request_id: Option<String>,
}

impl Disclosure {
    /// Whether a flow with this verdict let data out: `dry_run` did (the policy would
    /// have denied, but only in dry-run mode), `error` did not (no decision, no data).
    pub fn released(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Allowed | Verdict::DryRun)
    }
}

impl From<StoredFlow> for Disclosure {
    fn from(f: StoredFlow) -> Self {
        let r = f.record;
        Self {
            seq: f.seq,
            at: r.at,
            source: r.source,
            destination: r.destination,
            method: r.method,
            route: r.route,
            status: r.status,
            verdict: r.verdict,
            user: r.user,
            purpose: r.purpose,
            policy_revision: r.policy_revision,
            rule: r.rule,
            break_glass: r.break_glass,
            request_id: r.request_id,
        }
    }
}

/// The answer: one page, ascending by `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosurePage {
    /// The pseudonym the subject was matched by (what `phi.access` audit entries name);
    /// the id itself is never sent back.
    pub subject_pseudonym: String,
    pub disclosures: Vec<Disclosure>,
    /// Pass as `after` for the next page; equal to the request's `after` when the page is
    /// empty. A page shorter than `limit` is the last.
    pub next_after: i64,
}

/// Why a subject id is refused. Never contains the id.
pub fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.trim().is_empty() {
        Err("subject must not be empty: pass the patient id as it appears in request paths")
    } else if subject.len() > MAX_SUBJECT_LEN {
        Err("subject is longer than 256 bytes; pass the patient id as it appears in request paths")
    } else if subject.contains(char::is_control) {
        Err("subject must not contain control characters (newlines, tabs, …)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_debug_hides_the_subject() {
        let req = DisclosureRequest {
            subject: "patient-4711".into(),
            since: Some(OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()),
            until: None,
            after: None,
            limit: Some(10),
            include_denied: true,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "subject": "patient-4711",
                "since": "2025-06-15T15:06:40Z",
                "limit": 10,
                "include_denied": true,
            })
        );
        assert_eq!(
            serde_json::from_value::<DisclosureRequest>(json).unwrap(),
            req
        );
        assert!(!format!("{req:?}").contains("4711"));
        let minimal: DisclosureRequest =
            serde_json::from_value(serde_json::json!({"subject": "p"})).unwrap();
        assert!(!minimal.include_denied);
    }

    #[test]
    fn subjects_are_checked_without_echoing_them() {
        check_subject("p-2001").unwrap();
        check_subject(&"x".repeat(MAX_SUBJECT_LEN)).unwrap();
        for bad in ["", "   ", "p-2001\n", &"x".repeat(MAX_SUBJECT_LEN + 1)] {
            let why = check_subject(bad).unwrap_err();
            assert!(why.starts_with("subject "), "{why}");
        }
    }

    #[test]
    fn only_allowed_and_dry_run_release_data() {
        let released: Vec<Verdict> = Verdict::ALL
            .into_iter()
            .filter(|v| Disclosure::released(*v))
            .collect();
        assert_eq!(released, [Verdict::Allowed, Verdict::DryRun]);
    }
}
