//! Identity lifecycle with real agents against a real control plane: root rotation with
//! zero restarts while mTLS handshakes between the agents keep succeeding, and
//! quarantine reaching every agent's deny-list within seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wardmesh_agent::app::RunningAgent;
use wardmesh_agent::config::{AgentConfig, AttestationConfig, SecretString};
use wardmesh_identity::SpiffeId;
use wardmesh_identity::tls::peer_spiffe_id;
use wardmesh_proto::operator::QuarantineRequest;
use wardmesh_proto::paths;
use wardmesh_tests::{TestCp, TestMesh};

const A: &str = "spiffe://wardmesh.local/ns/clinic/sa/frontend";
const B: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

async fn start_agent(cp: &TestCp, id: &str) -> RunningAgent {
    let token = cp.join_token(id).await;
    let bundle = cp
        .home
        .join(format!("bundle-{}.pem", id.rsplit('/').next().unwrap()));
    std::fs::write(&bundle, cp.bundle_pem()).unwrap();
    let mut cfg = AgentConfig::new(
        cp.url.clone(),
        bundle,
        AttestationConfig::JoinToken {
            token: SecretString::new(token),
        },
    );
    cfg.admin_addr = "127.0.0.1:0".parse().unwrap();
    cfg.sync_wait_seconds = 5;
    let agent = wardmesh_agent::app::start(cfg, prometheus::Registry::new())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), agent.identity().wait_ready())
        .await
        .expect("identity within 20 s")
        .expect("identity");
    agent
}

/// Serves mTLS with B's current server config (re-read per connection, like the agent's
/// inbound) and echoes one line, prefixed with the verified client ID.
async fn mtls_echo(b: &RunningAgent) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = b.identity().clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Some(state) = handle.current() else {
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(state.server_config.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates())
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let mut buf = [0u8; 64];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let _ = tls
                    .write_all(format!("{peer} {}", String::from_utf8_lossy(&buf[..n])).as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// One mTLS round trip from A (current client config) to B; checks B's identity.
async fn round_trip(a: &RunningAgent, addr: std::net::SocketAddr) -> Result<(), String> {
    let state = a.identity().current().ok_or("no identity")?;
    let connector = tokio_rustls::TlsConnector::from(state.client_config.clone());
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("notes-api").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server = peer_spiffe_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
    if server != SpiffeId::parse(B).unwrap() {
        return Err(format!("wrong server {server}"));
    }
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out != format!("{A} ping") {
        return Err(format!("unexpected answer {out:?}"));
    }
    Ok(())
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_with_zero_restarts_and_zero_failed_handshakes() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let a = start_agent(&cp, A).await;
    let b = start_agent(&cp, B).await;
    let addr = mtls_echo(&b).await;
    round_trip(&a, addr).await.unwrap();
    let old_authority = a.identity().current().unwrap().authority_id.clone();

    // A bounded handshake loop runs through the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let traffic = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let a_handle = a.identity().clone();
        let a_ref = Arc::new(a);
        let a2 = a_ref.clone();
        let t = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match round_trip(&a2, addr).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        (t, a_ref, a_handle)
    };
    let (task, a, a_handle) = traffic;

    let dir = mesh.ca_dir();
    let now = time::OffsetDateTime::now_utc;
    let st = dir
        .rotate_prepare(&mesh.seal, now(), Default::default())
        .unwrap();
    cp.cp.ca.reload(now(), true).unwrap();
    wait_for(
        "both agents to hold the 2-root bundle",
        Duration::from_secs(15),
        || {
            [a_handle.current(), b.identity().current()]
                .iter()
                .all(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.bundle.revision == st.revision && s.bundle.roots.len() == 2
                    })
                })
        },
    )
    .await;

    let st = dir.rotate_activate().unwrap();
    cp.cp.ca.reload(now(), true).unwrap();
    let took = wait_for(
        "both agents to renew from the new authority",
        Duration::from_secs(15),
        || {
            [a_handle.current(), b.identity().current()]
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.authority_id == st.active))
        },
    )
    .await;
    eprintln!("agents reissued {took:?} after activation");

    let st = dir.rotate_retire().unwrap();
    cp.cp.ca.reload(now(), true).unwrap();
    wait_for(
        "both agents to drop the old root",
        Duration::from_secs(15),
        || {
            [a_handle.current(), b.identity().current()]
                .iter()
                .all(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.bundle.revision == st.revision && s.bundle.roots.len() == 1
                    })
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed round trips, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok >= 20, "only {ok} round trips ran");
    assert_ne!(a_handle.current().unwrap().authority_id, old_authority);
    eprintln!("{ok} mTLS round trips across prepare/activate/retire, 0 failed");

    // The control plane saw every agent converge.
    let agents = cp
        .call::<()>(
            &cp.client(None),
            Method::GET,
            paths::AGENTS,
            Some(&cp.admin_token),
            None,
        )
        .await;
    for ag in agents.body.as_array().unwrap() {
        assert_eq!(ag["cert_authority_id"], st.active, "{ag}");
    }
    match Arc::try_unwrap(a) {
        Ok(a) => a.shutdown().await,
        Err(_) => panic!("agent still shared"),
    }
    b.shutdown().await;
    cp.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_reaches_every_agent_within_seconds() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let a = start_agent(&cp, A).await;
    let b = start_agent(&cp, B).await;
    let bad = SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/compromised").unwrap();
    let q = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::QUARANTINE,
            Some(&cp.admin_token),
            Some(&QuarantineRequest {
                spiffe_id: bad.to_string(),
                reason: "incident 42".into(),
            }),
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.body);
    let took = wait_for("deny-list on both agents", Duration::from_secs(5), || {
        a.identity().deny_list().contains(&bad) && b.identity().deny_list().contains(&bad)
    })
    .await;
    eprintln!("quarantine reached both agents in {took:?}");
    assert!(took < Duration::from_secs(3));

    let u = cp
        .call::<()>(
            &cp.client(None),
            Method::DELETE,
            &format!("{}?spiffe_id={bad}", paths::QUARANTINE),
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(u.status, 200);
    wait_for("deny-list cleared", Duration::from_secs(5), || {
        !a.identity().deny_list().contains(&bad) && !b.identity().deny_list().contains(&bad)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    cp.cp.shutdown().await;
}
