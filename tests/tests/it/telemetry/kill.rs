//! `kill -9` of the agent that writes the records: agent B runs as its own process
//! (the real `wardmesh-agent` binary). The control plane is stopped first, so B's spool
//! holds records nobody has acknowledged when B is killed; after the control plane and B
//! are started again (same spool directory), every request that succeeded has exactly
//! one flow record.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::process::{Child, Command};
use wardmesh_tests::agents::{EchoApp, TestAgent, service};
use wardmesh_tests::netns::workspace_bin;
use wardmesh_tests::{TestCp, TestMesh};

use super::{LOAD, Outcomes, assert_exactly_once, flows_by_request, load, wait_for};
use crate::dataplane::{A, B, id, proxy_client};

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Agent B as a child process: inbound on `inbound`, admin on `admin`, spooling in
/// `spool`, the notes route declared PHI (fail-closed).
async fn spawn_b(
    cp: &TestCp,
    inbound: SocketAddr,
    admin: SocketAddr,
    app: SocketAddr,
    home: &Path,
) -> Child {
    let bundle = home.join("b-bundle.pem");
    std::fs::write(&bundle, cp.bundle_pem()).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("b.log"))
        .unwrap();
    let child = Command::new(workspace_bin("wardmesh-agent"))
        .args(["run", "--control-plane", &cp.url])
        .arg("--trust-bundle")
        .arg(&bundle)
        .args(["--admin-addr", &admin.to_string()])
        .args(["--inbound-listen", &inbound.to_string()])
        .args(["--outbound-listen", "127.0.0.1:0"])
        .args(["--app", &app.to_string(), "--allow", A])
        .args([
            "--routes",
            "/patients/{patient}/notes",
            "--audit-mode",
            "fail-closed",
        ])
        .arg("--spool-dir")
        .arg(home.join("b-spool"))
        .args(["--sync-wait-seconds", "5"])
        .env("WARDMESH_JOIN_TOKEN", cp.join_token(B).await)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Ready = identity obtained (the pseudonym key follows with the policy context;
    // the caller's first request waits for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("http://{admin}/ready"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return child;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent B did not become ready; see {}",
            home.join("b.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries one request (ids `<tag>-<n>`) until it succeeds (≤ 30 s).
async fn first_answer(client: &reqwest::Client, tag: &str) -> Outcomes {
    let mut out = Outcomes::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let rid = format!("{tag}-{n}");
        let r = client
            .get("http://notes.clinic/patients/p-0/notes")
            .header("x-request-id", &rid)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            out.ok.push(rid);
            return out;
        }
        out.failed.push(rid);
        assert!(tokio::time::Instant::now() < deadline, "B never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

/// A gauge from B's `/metrics`.
async fn b_metric(admin: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_loses_and_duplicates_no_flow() {
    let mesh = TestMesh::new();
    let home = mesh.path();
    let cp = mesh.start().await;
    let cp_addr = cp.cp.addr;
    let app = EchoApp::start().await;
    let (b_inbound, b_admin) = (free_port(), free_port());
    let b = spawn_b(&cp, b_inbound, b_admin, app.addr, &home).await;
    let a = TestAgent::start(&cp, A, |c| {
        c.outbound.as_mut().unwrap().services = vec![service(
            "notes.clinic",
            "notes.clinic:80",
            b_inbound,
            &id(B),
        )];
    })
    .await;
    let client = proxy_client(&a);
    // The first answer also proves B has the pseudonym key (a PHI route without it is
    // not answered).
    let mut outcomes = first_answer(&client, "warmup").await;
    let progress = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(load(client.clone(), "k9", LOAD, Arc::clone(&progress)));
    wait_for(&progress, LOAD / 4).await;
    cp.cp.shutdown().await;
    wait_for(&progress, LOAD / 2).await;
    let backlog = b_metric(b_admin, "wardmesh_spool_depth_records").await;
    assert!(
        backlog > 0.0,
        "with the control plane down, B's spool holds unshipped records"
    );
    let mut b = b;
    b.start_kill().unwrap(); // SIGKILL
    let status = b.wait().await.unwrap();
    assert!(!status.success(), "B was killed: {status:?}");

    // Requests while B is gone fail fast; the run ends.
    let run = run.await.unwrap();
    assert!(
        run.ok.len() as u64 >= LOAD / 2,
        "requests before the kill succeed: {} of {LOAD}",
        run.ok.len()
    );
    outcomes.extend(run);

    let mut cfg = mesh.config(None);
    cfg.listen = cp_addr;
    let cp = mesh.start_with(cfg).await;
    let b = spawn_b(&cp, b_inbound, b_admin, app.addr, &home).await;
    // A's pooled connections to the killed B may fail once more.
    outcomes.extend(first_answer(&client, "rewarm").await);
    let after = load(client, "after", LOAD / 4, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(after.failed, Vec::<String>::new(), "the restarted B serves");
    outcomes.extend(after);

    let by_request = flows_by_request(&cp.cp.store, outcomes.ok.len()).await;
    assert_exactly_once(&outcomes, &by_request);
    let log = std::fs::read_to_string(home.join("b.log")).unwrap_or_default();
    assert!(
        log.contains("pending_records"),
        "the restarted agent reported its recovered spool:\n{log}"
    );

    drop(b);
    a.shutdown().await;
    cp.cp.shutdown().await;
}
