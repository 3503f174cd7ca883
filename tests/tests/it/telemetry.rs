//! Flow telemetry end to end (issue 5): every request through agent B leaves exactly one
//! flow record in the control plane's store, even when the control plane is stopped
//! during the load and started again, or agent B is `kill -9`ed and restarted on the
//! same spool. Real agents, real TLS, the real spool on disk, the real SQLite store.

mod ingest;
mod kill;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wardmesh_agent::routes::RouteConfig;
use wardmesh_proto::flow::{StoredFlow, Verdict};
use wardmesh_store::{FlowQuery, Store};
use wardmesh_tests::TestMesh;
use wardmesh_tests::agents::{EchoApp, TestAgent, service};

use crate::dataplane::{A, B, id, proxy_client};

/// The requests each load run sends: enough to span the outage, bounded in count and
/// (by the client timeout) in time.
const LOAD: u64 = 240;
const CONCURRENCY: u64 = 4;

pub(crate) fn phi_routes() -> Vec<RouteConfig> {
    vec![RouteConfig {
        template: "/patients/{patient}/notes".into(),
        subject: Some("patient".into()),
        phi: true,
    }]
}

/// What one request ended as, by its `x-request-id`.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    pub ok: Vec<String>,
    pub failed: Vec<String>,
}

impl Outcomes {
    pub(crate) fn extend(&mut self, other: Outcomes) {
        self.ok.extend(other.ok);
        self.failed.extend(other.failed);
    }
}

/// Sends `count` requests (ids `<tag>-<n>`) through `client` with `CONCURRENCY`
/// workers; `progress` counts answered requests so the test can act mid-load.
pub(crate) async fn load(
    client: reqwest::Client,
    tag: &str,
    count: u64,
    progress: Arc<AtomicU64>,
) -> Outcomes {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next, progress, tag) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&progress),
            tag.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Outcomes::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return out;
                }
                let rid = format!("{tag}-{n}");
                let sent = client
                    .get(format!(
                        "http://notes.clinic/patients/p-{}/notes?full=1",
                        n % 7
                    ))
                    .header("x-request-id", &rid)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => out.ok.push(rid),
                    _ => out.failed.push(rid),
                }
                progress.fetch_add(1, Ordering::Relaxed);
                // Spread the load over the outage instead of finishing before it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut all = Outcomes::default();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

pub(crate) async fn wait_for(progress: &AtomicU64, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every stored flow, by request id, once `expected` records arrived (≤ 60 s).
pub(crate) async fn flows_by_request(
    store: &Store,
    expected: usize,
) -> HashMap<String, Vec<StoredFlow>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        let mut q = FlowQuery {
            limit: 1000,
            ..FlowQuery::default()
        };
        loop {
            let page = store.query_flows(&q).await.unwrap();
            let Some(last) = page.last() else { break };
            q.after = last.seq;
            all.extend(page);
        }
        if all.len() >= expected || tokio::time::Instant::now() > deadline {
            let mut by: HashMap<String, Vec<StoredFlow>> = HashMap::new();
            for f in all {
                by.entry(f.record.request_id.clone().unwrap_or_default())
                    .or_default()
                    .push(f);
            }
            return by;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Successful requests have exactly one record; failed ones at most one; no request id
/// appears twice and no record exists for a request nobody sent.
pub(crate) fn assert_exactly_once(
    outcomes: &Outcomes,
    by_request: &HashMap<String, Vec<StoredFlow>>,
) {
    for rid in &outcomes.ok {
        let n = by_request.get(rid).map_or(0, Vec::len);
        assert_eq!(n, 1, "request {rid} succeeded and has {n} flow records");
        let f = &by_request[rid][0].record;
        assert_eq!(f.verdict, Verdict::Allowed);
        assert_eq!(f.status, Some(200));
        assert_eq!(f.route.as_deref(), Some("/patients/{patient}/notes"));
        assert_eq!(f.source.as_deref(), Some(A));
        assert_eq!(f.destination, B);
        let p = f.subject_pseudonym.as_deref().unwrap_or_default();
        assert!(
            p.len() == 64 && !p.contains("p-"),
            "patient id must be pseudonymised: {p:?}"
        );
    }
    for rid in &outcomes.failed {
        let n = by_request.get(rid).map_or(0, Vec::len);
        assert!(n <= 1, "failed request {rid} has {n} flow records");
    }
    let sent = outcomes.ok.len() + outcomes.failed.len();
    for (rid, flows) in by_request {
        assert!(
            outcomes.ok.contains(rid) || outcomes.failed.contains(rid),
            "a flow record for a request nobody sent: {rid:?} ({} records, {sent} sent)",
            flows.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_exactly_one_flow_across_a_control_plane_restart() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let app = EchoApp::start().await;
    let app_addr = app.addr;
    let b = TestAgent::start(&cp, B, |c| {
        let inbound = c.inbound.as_mut().unwrap();
        inbound.app = Some(app_addr);
        inbound.routes = phi_routes();
        c.allow = vec![id(A)];
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
    // The pseudonym key comes with the policy context: without it the route cannot be
    // pseudonymised. Wait for it before the load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !b.agent.policy().context().has_key() {
        assert!(tokio::time::Instant::now() < deadline, "no policy context");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let progress = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(load(proxy_client(&a), "cp", LOAD, Arc::clone(&progress)));
    wait_for(&progress, LOAD / 4).await;
    let addr = cp.cp.addr;
    // The listener closes at once; the open connections drain for up to 5 s. The load
    // goes on meanwhile, so records pile up in B's spool.
    let stopped = tokio::spawn(cp.cp.shutdown());
    let during = progress.load(Ordering::Relaxed);
    wait_for(&progress, during + LOAD / 4).await;
    assert!(
        b.metric("wardmesh_spool_depth_records", &[]) > 0.0,
        "records must wait in the spool while the control plane is down"
    );
    stopped.await.unwrap();
    let mut cfg = mesh.config(None);
    cfg.listen = addr;
    let cp = mesh.start_with(cfg).await;
    let outcomes = run.await.unwrap();

    assert_eq!(
        outcomes.failed,
        Vec::<String>::new(),
        "the data plane does not need the control plane"
    );
    let by_request = flows_by_request(&cp.cp.store, outcomes.ok.len()).await;
    assert_exactly_once(&outcomes, &by_request);
    assert_eq!(by_request.len() as u64, LOAD);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.metric("wardmesh_spool_depth_records", &[]) > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool was not drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.shutdown().await;
    b.shutdown().await;
    cp.cp.shutdown().await;
}
