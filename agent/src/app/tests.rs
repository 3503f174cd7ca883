//! The whole agent against a control plane served over real HTTPS: bootstrap trust from
//! a file, join-token attestation, mTLS sync and renewal, the admin port.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use super::*;
use crate::clock::SystemClock;
use crate::config::{AttestationConfig, SecretString};
use crate::testing::https_cp::HttpsControlPlane;
use crate::testing::{CaSource, Call, WORKLOAD_ID, http};

const TOKEN: &str = "wmjt_app_test_token";

fn config(cp: &HttpsControlPlane, token: &str) -> AgentConfig {
    let mut c = AgentConfig::new(
        cp.url(),
        &cp.bundle_path,
        AttestationConfig::JoinToken {
            token: SecretString::new(token),
        },
    );
    c.admin_addr = "127.0.0.1:0".parse().unwrap();
    c.sync_wait_seconds = 2;
    c
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn agent_attests_syncs_and_rotates_over_https() {
    let source = CaSource::new(Arc::new(SystemClock), Duration::from_secs(3600));
    let cp = HttpsControlPlane::start(source.clone(), TOKEN).await;
    let agent = start(config(&cp, TOKEN), Registry::new()).await.unwrap();
    let admin = agent.admin_addr();
    assert_ne!(admin.port(), 0);

    let first = tokio::time::timeout(Duration::from_secs(10), agent.identity().wait_ready())
        .await
        .expect("attested within 10 s")
        .unwrap();
    assert_eq!(first.spiffe_id.to_string(), WORKLOAD_ID);
    assert_eq!(http(admin, "GET", "/ready").await.status, 200);

    // Deny-list over the mTLS long poll.
    let deny = agent.deny_list();
    source.quarantine("spiffe://wardmesh.local/ns/clinic/sa/compromised");
    eventually("deny-list revision 1", || deny.borrow().revision == Some(1)).await;

    // CA rotation: the new root arrives by sync, then the new authority triggers an
    // mTLS renewal (with a client rebuilt for the new bundle).
    source.rotate(false);
    let states = agent.workload_state();
    eventually("bundle revision 2", || {
        states
            .borrow()
            .as_ref()
            .is_some_and(|s| s.bundle.revision == 2)
    })
    .await;
    source.rotate(true);
    let new_authority = source.active_authority();
    eventually("renewal by the new authority", || {
        states
            .borrow()
            .as_ref()
            .is_some_and(|s| s.authority_id == new_authority)
    })
    .await;
    let calls: Vec<Call> = source.issuances().iter().map(|i| i.call).collect();
    assert_eq!(calls, vec![Call::Attest, Call::Renew]);

    let dump = http(admin, "GET", "/config_dump").await.body;
    assert!(!dump.contains(TOKEN), "token leaked: {dump}");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["identity"]["authority_id"], new_authority.as_str());
    assert_eq!(dump["identity"]["bundle_revision"], 3);
    assert_eq!(dump["deny_list"]["revision"], 1);

    tokio::time::timeout(Duration::from_secs(10), agent.shutdown())
        .await
        .expect("clean shutdown");
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn refused_attestation_is_reported_not_fatal() {
    let source = CaSource::new(Arc::new(SystemClock), Duration::from_secs(3600));
    let cp = HttpsControlPlane::start(source.clone(), TOKEN).await;
    let agent = start(config(&cp, "wmjt_wrong_token"), Registry::new())
        .await
        .unwrap();
    eventually("an attestation error", || {
        agent.identity().last_error().is_some()
    })
    .await;
    let err = agent.identity().last_error().unwrap();
    assert!(
        err.contains("401") && err.contains("attestation_failed"),
        "{err}"
    );
    let ready = http(agent.admin_addr(), "GET", "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("attestation_failed"), "{}", ready.body);
    assert!(!ready.body.contains("wmjt_wrong_token"));
    assert!(agent.identity().current().is_none());
    assert!(source.issuances().is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn start_rejects_local_problems() {
    let source = CaSource::new(Arc::new(SystemClock), Duration::from_secs(3600));
    let cp = HttpsControlPlane::start(source, TOKEN).await;

    let mut c = config(&cp, TOKEN);
    c.trust_bundle = "/nonexistent/bundle.pem".into();
    let err = start(c, Registry::new()).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/bundle.pem"), "{err}");

    let mut c = config(&cp, TOKEN);
    c.control_plane_url = "http://127.0.0.1:1".into();
    assert!(
        start(c, Registry::new()).await.is_err(),
        "plain http refused"
    );

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = config(&cp, TOKEN);
    c.admin_addr = taken.local_addr().unwrap();
    let err = start(c, Registry::new()).await.unwrap_err().to_string();
    assert!(err.contains("admin address"), "{err}");
}
