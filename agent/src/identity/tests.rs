//! Identity manager tests: paused tokio time, a real CA behind an in-process source,
//! and a clock that follows tokio's. Pure decisions are tested without tasks.

mod pure;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use wardmesh_identity::{SpiffeId, rotation};

use super::*;
use crate::clock::{Clock, TokioClock};
use crate::testing::{CaSource, Call, WORKLOAD_ID};

const TTL: Duration = Duration::from_secs(3600);

struct Harness {
    source: CaSource,
    handle: IdentityHandle,
    tasks: IdentityTasks,
    shutdown: CancellationToken,
    registry: Registry,
    clock: Arc<TokioClock>,
}

impl Harness {
    fn start(seed: u64) -> Self {
        let clock = Arc::new(TokioClock::new());
        let source = CaSource::new(clock.clone(), TTL);
        let registry = Registry::new();
        let shutdown = CancellationToken::new();
        let mut options = IdentityOptions::new("test-instance");
        options.jitter_seed = Some(seed);
        let (handle, tasks) = spawn(
            source.clone(),
            options,
            clock.clone(),
            &registry,
            shutdown.clone(),
        )
        .unwrap();
        Self {
            source,
            handle,
            tasks,
            shutdown,
            registry,
            clock,
        }
    }

    async fn ready(&self) -> Arc<WorkloadState> {
        tokio::time::timeout(Duration::from_secs(5), self.handle.wait_ready())
            .await
            .expect("identity within 5 s")
            .expect("manager running")
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The value of one sample line of the text exposition, e.g.
    /// `wardmesh_agent_cert_renewals_total{outcome="success"}`.
    fn metric(&self, sample: &str) -> f64 {
        metric(&self.registry, sample)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.join())
            .await
            .expect("tasks stop on shutdown");
    }
}

pub(crate) fn metric(registry: &Registry, sample: &str) -> f64 {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
        .parse()
        .unwrap()
}

/// Polls `cond` every `step` of (paused) time until it holds, at most `limit`.
async fn wait_until(what: &str, limit: Duration, step: Duration, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(step).await;
    }
}

