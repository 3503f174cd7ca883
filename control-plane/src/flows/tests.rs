use time::OffsetDateTime;
use wardmesh_proto::flow::{FlowDirection, FlowKind, new_record_id, subject_pseudonym};

use super::*;

const ME: &str = "spiffe://wardmesh.local/ns/records/sa/notes";
const CALLER: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";

fn me() -> SpiffeId {
    SpiffeId::parse(ME).unwrap()
}

fn td() -> TrustDomain {
    me().trust_domain().clone()
}

fn record(n: u128) -> FlowRecord {
    FlowRecord {
        id: new_record_id(n + 1),
        at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
        request_id: None,
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some(CALLER.into()),
        destination: ME.into(),
        method: Some("GET".into()),
        route: Some("/patients/{patient}/notes".into()),
        status: Some(200),
        verdict: Verdict::Allowed,
        policy_revision: Some("rev-1".into()),
        rule: Some("treating_clinician".into()),
        latency_us: 10,
        bytes_in: 1,
        bytes_out: 2,
        user: Some("dr-alice".into()),
        purpose: Some("TREAT".into()),
        break_glass: false,
        subject_pseudonym: None,
    }
}

fn batch(records: Vec<FlowRecord>) -> IngestBatch {
    IngestBatch {
        agent_instance: "pod-1".into(),
        records,
    }
}

#[test]
fn batches_are_checked_with_reasons() {
    check_batch(&me(), &batch(vec![record(1), record(2)])).unwrap();
    let mut foreign = record(3);
    foreign.destination = "spiffe://wardmesh.local/ns/other/sa/x".into();
    let err = check_batch(&me(), &batch(vec![record(1), foreign])).unwrap_err();
    assert_eq!((err.status.as_u16(), err.code), (400, "foreign_flow"));
    assert!(err.message.contains("records[1]"), "{}", err.message);

    let mut bad = record(4);
    bad.route = Some("/patients/42?x".into());
    let err = check_batch(&me(), &batch(vec![bad])).unwrap_err();
    assert_eq!(err.code, "invalid_record");
    assert!(
        err.message.starts_with("records[0].route"),
        "{}",
        err.message
    );

    let big = batch((0..=MAX_BATCH_RECORDS as u128).map(record).collect());
    assert_eq!(check_batch(&me(), &big).unwrap_err().status.as_u16(), 413);
    let mut b = batch(vec![]);
    b.agent_instance = "a b".into();
    assert_eq!(check_batch(&me(), &b).unwrap_err().code, "invalid_batch");

    let unknown = serde_json::json!({"agent_instance": "p", "records": [], "extra": 1});
    let err = serde_json::from_value::<IngestBatch>(unknown).unwrap_err();
    assert!(err.to_string().contains("unknown field `extra`"));
}

#[test]
fn phi_denies_and_break_glass_are_audited() {
    let plain = record(1);
    let mut phi = record(2);
    phi.subject_pseudonym = Some(subject_pseudonym(b"k", "patient-42"));
    let mut denied = record(3);
    denied.verdict = Verdict::Denied;
    denied.user = None;
    let mut glass = phi.clone();
    glass.id = new_record_id(99);
    glass.break_glass = true;
    let audit = audit_for(&me(), &[plain, phi.clone(), denied, glass]);
    let got: Vec<(usize, &str, &str)> = audit
        .iter()
        .map(|a| (a.record, a.event.kind.as_str(), a.event.actor.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, kinds::PHI_ACCESS, "user:dr-alice"),
            (2, kinds::AUTHZ_DENY, CALLER),
            (3, kinds::BREAKGLASS_USE, "user:dr-alice"),
        ]
    );
    assert_eq!(audit[0].event.subject, phi.subject_pseudonym.unwrap());
    assert_eq!(audit[1].event.subject, ME);
    assert_eq!(audit[0].event.detail["purpose"], "TREAT");
    assert_eq!(audit[0].event.detail["reported_by"], ME);
}

#[test]
fn queries_expand_peers_and_name_bad_parameters() {
    let q = FlowsQuery {
        from: Some("clinic/frontend".into()),
        to: Some("records".into()),
        verdict: Some("dry-run".into()),
        break_glass: Some("true".into()),
        since: Some("2025-06-01T12:00:00Z".into()),
        last: Some("20".into()),
        ..FlowsQuery::default()
    }
    .parse(&td())
    .unwrap();
    assert_eq!(q.source, Some(IdFilter::Exact(CALLER.into())));
    assert_eq!(
        q.destination,
        Some(IdFilter::Prefix(
            "spiffe://wardmesh.local/ns/records/sa/".into()
        ))
    );
    assert_eq!(
        (q.verdict, q.break_glass),
        (Some(Verdict::DryRun), Some(true))
    );
    assert_eq!((q.limit, q.newest), (20, true));
    let q = FlowsQuery::default().parse(&td()).unwrap();
    assert_eq!((q.after, q.limit, q.newest), (0, DEFAULT_PAGE, false));

    let with = |f: fn(&mut FlowsQuery)| {
        let mut q = FlowsQuery::default();
        f(&mut q);
        q
    };
    for (q, param) in [
        (with(|q| q.verdict = Some("maybe".into())), "verdict"),
        (with(|q| q.from = Some("Clinic/Frontend".into())), "from"),
        (with(|q| q.to = Some("spiffe://".into())), "to"),
        (with(|q| q.since = Some("yesterday".into())), "since"),
        (with(|q| q.until = Some("2025-13-01".into())), "until"),
        (with(|q| q.limit = Some("0".into())), "limit"),
        (with(|q| q.last = Some("5000".into())), "last"),
        (with(|q| q.after = Some("-1".into())), "after"),
        (with(|q| q.break_glass = Some("yes".into())), "break_glass"),
        (with(|q| q.route = Some(String::new())), "route"),
    ] {
        let err = q.parse(&td()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "invalid_query"));
        assert!(
            err.message.contains(&format!("`{param}`")),
            "{param}: {}",
            err.message
        );
    }
}
