//! The admin server over a real socket, with a real identity manager behind it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::{Clock, SystemClock};
use crate::config::{AgentConfig, AttestationConfig, SecretString};
use crate::identity::{self, IdentityOptions, IdentityTasks};
use crate::testing::{CaSource, WORKLOAD_ID, http};

const SECRET: &str = "wmjt_admin_secret_value";

/// A wall clock tests move by hand.
struct ManualClock(Mutex<OffsetDateTime>);

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

struct Server {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    identity: IdentityHandle,
    tasks: IdentityTasks,
}

async fn serve_with(source: CaSource, clock: Arc<dyn Clock>) -> Server {
    let registry = Registry::new();
    let shutdown = CancellationToken::new();
    let (identity, tasks) = identity::spawn(
        source,
        IdentityOptions::new("admin-test"),
        Arc::clone(&clock),
        &registry,
        shutdown.clone(),
    )
    .unwrap();
    let config = AgentConfig::new(
        "https://127.0.0.1:7443",
        "/etc/wardmesh/bundle.pem",
        AttestationConfig::JoinToken {
            token: SecretString::new(SECRET),
        },
    );
    let state = AdminState::new(&config, identity.clone(), registry, clock).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, Arc::new(state), shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
        identity,
        tasks,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(6), self.task)
            .await
            .expect("admin server stops")
            .unwrap();
        self.tasks.join().await;
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "listener closed after shutdown"
        );
    }
}

#[tokio::test]
async fn endpoints_before_the_first_certificate() {
    let source = CaSource::new(Arc::new(SystemClock), Duration::from_secs(3600));
    source.set_fail_issuance(true);
    let s = serve_with(source, Arc::new(SystemClock)).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.identity.last_error().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    let live = http(s.addr, "GET", "/live").await;
    assert_eq!((live.status, live.body.as_str()), (200, "live\n"));

    let ready = http(s.addr, "GET", "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body.lines().count(), 1, "one line: {:?}", ready.body);
    assert!(
        ready
            .body
            .starts_with("not ready: no workload certificate yet"),
        "{}",
        ready.body
    );
    assert!(ready.body.contains("injected outage"), "{}", ready.body);

    let metrics = http(s.addr, "GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    assert!(
        metrics
            .body
            .contains(r#"wardmesh_agent_attestations_total{outcome="failure"}"#)
    );
    assert!(
        metrics
            .body
            .contains(r#"wardmesh_agent_cert_renewals_total{outcome="success"} 0"#)
    );
    assert!(
        metrics
            .body
            .contains("wardmesh_agent_trust_bundle_revision 0")
    );
    assert!(
        !metrics.body.contains("wardmesh_agent_cert_expiry_seconds "),
        "no expiry sample without a certificate"
    );

    let dump = http(s.addr, "GET", "/config_dump").await;
    assert_eq!(dump.status, 200);
    assert!(dump.head.contains("application/json"));
    assert!(!dump.body.contains(SECRET), "token leaked: {}", dump.body);
    let json: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(json["config"]["attestation"]["kind"], "join_token");
    assert_eq!(json["config"]["attestation"]["token"], "<redacted>");
    assert_eq!(json["config"]["admin_addr"], "127.0.0.1:7191");
    assert_eq!(json["identity"], serde_json::Value::Null);
    assert_eq!(json["ready"], false);
    assert_eq!(json["deny_list"]["revision"], serde_json::Value::Null);

    assert_eq!(http(s.addr, "GET", "/nope").await.status, 404);
    let post = http(s.addr, "POST", "/live").await;
    assert_eq!(post.status, 405);
    assert!(post.head.to_ascii_lowercase().contains("allow: get, head"));
    s.stop().await;
}

#[tokio::test]
async fn endpoints_with_a_certificate_and_after_expiry() {
    let clock = Arc::new(ManualClock(Mutex::new(OffsetDateTime::now_utc())));
    let source = CaSource::new(clock.clone(), Duration::from_secs(3600));
    let s = serve_with(source, clock.clone()).await;
    let state = tokio::time::timeout(Duration::from_secs(5), s.identity.wait_ready())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.identity.deny_list().revision.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    let ready = http(s.addr, "GET", "/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let metrics = http(s.addr, "GET", "/metrics").await.body;
    let expiry: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wardmesh_agent_cert_expiry_seconds "))
        .expect("expiry sample")
        .parse()
        .unwrap();
    assert!((3590.0..=3600.0).contains(&expiry), "{expiry}");
    assert!(metrics.contains("wardmesh_agent_trust_bundle_revision 1"));
    assert!(metrics.contains("wardmesh_agent_deny_list_size 0"));

    let dump: serde_json::Value =
        serde_json::from_str(&http(s.addr, "GET", "/config_dump").await.body).unwrap();
    assert_eq!(dump["identity"]["spiffe_id"], WORKLOAD_ID);
    assert_eq!(
        dump["identity"]["authority_id"],
        state.authority_id.as_str()
    );
    assert_eq!(dump["identity"]["bundle_revision"], 1);
    assert_eq!(dump["identity"]["not_after"], rfc3339(state.not_after));
    assert_eq!(dump["deny_list"]["revision"], 0);
    assert_eq!(dump["ready"], true);

    // Past expiry (and no renewal yet): not ready, and the reason names the certificate.
    *clock.0.lock().unwrap() = state.not_after + time::Duration::seconds(1);
    let ready = http(s.addr, "GET", "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("expired"), "{}", ready.body);
    assert!(ready.body.contains(WORKLOAD_ID), "{}", ready.body);
    let metrics = http(s.addr, "GET", "/metrics").await.body;
    assert!(
        metrics.contains("wardmesh_agent_cert_expiry_seconds -1"),
        "{metrics}"
    );
    s.stop().await;
}
