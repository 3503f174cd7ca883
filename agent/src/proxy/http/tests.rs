use http::Request;

use super::*;

const PEER: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";

fn parts(req: Request<()>) -> Parts {
    req.into_parts().0
}

#[test]
fn request_id_keeps_sane_tokens_and_replaces_the_rest() {
    let mut h = HeaderMap::new();
    let fresh = request_id(&h);
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, request_id(&h));
    // Fresh ids sort by time (the store's request-id index appends instead of scattering).
    std::thread::sleep(std::time::Duration::from_millis(2));
    let later = request_id(&h);
    assert!(later > fresh, "{later} should sort after {fresh}");
    h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123_x.y:z"));
    assert_eq!(request_id(&h), "abc-123_x.y:z");
    for bad in ["has space", "semi;colon", "", &"x".repeat(129)] {
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(bad).unwrap());
        assert_ne!(request_id(&h), bad, "{bad:?}");
    }
}

#[test]
fn hop_by_hop_headers_go_including_connection_named_ones() {
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret-hop"),
    );
    h.insert("x-secret-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        "proxy-authorization",
        HeaderValue::from_static("Basic eA=="),
    );
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-kept"]);
}

#[test]
fn authority_table() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("http://notes.clinic/x", None, Some("notes.clinic:80")),
        (
            "http://notes.clinic:8080/x",
            Some("ignored:1"),
            Some("notes.clinic:8080"),
        ),
        ("/x", Some("Billing.Clinic:81"), Some("billing.clinic:81")),
        ("/x", Some("127.0.0.1"), Some("127.0.0.1:80")),
        ("/x", None, None),
        ("http://user@notes.clinic/x", None, None),
        ("/x", Some("bad host"), None),
    ];
    for (uri, host, want) in cases {
        let mut b = Request::builder().uri(*uri);
        if let Some(h) = host {
            b = b.header(HOST, *h);
        }
        let p = parts(b.body(()).unwrap());
        let got = request_authority(&p).map(|a| a.to_string());
        assert_eq!(got.as_deref(), *want, "{uri} host={host:?}");
    }
}

#[test]
fn app_request_sets_agent_headers_and_drops_forgeries() {
    let mut p = parts(
        Request::builder()
            .version(Version::HTTP_2)
            .uri("http://notes.clinic/patients/1/notes?full=1")
            .header(PEER_ID_HEADER, "spiffe://wardmesh.local/ns/evil/sa/forged")
            .header(PEER_ID_HEADER, "spiffe://wardmesh.local/ns/evil/sa/forged2")
            .header("x-request-id", "rid-1")
            .header("te", "trailers")
            .header("x-app", "1")
            .body(())
            .unwrap(),
    );
    let peer = SpiffeId::parse(PEER).unwrap();
    to_app_request(
        &mut p,
        "127.0.0.1:18080".parse().unwrap(),
        Some(&peer),
        "rid-1",
    )
    .unwrap();
    assert_eq!(
        p.uri.to_string(),
        "http://127.0.0.1:18080/patients/1/notes?full=1"
    );
    assert_eq!(p.version, Version::HTTP_11);
    assert_eq!(p.headers[HOST], "notes.clinic");
    let peers: Vec<_> = p.headers.get_all(&PEER_ID_HEADER).iter().collect();
    assert_eq!(peers, [PEER]);
    assert_eq!(p.headers[&REQUEST_ID_HEADER], "rid-1");
    assert!(p.headers.get("te").is_none());
    assert_eq!(p.headers["x-app"], "1");

    // Permissive plaintext: no identity, and a forged one still never passes.
    let mut p = parts(
        Request::builder()
            .uri("/x")
            .header(HOST, "svc:8080")
            .header(PEER_ID_HEADER, PEER)
            .body(())
            .unwrap(),
    );
    to_app_request(&mut p, "127.0.0.1:9".parse().unwrap(), None, "r").unwrap();
    assert!(p.headers.get(&PEER_ID_HEADER).is_none());
    assert_eq!(p.headers[HOST], "svc:8080");
}

