//! `wardctl audit` as an operator runs it: the real binary against a real control plane.

use std::process::{Command, Output};

use time::OffsetDateTime;
use wardmesh_identity::SpiffeId;
use wardmesh_proto::audit::AuditEntry;
use wardmesh_proto::disclosure::Disclosure;
use wardmesh_proto::flow::{FlowDirection, FlowKind, FlowRecord, Verdict, new_record_id};
use wardmesh_tests::netns::workspace_bin;

use super::{Backend, Fixture};

fn wardctl(f: &Fixture, args: &[&str]) -> Output {
    Command::new(workspace_bin("wardctl"))
        .arg("--home")
        .arg(f.mesh.path())
        .args(["--control-plane", &f.cp.url])
        .args(args)
        .env_remove("WARDMESH_TOKEN")
        .env_remove("WARDMESH_TRUST_BUNDLE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardctl_audit_log_and_verify() {
    let f = Fixture::start(Backend::Sqlite, "wardctl_audit_log_and_verify")
        .await
        .unwrap();
    f.populate().await;

    // First use pins the key; the log verifies.
    let pinned = f.mesh.path().join("audit-key.pub");
    assert!(!pinned.exists());
    let o = wardctl(&f, &["audit", "verify"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("audit log OK: "), "{out}");
    assert!(err.contains("pinned audit key"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&pinned).unwrap(),
        std::fs::read_to_string(f.mesh.path().join("audit-signing.pub")).unwrap()
    );

    // The log, newest entries, as JSON and as a table; filters by kind.
    let o = wardctl(&f, &["audit", "log", "--last", "3", "-o", "json"]);
    let rows: Vec<AuditEntry> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "{rows:?}"
    );
    let o = wardctl(
        &f,
        &[
            "audit",
            "log",
            "--kind",
            "operator.join_token.*",
            "--since",
            "1h",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 join tokens: {out}");
    assert!(lines[0].starts_with("SEQ  AT"), "{out}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("operator.join_token.created")),
        "{out}"
    );
    let o = wardctl(&f, &["audit", "log", "--since", "last tuesday"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("RFC 3339"), "{:?}", text(&o));
    // The legacy command keeps working.
    let o = wardctl(&f, &["identity", "events", "--limit", "2"]);
    assert!(o.status.success(), "{:?}", text(&o));

    // Edited content: non-zero exit, first bad entry and kind named.
    f.tamper(r#"UPDATE events SET detail = '{"ttl_seconds":1}' WHERE id = 6"#)
        .await;
    let o = wardctl(&f, &["audit", "verify"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("hash mismatch at seq 6"), "{out}");
    assert!(out.contains("first bad entry: seq 6"), "{out}");
    assert!(err.contains("audit log verification failed"), "{err}");
    let o = wardctl(&f, &["audit", "verify", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["damage"],
        serde_json::json!({"kind": "hash_mismatch", "seq": 6})
    );

    // Another key than the one that signed: every checkpoint is refused.
    let other = wardmesh_control_plane::audit::AuditSigner::generate().unwrap();
    let other_file = f.mesh.path().join("other.pub");
    std::fs::write(&other_file, other.public().to_text()).unwrap();
    f.tamper(r#"UPDATE events SET detail = '{"ttl_seconds":600}' WHERE id = 6"#)
        .await;
    let o = wardctl(&f, &["audit", "verify"]);
    assert!(o.status.success(), "restored: {:?}", text(&o));
    let o = wardctl(
        &f,
        &["audit", "verify", "--key", other_file.to_str().unwrap()],
    );
    let (out, _) = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("not the pinned key"), "{out}");
    f.stop().await;
}

const NOTES: &str = "spiffe://wardmesh.local/ns/records/sa/notes";
const FRONTEND: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const PATIENT: &str = "patient-4711";

/// An HTTP request to the notes service about `pseudonym`, `age` ago.
fn phi_record(n: u128, age: time::Duration, pseudonym: &str, verdict: Verdict) -> FlowRecord {
    // Whole seconds: they survive the store's microsecond precision unchanged.
    let now =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    FlowRecord {
        id: new_record_id(n),
        at: now - age,
        request_id: Some(format!("req-{n}")),
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some(FRONTEND.into()),
        destination: NOTES.into(),
        method: Some("GET".into()),
        route: Some("/patients/{patient}/notes".into()),
        status: Some(if verdict == Verdict::Denied { 403 } else { 200 }),
        verdict,
        policy_revision: Some("rev-1".into()),
        rule: Some("treating_clinician".into()),
        latency_us: 800,
        bytes_in: 0,
        bytes_out: 1500,
        user: Some(format!("dr-{n}")),
        purpose: Some("TREAT".into()),
        break_glass: false,
        subject_pseudonym: Some(pseudonym.to_owned()),
    }
}

/// `wardctl audit disclosures` after the flow records behind it were pruned: the
/// accounting comes from the audit log, so every access is still listed, on both backends.
async fn disclosures_outlive_flow_retention(backend: Backend, test: &str) {
    let Some(f) = Fixture::start(backend, test).await else {
        return;
    };
    let cp = &f.cp.cp;
    let mine = cp.policy.context.pseudonym(PATIENT);
    let records = [
        phi_record(1, time::Duration::days(400), &mine, Verdict::Allowed),
        phi_record(2, time::Duration::days(60), &mine, Verdict::Denied),
        phi_record(3, time::Duration::hours(2), &mine, Verdict::Allowed),
        phi_record(
            4,
            time::Duration::hours(1),
            &cp.policy.context.pseudonym("patient-0815"),
            Verdict::Allowed,
        ),
    ];
    let notes = SpiffeId::parse(NOTES).unwrap();
    cp.store
        .ingest_flows_audited(
            &records,
            &wardmesh_control_plane::flows::audit_for(&notes, &records),
        )
        .await
        .unwrap();
    // What `--flow-retention 30d` does on its next pass.
    let cut = OffsetDateTime::now_utc() - time::Duration::days(30);
    assert_eq!(cp.store.prune_flows(cut).await.unwrap(), 2);

    let json = |args: &[&str]| -> Vec<Disclosure> {
        let o = wardctl(&f, args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        assert!(
            !out.contains(PATIENT) && !err.contains(PATIENT),
            "{out}\n{err}"
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let users = |rows: &[Disclosure]| -> Vec<String> {
        rows.iter().filter_map(|d| d.user.clone()).collect()
    };
    let released = json(&["audit", "disclosures", "--subject", PATIENT, "-o", "json"]);
    assert_eq!(users(&released), ["dr-1", "dr-3"]);
    assert_eq!(released[0].at, records[0].at);
    assert_eq!(released[0].destination.as_deref(), Some(NOTES));
    assert_eq!(released[0].verdict, Some(Verdict::Allowed));
    let all = json(&[
        "audit",
        "disclosures",
        "--subject",
        PATIENT,
        "--include-denied",
        "-o",
        "json",
    ]);
    assert_eq!(users(&all), ["dr-1", "dr-2", "dr-3"]);
    assert_eq!(all[1].verdict, Some(Verdict::Denied));
    let old = json(&[
        "audit",
        "disclosures",
        "--subject",
        PATIENT,
        "--until",
        "30d",
        "--include-denied",
        "-o",
        "json",
    ]);
    assert_eq!(
        users(&old),
        ["dr-1", "dr-2"],
        "older than the flows table keeps"
    );

    // The table an operator reads.
    let o = wardctl(&f, &["audit", "disclosures", "--subject", PATIENT]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "header + 2: {out}");
    assert!(lines[0].starts_with("TIME  "), "{out}");
    assert!(
        lines[1].contains("dr-1") && lines[1].contains("clinic/frontend"),
        "{out}"
    );
    assert!(
        lines[1].contains("records/notes") && lines[1].contains("allowed"),
        "{out}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardctl_audit_disclosures_outlive_flow_retention_sqlite() {
    disclosures_outlive_flow_retention(
        Backend::Sqlite,
        "wardctl_audit_disclosures_outlive_flow_retention_sqlite",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardctl_audit_disclosures_outlive_flow_retention_postgres() {
    disclosures_outlive_flow_retention(
        Backend::Postgres,
        "wardctl_audit_disclosures_outlive_flow_retention_postgres",
    )
    .await;
}
