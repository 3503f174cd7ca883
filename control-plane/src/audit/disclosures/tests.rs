//! The accounting of disclosures against a real control plane: real CA, TLS, HTTP and
//! SQLite store; flows stored the way `POST /v1/flows` stores them (with their audit
//! entries).

use std::sync::Arc;

use reqwest::StatusCode as Status;
use serde_json::{Value, json};
use time::OffsetDateTime;
use wardmesh_identity::attest::hash_secret;
use wardmesh_identity::ca::{CaDir, CaLifetimes};
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_identity::tls::control_plane_client_config;
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::disclosure::DisclosurePage;
use wardmesh_proto::flow::{FlowDirection, FlowKind, FlowRecord, Verdict, new_record_id};
use wardmesh_proto::paths;
use wardmesh_store::{AuditQuery, OperatorToken};

use super::*;
use crate::config::ControlPlaneConfig;

const NOTES: &str = "spiffe://wardmesh.local/ns/records/sa/notes";
const FRONTEND: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const BILLING: &str = "spiffe://wardmesh.local/ns/billing/sa/api";
/// Patient ids: never hex-only, so they cannot turn up inside a pseudonym by chance.
const PATIENT: &str = "patient-4711";
const OTHER_PATIENT: &str = "patient-0815";
const AUDITOR: &str = "wmop_auditor-token-for-disclosure-tests";
const VIEWER: &str = "wmop_viewer-token-for-disclosure-tests";

#[test]
fn bodies_are_validated_without_quoting_the_subject() {
    let ok = Accounting::parse(json!({
        "subject": "  p-2001 ",
        "since": "2025-06-01T00:00:00Z",
        "until": "2025-07-01T00:00:00+02:00",
        "after": 7,
        "limit": 2,
        "include_denied": true,
    }))
    .unwrap();
    assert_eq!(ok.subject, "p-2001");
    assert_eq!((ok.after, ok.limit, ok.include_denied), (7, 2, true));
    assert_eq!(ok.since.map(|t| t.unix_timestamp()), Some(1_748_736_000));
    assert!(!format!("{ok:?}").contains("p-2001"));
    let defaults = Accounting::parse(json!({"subject": "p-2001", "since": null})).unwrap();
    assert_eq!(
        (defaults.after, defaults.limit, defaults.include_denied),
        (0, DEFAULT_PAGE, false)
    );
    assert_eq!(ok.queries("ab").len(), 1, "include_denied: every verdict");
    let released: Vec<_> = defaults.queries("ab").iter().map(|q| q.verdict).collect();
    assert_eq!(released, [Some(Verdict::Allowed), Some(Verdict::DryRun)]);

    for (body, status, says) in [
        (json!("patient-4711"), 400, "JSON object"),
        (json!({}), 400, "subject is required"),
        (json!({"subject": 4711}), 400, "JSON string"),
        (json!({"subject": ""}), 400, "must not be empty"),
        (
            json!({"subject": "patient-4711\n"}),
            400,
            "control characters",
        ),
        (json!({"subject": "x".repeat(257)}), 400, "256 bytes"),
        (
            json!({"subject": "p", "patient": "patient-4711"}),
            422,
            "unknown field `patient`",
        ),
        (
            json!({"subject": "p", "since": "yesterday"}),
            400,
            "since must be an RFC 3339",
        ),
        (
            json!({"subject": "p", "until": 5}),
            400,
            "until must be an RFC 3339",
        ),
        (
            json!({"subject": "p", "since": "2025-06-02T00:00:00Z", "until": "2025-06-01T00:00:00Z"}),
            400,
            "before until",
        ),
        (json!({"subject": "p", "after": -1}), 400, "after must be"),
        (json!({"subject": "p", "limit": 0}), 400, "from 1 to 1000"),
        (
            json!({"subject": "p", "limit": 1001}),
            400,
            "from 1 to 1000",
        ),
        (
            json!({"subject": "p", "include_denied": "yes"}),
            400,
            "true or false",
        ),
    ] {
        let shown = body.to_string();
        let err = Accounting::parse(body).unwrap_err();
        assert_eq!(err.status.as_u16(), status, "{shown}: {err}");
        assert!(err.message.contains(says), "{shown}: {}", err.message);
        assert!(!err.message.contains("4711"), "{shown}: {}", err.message);
    }
}

/// A home with a CA and sealing key, and a control plane started on it.
struct Plane {
    _home: tempfile::TempDir,
    cp: crate::RunningControlPlane,
    url: String,
    http: reqwest::Client,
}