fn secs(d: time::Duration) -> f64 {
    d.as_seconds_f64()
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_within_jitter() {
    let h = Harness::start(7);
    let first = h.ready().await;
    assert_eq!(first.spiffe_id.to_string(), WORKLOAD_ID);
    let mut states = h.handle.subscribe();

    wait_until(
        "5 renewals",
        Duration::from_secs(5 * 2200),
        Duration::from_secs(5),
        || h.source.issuances().len() >= 6,
    )
    .await;
    let log = h.source.issuances();
    assert_eq!(log[0].call, Call::Attest);
    let mut fractions = Vec::new();
    for pair in log.windows(2).take(5) {
        let (prev, next) = (&pair[0], &pair[1]);
        assert_eq!(next.call, Call::Renew);
        let (nb, na) = prev.validity.expect("issued");
        // The CA backdates not_before by 60 s for clock skew; the agent schedules from
        // receipt, so the window is 40–60 % of the 3600 s that remain: [1440 s, 2160 s].
        assert_eq!(secs(na - nb), 3660.0);
        let remaining = secs(na - prev.at);
        let after_issuance = secs(next.at - prev.at);
        let fraction = after_issuance / remaining;
        assert!(
            (0.4 - 1e-3..=0.6 + 1e-3).contains(&fraction),
            "renewal at {fraction:.4} of the lifetime"
        );
        assert!(
            (1439.0..=2161.0).contains(&after_issuance),
            "renewal {after_issuance} s after issuance"
        );
        fractions.push(fraction);
    }
    let spread = fractions.iter().cloned().fold(f64::MIN, f64::max)
        - fractions.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread > 0.01,
        "jitter varies between renewals: {fractions:?}"
    );

    // Each renewal published a new certificate for the same identity.
    let current = states.borrow_and_update().clone().unwrap();
    assert_ne!(current.serial_hex(), first.serial_hex());
    assert_eq!(current.spiffe_id, first.spiffe_id);
    assert!(h.metric(r#"wardmesh_agent_cert_renewals_total{outcome="success"}"#) >= 5.0);
    assert_eq!(
        h.metric(r#"wardmesh_agent_cert_renewals_total{outcome="failure"}"#),
        0.0
    );
    let expiry = h.metric("wardmesh_agent_cert_expiry_seconds");
    assert_eq!(
        expiry,
        rotation::seconds_to_expiry(current.not_after, h.now()).floor()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_keep_the_last_good_certificate_and_back_off() {
    let h = Harness::start(11);
    let first = h.ready().await;
    h.source.set_fail_issuance(true);

    let failures = || {
        h.source
            .issuances()
            .into_iter()
            .filter(|i| i.validity.is_none())
            .collect::<Vec<_>>()
    };
    wait_until(
        "9 failed renewals",
        Duration::from_secs(3000),
        Duration::from_secs(1),
        || failures().len() >= 9,
    )
    .await;
    let failed = failures();
    assert!(failed.iter().all(|f| f.call == Call::Renew));
    let gaps: Vec<f64> = failed.windows(2).map(|w| secs(w[1].at - w[0].at)).collect();
    for (attempt, gap) in gaps.iter().enumerate().take(8) {
        let attempt = u32::try_from(attempt).unwrap();
        let want = rotation::retry_delay(attempt, failed[attempt as usize].at, first.not_after);
        assert!(
            (gap - want.as_secs_f64()).abs() < 0.01,
            "retry {attempt}: waited {gap} s, backoff says {want:?} (all gaps {gaps:?})"
        );
    }
    let rounded: Vec<u64> = gaps.iter().take(8).map(|g| g.round() as u64).collect();
    assert_eq!(rounded, vec![1, 2, 4, 8, 16, 32, 60, 60]);

    // Fail static: the same certificate stays published and the agent stays ready.
    let current = h.handle.current().unwrap();
    assert_eq!(current.serial_hex(), first.serial_hex());
    assert!(Arc::ptr_eq(&current, &first));
    assert_eq!(h.handle.readiness(h.now()), Ok(()));
    assert!(h.handle.last_error().unwrap().contains("injected outage"));
    assert!(h.metric(r#"wardmesh_agent_cert_renewals_total{outcome="failure"}"#) >= 9.0);

    // The control plane comes back: the next retry renews.
    h.source.set_fail_issuance(false);
    wait_until(
        "recovery",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || h.handle.current().unwrap().serial_hex() != first.serial_hex(),
    )
    .await;
    let last = h.source.issuances().pop().unwrap();
    assert_eq!(last.call, Call::Renew);
    assert!(last.validity.is_some());
    assert_eq!(h.handle.last_error(), None);
    assert_eq!(
        h.metric(r#"wardmesh_agent_cert_renewals_total{outcome="success"}"#),
        1.0
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn expiry_turns_not_ready_and_attestation_recovers() {
    let h = Harness::start(13);
    let first = h.ready().await;
    h.source.set_fail_issuance(true);

    // Until expiry the old certificate keeps the agent ready...
    wait_until(
        "one minute before expiry",
        Duration::from_secs(3700),
        Duration::from_secs(10),
        || h.now() >= first.not_after - time::Duration::minutes(1),
    )
    .await;
    assert_eq!(h.handle.readiness(h.now()), Ok(()));
    // ...and after it, the agent is not ready and says why.
    wait_until(
        "expiry",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || h.now() > first.not_after,
    )
    .await;
    let err = h.handle.readiness(h.now()).unwrap_err();
    assert!(matches!(err, NotReady::Expired { .. }), "{err}");
    assert!(err.to_string().contains(WORKLOAD_ID));
    assert!(
        Arc::ptr_eq(&h.handle.current().unwrap(), &first),
        "still published"
    );

    // Renewal cannot authenticate with an expired certificate: the agent attests again.
    h.source.set_fail_issuance(false);
    wait_until(
        "re-attestation",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || h.handle.readiness(h.now()).is_ok(),
    )
    .await;
    let last = h.source.issuances().pop().unwrap();
    assert_eq!(last.call, Call::Attest);
    assert_eq!(
        h.metric(r#"wardmesh_agent_attestations_total{outcome="success"}"#),
        2.0
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_bundle_revision_republishes_configs_with_the_same_svid() {
    let h = Harness::start(17);
    let first = h.ready().await;
    assert_eq!(first.bundle.roots.len(), 1);
    let started = tokio::time::Instant::now();

    h.source.rotate(false); // a second root joins the bundle; the old authority still signs
    wait_until(
        "bundle revision 2",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || h.handle.current().unwrap().bundle.revision == 2,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the long poll answers on change"
    );
    let next = h.handle.current().unwrap();
    assert!(Arc::ptr_eq(&next.svid, &first.svid), "same SVID");
    assert_eq!(next.serial_hex(), first.serial_hex());
    assert_eq!(next.authority_id, first.authority_id);
    assert_eq!(next.bundle.roots.len(), 2);
    assert!(!Arc::ptr_eq(&next.server_config, &first.server_config));
    assert!(!Arc::ptr_eq(&next.client_config, &first.client_config));
    assert_eq!(
        h.source.issuances().len(),
        1,
        "no renewal for a bundle change"
    );
    assert_eq!(h.metric("wardmesh_agent_trust_bundle_revision"), 2.0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_active_authority_renews_immediately() {
    let h = Harness::start(19);
    let first = h.ready().await;
    h.source.rotate(false);
    wait_until(
        "bundle revision 2",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || h.handle.current().unwrap().bundle.revision == 2,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(60)).await;
    h.source.rotate(true); // the new intermediate signs from now on
    let activated = h.now();
    let new_authority = h.source.active_authority();
    assert_ne!(new_authority, first.authority_id);
    wait_until(
        "renewal by the new authority",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || h.handle.current().unwrap().authority_id == new_authority,
    )
    .await;
    let renewed = h.source.issuances().pop().unwrap();
    assert_eq!(renewed.call, Call::Renew);
    assert!(
        secs(renewed.at - activated) < 3.0,
        "renewed {} s after activation, not at half-life",
        secs(renewed.at - activated)
    );
    let next = h.handle.current().unwrap();
    assert_ne!(next.serial_hex(), first.serial_hex());
    assert_eq!(next.bundle.revision, 3);
    assert_eq!(h.source.issuances().len(), 2, "exactly one renewal");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deny_list_updates_are_published() {
    let h = Harness::start(23);
    h.ready().await;
    let mut deny = h.handle.subscribe_deny_list();
    wait_until(
        "first deny-list",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || h.handle.deny_list().revision == Some(0),
    )
    .await;
    assert!(h.handle.deny_list().is_empty());
    deny.borrow_and_update();

    let evil = "spiffe://wardmesh.local/ns/clinic/sa/compromised";
    h.source.quarantine(evil);
    h.source.quarantine("not a spiffe id");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            deny.changed().await.unwrap();
            if deny.borrow().revision == Some(2) {
                break;
            }
        }
    })
    .await
    .expect("deny-list within seconds");
    let list = h.handle.deny_list();
    assert!(list.contains(&SpiffeId::parse(evil).unwrap()));
    assert_eq!(list.len(), 1, "the invalid entry cannot match a peer");
    assert_eq!(h.metric("wardmesh_agent_deny_list_size"), 1.0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sync_outage_backs_off_and_keeps_last_known_state() {
    let h = Harness::start(29);
    let first = h.ready().await;
    wait_until(
        "first deny-list",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || h.handle.deny_list().revision == Some(0),
    )
    .await;
    h.source.set_fail_sync(true);
    h.source.quarantine("spiffe://wardmesh.local/ns/a/sa/b");
    let before = h.source.syncs();
    tokio::time::sleep(Duration::from_secs(300)).await;
    let polls = h.source.syncs() - before;
    // 1+2+4+8+16+32+60+60+60+60 s ≈ 300 s: about ten polls, not hundreds.
    assert!(
        (6..=14).contains(&polls),
        "{polls} polls in 5 minutes of outage"
    );
    assert_eq!(
        h.handle.deny_list().revision,
        Some(0),
        "last-known deny-list kept"
    );
    assert!(Arc::ptr_eq(&h.handle.current().unwrap(), &first));
    assert!(h.handle.last_sync_error().is_some());
    assert!(h.metric(r#"wardmesh_agent_syncs_total{outcome="failure"}"#) >= 6.0);

    h.source.set_fail_sync(false);
    wait_until(
        "deny-list after recovery",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || h.handle.deny_list().revision == Some(1),
    )
    .await;
    assert_eq!(h.handle.last_sync_error(), None);
    h.stop().await;
}
