//! Identity metrics, registered on a registry the caller passes in. Labels are bounded
//! (`outcome` is `success` or `failure`).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use super::WorkloadState;
use crate::clock::Clock;

#[derive(Debug, Clone)]
pub(crate) struct IdentityMetrics {
    renewals: IntCounterVec,
    attestations: IntCounterVec,
    syncs: IntCounterVec,
    pub(crate) bundle_revision: IntGauge,
    pub(crate) deny_list_size: IntGauge,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl IdentityMetrics {
    pub(crate) fn register(
        registry: &Registry,
        state: watch::Receiver<Option<Arc<WorkloadState>>>,
        clock: Arc<dyn Clock>,
    ) -> prometheus::Result<Self> {
        let outcome_counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["outcome"]);
        let m = Self {
            renewals: outcome_counter(
                "wardmesh_agent_cert_renewals_total",
                "Certificate renewals by outcome.",
            )?,
            attestations: outcome_counter(
                "wardmesh_agent_attestations_total",
                "Attestations (first certificate, or after expiry) by outcome.",
            )?,
            syncs: outcome_counter(
                "wardmesh_agent_syncs_total",
                "Control-plane sync polls by outcome.",
            )?,
            bundle_revision: IntGauge::new(
                "wardmesh_agent_trust_bundle_revision",
                "Revision of the trust bundle in use (0: bootstrap bundle only).",
            )?,
            deny_list_size: IntGauge::new(
                "wardmesh_agent_deny_list_size",
                "Quarantined SPIFFE IDs on the deny-list in use.",
            )?,
        };
        for o in [Outcome::Success, Outcome::Failure] {
            m.renewals.with_label_values(&[o.label()]);
            m.attestations.with_label_values(&[o.label()]);
            m.syncs.with_label_values(&[o.label()]);
        }
        registry.register(Box::new(m.renewals.clone()))?;
        registry.register(Box::new(m.attestations.clone()))?;
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.bundle_revision.clone()))?;
        registry.register(Box::new(m.deny_list_size.clone()))?;
        registry.register(Box::new(ExpiryCollector::new(state, clock)?))?;
        Ok(m)
    }

    pub(crate) fn renewal(&self, o: Outcome) {
        self.renewals.with_label_values(&[o.label()]).inc();
    }

    pub(crate) fn attestation(&self, o: Outcome) {
        self.attestations.with_label_values(&[o.label()]).inc();
    }

    pub(crate) fn sync(&self, o: Outcome) {
        self.syncs.with_label_values(&[o.label()]).inc();
    }

    pub(crate) fn published(&self, state: &WorkloadState) {
        self.bundle_revision
            .set(i64::try_from(state.bundle.revision).unwrap_or(i64::MAX));
    }
}

/// `wardmesh_agent_cert_expiry_seconds`, computed at scrape time from the published
/// state and the clock; absent until the first certificate.
struct ExpiryCollector {
    gauge: Gauge,
    state: watch::Receiver<Option<Arc<WorkloadState>>>,
    clock: Arc<dyn Clock>,
}

impl ExpiryCollector {
    fn new(
        state: watch::Receiver<Option<Arc<WorkloadState>>>,
        clock: Arc<dyn Clock>,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            gauge: Gauge::new(
                "wardmesh_agent_cert_expiry_seconds",
                "Seconds until the workload certificate expires (negative once expired).",
            )?,
            state,
            clock,
        })
    }
}

impl Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let not_after = match self.state.borrow().as_ref() {
            Some(s) => s.not_after,
            None => return Vec::new(),
        };
        self.gauge.set(
            wardmesh_identity::rotation::seconds_to_expiry(not_after, self.clock.now()).floor(),
        );
        self.gauge.collect()
    }
}