impl Plane {
    async fn start() -> Self {
        let home = tempfile::tempdir().unwrap();
        let seal = SealKey::generate();
        write_private(&home.path().join("seal.key"), seal.to_hex().as_bytes()).unwrap();
        CaDir::new(home.path().join("ca"))
            .init(
                &TrustDomain::new("wardmesh.local").unwrap(),
                &seal,
                OffsetDateTime::now_utc(),
                CaLifetimes::default(),
            )
            .unwrap();
        let cfg = ControlPlaneConfig::local(home.path(), "127.0.0.1:0".parse().unwrap());
        let cp = crate::start(&cfg, Arc::new(prometheus::Registry::new()))
            .await
            .unwrap();
        for (token, name, role) in [
            (AUDITOR, "privacy-officer", "auditor"),
            (VIEWER, "ward-clerk", "viewer"),
        ] {
            cp.store
                .insert_operator_token(&OperatorToken {
                    token_hash: hash_secret(token),
                    name: name.into(),
                    role: role.into(),
                    created_at: OffsetDateTime::now_utc(),
                })
                .await
                .unwrap();
        }
        let tls = control_plane_client_config(&cp.ca.current().bundle, None).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        Self {
            url: format!("https://127.0.0.1:{}", cp.addr.port()),
            _home: home,
            cp,
            http,
        }
    }

