//! Everything that must fail closed, each with its own answer and metric: bad client
//! certificates and TLS versions at the inbound port, plaintext, quarantine (new and
//! live connections), oversized and slow headers, upstream failures, and a destination
//! agent with the wrong identity.

use std::time::{Duration, Instant};

use reqwest::Method;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wardmesh_proto::operator::QuarantineRequest;
use wardmesh_proto::paths;
use wardmesh_tests::TestMesh;
use wardmesh_tests::agents::{EchoApp, TestAgent, service};

use super::certs::{self, Leaf};
use super::{A, B, Mesh, NOTES_URL, eventually, id, proxy_client, send};

const HOUR: Duration = Duration::from_secs(3600);

fn handshake_errors(agent: &TestAgent, dir: &str, reason: &str) -> f64 {
    agent.metric(
        "wardmesh_tls_handshake_errors_total",
        &[("direction", dir), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_each_bad_client_with_its_own_reason() {
    let m = Mesh::start().await;
    let b_addr = m.b.inbound();
    let bundle = m.cp.bundle();
    let signer = certs::signer(&m.mesh);
    let now = OffsetDateTime::now_utc();

    // Control: a valid SVID for A, made outside any agent, gets through.
    let valid = certs::issue(&signer, A, now, HOUR);
    let ok = certs::raw_request(b_addr, certs::client(&bundle, Some(&valid), false), "/raw").await;
    let ok = ok.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains(A), "the app saw the caller: {ok}");

    let other_ca = TestMesh::new();
    let unknown_ca = certs::issue(&certs::signer(&other_ca), A, now, HOUR);
    let foreign =
        certs::foreign_trust_domain(&m.mesh, "spiffe://evil.example/ns/clinic/sa/frontend");
    let expired = certs::issue(&signer, A, now - time::Duration::hours(3), HOUR);
    let cases: Vec<(&str, Option<&Leaf>, bool, &str)> = vec![
        (
            "cert from an unknown CA",
            Some(&unknown_ca),
            false,
            "unknown_ca",
        ),
        (
            "cert from another trust domain",
            Some(&foreign),
            false,
            "bad_identity",
        ),
        ("expired cert", Some(&expired), false, "expired"),
        ("no client cert", None, false, "no_client_cert"),
        (
            "TLS 1.2-only client",
            Some(&valid),
            true,
            "protocol_version",
        ),
    ];
    for (what, leaf, tls12, reason) in cases {
        let before = handshake_errors(&m.b, "inbound", reason);
        let r = certs::raw_request(b_addr, certs::client(&bundle, leaf, tls12), "/bad").await;
        assert!(r.is_err(), "{what}: got an answer {r:?}");
        eventually(
            &format!("{what}: metric {reason}"),
            Duration::from_secs(5),
            || handshake_errors(&m.b, "inbound", reason) == before + 1.0,
        )
        .await;
        eprintln!("{what}: refused ({}), reason={reason}", r.unwrap_err());
    }

    // Plaintext HTTP to the mesh port: closed without an answer.
    let mut tcp = TcpStream::connect(b_addr).await.unwrap();
    tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: notes.clinic\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed: {read:?} {out:?}"
    );
    eventually("metric not_tls", Duration::from_secs(5), || {
        handshake_errors(&m.b, "inbound", "not_tls") == 1.0
    })
    .await;

    assert_eq!(
        m.app.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the control got through"
    );
    m.stop().await;
}

async fn quarantine(m: &Mesh, who: &str) {
    let q =
        m.cp.call(
            &m.cp.client(None),
            Method::POST,
            paths::QUARANTINE,
            Some(&m.cp.admin_token),
            Some(&QuarantineRequest {
                spiffe_id: who.into(),
                reason: "dataplane test".into(),
            }),
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_cuts_live_connections_and_refuses_new_ones() {
    let m = Mesh::start().await;
    let c = m.client();
    assert_eq!(send(c.get(format!("{NOTES_URL}/before"))).await.status, 200);
    assert_eq!(
        m.b.metric("wardmesh_open_connections", &[("direction", "inbound")]),
        1.0
    );

    quarantine(&m, A).await;
    let took = eventually(
        "B's deny-list to hold A (via sync)",
        Duration::from_secs(5),
        || m.b.agent.identity().deny_list().contains(&id(A)),
    )
    .await;
    eprintln!("deny-list reached B in {took:?}");
    // The pooled connection from A is closed by B, not left to finish.
    eventually(
        "B to close A's live connection",
        Duration::from_secs(5),
        || {
            m.b.metric(
                "wardmesh_connections_terminated_total",
                &[("direction", "inbound"), ("reason", "quarantined")],
            ) == 1.0
                && m.b
                    .metric("wardmesh_open_connections", &[("direction", "inbound")])
                    == 0.0
        },
    )
    .await;

    // A new connection from A is refused after the handshake.
    let r = send(c.get(format!("{NOTES_URL}/after"))).await;
    assert_eq!(r.status, 502, "{}", r.json);
    assert_eq!(r.json["error"], "upstream_error");
    eventually(
        "quarantined handshake metric",
        Duration::from_secs(5),
        || handshake_errors(&m.b, "inbound", "quarantined") >= 1.0,
    )
    .await;
    assert_eq!(m.app.requests.load(std::sync::atomic::Ordering::Relaxed), 1);

    // And A refuses to call a quarantined destination at all.
    quarantine(&m, B).await;
    eventually("A's deny-list to hold B", Duration::from_secs(5), || {
        m.a.agent.identity().deny_list().contains(&id(B))
    })
    .await;
    let r = send(c.get(format!("{NOTES_URL}/to-quarantined"))).await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.json["error"], "destination_quarantined");
    let q = [
        ("protocol", "http1"),
        ("outcome", "destination_quarantined"),
    ];
    assert_eq!(m.a.metric("wardmesh_outbound_requests_total", &q), 1.0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_slow_headers_are_cut_off() {
    let m = Mesh::start().await;
    let b_addr = m.b.inbound();
    let valid = certs::issue(&certs::signer(&m.mesh), A, OffsetDateTime::now_utc(), HOUR);
    let config = certs::client(&m.cp.bundle(), Some(&valid), false);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::IpAddress(b_addr.ip().into());

    // 20 KiB of header against the 16 KiB limit.
    let mut tls = connector
        .connect(name.clone(), TcpStream::connect(b_addr).await.unwrap())
        .await
        .unwrap();
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: notes.clinic\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    tls.write_all(big.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let too_large = [("protocol", "http1"), ("outcome", "headers_too_large")];
    eventually("431 metric", Duration::from_secs(5), || {
        m.b.metric("wardmesh_inbound_requests_total", &too_large) == 1.0
    })
    .await;

    // Slowloris: one header byte every 200 ms; the 2 s header timeout (test config)
    // closes the connection.
    let tls = connector
        .connect(name, TcpStream::connect(b_addr).await.unwrap())
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        (started.elapsed(), out)
    });
    wr.write_all(b"GET /slow HTTP/1.1\r\nHost: notes.clinic\r\nx-slow: ")
        .await
        .unwrap();
    for _ in 0..50 {
        if reader.is_finished() || wr.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (closed_after, out) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains(" 200 "),
        "no answer to a slow request"
    );
    let timeouts = [("protocol", "http1"), ("outcome", "header_timeout")];
    eventually("header timeout metric", Duration::from_secs(5), || {
        m.b.metric("wardmesh_inbound_requests_total", &timeouts) == 1.0
    })
    .await;
    eprintln!("slowloris connection closed after {closed_after:?}");
    assert_eq!(m.app.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_and_wrong_identities_answer_with_reasons() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let app = EchoApp::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = TestAgent::start(&cp, B, |c| {
        c.inbound.as_mut().unwrap().app = Some(closed);
        c.allow = vec![id(A)];
    })
    .await;
    let slow_id = "spiffe://wardmesh.local/ns/clinic/sa/slow-api";
    let app_addr = app.addr;
    let slow = TestAgent::start(&cp, slow_id, |c| {
        let i = c.inbound.as_mut().unwrap();
        i.app = Some(app_addr);
        i.upstream_timeout_ms = 500;
        c.allow = vec![id(A)];
    })
    .await;
    let someone_else = id("spiffe://wardmesh.local/ns/clinic/sa/someone-else");
    let (down_in, slow_in) = (down.inbound(), slow.inbound());
    let a = TestAgent::start(&cp, A, |c| {
        c.outbound.as_mut().unwrap().services = vec![
            service("down.clinic", "down.clinic:80", down_in, &id(B)),
            service("slow.clinic", "slow.clinic:80", slow_in, &id(slow_id)),
            // B's agent really listens there, but presents B, not someone-else.
            service("wrong.clinic", "wrong.clinic:80", down_in, &someone_else),
        ];
    })
    .await;
    let c = proxy_client(&a);
    let cases = [
        ("http://down.clinic/x", 503, "upstream_unavailable"),
        ("http://slow.clinic/sleep/3000", 504, "upstream_timeout"),
        ("http://wrong.clinic/x", 502, "wrong_server_identity"),
        ("http://unknown.example/x", 502, "unknown_destination"),
    ];
    for (url, status, error) in cases {
        let r = send(c.get(url)).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (status, Some(error)),
            "{url}: {}",
            r.json
        );
        assert!(
            r.json["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{}",
            r.json
        );
        assert_eq!(r.headers["x-wardmesh-error"], error);
        eprintln!("{url}: {status} {error}: {}", r.json["reason"]);
    }
    assert_eq!(
        down.metric(
            "wardmesh_inbound_requests_total",
            &[("outcome", "upstream_unavailable")]
        ),
        1.0
    );
    assert_eq!(
        slow.metric(
            "wardmesh_inbound_requests_total",
            &[("outcome", "upstream_timeout")]
        ),
        1.0
    );
    assert_eq!(handshake_errors(&a, "outbound", "bad_identity"), 1.0);
    for outcome in [
        "upstream_unavailable",
        "upstream_timeout",
        "wrong_server_identity",
        "unknown_destination",
    ] {
        assert_eq!(
            a.metric("wardmesh_outbound_requests_total", &[("outcome", outcome)]),
            1.0,
            "{outcome}"
        );
    }
    a.shutdown().await;
    down.shutdown().await;
    slow.shutdown().await;
    cp.cp.shutdown().await;
}
