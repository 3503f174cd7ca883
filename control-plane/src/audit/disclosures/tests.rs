//! The accounting of disclosures against a real control plane: real CA, TLS, HTTP and
//! SQLite store; flows stored the way `POST /v1/flows` stores them (with their audit
//! entries), the answer read from those audit entries. The pure parts are in `pure.rs`.

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
use wardmesh_store::{AuditQuery, Event, FlowQuery, OperatorToken};

use super::*;
use crate::config::ControlPlaneConfig;

mod pure;

const NOTES: &str = "spiffe://wardmesh.local/ns/records/sa/notes";
const FRONTEND: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const BILLING: &str = "spiffe://wardmesh.local/ns/billing/sa/api";
/// Patient ids: never hex-only, so they cannot turn up inside a pseudonym by chance.
const PATIENT: &str = "patient-4711";
const OTHER_PATIENT: &str = "patient-0815";
const AUDITOR: &str = "wmop_auditor-token-for-disclosure-tests";
const VIEWER: &str = "wmop_viewer-token-for-disclosure-tests";

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

/// The minutes after `t0` of each disclosure: which records a page lists.
fn minutes(page: &DisclosurePage, t0: OffsetDateTime) -> Vec<i64> {
    page.disclosures
        .iter()
        .map(|d| (d.at - t0).whole_minutes())
        .collect()
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
        // Break-glass claimed, still denied: a `breakglass.use` entry that released nothing.
        of(7, 6, &mine, |r| {
            r.verdict = Verdict::Denied;
            r.status = Some(403);
            r.break_glass = true;
            r.user = Some("dr-eve".into());
        }),
        of(8, 7, &mine, |r| r.user = Some("dr-carol".into())),
    ];
    let notes = SpiffeId::parse(NOTES).unwrap();
    p.cp.store
        .ingest_flows_audited(&records, &crate::flows::audit_for(&notes, &records))
        .await
        .unwrap();

    // Released accesses of this patient only, ascending, with who, when, why.
    let page = p.page(json!({"subject": PATIENT})).await;
    assert_eq!(page.subject_pseudonym, mine);
    let got: Vec<(Option<Verdict>, Option<&str>)> = page
        .disclosures
        .iter()
        .map(|d| (d.verdict, d.user.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(Verdict::Allowed), Some("dr-alice")),
            (Some(Verdict::DryRun), Some("dr-bob")),
            (Some(Verdict::Allowed), Some("dr-carol")),
        ]
    );
    assert_eq!(minutes(&page, t0), [0, 3, 7]);
    let first = &page.disclosures[0];
    assert_eq!(first.at, t0);
    assert_eq!(
        (first.source.as_deref(), first.destination.as_deref()),
        (Some(FRONTEND), Some(NOTES))
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
    assert_eq!(page.next_after, page.disclosures[2].seq);
    // Seqs are the audit entries' own: each names a phi.access or breakglass.use entry
    // about this patient (what `wardctl audit log` shows).
    let entries =
        p.cp.store
            .audit_entries(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
    for d in &page.disclosures {
        let e = entries.iter().find(|e| e.seq == d.seq).unwrap();
        assert_eq!((e.subject.as_str(), e.at), (mine.as_str(), d.at));
        assert!(["phi.access", "breakglass.use"].contains(&e.kind.as_str()));
    }

    // Refused attempts on request; blanks around a pasted id do not matter.
    let all = p
        .page(json!({"subject": format!("  {PATIENT} "), "include_denied": true}))
        .await;
    assert_eq!(minutes(&all, t0), [0, 2, 3, 4, 6, 7]);
    assert_eq!(all.disclosures[1].source.as_deref(), Some(BILLING));
    assert_eq!(
        all.disclosures
            .iter()
            .map(|d| d.verdict)
            .collect::<Vec<_>>(),
        [
            Verdict::Allowed,
            Verdict::Denied,
            Verdict::DryRun,
            Verdict::Error,
            Verdict::Denied,
            Verdict::Allowed
        ]
        .map(Some)
    );

    // Paging one by one, past the entries that released nothing, then an empty last page.
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
        seen.extend(minutes(&page, t0));
        after = page.next_after;
    }
    assert_eq!(seen, [0, 3, 7]);
    // A page of two from the start: full, so not known to be the last.
    let two = p.page(json!({"subject": PATIENT, "limit": 2})).await;
    assert_eq!(minutes(&two, t0), [0, 3]);
    let rest = p
        .page(json!({"subject": PATIENT, "limit": 2, "after": two.next_after}))
        .await;
    assert_eq!(minutes(&rest, t0), [7]);

    // A time window (until is exclusive).
    let window = p
        .page(json!({
            "subject": PATIENT,
            "include_denied": true,
            "since": "2025-06-15T15:07:40Z",
            "until": "2025-06-15T15:09:40Z",
        }))
        .await;
    assert_eq!(minutes(&window, t0), [2]);

    // The other patient; a patient nobody accessed.
    let theirs_page = p.page(json!({"subject": OTHER_PATIENT})).await;
    assert_eq!(minutes(&theirs_page, t0), [1]);
    let none = p.page(json!({"subject": "patient-9999"})).await;
    assert!(none.disclosures.is_empty());

    // Reading the accounting wrote `audit.disclosures.read` entries under this patient's
    // pseudonym; they are not disclosures, so asking again lists the same.
    let again = p
        .page(json!({"subject": PATIENT, "include_denied": true}))
        .await;
    assert_eq!(again.disclosures, all.disclosures);

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
    // 1 + 1 + 4 pages + 2 pages + window + 2 others + again.
    assert_eq!(reads.len(), 12, "{dump}");
    assert!(reads.iter().all(|e| e.actor == "operator:privacy-officer"));
    assert_eq!(
        (reads[0].subject.as_str(), &reads[0].detail["returned"]),
        (mine.as_str(), &json!(3))
    );
    assert_eq!(reads[1].detail["include_denied"], true);
    let calls: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == kinds::OPERATOR_API && e.subject == paths::AUDIT_DISCLOSURES)
        .map(|e| e.detail["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(calls.len(), 15, "{calls:?}");
    assert_eq!(
        calls[12..],
        [
            "denied".to_owned(),
            "rejected".to_owned(),
            "unauthenticated".to_owned()
        ]
    );
    p.cp.shutdown().await;
}

/// Flows are kept for `--flow-retention` (30 days by default), the audit log for
/// `--audit-retention` (default forever): a retention pass deletes the flow records, and
/// the accounting still lists every access, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounting_outlives_flow_retention() {
    let p = Plane::start().await;
    let mine = p.cp.policy.context.pseudonym(PATIENT);
    // Whole seconds: they survive the store's microsecond precision unchanged.
    let now =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    // A year ago, 40 days ago, an hour ago.
    let ages = [
        time::Duration::days(365),
        time::Duration::days(40),
        time::Duration::hours(1),
    ];
    let records: Vec<FlowRecord> = ages
        .iter()
        .zip(1..)
        .map(|(age, n)| {
            let mut r = record(n, now - *age);
            r.subject_pseudonym = Some(mine.clone());
            r.user = Some(format!("dr-{n}"));
            r
        })
        .collect();
    let notes = SpiffeId::parse(NOTES).unwrap();
    p.cp.store
        .ingest_flows_audited(&records, &crate::flows::audit_for(&notes, &records))
        .await
        .unwrap();
    let before = p.page(json!({"subject": PATIENT})).await;
    let users = |page: &DisclosurePage| -> Vec<String> {
        page.disclosures
            .iter()
            .filter_map(|d| d.user.clone())
            .collect()
    };
    assert_eq!(users(&before), ["dr-1", "dr-2", "dr-3"]);

    // The control plane's own retention pass, with the default settings.
    let retention = crate::retention::Retention::new(
        p.cp.store.clone(),
        p.cp.audit.clone(),
        crate::config::RetentionConfig::default(),
        crate::identity::system_clock(),
        crate::retention::RetentionMetrics::new(&prometheus::Registry::new()).unwrap(),
    );
    let out = retention.run_once().await.unwrap();
    assert_eq!((out.flows_removed, out.audit_entries_removed), (2, 0));
    let flows =
        p.cp.store
            .query_flows(&FlowQuery {
                limit: 100,
                ..FlowQuery::default()
            })
            .await
            .unwrap();
    let mine_left = flows
        .iter()
        .filter(|f| f.record.subject_pseudonym.as_deref() == Some(mine.as_str()))
        .count();
    assert_eq!(mine_left, 1, "only the recent flow is left");

    let after = p.page(json!({"subject": PATIENT})).await;
    assert_eq!(after.disclosures, before.disclosures);
    assert_eq!(users(&after), ["dr-1", "dr-2", "dr-3"]);
    assert_eq!(after.disclosures[0].at, records[0].at);
    assert_eq!(
        after.disclosures[0].route.as_deref(),
        Some("/patients/{patient}/notes")
    );
    // And so does a window a year back.
    let year = p
        .page(json!({
            "subject": PATIENT,
            "until": (now - time::Duration::days(300)).format(&Rfc3339).unwrap(),
        }))
        .await;
    assert_eq!(users(&year), ["dr-1"]);
    p.cp.shutdown().await;
}