    /// The answer's status and raw text (to search it for the subject).
    async fn disclosures(&self, token: &str, body: &Value) -> (Status, String) {
        let resp = self
            .http
            .post(format!("{}{}", self.url, paths::AUDIT_DISCLOSURES))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn page(&self, body: Value) -> DisclosurePage {
        let (status, text) = self.disclosures(AUDITOR, &body).await;
        assert_eq!(status, Status::OK, "{text}");
        assert!(
            !text.contains(PATIENT),
            "the answer quotes the subject: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }
}

fn record(n: u128, at: OffsetDateTime) -> FlowRecord {
    FlowRecord {
        id: new_record_id(n),
        at,
        request_id: Some(format!("req-{n}")),
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some(FRONTEND.into()),
        destination: NOTES.into(),
        method: Some("GET".into()),
        route: Some("/patients/{patient}/notes".into()),
        status: Some(200),
        verdict: Verdict::Allowed,
        policy_revision: Some("rev-7".into()),
        rule: Some("treating_clinician".into()),
        latency_us: 900,
        bytes_in: 10,
        bytes_out: 2000,
        user: Some("dr-alice".into()),
        purpose: Some("TREAT".into()),
        break_glass: false,
        subject_pseudonym: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_gets_one_patients_accesses_and_the_id_is_never_kept() {
    let p = Plane::start().await;
    let mine = p.cp.policy.context.pseudonym(PATIENT);
    let theirs = p.cp.policy.context.pseudonym(OTHER_PATIENT);
    let t0 = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    let of = |n: u128, minutes: i64, subject: &str, f: fn(&mut FlowRecord)| {
        let mut r = record(n, t0 + time::Duration::minutes(minutes));
        r.subject_pseudonym = Some(subject.to_owned());
        f(&mut r);
        r
    };
    let records = vec![
        of(1, 0, &mine, |_| {}),
        of(2, 1, &theirs, |_| {}),
        of(3, 2, &mine, |r| {
            r.source = Some(BILLING.into());
            r.user = None;
            r.purpose = Some("HPAYMT".into());
            r.verdict = Verdict::Denied;
            r.status = Some(403);
            r.rule = Some("default_deny".into());
        }),
        of(4, 3, &mine, |r| {
            r.verdict = Verdict::DryRun;
            r.user = Some("dr-bob".into());
            r.purpose = Some("ETREAT".into());
            r.break_glass = true;
        }),
        // Same patient, no policy decision: nothing was released.
        of(5, 4, &mine, |r| {
            r.verdict = Verdict::Error;
            r.status = Some(503);
        }),
        // No subject at all (a route without a patient).
        record(6, t0 + time::Duration::minutes(5)),
    ];
    let notes = SpiffeId::parse(NOTES).unwrap();
    p.cp.store
        .ingest_flows_audited(&records, &crate::flows::audit_for(&notes, &records))
        .await
        .unwrap();

    // Released accesses of this patient only, ascending, with who, when, why.
    let page = p.page(json!({"subject": PATIENT})).await;
    assert_eq!(page.subject_pseudonym, mine);
    let got: Vec<(Option<&str>, Verdict, Option<&str>)> = page
        .disclosures
        .iter()
        .map(|d| (d.request_id.as_deref(), d.verdict, d.user.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("req-1"), Verdict::Allowed, Some("dr-alice")),
            (Some("req-4"), Verdict::DryRun, Some("dr-bob")),
        ]
    );
    let first = &page.disclosures[0];
    assert_eq!(first.at, t0);
    assert_eq!(
        (first.source.as_deref(), first.destination.as_str()),
        (Some(FRONTEND), NOTES)
    );
    assert_eq!(
        (
            first.method.as_deref(),
            first.route.as_deref(),
            first.status
        ),
        (Some("GET"), Some("/patients/{patient}/notes"), Some(200))
    );
    assert_eq!(
        (
            first.purpose.as_deref(),
            first.policy_revision.as_deref(),
            first.rule.as_deref(),
            first.break_glass
        ),
        (
            Some("TREAT"),
            Some("rev-7"),
            Some("treating_clinician"),
            false
        )
    );
    assert!(page.disclosures[1].break_glass);
    assert_eq!(page.next_after, page.disclosures[1].seq);

    // Refused attempts on request; blanks around a pasted id do not matter.
    let all = p
        .page(json!({"subject": format!("  {PATIENT} "), "include_denied": true}))
        .await;
    let ids: Vec<_> = all
        .disclosures
        .iter()
        .filter_map(|d| d.request_id.clone())
        .collect();
    assert_eq!(ids, ["req-1", "req-3", "req-4", "req-5"]);
    assert_eq!(all.disclosures[1].source.as_deref(), Some(BILLING));

    // Paging one by one across the two released verdicts, then an empty last page.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = p
            .page(json!({"subject": PATIENT, "limit": 1, "after": after}))
            .await;
        if page.disclosures.is_empty() {
            assert_eq!(page.next_after, after);
            break;
        }
        assert_eq!(page.disclosures.len(), 1);
        seen.extend(page.disclosures.iter().filter_map(|d| d.request_id.clone()));
        after = page.next_after;
    }
    assert_eq!(seen, ["req-1", "req-4"]);

    // A time window (until is exclusive).
    let window = p
        .page(json!({
            "subject": PATIENT,
            "include_denied": true,
            "since": "2025-06-15T15:07:40Z",
            "until": "2025-06-15T15:09:40Z",
        }))
        .await;
    let ids: Vec<_> = window
        .disclosures
        .iter()
        .filter_map(|d| d.request_id.clone())
        .collect();
    assert_eq!(ids, ["req-3"]);

    // The other patient; a patient nobody accessed.
    let theirs_page = p.page(json!({"subject": OTHER_PATIENT})).await;
    assert_eq!(theirs_page.disclosures.len(), 1);
    assert_eq!(
        theirs_page.disclosures[0].request_id.as_deref(),
        Some("req-2")
    );
    let none = p.page(json!({"subject": "patient-9999"})).await;
    assert!(none.disclosures.is_empty());

    // A viewer may read flows but not a patient's accounting; a bad body is a 400 that
    // does not quote the id; no token is a 401.
    let (status, text) = p.disclosures(VIEWER, &json!({"subject": PATIENT})).await;
    assert_eq!(status, Status::FORBIDDEN, "{text}");
    assert!(text.contains("insufficient_role"), "{text}");
    assert!(!text.contains(PATIENT), "{text}");
    let (status, text) = p
        .disclosures(AUDITOR, &json!({"subject": format!("{PATIENT}\u{7}")}))
        .await;
    assert_eq!(status, Status::BAD_REQUEST, "{text}");
    assert!(!text.contains(PATIENT), "{text}");
    let anonymous = p
        .http
        .post(format!("{}{}", p.url, paths::AUDIT_DISCLOSURES))
        .json(&json!({"subject": PATIENT}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), Status::UNAUTHORIZED);

    // The audit log: every call recorded by route template, each answered accounting by
    // pseudonym; the id itself nowhere.
    let entries =
        p.cp.store
            .audit_entries(&AuditQuery {
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
    let dump = serde_json::to_string(
        &entries
            .iter()
            .map(|e| json!([e.kind, e.actor, e.subject, e.detail]))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !dump.contains(PATIENT),
        "the audit log holds the patient id"
    );
    assert!(
        !dump.contains(OTHER_PATIENT),
        "the audit log holds the patient id"
    );
    let reads: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == kinds::DISCLOSURES_READ)
        .collect();
    // 1 + 1 + 3 pages + window + 2 others.
    assert_eq!(reads.len(), 8, "{dump}");
    assert!(reads.iter().all(|e| e.actor == "operator:privacy-officer"));
    assert_eq!(
        (reads[0].subject.as_str(), &reads[0].detail["returned"]),
        (mine.as_str(), &json!(2))
    );
    assert_eq!(reads[1].detail["include_denied"], true);
    let calls: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == kinds::OPERATOR_API && e.subject == paths::AUDIT_DISCLOSURES)
        .map(|e| e.detail["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(calls.len(), 11, "{calls:?}");
    assert_eq!(
        calls[8..],
        [
            "denied".to_owned(),
            "rejected".to_owned(),
            "unauthenticated".to_owned()
        ]
    );
    p.cp.shutdown().await;
}
