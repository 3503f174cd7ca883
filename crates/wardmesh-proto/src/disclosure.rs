//! Accounting of disclosures (DESIGN.md §5; HIPAA §164.528, GDPR art. 15): `POST
//! /v1/audit/disclosures` answers "who accessed this patient's records, when, under which
//! purpose" from the audit log: the `phi.access`, `breakglass.use` (and, on request,
//! `authz.deny`) entries flow ingest wrote for the records carrying the patient's
//! pseudonym. The audit log is kept for `--audit-retention` (default forever), flow records
//! only for `--flow-retention`, so the accounting outlives the flows it came from. Seqs
//! (`after`, `next_after`, [`Disclosure::seq`]) are audit entry seqs.
//!
//! The patient id travels only in the request *body* ([`DisclosureRequest::subject`]), so
//! it never lands in a URL, an access log or the `operator.api` audit entry (which records
//! the route template). The control plane turns it into the keyed pseudonym at once and
//! never echoes it: the answer names the pseudonym only.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::flow::Verdict;

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
    /// Paging cursor: only audit entries with `seq > after` (the previous page's
    /// `next_after`). Audit seqs, not flow seqs.
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

/// One access to the patient's records: one audit entry (`phi.access`, `breakglass.use`
/// or `authz.deny`) whose subject is their pseudonym, written when the flow record was
/// ingested. Every field but `seq` and `at` comes from the entry's detail; one the detail
/// lacks (or holds in an unexpected form) is `None`, never an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    /// The audit entry's seq (the paging cursor; `wardctl audit log` shows the entry).
    pub seq: i64,
    /// When the request happened (the flow record's time).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The calling service's SPIFFE ID; `None` when it presented none.
    pub source: Option<String>,
    /// The service holding the records. Always set by flow ingest.
    pub destination: Option<String>,
    pub method: Option<String>,
    /// Route template, e.g. `/patients/{patient}/notes`.
    pub route: Option<String>,
    pub status: Option<u16>,
    /// Always set by flow ingest; `None` only for an entry whose detail holds no verdict
    /// this build knows (such an entry is listed: it records an access).
    pub verdict: Option<Verdict>,
    /// The end user's `sub`.
    pub user: Option<String>,
    /// Purpose of use (HL7 code: TREAT, ETREAT, …).
    pub purpose: Option<String>,
    pub policy_revision: Option<String>,
    pub rule: Option<String>,
    pub break_glass: bool,
    /// The request's `x-request-id`, when the audit entry records it.
    pub request_id: Option<String>,
}

impl Disclosure {
    /// Whether a flow with this verdict let data out: `dry_run` did (the policy would
    /// have denied, but only in dry-run mode), `error` did not (no decision, no data).
    pub fn released(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Allowed | Verdict::DryRun)
    }
}

/// The answer: one page, ascending by audit `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosurePage {
    /// The pseudonym the subject was matched by (what `phi.access` audit entries name);
    /// the id itself is never sent back.
    pub subject_pseudonym: String,
    pub disclosures: Vec<Disclosure>,
    /// Pass as `after` for the next page: the audit seq of the page's last disclosure, or
    /// the request's `after` when the page is empty. A page shorter than `limit` is the
    /// last.
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
    fn disclosures_keep_their_json_shape() {
        let d = Disclosure {
            seq: 42,
            at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
            source: Some("spiffe://wardmesh.local/ns/clinic/sa/frontend".into()),
            destination: Some("spiffe://wardmesh.local/ns/records/sa/notes".into()),
            method: Some("GET".into()),
            route: Some("/patients/{patient}/notes".into()),
            status: Some(200),
            verdict: Some(Verdict::DryRun),
            user: Some("dr-ada".into()),
            purpose: Some("ETREAT".into()),
            policy_revision: Some("rev-1".into()),
            rule: None,
            break_glass: true,
            request_id: None,
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 42,
                "at": "2025-06-15T15:06:40Z",
                "source": "spiffe://wardmesh.local/ns/clinic/sa/frontend",
                "destination": "spiffe://wardmesh.local/ns/records/sa/notes",
                "method": "GET",
                "route": "/patients/{patient}/notes",
                "status": 200,
                "verdict": "dry_run",
                "user": "dr-ada",
                "purpose": "ETREAT",
                "policy_revision": "rev-1",
                "rule": null,
                "break_glass": true,
                "request_id": null,
            })
        );
        assert_eq!(serde_json::from_value::<Disclosure>(json).unwrap(), d);
        let mut bare = serde_json::to_value(&d).unwrap();
        bare["destination"] = serde_json::Value::Null;
        bare["verdict"] = serde_json::Value::Null;
        let bare: Disclosure = serde_json::from_value(bare).unwrap();
        assert_eq!((bare.destination, bare.verdict), (None, None));
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