/// Audit entries of the accounted kinds whose detail is not what flow ingest writes (an
/// older build, a hand-written entry) are still listed, their odd fields `None`, never a
/// 500; entries of other kinds under the same subject are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_audit_details_become_empty_fields_not_errors() {
    let p = Plane::start().await;
    let mine = p.cp.policy.context.pseudonym(PATIENT);
    let t0 = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    let entry = |minute: i64, kind: &str, actor: &str, detail: Value| Event {
        id: 0,
        at: t0 + time::Duration::minutes(minute),
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        subject: mine.clone(),
        detail,
    };
    p.cp.store
        .append_events(&[
            entry(0, "phi.access", "user:dr-ada", json!({})),
            entry(
                1,
                "phi.access",
                FRONTEND,
                json!({
                    "status": "200", "verdict": "maybe", "destination": 7, "route": null,
                    "break_glass": "yes", "method": ["GET"], "purpose": {"code": "TREAT"},
                }),
            ),
            entry(
                2,
                "breakglass.use",
                "unauthenticated",
                json!("not an object"),
            ),
            entry(3, "authz.deny", FRONTEND, json!({"status": 70000})),
            entry(4, "consent.set", "operator:x", json!({})),
            entry(5, "phi.access", FRONTEND, json!({"verdict": "error"})),
        ])
        .await
        .unwrap();
    let page = p.page(json!({"subject": PATIENT})).await;
    assert_eq!(minutes(&page, t0), [0, 1, 2], "no known verdict: listed");
    let [ada, odd, bg] = &page.disclosures[..] else {
        panic!("{page:?}")
    };
    assert_eq!(
        (ada.user.as_deref(), ada.source.as_deref()),
        (Some("dr-ada"), None)
    );
    assert_eq!((ada.verdict, ada.destination.as_deref()), (None, None));
    assert_eq!(
        (odd.user.as_deref(), odd.source.as_deref()),
        (None, Some(FRONTEND))
    );
    assert_eq!(
        (
            odd.status,
            odd.verdict,
            odd.destination.as_deref(),
            odd.route.as_deref()
        ),
        (None, None, None, None)
    );
    assert_eq!(
        (odd.method.as_deref(), odd.purpose.as_deref()),
        (None, None)
    );
    assert!(!odd.break_glass && !ada.break_glass);
    assert!(bg.break_glass, "the kind says so");
    assert_eq!((bg.user.as_deref(), bg.source.as_deref()), (None, None));

    let all = p
        .page(json!({"subject": PATIENT, "include_denied": true}))
        .await;
    assert_eq!(minutes(&all, t0), [0, 1, 2, 3, 5]);
    assert_eq!(
        (all.disclosures[3].verdict, all.disclosures[3].status),
        (Some(Verdict::Denied), None)
    );
    assert_eq!(all.disclosures[4].verdict, Some(Verdict::Error));
    p.cp.shutdown().await;
}
