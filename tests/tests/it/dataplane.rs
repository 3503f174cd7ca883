//! The data plane end to end (DESIGN.md §3): a control plane with a real CA, agents
//! started in-process with join tokens, an echo app behind agent B, and clients that
//! call through agent A's outbound port (explicit proxy mode) or straight at B's
//! inbound port. Real sockets and real TLS throughout, loopback only.

mod certs;
mod negative;
mod protocols;
mod rotation;

use std::time::{Duration, Instant};

use serde_json::Value;
use wardmesh_agent::authz::AllowList;
use wardmesh_agent::config::AgentConfig;
use wardmesh_identity::SpiffeId;
use wardmesh_tests::agents::{EchoApp, TestAgent, service};
use wardmesh_tests::{TestCp, TestMesh};

pub(crate) const A: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
pub(crate) const B: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";
pub(crate) const NOTES_URL: &str = "http://notes.clinic";

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Control plane, echo app, B (fronting the app, allowing A) and A (knowing B as
/// `notes.clinic`).
pub(crate) struct Mesh {
    pub mesh: TestMesh,
    pub cp: TestCp,
    pub app: EchoApp,
    pub a: TestAgent,
    pub b: TestAgent,
}

impl Mesh {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// `configure_b` runs after the defaults (app, allow A).
    pub(crate) async fn start_with(configure_b: impl FnOnce(&mut AgentConfig)) -> Self {
        let mesh = TestMesh::new();
        let cp = mesh.start().await;
        let app = EchoApp::start().await;
        let app_addr = app.addr;
        let b = TestAgent::start(&cp, B, |c| {
            c.inbound.as_mut().unwrap().app = Some(app_addr);
            c.allow = vec![id(A)];
            configure_b(c);
        })
        .await;
        let b_inbound = b.inbound();
        let a = TestAgent::start(&cp, A, |c| {
            c.outbound.as_mut().unwrap().services = vec![service(
                "notes.clinic",
                "notes.clinic:80",
                b_inbound,
                &id(B),
            )];
        })
        .await;
        Self {
            mesh,
            cp,
            app,
            a,
            b,
        }
    }

    pub(crate) fn client(&self) -> reqwest::Client {
        proxy_client(&self.a)
    }

    pub(crate) async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        self.cp.cp.shutdown().await;
    }
}

