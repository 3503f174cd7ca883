//! Root rotation under HTTP traffic through both agents: prepare (new root in every
//! bundle) → activate (agents renew from the new authority at once) → retire (old root
//! gone), while a bounded request loop runs A → B. Zero failed requests; both agents end
//! with new-authority certificates; every request after the rotation rides a fresh mesh
//! connection made with the new certificates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::{A, Mesh, NOTES_URL, eventually};

const MAX_REQUESTS: usize = 400;
const MAX_TIME: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_traffic_fails_no_request() {
    let m = Mesh::start().await;
    let old_authority = m.a.state().authority_id.clone();
    assert_eq!(m.b.state().authority_id, old_authority);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let c = m.client();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let started = Instant::now();
            let (mut latencies, mut failures) = (Vec::new(), Vec::new());
            for i in 0..MAX_REQUESTS {
                if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_TIME {
                    break;
                }
                let t = Instant::now();
                match c.get(format!("{NOTES_URL}/loop/{i}")).send().await {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if body.contains(A) {
                            latencies.push(t.elapsed());
                        } else {
                            failures.push(format!("#{i}: unexpected body {body}"));
                        }
                    }
                    Ok(r) => failures.push(format!("#{i}: status {}", r.status())),
                    Err(e) => failures.push(format!("#{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (latencies, failures)
        })
    };

    let dir = m.mesh.ca_dir();
    let now = OffsetDateTime::now_utc;
    let agents = [m.a.agent.identity().clone(), m.b.agent.identity().clone()];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let st = dir
        .rotate_prepare(&m.mesh.seal, now(), Default::default())
        .unwrap();
    m.cp.cp.ca.reload(now(), true).unwrap();
    eventually(
        "both agents to trust both roots",
        Duration::from_secs(10),
        || {
            agents.iter().all(|h| {
                h.current()
                    .is_some_and(|s| s.bundle.revision == st.revision && s.bundle.roots.len() == 2)
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let st = dir.rotate_activate().unwrap();
    m.cp.cp.ca.reload(now(), true).unwrap();
    let renewed = eventually(
        "both agents to renew from the new authority",
        Duration::from_secs(10),
        || {
            agents
                .iter()
                .all(|h| h.current().is_some_and(|s| s.authority_id == st.active))
        },
    )
    .await;
    eprintln!("both agents renewed {renewed:?} after activation");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let st = dir.rotate_retire().unwrap();
    m.cp.cp.ca.reload(now(), true).unwrap();
    eventually(
        "both agents to drop the old root",
        Duration::from_secs(10),
        || {
            agents.iter().all(|h| {
                h.current()
                    .is_some_and(|s| s.bundle.revision == st.revision && s.bundle.roots.len() == 1)
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, failures) = traffic.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        latencies.len() >= 50,
        "only {} requests ran",
        latencies.len()
    );
    for s in [m.a.state(), m.b.state()] {
        assert_eq!(
            s.authority_id, st.active,
            "{} ends on the new authority",
            s.spiffe_id
        );
        assert_ne!(s.authority_id, old_authority);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    eprintln!(
        "{} requests A→B across prepare/activate/retire, 0 failed; latency p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );

    // After retire only the new root is trusted: a request now must use a connection
    // made with new-authority certificates, and it works.
    let r = m
        .client()
        .get(format!("{NOTES_URL}/after-retire"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    m.stop().await;
}
