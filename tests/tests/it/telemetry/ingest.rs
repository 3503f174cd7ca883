//! `POST /v1/flows` and the flow/audit queries over real HTTPS, as an agent and as
//! operators of each role: a good batch is stored once however often it is sent; a
//! batch with an unknown field, an oversized or foreign record, or no client
//! certificate is refused whole with a reason and stores nothing; bad filter values
//! name the parameter; a viewer sees flows but not the audit log or disclosures.

use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use wardmesh_identity::keygen::generate_anonymous_csr;
use wardmesh_identity::tls::Svid;
use wardmesh_proto::flow::{
    FlowDirection, FlowKind, FlowPage, FlowRecord, IngestAck, IngestBatch, MAX_RECORD_BYTES,
    Verdict, new_record_id,
};
use wardmesh_proto::identity::{AttestRequest, Attestation, SvidResponse};
use wardmesh_proto::paths;
use wardmesh_store::OperatorToken;
use wardmesh_tests::TestMesh;
use wardmesh_tests::cp::{TestCp, svid_from};

const ME: &str = "spiffe://wardmesh.local/ns/records/sa/notes";
const CALLER: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const VIEWER: &str = "wmop_viewer-token-for-ingest-tests";

/// An SVID for `ME`, obtained the way an agent obtains it.
async fn agent_svid(cp: &TestCp) -> Svid {
    let key = generate_anonymous_csr().unwrap();
    let body = AttestRequest {
        csr_pem: key.csr_pem.clone(),
        attestation: Attestation::JoinToken {
            token: cp.join_token(ME).await,
        },
    };
    let svid: SvidResponse = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::ATTEST,
            None,
            Some(&body),
        )
        .await
        .ok();
    svid_from(&key, &svid.chain_pem)
}

fn record(n: u128) -> FlowRecord {
    FlowRecord {
        id: new_record_id(n + 1),
        at: OffsetDateTime::now_utc(),
        request_id: Some(format!("ingest-{n}")),
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some(CALLER.into()),
        destination: ME.into(),
        method: Some("GET".into()),
        route: Some("/patients/{patient}/notes".into()),
        status: Some(200),
        verdict: Verdict::Allowed,
        policy_revision: Some("rev-1".into()),
        rule: Some("clinician-notes-treat".into()),
        latency_us: 120,
        bytes_in: 0,
        bytes_out: 512,
        user: Some("dr-ada".into()),
        purpose: Some("TREAT".into()),
        break_glass: false,
        subject_pseudonym: None,
    }
}

fn batch(records: Vec<FlowRecord>) -> IngestBatch {
    IngestBatch {
        agent_instance: "notes-7f9c".into(),
        records,
    }
}

async fn stored(cp: &TestCp) -> Vec<String> {
    let page: FlowPage = cp
        .call::<()>(
            &cp.client(None),
            Method::GET,
            &format!("{}?limit=1000", paths::FLOWS),
            Some(VIEWER),
            None,
        )
        .await
        .ok();
    page.flows
        .into_iter()
        .filter_map(|f| f.record.request_id)
        .collect()
}

#[tokio::test]
async fn ingest_and_queries_refuse_bad_input_whole_and_by_role() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    cp.cp
        .store
        .insert_operator_token(&OperatorToken {
            token_hash: wardmesh_identity::attest::hash_secret(VIEWER),
            name: "vera".into(),
            role: "viewer".into(),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let agent = cp.client(Some(&agent_svid(&cp).await));

    // A good batch is stored; the same batch again (a lost answer) stores nothing new.
    let good = batch(vec![record(1), record(2)]);
    let ack: IngestAck = cp
        .call(&agent, Method::POST, paths::FLOWS, None, Some(&good))
        .await
        .ok();
    assert_eq!((ack.accepted, ack.duplicates), (2, 0));
    let again: IngestAck = cp
        .call(&agent, Method::POST, paths::FLOWS, None, Some(&good))
        .await
        .ok();
    assert_eq!((again.accepted, again.duplicates), (0, 2));

    // Each bad batch also carries a good, new record: nothing of it may be stored.
    let mut unknown = serde_json::to_value(batch(vec![record(3)])).unwrap();
    unknown["records"][0]["raw_path"] = json!("/patients/4711/notes");
    let mut oversized = record(3);
    oversized.route = Some(format!("/{}", "a".repeat(MAX_RECORD_BYTES)));
    let mut foreign = record(4);
    foreign.destination = "spiffe://wardmesh.local/ns/billing/sa/api".into();
    let cases: [(&str, Value, u16, &str); 3] = [
        ("unknown field", unknown, 400, "raw_path"),
        (
            "oversized record",
            serde_json::to_value(batch(vec![record(3), oversized])).unwrap(),
            400,
            "records[1].route",
        ),
        (
            "another workload's record",
            serde_json::to_value(batch(vec![record(3), foreign])).unwrap(),
            400,
            "records[1]",
        ),
    ];
    for (what, body, status, names) in cases {
        let a = cp
            .call(&agent, Method::POST, paths::FLOWS, None, Some(&body))
            .await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        let msg = a.err().message;
        assert!(msg.contains(names), "{what}: {msg:?} should name {names}");
    }
    let anonymous = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::FLOWS,
            None,
            Some(&batch(vec![record(3)])),
        )
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let mut ids = stored(&cp).await;
    ids.sort();
    assert_eq!(
        ids,
        ["ingest-1", "ingest-2"],
        "refused batches stored nothing"
    );

    // Filters: a bad value names its parameter and changes nothing.
    for (query, param) in [
        ("verdict=maybe", "verdict"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("from=ns%2Fonly%2Fno-sa%2Fx%2Fy", "from"),
    ] {
        let a = cp
            .call::<()>(
                &cp.client(None),
                Method::GET,
                &format!("{}?{query}", paths::FLOWS),
                Some(VIEWER),
                None,
            )
            .await;
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        let msg = a.err().message;
        assert!(msg.contains(param), "{query}: {msg:?}");
    }

    // Roles: a viewer sees flows, never the audit log or the accounting of disclosures.
    let viewer_c = cp.client(None);
    let entries = cp
        .call::<()>(
            &viewer_c,
            Method::GET,
            paths::AUDIT_ENTRIES,
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(
        (entries.status, entries.code().as_str()),
        (403, "insufficient_role")
    );
    let disclosures = cp
        .call(
            &viewer_c,
            Method::POST,
            paths::AUDIT_DISCLOSURES,
            Some(VIEWER),
            Some(&json!({"subject": "4711"})),
        )
        .await;
    assert_eq!(
        (disclosures.status, disclosures.code().as_str()),
        (403, "insufficient_role")
    );
    cp.cp.shutdown().await;
}