/// A reqwest client that uses `agent`'s outbound port as its HTTP proxy.
pub(crate) fn proxy_client(agent: &TestAgent) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", agent.outbound())).unwrap())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Status, headers and JSON body (Null when not JSON).
pub(crate) struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    Reply {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Polls `cond` every 25 ms for up to `limit`.
pub(crate) async fn eventually(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_crosses_both_agents_with_the_callers_identity() {
    let m = Mesh::start().await;
    let c = m.client();
    let r = send(
        c.get(format!("{NOTES_URL}/patients/7/notes?full=1"))
            .header(
                "x-wardmesh-peer-id",
                "spiffe://wardmesh.local/ns/evil/sa/forged",
            )
            .header("x-request-id", "trace-123")
            .header("x-purpose-of-use", "TREAT"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let seen = &r.json["headers"];
    assert_eq!(
        seen["x-wardmesh-peer-id"],
        serde_json::json!([A]),
        "forged id replaced: {seen}"
    );
    assert_eq!(seen["x-request-id"], serde_json::json!(["trace-123"]));
    assert_eq!(seen["host"], serde_json::json!(["notes.clinic"]));
    assert_eq!(seen["x-purpose-of-use"], serde_json::json!(["TREAT"]));
    assert!(seen.get("proxy-connection").is_none(), "{seen}");
    assert_eq!(r.json["path"], "/patients/7/notes?full=1");
    assert_eq!(
        r.json["version"], "HTTP/1.1",
        "back to HTTP/1.1 for the app"
    );
    assert_eq!(r.headers["x-request-id"], "trace-123");

    // Without a request id, A makes one and the app and the caller see the same.
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = send(
            c.post(format!("{NOTES_URL}/n/{i}"))
                .body(vec![b'x'; 1000 * i]),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json["body_len"],
            1000 * i,
            "request bodies cross both agents"
        );
        let sent = r.json["headers"]["x-request-id"][0]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(r.headers["x-request-id"], sent.as_str());
        ids.push(sent);
    }
    ids.dedup();
    assert_eq!(ids.len(), 10, "a fresh id per request");

    assert_eq!(
        m.app.requests.load(std::sync::atomic::Ordering::Relaxed),
        11
    );
    let out = [("protocol", "http1"), ("outcome", "allowed")];
    assert_eq!(m.a.metric("wardmesh_outbound_requests_total", &out), 11.0);
    let inb = [("protocol", "http2"), ("outcome", "allowed")];
    assert_eq!(
        m.b.metric("wardmesh_inbound_requests_total", &inb),
        11.0,
        "agents talk HTTP/2"
    );
    assert_eq!(
        m.b.metric(
            "wardmesh_request_duration_seconds",
            &[("direction", "inbound")]
        ),
        11.0
    );
    // Eleven requests, one pooled mesh connection.
    assert_eq!(
        m.b.metric("wardmesh_open_connections", &[("direction", "inbound")]),
        1.0
    );

    // /config_dump shows the data plane, without secrets.
    let dump: Value = reqwest::Client::new()
        .get(format!("http://{}/config_dump", m.a.agent.admin_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        dump["config"]["outbound"]["services"][0]["name"],
        "notes.clinic"
    );
    assert!(dump["config"]["inbound"]["listen"].is_string());
    assert!(
        !dump.to_string().contains("wmjt_"),
        "no join token in the dump"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_is_403_json_naming_rule_revision_and_request_id() {
    let m = Mesh::start_with(|c| c.allow = vec![]).await;
    let r = send(m.client().get(format!("{NOTES_URL}/patients/7"))).await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json["error"], "forbidden");
    assert_eq!(r.json["rule"], "default-deny");
    let revision = r.json["policy_revision"].as_str().unwrap();
    assert_eq!(revision, AllowList::new([]).revision());
    let rid = r.json["request_id"].as_str().unwrap();
    assert_eq!(r.headers["x-request-id"], rid);
    assert!(r.json["reason"].as_str().unwrap().contains(A), "{}", r.json);

    assert_eq!(m.app.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(
        m.b.metric("wardmesh_inbound_denies_total", &[("rule", "default-deny")]),
        1.0
    );
    let denied = [("protocol", "http2"), ("outcome", "denied")];
    assert_eq!(m.b.metric("wardmesh_inbound_requests_total", &denied), 1.0);
    let a_denied = [("protocol", "http1"), ("outcome", "denied")];
    assert_eq!(
        m.a.metric("wardmesh_outbound_requests_total", &a_denied),
        1.0
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_authorizer_decides_the_next_request_without_failures() {
    let m = Mesh::start().await;
    let authz = m.b.agent.authorizer().clone();
    let c = m.client();
    // Background traffic through every swap: only 200 or 403, never an error.
    let bg = {
        let c = c.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut seen = (0u32, 0u32);
            for _ in 0..300 {
                if Instant::now() > deadline {
                    break;
                }
                match c.get(format!("{NOTES_URL}/bg")).send().await {
                    Ok(r) if r.status() == 200 => seen.0 += 1,
                    Ok(r) if r.status() == 403 => seen.1 += 1,
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
            seen
        })
    };
    for round in 0..6 {
        let allow = round % 2 == 1;
        let list = if allow {
            AllowList::new([id(A)])
        } else {
            AllowList::new([])
        };
        authz.set(std::sync::Arc::new(list));
        for _ in 0..10 {
            let r = send(c.get(format!("{NOTES_URL}/fg"))).await;
            assert_eq!(
                r.status,
                if allow { 200 } else { 403 },
                "round {round}: {}",
                r.json
            );
        }
    }
    let (ok, denied) = bg.await.unwrap();
    assert!(
        ok > 0 && denied > 0,
        "background saw both decisions: {ok} ok, {denied} denied"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_then_refuses() {
    let Mesh {
        mesh: _mesh,
        cp,
        app: _app,
        a,
        b,
    } = Mesh::start().await;
    let c = proxy_client(&a);
    let warm = send(c.get(format!("{NOTES_URL}/warm"))).await;
    assert_eq!(warm.status, 200);
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { send(c.get(format!("{NOTES_URL}/sleep/1500"))).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    b.shutdown().await;
    let took = started.elapsed();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished: {}", r.json);
    assert!(
        took >= Duration::from_millis(900),
        "waited for it ({took:?})"
    );
    assert!(
        took < Duration::from_secs(3),
        "within the drain deadline ({took:?})"
    );

    let after = send(c.get(format!("{NOTES_URL}/after"))).await;
    assert_eq!(after.status, 503, "{}", after.json);
    assert_eq!(after.json["error"], "upstream_unavailable");
    a.shutdown().await;
    cp.cp.shutdown().await;
}
