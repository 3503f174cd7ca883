//! Protocols beyond HTTP/1.1 through a proxy: HTTP/2 from the app (h2c, prior
//! knowledge), opaque TCP through `CONNECT`, and external clients: the real `curl` using
//! the outbound port as its proxy and `openssl s_client` at the inbound port.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wardmesh_agent::authz::AllowList;
use wardmesh_tests::agents::{TestAgent, service, tcp_echo};
use wardmesh_tests::prereq;

use super::certs;
use super::{A, Mesh, NOTES_URL, eventually, id, proxy_client, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_from_the_app_reaches_an_http1_backend() {
    let m = Mesh::start().await;
    let tcp = TcpStream::connect(m.a.outbound()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://notes.clinic/h2/{i}"))
            .header(
                "x-wardmesh-peer-id",
                "spiffe://wardmesh.local/ns/evil/sa/forged",
            )
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["path"], format!("/h2/{i}"));
        assert_eq!(v["headers"]["x-wardmesh-peer-id"], serde_json::json!([A]));
    }
    let h2 = [("protocol", "http2"), ("outcome", "allowed")];
    assert_eq!(m.a.metric("wardmesh_outbound_requests_total", &h2), 3.0);
    m.stop().await;
}

/// Sends `CONNECT target` on a fresh connection to `outbound`; returns the response
/// head and the stream.
async fn connect(outbound: std::net::SocketAddr, target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_opaque_tcp_with_identity_only_authorization() {
    let m = Mesh::start().await;
    let (echo, _echo_task) = tcp_echo().await;
    let tcp_id = "spiffe://wardmesh.local/ns/clinic/sa/echo-tcp";
    let c = TestAgent::start(&m.cp, tcp_id, |cfg| {
        cfg.inbound.as_mut().unwrap().app = Some(echo);
        cfg.allow = vec![id(A)];
    })
    .await;
    // A second A-side agent that knows the echo service (A's config is fixed at start).
    let a2_id = A;
    let c_in = c.inbound();
    let a2 = TestAgent::start(&m.cp, a2_id, |cfg| {
        cfg.outbound.as_mut().unwrap().services = vec![service(
            "echo.clinic",
            "echo.clinic:7000",
            c_in,
            &id(tcp_id),
        )];
    })
    .await;

    let (head, mut s) = connect(a2.outbound(), "echo.clinic:7000").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for msg in [
        &b"ping over the mesh"[..],
        &[0u8, 1, 2, 255, 254][..],
        &vec![7u8; 100_000][..],
    ] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg, "bytes round-trip");
    }
    drop(s);
    let tcp = [("protocol", "tcp"), ("outcome", "allowed")];
    assert_eq!(a2.metric("wardmesh_outbound_requests_total", &tcp), 1.0);
    eventually(
        "C counted the TCP connection",
        Duration::from_secs(5),
        || c.metric("wardmesh_inbound_requests_total", &tcp) == 1.0,
    )
    .await;

    // Identity-only deny: the tunnel opens, then C closes it without a byte.
    c.agent.authorizer().set(Arc::new(AllowList::new([])));
    let (head, mut s) = connect(a2.outbound(), "echo.clinic:7000").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let _ = s.write_all(b"are you there?").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed: {read:?} {out:?}"
    );
    let denied = [("protocol", "tcp"), ("outcome", "denied")];
    eventually(
        "C counted the denied connection",
        Duration::from_secs(5),
        || {
            c.metric("wardmesh_inbound_requests_total", &denied) == 1.0
                && c.metric("wardmesh_inbound_denies_total", &[("rule", "default-deny")]) == 1.0
        },
    )
    .await;

    // An unknown CONNECT target is refused with a reason.
    let (head, _) = connect(a2.outbound(), "nowhere.example:22").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.contains("x-wardmesh-error: unknown_destination"),
        "{head}"
    );
    a2.shutdown().await;
    c.shutdown().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uses_the_outbound_port_as_its_proxy() {
    if !prereq::command("curl_uses_the_outbound_port_as_its_proxy", "curl") {
        return;
    }
    let m = Mesh::start().await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy"])
        .arg(format!("http://{}", m.a.outbound()))
        .args([
            "-H",
            "x-wardmesh-peer-id: spiffe://wardmesh.local/ns/evil/sa/forged",
        ])
        .args(["-w", "\n%{http_code}", "http://notes.clinic/from-curl"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["path"], "/from-curl");
    assert_eq!(v["headers"]["x-wardmesh-peer-id"], serde_json::json!([A]));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_needs_a_valid_svid_at_the_inbound_port() {
    if !prereq::command(
        "openssl_s_client_needs_a_valid_svid_at_the_inbound_port",
        "openssl",
    ) {
        return;
    }
    let m = Mesh::start().await;
    let dir = tempfile::tempdir().unwrap();
    let leaf = certs::issue(
        &certs::signer(&m.mesh),
        A,
        OffsetDateTime::now_utc(),
        Duration::from_secs(3600),
    );
    // s_client presents only the first certificate of -cert; the intermediate goes in
    // -cert_chain.
    let chain = leaf.chain_pem();
    let pems: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    std::fs::write(dir.path().join("cert.pem"), pems[0]).unwrap();
    std::fs::write(dir.path().join("chain.pem"), pems[1]).unwrap();
    std::fs::write(dir.path().join("key.pem"), leaf.key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), m.cp.bundle_pem()).unwrap();
    let connect = m.b.inbound().to_string();
    let s_client = |with_cert: bool| {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.current_dir(dir.path())
            .args([
                "s_client", "-connect", &connect, "-brief", "-tls1_3", "-alpn", "http/1.1",
            ])
            .args(["-CAfile", "bundle.pem", "-verify_return_error", "-ign_eof"]);
        if with_cert {
            cmd.args([
                "-cert",
                "cert.pem",
                "-cert_chain",
                "chain.pem",
                "-key",
                "key.pem",
            ]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let run = |mut cmd: tokio::process::Command| async move {
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /openssl HTTP/1.1\r\nHost: notes.clinic\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        drop(stdin);
        tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
            .await
            .expect("openssl finished")
            .unwrap()
    };

    let out = run(s_client(true)).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stderr.contains("CONNECTION ESTABLISHED"), "{stderr}");
    assert!(stderr.contains("TLSv1.3"), "{stderr}");
    assert!(
        stderr.contains("Verification: OK"),
        "server SVID verifies with the bundle: {stderr}"
    );
    assert!(stdout.starts_with("HTTP/1.1 200"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(A),
        "the app saw the SVID's identity: {stdout}"
    );

    let before = m.b.metric(
        "wardmesh_tls_handshake_errors_total",
        &[("direction", "inbound"), ("reason", "no_client_cert")],
    );
    let out = run(s_client(false)).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains("HTTP/1.1"),
        "no answer without a cert: {stdout}"
    );
    assert!(stderr.contains("certificate required"), "{stderr}");
    eventually("no_client_cert metric", Duration::from_secs(5), || {
        m.b.metric(
            "wardmesh_tls_handshake_errors_total",
            &[("direction", "inbound"), ("reason", "no_client_cert")],
        ) == before + 1.0
    })
    .await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_inbound_and_passthrough_outbound_carry_plaintext_only_when_asked() {
    let m = Mesh::start().await;
    let app_addr = m.app.addr;
    // A migration port: plaintext accepted, without identity (a forged one is stripped).
    let open = TestAgent::start(&m.cp, "spiffe://wardmesh.local/ns/clinic/sa/legacy", |c| {
        let i = c.inbound.as_mut().unwrap();
        i.app = Some(app_addr);
        i.permissive = true;
    })
    .await;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = send(
        plain
            .get(format!("http://{}/plain", open.inbound()))
            .header("x-wardmesh-peer-id", A),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(
        r.json["headers"].get("x-wardmesh-peer-id").is_none(),
        "{}",
        r.json
    );
    let pass = [("protocol", "http1"), ("outcome", "passthrough")];
    assert_eq!(open.metric("wardmesh_inbound_requests_total", &pass), 1.0);
    // Mesh TLS still works on the same port, with identity and authorization.
    let r = send(m.client().get(format!("{NOTES_URL}/still-mesh"))).await;
    assert_eq!(r.status, 200);

    // Outbound: a destination outside the mesh is refused unless passthrough is on.
    let target = format!("http://{app_addr}/outside");
    let r = send(m.client().get(&target)).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (502, Some("unknown_destination"))
    );
    let through = TestAgent::start(&m.cp, A, |c| {
        c.outbound.as_mut().unwrap().passthrough_unknown = true;
    })
    .await;
    let r = send(
        proxy_client(&through)
            .get(&target)
            .header("x-wardmesh-peer-id", A),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["path"], "/outside");
    assert!(
        r.json["headers"].get("x-wardmesh-peer-id").is_none(),
        "{}",
        r.json
    );
    assert_eq!(
        through.metric("wardmesh_outbound_requests_total", &pass),
        1.0
    );
    through.shutdown().await;
    open.shutdown().await;
    m.stop().await;
}
