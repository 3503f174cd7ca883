use clap::Parser as _;
use wardmesh_proto::flow::{FlowDirection, FlowRecord};

use super::*;
use crate::args::{Cli, Command};

const FRONTEND: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const NOTES: &str = "spiffe://wardmesh.local/ns/records/sa/notes";

fn parse(args: &[&str]) -> Result<FlowsArgs, clap::Error> {
    let cli = Cli::try_parse_from(["wardctl", "flows"].iter().chain(args).copied())?;
    match cli.command {
        Command::Flows(a) => Ok(a),
        other => panic!("parsed as {other:?}"),
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("wardmesh.local").unwrap()
}

fn flow(seq: i64) -> StoredFlow {
    StoredFlow {
        seq,
        record: FlowRecord {
            id: format!("{seq:032x}"),
            at: OffsetDateTime::from_unix_timestamp_nanos(1_750_000_000_123_456_000).unwrap(),
            request_id: Some("req-1".into()),
            kind: FlowKind::Http,
            direction: FlowDirection::Inbound,
            source: Some(FRONTEND.into()),
            destination: NOTES.into(),
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
        },
    }
}

#[test]
fn filters_become_the_apis_query_parameters() {
    let a = parse(&[
        "--from",
        "clinic/frontend",
        "--to",
        NOTES,
        "--verdict",
        "dry-run",
        "--route",
        "/patients/{patient}/notes",
        "--user",
        "dr-alice",
        "--purpose",
        "TREAT",
        "--break-glass",
        "--request-id",
        "req-1",
        "--since",
        "2025-06-01T12:00:00+02:00",
        "--until",
        "2025-06-02T00:00:00Z",
    ])
    .unwrap();
    let q = a.filters().unwrap();
    let want: Vec<(&str, String)> = [
        ("from", "clinic/frontend"),
        ("to", NOTES),
        ("verdict", "dry-run"),
        ("route", "/patients/{patient}/notes"),
        ("user", "dr-alice"),
        ("purpose", "TREAT"),
        ("break_glass", "true"),
        ("request_id", "req-1"),
        ("since", "2025-06-01T10:00:00Z"),
        ("until", "2025-06-02T00:00:00Z"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    assert_eq!(q, want);
    assert_eq!(
        a.start(),
        Start::All,
        "--since without --last: everything since"
    );
    assert!(parse(&[]).unwrap().filters().unwrap().is_empty());
}

#[test]
fn how_many_flows_and_from_where() {
    assert_eq!(parse(&[]).unwrap().start(), Start::Last(DEFAULT_LAST));
    assert_eq!(parse(&["--last", "5"]).unwrap().start(), Start::Last(5));
    assert_eq!(
        parse(&["--since", "10m", "--last", "5"]).unwrap().start(),
        Start::Last(5)
    );
    let follow = parse(&["--to", "records", "-f"]).unwrap();
    assert!(follow.follow);
    assert_eq!(follow.start(), Start::Last(DEFAULT_LAST));
}

#[test]
fn bad_arguments_fail_before_any_request() {
    for (args, says) in [
        (
            &["--from", "Clinic/Frontend"][..],
            "namespace/service-account",
        ),
        (&["--to", "a/b/c"], "namespace/service-account"),
        (&["--from", "spiffe://"], "SPIFFE ID"),
        (&["--verdict", "maybe"], "dry-run"),
        (&["--route", "/patients/42?full=1"], "route template"),
        (&["--route", "patients"], "route template"),
        (&["--user", ""], "1 to 512 bytes"),
        (&["--request-id", &"r".repeat(129)], "x-request-id"),
        (&["--since", "last tuesday"], "RFC 3339"),
        (&["--last", "0"], "1..=1000"),
        (&["--last", "1001"], "1..=1000"),
        (&["--follow", "--until", "1h"], "cannot be used with"),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let reversed = parse(&["--since", "1h", "--until", "2h"]).unwrap();
    let err = reversed.filters().unwrap_err().to_string();
    assert!(err.contains("--since must be before --until"), "{err}");
}

#[test]
fn rows_show_short_ids_in_the_trust_domain() {
    let mut tcp = flow(2);
    tcp.record.kind = FlowKind::Tcp;
    tcp.record.method = None;
    tcp.record.route = None;
    tcp.record.status = None;
    tcp.record.source = None;
    tcp.record.verdict = Verdict::DryRun;
    tcp.record.break_glass = true;
    tcp.record.destination = "spiffe://partner.example/ns/lab/sa/results".into();
    assert_eq!(
        row(&flow(1), Some(&td())),
        [
            "2025-06-15T15:06:40.123Z",
            "clinic/frontend",
            "records/notes",
            "GET",
            "/patients/{patient}/notes",
            "200",
            "allowed",
            "treating_clinician",
            "dr-alice",
            "TREAT",
            "-",
        ]
    );
    let r = row(&tcp, Some(&td()));
    assert_eq!(
        [&r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[10]],
        [
            "-",
            "spiffe://partner.example/ns/lab/sa/results",
            "tcp",
            "-",
            "-",
            "dry-run",
            "yes"
        ]
    );
    // Trust domain unknown: full IDs, never a guess.
    assert_eq!(row(&flow(1), None)[1], FRONTEND);
    assert_eq!(short_id("not an id", Some(&td())), "not an id");
}

#[test]
fn a_table_of_flows_has_the_documented_columns() {
    let t = table(&[flow(1)], &td());
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2, "{t}");
    let columns: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(columns, HEADERS);
    assert!(
        lines[1].starts_with("2025-06-15T15:06:40.123Z  clinic/frontend  records/notes  GET"),
        "{t}"
    );
}

#[test]
fn a_followed_table_prints_its_header_once() {
    let mut p = Printer::new(Format::Table, true, Some(td()));
    let mut out = Vec::new();
    assert!(p.write(&mut out, &[]).unwrap());
    assert!(p.write(&mut out, &[flow(1)]).unwrap());
    assert!(p.write(&mut out, &[]).unwrap());
    assert!(p.write(&mut out, &[flow(2)]).unwrap());
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("TIME"), "{text}");
    assert!(lines[0].trim_end().ends_with("BG"), "{text}");
    assert!(lines[1].contains("clinic/frontend") && lines[2].contains("records/notes"));
}

#[test]
fn json_is_one_document_and_a_stream_is_one_object_per_line() {
    let flows = [flow(1), flow(2)];
    let mut once = Vec::new();
    Printer::new(Format::Json, false, None)
        .write(&mut once, &flows)
        .unwrap();
    let doc: Vec<StoredFlow> = serde_json::from_slice(&once).unwrap();
    assert_eq!(doc, flows);
    for format in [Format::Json, Format::Jsonl] {
        let mut p = Printer::new(format, true, None);
        let mut out = Vec::new();
        p.write(&mut out, &flows[..1]).unwrap();
        p.write(&mut out, &[]).unwrap();
        p.write(&mut out, &flows[1..]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<StoredFlow> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, flows, "{format:?}: {text}");
    }
}

/// A writer whose reader has gone away.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_closed_pipe_stops_the_output_quietly() {
    let mut p = Printer::new(Format::Jsonl, true, None);
    assert!(!p.write(&mut ClosedPipe, &[flow(1)]).unwrap());
}