#[test]
fn mesh_request_is_h2_with_authority_and_no_forged_peer() {
    let mut p = parts(
        Request::builder()
            .uri("/notes")
            .header(HOST, "notes.clinic")
            .header(PEER_ID_HEADER, PEER)
            .header("proxy-connection", "keep-alive")
            .body(())
            .unwrap(),
    );
    let authority = HostPort::parse("notes.clinic", Some(80)).unwrap();
    to_mesh_request(&mut p, &authority, "rid").unwrap();
    assert_eq!(p.uri.to_string(), "http://notes.clinic/notes");
    assert_eq!(p.version, Version::HTTP_2);
    assert!(p.headers.get(HOST).is_none());
    assert!(p.headers.get(&PEER_ID_HEADER).is_none());
    assert!(p.headers.get("proxy-connection").is_none());
    assert_eq!(p.headers[&REQUEST_ID_HEADER], "rid");
}

#[test]
fn passthrough_request_keeps_host() {
    let mut p = parts(
        Request::builder()
            .uri("http://example.internal:8080/a?b")
            .body(())
            .unwrap(),
    );
    let target = HostPort::parse("example.internal:8080", None).unwrap();
    to_passthrough_request(&mut p, &target).unwrap();
    assert_eq!(p.uri.to_string(), "http://example.internal:8080/a?b");
    assert_eq!(p.headers[HOST], "example.internal:8080");
}

#[tokio::test]
async fn deny_body_names_rule_revision_and_request_id() {
    let d = Decision {
        allow: false,
        rule: "default-deny".into(),
        reason: "not on the allow-list".into(),
        policy_revision: "allowlist-abc".into(),
        obligations: Vec::new(),
        dry_run: false,
    };
    let resp = deny_response(&d, "rid-9");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(resp.headers()[&ERROR_HEADER], "forbidden");
    assert_eq!(peer_outcome(resp.headers()), Outcome::Denied);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "forbidden");
    assert_eq!(v["rule"], "default-deny");
    assert_eq!(v["policy_revision"], "allowlist-abc");
    assert_eq!(v["request_id"], "rid-9");
    assert_eq!(v["reason"], "not on the allow-list");
}

#[test]
fn failure_status_table() {
    let cases = [
        (Outcome::UpstreamUnavailable, 503, "upstream_unavailable"),
        (Outcome::UpstreamTimeout, 504, "upstream_timeout"),
        (Outcome::UpstreamError, 502, "upstream_error"),
        (Outcome::UnknownDestination, 502, "unknown_destination"),
        (Outcome::WrongServerIdentity, 502, "wrong_server_identity"),
        (
            Outcome::DestinationQuarantined,
            403,
            "destination_quarantined",
        ),
        (Outcome::BadRequest, 400, "bad_request"),
    ];
    for (o, status, code) in cases {
        assert_eq!(
            failure_status(o),
            (StatusCode::from_u16(status).unwrap(), code)
        );
        let resp = failure_response(o, "why", "rid");
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()[&ERROR_HEADER], code);
    }
    let mut h = HeaderMap::new();
    assert_eq!(peer_outcome(&h), Outcome::Allowed);
    h.insert(
        ERROR_HEADER,
        HeaderValue::from_static("upstream_unavailable"),
    );
    assert_eq!(peer_outcome(&h), Outcome::UpstreamUnavailable);
    h.insert(ERROR_HEADER, HeaderValue::from_static("something_new"));
    assert_eq!(peer_outcome(&h), Outcome::UpstreamError);
}

#[test]
fn response_fix_echoes_request_id_and_client_version() {
    let mut resp = Response::builder()
        .version(Version::HTTP_2)
        .header("connection", "close")
        .body(())
        .unwrap();
    fix_response(&mut resp, Version::HTTP_11, "rid");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert!(resp.headers().get("connection").is_none());
    assert_eq!(resp.headers()[&REQUEST_ID_HEADER], "rid");
}
