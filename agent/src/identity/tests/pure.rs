//! The pure decisions: readiness, refresh method, sync planning, request building,
//! backoff, and the validation that keeps bad responses from replacing a good state.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use wardmesh_identity::keygen::generate_anonymous_csr;
use wardmesh_proto::identity::{SvidResponse, SyncResponse};

use super::super::sync::{needs_worker, sync_request};
use super::super::worker::{Method, plan_sync, refresh_method};
use super::*;
use crate::clock::SystemClock;

fn issue(source: &CaSource) -> (SvidResponse, Vec<u8>) {
    let csr = generate_anonymous_csr().unwrap();
    let resp = source.issue(Call::Attest, &csr.csr_pem).unwrap();
    (resp, csr.key.serialize_der())
}

fn state(source: &CaSource) -> WorkloadState {
    let (resp, key) = issue(source);
    WorkloadState::from_issued(&resp, key, None, OffsetDateTime::now_utc()).unwrap()
}

fn source() -> CaSource {
    CaSource::new(Arc::new(SystemClock), TTL)
}

fn sync_response(s: &WorkloadState, source: &CaSource) -> SyncResponse {
    SyncResponse {
        trust_domain: "wardmesh.local".into(),
        trust_bundle_pem: source.bundle_pem(),
        bundle_revision: s.bundle.revision,
        active_authority_id: s.authority_id.clone(),
        deny_list: vec![],
        deny_list_revision: 0,
    }
}

#[test]
fn readiness_follows_validity() {
    let src = source();
    let s = state(&src);
    assert_eq!(readiness(None, s.not_before), Err(NotReady::NoIdentity));
    assert_eq!(readiness(Some(&s), s.not_before), Ok(()));
    let last_second = s.not_after - time::Duration::seconds(1);
    assert_eq!(readiness(Some(&s), last_second), Ok(()));
    assert!(matches!(
        readiness(Some(&s), s.not_after),
        Err(NotReady::Expired { .. })
    ));
    assert!(matches!(
        readiness(Some(&s), s.not_before - time::Duration::seconds(1)),
        Err(NotReady::NotYetValid { .. })
    ));
    let line = readiness(Some(&s), s.not_after).unwrap_err().to_string();
    assert!(!line.contains('\n'));
    assert!(
        line.contains(WORKLOAD_ID) && line.contains("expired"),
        "{line}"
    );
}

#[test]
fn refresh_renews_while_valid_and_attests_after_expiry() {
    let src = source();
    let s = state(&src);
    assert_eq!(refresh_method(&s, s.not_before), Method::Renew);
    assert_eq!(
        refresh_method(&s, s.not_after - time::Duration::seconds(1)),
        Method::Renew
    );
    assert_eq!(refresh_method(&s, s.not_after), Method::Attest);
}

#[test]
fn sync_plans() {
    let src = source();
    let s = state(&src);
    let same = sync_response(&s, &src);
    let plan = plan_sync(&s, &same);
    assert!(plan.bundle.is_none() && !plan.renew_now);
    assert!(!needs_worker(&s, &same));

    let mut newer = same.clone();
    newer.bundle_revision += 1;
    let plan = plan_sync(&s, &newer);
    assert_eq!(
        plan.bundle.unwrap().unwrap().revision,
        s.bundle.revision + 1
    );
    assert!(needs_worker(&s, &newer));

    let mut older = same.clone();
    older.bundle_revision = 0;
    assert!(plan_sync(&s, &older).bundle.is_none(), "never go back");

    let mut rotated = same.clone();
    rotated.active_authority_id = "another".into();
    assert!(plan_sync(&s, &rotated).renew_now);
    assert!(needs_worker(&s, &rotated));
    let mut unknown = same.clone();
    unknown.active_authority_id = String::new();
    assert!(!plan_sync(&s, &unknown).renew_now);

    let mut other_domain = newer.clone();
    other_domain.trust_domain = "elsewhere.example".into();
    assert!(matches!(
        plan_sync(&s, &other_domain).bundle,
        Some(Err(StateError::TrustDomainMismatch { .. }))
    ));
    let mut garbage = newer;
    garbage.trust_bundle_pem = "not pem".into();
    assert!(matches!(
        plan_sync(&s, &garbage).bundle,
        Some(Err(StateError::BadBundle(_)))
    ));
}

#[test]
fn sync_request_reports_state() {
    let src = source();
    let s = state(&src);
    let req = sync_request(&s, None, "pod-1", 30);
    assert_eq!(req.deny_list_revision, -1, "nothing yet: answer at once");
    assert_eq!(req.bundle_revision, s.bundle.revision);
    assert_eq!(req.cert_not_after, Some(s.not_after));
    assert_eq!(
        req.cert_authority_id.as_deref(),
        Some(s.authority_id.as_str())
    );
    assert_eq!((req.instance_id.as_str(), req.wait_seconds), ("pod-1", 30));
    assert_eq!(sync_request(&s, Some(4), "pod-1", 30).deny_list_revision, 4);
}

#[test]
fn backoff_doubles_caps_and_jitters_within_bounds() {
    let plain: Vec<u64> = (0..9).map(|a| backoff(a, 1.0).as_secs()).collect();
    assert_eq!(plain, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(backoff(6, 1.2), Duration::from_secs(72));
    assert_eq!(backoff(6, 0.8), Duration::from_secs(48));
    assert_eq!(backoff(0, 0.5), Duration::from_secs(1), "never below 1 s");
    assert_eq!(backoff(40, 9.0), Duration::from_secs(72), "clamped");
}

#[test]
fn invalid_responses_never_become_state() {
    let src = source();
    let now = OffsetDateTime::now_utc();

    let (mut resp, key) = issue(&src);
    resp.spiffe_id = "spiffe://wardmesh.local/ns/other/sa/x".into();
    assert!(matches!(
        WorkloadState::from_issued(&resp, key, None, now),
        Err(StateError::IdMismatch { .. })
    ));

    let (resp, key) = issue(&src);
    let other = TrustDomain::new("elsewhere.example").unwrap();
    assert!(matches!(
        WorkloadState::from_issued(&resp, key, Some(&other), now),
        Err(StateError::TrustDomainMismatch { .. })
    ));

    // A leaf from another CA does not verify against this bundle.
    let stranger = source();
    let (mut resp, key) = issue(&stranger);
    resp.trust_bundle_pem = src.bundle_pem();
    assert!(matches!(
        WorkloadState::from_issued(&resp, key, None, now),
        Err(StateError::Untrusted(_))
    ));

    // The key must belong to the certificate.
    let (resp, _) = issue(&src);
    let (_, wrong_key) = issue(&src);
    assert!(WorkloadState::from_issued(&resp, wrong_key, None, now).is_err());

    let (resp, key) = issue(&src);
    assert!(WorkloadState::from_issued(&resp, key, None, now).is_ok());
}

#[test]
fn deny_list_from_sync_skips_invalid_entries() {
    let resp = SyncResponse {
        trust_domain: "wardmesh.local".into(),
        trust_bundle_pem: String::new(),
        bundle_revision: 1,
        active_authority_id: "a".into(),
        deny_list: vec![WORKLOAD_ID.into(), "junk".into(), WORKLOAD_ID.into()],
        deny_list_revision: 7,
    };
    let (list, invalid) = DenyList::from_sync(&resp);
    assert_eq!(list.revision, Some(7));
    assert_eq!(list.len(), 1);
    assert!(list.contains(&SpiffeId::parse(WORKLOAD_ID).unwrap()));
    assert_eq!(invalid, vec!["junk".to_owned()]);
}
