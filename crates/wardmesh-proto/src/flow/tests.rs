use super::*;

fn record() -> FlowRecord {
    FlowRecord {
        id: new_record_id(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        at: OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
        request_id: None,
        kind: FlowKind::Http,
        direction: FlowDirection::Inbound,
        source: Some("spiffe://wardmesh.local/ns/clinic/sa/frontend".into()),
        destination: "spiffe://wardmesh.local/ns/clinic/sa/notes".into(),
        method: Some("GET".into()),
        route: Some("/patients/{patient}/notes".into()),
        status: Some(200),
        verdict: Verdict::Allowed,
        policy_revision: Some("rev-7".into()),
        rule: Some("treating_clinician".into()),
        latency_us: 1234,
        bytes_in: 10,
        bytes_out: 2048,
        user: Some("dr-alice".into()),
        purpose: Some("TREAT".into()),
        break_glass: false,
        subject_pseudonym: Some(subject_pseudonym(b"mesh-key", "patient-42")),
    }
}

#[test]
fn hmac_matches_rfc_4231() {
    // Test case 2 (short key) and 6 (key longer than the block).
    assert_eq!(
        hex_lower(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex_lower(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn pseudonyms_are_keyed_and_stable() {
    let p = subject_pseudonym(b"k1", "patient-42");
    assert_eq!(p.len(), PSEUDONYM_LEN);
    assert_eq!(p, subject_pseudonym(b"k1", "patient-42"));
    assert_ne!(p, subject_pseudonym(b"k2", "patient-42"));
    assert_ne!(p, subject_pseudonym(b"k1", "patient-43"));
    assert!(!p.contains("42"));
}

#[test]
fn records_round_trip_and_unknown_fields_are_refused() {
    let r = record();
    r.validate().unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "allowed");
    assert_eq!(
        serde_json::from_value::<FlowRecord>(json.clone()).unwrap(),
        r
    );
    let mut extra = json.clone();
    extra["raw_path"] = "/patients/42/notes".into();
    let err = serde_json::from_value::<FlowRecord>(extra).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `raw_path`"),
        "{err}"
    );
    let batch = serde_json::json!({"agent_instance": "a", "records": [json], "x": 1});
    assert!(serde_json::from_value::<IngestBatch>(batch).is_err());
    let dry = serde_json::json!("dry_run");
    assert_eq!(
        serde_json::from_value::<Verdict>(dry).unwrap(),
        Verdict::DryRun
    );
    for v in Verdict::ALL {
        assert_eq!(Verdict::parse(v.as_str()), Some(v));
    }
    assert_eq!(Verdict::parse("dry-run"), Some(Verdict::DryRun));
    assert_eq!(Verdict::parse("DENIED"), None);
}

#[test]
fn stored_flows_flatten_the_record() {
    let s = StoredFlow {
        seq: 9,
        record: record(),
    };
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["seq"], 9);
    assert_eq!(json["route"], "/patients/{patient}/notes");
    assert_eq!(serde_json::from_value::<StoredFlow>(json).unwrap(), s);
}

#[test]
fn invalid_records_name_the_field() {
    type Mutation = Box<dyn Fn(&mut FlowRecord)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("id", Box::new(|r| r.id = "XYZ".into())),
        ("id", Box::new(|r| r.id = r.id.to_uppercase())),
        ("source", Box::new(|r| r.source = Some("frontend".into()))),
        ("destination", Box::new(|r| r.destination = String::new())),
        (
            "route",
            Box::new(|r| r.route = Some("/patients/42?x=1".into())),
        ),
        ("route", Box::new(|r| r.route = Some("patients".into()))),
        ("method", Box::new(|r| r.method = Some("get".into()))),
        ("status", Box::new(|r| r.status = Some(42))),
        ("user", Box::new(|r| r.user = Some("a\nb".into()))),
        ("purpose", Box::new(|r| r.purpose = Some(String::new()))),
        (
            "subject_pseudonym",
            Box::new(|r| r.subject_pseudonym = Some("patient-42".into())),
        ),
        ("latency_us", Box::new(|r| r.latency_us = u64::MAX)),
        ("kind", Box::new(|r| r.kind = FlowKind::Tcp)),
        ("rule", Box::new(|r| r.rule = Some("r".repeat(600)))),
        (
            "record",
            Box::new(|r| {
                r.rule = Some("r".repeat(500));
                r.user = Some("u".repeat(500));
                r.purpose = Some("p".repeat(500));
                r.policy_revision = Some("v".repeat(500));
                r.route = Some(format!("/{}", "x".repeat(500)));
                r.destination = format!("spiffe://{}", "d".repeat(2000));
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut r = record();
        mutate(&mut r);
        let err = r.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
    let mut tcp = record();
    tcp.kind = FlowKind::Tcp;
    tcp.method = None;
    tcp.route = None;
    tcp.status = None;
    tcp.validate().unwrap();
    let mut unmatched = record();
    unmatched.route = Some(UNMATCHED_ROUTE.into());
    unmatched.source = None;
    unmatched.validate().unwrap();
}
