//! The pure parts of the accounting: body validation, the audit query, an entry's
//! disclosure, and filling a page past entries that released nothing.

use super::*;

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
    // The audit query: the pseudonym, the kinds, the window, the cursor; the first round
    // asks for `limit` entries, later ones for a full page.
    let q = ok.query("ab", 7, true);
    assert_eq!(q.subject.as_deref(), Some("ab"));
    assert_eq!(q.kinds, ["phi.access", "breakglass.use", "authz.deny"]);
    assert_eq!((q.after, q.limit, q.newest), (7, 2, false));
    assert_eq!((q.since, q.until), (ok.since, ok.until));
    assert_eq!((q.kind.as_deref(), q.before), (None, None));
    assert_eq!(ok.query("ab", 9, false).limit, MAX_PAGE);
    assert_eq!(
        defaults.query("ab", 0, true).kinds,
        ["phi.access", "breakglass.use"],
        "no denies, and never the audit.disclosures.read entries of the same subject"
    );

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

fn audit_entry(seq: i64, kind: &str, verdict: &str) -> AuditEntry {
    AuditEntry {
        seq,
        at: OffsetDateTime::from_unix_timestamp(1_750_000_000 + seq).unwrap(),
        kind: kind.to_owned(),
        actor: "user:dr-alice".to_owned(),
        subject: "ab".repeat(32),
        detail: json!({"verdict": verdict, "destination": NOTES}),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

#[test]
fn pages_fill_up_past_entries_that_released_nothing() {
    let req = Accounting::parse(json!({"subject": "p", "limit": 2, "after": 10})).unwrap();
    let round = [
        audit_entry(11, "phi.access", "error"),
        audit_entry(12, "breakglass.use", "denied"),
    ];
    // A full round that listed nothing: read on after its last entry.
    let mut found = Vec::new();
    assert_eq!(req.take(&mut found, &round, 2), Some(12));
    assert!(found.is_empty());
    // A round with more than the page needs: stop at `limit`.
    let round = [
        audit_entry(13, "phi.access", "allowed"),
        audit_entry(14, "phi.access", "error"),
        audit_entry(15, "breakglass.use", "dry_run"),
        audit_entry(16, "phi.access", "allowed"),
    ];
    assert_eq!(req.take(&mut found, &round, MAX_PAGE), None);
    assert_eq!(found.iter().map(|d| d.seq).collect::<Vec<_>>(), [13, 15]);
    assert_eq!(req.page("ab".into(), found).next_after, 15);
    // A short round is the store's last: the page ends short.
    let mut found = Vec::new();
    assert_eq!(req.take(&mut found, &round[..2], 2), Some(14));
    assert_eq!(req.take(&mut found, &round[3..], MAX_PAGE), None);
    assert_eq!(found.iter().map(|d| d.seq).collect::<Vec<_>>(), [13, 16]);
    let mut found = Vec::new();
    assert_eq!(req.take(&mut found, &[], 2), None);
    let empty = req.page("ab".into(), found);
    assert_eq!((empty.disclosures.len(), empty.next_after), (0, 10));
    // With include_denied every entry is listed.
    let all =
        Accounting::parse(json!({"subject": "p", "limit": 2, "include_denied": true})).unwrap();
    let mut found = Vec::new();
    assert_eq!(all.take(&mut found, &round[1..], 3), None);
    assert_eq!(found.iter().map(|d| d.seq).collect::<Vec<_>>(), [14, 15]);
}

#[test]
fn an_entry_written_by_flow_ingest_becomes_the_same_disclosure() {
    let notes = SpiffeId::parse(NOTES).unwrap();
    let t0 = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    let mut r = record(1, t0);
    r.subject_pseudonym = Some("ab".repeat(32));
    r.break_glass = true;
    r.verdict = Verdict::DryRun;
    let audit = crate::flows::audit_for(&notes, std::slice::from_ref(&r));
    let e = &audit[0].event;
    let d = disclosure(&AuditEntry {
        seq: 9,
        at: e.at,
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        subject: e.subject.clone(),
        detail: e.detail.clone(),
        prev_hash: String::new(),
        hash: String::new(),
    });
    assert_eq!(
        d,
        Disclosure {
            seq: 9,
            at: t0,
            source: Some(FRONTEND.into()),
            destination: Some(NOTES.into()),
            method: Some("GET".into()),
            route: Some("/patients/{patient}/notes".into()),
            status: Some(200),
            verdict: Some(Verdict::DryRun),
            user: Some("dr-alice".into()),
            purpose: Some("TREAT".into()),
            policy_revision: Some("rev-7".into()),
            rule: Some("treating_clinician".into()),
            break_glass: true,
            // Flow ingest's audit detail does not carry the request id.
            request_id: e.detail["request_id"].as_str().map(str::to_owned),
        }
    );
}
